//! What a binary that owns its process (such as `herve`) does around a Herve: settings
//! of the process that a library embedded in someone else's program must not make on
//! its own.

use std::time::Duration;

use crate::{Config, HerveBuilder};

/// How often free memory is handed back to the system.
const MEMORY_UPKEEP: Duration = Duration::from_secs(5);

/// Makes the process non-dumpable: no process of the same user (a program Herve runs,
/// say) may read its memory or environment through `/proc`. Call it first, before any
/// secret is read.
pub fn make_non_dumpable() -> std::io::Result<()> {
    crate::sys::make_non_dumpable()
}

/// Sets glibc's allocator up for large buffers that come and go (see
/// `sys::tune_allocator`); a no-op elsewhere.
pub fn tune_allocator() {
    crate::sys::tune_allocator();
}

/// Lifts the soft limit of open files to the hard one: each connection is a file
/// descriptor, and `HERVE_MAX_CONNECTIONS` should not be cut short by a default of 1024.
pub fn raise_open_file_limit() {
    crate::sys::raise_open_file_limit();
}

/// Makes Herve a child subreaper, so that what a program leaves behind when it dies is
/// re-parented to Herve, killed and reaped, instead of escaping to init. A process
/// that has children of its own should not: Herve reaps every child it did not start.
/// Call it from within the runtime.
pub fn adopt_orphans() -> std::io::Result<()> {
    crate::sys::become_subreaper()?;
    use tokio::signal::unix::{signal, SignalKind};
    let mut child_exited = signal(SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            // A signal may stand for several exits, and one may be missed: look every
            // few seconds as well.
            let _ = tokio::time::timeout(Duration::from_secs(5), child_exited.recv()).await;
            let _ = tokio::task::spawn_blocking(crate::types::process::reap_adopted_orphans).await;
        }
    });
    Ok(())
}

/// Gives what a burst of clients made the allocator take back to the system a few
/// seconds after they leave, for as long as the runtime runs. Call it from within the
/// runtime.
pub fn spawn_memory_upkeep() {
    tokio::spawn(async {
        let mut every = tokio::time::interval(MEMORY_UPKEEP);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let _ = tokio::task::spawn_blocking(crate::sys::release_free_memory).await;
        }
    });
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// All a program with service types of its own does in `main`, once its logs are set
/// up: loads the configuration as `herve` does (flags, environment, `.env`; `--help`),
/// starts a Herve with the built-in types and those `add` adds, and serves until
/// SIGINT or SIGTERM.
///
/// ```no_run
/// # struct Hello;
/// # #[herve::async_trait]
/// # impl herve::contract::ServiceType for Hello {
/// #     type Config = ();
/// #     fn name(&self) -> &str { "hello" }
/// #     fn description(&self) -> &str { "" }
/// #     async fn register(&self, _: &herve::contract::ServiceContext, _: &herve::contract::Fields)
/// #         -> Result<(), herve::contract::ServiceError> { Ok(()) }
/// #     async fn start(&self, _: &herve::contract::ServiceContext, _: &())
/// #         -> Result<Box<dyn herve::contract::RunningService>, herve::contract::ServiceError> {
/// #         Ok(Box::new(axum::Router::new()))
/// #     }
/// # }
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     herve::host::serve_with(|herve| herve.service_type(Hello)).await
/// }
/// ```
pub async fn serve_with(
    add: impl FnOnce(HerveBuilder) -> HerveBuilder,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let config = Config::load().unwrap_or_else(|error| error.exit());
    let herve = add(HerveBuilder::new(config)).bind().await?;
    tracing::info!("Herve listens on http://{}", herve.local_addr());
    herve.serve(shutdown_signal()).await;
    Ok(())
}

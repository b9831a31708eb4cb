//! The `herve` binary: configuration, logs, and the server until a signal stops it.

use anyhow::Context;
use herve::auth::CredentialSource;
use herve::config::{Config, ConfigError, LogFormat, LogLevel};
use herve::HerveBuilder;

/// How often free memory is handed back to the system.
const MEMORY_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    // First of all, before any secret is read: no process of the same user (a program
    // Herve runs, say) may read this one's memory or environment through /proc.
    if let Err(error) = herve::sys::make_non_dumpable() {
        eprintln!("warning: could not make Herve non-dumpable: {error}");
    }
    herve::sys::tune_allocator();
    let config = match Config::load() {
        Ok(config) => config,
        Err(ConfigError::Invalid(error)) => herve::config::exit_with(error),
        Err(error) => return Err(error.into()),
    };
    // Held until the end of main: dropping it flushes the lines still queued.
    let _log_writer = init_logs(&config);
    raise_open_file_limit();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?
        .block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    if let Err(error) = herve::adopt_orphans() {
        tracing::warn!(%error, "Herve cannot adopt the orphans of its programs");
    }
    // What a burst of clients (slow readers, a flood) made the allocator take is given
    // back a few seconds after they leave, not kept for good.
    tokio::spawn(async {
        let mut every = tokio::time::interval(MEMORY_UPKEEP);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let _ = tokio::task::spawn_blocking(herve::sys::release_free_memory).await;
        }
    });
    let herve = HerveBuilder::new(config.clone())
        .bind()
        .await
        .context("Herve could not start")?;
    let addr = herve.local_addr();
    let auth = herve.admin_auth();
    match auth.source() {
        CredentialSource::Configured => tracing::info!(
            "admin API: HTTP Basic auth as '{}' with AUTH_ADMIN_SECRET",
            auth.id()
        ),
        CredentialSource::Generated { secret, file } => {
            // Printed once, on stdout whatever the log settings: the user needs it.
            println!(
                "Generated admin credentials (kept in {}):\n  id:     {}\n  secret: {}\n\
                 Try: curl -u '{}:{}' http://127.0.0.1:{}/services",
                file.display(),
                auth.id(),
                secret,
                auth.id(),
                secret,
                addr.port()
            );
        }
        CredentialSource::Stored { file } => tracing::info!(
            "admin API: HTTP Basic auth as '{}' with the secret in {}",
            auth.id(),
            file.display()
        ),
    }
    tracing::info!(
        "Herve listens on http://{addr} (data in {})",
        config.data_dir.display()
    );
    herve.serve(herve::shutdown_signal()).await;
    tracing::info!("Herve stopped");
    Ok(())
}

/// Log lines are formatted where they happen but written by a thread of their own, so
/// that a request never waits for stdout. Lossless: under a flood the queue pushes back
/// rather than drop access lines.
fn init_logs(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::filter::LevelFilter;
    let level = match config.log_level {
        LogLevel::Off => LevelFilter::OFF,
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// Each connection is a file descriptor: lift the soft limit to the hard one so that
/// `HERVE_MAX_CONNECTIONS` is not cut short by a default of 1024.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

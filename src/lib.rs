//! Herve: one server that registers, runs, supervises and routes to services.
//!
//! A map of the crate, following a request:
//!
//! - [`server`] accepts connections and applies the HTTP limits;
//! - [`dispatch`] sends `/<uuid>/...` to the running service's routes (through the
//!   [`routing`] snapshot) and every other path to the admin [`api`];
//! - [`api`] checks the admin credentials ([`auth`]) and calls the [`registry`], the
//!   single source of truth, which persists every change through the [`store`] and
//!   calls the service type's hooks;
//! - [`contract`] is the interface every service type implements; [`types`] holds the
//!   built-in ones.
//!
//! To run a Herve with a type of your own, see [`HerveBuilder::service_type`] and
//! `examples/custom_service.rs`.

pub mod api;
pub mod auth;
pub mod config;
pub mod contract;
pub mod dispatch;
pub mod registry;
pub mod routing;
pub mod server;
pub mod store;
pub mod sys;
pub mod types;
pub mod upstream;
pub mod util;

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;

pub use async_trait::async_trait;
pub use config::Config;
pub use contract::{Fields, RunningService, ServiceContext, ServiceError, ServiceType};

use auth::{AdminAuth, AuthSetupError};
use dispatch::Dispatcher;
use registry::Registry;
use routing::RouteTable;
use server::{ServerLimits, Workers};
use store::sqlite::SqliteStore;
use store::{Store, StoreError};
use types::TypeCatalog;
use util::hashing::HashPool;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "herve.db";

/// Why a Herve could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not open the store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("could not start the data-plane workers: {0}")]
    Workers(std::io::Error),
    #[error("another Herve is running on the data directory {path}; stop it first, or give this one another HERVE_DATA_DIR")]
    DataDirInUse { path: PathBuf },
}

/// The file, inside the data directory, that a running Herve holds locked.
const LOCK_FILE: &str = "herve.lock";

/// Takes the data directory for this Herve alone: two Herves on one directory would
/// kill each other's programs and fight over the database.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| StartError::DataDir {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::DataDirInUse {
            path: data_dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StartError::DataDir { path, source }),
    }
}

/// For a binary that owns its process (such as `herve`): makes Herve a child
/// subreaper, so that what a program leaves behind when it dies is re-parented to
/// Herve, killed and reaped, instead of escaping to init. A process that embeds Herve
/// and has children of its own should not call it: Herve reaps every child it did not
/// start. Call it from within the runtime.
pub fn adopt_orphans() -> std::io::Result<()> {
    sys::become_subreaper()?;
    use tokio::signal::unix::{signal, SignalKind};
    let mut child_exited = signal(SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            // A signal may stand for several exits, and one may be missed: look
            // every few seconds as well.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), child_exited.recv()).await;
            let _ = tokio::task::spawn_blocking(types::process::reap_adopted_orphans).await;
        }
    });
    Ok(())
}

/// Sets up a Herve: its configuration and the service types it knows.
pub struct HerveBuilder {
    config: Config,
    /// The user's own types; they replace built-in types of the same name.
    extra_types: TypeCatalog,
}

impl HerveBuilder {
    /// A Herve with `config` and the built-in service types.
    pub fn new(config: Config) -> Self {
        HerveBuilder {
            config,
            extra_types: TypeCatalog::default(),
        }
    }

    /// Adds a service type of your own; it replaces a built-in type of the same name.
    pub fn service_type(mut self, service_type: impl ServiceType) -> Self {
        self.extra_types.add(service_type);
        self
    }

    /// Opens the data directory and the store, listens on the configured address and
    /// starts again the services that were running. Serve with [`Herve::serve`].
    pub async fn bind(self) -> Result<Herve, StartError> {
        let config = self.config;
        let data_dir = config.data_dir.clone();
        let data_dir_error = |source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&data_dir)
            .map_err(data_dir_error)?;
        // Also when it existed already: it holds the admin secret and the database.
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(data_dir_error)?;
        let lock = lock_data_dir(&data_dir)?;

        let hashing = Arc::new(HashPool::for_this_machine().map_err(StartError::Workers)?);
        let auth = Arc::new(AdminAuth::setup(
            config.auth_admin_id.as_deref(),
            config.auth_admin_secret.as_deref(),
            &data_dir,
            config.auth_max_failures as usize,
            Arc::clone(&hashing),
        )?);

        let addr = SocketAddr::new(config.host, config.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;

        let database = SqliteStore::open(&data_dir.join(DATABASE_FILE))?;
        let mut types =
            TypeCatalog::builtin(&database, &hashing, &data_dir, &config.trusted_proxies);
        types.extend(self.extra_types);
        let store: Arc<dyn Store> = Arc::new(database);
        let routes = Arc::new(RouteTable::default());
        let registry = Arc::new(
            Registry::load(
                types,
                store,
                Arc::clone(&routes),
                data_dir.join("services"),
                config.max_services as usize,
            )
            .await?,
        );
        registry.resume().await;

        let admin = api::router(Arc::clone(&registry), Arc::clone(&auth));
        // Admin requests run here, on the runtime that calls `bind`, whichever worker
        // reads them; so do the tasks that lifecycle changes start.
        let dispatcher = Arc::new(Dispatcher::new(
            routes,
            admin,
            tokio::runtime::Handle::current(),
            config.body_limits(),
            config.access_log,
        ));
        let limits = ServerLimits {
            max_connections: config.max_connections,
            max_connections_per_ip: config.max_connections_per_ip,
            max_header_bytes: config.max_header_bytes,
            header_timeout: config.header_timeout(),
            send_timeout: std::time::Duration::from_secs(config.send_timeout_s),
            shutdown_timeout: config.shutdown_timeout(),
        };
        let workers = Workers::start(config.worker_count(), dispatcher, &limits)
            .map_err(StartError::Workers)?;
        Ok(Herve {
            _lock: lock,
            listener,
            local_addr,
            workers,
            limits,
            registry,
            auth,
        })
    }
}

/// A Herve that listens and is ready to serve.
pub struct Herve {
    /// Held while this Herve runs: no other may use its data directory meanwhile.
    _lock: std::fs::File,
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    workers: Workers,
    limits: ServerLimits,
    registry: Arc<Registry>,
    auth: Arc<AdminAuth>,
}

impl Herve {
    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin credentials in use.
    pub fn admin_auth(&self) -> &AdminAuth {
        &self.auth
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Serves until `shutdown` completes, lets in-flight requests finish, then stops
    /// every running service (they start again with the next Herve on this data).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        server::serve(self.listener, self.workers, &self.limits, shutdown).await;
        self.registry.shutdown().await;
    }
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

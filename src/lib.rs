//! Herve: one server that registers, runs, supervises and routes to services.
//!
//! This crate is the composition root: it wires the layers together and exports a few
//! names. The layers, with imports pointing one way (a layer uses only those listed
//! before it, and the leaf modules `util`, `sys` and `runtime`):
//!
//! 1. [`contract`]: the interface every service type implements, and the toolkit a
//!    type author builds with. Public.
//! 2. `upstream`: forwarding to HTTP servers (balancing, health, pooled connections),
//!    shared by the `proxy` and `process` types.
//! 3. `types`: the built-in service types, written as a user's own would be.
//! 4. `data_plane`: everything on the request path: accepting, workers, dispatch, the
//!    route table, body rules, the access log.
//! 5. `control_plane`: everything that changes state: the admin API, admin
//!    authentication, the registry and the store.
//!
//! To run a Herve with a type of your own, see [`HerveBuilder::service_type`] and
//! `examples/`.

#![warn(missing_docs)]

mod config;
pub mod contract;
mod control_plane;
mod data_plane;
pub mod host;
pub mod manifest;
mod runtime;
mod sys;
#[doc(hidden)]
pub mod testing;
mod types;
mod upstream;
mod util;

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use async_trait::async_trait;
pub use config::{AccessLog, AcmeChallenge, Config, ConfigError, LogFormat, LogLevel};
pub use control_plane::admin_auth::{AuthSetupError, CredentialSource};
pub use upstream::TrustedProxies;

use contract::ServiceType;
use control_plane::admin_auth::AdminAuth;
use control_plane::certificates::acme::{self, AcmeSettings, Validation};
use control_plane::certificates::Certificates;
use control_plane::cluster::{Cluster, ClusterSettings, Placement};
use control_plane::registry::{Registry, RegistrySetup, TypeCatalog};
use control_plane::store::{PostgresStore, SqliteStore, Store, StoreError};
use data_plane::{
    CertTable, DispatchSettings, Dispatcher, Door, LineFormat, Listener, LogSink, RouteTable,
    ServerLimits, TlsServing, Workers,
};
use tokio_util::sync::CancellationToken;
use util::hashing::HashPool;
use util::postgres::SharedDb;
use util::sqlite::DbError;

/// The database file inside the data directory.
const DATABASE_FILE: &str = "herve.db";
/// The file, inside the data directory, that a running Herve holds locked.
const LOCK_FILE: &str = "herve.lock";

/// Why a Herve could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be made or used.
    #[error("could not use the data directory {path}: {source}")]
    DataDir {
        /// The path at fault.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// Another Herve holds the data directory.
    #[error("another Herve is running on the data directory {path}; stop it first, or give this one another HERVE_DATA_DIR")]
    DataDirInUse {
        /// The data directory.
        path: PathBuf,
    },
    /// The registry's store could not be opened.
    #[error("could not open the store: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The data of the built-in types could not be opened.
    #[error("could not open the data of the built-in types: {0}")]
    Types(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The admin credentials could not be set up.
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    /// The address could not be listened on.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The HTTPS settings cannot be used.
    #[error("{0}")]
    Tls(String),
    /// The access log's file could not be opened.
    #[error("could not open the access log {path}: {source}")]
    AccessLog {
        /// The file (`HERVE_ACCESS_LOG`).
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The default certificate (`HERVE_TLS_CERT`, `HERVE_TLS_KEY`) or the stored ones
    /// could not be read.
    #[error("could not load the certificates: {0}")]
    Certificates(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The services file (`HERVE_SERVICES_FILE`) could not be read or is invalid.
    #[error("the services file {path} cannot be applied:\n{problems}")]
    ServicesFile {
        /// The file.
        path: PathBuf,
        /// Every problem, one per line.
        problems: String,
    },
    /// The threads of the data plane or of the hashing pool could not start.
    #[error("could not start Herve's threads: {0}")]
    Threads(#[source] std::io::Error),
    /// The cluster settings cannot be used.
    #[error("{0}")]
    Cluster(String),
}

impl From<StoreError> for StartError {
    fn from(error: StoreError) -> Self {
        StartError::Store(Box::new(error))
    }
}

impl From<DbError> for StartError {
    fn from(error: DbError) -> Self {
        StartError::Types(Box::new(error))
    }
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
    /// Call it on the runtime that is to run the control plane (admin requests and
    /// the services' background work).
    pub async fn bind(self) -> Result<Herve, StartError> {
        let config = self.config;
        check_tls_settings(&config)?;
        check_cluster_settings(&config)?;
        let data_dir = config.data_dir.clone();
        prepare_data_dir(&data_dir)?;
        let lock = lock_data_dir(&data_dir)?;

        let hashing = Arc::new(HashPool::for_this_machine().map_err(StartError::Threads)?);
        let auth = Arc::new(AdminAuth::setup(
            config.auth_admin_id.as_deref(),
            config.auth_admin_secret.as_deref(),
            &data_dir,
            config.auth_max_failures as usize,
            Arc::clone(&hashing),
        )?);

        let (main_door, admin_door) = match config.admin_addr {
            Some(_) => (Door::Public, Some(Door::Admin)),
            None => (Door::Both, None),
        };
        let (listener, local_addr) =
            listen(SocketAddr::new(config.host, config.port), main_door, false).await?;
        let mut listeners = vec![listener];
        let mut admin_addr = None;
        if let (Some(addr), Some(door)) = (config.admin_addr, admin_door) {
            let (listener, bound) = listen(addr, door, false).await?;
            listeners.push(listener);
            admin_addr = Some(bound);
        }
        let mut tls_addr = None;
        if let Some(port) = config.tls_port {
            let (listener, bound) =
                listen(SocketAddr::new(config.host, port), main_door, true).await?;
            listeners.push(listener);
            tls_addr = Some(bound);
        }

        let database = data_dir.join(DATABASE_FILE);
        // Cancelled when Herve stops: ACME, watched files, the cluster's tasks.
        let background = CancellationToken::new();
        // A start that fails half way stops what it started.
        let stop_on_failure = background.clone().drop_guard();
        let mut shared = None;
        let mut shared_db = None;
        let mut peer_token = None;
        let store: Arc<dyn Store> = match &config.database_url {
            None => Arc::new(SqliteStore::open(&database)?),
            Some(url) => {
                let ca = config.database_ca.as_deref();
                let db =
                    SharedDb::new(url, util::postgres::POOL_SIZE, ca).map_err(StoreError::from)?;
                let postgres = PostgresStore::open(db.clone(), config.node_name()).await?;
                let mut token = http::HeaderValue::try_from(postgres.peer_secret().await?)
                    .map_err(|_| {
                        StoreError::Database(util::sqlite::DbError::Corrupt(
                            "the nodes' secret in herve_secrets is not a header value".to_owned(),
                        ))
                    })?;
                // Never printed, not even in a debug dump of the settings.
                token.set_sensitive(true);
                peer_token = Some(token.clone());
                shared_db = Some(db);
                // Leases and heartbeats on connections of their own.
                let control = SharedDb::new(url, util::postgres::CONTROL_POOL_SIZE, ca)
                    .map_err(StoreError::from)?;
                let control = PostgresStore::attach(control, config.node_name());
                // Read before the registry loads: changes made meanwhile are applied
                // again, which changes nothing.
                let revision = postgres.revision().await?;
                let settings = ClusterSettings {
                    node: config.node_name(),
                    addr: config.node_addr(local_addr.port()),
                    lease: std::time::Duration::from_secs(
                        config.failover_s.saturating_sub(2).max(2),
                    ),
                    peer_token: token,
                };
                let leases = SharedDb::new(url, util::postgres::LEASE_POOL_SIZE, ca)
                    .map_err(StoreError::from)?;
                let leases = PostgresStore::attach(leases, config.node_name());
                let renewals = SharedDb::new(url, 1, ca).map_err(StoreError::from)?;
                let renewals = PostgresStore::attach(renewals, config.node_name());
                let placement = Arc::new(Placement::new(leases, renewals, settings));
                shared = Some((control, placement, revision));
                Arc::new(postgres)
            }
        };
        let mut types = TypeCatalog::default();
        let builtins = types::Builtins {
            data_dir: data_dir.clone(),
            database,
            shared: shared_db,
            hashing: Arc::clone(&hashing),
            trusted: config.trusted_proxies.clone(),
        };
        for builtin in types::builtin(&builtins).await? {
            types.add_shared(builtin);
        }
        types.extend(self.extra_types);
        let routes = Arc::new(RouteTable::default());
        let registry = Arc::new(
            Registry::load(RegistrySetup {
                types,
                store: Arc::clone(&store),
                routes: Arc::clone(&routes),
                services_dir: data_dir.join("services"),
                max_services: config.max_services as usize,
                workers: config.worker_count(),
                hashing: Arc::clone(&hashing),
                placement: shared
                    .as_ref()
                    .map(|(_, placement, _)| Arc::clone(placement)),
            })
            .await?,
        );
        let cluster = match shared {
            Some((postgres, placement, revision)) => {
                let cluster = Cluster::new(postgres, Arc::clone(&registry), placement, revision);
                // The others must know where this node is before it runs anything.
                cluster.announce().await?;
                cluster.spawn_leases(background.child_token());
                Some(cluster)
            }
            None => None,
        };
        registry.resume().await;
        if let Some(file) = &config.services_file {
            apply_services_file(&registry, file).await?;
        }

        let crypto = util::tls_crypto();
        let cert_table = Arc::new(CertTable::default());
        let default_files = config.tls_cert.clone().zip(config.tls_key.clone());
        let certificates = Arc::new(
            Certificates::load(
                Arc::clone(&cert_table),
                Arc::clone(&store),
                Arc::clone(&crypto),
                default_files.as_ref(),
            )
            .await
            .map_err(|error| StartError::Certificates(Box::new(error)))?,
        );
        if let Some(cluster) = &cluster {
            cluster.spawn(
                Arc::clone(&certificates),
                Arc::clone(&auth),
                background.child_token(),
            );
        }
        if let Some(files) = default_files {
            certificates.watch_files(files, background.child_token());
        }
        if let Some(email) = &config.acme_email {
            acme::spawn(
                Arc::clone(&certificates),
                Arc::clone(&routes),
                AcmeSettings {
                    email: email.clone(),
                    directory: config.acme_directory.clone(),
                    ca_root: config.acme_ca_root.clone(),
                    validation: match config.acme_challenge {
                        AcmeChallenge::TlsAlpn01 => Validation::TlsAlpn,
                        AcmeChallenge::Http01 => Validation::Http,
                    },
                },
                background.child_token(),
            );
        }
        let tls = match tls_addr {
            Some(_) => Some(TlsServing {
                acceptor: tokio_rustls::TlsAcceptor::from(
                    data_plane::server_config(Arc::clone(&cert_table), crypto)
                        .map_err(|error| StartError::Tls(error.to_string()))?,
                ),
                handshake_timeout: config.tls_handshake_timeout(),
            }),
            None => None,
        };

        let access_log = match &config.access_log {
            AccessLog::Off => None,
            target => {
                let (sink, path) = match target {
                    AccessLog::File(path) => (LogSink::File(path.clone()), path.clone()),
                    _ => (LogSink::Stdout, PathBuf::from("stdout")),
                };
                let format = match config.log_format {
                    LogFormat::Text => LineFormat::Text,
                    LogFormat::Json => LineFormat::Json,
                };
                Some(
                    data_plane::AccessLog::start(sink, format)
                        .map_err(|source| StartError::AccessLog { path, source })?,
                )
            }
        };
        let server_meter = Arc::new(data_plane::ServerMeter::default());
        let metrics = Arc::new(control_plane::metrics::Sources {
            registry: Arc::clone(&registry),
            server: Arc::clone(&server_meter),
            certificates: Arc::clone(&certificates),
        });
        if let Some(addr) = config.metrics_addr {
            serve_metrics(addr, Arc::clone(&metrics), background.child_token()).await?;
        }
        let admin = control_plane::api::router(
            Arc::clone(&registry),
            Arc::clone(&auth),
            certificates,
            metrics,
            cluster,
            Arc::new(control_plane::sessions::Sessions::new(&store)),
        );
        // Admin requests run here, on the runtime that calls `bind`, whichever worker
        // reads them; so do the tasks that lifecycle changes start.
        let dispatcher = Arc::new(Dispatcher::new(
            routes,
            admin,
            DispatchSettings {
                control_plane: tokio::runtime::Handle::current(),
                body_limits: config.body_limits(),
                access_log: access_log.clone(),
                certificates: cert_table,
                redirect_to_tls: tls_addr
                    .filter(|_| config.tls_redirect)
                    .map(|addr| addr.port()),
                meter: server_meter,
                peer_token,
            },
        ));
        let limits = ServerLimits {
            max_connections: config.max_connections,
            max_connections_per_ip: config.max_connections_per_ip,
            max_header_bytes: config.max_header_bytes,
            header_timeout: config.header_timeout(),
            send_timeout: config.send_timeout(),
            shutdown_timeout: config.shutdown_timeout(),
        };
        let workers = Workers::start(config.worker_count(), dispatcher, &limits, tls)
            .map_err(StartError::Threads)?;
        stop_on_failure.disarm();
        Ok(Herve {
            _lock: lock,
            listeners,
            local_addr,
            admin_addr,
            tls_addr,
            _background: background.drop_guard(),
            workers,
            limits,
            registry,
            auth,
            access_log,
        })
    }
}

/// A Herve that listens and is ready to serve.
pub struct Herve {
    /// Held while this Herve runs: no other may use its data directory meanwhile.
    _lock: std::fs::File,
    listeners: Vec<Listener>,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    /// Stops the certificates' background work (file watch, ACME) with this Herve.
    _background: tokio_util::sync::DropGuard,
    workers: Workers,
    limits: ServerLimits,
    registry: Arc<Registry>,
    auth: Arc<AdminAuth>,
    access_log: Option<Arc<data_plane::AccessLog>>,
}

impl Herve {
    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the admin API, when it has one of its own (`HERVE_ADMIN_ADDR`).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The address of the HTTPS listener, when there is one (`HERVE_TLS_PORT`).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The admin id, and where the credentials came from.
    pub fn admin_credentials(&self) -> (&str, &CredentialSource) {
        (self.auth.id(), self.auth.source())
    }

    /// Serves until `shutdown` completes, lets in-flight requests finish, then stops
    /// every running service (they start again with the next Herve on this data).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let _reopen = self.access_log.clone().map(reopen_on_sigusr1);
        data_plane::serve(self.listeners, self.workers, &self.limits, shutdown).await;
        self.registry.shutdown().await;
        if let Some(access_log) = &self.access_log {
            // Every line of every answer given, on disk before Herve returns.
            let access_log = Arc::clone(access_log);
            let _ = tokio::task::spawn_blocking(move || access_log.flush()).await;
        }
    }
}

/// Reopens the access log's file on each SIGUSR1, as logrotate expects, while the
/// returned guard lives.
fn reopen_on_sigusr1(access_log: Arc<data_plane::AccessLog>) -> util::AbortOnDrop {
    util::AbortOnDrop::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut signals = match signal(SignalKind::user_defined1()) {
            Ok(signals) => signals,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGUSR1: the access log will not be reopened");
                return;
            }
        };
        while signals.recv().await.is_some() {
            let access_log = Arc::clone(&access_log);
            let _ = tokio::task::spawn_blocking(move || access_log.reopen()).await;
        }
    })
}

/// Nodes of a cluster must share their admin credentials: a secret generated by each
/// node would differ from node to node, and the CLI would work against one only.
fn check_cluster_settings(config: &Config) -> Result<(), StartError> {
    if config.database_url.is_none() {
        return Ok(());
    }
    if config.auth_admin_id.is_none() || config.auth_admin_secret.is_none() {
        return Err(StartError::Cluster(
            "HERVE_DATABASE_URL needs AUTH_ADMIN_ID and AUTH_ADMIN_SECRET, the same on every \
             node (a secret generated by each node would differ from node to node)"
                .to_owned(),
        ));
    }
    if let Some(name) = &config.node_name {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(StartError::Cluster(format!(
                "HERVE_NODE_NAME '{name}' must be 1 to 63 letters, digits, '.', '_' or '-'"
            )));
        }
    }
    if let Some(addr) = &config.node_addr {
        let parsed: Option<http::Uri> = addr.parse().ok();
        let usable = parsed.as_ref().is_some_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
        });
        if !usable {
            return Err(StartError::Cluster(format!(
                "HERVE_NODE_ADDR '{addr}' must be an http:// or https:// URL (http://10.0.0.2:5000)"
            )));
        }
    }
    Ok(())
}

/// The HTTPS settings that only make sense with an HTTPS port.
fn check_tls_settings(config: &Config) -> Result<(), StartError> {
    if config.tls_port.is_some() {
        return Ok(());
    }
    let needs_port = [
        (config.tls_redirect, "HERVE_TLS_REDIRECT"),
        (config.tls_cert.is_some(), "HERVE_TLS_CERT"),
        (config.acme_email.is_some(), "HERVE_ACME_EMAIL"),
    ];
    match needs_port.iter().find(|(set, _)| *set) {
        Some((_, name)) => Err(StartError::Tls(format!(
            "{name} needs HERVE_TLS_PORT (the HTTPS port) to be set"
        ))),
        None => Ok(()),
    }
}

/// Listens on `addr` for what `door` serves (over TLS with `tls`); with the address
/// bound.
async fn listen(
    addr: SocketAddr,
    door: Door,
    tls: bool,
) -> Result<(Listener, SocketAddr), StartError> {
    let socket = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = socket
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((Listener { socket, door, tls }, bound))
}

/// Makes the data directory, and makes it Herve's alone (0700), also when it existed:
/// it holds the admin secret and the database.
fn prepare_data_dir(data_dir: &Path) -> Result<(), StartError> {
    let error = |source| StartError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(error)?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).map_err(error)
}

/// Takes the data directory for this Herve alone: two Herves on one directory would
/// kill each other's programs and fight over the database.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, StartError> {
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

/// Applies `HERVE_SERVICES_FILE` at start: a file that cannot be read or is invalid
/// stops the start; a service that does not start is logged, as at any start.
async fn apply_services_file(registry: &Registry, path: &Path) -> Result<(), StartError> {
    let refuse = |problems: String| StartError::ServicesFile {
        path: path.to_path_buf(),
        problems,
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|error| refuse(error.to_string()))?;
    let manifest = manifest::Manifest::parse(&text).map_err(|problems| {
        refuse(
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let desired = serde_json::from_value(manifest.desired_state(false, false))
        .map_err(|error| refuse(error.to_string()))?;
    match registry.apply(desired).await {
        Ok(changes) => {
            for change in changes {
                match &change.error {
                    None => {
                        tracing::info!(action = ?change.action, service = %change.name, "services file applied")
                    }
                    Some(error) => {
                        tracing::error!(action = ?change.action, service = %change.name, %error, "a change of the services file failed")
                    }
                }
            }
            Ok(())
        }
        Err(control_plane::registry::RegistryError::Plan(problems)) => Err(refuse(
            problems
                .iter()
                .map(|problem| {
                    let line = problem
                        .index
                        .map_or(0, |index| manifest.line_of(index, problem.field.as_deref()));
                    manifest::FileProblem {
                        line,
                        message: problem.message.clone(),
                    }
                    .to_string()
                })
                .collect::<Vec<_>>()
                .join("\n"),
        )),
        Err(error) => Err(refuse(error.to_string())),
    }
}

/// `GET /metrics` without credentials on an address of its own (`HERVE_METRICS_ADDR`),
/// for scrapers; nothing else is served there.
async fn serve_metrics(
    addr: SocketAddr,
    sources: Arc<control_plane::metrics::Sources>,
    stop: CancellationToken,
) -> Result<(), StartError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let router = control_plane::api::metrics_routes(sources);
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the metrics listener stopped");
        }
    });
    Ok(())
}

//! The service contract: the one interface every service type implements, and the kit
//! a type author builds with.
//!
//! Built-in types (`echo`, `proxy`, …) and a user's own types implement the same
//! [`ServiceType`] trait and are added to Herve the same way, through
//! [`crate::HerveBuilder::service_type`]. A built-in type uses nothing a user's own
//! type could not. Herve owns everything around a service — its uuid, name, status,
//! persistence and the prefix of its routes — and calls the type's hooks at the right
//! moments:
//!
//! | moment | hook | what the type does |
//! |---|---|---|
//! | `POST /services/register` | [`ServiceType::register`] | validates its own fields, returns its typed [`ServiceType::Config`] |
//! | `POST /services/:uuid/start` (and on boot, for services that were running) | [`ServiceType::start`] | starts an instance from that configuration and returns it |
//! | `POST /services/:uuid/stop` (and when Herve shuts down) | [`RunningService::stop`] | releases what the instance holds |
//! | `POST /services/:uuid/unregister` | [`ServiceType::unregister`] | deletes what the type keeps for the service |
//! | Herve starts | [`ServiceType::recover`] | cleans up after a Herve that was killed |
//! | `GET /services/:uuid/logs` | [`ServiceType::logs`] | the service's recent output, if it keeps any |
//! | `POST /services/:uuid/reload` | [`RunningService::reload`] | optional: replaces itself without a gap (else Herve swaps in a new instance) |
//! | each request, when the instance has one thing to do | [`RunningService::handler`] | optional: answers without a router (a proxy, `ping`) |
//!
//! While a service runs, Herve mounts the [`Router`] returned by
//! [`RunningService::routes`] at `/<uuid>`: a request for `/<uuid>/echo` reaches the
//! route `/echo` of that router, with the prefix stripped (each request carries the
//! prefix as a [`MountPrefix`] extension, and the client's address as axum's
//! `ConnectInfo<SocketAddr>`).
//!
//! ```
//! use herve::contract::{Fields, RunningService, ServiceContext, ServiceError, ServiceType};
//! use axum::{routing::get, Router};
//! use serde::{Deserialize, Serialize};
//!
//! struct Hello;
//!
//! #[derive(Serialize, Deserialize)]
//! struct HelloConfig { greeting: String }
//!
//! #[herve::async_trait]
//! impl ServiceType for Hello {
//!     type Config = HelloConfig;
//!     fn name(&self) -> &str { "hello" }
//!     fn description(&self) -> &str { "A service greeting whoever asks" }
//!
//!     async fn register(&self, _ctx: &ServiceContext, fields: &Fields)
//!         -> Result<HelloConfig, ServiceError> {
//!         let greeting = fields.optional("greeting").unwrap_or("hello").to_owned();
//!         Ok(HelloConfig { greeting })
//!     }
//!
//!     async fn start(&self, _ctx: &ServiceContext, config: &HelloConfig)
//!         -> Result<Box<dyn RunningService>, ServiceError> {
//!         let greeting = config.greeting.clone();
//!         let routes = Router::new().route("/", get(move || async move { greeting }));
//!         Ok(Box::new(routes))
//!     }
//! }
//! ```
//!
//! # The kit
//!
//! What the first Herve's library offered a type author, and how it is done here:
//!
//! | need | how |
//! |---|---|
//! | routes with parameters | axum's `Router::route("/users/{id}", get(handler))` and the `Path` extractor |
//! | groups with their own middleware | `Router::nest("/admin", admin_routes.layer(...))` or `route_layer` on a sub-router |
//! | a logger | `tracing` (Herve already writes an access line per request; add `tracing::info!` in handlers) |
//! | Basic auth | [`http::basic_credentials`] and a middleware (`axum::middleware::from_fn`) |
//! | reading a form or a JSON body | the [`http::FormOrJson`] extractor: the same [`Fields`] as registration |
//! | JSON answers in Herve's envelope | [`http::Envelope`] and [`http::ApiError`] |
//! | plain-text answers | [`http::plain`] |
//! | cookies | `axum_extra::extract::CookieJar` (re-exported as [`http::CookieJar`]) |
//! | CSRF protection of forms | [`http::CsrfGuard`]: a token bound to a cookie, checked on every unsafe method |
//! | templates with HTML escaping | `minijinja` (re-exported as [`http::minijinja`]): auto-escapes `.html` templates |
//!
//! `examples/` has a runnable program for each, all exercised by the test suite.

mod erased;
mod fields;
pub mod http;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub(crate) use erased::AnyServiceType;
pub use fields::Fields;

/// An upstream of a running instance, as [`RunningService::upstreams`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamState {
    /// Where it is.
    pub url: String,
    /// Whether requests go to it.
    pub healthy: bool,
    /// Requests on it now.
    pub in_flight: usize,
}

/// One registration field of a service type, as [`ServiceType::fields`] describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldSpec {
    /// The field's key.
    pub name: &'static str,
    /// What it means, in a sentence.
    pub help: &'static str,
    /// Whether a registration must give it.
    pub required: bool,
    /// Whether it may be given several times (a list).
    pub repeated: bool,
    /// The value used when it is left out, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<&'static str>,
}

impl FieldSpec {
    /// An optional, single field.
    pub const fn optional(name: &'static str, help: &'static str) -> Self {
        FieldSpec {
            name,
            help,
            required: false,
            repeated: false,
            default: None,
        }
    }

    /// A field a registration must give.
    pub const fn required(name: &'static str, help: &'static str) -> Self {
        FieldSpec {
            required: true,
            ..FieldSpec::optional(name, help)
        }
    }

    /// With a default value.
    pub const fn or(mut self, default: &'static str) -> Self {
        self.default = Some(default);
        self
    }

    /// May be given several times.
    pub const fn many(mut self) -> Self {
        self.repeated = true;
        self
    }
}

/// A kind of service that Herve can register, start and route to.
///
/// Implementations must be cheap to share: Herve keeps one value per type and calls
/// it for every service of that type, possibly concurrently for different services.
/// Herve never calls two hooks of the *same* service at once.
#[async_trait]
pub trait ServiceType: Send + Sync + 'static {
    /// What the type keeps from a registration: Herve persists it (as JSON) with the
    /// service and hands it back to every later hook, typed. Use `()` for none.
    type Config: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The `type` clients register with, e.g. `echo`. Must be unique in one Herve.
    fn name(&self) -> &str;

    /// A one-line description shown in every service of this type.
    fn description(&self) -> &str;

    /// The registration fields this type reads, for forms (the dashboard builds its
    /// register form from them) and documents. The default: none described.
    fn fields(&self) -> Vec<FieldSpec> {
        Vec::new()
    }

    /// Validates the type-specific registration fields and returns the configuration.
    ///
    /// Return [`ServiceError::invalid_field`] for bad input: the client gets a 400
    /// with that message. Parse everything here, once: a strategy or a policy is an
    /// enum of the configuration from now on, never a string parsed again at start.
    async fn register(
        &self,
        ctx: &ServiceContext,
        fields: &Fields,
    ) -> Result<Self::Config, ServiceError>;

    /// Starts one instance of the service from its configuration.
    ///
    /// Herve routes traffic to the instance once this returns `Ok`, and keeps it until
    /// the service is stopped, when it calls [`RunningService::stop`].
    async fn start(
        &self,
        ctx: &ServiceContext,
        config: &Self::Config,
    ) -> Result<Box<dyn RunningService>, ServiceError>;

    /// Whether a second instance of a service with this configuration may start while
    /// the first still runs: an edit (and a reload) then starts the new instance, moves
    /// the routes to it at once and stops the old one once its requests are done, with
    /// no request lost. A type that cannot (a program on a fixed port) is restarted
    /// instead. The default is `true`.
    fn runs_side_by_side(&self, config: &Self::Config) -> bool {
        let _ = config;
        true
    }

    /// Deletes whatever the type keeps for this service outside Herve's registry
    /// (files, tables, …). Called on a stopped service, after Herve forgot it: a
    /// failure here is logged, the service is gone either way.
    async fn unregister(
        &self,
        ctx: &ServiceContext,
        config: &Self::Config,
    ) -> Result<(), ServiceError> {
        let _ = (ctx, config);
        Ok(())
    }

    /// Called once when Herve starts, before any service starts, with every registered
    /// service of this type: the place to clean up after a Herve that was killed (a
    /// program it left running, say). The default does nothing.
    async fn recover(&self, services: &[ServiceContext]) {
        let _ = services;
    }

    /// Each new line of the service's output as it is written, from now on, for
    /// `GET /services/:uuid/logs?follow=true`; `None` when the type keeps no logs (the
    /// default). Herve ends the stream when the client leaves or the service is
    /// unregistered; a type that keeps logs should support it.
    async fn follow_logs(
        &self,
        ctx: &ServiceContext,
        config: &Self::Config,
    ) -> Result<Option<LogLines>, ServiceError> {
        let _ = (ctx, config);
        Ok(None)
    }

    /// The last `tail` lines of the service's output, oldest first, for
    /// `GET /services/:uuid/logs`; `None` when the type keeps no logs (the default).
    /// Called whether or not the service runs.
    async fn logs(
        &self,
        ctx: &ServiceContext,
        config: &Self::Config,
        tail: usize,
    ) -> Result<Option<Vec<String>>, ServiceError> {
        let _ = (ctx, config, tail);
        Ok(None)
    }
}

/// A started instance of a service.
#[async_trait]
pub trait RunningService: Send + Sync + 'static {
    /// The routes Herve mounts at `/<uuid>` while the instance runs.
    ///
    /// Called once, right after [`ServiceType::start`]; the router is then shared by
    /// every request to the service.
    fn routes(&self) -> Router;

    /// Stops the instance. When this returns, the instance must hold nothing that
    /// outlives it (no child process, no open port).
    ///
    /// Requests that were already routed to the instance may still be finishing.
    async fn stop(&self) -> Result<(), ServiceError> {
        Ok(())
    }

    /// Stops the instance as [`RunningService::stop`] does, but gone within `grace`:
    /// a type that gives its work time to end (a program's `stop_timeout_ms`) cuts
    /// that time short. Herve calls it when the instance must be gone by a deadline:
    /// in a cluster, on a node that can no longer renew its lease on the service,
    /// before another node may start it. The default: [`RunningService::stop`].
    async fn stop_within(&self, grace: std::time::Duration) -> Result<(), ServiceError> {
        let _ = grace;
        self.stop().await
    }

    /// Replaces what answers for the instance, without a gap, when the instance can do
    /// it better itself (`POST /services/:uuid/reload`): a `process` service starts a
    /// new copy of its program, moves its requests to it once it is ready and stops
    /// the old one, copy by copy. An error leaves the instance serving as before.
    ///
    /// `None` (the default): Herve starts a new instance beside this one, moves the
    /// routes to it in one swap, and stops this one once its requests are answered
    /// (or restarts it, if its type cannot run side by side).
    async fn reload(&self) -> Option<Result<(), ServiceError>> {
        None
    }

    /// The servers this instance forwards to, and their state now, for the metrics
    /// (`herve_upstream_healthy`, `herve_upstream_in_flight`). Called at each scrape, on
    /// a thread of its own: it must be quick and must not block. The default: none.
    fn upstreams(&self) -> Vec<UpstreamState> {
        Vec::new()
    }

    /// What tells who a bearer token belongs to, when this instance keeps accounts:
    /// other services are then protected by it (`protect=auth:<name>`). The default:
    /// none.
    fn authenticator(&self) -> Option<Arc<dyn Authenticator>> {
        None
    }

    /// What answers every request directly, when the instance has one thing to do (a
    /// proxy forwards everything; `ping` answers one path): Herve then calls it instead
    /// of the router of [`RunningService::routes`], and saves the router's matching and
    /// boxing on each request. The default: none (the router answers).
    fn handler(&self) -> Option<Arc<dyn Handler>> {
        None
    }
}

/// Answers a service's requests without a router (see [`RunningService::handler`]).
/// Requests come as a router would see them: the path relative to the service, the
/// client's address and the [`MountPrefix`] as extensions.
pub trait Handler: Send + Sync + 'static {
    /// The answer to `request`.
    fn answer(&self, request: ::http::Request<axum::body::Body>) -> Answer;
}

/// A [`Handler`]'s answer: made already, or to come.
pub enum Answer {
    /// Made already: nothing is boxed nor awaited.
    Now(::http::Response<axum::body::Body>),
    /// To come.
    Later(
        std::pin::Pin<
            Box<dyn std::future::Future<Output = ::http::Response<axum::body::Body>> + Send>,
        >,
    ),
}

/// Tells who presents a bearer token. Herve asks it for the requests of every service
/// protected by the instance that offers it, caching each answer for less than a
/// second: a token revoked here is refused everywhere within one.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The user `token` belongs to, if it is valid now. It must cost no password
    /// hashing: it runs for every request of a protected service that misses the
    /// cache.
    async fn user_of_token(&self, token: &str) -> Result<Option<String>, ServiceError>;
}

/// A service that is nothing but its routes: stopping it has nothing to release.
#[async_trait]
impl RunningService for Router {
    fn routes(&self) -> Router {
        self.clone()
    }
}

/// What Herve tells a type about the service a hook is called for.
#[derive(Clone)]
pub struct ServiceContext {
    uuid: Uuid,
    name: String,
    data_dir: PathBuf,
    reporter: StatusReporter,
    /// Cancelled when Herve wants the start in progress given up.
    abandon: CancellationToken,
    /// Cancelled when what this start launched must be gone now, grace or not (a
    /// cluster node fencing a program it may no longer run).
    hurry: CancellationToken,
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext")
            .field("uuid", &self.uuid)
            .field("name", &self.name)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl ServiceContext {
    pub(crate) fn new(
        uuid: Uuid,
        name: String,
        data_dir: PathBuf,
        reporter: StatusReporter,
    ) -> Self {
        ServiceContext {
            uuid,
            name,
            data_dir,
            reporter,
            abandon: CancellationToken::new(),
            hurry: CancellationToken::new(),
        }
    }

    pub(crate) fn with_abandon(mut self, abandon: CancellationToken) -> Self {
        self.abandon = abandon;
        self
    }

    pub(crate) fn with_hurry(mut self, hurry: CancellationToken) -> Self {
        self.hurry = hurry;
        self
    }

    /// Cancelled when what the start launches must be gone at once: a stop then
    /// kills without the grace it would give.
    pub(crate) fn hurry(&self) -> &CancellationToken {
        &self.hurry
    }

    /// Completes when Herve wants the [`ServiceType::start`] in progress given up (a
    /// user stopped the service, or Herve is shutting down). A start that waits for
    /// something slow should race it against this, clean up and return an error.
    /// Never completes outside a start.
    pub async fn abandoned(&self) {
        self.abandon.cancelled().await;
    }

    /// The uuid Herve gave the service; its routes live under `/<uuid>`.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// The name the user registered the service with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A directory reserved for this service's files inside Herve's data directory.
    ///
    /// Herve does not create it; a type that needs it creates it, and removes it in
    /// [`ServiceType::unregister`].
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Tells Herve how the service is doing between hooks (a supervised program that
    /// restarts, gives up, …). Keep a clone in whatever runs in the background.
    pub fn reporter(&self) -> &StatusReporter {
        &self.reporter
    }
}

/// What a running service may report about itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// Not ready yet (shown as `starting`); its routes stay mounted.
    Starting,
    /// Ready again (shown as `running`).
    Running,
    /// It gave up (shown as `failed` with the reason, recorded); its routes answer 404
    /// until a user starts it again.
    Failed(String),
    /// It ended by itself and will not come back (shown as `stopped`, recorded).
    Exited(String),
    /// Type-specific runtime facts (pid, restarts, …) shown as `runtime` in the
    /// service's JSON.
    Runtime(Value),
}

/// Where a service's reports go: the registry, for the instance that got this
/// context. Reports from an instance that has been stopped since are ignored. A report
/// may be sent from any thread, with or without an async runtime.
#[derive(Clone)]
pub struct StatusReporter {
    sink: Arc<dyn Fn(Report) + Send + Sync>,
}

impl StatusReporter {
    pub(crate) fn new(sink: impl Fn(Report) + Send + Sync + 'static) -> Self {
        StatusReporter {
            sink: Arc::new(sink),
        }
    }

    /// A reporter that drops every report, for using a type outside a Herve.
    pub fn detached() -> Self {
        StatusReporter::new(|_| {})
    }

    /// Sends one report.
    pub fn report(&self, report: Report) {
        (self.sink)(report);
    }
}

impl std::fmt::Debug for StatusReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusReporter")
    }
}

/// Where the data plane mounted a service for one request: the path prefix it
/// stripped before the service's router saw the path (`/<uuid>` for `/<uuid>/echo`).
/// Every request a service gets carries it as an extension; a service that writes
/// URLs of its own (a `Location`, links) puts it in front of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPrefix(::http::HeaderValue);

impl MountPrefix {
    pub(crate) fn new(prefix: &str) -> Self {
        MountPrefix(
            ::http::HeaderValue::try_from(prefix)
                .unwrap_or_else(|_| ::http::HeaderValue::from_static("")),
        )
    }

    /// The prefix, such as `/<uuid>`; empty when the service is mounted at `/`.
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }

    /// The prefix as a header value (`X-Forwarded-Prefix`), shared, not copied.
    pub fn header_value(&self) -> &::http::HeaderValue {
        &self.0
    }
}

/// Marks a request that another node of the cluster forwarded, proven by the header
/// [`PEER_HEADER`]: its middlewares ran on that node, and its forwarding headers
/// (`X-Forwarded-*`) are that node's, to be kept as a trusted proxy's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FromPeer;

/// The header a node puts on the requests it forwards to another node, with a value
/// only the nodes know; the receiving node removes it before anything sees it.
pub(crate) const PEER_HEADER: &str = "x-herve-peer";

/// A boxed error, the source of a [`ServiceError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Lines of a service's output as they are written, without their newline: what
/// [`ServiceType::follow_logs`] returns.
pub type LogLines = std::pin::Pin<Box<dyn futures_util::Stream<Item = String> + Send>>;

/// Why a hook failed. Herve turns it into the API's answer.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A registration field is missing or invalid: `400` with `message`.
    #[error("{message}")]
    InvalidField {
        /// The field at fault.
        field: String,
        /// The message the client reads; it names the field.
        message: String,
    },
    /// The hook could not do its work: `500` with `message`.
    #[error("{message}")]
    Failed {
        /// What the client reads.
        message: String,
        /// What went wrong underneath, for the logs.
        #[source]
        source: Option<BoxError>,
    },
}

impl ServiceError {
    /// A 400 for the field `field`; `message` should name it.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ServiceError::InvalidField {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A failure of the hook itself (a port in use, a file that cannot be written, …).
    pub fn failed(message: impl Into<String>) -> Self {
        ServiceError::Failed {
            message: message.into(),
            source: None,
        }
    }

    /// A failure of the hook caused by `source`; `message` is what the client reads
    /// (the source's own text is added to it).
    pub fn failed_because(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let message = message.into();
        ServiceError::Failed {
            message: format!("{message}: {source}"),
            source: Some(Box::new(source)),
        }
    }
}

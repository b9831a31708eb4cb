//! The registry: the single source of truth about services, and their lifecycle.
//!
//! Every change goes the same way: validate, persist through the [`Store`], then apply
//! it in memory and publish the data plane's new routing snapshot. The API answers only
//! after that, so an acknowledged change is durable and visible; a change the store
//! refuses is not applied.
//!
//! Locking: a short `std` mutex guards the map of services; each service has two
//! pieces: its state (status, reason, runtime facts, current routes, epoch) behind a
//! short `std` mutex never held across an `.await`, and an async lifecycle lock held
//! for the whole of a start, stop or unregister, so a slow start of one service never
//! holds up the others. Registrations are serialised so that the name check and the
//! insert are one step. When both are needed, the lifecycle lock is taken first; the
//! state lock is taken before the route table's.
//!
//! A running instance may report on itself between hooks (a program that restarts or
//! gives up). Each start and each stop opens a new *epoch* of the service, and a report
//! is applied only while its epoch is current: a late report of a stopped instance
//! changes nothing.

mod apply;
mod catalog;
mod converge;
mod definition;
mod edit;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub(crate) use apply::DesiredState;
pub(crate) use catalog::TypeCatalog;
use definition::{check_routable_name, Claim, Definition, Generic};

use super::cluster::Placement;
use super::store::{ServiceRecord, Status, Store, StoreError};
use crate::contract::{
    AnyServiceType, Fields, LogLines, Report, RunningService, ServiceContext, ServiceError,
    StatusReporter,
};
use crate::data_plane::{
    Chain, HostPattern, MiddlewareSpec, ProtectSpec, RouteTable, ServiceMeter, ServiceRoutes,
    Target,
};
use crate::util::hashing::HashPool;
use crate::util::{lock, unix_now};

/// The most clients following logs at once, over every service.
pub(crate) const MAX_FOLLOWERS: usize = 64;

/// The longest service name, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 63;

/// Why a registry operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    #[error("The service does not exist.")]
    NotFound,
    #[error("This service type does not exist.")]
    UnknownType,
    #[error("{message}")]
    InvalidField { field: String, message: String },
    #[error("A service named '{0}' already exists.")]
    NameTaken(String),
    #[error("The maximum number of services ({0}) has been reached.")]
    TooMany(usize),
    #[error("The service should be stopped before being unregistered")]
    StillRunning,
    #[error("The service is not running: start it instead.")]
    NotRunning,
    #[error("Too many clients follow logs ({0} at most); try again later.")]
    TooManyFollowers(usize),
    /// A desired state was refused: every problem it has.
    #[error("The desired state has {} problem(s); nothing was changed.", .0.len())]
    Plan(Vec<apply::Problem>),
    #[error("The service type '{0}' is not available in this Herve.")]
    TypeUnavailable(String),
    #[error("This service keeps no logs.")]
    NoLogs,
    #[error("Herve is shutting down.")]
    ShuttingDown,
    #[error("The stored record is corrupt ({0}); unregister the service and register it again.")]
    Corrupt(String),
    #[error("The route {route} is taken by the service '{owner}'.")]
    RouteTaken { route: String, owner: String },
    /// A hook of the service's type failed.
    #[error("{0}")]
    Hook(#[source] ServiceError),
    #[error("The change could not be saved: {0}")]
    Store(#[source] StoreError),
    #[error("The service's program runs on the node '{node}' ({addr}): ask that node.")]
    Elsewhere { node: String, addr: String },
}

impl From<StoreError> for RegistryError {
    fn from(error: StoreError) -> Self {
        // What another node did first is the user's conflict, not a failure.
        match error {
            StoreError::NameTaken(name) => RegistryError::NameTaken(name),
            StoreError::RouteTaken { route, owner } => RegistryError::RouteTaken { route, owner },
            other => RegistryError::Store(other),
        }
    }
}

impl From<ServiceError> for RegistryError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::InvalidField { field, message } => {
                RegistryError::InvalidField { field, message }
            }
            failed => RegistryError::Hook(failed),
        }
    }
}

/// A service as the API shows it. The first five keys, in this order, are the
/// contract's; the others are left out when empty.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub(crate) struct ServiceView {
    pub uuid: Uuid,
    pub name: String,
    pub description: String,
    pub status: Status,
    #[serde(rename = "type")]
    pub type_name: String,
    /// The host names it answers for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Its path prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Why the service failed or ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the running instance started (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// What the running instance reports about itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub runtime: Option<Value>,
    /// The type-specific configuration (only when one service is shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    /// In the answer to an edit: the service was stopped and started again, as its
    /// type cannot run two instances side by side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarted: Option<bool>,
}

/// A service and its counters, for `GET /metrics`.
pub(crate) struct Metered {
    pub name: String,
    pub type_name: String,
    pub status: Status,
    pub runtime: Option<Value>,
    pub reading: crate::data_plane::MeterReading,
    pub upstreams: Vec<crate::contract::UpstreamState>,
}

/// The registry at a glance (`GET /services/status`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    pub services: usize,
    pub by_status: std::collections::BTreeMap<Status, usize>,
    pub uptime_s: u64,
}

/// What changes about a service between hooks; under a short lock.
struct State {
    status: Status,
    reason: String,
    runtime: Option<Value>,
    /// What the user defined (replaced whole by an edit).
    definition: Arc<Definition>,
    /// Its middlewares in force (`None` without any), rebuilt only when they change.
    chain: Option<Arc<Chain>>,
    /// The epoch of the current instance: a new one for every start and stop; reports
    /// of other epochs are ignored.
    epoch: u64,
    /// The highest epoch given so far: epochs are never given twice.
    last_epoch: u64,
    /// What the current instance answers with, published again when it recovers.
    target: Option<Arc<Target>>,
    /// The epoch whose instance reported that it failed or ended, if any.
    ended_epoch: u64,
    /// Set while a start runs: cancelling it asks the start to give up.
    abandon: Option<CancellationToken>,
    /// From a start on, until the service is halted: cancelling it makes what the
    /// start launched go at once, grace or not (a fence's last resort).
    hurry: Option<CancellationToken>,
    /// When the instance that answers went live (Unix seconds).
    started_at: Option<u64>,
    /// The instance that answers, reachable without the lifecycle lock: a fence stops
    /// it by its deadline whoever holds that lock.
    instance: Option<Arc<dyn RunningService>>,
    /// The instance forwards to the node of the cluster that runs the program: the
    /// service's middlewares run there, not here.
    forwarding: bool,
}

impl State {
    /// Opens a new epoch; returns it.
    fn next_epoch(&mut self) -> u64 {
        self.last_epoch += 1;
        self.epoch = self.last_epoch;
        self.epoch
    }
}

/// One registered service.
struct Slot {
    uuid: Uuid,
    seq: i64,
    name: String,
    type_name: String,
    /// The type's description.
    description: String,
    /// What is wrong with its stored record, if anything: it cannot start.
    corrupt: Option<String>,
    /// `None` when the database names a type this Herve was not built with.
    service_type: Option<Arc<dyn AnyServiceType>>,
    state: Mutex<State>,
    /// Held for the whole of a start, stop or unregister of this service.
    life: Arc<tokio::sync::Mutex<Life>>,
    /// Cancelled when the service is unregistered: whoever follows it stops.
    gone: CancellationToken,
    /// What its traffic counts, across its instances.
    meter: Arc<ServiceMeter>,
}

#[derive(Default)]
struct Life {
    instance: Option<Arc<dyn RunningService>>,
    /// Set once unregistered: an operation that waited for the lock finds it gone.
    removed: bool,
}

impl Slot {
    /// Asks a start in progress, if any, to give up.
    fn abandon_start(&self) {
        if let Some(abandon) = lock(&self.state).abandon.as_ref() {
            abandon.cancel();
        }
    }

    fn status(&self) -> Status {
        lock(&self.state).status
    }

    fn set_status(&self, status: Status, reason: &str) {
        let mut state = lock(&self.state);
        state.status = status;
        reason.clone_into(&mut state.reason);
    }

    fn definition(&self) -> Arc<Definition> {
        Arc::clone(&lock(&self.state).definition)
    }

    fn view(&self, with_config: bool) -> ServiceView {
        let state = lock(&self.state);
        let definition = &state.definition;
        ServiceView {
            uuid: self.uuid,
            name: self.name.clone(),
            description: definition
                .description
                .clone()
                .unwrap_or_else(|| self.description.clone()),
            status: state.status,
            type_name: self.type_name.clone(),
            hosts: definition
                .hosts
                .iter()
                .map(HostPattern::to_string)
                .collect(),
            path: definition.path.clone(),
            reason: (!state.reason.is_empty()).then(|| state.reason.clone()),
            started_at: state.started_at,
            runtime: state.runtime.clone(),
            config: (with_config && !definition.config.is_null())
                .then(|| definition.config.clone()),
            restarted: None,
        }
    }

    /// Every way to reach the service while `target` answers for it.
    fn routes(&self, state: &State, target: &Arc<Target>) -> ServiceRoutes {
        ServiceRoutes {
            uuid: self.uuid,
            name: self.name.clone(),
            hosts: state.definition.hosts.clone(),
            path: state.definition.path.clone(),
            target: Arc::clone(target),
            chain: state.chain.clone().filter(|_| !state.forwarding),
        }
    }

    /// The record of the service as it is defined now, for the store.
    fn record(&self, definition: &Definition) -> ServiceRecord {
        ServiceRecord {
            seq: self.seq,
            uuid: self.uuid,
            name: self.name.clone(),
            type_name: self.type_name.clone(),
            description: self.description.clone(),
            status: self.status(),
            detail: String::new(),
            created_at: 0,
            ..definition.record()
        }
    }
}

#[derive(Default)]
struct Services {
    by_uuid: HashMap<Uuid, Arc<Slot>>,
    names: HashSet<String>,
    /// The routes services claim, and by which: no two claim the same.
    claims: HashMap<Claim, Uuid>,
}

impl Services {
    /// A claim of `claims` that another service than `owner` holds, with its name.
    fn conflict(&self, owner: Uuid, claims: &[Claim]) -> Option<(String, String)> {
        claims.iter().find_map(|claim| {
            let holder = self.claims.get(claim).filter(|holder| **holder != owner)?;
            let name = self.by_uuid.get(holder).map(|slot| slot.name.clone())?;
            Some((claim.describe(), name))
        })
    }

    /// Moves `owner`'s claims from `old` to `new`.
    fn reclaim(&mut self, owner: Uuid, old: &[Claim], new: Vec<Claim>) {
        for claim in old {
            if self.claims.get(claim) == Some(&owner) {
                self.claims.remove(claim);
            }
        }
        for claim in new {
            self.claims.insert(claim, owner);
        }
    }
}

/// The registry of services. Cheap to share behind an `Arc`.
pub(crate) struct Registry {
    types: TypeCatalog,
    store: Arc<dyn Store>,
    routes: Arc<RouteTable>,
    services_dir: PathBuf,
    max_services: usize,
    services: Mutex<Services>,
    registering: tokio::sync::Mutex<()>,
    /// Set by [`Registry::shutdown`]: no instance may start after it.
    closing: AtomicBool,
    /// Cancelled by [`Registry::shutdown`]: replaced instances stop at once.
    closing_token: CancellationToken,
    /// Replaced instances finishing their requests before they stop.
    draining: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Every change takes it shared; an apply takes it whole, so that its plan and its
    /// changes are one step for every other caller.
    gate: tokio::sync::RwLock<()>,
    /// When this registry was loaded, for the server's uptime.
    loaded_at: std::time::Instant,
    /// One permit per client following logs.
    followers: Arc<tokio::sync::Semaphore>,
    /// Data-plane workers, for the services' counters.
    workers: usize,
    /// The control plane's runtime: reports may come from any thread, and their
    /// recording runs here.
    runtime: tokio::runtime::Handle,
    /// Where the services' Basic credentials are checked.
    hashing: Arc<HashPool>,
    /// In a cluster: which node runs the services that run on one node at a time.
    placement: Option<Arc<Placement>>,
}

/// Where a registry is kept and what bounds it.
pub(crate) struct RegistrySetup {
    pub types: TypeCatalog,
    pub store: Arc<dyn Store>,
    pub routes: Arc<RouteTable>,
    pub services_dir: PathBuf,
    pub max_services: usize,
    /// Data-plane workers: each service's counters have a slot per worker.
    pub workers: usize,
    /// Where the services' Basic credentials are checked.
    pub hashing: Arc<HashPool>,
    /// In a cluster: which node runs the services that run on one node at a time.
    pub placement: Option<Arc<Placement>>,
}

impl Registry {
    /// Loads every service from the store. Call [`Registry::resume`] afterwards to
    /// start again the services that were running. Called on the control plane's
    /// runtime.
    pub async fn load(setup: RegistrySetup) -> Result<Registry, StoreError> {
        let RegistrySetup {
            types,
            store,
            routes,
            services_dir,
            max_services,
            workers,
            hashing,
            placement,
        } = setup;
        let records = store.load().await?;
        let mut services = Services::default();
        for record in records {
            let service_type = types.get(&record.type_name).cloned();
            if service_type.is_none() {
                tracing::warn!(
                    uuid = %record.uuid,
                    r#type = %record.type_name,
                    "service of a type this Herve does not have; it is kept but cannot start"
                );
            }
            let slot =
                Slot::from_record(record, service_type, ServiceMeter::new(workers), &hashing);
            services.names.insert(slot.name.clone());
            let claims = slot.definition().claims();
            services.reclaim(slot.uuid, &[], claims);
            services.by_uuid.insert(slot.uuid, Arc::new(slot));
        }
        Ok(Registry {
            types,
            store,
            routes,
            services_dir,
            max_services,
            services: Mutex::new(services),
            registering: tokio::sync::Mutex::new(()),
            closing: AtomicBool::new(false),
            closing_token: CancellationToken::new(),
            draining: Mutex::new(Vec::new()),
            gate: tokio::sync::RwLock::new(()),
            loaded_at: std::time::Instant::now(),
            followers: Arc::new(tokio::sync::Semaphore::new(MAX_FOLLOWERS)),
            workers,
            runtime: tokio::runtime::Handle::current(),
            hashing,
            placement,
        })
    }

    /// Lets every type clean up after an earlier Herve, then starts again every
    /// service whose persisted status says it should run.
    pub async fn resume(&self) {
        let mut by_type: HashMap<String, (Arc<dyn AnyServiceType>, Vec<ServiceContext>)> =
            HashMap::new();
        for slot in lock(&self.services).by_uuid.values() {
            if let Some(service_type) = &slot.service_type {
                by_type
                    .entry(slot.type_name.clone())
                    .or_insert_with(|| (Arc::clone(service_type), Vec::new()))
                    .1
                    .push(self.context(slot.uuid, &slot.name, StatusReporter::detached()));
            }
        }
        for (service_type, services) in by_type.values() {
            service_type.recover(services).await;
        }

        let to_start: Vec<Arc<Slot>> = {
            let services = lock(&self.services);
            let mut slots: Vec<_> = services
                .by_uuid
                .values()
                .filter(|slot| slot.status().should_run())
                .cloned()
                .collect();
            slots.sort_by_key(|slot| slot.seq);
            slots
        };
        let starts = to_start.into_iter().map(|slot| async move {
            let mut life = slot.life.lock().await;
            if let Err(error) = self.start_locked(&slot, &mut life).await {
                tracing::error!(uuid = %slot.uuid, name = %slot.name, %error, "could not resume service");
            }
        });
        futures_util::future::join_all(starts).await;
    }

    /// Every service, newest first.
    pub fn list(&self) -> Vec<ServiceView> {
        let mut slots: Vec<Arc<Slot>> = lock(&self.services).by_uuid.values().cloned().collect();
        slots.sort_unstable_by_key(|slot| std::cmp::Reverse(slot.seq));
        slots.iter().map(|slot| slot.view(false)).collect()
    }

    /// One service, with its configuration.
    pub fn get(&self, uuid: Uuid) -> Result<ServiceView, RegistryError> {
        Ok(self.slot(uuid)?.view(true))
    }

    /// Registers a new service of type `type_name` named `name`.
    pub async fn register(
        &self,
        name: &str,
        type_name: &str,
        fields: &Fields,
    ) -> Result<ServiceView, RegistryError> {
        validate_name(name)?;
        let service_type = self
            .types
            .get(type_name)
            .cloned()
            .ok_or(RegistryError::UnknownType)?;
        let generic = Generic::read(fields)?;
        let _shared = self.gate.read().await;
        self.register_unguarded(name, service_type, generic, fields)
            .await
    }

    /// Registers a service; the caller holds the gate.
    async fn register_unguarded(
        &self,
        name: &str,
        service_type: Arc<dyn AnyServiceType>,
        generic: Generic,
        fields: &Fields,
    ) -> Result<ServiceView, RegistryError> {
        let type_name = service_type.name().to_owned();
        let type_name = type_name.as_str();
        let _registering = self.registering.lock().await;
        self.check_room_for(name)?;
        self.check_authority(name, &generic.middlewares)?;
        check_node(type_name, &generic)?;
        let uuid = Uuid::new_v4();
        let ctx = self.context(uuid, name, StatusReporter::detached());
        let config = service_type.register(&ctx, fields).await?;
        let definition = Definition::new(generic, fields, config);
        let claims = definition.claims();
        let conflict = lock(&self.services).conflict(uuid, &claims);
        if let Some((route, owner)) = conflict {
            if let Err(cleanup) = service_type.unregister(&ctx, &definition.config).await {
                tracing::warn!(%uuid, error = %cleanup, "cleanup after a refused registration failed");
            }
            return Err(RegistryError::RouteTaken { route, owner });
        }
        let mut record = ServiceRecord {
            seq: 0,
            uuid,
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            description: service_type.description().to_owned(),
            status: Status::Registered,
            detail: String::new(),
            created_at: unix_now(),
            ..definition.record()
        };
        record.seq = match self.store.insert(&record).await {
            Ok(seq) => seq,
            Err(error) => {
                // Undo what the hook may have created; the service never existed.
                if let Err(cleanup) = service_type.unregister(&ctx, &record.config).await {
                    tracing::warn!(%uuid, error = %cleanup, "cleanup after a failed registration failed");
                }
                return Err(error.into());
            }
        };
        let slot = Arc::new(Slot::from_record(
            record,
            Some(service_type),
            ServiceMeter::new(self.workers),
            &self.hashing,
        ));
        let view = slot.view(true);
        let mut services = lock(&self.services);
        services.names.insert(slot.name.clone());
        services.reclaim(uuid, &[], claims);
        services.by_uuid.insert(uuid, slot);
        Ok(view)
    }

    /// Refuses `protect=auth:<service>` naming no service, or the service `own`
    /// itself (nobody could then sign up nor log in).
    fn check_authority(
        &self,
        own: &str,
        middlewares: &MiddlewareSpec,
    ) -> Result<(), RegistryError> {
        let Some(ProtectSpec::Auth(reference)) = &middlewares.protect else {
            return Ok(());
        };
        let invalid = |message: String| RegistryError::InvalidField {
            field: "protect".to_owned(),
            message,
        };
        let services = lock(&self.services);
        let authority = match Uuid::try_parse(reference) {
            Ok(uuid) => services.by_uuid.get(&uuid),
            Err(_) => services
                .by_uuid
                .values()
                .find(|slot| slot.name == *reference),
        };
        match authority {
            None => Err(invalid(format!(
                "The field 'protect' names no service: there is no auth service '{reference}'."
            ))),
            Some(slot) if slot.name == own => Err(invalid(
                "A service cannot be protected by itself.".to_owned(),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Starts a service; starting a running service does nothing.
    pub async fn start(&self, uuid: Uuid) -> Result<ServiceView, RegistryError> {
        let _shared = self.gate.read().await;
        let (slot, mut life) = self.locked(uuid, false).await?;
        self.start_locked(&slot, &mut life).await?;
        Ok(slot.view(false))
    }

    /// Stops a service; stopping a service that does not run does nothing. The stop
    /// is saved first: if the store refuses it, the service goes on as it was.
    pub async fn stop(&self, uuid: Uuid) -> Result<ServiceView, RegistryError> {
        let _shared = self.gate.read().await;
        self.stop_unguarded(uuid).await
    }

    /// Stops a service; the caller holds the gate.
    async fn stop_unguarded(&self, uuid: Uuid) -> Result<ServiceView, RegistryError> {
        let (slot, mut life) = self.locked(uuid, true).await?;
        // Record `stopped` whenever the status says anything else than "not running":
        // also after a start or stop that failed halfway. One that never ran stays
        // `registered`.
        let record = !matches!(slot.status(), Status::Registered | Status::Stopped);
        if record {
            self.store.set_status(uuid, Status::Stopped, "").await?;
        }
        self.halt(&slot, &mut life).await;
        if record {
            slot.set_status(Status::Stopped, "");
        }
        Ok(slot.view(false))
    }

    /// Stops a service if it runs, then starts it.
    pub async fn restart(&self, uuid: Uuid) -> Result<ServiceView, RegistryError> {
        let _shared = self.gate.read().await;
        let (slot, mut life) = self.locked(uuid, true).await?;
        self.halt(&slot, &mut life).await;
        self.start_locked(&slot, &mut life).await?;
        Ok(slot.view(false))
    }

    /// Forgets a stopped service.
    pub async fn unregister(&self, uuid: Uuid) -> Result<ServiceView, RegistryError> {
        let _shared = self.gate.read().await;
        self.unregister_unguarded(uuid).await
    }

    /// Forgets a stopped service; the caller holds the gate.
    async fn unregister_unguarded(&self, uuid: Uuid) -> Result<ServiceView, RegistryError> {
        let (slot, mut life) = self.locked(uuid, false).await?;
        if life.instance.is_some() {
            if slot.status().should_run() {
                return Err(RegistryError::StillRunning);
            }
            // An instance that gave up by itself: nothing of it should outlive this.
            self.halt(&slot, &mut life).await;
        }
        self.forget(&slot, &mut life).await?;
        Ok(slot.view(false))
    }

    /// Forgets `slot`, whose instance is stopped; the caller holds its lifecycle lock.
    async fn forget(&self, slot: &Arc<Slot>, life: &mut Life) -> Result<(), RegistryError> {
        let uuid = slot.uuid;
        // Forget the service first: once the row is gone it no longer exists, whatever
        // happens to the type's cleanup, which can only leave files behind.
        self.store.remove(uuid).await?;
        life.removed = true;
        slot.gone.cancel();
        if let Some(placement) = self.placement_of(slot) {
            placement.unfence(uuid);
        }
        let definition = slot.definition();
        {
            let mut services = lock(&self.services);
            services.by_uuid.remove(&uuid);
            services.names.remove(&slot.name);
            services.reclaim(uuid, &definition.claims(), Vec::new());
        }
        if let Some(service_type) = &slot.service_type {
            let ctx = self.context(uuid, &slot.name, StatusReporter::detached());
            if let Err(error) = service_type.unregister(&ctx, &definition.config).await {
                tracing::warn!(%uuid, %error, "the type's unregister hook failed; its files may remain");
            }
        }
        Ok(())
    }

    /// The last `tail` lines of a service's output.
    pub async fn logs(&self, uuid: Uuid, tail: usize) -> Result<Vec<String>, RegistryError> {
        let slot = self.slot(uuid)?;
        self.check_runs_here(&slot)?;
        let Some(service_type) = &slot.service_type else {
            return Err(RegistryError::TypeUnavailable(slot.type_name.clone()));
        };
        let ctx = self.context(uuid, &slot.name, StatusReporter::detached());
        service_type
            .logs(&ctx, &slot.definition().config, tail)
            .await?
            .ok_or(RegistryError::NoLogs)
    }

    /// Replaces what answers for a running service without a gap: the type's own
    /// reload if it has one, else a new instance beside the old one (or a restart, for a
    /// type that cannot run two). If the new instance does not get ready, the old one
    /// answers on and the error says why.
    pub async fn reload(&self, uuid: Uuid) -> Result<ServiceView, RegistryError> {
        let _shared = self.gate.read().await;
        let (slot, mut life) = self.locked(uuid, false).await?;
        if let Some(problem) = &slot.corrupt {
            return Err(RegistryError::Corrupt(problem.clone()));
        }
        self.check_runs_here(&slot)?;
        let Some(service_type) = slot.service_type.clone() else {
            return Err(RegistryError::TypeUnavailable(slot.type_name.clone()));
        };
        let Some(instance) = life
            .instance
            .as_ref()
            .filter(|_| slot.status().should_run())
        else {
            return Err(RegistryError::NotRunning);
        };
        if let Some(reloaded) = instance.reload().await {
            reloaded?;
            return Ok(slot.view(false));
        }
        let current = slot.definition();
        let mut restarted = false;
        if service_type.runs_side_by_side(&current.config) && self.placement_of(&slot).is_none() {
            self.replace_beside(
                &slot,
                &mut life,
                &service_type,
                &current,
                (*current).clone(),
            )
            .await?;
        } else {
            self.halt(&slot, &mut life).await;
            restarted = true;
            self.start_locked(&slot, &mut life).await?;
        }
        let mut view = slot.view(false);
        view.restarted = restarted.then_some(true);
        Ok(view)
    }

    /// The last `tail` lines of a service's output, then each new line as it is
    /// written, until the service is unregistered or Herve shuts down.
    pub async fn follow_logs(
        &self,
        uuid: Uuid,
        tail: usize,
    ) -> Result<(Vec<String>, LogLines), RegistryError> {
        let slot = self.slot(uuid)?;
        self.check_runs_here(&slot)?;
        let Some(service_type) = &slot.service_type else {
            return Err(RegistryError::TypeUnavailable(slot.type_name.clone()));
        };
        let permit = Arc::clone(&self.followers)
            .try_acquire_owned()
            .map_err(|_| RegistryError::TooManyFollowers(MAX_FOLLOWERS))?;
        let ctx = self.context(uuid, &slot.name, StatusReporter::detached());
        let config = &slot.definition().config;
        // Followed from here first: a line written while the tail is read is not lost
        // (it may show twice).
        let lines = service_type
            .follow_logs(&ctx, config)
            .await?
            .ok_or(RegistryError::NoLogs)?;
        let last = service_type
            .logs(&ctx, config, tail)
            .await?
            .ok_or(RegistryError::NoLogs)?;
        let until = {
            let gone = slot.gone.clone();
            let closing = self.closing_token.clone();
            async move {
                tokio::select! {
                    () = gone.cancelled() => {}
                    () = closing.cancelled() => {}
                }
            }
        };
        let lines = futures_util::StreamExt::take_until(lines, Box::pin(until));
        // The permit goes with the stream.
        let lines = futures_util::StreamExt::map(lines, move |line| {
            let _held = &permit;
            line
        });
        Ok((last, Box::pin(lines)))
    }

    /// Every type this Herve can register, with the fields it describes.
    pub fn types(&self) -> Vec<serde_json::Value> {
        self.types
            .all()
            .into_iter()
            .map(|service_type| {
                serde_json::json!({
                    "name": service_type.name(),
                    "description": service_type.description(),
                    "fields": service_type.fields(),
                    "common_fields": definition::COMMON_FIELDS,
                })
            })
            .collect()
    }

    /// Every service with what its traffic counted, for the metrics.
    pub fn metered(&self) -> Vec<Metered> {
        let slots: Vec<Arc<Slot>> = lock(&self.services).by_uuid.values().cloned().collect();
        slots
            .iter()
            .map(|slot| {
                // A start or stop under way holds the instance: its upstreams are left
                // out of this scrape rather than waited for.
                let upstreams = slot
                    .life
                    .try_lock()
                    .ok()
                    .and_then(|life| life.instance.as_ref().map(|instance| instance.upstreams()))
                    .unwrap_or_default();
                let state = lock(&slot.state);
                Metered {
                    upstreams,
                    name: slot.name.clone(),
                    type_name: slot.type_name.clone(),
                    status: state.status,
                    runtime: state.runtime.clone(),
                    reading: slot.meter.read(),
                }
            })
            .collect()
    }

    /// How many services there are in each status, and how long this Herve has run.
    pub fn summary(&self) -> Summary {
        let services = lock(&self.services);
        let mut by_status = std::collections::BTreeMap::new();
        for slot in services.by_uuid.values() {
            *by_status.entry(slot.status()).or_insert(0) += 1;
        }
        Summary {
            services: services.by_uuid.len(),
            by_status,
            uptime_s: self.loaded_at.elapsed().as_secs(),
        }
    }

    /// Stops every running instance without recording it, so that the next start of
    /// Herve starts them again. Used when Herve shuts down.
    pub async fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.closing_token.cancel();
        let draining = std::mem::take(&mut *lock(&self.draining));
        futures_util::future::join_all(draining).await;
        let slots: Vec<Arc<Slot>> = lock(&self.services).by_uuid.values().cloned().collect();
        for slot in &slots {
            slot.abandon_start();
        }
        let stops = slots.iter().map(|slot| async move {
            let mut life = slot.life.lock().await;
            self.halt(slot, &mut life).await;
        });
        futures_util::future::join_all(stops).await;
    }

    /// Service `uuid` with its lifecycle lock held. A stop asks a slow start in
    /// progress to give up first (`abandon`), or it would wait for it to end.
    async fn locked(
        &self,
        uuid: Uuid,
        abandon: bool,
    ) -> Result<(Arc<Slot>, tokio::sync::OwnedMutexGuard<Life>), RegistryError> {
        let slot = self.slot(uuid)?;
        if abandon {
            slot.abandon_start();
        }
        let life = Arc::clone(&slot.life).lock_owned().await;
        if life.removed {
            return Err(RegistryError::NotFound);
        }
        Ok((slot, life))
    }

    fn slot(&self, uuid: Uuid) -> Result<Arc<Slot>, RegistryError> {
        lock(&self.services)
            .by_uuid
            .get(&uuid)
            .cloned()
            .ok_or(RegistryError::NotFound)
    }

    fn check_room_for(&self, name: &str) -> Result<(), RegistryError> {
        let services = lock(&self.services);
        if services.names.contains(name) {
            return Err(RegistryError::NameTaken(name.to_owned()));
        }
        if services.by_uuid.len() >= self.max_services {
            return Err(RegistryError::TooMany(self.max_services));
        }
        Ok(())
    }

    fn context(&self, uuid: Uuid, name: &str, reporter: StatusReporter) -> ServiceContext {
        ServiceContext::new(
            uuid,
            name.to_owned(),
            self.services_dir.join(uuid.to_string()),
            reporter,
        )
    }

    /// A reporter that applies the reports of the instance started in `epoch`.
    fn reporter(&self, slot: &Arc<Slot>, epoch: u64) -> StatusReporter {
        let recorder = Recorder {
            slot: Arc::downgrade(slot),
            epoch,
            store: Arc::clone(&self.store),
            routes: Arc::clone(&self.routes),
            runtime: self.runtime.clone(),
        };
        StatusReporter::new(move |report| recorder.apply(report))
    }

    /// Starts `slot` unless it runs; the caller holds its lifecycle lock.
    async fn start_locked(&self, slot: &Arc<Slot>, life: &mut Life) -> Result<(), RegistryError> {
        if life.instance.is_some() {
            if slot.status().should_run() {
                return Ok(());
            }
            // The instance gave up by itself; make room for a new one.
            self.halt(slot, life).await;
        }
        if self.closing.load(Ordering::SeqCst) {
            return Err(RegistryError::ShuttingDown);
        }
        if let Some(problem) = &slot.corrupt {
            return Err(RegistryError::Corrupt(problem.clone()));
        }
        let Some(service_type) = &slot.service_type else {
            // Shown as failed, but the stored status keeps the intent, for a Herve
            // built with the type.
            slot.set_status(Status::Failed, "the type is not available in this Herve");
            return Err(RegistryError::TypeUnavailable(slot.type_name.clone()));
        };
        let abandon = CancellationToken::new();
        let hurry = CancellationToken::new();
        let (epoch, stored_running, definition) = {
            let mut state = lock(&slot.state);
            let epoch = state.next_epoch();
            state.runtime = None;
            state.abandon = Some(abandon.clone());
            state.hurry = Some(hurry.clone());
            // On resume (and restart) the store says `running` already: no write.
            (
                epoch,
                state.status == Status::Running,
                Arc::clone(&state.definition),
            )
        };
        let ctx = self
            .context(slot.uuid, &slot.name, self.reporter(slot, epoch))
            .with_abandon(abandon)
            .with_hurry(hurry);
        let started = match self.placement_of(slot) {
            Some(placement) => {
                placement
                    .start(
                        &ctx,
                        service_type,
                        &definition.config,
                        definition.node.as_deref(),
                        self.types.get("proxy"),
                    )
                    .await
            }
            None => service_type.start(&ctx, &definition.config).await,
        };
        lock(&slot.state).abandon = None;
        let instance = match started {
            Ok(instance) => instance,
            Err(error) => {
                let reason = error.to_string();
                {
                    let mut state = lock(&slot.state);
                    state.next_epoch();
                    state.status = Status::Failed;
                    state.reason.clone_from(&reason);
                }
                if let Err(store_error) = self
                    .store
                    .set_status(slot.uuid, Status::Failed, &reason)
                    .await
                {
                    tracing::error!(uuid = %slot.uuid, error = %store_error, "could not record a failed start");
                }
                return Err(error.into());
            }
        };
        if !stored_running {
            if let Err(error) = self.store.set_status(slot.uuid, Status::Running, "").await {
                lock(&slot.state).next_epoch();
                if let Err(stop_error) = instance.stop().await {
                    tracing::warn!(uuid = %slot.uuid, error = %stop_error, "stop after a failed save failed");
                }
                // Nor is it placed here any more (a lease kept would be renewed for
                // nothing, and the other nodes would forward to nothing).
                if let Some(placement) = self.placement_of(slot) {
                    placement.release(slot.uuid).await;
                }
                // Nothing runs: say so rather than keep whatever the start reported.
                slot.set_status(Status::Failed, &error.to_string());
                return Err(error.into());
            }
        }
        self.go_live(slot, life, instance, epoch)
    }

    /// Makes `instance` (started in `epoch`) the one that answers: routes published
    /// (replacing any that were), status `running`. The caller holds the lifecycle
    /// lock; the instance it replaces, if any, is the caller's to stop.
    fn go_live(
        &self,
        slot: &Arc<Slot>,
        life: &mut Life,
        instance: Box<dyn RunningService>,
        epoch: u64,
    ) -> Result<(), RegistryError> {
        let target = Target::new(
            instance.routes(),
            Arc::clone(&slot.meter),
            instance.authenticator(),
            instance.handler(),
        );
        let instance: Arc<dyn RunningService> = Arc::from(instance);
        life.instance = Some(Arc::clone(&instance));
        let forwarding = self
            .placement_of(slot)
            .is_some_and(|placement| placement.runs_elsewhere(slot.uuid).is_some());
        let mut state = lock(&slot.state);
        state.instance = Some(instance);
        state.forwarding = forwarding;
        if state.ended_epoch == epoch {
            // It failed or ended between becoming ready and now: the report said so
            // (and records it once this start lets go of the lifecycle lock).
            let reason = state.reason.clone();
            return Err(RegistryError::Hook(ServiceError::failed(format!(
                "The service ended right after it started: {reason}"
            ))));
        }
        self.routes.publish(slot.routes(&state, &target));
        state.target = Some(target);
        state.status = Status::Running;
        state.reason.clear();
        state.started_at = Some(unix_now().max(0).unsigned_abs());
        Ok(())
    }

    /// Withdraws the routes of `slot` and stops its instance, if any; the caller holds
    /// its lifecycle lock and records the status.
    async fn halt(&self, slot: &Slot, life: &mut Life) {
        self.halt_within(slot, life, None).await;
    }

    /// As `halt`, with the instance gone by `deadline` when one is given.
    async fn halt_within(&self, slot: &Slot, life: &mut Life, deadline: Option<Instant>) {
        {
            // A new epoch first: whatever the instance still reports is now stale.
            let mut state = lock(&slot.state);
            state.next_epoch();
            state.target = None;
            state.runtime = None;
            state.started_at = None;
            state.instance = None;
            state.hurry = None;
            state.forwarding = false;
        }
        let Some(instance) = life.instance.take() else {
            // Nothing runs here; a lease or a forwarding left behind goes all the same.
            if let Some(placement) = self.placement_of(slot) {
                placement.release(slot.uuid).await;
            }
            return;
        };
        // Withdraw next: no new request reaches an instance that is going away.
        self.routes.withdraw(&slot.uuid);
        let stopped = match deadline {
            Some(deadline) => {
                instance
                    .stop_within(deadline.saturating_duration_since(Instant::now()))
                    .await
            }
            None => instance.stop().await,
        };
        if let Err(error) = stopped {
            tracing::warn!(uuid = %slot.uuid, %error, "service did not stop cleanly");
        }
        if let Some(placement) = self.placement_of(slot) {
            placement.release(slot.uuid).await;
        }
    }

    /// Refuses what only the node that runs a program can do (its logs, a reload),
    /// naming that node.
    fn check_runs_here(&self, slot: &Slot) -> Result<(), RegistryError> {
        match self
            .placement_of(slot)
            .and_then(|placement| placement.runs_elsewhere(slot.uuid))
        {
            Some((node, addr)) => Err(RegistryError::Elsewhere { node, addr }),
            None => Ok(()),
        }
    }

    /// The cluster's placement, if `slot` runs on one node at a time.
    fn placement_of(&self, slot: &Slot) -> Option<&Arc<Placement>> {
        self.placement
            .as_ref()
            .filter(|placement| placement.places(&slot.type_name))
    }
}

impl Slot {
    fn from_record(
        record: ServiceRecord,
        service_type: Option<Arc<dyn AnyServiceType>>,
        meter: Arc<ServiceMeter>,
        hashing: &Arc<HashPool>,
    ) -> Slot {
        let (definition, problem) = Definition::stored(&record);
        let corrupt = record.corrupt.clone().or(problem);
        let chain = Chain::build(&definition.middlewares, &record.name, hashing);
        let description = service_type
            .as_ref()
            .map(|t| t.description().to_owned())
            .unwrap_or(record.description);
        let (status, reason) = match &corrupt {
            Some(problem) => {
                tracing::error!(uuid = %record.uuid, %problem, "a stored service is corrupt; it is shown as failed");
                (
                    Status::Failed,
                    format!("The stored record is corrupt: {problem}."),
                )
            }
            None => (record.status, record.detail),
        };
        Slot {
            uuid: record.uuid,
            seq: record.seq,
            name: record.name,
            type_name: record.type_name,
            description,
            corrupt,
            service_type,
            state: Mutex::new(State {
                status,
                reason,
                runtime: None,
                definition: Arc::new(definition),
                chain,
                epoch: 0,
                last_epoch: 0,
                target: None,
                ended_epoch: 0,
                abandon: None,
                hurry: None,
                started_at: None,
                instance: None,
                forwarding: false,
            }),
            life: Arc::new(tokio::sync::Mutex::new(Life::default())),
            gone: CancellationToken::new(),
            meter,
        }
    }
}

/// Applies the reports of one instance (the one started in `epoch`).
struct Recorder {
    slot: Weak<Slot>,
    epoch: u64,
    store: Arc<dyn Store>,
    routes: Arc<RouteTable>,
    runtime: tokio::runtime::Handle,
}

impl Recorder {
    fn apply(&self, report: Report) {
        let Some(slot) = self.slot.upgrade() else {
            return;
        };
        let mut state = lock(&slot.state);
        if state.epoch != self.epoch {
            return;
        }
        let (status, reason) = match report {
            Report::Runtime(runtime) => {
                state.runtime = Some(runtime);
                return;
            }
            Report::Starting => {
                state.status = Status::Starting;
                state.reason.clear();
                return;
            }
            Report::Running => {
                state.status = Status::Running;
                state.reason.clear();
                if let Some(target) = &state.target {
                    self.routes.publish(slot.routes(&state, target));
                }
                return;
            }
            Report::Failed(reason) => (Status::Failed, reason),
            Report::Exited(reason) => (Status::Stopped, reason),
        };
        state.ended_epoch = self.epoch;
        state.target = None;
        self.routes.withdraw(&slot.uuid);
        state.status = status;
        state.reason.clone_from(&reason);
        drop(state);
        // Recorded under the lifecycle lock, and only if no start or stop came since:
        // theirs is the newer truth.
        let (store, epoch) = (Arc::clone(&self.store), self.epoch);
        self.runtime.spawn(async move {
            let _life = slot.life.lock().await;
            if lock(&slot.state).epoch != epoch {
                return;
            }
            if let Err(error) = store.set_status(slot.uuid, status, &reason).await {
                tracing::error!(uuid = %slot.uuid, %error, "could not record a service's report");
            }
        });
    }
}

/// Refuses `node` for a type whose services run on every node.
fn check_node(type_name: &str, generic: &Generic) -> Result<(), RegistryError> {
    if generic.node.is_some() && !super::cluster::ONE_NODE_TYPES.contains(&type_name) {
        return Err(RegistryError::InvalidField {
            field: "node".to_owned(),
            message: format!(
                "The field 'node' applies to process services only: '{type_name}' services run on every node."
            ),
        });
    }
    Ok(())
}

/// Checks a service name against `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`.
pub(crate) fn validate_name(name: &str) -> Result<(), RegistryError> {
    let invalid = |message: String| RegistryError::InvalidField {
        field: "name".to_owned(),
        message,
    };
    if name.is_empty() {
        return Err(invalid("The field 'name' is required.".to_owned()));
    }
    let bytes = name.as_bytes();
    let valid = bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err(invalid(format!(
            "The field 'name' must be 1 to {MAX_NAME_LEN} characters among letters, digits, \
             '.', '_' and '-', starting with a letter or a digit."
        )));
    }
    check_routable_name(name)
}

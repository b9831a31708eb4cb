//! The registry: the single source of truth about services, and their lifecycle.
//!
//! Every change goes the same way: validate, persist through the [`Store`], then apply
//! it in memory and publish the data plane's new routing snapshot. The API answers only
//! after that, so an acknowledged change is durable and visible.
//!
//! Locking: a short `std` mutex guards the map of services (never held across an
//! `.await`); each service has its own async lifecycle lock, so a slow start of one
//! service never holds up the others; registrations are serialised so that the name
//! check and the insert are one step.
//!
//! A running instance may report on itself between hooks (a program that restarts or
//! gives up). Each start opens a new *epoch* of the service, and a report is applied
//! only while its epoch is current: a late report of a stopped instance changes nothing.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use axum::Router;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::contract::{
    Fields, Report, RunningService, ServiceContext, ServiceError, ServiceType, StatusReporter,
};
use crate::routing::RouteTable;
use crate::store::{unix_now, ServiceRecord, Status, Store, StoreError};
use crate::types::TypeCatalog;

/// The longest service name, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// Why a registry operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
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
    #[error("The service type '{0}' is not available in this Herve.")]
    TypeUnavailable(String),
    #[error("This service keeps no logs.")]
    NoLogs,
    #[error("Herve is shutting down.")]
    ShuttingDown,
    #[error("{0}")]
    Hook(String),
    #[error("The change could not be saved: {0}")]
    Store(#[from] StoreError),
}

impl From<ServiceError> for RegistryError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::InvalidField { field, message } => {
                RegistryError::InvalidField { field, message }
            }
            ServiceError::Failed(message) => RegistryError::Hook(message),
        }
    }
}

/// A service as the API shows it. The first five keys, in this order, are the
/// contract's; the others are left out when empty.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceView {
    pub uuid: Uuid,
    pub name: String,
    pub description: String,
    pub status: Status,
    #[serde(rename = "type")]
    pub type_name: String,
    /// Why the service failed or ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the running instance reports about itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Value>,
    /// The type-specific configuration (only when one service is shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

/// What the API shows of a service's state; changes under a short lock.
struct Shown {
    status: Status,
    reason: String,
    runtime: Option<Value>,
}

/// One registered service.
struct Slot {
    uuid: Uuid,
    seq: i64,
    name: String,
    type_name: String,
    description: String,
    config: Value,
    /// What is wrong with its stored record, if anything: it cannot start.
    corrupt: Option<String>,
    /// `None` when the database names a type this Herve was not built with.
    service_type: Option<Arc<dyn ServiceType>>,
    shown: Mutex<Shown>,
    /// Bumped by every start and stop; reports of older epochs are ignored.
    epoch: AtomicU64,
    /// The routes of the current instance, to publish again when it recovers. Epoch
    /// checks and route changes happen under this lock, so a late report can never
    /// publish the routes of an instance that is being stopped.
    routes: Mutex<Option<Router>>,
    /// The epoch whose instance reported that it failed or ended, if any.
    ended_epoch: AtomicU64,
    /// Set while a start runs: sending `true` asks it to give up.
    abandon_start: Mutex<Option<tokio::sync::watch::Sender<bool>>>,
    /// Held for the whole of a start, stop or unregister of this service.
    life: tokio::sync::Mutex<Life>,
}

#[derive(Default)]
struct Life {
    instance: Option<Box<dyn RunningService>>,
    /// Set once unregistered: an operation that waited for the lock finds it gone.
    removed: bool,
}

impl Slot {
    /// Asks a start in progress, if any, to give up.
    fn abandon_start(&self) {
        if let Some(abandon) = lock(&self.abandon_start).as_ref() {
            let _ = abandon.send(true);
        }
    }

    fn status(&self) -> Status {
        lock(&self.shown).status
    }

    fn set_status(&self, status: Status, reason: &str) {
        let mut shown = lock(&self.shown);
        shown.status = status;
        reason.clone_into(&mut shown.reason);
    }

    fn view(&self, with_config: bool) -> ServiceView {
        let shown = lock(&self.shown);
        ServiceView {
            uuid: self.uuid,
            name: self.name.clone(),
            description: self.description.clone(),
            status: shown.status,
            type_name: self.type_name.clone(),
            reason: (!shown.reason.is_empty()).then(|| shown.reason.clone()),
            runtime: shown.runtime.clone(),
            config: (with_config && !self.config.is_null()).then(|| self.config.clone()),
        }
    }
}

#[derive(Default)]
struct Services {
    by_uuid: HashMap<Uuid, Arc<Slot>>,
    names: HashSet<String>,
}

/// The registry of services. Cheap to share behind an `Arc`.
pub struct Registry {
    types: TypeCatalog,
    store: Arc<dyn Store>,
    routes: Arc<RouteTable>,
    services_dir: PathBuf,
    max_services: usize,
    services: Mutex<Services>,
    registering: tokio::sync::Mutex<()>,
    /// Set by [`Registry::shutdown`]: no instance may start after it.
    closing: AtomicBool,
}

impl Registry {
    /// Loads every service from `store`. Call [`Registry::resume`] afterwards to start
    /// again the services that were running.
    pub async fn load(
        types: TypeCatalog,
        store: Arc<dyn Store>,
        routes: Arc<RouteTable>,
        services_dir: PathBuf,
        max_services: usize,
    ) -> Result<Registry, StoreError> {
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
            let description = service_type
                .as_ref()
                .map(|t| t.description().to_owned())
                .unwrap_or(record.description);
            let (status, reason) = match &record.corrupt {
                Some(problem) => {
                    tracing::error!(uuid = %record.uuid, %problem, "a stored service is corrupt; it is shown as failed");
                    (
                        Status::Failed,
                        format!("The stored record is corrupt: {problem}."),
                    )
                }
                None => (record.status, record.detail),
            };
            services.names.insert(record.name.clone());
            services.by_uuid.insert(
                record.uuid,
                Arc::new(Slot {
                    uuid: record.uuid,
                    seq: record.seq,
                    name: record.name,
                    type_name: record.type_name,
                    description,
                    config: record.config,
                    corrupt: record.corrupt,
                    service_type,
                    shown: Mutex::new(Shown {
                        status,
                        reason,
                        runtime: None,
                    }),
                    epoch: AtomicU64::new(0),
                    routes: Mutex::new(None),
                    ended_epoch: AtomicU64::new(0),
                    abandon_start: Mutex::new(None),
                    life: tokio::sync::Mutex::new(Life::default()),
                }),
            );
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
        })
    }

    /// Lets every type clean up after an earlier Herve, then starts again every
    /// service whose persisted status says it should run.
    pub async fn resume(&self) {
        let mut by_type: HashMap<String, (Arc<dyn ServiceType>, Vec<ServiceContext>)> =
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

    /// How many services are registered.
    pub fn len(&self) -> usize {
        lock(&self.services).by_uuid.len()
    }

    /// Whether no service is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

        let _registering = self.registering.lock().await;
        self.check_room_for(name)?;

        let uuid = Uuid::new_v4();
        let ctx = self.context(uuid, name, StatusReporter::detached());
        let config = service_type.register(&ctx, fields).await?;
        let mut record = ServiceRecord {
            seq: 0,
            uuid,
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            description: service_type.description().to_owned(),
            status: Status::Registered,
            detail: String::new(),
            config,
            created_at: unix_now(),
            corrupt: None,
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

        let slot = Arc::new(Slot {
            uuid,
            seq: record.seq,
            name: record.name,
            type_name: record.type_name,
            description: record.description,
            config: record.config,
            corrupt: None,
            service_type: Some(service_type),
            shown: Mutex::new(Shown {
                status: Status::Registered,
                reason: String::new(),
                runtime: None,
            }),
            epoch: AtomicU64::new(0),
            routes: Mutex::new(None),
            ended_epoch: AtomicU64::new(0),
            abandon_start: Mutex::new(None),
            life: tokio::sync::Mutex::new(Life::default()),
        });
        let view = slot.view(true);
        let mut services = lock(&self.services);
        services.names.insert(slot.name.clone());
        services.by_uuid.insert(uuid, slot);
        Ok(view)
    }

    /// Starts a service; starting a running service does nothing.
    pub async fn start(&self, uuid: Uuid) -> Result<ServiceView, RegistryError> {
        let slot = self.slot(uuid)?;
        let mut life = slot.life.lock().await;
        if life.removed {
            return Err(RegistryError::NotFound);
        }
        self.start_locked(&slot, &mut life).await?;
        Ok(slot.view(false))
    }

    /// Stops a service; stopping a service that does not run does nothing.
    pub async fn stop(&self, uuid: Uuid) -> Result<ServiceView, RegistryError> {
        let slot = self.slot(uuid)?;
        // A slow start would hold the lifecycle lock until it ends: ask it to give up.
        slot.abandon_start();
        let mut life = slot.life.lock().await;
        if life.removed {
            return Err(RegistryError::NotFound);
        }
        self.halt(&slot, &mut life).await;
        // Record `stopped` whenever the status says anything else than "not running":
        // also after a start or stop that failed halfway. One that never ran stays
        // `registered`.
        if !matches!(slot.status(), Status::Registered | Status::Stopped) {
            self.store.set_status(uuid, Status::Stopped, "").await?;
            slot.set_status(Status::Stopped, "");
        }
        Ok(slot.view(false))
    }

    /// Stops a service if it runs, then starts it.
    pub async fn restart(&self, uuid: Uuid) -> Result<ServiceView, RegistryError> {
        let slot = self.slot(uuid)?;
        slot.abandon_start();
        let mut life = slot.life.lock().await;
        if life.removed {
            return Err(RegistryError::NotFound);
        }
        self.halt(&slot, &mut life).await;
        self.start_locked(&slot, &mut life).await?;
        Ok(slot.view(false))
    }

    /// Forgets a stopped service.
    pub async fn unregister(&self, uuid: Uuid) -> Result<ServiceView, RegistryError> {
        let slot = self.slot(uuid)?;
        let mut life = slot.life.lock().await;
        if life.removed {
            return Err(RegistryError::NotFound);
        }
        if life.instance.is_some() {
            if slot.status().should_run() {
                return Err(RegistryError::StillRunning);
            }
            // An instance that gave up by itself: nothing of it should outlive this.
            self.halt(&slot, &mut life).await;
        }
        // Forget the service first: once the row is gone it no longer exists, whatever
        // happens to the type's cleanup, which can only leave files behind.
        self.store.remove(uuid).await?;
        life.removed = true;
        {
            let mut services = lock(&self.services);
            services.by_uuid.remove(&uuid);
            services.names.remove(&slot.name);
        }
        if let Some(service_type) = &slot.service_type {
            let ctx = self.context(uuid, &slot.name, StatusReporter::detached());
            if let Err(error) = service_type.unregister(&ctx, &slot.config).await {
                tracing::warn!(%uuid, %error, "the type's unregister hook failed; its files may remain");
            }
        }
        Ok(slot.view(false))
    }

    /// The last `tail` lines of a service's output.
    pub async fn logs(&self, uuid: Uuid, tail: usize) -> Result<Vec<String>, RegistryError> {
        let slot = self.slot(uuid)?;
        let Some(service_type) = &slot.service_type else {
            return Err(RegistryError::TypeUnavailable(slot.type_name.clone()));
        };
        let ctx = self.context(uuid, &slot.name, StatusReporter::detached());
        service_type
            .logs(&ctx, &slot.config, tail)
            .await?
            .ok_or(RegistryError::NoLogs)
    }

    /// Stops every running instance without recording it, so that the next start of
    /// Herve starts them again. Used when Herve shuts down.
    pub async fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
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
        let slot = Arc::downgrade(slot);
        let store = Arc::clone(&self.store);
        let routes = Arc::clone(&self.routes);
        StatusReporter::new(move |report| apply_report(&slot, epoch, &store, &routes, report))
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
            return Err(RegistryError::Hook(format!(
                "The stored record is corrupt ({problem}); unregister the service and register it again."
            )));
        }
        let Some(service_type) = &slot.service_type else {
            // Shown as failed, but the stored status keeps the intent, for a Herve
            // built with the type.
            slot.set_status(Status::Failed, "the type is not available in this Herve");
            return Err(RegistryError::TypeUnavailable(slot.type_name.clone()));
        };
        let epoch = slot.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&slot.shown).runtime = None;
        // On resume (and restart) the store says `running` already: no write needed.
        let stored_running = slot.status() == Status::Running;
        let (abandon, abandoned) = tokio::sync::watch::channel(false);
        *lock(&slot.abandon_start) = Some(abandon);
        let ctx = self
            .context(slot.uuid, &slot.name, self.reporter(slot, epoch))
            .with_abandon(abandoned);
        let started = service_type.start(&ctx, &slot.config).await;
        *lock(&slot.abandon_start) = None;
        let instance = match started {
            Ok(instance) => instance,
            Err(error) => {
                slot.epoch.fetch_add(1, Ordering::SeqCst);
                let reason = error.to_string();
                slot.set_status(Status::Failed, &reason);
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
                slot.epoch.fetch_add(1, Ordering::SeqCst);
                if let Err(stop_error) = instance.stop().await {
                    tracing::warn!(uuid = %slot.uuid, error = %stop_error, "stop after a failed save failed");
                }
                // Nothing runs: say so rather than keep whatever the start reported.
                slot.set_status(Status::Failed, &error.to_string());
                return Err(error.into());
            }
        }
        let routes = instance.routes();
        life.instance = Some(instance);
        let mut current_routes = lock(&slot.routes);
        if slot.ended_epoch.load(Ordering::SeqCst) == epoch {
            // It failed or ended between becoming ready and now: the report said so
            // (and records it once this start lets go of the lifecycle lock).
            drop(current_routes);
            let shown = lock(&slot.shown).reason.clone();
            return Err(RegistryError::Hook(format!(
                "The service ended right after it started: {shown}"
            )));
        }
        *current_routes = Some(routes.clone());
        self.routes.publish(slot.uuid, routes);
        slot.set_status(Status::Running, "");
        Ok(())
    }

    /// Withdraws the routes of `slot` and stops its instance, if any; the caller holds
    /// its lifecycle lock and records the status.
    async fn halt(&self, slot: &Slot, life: &mut Life) {
        {
            // A new epoch first: whatever the instance still reports is now stale.
            let mut current_routes = lock(&slot.routes);
            slot.epoch.fetch_add(1, Ordering::SeqCst);
            *current_routes = None;
        }
        let Some(instance) = life.instance.take() else {
            return;
        };
        // Withdraw next: no new request reaches an instance that is going away.
        self.routes.withdraw(&slot.uuid);
        lock(&slot.shown).runtime = None;
        if let Err(error) = instance.stop().await {
            tracing::warn!(uuid = %slot.uuid, %error, "service did not stop cleanly");
        }
    }
}

/// Applies one report of the instance started in `epoch`, if it is still current.
fn apply_report(
    slot: &Weak<Slot>,
    epoch: u64,
    store: &Arc<dyn Store>,
    routes: &Arc<RouteTable>,
    report: Report,
) {
    let Some(slot) = slot.upgrade() else {
        return;
    };
    let current_routes = lock(&slot.routes);
    if slot.epoch.load(Ordering::SeqCst) != epoch {
        return;
    }
    let (status, reason) = match report {
        Report::Runtime(runtime) => {
            lock(&slot.shown).runtime = Some(runtime);
            return;
        }
        Report::Starting => {
            slot.set_status(Status::Starting, "");
            return;
        }
        Report::Running => {
            slot.set_status(Status::Running, "");
            if let Some(router) = current_routes.clone() {
                routes.publish(slot.uuid, router);
            }
            return;
        }
        Report::Failed(reason) => (Status::Failed, reason),
        Report::Exited(reason) => (Status::Stopped, reason),
    };
    slot.ended_epoch.store(epoch, Ordering::SeqCst);
    routes.withdraw(&slot.uuid);
    slot.set_status(status, &reason);
    drop(current_routes);
    // Record it under the lifecycle lock, and only if no start or stop came since:
    // theirs is the newer truth.
    let store = Arc::clone(store);
    tokio::spawn(async move {
        let _life = slot.life.lock().await;
        if slot.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        if let Err(error) = store.set_status(slot.uuid, status, &reason).await {
            tracing::error!(uuid = %slot.uuid, %error, "could not record a service's report");
        }
    });
}

/// Checks a service name against `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`.
pub fn validate_name(name: &str) -> Result<(), RegistryError> {
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
    Ok(())
}

/// Locks a mutex whose data stays consistent even if a holder panicked: every critical
/// section here is a few plain assignments.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

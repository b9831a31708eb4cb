//! The registry's error paths, with a store that fails on purpose and a type that
//! counts its hooks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use uuid::Uuid;

use super::*;
use crate::contract::ServiceType;
use crate::control_plane::store::{CertSource, StoredCertificate};
use crate::util::sqlite::DbError;

/// A store in memory whose writes fail while asked to.
#[derive(Default)]
struct FlakyStore {
    rows: Mutex<HashMap<Uuid, ServiceRecord>>,
    fail_insert: AtomicBool,
    fail_status: AtomicBool,
    fail_remove: AtomicBool,
}

fn refused() -> StoreError {
    StoreError::Database(DbError::Corrupt("the disk is full (on purpose)".to_owned()))
}

#[async_trait]
impl Store for FlakyStore {
    async fn load(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        let mut rows: Vec<ServiceRecord> = lock(&self.rows).values().cloned().collect();
        rows.sort_by_key(|row| row.seq);
        Ok(rows)
    }

    async fn get(&self, uuid: Uuid) -> Result<Option<ServiceRecord>, StoreError> {
        Ok(lock(&self.rows).get(&uuid).cloned())
    }

    async fn insert(&self, record: &ServiceRecord) -> Result<i64, StoreError> {
        if self.fail_insert.load(Ordering::SeqCst) {
            return Err(refused());
        }
        let mut rows = lock(&self.rows);
        let seq = i64::try_from(rows.len()).unwrap_or(0) + 1;
        let mut record = record.clone();
        record.seq = seq;
        rows.insert(record.uuid, record);
        Ok(seq)
    }

    async fn update(&self, record: &ServiceRecord) -> Result<(), StoreError> {
        if self.fail_status.load(Ordering::SeqCst) {
            return Err(refused());
        }
        let mut rows = lock(&self.rows);
        let row = rows
            .get_mut(&record.uuid)
            .ok_or(StoreError::Missing(record.uuid))?;
        row.config = record.config.clone();
        row.hosts = record.hosts.clone();
        row.path = record.path.clone();
        Ok(())
    }

    async fn set_status(&self, uuid: Uuid, status: Status, detail: &str) -> Result<(), StoreError> {
        if self.fail_status.load(Ordering::SeqCst) {
            return Err(refused());
        }
        let mut rows = lock(&self.rows);
        let row = rows.get_mut(&uuid).ok_or(StoreError::Missing(uuid))?;
        row.status = status;
        detail.clone_into(&mut row.detail);
        Ok(())
    }

    async fn remove(&self, uuid: Uuid) -> Result<(), StoreError> {
        if self.fail_remove.load(Ordering::SeqCst) {
            return Err(refused());
        }
        lock(&self.rows).remove(&uuid);
        Ok(())
    }

    // The registry keeps no certificates: these are for the certificates' manager.
    async fn certificates(&self) -> Result<Vec<StoredCertificate>, StoreError> {
        Ok(Vec::new())
    }

    async fn put_certificate(&self, _: &StoredCertificate) -> Result<(), StoreError> {
        Err(refused())
    }

    async fn remove_certificate(&self, _: &str, _: CertSource) -> Result<bool, StoreError> {
        Ok(false)
    }

    async fn acme_account(&self, _: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    async fn put_acme_account(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Err(refused())
    }
}

/// Counts its registrations undone, starts and stops.
#[derive(Default)]
struct Counted {
    undone: AtomicUsize,
    started: AtomicUsize,
    stopped: Arc<AtomicUsize>,
}

struct CountedInstance(Arc<AtomicUsize>);

#[async_trait]
impl RunningService for CountedInstance {
    fn routes(&self) -> Router {
        Router::new()
    }

    async fn stop(&self) -> Result<(), ServiceError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl ServiceType for Arc<Counted> {
    type Config = ();

    fn name(&self) -> &str {
        "counted"
    }

    fn description(&self) -> &str {
        "counts its hooks"
    }

    async fn register(&self, _ctx: &ServiceContext, _fields: &Fields) -> Result<(), ServiceError> {
        Ok(())
    }

    async fn start(
        &self,
        _ctx: &ServiceContext,
        _config: &(),
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(CountedInstance(Arc::clone(&self.stopped))))
    }

    async fn unregister(&self, _ctx: &ServiceContext, _config: &()) -> Result<(), ServiceError> {
        self.undone.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Fixture {
    registry: Registry,
    store: Arc<FlakyStore>,
    counted: Arc<Counted>,
    routes: Arc<RouteTable>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A new service of the counting type.
    async fn registered(&self) -> Uuid {
        self.registry
            .register("a", "counted", &Fields::default())
            .await
            .expect("registered")
            .uuid
    }
}

async fn fixture() -> Fixture {
    let store = Arc::new(FlakyStore::default());
    let counted = Arc::new(Counted::default());
    let mut types = TypeCatalog::default();
    types.add(Arc::clone(&counted));
    let routes = Arc::new(RouteTable::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::load(RegistrySetup {
        types,
        store: Arc::clone(&store) as Arc<dyn Store>,
        routes: Arc::clone(&routes),
        services_dir: dir.path().to_path_buf(),
        max_services: 10,
        workers: 2,
        hashing: Arc::new(crate::util::hashing::HashPool::new(1, 4).expect("hashing pool")),
        placement: None,
    })
    .await
    .expect("load");
    Fixture {
        registry,
        store,
        counted,
        routes,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_registration_the_store_refuses_leaves_nothing_behind() {
    let f = fixture().await;
    f.store.fail_insert.store(true, Ordering::SeqCst);
    let refused = f
        .registry
        .register("a", "counted", &Fields::default())
        .await;
    assert!(
        matches!(refused, Err(RegistryError::Store(_))),
        "{refused:?}"
    );
    assert!(f.registry.list().is_empty());
    assert_eq!(
        f.counted.undone.load(Ordering::SeqCst),
        1,
        "the hook's work was not undone"
    );
    // The name is free again.
    f.store.fail_insert.store(false, Ordering::SeqCst);
    assert!(f
        .registry
        .register("a", "counted", &Fields::default())
        .await
        .is_ok());
}

#[tokio::test]
async fn a_start_the_store_refuses_runs_nothing_and_says_failed() {
    let f = fixture().await;
    let uuid = f.registered().await;
    f.store.fail_status.store(true, Ordering::SeqCst);
    let refused = f.registry.start(uuid).await;
    assert!(
        matches!(refused, Err(RegistryError::Store(_))),
        "{refused:?}"
    );
    assert_eq!(f.counted.started.load(Ordering::SeqCst), 1);
    assert_eq!(
        f.counted.stopped.load(Ordering::SeqCst),
        1,
        "the instance was left running"
    );
    assert!(
        f.routes.find(None, &format!("/{uuid}")).is_none(),
        "routes published"
    );
    let view = f.registry.get(uuid).expect("view");
    assert_eq!(view.status, Status::Failed);
    assert!(view
        .reason
        .is_some_and(|reason| reason.contains("on purpose")));
}

#[tokio::test]
async fn a_stop_the_store_refuses_leaves_the_service_running() {
    let f = fixture().await;
    let uuid = f.registered().await;
    f.registry.start(uuid).await.expect("started");
    f.store.fail_status.store(true, Ordering::SeqCst);
    let refused = f.registry.stop(uuid).await;
    assert!(
        matches!(refused, Err(RegistryError::Store(_))),
        "{refused:?}"
    );
    assert_eq!(f.registry.get(uuid).expect("view").status, Status::Running);
    assert!(
        f.routes.find(None, &format!("/{uuid}")).is_some(),
        "still routed"
    );
    assert_eq!(f.counted.stopped.load(Ordering::SeqCst), 0);
    // Once the store takes it, the stop goes through.
    f.store.fail_status.store(false, Ordering::SeqCst);
    f.registry.stop(uuid).await.expect("stopped");
    assert_eq!(f.registry.get(uuid).expect("view").status, Status::Stopped);
    assert!(f.routes.find(None, &format!("/{uuid}")).is_none());
}

#[tokio::test]
async fn an_unregistration_the_store_refuses_keeps_the_service() {
    let f = fixture().await;
    let uuid = f.registered().await;
    f.store.fail_remove.store(true, Ordering::SeqCst);
    let refused = f.registry.unregister(uuid).await;
    assert!(
        matches!(refused, Err(RegistryError::Store(_))),
        "{refused:?}"
    );
    assert!(f.registry.get(uuid).is_ok());
    assert_eq!(f.counted.undone.load(Ordering::SeqCst), 0);
    f.store.fail_remove.store(false, Ordering::SeqCst);
    f.registry.unregister(uuid).await.expect("unregistered");
    assert!(matches!(f.registry.get(uuid), Err(RegistryError::NotFound)));
}

#[tokio::test]
async fn reports_of_a_stopped_instance_change_nothing() {
    let f = fixture().await;
    let uuid = f.registered().await;
    f.registry.start(uuid).await.expect("started");
    let slot = f.registry.slot(uuid).expect("slot");
    let epoch = lock(&slot.state).epoch;
    let reporter = f.registry.reporter(&slot, epoch);
    reporter.report(Report::Runtime(serde_json::json!({"pid": 1})));
    assert!(f.registry.get(uuid).expect("view").runtime.is_some());
    f.registry.stop(uuid).await.expect("stopped");
    // The stopped instance reports a failure, late: ignored.
    reporter.report(Report::Failed("late".to_owned()));
    assert_eq!(f.registry.get(uuid).expect("view").status, Status::Stopped);
    // A failure report of the current instance withdraws its routes and is recorded,
    // even when sent from a thread without a runtime.
    f.registry.start(uuid).await.expect("started again");
    let epoch = lock(&slot.state).epoch;
    let reporter = f.registry.reporter(&slot, epoch);
    std::thread::spawn(move || reporter.report(Report::Failed("gave up".to_owned())))
        .join()
        .expect("reporting thread");
    assert_eq!(f.registry.get(uuid).expect("view").status, Status::Failed);
    assert!(f.routes.find(None, &format!("/{uuid}")).is_none());
    for _ in 0..100 {
        if lock(&f.store.rows).get(&uuid).map(|row| row.status) == Some(Status::Failed) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the failure was not recorded");
}

//! The data plane's routing table: which running service answers `/<uuid>/...`.
//!
//! Request handling only ever reads an immutable snapshot (one atomic load, no lock);
//! the registry builds a new snapshot on every start and stop and swaps it in, so a
//! request sees a service either fully routed or not at all.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use uuid::Uuid;

use crate::contract::MountPrefix;

/// The routes of every running service, by uuid.
#[derive(Default)]
pub(crate) struct RouteTable {
    current: ArcSwap<Snapshot>,
    /// Writers are rare (start/stop); this keeps two of them from losing each other's
    /// change while readers never wait.
    write: std::sync::Mutex<()>,
}

type Snapshot = HashMap<Uuid, Route, BuildHasherDefault<UuidHasher>>;

/// A running service as the data plane reaches it.
#[derive(Clone)]
pub(crate) struct Route {
    pub router: Router,
    /// The prefix of its paths (`/<uuid>`), stripped before the router sees them.
    pub prefix: MountPrefix,
}

impl RouteTable {
    /// The route of the running service `uuid`.
    #[inline]
    pub fn get(&self, uuid: &Uuid) -> Option<Route> {
        self.current.load().get(uuid).cloned()
    }

    /// Routes `uuid` to `router` from now on.
    pub fn publish(&self, uuid: Uuid, router: Router) {
        // Herve bounds bodies itself (`HERVE_MAX_BODY_BYTES`, in dispatch); axum's own
        // 2 MiB default would otherwise cut in first. A router that sets its own limit
        // keeps it: its layer runs after this one.
        let router = router.layer(DefaultBodyLimit::disable());
        let prefix = MountPrefix::new(&format!("/{uuid}"));
        self.update(|routes| {
            routes.insert(uuid, Route { router, prefix });
        });
    }

    /// Stops routing to `uuid`.
    pub fn withdraw(&self, uuid: &Uuid) {
        self.update(|routes| {
            routes.remove(uuid);
        });
    }

    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        let _writer = crate::util::lock(&self.write);
        let mut next = Snapshot::clone(&self.current.load());
        change(&mut next);
        self.current.store(Arc::new(next));
    }
}

/// Uuids v4 are random already: hashing them again (SipHash) would only cost time.
/// Clients cannot pick the uuids in the table, so they cannot aim at one bucket.
#[derive(Default)]
pub(crate) struct UuidHasher(u64);

impl Hasher for UuidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `Uuid` hashes as its 16 bytes; fold them so every byte counts.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

//! Several Herve nodes sharing one registry in PostgreSQL.
//!
//! Each node follows the shared store: every change announced (`NOTIFY`) or found by a
//! slow poll is applied to its own registry, in revision order ([`Registry::converge`]);
//! on every (re)connection it reloads everything, so a notice it missed costs nothing.
//! The request path never touches the database: a node that loses it serves on with
//! what it knows and refuses changes (503).
//!
//! Stateless types run on every node. A type that runs a program ([`ONE_NODE_TYPES`])
//! runs on one node at a time, the holder of the service's lease; the other nodes
//! forward its traffic to the holder. Leases last [`ClusterSettings::lease`] and are
//! renewed every second; a lease taken over gets a new generation, so the old holder's
//! renewal fails and it stops its program, and a holder that cannot renew stops its
//! program before its lease can run out (fencing).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::admin_auth::AdminAuth;
use super::certificates::Certificates;
use super::registry::Registry;
use super::store::{Lease, NodeRow, PostgresStore, StoreError, CERTIFICATES, CHALLENGES};
use crate::contract::{AnyServiceType, Fields, RunningService, ServiceContext, ServiceError};
use crate::util::lock;

/// Types whose instances run a program: one node at a time runs them.
pub(crate) const ONE_NODE_TYPES: [&str; 1] = ["process"];

/// How often a node looks for changes when it hears no notice.
const POLL: Duration = Duration::from_secs(2);
/// How often a node says it is alive and renews its leases.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a node waits before connecting again to a database it lost.
const RECONNECT: Duration = Duration::from_millis(500);
/// Addresses whose failed authentications a node shares each second, at most.
const SHARED_FAILURES_PER_BEAT: usize = 256;
/// Heartbeats between two prunings of old changes.
const PRUNE_EVERY: u64 = 60;
/// Changes read per query while catching up.
const BATCH: i64 = 500;

/// Who this node is, for the others.
#[derive(Debug, Clone)]
pub(crate) struct ClusterSettings {
    /// Unique among the nodes.
    pub node: String,
    /// Where the other nodes reach this one's public port (`http://10.0.0.2:8080`).
    pub addr: String,
    /// How long a lease lasts without renewal: a dead node's programs start elsewhere
    /// after this (and a tick).
    pub lease: Duration,
    /// Proves to the other nodes that a request comes from a node (see
    /// [`crate::contract::PEER_HEADER`]).
    pub peer_token: http::HeaderValue,
}

/// Where this node forwards a service's traffic.
#[derive(Debug, Clone)]
struct Forwarded {
    node: String,
    /// `None` while the node it is pinned to has never joined.
    addr: Option<String>,
    /// The service is pinned to that node (`node`): it is forwarded there even while
    /// that node does not hold the lease (it takes it when it runs).
    pinned: bool,
}

/// Where this node's services that run on one node at a time are.
pub(crate) struct Placement {
    store: PostgresStore,
    /// On a connection of its own: renewals wait for no placement.
    renewals: PostgresStore,
    settings: ClusterSettings,
    /// Leases this node holds: generation, and when they were last renewed.
    held: Mutex<HashMap<Uuid, (i64, Instant)>>,
    /// Services whose traffic this node forwards, and to which node at which address.
    forwarded: Mutex<HashMap<Uuid, Forwarded>>,
    /// Services whose program this node stopped because it could not renew their
    /// lease: started again (here or elsewhere) once the database is back.
    fenced: Mutex<HashSet<Uuid>>,
}

impl Placement {
    pub fn new(
        store: PostgresStore,
        renewals: PostgresStore,
        settings: ClusterSettings,
    ) -> Placement {
        Placement {
            store,
            renewals,
            settings,
            held: Mutex::default(),
            forwarded: Mutex::default(),
            fenced: Mutex::default(),
        }
    }

    /// Whether services of `type_name` run on one node at a time.
    pub fn places(&self, type_name: &str) -> bool {
        ONE_NODE_TYPES.contains(&type_name)
    }

    /// Starts service `uuid` here if this node gets its lease (and the service is not
    /// `pinned` to another node), else starts a forwarder to the node that holds it, or
    /// that it is pinned to (`forwarder`: the proxy type).
    pub async fn start(
        &self,
        ctx: &ServiceContext,
        service_type: &Arc<dyn AnyServiceType>,
        config: &Value,
        pinned: Option<&str>,
        forwarder: Option<&Arc<dyn AnyServiceType>>,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let uuid = ctx.uuid();
        let node = &self.settings.node;
        let pinned_elsewhere = pinned.filter(|pinned| pinned != node);
        // Without the database, the service is placed again when it is back.
        let unplaced = |error: StoreError| {
            lock(&self.fenced).insert(uuid);
            // The store's error as the source: a database away answers 503.
            ServiceError::Failed {
                message: format!("The cluster could not place the service: {error}"),
                source: Some(Box::new(error)),
            }
        };
        // Twice: a lease seen held may run out between the two queries.
        for _ in 0..2 {
            let sent = Instant::now();
            let taken = match pinned_elsewhere {
                Some(_) => None,
                None => self
                    .store
                    .take_lease(uuid, node, self.settings.lease)
                    .await
                    .map_err(unplaced)?,
            };
            if let Some(lease) = taken.filter(|lease| lease.node == *node) {
                lock(&self.fenced).remove(&uuid);
                lock(&self.forwarded).remove(&uuid);
                lock(&self.held).insert(uuid, (lease.generation, sent));
                return match service_type.start(ctx, config).await {
                    Ok(instance) => Ok(instance),
                    Err(error) => {
                        self.release(uuid).await;
                        Err(error)
                    }
                };
            }
            let holder = self.store.lease_holder(uuid).await.map_err(unplaced)?;
            let holder = match (holder, pinned_elsewhere) {
                (Some(Lease { node: holder, .. }), _) => holder,
                (None, Some(pinned)) => pinned.to_owned(),
                (None, None) => continue,
            };
            let Some(addr) = self.store.node_addr(&holder).await.map_err(unplaced)? else {
                // Pinned to a node yet to join: it starts the program when it does
                // (the intent, `running`, is stored), and this node forwards then;
                // until that, traffic is told why it cannot be served.
                lock(&self.held).remove(&uuid);
                lock(&self.fenced).remove(&uuid);
                let waiting = awaiting_node(&holder);
                let pinned = pinned_elsewhere == Some(holder.as_str());
                lock(&self.forwarded).insert(
                    uuid,
                    Forwarded {
                        node: holder,
                        addr: None,
                        pinned,
                    },
                );
                return Ok(Box::new(waiting));
            };
            let Some(forwarder) = forwarder else {
                return Err(ServiceError::failed(
                    "This Herve has no proxy type to forward with.",
                ));
            };
            let fields = Fields::from_pairs([("upstream", format!("{addr}/{uuid}"))]);
            let forwarding = forwarder.register(ctx, &fields).await?;
            let instance: Box<dyn RunningService> = Box::new(ToNode {
                inner: forwarder.start(ctx, &forwarding).await?,
                token: self.settings.peer_token.clone(),
            });
            lock(&self.held).remove(&uuid);
            lock(&self.fenced).remove(&uuid);
            let pinned = pinned_elsewhere == Some(holder.as_str());
            lock(&self.forwarded).insert(
                uuid,
                Forwarded {
                    node: holder,
                    addr: Some(addr),
                    pinned,
                },
            );
            return Ok(instance);
        }
        Err(ServiceError::failed(
            "The cluster could not place the service: its lease changed hands while it was placed.",
        ))
    }

    /// Forgets that this node stopped service `uuid` for want of its lease (it is not
    /// to run any more).
    pub fn unfence(&self, uuid: Uuid) {
        lock(&self.fenced).remove(&uuid);
    }

    /// Forgets where service `uuid` runs, giving up its lease if this node holds it.
    pub async fn release(&self, uuid: Uuid) {
        lock(&self.forwarded).remove(&uuid);
        if lock(&self.held).remove(&uuid).is_some() {
            if let Err(error) = self.store.release_lease(uuid, &self.settings.node).await {
                // It runs out by itself.
                tracing::warn!(%uuid, %error, "could not give up a lease");
            }
        }
    }

    /// The node (and its address) this node forwards service `uuid` to, if it does.
    pub fn runs_elsewhere(&self, uuid: Uuid) -> Option<(String, String)> {
        lock(&self.forwarded).get(&uuid).map(|to| {
            let addr = to.addr.as_deref().unwrap_or("not joined yet");
            (to.node.clone(), addr.to_owned())
        })
    }

    /// The programs this node runs or forwards, and where: `here`, or the node it
    /// forwards to.
    fn placed(&self) -> Vec<(Uuid, String)> {
        let mut placed: Vec<(Uuid, String)> = lock(&self.held)
            .keys()
            .map(|uuid| (*uuid, "here".to_owned()))
            .collect();
        placed.extend(
            lock(&self.forwarded)
                .iter()
                .map(|(uuid, to)| (*uuid, to.node.clone())),
        );
        placed
    }

    /// The services whose program this node must stop now, each with the instant it
    /// must be gone by: their lease was last renewed half a lease ago, and the program
    /// must be gone before another node may take the lease. Waits for nothing.
    fn overdue(&self) -> Vec<(Uuid, Instant)> {
        let mut fence = Vec::new();
        let lease = self.settings.lease;
        lock(&self.held).retain(|uuid, (_, renewed)| {
            if renewed.elapsed() < lease / 2 {
                return true;
            }
            tracing::error!(%uuid, "could not renew a lease in time; the service's program is stopped here");
            // Whatever the program's own stop timeout, it is killed three quarters of a
            // lease after the last renewal: the last quarter is the kill's margin
            // (measured from before the renewal was sent, so never late).
            fence.push((*uuid, *renewed + lease * 3 / 4));
            false
        });
        lock(&self.fenced).extend(fence.iter().map(|(uuid, _)| *uuid));
        fence
    }

    /// Renews the leases held, and finds the services to place again: those whose
    /// lease this node lost, those it forwards to a node that no longer holds them,
    /// and those it could not place or had to stop while the database was away.
    async fn tend(&self) -> Vec<Uuid> {
        let mut again = Vec::new();
        let held: Vec<(Uuid, i64)> = lock(&self.held)
            .iter()
            .map(|(uuid, (generation, _))| (*uuid, *generation))
            .collect();
        let sent = Instant::now();
        // A renewal that takes long is as good as failed: the watchdog above decides.
        let renewal = tokio::time::timeout(
            self.settings.lease / 4,
            self.renewals
                .renew_leases(&self.settings.node, &held, self.settings.lease),
        )
        .await;
        match renewal {
            Ok(Ok(kept)) => {
                let mut leases = lock(&self.held);
                for (uuid, generation) in &held {
                    let current = leases.get(uuid).map(|(current, _)| *current);
                    // A lease given up and taken again since the snapshot is not ours
                    // to judge by it.
                    if current != Some(*generation) {
                        continue;
                    }
                    if kept.contains(uuid) {
                        if let Some(lease) = leases.get_mut(uuid) {
                            lease.1 = sent;
                        }
                    } else {
                        tracing::warn!(%uuid, "lost the lease of a service to another node");
                        leases.remove(uuid);
                        again.push(*uuid);
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not renew the leases");
                return again;
            }
            Err(_) => {
                tracing::warn!("the leases' renewal took too long");
                return again;
            }
        }
        let forwarded: Vec<(Uuid, Forwarded)> = lock(&self.forwarded)
            .iter()
            .map(|(uuid, to)| (*uuid, to.clone()))
            .collect();
        for (uuid, to) in forwarded {
            // The same holder (or the node it is pinned to, while nobody holds it), at
            // the same address (a node restarted elsewhere keeps its name and lease).
            let holder = match self.store.lease_holder(uuid).await {
                Ok(holder) => holder,
                Err(_) => break,
            };
            let same = match holder {
                Some(lease) => lease.node == to.node,
                None => to.pinned,
            };
            let moved = !same
                || match self.store.node_addr(&to.node).await {
                    Ok(now) => now != to.addr,
                    Err(_) => break,
                };
            if moved {
                again.push(uuid);
            }
        }
        again.extend(lock(&self.fenced).iter().copied());
        again
    }
}

/// A forwarder to the node that runs a program: a proxy whose requests say they come
/// from a node, so that node does not run the service's middlewares a second time.
struct ToNode {
    inner: Box<dyn RunningService>,
    token: http::HeaderValue,
}

/// [`ToNode`]'s requests, marked, then the proxy's handler.
struct MarkedForNode {
    inner: Arc<dyn crate::contract::Handler>,
    token: http::HeaderValue,
}

impl crate::contract::Handler for MarkedForNode {
    fn answer(&self, mut request: axum::extract::Request) -> crate::contract::Answer {
        request.headers_mut().insert(
            http::HeaderName::from_static(crate::contract::PEER_HEADER),
            self.token.clone(),
        );
        self.inner.answer(request)
    }
}

#[async_trait::async_trait]
impl RunningService for ToNode {
    fn routes(&self) -> axum::Router {
        let token = self.token.clone();
        self.inner.routes().layer(axum::middleware::map_request(
            move |mut request: axum::extract::Request| {
                let token = token.clone();
                async move {
                    request.headers_mut().insert(
                        http::HeaderName::from_static(crate::contract::PEER_HEADER),
                        token,
                    );
                    request
                }
            },
        ))
    }

    async fn stop(&self) -> Result<(), ServiceError> {
        self.inner.stop().await
    }

    async fn stop_within(&self, grace: Duration) -> Result<(), ServiceError> {
        self.inner.stop_within(grace).await
    }

    fn upstreams(&self) -> Vec<crate::contract::UpstreamState> {
        self.inner.upstreams()
    }

    fn handler(&self) -> Option<Arc<dyn crate::contract::Handler>> {
        let inner = self.inner.handler()?;
        Some(Arc::new(MarkedForNode {
            inner,
            token: self.token.clone(),
        }))
    }
}

/// What answers for a program pinned to node `node`, which has never joined: 503,
/// saying so, until it joins (the node is looked for at every tend).
fn awaiting_node(node: &str) -> axum::Router {
    let message =
        format!("The service runs on the node '{node}', which has not joined the cluster yet.\n");
    axum::Router::new().fallback(move || {
        let message = message.clone();
        async move {
            (
                http::StatusCode::SERVICE_UNAVAILABLE,
                [(http::header::RETRY_AFTER, "5")],
                message,
            )
        }
    })
}

/// This node's part in the cluster: it follows the shared store and reports itself.
pub(crate) struct Cluster {
    store: PostgresStore,
    registry: Arc<Registry>,
    placement: Arc<Placement>,
    settings: ClusterSettings,
    /// The last revision applied here.
    applied: AtomicI64,
    started_at: i64,
    /// Refreshed when another node changes a certificate.
    certificates: std::sync::OnceLock<Arc<Certificates>>,
    /// Whose failed authentications are counted across the cluster.
    auth: std::sync::OnceLock<Arc<AdminAuth>>,
    /// Services being placed again in a task of their own.
    busy: Mutex<HashSet<Uuid>>,
    /// Services being fenced: not placed again until that is done (a placement would
    /// stop the program with its whole stop timeout, and start it again without a
    /// lease).
    fencing: Arc<Mutex<HashSet<Uuid>>>,
}

/// Takes `uuid` off a busy list when dropped.
struct Busy<'a>(&'a Mutex<HashSet<Uuid>>, Uuid);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        lock(self.0).remove(&self.1);
    }
}

/// What `GET /cluster` shows.
#[derive(Debug, serde::Serialize)]
pub(crate) struct ClusterView {
    /// The node that answers.
    pub node: String,
    /// The last revision it applied.
    pub revision: i64,
    /// Every node that reported, most recently heard first.
    pub nodes: Vec<NodeView>,
}

/// A node as `GET /cluster` shows it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct NodeView {
    #[serde(flatten)]
    pub row: NodeRow,
    /// Heard from within three lease periods... or not.
    pub alive: bool,
}

impl Cluster {
    /// Follows the shared store from `revision` on (read before the registry loaded).
    pub fn new(
        store: PostgresStore,
        registry: Arc<Registry>,
        placement: Arc<Placement>,
        revision: i64,
    ) -> Arc<Cluster> {
        let settings = placement.settings.clone();
        Arc::new(Cluster {
            store,
            registry,
            placement,
            settings,
            applied: AtomicI64::new(revision),
            started_at: crate::util::unix_now(),
            certificates: std::sync::OnceLock::new(),
            auth: std::sync::OnceLock::new(),
            busy: Mutex::default(),
            fencing: Arc::default(),
        })
    }

    /// Renews this node's leases and places again what needs it, every second until
    /// `stop`. Started before anything is started, and never waiting for the registry:
    /// a slow start or an apply holds up neither renewals nor fencing.
    pub fn spawn_leases(self: &Arc<Self>, stop: CancellationToken) {
        // The watchdog: a loop of its own that waits for nothing, so a renewal stuck
        // on the database delays no fence.
        let watchdog = Arc::clone(self);
        let watchdog_stop = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(watchdog.settings.lease / 16);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    () = watchdog_stop.cancelled() => return,
                }
                for (uuid, deadline) in watchdog.placement.overdue() {
                    watchdog.fence_in_background(uuid, deadline);
                }
            }
        });
        let cluster = Arc::clone(self);
        tokio::spawn(async move {
            // Often enough that a renewal is never half a lease old at a check, even
            // with the shortest leases.
            let mut every = tokio::time::interval(HEARTBEAT.min(cluster.settings.lease / 4));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    () = stop.cancelled() => return,
                }
                for uuid in cluster.placement.tend().await {
                    cluster.place_in_background(uuid);
                }
            }
        });
    }

    /// Fences service `uuid` (its program gone by `deadline`) in a task of its own,
    /// always: a placement at work on it does not make the fence wait its turn to be
    /// asked (the service's lifecycle lock orders the two).
    fn fence_in_background(self: &Arc<Self>, uuid: Uuid, deadline: Instant) {
        lock(&self.fencing).insert(uuid);
        let registry = Arc::clone(&self.registry);
        let fencing = Arc::clone(&self.fencing);
        tokio::spawn(async move {
            let _done = Busy(&fencing, uuid);
            registry.fence(uuid, deadline).await;
        });
    }

    /// Places service `uuid` again in a task of its own, unless one is at it already.
    fn place_in_background(self: &Arc<Self>, uuid: Uuid) {
        if lock(&self.fencing).contains(&uuid) || !lock(&self.busy).insert(uuid) {
            return;
        }
        let cluster = Arc::clone(self);
        tokio::spawn(async move {
            // Off the busy list however the task ends (a type's hook may panic).
            let _done = Busy(&cluster.busy, uuid);
            cluster.registry.place_again(uuid).await;
        });
    }

    /// Runs the node's part until `stop`: following changes (of services, and of
    /// `certificates`) and heartbeats.
    pub fn spawn(
        self: &Arc<Self>,
        certificates: Arc<Certificates>,
        auth: Arc<AdminAuth>,
        stop: CancellationToken,
    ) {
        let _ = self.certificates.set(certificates);
        let _ = self.auth.set(auth);
        let follower = Arc::clone(self);
        let until = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = follower.follow() => {}
                () = until.cancelled() => {}
            }
        });
        let beater = Arc::clone(self);
        tokio::spawn(async move {
            tokio::select! {
                () = beater.beat() => {}
                () = stop.cancelled() => {}
            }
        });
    }

    /// The last revision applied here.
    pub fn applied(&self) -> i64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// Hears changes and applies them, reconnecting when the database goes away.
    async fn follow(&self) {
        let mut first = true;
        loop {
            let mut listener = match self.store.listen().await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::debug!(%error, "cannot listen for changes yet");
                    tokio::time::sleep(RECONNECT).await;
                    continue;
                }
            };
            // The registry loaded everything at start; after a lost connection, what
            // was missed may be older than the changes kept: reload it all.
            let caught_up = if first {
                self.catch_up().await
            } else {
                self.reload().await
            };
            if let Err(error) = caught_up {
                tracing::warn!(%error, "could not catch up with the shared store");
                tokio::time::sleep(RECONNECT).await;
                continue;
            }
            first = false;
            tracing::info!(node = %self.settings.node, revision = self.applied(), "following the shared store");
            loop {
                let heard = tokio::select! {
                    notice = listener.notices.recv() => notice.is_some(),
                    () = tokio::time::sleep(POLL) => true,
                };
                if !heard {
                    tracing::warn!("lost the connection that hears changes; reconnecting");
                    break;
                }
                if let Err(error) = self.catch_up().await {
                    tracing::warn!(%error, "could not read changes");
                    break;
                }
            }
        }
    }

    /// Applies every change after the last applied revision.
    async fn catch_up(&self) -> Result<(), StoreError> {
        loop {
            let changes = self.store.changes_since(self.applied(), BATCH).await?;
            let Some(last) = changes.last().map(|change| change.revision) else {
                return Ok(());
            };
            for change in changes {
                if change.uuid == CERTIFICATES {
                    self.refresh_certificates().await;
                } else if change.uuid == CHALLENGES {
                    self.refresh_challenges().await;
                } else {
                    // Not applied: the revision stays, and the change is read again.
                    self.registry.converge(change.uuid).await?;
                }
                self.applied.fetch_max(change.revision, Ordering::SeqCst);
            }
            self.applied.fetch_max(last, Ordering::SeqCst);
        }
    }

    /// Brings every service to what the store says, forgetting those it no longer has.
    async fn reload(&self) -> Result<(), StoreError> {
        use super::store::Store;
        let revision = self.store.revision().await?;
        let stored: HashSet<Uuid> = self.store.load().await?.iter().map(|r| r.uuid).collect();
        let mut all: HashSet<Uuid> = self.registry.uuids().into_iter().collect();
        all.extend(stored);
        all.remove(&CERTIFICATES);
        all.remove(&CHALLENGES);
        for uuid in all {
            self.registry.converge(uuid).await?;
        }
        self.refresh_certificates().await;
        self.refresh_challenges().await;
        self.applied.fetch_max(revision, Ordering::SeqCst);
        self.catch_up().await
    }

    async fn refresh_certificates(&self) {
        if let Some(certificates) = self.certificates.get() {
            if let Err(error) = certificates.refresh_stored().await {
                tracing::warn!(%error, "could not read the certificates another node changed");
            }
        }
    }

    async fn refresh_challenges(&self) {
        if let Some(certificates) = self.certificates.get() {
            if let Err(error) = certificates.refresh_challenges().await {
                tracing::warn!(%error, "could not read the challenges another node shared");
            }
        }
    }

    /// Says where this node is, before it starts anything.
    pub async fn announce(&self) -> Result<(), StoreError> {
        self.store
            .heartbeat(
                &self.settings.node,
                &self.settings.addr,
                self.started_at,
                self.applied(),
                &Value::Array(Vec::new()),
            )
            .await
    }

    /// Says this node is alive (and forgets old changes now and then).
    async fn beat(&self) {
        let mut every = tokio::time::interval(HEARTBEAT);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beats = 0u64;
        loop {
            every.tick().await;
            beats += 1;
            if beats.is_multiple_of(PRUNE_EVERY) {
                if let Err(error) = self.store.prune_changes().await {
                    tracing::debug!(%error, "old changes not pruned");
                }
            }
            self.share_failures().await;
            let services = self.services();
            if let Err(error) = self
                .store
                .heartbeat(
                    &self.settings.node,
                    &self.settings.addr,
                    self.started_at,
                    self.applied(),
                    &services,
                )
                .await
            {
                tracing::debug!(%error, "heartbeat not recorded");
            }
        }
    }

    /// Tells the other nodes of the failed admin authentications here, and refuses the
    /// addresses that failed too often across the cluster (a second late at most):
    /// guessing through several nodes gains nothing.
    async fn share_failures(&self) {
        let Some(auth) = self.auth.get() else {
            return;
        };
        let mut untold: Vec<(IpAddr, u32)> = auth.take_untold_failures().into_iter().collect();
        // The busiest guessers, and a bounded number of them: a flood of addresses that
        // each guess once (which no throttle stops anyway) must not become as many rows.
        untold.sort_unstable_by_key(|(_, count)| std::cmp::Reverse(*count));
        untold.truncate(SHARED_FAILURES_PER_BEAT);
        let untold: Vec<(String, i64)> = untold
            .into_iter()
            .map(|(client, count)| (client.to_string(), i64::from(count)))
            .collect();
        if !untold.is_empty() {
            if let Err(error) = self
                .store
                .record_failures(&self.settings.node, &untold)
                .await
            {
                tracing::debug!(%error, "failed authentications not shared");
            }
        }
        let max = i64::try_from(auth.max_failures()).unwrap_or(i64::MAX);
        match self.store.refused_clients(max, 60).await {
            Ok(clients) => auth.refuse_across_cluster(
                clients
                    .iter()
                    .filter_map(|client| client.parse().ok())
                    .collect(),
            ),
            Err(error) => tracing::debug!(%error, "the cluster's refused addresses not read"),
        }
    }

    /// What this node runs, for the others to see.
    fn services(&self) -> Value {
        // Stateless services run on every node: a count says enough of them, and keeps
        // the heartbeat small however many there are. Programs are listed, with where
        // this node sees them run.
        let running: usize = self
            .registry
            .summary()
            .by_status
            .iter()
            .filter(|(status, _)| status.should_run())
            .map(|(_, count)| count)
            .sum();
        let programs: Vec<Value> = self
            .placement
            .placed()
            .into_iter()
            .filter_map(|(uuid, place)| {
                let view = self.registry.get(uuid).ok()?;
                view.status.should_run().then(|| {
                    json!({
                        "uuid": view.uuid,
                        "name": view.name,
                        "status": view.status,
                        "runs_on": place,
                    })
                })
            })
            .collect();
        json!({ "running": running, "programs": programs })
    }

    /// The nodes, as `GET /cluster` shows them.
    pub async fn view(&self) -> Result<ClusterView, StoreError> {
        let alive_within = i64::try_from((self.settings.lease * 3).as_millis()).unwrap_or(i64::MAX);
        let nodes = self
            .store
            .nodes()
            .await?
            .into_iter()
            .map(|row| NodeView {
                alive: row.heartbeat_age_ms <= alive_within,
                row,
            })
            .collect();
        Ok(ClusterView {
            node: self.settings.node.clone(),
            revision: self.applied(),
            nodes,
        })
    }
}

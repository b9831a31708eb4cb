//! A running `process` service: its copies of the program (one per replica), the proxy
//! in front of them, and what the service reports of them.
//!
//! Each copy has a port, a supervisor and a unit (cgroup and tag) of its own, so one
//! copy can be stopped, restarted or replaced without touching the others. The proxy
//! that spreads requests over the copies is a snapshot (`ArcSwap`): a reload starts a
//! new copy, waits until it is ready, swaps in a proxy that sends to it instead of the
//! old one, lets the old proxy's requests finish (up to `stop_timeout_ms`) and only
//! then stops the old copy, one copy at a time.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::containment::{self, Containment, Unit};
use super::logs::LogWriter;
use super::orphans;
use super::supervisor::{CopyEvent, Spec, Supervisor};
use crate::contract::{Report, RunningService, ServiceError, StatusReporter};
use crate::upstream::{HealthCheck, Prober, Proxy, ProxyOptions, Upstream};
use crate::util::{lock, AbortOnDrop};

/// How often a replaced proxy is looked at while its requests finish.
const DRAIN_CHECK: Duration = Duration::from_millis(20);
/// How often the copies behind a proxy are probed once one refused a connection.
const COPY_PROBE_EVERY: Duration = Duration::from_secs(1);

/// Everything needed to start one more copy of the program.
pub(super) struct Launcher {
    /// The spec of every copy; each gets its own port and unit.
    pub template: Spec,
    pub fixed_port: Option<u16>,
    pub log: Arc<LogWriter>,
    pub prober: Prober,
    pub board: Arc<Board>,
    /// Proxies to the copies are made with these.
    pub proxy_options: ProxyOptions,
    pub uuid: Uuid,
    /// Cancelled when the instance is dropped: every copy stops.
    pub dropped: CancellationToken,
}

/// One copy of the program, supervised.
pub(super) struct Copy {
    unit: Unit,
    port: u16,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Copy {
    /// Stops the program and whatever it left, and waits until they are gone.
    async fn stop(self, containment: &Containment) {
        self.stop.cancel();
        let _ = self.task.await;
        containment.kill_unit(&self.unit).await;
        orphans::kill_copy_leftovers(&self.unit.id).await;
        containment::kill_adopted_orphans();
    }
}

impl Launcher {
    /// Starts a copy for `slot` and waits until it is ready (or `abandon` completes).
    /// A copy that failed stays on the board, with its facts, until the caller removes
    /// it (its unit id comes with the reason).
    pub async fn launch(
        &self,
        slot: usize,
        abandon: impl Future<Output = ()>,
    ) -> Result<Copy, (String, Option<String>)> {
        let port = match self.fixed_port {
            Some(port) => port,
            None => free_port().map_err(|error| (format!("no free port: {error}"), None))?,
        };
        let unit = Unit::new(self.uuid);
        self.board.add(slot, &unit, port);
        let mut spec = self.template.clone();
        spec.port = port;
        spec.unit = unit.clone();
        let log = if self.board.copies() > 1 {
            self.log.prefixed(&format!("[{}] ", slot + 1))
        } else {
            Arc::clone(&self.log)
        };
        let events = {
            let board = Arc::clone(&self.board);
            let id = unit.id.clone();
            Arc::new(move |event| board.event(&id, event))
        };
        let supervisor = Supervisor {
            spec,
            log,
            events,
            prober: self.prober.clone(),
        };
        let stop = self.dropped.child_token();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(supervisor.run(stop.clone(), ready_tx));
        let copy = Copy {
            unit,
            port,
            stop,
            task,
        };
        let outcome = tokio::select! {
            ready = ready_rx => match ready {
                Ok(Ok(())) => Ok(()),
                Ok(Err(reason)) => Err(reason),
                Err(_) => Err("its supervisor ended unexpectedly".to_owned()),
            },
            () = abandon => Err("the start was given up".to_owned()),
        };
        match outcome {
            Ok(()) => {
                self.board.event(&copy.unit.id, CopyEvent::Ready);
                Ok(copy)
            }
            Err(reason) => {
                let id = copy.unit.id.clone();
                copy.stop(&self.template.containment).await;
                Err((reason, Some(id)))
            }
        }
    }

    /// A proxy spreading requests over `copies`.
    fn routing(&self, copies: &[Copy]) -> Routing {
        let upstreams = copies
            .iter()
            .map(|copy| Upstream::local(copy.port))
            .collect();
        let mut options = self.proxy_options.clone();
        options.weights = vec![1; copies.len()];
        let proxy = Proxy::new(self.prober.clone(), upstreams, options, self.uuid);
        let checker = (copies.len() > 1).then(|| {
            // Copies restart on their own; the probe brings one back into the rotation.
            AbortOnDrop::spawn(Arc::clone(&proxy).check_health(|_: &Proxy| {}))
        });
        Routing {
            proxy,
            _checker: checker,
        }
    }
}

/// The proxy in front of the copies, and its health checks.
struct Routing {
    proxy: Arc<Proxy>,
    _checker: Option<AbortOnDrop>,
}

/// A running `process` service.
pub(super) struct RunningProcess {
    launcher: Arc<Launcher>,
    copies: tokio::sync::Mutex<Vec<Copy>>,
    routing: Arc<ArcSwap<Routing>>,
    stop_timeout: Duration,
}

impl RunningProcess {
    /// Starts `replicas` copies, each ready, or none.
    pub async fn start(
        launcher: Launcher,
        replicas: usize,
        abandon: impl Future<Output = ()> + Clone,
    ) -> Result<RunningProcess, ServiceError> {
        let launcher = Arc::new(launcher);
        let launches = (0..replicas).map(|slot| launcher.launch(slot, abandon.clone()));
        let outcomes = futures_util::future::join_all(launches).await;
        let mut copies = Vec::with_capacity(replicas);
        let mut failure = None;
        for outcome in outcomes {
            match outcome {
                Ok(copy) => copies.push(copy),
                Err((reason, _)) => failure = failure.or(Some(reason)),
            }
        }
        if let Some(reason) = failure {
            for copy in copies {
                copy.stop(&launcher.template.containment).await;
            }
            return Err(ServiceError::failed(format!(
                "The program did not start: {reason}."
            )));
        }
        launcher.board.go_live();
        let routing = Arc::new(ArcSwap::from_pointee(launcher.routing(&copies)));
        Ok(RunningProcess {
            stop_timeout: launcher.template.stop_timeout,
            launcher,
            copies: tokio::sync::Mutex::new(copies),
            routing,
        })
    }

    /// Waits until `old` serves no request any more, or the stop timeout.
    async fn drain(&self, old: Arc<Routing>) {
        let deadline = tokio::time::Instant::now() + self.stop_timeout;
        // The handler holds the routing while it forwards; the body holds the proxy's
        // count until the answer is out.
        while (Arc::strong_count(&old) > 1 || old.proxy.in_flight() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(DRAIN_CHECK).await;
        }
    }
}

impl Drop for RunningProcess {
    /// An instance dropped without a stop still stops its programs.
    fn drop(&mut self) {
        self.launcher.dropped.cancel();
    }
}

/// Every request forwarded to the copies that answer now, without a router in
/// between.
struct ForwardToCopies(Arc<ArcSwap<Routing>>);

impl crate::contract::Handler for ForwardToCopies {
    fn answer(&self, request: axum::extract::Request) -> crate::contract::Answer {
        let current = self.0.load_full();
        crate::contract::Answer::Later(Box::pin(
            async move { current.proxy.forward(request).await },
        ))
    }
}

#[async_trait]
impl RunningService for RunningProcess {
    fn routes(&self) -> Router {
        let routing = Arc::clone(&self.routing);
        Router::new().fallback(move |request: axum::extract::Request| {
            let current = routing.load_full();
            async move { current.proxy.forward(request).await }
        })
    }

    /// Answers once every copy and everything they started are gone.
    async fn stop(&self) -> Result<(), ServiceError> {
        self.launcher.board.go_quiet();
        self.routing.load().proxy.close();
        let copies = std::mem::take(&mut *self.copies.lock().await);
        let containment = &self.launcher.template.containment;
        futures_util::future::join_all(copies.into_iter().map(|copy| copy.stop(containment))).await;
        Ok(())
    }

    /// Stops as `stop` does, and kills what is still running once `grace` is over.
    async fn stop_within(&self, grace: Duration) -> Result<(), ServiceError> {
        let hurry = self.launcher.template.hurry.clone();
        let _deadline = AbortOnDrop::spawn(async move {
            tokio::time::sleep(grace).await;
            hurry.cancel();
        });
        self.stop().await
    }

    fn handler(&self) -> Option<Arc<dyn crate::contract::Handler>> {
        Some(Arc::new(ForwardToCopies(Arc::clone(&self.routing))))
    }

    fn upstreams(&self) -> Vec<crate::contract::UpstreamState> {
        self.routing.load().proxy.states()
    }

    /// Replaces the copies one at a time, each only once its successor is ready.
    async fn reload(&self) -> Option<Result<(), ServiceError>> {
        // A program on a fixed port cannot run beside its successor.
        if self.launcher.fixed_port.is_some() {
            return None;
        }
        let mut copies = self.copies.lock().await;
        for slot in 0..copies.len() {
            let fresh = match self.launcher.launch(slot, std::future::pending()).await {
                Ok(fresh) => fresh,
                Err((reason, id)) => {
                    if let Some(id) = id {
                        self.launcher.board.remove(&id);
                    }
                    return Some(Err(ServiceError::failed(format!(
                        "The new instance did not get ready ({reason}); the old one keeps serving."
                    ))));
                }
            };
            let old = std::mem::replace(&mut copies[slot], fresh);
            let old_routing = self.routing.swap(Arc::new(self.launcher.routing(&copies)));
            self.drain(old_routing).await;
            let id = old.unit.id.clone();
            old.stop(&self.launcher.template.containment).await;
            self.launcher.board.remove(&id);
        }
        Some(Ok(()))
    }
}

/// Where each copy stands, and the service's status and runtime facts made of them.
pub(super) struct Board {
    reporter: StatusReporter,
    state: Mutex<BoardState>,
}

#[derive(Default)]
struct BoardState {
    /// The copies by slot, then unit id.
    copies: Vec<(usize, String, CopyState)>,
    replicas: usize,
    /// Whether the service's first start is done (before, the start reports itself).
    live: bool,
    /// The status last reported, not to repeat it.
    told: Option<Told>,
}

#[derive(Clone, PartialEq)]
enum Told {
    Running,
    Starting,
    Ended,
}

struct CopyState {
    port: u16,
    facts: Value,
    phase: Phase,
}

#[derive(Clone, PartialEq)]
enum Phase {
    Starting,
    Running,
    Restarting,
    Failed(String),
    Ended { reason: String, success: bool },
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Restarting => "restarting",
            Phase::Failed(_) => "failed",
            Phase::Ended { .. } => "stopped",
        }
    }
}

impl Board {
    pub fn new(reporter: StatusReporter, replicas: usize) -> Arc<Board> {
        Arc::new(Board {
            reporter,
            state: Mutex::new(BoardState {
                replicas,
                ..BoardState::default()
            }),
        })
    }

    fn copies(&self) -> usize {
        lock(&self.state).replicas
    }

    fn add(&self, slot: usize, unit: &Unit, port: u16) {
        let mut state = lock(&self.state);
        state.copies.push((
            slot,
            unit.id.clone(),
            CopyState {
                port,
                facts: json!({ "port": port }),
                phase: Phase::Starting,
            },
        ));
        state.copies.sort_by_key(|(slot, _, _)| *slot);
        drop(state);
        self.tell();
    }

    fn remove(&self, id: &str) {
        lock(&self.state).copies.retain(|(_, unit, _)| unit != id);
        self.tell();
    }

    fn go_live(&self) {
        lock(&self.state).live = true;
        self.tell();
    }

    /// The service is stopping: what its copies do now is not news.
    fn go_quiet(&self) {
        lock(&self.state).live = false;
    }

    fn event(&self, id: &str, event: CopyEvent) {
        {
            let mut state = lock(&self.state);
            let Some((_, _, copy)) = state.copies.iter_mut().find(|(_, unit, _)| unit == id) else {
                return;
            };
            match event {
                CopyEvent::Facts(facts) => copy.facts = facts,
                CopyEvent::Ready => copy.phase = Phase::Running,
                CopyEvent::Restarting => copy.phase = Phase::Restarting,
                CopyEvent::GaveUp(reason) => copy.phase = Phase::Failed(reason),
                CopyEvent::Ended { reason, success } => {
                    copy.phase = Phase::Ended { reason, success }
                }
            }
        }
        self.tell();
    }

    /// Reports the runtime facts, and the service's status when it changed: running
    /// while any copy is, starting while any is on its way back, else failed (if one
    /// failed) or stopped.
    fn tell(&self) {
        let mut state = lock(&self.state);
        let copies: Vec<Value> = state
            .copies
            .iter()
            .map(|(slot, _, copy)| {
                let mut facts = copy.facts.clone();
                if let Some(map) = facts.as_object_mut() {
                    map.insert("copy".to_owned(), json!(slot + 1));
                    map.insert("port".to_owned(), json!(copy.port));
                    map.insert("state".to_owned(), json!(copy.phase.name()));
                }
                facts
            })
            .collect();
        // The first copy's facts stay at the top, as with one copy.
        let mut runtime = copies.first().cloned().unwrap_or_else(|| json!({}));
        if let Some(map) = runtime.as_object_mut() {
            map.remove("copy");
            map.remove("state");
            map.insert("replicas".to_owned(), Value::Array(copies));
        }
        self.reporter.report(Report::Runtime(runtime));
        if !state.live {
            return;
        }
        let phases: Vec<&Phase> = state
            .copies
            .iter()
            .map(|(_, _, copy)| &copy.phase)
            .collect();
        let (told, report) = if phases.iter().any(|phase| **phase == Phase::Running) {
            (Told::Running, Report::Running)
        } else if phases
            .iter()
            .any(|phase| matches!(phase, Phase::Starting | Phase::Restarting))
        {
            (Told::Starting, Report::Starting)
        } else {
            let failed = phases.iter().find_map(|phase| match phase {
                Phase::Failed(reason) => Some(reason.clone()),
                _ => None,
            });
            let ended = phases.iter().find_map(|phase| match phase {
                Phase::Ended { reason, .. } => Some(reason.clone()),
                _ => None,
            });
            let unclean = phases
                .iter()
                .any(|phase| matches!(phase, Phase::Ended { success: false, .. }));
            match (failed, ended) {
                (Some(reason), _) => (Told::Ended, Report::Failed(reason)),
                (None, Some(reason)) if unclean => (Told::Ended, Report::Failed(reason)),
                (None, Some(reason)) => (Told::Ended, Report::Exited(reason)),
                (None, None) => return,
            }
        };
        if state.told.as_ref() != Some(&told) {
            state.told = Some(told);
            drop(state);
            self.reporter.report(report);
        }
    }
}

/// A free TCP port on loopback, as the kernel hands them out.
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// The proxy options of a process service: its strategy; health probes only matter
/// with several copies (one copy is supervised, and has nowhere else to go).
pub(super) fn proxy_options(
    strategy: crate::upstream::Strategy,
    timeout: Duration,
    replicas: usize,
    trusted: crate::upstream::TrustedProxies,
) -> ProxyOptions {
    ProxyOptions {
        strategy,
        weights: vec![1; replicas],
        timeout,
        health_check: if replicas > 1 {
            HealthCheck::Passive {
                interval: COPY_PROBE_EVERY,
            }
        } else {
            HealthCheck::Off
        },
        trusted,
    }
}

//! Running one program: start, wait until ready, restart with backoff, stop.
//!
//! The supervisor is one task per running `process` service. It owns the child: no
//! one else signals or waits for it, so there is no race over who reaps it.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::containment::{self, Containment, Unit};
use super::logs::LogWriter;
use crate::sys;
use crate::upstream::Prober;

/// First pause before a restart; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Running this long without exiting resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Exits before ever being ready, in a row, after which Herve gives up.
const MAX_EARLY_EXITS: u32 = 5;
/// How often readiness is probed while starting.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// When a program that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Every policy by its registration name; the first is the default.
    pub const CHOICES: [(&'static str, RestartPolicy); 3] = [
        ("always", RestartPolicy::Always),
        ("on-failure", RestartPolicy::OnFailure),
        ("never", RestartPolicy::Never),
    ];

    fn restarts_after(self, status: ExitStatus) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !status.success(),
            RestartPolicy::Never => false,
        }
    }
}

/// The account a program runs as, when it is not Herve's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Everything needed to run the program.
#[derive(Clone)]
pub(crate) struct Spec {
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    /// The whole environment of the program.
    pub env: Vec<(String, String)>,
    pub run_as: Option<RunAs>,
    pub containment: Containment,
    /// Herve's data directory, hidden from a program that runs as Herve's own user.
    pub hide: Option<PathBuf>,
    pub port: u16,
    /// Which copy of which service this program is: its cgroup and its tag.
    pub unit: Unit,
    pub health_path: Option<String>,
    pub restart: RestartPolicy,
    pub stop_timeout: Duration,
    /// Cancelled when the program must be gone now: a stop then kills it without
    /// waiting out `stop_timeout`. Shared by every copy of the service.
    pub hurry: CancellationToken,
    pub ready_timeout: Duration,
}

pub(crate) struct Supervisor {
    pub spec: Spec,
    pub log: Arc<LogWriter>,
    /// What happens to the copy, for whoever keeps the service's status.
    pub events: Arc<dyn Fn(CopyEvent) + Send + Sync>,
    pub prober: Prober,
}

/// What a supervisor tells about its copy of the program.
#[derive(Debug, Clone)]
pub(crate) enum CopyEvent {
    /// Its runtime facts changed (pid, port, restarts, last exit).
    Facts(serde_json::Value),
    /// It is ready (again).
    Ready,
    /// It exited and is being started again.
    Restarting,
    /// Herve gave up on it, after it had been ready once.
    GaveUp(String),
    /// It ended by itself and is not restarted (its policy says so).
    Ended { reason: String, success: bool },
}

/// What the runtime facts of the service are.
#[derive(Default)]
struct Facts {
    pid: Option<u32>,
    restarts: u32,
    last_exit: Option<String>,
}

impl Supervisor {
    /// Runs the program until a stop is asked (through `stop`) or Herve gives up on it.
    /// `ready` gets the outcome of the first start: `Ok` once the program is ready,
    /// or the reason it never was.
    pub async fn run(self, stop: CancellationToken, ready: oneshot::Sender<Result<(), String>>) {
        let mut ready = Some(ready);
        let mut facts = Facts::default();
        let mut backoff = FIRST_BACKOFF;
        let mut early_exits = 0u32;
        // Tells whoever waits for the first start, and the registry.
        let give_up = |reason: String, ready: &mut Option<oneshot::Sender<Result<(), String>>>| {
            self.log.line(format!("[herve] {reason}").as_bytes());
            match ready.take() {
                Some(ready) => {
                    let _ = ready.send(Err(reason));
                }
                None => (self.events)(CopyEvent::GaveUp(reason)),
            }
        };

        loop {
            if let Err(error) = std::net::TcpListener::bind(("127.0.0.1", self.spec.port)) {
                // Another server there would answer the readiness probe in its place.
                give_up(
                    format!("port {} is not free: {error}", self.spec.port),
                    &mut ready,
                );
                return;
            }
            let mut child = match self.spawn() {
                Ok(child) => child,
                Err(error) => {
                    give_up(
                        format!("could not start {}: {error}", self.spec.argv[0]),
                        &mut ready,
                    );
                    return;
                }
            };
            facts.pid = child.id();
            let pgid = facts.pid.and_then(|pid| i32::try_from(pid).ok());
            self.log.line(
                format!(
                    "[herve] started pid {} on port {}",
                    facts.pid.unwrap_or(0),
                    self.spec.port
                )
                .as_bytes(),
            );
            self.report_facts(&facts);

            // Until it is ready.
            let became_ready = tokio::select! {
                ready_now = self.wait_ready() => ready_now,
                status = child.wait() => {
                    let (exit, status) = reap(pgid, status, &self.spec).await;
                    facts.pid = None;
                    facts.last_exit = Some(status.clone());
                    self.report_facts(&facts);
                    early_exits += 1;
                    if early_exits >= MAX_EARLY_EXITS {
                        give_up(format!("gave up: it exited before it was ready {MAX_EARLY_EXITS} times in a row (last: {status})"), &mut ready);
                        return;
                    }
                    if exit.is_some_and(|exit| !self.spec.restart.restarts_after(exit)) {
                        give_up(format!("it exited before it was ready ({status})"), &mut ready);
                        return;
                    }
                    self.log.line(format!("[herve] exited before it was ready ({status}); restarting in {backoff:?}").as_bytes());
                    if self.pause(&stop, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    facts.restarts += 1;
                    continue;
                }
                () = stop.cancelled() => {
                    self.terminate(&mut child, pgid).await;
                    return;
                }
            };
            if !became_ready {
                self.terminate(&mut child, pgid).await;
                facts.pid = None;
                self.report_facts(&facts);
                give_up(
                    format!(
                        "it was not ready within {} ms",
                        self.spec.ready_timeout.as_millis()
                    ),
                    &mut ready,
                );
                return;
            }
            early_exits = 0;
            let ready_since = Instant::now();
            self.log.line(b"[herve] ready");
            match ready.take() {
                Some(ready) => {
                    let _ = ready.send(Ok(()));
                }
                None => (self.events)(CopyEvent::Ready),
            }

            // Until it exits or is stopped.
            let (exit, status) = tokio::select! {
                status = child.wait() => reap(pgid, status, &self.spec).await,
                () = stop.cancelled() => {
                    self.terminate(&mut child, pgid).await;
                    return;
                }
            };
            let exited_ok = exit.is_some_and(|exit| exit.success());
            facts.pid = None;
            facts.last_exit = Some(status.clone());
            self.report_facts(&facts);
            if ready_since.elapsed() >= HEALTHY_RUN {
                backoff = FIRST_BACKOFF;
            }
            let restart = exit.is_none_or(|exit| self.spec.restart.restarts_after(exit));
            if !restart {
                let reason = format!("it exited ({status})");
                self.log
                    .line(format!("[herve] {reason}; not restarted").as_bytes());
                (self.events)(CopyEvent::Ended {
                    reason,
                    success: exited_ok,
                });
                return;
            }
            self.log
                .line(format!("[herve] exited ({status}); restarting in {backoff:?}").as_bytes());
            (self.events)(CopyEvent::Restarting);
            if self.pause(&stop, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            facts.restarts += 1;
        }
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let spec = &self.spec;
        let port = spec.port.to_string();
        let mut command = Command::new(&spec.argv[0]);
        command
            .args(spec.argv[1..].iter().map(|arg| expand_port(arg, &port)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a stop signals the program and its children.
            .process_group(0)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PORT", &port)
            .env(super::COPY_ENV, &spec.unit.id)
            .current_dir(&spec.cwd);
        let cgroup = spec.containment.cgroup_procs(&spec.unit)?;
        let mut sandbox = match &spec.hide {
            Some(hidden) => super::sandbox::hiding(hidden).map_err(std::io::Error::other)?,
            None => None,
        };
        let run_as = spec.run_as;
        let herve = std::process::id();
        // SAFETY: only async-signal-safe calls (open, write, close, prctl, setgroups,
        // setgid, setuid, getppid, the Landlock syscalls) between fork and exec, on
        // memory prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                // Into the service's cgroup first, while still allowed to: no
                // descendant of the program can leave it.
                if let Some(procs) = &cgroup {
                    join_cgroup(procs)?;
                }
                // Orphans of its descendants are re-parented to the program, so they
                // stay in its process tree (the flag survives exec).
                libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
                if let Some(run_as) = run_as {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(run_as.gid) != 0
                        || libc::setuid(run_as.uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // After the change of user, which clears it: if Herve dies (even by
                // SIGKILL), the program gets SIGKILL too.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // Herve may have died before the line above took effect.
                if u32::try_from(libc::getppid()).ok() != Some(herve) {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                if let Some(ruleset) = sandbox.take() {
                    ruleset
                        .restrict_self()
                        .map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))?;
                }
                Ok(())
            });
        }
        let mut leaders = containment::leaders();
        let mut child = command.spawn()?;
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            leaders.get_or_insert_with(Default::default).insert(pid);
        }
        drop(leaders);
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(Arc::clone(&self.log).capture(stdout));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(Arc::clone(&self.log).capture(stderr));
        }
        Ok(child)
    }

    /// Whether the program became ready within the ready timeout.
    async fn wait_ready(&self) -> bool {
        let deadline = Instant::now() + self.spec.ready_timeout;
        let target = format!("127.0.0.1:{}", self.spec.port);
        let url = self
            .spec
            .health_path
            .as_ref()
            .map(|path| format!("http://{target}{path}"));
        while Instant::now() < deadline {
            tokio::time::sleep(PROBE_EVERY).await;
            let ready = match &url {
                None => self.prober.accepts(&target, PROBE_TIMEOUT).await,
                Some(url) => self.prober.answers(url, PROBE_TIMEOUT).await,
            };
            if ready {
                return true;
            }
        }
        false
    }

    /// SIGTERM to the program and everything it started, SIGKILL after the stop
    /// timeout, and waits until the program is gone.
    async fn terminate(&self, child: &mut Child, pgid: Option<i32>) {
        let Some(pgid) = pgid else {
            return;
        };
        // Its descendants as they are now: once it exits, they are re-parented.
        let started = containment::descendants(&[pgid]);
        kill_group(pgid, libc::SIGTERM);
        for pid in &started {
            sys::kill(*pid, libc::SIGTERM);
        }
        let waited = tokio::select! {
            waited = tokio::time::timeout(self.spec.stop_timeout, child.wait()) => waited.ok(),
            () = self.spec.hurry.cancelled() => None,
        };
        let status = match waited {
            Some(status) => status.map(|s| s.to_string()),
            None => {
                self.log.line(if self.spec.hurry.is_cancelled() {
                    b"[herve] it must be gone now: SIGKILL".as_slice()
                } else {
                    b"[herve] still running after the stop timeout: SIGKILL".as_slice()
                });
                kill_group(pgid, libc::SIGKILL);
                containment::signal_tree(pgid, libc::SIGKILL);
                child.wait().await.map(|s| s.to_string())
            }
        };
        containment::forget_leader(pgid);
        // Whatever ignored SIGTERM, wherever it went.
        kill_group(pgid, libc::SIGKILL);
        for pid in &started {
            sys::kill(*pid, libc::SIGKILL);
        }
        self.spec.containment.kill_unit(&self.spec.unit).await;
        containment::kill_adopted_orphans();
        let status = status.unwrap_or_else(|error| format!("unknown ({error})"));
        self.log
            .line(format!("[herve] stopped ({status})").as_bytes());
    }

    /// Sleeps `pause`, unless a stop comes first; returns whether it did.
    async fn pause(&self, stop: &CancellationToken, pause: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(pause) => false,
            () = stop.cancelled() => true,
        }
    }

    fn report_facts(&self, facts: &Facts) {
        (self.events)(CopyEvent::Facts(json!({
            "pid": facts.pid,
            "port": self.spec.port,
            "restarts": facts.restarts,
            "last_exit": facts.last_exit,
        })));
    }
}

/// Replaces `$PORT` and `${PORT}` in an argument: no shell runs the command, and most
/// programs take their port as an argument.
pub(crate) fn expand_port(arg: &str, port: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("${PORT}") {
            out.push_str(port);
            rest = tail;
        } else if let Some(tail) = after
            .strip_prefix("$PORT")
            .filter(|tail| !tail.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        {
            out.push_str(port);
            rest = tail;
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}

/// After the leader exited by itself: what is left of what it started goes too (a
/// new start begins clean). Returns the exit status, and as text.
async fn reap(
    pgid: Option<i32>,
    status: std::io::Result<ExitStatus>,
    spec: &Spec,
) -> (Option<ExitStatus>, String) {
    if let Some(pgid) = pgid {
        containment::forget_leader(pgid);
        kill_group(pgid, libc::SIGKILL);
    }
    spec.containment.kill_unit(&spec.unit).await;
    containment::kill_adopted_orphans();
    match status {
        Ok(status) => (Some(status), status.to_string()),
        Err(error) => (None, format!("unknown ({error})")),
    }
}

fn kill_group(pgid: i32, signal: i32) {
    if pgid > 1 {
        sys::kill(-pgid, signal);
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`.
/// Async-signal-safe: called between fork and exec.
fn join_cgroup(procs: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: open/write/close on a NUL-terminated path and a static buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // "0" moves the writer itself.
        let written = libc::write(fd, b"0".as_ptr().cast(), 1);
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        if written != 1 {
            return Err(error);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn port_expansion() {
        let expand = |arg| super::expand_port(arg, "8080");
        assert_eq!(expand("$PORT"), "8080");
        assert_eq!(expand("--port=${PORT}"), "--port=8080");
        assert_eq!(expand("127.0.0.1:$PORT/x"), "127.0.0.1:8080/x");
        assert_eq!(expand("$PORTABLE"), "$PORTABLE");
        assert_eq!(expand("$$PORT$"), "$8080$");
        assert_eq!(expand("plain"), "plain");
    }
}

//! Keeping every process a program starts within reach, so that a stop leaves nothing.
//!
//! A program's children may leave its process group (`setsid`), clear their
//! environment (so `HERVE_SERVICE_UUID` no longer names them) and outlive their parent
//! (double fork). Three nets catch them:
//!
//! - **cgroups v2**, where Herve may create them: each copy of a program runs in a
//!   cgroup of its own (`herve-<id>/<uuid>/<copy>` beside Herve's own), which no
//!   descendant can leave; stopping a copy kills its cgroup, unregistering a service
//!   kills all of its, and a Herve started after a crash kills what is left in the
//!   cgroups of its services.
//! - **subreapers**: each program is made a child subreaper, so its orphaned
//!   descendants are re-parented to it and stay in its process tree, which a stop
//!   walks and kills; when Herve itself is a subreaper (the `herve` binary is, see
//!   [`crate::adopt_orphans`]), what a dying program leaves is re-parented to Herve
//!   and killed too.
//! - the environment tag, for processes left by a Herve that was killed
//!   (see `orphans`).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use uuid::Uuid;

use crate::sys;

/// Programs Herve started and tokio waits for: never reaped by anyone else.
static LEADERS: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// The set of programs Herve waits for itself. Held while a program is spawned and
/// while orphans are reaped, so that a program that exits at once is never reaped by
/// the wrong hand.
pub fn leaders() -> MutexGuard<'static, Option<HashSet<i32>>> {
    LEADERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A program Herve no longer waits for (it has been reaped).
pub fn forget_leader(pid: i32) {
    if let Some(leaders) = leaders().as_mut() {
        leaders.remove(&pid);
    }
}

/// One copy of a service's program: a cgroup of its own below the service's
/// (`<uuid>/<id>`), and a tag in its environment, so that stopping one copy (an old
/// one being replaced, one of several replicas) leaves the others alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub uuid: Uuid,
    /// Short and random: `c` and 8 hex digits.
    pub id: String,
}

impl Unit {
    pub fn new(uuid: Uuid) -> Unit {
        let random = Uuid::new_v4().simple().to_string();
        Unit {
            uuid,
            id: format!("c{}", &random[..8]),
        }
    }
}

/// Where the programs of this Herve's services are kept.
#[derive(Debug, Clone)]
pub struct Containment {
    /// `<cgroup2 mount>/<Herve's cgroup>/herve-<id>`, when Herve may create cgroups.
    cgroups: Option<PathBuf>,
}

impl Containment {
    /// Looks for a writable cgroup v2 hierarchy; the name of Herve's cgroup comes from
    /// its data directory, so a restarted Herve finds the cgroups of its services.
    pub fn detect(data_dir: &Path) -> Containment {
        let cgroups = own_cgroup().and_then(|own| {
            let id = short_hash(&fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf()));
            let base = own.join(format!("herve-{id}"));
            // A probe: made again when the first program starts, removed with the last.
            match fs::create_dir_all(&base).and_then(|()| remove_if_empty(&base)) {
                Ok(()) => Some(base),
                Err(error) => {
                    tracing::info!(%error, path = %base.display(), "cgroups are not available to Herve; programs are contained by their process tree");
                    None
                }
            }
        });
        Containment { cgroups }
    }

    /// The cgroup of `unit`, created if needed: its `cgroup.procs`, which a new program
    /// writes itself into before it runs anything.
    pub fn cgroup_procs(&self, unit: &Unit) -> std::io::Result<Option<CString>> {
        let Some(base) = &self.cgroups else {
            return Ok(None);
        };
        let dir = base.join(unit.uuid.to_string()).join(&unit.id);
        match fs::create_dir_all(&dir) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
        let procs = dir.join("cgroup.procs");
        CString::new(procs.as_os_str().as_encoded_bytes())
            .map(Some)
            .map_err(|_| std::io::Error::other("a cgroup path with a NUL byte"))
    }

    /// Kills every process of `unit` still in its cgroup and removes the cgroup (and
    /// the service's, once empty). Returns how many there were.
    pub async fn kill_unit(&self, unit: &Unit) -> usize {
        let Some(base) = self.cgroups.clone() else {
            return 0;
        };
        let service = base.join(unit.uuid.to_string());
        let dir = service.join(&unit.id);
        tokio::task::spawn_blocking(move || {
            let killed = empty_cgroup(&dir);
            let _ = remove_if_empty(&service);
            let _ = remove_if_empty(&base);
            killed
        })
        .await
        .unwrap_or(0)
    }

    /// Kills every process of service `uuid`, whichever copy it belongs to, and
    /// removes its cgroups. Returns how many there were.
    pub async fn kill_cgroup(&self, uuid: Uuid) -> usize {
        let Some(base) = self.cgroups.clone() else {
            return 0;
        };
        let dir = base.join(uuid.to_string());
        tokio::task::spawn_blocking(move || {
            let killed = empty_tree(&dir);
            let _ = remove_if_empty(&base);
            killed
        })
        .await
        .unwrap_or(0)
    }

    /// After a crash of Herve: kills what is left in the cgroups of its services (of
    /// those that still exist and of those that were forgotten since), and removes
    /// the cgroups.
    pub async fn recover(&self) {
        let Some(base) = self.cgroups.clone() else {
            return;
        };
        let killed = tokio::task::spawn_blocking(move || {
            let Ok(entries) = fs::read_dir(&base) else {
                return 0;
            };
            entries
                .filter_map(Result::ok)
                .filter(|entry| {
                    entry
                        .file_name()
                        .to_str()
                        .is_some_and(|name| Uuid::try_parse(name).is_ok())
                })
                .map(|entry| empty_tree(&entry.path()))
                .sum::<usize>()
        })
        .await
        .unwrap_or(0);
        if killed > 0 {
            tracing::warn!(
                count = killed,
                "killed processes left over in the services' cgroups"
            );
        }
    }
}

/// Kills every process of the cgroup `dir`, waits until it is empty, removes it.
fn empty_cgroup(dir: &Path) -> usize {
    let procs = dir.join("cgroup.procs");
    let mut killed = 0;
    for _ in 0..100 {
        let pids = read_pids(&procs);
        if pids.is_empty() {
            break;
        }
        killed = killed.max(pids.len());
        // cgroup.kill kills the whole cgroup at once, racing no fork; older kernels
        // only have the list.
        if fs::write(dir.join("cgroup.kill"), "1").is_err() {
            for pid in &pids {
                sys::kill(*pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Fails while a process is still dying; the next stop or start tries again.
    let _ = fs::remove_dir(dir);
    killed
}

/// [`empty_cgroup`] for `dir` and every cgroup below it, deepest first.
fn empty_tree(dir: &Path) -> usize {
    let children: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.path().join("cgroup.procs").exists())
                .map(|entry| entry.path())
                .collect()
        })
        .unwrap_or_default();
    let below: usize = children.iter().map(|child| empty_tree(child)).sum();
    below + empty_cgroup(dir)
}

/// Removes the cgroup `dir` unless it still has cgroups below it.
fn remove_if_empty(dir: &Path) -> std::io::Result<()> {
    match fs::remove_dir(dir) {
        Err(error) if error.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        other => other,
    }
}

fn read_pids(procs: &Path) -> Vec<i32> {
    fs::read_to_string(procs)
        .map(|text| {
            text.lines()
                .filter_map(|line| line.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Herve's own cgroup in the cgroup v2 hierarchy, as a directory.
fn own_cgroup() -> Option<PathBuf> {
    let membership = fs::read_to_string("/proc/self/cgroup").ok()?;
    let relative = membership
        .lines()
        .find_map(|line| line.strip_prefix("0::"))?
        .trim_start_matches('/');
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mounts.lines().find_map(|line| {
        // `<id> <parent> <dev> <root> <mount point> <options> [<optional>...] - <type> ...`
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        before.split_whitespace().nth(4).map(unescape_mount_path)
    })?;
    Some(Path::new(&mount).join(relative))
}

/// mountinfo writes spaces and a few other bytes as octal escapes.
fn unescape_mount_path(path: &str) -> String {
    path.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn short_hash(path: &Path) -> String {
    use blake2::digest::{FixedOutput, Update};
    let mut hasher = blake2::Blake2b512::default();
    hasher.update(path.as_os_str().as_encoded_bytes());
    let digest: [u8; 64] = hasher.finalize_fixed().into();
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// One line of `/proc/<pid>/stat` that matters here.
struct ProcessEntry {
    pid: i32,
    parent: i32,
    zombie: bool,
}

/// Every process of the system, as `/proc` shows it now.
fn processes() -> Vec<ProcessEntry> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name is in parentheses and may hold anything: parse after it.
            let (_, rest) = stat.rsplit_once(") ")?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let parent = fields.next()?.parse().ok()?;
            Some(ProcessEntry {
                pid,
                parent,
                zombie: state == "Z" || state == "X",
            })
        })
        .collect()
}

/// The descendants of `roots` (not the roots themselves), living or not yet reaped.
pub fn descendants(roots: &[i32]) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for process in processes() {
        children
            .entry(process.parent)
            .or_default()
            .push(process.pid);
    }
    let mut found = Vec::new();
    let mut stack: Vec<i32> = roots.to_vec();
    let mut seen: HashSet<i32> = roots.iter().copied().collect();
    while let Some(pid) = stack.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(child) {
                found.push(child);
                stack.push(child);
            }
        }
    }
    found
}

/// Sends `signal` to every descendant of `leader`.
pub fn signal_tree(leader: i32, signal: i32) {
    for pid in descendants(&[leader]) {
        sys::kill(pid, signal);
    }
}

/// Kills the children Herve has but did not start (orphans of a program that died,
/// re-parented to Herve because it is a subreaper), and all they started. Only the
/// `herve` binary is a subreaper; a process embedding Herve keeps its own children.
pub fn kill_adopted_orphans() -> usize {
    if !sys::is_subreaper() {
        return 0;
    }
    let own = i32::try_from(std::process::id()).unwrap_or(0);
    let leaders = leaders().clone().unwrap_or_default();
    let orphans: Vec<i32> = processes()
        .into_iter()
        .filter(|process| {
            process.parent == own && !process.zombie && !leaders.contains(&process.pid)
        })
        .map(|process| process.pid)
        .collect();
    if orphans.is_empty() {
        return 0;
    }
    let mut all = descendants(&orphans);
    all.extend(&orphans);
    for pid in &all {
        sys::kill(*pid, libc::SIGKILL);
    }
    all.len()
}

/// Reaps the children Herve adopted (see [`kill_adopted_orphans`]) once they have
/// exited, so that none stays a zombie. Never touches a program tokio waits for.
pub fn reap_adopted_orphans() {
    let own = i32::try_from(std::process::id()).unwrap_or(0);
    let leaders = leaders();
    let known = leaders.as_ref();
    for process in processes() {
        if process.parent == own
            && process.zombie
            && !known.is_some_and(|known| known.contains(&process.pid))
        {
            sys::reap_if_exited(process.pid);
        }
    }
}

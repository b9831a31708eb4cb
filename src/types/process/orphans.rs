//! Finding and killing what a previous Herve left running.
//!
//! Every program Herve starts carries `HERVE_SERVICE_UUID` in its environment, and so
//! do its children. If Herve was killed with SIGKILL, its programs may have outlived
//! it; before starting a service again (or forgetting it), every process still
//! carrying its uuid is killed.

use std::fs;
use std::time::Duration;

use uuid::Uuid;

/// The pids of processes whose environment names any of `uuids`.
pub fn find_any(uuids: &[Uuid]) -> Vec<i32> {
    let needles: Vec<Vec<u8>> = uuids
        .iter()
        .map(|uuid| format!("HERVE_SERVICE_UUID={uuid}").into_bytes())
        .collect();
    find_tagged(b"HERVE_SERVICE_UUID=", &needles)
}

/// The pids of processes whose environment has one of `needles` (`KEY=VALUE`, every
/// one starting with `key`).
fn find_tagged(key: &[u8], needles: &[Vec<u8>]) -> Vec<i32> {
    let own = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            // Processes of other users, or gone meanwhile, are simply not readable.
            fs::read(format!("/proc/{pid}/environ"))
                .map(|environ| {
                    environ
                        .split(|&b| b == 0)
                        .filter(|var| var.starts_with(key))
                        .any(|var| needles.iter().any(|needle| needle.as_slice() == var))
                })
                .unwrap_or(false)
        })
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect()
}

/// Kills every process left over from an earlier run of service `uuid` and waits
/// (briefly) for them to go. Returns how many there were.
pub async fn kill_leftovers(uuid: Uuid) -> usize {
    kill_leftovers_of(vec![uuid]).await
}

/// Kills what is left of one copy of a program (tagged with its copy id), and waits.
pub async fn kill_copy_leftovers(copy: &str) -> usize {
    let key = format!("{}=", super::COPY_ENV).into_bytes();
    let needle = format!("{}={copy}", super::COPY_ENV).into_bytes();
    let pids = tokio::task::spawn_blocking(move || find_tagged(&key, &[needle]))
        .await
        .unwrap_or_default();
    kill_and_wait(pids).await
}

/// [`kill_leftovers`] for several services with one pass over `/proc`.
pub async fn kill_leftovers_of(uuids: Vec<Uuid>) -> usize {
    if uuids.is_empty() {
        return 0;
    }
    let pids = tokio::task::spawn_blocking(move || find_any(&uuids))
        .await
        .unwrap_or_default();
    kill_and_wait(pids).await
}

async fn kill_and_wait(pids: Vec<i32>) -> usize {
    for &pid in &pids {
        // SAFETY: kill(2) with a pid read from /proc; at worst the process is gone.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    if !pids.is_empty() {
        tracing::warn!(count = pids.len(), "killed processes a program left behind");
        for _ in 0..50 {
            let alive = pids.iter().any(|pid| is_alive(*pid));
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    pids.len()
}

/// Whether `pid` exists and is not a zombie.
fn is_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

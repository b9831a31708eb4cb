//! The access log of the `herve` binary written to a file: every answer a line, nothing
//! lost on a clean stop or under load, reopened on SIGUSR1 after a rotation.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn spawn_with_log(dir: &Path, log: &Path) -> BinHerve {
    BinHerve::spawn(
        dir,
        &[("HERVE_ACCESS_LOG", log.to_str().expect("utf-8 path"))],
    )
}

#[tokio::test]
async fn a_clean_stop_writes_every_line_and_a_second_is_the_most_a_line_waits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let mut herve = spawn_with_log(dir.path(), &log);
    let client = herve.client();
    client.get("/health").await;
    let asked = Instant::now();
    while lines_of(&log).is_empty() {
        assert!(
            asked.elapsed() < Duration::from_millis(1500),
            "a line waited more than a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = &lines_of(&log)[0];
    assert!(
        line.contains(
            " herve::access client=127.0.0.1 status=200 method=GET path=/health latency_us="
        ),
        "{line}"
    );
    for _ in 0..200 {
        client.get("/health").await;
    }
    // Stopped at once: the 200 lines are still in the buffer, and are written all the
    // same.
    herve.signal(libc::SIGTERM);
    assert!(herve.wait(Duration::from_secs(10)).success());
    assert_eq!(lines_of(&log).len(), 201);
}

#[tokio::test]
async fn a_line_per_request_under_load_nothing_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let mut herve = spawn_with_log(dir.path(), &log);
    let client = herve.client();
    let uuid = client.running("pinger", "ping").await;
    let mut load = Vec::new();
    for task in 0..8 {
        let client = herve.client();
        let path = if task % 2 == 0 {
            "/health".to_owned()
        } else {
            format!("/{uuid}/ping")
        };
        load.push(tokio::spawn(async move {
            for _ in 0..500 {
                assert_eq!(client.get(&path).await.status, 200);
            }
        }));
    }
    for task in load {
        task.await.expect("load");
    }
    herve.signal(libc::SIGTERM);
    assert!(herve.wait(Duration::from_secs(10)).success());
    let lines = lines_of(&log);
    let answered = |path: &str| {
        lines
            .iter()
            .filter(|line| line.contains(&format!("status=200 method=GET path={path} ")))
            .count()
    };
    assert_eq!(answered("/health"), 2000);
    assert_eq!(answered(&format!("/{uuid}/ping")), 2000);
}

#[tokio::test]
async fn sigusr1_reopens_the_file_after_a_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let mut herve = spawn_with_log(dir.path(), &log);
    let client = herve.client();
    for _ in 0..5 {
        client.get("/before").await;
    }
    // As logrotate does: move the file away, then tell Herve.
    std::fs::rename(&log, &rotated).expect("rotate");
    herve.signal(libc::SIGUSR1);
    let signalled = Instant::now();
    while !log.exists() {
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "the file was not reopened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        client.get("/after").await;
    }
    herve.signal(libc::SIGTERM);
    assert!(herve.wait(Duration::from_secs(10)).success());
    let old = lines_of(&rotated);
    let new = lines_of(&log);
    assert_eq!(old.len(), 5, "{old:?}");
    assert!(old.iter().all(|line| line.contains("path=/before ")));
    assert_eq!(new.len(), 3, "{new:?}");
    assert!(new.iter().all(|line| line.contains("path=/after ")));
}

#[tokio::test]
async fn a_bad_access_log_setting_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = herve_command(dir.path())
        .env("HERVE_ACCESS_LOG", "yes please")
        .output()
        .expect("run herve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("neither true, false nor a file path"),
        "{stderr}"
    );
    let output = herve_command(dir.path())
        .env("HERVE_ACCESS_LOG", "/no/such/dir/access.log")
        .output()
        .expect("run herve");
    assert!(!output.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        all.contains("could not open the access log /no/such/dir/access.log"),
        "{all}"
    );
}

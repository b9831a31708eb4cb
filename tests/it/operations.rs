//! Day-to-day operations on real programs: following logs, reloading under load,
//! replicas that share the traffic and come back when one is killed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use crate::cli::env_for;
use crate::support::{HttpClient, TestHerve};

/// Answers with its pid. Waits the seconds its first argument says before it listens,
/// and never listens when the file named by BROKEN exists (a bad build).
pub const PID_APP: &str = r#"
import http.server, os, sys, time
broken = os.environ.get("BROKEN")
if broken and os.path.exists(broken):
    print("this build is broken", flush=True)
    time.sleep(3600)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// Prints a numbered line every 200 ms.
pub const TICKER: &str = r#"
import http.server, os, threading, time
def tick():
    n = 0
    while True:
        print(f"tick {n}", flush=True)
        n += 1
        time.sleep(0.2)
threading.Thread(target=tick, daemon=True).start()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(204)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

async fn service(herve: &HttpClient, uuid: &str) -> Value {
    herve.admin_get(&format!("/services/{uuid}")).await.json()["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_shows_new_lines_within_a_second_and_ends_with_the_service() {
    let herve = TestHerve::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("ticker.py");
    std::fs::write(&app, TICKER).expect("write");
    let uuid = herve
        .running_with(
            "ticker",
            "process",
            &[("command", &format!("python3 {}", app.display()))],
        )
        .await;
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_herve"));
    follow
        .args(["logs", "-f", "-n", "1", "ticker"])
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env_for(&herve) {
        follow.env(key, value);
    }
    let mut child = follow.spawn().expect("spawn");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut ticks = Vec::new();
    let mut gaps = Vec::new();
    let mut last = Instant::now();
    while ticks.len() < 8 {
        let line = tokio::time::timeout(Duration::from_secs(3), lines.next_line())
            .await
            .expect("a line within 3 s")
            .expect("read")
            .expect("a line");
        if let Some(n) = line.strip_prefix("tick ") {
            ticks.push(n.parse::<u32>().expect("number"));
            gaps.push(last.elapsed());
            last = Instant::now();
        }
    }
    // Lines printed every 200 ms arrive one by one, each within a second of the last.
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
    assert!(
        gaps[1..].iter().all(|gap| *gap < Duration::from_secs(1)),
        "{gaps:?}"
    );

    // The service goes away: the follower ends, successfully.
    herve
        .stop_service(&uuid)
        .await
        .expect(200, "The service has successfully stopped.");
    herve
        .unregister(&uuid)
        .await
        .expect(200, "The service has been successfully unregistered.");
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("the follower ends")
        .expect("status");
    assert!(status.success(), "{status}");

    // The API streams the same as server-sent events when asked.
    let uuid = herve
        .running_with(
            "ticker2",
            "process",
            &[("command", &format!("python3 {}", app.display()))],
        )
        .await;
    let stream = herve
        .stream_lines(
            &format!("/services/{uuid}/logs?follow=true&tail=1"),
            &[("accept", "text/event-stream")],
            3,
        )
        .await;
    assert_eq!(stream.0.as_deref(), Some("text/event-stream"));
    assert!(
        stream
            .1
            .iter()
            .all(|line| line.starts_with("data: ") || line.is_empty()),
        "{:?}",
        stream.1
    );
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request_and_a_bad_build_leaves_the_old_one() {
    let herve = TestHerve::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("app.py");
    std::fs::write(&app, PID_APP).expect("write");
    let broken = dir.path().join("broken");
    let uuid = herve
        .running_with(
            "web",
            "process",
            &[
                ("command", &format!("python3 {}", app.display())),
                ("env", &format!("BROKEN={}", broken.display())),
                ("ready_timeout_ms", "1500"),
            ],
        )
        .await;
    let client = HttpClient::new(herve.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let served = Arc::new(AtomicUsize::new(0));
    let pids = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let load = {
        let (stop, failures, served, pids) = (
            Arc::clone(&stop),
            Arc::clone(&failures),
            Arc::clone(&served),
            Arc::clone(&pids),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let reply = client.get("/web/").await;
                if reply.status == 200 {
                    served.fetch_add(1, Ordering::SeqCst);
                    pids.lock().expect("pids").insert(reply.text());
                } else {
                    failures.lock().expect("failures").push(format!(
                        "{} {}",
                        reply.status,
                        reply.text()
                    ));
                }
            }
        })
    };
    for _ in 0..10 {
        let reply = herve.admin_post(&format!("/services/{uuid}/reload")).await;
        reply.expect(200, "The service has been reloaded.");
    }
    // A build that never gets ready: refused, and the old one serves on.
    std::fs::write(&broken, "").expect("break the build");
    let before = service(&herve, &uuid).await["runtime"]["pid"].clone();
    let refused = herve.admin_post(&format!("/services/{uuid}/reload")).await;
    assert_eq!(refused.status, 500, "{}", refused.text());
    assert!(
        refused.message().contains("the old one keeps serving"),
        "{}",
        refused.text()
    );
    let after = service(&herve, &uuid).await;
    assert_eq!(after["status"], "running");
    assert_eq!(after["runtime"]["pid"], before);
    let served_before = served.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.expect("load");
    let failures = failures.lock().expect("failures").clone();
    assert!(failures.is_empty(), "requests failed: {failures:?}");
    assert!(
        served.load(Ordering::SeqCst) > served_before,
        "the old one stopped serving"
    );
    // Every reload put a new program in place.
    assert!(pids.lock().expect("pids").len() >= 11, "{:?}", pids.lock());
    // A service that does not run is not reloaded.
    herve
        .stop_service(&uuid)
        .await
        .expect(200, "The service has successfully stopped.");
    herve
        .admin_post(&format!("/services/{uuid}/reload"))
        .await
        .expect(400, "The service is not running: start it instead.");
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_requests_and_a_killed_copy_loses_none_and_comes_back() {
    let herve = TestHerve::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("app.py");
    std::fs::write(&app, PID_APP).expect("write");
    let uuid = herve
        .running_with(
            "spread",
            "process",
            &[
                ("command", &format!("python3 {}", app.display())),
                ("replicas", "3"),
            ],
        )
        .await;
    let shown = service(&herve, &uuid).await;
    let copies = shown["runtime"]["replicas"]
        .as_array()
        .expect("copies")
        .clone();
    assert_eq!(copies.len(), 3, "{shown}");
    let ports: std::collections::BTreeSet<u64> =
        copies.iter().filter_map(|c| c["port"].as_u64()).collect();
    assert_eq!(ports.len(), 3, "each copy has its own port: {shown}");
    assert!(copies.iter().all(|c| c["state"] == "running"), "{shown}");

    let answered = |replies: &[String]| -> std::collections::BTreeSet<String> {
        replies.iter().cloned().collect()
    };
    let mut replies = Vec::new();
    for _ in 0..30 {
        let reply = herve.get("/spread/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        replies.push(reply.text());
    }
    assert_eq!(
        answered(&replies).len(),
        3,
        "round robin reaches every copy"
    );

    // Kill one copy between two requests: every later request is answered (by the
    // others while it is down).
    let victim = copies[1]["pid"].as_u64().expect("pid") as i32;
    for round in 0..60 {
        if round == 10 {
            // SAFETY: kill(2) on a pid of our own test's program.
            unsafe { libc::kill(victim, libc::SIGKILL) };
            let gone = Instant::now();
            while std::path::Path::new(&format!("/proc/{victim}/status")).exists()
                && std::fs::read_to_string(format!("/proc/{victim}/status"))
                    .is_ok_and(|s| !s.contains("State:\tZ"))
                && gone.elapsed() < Duration::from_secs(5)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let reply = herve.get("/spread/").await;
        assert_eq!(reply.status, 200, "round {round}: {}", reply.text());
    }
    // The copy comes back on its own, and into the rotation.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let shown = service(&herve, &uuid).await;
        let copy = &shown["runtime"]["replicas"][1];
        if copy["restarts"].as_u64() == Some(1) && copy["state"] == "running" {
            assert_ne!(copy["pid"].as_u64(), Some(victim as u64));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the copy did not come back: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut replies = Vec::new();
        for _ in 0..12 {
            replies.push(herve.get("/spread/").await.text());
        }
        if answered(&replies).len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the copy is not served again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // `herve ls` counts the copies.
    let dir_path = dir.path().to_path_buf();
    let env = env_for(&herve);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let listing = crate::cli::cli(&dir_path, &env, &["ls"]).await;
    assert!(listing.ok().contains("3/3"), "{}", listing.stdout);
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_retention_is_per_service_and_bounded() {
    let herve = TestHerve::start().await;
    for (fields, field) in [
        (vec![("replicas", "0")], "replicas"),
        (vec![("replicas", "65")], "replicas"),
        (vec![("replicas", "2"), ("port", "4999")], "replicas"),
        (vec![("log_max_bytes", "100")], "log_max_bytes"),
        (vec![("log_files", "101")], "log_files"),
        (vec![("strategy", "random")], "strategy"),
    ] {
        let mut all = vec![
            ("name", "chatty"),
            ("type", "process"),
            ("command", "python3 -c pass"),
        ];
        all.extend(fields.iter().copied());
        let reply = herve.post_form("/services/register", &all).await;
        assert_eq!(reply.status, 400, "{fields:?}: {}", reply.text());
        assert!(
            reply.message().contains(&format!("'{field}'")),
            "{}",
            reply.text()
        );
    }
    // 64 KiB files, one kept: a program printing ~1 MiB leaves at most two files.
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("chatty.py");
    std::fs::write(
        &app,
        r#"
import http.server, os
for i in range(10000):
    print(f"line {i:05} " + "x" * 100)
print("done", flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(204)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#,
    )
    .expect("write");
    let uuid = herve
        .running_with(
            "chatty",
            "process",
            &[
                ("command", &format!("python3 {}", app.display())),
                ("log_max_bytes", "65536"),
                ("log_files", "1"),
            ],
        )
        .await;
    let logs_dir = herve.data_dir.join("services").join(&uuid).join("logs");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tail = herve
            .admin_get(&format!("/services/{uuid}/logs?tail=3"))
            .await
            .json();
        if tail["data"]
            .as_array()
            .is_some_and(|lines| lines.iter().any(|line| line == "done"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the program did not finish printing: {tail}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let files: Vec<(String, u64)> = std::fs::read_dir(&logs_dir)
        .expect("logs dir")
        .filter_map(Result::ok)
        .map(|entry| {
            (
                entry.file_name().to_string_lossy().into_owned(),
                entry.metadata().map_or(0, |m| m.len()),
            )
        })
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files.iter().all(|(_, size)| *size <= 65536 + 200),
        "{files:?}"
    );
    // The tail reaches across the rotated file, in order.
    let tail = herve
        .admin_get(&format!("/services/{uuid}/logs?tail=700"))
        .await
        .json();
    let numbers: Vec<u32> = tail["data"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|line| line.as_str()?.strip_prefix("line ")?.get(..5)?.parse().ok())
        .collect();
    assert!(numbers.len() > 500, "{}", numbers.len());
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(numbers.last(), Some(&9999));
    herve.stop().await;
}

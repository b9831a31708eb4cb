//! The `process` type with real programs (small Python servers).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// A tiny HTTP app: answers every GET with its pid, path, cwd and environment.
const APP: &str = r#"
import http.server, json, os, signal, sys, time
mode = sys.argv[1] if len(sys.argv) > 1 else "serve"
print("app", mode, "starting", flush=True)
print("a line on stderr", file=sys.stderr, flush=True)
if mode == "exit":
    sys.exit(3)
if mode == "mute":
    time.sleep(3600)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "family":
    import subprocess
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        flag = os.environ.get("READY_FILE")
        if self.path == "/ready" and flag and not os.path.exists(flag):
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        names = ["PORT", "HERVE_SERVICE_UUID", "HERVE_SERVICE_NAME", "GREETING", "AUTH_ADMIN_SECRET"]
        body = json.dumps({
            "pid": os.getpid(),
            "path": self.path,
            "cwd": os.getcwd(),
            "env": {name: os.environ.get(name) for name in names},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        print("request", self.path, flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

pub(crate) fn write_app(dir: &Path) -> String {
    let path = dir.join("app.py");
    std::fs::write(&path, APP).expect("write app");
    path.to_string_lossy().into_owned()
}

pub(crate) async fn register_process(
    herve: &HttpClient,
    name: &str,
    fields: &[(&str, &str)],
) -> Result<String, Reply> {
    let mut all = vec![("name", name), ("type", "process")];
    all.extend_from_slice(fields);
    let reply = herve.post_form("/services/register", &all).await;
    if reply.status != 201 {
        return Err(reply);
    }
    Ok(reply.json()["data"]["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned())
}

async fn service(herve: &HttpClient, uuid: &str) -> Value {
    herve.admin_get(&format!("/services/{uuid}")).await.json()["data"].clone()
}

/// Pids of processes that carry this service's uuid in their environment.
pub(crate) fn processes_of(uuid: &str) -> Vec<u32> {
    let needle = format!("HERVE_SERVICE_UUID={uuid}");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| {
                    !stat
                        .rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('Z'))
                })
                .unwrap_or(false);
            alive
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .map(|env| env.split(|&b| b == 0).any(|v| v == needle.as_bytes()))
                    .unwrap_or(false)
        })
        .collect()
}

pub(crate) async fn wait_for(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_is_started_reached_restarted_and_stopped() {
    let herve = TestHerve::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = write_app(dir.path());
    let cwd = dir.path().to_string_lossy().into_owned();
    let uuid = register_process(
        &herve,
        "app",
        &[
            ("command", &format!("python3 {app}")),
            ("cwd", &cwd),
            ("env", "GREETING=bonjour tout le monde"),
        ],
    )
    .await
    .expect("registered");
    herve
        .start(&uuid)
        .await
        .expect(200, "The service has successfully started.");

    let seen = herve.get(&format!("/{uuid}/hello?x=1")).await.json();
    assert_eq!(seen["path"], "/hello?x=1");
    assert_eq!(seen["cwd"], cwd);
    assert_eq!(seen["env"]["GREETING"], "bonjour tout le monde");
    assert_eq!(seen["env"]["HERVE_SERVICE_UUID"], uuid.as_str());
    assert_eq!(seen["env"]["HERVE_SERVICE_NAME"], "app");
    let shown = service(&herve, &uuid).await;
    assert_eq!(shown["status"], "running");
    assert_eq!(shown["runtime"]["pid"], seen["pid"]);
    assert_eq!(
        shown["runtime"]["port"].to_string(),
        seen["env"]["PORT"].as_str().expect("port")
    );
    assert_eq!(shown["runtime"]["restarts"], 0);
    assert_eq!(shown["config"]["command"][0], "python3");

    // Killed from outside: restarted, counted, reachable again.
    let first_pid = seen["pid"].as_i64().expect("pid") as i32;
    unsafe {
        libc::kill(first_pid, libc::SIGKILL);
    }
    wait_for("the restart", Duration::from_secs(10), async || {
        let shown = service(&herve, &uuid).await;
        shown["status"] == "running"
            && shown["runtime"]["restarts"] == 1
            && shown["runtime"]["pid"].is_number()
    })
    .await;
    let shown = service(&herve, &uuid).await;
    assert_eq!(shown["runtime"]["last_exit"], "signal: 9 (SIGKILL)");
    let again = herve.get(&format!("/{uuid}/again")).await.json();
    assert_ne!(again["pid"], seen["pid"]);

    herve
        .admin_post(&format!("/services/{uuid}/restart"))
        .await
        .expect(200, "The service has successfully restarted.");
    let after_restart = herve.get(&format!("/{uuid}/")).await.json();
    assert_ne!(after_restart["pid"], again["pid"]);

    herve
        .stop_service(&uuid)
        .await
        .expect(200, "The service has successfully stopped.");
    assert!(
        processes_of(&uuid).is_empty(),
        "a process outlived the stop"
    );
    assert_eq!(herve.get(&format!("/{uuid}/")).await.status, 404);

    // Its output was kept, in order, with Herve's own notes.
    let logs = herve
        .admin_get(&format!("/services/{uuid}/logs?tail=1000"))
        .await;
    assert_eq!(logs.status, 200);
    let lines: Vec<String> = logs.json()["data"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l.as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(lines.iter().any(|l| l == "app serve starting"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "a line on stderr"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "request /hello?x=1"), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("restarting")), "{lines:?}");
    let two = herve
        .admin_get(&format!("/services/{uuid}/logs?tail=2"))
        .await
        .json();
    assert_eq!(two["data"].as_array().expect("lines").len(), 2);
    assert_eq!(two["data"][1].as_str(), lines.last().map(String::as_str));
    for bad in ["0", "x", "100001", "-1"] {
        let reply = herve
            .admin_get(&format!("/services/{uuid}/logs?tail={bad}"))
            .await;
        assert_eq!(reply.status, 400, "tail={bad}");
        assert!(reply.message().contains("'tail'"));
    }

    herve
        .unregister(&uuid)
        .await
        .expect(200, "The service has been successfully unregistered.");
    assert!(!herve.data_dir.join("services").join(&uuid).exists());
    herve.stop().await;
}

#[tokio::test]
async fn a_program_that_exits_at_once_fails_after_its_retries_without_spinning() {
    let herve = TestHerve::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = write_app(dir.path());
    let uuid = register_process(
        &herve,
        "crasher",
        &[("command", &format!("python3 {app} exit"))],
    )
    .await
    .expect("registered");
    let started = Instant::now();
    let reply = herve.start(&uuid).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 500, "{}", reply.text());
    assert!(reply.message().contains("5 times"), "{}", reply.text());
    assert!(
        reply.message().contains("exit status: 3"),
        "{}",
        reply.text()
    );
    // 100 + 200 + 400 + 800 ms of backoff between the five tries.
    assert!(
        took >= Duration::from_millis(1500),
        "retried too fast: {took:?}"
    );
    let shown = service(&herve, &uuid).await;
    assert_eq!(shown["status"], "failed");
    assert!(shown["reason"]
        .as_str()
        .expect("reason")
        .contains("5 times"));
    assert_eq!(shown["runtime"]["restarts"], 4);
    let logs = herve
        .admin_get(&format!("/services/{uuid}/logs"))
        .await
        .json();
    let starts = logs["data"]
        .as_array()
        .expect("lines")
        .iter()
        .filter(|l| {
            l.as_str()
                .is_some_and(|l| l.starts_with("[herve] started pid"))
        })
        .count();
    assert_eq!(starts, 5);
    assert_eq!(herve.get(&format!("/{uuid}/")).await.status, 404);
    // A failed service can be unregistered as it is.
    herve
        .unregister(&uuid)
        .await
        .expect(200, "The service has been successfully unregistered.");
    herve.stop().await;
}

#[tokio::test]
async fn a_program_never_ready_is_stopped_and_failed() {
    let herve = TestHerve::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = write_app(dir.path());
    let uuid = register_process(
        &herve,
        "mute",
        &[
            ("command", &format!("python3 {app} mute")),
            ("ready_timeout_ms", "700"),
        ],
    )
    .await
    .expect("registered");
    let reply = herve.start(&uuid).await;
    assert_eq!(reply.status, 500);
    assert!(
        reply.message().contains("not ready within 700 ms"),
        "{}",
        reply.text()
    );
    assert!(processes_of(&uuid).is_empty());
    assert_eq!(service(&herve, &uuid).await["status"], "failed");
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_path_decides_readiness() {
    let herve = TestHerve::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = write_app(dir.path());
    let flag = dir.path().join("ready-now");
    let uuid = register_process(
        &herve,
        "checked",
        &[
            ("command", &format!("python3 {app}")),
            ("health_path", "/ready"),
            ("env", &format!("READY_FILE={}", flag.display())),
        ],
    )
    .await
    .expect("registered");
    let start = {
        let client = herve.client.clone();
        let uuid = uuid.clone();
        tokio::spawn(async move { client.start(&uuid).await })
    };
    // The port is open but /ready says 503: still starting, not routed.
    wait_for(
        "the app to answer 503",
        Duration::from_secs(10),
        async || {
            let logs = herve
                .admin_get(&format!("/services/{uuid}/logs"))
                .await
                .json();
            logs["data"]
                .as_array()
                .is_some_and(|lines| lines.iter().any(|l| l == "request /ready"))
        },
    )
    .await;
    assert_eq!(service(&herve, &uuid).await["status"], "starting");
    assert_eq!(herve.get(&format!("/{uuid}/")).await.status, 404);
    std::fs::write(&flag, "").expect("flag");
    start
        .await
        .expect("start")
        .expect(200, "The service has successfully started.");
    assert_eq!(service(&herve, &uuid).await["status"], "running");
    herve.stop().await;
}

#[tokio::test]
async fn a_taken_port_is_a_clear_failure() {
    let herve = TestHerve::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = write_app(dir.path());
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = squatter.local_addr().expect("addr").port().to_string();
    let uuid = register_process(
        &herve,
        "squatted",
        &[("command", &format!("python3 {app}")), ("port", &port)],
    )
    .await
    .expect("registered");
    let reply = herve.start(&uuid).await;
    assert_eq!(reply.status, 500);
    assert!(
        reply
            .message()
            .contains(&format!("port {port} is not free")),
        "{}",
        reply.text()
    );
    drop(squatter);
    herve
        .start(&uuid)
        .await
        .expect(200, "The service has successfully started.");
    herve.stop().await;
}

#[tokio::test]
async fn stop_kills_what_ignores_sigterm_and_the_whole_group() {
    let herve = TestHerve::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = write_app(dir.path());
    let stubborn = register_process(
        &herve,
        "stubborn",
        &[
            ("command", &format!("python3 {app} stubborn")),
            ("stop_timeout_ms", "300"),
        ],
    )
    .await
    .expect("registered");
    let family = register_process(
        &herve,
        "family",
        &[("command", &format!("python3 {app} family"))],
    )
    .await
    .expect("registered");
    for uuid in [&stubborn, &family] {
        herve
            .start(uuid)
            .await
            .expect(200, "The service has successfully started.");
    }
    wait_for("the child of family", Duration::from_secs(5), async || {
        processes_of(&family).len() == 2
    })
    .await;
    let started = Instant::now();
    herve
        .stop_service(&stubborn)
        .await
        .expect(200, "The service has successfully stopped.");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(processes_of(&stubborn).is_empty());
    herve
        .stop_service(&family)
        .await
        .expect(200, "The service has successfully stopped.");
    assert!(
        processes_of(&family).is_empty(),
        "a child outlived its service"
    );
    herve.stop().await;
}

#[tokio::test]
async fn stopping_herve_stops_every_program() {
    let herve = TestHerve::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = write_app(dir.path());
    let uuid = register_process(&herve, "app", &[("command", &format!("python3 {app}"))])
        .await
        .expect("registered");
    herve
        .start(&uuid)
        .await
        .expect(200, "The service has successfully started.");
    assert_eq!(processes_of(&uuid).len(), 1);
    herve.stop().await;
    assert!(processes_of(&uuid).is_empty());
}

#[tokio::test]
async fn after_herve_is_killed_no_orphan_stays_and_the_program_runs_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = write_app(dir.path());
    let mut first = BinHerve::spawn(dir.path(), &[]);
    let client = first.client();
    let uuid = register_process(
        &client,
        "survivor",
        &[("command", &format!("python3 {app} family"))],
    )
    .await
    .expect("registered");
    client
        .start(&uuid)
        .await
        .expect(200, "The service has successfully started.");
    let seen = client.get(&format!("/{uuid}/")).await.json();
    // Herve's secret is not handed down to the programs it runs.
    assert!(seen["env"]["AUTH_ADMIN_SECRET"].is_null(), "{seen}");
    wait_for("the child", Duration::from_secs(5), async || {
        processes_of(&uuid).len() == 2
    })
    .await;
    let before = processes_of(&uuid);
    first.signal(libc::SIGKILL);
    first.wait(Duration::from_secs(10));

    let second = BinHerve::spawn(dir.path(), &[]);
    let client = second.client();
    let shown = service(&client, &uuid).await;
    assert_eq!(shown["status"], "running", "{shown}");
    let now = processes_of(&uuid);
    assert!(
        now.iter().all(|pid| !before.contains(pid)),
        "orphans {before:?} still there: {now:?}"
    );
    let answer = client.get(&format!("/{uuid}/")).await.json();
    assert!(now.contains(&(answer["pid"].as_u64().expect("pid") as u32)));
    drop(second);
}

#[tokio::test]
async fn process_registration_is_validated() {
    let herve = TestHerve::start().await;
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "'command'"),
        (&[("command", "python3 'unbalanced")], "'command'"),
        (&[("command", "no-such-program-herve")], "'command'"),
        (&[("command", "python3"), ("cwd", "/no/such/dir")], "'cwd'"),
        (&[("command", "python3"), ("env", "NOEQUALS")], "'env'"),
        (&[("command", "python3"), ("env", "1BAD=x")], "'env'"),
        (&[("command", "python3"), ("env", "PORT=1")], "'env'"),
        (&[("command", "python3"), ("port", "70000")], "'port'"),
        (
            &[("command", "python3"), ("restart", "sometimes")],
            "'restart'",
        ),
        (
            &[("command", "python3"), ("stop_timeout_ms", "-5")],
            "'stop_timeout_ms'",
        ),
    ];
    for (fields, named) in cases {
        let reply = register_process(&herve, "p", fields)
            .await
            .expect_err("refused");
        assert_eq!(reply.status, 400, "{fields:?}: {}", reply.text());
        assert!(
            reply.message().contains(named),
            "{fields:?}: {}",
            reply.text()
        );
    }
    assert!(herve.list().await.is_empty());
    // Services that keep no logs say so.
    let echo = herve.register_ok("e", "echo").await;
    assert_eq!(
        herve
            .admin_get(&format!("/services/{echo}/logs"))
            .await
            .status,
        404
    );
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_gives_up_a_slow_start_at_once() {
    let herve = TestHerve::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = write_app(dir.path());
    let uuid = register_process(
        &herve,
        "slowpoke",
        &[
            ("command", &format!("python3 {app} mute")),
            ("ready_timeout_ms", "60000"),
        ],
    )
    .await
    .expect("registered");
    let start = {
        let client = herve.client.clone();
        let uuid = uuid.clone();
        tokio::spawn(async move { client.start(&uuid).await })
    };
    wait_for("the program", Duration::from_secs(10), async || {
        processes_of(&uuid).len() == 1
    })
    .await;
    let asked = Instant::now();
    herve
        .stop_service(&uuid)
        .await
        .expect(200, "The service has successfully stopped.");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "stop waited for the start"
    );
    let start = start.await.expect("start");
    assert_eq!(start.status, 500);
    assert!(start.message().contains("given up"), "{}", start.text());
    assert!(processes_of(&uuid).is_empty());
    assert_eq!(service(&herve, &uuid).await["status"], "stopped");
    herve.stop().await;
}

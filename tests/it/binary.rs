//! The `herve` binary: restarts (graceful and SIGKILL), configuration, credentials, logs.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use hyper::Method;
use serde_json::Value;

use crate::support::*;

/// Registers a few services in several states; returns the listing.
async fn populate(client: &HttpClient) -> Vec<Value> {
    let running_echo = client.running("kept-echo", "echo").await;
    let stopped = client.running("kept-stopped", "ping").await;
    client
        .stop_service(&stopped)
        .await
        .expect(200, "The service has successfully stopped.");
    client.register_ok("kept-registered", "ping").await;
    let running_ping = client.running("kept-ping", "ping").await;
    let _ = (running_echo, running_ping);
    client.list().await
}

/// A listing without when instances started: a restart starts them anew.
fn without_start_times(services: &[Value]) -> Vec<Value> {
    services
        .iter()
        .map(|service| {
            let mut service = service.clone();
            if let Some(map) = service.as_object_mut() {
                map.remove("started_at");
            }
            service
        })
        .collect()
}

async fn assert_restored(client: &HttpClient, before: &[Value]) {
    let after = client.list().await;
    assert_eq!(
        without_start_times(&after),
        without_start_times(before),
        "listing changed across the restart"
    );
    for service in &after {
        let uuid = service["uuid"].as_str().expect("uuid");
        let status = service["status"].as_str().expect("status");
        let (path, body) = match service["type"].as_str() {
            Some("ping") => (format!("/{uuid}/ping"), None),
            _ => (format!("/{uuid}/echo"), Some("again")),
        };
        let reply = match body {
            None => client.get(&path).await,
            Some(body) => {
                client
                    .send(hyper::Method::POST, &path, Auth::None, &[], body)
                    .await
            }
        };
        let expected = if status == "running" { 200 } else { 404 };
        assert_eq!(reply.status.as_u16(), expected, "{service}");
    }
}

#[tokio::test]
async fn services_survive_a_graceful_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = BinHerve::spawn(dir.path(), &[]);
    let before = populate(&first.client()).await;
    first.signal(libc::SIGTERM);
    assert!(first.wait(Duration::from_secs(20)).success());
    let out = first.stdout_when(Duration::from_secs(5), |out| out.contains("Herve stopped"));
    assert!(out.contains("Herve stopped"), "{out}");

    let second = BinHerve::spawn(dir.path(), &[]);
    assert_restored(&second.client(), &before).await;
}

#[tokio::test]
async fn services_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = BinHerve::spawn(dir.path(), &[]);
    let client = first.client();
    populate(&client).await;
    // The very last acknowledged changes, of every kind, must be there too.
    let registered = client.register_ok("last-registered", "echo").await;
    let doomed = client.register_ok("last-unregistered", "echo").await;
    let running = client
        .list()
        .await
        .iter()
        .find(|s| s["name"] == "kept-ping")
        .expect("kept-ping")["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    client
        .stop_service(&running)
        .await
        .expect(200, "The service has successfully stopped.");
    client
        .unregister(&doomed)
        .await
        .expect(200, "The service has been successfully unregistered.");
    client
        .start(&registered)
        .await
        .expect(200, "The service has successfully started.");
    let before = client.list().await;
    first.signal(libc::SIGKILL);
    first.wait(Duration::from_secs(10));

    let second = BinHerve::spawn(dir.path(), &[]);
    assert_restored(&second.client(), &before).await;
}

#[tokio::test]
async fn with_no_settings_it_listens_on_5000_with_data_in_herve_data() {
    // The default port is what is tested: when another program holds it, the default
    // cannot be observed here, and saying so beats failing for someone else's reason.
    if std::net::TcpListener::bind("0.0.0.0:5000").is_err() {
        eprintln!("skipped: port 5000 is taken by another program on this machine");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = herve_command(dir.path());
    command
        .env_remove("PORT")
        .env_remove("HERVE_DATA_DIR")
        .env_remove("HERVE_HOST");
    let herve = BinHerve::spawn_command(command);
    assert_eq!(herve.addr.port(), 5000);
    assert!(herve.addr.ip().is_unspecified(), "{}", herve.addr);
    let data = dir.path().join("herve-data");
    assert!(data.join("herve.db").is_file());
    assert!(data.join("admin-secret").is_file());
    let mode = std::fs::metadata(&data)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    let reply = HttpClient::new("127.0.0.1:5000".parse().expect("addr"))
        .get("/health")
        .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_request_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut herve = BinHerve::spawn(dir.path(), &[]);
    let echo = herve.client().running("slow", "echo").await;
    let addr = herve.addr;
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(
            format!("POST /{echo}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
                .as_bytes(),
        )
        .expect("write");
    std::thread::sleep(Duration::from_millis(300));
    herve.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(b"world").expect("write the rest");
    let answer = read_until_close(&mut stream, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("helloworld"), "{text}");
    assert!(herve.wait(Duration::from_secs(20)).success());
}

#[tokio::test]
async fn without_credentials_a_secret_is_generated_kept_private_and_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = BinHerve::spawn_command(herve_command(dir.path()));
    let file = data_path(dir.path()).join("admin-secret");
    let secret = std::fs::read_to_string(&file)
        .expect("secret file")
        .trim()
        .to_owned();
    assert!(secret.len() >= 32);
    let mode = std::fs::metadata(&file)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let out = first.stdout_when(Duration::from_secs(5), |out| out.contains(&secret));
    assert!(out.contains(&secret), "the secret is printed once: {out}");

    let client = first.client();
    assert_eq!(client.admin_get("/services").await.status, 401);
    let ok = client
        .get_as("/services", Auth::Basic("admin", &secret))
        .await;
    assert_eq!(ok.status, 200);
    drop(first);

    let second = BinHerve::spawn_command(herve_command(dir.path()));
    assert!(second.stdout().contains("listens on"));
    assert!(!second.stdout().contains(&secret), "printed only once");
    let ok = second
        .client()
        .get_as("/services", Auth::Basic("admin", &secret))
        .await;
    assert_eq!(ok.status, 200);
}

#[test]
fn bad_settings_stop_start_up_naming_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (key, value) in [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("HERVE_MAX_SERVICES", "0"),
        ("HERVE_MAX_BODY_BYTES", "-1"),
        ("HERVE_LOG", "loud"),
        ("HERVE_ACCESS_LOG", "maybe"),
        ("HERVE_HOST", "not-an-ip"),
        ("HERVE_WORKERS", "many"),
        ("HERVE_WORKERS", "5000"),
    ] {
        let output = herve_command(dir.path())
            .env(key, value)
            .output()
            .expect("run herve");
        assert!(!output.status.success(), "{key}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{key}={value}: {stderr}");
    }
    let output = herve_command(dir.path())
        .env("AUTH_ADMIN_ID", "a")
        .env("AUTH_ADMIN_SECRET", "$2b$10$broken")
        .output()
        .expect("run herve");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("AUTH_ADMIN_SECRET"));
}

/// The names of the threads of process `pid`.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn connections_are_served_by_as_many_workers_as_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let herve = BinHerve::spawn(dir.path(), &[("HERVE_WORKERS", "3")]);
    let workers = |names: Vec<String>| {
        let mut workers: Vec<String> = names
            .into_iter()
            .filter(|name| name.starts_with("herve-worker-"))
            .collect();
        workers.sort();
        workers
    };
    // A thread names itself once it runs: give them a moment.
    let expected = ["herve-worker-0", "herve-worker-1", "herve-worker-2"];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut seen = workers(thread_names(herve.child.id()));
    while seen != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        seen = workers(thread_names(herve.child.id()));
    }
    assert_eq!(seen, expected);
    // Connections spread over the workers; every one is served, admin and data alike.
    let echo = herve.client().running("e", "echo").await;
    let clients: Vec<HttpClient> = (0..6).map(|_| herve.client()).collect();
    for (n, client) in clients.iter().enumerate() {
        let body = format!("hello {n}");
        let reply = client
            .send(
                Method::POST,
                &format!("/{echo}/echo"),
                Auth::None,
                &[],
                body.clone(),
            )
            .await;
        assert_eq!(reply.text(), body);
        assert_eq!(client.admin_get("/services").await.status, 200);
    }
}

#[test]
fn help_lists_every_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = herve_command(dir.path())
        .arg("--help")
        .output()
        .expect("run herve");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for env in [
        "PORT",
        "HERVE_HOST",
        "AUTH_ADMIN_ID",
        "AUTH_ADMIN_SECRET",
        "HERVE_DATA_DIR",
        "HERVE_MAX_SERVICES",
        "HERVE_MAX_BODY_BYTES",
        "HERVE_MAX_HEADER_BYTES",
        "HERVE_HEADER_TIMEOUT_S",
        "HERVE_BODY_TIMEOUT_S",
        "HERVE_MAX_CONNECTIONS",
        "HERVE_WORKERS",
        "HERVE_SHUTDOWN_TIMEOUT_S",
        "HERVE_LOG",
        "HERVE_LOG_FORMAT",
        "HERVE_ACCESS_LOG",
        "HERVE_AUTH_MAX_FAILURES",
    ] {
        assert!(help.contains(env), "--help does not mention {env}");
    }
}

#[tokio::test]
async fn dot_env_is_read_and_the_environment_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join(".env"),
        "# settings\nAUTH_ADMIN_ID=fromfile\nAUTH_ADMIN_SECRET=\"file secret\"\nHERVE_MAX_SERVICES=1\n",
    )
    .expect("write .env");
    let mut command = herve_command(dir.path());
    command.env("HERVE_MAX_SERVICES", "2");
    let herve = BinHerve::spawn_command(command);
    let client = herve.client();
    let listed = client
        .get_as("/services", Auth::Basic("fromfile", "file secret"))
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    // HERVE_MAX_SERVICES=2 from the environment, not 1 from the file.
    let register = |name: &'static str| {
        let client = client.clone();
        async move {
            client
                .send(
                    hyper::Method::POST,
                    "/services/register",
                    Auth::Basic("fromfile", "file secret"),
                    &[("content-type", "application/x-www-form-urlencoded")],
                    format!("name={name}&type=echo"),
                )
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(register("one").await, 201);
    assert_eq!(register("two").await, 201);
    assert_eq!(register("three").await, 409);
}

#[test]
fn a_malformed_dot_env_stops_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(".env"), "PORT='unterminated\n").expect("write .env");
    let output = herve_command(dir.path()).output().expect("run herve");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains(".env"));
}

#[tokio::test]
async fn one_access_log_line_per_request_in_text_and_json() {
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let herve = BinHerve::spawn(dir.path(), &[("HERVE_LOG_FORMAT", format)]);
        let client = herve.client();
        client.get("/health").await;
        client.get("/missing-path").await;
        let addr = herve.addr;
        tokio::task::spawn_blocking(move || {
            // Refused by the HTTP parser, before any request exists: logged all the same.
            raw_exchange(
                addr,
                b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                Duration::from_secs(5),
            );
            let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
            raw_exchange(addr, huge.as_bytes(), Duration::from_secs(5));
        })
        .await
        .expect("join");
        let out = herve.stdout_when(Duration::from_secs(5), |out| {
            out.matches("herve::access").count() >= 4
        });
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("herve::access"))
            .collect();
        assert_eq!(lines.len(), 4, "{out}");
        // Each refused connection logs as it ends, in either order.
        for status in ["400", "431"] {
            assert!(
                lines[2..]
                    .iter()
                    .any(|line| line.contains("127.0.0.1") && line.contains(status)),
                "no {status} line: {out}"
            );
        }
        for (line, (status, path)) in lines
            .iter()
            .zip([("200", "/health"), ("404", "/missing-path")])
        {
            assert!(
                line.contains("127.0.0.1") && line.contains(status) && line.contains(path),
                "{line}"
            );
            assert!(
                line.contains("GET") && line.contains("latency_us"),
                "{line}"
            );
            if format == "json" {
                let parsed: Value = serde_json::from_str(line).expect("a JSON log line");
                assert_eq!(parsed["fields"]["path"], path);
            } else {
                // Plain values, not quoted ones.
                assert!(
                    line.contains(&format!("status={status} method=GET path={path} ")),
                    "{line}"
                );
            }
        }
    }
}

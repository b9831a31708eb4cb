//! The holes found when Herve was attacked as an outsider and as a hosted program, one
//! test each: floods and slow clients measured by memory and reachability, a program
//! that goes after Herve's secrets, and the integrity and compatibility defects.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;

use crate::support::*;
use crate::upstream_server::Upstream;

const WAIT: Duration = Duration::from_secs(5);

/// A connection from `local` (any 127.x.y.z) to `addr`.
fn connect_from(local: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(local, 0).into())
        .expect("bind local address");
    socket.connect(&addr.into()).expect("connect");
    socket.into()
}

/// One request from `local`, its answer read whole (`Connection: close`).
fn request_from(local: IpAddr, addr: SocketAddr, request: &str) -> Vec<u8> {
    let mut stream = connect_from(local, addr);
    let _ = stream.write_all(request.as_bytes());
    read_until_close(&mut stream, WAIT)
}

fn form_request(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Whether `/health` answers 200 within `within`, on a new connection.
fn health_answers(addr: SocketAddr, within: Duration) -> bool {
    let answer = raw_answer(
        addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        within,
    );
    raw_status(&answer) == Some(200)
}

// 1. Login floods.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_keeps_memory_bounded_and_health_reachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let herve = BinHerve::spawn(dir.path(), &[("HERVE_ACCESS_LOG", "false")]);
    let client = herve.client();
    let accounts = client.running("accounts", "auth").await;
    let signup = client
        .send(
            Method::POST,
            &format!("/{accounts}/signup"),
            Auth::None,
            &[("content-type", "application/x-www-form-urlencoded")],
            "username=alice&password=correct-horse",
        )
        .await;
    assert_eq!(signup.status, 201, "{}", signup.text());
    let pid = herve.child.id();
    let before = rss_kib(pid);

    // 48 clients send logins for made-up names as fast as they can, and a quarter of
    // them hang up before the answer (as wrk does on a timeout): every such login
    // costs a hash, and a hash must keep its place until it ends.
    let addr = herve.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, busy) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut flooders = Vec::new();
    for client_index in 0..48 {
        let (stop, sent, busy, path) = (
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&busy),
            format!("/{accounts}/login"),
        );
        flooders.push(std::thread::spawn(move || {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let body = format!("username=u{client_index}x{round}&password=wrong-password");
                let Ok(mut stream) = TcpStream::connect(addr) else {
                    continue;
                };
                let _ = stream.write_all(form_request("POST", &path, &body).as_bytes());
                sent.fetch_add(1, Ordering::Relaxed);
                if client_index % 4 == 0 {
                    continue; // hangs up at once
                }
                let answer = read_until_close(&mut stream, Duration::from_secs(10));
                if raw_status(&answer) == Some(503) {
                    busy.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut peak = before;
    let (mut probes, mut health_ok) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        peak = peak.max(rss_kib(pid));
        let addr = herve.addr;
        probes += 1;
        if tokio::task::spawn_blocking(move || health_answers(addr, Duration::from_secs(2)))
            .await
            .expect("join")
        {
            health_ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.join().expect("flooder");
    }
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 300, "the flood was too weak to tell: {sent} logins");
    assert!(
        busy.load(Ordering::Relaxed) > 0,
        "a full hashing queue must answer 503"
    );
    // The flooders and the test share two cores with Herve: most, not all.
    assert!(
        health_ok * 4 >= probes * 3,
        "/health answered {health_ok} of {probes} probes within 2 s"
    );
    assert!(
        peak < 100 * 1024,
        "RSS reached {peak} KiB under the flood (from {before} KiB)"
    );
    // The owner still gets in once the flood is over.
    let login = client
        .send(
            Method::POST,
            &format!("/{accounts}/login"),
            Auth::None,
            &[("content-type", "application/x-www-form-urlencoded")],
            "username=alice&password=correct-horse",
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.text());
}

// 2. Slow bodies, the connection cap per address and the reserve.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_cut_and_the_reserve_keeps_the_admin_in() {
    let herve = TestHerve::start_with(|c| {
        c.max_connections = 20;
        c.min_body_rate = 1000;
        c.min_body_rate_grace_s = 2;
        c.body_timeout_s = 30;
    })
    .await;
    let addr = herve.addr;
    // Set up with a client of its own, whose kept-alive connections go with it: the
    // twenty slots below must be the only ones taken.
    let setup = HttpClient::new(addr);
    let echo = setup.running("echo", "echo").await;
    let ping = setup.running("ping", "ping").await;
    drop(setup);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Twenty bodies at about 5 bytes a second: every data-plane slot is taken.
    let trickles: Vec<_> = (0..20)
        .map(|_| {
            let path = format!("/{echo}/echo");
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).expect("connect");
                let _ = stream.write_all(
                    format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
                        .as_bytes(),
                );
                let started = Instant::now();
                stream
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .expect("timeout");
                let mut answer = Vec::new();
                let mut buf = [0u8; 1024];
                while started.elapsed() < Duration::from_secs(15) {
                    if stream.write_all(b"x").is_err() {
                        break;
                    }
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                        Err(_) => {}
                    }
                }
                (answer, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Full: service traffic is turned away, /health and the admin are not.
    let service_path = format!("/{ping}/ping");
    let blocking = tokio::task::spawn_blocking(move || {
        let health = health_answers(addr, Duration::from_secs(1));
        let admin = raw_answer(
            addr,
            format!(
                "GET /services HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
                basic(ADMIN_ID, ADMIN_SECRET)
            )
            .as_bytes(),
            Duration::from_secs(2),
        );
        let service = raw_answer(
            addr,
            format!("GET {service_path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            Duration::from_secs(2),
        );
        (health, admin, service)
    })
    .await
    .expect("join");
    let (health, admin, service) = blocking;
    assert!(health, "/health unreachable while the data plane is full");
    assert_eq!(
        raw_status(&admin),
        Some(200),
        "{}",
        String::from_utf8_lossy(&admin)
    );
    assert!(
        String::from_utf8_lossy(&admin)
            .to_ascii_lowercase()
            .contains("connection: close"),
        "a reserved connection serves one answer"
    );
    assert_eq!(
        raw_status(&service),
        Some(503),
        "{}",
        String::from_utf8_lossy(&service)
    );

    // Past the grace period, bodies slower than the minimum rate are cut: 408.
    for trickle in trickles {
        let (answer, took) = trickle.join().expect("trickle");
        assert_eq!(
            raw_status(&answer),
            Some(408),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        assert!(took < Duration::from_secs(8), "cut after {took:?}");
    }
    assert_eq!(herve.get(&format!("/{ping}/ping")).await.text(), "pong\n");
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_must_arrive_whole_within_the_request_deadline() {
    let herve = TestHerve::start_with(|c| {
        c.request_timeout_s = 2;
        c.min_body_rate = 0;
    })
    .await;
    let echo = herve.running("echo", "echo").await;
    let addr = herve.addr;
    let (answer, took) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        let _ = stream.write_all(
            format!("POST /{echo}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
                .as_bytes(),
        );
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let started = Instant::now();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        // Never stalls long (a byte every 100 ms), never finishes.
        while started.elapsed() < Duration::from_secs(10) && answer.is_empty() {
            let _ = stream.write_all(b"y");
            if let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
            }
        }
        (answer, started.elapsed())
    })
    .await
    .expect("join");
    assert_eq!(
        raw_status(&answer),
        Some(408),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let herve = TestHerve::start_with(|c| c.max_connections_per_ip = 5).await;
    let addr = herve.addr;
    let held: Vec<TcpStream> = (0..5)
        .map(|_| connect_from([127, 0, 0, 1].into(), addr))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (refused, other) = tokio::task::spawn_blocking(move || {
        let refused = request_from(
            [127, 0, 0, 1].into(),
            addr,
            "GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        let other = request_from(
            [127, 0, 0, 2].into(),
            addr,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        (refused, other)
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&refused);
    assert_eq!(raw_status(&refused), Some(429), "{text}");
    assert!(
        text.contains("Too many connections from this address."),
        "{text}"
    );
    assert_eq!(raw_status(&other), Some(200));
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = tokio::task::spawn_blocking(move || health_answers(addr, WAIT))
        .await
        .expect("join");
    assert!(again, "the address got its connections back");
    herve.stop().await;
}

// 3. Slow readers.

/// Sends `path` and reads only the first few bytes of the answer, then stops reading.
fn stalled_reader(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    // A small receive window, as a slow client on a bad link would have.
    let socket = socket2::SockRef::from(&stream);
    let _ = socket.set_recv_buffer_size(4096);
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("write");
    let mut head = [0u8; 512];
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = stream.read(&mut head);
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_hold_little_memory_and_are_let_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = tempfile::tempdir().expect("site");
    std::fs::write(site.path().join("big.bin"), vec![7u8; 20 * 1024 * 1024]).expect("file");
    let herve = BinHerve::spawn(
        dir.path(),
        &[("HERVE_ACCESS_LOG", "false"), ("HERVE_SEND_TIMEOUT_S", "3")],
    );
    let client = herve.client();
    let models = client
        .running_with(
            "notes",
            "models",
            &[("model", "note"), ("fields", "text:string:20000")],
        )
        .await;
    let text = "n".repeat(16_000);
    for _ in 0..200 {
        let reply = client
            .send(
                Method::POST,
                &format!("/{models}/note"),
                Auth::None,
                &[("content-type", "application/json")],
                format!(r#"{{"text":"{text}"}}"#),
            )
            .await;
        assert_eq!(reply.status, 201);
    }
    let files = client
        .running_with(
            "files",
            "static",
            &[("root", &site.path().display().to_string())],
        )
        .await;
    let upstream = Upstream::start("big").await;
    let proxied = client
        .running_with("big", "proxy", &[("upstream", &upstream.url())])
        .await;
    let pid = herve.child.id();
    let before = rss_kib(pid);

    // 30 readers of a 3 MB listing page, 30 of a 20 MB file, 30 of a 100 MB proxied
    // body, all stopping after the first bytes.
    let addr = herve.addr;
    let readers = tokio::task::spawn_blocking(move || {
        let mut readers = Vec::new();
        for _ in 0..30 {
            readers.push(stalled_reader(addr, &format!("/{models}/note?limit=200")));
            readers.push(stalled_reader(addr, &format!("/{files}/big.bin")));
            readers.push(stalled_reader(addr, &format!("/{proxied}/big?mb=100")));
        }
        readers
    })
    .await
    .expect("join");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = rss_kib(pid);
    assert!(
        held < before + 64 * 1024,
        "90 stalled readers took {} KiB (from {before} KiB)",
        held - before
    );
    // /health still answers meanwhile.
    assert_eq!(client.get("/health").await.status, 200);

    // A reader that takes nothing for the send timeout is let go: once it reads again,
    // it gets what was in flight (socket buffers, a few MB at most), then the end,
    // not the rest of the 20 MB file.
    let mut readers = readers;
    let read_before_the_end = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 1 << 20];
        let reader = &mut readers[1];
        reader
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        std::thread::sleep(Duration::from_secs(5));
        let mut total = 0usize;
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    })
    .await
    .expect("join");
    assert!(
        read_before_the_end < 12 * 1024 * 1024,
        "a reader that stopped reading was kept: it read {read_before_the_end} more bytes"
    );

    // Gone readers give their memory back, within seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut after = rss_kib(pid);
    while after >= before + 8 * 1024 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = rss_kib(pid);
    }
    assert!(
        after < before + 8 * 1024,
        "RSS {after} KiB after the readers left (before {before} KiB, with them {held} KiB)"
    );
}

// 4. The admin throttle when its table is full.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_throttle_table_still_throttles_newcomers() {
    let herve = TestHerve::start_with(|c| {
        c.auth_max_failures = 3;
        c.max_connections_per_ip = 100_000;
    })
    .await;
    let addr = herve.addr;
    let wrong = format!(
        "GET /services HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {}\r\n\r\n",
        basic(ADMIN_ID, "wrong")
    );
    // 10,000 addresses fail once each: the table is full.
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (next, wrong) = (Arc::clone(&next), wrong.clone());
            std::thread::spawn(move || loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= 10_000 {
                    break;
                }
                let local = IpAddr::from([
                    127,
                    10 + (n / 65_536) as u8,
                    (n / 256 % 256) as u8,
                    (n % 256) as u8,
                ]);
                let answer = request_from(local, addr, &wrong);
                assert_eq!(raw_status(&answer), Some(401));
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
    // A newcomer is throttled like anyone.
    let statuses = tokio::task::spawn_blocking(move || {
        (0..5)
            .map(|_| raw_status(&request_from([127, 200, 0, 1].into(), addr, &wrong)))
            .collect::<Vec<_>>()
    })
    .await
    .expect("join");
    assert_eq!(
        statuses,
        [Some(401), Some(401), Some(401), Some(429), Some(429)]
    );
    herve.stop().await;
}

// 5. One user cannot lock another out.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_from_one_address_do_not_lock_the_owner_out() {
    let herve = TestHerve::start().await;
    let accounts = herve.running("accounts", "auth").await;
    let signup = herve
        .post_form(
            &format!("/{accounts}/signup"),
            &[("username", "alice"), ("password", "correct-horse")],
        )
        .await;
    assert_eq!(signup.status, 201);
    let addr = herve.addr;
    let path = format!("/{accounts}/login");
    let (attacker, owner, slowed) = tokio::task::spawn_blocking(move || {
        let attack = form_request("POST", &path, "username=alice&password=guess-guess");
        let attacker: Vec<_> = (0..7)
            .map(|_| raw_status(&request_from([127, 0, 0, 2].into(), addr, &attack)))
            .collect();
        let right = form_request("POST", &path, "username=alice&password=correct-horse");
        let owner = raw_status(&request_from([127, 0, 0, 3].into(), addr, &right));
        // Many addresses failing on one name slow every login for it down, but the
        // right password still gets in.
        for host in 10..13u8 {
            for _ in 0..5 {
                request_from([127, 0, 1, host].into(), addr, &attack);
            }
        }
        let started = Instant::now();
        let late = raw_status(&request_from([127, 0, 0, 4].into(), addr, &right));
        (attacker, owner, (late, started.elapsed()))
    })
    .await
    .expect("join");
    assert_eq!(
        attacker,
        [
            Some(401),
            Some(401),
            Some(401),
            Some(401),
            Some(401),
            Some(429),
            Some(429)
        ]
    );
    assert_eq!(owner, Some(200), "the owner was locked out");
    assert_eq!(slowed.0, Some(200));
    assert!(
        slowed.1 >= Duration::from_millis(900),
        "not slowed down: {:?}",
        slowed.1
    );
    herve.stop().await;
}

// 6. A hosted program must not become the admin.

/// A program that tells, on its output, who it is and what of Herve it can read.
const SNOOP: &str = r#"
import json, os, sys, time
herve = sys.argv[1]
data = sys.argv[2]
def readable(path):
    try:
        with open(path, "rb") as f:
            f.read(1)
        return True
    except Exception:
        return False
def listable(path):
    try:
        return bool(os.listdir(path))
    except Exception:
        return False
import http.server
print("SNOOP " + json.dumps({
    "uid": os.getuid(),
    "cwd": os.getcwd(),
    "env": sorted(os.environ),
    "environ": readable(f"/proc/{herve}/environ"),
    "secret": readable(os.path.join(data, "admin-secret")),
    "database": readable(os.path.join(data, "herve.db")),
    "listing": listable(data),
}), flush=True)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// A world-readable copy of `source`, for a program that runs as `nobody`.
fn world_readable_script(dir: &std::path::Path, name: &str, source: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, source).expect("write script");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    path.display().to_string()
}

/// What follows `prefix` on the last line of a service's logs that starts with it,
/// once there is one.
async fn log_line_after(client: &HttpClient, uuid: &str, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = client
            .admin_get(&format!("/services/{uuid}/logs"))
            .await
            .json();
        let found = logs["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|line| line.as_str()?.strip_prefix(prefix))
            .next_back()
            .map(str::to_owned);
        if let Some(rest) = found {
            return rest;
        }
        assert!(Instant::now() < deadline, "no line '{prefix}': {logs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The report of the `SNOOP` program.
async fn snoop_report(client: &HttpClient, uuid: &str) -> serde_json::Value {
    serde_json::from_str(&log_line_after(client, uuid, "SNOOP ").await).expect("report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_cannot_read_herves_secrets() {
    if !herve::testing::is_root() {
        eprintln!("skipped: needs root to run programs as another user");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = data_path(dir.path());
    // A data directory that existed with loose permissions gets tightened.
    std::fs::create_dir_all(&data).expect("data dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let herve = BinHerve::spawn(
        dir.path(),
        &[("HERVE_ACCESS_LOG", "false"), ("HERVE_SECRET_LOOKING", "x")],
    );
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("herve.db")), 0o600);

    let scripts = tempfile::tempdir().expect("scripts");
    let snoop = world_readable_script(scripts.path(), "snoop.py", SNOOP);
    let client = herve.client();
    let command = format!(
        "/usr/bin/python3 {snoop} {} {}",
        herve.child.id(),
        data.display()
    );
    let uuid = client
        .running_with("snoop", "process", &[("command", &command)])
        .await;
    let report = snoop_report(&client, &uuid).await;
    assert_eq!(report["uid"], 65534, "not run as nobody: {report}");
    assert_eq!(report["environ"], false, "{report}");
    assert_eq!(report["secret"], false, "{report}");
    assert_eq!(report["database"], false, "{report}");
    assert_eq!(report["listing"], false, "{report}");
    let env: Vec<&str> = report["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let leaked: Vec<&&str> = env
        .iter()
        .filter(|name| {
            (name.starts_with("HERVE_") || name.starts_with("AUTH_"))
                && !matches!(
                    **name,
                    "HERVE_SERVICE_UUID" | "HERVE_SERVICE_NAME" | "HERVE_SERVICE_COPY"
                )
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "Herve's settings reached the program: {leaked:?}"
    );
    assert!(
        report["cwd"]
            .as_str()
            .is_some_and(|cwd| cwd.ends_with(&format!("herve-{uuid}"))),
        "{report}"
    );

    // Root only when asked; accounts must exist.
    let as_root = client
        .running_with(
            "as-root",
            "process",
            &[("command", &command), ("user", "root")],
        )
        .await;
    let report = snoop_report(&client, &as_root).await;
    assert_eq!(report["uid"], 0);
    // Even root, as Herve's own user, is kept out of the data directory by Landlock.
    if herve::testing::landlock_abi() > 0 {
        assert_eq!(report["secret"], false, "{report}");
        assert_eq!(report["listing"], false, "{report}");
    }
    let reply = client
        .post_form(
            "/services/register",
            &[
                ("name", "ghost"),
                ("type", "process"),
                ("command", &command),
                ("user", "no-such-account-herve"),
            ],
        )
        .await;
    assert_eq!(reply.status, 400);
    assert!(reply.message().contains("'user'"), "{}", reply.text());

    // A static site cannot serve the data directory.
    let reply = client
        .post_form(
            "/services/register",
            &[
                ("name", "leak"),
                ("type", "static"),
                ("root", &dir.path().display().to_string()),
            ],
        )
        .await;
    reply.expect(
        400,
        "The field 'root' must not contain Herve's data directory.",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_an_ordinary_user_herve_is_still_out_of_its_programs_reach() {
    if !herve::testing::is_root() || !std::path::Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root and setpriv to run Herve as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = data_path(dir.path());
    let snoop = world_readable_script(dir.path(), "snoop.py", SNOOP);
    // The grandchild of the escape test below, reused: it proves the process tree is
    // followed where there are no cgroups for Herve to use.
    let escape = world_readable_script(dir.path(), "escape.py", ESCAPE);
    // Herve, as nobody, makes its data directory here.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let binary = env!("CARGO_BIN_EXE_herve");
    let mut command = std::process::Command::new("/usr/bin/setpriv");
    command
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            binary,
        ])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PORT", "0")
        .env("HERVE_HOST", "127.0.0.1")
        .env("HERVE_DATA_DIR", &data)
        .env("HERVE_ACCESS_LOG", "false")
        .env("AUTH_ADMIN_ID", ADMIN_ID)
        .env("AUTH_ADMIN_SECRET", ADMIN_SECRET)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let herve = BinHerve::spawn_command(command);
    let client = herve.client();
    let uuid = client
        .running_with(
            "snoop",
            "process",
            &[(
                "command",
                &format!(
                    "/usr/bin/python3 {snoop} {} {}",
                    herve.child.id(),
                    data.display()
                ),
            )],
        )
        .await;
    let report = snoop_report(&client, &uuid).await;
    assert_eq!(report["uid"], 65534);
    // Same user as Herve: only non-dumpability and Landlock keep it out.
    assert_eq!(report["environ"], false, "{report}");
    if herve::testing::landlock_abi() > 0 {
        assert_eq!(report["secret"], false, "{report}");
        assert_eq!(report["database"], false, "{report}");
    }

    let escaper = client
        .running_with(
            "escaper",
            "process",
            &[("command", &format!("/usr/bin/python3 {escape}"))],
        )
        .await;
    let grandchild = escaped_pid(&client, &escaper).await;
    assert!(alive(grandchild));
    client
        .stop_service(&escaper)
        .await
        .expect(200, "The service has successfully stopped.");
    assert!(
        !alive(grandchild),
        "the escaped grandchild outlived its service"
    );
}

// 7. A grandchild that leaves its group and clears its environment.

/// Starts a grandchild that leaves the process group (setsid), drops its whole
/// environment and outlives its parent; prints its pid; then serves.
const ESCAPE: &str = r#"
import http.server, os, sys
read, write = os.pipe()
if os.fork() == 0:
    os.setsid()
    pid = os.fork()
    if pid == 0:
        os.execve("/bin/sleep", ["sleep", "3600"], {})
    os.write(write, str(pid).encode())
    os._exit(0)
os.wait()
print("ESCAPED", os.read(read, 32).decode(), flush=True)
if len(sys.argv) > 1 and sys.argv[1] == "exit":
    import threading
    threading.Timer(1.0, lambda: os._exit(0)).start()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

async fn escaped_pid(client: &HttpClient, uuid: &str) -> i32 {
    log_line_after(client, uuid, "ESCAPED ")
        .await
        .trim()
        .parse()
        .expect("pid")
}

/// Whether `pid` runs (and is no zombie).
fn alive(pid: i32) -> bool {
    // The kill is asynchronous: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let running = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
            .unwrap_or(false);
        if !running || Instant::now() >= deadline {
            return running;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escaped_grandchild_dies_with_stop_unregister_and_a_killed_herve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scripts = tempfile::tempdir().expect("scripts");
    let escape = world_readable_script(scripts.path(), "escape.py", ESCAPE);
    let command = format!("/usr/bin/python3 {escape}");
    let mut first = BinHerve::spawn(dir.path(), &[("HERVE_ACCESS_LOG", "false")]);
    let client = first.client();
    let uuid = client
        .running_with("escaper", "process", &[("command", &command)])
        .await;

    // Stop.
    let grandchild = escaped_pid(&client, &uuid).await;
    assert!(alive(grandchild), "the test program did not work");
    client
        .stop_service(&uuid)
        .await
        .expect(200, "The service has successfully stopped.");
    assert!(!alive(grandchild), "stop left the grandchild running");

    client
        .unregister(&uuid)
        .await
        .expect(200, "The service has been successfully unregistered.");

    // A program that ends by itself takes what it started along.
    let ending = client
        .running_with(
            "ending",
            "process",
            &[
                ("command", &format!("{command} exit")),
                ("restart", "never"),
            ],
        )
        .await;
    let grandchild = escaped_pid(&client, &ending).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .admin_get(&format!("/services/{ending}"))
        .await
        .json()["data"]["status"]
        != "stopped"
    {
        assert!(Instant::now() < deadline, "the program did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !alive(grandchild),
        "an ended program left the grandchild running"
    );
    client
        .unregister(&ending)
        .await
        .expect(200, "The service has been successfully unregistered.");

    // Herve killed: the next Herve finds what was left.
    let uuid = client
        .running_with("escaper-2", "process", &[("command", &command)])
        .await;
    let grandchild = escaped_pid(&client, &uuid).await;
    first.signal(libc::SIGKILL);
    first.wait(WAIT);
    let second = BinHerve::spawn(dir.path(), &[("HERVE_ACCESS_LOG", "false")]);
    let client = second.client();
    let shown = client.admin_get(&format!("/services/{uuid}")).await.json();
    assert_eq!(shown["data"]["status"], "running", "{shown}");
    assert!(
        !alive(grandchild),
        "a restart of Herve left the grandchild running"
    );
}

// 8. Two Herves on one data directory.

#[tokio::test]
async fn a_second_herve_on_the_same_data_directory_stops_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = TestHerve::start_on(dir.path()).await;
    let second = herve::HerveBuilder::new(test_config(dir.path()))
        .bind()
        .await;
    let Err(error) = second else {
        panic!("a second Herve started on the same data directory");
    };
    assert!(
        error
            .to_string()
            .contains("another Herve is running on the data directory"),
        "{error}"
    );
    // The binary says so and exits.
    let output = herve_command(dir.path())
        .env("HERVE_DATA_DIR", dir.path())
        .output()
        .expect("run herve");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("another Herve is running"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    first.stop().await;
    // Once the first is gone, the directory is free again.
    let third = TestHerve::start_on(dir.path()).await;
    third.stop().await;
}

// 9. The proxy's base confines requests.

#[tokio::test]
async fn a_proxied_path_never_climbs_out_of_the_base() {
    let herve = TestHerve::start().await;
    let upstream = Upstream::start("confined").await;
    let uuid = herve
        .running_with(
            "confined",
            "proxy",
            &[("upstream", &format!("{}/base", upstream.url()))],
        )
        .await;
    let addr = herve.addr;
    let cases = [
        ("/x/../../../secret/echo", 200, Some("/base/secret/echo")),
        ("/./a/./echo", 200, Some("/base/a/echo")),
        ("/%2e%2e/secret/echo", 400, None),
        ("/..%2fsecret/echo", 400, None),
        ("/a/%2E%2E%2F%2E%2E/echo", 400, None),
    ];
    for (path, status, seen) in cases {
        let answer = tokio::task::spawn_blocking({
            let request =
                format!("GET /{uuid}{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            move || raw_exchange(addr, request.as_bytes(), WAIT)
        })
        .await
        .expect("join");
        assert_eq!(raw_status(&answer), Some(status), "{path}");
        if let Some(seen) = seen {
            let text = String::from_utf8_lossy(&answer);
            assert!(
                text.contains(&format!("\"uri\":\"{seen}\"")),
                "{path}: {text}"
            );
        }
    }
    herve.stop().await;
}

// 10. A chunked body over the limit through a proxy; a proxy that loops.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_body_over_the_limit_is_413_and_never_complete_upstream() {
    let herve = TestHerve::start_with(|c| c.max_body_bytes = 1024).await;
    // An upstream that tells whether it ever received a whole chunked body.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream_addr = listener.local_addr().expect("addr");
    let completed = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&completed);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut received = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => received.extend_from_slice(&buf[..n]),
                    }
                    if received.ends_with(b"\r\n0\r\n\r\n") {
                        seen.store(true, Ordering::SeqCst);
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    let uuid = herve
        .running_with(
            "limited",
            "proxy",
            &[("upstream", &format!("http://{upstream_addr}"))],
        )
        .await;
    let addr = herve.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let request = chunked_request(&format!("/{uuid}/upload"), 8, 0x200);
        raw_exchange(addr, &request, WAIT)
    })
    .await
    .expect("join");
    assert_eq!(
        raw_status(&answer),
        Some(413),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(String::from_utf8_lossy(&answer).contains("The request body is too large."));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !completed.load(Ordering::SeqCst),
        "the upstream saw a cut body as complete"
    );
    herve.stop().await;
}

#[tokio::test]
async fn a_proxy_that_reaches_itself_answers_508() {
    let herve = TestHerve::start().await;
    // Its upstream is Herve: /<uuid>/<uuid>/x comes back to it as /<uuid>/x.
    let uuid = herve
        .running_with(
            "loop",
            "proxy",
            &[("upstream", &format!("http://{}", herve.addr))],
        )
        .await;
    let reply = herve.get(&format!("/{uuid}/{uuid}/x")).await;
    assert_eq!(reply.status, 508, "{}", reply.text());
    assert!(reply.text().contains("loops"), "{}", reply.text());
    herve.stop().await;
}

// 11. Forwarding headers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_come_from_what_herve_saw_or_a_trusted_proxy() {
    let herve = TestHerve::start_with(|c| {
        c.trusted_proxies = herve::TrustedProxies::parse("127.0.0.2").expect("list");
    })
    .await;
    let upstream = Upstream::start("headers").await;
    let uuid = herve
        .running_with("fwd", "proxy", &[("upstream", &upstream.url())])
        .await;
    let addr = herve.addr;
    let request = format!(
        "GET /{uuid}/echo HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\
         X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\nX-Real-IP: 6.6.6.6\r\n\
         Forwarded: for=6.6.6.6\r\nX-Forwarded-Proto: https\r\n\r\n"
    );
    let (stranger, proxy) = tokio::task::spawn_blocking(move || {
        let body = |answer: Vec<u8>| -> serde_json::Value {
            let text = String::from_utf8_lossy(&answer).into_owned();
            let (_, body) = text.split_once("\r\n\r\n").expect("answer");
            serde_json::from_str(body).expect("json")
        };
        (
            body(request_from([127, 0, 0, 1].into(), addr, &request)),
            body(request_from([127, 0, 0, 2].into(), addr, &request)),
        )
    })
    .await
    .expect("join");
    let seen = &stranger["headers"];
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    assert_eq!(
        seen["forwarded"],
        "for=127.0.0.1;host=\"app.test\";proto=http"
    );
    assert_eq!(seen["x-forwarded-proto"], "http");
    let seen = &proxy["headers"];
    assert_eq!(
        seen["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 127.0.0.2",
        "{seen}"
    );
    assert_eq!(seen["x-real-ip"], "5.6.7.8");
    assert_eq!(
        seen["forwarded"],
        "for=6.6.6.6, for=127.0.0.2;host=\"app.test\";proto=http"
    );
    assert_eq!(seen["x-forwarded-proto"], "https");
    herve.stop().await;
}

// 12. One corrupt row.

#[tokio::test]
async fn a_corrupt_row_fails_its_service_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = TestHerve::start_on(dir.path()).await;
    let broken = first.running("broken", "echo").await;
    let fine = first.running("fine", "ping").await;
    first.stop().await;
    let database = rusqlite::Connection::open(dir.path().join("herve.db")).expect("open");
    database
        .execute(
            "UPDATE services SET config = '{not json', status = 'bogus' WHERE uuid = ?1",
            [&broken],
        )
        .expect("corrupt");
    drop(database);

    let second = TestHerve::start_on(dir.path()).await;
    assert_eq!(second.get(&format!("/{fine}/ping")).await.text(), "pong\n");
    let shown = second
        .admin_get(&format!("/services/{broken}"))
        .await
        .json();
    assert_eq!(shown["data"]["status"], "failed", "{shown}");
    assert!(
        shown["data"]["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("corrupt")),
        "{shown}"
    );
    let start = second.start(&broken).await;
    assert_eq!(start.status, 500);
    assert!(start.message().contains("corrupt"), "{}", start.text());
    // It can be unregistered, and its name taken again.
    second
        .unregister(&broken)
        .await
        .expect(200, "The service has been successfully unregistered.");
    second.running("broken", "echo").await;
    second.stop().await;
}

// 13. Compatibility of models with the first Herve.

#[tokio::test]
async fn models_ids_start_at_zero_and_booleans_take_any_case() {
    let herve = TestHerve::start().await;
    let uuid = herve
        .running_with(
            "people",
            "models",
            &[("model", "user"), ("fields", "name:string,active:bool")],
        )
        .await;
    let mut ids = Vec::new();
    for active in ["TRUE", "False", "true", "FALSE"] {
        let reply = herve
            .send(
                Method::POST,
                &format!("/{uuid}/user"),
                Auth::None,
                &[("content-type", "application/x-www-form-urlencoded")],
                format!("name=a&active={active}"),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text());
        assert_eq!(
            reply.json()["data"]["active"],
            active.eq_ignore_ascii_case("true")
        );
        ids.push(reply.json()["data"]["id"].as_i64().expect("id"));
    }
    assert_eq!(ids, [0, 1, 2, 3]);
    // The first Herve's own acceptance script reads /user/0.
    let first = herve.get(&format!("/{uuid}/user/0")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["data"]["active"], true);
    herve.stop().await;
}

// 14. Authentication before the method, and no Allow on a 401.

#[tokio::test]
async fn a_wrong_method_under_services_is_401_for_strangers_and_405_for_the_admin() {
    let herve = TestHerve::start().await;
    let stranger = herve
        .send(Method::DELETE, "/services", Auth::None, &[], Bytes::new())
        .await;
    assert_eq!(stranger.status, 401);
    assert!(stranger.header("allow").is_none(), "{:?}", stranger.headers);
    assert!(stranger.header("www-authenticate").is_some());
    let admin = herve
        .send(Method::DELETE, "/services", Auth::Admin, &[], Bytes::new())
        .await;
    assert_eq!(admin.status, 405);
    assert_eq!(admin.header("allow"), Some("GET,HEAD"));
    herve.stop().await;
}

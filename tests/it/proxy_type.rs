//! The `proxy` type against real upstream servers on loopback.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;

use crate::support::*;
use crate::upstream_server::Upstream;

/// Registers and starts a proxy with `fields` (besides name and type).
async fn proxy(herve: &HttpClient, name: &str, fields: &[(&str, &str)]) -> String {
    herve.running_with(name, "proxy", fields).await
}

async fn count_ids(herve: &HttpClient, uuid: &str, requests: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..requests {
        let reply = herve.get(&format!("/{uuid}/id")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        *seen.entry(reply.text()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn round_robin_and_weighted_spread_the_load() {
    let herve = TestHerve::start().await;
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let list = format!("{},{}", a.url(), b.url());
    let rr = proxy(&herve, "rr", &[("upstream", &list), ("upstream", &c.url())]).await;
    let seen = count_ids(&herve, &rr, 300).await;
    assert_eq!(seen.get("a"), Some(&100), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&100), "{seen:?}");
    assert_eq!(seen.get("c"), Some(&100), "{seen:?}");

    let weighted = proxy(
        &herve,
        "weighted",
        &[
            ("upstream", &a.url()),
            ("upstream", &b.url()),
            ("weight", "3,1"),
            ("strategy", "weighted"),
        ],
    )
    .await;
    let seen = count_ids(&herve, &weighted, 400).await;
    assert_eq!(seen.get("a"), Some(&300), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&100), "{seen:?}");
    herve.stop().await;
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let herve = TestHerve::start().await;
    let a = Upstream::start("a").await;
    let uuid = proxy(&herve, "pooled", &[("upstream", &a.url())]).await;
    let seen = count_ids(&herve, &uuid, 50).await;
    assert_eq!(seen.get("a"), Some(&50));
    let opened = a.accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        opened <= 2,
        "{opened} upstream connections for 50 sequential requests"
    );
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_avoids_the_busy_upstream() {
    let herve = TestHerve::start().await;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let uuid = proxy(
        &herve,
        "lc",
        &[
            ("upstream", &a.url()),
            ("upstream", &b.url()),
            ("strategy", "least_conn"),
        ],
    )
    .await;
    // Pin one slow request on one upstream...
    let slow = {
        let client = herve.client.clone();
        let uuid = uuid.clone();
        tokio::spawn(async move { client.get(&format!("/{uuid}/slow?ms=3000")).await.text() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...then every quick request goes to the other one.
    let seen = count_ids(&herve, &uuid, 20).await;
    let busy = slow.await.expect("slow request");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(!seen.contains_key(&busy), "{seen:?} while {busy} was busy");
    herve.stop().await;
}

#[tokio::test]
async fn a_dead_upstream_leaves_the_rotation_and_rejoins() {
    let herve = TestHerve::start().await;
    let (mut a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let uuid = proxy(
        &herve,
        "failover",
        &[
            ("upstream", &a.url()),
            ("upstream", &b.url()),
            ("health_interval_ms", "200"),
        ],
    )
    .await;
    a.kill().await;
    // Refused connections are retried on the other upstream: no client sees them.
    let seen = count_ids(&herve, &uuid, 20).await;
    assert_eq!(seen.get("b"), Some(&20), "{seen:?}");
    let shown = herve.admin_get(&format!("/services/{uuid}")).await.json();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shown_later = herve.admin_get(&format!("/services/{uuid}")).await.json();
    assert_eq!(
        shown_later["data"]["runtime"]["upstreams"][0]["healthy"], false,
        "{shown} {shown_later}"
    );

    a.revive().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = count_ids(&herve, &uuid, 4).await;
        if seen.get("a").is_some_and(|&n| n >= 2) {
            break;
        }
        assert!(Instant::now() < deadline, "a never rejoined: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    herve.stop().await;
}

#[tokio::test]
async fn a_failing_health_check_takes_an_upstream_out() {
    let herve = TestHerve::start().await;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let uuid = proxy(
        &herve,
        "checked",
        &[
            ("upstream", &a.url()),
            ("upstream", &b.url()),
            ("health_path", "/health"),
            ("health_interval_ms", "100"),
        ],
    )
    .await;
    a.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_until_only(&herve, &uuid, "b").await;
    a.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = count_ids(&herve, &uuid, 4).await;
        if seen.get("a") == Some(&2) {
            break;
        }
        assert!(Instant::now() < deadline, "a never came back: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    herve.stop().await;
}

/// Waits until ten requests in a row all reach `only`.
async fn wait_until_only(herve: &HttpClient, uuid: &str, only: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = count_ids(herve, uuid, 10).await;
        if seen.get(only) == Some(&10) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "traffic never went to {only} alone: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_leaving_early_does_not_skew_least_conn() {
    let herve = TestHerve::start().await;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let uuid = proxy(
        &herve,
        "leaver",
        &[
            ("upstream", &a.url()),
            ("upstream", &b.url()),
            ("strategy", "least_conn"),
        ],
    )
    .await;
    // One client hangs up while its upstream is still thinking. (One: an even number
    // would leak the same count on both upstreams and hide the skew.)
    let addr = herve.addr;
    let path = format!("/{uuid}/slow?ms=300");
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("write");
        std::thread::sleep(Duration::from_millis(50));
    })
    .await
    .expect("join");
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Nothing is in flight any more: the load is shared again.
    let seen = count_ids(&herve, &uuid, 20).await;
    assert_eq!(seen.get("a"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&10), "{seen:?}");
    herve.stop().await;
}

#[tokio::test]
async fn a_request_with_a_body_is_never_sent_twice() {
    let herve = TestHerve::start().await;
    let (mut a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let uuid = proxy(
        &herve,
        "once",
        &[("upstream", &a.url()), ("upstream", &b.url())],
    )
    .await;
    a.kill().await;
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let reply = herve
            .send(
                Method::POST,
                &format!("/{uuid}/echo"),
                Auth::None,
                &[],
                "order #1",
            )
            .await;
        statuses.push(reply.status.as_u16());
    }
    // The first POST found the dead upstream: 502, not replayed; then it is out.
    assert_eq!(statuses, [502, 200]);
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    herve.stop().await;
}

/// An address that never completes a connection, like a host that drops packets: its
/// accept queue is full and nobody accepts, so the kernel drops new SYNs.
struct Blackhole {
    addr: std::net::SocketAddr,
    _listener: socket2::Socket,
    _queued: Vec<std::net::TcpStream>,
}

impl Blackhole {
    fn new() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
        listener.bind(&any.into()).expect("bind");
        listener.listen(0).expect("listen");
        let addr = listener
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet");
        let mut queued = Vec::new();
        loop {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(stream) => queued.push(stream),
                Err(_) => break,
            }
            assert!(queued.len() < 16, "the accept queue never filled");
        }
        Blackhole {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[tokio::test]
async fn an_unreachable_upstream_times_out_leaves_the_rotation_and_is_retried() {
    let herve = TestHerve::start().await;
    let hole = Blackhole::new();
    let b = Upstream::start("b").await;
    let uuid = proxy(
        &herve,
        "hole",
        &[
            ("upstream", &hole.url()),
            ("upstream", &b.url()),
            ("timeout_ms", "300"),
            ("health_interval_ms", "200"),
        ],
    )
    .await;
    // The attempt on the hole times out connecting and goes again to b; after it, the
    // hole is out of the rotation and costs nothing more.
    let started = Instant::now();
    let seen = count_ids(&herve, &uuid, 10).await;
    assert_eq!(seen.get("b"), Some(&10), "{seen:?}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    // The service's runtime state follows at the next health tick.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let shown = herve.admin_get(&format!("/services/{uuid}")).await.json();
        if shown["data"]["runtime"]["upstreams"][0]["healthy"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "still shown healthy: {shown}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Alone, it is a 504 after timeout_ms, not after the 5 s connect timeout.
    let alone = proxy(
        &herve,
        "alone",
        &[("upstream", &hole.url()), ("timeout_ms", "300")],
    )
    .await;
    let started = Instant::now();
    let reply = herve.get(&format!("/{alone}/id")).await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.text(), "The upstream could not be reached in time.\n");
    assert!(started.elapsed() < Duration::from_millis(2500));
    herve.stop().await;
}

#[tokio::test]
async fn no_upstream_is_502_and_a_slow_one_504() {
    let herve = TestHerve::start().await;
    let mut a = Upstream::start("a").await;
    let slow = proxy(
        &herve,
        "slow",
        &[("upstream", &a.url()), ("timeout_ms", "200")],
    )
    .await;
    let started = Instant::now();
    let reply = herve.get(&format!("/{slow}/slow?ms=2000")).await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=UTF-8")
    );

    a.kill().await;
    let reply = herve.get(&format!("/{slow}/id")).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    let reply = herve.get(&format!("/{slow}/id")).await;
    assert_eq!(reply.status, 502);
    assert!(reply.text().contains("upstream"), "{}", reply.text());
    herve.stop().await;
}

#[tokio::test]
async fn requests_arrive_whole_with_forwarding_headers_and_without_hop_headers() {
    let herve = TestHerve::start().await;
    let a = Upstream::start("a").await;
    let base = format!("{}/base", a.url());
    let uuid = proxy(&herve, "headers", &[("upstream", &base)]).await;
    let reply = herve
        .send(
            Method::PUT,
            &format!("/{uuid}/x/echo?q=1&r=%20"),
            Auth::None,
            &[
                ("connection", "x-private"),
                ("x-private", "secret"),
                ("x-kept", "kept"),
                ("x-forwarded-for", "10.9.8.7"),
            ],
            "payload",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = reply.json();
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["uri"], "/base/x/echo?q=1&r=%20");
    assert_eq!(seen["body"], "payload");
    let headers = &seen["headers"];
    assert_eq!(headers["x-kept"], "kept");
    assert!(headers.get("x-private").is_none(), "{headers}");
    // The client is no trusted proxy: what it claims is replaced by what Herve saw.
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-real-ip"], "127.0.0.1");
    assert_eq!(
        headers["forwarded"],
        format!("for=127.0.0.1;host=\"{}\";proto=http", herve.addr)
    );
    assert!(
        headers["via"]
            .as_str()
            .is_some_and(|via| via.starts_with("1.1 herve-")),
        "{headers}"
    );
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], herve.addr.to_string());
    assert_eq!(headers["x-forwarded-prefix"], format!("/{uuid}"));
    assert_eq!(headers["host"], a.addr.to_string());
    // And hop-by-hop headers of the answer stay behind too.
    assert!(reply.header("x-secret-hop").is_none());
    assert!(reply.header("keep-alive").is_none());
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_response_streams_through_with_bounded_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let herve = BinHerve::spawn(dir.path(), &[("HERVE_ACCESS_LOG", "false")]);
    let client = herve.client();
    let a = Upstream::start("a").await;
    let uuid = proxy(&client, "big", &[("upstream", &a.url())]).await;
    let before = rss_kib(herve.child.id());

    let addr = herve.addr;
    let path = format!("/{uuid}/big?mb=100");
    let pid = herve.child.id();
    let (received, peak) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .expect("write");
        let mut buf = vec![0u8; 256 * 1024];
        let (mut received, mut peak) = (0usize, 0u64);
        loop {
            let n = stream.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            received += n;
            if received % (8 << 20) < n {
                peak = peak.max(rss_kib(pid));
                // A slow reader: Herve must not buffer what it cannot send.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        (received, peak)
    })
    .await
    .expect("reader");
    assert!(received > 100 * 1024 * 1024, "received {received}");
    let growth_mib = peak.saturating_sub(before) / 1024;
    println!("herve RSS before {} KiB, peak {} KiB", before, peak);
    assert!(
        growth_mib < 32,
        "RSS grew by {growth_mib} MiB while streaming 100 MiB"
    );
}

#[tokio::test]
async fn websocket_style_upgrades_pass_through() {
    let herve = TestHerve::start().await;
    let a = Upstream::start("a").await;
    let uuid = proxy(&herve, "ws", &[("upstream", &a.url())]).await;
    let addr = herve.addr;
    let path = format!("/{uuid}/socket");
    let tunnel = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").as_bytes())
            .expect("write");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("read head");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        for message in [&b"hello"[..], b"through herve"] {
            stream.write_all(message).expect("write frame");
            let mut back = vec![0u8; message.len()];
            stream.read_exact(&mut back).expect("read echo");
            assert_eq!(back, message);
        }
        stream
    })
    .await
    .expect("join");

    // Stopping the service ends its tunnels too: nothing of it keeps running.
    assert_eq!(herve.stop_service(&uuid).await.status, 200);
    let closed = tokio::task::spawn_blocking(move || {
        let mut stream = tunnel;
        let mut byte = [0u8; 1];
        matches!(stream.read(&mut byte), Ok(0))
    })
    .await
    .expect("join");
    assert!(closed, "the tunnel outlived its service");
    herve.stop().await;
}

#[tokio::test]
async fn proxy_registration_is_validated() {
    let herve = TestHerve::start().await;
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "'upstream'"),
        (&[("upstream", "localhost:80")], "'upstream'"),
        (&[("upstream", "ftp://example.test")], "'upstream'"),
        (
            &[("upstream", "http://a:1,http://b:2"), ("weight", "1")],
            "'weight'",
        ),
        (&[("upstream", "http://a:1"), ("weight", "0")], "'weight'"),
        (
            &[("upstream", "http://a:1"), ("strategy", "random")],
            "'strategy'",
        ),
        (
            &[("upstream", "http://a:1"), ("health_interval_ms", "5")],
            "'health_interval_ms'",
        ),
        (
            &[("upstream", "http://a:1"), ("timeout_ms", "soon")],
            "'timeout_ms'",
        ),
        (
            &[("upstream", "http://a:1"), ("health_path", "health")],
            "'health_path'",
        ),
    ];
    for (fields, named) in cases {
        let mut all = vec![("name", "p"), ("type", "proxy")];
        all.extend_from_slice(fields);
        let reply = herve.post_form("/services/register", &all).await;
        assert_eq!(reply.status, 400, "{fields:?}: {}", reply.text());
        assert!(
            reply.message().contains(named),
            "{fields:?}: {}",
            reply.text()
        );
    }
    assert!(herve.list().await.is_empty());
    let _ = Bytes::new();
    herve.stop().await;
}

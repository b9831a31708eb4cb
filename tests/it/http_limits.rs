//! HTTP hardening: size and time limits, malformed requests, HTTP/1.0 and keep-alive.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn bodies_over_the_limit_are_413_declared_or_streamed() {
    let herve = TestHerve::start_with(|c| c.max_body_bytes = 1024).await;
    let echo = herve.running("e", "echo").await;
    let path = format!("/{echo}/echo");

    let fits = herve
        .send(Method::POST, &path, Auth::None, &[], vec![b'a'; 1024])
        .await;
    assert_eq!(fits.status, 200);
    assert_eq!(fits.body.len(), 1024);

    let declared = herve
        .send(Method::POST, &path, Auth::None, &[], vec![b'a'; 1025])
        .await;
    assert_eq!(declared.status, 413);

    // Chunked: no Content-Length to refuse up front; the limit cuts the stream.
    let addr = herve.addr;
    let chunked = tokio::task::spawn_blocking(move || {
        raw_exchange(addr, &chunked_request(&path, 4, 0x200), WAIT)
    })
    .await
    .expect("join");
    assert_eq!(
        raw_status(&chunked),
        Some(413),
        "{}",
        String::from_utf8_lossy(&chunked)
    );

    let register = herve
        .send(
            Method::POST,
            "/services/register",
            Auth::Admin,
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("name=big&type=echo&pad={}", "x".repeat(2000)),
        )
        .await;
    assert_eq!(register.status, 413);
    assert_eq!(register.header("content-type"), Some("application/json"));
    assert_eq!(register.message(), "The request body is too large.");
    // Still serving.
    assert_eq!(herve.get("/health").await.status, 200);
    herve.stop().await;
}

#[tokio::test]
async fn a_client_that_sends_its_whole_refused_body_first_still_reads_the_413() {
    let herve = TestHerve::start_with(|c| c.max_body_bytes = 1024).await;
    let echo = herve.running("e", "echo").await;
    // Declared: refused before routing. Chunked: refused when the handler reads past
    // the limit.
    for chunked in [false, true] {
        let answer = send_all_then_read(herve.addr, &echo, chunked).await;
        assert_eq!(
            raw_status(&answer),
            Some(413),
            "chunked: {chunked}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(herve.get("/health").await.status, 200);
    herve.stop().await;
}

/// Sends 8 MiB to an echo service, declared or chunked, before reading the answer head.
async fn send_all_then_read(addr: std::net::SocketAddr, echo: &str, chunked: bool) -> Vec<u8> {
    let path = format!("/{echo}/echo");
    tokio::task::spawn_blocking(move || {
        let size = 8 * 1024 * 1024;
        let (head, body) = if chunked {
            let mut body = Vec::with_capacity(size + 4096);
            for _ in 0..size / 0x10000 {
                body.extend_from_slice(b"10000\r\n");
                body.extend_from_slice(&[b'x'; 0x10000]);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\n");
            let head =
                format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
            (head, body)
        } else {
            let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
            (head, vec![b'x'; size])
        };
        let mut stream = TcpStream::connect(addr).expect("connect");
        // Far more than the socket buffers hold: without Herve reading on after its
        // answer, this write fails (reset) and the answer is lost.
        stream.write_all(head.as_bytes()).expect("head");
        stream
            .write_all(&body)
            .expect("Herve reads the refused body to its end");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match std::io::Read::read(&mut stream, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        answer
    })
    .await
    .expect("join")
}

#[tokio::test]
async fn bodies_up_to_the_default_limit_pass_whole() {
    let herve = TestHerve::start().await;
    let echo = herve.running("e", "echo").await;
    let body: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let reply = herve
        .send(
            Method::POST,
            &format!("/{echo}/echo"),
            Auth::None,
            &[],
            body.clone(),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert!(reply.body[..] == body[..], "the echoed body differs");
    let over = herve
        .send(
            Method::POST,
            &format!("/{echo}/echo"),
            Auth::None,
            &[],
            vec![0u8; 10 * 1024 * 1024 + 1],
        )
        .await;
    assert_eq!(over.status, 413);

    // A large registration form is read whole too (unknown fields are ignored).
    let padded = herve
        .send(
            Method::POST,
            "/services/register",
            Auth::Admin,
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("name=padded&type=ping&pad={}", "p".repeat(3 * 1024 * 1024)),
        )
        .await;
    assert_eq!(padded.status, 201, "{}", padded.text());
    herve.stop().await;
}

#[tokio::test]
async fn oversized_or_too_many_headers_are_431() {
    let herve = TestHerve::start_with(|c| c.max_header_bytes = 4096).await;
    let addr = herve.addr;
    tokio::task::spawn_blocking(move || {
        let big = format!(
            "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(8000)
        );
        assert_eq!(
            raw_status(&raw_exchange(addr, big.as_bytes(), WAIT)),
            Some(431)
        );

        let mut many = String::from("GET /health HTTP/1.1\r\nHost: x\r\n");
        for i in 0..150 {
            many.push_str(&format!("X-H{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(
            raw_status(&raw_exchange(addr, many.as_bytes(), WAIT)),
            Some(431)
        );

        // A huge head streamed without end is cut off too, not buffered forever.
        let endless = format!("GET /health HTTP/1.1\r\nX-A: {}", "b".repeat(600_000));
        let answer = raw_exchange(addr, endless.as_bytes(), WAIT);
        assert_eq!(raw_status(&answer), Some(431));
    })
    .await
    .expect("join");
    assert_eq!(herve.get("/health").await.status, 200);
    herve.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_400_and_the_server_stays_up() {
    let herve = TestHerve::start().await;
    let addr = herve.addr;
    tokio::task::spawn_blocking(move || {
        let cases: &[&[u8]] = &[
            b"GARBAGE\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET /health HTTP/9.9\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
            b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n",
        ];
        for case in cases {
            let answer = raw_exchange(addr, case, WAIT);
            assert_eq!(
                raw_status(&answer),
                Some(400),
                "{:?} -> {:?}",
                String::from_utf8_lossy(case),
                String::from_utf8_lossy(&answer)
            );
        }
        // Invalid chunked encoding in a body: the request fails, nothing crashes.
        let echo_less = b"POST /services/register HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nxx\r\n0\r\n\r\n";
        let answer = raw_exchange(addr, echo_less, WAIT);
        assert_eq!(raw_status(&answer), Some(401), "auth is checked before the body is read");
        let with_auth = format!(
            "POST /services/register HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nxx\r\n0\r\n\r\n",
            basic(ADMIN_ID, ADMIN_SECRET)
        );
        let answer = raw_exchange(addr, with_auth.as_bytes(), WAIT);
        assert_eq!(raw_status(&answer), Some(400), "{}", String::from_utf8_lossy(&answer));
    })
    .await
    .expect("join");
    assert_eq!(herve.get("/health").await.status, 200);
    herve.stop().await;
}

#[tokio::test]
async fn http_1_0_and_keep_alive() {
    let herve = TestHerve::start().await;
    let ping = herve.running("p", "ping").await;
    let addr = herve.addr;
    tokio::task::spawn_blocking(move || {
        // HTTP/1.0 without keep-alive: one answer, then the server closes.
        let answer = raw_exchange(
            addr,
            format!("GET /{ping}/ping HTTP/1.0\r\n\r\n").as_bytes(),
            WAIT,
        );
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.0 200"), "{text}");
        assert!(text.ends_with("pong\n"), "{text}");

        // HTTP/1.1: three requests on one connection, pipelined.
        let one = format!("GET /{ping}/ping HTTP/1.1\r\nHost: x\r\n\r\n");
        let last = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let answer = raw_exchange(addr, format!("{one}{one}{last}").as_bytes(), WAIT);
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
        assert_eq!(text.matches("pong\n").count(), 2, "{text}");
    })
    .await
    .expect("join");
    herve.stop().await;
}

#[tokio::test]
async fn slow_or_idle_clients_are_cut_off() {
    let herve = TestHerve::start_with(|c| {
        c.header_timeout_s = 1;
        c.body_timeout_s = 1;
    })
    .await;
    let echo = herve.running("e", "echo").await;
    let addr = herve.addr;
    tokio::task::spawn_blocking(move || {
        // A head that never ends.
        let started = Instant::now();
        let mut slow = TcpStream::connect(addr).expect("connect");
        slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .expect("write");
        let answer = read_until_close(&mut slow, Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(4), "not cut off");
        assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));

        // An idle keep-alive connection.
        let started = Instant::now();
        let mut idle = TcpStream::connect(addr).expect("connect");
        idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let answer = read_until_close(&mut idle, Duration::from_secs(5));
        assert!(String::from_utf8_lossy(&answer).contains("200 OK"));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "idle connection kept"
        );

        // A body that stalls halfway.
        let started = Instant::now();
        let mut stalled = TcpStream::connect(addr).expect("connect");
        stalled
            .write_all(
                format!("POST /{echo}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf")
                    .as_bytes(),
            )
            .expect("write");
        let answer = read_until_close(&mut stalled, Duration::from_secs(5));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "stalled body kept"
        );
        assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    })
    .await
    .expect("join");
    assert_eq!(herve.get("/health").await.status, 200);
    herve.stop().await;
}

#[tokio::test]
async fn head_requests_get_headers_only() {
    let herve = TestHerve::start().await;
    let reply = herve
        .send(Method::HEAD, "/health", Auth::None, &[], Bytes::new())
        .await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.is_empty());
    herve.stop().await;
}

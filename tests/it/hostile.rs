//! Hostile input: malformed and abusive requests, one table, each with the answer it
//! must get; and the admin throttle.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;

use crate::support::*;

/// What a case must get: one of these statuses, or (0) the connection closed without
/// an answer.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    expect: &'static [u16],
}

fn case(name: &'static str, request: impl Into<Vec<u8>>, expect: &'static [u16]) -> Case {
    Case {
        name,
        request: request.into(),
        expect,
    }
}

fn form_post(auth: &str, body: &str) -> String {
    format!(
        "POST /services/register HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn cases(echo: &str, auth: &str) -> Vec<Case> {
    let big = "a".repeat(20_000);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    vec![
        // Request lines.
        case("garbage line", "GARBAGE\r\n\r\n", &[400]),
        case("method only", "GET\r\n\r\n", &[400]),
        case("no version", "GET /health\r\n\r\n", &[400]),
        case("unknown version", "GET /health HTTP/9.9\r\n\r\n", &[400, 505]),
        case("lowercase version", "GET /health http/1.1\r\nHost: x\r\n\r\n", &[400]),
        case("space in target", "GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n", &[400]),
        case("tab in target", "GET /he\talth HTTP/1.1\r\nHost: x\r\n\r\n", &[400]),
        case("NUL in target", b"GET /he\x00alth HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &[400]),
        case("non-ASCII in target", b"GET /h\xc3\xa9alth HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &[400, 404]),
        case("invalid UTF-8 in target", b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &[400, 404]),
        case("bad method chars", "G(T /health HTTP/1.1\r\nHost: x\r\n\r\n", &[400]),
        case("huge target", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "p".repeat(70_000)), &[400, 414, 431]),
        case("empty line first", "\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n", &[200, 400]),
        // Headers.
        case("header without colon", "GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", &[400]),
        case("space before colon", "GET /health HTTP/1.1\r\nHost : x\r\n\r\n", &[400]),
        case("NUL in header value", b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n".to_vec(), &[400]),
        case("CR alone in header", "GET /health HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", &[400]),
        case("obsolete line folding", "GET /health HTTP/1.1\r\nHost: x\r\nX: a\r\n  b\r\n\r\n", &[400]),
        case("huge header", format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"), &[431]),
        case("too many headers", format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n"), &[431]),
        case("empty header name", "GET /health HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", &[400]),
        case("invalid UTF-8 header value", b"GET /health HTTP/1.1\r\nHost: x\r\nX: \xff\xfe\r\n\r\n".to_vec(), &[200]),
        case("duplicated Host", "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", &[200, 400]),
        // Content-Length and Transfer-Encoding.
        case("two different lengths", "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", &[400]),
        case("length list", "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello", &[400]),
        case("negative length", "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", &[400]),
        case("plus-signed length", "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", &[400]),
        case("hex length", "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello", &[400]),
        case("overflowing length", "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", &[400]),
        case("length and chunked", "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &[400, 405]),
        case("unknown coding", "POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", &[400]),
        case("chunked not last", "POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", &[400]),
        case("bad chunk size", format!("POST /{echo}/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nxx\r\n0\r\n\r\n"), &[400, 0]),
        case("overflowing chunk size", format!("POST /{echo}/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\nxx\r\n0\r\n\r\n"), &[400, 413, 0]),
        case("chunk without CRLF", format!("POST /{echo}/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxxyy0\r\n\r\n"), &[400, 0]),
        case("declared body too large", format!("POST /{echo}/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n"), &[413]),
        case("streamed body too large", {
            let mut r = format!("POST /{echo}/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
            for _ in 0..3 {
                r.extend_from_slice(b"800\r\n");
                r.extend_from_slice(&[b'z'; 0x800]);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        }, &[413]),
        // Paths and methods.
        case("dot-dot before admin", "GET /x/../health HTTP/1.1\r\nHost: x\r\n\r\n", &[404]),
        case("encoded slash in admin path", format!("GET /services%2Fregister HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n"), &[404]),
        case("double slash", "GET //health HTTP/1.1\r\nHost: x\r\n\r\n", &[404]),
        case("trailing slash", "GET /health/ HTTP/1.1\r\nHost: x\r\n\r\n", &[404]),
        case("encoded dots", "GET /%2e%2e/health HTTP/1.1\r\nHost: x\r\n\r\n", &[404]),
        case("uuid-like but not", "GET /zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz/ping HTTP/1.1\r\nHost: x\r\n\r\n", &[404]),
        case("unknown service uuid", "GET /0b5d8a3e-9a51-4c4e-8f7a-2a1d1c9f0e77/ping HTTP/1.1\r\nHost: x\r\n\r\n", &[404]),
        case("absolute-form target", "GET http://elsewhere/health HTTP/1.1\r\nHost: x\r\n\r\n", &[200]),
        case("asterisk target", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", &[400, 404, 405]),
        case("CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", &[400, 404, 405]),
        case("wrong method", "DELETE /health HTTP/1.1\r\nHost: x\r\n\r\n", &[405]),
        case("custom method", "BREW /health HTTP/1.1\r\nHost: x\r\n\r\n", &[405]),
        // The admin API.
        case("no credentials", "GET /services HTTP/1.1\r\nHost: x\r\n\r\n", &[401]),
        case("credentials without colon", "GET /services HTTP/1.1\r\nHost: x\r\nAuthorization: Basic cm9vdA==\r\n\r\n", &[401]),
        case("huge credentials", format!("GET /services HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\n\r\n", "QUFB".repeat(3000)), &[401, 431]),
        case("invalid UTF-8 name", form_post(auth, "name=%FF%FE&type=ping"), &[400]),
        case("NUL in name", form_post(auth, "name=a%00b&type=ping"), &[400]),
        case("name too long", form_post(auth, &format!("name={}&type=ping", "n".repeat(64))), &[400]),
        case("unknown type", form_post(auth, "name=ok&type=%00"), &[404]),
        case("JSON bomb of nesting", {
            let deep = format!("{}{}", "[".repeat(2_000), "]".repeat(2_000));
            format!("POST /services/register HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{deep}", deep.len())
        }, &[400]),
        case("unsupported media type", format!("POST /services/register HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: text/xml\r\nContent-Length: 3\r\n\r\n<a>"), &[415]),
        case("bad uuid in path", format!("POST /services/%ZZ/start HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n"), &[400, 404]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_abusive_requests_get_the_right_answer() {
    let herve = TestHerve::start_with(|c| c.max_body_bytes = 4096).await;
    let echo = herve.running("e", "echo").await;
    let auth = basic(ADMIN_ID, ADMIN_SECRET);
    let cases = cases(&echo, &auth);
    assert!(cases.len() >= 50, "only {} cases", cases.len());
    let addr = herve.addr;
    let mut failures = Vec::new();
    for case in cases {
        let request = case.request.clone();
        let answer =
            tokio::task::spawn_blocking(move || raw_answer(addr, &request, Duration::from_secs(5)))
                .await
                .expect("join");
        let status = raw_status(&answer).unwrap_or(0);
        if !case.expect.contains(&status) {
            failures.push(format!(
                "{}: got {status}, want {:?}",
                case.name, case.expect
            ));
        }
        // The server is still there after each one.
        assert_eq!(
            herve.get("/health").await.status,
            200,
            "after {}",
            case.name
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // And nothing was registered by any of it.
    assert_eq!(herve.list().await.len(), 1);
    herve.stop().await;
}

#[tokio::test]
async fn repeated_admin_failures_are_refused_for_that_client_only() {
    let herve = TestHerve::start_with(|c| c.auth_max_failures = 5).await;
    // Missing credentials are not guesses.
    for _ in 0..10 {
        assert_eq!(herve.get("/services").await.status, 401);
    }
    for _ in 0..5 {
        let reply = herve
            .get_as("/services", Auth::Basic(ADMIN_ID, "guess"))
            .await;
        assert_eq!(reply.status, 401);
    }
    let refused = herve
        .get_as("/services", Auth::Basic(ADMIN_ID, "guess"))
        .await;
    assert_eq!(refused.status, 429);
    let wait: u64 = refused
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&wait));
    // Refused even with the right secret, from that address...
    assert_eq!(herve.admin_get("/services").await.status, 429);
    // ...but the admin elsewhere is not locked out.
    let elsewhere = HttpClient::from_local(herve.addr, IpAddr::from([127, 0, 0, 2]));
    assert_eq!(elsewhere.admin_get("/services").await.status, 200);
    // Service traffic and health are not throttled.
    assert_eq!(herve.get("/health").await.status, 200);
    let _ = (Method::GET, Bytes::new());
    herve.stop().await;
}

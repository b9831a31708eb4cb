//! HTTPS: the listener, certificates from files and uploads chosen by SNI and replaced
//! while connections stay open, HTTP/2, the redirect, hostile TLS clients, and proxies
//! to `https://` upstreams. Real TLS clients throughout: rustls under hyper, and curl.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Auth, BinHerve, TestHerve};
use crate::tls_client::{client_config, curl, handshake, presented, HttpsConnection, TestCa};
use crate::upstream_server::Upstream;

/// A Herve with an HTTPS port (and, with `default`, the default certificate from
/// files in `dir`).
async fn https_herve(
    dir: &std::path::Path,
    default: Option<&crate::tls_client::Issued>,
    tune: impl FnOnce(&mut herve::Config),
) -> TestHerve {
    let files = default.map(|issued| issued.write(dir));
    TestHerve::start_with(|config| {
        config.tls_port = Some(0);
        if let Some((cert, key)) = files {
            config.tls_cert = Some(cert);
            config.tls_key = Some(key);
        }
        tune(config);
    })
    .await
}

fn tls_port(herve: &TestHerve) -> u16 {
    herve.tls_addr.expect("an HTTPS listener").port()
}

pub(crate) async fn put_certificate(
    herve: &TestHerve,
    host: &str,
    body: &str,
) -> crate::support::Reply {
    herve
        .send(
            Method::PUT,
            &format!("/certificates/{host}"),
            Auth::Admin,
            &[("content-type", "application/x-pem-file")],
            body.to_owned(),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_certificate_serves_https_and_http2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Herve test CA");
    let issued = ca.issue(&["app.test", "*.app.test"]);
    let herve = https_herve(dir.path(), Some(&issued), |_| {}).await;
    let tls = herve.tls_addr.expect("tls");
    let ca_file = ca.write(dir.path());
    let resolve = format!("app.test:{}:127.0.0.1", tls.port());
    let url = format!("https://app.test:{}/health", tls.port());

    // curl, both protocols, verifying the chain and the name.
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (ok, out) = curl(&[
            flag,
            "--cacert",
            ca_file.to_str().expect("path"),
            "--resolve",
            &resolve,
            "-w",
            " %{http_version}",
            &url,
        ]);
        assert!(ok, "{out}");
        assert_eq!(
            out,
            format!("{{\"success\":true,\"message\":\"ok\"}} {version}")
        );
    }

    // A service over HTTP/2 and HTTP/1.1: bodies both ways, and the proxy tells its
    // upstream the request came over HTTPS.
    let upstream = Upstream::start("tls-up").await;
    herve
        .running_with(
            "site",
            "proxy",
            &[("upstream", &upstream.url()), ("hosts", "www.app.test")],
        )
        .await;
    let echo = herve.register_ok("echo", "echo").await;
    herve.start(&echo).await;
    let big = "x".repeat(300_000);
    for h2 in [true, false] {
        let mut connection = HttpsConnection::open(tls, "www.app.test", ca.roots(), h2).await;
        let expected = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        assert_eq!(connection.version, expected);
        assert_eq!(connection.certificate, issued.der);
        let (status, body) = connection.get("/echo").await;
        assert_eq!(status, StatusCode::OK);
        let seen: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
        assert_eq!(seen["headers"]["x-forwarded-host"], "www.app.test");
        let (status, _, body) = connection
            .request(Method::POST, "/echo", &[], big.clone())
            .await;
        assert_eq!(status, StatusCode::OK);
        let seen: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(seen["body"].as_str().map(str::len), Some(big.len()));
        // The echo service by uuid, on a name with no route of its own.
        let mut other = HttpsConnection::open(tls, "other.app.test", ca.roots(), h2).await;
        let (status, _, body) = other
            .request(Method::POST, &format!("/{echo}/echo"), &[], big.clone())
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), big.len());
    }
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_certificates_are_chosen_by_name_and_replaced_while_connections_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Herve test CA");
    // It names elsewhere.test too, so that the client can check it was presented.
    let default = ca.issue(&["default.test", "elsewhere.test"]);
    let (cert, key) = default.write(dir.path());
    let data = tempfile::tempdir().expect("tempdir");
    let with_tls = |config: &mut herve::Config| {
        config.tls_port = Some(0);
        config.tls_cert = Some(cert.clone());
        config.tls_key = Some(key.clone());
    };
    let herve = TestHerve::start_on_with(data.path(), with_tls).await;
    let tls = herve.tls_addr.expect("tls");

    let one = ca.issue(&["one.test"]);
    put_certificate(&herve, "one.test", &one.bundle())
        .await
        .expect(200, "The certificate has been stored.");
    let wild = ca.issue(&["*.two.test"]);
    put_certificate(&herve, "*.two.test", &wild.bundle())
        .await
        .expect(200, "The certificate has been stored.");

    let picked = |name: &'static str| {
        let roots = ca.roots();
        async move {
            let stream = handshake(tls, name, client_config(roots, &[b"http/1.1"]))
                .await
                .expect("handshake");
            presented(&stream)
        }
    };
    assert_eq!(picked("one.test").await, one.der);
    assert_eq!(picked("x.two.test").await, wild.der);
    assert_eq!(picked("elsewhere.test").await, default.der);

    // What is kept is listed, never with its key.
    let listed = herve.admin_get("/certificates").await;
    assert_eq!(listed.status, 200);
    assert!(!listed.text().contains("PRIVATE KEY"), "{}", listed.text());
    let entries = listed.json()["data"].as_array().expect("list").clone();
    let find = |host: Option<&str>| {
        entries
            .iter()
            .find(|entry| entry["host"].as_str() == host)
            .cloned()
            .unwrap_or_else(|| panic!("{host:?} listed: {entries:?}"))
    };
    assert_eq!(find(None)["source"], "file");
    assert_eq!(find(Some("one.test"))["source"], "upload");
    assert_eq!(find(Some("one.test"))["status"], "valid");
    assert_eq!(find(Some("one.test"))["issuer"], "CN=Herve test CA");
    assert!(find(Some("*.two.test"))["not_after"]
        .as_str()
        .is_some_and(|at| at.ends_with('Z')));

    // A new certificate for one.test: the next handshake gets it, and a connection
    // opened before keeps serving with the old one.
    let mut before = HttpsConnection::open(tls, "one.test", ca.roots(), false).await;
    assert_eq!(before.certificate, one.der);
    let renewed = ca.issue(&["one.test"]);
    put_certificate(&herve, "one.test", &renewed.bundle())
        .await
        .expect(200, "The certificate has been stored.");
    assert_eq!(picked("one.test").await, renewed.der);
    assert_eq!(before.get("/health").await.0, StatusCode::OK);

    // Removed: the default again; removed twice: 404.
    let removed = herve
        .send(
            Method::DELETE,
            "/certificates/one.test",
            Auth::Admin,
            &[],
            Bytes::new(),
        )
        .await;
    removed.expect(200, "The certificate has been removed.");
    let stream = handshake(tls, "one.test", client_config(ca.roots(), &[b"http/1.1"])).await;
    // The default does not name one.test: the client refuses it, having seen it.
    assert!(stream.is_err());
    herve
        .send(
            Method::DELETE,
            "/certificates/one.test",
            Auth::Admin,
            &[],
            Bytes::new(),
        )
        .await
        .expect(
            404,
            "No uploaded or ACME certificate is kept for this host.",
        );

    // Kept across a restart, in a database only Herve may read.
    let data_dir = herve.data_dir.clone();
    let mode = std::fs::metadata(data_dir.join("herve.db"))
        .expect("database")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the database is readable by others: {mode:o}"
    );
    herve.stop().await;
    let again = TestHerve::start_on_with(&data_dir, with_tls).await;
    let tls = again.tls_addr.expect("tls");
    let stream = handshake(tls, "a.two.test", client_config(ca.roots(), &[b"http/1.1"]))
        .await
        .expect("handshake");
    assert_eq!(presented(&stream), wild.der);
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_certificate_files_are_read_again_when_they_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Herve test CA");
    let first = ca.issue(&["files.test"]);
    let herve = https_herve(dir.path(), Some(&first), |_| {}).await;
    let tls = herve.tls_addr.expect("tls");
    let mut open = HttpsConnection::open(tls, "files.test", ca.roots(), true).await;
    assert_eq!(open.certificate, first.der);

    // Half a change (a key that does not match yet) is not served.
    let second = ca.issue(&["files.test"]);
    std::fs::write(dir.path().join("cert.pem"), &second.chain).expect("write");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stream = handshake(tls, "files.test", client_config(ca.roots(), &[b"h2"]))
        .await
        .expect("handshake");
    assert_eq!(presented(&stream), first.der);

    std::fs::write(dir.path().join("key.pem"), &second.key).expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stream = handshake(tls, "files.test", client_config(ca.roots(), &[b"h2"]))
            .await
            .expect("handshake");
        if presented(&stream) == second.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new files were not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(open.get("/health").await.0, StatusCode::OK);
    herve.stop().await;
}

#[tokio::test]
async fn bad_certificates_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Herve test CA");
    let herve = https_herve(dir.path(), None, |_| {}).await;
    let good = ca.issue(&["app.test"]);
    let other = ca.issue(&["app.test"]);
    let now = time::OffsetDateTime::now_utc();
    let expired = ca.issue_between(
        &["app.test"],
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    );
    let future = ca.issue_between(
        &["app.test"],
        now + time::Duration::days(2),
        now + time::Duration::days(30),
    );
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "app.test",
            "garbage".to_owned(),
            400,
            "The certificate is invalid: no PEM certificate",
        ),
        (
            "app.test",
            good.chain.clone(),
            400,
            "The certificate is invalid: no PEM private key",
        ),
        (
            "app.test",
            good.key.clone(),
            400,
            "The certificate is invalid: no PEM certificate",
        ),
        (
            "app.test",
            format!("{}{}", good.chain, other.key),
            400,
            "The certificate is invalid: the private key does not match the certificate.",
        ),
        (
            "app.test",
            expired.bundle(),
            400,
            "The certificate expired on ",
        ),
        (
            "app.test",
            future.bundle(),
            400,
            "The certificate is not valid before ",
        ),
        (
            "other.test",
            good.bundle(),
            400,
            "The certificate is not valid for other.test (it names app.test).",
        ),
        ("bad host", good.bundle(), 400, "The host is invalid: "),
        (
            "app.test",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_owned(),
            400,
            "The certificate is invalid: the PEM text is malformed",
        ),
        (
            "app.test",
            "x".repeat(100_000),
            413,
            "The upload is larger than 64 KiB",
        ),
    ];
    for (host, body, status, message) in cases {
        let reply = put_certificate(&herve, &host.replace(' ', "%20"), &body).await;
        assert_eq!(reply.status.as_u16(), status, "{host}: {}", reply.text());
        assert!(
            reply.message().starts_with(message),
            "{host}: {} (wanted {message})",
            reply.message()
        );
    }
    // Nothing was kept, and nothing is served without credentials.
    let listed = herve.admin_get("/certificates").await;
    assert_eq!(listed.json()["data"], serde_json::json!([]));
    let stranger = herve
        .send(
            Method::PUT,
            "/certificates/app.test",
            Auth::None,
            &[],
            good.bundle(),
        )
        .await;
    assert_eq!(stranger.status, 401);
    assert_eq!(herve.get("/certificates").await.status, 401);
    herve.stop().await;
}

/// Reads until the peer closes; how long that took, or `None` if it stayed open
/// for `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + within).into(), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tls_clients_get_a_clean_close_and_health_keeps_answering() {
    // The binary, so that Herve's sockets and the test's count against two limits.
    herve::host::raise_open_file_limit();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Herve test CA");
    // No default certificate: a name without one of its own fails the handshake.
    let herve = BinHerve::spawn(
        dir.path(),
        &[
            ("HERVE_TLS_PORT", "0"),
            ("HERVE_TLS_HANDSHAKE_TIMEOUT_S", "2"),
            ("HERVE_HEADER_TIMEOUT_S", "3"),
            ("HERVE_MAX_CONNECTIONS", "20000"),
            ("HERVE_MAX_CONNECTIONS_PER_IP", "20000"),
            ("HERVE_ACCESS_LOG", "false"),
        ],
    );
    let client = herve.client();
    let tls = herve.tls_addr.expect("tls");
    let known = ca.issue(&["known.test"]).bundle();
    client
        .send(
            Method::PUT,
            "/certificates/known.test",
            Auth::Admin,
            &[],
            known,
        )
        .await
        .expect(200, "The certificate has been stored.");

    // A name nobody has a certificate for: the handshake fails with an alert.
    let refused = handshake(tls, "unknown.test", client_config(ca.roots(), &[b"h2"])).await;
    assert!(
        refused.is_err(),
        "a handshake for an unknown name succeeded"
    );

    // Garbage, plain HTTP, and a handshake cut short: each connection is closed, the
    // last one by the handshake timeout.
    let mut garbage = tokio::net::TcpStream::connect(tls).await.expect("connect");
    garbage.write_all(&[0x42; 512]).await.expect("write");
    assert!(closed_within(&mut garbage, Duration::from_secs(5))
        .await
        .is_some());
    let mut plain = tokio::net::TcpStream::connect(tls).await.expect("connect");
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: known.test\r\n\r\n")
        .await
        .expect("write");
    assert!(closed_within(&mut plain, Duration::from_secs(5))
        .await
        .is_some());
    let mut truncated = tokio::net::TcpStream::connect(tls).await.expect("connect");
    // A TLS record header announcing a 512-byte ClientHello, then a few bytes of it.
    truncated
        .write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ])
        .await
        .expect("write");
    let took = closed_within(&mut truncated, Duration::from_secs(10))
        .await
        .expect("the truncated handshake was not closed");
    assert!(
        took >= Duration::from_millis(1500),
        "closed before the timeout: {took:?}"
    );

    // A client that completes the handshake, agrees on HTTP/2, then says nothing.
    let mut silent = handshake(tls, "known.test", client_config(ca.roots(), &[b"h2"]))
        .await
        .expect("handshake");
    let mut sink = [0u8; 1024];
    let ended = tokio::time::timeout(Duration::from_secs(40), async {
        // The server's SETTINGS come first; then, in time, the end.
        while let Ok(read) = silent.read(&mut sink).await {
            if read == 0 {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a silent HTTP/2 client stayed");

    // Ten thousand connections that never say a word: /health answers meanwhile, over
    // TLS too, and every one of them is closed by the handshake timeout.
    let mut idle = Vec::new();
    for _ in 0..10_000 {
        match tokio::net::TcpStream::connect(tls).await {
            Ok(stream) => idle.push(stream),
            Err(error) => panic!("connection {} refused: {error}", idle.len()),
        }
    }
    assert_eq!(client.get("/health").await.status, 200);
    let mut fresh = HttpsConnection::open(tls, "known.test", ca.roots(), true).await;
    assert_eq!(fresh.get("/health").await.0, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(30);
    for stream in &mut idle {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            closed_within(stream, left.max(Duration::from_millis(1)))
                .await
                .is_some(),
            "an idle TLS connection stayed open"
        );
    }
    drop(idle);
    assert_eq!(client.get("/health").await.status, 200);
}

#[tokio::test]
async fn the_plain_port_can_redirect_to_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Herve test CA");
    let herve = https_herve(dir.path(), Some(&ca.issue(&["app.test"])), |config| {
        config.tls_redirect = true;
    })
    .await;
    let port = tls_port(&herve);
    let reply = herve
        .send(
            Method::GET,
            "/some/page?x=1",
            Auth::None,
            &[("host", "app.test:8080")],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.header("location"),
        Some(format!("https://app.test:{port}/some/page?x=1").as_str())
    );
    // The admin API too; /health and ACME's HTTP-01 path are not redirected.
    let admin = herve.admin_get("/services").await;
    assert_eq!(admin.status, 308);
    assert_eq!(herve.get("/health").await.status, 200);
    let challenge = herve.get("/.well-known/acme-challenge/none").await;
    assert_ne!(challenge.status, 308);
    // Over HTTPS, nothing is redirected.
    let tls = herve.tls_addr.expect("tls");
    let mut connection = HttpsConnection::open(tls, "app.test", ca.roots(), false).await;
    let (status, _, _) = connection
        .request(
            Method::GET,
            "/services",
            &[("authorization", &crate::support::basic_admin())],
            Bytes::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    herve.stop().await;
}

/// An HTTPS server with `issued` as its certificate, answering every request with
/// its path.
async fn https_upstream(
    issued: &crate::tls_client::Issued,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let key: rustls::pki_types::PrivateKeyDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(issued.key.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![issued.der.clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|request: hyper::Request<_>| async move {
                    let path = request.uri().path().to_owned();
                    Ok::<_, Infallible>(hyper::Response::new(http_body_util::Full::new(
                        Bytes::from(format!("tls upstream {path}")),
                    )))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_reach_https_upstreams_verified_against_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Private CA");
    let (addr, task) = https_upstream(&ca.issue(&["localhost"])).await;
    let ca_file = ca.write(dir.path());
    // World-readable: the proxy reads it as Herve, but the test runs anywhere.
    std::fs::set_permissions(&ca_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let herve = TestHerve::start().await;
    let url = format!("https://localhost:{}", addr.port());

    herve
        .running_with(
            "secure",
            "proxy",
            &[
                ("upstream", &url),
                ("tls_ca", ca_file.to_str().expect("path")),
                ("health_path", "/health"),
                ("health_interval_ms", "200"),
            ],
        )
        .await;
    let reply = herve.get("/secure/hello").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "tls upstream /hello");
    // The active health check goes over TLS too.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let shown = herve.admin_get("/services").await.json();
    let runtime = &shown["data"][0]["runtime"];
    assert_eq!(runtime["upstreams"][0]["healthy"], true, "{shown}");
    assert_eq!(runtime["upstreams"][0]["url"], url);

    // Without the private CA, the public roots do not vouch for it: 502, said why.
    herve
        .running_with("public", "proxy", &[("upstream", &url)])
        .await;
    let refused = herve.get("/public/hello").await;
    assert_eq!(refused.status, 502);
    assert!(
        refused.text().contains("TLS handshake failed"),
        "{}",
        refused.text()
    );

    // A CA file that is not one, or for plain upstreams: refused at registration.
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    for (upstream, ca, message) in [
        (
            url.as_str(),
            not_pem.to_str().expect("path"),
            "The field 'tls_ca' is invalid: the CA file holds no PEM certificate.",
        ),
        (
            url.as_str(),
            "/nonexistent/ca.pem",
            "The field 'tls_ca' is invalid: cannot read '/nonexistent/ca.pem'",
        ),
        (
            "http://127.0.0.1:9",
            ca_file.to_str().expect("path"),
            "The field 'tls_ca' applies to https:// upstreams only.",
        ),
    ] {
        let reply = herve
            .post_form(
                "/services/register",
                &[
                    ("name", "bad-ca"),
                    ("type", "proxy"),
                    ("upstream", upstream),
                    ("tls_ca", ca),
                ],
            )
            .await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert!(reply.message().starts_with(message), "{}", reply.message());
    }
    task.abort();
    herve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_streams_and_upgrades_work_over_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Herve test CA");
    let herve = https_herve(dir.path(), Some(&ca.issue(&["app.test"])), |_| {}).await;
    let tls = herve.tls_addr.expect("tls");
    let www = tempfile::tempdir().expect("tempdir");
    let blob: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    std::fs::write(www.path().join("blob.bin"), &blob).expect("write");
    herve
        .running_with(
            "files",
            "static",
            &[("root", www.path().to_str().expect("path"))],
        )
        .await;
    let upstream = Upstream::start("streamer").await;
    herve
        .running_with("stream", "proxy", &[("upstream", &upstream.url())])
        .await;

    for h2 in [true, false] {
        let mut connection = HttpsConnection::open(tls, "app.test", ca.roots(), h2).await;
        let (status, body) = connection.get("/files/blob.bin").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.as_ref(), blob.as_slice());
        let (status, headers, body) = connection
            .request(
                Method::GET,
                "/files/blob.bin",
                &[("range", "bytes=10-19")],
                Bytes::new(),
            )
            .await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(headers["content-range"], "bytes 10-19/100000");
        assert_eq!(body.as_ref(), &blob[10..20]);
        // 8 MiB streamed from the upstream through the proxy.
        let (status, body) = connection.get("/stream/big?mb=8").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), 8 * 1024 * 1024);
    }

    // A protocol switch through the proxy, over TLS with HTTP/1.1.
    let mut stream = handshake(tls, "app.test", client_config(ca.roots(), &[b"http/1.1"]))
        .await
        .expect("handshake");
    stream
        .write_all(b"GET /stream/tunnel HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.expect("read head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream.write_all(b"ping over tls").await.expect("write");
    let mut echoed = [0u8; 13];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"ping over tls");
    herve.stop().await;
}

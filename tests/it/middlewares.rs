//! Per-service middlewares (protect, rate limits, CORS, compression, header rules, body
//! limits) on a `proxy`, a `process` and a user's own type, over real TCP, with a real
//! `auth` service's tokens and curl as the client that decodes compressed bodies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use herve::contract::{Fields, RunningService, ServiceContext, ServiceError, ServiceType};

use crate::support::*;

/// The text every mirror serves at `/text` (and the first 1000 bytes of at `/range`).
fn text_body() -> String {
    (0..600)
        .map(|i| format!("line {i}: the quick brown fox jumps over the lazy dog\n"))
        .collect()
}

/// What each subject answers, whatever runs it: `/headers` (the request's headers as
/// JSON, and an `X-Secret` response header), `/text`, `/range` (a 206), `POST /body`
/// (the body's length).
fn mirror_router() -> Router {
    Router::new()
        .route(
            "/headers",
            get(|headers: HeaderMap| async move {
                let seen: BTreeMap<String, String> = headers
                    .iter()
                    .map(|(name, value)| {
                        (
                            name.as_str().to_owned(),
                            value.to_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect();
                ([("x-secret", "1")], axum::Json(seen))
            }),
        )
        .route(
            "/text",
            get(|| async { ([("content-type", "text/plain; charset=utf-8")], text_body()) }),
        )
        .route(
            "/range",
            get(|| async {
                let text = text_body();
                (
                    StatusCode::PARTIAL_CONTENT,
                    [
                        ("content-type", "text/plain; charset=utf-8".to_owned()),
                        ("content-range", format!("bytes 0-999/{}", text.len())),
                    ],
                    text[..1000].to_owned(),
                )
            }),
        )
        .route(
            "/body",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
}

/// The same app as a program, for the `process` type.
const MIRROR_APP: &str = r#"
import http.server, json, os
TEXT = "".join("line %d: the quick brown fox jumps over the lazy dog\n" % i for i in range(600)).encode()
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, status, body, headers):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/headers":
            seen = {name.lower(): value for name, value in self.headers.items()}
            self.answer(200, json.dumps(seen).encode(), [("content-type", "application/json"), ("x-secret", "1")])
        elif self.path == "/text":
            self.answer(200, TEXT, [("content-type", "text/plain; charset=utf-8")])
        elif self.path == "/range":
            self.answer(206, TEXT[:1000], [("content-type", "text/plain; charset=utf-8"), ("content-range", "bytes 0-999/%d" % len(TEXT))])
        else:
            self.answer(404, b"", [])
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        self.answer(200, str(len(body)).encode(), [("content-type", "text/plain")])
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// A user's own type: the mirror, in process.
struct Mirror;

#[derive(Serialize, Deserialize)]
struct MirrorConfig {}

#[async_trait]
impl ServiceType for Mirror {
    type Config = MirrorConfig;

    fn name(&self) -> &str {
        "mirror"
    }

    fn description(&self) -> &str {
        "Answers with what it was asked"
    }

    async fn register(
        &self,
        _ctx: &ServiceContext,
        _fields: &Fields,
    ) -> Result<MirrorConfig, ServiceError> {
        Ok(MirrorConfig {})
    }

    async fn start(
        &self,
        _ctx: &ServiceContext,
        _config: &MirrorConfig,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        Ok(Box::new(mirror_router()))
    }
}

/// Serves the mirror on loopback, for the `proxy` type.
async fn mirror_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind mirror");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, mirror_router()).await;
    });
    addr
}

/// Writes the mirror program where `nobody` can read it (programs run as `nobody`
/// when the tests run as root, and Herve's data directory is closed to them): the
/// directory to keep, and the command.
fn mirror_program() -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path();
    let app_dir = dir.join("mirror-app");
    std::fs::create_dir_all(&app_dir).expect("app dir");
    let path = app_dir.join("app.py");
    std::fs::write(&path, MIRROR_APP).expect("write app");
    for dir in [dir, app_dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    (temp, format!("python3 {}", path.display()))
}

async fn register(herve: &HttpClient, fields: &[(&str, &str)]) -> Reply {
    herve.post_form("/services/register", fields).await
}

/// Signs `username` up with the `auth` service `accounts` and logs in: a token.
async fn token_for(herve: &HttpClient, username: &str) -> String {
    let form = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("username", username), ("password", "correct horse")])
        .finish();
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    let signup = herve
        .send(
            Method::POST,
            "/accounts/signup",
            Auth::None,
            &headers,
            form.clone(),
        )
        .await;
    assert!(
        signup.status == 201 || signup.status == 409,
        "{}",
        signup.text()
    );
    let login = herve
        .send(Method::POST, "/accounts/login", Auth::None, &headers, form)
        .await;
    assert_eq!(login.status, 200, "{}", login.text());
    login.json()["data"]["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

async fn get_with(
    herve: &HttpClient,
    path: &str,
    auth: Auth<'_>,
    headers: &[(&str, &str)],
) -> Reply {
    herve
        .send(Method::GET, path, auth, headers, Bytes::new())
        .await
}

/// Fetches `url` with curl, letting it decode what `encoding` compressed: the
/// response headers (lowercase) and the decoded body.
async fn curl(url: String, authorization: String, encoding: &'static str) -> (String, Vec<u8>) {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().expect("tempdir");
        let (head, body) = (dir.path().join("head"), dir.path().join("body"));
        let status = std::process::Command::new("curl")
            .args(["-s", "--compressed", "-D"])
            .arg(&head)
            .arg("-o")
            .arg(&body)
            .args(["-H", &format!("authorization: {authorization}")])
            .args(["-H", &format!("accept-encoding: {encoding}")])
            .arg(&url)
            .status()
            .expect("curl runs");
        assert!(status.success(), "curl {url}: {status}");
        (
            std::fs::read_to_string(head)
                .expect("headers")
                .to_ascii_lowercase(),
            std::fs::read(body).expect("body"),
        )
    })
    .await
    .expect("curl task")
}

/// Registers `name` with `type_fields` and every middleware, and checks each of them
/// over real TCP.
async fn exercise(herve: &HttpClient, name: &str, type_fields: &[(&str, &str)]) {
    let mut fields = vec![("name", name)];
    fields.extend_from_slice(type_fields);
    fields.extend_from_slice(&[
        ("protect", "auth:accounts"),
        ("rate_limit", "1000/s"),
        ("cors_origins", "https://app.example"),
        ("cors_methods", "GET, POST"),
        ("cors_headers", "authorization"),
        ("cors_max_age", "600"),
        ("compress", "true"),
        ("request_headers", "X-From-Herve: yes\n-X-Drop-Me"),
        ("response_headers", "X-Frame-Options: DENY\n-X-Secret"),
        ("max_body_bytes", "1000"),
    ]);
    let reply = register(herve, &fields).await;
    reply.expect(201, "The service has been successfully registered.");
    let uuid = reply.json()["data"]["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    herve
        .start(&uuid)
        .await
        .expect(200, "The service has successfully started.");
    let at = |path: &str| format!("/{name}{path}");

    // Protection: no token, a made-up one, then a real one.
    let anonymous = herve.get(&at("/headers")).await;
    assert_eq!(anonymous.status, 401, "{name}: {}", anonymous.text());
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    let made_up = get_with(herve, &at("/headers"), Auth::Raw("Bearer not-a-token"), &[]).await;
    assert_eq!(made_up.status, 401, "{name}");
    let user = format!("user-of-{name}");
    let token = token_for(herve, &user).await;
    let bearer = format!("Bearer {token}");
    let seen = get_with(
        herve,
        &at("/headers"),
        Auth::Raw(&bearer),
        &[("x-herve-user", "root"), ("x-drop-me", "1")],
    )
    .await;
    assert_eq!(seen.status, 200, "{name}: {}", seen.text());
    let headers = seen.json();
    // The spoofed user is gone; the real one is told, and the request rules ran.
    assert_eq!(headers["x-herve-user"], user.as_str(), "{name}: {headers}");
    assert_eq!(headers["x-from-herve"], "yes", "{name}: {headers}");
    assert!(headers.get("x-drop-me").is_none(), "{name}: {headers}");
    // Response rules.
    assert_eq!(seen.header("x-frame-options"), Some("DENY"), "{name}");
    assert_eq!(seen.header("x-secret"), None, "{name}");

    // CORS: a preflight needs no token; a simple request gets its origin allowed, a
    // stranger's does not.
    let preflight = herve
        .send(
            Method::OPTIONS,
            &at("/headers"),
            Auth::None,
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(preflight.status, 204, "{name}: {}", preflight.text());
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let methods = preflight
        .header("access-control-allow-methods")
        .unwrap_or_default();
    assert!(methods.contains("POST"), "{name}: {methods}");
    assert_eq!(
        preflight
            .header("access-control-allow-headers")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("authorization")
    );
    assert_eq!(preflight.header("access-control-max-age"), Some("600"));
    let simple = get_with(
        herve,
        &at("/headers"),
        Auth::Raw(&bearer),
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(simple.status, 200);
    assert_eq!(
        simple.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let stranger = get_with(
        herve,
        &at("/headers"),
        Auth::Raw(&bearer),
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(stranger.header("access-control-allow-origin"), None);

    // Compression, decoded by curl, byte for byte what the service sent.
    let url = format!("http://{}{}", herve.addr, at("/text"));
    let (identity_head, identity) = curl(url.clone(), bearer.clone(), "identity").await;
    assert!(
        !identity_head.contains("content-encoding"),
        "{identity_head}"
    );
    assert_eq!(identity, text_body().as_bytes(), "{name}");
    for encoding in ["gzip", "br"] {
        let (head, decoded) = curl(url.clone(), bearer.clone(), encoding).await;
        assert!(
            head.contains(&format!("content-encoding: {encoding}")),
            "{name} {encoding}: {head}"
        );
        assert!(head.contains("vary: "), "{name}: {head}");
        assert_eq!(decoded, identity, "{name} {encoding}");
    }
    // Never a range.
    let range = get_with(
        herve,
        &at("/range"),
        Auth::Raw(&bearer),
        &[("accept-encoding", "gzip, br")],
    )
    .await;
    assert_eq!(range.status, 206, "{name}");
    assert_eq!(range.header("content-encoding"), None, "{name}");
    assert_eq!(range.body.len(), 1000, "{name}");

    // The service's own body limit, below Herve's.
    for (size, status) in [(1000, 200), (1001, 413)] {
        let reply = herve
            .send(
                Method::POST,
                &at("/body"),
                Auth::Raw(&bearer),
                &[("content-type", "text/plain")],
                vec![b'x'; size],
            )
            .await;
        assert_eq!(reply.status, status, "{name}: {size} bytes");
    }

    // Logout: the token is refused within a second.
    let logout = herve
        .send(
            Method::POST,
            "/accounts/logout",
            Auth::Raw(&bearer),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(logout.status, 200, "{}", logout.text());
    let logged_out = Instant::now();
    loop {
        let reply = get_with(herve, &at("/headers"), Auth::Raw(&bearer), &[]).await;
        if reply.status == 401 {
            break;
        }
        assert_eq!(reply.status, 200);
        assert!(
            logged_out.elapsed() < Duration::from_secs(1),
            "{name}: a revoked token still works after a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(logged_out.elapsed() < Duration::from_secs(1));

    // A tight rate limit by PATCH: per user, 429 with Retry-After, then recovery.
    herve
        .patch(&uuid, &[("rate_limit", "2/s"), ("burst", "2")])
        .await
        .expect(200, "The service has been successfully updated.");
    let token = token_for(herve, &user).await;
    let bearer = format!("Bearer {token}");
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let reply = get_with(herve, &at("/headers"), Auth::Raw(&bearer), &[]).await;
        if reply.status == 429 {
            retry_after = reply.header("retry-after").map(str::to_owned);
        }
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(&statuses[..2], [200, 200], "{name}: {statuses:?}");
    assert!(statuses[2..].contains(&429), "{name}: {statuses:?}");
    let wait: u64 = retry_after
        .expect("Retry-After on a 429")
        .parse()
        .expect("whole seconds");
    assert!((1..=2).contains(&wait), "{name}: Retry-After {wait}");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let recovered = get_with(herve, &at("/headers"), Auth::Raw(&bearer), &[]).await;
    assert_eq!(recovered.status, 200, "{name}: no recovery");

    // Basic credentials, hashed: the user is told to the service too.
    let hash = bcrypt::hash("open sesame", 4).expect("hash");
    herve
        .patch(
            &uuid,
            &[
                ("protect", "basic"),
                ("basic_users", &format!("ann:{hash}")),
                ("rate_limit", ""),
                ("burst", ""),
            ],
        )
        .await
        .expect(200, "The service has been successfully updated.");
    let challenge = herve.get(&at("/headers")).await;
    assert_eq!(challenge.status, 401);
    assert!(challenge
        .header("www-authenticate")
        .is_some_and(|value| value.starts_with("Basic realm=")));
    let wrong = get_with(
        herve,
        &at("/headers"),
        Auth::Basic("ann", "open sesam"),
        &[],
    )
    .await;
    assert_eq!(wrong.status, 401);
    for _ in 0..2 {
        // The second time from the remembered digest.
        let right = get_with(
            herve,
            &at("/headers"),
            Auth::Basic("ann", "open sesame"),
            &[("x-herve-user", "root")],
        )
        .await;
        assert_eq!(right.status, 200, "{name}: {}", right.text());
        assert_eq!(right.json()["x-herve-user"], "ann");
    }
}

#[tokio::test]
async fn every_middleware_on_a_proxy_a_process_and_a_custom_type() {
    let herve = TestHerve::start_built(|_| {}, |builder| builder.service_type(Mirror)).await;
    herve.running("accounts", "auth").await;
    let upstream = mirror_upstream().await;
    let (_app_dir, program) = mirror_program();
    let proxy_fields = [
        ("type", "proxy"),
        ("upstream", &format!("http://{upstream}")),
    ];
    let process_fields = [("type", "process"), ("command", program.as_str())];
    let custom_fields = [("type", "mirror")];
    tokio::join!(
        exercise(&herve, "via-proxy", &proxy_fields),
        exercise(&herve, "via-process", &process_fields),
        exercise(&herve, "via-custom", &custom_fields),
    );
    herve.stop().await;
}

#[tokio::test]
async fn middleware_fields_are_checked() {
    let herve = TestHerve::start().await;
    herve.running("accounts", "auth").await;
    for (fields, message) in [
        (
            vec![("protect", "auth:nobody")],
            "The field 'protect' names no service: there is no auth service 'nobody'.",
        ),
        (
            vec![("protect", "basic"), ("basic_users", "ann:clear-secret")],
            "The secret of 'ann' in 'basic_users' must be a bcrypt or argon2 hash (make one \
             with `herve hash-secret`): it is neither a bcrypt ($2b$…) nor an argon2 \
             ($argon2id$…) hash.",
        ),
        (
            vec![("rate_limit", "fast")],
            "The field 'rate_limit' must be a count per unit, like 100/s, 6000/min or \
             10000/h (a count from 1 to 1000000); 'fast' is not.",
        ),
        (
            vec![("cors_origins", "*"), ("cors_credentials", "true")],
            "The field 'cors_origins' cannot be '*' with cors_credentials=true; list them.",
        ),
        (
            vec![("response_headers", "Content-Length: 3")],
            "The field 'response_headers' has an invalid rule 'Content-Length: 3': \
             'content-length' is managed by Herve.",
        ),
        (
            vec![("compress", "maybe")],
            "The field 'compress' must be true or false.",
        ),
        (
            vec![("max_body_bytes", "0")],
            "The field 'max_body_bytes' must be a whole number of bytes above 0.",
        ),
    ] {
        let mut all = vec![("name", "guarded"), ("type", "echo")];
        all.extend(fields);
        register(&herve, &all).await.expect(400, message);
    }
    // A service cannot be protected by itself.
    let accounts = herve.list().await[0]["uuid"]
        .as_str()
        .expect("uuid")
        .to_owned();
    herve
        .patch(&accounts, &[("protect", "auth:accounts")])
        .await
        .expect(400, "A service cannot be protected by itself.");
    // Nothing of the refused ones was kept.
    assert_eq!(herve.list().await.len(), 1);
    herve.stop().await;
}

#[tokio::test]
async fn a_protected_service_refuses_while_its_auth_service_is_stopped() {
    let herve = TestHerve::start().await;
    let accounts = herve.running("accounts", "auth").await;
    let token = token_for(&herve, "ann").await;
    herve
        .running_with("guarded", "ping", &[("protect", "auth:accounts")])
        .await;
    let bearer = format!("Bearer {token}");
    let ok = get_with(&herve, "/guarded/ping", Auth::Raw(&bearer), &[]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    herve
        .stop_service(&accounts)
        .await
        .expect(200, "The service has successfully stopped.");
    // Past the cache, the guard fails closed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let refused = get_with(&herve, "/guarded/ping", Auth::Raw(&bearer), &[]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(
        refused.text(),
        "The auth service that protects this service is not running.\n"
    );
    herve.stop().await;
}

#[tokio::test]
async fn middlewares_added_by_patch_to_a_service_under_load_drop_nothing() {
    let herve = TestHerve::start().await;
    let upstream = mirror_upstream().await;
    let uuid = herve
        .running_with(
            "site",
            "proxy",
            &[("upstream", &format!("http://{upstream}"))],
        )
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed, marked) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut load = Vec::new();
    for _ in 0..4 {
        let client = HttpClient::new(herve.addr);
        let (stop, done, failed, marked) = (
            Arc::clone(&stop),
            Arc::clone(&done),
            Arc::clone(&failed),
            Arc::clone(&marked),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let reply = client.get("/site/text").await;
                if reply.status != 200 || reply.body != text_body().as_bytes() {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                if reply.header("x-frame-options") == Some("DENY") {
                    marked.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    herve
        .patch(
            &uuid,
            &[
                ("response_headers", "X-Frame-Options: DENY"),
                ("compress", "true"),
                ("rate_limit", "100000/s"),
                ("cors_origins", "*"),
            ],
        )
        .await
        .expect(200, "The service has been successfully updated.");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.expect("load task");
    }
    assert!(done.load(Ordering::SeqCst) > 20, "too little load to tell");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during the edit"
    );
    assert!(
        marked.load(Ordering::SeqCst) > 0,
        "the edit never took effect"
    );
    // The service was not restarted for it.
    let view = herve.admin_get(&format!("/services/{uuid}")).await;
    assert_eq!(view.json()["data"]["status"], "running");
    herve.stop().await;
}

#[tokio::test]
async fn a_static_site_serves_precompressed_siblings() {
    use std::os::unix::fs::PermissionsExt;
    let herve = TestHerve::start().await;
    let site = tempfile::tempdir().expect("site");
    std::fs::set_permissions(site.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let script = "console.log('hello');\n".repeat(100);
    std::fs::write(site.path().join("app.js"), &script).expect("write");
    // Siblings with a marker each, so that the test tells which one was served.
    std::fs::write(site.path().join("app.js.gz"), b"gzip bytes").expect("write");
    std::fs::write(site.path().join("app.js.br"), b"brotli bytes").expect("write");
    herve
        .running_with(
            "site",
            "static",
            &[("root", site.path().to_str().expect("utf-8"))],
        )
        .await;
    for (accept, body, encoding) in [
        ("gzip, br", "brotli bytes", Some("br")),
        ("gzip", "gzip bytes", Some("gzip")),
        ("br;q=0, gzip", "gzip bytes", Some("gzip")),
        ("identity", script.as_str(), None),
    ] {
        let reply = get_with(
            &herve,
            "/site/app.js",
            Auth::None,
            &[("accept-encoding", accept)],
        )
        .await;
        assert_eq!(reply.status, 200, "{accept}");
        assert_eq!(reply.text(), body, "{accept}");
        assert_eq!(reply.header("content-encoding"), encoding, "{accept}");
        assert!(
            reply
                .header("content-type")
                .is_some_and(|t| t.contains("javascript")),
            "{accept}: {:?}",
            reply.header("content-type")
        );
    }
    // A range is of the file itself.
    let range = get_with(
        &herve,
        "/site/app.js",
        Auth::None,
        &[("accept-encoding", "br"), ("range", "bytes=0-6")],
    )
    .await;
    assert_eq!(range.status, 206);
    assert_eq!(range.text(), "console");
    herve.stop().await;
}

#[tokio::test]
async fn the_final_status_is_counted_and_middlewares_survive_a_restart() {
    let data = tempfile::tempdir().expect("data dir");
    let herve = TestHerve::start_on(data.path()).await;
    let hash = bcrypt::hash("open sesame", 4).expect("hash");
    herve
        .running_with(
            "guarded",
            "ping",
            &[
                ("protect", "basic"),
                ("basic_users", &format!("ann:{hash}")),
                ("response_headers", "X-Guarded: yes"),
            ],
        )
        .await;
    assert_eq!(herve.get("/guarded/ping").await.status, 401);
    let metrics = herve.admin_get("/metrics").await.text();
    assert!(
        metrics.lines().any(|line| line
            .starts_with(r#"herve_requests_total{service="guarded",method="GET",class="4xx"} 1"#)),
        "{metrics}"
    );
    herve.stop().await;

    let herve = TestHerve::start_on(data.path()).await;
    assert_eq!(herve.get("/guarded/ping").await.status, 401);
    let allowed = get_with(
        &herve,
        "/guarded/ping",
        Auth::Basic("ann", "open sesame"),
        &[],
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.header("x-guarded"), Some("yes"));
    herve.stop().await;
}

#[tokio::test]
async fn a_services_file_may_protect_a_service_by_an_auth_service_declared_after_it() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("herve.toml");
    std::fs::write(
        &file,
        r#"
[[service]]
name = "site"
type = "ping"
protect = "auth:accounts"
rate_limit = "100/s"

[[service]]
name = "accounts"
type = "auth"
"#,
    )
    .expect("write manifest");
    let herve = TestHerve::start_with(|config| config.services_file = Some(file.clone())).await;
    assert_eq!(herve.get("/site/ping").await.status, 401);
    let token = token_for(&herve, "ann").await;
    let bearer = format!("Bearer {token}");
    let ok = get_with(&herve, "/site/ping", Auth::Raw(&bearer), &[]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    herve.stop().await;
}

#[tokio::test]
async fn bad_credentials_throttle_the_guessing_not_the_users_already_in() {
    let herve = TestHerve::start().await;
    let hash = bcrypt::hash("open sesame", 4).expect("hash");
    herve
        .running_with(
            "guarded",
            "ping",
            &[
                ("protect", "basic"),
                ("basic_users", &format!("ann:{hash}")),
            ],
        )
        .await;
    let right = || {
        get_with(
            &herve,
            "/guarded/ping",
            Auth::Basic("ann", "open sesame"),
            &[],
        )
    };
    assert_eq!(right().await.status, 200);
    for _ in 0..20 {
        let wrong = get_with(&herve, "/guarded/ping", Auth::Basic("ann", "guess"), &[]).await;
        assert_eq!(wrong.status, 401);
    }
    let throttled = get_with(&herve, "/guarded/ping", Auth::Basic("ann", "guess"), &[]).await;
    assert_eq!(throttled.status, 429);
    assert!(throttled.header("retry-after").is_some());
    // No more hashes for this address, but credentials that passed before still do.
    assert_eq!(right().await.status, 200);
    herve.stop().await;
}

#[tokio::test]
async fn a_large_streamed_file_is_compressed_whole() {
    use std::os::unix::fs::PermissionsExt;
    let herve = TestHerve::start().await;
    let site = tempfile::tempdir().expect("site");
    std::fs::set_permissions(site.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Many chunks of the static type's stream, and text that does not compress to nothing.
    let text: String = (0..40_000u64)
        .map(|i| format!("{:x} ", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    std::fs::write(site.path().join("big.txt"), &text).expect("write");
    herve
        .running_with(
            "site",
            "static",
            &[
                ("root", site.path().to_str().expect("utf-8")),
                ("compress", "true"),
            ],
        )
        .await;
    let url = format!("http://{}/site/big.txt", herve.addr);
    for encoding in ["gzip", "br"] {
        let (head, decoded) = curl(url.clone(), "Basic none".to_owned(), encoding).await;
        assert!(
            head.contains(&format!("content-encoding: {encoding}")),
            "{head}"
        );
        assert_eq!(decoded.len(), text.len(), "{encoding}: cut short");
        assert!(decoded == text.as_bytes(), "{encoding}: not the file");
    }
    herve.stop().await;
}

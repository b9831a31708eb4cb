//! Test support: a real Herve on an ephemeral port (in process or as the binary), an
//! HTTP client, and raw TCP for requests no well-behaved client would send.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub const ADMIN_ID: &str = "root";
pub const ADMIN_SECRET: &str = "test-secret-0123";

/// The `Authorization` value of the test admin.
pub fn basic_admin() -> String {
    basic(ADMIN_ID, ADMIN_SECRET)
}

/// A Herve running inside the test process.
pub struct TestHerve {
    pub addr: SocketAddr,
    /// The HTTPS listener's address, when it has one.
    pub tls_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub client: HttpClient,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Test defaults: loopback, ephemeral port, fixed credentials, no access log noise.
pub fn test_config(data_dir: &Path) -> herve::Config {
    herve::Config {
        port: 0,
        host: [127, 0, 0, 1].into(),
        auth_admin_id: Some(ADMIN_ID.to_owned()),
        auth_admin_secret: Some(ADMIN_SECRET.to_owned()),
        data_dir: data_dir.to_path_buf(),
        access_log: herve::AccessLog::Off,
        // Tests send many wrong credentials on purpose; the throttle has its own test.
        auth_max_failures: 100_000,
        ..herve::Config::default()
    }
}

impl TestHerve {
    pub async fn start() -> TestHerve {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut herve::Config)) -> TestHerve {
        Self::start_built(tune, |builder| builder).await
    }

    /// Starts a Herve whose builder `extend` may add service types.
    pub async fn start_built(
        tune: impl FnOnce(&mut herve::Config),
        extend: impl FnOnce(herve::HerveBuilder) -> herve::HerveBuilder,
    ) -> TestHerve {
        let temp = tempfile::tempdir().expect("tempdir");
        let data_dir = temp.path().to_path_buf();
        Self::start_at(data_dir, Some(temp), tune, extend).await
    }

    /// Starts a Herve on `data_dir`, which outlives it (for restarts).
    pub async fn start_on(data_dir: &Path) -> TestHerve {
        Self::start_at(data_dir.to_path_buf(), None, |_| {}, |builder| builder).await
    }

    /// Starts a Herve on `data_dir` (which outlives it) with settings of its own.
    pub async fn start_on_with(
        data_dir: &Path,
        tune: impl FnOnce(&mut herve::Config),
    ) -> TestHerve {
        Self::start_at(data_dir.to_path_buf(), None, tune, |builder| builder).await
    }

    async fn start_at(
        data_dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        tune: impl FnOnce(&mut herve::Config),
        extend: impl FnOnce(herve::HerveBuilder) -> herve::HerveBuilder,
    ) -> TestHerve {
        let mut config = test_config(&data_dir);
        tune(&mut config);
        let herve = extend(herve::HerveBuilder::new(config))
            .bind()
            .await
            .expect("herve starts");
        let addr = herve.local_addr();
        let tls_addr = herve.tls_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(herve.serve(async move {
            let _ = rx.await;
        }));
        TestHerve {
            addr,
            tls_addr,
            data_dir,
            _temp: temp,
            client: HttpClient::new(addr),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Shuts down gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("herve shuts down in time")
                .expect("serve task");
        }
    }
}

impl std::ops::Deref for TestHerve {
    type Target = HttpClient;
    fn deref(&self) -> &HttpClient {
        &self.client
    }
}

/// An answer, fully read.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Asserts the status and the exact envelope message.
    #[track_caller]
    pub fn expect(&self, status: u16, message: &str) -> &Self {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(self.message(), message, "body: {}", self.text());
        self
    }
}

/// Credentials to send with a request.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    Admin,
    None,
    Basic(&'a str, &'a str),
    Raw(&'a str),
}

#[derive(Clone)]
pub struct HttpClient {
    pub addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub fn basic(id: &str, secret: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    format!("Basic {encoded}")
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> Self {
        HttpClient {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A client whose connections come from `local` (any 127.x address works).
    pub fn from_local(addr: SocketAddr, local: std::net::IpAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(local));
        HttpClient {
            addr,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        let authorization = match auth {
            Auth::Admin => Some(basic(ADMIN_ID, ADMIN_SECRET)),
            Auth::None => None,
            Auth::Basic(id, secret) => Some(basic(id, secret)),
            Auth::Raw(value) => Some(value.to_owned()),
        };
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body.into())).expect("valid request");
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .expect("answer in time")
            .expect("request sent");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body read").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// An admin POST of a form to a server that may die meanwhile: `None` when no
    /// whole answer came.
    pub async fn try_post_form(&self, path: &str, fields: &[(&str, &str)]) -> Option<Reply> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}{}", self.addr, path))
            .header("authorization", basic(ADMIN_ID, ADMIN_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .ok()?;
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .ok()?
            .ok()?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// An admin GET whose body streams: its content type and its first `events`
    /// blank-line-separated chunks, as lines (the connection is then dropped).
    pub async fn stream_lines(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        events: usize,
    ) -> (Option<String>, Vec<String>) {
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(format!("http://{}{}", self.addr, path))
            .header("authorization", basic_admin());
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .expect("answer in time")
            .expect("request sent");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = response.into_body();
        let mut text = String::new();
        while text.matches("\n\n").count() < events {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("a frame in time")
                .expect("more body")
                .expect("frame");
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
        (content_type, text.lines().map(str::to_owned).collect())
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, Auth::None, &[], Bytes::new())
            .await
    }

    pub async fn get_as(&self, path: &str, auth: Auth<'_>) -> Reply {
        self.send(Method::GET, path, auth, &[], Bytes::new()).await
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, Auth::Admin, &[], Bytes::new())
            .await
    }

    pub async fn admin_post(&self, path: &str) -> Reply {
        self.send(Method::POST, path, Auth::Admin, &[], Bytes::new())
            .await
    }

    /// POSTs a urlencoded form with admin credentials.
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.send(
            Method::POST,
            path,
            Auth::Admin,
            &[("content-type", "application/x-www-form-urlencoded")],
            body,
        )
        .await
    }

    /// `PATCH /services/{uuid}` with a urlencoded form, as the admin.
    pub async fn patch(&self, uuid: &str, fields: &[(&str, &str)]) -> Reply {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.send(
            Method::PATCH,
            &format!("/services/{uuid}"),
            Auth::Admin,
            &[("content-type", "application/x-www-form-urlencoded")],
            body,
        )
        .await
    }

    pub async fn register(&self, name: &str, type_name: &str) -> Reply {
        self.post_form("/services/register", &[("name", name), ("type", type_name)])
            .await
    }

    /// Registers a service and returns its uuid; panics unless it is a 201.
    pub async fn register_ok(&self, name: &str, type_name: &str) -> String {
        let reply = self.register(name, type_name).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()["data"]["uuid"]
            .as_str()
            .expect("uuid")
            .to_owned()
    }

    pub async fn start(&self, uuid: &str) -> Reply {
        self.admin_post(&format!("/services/{uuid}/start")).await
    }

    pub async fn stop_service(&self, uuid: &str) -> Reply {
        self.admin_post(&format!("/services/{uuid}/stop")).await
    }

    pub async fn unregister(&self, uuid: &str) -> Reply {
        self.admin_post(&format!("/services/{uuid}/unregister"))
            .await
    }

    /// Registers and starts a service.
    pub async fn running(&self, name: &str, type_name: &str) -> String {
        let uuid = self.register_ok(name, type_name).await;
        self.start(&uuid)
            .await
            .expect(200, "The service has successfully started.");
        uuid
    }

    /// Registers a service of `type_name` with type-specific `fields`, starts it, and
    /// returns its uuid; panics unless both succeed.
    pub async fn running_with(
        &self,
        name: &str,
        type_name: &str,
        fields: &[(&str, &str)],
    ) -> String {
        let mut all = vec![("name", name), ("type", type_name)];
        all.extend_from_slice(fields);
        let reply = self.post_form("/services/register", &all).await;
        reply.expect(201, "The service has been successfully registered.");
        let uuid = reply.json()["data"]["uuid"]
            .as_str()
            .expect("uuid")
            .to_owned();
        self.start(&uuid)
            .await
            .expect(200, "The service has successfully started.");
        uuid
    }

    /// The listing's `data` array.
    pub async fn list(&self) -> Vec<Value> {
        let reply = self.admin_get("/services").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()["data"].as_array().expect("data array").clone()
    }
}

/// Sends raw bytes on a new connection and reads until the server closes it or
/// `wait` passes. Returns what was read.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(wait)).expect("timeout");
    // The server may answer and close before it has read everything: ignore write
    // errors, what matters is the answer.
    let _ = stream.write_all(request);
    read_until_close(&mut stream, wait)
}

pub fn read_until_close(stream: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        // Never block past the deadline, whatever the caller set on the stream.
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break
            }
            Err(_) => break,
        }
    }
    out
}

/// Sends raw bytes on a new connection and reads one answer: its head, and its body
/// by `Content-Length`; or what came before the server closed or `wait` passed.
pub fn raw_answer(addr: SocketAddr, request: &[u8], wait: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let _ = stream.write_all(request);
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if out.len() >= end + 4 + length {
                break;
            }
        }
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// A `POST path` whose body is `chunks` chunks of `size` bytes, chunked, with
/// `Connection: close`.
pub fn chunked_request(path: &str, chunks: usize, size: usize) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..chunks {
        request.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        request.extend(std::iter::repeat_n(b'z', size));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

/// The status code of the first response in raw bytes.
pub fn raw_status(response: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(response);
    let line = text.lines().next()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The `herve` binary, running in its own data directory.
pub struct BinHerve {
    pub child: Child,
    pub addr: SocketAddr,
    /// The HTTPS listener's address, when it has one.
    pub tls_addr: Option<SocketAddr>,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
}

pub fn herve_command(data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herve"));
    command
        .current_dir(data_dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PORT", "0")
        .env("HERVE_HOST", "127.0.0.1")
        .env("HERVE_DATA_DIR", data_dir.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

impl BinHerve {
    /// Starts the binary with admin credentials and waits until it listens.
    pub fn spawn(dir: &Path, extra_env: &[(&str, &str)]) -> BinHerve {
        let mut command = herve_command(dir);
        command
            .env("AUTH_ADMIN_ID", ADMIN_ID)
            .env("AUTH_ADMIN_SECRET", ADMIN_SECRET);
        for (key, value) in extra_env {
            command.env(key, value);
        }
        Self::spawn_command(command)
    }

    pub fn spawn_command(mut command: Command) -> BinHerve {
        let mut child = command.spawn().expect("spawn herve");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let sink = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // The line is kept before the address is announced, so that a test that
                // has been told the address also sees the line in `stdout()`.
                {
                    let mut sink = sink.lock().expect("lock");
                    sink.push_str(&line);
                    sink.push('\n');
                }
                if let Some(rest) = line.split("listens on http://").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let tls = rest
                        .split("and https://")
                        .nth(1)
                        .and_then(|tls| tls.split_whitespace().next())
                        .map(str::to_owned);
                    let _ = addr_tx.send((addr, tls));
                }
            }
        });
        let err = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut sink = sink.lock().expect("lock");
                sink.push_str(&line);
                sink.push('\n');
            }
        });
        let (addr, tls_addr) = match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok((addr, tls)) => (
                addr.parse().expect("listen address"),
                tls.map(|tls| tls.parse().expect("HTTPS address")),
            ),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "herve did not start; stdout: {} stderr: {}",
                    stdout.lock().expect("lock"),
                    stderr.lock().expect("lock")
                );
            }
        };
        BinHerve {
            child,
            addr,
            tls_addr,
            stdout,
            stderr,
        }
    }

    pub fn client(&self) -> HttpClient {
        HttpClient::new(self.addr)
    }

    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "herve did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }

    /// Standard output once `ready` holds for it, or as it is after `within`: log lines
    /// reach the pipe from Herve's writer thread, a moment after the event they record.
    pub fn stdout_when(&self, within: Duration, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let out = self.stdout();
            if ready(&out) || Instant::now() >= deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for BinHerve {
    /// Stops Herve as an operator would (SIGTERM), so that it stops its programs;
    /// SIGKILL only if it does not exit in time.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn data_path(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

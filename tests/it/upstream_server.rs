//! A real HTTP server for proxy tests, on loopback, that can be stopped and brought
//! back on the same port.
//!
//! Routes: `/id` (its name), `/echo` (the request as JSON, body included),
//! `/slow?ms=N`, `/health` (200 or 503, switchable), `/big?mb=N` (a streamed body);
//! a request with `Upgrade: echo` switches protocols and echoes raw bytes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub healthy: Arc<AtomicBool>,
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted (to see keep-alive at work).
    pub accepted: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Upstream {
    /// Starts a server named `name` on an ephemeral port.
    pub async fn start(name: &str) -> Upstream {
        Self::start_on(
            name,
            "127.0.0.1:0".parse().expect("addr"),
            Arc::new(AtomicBool::new(true)),
        )
        .await
    }

    async fn start_on(name: &str, addr: SocketAddr, healthy: Arc<AtomicBool>) -> Upstream {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = {
            let (name, healthy, hits) = (name.to_owned(), Arc::clone(&healthy), Arc::clone(&hits));
            let counter = Arc::clone(&accepted);
            tokio::spawn(async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let (name, healthy, hits) =
                        (name.clone(), Arc::clone(&healthy), Arc::clone(&hits));
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            handle(
                                name.clone(),
                                Arc::clone(&healthy),
                                Arc::clone(&hits),
                                request,
                            )
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Upstream {
            name: name.to_owned(),
            addr,
            healthy,
            hits,
            accepted,
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening and drops every connection, like a crashed server.
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Starts again on the same port.
    pub async fn revive(&mut self) {
        self.kill().await;
        let mut again = Self::start_on(&self.name, self.addr, Arc::clone(&self.healthy)).await;
        self.task = again.task.take();
        self.hits = Arc::clone(&again.hits);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn full(body: impl Into<Bytes>) -> BoxBody {
    Full::new(body.into()).boxed()
}

fn query_number(request: &Request<Incoming>, key: &str) -> u64 {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn handle(
    name: String,
    healthy: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    mut request: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    if request
        .headers()
        .get("upgrade")
        .is_some_and(|v| v == "echo")
    {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "echo")
            .header("connection", "upgrade")
            .body(full(""))
            .expect("response");
        return Ok(response);
    }
    let path = request.uri().path().to_owned();
    if path != "/health" {
        hits.fetch_add(1, Ordering::SeqCst);
    }
    let response = match path.as_str() {
        "/health" => {
            let status = if healthy.load(Ordering::SeqCst) {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Response::builder()
                .status(status)
                .body(full("health"))
                .expect("response")
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_number(&request, "ms"))).await;
            Response::new(full(name))
        }
        "/big" => {
            let chunks = query_number(&request, "mb") * 16;
            let stream = futures_util::stream::iter((0..chunks).map(|i| {
                Ok::<_, Infallible>(Frame::data(Bytes::from(vec![(i % 251) as u8; 64 * 1024])))
            }));
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        _ if path.ends_with("/echo") || path == "/echo" || path.starts_with("/base") => {
            let method = request.method().to_string();
            let uri = request.uri().to_string();
            let headers: serde_json::Map<String, serde_json::Value> = request
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().into()))
                .collect();
            let body = request
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let answer = serde_json::json!({
                "upstream": name,
                "method": method,
                "uri": uri,
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            Response::builder()
                .header("content-type", "application/json")
                .header("connection", "x-secret-hop")
                .header("x-secret-hop", "must not pass")
                .header("keep-alive", "timeout=5")
                .body(full(answer.to_string()))
                .expect("response")
        }
        _ => Response::new(full(name)),
    };
    Ok(response)
}

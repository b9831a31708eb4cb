//! TLS for tests: a certificate authority of our own (rcgen), and a real TLS client
//! (rustls under hyper, HTTP/1.1 or HTTP/2 by ALPN) that reports which certificate the
//! server presented.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A certificate authority that issues certificates for tests.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its root certificate, PEM.
    pub pem: String,
    der: CertificateDer<'static>,
}

/// A certificate issued by a [`TestCa`], with its key.
pub struct Issued {
    pub chain: String,
    pub key: String,
    pub der: CertificateDer<'static>,
}

impl Issued {
    /// The chain and the key in one text, as `PUT /certificates/{host}` takes them.
    pub fn bundle(&self) -> String {
        format!("{}{}", self.chain, self.key)
    }

    /// Writes the chain and the key to `cert.pem` and `key.pem` in `dir`.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.chain).expect("write cert");
        std::fs::write(&key, &self.key).expect("write key");
        (cert, key)
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names`, valid from yesterday for 30 days.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let now = OffsetDateTime::now_utc();
        self.issue_between(
            names,
            now - time::Duration::days(1),
            now + time::Duration::days(30),
        )
    }

    pub fn issue_between(
        &self,
        names: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Issued {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).expect("issue");
        Issued {
            chain: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("root");
        roots
    }

    /// Writes the root to `ca.pem` in `dir`.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem).expect("write CA");
        path
    }
}

/// A client config trusting `roots`, offering `alpn`.
pub fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Arc::new(config)
}

/// A TLS handshake with `addr` for `name` (SNI).
pub async fn handshake(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let stream = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    let connecting = tokio_rustls::TlsConnector::from(config).connect(name, stream);
    tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// The certificate the server presented.
pub fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a server certificate")
        .clone()
        .into_owned()
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One HTTPS connection, kept open for several requests.
pub struct HttpsConnection {
    sender: Sender,
    host: String,
    /// The certificate the server presented.
    pub certificate: CertificateDer<'static>,
    pub version: Version,
}

impl HttpsConnection {
    /// Connects to `addr` for `host`, trusting `roots`; HTTP/2 if `h2` and the server
    /// agrees, else HTTP/1.1.
    pub async fn open(addr: SocketAddr, host: &str, roots: RootCertStore, h2: bool) -> Self {
        let alpn: &[&[u8]] = if h2 {
            &[b"h2", b"http/1.1"]
        } else {
            &[b"http/1.1"]
        };
        let stream = handshake(addr, host, client_config(roots, alpn))
            .await
            .expect("TLS handshake");
        let certificate = presented(&stream);
        let negotiated_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        let (sender, version) = if negotiated_h2 {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .expect("h2 handshake");
            tokio::spawn(connection);
            (Sender::H2(sender), Version::HTTP_2)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("h1 handshake");
            tokio::spawn(connection.with_upgrades());
            (Sender::H1(sender), Version::HTTP_11)
        };
        HttpsConnection {
            sender,
            host: host.to_owned(),
            certificate,
            version,
        }
    }

    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> (StatusCode, hyper::HeaderMap, Bytes) {
        let mut builder = Request::builder().method(method);
        builder = match self.sender {
            Sender::H1(_) => builder.uri(path).header("host", self.host.as_str()),
            Sender::H2(_) => builder.uri(format!("https://{}{path}", self.host)),
        };
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body.into())).expect("request");
        // The connection takes the next request once the last answer is wound up.
        let response = match &mut self.sender {
            Sender::H1(sender) => {
                sender.ready().await.expect("connection ready");
                sender.send_request(request).await
            }
            Sender::H2(sender) => {
                sender.ready().await.expect("connection ready");
                sender.send_request(request).await
            }
        }
        .expect("response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (parts.status, parts.headers, body)
    }

    pub async fn get(&mut self, path: &str) -> (StatusCode, Bytes) {
        let (status, _, body) = self.request(Method::GET, path, &[], Bytes::new()).await;
        (status, body)
    }
}

/// Runs curl with `args`; its standard output, and whether it succeeded.
pub fn curl(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl runs (the CI installs it)");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

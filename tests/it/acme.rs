//! ACME end to end against a real ACME server on loopback: Debian's `pebble`, with
//! `pebble-challtestsrv` as its DNS (every name resolves to 127.0.0.1), validation on.
//! Herve gets a certificate for a routed host, curl trusts it through pebble's root, it
//! survives a restart without a new order, it is renewed before it runs out, and a
//! challenge that cannot succeed shows `failed` with the reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::TestHerve;
use crate::tls_client::{client_config, curl, handshake, presented, TestCa};

/// A free loopback port, by asking the kernel for one (TCP, or UDP for DNS).
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|socket| socket.local_addr())
            .expect("a free UDP port")
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|socket| socket.local_addr())
            .expect("a free TCP port")
            .port()
    }
}

/// pebble and its DNS, stopped when dropped.
pub(crate) struct Pebble {
    children: Vec<Child>,
    directory: String,
    management: SocketAddr,
    dns_management: SocketAddr,
    /// The root of pebble's own HTTPS (ours), for Herve and for curl.
    https_root: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where pebble will listen, chosen before Herve starts (Herve needs the directory's
/// URL; pebble needs Herve's ports).
pub(crate) struct PebblePorts {
    wfe: u16,
    management: u16,
    dns: u16,
    dns_management: u16,
}

impl PebblePorts {
    pub(crate) fn pick() -> PebblePorts {
        PebblePorts {
            wfe: free_port(false),
            management: free_port(false),
            dns: free_port(true),
            dns_management: free_port(false),
        }
    }

    pub(crate) fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.wfe)
    }
}

impl Pebble {
    /// The HTTPS certificate pebble itself serves, and its root for Herve to trust.
    pub(crate) fn prepare(dir: &Path) -> PathBuf {
        let ca = TestCa::new("pebble front CA");
        let issued = ca.issue(&["127.0.0.1", "localhost"]);
        std::fs::write(dir.join("pebble-cert.pem"), &issued.chain).expect("write");
        std::fs::write(dir.join("pebble-key.pem"), &issued.key).expect("write");
        ca.write(dir)
    }

    /// Starts pebble validating against `herve` (its plain and HTTPS ports), issuing
    /// certificates valid for `validity_s` seconds.
    pub(crate) fn start(
        ports: &PebblePorts,
        dir: tempfile::TempDir,
        herve_http: u16,
        herve_tls: u16,
        validity_s: u64,
    ) -> Pebble {
        let https_root = dir.path().join("ca.pem");
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{}", ports.wfe),
                "managementListenAddress": format!("127.0.0.1:{}", ports.management),
                "certificate": dir.path().join("pebble-cert.pem"),
                "privateKey": dir.path().join("pebble-key.pem"),
                "httpPort": herve_http,
                "tlsPort": herve_tls,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_s,
            }
        });
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).expect("write config");
        let spawn = |command: &mut Command, name: &str| {
            command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|error| {
                    panic!("{name} runs (the CI installs Debian's pebble): {error}")
                })
        };
        let dns = spawn(
            Command::new("pebble-challtestsrv")
                .arg("-dns01")
                .arg(format!("127.0.0.1:{}", ports.dns))
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .arg("-management")
                .arg(format!("127.0.0.1:{}", ports.dns_management))
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]),
            "pebble-challtestsrv",
        );
        let pebble = spawn(
            Command::new("pebble")
                .arg("-config")
                .arg(&config_path)
                .arg("-dnsserver")
                .arg(format!("127.0.0.1:{}", ports.dns))
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0"),
            "pebble",
        );
        let started = Pebble {
            children: vec![dns, pebble],
            directory: ports.directory(),
            management: ([127, 0, 0, 1], ports.management).into(),
            dns_management: ([127, 0, 0, 1], ports.dns_management).into(),
            https_root,
            dir,
        };
        // Ready when the directory answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, _) = curl(&[
                "--cacert",
                started.https_root.to_str().expect("path"),
                &started.directory,
            ]);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        started
    }

    /// The root of the certificates pebble issues, written to a file.
    pub(crate) fn issuing_root(&self) -> PathBuf {
        let url = format!("https://{}/roots/0", self.management);
        let (ok, pem) = curl(&["--cacert", self.https_root.to_str().expect("path"), &url]);
        assert!(ok, "pebble's root: {pem}");
        let path = self.dir.path().join("pebble-root.pem");
        std::fs::write(&path, pem).expect("write");
        path
    }

    /// Makes `host` resolve to `ip` for pebble's validation.
    fn resolve(&self, host: &str, ip: &str) {
        let url = format!("http://{}/add-a", self.dns_management);
        let body = serde_json::json!({ "host": format!("{host}."), "addresses": [ip] }).to_string();
        let (ok, out) = curl(&["-X", "POST", "-d", &body, &url]);
        assert!(ok, "challtestsrv: {out}");
    }
}

/// The entry of `host` in `GET /certificates`, once `ready` holds for it.
pub(crate) async fn certificate_of(
    herve: &TestHerve,
    host: &str,
    within: Duration,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let listed = herve.admin_get("/certificates").await.json();
        let entry = listed["data"]
            .as_array()
            .and_then(|entries| entries.iter().find(|entry| entry["host"] == host))
            .cloned();
        if let Some(entry) = entry.filter(&ready) {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "{host} never got there: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn route_host(herve: &TestHerve, name: &str, host: &str) {
    herve.running_with(name, "ping", &[("hosts", host)]).await;
}

pub(crate) fn acme_settings(
    config: &mut herve::Config,
    directory: &str,
    root: &Path,
    challenge: herve::AcmeChallenge,
) {
    config.tls_port = Some(0);
    config.acme_email = Some("ops@herve.test".to_owned());
    config.acme_directory = directory.to_owned();
    config.acme_ca_root = Some(root.to_path_buf());
    config.acme_challenge = challenge;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_host_gets_a_certificate_that_survives_a_restart() {
    let pebble_dir = tempfile::tempdir().expect("tempdir");
    let root = Pebble::prepare(pebble_dir.path());
    let ports = PebblePorts::pick();
    let data = tempfile::tempdir().expect("tempdir");
    let directory = ports.directory();
    let herve = TestHerve::start_on_with(data.path(), |config| {
        acme_settings(config, &directory, &root, herve::AcmeChallenge::TlsAlpn01);
    })
    .await;
    let tls = herve.tls_addr.expect("tls");
    let pebble = Pebble::start(&ports, pebble_dir, herve.addr.port(), tls.port(), 3600);

    route_host(&herve, "site", "acme.test").await;
    let entry = certificate_of(&herve, "acme.test", Duration::from_secs(60), |entry| {
        entry["status"] == "valid"
    })
    .await;
    assert_eq!(entry["source"], "acme");
    assert_eq!(entry["names"], serde_json::json!(["acme.test"]));
    let serial = entry["serial"].clone();

    // curl trusts it through pebble's root, over HTTP/2.
    let issuing_root = pebble.issuing_root();
    let (ok, out) = curl(&[
        "--http2",
        "--cacert",
        issuing_root.to_str().expect("path"),
        "--resolve",
        &format!("acme.test:{}:127.0.0.1", tls.port()),
        "-w",
        " %{http_version}",
        &format!("https://acme.test:{}/site/ping", tls.port()),
    ]);
    assert!(ok, "{out}");
    assert!(out.ends_with(" 2"), "{out}");

    // Restarted: the same certificate, served at once, and no new order.
    herve.stop().await;
    let again = TestHerve::start_on_with(data.path(), |config| {
        acme_settings(config, &directory, &root, herve::AcmeChallenge::TlsAlpn01);
    })
    .await;
    let tls = again.tls_addr.expect("tls");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_file_iter(&issuing_root).expect("root") {
        roots.add(cert.expect("pem")).expect("root");
    }
    let stream = handshake(tls, "acme.test", client_config(roots, &[b"h2"]))
        .await
        .expect("the stored certificate is served after a restart");
    drop(presented(&stream));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let entry = certificate_of(&again, "acme.test", Duration::from_secs(5), |_| true).await;
    assert_eq!(entry["status"], "valid");
    assert_eq!(
        entry["serial"], serial,
        "a new certificate was ordered after the restart"
    );
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_and_a_failing_challenge_says_why() {
    let pebble_dir = tempfile::tempdir().expect("tempdir");
    let root = Pebble::prepare(pebble_dir.path());
    let ports = PebblePorts::pick();
    let directory = ports.directory();
    let herve = TestHerve::start_with(|config| {
        acme_settings(config, &directory, &root, herve::AcmeChallenge::Http01);
    })
    .await;
    let tls = herve.tls_addr.expect("tls");
    // Certificates of 15 seconds: renewed once 5 are left.
    let pebble = Pebble::start(&ports, pebble_dir, herve.addr.port(), tls.port(), 15);

    route_host(&herve, "short", "short.test").await;
    let first = certificate_of(&herve, "short.test", Duration::from_secs(60), |entry| {
        entry["status"] == "valid"
    })
    .await;
    let renewed = certificate_of(&herve, "short.test", Duration::from_secs(60), |entry| {
        entry["status"] == "valid" && entry["serial"] != first["serial"]
    })
    .await;
    assert!(renewed["not_after"].as_str() > first["not_after"].as_str());

    // A host whose validation cannot reach Herve: failed, and why.
    pebble.resolve("unreachable.test", "127.0.0.2");
    route_host(&herve, "nowhere", "unreachable.test").await;
    let failed = certificate_of(
        &herve,
        "unreachable.test",
        Duration::from_secs(60),
        |entry| entry["status"] == "failed",
    )
    .await;
    let reason = failed["reason"].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.contains("127.0.0.2") || reason.contains("connect"),
        "{failed}"
    );
    // The others are not affected (renewing, at worst, with the last one still served).
    let short = certificate_of(&herve, "short.test", Duration::from_secs(1), |_| true).await;
    assert_ne!(short["status"], "failed", "{short}");
    assert!(short["serial"].is_string(), "{short}");
    herve.stop().await;
}

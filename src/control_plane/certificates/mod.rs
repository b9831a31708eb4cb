//! The certificates Herve serves, from three sources: a default certificate from files
//! (`HERVE_TLS_CERT`/`HERVE_TLS_KEY`, read again when they change), certificates
//! uploaded per host name (`PUT /certificates/{host}`), and certificates obtained and
//! renewed over ACME (`acme`).
//!
//! Every change is persisted first (uploads and ACME certificates live in the store,
//! whose file is the owner's alone), then published to the data plane's
//! [`CertTable`] in one swap: new handshakes see it, open connections keep theirs.
//! For a name, an uploaded certificate comes before an ACME one, and both before the
//! default. Keys are never logged and never answered.

pub(crate) mod acme;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::store::{CertSource, Store, StoreError, StoredCertificate, StoredChallenge};
use crate::data_plane::{CertError, CertSnapshot, CertTable, Certificate, HostPattern};
use crate::util::{lock, unix_now};

/// How often the default certificate's files are looked at for a change.
const FILE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Why a certificate was refused, or could not be kept.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertificateError {
    #[error("{0}")]
    InvalidHost(String),
    #[error("The certificate is invalid: {0}.")]
    Invalid(#[source] CertError),
    #[error("The certificate expired on {0}.")]
    Expired(String),
    #[error("The certificate is not valid before {0}.")]
    NotYetValid(String),
    #[error("The certificate is not valid for {host} (it names {names}).")]
    NotForHost { host: String, names: String },
    #[error("No uploaded or ACME certificate is kept for this host.")]
    NotFound,
    #[error("The certificate could not be stored.")]
    Store(#[source] StoreError),
}

/// Why the default certificate's files could not be used at start-up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertSetupError {
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{cert} and {key} cannot be served: {source}")]
    Invalid {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: CertError,
    },
    #[error("could not read the stored certificates: {0}")]
    Store(#[source] StoreError),
}

/// What `GET /certificates` shows of one certificate (never its key).
#[derive(Debug, Serialize)]
pub(crate) struct CertificateView {
    /// The host name it is kept for; `null` for the default certificate.
    pub host: Option<String>,
    /// `file`, `upload` or `acme`.
    pub source: &'static str,
    /// `valid`, `expired`, or for ACME `pending` and `failed`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// `not_after` in Unix seconds, for the metrics.
    #[serde(skip)]
    pub expires_at: Option<i64>,
}

/// Where ACME stands for one host.
#[derive(Debug, Clone)]
pub(crate) struct AcmeEntry {
    pub status: AcmeStatus,
    /// The certificate obtained last, still served while a renewal is under way.
    pub cert: Option<Certificate>,
    /// When to try again after a failure (unix seconds).
    pub retry_at: i64,
    /// Failures in a row.
    pub failures: u32,
}

impl AcmeEntry {
    /// A host whose first certificate is yet to come.
    pub(super) fn pending() -> AcmeEntry {
        AcmeEntry {
            status: AcmeStatus::Pending,
            cert: None,
            retry_at: 0,
            failures: 0,
        }
    }

    /// A certificate obtained and kept.
    pub(super) fn obtained(cert: Certificate) -> AcmeEntry {
        AcmeEntry {
            status: AcmeStatus::Valid,
            cert: Some(cert),
            retry_at: 0,
            failures: 0,
        }
    }
}

/// The stored certificates that can be served: uploads, and those ACME obtained, by
/// host.
fn read_stored(
    stored: Vec<StoredCertificate>,
    crypto: &Arc<CryptoProvider>,
) -> (BTreeMap<String, Certificate>, Vec<(String, Certificate)>) {
    let mut uploaded = BTreeMap::new();
    let mut acme = Vec::new();
    for stored in stored {
        let parsed = Certificate::from_pem(stored.pem.as_bytes(), stored.pem.as_bytes(), crypto);
        match (parsed, stored.source) {
            (Ok(cert), CertSource::Upload) => {
                uploaded.insert(stored.host, cert);
            }
            (Ok(cert), CertSource::Acme) => acme.push((stored.host, cert)),
            (Err(error), _) => {
                tracing::warn!(host = %stored.host, %error, "a stored certificate cannot be served; skipped");
            }
        }
    }
    (uploaded, acme)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AcmeStatus {
    Pending,
    Valid,
    Failed(String),
}

#[derive(Default)]
struct Held {
    default: Option<Certificate>,
    uploaded: BTreeMap<String, Certificate>,
    acme: BTreeMap<String, AcmeEntry>,
    /// TLS-ALPN-01 challenge certificates being validated, by host.
    challenges: HashMap<String, Arc<CertifiedKey>>,
    /// Of those, and of the HTTP-01 tokens, the ones another node shared.
    shared_hosts: HashSet<String>,
    shared_tokens: HashSet<String>,
}

/// The certificates of a Herve: the one place that changes them.
pub(crate) struct Certificates {
    table: Arc<CertTable>,
    store: Arc<dyn Store>,
    crypto: Arc<CryptoProvider>,
    held: Mutex<Held>,
    /// Woken when uploads change: ACME leaves alone the hosts an upload covers.
    uploads_changed: Notify,
}

impl Certificates {
    /// Reads the default certificate's files (if any) and the stored certificates, and
    /// publishes them.
    pub async fn load(
        table: Arc<CertTable>,
        store: Arc<dyn Store>,
        crypto: Arc<CryptoProvider>,
        files: Option<&(PathBuf, PathBuf)>,
    ) -> Result<Certificates, CertSetupError> {
        let mut held = Held::default();
        if let Some((cert, key)) = files {
            held.default = Some(read_files(cert, key, &crypto)?);
        }
        let (uploaded, acme) = read_stored(
            store.certificates().await.map_err(CertSetupError::Store)?,
            &crypto,
        );
        held.uploaded = uploaded;
        for (host, cert) in acme {
            held.acme.insert(host, AcmeEntry::obtained(cert));
        }
        let certificates = Certificates {
            table,
            store,
            crypto,
            held: Mutex::new(held),
            uploads_changed: Notify::new(),
        };
        certificates.publish(&lock(&certificates.held));
        Ok(certificates)
    }

    /// Reads the stored certificates again: another node of the cluster uploaded,
    /// removed or obtained one.
    pub async fn refresh_stored(&self) -> Result<(), StoreError> {
        let (uploaded, acme) = read_stored(self.store.certificates().await?, &self.crypto);
        {
            let mut held = lock(&self.held);
            held.uploaded = uploaded;
            // A certificate removed by another node goes here too (and is ordered again
            // while its host is routed); a host still waiting for its first stays.
            held.acme.retain(|host, entry| {
                entry.cert.is_none() || acme.iter().any(|(stored, _)| stored == host)
            });
            for (host, cert) in acme {
                let newer = held.acme.get(&host).is_none_or(|entry| {
                    entry
                        .cert
                        .as_ref()
                        .is_none_or(|current| current.not_after < cert.not_after)
                });
                if newer {
                    held.acme.insert(host, AcmeEntry::obtained(cert));
                }
            }
            self.publish(&held);
        }
        self.uploads_changed.notify_one();
        Ok(())
    }

    /// Answers the challenges another node of the cluster shared (for the orders it
    /// makes), and no longer those it withdrew.
    pub async fn refresh_challenges(&self) -> Result<(), StoreError> {
        let shared = self.store.challenges().await?;
        let mut held = lock(&self.held);
        let (mut hosts, mut tokens) = (HashSet::new(), HashSet::new());
        for challenge in shared {
            match challenge {
                StoredChallenge::Http {
                    token,
                    key_authorization,
                    ..
                } => {
                    self.table.set_http_challenge(&token, &key_authorization);
                    tokens.insert(token);
                }
                StoredChallenge::TlsAlpn { host, cert, key } => {
                    if held.challenges.contains_key(&host) && !held.shared_hosts.contains(&host) {
                        // This node's own order.
                        continue;
                    }
                    match self.certified_challenge(&cert, &key) {
                        Ok(certified) => {
                            held.challenges.insert(host.clone(), certified);
                            hosts.insert(host);
                        }
                        Err(error) => {
                            tracing::warn!(%host, %error, "a shared challenge cannot be served");
                        }
                    }
                }
            }
        }
        for token in held.shared_tokens.difference(&tokens) {
            self.table.remove_http_challenge(token);
        }
        let gone: Vec<String> = held.shared_hosts.difference(&hosts).cloned().collect();
        for host in gone {
            held.challenges.remove(&host);
        }
        held.shared_hosts = hosts;
        held.shared_tokens = tokens;
        self.publish(&held);
        Ok(())
    }

    /// The TLS-ALPN-01 certificate (DER) with its PKCS#8 key (DER), ready to serve.
    pub(super) fn certified_challenge(
        &self,
        cert: &[u8],
        key: &[u8],
    ) -> Result<Arc<CertifiedKey>, String> {
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.to_vec().into());
        // Not `CertifiedKey::from_der`: its check parses the certificate with webpki,
        // which refuses the critical acmeIdentifier extension this certificate exists for.
        let signing_key = self
            .crypto
            .key_provider
            .load_private_key(key_der)
            .map_err(|error| error.to_string())?;
        Ok(Arc::new(CertifiedKey::new(
            vec![rustls::pki_types::CertificateDer::from(cert.to_vec())],
            signing_key,
        )))
    }

    /// Reads the default certificate's files again whenever they change, until `stop`.
    /// A change that cannot be served is logged and the previous certificate kept.
    pub fn watch_files(self: &Arc<Self>, files: (PathBuf, PathBuf), stop: CancellationToken) {
        let certificates = Arc::clone(self);
        tokio::spawn(async move {
            let (cert, key) = files;
            let mut seen = (file_stamp(&cert), file_stamp(&key));
            loop {
                tokio::select! {
                    () = tokio::time::sleep(FILE_CHECK_EVERY) => {}
                    () = stop.cancelled() => return,
                }
                let now = (file_stamp(&cert), file_stamp(&key));
                if now == seen {
                    continue;
                }
                seen = now;
                match read_files(&cert, &key, &certificates.crypto) {
                    Ok(loaded) => {
                        tracing::info!(cert = %cert.display(), names = ?loaded.names, "default certificate reloaded");
                        let mut held = lock(&certificates.held);
                        held.default = Some(loaded);
                        certificates.publish(&held);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the changed certificate files cannot be served; the previous certificate stays");
                    }
                }
            }
        });
    }

    /// Every certificate kept, and where ACME stands for each host it manages.
    pub fn list(&self) -> Vec<CertificateView> {
        let now = unix_now();
        let held = lock(&self.held);
        let mut views = Vec::new();
        if let Some(cert) = &held.default {
            views.push(view(None, "file", cert, now));
        }
        for (host, cert) in &held.uploaded {
            views.push(view(Some(host), "upload", cert, now));
        }
        for (host, entry) in &held.acme {
            let mut shown = match &entry.cert {
                Some(cert) => view(Some(host), "acme", cert, now),
                None => CertificateView {
                    host: Some(host.clone()),
                    source: "acme",
                    status: "pending",
                    reason: None,
                    names: Vec::new(),
                    issuer: None,
                    serial: None,
                    not_before: None,
                    not_after: None,
                    expires_at: None,
                },
            };
            match &entry.status {
                AcmeStatus::Pending => shown.status = "pending",
                AcmeStatus::Failed(reason) => {
                    shown.status = "failed";
                    shown.reason = Some(reason.clone());
                }
                AcmeStatus::Valid => {}
            }
            views.push(shown);
        }
        views
    }

    /// Keeps `pem` (the chain, then the key) for `host`, replacing the one uploaded
    /// before, once it is checked: it parses, the key is its own, it is valid now and
    /// for `host`.
    pub async fn upload(&self, host: &str, pem: &str) -> Result<CertificateView, CertificateError> {
        let pattern = HostPattern::parse(host).map_err(|reason| {
            CertificateError::InvalidHost(format!("The host is invalid: {reason}."))
        })?;
        let host = pattern.to_string();
        let cert = Certificate::from_pem(pem.as_bytes(), pem.as_bytes(), &self.crypto)
            .map_err(CertificateError::Invalid)?;
        let now = unix_now();
        if now >= cert.not_after {
            return Err(CertificateError::Expired(rfc3339(cert.not_after)));
        }
        if now < cert.not_before {
            return Err(CertificateError::NotYetValid(rfc3339(cert.not_before)));
        }
        if !cert.covers(&host) {
            let names = if cert.names.is_empty() {
                "no DNS name".to_owned()
            } else {
                cert.names.join(", ")
            };
            return Err(CertificateError::NotForHost { host, names });
        }
        self.store
            .put_certificate(&StoredCertificate {
                host: host.clone(),
                source: CertSource::Upload,
                pem: pem.to_owned(),
                updated_at: now,
            })
            .await
            .map_err(CertificateError::Store)?;
        let shown = view(Some(&host), "upload", &cert, now);
        {
            let mut held = lock(&self.held);
            held.uploaded.insert(host, cert);
            self.publish(&held);
        }
        self.uploads_changed.notify_one();
        Ok(shown)
    }

    /// Forgets the uploaded certificate of `host`, or else its ACME certificate (which
    /// is obtained again if the host is still in use).
    pub async fn remove(&self, host: &str) -> Result<(), CertificateError> {
        let host = HostPattern::parse(host)
            .map(|pattern| pattern.to_string())
            .map_err(|_| CertificateError::NotFound)?;
        let source = {
            let held = lock(&self.held);
            if held.uploaded.contains_key(&host) {
                CertSource::Upload
            } else if held
                .acme
                .get(&host)
                .is_some_and(|entry| entry.cert.is_some())
            {
                CertSource::Acme
            } else {
                return Err(CertificateError::NotFound);
            }
        };
        self.store
            .remove_certificate(&host, source)
            .await
            .map_err(CertificateError::Store)?;
        {
            let mut held = lock(&self.held);
            match source {
                CertSource::Upload => {
                    held.uploaded.remove(&host);
                }
                CertSource::Acme => {
                    held.acme.remove(&host);
                }
            }
            self.publish(&held);
        }
        self.uploads_changed.notify_one();
        Ok(())
    }

    /// Swaps in what the data plane serves, from `held`.
    fn publish(&self, held: &Held) {
        let mut snapshot = CertSnapshot {
            default: held.default.as_ref().map(|cert| Arc::clone(&cert.key)),
            challenges: held.challenges.clone(),
            ..CertSnapshot::default()
        };
        let acme = held
            .acme
            .iter()
            .filter_map(|(host, entry)| Some((host, entry.cert.as_ref()?)));
        // Uploads last: they win over ACME for the same name.
        for (host, cert) in acme.chain(held.uploaded.iter()) {
            let key = Arc::clone(&cert.key);
            match host.strip_prefix("*.") {
                Some(parent) => snapshot.wildcard.insert(parent.to_owned(), key),
                None => snapshot.exact.insert(host.clone(), key),
            };
        }
        self.table.publish(snapshot);
    }
}

fn view(
    host: Option<&String>,
    source: &'static str,
    cert: &Certificate,
    now: i64,
) -> CertificateView {
    CertificateView {
        host: host.cloned(),
        source,
        status: if now >= cert.not_after {
            "expired"
        } else {
            "valid"
        },
        reason: None,
        names: cert.names.clone(),
        issuer: Some(cert.issuer.clone()),
        serial: Some(cert.serial.clone()),
        not_before: Some(rfc3339(cert.not_before)),
        not_after: Some(rfc3339(cert.not_after)),
        expires_at: Some(cert.not_after),
    }
}

fn read_files(
    cert: &Path,
    key: &Path,
    crypto: &CryptoProvider,
) -> Result<Certificate, CertSetupError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertSetupError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let (chain, key_pem) = (read(cert)?, read(key)?);
    Certificate::from_pem(&chain, &key_pem, crypto).map_err(|source| CertSetupError::Invalid {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })
}

/// What tells that a file changed: its modification time, size and inode (a file
/// replaced by a rename has a new inode even within the same second).
fn file_stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}

/// Unix seconds as RFC 3339 (`2027-03-01T12:00:00Z`).
pub(crate) fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

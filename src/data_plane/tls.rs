//! TLS termination: the certificates the HTTPS listener presents, picked by SNI from a
//! snapshot that the control plane swaps when a certificate comes, changes or goes.
//!
//! A handshake reads the snapshot once (an atomic load, no lock), so a new certificate
//! serves the next handshake and connections already open keep theirs. Name lookups
//! are hash lookups: an exact name, then the wildcard of its parent, then the default
//! certificate (`HERVE_TLS_CERT`). A name with none of those, and no default, fails the
//! handshake with an alert, not a wrong certificate.
//!
//! ACME's TLS-ALPN-01 challenge (RFC 8737) is answered here too: a client hello that
//! offers only `acme-tls/1` gets the challenge certificate of its name, and the
//! connection ends after the handshake.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// The ALPN protocol of ACME's TLS-ALPN-01 challenge.
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Sessions remembered for resumption (TLS 1.2 ids); TLS 1.3 uses stateless tickets.
const SESSION_CACHE: usize = 16 * 1024;

/// A certificate chain with its key, ready to serve, and what it says of itself.
#[derive(Clone)]
pub(crate) struct Certificate {
    pub key: Arc<CertifiedKey>,
    /// The DNS names it is valid for (lowercase; `*.example.com` for a wildcard).
    pub names: Vec<String>,
    /// Its issuer, as a distinguished name (`CN=…, O=…`).
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// The serial number, in hex.
    pub serial: String,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("issuer", &self.issuer)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Why a certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    #[error("no PEM certificate (-----BEGIN CERTIFICATE-----) was found")]
    NoCertificate,
    #[error("no PEM private key (-----BEGIN PRIVATE KEY-----, EC or RSA) was found")]
    NoKey,
    #[error("the PEM text is malformed: {0}")]
    Pem(String),
    #[error("the certificate cannot be read: {0}")]
    Certificate(String),
    #[error("the private key cannot be used: {0}")]
    Key(String),
    #[error("the private key does not match the certificate")]
    KeyMismatch,
}

impl Certificate {
    /// Reads a PEM chain (the host's certificate first) and a PEM private key, which
    /// may be the same text. Checks that the key is the certificate's; validity dates
    /// are the caller's to judge.
    pub fn from_pem(chain: &[u8], key: &[u8], crypto: &CryptoProvider) -> Result<Self, CertError> {
        let chain = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| CertError::Pem(error.to_string()))?;
        let Some(leaf) = chain.first() else {
            return Err(CertError::NoCertificate);
        };
        let key = match PrivateKeyDer::from_pem_slice(key) {
            Ok(key) => key,
            Err(rustls::pki_types::pem::Error::NoItemsFound) => return Err(CertError::NoKey),
            Err(error) => return Err(CertError::Pem(error.to_string())),
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|error| CertError::Certificate(error.to_string()))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                    names.push(dns.trim_end_matches('.').to_ascii_lowercase());
                }
            }
        }
        let issuer = parsed.issuer().to_string();
        let validity = parsed.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        let serial = parsed.raw_serial_as_string().replace(':', "");
        let key = CertifiedKey::from_der(chain, key, crypto).map_err(|error| match error {
            rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch,
            other => CertError::Key(other.to_string()),
        })?;
        Ok(Certificate {
            key: Arc::new(key),
            names,
            issuer,
            not_before,
            not_after,
            serial,
        })
    }

    /// Whether it is valid for `host` (lowercase): one of its names, or a wildcard
    /// name one label above it. A wildcard `host` needs the same wildcard name.
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|name| {
            name == host
                || name.strip_prefix("*.").is_some_and(|parent| {
                    host.split_once('.')
                        .is_some_and(|(label, rest)| label != "*" && rest == parent)
                })
        })
    }
}

/// The certificates served now.
#[derive(Default, Clone)]
pub(crate) struct CertSnapshot {
    /// For a name with nothing of its own (`HERVE_TLS_CERT`).
    pub default: Option<Arc<CertifiedKey>>,
    /// By exact host name.
    pub exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the parent of a wildcard (`example.com` for `*.example.com`).
    pub wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// TLS-ALPN-01 challenge certificates, by host name.
    pub challenges: HashMap<String, Arc<CertifiedKey>>,
}

/// The certificates and ACME challenge answers, read by every handshake and by the
/// plain listener's `/.well-known/acme-challenge/` path; written by the control plane.
#[derive(Default)]
pub(crate) struct CertTable {
    current: ArcSwap<CertSnapshot>,
    /// HTTP-01 key authorizations, by token.
    http_challenges: ArcSwap<HashMap<String, String>>,
}

impl CertTable {
    /// Serves `snapshot` from the next handshake on.
    pub fn publish(&self, snapshot: CertSnapshot) {
        self.current.store(Arc::new(snapshot));
    }

    /// Answers HTTP-01 `token` with `key_authorization` until withdrawn.
    pub fn set_http_challenge(&self, token: &str, key_authorization: &str) {
        self.http_challenges.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(token.to_owned(), key_authorization.to_owned());
            next
        });
    }

    /// Stops answering HTTP-01 `token`.
    pub fn remove_http_challenge(&self, token: &str) {
        self.http_challenges.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.remove(token);
            next
        });
    }

    /// The key authorization for HTTP-01 `token`, if one is being validated.
    pub fn http_challenge(&self, token: &str) -> Option<String> {
        self.http_challenges.load().get(token).cloned()
    }

    fn resolve(&self, name: Option<&str>, acme_challenge: bool) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.current.load();
        if acme_challenge {
            return name.and_then(|name| snapshot.challenges.get(name)).cloned();
        }
        if let Some(name) = name {
            if let Some(key) = snapshot.exact.get(name) {
                return Some(Arc::clone(key));
            }
            let parent = name.split_once('.').map(|(_, parent)| parent);
            if let Some(key) = parent.and_then(|parent| snapshot.wildcard.get(parent)) {
                return Some(Arc::clone(key));
            }
        }
        snapshot.default.clone()
    }
}

/// Picks a certificate from the [`CertTable`] for each handshake.
#[derive(Debug)]
struct Resolver(Arc<CertTable>);

impl std::fmt::Debug for CertTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snapshot = self.current.load();
        f.debug_struct("CertTable")
            .field("default", &snapshot.default.is_some())
            .field("exact", &snapshot.exact.len())
            .field("wildcard", &snapshot.wildcard.len())
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls hands the name over lowercase and without a trailing dot.
        let name = hello.server_name();
        let acme_challenge = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|protocol| protocol == ACME_TLS_ALPN));
        self.0.resolve(name, acme_challenge)
    }
}

/// The server side of TLS: TLS 1.3 and 1.2 with rustls' safe defaults, a certificate
/// per name from `table`, ALPN `h2` then `http/1.1` (and ACME's `acme-tls/1`).
pub(crate) fn server_config(
    table: Arc<CertTable>,
    crypto: Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(crypto)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(table)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

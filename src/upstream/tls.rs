//! TLS to `https://` upstreams: the name in the URL is verified against the Mozilla
//! roots (webpki-roots), or against a private CA given as a PEM file (`tls_ca`).

use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// How to open TLS to one upstream.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    pub connector: TlsConnector,
    /// The name its certificate must have (the URL's host).
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("name", &self.name)
            .finish()
    }
}

/// The client side of TLS: the public roots, or only the CA certificates of `ca_pem`.
pub(crate) fn client_config(ca_pem: Option<&[u8]>) -> Result<Arc<ClientConfig>, String> {
    static PUBLIC: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    let Some(ca_pem) = ca_pem else {
        return PUBLIC
            .get_or_init(|| {
                build(RootCertStore::from_iter(
                    webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
                ))
            })
            .clone();
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|error| format!("the CA file is not PEM: {error}"))?;
        roots
            .add(cert)
            .map_err(|error| format!("the CA certificate cannot be used: {error}"))?;
    }
    if roots.is_empty() {
        return Err("the CA file holds no PEM certificate".to_owned());
    }
    build(roots)
}

fn build(roots: RootCertStore) -> Result<Arc<ClientConfig>, String> {
    let mut config = ClientConfig::builder_with_provider(crate::util::tls_crypto())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The pool speaks HTTP/1.1 to upstreams.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

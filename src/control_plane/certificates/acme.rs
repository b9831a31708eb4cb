//! Certificates obtained and renewed over ACME (RFC 8555), with instant-acme.
//!
//! One task follows the exact host names of the running services (the route table
//! says when they change). A host without a certificate gets one; a certificate is
//! renewed once a third of its lifetime is left; a failure is retried later, waiting
//! twice as long each time. Hosts are done one at a time: a CA's rate limits are per
//! account, and a handful of orders a minute is all a Herve ever needs. Wildcard
//! hosts would need DNS-01, which Herve cannot answer: they are skipped (say so once).
//! Hosts an uploaded certificate covers are left alone.
//!
//! Validation is answered by the data plane: TLS-ALPN-01 with a challenge certificate
//! on the HTTPS port, or HTTP-01 at `/.well-known/acme-challenge/<token>` on the plain
//! port.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use super::{AcmeEntry, AcmeStatus, Certificates};
use crate::control_plane::store::{CertSource, StoreError, StoredCertificate, StoredChallenge};
use crate::data_plane::{Certificate, RouteTable};
use crate::util::{lock, unix_now};

/// The first wait after a failure; it doubles with each failure in a row.
const RETRY_FIRST_S: i64 = 60;
/// The longest wait between tries.
const RETRY_MOST_S: i64 = 6 * 3600;
/// How long one order may take, from creation to certificate.
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);
/// Even with nothing to do, the hosts are looked at again this often.
const RECHECK_S: i64 = 3600;
/// When another node of the cluster orders a host's certificate, how long until this
/// node looks again (it gets the certificate through the store meanwhile).
const ELSEWHERE_RETRY_S: i64 = 30;
/// How long a challenge shared through the store is given to reach every node before
/// the ACME server is told to validate (changes reach nodes in milliseconds).
const CHALLENGE_SETTLE: Duration = Duration::from_millis(500);

/// How Herve reaches its ACME server.
#[derive(Debug, Clone)]
pub(crate) struct AcmeSettings {
    pub email: String,
    pub directory: String,
    pub ca_root: Option<PathBuf>,
    pub validation: Validation,
}

/// Which challenge Herve answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Validation {
    /// TLS-ALPN-01, on the HTTPS port.
    TlsAlpn,
    /// HTTP-01, on the plain port.
    Http,
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcmeError {
    #[error("{0}")]
    Acme(#[from] instant_acme::Error),
    #[error("the ACME server offers no {0:?} challenge for this host")]
    NoChallenge(ChallengeType),
    #[error("the authorization is {0:?}")]
    Authorization(AuthorizationStatus),
    #[error("validation failed: {0}")]
    Invalid(String),
    #[error("the ACME server's certificate cannot be served: {0}")]
    Certificate(#[from] crate::data_plane::CertError),
    #[error("could not make the challenge certificate: {0}")]
    ChallengeCertificate(String),
    #[error("the account credentials are unreadable: {0}")]
    Credentials(#[from] serde_json::Error),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("the order took longer than {0:?}")]
    TimedOut(Duration),
}

/// What to do about one host now.
enum Plan {
    /// Nothing, ever (an upload covers it).
    Skip,
    /// Nothing until then (unix seconds).
    Later(i64),
    /// Order a certificate.
    Now,
}

/// Obtains and renews certificates for the routed hosts until `stop`.
pub(crate) fn spawn(
    certificates: Arc<Certificates>,
    routes: Arc<RouteTable>,
    settings: AcmeSettings,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut changes = routes.subscribe();
        let mut account = None;
        let mut warned_wildcards = false;
        loop {
            let now = unix_now();
            let mut wake = now + RECHECK_S;
            let mut due = None;
            let mut hosts = routes.exact_hosts();
            hosts.sort();
            for host in hosts {
                match certificates.plan(&host, now) {
                    Plan::Skip => {}
                    Plan::Later(at) => wake = wake.min(at),
                    Plan::Now => {
                        due = Some(host);
                        break;
                    }
                }
            }
            if !warned_wildcards && routes.has_wildcard_hosts() {
                warned_wildcards = true;
                tracing::warn!("wildcard hosts need DNS-01, which Herve cannot answer: upload their certificates");
            }
            if let Some(host) = due {
                // One order per host across the nodes sharing the store.
                match certificates
                    .store
                    .claim_order(&host, ORDER_TIMEOUT * 2)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        certificates.acme_elsewhere(&host);
                        continue;
                    }
                    Err(error) => {
                        certificates
                            .acme_failed(&host, format!("The order could not be claimed: {error}"));
                        continue;
                    }
                }
                certificates.acme_pending(&host);
                let attempt = obtain(&certificates, &mut account, &settings, &host);
                let outcome = tokio::select! {
                    outcome = tokio::time::timeout(ORDER_TIMEOUT, attempt) => {
                        outcome.unwrap_or(Err(AcmeError::TimedOut(ORDER_TIMEOUT)))
                    }
                    () = stop.cancelled() => return,
                };
                certificates.clear_challenges(&host).await;
                if let Err(error) = certificates.store.release_order(&host).await {
                    tracing::warn!(%host, %error, "could not give the order back; it runs out by itself");
                }
                match outcome {
                    Ok(()) => tracing::info!(%host, "ACME certificate obtained"),
                    Err(error) => {
                        tracing::warn!(%host, %error, "ACME certificate not obtained");
                        certificates.acme_failed(&host, error.to_string());
                    }
                }
                continue;
            }
            let wait = Duration::from_secs(u64::try_from(wake - unix_now()).unwrap_or(0).max(1));
            tokio::select! {
                _ = changes.changed() => {}
                () = certificates.uploads_changed.notified() => {}
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
        }
    });
}

impl Certificates {
    fn plan(&self, host: &str, now: i64) -> Plan {
        let held = lock(&self.held);
        let uploaded = held
            .uploaded
            .values()
            .any(|cert| cert.covers(host) && now < cert.not_after);
        if uploaded {
            return Plan::Skip;
        }
        let Some(entry) = held.acme.get(host) else {
            return Plan::Now;
        };
        let renew_at = entry.cert.as_ref().map(|cert| {
            let lifetime = cert.not_after - cert.not_before;
            cert.not_after - lifetime / 3
        });
        let at = match (renew_at, entry.retry_at) {
            (Some(renew_at), retry_at) => renew_at.max(retry_at),
            (None, retry_at) => retry_at,
        };
        if at > now {
            Plan::Later(at)
        } else {
            Plan::Now
        }
    }

    fn acme_pending(&self, host: &str) {
        let mut held = lock(&self.held);
        let entry = held
            .acme
            .entry(host.to_owned())
            .or_insert_with(AcmeEntry::pending);
        entry.status = AcmeStatus::Pending;
    }

    /// Another node orders `host`'s certificate: look again later.
    fn acme_elsewhere(&self, host: &str) {
        let mut held = lock(&self.held);
        let entry = held
            .acme
            .entry(host.to_owned())
            .or_insert_with(AcmeEntry::pending);
        entry.retry_at = unix_now() + ELSEWHERE_RETRY_S;
    }

    fn acme_failed(&self, host: &str, reason: String) {
        let mut held = lock(&self.held);
        if let Some(entry) = held.acme.get_mut(host) {
            entry.failures += 1;
            let wait = RETRY_FIRST_S
                .saturating_mul(1 << (entry.failures - 1).min(16))
                .min(RETRY_MOST_S);
            entry.retry_at = unix_now() + wait;
            entry.status = AcmeStatus::Failed(reason);
        }
    }

    /// Stores and serves the certificate obtained for `host`.
    async fn acme_obtained(&self, host: &str, pem: String) -> Result<(), AcmeError> {
        let cert = Certificate::from_pem(pem.as_bytes(), pem.as_bytes(), &self.crypto)?;
        self.store
            .put_certificate(&StoredCertificate {
                host: host.to_owned(),
                source: CertSource::Acme,
                pem,
                updated_at: unix_now(),
            })
            .await?;
        let mut held = lock(&self.held);
        held.acme.insert(host.to_owned(), AcmeEntry::obtained(cert));
        self.publish(&held);
        Ok(())
    }

    fn set_challenge(&self, host: &str, key: Arc<CertifiedKey>) {
        let mut held = lock(&self.held);
        held.challenges.insert(host.to_owned(), key);
        self.publish(&held);
    }

    async fn clear_challenges(&self, host: &str) {
        {
            let mut held = lock(&self.held);
            if held.challenges.remove(host).is_some() {
                self.publish(&held);
            }
        }
        if self.store.is_shared() {
            if let Err(error) = self.store.remove_challenges(host).await {
                tracing::warn!(%host, %error, "could not forget the shared challenges");
            }
        }
    }

    /// Tells the other nodes sharing the store how to answer `challenge`, and gives
    /// them the time to hear it.
    async fn share_challenge(&self, challenge: StoredChallenge) -> Result<(), AcmeError> {
        if !self.store.is_shared() {
            return Ok(());
        }
        self.store.put_challenge(&challenge).await?;
        tokio::time::sleep(CHALLENGE_SETTLE).await;
        Ok(())
    }

    async fn account(&self, settings: &AcmeSettings) -> Result<Account, AcmeError> {
        let builder = match &settings.ca_root {
            Some(root) => Account::builder_with_root(root)?,
            None => Account::builder()?,
        };
        if let Some(stored) = self.store.acme_account(&settings.directory).await? {
            let credentials: AccountCredentials = serde_json::from_str(&stored)?;
            return Ok(builder.from_credentials(credentials).await?);
        }
        let contact = format!("mailto:{}", settings.email);
        let (account, credentials) = builder
            .create(
                &NewAccount {
                    contact: &[&contact],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                settings.directory.clone(),
                None,
            )
            .await?;
        self.store
            .put_acme_account(&settings.directory, &serde_json::to_string(&credentials)?)
            .await?;
        tracing::info!(directory = %settings.directory, "ACME account created");
        Ok(account)
    }
}

/// One order for `host`, from the account to the stored certificate.
async fn obtain(
    certificates: &Certificates,
    account: &mut Option<Account>,
    settings: &AcmeSettings,
    host: &str,
) -> Result<(), AcmeError> {
    let account = match account {
        Some(account) => account,
        None => account.insert(certificates.account(settings).await?),
    };
    let identifiers = [Identifier::Dns(host.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut tokens = Vec::new();
    let validated = answer_challenges(certificates, &mut order, settings, host, &mut tokens).await;
    for token in &tokens {
        certificates.table.remove_http_challenge(token);
    }
    validated?;
    let key_pem = order.finalize().await?;
    let chain_pem = order
        .poll_certificate(&RetryPolicy::new().timeout(ORDER_TIMEOUT))
        .await?;
    certificates
        .acme_obtained(host, format!("{chain_pem}\n{key_pem}"))
        .await
}

/// Sets up the answer to each pending authorization's challenge, tells the server,
/// and waits for the order to be ready.
async fn answer_challenges(
    certificates: &Certificates,
    order: &mut Order,
    settings: &AcmeSettings,
    host: &str,
    tokens: &mut Vec<String>,
) -> Result<(), AcmeError> {
    let kind = match settings.validation {
        Validation::TlsAlpn => ChallengeType::TlsAlpn01,
        Validation::Http => ChallengeType::Http01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(AcmeError::Authorization(other)),
        }
        let mut challenge = authorization
            .challenge(kind.clone())
            .ok_or(AcmeError::NoChallenge(kind.clone()))?;
        let key_authorization = challenge.key_authorization();
        match settings.validation {
            Validation::TlsAlpn => {
                let (cert, key) = challenge_certificate(host, key_authorization.digest().as_ref())?;
                let certified = certificates
                    .certified_challenge(&cert, &key)
                    .map_err(AcmeError::ChallengeCertificate)?;
                certificates.set_challenge(host, certified);
                certificates
                    .share_challenge(StoredChallenge::TlsAlpn {
                        host: host.to_owned(),
                        cert,
                        key,
                    })
                    .await?;
            }
            Validation::Http => {
                let token = challenge.token.clone();
                certificates
                    .table
                    .set_http_challenge(&token, key_authorization.as_str());
                tokens.push(token.clone());
                certificates
                    .share_challenge(StoredChallenge::Http {
                        host: host.to_owned(),
                        token,
                        key_authorization: key_authorization.as_str().to_owned(),
                    })
                    .await?;
            }
        }
        challenge.set_ready().await?;
    }
    let status = order
        .poll_ready(&RetryPolicy::new().timeout(ORDER_TIMEOUT))
        .await?;
    if status == OrderStatus::Ready {
        return Ok(());
    }
    Err(AcmeError::Invalid(why_invalid(order).await))
}

/// What the server said about the challenges of an order that went invalid.
async fn why_invalid(order: &mut Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authorization)) = authorizations.next().await {
        for challenge in &authorization.challenges {
            if let Some(problem) = &challenge.error {
                reasons.push(
                    problem
                        .detail
                        .clone()
                        .unwrap_or_else(|| problem.to_string()),
                );
            }
        }
    }
    if reasons.is_empty() {
        "the order is invalid".to_owned()
    } else {
        reasons.join("; ")
    }
}

/// The self-signed certificate of TLS-ALPN-01 (RFC 8737 §3): the host's name and the
/// digest of the key authorization in the acmeIdentifier extension; the certificate
/// and its PKCS#8 key, DER.
fn challenge_certificate(host: &str, digest: &[u8]) -> Result<(Vec<u8>, Vec<u8>), AcmeError> {
    let failed = |error: rcgen::Error| AcmeError::ChallengeCertificate(error.to_string());
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(failed)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(failed)?;
    Ok((cert.der().to_vec(), key.serialize_der()))
}

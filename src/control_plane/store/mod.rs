//! Durable state: what Herve persists about every service, behind a small trait.
//!
//! The registry writes every change through a [`Store`] before the API answers, and
//! reads everything back on start. SQLite ([`SqliteStore`]) is the store of a single
//! Herve; a store shared by several Herve nodes (PostgreSQL) implements the same
//! trait.

mod postgres;
mod sqlite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub(crate) use postgres::{Lease, NodeRow, PostgresStore, CERTIFICATES, CHALLENGES};
pub(crate) use sqlite::SqliteStore;

use crate::util::sqlite::DbError;

/// Where a service is in its life.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Registered and never started.
    #[default]
    Registered,
    /// Being started; its routes do not answer yet.
    Starting,
    /// Started; its routes answer.
    Running,
    /// Stopped by a user.
    Stopped,
    /// Could not be started.
    Failed,
}

impl Status {
    /// The status string of the API and of the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Registered => "registered",
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Failed => "failed",
        }
    }

    /// Parses a status string of the store.
    pub fn parse(text: &str) -> Option<Status> {
        Some(match text {
            "registered" => Status::Registered,
            "starting" => Status::Starting,
            "running" => Status::Running,
            "stopped" => Status::Stopped,
            "failed" => Status::Failed,
            _ => return None,
        })
    }

    /// Whether a service in this status should be started again when Herve starts.
    pub fn should_run(self) -> bool {
        matches!(self, Status::Starting | Status::Running)
    }
}

/// Everything persisted about one service.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ServiceRecord {
    /// Registration order, assigned by the store; the listing shows the newest first.
    pub seq: i64,
    pub uuid: Uuid,
    pub name: String,
    pub type_name: String,
    pub description: String,
    pub status: Status,
    /// Why the service is in that status (the reason of a failure), or empty.
    pub detail: String,
    /// What the type's register hook returned.
    pub config: Value,
    /// The user's own description, shown instead of the type's.
    pub user_description: Option<String>,
    /// Host names the service answers for (`app.example.com`, `*.example.com`).
    pub hosts: Vec<String>,
    /// Its path prefix, if it has one.
    pub path: Option<String>,
    /// The registration's fields, as given (but `name` and `type`): an edit is checked
    /// as a registration of these with its own fields over them.
    pub fields: Vec<(String, String)>,
    /// Unix seconds.
    pub created_at: i64,
    /// What is wrong with the stored row, when it could not be read whole: such a
    /// service is shown as failed and cannot start, and the others are unaffected.
    pub corrupt: Option<String>,
}

/// Where a stored certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CertSource {
    /// `PUT /certificates/{host}`.
    Upload,
    /// Obtained by Herve from the ACME server.
    Acme,
}

impl CertSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::Upload => "upload",
            CertSource::Acme => "acme",
        }
    }

    pub fn parse(text: &str) -> Option<CertSource> {
        match text {
            "upload" => Some(CertSource::Upload),
            "acme" => Some(CertSource::Acme),
            _ => None,
        }
    }
}

/// A certificate kept for a host: its PEM chain and private key, in one text.
#[derive(Clone, PartialEq)]
pub(crate) struct StoredCertificate {
    /// `app.example.com` or `*.example.com`.
    pub host: String,
    pub source: CertSource,
    /// The chain and the key, PEM.
    pub pem: String,
    /// Unix seconds.
    pub updated_at: i64,
}

impl std::fmt::Debug for StoredCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("StoredCertificate")
            .field("host", &self.host)
            .field("source", &self.source)
            .finish()
    }
}

/// A failure of the durable store. The API answers 500 and the change is not applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbError),
    /// A change was asked of a service the store does not have.
    #[error("no service {0} in the store")]
    Missing(Uuid),
    /// Another Herve sharing the store registered this name first.
    #[error("the name {0} is taken")]
    NameTaken(String),
    /// Another Herve sharing the store gave this route to another service first.
    #[error("the route {route} is taken by {owner}")]
    RouteTaken { route: String, owner: String },
}

impl StoreError {
    /// Whether the database could not be reached (rather than refusing the change).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Database(DbError::Unavailable(_)))
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        StoreError::Database(error.into())
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Database(DbError::Sqlite(error))
    }
}

/// Durable storage of the registry. Every method returns only once the change is
/// durable (it survives a crash of Herve and of the machine).
#[async_trait]
pub(crate) trait Store: Send + Sync + 'static {
    /// Every service, oldest first.
    async fn load(&self) -> Result<Vec<ServiceRecord>, StoreError>;

    /// One service as stored now, if it is.
    async fn get(&self, uuid: Uuid) -> Result<Option<ServiceRecord>, StoreError>;

    /// Persists a new service (its `seq` is ignored) and returns the `seq` assigned.
    async fn insert(&self, record: &ServiceRecord) -> Result<i64, StoreError>;

    /// Persists an edit: the description, routes, fields and configuration of a
    /// service.
    async fn update(&self, record: &ServiceRecord) -> Result<(), StoreError>;

    /// Persists a service's new status and its reason (empty for none).
    async fn set_status(&self, uuid: Uuid, status: Status, detail: &str) -> Result<(), StoreError>;

    /// Forgets a service.
    async fn remove(&self, uuid: Uuid) -> Result<(), StoreError>;

    /// Every stored certificate.
    async fn certificates(&self) -> Result<Vec<StoredCertificate>, StoreError>;

    /// Keeps a certificate, replacing the one of the same host and source.
    async fn put_certificate(&self, certificate: &StoredCertificate) -> Result<(), StoreError>;

    /// Forgets the certificate of `host` from `source`; whether there was one.
    async fn remove_certificate(&self, host: &str, source: CertSource) -> Result<bool, StoreError>;

    /// The stored credentials (JSON) of the ACME account at `directory`.
    async fn acme_account(&self, directory: &str) -> Result<Option<String>, StoreError>;

    /// Keeps the credentials (JSON) of the ACME account at `directory`.
    async fn put_acme_account(&self, directory: &str, credentials: &str) -> Result<(), StoreError>;

    /// Whether other Herve share this store (a cluster).
    fn is_shared(&self) -> bool {
        false
    }

    /// Takes the right to order a certificate for `host` for `ttl`: several Herve
    /// sharing a store order one certificate per host, not one each. A store of one
    /// Herve always grants it.
    async fn claim_order(
        &self,
        _host: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Gives the right to order for `host` back.
    async fn release_order(&self, _host: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Shares the answer to an ACME challenge with the other Herve on this store: the
    /// ACME server may validate through any of them. A store of one Herve keeps none.
    async fn put_challenge(&self, _challenge: &StoredChallenge) -> Result<(), StoreError> {
        Ok(())
    }

    /// Forgets the shared challenges of `host`.
    async fn remove_challenges(&self, _host: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Every shared challenge.
    async fn challenges(&self) -> Result<Vec<StoredChallenge>, StoreError> {
        Ok(Vec::new())
    }

    /// Keeps a dashboard session (by its id's digest) for the other Herve on this
    /// store, until `expires_at` (Unix seconds). A store of one Herve keeps none.
    async fn put_session(
        &self,
        _digest: &str,
        _csrf: &str,
        _expires_at: i64,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// The CSRF token and end (Unix seconds) of a shared session.
    async fn session(&self, _digest: &str) -> Result<Option<(String, i64)>, StoreError> {
        Ok(None)
    }

    /// Ends a shared session.
    async fn remove_session(&self, _digest: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The answer to one ACME challenge, shared by the nodes of a cluster.
#[derive(Clone, PartialEq)]
pub(crate) enum StoredChallenge {
    /// HTTP-01: `token` is answered with `key_authorization`.
    Http {
        host: String,
        token: String,
        key_authorization: String,
    },
    /// TLS-ALPN-01: a handshake for `host` gets this self-signed certificate (DER) and
    /// its PKCS#8 key (DER).
    TlsAlpn {
        host: String,
        cert: Vec<u8>,
        key: Vec<u8>,
    },
}

impl std::fmt::Debug for StoredChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a key.
        match self {
            StoredChallenge::Http { host, token, .. } => f
                .debug_struct("Http")
                .field("host", host)
                .field("token", token)
                .finish(),
            StoredChallenge::TlsAlpn { host, .. } => {
                f.debug_struct("TlsAlpn").field("host", host).finish()
            }
        }
    }
}

/// A `services` row as stored.
pub(super) struct Row {
    pub seq: i64,
    pub uuid: String,
    pub name: String,
    pub type_name: String,
    pub description: String,
    pub status: String,
    pub config: String,
    pub created_at: i64,
    pub detail: String,
    pub user_description: String,
    pub hosts: String,
    pub path: String,
    pub fields: String,
}

/// JSON text of a value that always serializes (strings and pairs of strings).
pub(super) fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "[]".to_owned())
}

impl Row {
    /// The service of this row: one whose status, configuration or routes do not parse
    /// is kept, marked corrupt; one whose uuid does not parse cannot even be named, and
    /// is skipped.
    pub(super) fn into_record(self) -> Option<ServiceRecord> {
        let Ok(uuid) = Uuid::try_parse(&self.uuid) else {
            tracing::error!(seq = self.seq, uuid = %self.uuid, "a stored service has an invalid uuid; it is ignored");
            return None;
        };
        let mut problems = Vec::new();
        let status = Status::parse(&self.status).unwrap_or_else(|| {
            problems.push(format!("unknown status '{}'", self.status));
            Status::Failed
        });
        let config = serde_json::from_str(&self.config).unwrap_or_else(|error| {
            problems.push(format!("invalid configuration ({error})"));
            serde_json::Value::Null
        });
        let hosts = serde_json::from_str(&self.hosts).unwrap_or_else(|error| {
            problems.push(format!("invalid hosts ({error})"));
            Vec::new()
        });
        let fields = serde_json::from_str(&self.fields).unwrap_or_else(|error| {
            problems.push(format!("invalid fields ({error})"));
            Vec::new()
        });
        let some = |text: String| (!text.is_empty()).then_some(text);
        Some(ServiceRecord {
            seq: self.seq,
            uuid,
            name: self.name,
            type_name: self.type_name,
            description: self.description,
            status,
            detail: self.detail,
            config,
            created_at: self.created_at,
            user_description: some(self.user_description),
            hosts,
            path: some(self.path),
            fields,
            corrupt: (!problems.is_empty()).then(|| problems.join(", ")),
        })
    }
}

tokio::task_local! {
    /// Set while a node applies a change it read from the shared store.
    static REPLAYING: ();
}

/// Runs `work`, which applies a change read from the store, with the store's writes of
/// that change turned into no-ops: the change is in the store already, and writing it
/// again would announce it again to every node.
pub(crate) async fn replaying<F: std::future::Future>(work: F) -> F::Output {
    REPLAYING.scope((), work).await
}

fn is_replaying() -> bool {
    REPLAYING.try_with(|_| ()).is_ok()
}

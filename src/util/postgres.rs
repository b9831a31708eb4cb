//! A pool of connections to the PostgreSQL database the nodes of a cluster share, for
//! the store and for the built-in types that keep data (`models`, `auth`).
//!
//! Every call has a deadline: when the database is away (a partition), a call fails
//! with [`DbError::Unavailable`] within [`CALL_TIMEOUT`] instead of hanging a request.

use std::future::Future;
use std::time::Duration;

use std::path::Path;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::sqlite::DbError;

/// How long any one call may take before the database counts as unreachable.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections a node keeps to the database for its requests and changes; the
/// cluster's own work (leases, heartbeats) has a pool of its own, so that a burst of
/// requests never holds up a lease's renewal.
pub(crate) const POOL_SIZE: usize = 8;
pub(crate) const CONTROL_POOL_SIZE: usize = 3;
/// Connections for placing programs (taking leases, finding their holders), apart
/// from following changes; renewals have one more of their own, so that neither
/// following nor a burst of placements delays them.
pub(crate) const LEASE_POOL_SIZE: usize = 2;

/// Server-side limits of every session: a node that vanishes in the middle of a
/// transaction must not keep its locks (the order of changes) until TCP gives up.
const SESSION_OPTIONS: &str = "-c idle_in_transaction_session_timeout=10000 -c lock_timeout=10000";

/// The advisory lock (`"HERVE"` and 1) held while a component's tables are migrated:
/// nodes starting together migrate one at a time.
const MIGRATION_LOCK: i64 = 0x4845_5256_4501;

/// What a connection to the database runs over (TLS or not, as negotiated).
pub(crate) type TlsStream =
    <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream;

/// Connections to the shared database. Cheap to clone.
#[derive(Clone)]
pub(crate) struct SharedDb {
    pool: Pool,
    config: std::sync::Arc<tokio_postgres::Config>,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for SharedDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("SharedDb")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish()
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(error: tokio_postgres::Error) -> Self {
        // An error the server sent is about the statement, and so is a column of
        // another type (or NULL) than this Herve made it, altered by hand; any other is
        // about reaching the server.
        let unreadable = std::error::Error::source(&error).is_some_and(|cause| {
            cause.is::<tokio_postgres::types::WrongType>()
                || cause.is::<tokio_postgres::types::WasNull>()
        }) || error.to_string().starts_with("invalid column");
        if error.as_db_error().is_some() || unreadable {
            DbError::Postgres(error)
        } else {
            // The cause says what went wrong (a refused connection, a certificate).
            let mut said = error.to_string();
            let mut cause = std::error::Error::source(&error);
            while let Some(inner) = cause {
                said.push_str(": ");
                said.push_str(&inner.to_string());
                cause = inner.source();
            }
            DbError::Unavailable(said)
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(error) => error.into(),
            other => DbError::Unavailable(other.to_string()),
        }
    }
}

/// Runs `call` with the deadline every call has.
pub(crate) async fn within<T, E: From<DbError>>(
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(
                DbError::Unavailable(format!("no answer within {} s", CALL_TIMEOUT.as_secs()))
                    .into(),
            )
        })
}

impl SharedDb {
    /// A pool of `size` connections to the database at `url`
    /// (`postgres://user:password@host:port/db`), made when first needed. TLS as the
    /// URL's `sslmode` says (`prefer` by default: when the server offers it); the
    /// server's certificate is verified against `ca` (a PEM file) when one is given,
    /// and not verified otherwise, as libpq does for `prefer` and `require`.
    pub fn new(url: &str, size: usize, ca: Option<&Path>) -> Result<SharedDb, DbError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|error| DbError::Unavailable(format!("invalid database URL: {error}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CALL_TIMEOUT);
        }
        config.application_name("herve");
        config.options(SESSION_OPTIONS);
        // A dead peer must not leave a connection waiting for the kernel's default
        // (minutes): data unacknowledged this long fails the connection.
        config.tcp_user_timeout(CALL_TIMEOUT);
        config.keepalives_idle(Duration::from_secs(10));
        let tls = tls_connector(ca)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CALL_TIMEOUT))
            .recycle_timeout(Some(CALL_TIMEOUT))
            .build()
            .map_err(|error| DbError::Unavailable(error.to_string()))?;
        Ok(SharedDb {
            pool,
            config: std::sync::Arc::new(config),
            tls,
        })
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<Object, DbError> {
        Ok(self.pool.get().await?)
    }

    /// A connection of its own, outside the pool (to `LISTEN` on), and the future
    /// that drives it.
    pub async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, TlsStream>,
        ),
        DbError,
    > {
        Ok(self.config.connect(self.tls.clone()).await?)
    }

    /// Brings the tables of `component` to the version `steps` describe, in one
    /// transaction under a transaction-scoped advisory lock: nodes starting together
    /// migrate one at a time, and a migration cut short leaves nothing half done (nor
    /// a lock behind).
    pub async fn migrate(&self, component: &str, steps: &[&str]) -> Result<(), DbError> {
        within(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            migrate_locked(&tx, component, steps).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}

async fn migrate_locked(
    tx: &deadpool_postgres::Transaction<'_>,
    component: &str,
    steps: &[&str],
) -> Result<(), DbError> {
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS herve_schema (
                 component TEXT PRIMARY KEY,
                 version   BIGINT NOT NULL
             )",
    )
    .await?;
    let current: i64 = tx
        .query_opt(
            "SELECT version FROM herve_schema WHERE component = $1",
            &[&component],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?
        .unwrap_or(0);
    let wanted = i64::try_from(steps.len()).unwrap_or(i64::MAX);
    if current > wanted {
        return Err(DbError::Corrupt(format!(
            "the tables of '{component}' have version {current}, newer than this Herve \
             ({wanted}); upgrade Herve"
        )));
    }
    for (version, step) in (1i64..)
        .zip(steps)
        .skip(usize::try_from(current).unwrap_or(0))
    {
        tx.batch_execute(step).await?;
        tx.execute(
            "INSERT INTO herve_schema (component, version) VALUES ($1, $2)
             ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            &[&component, &version],
        )
        .await?;
    }
    Ok(())
}

/// TLS to the database: verified against the CA of `ca` when given; otherwise only
/// encrypted (libpq's `sslmode=prefer`/`require`).
fn tls_connector(ca: Option<&Path>) -> Result<MakeRustlsConnect, DbError> {
    let provider = crate::util::tls_crypto();
    let unusable =
        |why: String| DbError::Unavailable(format!("the database CA cannot be used: {why}"));
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| unusable(error.to_string()))?;
    let config = match ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|error| unusable(format!("{}: {error}", path.display())))?;
            for cert in certs {
                let cert =
                    cert.map_err(|error| unusable(format!("{}: {error}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|error| unusable(error.to_string()))?;
            }
            if roots.is_empty() {
                return Err(unusable(format!(
                    "{} holds no PEM certificate",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// Accepts any server certificate but checks the handshake's signatures: encryption
/// without authentication, what libpq gives without a root certificate.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

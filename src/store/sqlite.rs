//! The embedded store: one SQLite file in Herve's data directory.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::{ServiceRecord, Status, Store, StoreError};

/// The schema version this code writes; see [`migrate`].
const SCHEMA_VERSION: i64 = 3;

/// A [`Store`] in a SQLite database file.
///
/// SQLite calls block, so each runs on tokio's blocking pool. One connection behind a
/// mutex is enough: writes are serialised by SQLite anyway, and reads happen once, at
/// start-up (the registry answers reads from memory).
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        restrict_to_owner(path)?;
        let mut conn = Connection::open(path).map_err(db)?;
        // WAL keeps readers and the writer apart; synchronous=FULL makes every commit
        // durable before it returns, so an acknowledged change survives a power cut.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Deletes, in one transaction, every row of `service` from `tables` (each with a
    /// `service` column): what a built-in type keeps for a service it forgets.
    pub async fn delete_service_rows(
        &self,
        tables: &'static [&'static str],
        service: String,
    ) -> Result<(), StoreError> {
        self.in_transaction(move |tx| {
            for table in tables {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE service = ?1"),
                    params![service],
                )
                .map_err(db)?;
            }
            Ok(())
        })
        .await
    }

    /// Runs `work` in one transaction on the blocking pool: committed if it returns
    /// `Ok`, rolled back otherwise. Immediate, so that a read-then-write inside it is
    /// never overtaken by another writer of the same file.
    pub async fn in_transaction<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db)?;
            let value = work(&tx)?;
            tx.commit().map_err(db)?;
            Ok(value)
        })
        .await
    }

    /// Runs `work` with the connection on the blocking pool.
    pub async fn with_conn<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave a half-written transaction
            // behind (SQLite rolls it back), so a poisoned lock is still usable.
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }
}

/// The database and its journal files are for Herve's eyes only (mode 0600), also when
/// they existed already; SQLite gives new journal files the database's mode.
fn restrict_to_owner(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |error: std::io::Error| StoreError::Database(format!("{}: {error}", path.display()));
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io(error)),
        }
    }
    Ok(())
}

/// A database error as a [`StoreError`].
pub fn db(error: rusqlite::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

/// Creates or upgrades the schema, one version at a time, in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(db)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(db)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Database(format!(
            "the database has schema version {version}, newer than this Herve ({SCHEMA_VERSION}); \
             upgrade Herve"
        )));
    }
    if version < 1 {
        tx.execute_batch(
            "CREATE TABLE services (
                 seq         INTEGER PRIMARY KEY AUTOINCREMENT,
                 uuid        TEXT NOT NULL UNIQUE,
                 name        TEXT NOT NULL UNIQUE,
                 type        TEXT NOT NULL,
                 description TEXT NOT NULL,
                 status      TEXT NOT NULL,
                 config      TEXT NOT NULL,
                 created_at  INTEGER NOT NULL
             );",
        )
        .map_err(db)?;
    }
    if version < 2 {
        tx.execute_batch("ALTER TABLE services ADD COLUMN detail TEXT NOT NULL DEFAULT '';")
            .map_err(db)?;
    }
    if version < 3 {
        // Data of the built-in `models` and `auth` types, keyed by service uuid.
        tx.execute_batch(
            "CREATE TABLE model_instances (
                 service    TEXT NOT NULL,
                 id         INTEGER NOT NULL,
                 created_at INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL,
                 data       TEXT NOT NULL,
                 PRIMARY KEY (service, id)
             );
             CREATE TABLE model_sequences (
                 service TEXT PRIMARY KEY,
                 last_id INTEGER NOT NULL
             );
             CREATE TABLE auth_users (
                 service       TEXT NOT NULL,
                 username      TEXT NOT NULL,
                 password_hash TEXT NOT NULL,
                 created_at    INTEGER NOT NULL,
                 PRIMARY KEY (service, username)
             );
             CREATE TABLE auth_tokens (
                 token_hash TEXT PRIMARY KEY,
                 service    TEXT NOT NULL,
                 username   TEXT NOT NULL,
                 expires_at INTEGER NOT NULL
             );
             CREATE INDEX auth_tokens_by_service ON auth_tokens (service, username);",
        )
        .map_err(db)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(db)?;
    tx.commit().map_err(db)
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT seq, uuid, name, type, description, status, config, created_at, detail
                     FROM services ORDER BY seq",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, String>(5)?,
                        row.get::<_, String>(6)?,
                        row.get::<_, i64>(7)?,
                        row.get::<_, String>(8)?,
                    ))
                })
                .map_err(db)?;
            let mut records = Vec::new();
            for row in rows {
                let (seq, uuid, name, type_name, description, status, config, created_at, detail) =
                    row.map_err(db)?;
                let Ok(parsed_uuid) = Uuid::try_parse(&uuid) else {
                    // Nothing can name it: it cannot even be shown.
                    tracing::error!(seq, uuid = %uuid, "a stored service has an invalid uuid; it is ignored");
                    continue;
                };
                let mut problems = Vec::new();
                let status = Status::parse(&status).unwrap_or_else(|| {
                    problems.push(format!("unknown status '{status}'"));
                    Status::Failed
                });
                let config = serde_json::from_str(&config).unwrap_or_else(|error| {
                    problems.push(format!("invalid configuration ({error})"));
                    serde_json::Value::Null
                });
                let corrupt = (!problems.is_empty()).then(|| problems.join(", "));
                records.push(ServiceRecord {
                    seq,
                    uuid: parsed_uuid,
                    name,
                    type_name,
                    description,
                    status,
                    detail,
                    config,
                    created_at,
                    corrupt,
                });
            }
            Ok(records)
        })
        .await
    }

    async fn insert(&self, record: &ServiceRecord) -> Result<i64, StoreError> {
        let record = record.clone();
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT INTO services (uuid, name, type, description, status, config, created_at, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    record.uuid.to_string(),
                    record.name,
                    record.type_name,
                    record.description,
                    record.status.as_str(),
                    record.config.to_string(),
                    record.created_at,
                    record.detail,
                ],
            )
            .map_err(db)?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    async fn set_status(&self, uuid: Uuid, status: Status, detail: &str) -> Result<(), StoreError> {
        let detail = detail.to_owned();
        self.with_conn(move |conn| {
            let changed = conn
                .execute(
                    "UPDATE services SET status = ?1, detail = ?2 WHERE uuid = ?3",
                    params![status.as_str(), detail, uuid.to_string()],
                )
                .map_err(db)?;
            if changed == 0 {
                return Err(StoreError::Database(format!("no service {uuid} to update")));
            }
            Ok(())
        })
        .await
    }

    async fn remove(&self, uuid: Uuid) -> Result<(), StoreError> {
        self.with_conn(move |conn| {
            conn.execute(
                "DELETE FROM services WHERE uuid = ?1",
                params![uuid.to_string()],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }
}

/// Reads one service's status straight from the file; for tests and diagnostics.
pub fn read_status(path: &Path, uuid: Uuid) -> Result<Option<Status>, StoreError> {
    let conn = Connection::open(path).map_err(db)?;
    let status: Option<String> = conn
        .query_row(
            "SELECT status FROM services WHERE uuid = ?1",
            params![uuid.to_string()],
            |row| row.get(0),
        )
        .optional()
        .map_err(db)?;
    Ok(status.and_then(|s| Status::parse(&s)))
}

//! The embedded store: the `services` table of Herve's SQLite database file.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::params;
use uuid::Uuid;

use super::{ServiceRecord, Status, Store, StoreError};
use crate::util::sqlite::{Database, DbError};

/// The store's schema, one step per version (see `Database::migrate_blocking`).
const MIGRATIONS: [&str; 2] = [
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
    "ALTER TABLE services ADD COLUMN detail TEXT NOT NULL DEFAULT '';",
];

/// A [`Store`] in a SQLite database file.
///
/// Its own connection: the registry answers reads from memory, so it only writes
/// (and reads everything once, at start-up).
#[derive(Clone)]
pub(crate) struct SqliteStore {
    database: Database,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings the store's tables
    /// up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let database = Database::open(path)?;
        adopt_older_schema(&database)?;
        database.migrate_blocking("store", &MIGRATIONS)?;
        Ok(SqliteStore { database })
    }
}

/// Herve versions before per-component migrations counted the whole schema in
/// `PRAGMA user_version` (3 when the built-in types' tables came); their `services`
/// table is at the store's version 2.
fn adopt_older_schema(database: &Database) -> Result<(), StoreError> {
    database
        .call_blocking(|conn| {
            let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
            if version > 3 {
                return Err(DbError::Corrupt(format!(
                    "the database has schema version {version}, newer than this Herve; upgrade Herve"
                )));
            }
            if version >= 2 {
                conn.execute_batch(
                    "CREATE TABLE IF NOT EXISTS herve_schema (
                         component TEXT PRIMARY KEY,
                         version   INTEGER NOT NULL
                     );
                     INSERT OR IGNORE INTO herve_schema (component, version) VALUES ('store', 2);",
                )?;
            }
            Ok(())
        })
        .map_err(StoreError::from)
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        let records = self
            .database
            .call(|conn| {
                let mut stmt = conn.prepare(
                    "SELECT seq, uuid, name, type, description, status, config, created_at, detail
                     FROM services ORDER BY seq",
                )?;
                let rows = stmt.query_map([], |row| {
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
                })?;
                let mut records = Vec::new();
                for row in rows {
                    let (
                        seq,
                        uuid,
                        name,
                        type_name,
                        description,
                        status,
                        config,
                        created_at,
                        detail,
                    ) = row?;
                    if let Some(record) = record_from_row(
                        seq,
                        &uuid,
                        name,
                        type_name,
                        description,
                        &status,
                        &config,
                        created_at,
                        detail,
                    ) {
                        records.push(record);
                    }
                }
                Ok(records)
            })
            .await?;
        Ok(records)
    }

    async fn insert(&self, record: &ServiceRecord) -> Result<i64, StoreError> {
        let record = record.clone();
        let seq = self
            .database
            .call(move |conn| {
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
                )?;
                Ok(conn.last_insert_rowid())
            })
            .await?;
        Ok(seq)
    }

    async fn set_status(&self, uuid: Uuid, status: Status, detail: &str) -> Result<(), StoreError> {
        let detail = detail.to_owned();
        let changed = self
            .database
            .call(move |conn| {
                Ok(conn.execute(
                    "UPDATE services SET status = ?1, detail = ?2 WHERE uuid = ?3",
                    params![status.as_str(), detail, uuid.to_string()],
                )?)
            })
            .await?;
        if changed == 0 {
            return Err(StoreError::Missing(uuid));
        }
        Ok(())
    }

    async fn remove(&self, uuid: Uuid) -> Result<(), StoreError> {
        self.database
            .call(move |conn| {
                conn.execute(
                    "DELETE FROM services WHERE uuid = ?1",
                    params![uuid.to_string()],
                )?;
                Ok(())
            })
            .await?;
        Ok(())
    }
}

/// A service from its row: one whose status or configuration does not parse is kept,
/// marked corrupt; one whose uuid does not parse cannot even be named, and is skipped.
#[allow(clippy::too_many_arguments)]
fn record_from_row(
    seq: i64,
    uuid: &str,
    name: String,
    type_name: String,
    description: String,
    status: &str,
    config: &str,
    created_at: i64,
    detail: String,
) -> Option<ServiceRecord> {
    let Ok(parsed_uuid) = Uuid::try_parse(uuid) else {
        tracing::error!(seq, %uuid, "a stored service has an invalid uuid; it is ignored");
        return None;
    };
    let mut problems = Vec::new();
    let status = Status::parse(status).unwrap_or_else(|| {
        problems.push(format!("unknown status '{status}'"));
        Status::Failed
    });
    let config = serde_json::from_str(config).unwrap_or_else(|error| {
        problems.push(format!("invalid configuration ({error})"));
        serde_json::Value::Null
    });
    Some(ServiceRecord {
        seq,
        uuid: parsed_uuid,
        name,
        type_name,
        description,
        status,
        detail,
        config,
        created_at,
        corrupt: (!problems.is_empty()).then(|| problems.join(", ")),
    })
}

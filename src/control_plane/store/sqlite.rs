//! The embedded store: the `services` table of Herve's SQLite database file.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::params;
use uuid::Uuid;

use super::{ServiceRecord, Status, Store, StoreError};
use crate::util::sqlite::{Database, DbError};

/// The store's schema, one step per version (see `Database::migrate_blocking`).
const MIGRATIONS: [&str; 3] = [
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
    "ALTER TABLE services ADD COLUMN user_description TEXT NOT NULL DEFAULT '';
     ALTER TABLE services ADD COLUMN hosts TEXT NOT NULL DEFAULT '[]';
     ALTER TABLE services ADD COLUMN path TEXT NOT NULL DEFAULT '';
     ALTER TABLE services ADD COLUMN fields TEXT NOT NULL DEFAULT '[]';",
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
                    "SELECT seq, uuid, name, type, description, status, config, created_at, detail,
                            user_description, hosts, path, fields
                     FROM services ORDER BY seq",
                )?;
                let rows = stmt.query_map([], |row| {
                    Ok(Row {
                        seq: row.get(0)?,
                        uuid: row.get(1)?,
                        name: row.get(2)?,
                        type_name: row.get(3)?,
                        description: row.get(4)?,
                        status: row.get(5)?,
                        config: row.get(6)?,
                        created_at: row.get(7)?,
                        detail: row.get(8)?,
                        user_description: row.get(9)?,
                        hosts: row.get(10)?,
                        path: row.get(11)?,
                        fields: row.get(12)?,
                    })
                })?;
                let mut records = Vec::new();
                for row in rows {
                    if let Some(record) = row?.into_record() {
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
                    "INSERT INTO services (uuid, name, type, description, status, config, created_at,
                                           detail, user_description, hosts, path, fields)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    params![
                        record.uuid.to_string(),
                        record.name,
                        record.type_name,
                        record.description,
                        record.status.as_str(),
                        record.config.to_string(),
                        record.created_at,
                        record.detail,
                        record.user_description.clone().unwrap_or_default(),
                        json_text(&record.hosts),
                        record.path.clone().unwrap_or_default(),
                        json_text(&record.fields),
                    ],
                )?;
                Ok(conn.last_insert_rowid())
            })
            .await?;
        Ok(seq)
    }

    async fn update(&self, record: &ServiceRecord) -> Result<(), StoreError> {
        let record = record.clone();
        let uuid = record.uuid;
        let changed = self
            .database
            .call(move |conn| {
                Ok(conn.execute(
                    "UPDATE services SET user_description = ?1, hosts = ?2, path = ?3, fields = ?4,
                                         config = ?5
                     WHERE uuid = ?6",
                    params![
                        record.user_description.clone().unwrap_or_default(),
                        json_text(&record.hosts),
                        record.path.clone().unwrap_or_default(),
                        json_text(&record.fields),
                        record.config.to_string(),
                        record.uuid.to_string(),
                    ],
                )?)
            })
            .await?;
        if changed == 0 {
            return Err(StoreError::Missing(uuid));
        }
        Ok(())
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

/// A `services` row as stored.
struct Row {
    seq: i64,
    uuid: String,
    name: String,
    type_name: String,
    description: String,
    status: String,
    config: String,
    created_at: i64,
    detail: String,
    user_description: String,
    hosts: String,
    path: String,
    fields: String,
}

/// JSON text of a value that always serializes (strings and pairs of strings).
fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "[]".to_owned())
}

impl Row {
    /// The service of this row: one whose status, configuration or routes do not parse
    /// is kept, marked corrupt; one whose uuid does not parse cannot even be named, and
    /// is skipped.
    fn into_record(self) -> Option<ServiceRecord> {
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

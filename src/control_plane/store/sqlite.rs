//! The embedded store: the `services` table of Herve's SQLite database file.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::params;
use uuid::Uuid;

use super::{
    json_text, CertSource, Row, ServiceRecord, Status, Store, StoreError, StoredCertificate,
};
use crate::util::sqlite::{Database, DbError};

/// The store's schema, one step per version (see `Database::migrate_blocking`).
const MIGRATIONS: [&str; 4] = [
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
    "CREATE TABLE certificates (
         host       TEXT NOT NULL,
         source     TEXT NOT NULL,
         pem        TEXT NOT NULL,
         updated_at INTEGER NOT NULL,
         PRIMARY KEY (host, source)
     );
     CREATE TABLE acme_accounts (
         directory   TEXT PRIMARY KEY,
         credentials TEXT NOT NULL
     );",
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

    /// The rows of `services` that `clause` selects (`uuid`: its one parameter).
    async fn select(
        &self,
        clause: &'static str,
        uuid: Option<String>,
    ) -> Result<Vec<ServiceRecord>, StoreError> {
        let records = self
            .database
            .call(move |conn| {
                let mut stmt = conn.prepare(&format!(
                    "SELECT seq, uuid, name, type, description, status, config, created_at, detail,
                            user_description, hosts, path, fields
                     FROM services {clause}"
                ))?;
                let params: Vec<&dyn rusqlite::ToSql> = match &uuid {
                    Some(uuid) => vec![uuid],
                    None => Vec::new(),
                };
                let rows = stmt.query_map(params.as_slice(), |row| {
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
    async fn get(&self, uuid: Uuid) -> Result<Option<ServiceRecord>, StoreError> {
        Ok(self
            .select("WHERE uuid = ?1", Some(uuid.to_string()))
            .await?
            .pop())
    }

    async fn load(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        self.select("ORDER BY seq", None).await
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
    async fn certificates(&self) -> Result<Vec<StoredCertificate>, StoreError> {
        let rows = self
            .database
            .call(|conn| {
                let mut stmt =
                    conn.prepare("SELECT host, source, pem, updated_at FROM certificates")?;
                let rows = stmt.query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(host, source, pem, updated_at)| {
                let source = CertSource::parse(&source)?;
                Some(StoredCertificate {
                    host,
                    source,
                    pem,
                    updated_at,
                })
            })
            .collect())
    }

    async fn put_certificate(&self, certificate: &StoredCertificate) -> Result<(), StoreError> {
        let certificate = certificate.clone();
        self.database
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO certificates (host, source, pem, updated_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (host, source)
                     DO UPDATE SET pem = excluded.pem, updated_at = excluded.updated_at",
                    params![
                        certificate.host,
                        certificate.source.as_str(),
                        certificate.pem,
                        certificate.updated_at
                    ],
                )?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn remove_certificate(&self, host: &str, source: CertSource) -> Result<bool, StoreError> {
        let host = host.to_owned();
        let removed = self
            .database
            .call(move |conn| {
                Ok(conn.execute(
                    "DELETE FROM certificates WHERE host = ?1 AND source = ?2",
                    params![host, source.as_str()],
                )?)
            })
            .await?;
        Ok(removed > 0)
    }

    async fn acme_account(&self, directory: &str) -> Result<Option<String>, StoreError> {
        let directory = directory.to_owned();
        let credentials = self
            .database
            .call(move |conn| {
                use rusqlite::OptionalExtension;
                Ok(conn
                    .query_row(
                        "SELECT credentials FROM acme_accounts WHERE directory = ?1",
                        [directory],
                        |row| row.get::<_, String>(0),
                    )
                    .optional()?)
            })
            .await?;
        Ok(credentials)
    }

    async fn put_acme_account(&self, directory: &str, credentials: &str) -> Result<(), StoreError> {
        let (directory, credentials) = (directory.to_owned(), credentials.to_owned());
        self.database
            .call(move |conn| {
                conn.execute(
                    "INSERT INTO acme_accounts (directory, credentials) VALUES (?1, ?2)
                     ON CONFLICT (directory) DO UPDATE SET credentials = excluded.credentials",
                    params![directory, credentials],
                )?;
                Ok(())
            })
            .await?;
        Ok(())
    }
}

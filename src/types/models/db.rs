//! Where models keep their instances: two tables of Herve's database, on a connection
//! of their own.

use std::path::Path;

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::{Map, Value};

use crate::util::sqlite::{Database, DbError};
use crate::util::unix_now;

/// The tables, one step per version. `IF NOT EXISTS`: Herve versions before
/// per-component migrations created them with the store's.
const MIGRATIONS: [&str; 1] = ["CREATE TABLE IF NOT EXISTS model_instances (
         service    TEXT NOT NULL,
         id         INTEGER NOT NULL,
         created_at INTEGER NOT NULL,
         updated_at INTEGER NOT NULL,
         data       TEXT NOT NULL,
         PRIMARY KEY (service, id)
     );
     CREATE TABLE IF NOT EXISTS model_sequences (
         service TEXT PRIMARY KEY,
         last_id INTEGER NOT NULL
     );"];

/// A stored instance: id, created_at, updated_at, values.
pub(crate) type Row = (i64, i64, i64, Map<String, Value>);

/// Where a batch of a listing starts.
pub(crate) enum After {
    /// The first batch: after `offset` rows.
    Offset(u64),
    /// The next: after the last id sent (the order is by id).
    Id(i64),
}

/// The instances of every models service.
#[derive(Clone)]
pub(crate) struct ModelsDb {
    database: Database,
}

impl ModelsDb {
    /// Opens the tables in the database at `path`, bringing them up to date.
    pub fn open(path: &Path) -> Result<ModelsDb, DbError> {
        let database = Database::open(path)?;
        database.migrate_blocking("models", &MIGRATIONS)?;
        Ok(ModelsDb { database })
    }

    /// Stores a new instance of `service` with the next id of its own.
    pub async fn insert(&self, service: &str, values: Map<String, Value>) -> Result<Row, DbError> {
        let service = service.to_owned();
        self.database
            .transaction(move |tx| insert_row(tx, &service, values))
            .await
    }

    /// Replaces every value of instance `id`, or makes a new instance (with an id of
    /// Herve's) when there is none; `true` when it made one.
    pub async fn replace(
        &self,
        service: &str,
        id: i64,
        values: Map<String, Value>,
    ) -> Result<(bool, Row), DbError> {
        let service = service.to_owned();
        self.database
            .transaction(move |tx| {
                Ok(match read_row(tx, &service, id)? {
                    Some((id, created_at, _, _)) => {
                        let now = unix_now();
                        update_row(tx, &service, id, &values, now)?;
                        (false, (id, created_at, now, values))
                    }
                    None => (true, insert_row(tx, &service, values)?),
                })
            })
            .await
    }

    /// Changes the given values of instance `id`, read, merged and written in one
    /// transaction so that concurrent changes of different fields all land.
    pub async fn update(
        &self,
        service: &str,
        id: i64,
        changes: Map<String, Value>,
    ) -> Result<Option<Row>, DbError> {
        let service = service.to_owned();
        self.database
            .transaction(move |tx| {
                let Some((id, created_at, _, mut values)) = read_row(tx, &service, id)? else {
                    return Ok(None);
                };
                values.extend(changes);
                let now = unix_now();
                update_row(tx, &service, id, &values, now)?;
                Ok(Some((id, created_at, now, values)))
            })
            .await
    }

    /// Instance `id`, if there is one.
    pub async fn get(&self, service: &str, id: i64) -> Result<Option<Row>, DbError> {
        let service = service.to_owned();
        self.database
            .call(move |conn| read_row(conn, &service, id))
            .await
    }

    /// Deletes instance `id`; whether there was one.
    pub async fn delete(&self, service: &str, id: i64) -> Result<bool, DbError> {
        let service = service.to_owned();
        self.database
            .call(move |conn| {
                Ok(conn.execute(
                    "DELETE FROM model_instances WHERE service = ?1 AND id = ?2",
                    params![service, id],
                )? > 0)
            })
            .await
    }

    /// Up to `rows` instances in id order, fewer if they hold more than `max_bytes`
    /// of stored data (never none while any is left).
    pub async fn batch(
        &self,
        service: &str,
        after: After,
        rows: u64,
        max_bytes: usize,
    ) -> Result<Vec<Row>, DbError> {
        let service = service.to_owned();
        self.database
            .call(move |conn| {
                let (sql, key) = match after {
                    After::Offset(offset) => (
                        "SELECT id, created_at, updated_at, data FROM model_instances
                         WHERE service = ?1 ORDER BY id LIMIT ?2 OFFSET ?3",
                        i64::try_from(offset).unwrap_or(i64::MAX),
                    ),
                    After::Id(id) => (
                        "SELECT id, created_at, updated_at, data FROM model_instances
                         WHERE service = ?1 AND id > ?3 ORDER BY id LIMIT ?2",
                        id,
                    ),
                };
                let mut stmt = conn.prepare_cached(sql)?;
                let raw = stmt.query_map(
                    params![service, i64::try_from(rows).unwrap_or(i64::MAX), key],
                    |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get::<_, String>(3)?,
                        ))
                    },
                )?;
                let (mut batch, mut bytes) = (Vec::new(), 0usize);
                for row in raw {
                    let row = row?;
                    bytes += row.3.len();
                    if bytes > max_bytes && !batch.is_empty() {
                        break;
                    }
                    batch.push(decode_row(row)?);
                }
                Ok(batch)
            })
            .await
    }

    /// Deletes everything of `service`.
    pub async fn forget(&self, service: &str) -> Result<(), DbError> {
        let service = service.to_owned();
        self.database
            .transaction(move |tx| {
                tx.execute("DELETE FROM model_instances WHERE service = ?1", [&service])?;
                tx.execute("DELETE FROM model_sequences WHERE service = ?1", [&service])?;
                Ok(())
            })
            .await
    }
}

fn insert_row(
    tx: &Transaction<'_>,
    service: &str,
    values: Map<String, Value>,
) -> Result<Row, DbError> {
    // Ids come from a per-service counter, never from MAX(id): a deleted id is never
    // given again. The first is 0, as in the first Herve.
    let id: i64 = tx.query_row(
        "INSERT INTO model_sequences (service, last_id) VALUES (?1, 0)
         ON CONFLICT (service) DO UPDATE SET last_id = last_id + 1
         RETURNING last_id",
        params![service],
        |row| row.get(0),
    )?;
    let now = unix_now();
    tx.execute(
        "INSERT INTO model_instances (service, id, created_at, updated_at, data) VALUES (?1, ?2, ?3, ?3, ?4)",
        params![service, id, now, data_text(&values)?],
    )?;
    Ok((id, now, now, values))
}

fn update_row(
    tx: &Transaction<'_>,
    service: &str,
    id: i64,
    values: &Map<String, Value>,
    now: i64,
) -> Result<(), DbError> {
    tx.execute(
        "UPDATE model_instances SET data = ?1, updated_at = ?2 WHERE service = ?3 AND id = ?4",
        params![data_text(values)?, now, service, id],
    )?;
    Ok(())
}

/// The stored form of an instance's values.
fn data_text(values: &Map<String, Value>) -> Result<String, DbError> {
    serde_json::to_string(values).map_err(|e| DbError::Corrupt(e.to_string()))
}

fn read_row(conn: &rusqlite::Connection, service: &str, id: i64) -> Result<Option<Row>, DbError> {
    conn.query_row(
        "SELECT id, created_at, updated_at, data FROM model_instances WHERE service = ?1 AND id = ?2",
        params![service, id],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get::<_, String>(3)?)),
    )
    .optional()?
    .map(decode_row)
    .transpose()
}

fn decode_row((id, created_at, updated_at, data): (i64, i64, i64, String)) -> Result<Row, DbError> {
    match serde_json::from_str(&data) {
        Ok(Value::Object(values)) => Ok((id, created_at, updated_at, values)),
        _ => Err(DbError::Corrupt(format!(
            "model instance {id}: its data is not a JSON object"
        ))),
    }
}

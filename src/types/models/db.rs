//! Where models keep their instances: two tables of Herve's database, on a connection
//! of their own; or, for several nodes, the same two tables in their shared PostgreSQL,
//! so that any node answers for any instance.

use std::path::Path;

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::{Map, Value};

use crate::util::postgres::{within, SharedDb};
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

/// The same tables in the shared database.
const SHARED_MIGRATIONS: [&str; 1] = ["CREATE TABLE IF NOT EXISTS model_instances (
         service    TEXT NOT NULL,
         id         BIGINT NOT NULL,
         created_at BIGINT NOT NULL,
         updated_at BIGINT NOT NULL,
         data       TEXT NOT NULL,
         PRIMARY KEY (service, id)
     );
     CREATE TABLE IF NOT EXISTS model_sequences (
         service TEXT PRIMARY KEY,
         last_id BIGINT NOT NULL
     );"];

const SHARED_COLUMNS: &str = "SELECT id, created_at, updated_at, data FROM model_instances";

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
pub(crate) enum ModelsDb {
    /// In Herve's own SQLite file.
    Embedded(Database),
    /// In the database the nodes of a cluster share.
    Shared(SharedDb),
}

impl ModelsDb {
    /// Opens the tables in `shared` if there is one, else in the database at `path`,
    /// bringing them up to date.
    pub async fn open(path: &Path, shared: Option<&SharedDb>) -> Result<ModelsDb, DbError> {
        if let Some(shared) = shared {
            shared.migrate("models", &SHARED_MIGRATIONS).await?;
            return Ok(ModelsDb::Shared(shared.clone()));
        }
        let database = Database::open(path)?;
        database.migrate_blocking("models", &MIGRATIONS)?;
        Ok(ModelsDb::Embedded(database))
    }

    /// Stores a new instance of `service` with the next id of its own.
    pub async fn insert(&self, service: &str, values: Map<String, Value>) -> Result<Row, DbError> {
        let database = match self {
            ModelsDb::Embedded(database) => database,
            ModelsDb::Shared(db) => return within(shared_insert(db, service, values)).await,
        };
        let service = service.to_owned();
        database
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
        let database = match self {
            ModelsDb::Embedded(database) => database,
            ModelsDb::Shared(db) => return within(shared_replace(db, service, id, values)).await,
        };
        let service = service.to_owned();
        database
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
        let database = match self {
            ModelsDb::Embedded(database) => database,
            ModelsDb::Shared(db) => return within(shared_update(db, service, id, changes)).await,
        };
        let service = service.to_owned();
        database
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
        let database = match self {
            ModelsDb::Embedded(database) => database,
            ModelsDb::Shared(db) => return within(shared_get(db, service, id)).await,
        };
        let service = service.to_owned();
        database
            .call(move |conn| read_row(conn, &service, id))
            .await
    }

    /// Deletes instance `id`; whether there was one.
    pub async fn delete(&self, service: &str, id: i64) -> Result<bool, DbError> {
        let database = match self {
            ModelsDb::Embedded(database) => database,
            ModelsDb::Shared(db) => return within(shared_delete(db, service, id)).await,
        };
        let service = service.to_owned();
        database
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
        let database = match self {
            ModelsDb::Embedded(database) => database,
            ModelsDb::Shared(db) => {
                return within(shared_batch(db, service, after, rows, max_bytes)).await
            }
        };
        let service = service.to_owned();
        database
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
        let database = match self {
            ModelsDb::Embedded(database) => database,
            ModelsDb::Shared(db) => return within(shared_forget(db, service)).await,
        };
        let service = service.to_owned();
        database
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

async fn shared_insert(
    db: &SharedDb,
    service: &str,
    values: Map<String, Value>,
) -> Result<Row, DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let row = shared_insert_row(&tx, service, values).await?;
    tx.commit().await?;
    Ok(row)
}

async fn shared_insert_row(
    tx: &deadpool_postgres::Transaction<'_>,
    service: &str,
    values: Map<String, Value>,
) -> Result<Row, DbError> {
    let id: i64 = tx
        .query_one(
            "INSERT INTO model_sequences (service, last_id) VALUES ($1, 0)
             ON CONFLICT (service) DO UPDATE SET last_id = model_sequences.last_id + 1
             RETURNING last_id",
            &[&service],
        )
        .await?
        .try_get(0)?;
    let now = unix_now();
    tx.execute(
        "INSERT INTO model_instances (service, id, created_at, updated_at, data)
         VALUES ($1, $2, $3, $3, $4)",
        &[&service, &id, &now, &data_text(&values)?],
    )
    .await?;
    Ok((id, now, now, values))
}

/// Instance `id`, locked until the transaction ends when `for_update`.
async fn shared_read(
    client: &impl deadpool_postgres::GenericClient,
    service: &str,
    id: i64,
    for_update: bool,
) -> Result<Option<Row>, DbError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row = client
        .query_opt(
            &format!("{SHARED_COLUMNS} WHERE service = $1 AND id = $2{lock}"),
            &[&service, &id],
        )
        .await?;
    row.map(|row| {
        decode_row((
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        ))
    })
    .transpose()
}

async fn shared_write(
    tx: &deadpool_postgres::Transaction<'_>,
    service: &str,
    id: i64,
    values: &Map<String, Value>,
    now: i64,
) -> Result<(), DbError> {
    tx.execute(
        "UPDATE model_instances SET data = $1, updated_at = $2 WHERE service = $3 AND id = $4",
        &[&data_text(values)?, &now, &service, &id],
    )
    .await?;
    Ok(())
}

async fn shared_replace(
    db: &SharedDb,
    service: &str,
    id: i64,
    values: Map<String, Value>,
) -> Result<(bool, Row), DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let outcome = match shared_read(&tx, service, id, true).await? {
        Some((id, created_at, _, _)) => {
            let now = unix_now();
            shared_write(&tx, service, id, &values, now).await?;
            (false, (id, created_at, now, values))
        }
        None => (true, shared_insert_row(&tx, service, values).await?),
    };
    tx.commit().await?;
    Ok(outcome)
}

async fn shared_update(
    db: &SharedDb,
    service: &str,
    id: i64,
    changes: Map<String, Value>,
) -> Result<Option<Row>, DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let Some((id, created_at, _, mut values)) = shared_read(&tx, service, id, true).await? else {
        return Ok(None);
    };
    values.extend(changes);
    let now = unix_now();
    shared_write(&tx, service, id, &values, now).await?;
    tx.commit().await?;
    Ok(Some((id, created_at, now, values)))
}

async fn shared_get(db: &SharedDb, service: &str, id: i64) -> Result<Option<Row>, DbError> {
    let client = db.client().await?;
    shared_read(&client, service, id, false).await
}

async fn shared_delete(db: &SharedDb, service: &str, id: i64) -> Result<bool, DbError> {
    let client = db.client().await?;
    let deleted = client
        .execute(
            "DELETE FROM model_instances WHERE service = $1 AND id = $2",
            &[&service, &id],
        )
        .await?;
    Ok(deleted > 0)
}

async fn shared_batch(
    db: &SharedDb,
    service: &str,
    after: After,
    rows: u64,
    max_bytes: usize,
) -> Result<Vec<Row>, DbError> {
    let client = db.client().await?;
    let limit = i64::try_from(rows).unwrap_or(i64::MAX);
    let found = match after {
        After::Offset(offset) => {
            let offset = i64::try_from(offset).unwrap_or(i64::MAX);
            client
                .query(
                    &format!("{SHARED_COLUMNS} WHERE service = $1 ORDER BY id LIMIT $2 OFFSET $3"),
                    &[&service, &limit, &offset],
                )
                .await?
        }
        After::Id(id) => {
            client
                .query(
                    &format!(
                        "{SHARED_COLUMNS} WHERE service = $1 AND id > $3 ORDER BY id LIMIT $2"
                    ),
                    &[&service, &limit, &id],
                )
                .await?
        }
    };
    let (mut batch, mut bytes) = (Vec::new(), 0usize);
    for row in found {
        let data: String = row.try_get(3)?;
        bytes += data.len();
        if bytes > max_bytes && !batch.is_empty() {
            break;
        }
        batch.push(decode_row((
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            data,
        ))?);
    }
    Ok(batch)
}

async fn shared_forget(db: &SharedDb, service: &str) -> Result<(), DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "DELETE FROM model_instances WHERE service = $1",
        &[&service],
    )
    .await?;
    tx.execute(
        "DELETE FROM model_sequences WHERE service = $1",
        &[&service],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

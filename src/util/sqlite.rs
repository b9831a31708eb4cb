//! A SQLite connection used from async code: calls run on tokio's blocking pool, one at
//! a time on this connection, and writes go in immediate transactions.
//!
//! Herve's store and each built-in type that keeps data open their own connection to
//! the same database file (WAL lets readers and the writer proceed side by side), so
//! that a slow listing of one never queues the others' work behind one mutex.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::lock;

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused or failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The thread running the call failed.
    #[error("the database thread failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    /// PostgreSQL refused a statement.
    #[error("database error: {0}")]
    Postgres(#[source] tokio_postgres::Error),
    /// The shared database cannot be reached: changes are refused until it is back.
    #[error("the shared database cannot be reached ({0}); changes are refused until it is back")]
    Unavailable(String),
    /// The database is closed (Herve is stopping).
    #[error("the database is closed")]
    Closed,
    /// The data read back is not what was written.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The file could not be prepared.
    #[error("{path}: {source}")]
    File {
        /// The database file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Blocking threads a database's calls may take at once: enough to keep the
/// connection busy (3 cut reads of one model instance from 52k to 38k req/s; 16 keep
/// them), few enough that a flood does not grow the pool (1,000 connections reading:
/// 607 threads before, 121 with it).
const THREADS_PER_DATABASE: usize = 16;

/// One connection to a database file.
#[derive(Clone)]
pub struct Database {
    conn: Arc<Mutex<Connection>>,
    /// A bounded number of calls on the blocking pool at a time (one works, the next
    /// ones wait on the lock, ready to go): the others wait their turn as tasks, not
    /// as blocking threads (a burst of calls, such as token lookups for a flood of made-up
    /// tokens, once took a thread each).
    turns: Arc<tokio::sync::Semaphore>,
}

impl Database {
    /// Opens (creating if needed, mode 0600) the database at `path`: WAL, every commit
    /// durable before it returns (`synchronous=FULL`), foreign keys on.
    pub fn open(path: &Path) -> Result<Database, DbError> {
        restrict_to_owner(path)?;
        let conn = Connection::open(path)?;
        // WAL keeps readers and the writer apart; synchronous=FULL makes every commit
        // durable before it returns, so an acknowledged change survives a power cut.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(Database {
            conn: Arc::new(Mutex::new(conn)),
            turns: Arc::new(tokio::sync::Semaphore::new(THREADS_PER_DATABASE)),
        })
    }

    /// Runs `work` with the connection on the blocking pool.
    pub async fn call<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        // Held by the work itself, so a caller that goes away mid-call does not let
        // the next one onto the pool while the connection is still busy.
        let turn = Arc::clone(&self.turns)
            .acquire_owned()
            .await
            .map_err(|_| DbError::Closed)?;
        // A panic while holding the lock cannot leave a half-written transaction
        // behind (SQLite rolls it back), so a poisoned lock is still usable.
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            work(&mut lock(&conn))
        })
        .await?
    }

    /// Runs `work` in one transaction: committed if it returns `Ok`, rolled back
    /// otherwise. Immediate, so that a read-then-write inside it is never overtaken by
    /// another writer of the same file.
    pub async fn transaction<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, DbError> + Send + 'static,
    {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = work(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await
    }

    /// Runs `work` with the connection on this thread: for start-up, before serving.
    pub fn call_blocking<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        work(&mut lock(&self.conn))
    }

    /// Brings one component's tables up to `steps.len()`, one step at a time, at
    /// start-up. Each component (the store, each built-in type) keeps its own version
    /// in `herve_schema`; a step is a batch of SQL.
    pub fn migrate_blocking(&self, component: &str, steps: &[&str]) -> Result<(), DbError> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS herve_schema (
                 component TEXT PRIMARY KEY,
                 version   INTEGER NOT NULL
             );",
        )?;
        let current: i64 = tx
            .query_row(
                "SELECT version FROM herve_schema WHERE component = ?1",
                [component],
                |row| row.get(0),
            )
            .or_else(|error| match error {
                rusqlite::Error::QueryReturnedNoRows => Ok(0),
                other => Err(other),
            })?;
        let wanted = i64::try_from(steps.len()).unwrap_or(i64::MAX);
        if current > wanted {
            return Err(DbError::Corrupt(format!(
                "the tables of '{component}' have version {current}, newer than this Herve \
                 ({wanted}); upgrade Herve"
            )));
        }
        for step in steps.iter().skip(usize::try_from(current).unwrap_or(0)) {
            tx.execute_batch(step)?;
        }
        tx.execute(
            "INSERT INTO herve_schema (component, version) VALUES (?1, ?2)
             ON CONFLICT (component) DO UPDATE SET version = ?2",
            rusqlite::params![component, wanted],
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// The database and its journal files are for Herve's eyes only (mode 0600), also when
/// they existed already; SQLite gives new journal files the database's mode.
fn restrict_to_owner(path: &Path) -> Result<(), DbError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source: std::io::Error| DbError::File {
        path: path.display().to_string(),
        source,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_and_refuse_a_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(&dir.path().join("t.db")).expect("open");
        let steps = ["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (y INTEGER);"];
        db.migrate_blocking("test", &steps).expect("first");
        db.migrate_blocking("test", &steps)
            .expect("again: nothing to do");
        assert!(db.migrate_blocking("test", &steps[..1]).is_err());
    }

    #[test]
    fn a_burst_of_calls_takes_a_few_blocking_threads_not_one_each() {
        const NAME: &str = "sqlite-turns";
        let runtime = tokio::runtime::Builder::new_current_thread()
            .thread_name(NAME)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::open(&dir.path().join("t.db")).expect("open");
        runtime.block_on(async {
            let calls = (0..256).map(|_| {
                db.call(|conn| {
                    std::thread::sleep(Duration::from_micros(500));
                    Ok(conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))?)
                })
            });
            for answer in futures_util::future::join_all(calls).await {
                assert_eq!(answer.expect("answer"), 1);
            }
        });
        // Idle blocking threads linger for seconds: those alive now are all it took.
        let threads = std::fs::read_dir("/proc/self/task")
            .expect("/proc")
            .filter_map(Result::ok)
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == NAME)
            })
            .count();
        // A thread that gave its turn back may still be on its way to idle when the
        // next call is handed out: a few more than the turns, never one per call.
        assert!(
            threads <= 2 * THREADS_PER_DATABASE,
            "{threads} blocking threads for 256 calls"
        );
    }
}

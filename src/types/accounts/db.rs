//! Where `auth` services keep their users and tokens: two tables of Herve's database,
//! on a connection of their own; or, for several nodes, the same tables in their shared
//! PostgreSQL, so that a token issued by one node is good on every node.

use std::path::Path;

use rusqlite::{params, OptionalExtension};

use crate::util::postgres::{within, SharedDb};
use crate::util::sqlite::{Database, DbError};
use crate::util::unix_now;

/// The tables, one step per version. `IF NOT EXISTS`: Herve versions before
/// per-component migrations created them with the store's.
const MIGRATIONS: [&str; 1] = ["CREATE TABLE IF NOT EXISTS auth_users (
         service       TEXT NOT NULL,
         username      TEXT NOT NULL,
         password_hash TEXT NOT NULL,
         created_at    INTEGER NOT NULL,
         PRIMARY KEY (service, username)
     );
     CREATE TABLE IF NOT EXISTS auth_tokens (
         token_hash TEXT PRIMARY KEY,
         service    TEXT NOT NULL,
         username   TEXT NOT NULL,
         expires_at INTEGER NOT NULL
     );
     CREATE INDEX IF NOT EXISTS auth_tokens_by_service ON auth_tokens (service, username);"];

/// The same tables in the shared database.
const SHARED_MIGRATIONS: [&str; 1] = ["CREATE TABLE IF NOT EXISTS auth_users (
         service       TEXT NOT NULL,
         username      TEXT NOT NULL,
         password_hash TEXT NOT NULL,
         created_at    BIGINT NOT NULL,
         PRIMARY KEY (service, username)
     );
     CREATE TABLE IF NOT EXISTS auth_tokens (
         token_hash TEXT PRIMARY KEY,
         service    TEXT NOT NULL,
         username   TEXT NOT NULL,
         expires_at BIGINT NOT NULL
     );
     CREATE INDEX IF NOT EXISTS auth_tokens_by_service ON auth_tokens (service, username);"];

/// A user as clients see it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct User {
    pub username: String,
    pub created_at: i64,
}

/// The users and tokens of every `auth` service.
#[derive(Clone)]
pub(crate) enum AccountsDb {
    /// In Herve's own SQLite file.
    Embedded(Database),
    /// In the database the nodes of a cluster share.
    Shared(SharedDb),
}

impl AccountsDb {
    /// Opens the tables in `shared` if there is one, else in the database at `path`,
    /// bringing them up to date.
    pub async fn open(path: &Path, shared: Option<&SharedDb>) -> Result<AccountsDb, DbError> {
        if let Some(shared) = shared {
            shared.migrate("accounts", &SHARED_MIGRATIONS).await?;
            return Ok(AccountsDb::Shared(shared.clone()));
        }
        let database = Database::open(path)?;
        database.migrate_blocking("accounts", &MIGRATIONS)?;
        Ok(AccountsDb::Embedded(database))
    }

    /// Adds a user; `false` when the name is taken.
    pub async fn add_user(
        &self,
        service: &str,
        username: &str,
        password_hash: String,
        now: i64,
    ) -> Result<bool, DbError> {
        let database = match self {
            AccountsDb::Embedded(database) => database,
            AccountsDb::Shared(db) => {
                return within(shared_add_user(db, service, username, password_hash, now)).await
            }
        };
        let (service, username) = (service.to_owned(), username.to_owned());
        database
            .call(move |conn| {
                Ok(conn.execute(
                    "INSERT INTO auth_users (service, username, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (service, username) DO NOTHING",
                    params![service, username, password_hash, now],
                )? > 0)
            })
            .await
    }

    /// The password hash of a user, if there is one.
    pub async fn password_hash(
        &self,
        service: &str,
        username: &str,
    ) -> Result<Option<String>, DbError> {
        let database = match self {
            AccountsDb::Embedded(database) => database,
            AccountsDb::Shared(db) => {
                return within(shared_password_hash(db, service, username)).await
            }
        };
        let (service, username) = (service.to_owned(), username.to_owned());
        database
            .call(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT password_hash FROM auth_users WHERE service = ?1 AND username = ?2",
                        params![service, username],
                        |row| row.get(0),
                    )
                    .optional()?)
            })
            .await
    }

    /// Keeps a new token (by its hash) until `expires_at`; expired tokens of the
    /// service go while at it.
    pub async fn add_token(
        &self,
        service: &str,
        username: &str,
        token_hash: String,
        expires_at: i64,
    ) -> Result<(), DbError> {
        let database = match self {
            AccountsDb::Embedded(database) => database,
            AccountsDb::Shared(db) => {
                return within(shared_add_token(
                    db, service, username, token_hash, expires_at,
                ))
                .await
            }
        };
        let (service, username) = (service.to_owned(), username.to_owned());
        database
            .transaction(move |tx| {
                tx.execute(
                    "DELETE FROM auth_tokens WHERE service = ?1 AND expires_at <= ?2",
                    params![service, unix_now()],
                )?;
                tx.execute(
                    "INSERT INTO auth_tokens (token_hash, service, username, expires_at) VALUES (?1, ?2, ?3, ?4)",
                    params![token_hash, service, username, expires_at],
                )?;
                Ok(())
            })
            .await
    }

    /// The user a token (by its hash) belongs to, if it is valid and not expired.
    pub async fn user_of_token(
        &self,
        service: &str,
        token_hash: &str,
    ) -> Result<Option<User>, DbError> {
        let database = match self {
            AccountsDb::Embedded(database) => database,
            AccountsDb::Shared(db) => {
                return within(shared_user_of_token(db, service, token_hash)).await
            }
        };
        let (service, token_hash) = (service.to_owned(), token_hash.to_owned());
        database
            .call(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT u.username, u.created_at FROM auth_tokens t
                         JOIN auth_users u ON u.service = t.service AND u.username = t.username
                         WHERE t.token_hash = ?1 AND t.service = ?2 AND t.expires_at > ?3",
                        params![token_hash, service, unix_now()],
                        |row| {
                            Ok(User {
                                username: row.get(0)?,
                                created_at: row.get(1)?,
                            })
                        },
                    )
                    .optional()?)
            })
            .await
    }

    /// Forgets a token (by its hash).
    pub async fn remove_token(&self, token_hash: &str) -> Result<(), DbError> {
        let database = match self {
            AccountsDb::Embedded(database) => database,
            AccountsDb::Shared(db) => return within(shared_remove_token(db, token_hash)).await,
        };
        let token_hash = token_hash.to_owned();
        database
            .call(move |conn| {
                conn.execute(
                    "DELETE FROM auth_tokens WHERE token_hash = ?1",
                    params![token_hash],
                )?;
                Ok(())
            })
            .await
    }

    /// Deletes everything of `service`.
    pub async fn forget(&self, service: &str) -> Result<(), DbError> {
        let database = match self {
            AccountsDb::Embedded(database) => database,
            AccountsDb::Shared(db) => return within(shared_forget(db, service)).await,
        };
        let service = service.to_owned();
        database
            .transaction(move |tx| {
                tx.execute("DELETE FROM auth_tokens WHERE service = ?1", [&service])?;
                tx.execute("DELETE FROM auth_users WHERE service = ?1", [&service])?;
                Ok(())
            })
            .await
    }
}

async fn shared_add_user(
    db: &SharedDb,
    service: &str,
    username: &str,
    password_hash: String,
    now: i64,
) -> Result<bool, DbError> {
    let client = db.client().await?;
    let added = client
        .execute(
            "INSERT INTO auth_users (service, username, password_hash, created_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (service, username) DO NOTHING",
            &[&service, &username, &password_hash, &now],
        )
        .await?;
    Ok(added > 0)
}

async fn shared_password_hash(
    db: &SharedDb,
    service: &str,
    username: &str,
) -> Result<Option<String>, DbError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            "SELECT password_hash FROM auth_users WHERE service = $1 AND username = $2",
            &[&service, &username],
        )
        .await?;
    Ok(row.map(|row| row.try_get(0)).transpose()?)
}

async fn shared_add_token(
    db: &SharedDb,
    service: &str,
    username: &str,
    token_hash: String,
    expires_at: i64,
) -> Result<(), DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "DELETE FROM auth_tokens WHERE service = $1 AND expires_at <= $2",
        &[&service, &unix_now()],
    )
    .await?;
    tx.execute(
        "INSERT INTO auth_tokens (token_hash, service, username, expires_at) VALUES ($1, $2, $3, $4)",
        &[&token_hash, &service, &username, &expires_at],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn shared_user_of_token(
    db: &SharedDb,
    service: &str,
    token_hash: &str,
) -> Result<Option<User>, DbError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            "SELECT u.username, u.created_at FROM auth_tokens t
             JOIN auth_users u ON u.service = t.service AND u.username = t.username
             WHERE t.token_hash = $1 AND t.service = $2 AND t.expires_at > $3",
            &[&token_hash, &service, &unix_now()],
        )
        .await?;
    Ok(row
        .map(|row| {
            Ok::<_, tokio_postgres::Error>(User {
                username: row.try_get(0)?,
                created_at: row.try_get(1)?,
            })
        })
        .transpose()?)
}

async fn shared_remove_token(db: &SharedDb, token_hash: &str) -> Result<(), DbError> {
    let client = db.client().await?;
    client
        .execute(
            "DELETE FROM auth_tokens WHERE token_hash = $1",
            &[&token_hash],
        )
        .await?;
    Ok(())
}

async fn shared_forget(db: &SharedDb, service: &str) -> Result<(), DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    tx.execute("DELETE FROM auth_tokens WHERE service = $1", &[&service])
        .await?;
    tx.execute("DELETE FROM auth_users WHERE service = $1", &[&service])
        .await?;
    tx.commit().await?;
    Ok(())
}

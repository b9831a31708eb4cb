//! Where `auth` services keep their users and tokens: two tables of Herve's database,
//! on a connection of their own.

use std::path::Path;

use rusqlite::{params, OptionalExtension};

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

/// A user as clients see it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct User {
    pub username: String,
    pub created_at: i64,
}

/// The users and tokens of every `auth` service.
#[derive(Clone)]
pub(crate) struct AccountsDb {
    database: Database,
}

impl AccountsDb {
    /// Opens the tables in the database at `path`, bringing them up to date.
    pub fn open(path: &Path) -> Result<AccountsDb, DbError> {
        let database = Database::open(path)?;
        database.migrate_blocking("accounts", &MIGRATIONS)?;
        Ok(AccountsDb { database })
    }

    /// Adds a user; `false` when the name is taken.
    pub async fn add_user(
        &self,
        service: &str,
        username: &str,
        password_hash: String,
        now: i64,
    ) -> Result<bool, DbError> {
        let (service, username) = (service.to_owned(), username.to_owned());
        self.database
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
        let (service, username) = (service.to_owned(), username.to_owned());
        self.database
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
        let (service, username) = (service.to_owned(), username.to_owned());
        self.database
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
        let (service, token_hash) = (service.to_owned(), token_hash.to_owned());
        self.database
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
        let token_hash = token_hash.to_owned();
        self.database
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
        let service = service.to_owned();
        self.database
            .transaction(move |tx| {
                tx.execute("DELETE FROM auth_tokens WHERE service = ?1", [&service])?;
                tx.execute("DELETE FROM auth_users WHERE service = ?1", [&service])?;
                Ok(())
            })
            .await
    }
}

//! The store shared by several Herve nodes: PostgreSQL.
//!
//! Every change of a service is one transaction that also appends its uuid to
//! `herve_changes`, under one transaction-scoped advisory lock: revisions commit in the
//! order they are given, so a node that has applied revision N has seen every change
//! up to N. The commit announces itself with `NOTIFY`; notices are not durable, so
//! nodes read what changed from the table, on each notice and on a slow poll.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use futures_util::future::poll_fn;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use uuid::Uuid;

use super::{
    is_replaying, json_text, CertSource, Row, ServiceRecord, Status, Store, StoreError,
    StoredCertificate, StoredChallenge,
};
use crate::util::postgres::{within, SharedDb};
use crate::util::AbortOnDrop;

/// The schema, one step per version; applied by one node at a time.
const MIGRATIONS: [&str; 7] = [
    "CREATE TABLE services (
         seq              BIGSERIAL PRIMARY KEY,
         uuid             TEXT NOT NULL UNIQUE,
         name             TEXT NOT NULL UNIQUE,
         type             TEXT NOT NULL,
         description      TEXT NOT NULL,
         status           TEXT NOT NULL,
         detail           TEXT NOT NULL DEFAULT '',
         config           TEXT NOT NULL,
         user_description TEXT NOT NULL DEFAULT '',
         hosts            TEXT NOT NULL DEFAULT '[]',
         path             TEXT NOT NULL DEFAULT '',
         fields           TEXT NOT NULL DEFAULT '[]',
         created_at       BIGINT NOT NULL
     );
     CREATE TABLE certificates (
         host       TEXT NOT NULL,
         source     TEXT NOT NULL,
         pem        TEXT NOT NULL,
         updated_at BIGINT NOT NULL,
         PRIMARY KEY (host, source)
     );
     CREATE TABLE acme_accounts (
         directory   TEXT PRIMARY KEY,
         credentials TEXT NOT NULL
     );
     CREATE TABLE herve_changes (
         revision BIGSERIAL PRIMARY KEY,
         uuid     TEXT NOT NULL,
         at       TIMESTAMPTZ NOT NULL DEFAULT now()
     );
     CREATE TABLE herve_nodes (
         name         TEXT PRIMARY KEY,
         addr         TEXT NOT NULL,
         started_at   BIGINT NOT NULL,
         heartbeat_at TIMESTAMPTZ NOT NULL,
         revision     BIGINT NOT NULL,
         services     TEXT NOT NULL DEFAULT '[]'
     );
     CREATE TABLE herve_leases (
         uuid       TEXT PRIMARY KEY,
         node       TEXT NOT NULL,
         generation BIGINT NOT NULL,
         expires_at TIMESTAMPTZ NOT NULL
     );",
    "CREATE TABLE herve_challenges (
         host  TEXT NOT NULL,
         kind  TEXT NOT NULL,
         token TEXT NOT NULL,
         value BYTEA NOT NULL,
         key   BYTEA NOT NULL,
         PRIMARY KEY (host, kind, token)
     );",
    "CREATE INDEX herve_changes_at ON herve_changes (at);",
    "CREATE TABLE herve_claims (
         host TEXT NOT NULL,
         path TEXT NOT NULL,
         uuid TEXT NOT NULL,
         PRIMARY KEY (host, path)
     );
     CREATE INDEX herve_claims_by_uuid ON herve_claims (uuid);",
    "CREATE TABLE herve_sessions (
         digest     TEXT PRIMARY KEY,
         csrf       TEXT NOT NULL,
         expires_at BIGINT NOT NULL
     );",
    "CREATE TABLE herve_failures (
         client TEXT NOT NULL,
         node   TEXT NOT NULL,
         at     TIMESTAMPTZ NOT NULL DEFAULT now(),
         count  BIGINT NOT NULL
     );
     CREATE INDEX herve_failures_at ON herve_failures (at);",
    // What the nodes prove themselves to each other with: random, made once.
    "CREATE TABLE herve_secrets (
         name  TEXT PRIMARY KEY,
         value TEXT NOT NULL
     );",
];

/// The advisory lock ("HERVE" and 2) that puts changes in order.
const CHANGE_LOCK: i64 = 0x4845_5256_4502;

/// What `herve_changes` names when the certificates changed (no service has it).
pub(crate) const CERTIFICATES: Uuid = Uuid::nil();

/// What `herve_changes` names when the shared ACME challenges changed.
pub(crate) const CHALLENGES: Uuid = Uuid::max();

/// The channel changes are announced on.
const CHANNEL: &str = "herve_changes";

/// Changes are kept this long: a node that was away longer reloads everything.
const KEEP_CHANGES: &str = "1 hour";

const SERVICE_COLUMNS: &str = "s.seq, s.uuid, s.name, s.type, s.description, s.status, s.config,
     s.created_at, s.detail, s.user_description, s.hosts, s.path, s.fields";

/// A service that changed, and the revision of its last change.
#[derive(Debug)]
pub(crate) struct Change {
    pub revision: i64,
    pub uuid: Uuid,
}

/// A node as it last reported itself.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct NodeRow {
    pub name: String,
    pub addr: String,
    /// Unix seconds.
    pub started_at: i64,
    /// Milliseconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_ms: i64,
    /// The last revision it applied.
    pub revision: i64,
    /// How many services run on it.
    pub running: i64,
    /// The programs (services that run on one node at a time) it runs or forwards to
    /// another node, as it wrote them.
    pub services: serde_json::Value,
}

/// Who runs a service that runs on one node at a time, and under which generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    pub node: String,
    pub generation: i64,
}

/// A [`Store`] in a PostgreSQL database, shared by every node.
#[derive(Clone, Debug)]
pub(crate) struct PostgresStore {
    db: SharedDb,
    /// This node's name, for the claims it takes.
    node: String,
}

impl PostgresStore {
    /// The store in `db` for node `node`, its schema brought up to date (one node at
    /// a time).
    pub async fn open(db: SharedDb, node: String) -> Result<Self, StoreError> {
        db.migrate("store", &MIGRATIONS).await?;
        Ok(PostgresStore { db, node })
    }

    /// The secret the nodes put on the requests they forward to each other (see
    /// [`crate::contract::PEER_HEADER`]): made by the first node that asks, the same
    /// for every node after, known to no one but them (not derived from anything).
    pub async fn peer_secret(&self) -> Result<String, StoreError> {
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|error| {
            StoreError::Database(crate::util::sqlite::DbError::Corrupt(format!(
                "no randomness for the nodes' secret: {error}"
            )))
        })?;
        let made: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
        within(async {
            let client = self.db.client().await?;
            client
                .execute(
                    "INSERT INTO herve_secrets (name, value) VALUES ('peer', $1)
                     ON CONFLICT (name) DO NOTHING",
                    &[&made],
                )
                .await?;
            let row = client
                .query_one("SELECT value FROM herve_secrets WHERE name = 'peer'", &[])
                .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    /// The store in `db`, whose schema [`PostgresStore::open`] brought up to date.
    pub fn attach(db: SharedDb, node: String) -> Self {
        PostgresStore { db, node }
    }

    /// A transaction in which a change is made, its place in the order taken.
    async fn begin(client: &mut deadpool_postgres::Object) -> Result<Transaction<'_>, StoreError> {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHANGE_LOCK])
            .await?;
        Ok(tx)
    }

    /// Records that `uuid` changed, announces it and commits.
    async fn finish(tx: Transaction<'_>, uuid: Uuid) -> Result<(), StoreError> {
        let revision: i64 = tx
            .query_one(
                "INSERT INTO herve_changes (uuid) VALUES ($1) RETURNING revision",
                &[&uuid.to_string()],
            )
            .await?
            .try_get(0)?;
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &revision.to_string()],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The last revision given.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        within(async {
            let client = self.db.client().await?;
            let row = client
                .query_one("SELECT coalesce(max(revision), 0) FROM herve_changes", &[])
                .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    /// What changed after `revision`: each service once, in the order of its last
    /// change, with that change's revision; at most `limit` of them.
    pub async fn changes_since(
        &self,
        revision: i64,
        limit: i64,
    ) -> Result<Vec<Change>, StoreError> {
        within(async {
            let client = self.db.client().await?;
            let rows = client
                .query(
                    "SELECT uuid, max(revision) FROM herve_changes WHERE revision > $1
                     GROUP BY uuid ORDER BY 2 LIMIT $2",
                    &[&revision, &limit],
                )
                .await?;
            // A change that cannot be read fails the call (it is read again), never
            // skipped; only a uuid that does not parse names nothing to apply.
            let mut changes = Vec::with_capacity(rows.len());
            for row in &rows {
                let uuid: &str = row.try_get(0)?;
                let revision: i64 = row.try_get(1)?;
                if let Ok(uuid) = Uuid::try_parse(uuid) {
                    changes.push(Change { uuid, revision });
                }
            }
            Ok(changes)
        })
        .await
    }

    /// A connection that hears every announced change: each notice (or a lost
    /// connection, which closes the receiver) arrives on the receiver.
    pub async fn listen(&self) -> Result<Listener, StoreError> {
        within(async {
            let (client, mut connection) = self.db.connect().await?;
            let (notify, notices) = mpsc::channel(1);
            let driver = AbortOnDrop::spawn(async move {
                while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                    match message {
                        // Many notices make one catch-up.
                        Ok(AsyncMessage::Notification(_)) => {
                            let _ = notify.try_send(());
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%error, "the database connection that hears changes ended");
                            break;
                        }
                    }
                }
            });
            client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
            Ok(Listener {
                _client: client,
                notices,
                _driver: driver,
            })
        })
        .await
    }

    /// Says that `node` is alive, what it applied and what it runs.
    pub async fn heartbeat(
        &self,
        node: &str,
        addr: &str,
        started_at: i64,
        revision: i64,
        services: &serde_json::Value,
    ) -> Result<(), StoreError> {
        within(async {
            let client = self.db.client().await?;
            client
                .execute(
                    "INSERT INTO herve_nodes (name, addr, started_at, heartbeat_at, revision, services)
                     VALUES ($1, $2, $3, now(), $4, $5)
                     ON CONFLICT (name) DO UPDATE SET addr = excluded.addr,
                         started_at = excluded.started_at, heartbeat_at = now(),
                         revision = excluded.revision, services = excluded.services",
                    &[&node, &addr, &started_at, &revision, &services.to_string()],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// Tells the other nodes of failed admin authentications here, by client address.
    pub async fn record_failures(
        &self,
        node: &str,
        failures: &[(String, i64)],
    ) -> Result<(), StoreError> {
        let (clients, counts): (Vec<&str>, Vec<i64>) = failures
            .iter()
            .map(|(client, count)| (client.as_str(), *count))
            .unzip();
        within(async {
            let client = self.db.client().await?;
            // One statement however many addresses failed: a flood from many
            // addresses must not turn into as many round trips every second.
            client
                .execute(
                    "INSERT INTO herve_failures (client, node, count)
                     SELECT address, $1, failed FROM unnest($2::TEXT[], $3::BIGINT[])
                         AS told(address, failed)",
                    &[&node, &clients, &counts],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// The client addresses that failed `max` times or more across the cluster within
    /// the last `window_s` seconds.
    pub async fn refused_clients(
        &self,
        max: i64,
        window_s: i64,
    ) -> Result<Vec<String>, StoreError> {
        within(async {
            let client = self.db.client().await?;
            let rows = client
                .query(
                    "SELECT client FROM herve_failures
                     WHERE at > now() - $2 * interval '1 second'
                     GROUP BY client HAVING sum(count)::BIGINT >= $1 LIMIT 10000",
                    &[&max, &(window_s as f64)],
                )
                .await?;
            Ok(rows
                .into_iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Forgets changes older than any node needs (a node away longer reloads all), and
    /// failed authentications older than any window.
    pub async fn prune_changes(&self) -> Result<(), StoreError> {
        within(async {
            let client = self.db.client().await?;
            client
                .execute(
                    "DELETE FROM herve_failures WHERE at < now() - interval '10 minutes'",
                    &[],
                )
                .await?;
            // Leases given up are kept (expired) so that generations never repeat;
            // those of services that are gone (uuids are never used again) can go.
            client
                .execute(
                    "DELETE FROM herve_leases WHERE expires_at < now() - interval '1 hour'
                     AND uuid NOT IN (SELECT uuid FROM services)",
                    &[],
                )
                .await?;
            client
                .execute(
                    &format!(
                        "DELETE FROM herve_changes WHERE at < now() - interval '{KEEP_CHANGES}'"
                    ),
                    &[],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// Every node that ever reported, most recently heard first.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        within(async {
            let client = self.db.client().await?;
            let rows = client
                .query(
                    "SELECT name, addr, started_at,
                            (extract(epoch FROM now() - heartbeat_at) * 1000)::BIGINT,
                            revision, services
                     FROM herve_nodes ORDER BY heartbeat_at DESC, name",
                    &[],
                )
                .await?;
            Ok(rows
                .into_iter()
                .map(|row| {
                    let written: serde_json::Value =
                        serde_json::from_str(row.try_get::<_, &str>(5)?).unwrap_or_default();
                    Ok(NodeRow {
                        name: row.try_get(0)?,
                        addr: row.try_get(1)?,
                        started_at: row.try_get(2)?,
                        heartbeat_age_ms: row.try_get(3)?,
                        revision: row.try_get(4)?,
                        running: written["running"].as_i64().unwrap_or(0),
                        services: match &written["programs"] {
                            serde_json::Value::Array(programs) => {
                                serde_json::Value::Array(programs.clone())
                            }
                            _ => serde_json::Value::Array(Vec::new()),
                        },
                    })
                })
                .collect::<Result<_, tokio_postgres::Error>>()?)
        })
        .await
    }

    /// Takes the lease of service `uuid` for `node`, for `ttl`: granted when nobody
    /// holds it, the holder's has expired, or `node` holds it already. Every take gets
    /// a new generation (never one used before: a lease given up is expired, not
    /// deleted), so renewals made under an earlier one fail, even this node's own.
    pub async fn take_lease(
        &self,
        uuid: Uuid,
        node: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        self.take_lease_of(&uuid.to_string(), node, ttl).await
    }

    /// [`PostgresStore::take_lease`] of anything named by `key`.
    async fn take_lease_of(
        &self,
        key: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        within(async {
            let client = self.db.client().await?;
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            let row = client
                .query_opt(
                    "INSERT INTO herve_leases (uuid, node, generation, expires_at)
                     VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond')
                     ON CONFLICT (uuid) DO UPDATE SET
                         generation = herve_leases.generation + 1,
                         node = excluded.node, expires_at = excluded.expires_at
                     WHERE herve_leases.node = excluded.node OR herve_leases.expires_at < now()
                     RETURNING node, generation",
                    &[&key, &node, &(ttl_ms as f64)],
                )
                .await?;
            Ok(row.map(|row| lease_row(&row)).transpose()?)
        })
        .await
    }

    /// Renews every lease `node` holds under the generation it knows, for `ttl`; the
    /// uuids whose lease it still holds.
    pub async fn renew_leases(
        &self,
        node: &str,
        held: &[(Uuid, i64)],
        ttl: Duration,
    ) -> Result<Vec<Uuid>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        within(async {
            let client = self.db.client().await?;
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX) as f64;
            let mut kept = Vec::with_capacity(held.len());
            for (uuid, generation) in held {
                let renewed = client
                    .execute(
                        "UPDATE herve_leases SET expires_at = now() + $4 * interval '1 millisecond'
                         WHERE uuid = $1 AND node = $2 AND generation = $3",
                        &[&uuid.to_string(), &node, generation, &ttl_ms],
                    )
                    .await?;
                if renewed == 1 {
                    kept.push(*uuid);
                }
            }
            Ok(kept)
        })
        .await
    }

    /// Who holds the lease of `uuid` now, if anyone holds an unexpired one.
    pub async fn lease_holder(&self, uuid: Uuid) -> Result<Option<Lease>, StoreError> {
        within(async {
            let client = self.db.client().await?;
            let row = client
                .query_opt(
                    "SELECT node, generation FROM herve_leases
                     WHERE uuid = $1 AND expires_at >= now()",
                    &[&uuid.to_string()],
                )
                .await?;
            Ok(row.map(|row| lease_row(&row)).transpose()?)
        })
        .await
    }

    /// Gives up the lease of `uuid` if `node` holds it.
    pub async fn release_lease(&self, uuid: Uuid, node: &str) -> Result<(), StoreError> {
        within(async {
            let client = self.db.client().await?;
            client
                .execute(
                    "UPDATE herve_leases SET expires_at = now() - interval '1 millisecond',
                                             generation = generation + 1
                     WHERE uuid = $1 AND node = $2",
                    &[&uuid.to_string(), &node],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// The address of node `name`, as it reported it.
    pub async fn node_addr(&self, name: &str) -> Result<Option<String>, StoreError> {
        within(async {
            let client = self.db.client().await?;
            let row = client
                .query_opt("SELECT addr FROM herve_nodes WHERE name = $1", &[&name])
                .await?;
            Ok(row.map(|row| row.try_get(0)).transpose()?)
        })
        .await
    }
}

/// A connection listening for changes; dropping it closes the connection.
pub(crate) struct Listener {
    _client: tokio_postgres::Client,
    /// One item per batch of notices; closed when the connection ends.
    pub notices: mpsc::Receiver<()>,
    _driver: AbortOnDrop,
}

/// A unique violation on the service's name: another node registered the name first.
fn name_taken(error: tokio_postgres::Error, name: &str) -> StoreError {
    if error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        StoreError::NameTaken(name.to_owned())
    } else {
        error.into()
    }
}

/// The routes `record` claims, as the registry counts them: its path on each of its
/// hosts, or on every host (`""`) without hosts; nothing without a path.
fn claims_of(record: &ServiceRecord) -> Vec<(String, String)> {
    let Some(path) = &record.path else {
        return Vec::new();
    };
    if record.hosts.is_empty() {
        return vec![(String::new(), path.clone())];
    }
    record
        .hosts
        .iter()
        .map(|host| (host.clone(), path.clone()))
        .collect()
}

/// Makes the claims of `record` its own in the transaction: two nodes registering the
/// same route at once cannot both succeed (each node checks its own view first).
async fn claim_routes(tx: &Transaction<'_>, record: &ServiceRecord) -> Result<(), StoreError> {
    let uuid = record.uuid.to_string();
    tx.execute("DELETE FROM herve_claims WHERE uuid = $1", &[&uuid])
        .await?;
    for (host, path) in claims_of(record) {
        let claimed = tx
            .execute(
                "INSERT INTO herve_claims (host, path, uuid) VALUES ($1, $2, $3)
                 ON CONFLICT (host, path) DO NOTHING",
                &[&host, &path, &uuid],
            )
            .await?;
        if claimed == 0 {
            let owner: Option<String> = tx
                .query_opt(
                    "SELECT s.name FROM herve_claims c JOIN services s ON s.uuid = c.uuid
                     WHERE c.host = $1 AND c.path = $2",
                    &[&host, &path],
                )
                .await?
                .and_then(|row| row.try_get(0).ok());
            let route = match (host.is_empty(), path.as_str()) {
                (true, _) => path.clone(),
                (false, "/") => host.clone(),
                (false, _) => format!("{host}{path}"),
            };
            return Err(StoreError::RouteTaken {
                route,
                owner: owner.unwrap_or_default(),
            });
        }
    }
    Ok(())
}

/// The `services` columns of `row` from `first` on, as [`SERVICE_COLUMNS`] lists them.
fn service_row(row: &tokio_postgres::Row, first: usize) -> Result<Row, tokio_postgres::Error> {
    Ok(Row {
        seq: row.try_get(first)?,
        uuid: row.try_get(first + 1)?,
        name: row.try_get(first + 2)?,
        type_name: row.try_get(first + 3)?,
        description: row.try_get(first + 4)?,
        status: row.try_get(first + 5)?,
        config: row.try_get(first + 6)?,
        created_at: row.try_get(first + 7)?,
        detail: row.try_get(first + 8)?,
        user_description: row.try_get(first + 9)?,
        hosts: row.try_get(first + 10)?,
        path: row.try_get(first + 11)?,
        fields: row.try_get(first + 12)?,
    })
}

/// The lease of `row` (node, generation).
fn lease_row(row: &tokio_postgres::Row) -> Result<Lease, tokio_postgres::Error> {
    Ok(Lease {
        node: row.try_get(0)?,
        generation: row.try_get(1)?,
    })
}

#[async_trait]
impl Store for PostgresStore {
    async fn load(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        within(async {
            let client = self.db.client().await?;
            let rows = client
                .query(
                    &format!("SELECT {SERVICE_COLUMNS} FROM services s ORDER BY s.seq"),
                    &[],
                )
                .await?;
            let mut records = Vec::with_capacity(rows.len());
            for row in &rows {
                records.extend(service_row(row, 0)?.into_record());
            }
            Ok(records)
        })
        .await
    }

    async fn get(&self, uuid: Uuid) -> Result<Option<ServiceRecord>, StoreError> {
        within(async {
            let client = self.db.client().await?;
            let row = client
                .query_opt(
                    &format!("SELECT {SERVICE_COLUMNS} FROM services s WHERE s.uuid = $1"),
                    &[&uuid.to_string()],
                )
                .await?;
            Ok(match row {
                Some(row) => service_row(&row, 0)?.into_record(),
                None => None,
            })
        })
        .await
    }

    async fn insert(&self, record: &ServiceRecord) -> Result<i64, StoreError> {
        within(async {
            let mut client = self.db.client().await?;
            let tx = Self::begin(&mut client).await?;
            let seq: i64 = tx
                .query_one(
                    "INSERT INTO services (uuid, name, type, description, status, config, created_at,
                                           detail, user_description, hosts, path, fields)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                     RETURNING seq",
                    &[
                        &record.uuid.to_string(),
                        &record.name,
                        &record.type_name,
                        &record.description,
                        &record.status.as_str(),
                        &record.config.to_string(),
                        &record.created_at,
                        &record.detail,
                        &record.user_description.clone().unwrap_or_default(),
                        &json_text(&record.hosts),
                        &record.path.clone().unwrap_or_default(),
                        &json_text(&record.fields),
                    ],
                )
                .await
                .map_err(|error| name_taken(error, &record.name))?
                .try_get(0)?;
            claim_routes(&tx, record).await?;
            Self::finish(tx, record.uuid).await?;
            Ok(seq)
        })
        .await
    }

    async fn update(&self, record: &ServiceRecord) -> Result<(), StoreError> {
        if is_replaying() {
            return Ok(());
        }
        within(async {
            let mut client = self.db.client().await?;
            let tx = Self::begin(&mut client).await?;
            let changed = tx
                .execute(
                    "UPDATE services SET user_description = $1, hosts = $2, path = $3, fields = $4,
                                         config = $5
                     WHERE uuid = $6",
                    &[
                        &record.user_description.clone().unwrap_or_default(),
                        &json_text(&record.hosts),
                        &record.path.clone().unwrap_or_default(),
                        &json_text(&record.fields),
                        &record.config.to_string(),
                        &record.uuid.to_string(),
                    ],
                )
                .await?;
            if changed == 0 {
                return Err(StoreError::Missing(record.uuid));
            }
            claim_routes(&tx, record).await?;
            Self::finish(tx, record.uuid).await
        })
        .await
    }

    async fn set_status(&self, uuid: Uuid, status: Status, detail: &str) -> Result<(), StoreError> {
        if is_replaying() {
            return Ok(());
        }
        within(async {
            let mut client = self.db.client().await?;
            let tx = Self::begin(&mut client).await?;
            let changed = tx
                .execute(
                    "UPDATE services SET status = $1, detail = $2 WHERE uuid = $3",
                    &[&status.as_str(), &detail, &uuid.to_string()],
                )
                .await?;
            if changed == 0 {
                return Err(StoreError::Missing(uuid));
            }
            Self::finish(tx, uuid).await
        })
        .await
    }

    async fn remove(&self, uuid: Uuid) -> Result<(), StoreError> {
        if is_replaying() {
            return Ok(());
        }
        within(async {
            let mut client = self.db.client().await?;
            let tx = Self::begin(&mut client).await?;
            tx.execute("DELETE FROM services WHERE uuid = $1", &[&uuid.to_string()])
                .await?;
            // Its lease goes when its holder stops it (an unregistered service does
            // not run); its claims go now.
            tx.execute(
                "DELETE FROM herve_claims WHERE uuid = $1",
                &[&uuid.to_string()],
            )
            .await?;
            Self::finish(tx, uuid).await
        })
        .await
    }

    async fn certificates(&self) -> Result<Vec<StoredCertificate>, StoreError> {
        within(async {
            let client = self.db.client().await?;
            let rows = client
                .query(
                    "SELECT host, source, pem, updated_at FROM certificates",
                    &[],
                )
                .await?;
            Ok(rows
                .into_iter()
                .filter_map(|row| {
                    Some(StoredCertificate {
                        source: CertSource::parse(row.try_get::<_, &str>(1).ok()?)?,
                        host: row.try_get(0).ok()?,
                        pem: row.try_get(2).ok()?,
                        updated_at: row.try_get(3).ok()?,
                    })
                })
                .collect())
        })
        .await
    }

    async fn put_certificate(&self, certificate: &StoredCertificate) -> Result<(), StoreError> {
        within(async {
            let mut client = self.db.client().await?;
            let tx = Self::begin(&mut client).await?;
            tx.execute(
                "INSERT INTO certificates (host, source, pem, updated_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (host, source)
                     DO UPDATE SET pem = excluded.pem, updated_at = excluded.updated_at",
                &[
                    &certificate.host,
                    &certificate.source.as_str(),
                    &certificate.pem,
                    &certificate.updated_at,
                ],
            )
            .await?;
            Self::finish(tx, CERTIFICATES).await
        })
        .await
    }

    async fn remove_certificate(&self, host: &str, source: CertSource) -> Result<bool, StoreError> {
        within(async {
            let mut client = self.db.client().await?;
            let tx = Self::begin(&mut client).await?;
            let removed = tx
                .execute(
                    "DELETE FROM certificates WHERE host = $1 AND source = $2",
                    &[&host, &source.as_str()],
                )
                .await?;
            Self::finish(tx, CERTIFICATES).await?;
            Ok(removed > 0)
        })
        .await
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn claim_order(&self, host: &str, ttl: Duration) -> Result<bool, StoreError> {
        let lease = self
            .take_lease_of(&format!("acme:{host}"), &self.node, ttl)
            .await?;
        Ok(lease.is_some_and(|lease| lease.node == self.node))
    }

    async fn release_order(&self, host: &str) -> Result<(), StoreError> {
        within(async {
            let client = self.db.client().await?;
            client
                .execute(
                    "DELETE FROM herve_leases WHERE uuid = $1 AND node = $2",
                    &[&format!("acme:{host}"), &self.node],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn put_challenge(&self, challenge: &StoredChallenge) -> Result<(), StoreError> {
        let (host, kind, token, value, key) = match challenge {
            StoredChallenge::Http {
                host,
                token,
                key_authorization,
            } => (
                host,
                "http-01",
                token.as_str(),
                key_authorization.as_bytes(),
                &[][..],
            ),
            StoredChallenge::TlsAlpn { host, cert, key } => {
                (host, "tls-alpn-01", "", cert.as_slice(), key.as_slice())
            }
        };
        within(async {
            let mut client = self.db.client().await?;
            let tx = Self::begin(&mut client).await?;
            tx.execute(
                "INSERT INTO herve_challenges (host, kind, token, value, key)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (host, kind, token) DO UPDATE SET value = excluded.value,
                     key = excluded.key",
                &[host, &kind, &token, &value, &key],
            )
            .await?;
            Self::finish(tx, CHALLENGES).await
        })
        .await
    }

    async fn remove_challenges(&self, host: &str) -> Result<(), StoreError> {
        within(async {
            let mut client = self.db.client().await?;
            let tx = Self::begin(&mut client).await?;
            tx.execute("DELETE FROM herve_challenges WHERE host = $1", &[&host])
                .await?;
            Self::finish(tx, CHALLENGES).await
        })
        .await
    }

    async fn challenges(&self) -> Result<Vec<StoredChallenge>, StoreError> {
        within(async {
            let client = self.db.client().await?;
            let rows = client
                .query(
                    "SELECT host, kind, token, value, key FROM herve_challenges",
                    &[],
                )
                .await?;
            Ok(rows
                .into_iter()
                .filter_map(|row| {
                    let host: String = row.try_get(0).ok()?;
                    match row.try_get::<_, &str>(1).ok()? {
                        "http-01" => Some(StoredChallenge::Http {
                            host,
                            token: row.try_get(2).ok()?,
                            key_authorization: String::from_utf8(row.try_get(3).ok()?).ok()?,
                        }),
                        "tls-alpn-01" => Some(StoredChallenge::TlsAlpn {
                            host,
                            cert: row.try_get(3).ok()?,
                            key: row.try_get(4).ok()?,
                        }),
                        _ => None,
                    }
                })
                .collect())
        })
        .await
    }

    async fn put_session(
        &self,
        digest: &str,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        within(async {
            let client = self.db.client().await?;
            client
                .execute(
                    "DELETE FROM herve_sessions WHERE expires_at < $1",
                    &[&crate::util::unix_now()],
                )
                .await?;
            client
                .execute(
                    "INSERT INTO herve_sessions (digest, csrf, expires_at) VALUES ($1, $2, $3)",
                    &[&digest, &csrf, &expires_at],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn session(&self, digest: &str) -> Result<Option<(String, i64)>, StoreError> {
        within(async {
            let client = self.db.client().await?;
            let row = client
                .query_opt(
                    "SELECT csrf, expires_at FROM herve_sessions WHERE digest = $1",
                    &[&digest],
                )
                .await?;
            Ok(row
                .map(|row| Ok::<_, tokio_postgres::Error>((row.try_get(0)?, row.try_get(1)?)))
                .transpose()?)
        })
        .await
    }

    async fn remove_session(&self, digest: &str) -> Result<(), StoreError> {
        within(async {
            let client = self.db.client().await?;
            client
                .execute("DELETE FROM herve_sessions WHERE digest = $1", &[&digest])
                .await?;
            Ok(())
        })
        .await
    }

    async fn acme_account(&self, directory: &str) -> Result<Option<String>, StoreError> {
        within(async {
            let client = self.db.client().await?;
            let row = client
                .query_opt(
                    "SELECT credentials FROM acme_accounts WHERE directory = $1",
                    &[&directory],
                )
                .await?;
            Ok(row.map(|row| row.try_get(0)).transpose()?)
        })
        .await
    }

    async fn put_acme_account(&self, directory: &str, credentials: &str) -> Result<(), StoreError> {
        within(async {
            let client = self.db.client().await?;
            client
                .execute(
                    "INSERT INTO acme_accounts (directory, credentials) VALUES ($1, $2)
                     ON CONFLICT (directory) DO UPDATE SET credentials = excluded.credentials",
                    &[&directory, &credentials],
                )
                .await?;
            Ok(())
        })
        .await
    }
}

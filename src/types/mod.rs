//! The built-in service types, one file or folder each. Each implements
//! [`ServiceType`](crate::contract::ServiceType) exactly as a user's type would, with
//! nothing but the contract, the upstream toolkit and small utilities.

pub(crate) mod accounts;
pub(crate) mod echo;
pub(crate) mod models;
pub(crate) mod ping;
pub(crate) mod process;
pub(crate) mod proxy;
pub(crate) mod static_files;

use std::path::PathBuf;
use std::sync::Arc;

use crate::contract::AnyServiceType;
use crate::upstream::{Prober, TrustedProxies};
use crate::util::hashing::HashPool;
use crate::util::sqlite::DbError;

/// What the built-in types need from the Herve they run in.
pub(crate) struct Builtins {
    /// Herve's data directory: never reachable by a program or a static site.
    pub data_dir: PathBuf,
    /// The database file where `models` and `auth` keep their data (on connections
    /// of their own).
    pub database: PathBuf,
    /// The database the nodes of a cluster share: `models` and `auth` keep their data
    /// there instead, so that any node answers any request.
    pub shared: Option<crate::util::postgres::SharedDb>,
    /// Where password hashes run.
    pub hashing: Arc<HashPool>,
    /// The proxies in front of Herve whose forwarding headers are believed.
    pub trusted: TrustedProxies,
}

/// Every built-in type.
pub(crate) async fn builtin(deps: &Builtins) -> Result<Vec<Arc<dyn AnyServiceType>>, DbError> {
    let prober = Prober::default();
    Ok(vec![
        Arc::new(echo::Echo),
        Arc::new(ping::Ping),
        Arc::new(proxy::ProxyType::new(prober.clone(), deps.trusted.clone())),
        Arc::new(process::ProcessType::new(
            prober,
            &deps.data_dir,
            deps.trusted.clone(),
        )),
        Arc::new(static_files::StaticType::new(&deps.data_dir)),
        Arc::new(models::ModelsType::open(&deps.database, deps.shared.as_ref()).await?),
        Arc::new(
            accounts::AuthType::open(
                &deps.database,
                deps.shared.as_ref(),
                Arc::clone(&deps.hashing),
            )
            .await?,
        ),
    ])
}

/// The answer when the data of `what` ("The data", "The accounts") could not be read or
/// saved: 503 while the shared database is away (any node says the same), else 500.
pub(crate) fn data_failed(what: &str, error: DbError) -> crate::contract::http::ApiError {
    use crate::contract::http::ApiError;
    match error {
        DbError::Unavailable(_) => ApiError::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} cannot be reached for now: the shared database is away."),
        )
        .caused_by(error),
        other => ApiError::internal(format!("{what} could not be read or saved."), other),
    }
}

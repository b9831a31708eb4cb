//! The catalog of service types a Herve knows, and the built-in types.
//!
//! Each built-in type lives in its own file and implements
//! [`ServiceType`] exactly as a user's type would.

pub mod auth;
pub mod echo;
mod field;
pub mod models;
pub mod ping;
pub mod process;
pub mod proxy;
pub mod static_files;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::contract::ServiceType;
use crate::store::sqlite::SqliteStore;
use crate::upstream::TrustedProxies;
use crate::util::hashing::HashPool;

/// The service types a Herve can register, by name.
#[derive(Clone, Default)]
pub struct TypeCatalog {
    types: HashMap<String, Arc<dyn ServiceType>>,
}

impl TypeCatalog {
    /// A catalog with every built-in type; those that keep data keep it in `database`.
    pub fn builtin(
        database: &SqliteStore,
        hashing: &Arc<HashPool>,
        data_dir: &Path,
        trusted: &TrustedProxies,
    ) -> Self {
        let mut catalog = TypeCatalog::default();
        let client = crate::upstream::new_client();
        catalog.add(models::ModelsType::new(database.clone()));
        catalog.add(auth::AuthType::new(database.clone(), Arc::clone(hashing)));
        catalog.add(static_files::StaticType::new(data_dir));
        catalog.add(echo::Echo);
        catalog.add(ping::Ping);
        catalog.add(proxy::ProxyType::new(client.clone(), trusted.clone()));
        catalog.add(process::ProcessType::new(client, data_dir, trusted.clone()));
        catalog
    }

    /// Adds a type, replacing a type of the same name.
    pub fn add(&mut self, service_type: impl ServiceType) {
        let service_type: Arc<dyn ServiceType> = Arc::new(service_type);
        self.types
            .insert(service_type.name().to_owned(), service_type);
    }

    /// Adds every type of `other`, replacing types of the same names.
    pub fn extend(&mut self, other: TypeCatalog) {
        self.types.extend(other.types);
    }

    /// The type registered under `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn ServiceType>> {
        self.types.get(name)
    }

    /// The names of every type, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.types.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// The content type of the built-in types' text answers, as the first Herve sent it.
const TEXT_PLAIN: &str = "text/plain; charset=UTF-8";

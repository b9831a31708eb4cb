//! The service types a Herve knows, by name.

use std::collections::HashMap;
use std::sync::Arc;

use crate::contract::{AnyServiceType, ServiceType};

/// The service types a Herve can register, by name.
#[derive(Clone, Default)]
pub(crate) struct TypeCatalog {
    types: HashMap<String, Arc<dyn AnyServiceType>>,
}

impl TypeCatalog {
    /// Adds a type, replacing a type of the same name.
    pub fn add(&mut self, service_type: impl ServiceType) {
        self.add_shared(Arc::new(service_type));
    }

    /// Adds a type already shared, replacing a type of the same name.
    pub fn add_shared(&mut self, service_type: Arc<dyn AnyServiceType>) {
        self.types
            .insert(service_type.name().to_owned(), service_type);
    }

    /// Adds every type of `other`, replacing types of the same names.
    pub fn extend(&mut self, other: TypeCatalog) {
        self.types.extend(other.types);
    }

    /// Every type, by name.
    pub fn all(&self) -> Vec<&Arc<dyn AnyServiceType>> {
        let mut all: Vec<_> = self.types.values().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// The type registered under `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn AnyServiceType>> {
        self.types.get(name)
    }
}

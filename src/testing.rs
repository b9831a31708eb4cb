//! Herve's parsers, reached by its own tests and fuzz targets. Not a stable interface.

use std::path::PathBuf;

use uuid::Uuid;

pub use crate::contract::http::{basic_credentials, parse_form, parse_json};

/// Whether `name` is accepted as a service name.
pub fn valid_service_name(name: &str) -> bool {
    crate::control_plane::registry::validate_name(name).is_ok()
}

/// Parses an upstream URL as the `proxy` type does; the URL as Herve keeps it.
pub fn parse_upstream(url: &str) -> Result<String, String> {
    crate::upstream::Upstream::parse(url).map(|upstream| upstream.url())
}

/// The field names of a models schema, in order.
pub fn parse_schema(spec: &str) -> Result<Vec<String>, String> {
    crate::types::models::parse_schema(spec)
        .map(|fields| fields.into_iter().map(|field| field.name).collect())
}

/// The path below a static root that a URL path names.
pub fn static_relative_path(url_path: &str) -> Option<PathBuf> {
    crate::types::static_files::relative_path(url_path)
}

/// The service uuid at the head of a data-plane path.
pub fn service_uuid(path: &str) -> Option<Uuid> {
    crate::data_plane::service_uuid(path)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    crate::sys::is_root()
}

/// The Landlock ABI of the running kernel; 0 without Landlock.
pub fn landlock_abi() -> i64 {
    crate::sys::landlock_abi()
}

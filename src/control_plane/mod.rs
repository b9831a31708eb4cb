//! The control plane: everything that changes state, on the main runtime.
//!
//! The admin API (`api`) checks the admin's credentials (`admin_auth`) and calls the
//! registry (`registry`), the single source of truth about services, which persists
//! every change through the store (`store`) before it applies it and publishes the
//! data plane's routes. With several nodes on one PostgreSQL, each node follows the
//! changes the others make (`cluster`).

pub(crate) mod admin_auth;
pub(crate) mod api;
pub(crate) mod certificates;
pub(crate) mod cluster;
pub(crate) mod metrics;
pub(crate) mod registry;
pub(crate) mod sessions;
pub(crate) mod store;

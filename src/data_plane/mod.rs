//! The data plane: everything on the request path, and nothing else.
//!
//! Connections are accepted (`accept`), let in or refused (`admission`), and served
//! to their end by one of the workers, one thread per core (`worker`), whose writes
//! cannot wait forever (`timed_io`). Each request is dispatched (`dispatch`) to
//! `/health`, to a running service through the routing snapshot (`routes`), or to the
//! admin API; bodies keep to their rules (`body`) and every answer gets an access line
//! (`access_log`). Nothing here changes state: the control plane does, and publishes
//! the routes this side reads.

mod accept;
mod access_log;
mod admission;
mod body;
mod dispatch;
mod routes;
mod timed_io;
mod worker;

pub(crate) use accept::{serve, Listener, ServerLimits};
pub(crate) use body::BodyLimits;
pub(crate) use dispatch::{health_response, service_uuid, Dispatcher, Door};
pub(crate) use routes::{
    parse_path_prefix, HostPattern, RouteTable, ServiceRoutes, Target, OWN_PATHS,
};
pub(crate) use worker::Workers;

//! The data plane: everything on the request path, and nothing else.
//!
//! Connections are accepted (`accept`), let in or refused (`admission`), and served
//! to their end by one of the workers, one thread per core (`worker`), whose writes
//! cannot wait forever (`timed_io`). Each request is dispatched (`dispatch`) to
//! `/health`, to a running service through the routing snapshot (`routes`), or to the
//! admin API; bodies keep to their rules (`body`) and every answer gets an access line
//! (`access_log`). The HTTPS listener's handshakes pick their certificate from a
//! snapshot too (`tls`), and speak HTTP/2 when the client offers it. Nothing here changes state: the control plane does, and publishes
//! the routes this side reads.

mod accept;
mod access_log;
mod admission;
mod body;
mod dispatch;
mod metrics;
mod middleware;
mod routes;
mod timed_io;
mod tls;
mod worker;

pub(crate) use accept::{serve, Listener, ServerLimits};
pub(crate) use access_log::{AccessLog, LineFormat, LogSink};
pub(crate) use body::BodyLimits;
pub(crate) use dispatch::{health_response, service_uuid, DispatchSettings, Dispatcher, Door};
pub(crate) use metrics::{
    MeterReading, ServerMeter, ServiceMeter, CLASSES, LATENCY_BOUNDS, METHODS, REFUSALS,
};
pub(crate) use middleware::{Chain, MiddlewareSpec, ProtectSpec};
pub(crate) use routes::{
    parse_path_prefix, HostPattern, RouteTable, ServiceRoutes, Target, OWN_PATHS,
};
pub(crate) use tls::{server_config, CertError, CertSnapshot, CertTable, Certificate};
pub(crate) use worker::{TlsServing, Workers};

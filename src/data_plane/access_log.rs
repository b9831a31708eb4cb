//! The access log: one line per answered request, target `herve::access`.

use std::net::SocketAddr;

use axum::http::StatusCode;

/// The one format of access lines, for answered requests and for those refused before
/// they reached a handler (`method` and `path` are then `-`).
pub(crate) fn access_line(
    client: SocketAddr,
    status: StatusCode,
    method: &str,
    path: &str,
    latency_us: u64,
) {
    tracing::info!(
        target: "herve::access",
        client = %client.ip(),
        status = status.as_u16(),
        // Displayed, not debugged: `path=/x`, not `path="/x"`.
        method = %method,
        path = %path,
        latency_us,
    );
}

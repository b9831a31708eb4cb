//! `GET /metrics`: Herve's state and counters in the Prometheus text exposition format
//! 0.0.4, encoded by the `prometheus` crate from families made fresh at each scrape
//! (the data plane's per-worker counters summed, the registry's states read).

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::Encoder;
use serde_json::Value;

use super::certificates::Certificates;
use super::registry::Registry;
use super::store::Status;
use crate::data_plane::{ServerMeter, CLASSES, LATENCY_BOUNDS, METHODS, REFUSALS};

/// The content type of what [`render`] writes.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a scrape reads.
pub(crate) struct Sources {
    pub registry: Arc<Registry>,
    pub server: Arc<ServerMeter>,
    pub certificates: Arc<Certificates>,
}

/// Every metric, as text.
pub(crate) fn render(sources: &Sources) -> Vec<u8> {
    let mut families = Vec::new();
    let summary = sources.registry.summary();

    let mut build = family("herve_build_info", "Herve's version.", MetricType::GAUGE);
    build
        .mut_metric()
        .push(gauge(&[("version", env!("CARGO_PKG_VERSION"))], 1.0));
    families.push(build);
    let mut uptime = family(
        "herve_uptime_seconds",
        "How long this Herve has run.",
        MetricType::GAUGE,
    );
    uptime
        .mut_metric()
        .push(gauge(&[], summary.uptime_s as f64));
    families.push(uptime);
    let mut by_status = family("herve_services", "Services by status.", MetricType::GAUGE);
    for status in [
        Status::Registered,
        Status::Starting,
        Status::Running,
        Status::Stopped,
        Status::Failed,
    ] {
        let count = summary.by_status.get(&status).copied().unwrap_or(0);
        by_status
            .mut_metric()
            .push(gauge(&[("status", status_name(status))], count as f64));
    }
    families.push(by_status);

    let mut services = sources.registry.metered();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let mut requests = family(
        "herve_requests_total",
        "Requests answered by each service, by method and status class.",
        MetricType::COUNTER,
    );
    let mut latency = family(
        "herve_request_duration_seconds",
        "Time to each service's answer head.",
        MetricType::HISTOGRAM,
    );
    let mut in_flight = family(
        "herve_requests_in_flight",
        "Requests each service is answering now.",
        MetricType::GAUGE,
    );
    let mut up = family(
        "herve_service_up",
        "1 while the service runs, else 0.",
        MetricType::GAUGE,
    );
    let mut restarts = family(
        "herve_process_restarts_total",
        "Restarts of each copy of a process service's program.",
        MetricType::COUNTER,
    );
    let mut copies = family(
        "herve_process_copies",
        "Copies of each process service's program, by state.",
        MetricType::GAUGE,
    );
    let mut exits = family(
        "herve_process_exited",
        "1 when a copy's last exit is known (its text in the label).",
        MetricType::GAUGE,
    );
    let mut upstreams = family(
        "herve_upstream_healthy",
        "1 while an upstream of a proxy or process service is healthy, else 0.",
        MetricType::GAUGE,
    );
    let mut upstream_load = family(
        "herve_upstream_in_flight",
        "Requests on each upstream of a proxy or process service now.",
        MetricType::GAUGE,
    );
    for service in &services {
        let name = service.name.as_str();
        for (method, classes) in service.reading.requests.iter().enumerate() {
            for (class, count) in classes.iter().enumerate() {
                if *count > 0 {
                    requests.mut_metric().push(counter(
                        &[
                            ("service", name),
                            ("method", METHODS[method]),
                            ("class", CLASSES[class]),
                        ],
                        *count as f64,
                    ));
                }
            }
        }
        latency
            .mut_metric()
            .push(histogram(&[("service", name)], &service.reading));
        in_flight.mut_metric().push(gauge(
            &[("service", name)],
            service.reading.in_flight.max(0) as f64,
        ));
        up.mut_metric().push(gauge(
            &[("service", name), ("type", &service.type_name)],
            if service.status == Status::Running {
                1.0
            } else {
                0.0
            },
        ));
        let runtime = service.runtime.as_ref().unwrap_or(&Value::Null);
        if let Some(replicas) = runtime["replicas"].as_array() {
            let mut states: BTreeMap<&str, usize> = BTreeMap::new();
            for copy in replicas {
                let number = copy["copy"].as_u64().unwrap_or(0).to_string();
                restarts.mut_metric().push(counter(
                    &[("service", name), ("copy", &number)],
                    copy["restarts"].as_u64().unwrap_or(0) as f64,
                ));
                if let Some(exit) = copy["last_exit"].as_str() {
                    exits.mut_metric().push(gauge(
                        &[("service", name), ("copy", &number), ("exit", exit)],
                        1.0,
                    ));
                }
                *states
                    .entry(copy["state"].as_str().unwrap_or("unknown"))
                    .or_default() += 1;
            }
            for (state, count) in states {
                copies
                    .mut_metric()
                    .push(gauge(&[("service", name), ("state", state)], count as f64));
            }
        }
        for upstream in &service.upstreams {
            let labels = [("service", name), ("upstream", upstream.url.as_str())];
            upstreams
                .mut_metric()
                .push(gauge(&labels, if upstream.healthy { 1.0 } else { 0.0 }));
            upstream_load
                .mut_metric()
                .push(gauge(&labels, upstream.in_flight as f64));
        }
    }
    families.extend([
        requests,
        latency,
        in_flight,
        up,
        restarts,
        copies,
        exits,
        upstreams,
        upstream_load,
    ]);

    let server = &sources.server;
    let load = |value: &std::sync::atomic::AtomicU64| {
        value.load(std::sync::atomic::Ordering::Relaxed) as f64
    };
    let mut open = family(
        "herve_connections_open",
        "Client connections open now.",
        MetricType::GAUGE,
    );
    open.mut_metric()
        .push(gauge(&[], server.open_connections() as f64));
    let mut accepted = family(
        "herve_connections_accepted_total",
        "Client connections served.",
        MetricType::COUNTER,
    );
    accepted
        .mut_metric()
        .push(counter(&[], load(&server.accepted)));
    let mut refused = family(
        "herve_refused_total",
        "Connections and requests refused or cut by a limit, by status.",
        MetricType::COUNTER,
    );
    for (index, status) in REFUSALS.iter().enumerate() {
        refused.mut_metric().push(counter(
            &[("status", &status.to_string())],
            load(&server.refused[index]),
        ));
    }
    let mut handshakes = family(
        "herve_tls_handshakes_total",
        "TLS handshakes, by result.",
        MetricType::COUNTER,
    );
    handshakes
        .mut_metric()
        .push(counter(&[("result", "ok")], load(&server.tls_handshakes)));
    handshakes
        .mut_metric()
        .push(counter(&[("result", "failed")], load(&server.tls_failures)));
    families.extend([open, accepted, refused, handshakes]);

    let mut expiry = family(
        "herve_certificate_expiry_timestamp_seconds",
        "When each certificate Herve serves expires (Unix time).",
        MetricType::GAUGE,
    );
    for certificate in sources.certificates.list() {
        if let Some(at) = certificate.expires_at {
            let host = certificate
                .host
                .clone()
                .unwrap_or_else(|| "(default)".to_owned());
            expiry.mut_metric().push(gauge(
                &[("host", &host), ("source", certificate.source)],
                at as f64,
            ));
        }
    }
    families.push(expiry);

    // A family without samples says nothing; Prometheus' parser wants none.
    families.retain(|family| !family.get_metric().is_empty());
    let mut text = Vec::with_capacity(16 * 1024);
    if let Err(error) = prometheus::TextEncoder::new().encode(&families, &mut text) {
        tracing::error!(%error, "could not encode the metrics");
    }
    text
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Registered => "registered",
        Status::Starting => "starting",
        Status::Running => "running",
        Status::Stopped => "stopped",
        Status::Failed => "failed",
    }
}

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family
}

fn labelled(labels: &[(&str, &str)]) -> Metric {
    let mut metric = Metric::default();
    metric.set_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect(),
    );
    metric
}

fn gauge(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut metric = labelled(labels);
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    metric.set_gauge(gauge);
    metric
}

fn counter(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut metric = labelled(labels);
    let mut counter = Counter::default();
    counter.set_value(value);
    metric.set_counter(counter);
    metric
}

fn histogram(labels: &[(&str, &str)], reading: &crate::data_plane::MeterReading) -> Metric {
    let mut metric = labelled(labels);
    let mut histogram = Histogram::default();
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(LATENCY_BOUNDS.len());
    for (index, bound) in LATENCY_BOUNDS.iter().enumerate() {
        cumulative += reading.latency[index];
        let mut bucket = Bucket::default();
        bucket.set_upper_bound(*bound);
        bucket.set_cumulative_count(cumulative);
        buckets.push(bucket);
    }
    histogram.set_bucket(buckets);
    histogram.set_sample_count(reading.latency.iter().sum());
    histogram.set_sample_sum(reading.latency_sum.as_secs_f64());
    metric.set_histogram(histogram);
    metric
}

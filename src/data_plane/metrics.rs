//! What the data plane counts, for `GET /metrics`.
//!
//! A request costs no shared lock and no shared atomic: each service's counters have
//! one slot per data-plane worker (on its own cache line), written only by that worker
//! with relaxed atomics, and summed when Prometheus scrapes. Counters of connections
//! (accepted, refused, TLS handshakes) change once per connection, not per request.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

use crate::runtime::current_worker;

/// The methods counted by name; any other is `other`.
pub(crate) const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];
/// Status classes.
pub(crate) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Upper bounds of the latency histogram's buckets, in seconds (then `+Inf`).
pub(crate) const LATENCY_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// One worker's counts for one service.
#[repr(align(64))]
#[derive(Default)]
struct Slot {
    requests: [[AtomicU64; CLASSES.len()]; METHODS.len()],
    /// Per bucket (not cumulative), the last one for slower than every bound.
    latency: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_sum_ns: AtomicU64,
    in_flight: AtomicI64,
}

/// The counters of one service, kept across its instances (an edit or a reload does
/// not reset them).
pub(crate) struct ServiceMeter {
    slots: Box<[Slot]>,
}

/// The sums of a service's counters at one moment.
#[derive(Debug, Default, Clone)]
pub(crate) struct MeterReading {
    pub requests: [[u64; CLASSES.len()]; METHODS.len()],
    pub latency: [u64; LATENCY_BOUNDS.len() + 1],
    pub latency_sum: Duration,
    pub in_flight: i64,
}

#[cfg(test)]
impl MeterReading {
    pub fn total(&self) -> u64 {
        self.requests.iter().flatten().sum()
    }
}

impl ServiceMeter {
    /// Counters for `workers` data-plane workers (and one slot for any other thread).
    pub fn new(workers: usize) -> Arc<ServiceMeter> {
        Arc::new(ServiceMeter {
            slots: (0..=workers).map(|_| Slot::default()).collect(),
        })
    }

    /// This thread's slot: its worker's, or the last one.
    fn slot_index(&self) -> usize {
        let last = self.slots.len() - 1;
        current_worker().map_or(last, |worker| worker.min(last))
    }

    fn slot(&self) -> &Slot {
        &self.slots[self.slot_index()]
    }

    /// Counts a request in flight, in this thread's slot; the caller passes the slot
    /// to [`ServiceMeter::end`] when the answer is out (possibly on another thread).
    pub fn begin(&self) -> usize {
        let slot = self.slot_index();
        self.slots[slot].in_flight.fetch_add(1, Relaxed);
        slot
    }

    /// A request counted by [`ServiceMeter::begin`] is no longer in flight.
    pub fn end(&self, slot: usize) {
        if let Some(slot) = self.slots.get(slot) {
            slot.in_flight.fetch_sub(1, Relaxed);
        }
    }

    /// Counts an answered request.
    pub fn record(&self, method: &Method, status: StatusCode, took: Duration) {
        let slot = self.slot();
        let method = match *method {
            Method::GET => 0,
            Method::HEAD => 1,
            Method::POST => 2,
            Method::PUT => 3,
            Method::PATCH => 4,
            Method::DELETE => 5,
            Method::OPTIONS => 6,
            _ => 7,
        };
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        slot.requests[method][class].fetch_add(1, Relaxed);
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BOUNDS.len());
        slot.latency[bucket].fetch_add(1, Relaxed);
        slot.latency_sum_ns
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// The sums over every worker.
    pub fn read(&self) -> MeterReading {
        let mut reading = MeterReading::default();
        let mut sum_ns = 0u64;
        for slot in &self.slots {
            for (method, classes) in slot.requests.iter().enumerate() {
                for (class, count) in classes.iter().enumerate() {
                    reading.requests[method][class] += count.load(Relaxed);
                }
            }
            for (bucket, count) in slot.latency.iter().enumerate() {
                reading.latency[bucket] += count.load(Relaxed);
            }
            sum_ns = sum_ns.saturating_add(slot.latency_sum_ns.load(Relaxed));
            reading.in_flight += slot.in_flight.load(Relaxed);
        }
        reading.latency_sum = Duration::from_nanos(sum_ns);
        reading
    }
}

/// Counters of connections, shared by every worker: they change once per connection.
#[derive(Default)]
pub(crate) struct ServerMeter {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    /// Refused or cut by a limit, by status: 408, 413, 429, 431, 503.
    pub refused: [AtomicU64; REFUSALS.len()],
    pub tls_handshakes: AtomicU64,
    pub tls_failures: AtomicU64,
}

/// The statuses counted as refusals.
pub(crate) const REFUSALS: [u16; 5] = [408, 413, 429, 431, 503];

impl ServerMeter {
    pub fn refused(&self, status: StatusCode) {
        if let Some(index) = REFUSALS.iter().position(|code| *code == status.as_u16()) {
            self.refused[index].fetch_add(1, Relaxed);
        }
    }

    pub fn open_connections(&self) -> u64 {
        self.accepted
            .load(Relaxed)
            .saturating_sub(self.closed.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_over_slots() {
        let meter = ServiceMeter::new(2);
        let slot = meter.begin();
        meter.record(&Method::GET, StatusCode::OK, Duration::from_millis(2));
        meter.record(
            &Method::from_bytes(b"PURGE").expect("method"),
            StatusCode::NOT_FOUND,
            Duration::from_secs(9),
        );
        let reading = meter.read();
        assert_eq!(reading.requests[0][1], 1);
        assert_eq!(reading.requests[7][3], 1);
        assert_eq!(reading.total(), 2);
        assert_eq!(reading.in_flight, 1);
        assert_eq!(reading.latency[2], 1, "2 ms falls in the 2.5 ms bucket");
        assert_eq!(reading.latency[LATENCY_BOUNDS.len()], 1);
        meter.end(slot);
        assert_eq!(meter.read().in_flight, 0);
    }
}

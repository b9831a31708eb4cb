//! Choosing an upstream: the strategies, and each upstream's health and load.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// How requests are spread over healthy upstreams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Strategy {
    /// In turn.
    #[default]
    RoundRobin,
    /// In turn, each upstream as often as its weight says.
    Weighted,
    /// To the upstream with the fewest requests in flight.
    LeastConn,
}

impl Strategy {
    /// Every strategy by its registration name; the first is the default.
    pub const CHOICES: [(&'static str, Strategy); 3] = [
        ("round_robin", Strategy::RoundRobin),
        ("weighted", Strategy::Weighted),
        ("least_conn", Strategy::LeastConn),
    ];
}

/// A counter on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded(AtomicUsize);

/// The live state of one upstream.
#[derive(Debug, Default)]
pub(crate) struct Health {
    healthy: AtomicBool,
    /// Requests on it now, for `least_conn` (shared: the strategy needs it now).
    in_flight: AtomicUsize,
    /// Requests on it now, whatever the strategy, one slot per worker (summed when
    /// read): no request touches a counter another worker writes.
    by_worker: [Padded; crate::runtime::SLOTS],
}

impl Health {
    pub fn new() -> Self {
        Health {
            healthy: AtomicBool::new(true),
            ..Health::default()
        }
    }

    /// Counts a request on this upstream in this thread's slot, which it returns for
    /// [`Health::finished`].
    pub fn started(&self) -> usize {
        let slot = crate::runtime::slot();
        self.by_worker[slot].0.fetch_add(1, Ordering::Relaxed);
        slot
    }

    pub fn finished(&self, slot: usize) {
        if let Some(counter) = self.by_worker.get(slot) {
            counter.0.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Requests on this upstream now (summed over the workers).
    pub fn requests_now(&self) -> usize {
        self.by_worker
            .iter()
            .map(|counter| counter.0.load(Ordering::Relaxed))
            .sum()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the health; returns whether it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A request starts on this upstream; pair with [`Health::leave`].
    pub fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks upstreams by a strategy, skipping unhealthy ones. Lock-free: a counter and
/// a precomputed schedule.
#[derive(Debug)]
pub(crate) struct Balancer {
    strategy: Strategy,
    /// For `Weighted`: upstream indexes in smooth weighted round-robin order, so that
    /// weights 3:1 give a,a,b,a rather than a,a,a,b.
    schedule: Vec<usize>,
    cursor: AtomicUsize,
}

/// The longest weighted schedule; larger weights are scaled down to fit.
const MAX_SCHEDULE: u64 = 4096;

impl Balancer {
    pub fn new(strategy: Strategy, weights: &[u32]) -> Self {
        let schedule = match strategy {
            Strategy::Weighted => smooth_schedule(weights),
            _ => (0..weights.len()).collect(),
        };
        Balancer {
            strategy,
            schedule,
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The upstream for the next request among `len` upstreams whose health
    /// `health_of` gives, other than `exclude`; `None` when no healthy upstream is left.
    pub fn pick_by<'h>(
        &self,
        len: usize,
        health_of: impl Fn(usize) -> &'h Health,
        exclude: Option<usize>,
    ) -> Option<usize> {
        if len == 0 {
            return None;
        }
        let eligible = |index: usize| Some(index) != exclude && health_of(index).is_healthy();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        match self.strategy {
            Strategy::RoundRobin | Strategy::Weighted => {
                let slots = self.schedule.len();
                (0..slots)
                    .map(|offset| self.schedule[(start + offset) % slots])
                    .find(|&index| index < len && eligible(index))
            }
            Strategy::LeastConn => (0..len)
                // Start the scan at the cursor so that ties rotate.
                .map(|offset| (start + offset) % len)
                .filter(|&index| eligible(index))
                .min_by_key(|&index| health_of(index).in_flight()),
        }
    }
}

fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let scale = total.div_ceil(MAX_SCHEDULE).max(1);
    let weights: Vec<i64> = weights
        .iter()
        .map(|&w| i64::try_from((u64::from(w) / scale).max(1)).unwrap_or(1))
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
        else {
            break;
        };
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(n: usize) -> Vec<Health> {
        (0..n).map(|_| Health::new()).collect()
    }

    impl Balancer {
        fn pick(&self, health: &[Health], exclude: Option<usize>) -> Option<usize> {
            self.pick_by(health.len(), |index| &health[index], exclude)
        }
    }

    #[test]
    fn round_robin_skips_unhealthy_and_excluded() {
        let health = healthy(3);
        let balancer = Balancer::new(Strategy::RoundRobin, &[1, 1, 1]);
        let picks: Vec<_> = (0..6).map(|_| balancer.pick(&health, None)).collect();
        assert_eq!(
            picks,
            [Some(0), Some(1), Some(2), Some(0), Some(1), Some(2)]
        );
        health[1].set_healthy(false);
        let picks: Vec<_> = (0..4)
            .filter_map(|_| balancer.pick(&health, None))
            .collect();
        assert!(!picks.contains(&1));
        assert_eq!(balancer.pick(&health, Some(0)), Some(2));
        health[0].set_healthy(false);
        health[2].set_healthy(false);
        assert_eq!(balancer.pick(&health, None), None);
    }

    #[test]
    fn weighted_schedule_is_smooth_and_proportional() {
        assert_eq!(smooth_schedule(&[3, 1]), [0, 0, 1, 0]);
        let schedule = smooth_schedule(&[5, 1, 1]);
        assert_eq!(schedule.len(), 7);
        assert_eq!(schedule.iter().filter(|&&i| i == 0).count(), 5);
        let huge = smooth_schedule(&[u32::MAX, 1]);
        assert!(huge.len() as u64 <= MAX_SCHEDULE + 2);
        assert!(huge.contains(&1));
    }

    #[test]
    fn least_conn_prefers_the_idle_upstream() {
        let health = healthy(2);
        let balancer = Balancer::new(Strategy::LeastConn, &[1, 1]);
        health[0].enter();
        for _ in 0..4 {
            assert_eq!(balancer.pick(&health, None), Some(1));
        }
        health[0].leave();
        assert_eq!(health[0].in_flight(), 0);
    }
}

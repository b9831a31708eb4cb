//! Counting failures per key (a client address, an address and a user name) over a
//! sliding window, with bounded memory.
//!
//! The table never refuses to track a new key: when it is full, the key that entered
//! it first is forgotten. A full table so throttles exactly as a small one does for
//! every key it holds; a flood of new keys can only push out old ones, never switch the
//! throttle off for the newcomers.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::lock;

/// Failures per key within a window, for many keys at once.
pub struct Throttle<K> {
    state: Mutex<Table<K>>,
    /// Failures within `window` after which a key is refused.
    max_failures: usize,
    window: Duration,
    capacity: usize,
}

struct Table<K> {
    entries: HashMap<K, Entry>,
    /// Keys in the order they entered the table, with the entry's generation: a key
    /// that left and came back has a newer one, so stale places are skipped.
    order: VecDeque<(K, u64)>,
    next_generation: u64,
}

struct Entry {
    generation: u64,
    /// The most recent failures, oldest first; never more than `max_failures`.
    failures: VecDeque<Instant>,
}

impl<K: Hash + Eq + Clone> Throttle<K> {
    /// Refuses a key after `max_failures` failures within `window`; remembers at most
    /// `capacity` keys.
    pub fn new(max_failures: usize, window: Duration, capacity: usize) -> Self {
        Throttle {
            state: Mutex::new(Table {
                entries: HashMap::new(),
                order: VecDeque::new(),
                next_generation: 0,
            }),
            max_failures: max_failures.max(1),
            window,
            capacity: capacity.max(1),
        }
    }

    /// Failures within the window after which a key is refused.
    pub fn max_failures(&self) -> usize {
        self.max_failures
    }

    /// How long `key` is still refused, if it is.
    pub fn blocked_for(&self, key: &K) -> Option<Duration> {
        let table = lock(&self.state);
        self.wait_for(table.entries.get(key)?, Instant::now())
    }

    /// How many failures `key` had within the window.
    pub fn recent_failures(&self, key: &K) -> usize {
        let table = lock(&self.state);
        let now = Instant::now();
        table.entries.get(key).map_or(0, |entry| {
            entry
                .failures
                .iter()
                .filter(|at| now.duration_since(**at) < self.window)
                .count()
        })
    }

    /// Records a failure of `key`.
    pub fn failed(&self, key: K) {
        let mut table = lock(&self.state);
        self.record(&mut table, key, Instant::now());
    }

    /// Counts an attempt of `key` as a failure before it is decided, unless `key` is
    /// refused already (then how long for). Counting first means parallel attempts are
    /// all counted; call [`Throttle::forgive`] when the attempt turns out right.
    pub fn admit(&self, key: K) -> Result<(), Duration> {
        let mut table = lock(&self.state);
        let now = Instant::now();
        if let Some(wait) = table
            .entries
            .get(&key)
            .and_then(|entry| self.wait_for(entry, now))
        {
            return Err(wait);
        }
        self.record(&mut table, key, now);
        Ok(())
    }

    /// Takes back the attempt last counted by [`Throttle::admit`] for `key`.
    pub fn forgive(&self, key: &K) {
        let mut table = lock(&self.state);
        if let Some(entry) = table.entries.get_mut(key) {
            entry.failures.pop_back();
            if entry.failures.is_empty() {
                table.entries.remove(key);
            }
        }
    }

    /// How many keys are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.state).entries.len()
    }

    fn wait_for(&self, entry: &Entry, now: Instant) -> Option<Duration> {
        if entry.failures.len() < self.max_failures {
            return None;
        }
        // Refused until the oldest of the last `max_failures` leaves the window.
        let oldest_counted = entry.failures[entry.failures.len() - self.max_failures];
        let age = now.duration_since(oldest_counted);
        (age < self.window).then(|| self.window - age)
    }

    fn record(&self, table: &mut Table<K>, key: K, now: Instant) {
        if let Some(entry) = table.entries.get_mut(&key) {
            while entry
                .failures
                .front()
                .is_some_and(|at| now.duration_since(*at) >= self.window)
            {
                entry.failures.pop_front();
            }
            if entry.failures.len() >= self.max_failures {
                entry.failures.pop_front();
            }
            entry.failures.push_back(now);
            return;
        }
        while table.entries.len() >= self.capacity {
            let Some((oldest, generation)) = table.order.pop_front() else {
                break;
            };
            if table
                .entries
                .get(&oldest)
                .is_some_and(|entry| entry.generation == generation)
            {
                table.entries.remove(&oldest);
            }
        }
        // Places left behind by forgiven keys would let `order` grow without bound.
        if table.order.len() > self.capacity.saturating_mul(2) {
            let entries = &table.entries;
            table.order.retain(|(key, generation)| {
                entries
                    .get(key)
                    .is_some_and(|entry| entry.generation == *generation)
            });
        }
        let generation = table.next_generation;
        table.next_generation += 1;
        table.order.push_back((key.clone(), generation));
        table.entries.insert(
            key,
            Entry {
                generation,
                failures: VecDeque::from([now]),
            },
        );
    }
}

/// The part of a client address that identifies one client: the whole IPv4 address,
/// or the /64 network of an IPv6 one (one host usually has a whole /64 to pick from).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_after_the_limit_and_forgives() {
        let throttle = Throttle::new(3, Duration::from_secs(60), 10);
        for _ in 0..2 {
            throttle.failed("a");
        }
        assert_eq!(throttle.blocked_for(&"a"), None);
        throttle.failed("a");
        assert!(throttle.blocked_for(&"a").is_some());
        assert_eq!(throttle.blocked_for(&"b"), None);
        assert!(throttle.admit("a").is_err());
        assert!(throttle.admit("b").is_ok());
        throttle.forgive(&"b");
        assert!(throttle.len() <= 1);
    }

    #[test]
    fn a_full_table_forgets_its_oldest_key_and_still_throttles_newcomers() {
        let throttle = Throttle::new(2, Duration::from_secs(60), 100);
        for key in 0..100 {
            throttle.failed(key);
        }
        throttle.failed(1000);
        throttle.failed(1000);
        assert!(
            throttle.blocked_for(&1000).is_some(),
            "newcomer not throttled"
        );
        assert_eq!(throttle.len(), 100);
        assert_eq!(throttle.recent_failures(&0), 0, "oldest key kept");
        assert_eq!(throttle.recent_failures(&99), 1);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_network() {
        let a: IpAddr = "2001:db8::1".parse().expect("ip");
        let b: IpAddr = "2001:db8::ffff:1".parse().expect("ip");
        let c: IpAddr = "2001:db8:0:1::1".parse().expect("ip");
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(
            client_key(mapped),
            "10.0.0.1".parse::<IpAddr>().expect("ip")
        );
    }
}

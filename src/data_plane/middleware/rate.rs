//! `rate_limit`: requests per client (its address, or its user when the service is
//! protected) over time, by governor's GCRA, in a table of bounded size.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use governor::clock::{Clock, MonotonicClock};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use super::FieldError;
use crate::contract::Fields;
use crate::util::lock;

/// Most requests a rate may name, and most burst.
const MAX_COUNT: u32 = 1_000_000;
/// Shards of the table, and clients each remembers: 64 Ki clients at once, a few MiB.
const SHARDS: usize = 16;
const PER_SHARD: usize = 4096;

/// A rate as configured: `count` requests per `per`, `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateSpec {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
}

impl RateSpec {
    /// Reads `rate_limit` (`100/s`, `6000/min`, `10000/h`) and `burst` (default: the
    /// count of the rate).
    pub fn read(fields: &Fields) -> Result<Option<RateSpec>, FieldError> {
        let Some(text) = fields.optional("rate_limit") else {
            if fields.optional("burst").is_some() {
                return Err(FieldError::new(
                    "burst",
                    "The field 'burst' needs a 'rate_limit'.",
                ));
            }
            return Ok(None);
        };
        let invalid = || {
            FieldError::new(
                "rate_limit",
                format!(
                    "The field 'rate_limit' must be a count per unit, like 100/s, 6000/min or \
                     10000/h (a count from 1 to {MAX_COUNT}); '{text}' is not."
                ),
            )
        };
        let (count, unit) = text.split_once('/').ok_or_else(invalid)?;
        let count: u32 = count.trim().parse().map_err(|_| invalid())?;
        if !(1..=MAX_COUNT).contains(&count) {
            return Err(invalid());
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(invalid()),
        };
        let burst = match fields.optional("burst") {
            None => count,
            Some(text) => match text.parse::<u32>() {
                Ok(burst) if (1..=MAX_COUNT).contains(&burst) => burst,
                _ => {
                    return Err(FieldError::new(
                        "burst",
                        format!("The field 'burst' must be a whole number from 1 to {MAX_COUNT}."),
                    ))
                }
            },
        };
        Ok(Some(RateSpec { count, per, burst }))
    }

    fn quota(&self) -> Quota {
        let count = NonZeroU32::new(self.count).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        // One request every `per / count`, `burst` of them at once.
        let interval = (self.per / count.get()).max(Duration::from_nanos(1));
        Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(count))
            .allow_burst(burst)
    }
}

/// Whom a rate counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum RateKey {
    /// A client address (IPv6 by its /64).
    Address(IpAddr),
    /// A user of a protected service, wherever it comes from.
    User(HeaderValue),
}

/// A rate limit in force.
pub(crate) struct RateLimit {
    limiter: RateLimiter<RateKey, BoundedStore<RateKey>, MonotonicClock>,
}

impl RateLimit {
    pub fn new(spec: &RateSpec) -> RateLimit {
        let quota = spec.quota();
        let store = BoundedStore::new(quota.replenish_interval());
        RateLimit {
            limiter: RateLimiter::new(quota, store, MonotonicClock),
        }
    }

    /// Counts a request of `key`: `Err(wait)` when it is over the limit, `wait` being
    /// how long until one more would pass.
    pub fn check(&self, key: &RateKey) -> Result<(), Duration> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(MonotonicClock.now()))
    }
}

/// governor's state per key (the theoretical arrival time of the next request), in a
/// table that never holds more than `SHARDS * PER_SHARD` keys. A key whose time is past
/// is the same as no key, so a full shard first forgets those; when every key in it is
/// still being limited, newcomers share one state until room is made: a flood of new
/// addresses limits itself as one client and cannot grow the table, nor reset anyone.
pub(crate) struct BoundedStore<K> {
    shards: Box<[Mutex<Shard<K>>]>,
    overflow: Mutex<Option<u64>>,
    hasher: RandomState,
    /// Reads governor's times relative to this (taken just before the limiter's own
    /// start, so "past" here is never later than governor's).
    start: Instant,
    /// A key this long past its time is surely the same as a fresh one.
    slack: u64,
}

struct Shard<K> {
    times: HashMap<K, u64>,
    /// When the shard was last found full of live keys (ns since `start`): sweeping it
    /// again before `slack` passes would find nothing more.
    full_at: Option<u64>,
}

impl<K: Hash + Eq + Clone> BoundedStore<K> {
    fn new(interval: Duration) -> Self {
        BoundedStore {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        times: HashMap::new(),
                        full_at: None,
                    })
                })
                .collect(),
            overflow: Mutex::new(None),
            hasher: RandomState::new(),
            start: Instant::now(),
            slack: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Keys held now (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| lock(shard).times.len())
            .sum()
    }
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, decide: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        let mut shard = lock(&self.shards[index]);
        if let Some(time) = shard.times.get_mut(key) {
            let (outcome, next) = decide(Some(Nanos::from(*time)))?;
            *time = next.as_u64();
            return Ok(outcome);
        }
        if shard.times.len() >= PER_SHARD {
            let now = self.now();
            let swept_lately = shard
                .full_at
                .is_some_and(|at| now.saturating_sub(at) < self.slack);
            if !swept_lately {
                shard
                    .times
                    .retain(|_, time| time.saturating_add(self.slack) > now);
                shard.full_at = (shard.times.len() >= PER_SHARD).then_some(now);
            }
        }
        if shard.times.len() < PER_SHARD {
            let (outcome, next) = decide(None)?;
            shard.times.insert(key.clone(), next.as_u64());
            return Ok(outcome);
        }
        drop(shard);
        let mut overflow = lock(&self.overflow);
        let (outcome, next) = decide(overflow.map(Nanos::from))?;
        *overflow = Some(next.as_u64());
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rate: &str, burst: Option<&str>) -> Result<Option<RateSpec>, FieldError> {
        let mut pairs = vec![("rate_limit", rate)];
        if let Some(burst) = burst {
            pairs.push(("burst", burst));
        }
        RateSpec::read(&Fields::from_pairs(pairs))
    }

    #[test]
    fn rates_parse() {
        let ten = spec("10/s", None).expect("valid").expect("some");
        assert_eq!(
            (ten.count, ten.per, ten.burst),
            (10, Duration::from_secs(1), 10)
        );
        let minute = spec("6000/min", Some("20")).expect("valid").expect("some");
        assert_eq!(minute.burst, 20);
        for bad in ["10", "0/s", "10/day", "x/s", "2000000/s", "-1/s"] {
            let error = spec(bad, None).err().map(|e| e.field).unwrap_or_default();
            assert_eq!(error, "rate_limit", "{bad}");
        }
        assert_eq!(spec("1/s", Some("0")).err().map(|e| e.field), Some("burst"));
        let lone_burst = RateSpec::read(&Fields::from_pairs([("burst", "3")]));
        assert_eq!(lone_burst.err().map(|e| e.field), Some("burst"));
    }

    #[test]
    fn a_burst_then_refusals_then_recovery() {
        let limit = RateLimit::new(&RateSpec {
            count: 20,
            per: Duration::from_secs(1),
            burst: 3,
        });
        let key = RateKey::Address(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..3 {
            assert!(limit.check(&key).is_ok());
        }
        let wait = limit.check(&key).expect_err("over the burst");
        assert!(wait <= Duration::from_millis(50), "{wait:?}");
        // Another client is not affected.
        assert!(limit
            .check(&RateKey::Address(IpAddr::from([10, 0, 0, 2])))
            .is_ok());
        std::thread::sleep(Duration::from_millis(60));
        assert!(limit.check(&key).is_ok());
    }

    #[test]
    fn the_table_stays_bounded_and_newcomers_stay_limited() {
        let store = BoundedStore::<u32>::new(Duration::from_secs(60));
        let limiter: RateLimiter<u32, _, _> =
            RateLimiter::new(Quota::per_minute(NonZeroU32::MIN), store, MonotonicClock);
        for key in 0..(SHARDS * PER_SHARD * 2) as u32 {
            let _ = limiter.check_key(&key);
        }
        // Every key is still limited (one a minute): none could be forgotten, and the
        // newcomers past the capacity share one state, so all but the first of them
        // are refused.
        let refused = (1_000_000..1_000_100u32)
            .filter(|key| limiter.check_key(key).is_err())
            .count();
        assert_eq!(
            refused, 100,
            "newcomers past a full table get the shared state"
        );
        assert!(limiter.into_state_store().len() <= SHARDS * PER_SHARD);
    }
}

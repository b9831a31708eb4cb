//! Which accepted connections are served, and as what.
//!
//! Service traffic may take `max_connections` connections, and one client address at
//! most `per_ip` of them. Past that, a few connections are still let in as *reserved*:
//! they may reach `/health` and the admin API only, one request each, so that an
//! operator can always see and act on a Herve whose data plane is full. One address
//! gets only a few reserved connections, or one client could hold them all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::util::lock;
use crate::util::throttle::client_key;

/// Connections kept for `/health` and the admin API once service traffic is full.
pub const RESERVED: usize = 64;
/// Reserved connections one client address may hold.
const RESERVED_PER_IP: usize = 4;

/// How a connection was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Any request.
    Open,
    /// `/health` and the admin API, one request (see the module's doc).
    Reserved,
}

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address holds as many connections as it may.
    TooManyFromAddress,
    /// Service traffic and the reserve are both full.
    Full,
}

/// Counts of open connections, overall and per client address.
pub struct Admission {
    state: Mutex<State>,
    max_open: usize,
    per_ip: usize,
}

#[derive(Default)]
struct State {
    open: usize,
    reserved: usize,
    by_client: HashMap<IpAddr, PerClient>,
}

#[derive(Default, Clone, Copy)]
struct PerClient {
    open: usize,
    reserved: usize,
}

/// A connection let in: counted until dropped.
pub struct Admitted {
    admission: Arc<Admission>,
    client: IpAddr,
    pub class: Class,
}

impl Admission {
    pub fn new(max_open: usize, per_ip: usize) -> Arc<Admission> {
        Arc::new(Admission {
            state: Mutex::new(State::default()),
            max_open: max_open.max(1),
            per_ip: per_ip.max(1),
        })
    }

    /// Lets a connection from `ip` in, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let client = client_key(ip);
        let mut state = lock(&self.state);
        let counts = state.by_client.get(&client).copied().unwrap_or_default();
        let class = if counts.open + counts.reserved >= self.per_ip {
            return Err(Refusal::TooManyFromAddress);
        } else if state.open < self.max_open {
            state.open += 1;
            Class::Open
        } else if state.reserved < RESERVED && counts.reserved < RESERVED_PER_IP {
            state.reserved += 1;
            Class::Reserved
        } else {
            return Err(Refusal::Full);
        };
        let entry = state.by_client.entry(client).or_default();
        match class {
            Class::Open => entry.open += 1,
            Class::Reserved => entry.reserved += 1,
        }
        Ok(Admitted {
            admission: Arc::clone(self),
            client,
            class,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut state = lock(&self.admission.state);
        match self.class {
            Class::Open => state.open -= 1,
            Class::Reserved => state.reserved -= 1,
        }
        if let Some(entry) = state.by_client.get_mut(&self.client) {
            match self.class {
                Class::Open => entry.open -= 1,
                Class::Reserved => entry.reserved -= 1,
            }
            if entry.open == 0 && entry.reserved == 0 {
                state.by_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_traffic_then_the_reserve_then_nothing() {
        let admission = Admission::new(2, 100);
        let ip = |n: u8| IpAddr::from([127, 0, 0, n]);
        let a = admission.admit(ip(1)).expect("open");
        let _b = admission.admit(ip(2)).expect("open");
        assert_eq!(a.class, Class::Open);
        let reserved: Vec<_> = (0..RESERVED_PER_IP)
            .map(|_| admission.admit(ip(3)).expect("reserved"))
            .collect();
        assert!(reserved.iter().all(|r| r.class == Class::Reserved));
        assert_eq!(admission.admit(ip(3)).err(), Some(Refusal::Full));
        drop(a);
        assert_eq!(
            admission.admit(ip(3)).map(|r| r.class).ok(),
            Some(Class::Open)
        );
    }

    #[test]
    fn one_address_is_capped() {
        let admission = Admission::new(100, 2);
        let ip = IpAddr::from([10, 0, 0, 1]);
        let _a = admission.admit(ip).expect("first");
        let b = admission.admit(ip).expect("second");
        assert_eq!(admission.admit(ip).err(), Some(Refusal::TooManyFromAddress));
        assert!(admission.admit(IpAddr::from([10, 0, 0, 2])).is_ok());
        drop(b);
        assert!(admission.admit(ip).is_ok());
    }
}

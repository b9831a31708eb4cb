//! Small mechanisms any layer may use: failure throttles, the CPU gate for password
//! hashing, and lock recovery.

pub mod hashing;
pub mod throttle;

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex whose data stays consistent even if a holder panicked: every critical
/// section guarded this way is a few plain assignments, never left half done.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

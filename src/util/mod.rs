//! Small mechanisms any layer may use: failure throttles, the CPU gate for password
//! hashing, a SQLite connection for async code, a pool for the shared PostgreSQL, and
//! lock recovery. (The stop signal is
//! `tokio_util`'s `CancellationToken`, used as it is.)

pub(crate) mod hashing;
pub(crate) mod postgres;
pub(crate) mod secrets;
pub(crate) mod sqlite;
pub(crate) mod throttle;

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex whose data stays consistent even if a holder panicked: every critical
/// section guarded this way is a few plain assignments, never left half done.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The TLS crypto Herve uses, for its HTTPS listener and for `https://` upstreams:
/// ring. It builds with nothing but a C compiler (aws-lc wants cmake and more build
/// time), and its P-256, X25519 and AES-GCM/ChaCha20 are what handshakes and records
/// spend their time in.
pub(crate) fn tls_crypto() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Now, in Unix seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A background task that belongs to its owner: aborted when the owner drops it.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    /// Spawns `task` on the current runtime, tied to the returned guard.
    pub fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        AbortOnDrop(tokio::spawn(task))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

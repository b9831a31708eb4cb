//! The CPU gate for password hashing: a few threads of its own and a short queue.
//!
//! A password hash costs tens of milliseconds of CPU and, for argon2, about 19 MiB of
//! memory by design. Run on tokio's blocking pool, a flood of login attempts would
//! start hundreds of them at once (and a client that hangs up would not stop its
//! hash). Here at most one hash per core runs at a time, each to its end on a thread
//! that keeps its place until then; a short queue absorbs bursts, and past it callers
//! are told to come back later ([`Busy`]) instead of piling up. Work whose caller left
//! before it started is skipped.
//!
//! Two lanes: the admin's checks go before the services' (a flood of logins on an
//! `auth` service must not lock the admin out).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use super::lock;

/// The pool is full: try again shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the password hashing queue is full")]
pub struct Busy;

/// Which queue a piece of work waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The admin's credentials: served first.
    Admin,
    /// Everything else (the `auth` type's sign-ups and logins).
    Services,
}

type Job = Box<dyn FnOnce() + Send>;

/// The nice value of the hashing threads.
const HASHING_NICE: i32 = 10;

/// Threads that run password hashes, a bounded number queued.
pub struct HashPool {
    shared: Arc<Shared>,
}

struct Shared {
    queues: Mutex<Queues>,
    work_ready: Condvar,
    /// Most jobs waiting in one lane.
    queue_limit: usize,
}

#[derive(Default)]
struct Queues {
    admin: VecDeque<Job>,
    services: VecDeque<Job>,
    closed: bool,
}

impl HashPool {
    /// `threads` hashing threads (at least one) and at most `queue_limit` jobs waiting
    /// per lane.
    pub fn new(threads: usize, queue_limit: usize) -> std::io::Result<HashPool> {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            work_ready: Condvar::new(),
            queue_limit: queue_limit.max(1),
        });
        for index in 0..threads.max(1) {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("herve-hash-{index}"))
                .spawn(move || {
                    // Hashes wait for the data plane, never the other way round: a
                    // flood of logins slows logins down, not every other request.
                    crate::sys::lower_this_thread_priority(HASHING_NICE);
                    shared.work()
                })?;
        }
        Ok(HashPool { shared })
    }

    /// One thread per core and a queue of a few jobs per thread.
    pub fn for_this_machine() -> std::io::Result<HashPool> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        HashPool::new(cores, 8 * cores)
    }

    /// Runs `work` on a hashing thread and returns its result, or [`Busy`] when the
    /// lane's queue is full. If the caller goes away before the work starts, it never
    /// runs; once started, it runs to its end and holds its thread until then.
    pub async fn run<T, F>(&self, lane: Lane, work: F) -> Result<T, Busy>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (result_tx, result_rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if result_tx.is_closed() {
                return;
            }
            let _ = result_tx.send(work());
        });
        {
            let mut queues = lock(&self.shared.queues);
            let queue = match lane {
                Lane::Admin => &mut queues.admin,
                Lane::Services => &mut queues.services,
            };
            if queue.len() >= self.shared.queue_limit {
                return Err(Busy);
            }
            queue.push_back(job);
        }
        self.shared.work_ready.notify_one();
        result_rx.await.map_err(|_| Busy)
    }
}

impl Shared {
    fn work(&self) {
        loop {
            let job = {
                let mut queues = lock(&self.queues);
                loop {
                    if let Some(job) = queues.admin.pop_front() {
                        break job;
                    }
                    if let Some(job) = queues.services.pop_front() {
                        break job;
                    }
                    if queues.closed {
                        return;
                    }
                    queues = self
                        .work_ready
                        .wait(queues)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            };
            // A job that panics takes only itself down: its caller sees `Busy`.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        }
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        lock(&self.shared.queues).closed = true;
        self.shared.work_ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn runs_work_a_few_at_a_time_and_refuses_past_the_queue() {
        let pool = Arc::new(HashPool::new(2, 3).expect("pool"));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (pool, running, most) =
                (Arc::clone(&pool), Arc::clone(&running), Arc::clone(&most));
            tasks.push(tokio::spawn(async move {
                pool.run(Lane::Services, move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        let mut busy = 0;
        for task in tasks {
            if task.await.expect("task").is_err() {
                busy += 1;
            }
        }
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert!(busy >= 20 - 2 - 3, "only {busy} refused");
        // The admin's lane is its own.
        assert_eq!(pool.run(Lane::Admin, || 7).await, Ok(7));
    }
}

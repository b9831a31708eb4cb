//! Which data-plane worker runs the current thread: per-thread resources (pooled
//! upstream connections) are kept apart by it.

use std::cell::Cell;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the data-plane worker running this thread, if it is one.
pub(crate) fn current_worker() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// Per-worker counters have this many slots (on cache lines of their own): workers
/// share a slot only beyond it, and every other thread uses the last one.
pub(crate) const SLOTS: usize = 16;

/// This thread's slot among [`SLOTS`].
pub(crate) fn slot() -> usize {
    current_worker().map_or(SLOTS - 1, |worker| worker % (SLOTS - 1))
}

/// Marks this thread as the data-plane worker `index` (called once, by the worker).
pub(crate) fn set_current_worker(index: usize) {
    WORKER.with(|worker| worker.set(Some(index)));
}

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

/// Marks this thread as the data-plane worker `index` (called once, by the worker).
pub(crate) fn set_current_worker(index: usize) {
    WORKER.with(|worker| worker.set(Some(index)));
}

//! Locking shared by the service's modules.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, using the data of a poisoned lock as is. Every critical section in this
/// crate leaves its data consistent at each step (one insert, remove or assignment at a
/// time), so a panic elsewhere while holding a lock is no reason to stop the service.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

//! Locking and waking shared by the service's modules.

use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::Thread;

/// Locks `mutex`, using the data of a poisoned lock as is. Every critical section in this
/// crate leaves its data consistent at each step (one insert, remove or assignment at a
/// time), so a panic elsewhere while holding a lock is no reason to stop the service.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How a thread that sleeps until there is something for it (a worker whose queue ran dry,
/// the plugin runtime's idle ticker) is woken: it parks in [`Bell::wait`], and whoever gives
/// it something rings.
///
/// The waiting thread says it is parked, then (after a fence) looks once more; the ringer
/// gives, then (after a fence) looks whether it is parked. One of the two sees the other, so
/// nothing given is left unseen by a parked thread.
#[derive(Debug, Default)]
pub(crate) struct Bell {
    /// Set by the waiting thread before it looks a last time and parks; cleared by the one
    /// ring that wakes it, or by the thread when it finds what it waits for.
    parked: AtomicBool,
    /// The waiting thread, set when it first waits.
    thread: OnceLock<Thread>,
}

impl Bell {
    /// Wakes the waiting thread if it is parked or about to park. Called after giving it
    /// something.
    pub(crate) fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed)
            && self.parked.swap(false, Ordering::AcqRel)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
    }

    /// Parks the calling thread until `ready` gives something, and returns it. Only ever
    /// called from one thread. A ring that came before the park leaves the unpark token, and
    /// a spurious wake-up just looks again.
    pub(crate) fn wait<T>(&self, mut ready: impl FnMut() -> Option<T>) -> T {
        let thread = self.thread.get_or_init(std::thread::current);
        debug_assert_eq!(thread.id(), std::thread::current().id());
        loop {
            self.parked.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if let Some(given) = ready() {
                self.parked.store(false, Ordering::Relaxed);
                return given;
            }
            std::thread::park();
        }
    }

    /// Whether the waiting thread is parked (or about to park).
    pub(crate) fn parked(&self) -> bool {
        self.parked.load(Ordering::Relaxed)
    }
}

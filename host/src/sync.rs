//! Locking, waking and thread scheduling shared by the service's modules.

use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::Thread;
use std::time::Instant;

use crate::config::Scheduling;

/// Locks `mutex`, using the data of a poisoned lock as is. Every critical section in this
/// crate leaves its data consistent at each step (one insert, remove or assignment at a
/// time), so a panic elsewhere while holding a lock is no reason to stop the service.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`lock`] if nobody holds `mutex` now, else `None`.
pub(crate) fn try_lock<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
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
        loop {
            if let Some(given) = self.wait_until(None, &mut ready) {
                return given;
            }
        }
    }

    /// As [`Bell::wait`], but gives up at `until` (never if `None`), and then gives `None`.
    pub(crate) fn wait_until<T>(
        &self,
        until: Option<Instant>,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let thread = self.thread.get_or_init(std::thread::current);
        debug_assert_eq!(thread.id(), std::thread::current().id());
        loop {
            self.parked.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if let Some(given) = ready() {
                self.parked.store(false, Ordering::Relaxed);
                return Some(given);
            }
            match until {
                None => std::thread::park(),
                Some(until) => {
                    let now = Instant::now();
                    if now >= until {
                        self.parked.store(false, Ordering::Relaxed);
                        return None;
                    }
                    std::thread::park_timeout(until - now);
                }
            }
        }
    }

    /// Whether the waiting thread is parked (or about to park).
    pub(crate) fn parked(&self) -> bool {
        self.parked.load(Ordering::Relaxed)
    }
}

/// Schedules the calling thread, one of those that carry events (the async runtime's and the
/// rule workers), as `scheduling` says: under [`Scheduling::Throughput`] Linux's
/// `SCHED_BATCH`; under [`Scheduling::Latency`] it keeps the policy it started with, the
/// normal one unless the service itself was started under another (`chrt`).
///
/// The event-carrying threads hand events to each other all the time: the runtime thread
/// reads a burst and wakes a rule worker, the worker queues the burst's commands and wakes the
/// runtime thread. Under the normal policy a woken thread preempts the one that woke it
/// whenever they share a core, so on a busy machine each hand-off cost a switch away and back
/// before the waker had finished its burst, and the bursts stayed small. A batch thread is not
/// run ahead of the thread that woke it; it runs on an idle core at once, or when the running
/// thread yields its core or uses up its slice. Its share of the CPU is the same (its nice
/// value is unchanged).
///
/// Measured on two cores, side by side with the peer in one run: `bench mqtt` at QoS 0 (the
/// link → plugin → command round trip, 100 000 messages unpaced) ÷ mosquitto's own pub→sub
/// 0.484, 0.461 and 0.481 against 0.435 for the same code without it (52.1k messages/s
/// against 45.3k; the service's CPU per message 12.7–13.4 µs against 16.5–17.5), at QoS 1
/// 0.566, 0.526 and 0.611 against 0.517; `bench pipeline` 89.0k events/s, durable (76.7k to
/// 78.5k in earlier sittings). The p99 from receipt to acknowledgement at 35 000 events/s did
/// not move beyond the noise (a median of 2.15 ms over six rounds against 2.01 ms, the
/// spreads overlapping). What it costs beside another busy process is in [`Scheduling`].
///
/// Lowering one's own thread to `SCHED_BATCH` needs no privilege; where it is refused (a
/// sandbox filtering the call) the thread keeps its policy and works the same, its hand-offs
/// costing what they did.
#[cfg(target_os = "linux")]
pub(crate) fn schedule_thread(scheduling: Scheduling) {
    if scheduling == Scheduling::Latency {
        return;
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a live `sched_param` for the duration of the call, and pid 0 is the
    // calling thread; the call changes nothing else.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
}

/// Elsewhere threads keep the platform's default policy.
#[cfg(not(target_os = "linux"))]
pub(crate) fn schedule_thread(_: Scheduling) {}

//! The epoch ticker: advances the engine's epoch every tick while a plugin call may be
//! running, so that per-call deadlines can interrupt a guest, and sleeps while none is.
//!
//! A tick a millisecond is a thousand wake-ups a second of a thread that does nothing, all
//! day, on a service that idles between bursts. So each instance has a [`Mark`] it sets
//! while the guest runs, and the ticker goes to sleep once it has seen no call for
//! [`IDLE_TICKS`] ticks in a row; the next call to start wakes it. A call's deadline counts
//! from the epoch at its start, so ticks missed while nothing ran do not matter.
//!
//! Nothing can be left running unticked: a call sets its mark, then (after a fence) looks
//! whether the ticker sleeps; the ticker says it sleeps, then (after a fence) looks at every
//! mark. One of the two sees the other's mark, so either the call wakes the ticker or the
//! ticker does not sleep.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use wasmtime::Engine;

/// Ticks in a row without a call after which the ticker sleeps: 100 ms at the default tick.
/// A call that ran between two ticks counts too, so under load it never sleeps.
const IDLE_TICKS: u32 = 100;

/// A mark's states.
const IDLE: u8 = 0;
const CALLING: u8 = 1;
/// A call ran since the ticker last looked.
const CALLED: u8 = 2;

/// The ticker thread's side, shared with every instance's [`Calls`].
#[derive(Debug, Default)]
struct Shared {
    asleep: AtomicBool,
    stop: AtomicBool,
    thread: OnceLock<Thread>,
    marks: Mutex<Vec<Arc<Mark>>>,
    ticks: AtomicU64,
}

/// The ticker; dropping it stops its thread.
#[derive(Debug)]
pub(super) struct Ticker {
    shared: Arc<Shared>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.shared.thread.get() {
            thread.unpark();
        }
    }
}

impl Ticker {
    /// Starts the thread that advances `engine`'s epoch every `tick` while calls run.
    pub(super) fn start(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let ticking = shared.clone();
        let handle = thread::Builder::new()
            .name("iotrules-epoch".into())
            .spawn(move || ticking.run(&engine, tick))?;
        let _ = shared.thread.set(handle.thread().clone());
        Ok(Ticker { shared })
    }

    /// A new mark for one instance's calls.
    pub(super) fn calls(&self) -> Calls {
        let mark = Arc::new(Mark::default());
        let mut marks = self.shared.marks.lock().unwrap_or_else(|p| p.into_inner());
        // The marks of dropped instances go here rather than on the ticker's thread.
        marks.retain(|mark| Arc::strong_count(mark) > 1);
        marks.push(mark.clone());
        Calls {
            mark,
            shared: self.shared.clone(),
        }
    }

    /// Ticks so far (the engine's epoch, as far as this runtime advanced it).
    pub(super) fn ticks(&self) -> u64 {
        self.shared.ticks.load(Ordering::Relaxed)
    }

    /// Whether the ticker is asleep (no call for a while).
    pub(super) fn asleep(&self) -> bool {
        self.shared.asleep.load(Ordering::Relaxed)
    }
}

impl Shared {
    /// Ticks until the [`Ticker`] is dropped.
    fn run(&self, engine: &Engine, tick: Duration) {
        let mut idle = 0;
        loop {
            // A wake-up can come early (a call that found the ticker asleep just as it woke by
            // itself leaves its unpark behind): a tick is never shorter than `tick`.
            let due = Instant::now() + tick;
            loop {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                let now = Instant::now();
                if now >= due {
                    break;
                }
                thread::park_timeout(due - now);
            }
            engine.increment_epoch();
            self.ticks.fetch_add(1, Ordering::Relaxed);
            idle = if self.any_call() { 0 } else { idle + 1 };
            if idle < IDLE_TICKS {
                continue;
            }
            idle = 0;
            self.asleep.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            while self.asleep.load(Ordering::Relaxed) && !self.any_call() {
                thread::park();
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
            }
            self.asleep.store(false, Ordering::Relaxed);
        }
    }

    /// Whether a call runs or ran since the last look; clears the "ran" marks.
    fn any_call(&self) -> bool {
        let marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        let mut any = false;
        for mark in marks.iter() {
            match mark.0.load(Ordering::Relaxed) {
                IDLE => {}
                CALLED => {
                    // A call that started meanwhile keeps its CALLING: the exchange fails.
                    let _ =
                        mark.0
                            .compare_exchange(CALLED, IDLE, Ordering::Relaxed, Ordering::Relaxed);
                    any = true;
                }
                _ => any = true,
            }
        }
        any
    }
}

/// One instance's mark, on a cache line of its own: the instance's thread writes it at every
/// call, the ticker reads it once a tick.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Mark(AtomicU8);

/// An instance's handle on the ticker.
#[derive(Debug)]
pub(super) struct Calls {
    mark: Arc<Mark>,
    shared: Arc<Shared>,
}

impl Calls {
    /// A guest call starts: wakes the ticker if it sleeps.
    pub(super) fn enter(&self) {
        self.mark.0.store(CALLING, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.shared.asleep.load(Ordering::Relaxed)
            && self.shared.asleep.swap(false, Ordering::Relaxed)
            && let Some(thread) = self.shared.thread.get()
        {
            thread.unpark();
        }
    }

    /// The guest call returned.
    pub(super) fn leave(&self) {
        self.mark.0.store(CALLED, Ordering::Release);
    }
}

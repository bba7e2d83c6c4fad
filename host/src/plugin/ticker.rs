//! The epoch ticker: advances the engine's epoch every tick while a plugin call may be
//! running, so that per-call deadlines can interrupt a guest, and sleeps while none is.
//!
//! A tick a millisecond is a thousand wake-ups a second of a thread that does nothing, all
//! day, on a service that idles between bursts. So each instance has a [`Mark`] it sets
//! while the guest runs, and the ticker goes to sleep once it has seen no call for
//! [`IDLE_TICKS`] ticks in a row; the next call to start wakes it. A call's deadline counts
//! from the epoch at its start, so ticks missed while nothing ran do not matter.
//!
//! Nothing can be left running unticked: the ticker sleeps on a [`Bell`] that a call rings
//! after it set its mark, so either the call wakes the ticker or the ticker sees the mark
//! and does not sleep.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use wasmtime::Engine;

use crate::sync::{Bell, lock};

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
    /// Rung by a call that starts, and to stop.
    bell: Bell,
    stop: AtomicBool,
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
        self.shared.bell.ring();
    }
}

impl Ticker {
    /// Starts the thread that advances `engine`'s epoch every `tick` while calls run.
    pub(super) fn start(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let ticking = shared.clone();
        thread::Builder::new()
            .name("iotrules-epoch".into())
            .spawn(move || ticking.run(&engine, tick))?;
        Ok(Ticker { shared })
    }

    /// A new mark for one instance's calls.
    pub(super) fn calls(&self) -> Calls {
        let mark = Arc::new(Mark::default());
        let mut marks = lock(&self.shared.marks);
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
        self.shared.bell.parked()
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
            self.bell
                .wait(|| (self.stop.load(Ordering::Relaxed) || self.any_call()).then_some(()));
        }
    }

    /// Whether a call runs or ran since the last look; clears the "ran" marks.
    fn any_call(&self) -> bool {
        let marks = lock(&self.marks);
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
        self.shared.bell.ring();
    }

    /// The guest call returned.
    pub(super) fn leave(&self) {
        self.mark.0.store(CALLED, Ordering::Release);
    }
}

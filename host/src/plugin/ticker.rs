//! The epoch ticker: interrupts a guest call that runs past its deadline, and sleeps the rest
//! of the time.
//!
//! Wasmtime has the guest check the engine's epoch at its function entries and loop heads; a
//! store whose deadline epoch the engine has reached calls back into the host. Advancing the
//! epoch every millisecond (as this did) kept a thread waking a thousand times a second while
//! events flowed, to interrupt calls that take microseconds. On two cores each wake-up took a
//! core from a rule worker: measured with `bench pipeline`, the twin on, the process's CPU per
//! event fell by about a tenth without them. So the epoch now advances only when a call is
//! late.
//!
//! Each call marks on its instance's [`Mark`] the moment its deadline passes, and sets its
//! store to call back at the next advance of the epoch. The ticker sleeps until the earliest
//! deadline of the calls running when it last looked; a call that starts with an earlier one
//! than that wakes it. When it finds a call past its deadline, it advances the epoch: every
//! call running at that moment calls back, and the callback reads the clock. The late call
//! traps; any other goes on, set to call back at the next advance. The ticker looks again
//! every [`RETRY`] while a late call has not stopped (a guest inside a host call checks the
//! epoch only once back in its own code).
//!
//! A deadline is thus kept to within the timer's precision rather than to a tick, and with
//! no call running the ticker sleeps until one starts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use wasmtime::{Engine, UpdateDeadline};

use crate::sync::{Bell, lock};

/// How often the ticker advances the epoch again while a late call has not stopped.
const RETRY: Duration = Duration::from_millis(1);

/// A mark's value while its instance runs no call.
const IDLE: u64 = 0;

/// The ticker thread's side, shared with every instance's [`Calls`].
#[derive(Debug)]
struct Shared {
    /// Rung by a call due before the ticker's next look, and to stop.
    bell: Bell,
    stop: AtomicBool,
    marks: Mutex<Vec<Arc<Mark>>>,
    /// When the ticker looks next, as [`Shared::now`] counts; `u64::MAX` while it sleeps
    /// until a call starts.
    next_look: AtomicU64,
    /// Epoch advances so far.
    ticks: AtomicU64,
    /// What deadlines count from.
    start: Instant,
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
    /// Starts the thread that advances `engine`'s epoch when a call is late.
    pub(super) fn start(engine: Engine) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            bell: Bell::default(),
            stop: AtomicBool::new(false),
            marks: Mutex::new(Vec::new()),
            next_look: AtomicU64::new(u64::MAX),
            ticks: AtomicU64::new(0),
            start: Instant::now(),
        });
        let ticking = shared.clone();
        thread::Builder::new()
            .name("iotrules-epoch".into())
            .spawn(move || ticking.run(&engine))?;
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

    /// Epoch advances so far: one each time the ticker found a call past its deadline.
    pub(super) fn ticks(&self) -> u64 {
        self.shared.ticks.load(Ordering::Relaxed)
    }

    /// Whether the ticker sleeps until a call starts: none was running when it last looked.
    pub(super) fn asleep(&self) -> bool {
        self.shared.bell.parked() && self.shared.next_look.load(Ordering::SeqCst) == u64::MAX
    }
}

impl Shared {
    /// Nanoseconds since the ticker started; never [`IDLE`] once a call adds its deadline.
    fn now(&self) -> u64 {
        nanos(self.start.elapsed())
    }

    /// Runs until the [`Ticker`] is dropped.
    fn run(&self, engine: &Engine) {
        while !self.stop.load(Ordering::Relaxed) {
            let now = self.now();
            let (late, earliest) = self.look(now);
            let next = if late {
                engine.increment_epoch();
                self.ticks.fetch_add(1, Ordering::Relaxed);
                now.saturating_add(nanos(RETRY)).min(earliest)
            } else {
                earliest
            };
            // Said before the last look in `wait`, so that a call starting after it either is
            // seen there or sees this and rings.
            self.next_look.store(next, Ordering::SeqCst);
            let until = (next != u64::MAX).then(|| self.start + Duration::from_nanos(next));
            self.bell.wait_until(until, || {
                let woken = self.stop.load(Ordering::Relaxed) || self.look(now).1 < next;
                woken.then_some(())
            });
        }
    }

    /// Whether a call runs past its deadline at `now`, and the earliest deadline after `now`
    /// of the calls running (`u64::MAX` if none).
    fn look(&self, now: u64) -> (bool, u64) {
        let mut late = false;
        let mut earliest = u64::MAX;
        for mark in lock(&self.marks).iter() {
            match mark.0.load(Ordering::SeqCst) {
                IDLE => {}
                due if due <= now => late = true,
                due => earliest = earliest.min(due),
            }
        }
        (late, earliest)
    }
}

/// Nanoseconds in `duration`, at most `u64::MAX`.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// One instance's mark: when its running call's deadline passes, or [`IDLE`]. On a cache
/// line of its own: the instance's thread writes it at every call.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Mark(AtomicU64);

/// An instance's handle on the ticker.
#[derive(Debug)]
pub(super) struct Calls {
    mark: Arc<Mark>,
    shared: Arc<Shared>,
}

impl Calls {
    /// A guest call starts that may run for `deadline`: marks when it is late, and wakes
    /// the ticker if that is before its next look.
    pub(super) fn enter(&self, deadline: Duration) {
        let due = self.shared.now().saturating_add(nanos(deadline)).max(1);
        self.mark.0.store(due, Ordering::SeqCst);
        if due < self.shared.next_look.load(Ordering::SeqCst) {
            self.shared.bell.ring();
        }
    }

    /// The guest call returned.
    pub(super) fn leave(&self) {
        self.mark.0.store(IDLE, Ordering::Release);
    }

    /// What the store's epoch callback does (set with a deadline of one advance): trap if
    /// the running call is past its deadline, else wait for the next advance.
    pub(super) fn on_epoch(&self) -> UpdateDeadline {
        match self.mark.0.load(Ordering::Relaxed) {
            due if due != IDLE && self.shared.now() >= due => UpdateDeadline::Interrupt,
            _ => UpdateDeadline::Continue(1),
        }
    }

    /// A handle for the store's epoch callback.
    pub(super) fn share(&self) -> Calls {
        Calls {
            mark: self.mark.clone(),
            shared: self.shared.clone(),
        }
    }
}

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
//!
//! A deadline bounds what a plugin does, not what the machine does to it. The clock runs on
//! while the kernel gives the call's core to another thread: under the `flood` load on two
//! cores, a `deadband` call that takes microseconds was once stopped at its 50-ms deadline,
//! and its events went to the dead letters. So a call found past its deadline by the clock is
//! stopped only once its own thread has spent [`OVERDUE_CPU`] of CPU since (a runaway loop,
//! a few milliseconds later than the clock alone would have stopped it), or once it is
//! [`OFF_CPU_DEADLINES`] deadlines old by the clock (a guest that waits, in `wasi:io/poll` or a
//! slow host call, holds its worker that long at most). The thread's CPU clock is read only
//! then, in the callback of a late call, never on a call in time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use wasmtime::{Engine, UpdateDeadline};

use crate::sync::{Bell, lock};

/// How often the ticker advances the epoch again while a late call has not stopped.
const RETRY: Duration = Duration::from_millis(1);

/// The CPU time a call found past its deadline may still spend before it is stopped: time to
/// finish for a call that was only kept off its core, not for a loop.
const OVERDUE_CPU: Duration = Duration::from_millis(2);

/// How many of its deadlines a call may take by the clock, however little of it it ran.
const OFF_CPU_DEADLINES: u32 = 4;

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

/// What a store's epoch callback remembers of its late call: its mark (the moment its
/// deadline passed, which tells one call from the next) and the CPU time of its thread when
/// the callback first found it late.
#[derive(Debug, Default)]
pub(super) struct Overdue {
    since: Option<(u64, Duration)>,
}

/// The CPU time the calling thread has used, or `None` if the clock cannot be read.
fn thread_cpu_time() -> Option<Duration> {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given and nothing else.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    (read == 0).then(|| {
        Duration::new(
            u64::try_from(time.tv_sec).unwrap_or(0),
            u32::try_from(time.tv_nsec).unwrap_or(0),
        )
    })
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

    /// What the store's epoch callback does (set with a deadline of one advance) for calls
    /// of `deadline`: trap if the running call is past it and either ran [`OVERDUE_CPU`]
    /// since it was first found so (`overdue`, kept by the callback between advances) or is
    /// [`OFF_CPU_DEADLINES`] deadlines old; else wait for the next advance.
    pub(super) fn on_epoch(&self, deadline: Duration, overdue: &mut Overdue) -> UpdateDeadline {
        let due = self.mark.0.load(Ordering::Relaxed);
        let now = self.shared.now();
        if due == IDLE || now < due {
            return UpdateDeadline::Continue(1);
        }
        let off_cpu_bound = nanos(deadline).saturating_mul(u64::from(OFF_CPU_DEADLINES - 1));
        if now >= due.saturating_add(off_cpu_bound) {
            return UpdateDeadline::Interrupt;
        }
        let Some(cpu) = thread_cpu_time() else {
            return UpdateDeadline::Interrupt;
        };
        // The CPU clock when this call was first found late.
        let (_, found) = match overdue.since {
            Some(since @ (call, _)) if call == due => since,
            _ => *overdue.since.insert((due, cpu)),
        };
        if cpu.saturating_sub(found) >= OVERDUE_CPU {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Continue(1)
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

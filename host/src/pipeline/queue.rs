//! A worker's queue of jobs: bounded, and woken on purpose.
//!
//! The room is a tokio channel's (an async sender waits for it); the wake-up is our own. A
//! worker that ran dry parks its thread, and a sender rings its [`Bell`] after queueing. The
//! ring can wait: a connector that receives in bursts queues a burst through a
//! [`Deferring`](super::Deferring) and rings once, when its source has nothing more ready.
//! The worker is usually faster than the connector that feeds it, so with a ring per job it
//! parked and was woken for almost every event, and that wake-up (a futex wake on the
//! connector's side, the switch back in on the worker's) cost more than the message's decode:
//! 15% of the process in `perf record` of `bench amqp`, 4 connections.
//!
//! Nothing is left unrung: a sender that would wait (for room here, or for a slot of the
//! in-flight budget) rings first, since the worker it waits for may be asleep on the jobs it
//! owes a ring for; and the last sender dropped rings, so a worker wakes to see the queue
//! closed.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

use super::Closed;
use super::job::Job;
use crate::sync::Bell;

/// A new queue holding up to `capacity` jobs: its sending side, and its worker's side (to
/// be moved to the worker's thread).
pub(super) fn queue(capacity: usize) -> (Queue, Jobs) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    let bell = Arc::new(Bell::default());
    (
        Queue {
            sender: Some(sender),
            bell: bell.clone(),
        },
        Jobs { receiver, bell },
    )
}

/// The sending side of a worker's queue. Dropping the last one closes the queue and wakes
/// the worker to see it.
pub(super) struct Queue {
    /// `None` only while dropping.
    sender: Option<mpsc::Sender<Job>>,
    bell: Arc<Bell>,
}

impl Clone for Queue {
    fn clone(&self) -> Self {
        Queue {
            sender: self.sender.clone(),
            bell: self.bell.clone(),
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        drop(self.sender.take());
        self.bell.ring();
    }
}

/// Room for one job on a queue, rung or not once the job is in.
pub(super) struct Room<'a> {
    permit: mpsc::Permit<'a, Job>,
    bell: &'a Bell,
}

impl Room<'_> {
    /// Queues `job` and wakes the worker.
    pub(super) fn send(self, job: Job) {
        let bell = self.bell;
        self.permit.send(job);
        bell.ring();
    }

    /// Queues `job` and leaves the worker asleep if it is: the caller owes the queue a
    /// [`Queue::ring`].
    pub(super) fn send_unrung(self, job: Job) {
        self.permit.send(job);
    }
}

impl Queue {
    fn sender(&self) -> &mpsc::Sender<Job> {
        self.sender
            .as_ref()
            .expect("a queue's sender is taken only when it is dropped")
    }

    /// Room for a job, at once if there is some. Otherwise `before_waiting` runs first
    /// (the caller's owed rings: the worker this waits for may be asleep on them).
    pub(super) async fn reserve(&self, before_waiting: impl FnOnce()) -> Result<Room<'_>, Closed> {
        let permit = match self.sender().try_reserve() {
            Ok(permit) => permit,
            Err(TrySendError::Closed(())) => return Err(Closed),
            Err(TrySendError::Full(())) => {
                before_waiting();
                self.bell.ring();
                self.sender().reserve().await.map_err(|_| Closed)?
            }
        };
        Ok(Room {
            permit,
            bell: &self.bell,
        })
    }

    /// Wakes the worker if it sleeps.
    pub(super) fn ring(&self) {
        self.bell.ring();
    }

    /// A handle that does not keep the queue open.
    pub(super) fn downgrade(&self) -> WeakQueue {
        WeakQueue {
            sender: self.sender().downgrade(),
            bell: self.bell.clone(),
        }
    }
}

/// A [`Queue`] that does not keep it open (the timer task's).
pub(super) struct WeakQueue {
    sender: mpsc::WeakSender<Job>,
    bell: Arc<Bell>,
}

impl WeakQueue {
    /// The queue, while anything else keeps it open.
    pub(super) fn upgrade(&self) -> Option<Queue> {
        Some(Queue {
            sender: Some(self.sender.upgrade()?),
            bell: self.bell.clone(),
        })
    }
}

/// The worker's side of its queue.
pub(super) struct Jobs {
    receiver: mpsc::Receiver<Job>,
    bell: Arc<Bell>,
}

impl Jobs {
    /// How many jobs are queued.
    pub(super) fn len(&self) -> usize {
        self.receiver.len()
    }

    /// The next job if one is queued.
    pub(super) fn try_recv(&mut self) -> Result<Job, TryRecvError> {
        self.receiver.try_recv()
    }

    /// The next job, parking the thread until one is queued and rung; `None` once the queue
    /// is closed and empty.
    pub(super) fn recv(&mut self) -> Option<Job> {
        self.bell.wait(|| match self.receiver.try_recv() {
            Ok(job) => Some(Some(job)),
            Err(TryRecvError::Disconnected) => Some(None),
            Err(TryRecvError::Empty) => None,
        })
    }
}

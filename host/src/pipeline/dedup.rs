//! De-duplication: an event id seen within a window is a duplicate, and a copy of an id still
//! in flight waits for its first copy.
//!
//! A transport may deliver a message again while its first copy is still in flight (Alibaba
//! redelivers what is unsettled after about 30 s; a command path with retries can hold the
//! first copy longer). Acknowledging the copy at once would lose the message if the first
//! then went back for a retry, or the process died: the transport would have forgotten it.
//! So a copy of an id in flight is held, and settles the way the first copy settles, when it
//! does; a copy of an id already done is acknowledged.
//!
//! Each id is hashed once, on admission: the hash picks the shard and finds the entry, and
//! the first copy carries a [`Mark`] (the hash, the entry's serial number and its place in the
//! table) to finish it by, so the hot path allocates one key and hashes one string per event.
//!
//! An entry is found again by its place in the table, checked by its serial number or stamp,
//! and by its hash only when the table has grown since and moved it. The table holds the
//! ids of a whole window (100 000 of them by default, megabytes), so a search by hash reads
//! a line of the table's control bytes and then the entry, each usually a cache miss: going
//! to the place directly saves one of the two, for the first copy's finish and for its id's
//! end in the memory.

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use hashbrown::hash_table::OccupiedEntry;

use crate::sync::lock;

/// The ids the pipeline has seen, in shards so that connectors and workers rarely wait for one
/// another. `C` is what a held copy is (the pipeline's pending settlement).
pub(super) struct Seen<C> {
    shards: Box<[Mutex<Dedup<C>>]>,
    /// Keyed per process: ids come from the network, and a fixed hash would let a sender
    /// choose ids that collide.
    hasher: RandomState,
}

impl<C> Seen<C> {
    /// Below this capacity the ids stay in one shard, so that `dedup_capacity` stays exact
    /// where it is small enough to matter.
    const SHARDED_FROM: usize = 16 * 1024;
    const SHARDS: usize = 16;

    /// Remembers ids for `window`, about `capacity` of them.
    pub(super) fn new(window: Duration, capacity: usize) -> Self {
        let count = if capacity >= Self::SHARDED_FROM {
            Self::SHARDS
        } else {
            1
        };
        Seen {
            shards: (0..count)
                .map(|_| Mutex::new(Dedup::new(window, capacity.div_ceil(count))))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// The shard of `hash`: chosen by bits the table does not use for its buckets (the low
    /// ones) or its tags (the top seven), so that each shard's table spreads as well as one
    /// table would.
    fn shard(&self, hash: u64) -> &Mutex<Dedup<C>> {
        &self.shards[((hash >> 32) % self.shards.len() as u64) as usize]
    }

    /// Takes `copy`, a delivery of `id` received at `now`.
    pub(super) fn admit(&self, id: &str, now: Instant, copy: C) -> Admission<C> {
        let hash = self.hasher.hash_one(id);
        lock(self.shard(hash)).admit(id, hash, now, copy)
    }

    /// The first copy of `mark` is done: its id is forgotten too when it goes back for a
    /// retry (so that its redelivery is not taken for a duplicate). Returns the copies held
    /// meanwhile.
    pub(super) fn finished(&self, mark: Mark, retry: bool) -> Vec<C> {
        lock(self.shard(mark.hash)).finished(mark, retry)
    }
}

/// What became of a delivery's id.
pub(super) enum Admission<C> {
    /// The first copy: it goes on, its id marked in flight (no mark when ids are not
    /// remembered at all: a zero window or capacity).
    First(C, Option<Mark>),
    /// A copy of an id in flight: held until the first settles.
    Held,
    /// A copy of an id already done: to be acknowledged.
    Done(C),
}

/// How a first copy finds its entry again: the id's hash, the entry's serial number, and
/// where the entry was put in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    hash: u64,
    serial: u64,
    bucket: usize,
}

/// One shard: the ids remembered for a window, up to a capacity (the oldest go first), and
/// the ids in flight with the copies that arrived meanwhile.
pub(super) struct Dedup<C> {
    window: Duration,
    capacity: usize,
    entries: HashTable<Entry<C>>,
    /// When each id was remembered, oldest first. An entry here whose stamp its id no longer
    /// has (forgotten, or remembered again later) is left to expire.
    order: VecDeque<Remembered>,
    /// How many entries are remembered (the others are only in flight).
    remembered: usize,
    /// The next serial number and stamp.
    next: u64,
}

struct Entry<C> {
    id: Box<str>,
    hash: u64,
    serial: u64,
    /// The stamp of its record in `order`, while it is remembered.
    stamp: Option<u64>,
    /// While its first copy is in flight: the copies that arrived meanwhile.
    held: Option<Vec<C>>,
}

struct Remembered {
    at: Instant,
    hash: u64,
    stamp: u64,
    /// Where its entry was in the table when it was remembered.
    bucket: usize,
}

impl<C> Dedup<C> {
    /// Ids are remembered for `window`, at most `capacity` of them. A zero window or
    /// capacity remembers nothing.
    pub(super) fn new(window: Duration, capacity: usize) -> Self {
        Dedup {
            window,
            capacity,
            entries: HashTable::new(),
            order: VecDeque::new(),
            remembered: 0,
            next: 0,
        }
    }

    fn admit(&mut self, id: &str, hash: u64, now: Instant, copy: C) -> Admission<C> {
        if self.window.is_zero() || self.capacity == 0 {
            return Admission::First(copy, None);
        }
        self.expire(now);
        let stamp = self.next;
        let (serial, bucket) = match self.entries.find_entry(hash, |entry| *entry.id == *id) {
            Ok(found) => {
                let bucket = found.bucket_index();
                let entry = found.into_mut();
                match (&entry.stamp, &mut entry.held) {
                    (Some(_), Some(held)) => {
                        held.push(copy);
                        return Admission::Held;
                    }
                    (Some(_), None) => return Admission::Done(copy),
                    // In flight and no longer remembered (the window passed, or the capacity
                    // pushed it out while it waited): a copy now is taken for a first, as one
                    // arriving after the id was forgotten would be.
                    (None, _) => {
                        entry.stamp = Some(stamp);
                        entry.held.get_or_insert_with(Vec::new);
                        (entry.serial, bucket)
                    }
                }
            }
            Err(absent) => {
                let inserted = absent.into_table().insert_unique(
                    hash,
                    Entry {
                        id: id.into(),
                        hash,
                        serial: stamp,
                        stamp: Some(stamp),
                        held: Some(Vec::new()),
                    },
                    |entry| entry.hash,
                );
                (stamp, inserted.bucket_index())
            }
        };
        self.next += 1;
        self.order.push_back(Remembered {
            at: now,
            hash,
            stamp,
            bucket,
        });
        self.remembered += 1;
        while self.remembered > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.unremember(&oldest);
        }
        Admission::First(
            copy,
            Some(Mark {
                hash,
                serial,
                bucket,
            }),
        )
    }

    fn finished(&mut self, mark: Mark, retry: bool) -> Vec<C> {
        let Some(mut found) = find(&mut self.entries, mark.hash, mark.bucket, |entry| {
            entry.serial == mark.serial
        }) else {
            return Vec::new();
        };
        let entry = found.get_mut();
        let held = entry.held.take().unwrap_or_default();
        if retry && entry.stamp.take().is_some() {
            self.remembered -= 1;
        }
        if entry.stamp.is_none() {
            found.remove();
        }
        held
    }

    /// How many ids are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.remembered
    }

    /// Forgets the ids remembered longer than the window.
    fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.order.front() {
            if now.duration_since(oldest.at) < self.window {
                break;
            }
            if let Some(oldest) = self.order.pop_front() {
                self.unremember(&oldest);
            }
        }
        // A retry leaves its id's record behind; keep the queue from outgrowing the table by
        // much when ids are forgotten often.
        if self.order.len() > 2 * self.capacity.max(16) {
            let entries = &self.entries;
            self.order.retain(|record| {
                let remembered = |entry: &Entry<C>| entry.stamp == Some(record.stamp);
                entries.get_bucket(record.bucket).is_some_and(remembered)
                    || entries.find(record.hash, remembered).is_some()
            });
        }
    }

    /// Ends `record`'s memory of its id, if the id still has it; the entry goes unless its
    /// first copy is in flight.
    fn unremember(&mut self, record: &Remembered) {
        let Some(mut found) = find(&mut self.entries, record.hash, record.bucket, |entry| {
            entry.stamp == Some(record.stamp)
        }) else {
            return;
        };
        self.remembered -= 1;
        let entry = found.get_mut();
        entry.stamp = None;
        if entry.held.is_none() {
            found.remove();
        }
    }
}

/// The entry of `entries` that `is` names: the one at `bucket` if it is that one, or else the
/// one found by `hash` (the table grew, and moved it, since `bucket` was taken).
fn find<C>(
    entries: &mut HashTable<Entry<C>>,
    hash: u64,
    bucket: usize,
    is: impl Fn(&Entry<C>) -> bool,
) -> Option<OccupiedEntry<'_, Entry<C>>> {
    if entries.get_bucket(bucket).is_some_and(&is) {
        return entries.get_bucket_entry(bucket).ok();
    }
    entries.find_entry(hash, is).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    /// A shard fed with a fixed hash per id, as [`Seen`] would hash it.
    struct Shard(Dedup<u32>, RandomState);

    impl Shard {
        fn new(window: Duration, capacity: usize) -> Self {
            Shard(Dedup::new(window, capacity), RandomState::new())
        }

        fn admit(&mut self, id: &str, now: Instant, copy: u32) -> Admission<u32> {
            let hash = self.1.hash_one(id);
            self.0.admit(id, hash, now, copy)
        }

        /// Admits `id` and finishes it at once (acknowledged): whether it was a first copy.
        fn first_time(&mut self, id: &str, now: Instant) -> bool {
            match self.admit(id, now, 0) {
                Admission::First(_, mark) => {
                    if let Some(mark) = mark {
                        self.0.finished(mark, false);
                    }
                    true
                }
                Admission::Held | Admission::Done(_) => false,
            }
        }

        fn mark(&mut self, id: &str, now: Instant, copy: u32) -> Mark {
            match self.admit(id, now, copy) {
                Admission::First(_, Some(mark)) => mark,
                _ => panic!("{id} is not a first copy"),
            }
        }
    }

    #[test]
    fn a_repeat_within_the_window_is_a_duplicate_and_after_it_is_not() {
        let start = Instant::now();
        let mut dedup = Shard::new(Duration::from_secs(10), 100);
        assert!(dedup.first_time("a", start));
        assert!(!dedup.first_time("a", start + Duration::from_secs(9)));
        assert!(dedup.first_time("b", start + Duration::from_secs(9)));
        assert!(dedup.first_time("a", start + Duration::from_secs(10)));
    }

    #[test]
    fn capacity_evicts_the_oldest() {
        let now = Instant::now();
        let mut dedup = Shard::new(MINUTE, 2);
        assert!(dedup.first_time("a", now));
        assert!(dedup.first_time("b", now));
        assert!(dedup.first_time("c", now));
        assert_eq!(dedup.0.len(), 2);
        assert!(dedup.first_time("a", now), "a was evicted");
        assert!(!dedup.first_time("c", now));
    }

    #[test]
    fn a_retried_id_is_new_again_and_its_old_record_does_not_evict_it() {
        let start = Instant::now();
        let mut dedup = Shard::new(Duration::from_secs(10), 100);
        let mark = dedup.mark("a", start, 1);
        assert!(dedup.0.finished(mark, true).is_empty());
        assert_eq!(dedup.0.len(), 0);
        assert!(dedup.first_time("a", start + Duration::from_secs(5)));
        // The first record's expiry must not remove the second.
        assert!(!dedup.first_time("a", start + Duration::from_secs(11)));
    }

    #[test]
    fn a_zero_window_remembers_nothing() {
        let now = Instant::now();
        let mut dedup = Shard::new(Duration::ZERO, 100);
        assert!(matches!(
            dedup.admit("a", now, 1),
            Admission::First(1, None)
        ));
        assert!(matches!(
            dedup.admit("a", now, 2),
            Admission::First(2, None)
        ));
        assert_eq!(dedup.0.len(), 0);
    }

    #[test]
    fn copies_of_an_id_in_flight_are_held_until_the_first_finishes() {
        let now = Instant::now();
        let mut dedup = Shard::new(MINUTE, 100);
        let mark = dedup.mark("a", now, 1);
        assert!(matches!(dedup.admit("a", now, 2), Admission::Held));
        assert!(matches!(dedup.admit("a", now, 3), Admission::Held));
        assert!(dedup.first_time("b", now), "another id is not held");
        assert_eq!(dedup.0.finished(mark, false), vec![2, 3]);
        assert!(
            matches!(dedup.admit("a", now, 4), Admission::Done(4)),
            "a copy after the first was acknowledged is done"
        );
        assert!(dedup.0.finished(mark, false).is_empty(), "finished once");
    }

    #[test]
    fn an_id_in_flight_outlives_its_window_and_a_copy_after_it_is_a_first() {
        let start = Instant::now();
        let mut dedup = Shard::new(Duration::from_secs(10), 1);
        let a = dedup.mark("a", start, 1);
        // The capacity pushes a out of the memory while it is in flight...
        assert!(dedup.first_time("b", start));
        // ...so a copy now goes on as a first (as it would after a retry) ...
        let again = dedup.mark("a", start, 2);
        assert_eq!(again, a, "the same entry");
        // ... and the copies held meanwhile still go to whoever finishes first.
        assert!(matches!(dedup.admit("a", start, 3), Admission::Held));
        assert_eq!(dedup.0.finished(a, false), vec![3]);
        assert!(dedup.0.finished(again, false).is_empty());
        assert!(!dedup.first_time("a", start + Duration::from_secs(5)));
        assert!(dedup.first_time("a", start + Duration::from_secs(20)));
    }

    #[test]
    fn a_first_copy_finishes_by_its_place_and_by_its_hash_once_the_table_moved_it() {
        let now = Instant::now();
        let mut dedup = Shard::new(MINUTE, 10_000);
        let ids: Vec<String> = (0..1000).map(|n| format!("id-{n}")).collect();
        let marks: Vec<Mark> = ids.iter().map(|id| dedup.mark(id, now, 0)).collect();
        // The table grew while the ids came: the first ones' places are stale.
        let moved = marks
            .iter()
            .filter(|mark| {
                dedup
                    .0
                    .entries
                    .get_bucket(mark.bucket)
                    .map(|entry| entry.serial)
                    != Some(mark.serial)
            })
            .count();
        assert!(
            moved > 0 && moved < marks.len(),
            "{moved} of {} moved",
            marks.len()
        );
        for (n, (id, mark)) in ids.iter().zip(&marks).enumerate() {
            assert!(matches!(
                dedup.admit(id, now, n as u32 + 1),
                Admission::Held
            ));
            assert_eq!(dedup.0.finished(*mark, false), vec![n as u32 + 1], "{id}");
            assert!(
                matches!(dedup.admit(id, now, 0), Admission::Done(0)),
                "{id}"
            );
        }
    }

    #[test]
    fn a_mark_whose_place_another_entry_took_finishes_only_its_own() {
        let now = Instant::now();
        let mut dedup = Shard::new(MINUTE, 100);
        let a = dedup.mark("a", now, 0);
        let b = dedup.mark("b", now, 0);
        assert!(matches!(dedup.admit("a", now, 1), Admission::Held));
        assert!(matches!(dedup.admit("b", now, 2), Admission::Held));
        // As if b had taken the place where a was put.
        let stale = Mark {
            bucket: b.bucket,
            ..a
        };
        assert_eq!(dedup.0.finished(stale, false), vec![1]);
        assert!(
            matches!(dedup.admit("b", now, 3), Admission::Held),
            "b is still in flight"
        );
        assert_eq!(dedup.0.finished(b, false), vec![2, 3]);
    }

    #[test]
    fn ids_that_are_retried_often_do_not_grow_the_queue_without_bound() {
        let now = Instant::now();
        let mut dedup = Shard::new(MINUTE, 4);
        for round in 0..1000 {
            let mark = dedup.mark("a", now, round);
            dedup.0.finished(mark, true);
        }
        assert!(dedup.0.order.len() <= 2 * 16 + 1, "{}", dedup.0.order.len());
        assert_eq!(dedup.0.entries.len(), 0);
    }
}

//! Duplicate suppression: an event id seen within a window is a duplicate.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Remembers event ids for a window of time, up to a capacity (the oldest go first).
#[derive(Debug)]
pub struct Dedup {
    window: Duration,
    capacity: usize,
    seen: HashMap<Box<str>, Instant>,
    order: VecDeque<(Instant, Box<str>)>,
}

impl Dedup {
    /// Ids are remembered for `window`, at most `capacity` of them. A zero window or
    /// capacity remembers nothing.
    pub fn new(window: Duration, capacity: usize) -> Self {
        Dedup {
            window,
            capacity,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `id` at `now`; false if it was already seen within the window.
    pub fn first_time(&mut self, id: &str, now: Instant) -> bool {
        if self.window.is_zero() || self.capacity == 0 {
            return true;
        }
        self.expire(now);
        if self.seen.contains_key(id) {
            return false;
        }
        while self.seen.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_front() else {
                break;
            };
            self.seen.remove(&oldest);
        }
        let id: Box<str> = id.into();
        self.seen.insert(id.clone(), now);
        self.order.push_back((now, id));
        true
    }

    /// Forgets `id`: its event was not processed (it will be delivered again and must not be
    /// taken for a duplicate then).
    pub fn forget(&mut self, id: &str) {
        // The queue entry stays until it expires; `expire` skips ids no longer in the map
        // or re-recorded later.
        self.seen.remove(id);
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            if let Some((at, id)) = self.order.pop_front()
                && self.seen.get(&id) == Some(&at)
            {
                self.seen.remove(&id);
            }
        }
        // `forget` leaves queue entries behind; keep the queue from outgrowing the map by
        // much when ids are forgotten often.
        if self.order.len() > 2 * self.capacity.max(16) {
            let seen = &self.seen;
            self.order.retain(|(at, id)| seen.get(id) == Some(at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_within_the_window_is_a_duplicate_and_after_it_is_not() {
        let start = Instant::now();
        let mut dedup = Dedup::new(Duration::from_secs(10), 100);
        assert!(dedup.first_time("a", start));
        assert!(!dedup.first_time("a", start + Duration::from_secs(9)));
        assert!(dedup.first_time("b", start + Duration::from_secs(9)));
        assert!(dedup.first_time("a", start + Duration::from_secs(10)));
    }

    #[test]
    fn capacity_evicts_the_oldest() {
        let now = Instant::now();
        let mut dedup = Dedup::new(Duration::from_secs(60), 2);
        assert!(dedup.first_time("a", now));
        assert!(dedup.first_time("b", now));
        assert!(dedup.first_time("c", now));
        assert_eq!(dedup.len(), 2);
        assert!(dedup.first_time("a", now), "a was evicted");
        assert!(!dedup.first_time("c", now));
    }

    #[test]
    fn a_forgotten_id_is_new_again_and_old_entries_do_not_evict_it() {
        let start = Instant::now();
        let mut dedup = Dedup::new(Duration::from_secs(10), 100);
        assert!(dedup.first_time("a", start));
        dedup.forget("a");
        assert!(dedup.first_time("a", start + Duration::from_secs(5)));
        // The first record's expiry must not remove the second.
        assert!(!dedup.first_time("a", start + Duration::from_secs(11)));
    }

    #[test]
    fn a_zero_window_remembers_nothing() {
        let now = Instant::now();
        let mut dedup = Dedup::new(Duration::ZERO, 100);
        assert!(dedup.first_time("a", now));
        assert!(dedup.first_time("a", now));
        assert!(dedup.is_empty());
    }
}

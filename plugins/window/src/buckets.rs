//! Tumbling and hopping windows over bounded buckets: the arithmetic, with no host in sight.
//!
//! Samples are summed into buckets `every` wide, aligned to multiples of `every` from the
//! epoch; a window `size` wide ending at `end` (a multiple of `every`) is the merge of the
//! buckets starting in `[end - size, end)`. A tumbling window is the case `every == size`: one
//! bucket per window. So a device's state is at most `size / every + 1` buckets (the windows
//! still to close, and the one filling), each holding five numbers per property, never the
//! samples themselves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a bucket or a window knows of one property's samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Agg {
    pub(crate) count: u64,
    pub(crate) sum: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    /// The latest sample.
    pub(crate) last: f64,
}

impl Agg {
    fn of(value: f64) -> Self {
        Agg {
            count: 1,
            sum: value,
            min: value,
            max: value,
            last: value,
        }
    }

    fn add(&mut self, value: f64) {
        self.merge(&Agg::of(value));
    }

    /// Takes in the samples of `later`, which all came after this one's.
    fn merge(&mut self, later: &Agg) {
        self.count += later.count;
        self.sum += later.sum;
        self.min = self.min.min(later.min);
        self.max = self.max.max(later.max);
        self.last = later.last;
    }

    pub(crate) fn avg(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// The samples of one `every`-wide stretch of time, by property.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Bucket {
    pub(crate) start_ms: u64,
    pub(crate) values: BTreeMap<String, Agg>,
}

/// A closed window: its span and what it saw, by property.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Closed {
    pub(crate) start_ms: u64,
    pub(crate) end_ms: u64,
    pub(crate) values: BTreeMap<String, Agg>,
}

/// A window shape: `size` wide, a new one ending every `every`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Shape {
    pub(crate) size_ms: u64,
    pub(crate) every_ms: u64,
}

impl Shape {
    /// The most buckets a device holds: the windows still to close, and the one filling.
    pub(crate) fn max_buckets(&self) -> usize {
        usize::try_from(self.size_ms / self.every_ms).unwrap_or(usize::MAX) + 1
    }

    /// Where the bucket holding time `at_ms` starts.
    fn bucket_start(&self, at_ms: u64) -> u64 {
        at_ms - at_ms % self.every_ms
    }

    /// Adds samples taken at `at_ms`, keeping the buckets in time order. Returns when the
    /// first window holding them ends: when the timer should be due if none is set.
    pub(crate) fn add(
        &self,
        buckets: &mut Vec<Bucket>,
        at_ms: u64,
        samples: &[(&str, f64)],
    ) -> u64 {
        let start_ms = self.bucket_start(at_ms);
        let index = match buckets.binary_search_by_key(&start_ms, |b| b.start_ms) {
            Ok(index) => index,
            Err(index) => {
                buckets.insert(
                    index,
                    Bucket {
                        start_ms,
                        values: BTreeMap::new(),
                    },
                );
                index
            }
        };
        let bucket = &mut buckets[index];
        for &(code, value) in samples {
            match bucket.values.get_mut(code) {
                Some(agg) => agg.add(value),
                None => {
                    bucket.values.insert(code.to_owned(), Agg::of(value));
                }
            }
        }
        // Never more than the bound, whatever happened to the timers: the oldest go first.
        let excess = buckets.len().saturating_sub(self.max_buckets());
        buckets.drain(..excess);
        start_ms + self.every_ms
    }

    /// Closes the window ending at `end_ms`: merges its buckets, and forgets those no later
    /// window needs. `None` when the window saw nothing.
    pub(crate) fn close(&self, buckets: &mut Vec<Bucket>, end_ms: u64) -> Option<Closed> {
        let start_ms = end_ms.saturating_sub(self.size_ms);
        let mut values: BTreeMap<String, Agg> = BTreeMap::new();
        for bucket in buckets
            .iter()
            .filter(|b| b.start_ms >= start_ms && b.start_ms < end_ms)
        {
            for (code, agg) in &bucket.values {
                match values.get_mut(code) {
                    Some(window) => window.merge(agg),
                    None => {
                        values.insert(code.clone(), *agg);
                    }
                }
            }
        }
        // The next window starts `every` later; buckets before it are done with.
        let keep_from = (end_ms + self.every_ms).saturating_sub(self.size_ms);
        buckets.retain(|b| b.start_ms >= keep_from);
        (!values.is_empty()).then_some(Closed {
            start_ms,
            end_ms,
            values,
        })
    }

    /// When the next window that holds any of `buckets` ends, after the one ending at
    /// `end_ms` closed; `None` when there are no buckets left.
    pub(crate) fn next_end(&self, buckets: &[Bucket], end_ms: u64) -> Option<u64> {
        let first = buckets.first()?;
        Some((end_ms + self.every_ms).max(first.start_ms + self.every_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn tumbling() -> Shape {
        Shape {
            size_ms: 5 * MIN,
            every_ms: 5 * MIN,
        }
    }

    fn hopping() -> Shape {
        Shape {
            size_ms: 5 * MIN,
            every_ms: MIN,
        }
    }

    #[test]
    fn a_tumbling_window_is_one_aligned_bucket() {
        let shape = tumbling();
        let mut buckets = Vec::new();
        assert_eq!(shape.add(&mut buckets, 7 * MIN, &[("p", 10.0)]), 10 * MIN);
        assert_eq!(shape.add(&mut buckets, 9 * MIN, &[("p", 20.0)]), 10 * MIN);
        let closed = shape.close(&mut buckets, 10 * MIN).unwrap();
        assert_eq!((closed.start_ms, closed.end_ms), (5 * MIN, 10 * MIN));
        let agg = closed.values["p"];
        assert_eq!(
            (agg.count, agg.avg(), agg.min, agg.max, agg.last),
            (2, 15.0, 10.0, 20.0, 20.0)
        );
        assert!(buckets.is_empty());
        assert_eq!(shape.next_end(&buckets, 10 * MIN), None);
    }

    #[test]
    fn hopping_windows_overlap_and_drop_buckets_they_no_longer_need() {
        let shape = hopping();
        let mut buckets = Vec::new();
        shape.add(&mut buckets, 0, &[("p", 1.0)]);
        shape.add(&mut buckets, 2 * MIN, &[("p", 3.0)]);
        shape.add(&mut buckets, 4 * MIN + 1, &[("p", 5.0)]);
        let first = shape.close(&mut buckets, MIN).unwrap();
        assert_eq!(first.values["p"].count, 1, "the window ending at 1 min");
        assert_eq!(shape.next_end(&buckets, MIN), Some(2 * MIN), "the next hop");
        let later = shape.close(&mut buckets, 5 * MIN).unwrap();
        assert_eq!(later.start_ms, 0);
        assert_eq!(later.values["p"].count, 3);
        let last = shape.close(&mut buckets, 9 * MIN).unwrap();
        assert_eq!(
            last.values["p"].count, 1,
            "only the 4 min bucket is left in [4, 9)"
        );
        assert!(shape.close(&mut buckets, 10 * MIN).is_none());
    }

    #[test]
    fn properties_are_aggregated_apart() {
        let shape = tumbling();
        let mut buckets = Vec::new();
        shape.add(&mut buckets, 0, &[("a", 1.0), ("b", -4.0)]);
        shape.add(&mut buckets, MIN, &[("a", 3.0)]);
        let closed = shape.close(&mut buckets, 5 * MIN).unwrap();
        assert_eq!(closed.values["a"].sum, 4.0);
        assert_eq!(closed.values["b"].min, -4.0);
    }

    #[test]
    fn the_buckets_never_outgrow_the_bound() {
        let shape = hopping();
        let mut buckets = Vec::new();
        for minute in 0..100 {
            shape.add(&mut buckets, minute * MIN, &[("p", 1.0)]);
        }
        assert_eq!(buckets.len(), shape.max_buckets());
        assert_eq!(buckets[0].start_ms, 94 * MIN, "the newest are kept");
    }
}

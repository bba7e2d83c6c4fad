//! Retention of dead letters: how many, how much and how old the service's store keeps.
//!
//! Without limits, a misconfigured key (every message fails to decrypt) fills the disk with
//! dead letters at the connector's full rate. The limits and their defaults are
//! [`Retention`]'s; this module enforces them after each letter the service stores.
//!
//! # Cheap per insert
//!
//! Triggers keep the number and size of the letters in the one-row table
//! `dead_letter_totals` (schema step 2), so the check after an insert is one row read, and
//! the totals stay right when the `dead-letters` command removes letters from another
//! process. Over a cap, the oldest letters (by `time_ms`, then `id`: the
//! `dead_letters_by_time` index) are deleted down to 1 % under it, so that evictions come
//! in bursts of about 1 % of the store instead of one row per insert, and each burst is one
//! log line, not one per letter. Age is checked when the store opens and then at most
//! once a minute, so a letter may outlive `max_age` by up to a minute (or until the next
//! letter arrives, in a store that receives none).
//!
//! The file does not shrink when letters are deleted: SQLite reuses the freed pages, so
//! the file stays near its largest size, which the caps bound.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, params};

use crate::config::DeadLettersConfig;
use crate::metrics::{Counter, Metrics};
use crate::sync::lock;
use crate::time::Clock;

/// How many, how much and how old the dead letters may be; the oldest go first.
///
/// The defaults are sized for the worst case the store must survive: a misconfigured key
/// at 1 000 messages/s for a week (a holiday) is 604 800 s × 1 000 = 604.8 million
/// letters; at about 1 KiB a letter (a few hundred bytes of payload, the error message and
/// the transport properties) that is some 620 GB, which no disk should be asked to keep.
/// So the byte cap is the one that bites: 1 GiB keeps about a million such letters, the
/// last 17 minutes of the flood, which is plenty to see what went wrong. The row cap (a
/// million) bites first for smaller letters (100-byte letters would fit ten million under
/// the byte cap), and keeps the index and a `dead-letters list` small. SQLite adds about a
/// hundred bytes a row of its own (record header, the time index), so at the defaults the
/// file stays near 1.1 GiB. The age cap (a week: Friday's failures are still there on
/// Monday) is what empties a store that sees few failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The most letters kept.
    pub max_rows: u64,
    /// The most bytes of letters kept: payload, error message and properties (what
    /// `dead_letter_totals` counts; SQLite's own overhead is not included).
    pub max_bytes: u64,
    /// How long a letter is kept, from its `time_ms`.
    pub max_age: Duration,
}

impl Retention {
    /// A million letters.
    pub(crate) const DEFAULT_MAX_ROWS: u64 = 1_000_000;
    /// 1 GiB.
    pub(crate) const DEFAULT_MAX_BYTES: u64 = 1 << 30;
    /// A week.
    pub(crate) const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_rows: Self::DEFAULT_MAX_ROWS,
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_age: Self::DEFAULT_MAX_AGE,
        }
    }
}

impl From<&DeadLettersConfig> for Retention {
    /// The limits of `[dead_letters]`, in the store's units.
    fn from(config: &DeadLettersConfig) -> Self {
        Retention {
            max_rows: config.max_rows,
            max_bytes: config.max_mb.saturating_mul(1 << 20),
            max_age: Duration::from_secs(config.max_age_days.saturating_mul(86_400)),
        }
    }
}

/// Age is checked at most this often (on the store's clock).
const AGE_CHECK_INTERVAL_MS: u64 = 60_000;
/// At most one eviction line this often; evictions in between are summed into the next.
const LOG_INTERVAL_MS: u64 = 60_000;
/// The most letters one `DELETE` removes, so that a large eviction (a lowered cap at
/// start) holds the file's write lock in short turns and the `dead-letters` command is
/// not kept waiting past its busy timeout.
const BATCH: u64 = 10_000;

/// The level an over-the-cap total is brought down to: 1 % under the cap.
fn low_water(cap: u64) -> u64 {
    cap - cap / 100
}

/// How many letters were evicted, by the limit that evicted them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Evicted {
    age: u64,
    rows: u64,
    bytes: u64,
}

impl Evicted {
    fn any(self) -> bool {
        self.age + self.rows + self.bytes > 0
    }

    fn add(&mut self, other: Evicted) {
        self.age += other.age;
        self.rows += other.rows;
        self.bytes += other.bytes;
    }
}

/// The eviction counters, created with the store (evictions at start count too) and handed
/// to the service's metrics when it starts ([`Retainer::register`]).
#[derive(Debug, Default)]
struct Counters {
    age: Arc<Counter>,
    rows: Arc<Counter>,
    bytes: Arc<Counter>,
}

/// What the log rate limit and the age check remember between inserts.
#[derive(Debug, Default)]
struct Progress {
    next_age_check_ms: u64,
    last_log_ms: Option<u64>,
    unlogged: Evicted,
}

/// [`Retention`] at work in the service's store.
#[derive(Debug)]
pub(super) struct Retainer {
    limits: Retention,
    clock: Clock,
    counters: Counters,
    progress: Mutex<Progress>,
}

impl Retainer {
    pub(super) fn new(limits: Retention, clock: Clock) -> Self {
        Retainer {
            limits,
            clock,
            counters: Counters::default(),
            progress: Mutex::default(),
        }
    }

    /// Counts evictions into `metrics` as `iotrules_dead_letters_evicted_total{reason}`,
    /// including those made before the service started.
    pub(super) fn register(&self, metrics: &Metrics) {
        let family = &metrics.dead_letters_evicted;
        family.adopt(&["age"], self.counters.age.clone());
        family.adopt(&["rows"], self.counters.rows.clone());
        family.adopt(&["bytes"], self.counters.bytes.clone());
    }

    /// Brings the store within its limits. `force_age` checks age whenever the last check
    /// was (at open). A failure is logged, not returned: the letter just stored is kept, and
    /// the next insert tries again.
    pub(super) fn enforce(&self, conn: &Connection, path: &Path, force_age: bool) {
        let now = self.clock.now_ms();
        let check_age = {
            let mut progress = lock(&self.progress);
            let due = force_age || now >= progress.next_age_check_ms;
            if due {
                progress.next_age_check_ms = now.saturating_add(AGE_CHECK_INTERVAL_MS);
            }
            due
        };
        let mut evicted = Evicted::default();
        let result = self.evict(conn, now, check_age, &mut evicted);
        // What was deleted before a failure is gone all the same: count it.
        self.counters.age.add(evicted.age);
        self.counters.rows.add(evicted.rows);
        self.counters.bytes.add(evicted.bytes);
        if let Err(error) = result {
            tracing::error!(
                store = %path.display(),
                %error,
                "Cannot evict old dead letters; the store may grow past its [dead_letters] limits"
            );
        }
        if evicted.any() {
            self.log(conn, path, now, evicted);
        }
    }

    fn evict(
        &self,
        conn: &Connection,
        now: u64,
        check_age: bool,
        evicted: &mut Evicted,
    ) -> rusqlite::Result<()> {
        if check_age {
            let max_age_ms = u64::try_from(self.limits.max_age.as_millis()).unwrap_or(u64::MAX);
            let cutoff = now.saturating_sub(max_age_ms);
            loop {
                let n = delete_oldest(conn, Some(cutoff), BATCH)?;
                evicted.age += n;
                if n < BATCH {
                    break;
                }
            }
        }
        let (rows, _) = totals(conn)?;
        if rows > self.limits.max_rows {
            let mut excess = rows - low_water(self.limits.max_rows);
            while excess > 0 {
                let n = delete_oldest(conn, None, excess.min(BATCH))?;
                if n == 0 {
                    break;
                }
                evicted.rows += n;
                excess = excess.saturating_sub(n);
            }
        }
        let (mut rows, mut bytes) = totals(conn)?;
        if bytes > self.limits.max_bytes {
            let target = low_water(self.limits.max_bytes);
            while bytes > target && rows > 0 {
                // As many of the oldest as letters of the average size would free; the
                // totals are read again after, and the loop goes on if they were larger.
                let average = (bytes / rows).max(1);
                let n = (bytes - target).div_ceil(average).clamp(1, BATCH);
                let deleted = delete_oldest(conn, None, n)?;
                if deleted == 0 {
                    break;
                }
                evicted.bytes += deleted;
                (rows, bytes) = totals(conn)?;
            }
        }
        Ok(())
    }

    /// One WARN line per burst, at most one a minute: bursts in between are summed into
    /// the next line (the counters have them at once).
    fn log(&self, conn: &Connection, path: &Path, now: u64, evicted: Evicted) {
        let burst = {
            let mut progress = lock(&self.progress);
            progress.unlogged.add(evicted);
            if progress
                .last_log_ms
                .is_some_and(|last| now < last.saturating_add(LOG_INTERVAL_MS))
            {
                return;
            }
            progress.last_log_ms = Some(now);
            std::mem::take(&mut progress.unlogged)
        };
        let (kept, kept_bytes) = totals(conn).unwrap_or_default();
        tracing::warn!(
            store = %path.display(),
            by_age = burst.age,
            by_rows = burst.rows,
            by_bytes = burst.bytes,
            kept,
            kept_bytes,
            max_rows = self.limits.max_rows,
            max_bytes = self.limits.max_bytes,
            max_age_s = self.limits.max_age.as_secs(),
            "Evicted the oldest dead letters to stay within the [dead_letters] limits"
        );
    }
}

/// The number of letters and their size in bytes, from the trigger-kept totals.
pub(super) fn totals(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    conn.prepare_cached("SELECT rows, bytes FROM dead_letter_totals")?
        .query_row([], |row| {
            let rows: i64 = row.get(0)?;
            let bytes: i64 = row.get(1)?;
            Ok((
                u64::try_from(rows).unwrap_or(0),
                u64::try_from(bytes).unwrap_or(0),
            ))
        })
}

/// Deletes up to `limit` of the oldest letters (only those before `before_ms`, if given)
/// and returns how many went.
fn delete_oldest(conn: &Connection, before_ms: Option<u64>, limit: u64) -> rusqlite::Result<u64> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let deleted = match before_ms {
        Some(before) => conn
            .prepare_cached(
                "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters \
                 WHERE time_ms < ? ORDER BY time_ms, id LIMIT ?)",
            )?
            .execute(params![i64::try_from(before).unwrap_or(i64::MAX), limit])?,
        None => conn
            .prepare_cached(
                "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters \
                 ORDER BY time_ms, id LIMIT ?)",
            )?
            .execute([limit])?,
    };
    Ok(deleted as u64)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::store::{DeadLetterRecord, Filter, Store};

    const DAY_MS: u64 = 86_400_000;
    /// 2024-02-10, a fixed "now" for the pinned clock.
    const NOW_MS: u64 = 1_707_532_200_000;

    /// A letter at `time_ms` whose payload is `payload` bytes.
    fn letter(time_ms: u64, payload: &[u8]) -> DeadLetterRecord {
        DeadLetterRecord {
            connector: "tuya-eu".into(),
            vendor: Some("tuya"),
            properties: Vec::new(),
            payload: payload.to_vec(),
            kind: "decrypt".into(),
            message: "decrypt error: tag mismatch".into(),
            rule: None,
            step: None,
            event_id: None,
            time_ms,
        }
    }

    /// The size `dead_letter_totals` counts for [`letter`]: payload, message, `[]`.
    fn letter_bytes(payload: usize) -> u64 {
        (payload + "decrypt error: tag mismatch".len() + "[]".len()) as u64
    }

    fn pinned(ms: u64) -> (Arc<AtomicU64>, Clock) {
        let time = Arc::new(AtomicU64::new(ms));
        (time.clone(), Clock::Manual(time))
    }

    fn unlimited() -> Retention {
        Retention {
            max_rows: u64::MAX,
            max_bytes: u64::MAX,
            max_age: Duration::from_secs(u64::MAX / 2000),
        }
    }

    fn ids(store: &Store) -> Vec<i64> {
        let mut ids: Vec<i64> = store
            .list(&Filter::default())
            .expect("list")
            .iter()
            .map(|s| s.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The evictions counted under `reason`, as `/metrics` shows them.
    fn counted(metrics: &Metrics, reason: &str) -> u64 {
        metrics.dead_letters_evicted.with(&[reason]).get()
    }

    /// The trigger-kept totals.
    fn stored(store: &Store) -> (u64, u64) {
        let conn = store.conn();
        totals(&conn).expect("totals")
    }

    /// The totals counted from the letters themselves.
    fn recount(store: &Store) -> (u64, u64) {
        store
            .conn()
            .query_row(
                "SELECT count(*), coalesce(sum(length(payload) + length(CAST(message AS BLOB)) \
                 + length(CAST(properties AS BLOB))), 0) FROM dead_letters",
                [],
                |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
            )
            .expect("recount")
    }

    #[test]
    fn the_config_s_default_limits_are_the_store_s() {
        assert_eq!(
            Retention::from(&DeadLettersConfig::default()),
            Retention::default()
        );
        let limits = DeadLettersConfig {
            max_rows: 1_000_000,
            max_mb: 64,
            max_age_days: 2,
        };
        let retention = Retention::from(&limits);
        assert_eq!(retention.max_bytes, 64 << 20);
        assert_eq!(retention.max_age, Duration::from_secs(2 * 86_400));
    }

    #[test]
    fn totals_follow_adds_removals_purges_and_updates() {
        let store = Store::open_in_memory().expect("store");
        let a = store.add(&letter(1, b"abc")).expect("add");
        store.add(&letter(2, &[0; 1000])).expect("add");
        store.add(&letter(3, b"")).expect("add");
        assert_eq!(stored(&store), recount(&store));
        assert_eq!(
            stored(&store),
            (3, letter_bytes(3) + letter_bytes(1000) + letter_bytes(0))
        );
        store.remove(a).expect("remove");
        store.mark_replayed(a + 1).expect("replayed");
        store
            .conn()
            .execute(
                "UPDATE dead_letters SET message = 'é' WHERE time_ms = 3",
                [],
            )
            .expect("update");
        assert_eq!(stored(&store), recount(&store));
        store.purge(&Filter::default()).expect("purge");
        assert_eq!(stored(&store), (0, 0));
    }

    #[test]
    fn a_version_1_file_gets_the_totals_of_the_letters_it_holds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(crate::store::MIGRATIONS[0])
                .expect("schema 1");
            conn.pragma_update(None, "user_version", 1)
                .expect("version");
            conn.execute(
                "INSERT INTO dead_letters (time_ms, connector, properties, payload, kind, \
                 message) VALUES (1, 'c', '[]', x'00010203', 'json', 'bad')",
                [],
            )
            .expect("letter");
        }
        let store = Store::open_existing(&path).expect("migrate");
        assert_eq!(stored(&store), (1, 4 + 3 + 2));
    }

    #[test]
    fn past_max_rows_the_oldest_go_to_one_percent_under_and_are_counted() {
        let (_, clock) = pinned(NOW_MS);
        let store = Store::open_in_memory().expect("store").with_retention(
            Retention {
                max_rows: 200,
                ..unlimited()
            },
            clock,
        );
        let metrics = Metrics::default();
        crate::store::DeadLetterSink::register_metrics(&store, &metrics);
        let mut added = Vec::new();
        for i in 0..200 {
            // Times out of id order: the oldest by time goes first, not the lowest id.
            let time = NOW_MS - 1000 + (i * 7 % 200);
            added.push((time, store.add(&letter(time, b"x")).expect("add")));
        }
        assert_eq!(ids(&store).len(), 200, "at the cap nothing goes");
        assert_eq!(counted(&metrics, "rows"), 0);

        let newest = store.add(&letter(NOW_MS, b"x")).expect("add");

        // 201 letters, down to 198 (1 % under 200): the 3 oldest by time went.
        added.sort_unstable();
        let mut expected: Vec<i64> = added[3..].iter().map(|(_, id)| *id).collect();
        expected.push(newest);
        expected.sort_unstable();
        assert_eq!(ids(&store), expected);
        assert_eq!(counted(&metrics, "rows"), 3);
        assert_eq!(counted(&metrics, "bytes") + counted(&metrics, "age"), 0);
        assert_eq!(stored(&store), recount(&store));
    }

    #[test]
    fn past_max_bytes_the_oldest_go_until_one_percent_under() {
        let (_, clock) = pinned(NOW_MS);
        let payload = vec![7u8; 1000];
        let one = letter_bytes(payload.len());
        let cap = 50 * one;
        let store = Store::open_in_memory().expect("store").with_retention(
            Retention {
                max_bytes: cap,
                ..unlimited()
            },
            clock,
        );
        let metrics = Metrics::default();
        crate::store::DeadLetterSink::register_metrics(&store, &metrics);
        let mut added = Vec::new();
        for i in 0..50 {
            added.push(store.add(&letter(NOW_MS + i, &payload)).expect("add"));
        }
        assert_eq!(ids(&store), added, "at the cap nothing goes");

        // A letter of twice the size: 52 letters' worth, down to 49.5 letters' worth.
        let big = vec![7u8; 2 * payload.len() + letter_bytes(0) as usize];
        let newest = store.add(&letter(NOW_MS + 50, &big)).expect("add");

        let (_, bytes) = stored(&store);
        assert!(bytes <= low_water(cap), "{bytes} over {}", low_water(cap));
        let kept = ids(&store);
        assert_eq!(kept.last(), Some(&newest));
        let evicted = added.len() + 1 - kept.len();
        assert_eq!(evicted, 3, "the fewest oldest that bring it under");
        assert_eq!(
            &kept[..kept.len() - 1],
            &added[evicted..],
            "the oldest went"
        );
        assert_eq!(counted(&metrics, "bytes"), evicted as u64);
        assert_eq!(counted(&metrics, "rows") + counted(&metrics, "age"), 0);
    }

    #[test]
    fn past_max_age_letters_go_on_the_pinned_clock_and_are_counted() {
        let (time, clock) = pinned(NOW_MS);
        let store = Store::open_in_memory().expect("store").with_retention(
            Retention {
                max_age: Duration::from_millis(7 * DAY_MS),
                ..unlimited()
            },
            clock,
        );
        let metrics = Metrics::default();
        crate::store::DeadLetterSink::register_metrics(&store, &metrics);
        let old = store.add(&letter(NOW_MS, b"x")).expect("add");
        let younger = store.add(&letter(NOW_MS + DAY_MS, b"x")).expect("add");

        // A week and a minute later the first is past the limit, the second is not.
        time.store(NOW_MS + 7 * DAY_MS + 60_000, Ordering::Relaxed);
        let newest = store
            .add(&letter(NOW_MS + 7 * DAY_MS + 60_000, b"x"))
            .expect("add");
        assert_eq!(ids(&store), [younger, newest]);
        assert!(store.get(old).expect("get").is_none());
        assert_eq!(counted(&metrics, "age"), 1);
        assert_eq!(counted(&metrics, "rows") + counted(&metrics, "bytes"), 0);
    }

    #[test]
    fn a_lowered_limit_applies_when_the_store_opens_and_counts_before_the_metrics_exist() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dead.db");
        {
            let store = Store::open(&path).expect("open");
            for i in 0..30 {
                store
                    .add(&letter(NOW_MS - 10 * DAY_MS + i, b"x"))
                    .expect("add");
            }
            for i in 0..30 {
                store.add(&letter(NOW_MS + i, b"x")).expect("add");
            }
        }
        let (_, clock) = pinned(NOW_MS + 100);
        let store = Store::open(&path).expect("reopen").with_retention(
            Retention {
                max_rows: 20,
                max_age: Duration::from_millis(7 * DAY_MS),
                ..unlimited()
            },
            clock,
        );
        let metrics = Metrics::default();
        crate::store::DeadLetterSink::register_metrics(&store, &metrics);
        assert_eq!(counted(&metrics, "age"), 30);
        assert_eq!(
            counted(&metrics, "rows"),
            10,
            "30 recent letters down to 20 (1 % of 20 rounds to none)"
        );
        let text = metrics.render();
        assert!(
            text.contains("iotrules_dead_letters_evicted_total{reason=\"age\"} 30\n"),
            "{text}"
        );
        let oldest_kept = store
            .list(&Filter::default())
            .expect("list")
            .iter()
            .map(|s| s.time_ms)
            .min();
        assert_eq!(oldest_kept, Some(NOW_MS + 10));
    }

    #[test]
    fn a_store_opened_without_limits_never_evicts() {
        let store = Store::open_in_memory().expect("store");
        for i in 0..3 {
            store.add(&letter(i, &[0; 100_000])).expect("add");
        }
        assert_eq!(ids(&store).len(), 3);
    }
}

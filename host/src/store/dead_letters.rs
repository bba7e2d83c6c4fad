//! Dead letters: deliveries the service could not process, kept exactly as received with
//! the reason, so an operator can see what went wrong and replay them once it is fixed.

use rusqlite::types::Value;
use rusqlite::{OptionalExtension, Row, params, params_from_iter};

use std::sync::{Arc, Mutex};

use super::{Store, StoreError};
use crate::sync::lock;

/// The columns of a [`DeadLetterSummary`], in the order [`summary_from_row`] reads them.
const SUMMARY_COLUMNS: &str = "id, time_ms, connector, vendor, kind, message, rule, step, \
                               event_id, replays, length(payload)";

/// A dead letter to record: what the pipeline produces and the store keeps, one type for
/// both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRecord {
    /// The connector's name from the config (`tuya-eu`): where the message came in.
    pub connector: Arc<str>,
    /// The dialect (`tuya`, `alibaba`, ...), when it is known.
    pub vendor: Option<&'static str>,
    /// The transport properties of the message (`em=aes_gcm`, `topic=...`), in the order
    /// the transport gave them: a replay needs them to decode the payload again.
    pub properties: Vec<(String, String)>,
    /// The message bytes exactly as received.
    pub payload: Vec<u8>,
    /// What kind of failure: a decode error kind (`signature`, `base64`, `decrypt`, `json`,
    /// `unsupported`) or a pipeline one (`plugin:deadline`, `command`, `condition`, ...).
    /// Families share the part before `:`, which [`Filter::kind`] can select as a whole.
    pub kind: String,
    /// The full error message, for a human.
    pub message: String,
    /// The rule that was running, if the failure happened inside one.
    pub rule: Option<String>,
    /// The step of that rule (from 1, as rule errors number them), if the failure happened
    /// in a step.
    pub step: Option<u32>,
    /// The normalized event's id, if the message got as far as being decoded.
    pub event_id: Option<String>,
    /// When the letter was recorded, in Unix milliseconds.
    pub time_ms: u64,
}

/// Where the pipeline keeps its dead letters: the [`Store`], or memory. `store` is called
/// off the async threads and may block.
pub trait DeadLetterSink: Send + Sync {
    /// Stores `letters`, all or none: an error means none is stored (the delivery they
    /// belong to goes back for another try).
    fn store(&self, letters: &[DeadLetterRecord]) -> Result<(), String>;

    /// Hands the sink's own counters (evictions) to the service's metrics, once at start.
    fn register_metrics(&self, _metrics: &crate::metrics::Metrics) {}
}

/// Dead letters kept in memory (tests, benches, `iotrules test`).
#[derive(Debug, Default)]
pub struct MemoryDeadLetters(Mutex<Vec<DeadLetterRecord>>);

impl MemoryDeadLetters {
    /// What was stored so far.
    pub fn letters(&self) -> Vec<DeadLetterRecord> {
        lock(&self.0).clone()
    }
}

impl DeadLetterSink for MemoryDeadLetters {
    fn store(&self, letters: &[DeadLetterRecord]) -> Result<(), String> {
        lock(&self.0).extend_from_slice(letters);
        Ok(())
    }
}

/// A stored dead letter with everything that was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The store's id for it, never reused.
    pub id: i64,
    /// See [`DeadLetterRecord::connector`].
    pub connector: String,
    /// See [`DeadLetterRecord::vendor`].
    pub vendor: Option<String>,
    /// See [`DeadLetterRecord::properties`].
    pub properties: Vec<(String, String)>,
    /// See [`DeadLetterRecord::payload`].
    pub payload: Vec<u8>,
    /// See [`DeadLetterRecord::kind`].
    pub kind: String,
    /// See [`DeadLetterRecord::message`].
    pub message: String,
    /// See [`DeadLetterRecord::rule`].
    pub rule: Option<String>,
    /// See [`DeadLetterRecord::step`].
    pub step: Option<u32>,
    /// See [`DeadLetterRecord::event_id`].
    pub event_id: Option<String>,
    /// See [`DeadLetterRecord::time_ms`].
    pub time_ms: u64,
    /// How many times it was replayed ([`Store::mark_replayed`]).
    pub replays: u32,
}

/// A dead letter without its payload and properties: what a listing shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterSummary {
    /// The store's id for it.
    pub id: i64,
    /// When it was recorded, in Unix milliseconds.
    pub time_ms: u64,
    /// The connector it came in on.
    pub connector: String,
    /// The dialect, when known.
    pub vendor: Option<String>,
    /// What kind of failure.
    pub kind: String,
    /// The full error message.
    pub message: String,
    /// The rule that was running, if any.
    pub rule: Option<String>,
    /// The step of that rule, if any.
    pub step: Option<u32>,
    /// The normalized event's id, if decoded.
    pub event_id: Option<String>,
    /// How many times it was replayed.
    pub replays: u32,
    /// The payload's size in bytes.
    pub payload_len: u64,
}

/// Which dead letters an operation applies to. The default selects all of them; each
/// field that is set narrows the selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only from this connector.
    pub connector: Option<String>,
    /// Only of this kind, or of this family: `plugin` selects `plugin` and `plugin:deadline`
    /// alike, `plugin:deadline` only itself.
    pub kind: Option<String>,
    /// Only from this rule.
    pub rule: Option<String>,
    /// Only recorded at or after this time (Unix milliseconds).
    pub since_ms: Option<u64>,
    /// Only recorded before this time (Unix milliseconds).
    pub before_ms: Option<u64>,
    /// At most this many, the newest. Only [`Store::list`] uses it: [`Store::count`] and
    /// [`Store::purge`] apply to every letter that matches.
    pub limit: Option<usize>,
}

impl Filter {
    /// Whether the filter selects every dead letter (no field narrows it; the limit does
    /// not count, as purge ignores it).
    pub fn selects_all(&self) -> bool {
        let Filter {
            connector,
            kind,
            rule,
            since_ms,
            before_ms,
            limit: _,
        } = self;
        connector.is_none()
            && kind.is_none()
            && rule.is_none()
            && since_ms.is_none()
            && before_ms.is_none()
    }

    /// The `WHERE` clause (empty when it selects all) and its parameters.
    fn to_sql(&self) -> (String, Vec<Value>) {
        let mut terms = Vec::new();
        let mut values = Vec::new();
        if let Some(connector) = &self.connector {
            terms.push("connector = ?");
            values.push(Value::Text(connector.clone()));
        }
        if let Some(kind) = &self.kind {
            // The family match compares a prefix instead of using LIKE, whose wildcards
            // (`_`, `%`) a kind name could contain.
            terms.push("(kind = ? OR substr(kind, 1, length(?) + 1) = ? || ':')");
            values.extend(std::iter::repeat_n(Value::Text(kind.clone()), 3));
        }
        if let Some(rule) = &self.rule {
            terms.push("rule = ?");
            values.push(Value::Text(rule.clone()));
        }
        if let Some(since) = self.since_ms {
            terms.push("time_ms >= ?");
            values.push(Value::Integer(ms_to_sql(since)));
        }
        if let Some(before) = self.before_ms {
            terms.push("time_ms < ?");
            values.push(Value::Integer(ms_to_sql(before)));
        }
        if terms.is_empty() {
            (String::new(), values)
        } else {
            (format!(" WHERE {}", terms.join(" AND ")), values)
        }
    }
}

impl Store {
    /// Records a dead letter and returns its id. In the service's store, the oldest letters
    /// beyond its [`Retention`](super::Retention) are then evicted (the new letter too, if
    /// it alone is over the byte cap).
    pub fn add(&self, letter: &DeadLetterRecord) -> Result<i64, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction()
            .map_err(self.error("add a dead letter"))?;
        let id = insert(&tx, letter).map_err(self.error("add a dead letter"))?;
        tx.commit().map_err(self.error("add a dead letter"))?;
        if let Some(retainer) = &self.retainer {
            retainer.enforce(&conn, &self.path, false);
        }
        Ok(id)
    }

    /// Records `letters` in one transaction, all or none, then applies the retention once.
    pub(crate) fn add_all(&self, letters: &[DeadLetterRecord]) -> Result<(), StoreError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.error("add dead letters"))?;
        for letter in letters {
            insert(&tx, letter).map_err(self.error("add dead letters"))?;
        }
        tx.commit().map_err(self.error("add dead letters"))?;
        if let Some(retainer) = &self.retainer {
            retainer.enforce(&conn, &self.path, false);
        }
        Ok(())
    }

    /// The dead letters that match, newest first, without payloads.
    pub fn list(&self, filter: &Filter) -> Result<Vec<DeadLetterSummary>, StoreError> {
        let (clause, mut values) = filter.to_sql();
        let mut sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM dead_letters{clause} ORDER BY time_ms DESC, id DESC"
        );
        if let Some(limit) = filter.limit {
            sql.push_str(" LIMIT ?");
            values.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        }
        let conn = self.conn();
        let mut select = conn
            .prepare(&sql)
            .map_err(self.error("list dead letters"))?;
        let rows = select
            .query_map(params_from_iter(values), summary_from_row)
            .map_err(self.error("list dead letters"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.error("list dead letters"))
    }

    /// How many dead letters match (the filter's limit is ignored).
    pub fn count(&self, filter: &Filter) -> Result<usize, StoreError> {
        let (clause, values) = filter.to_sql();
        let count: i64 = self
            .conn()
            .query_row(
                &format!("SELECT count(*) FROM dead_letters{clause}"),
                params_from_iter(values),
                |row| row.get(0),
            )
            .map_err(self.error("count dead letters"))?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// One dead letter with its payload, or `None` if there is none with that id.
    pub fn get(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT id, time_ms, connector, vendor, properties, payload, kind, message, \
                 rule, step, event_id, replays FROM dead_letters WHERE id = ?",
                [id],
                |row| {
                    Ok((
                        DeadLetter {
                            id: row.get(0)?,
                            time_ms: ms_from_sql(row.get(1)?),
                            connector: row.get(2)?,
                            vendor: row.get(3)?,
                            properties: Vec::new(),
                            payload: row.get(5)?,
                            kind: row.get(6)?,
                            message: row.get(7)?,
                            rule: row.get(8)?,
                            step: row.get(9)?,
                            event_id: row.get(10)?,
                            replays: row.get(11)?,
                        },
                        row.get::<_, String>(4)?,
                    ))
                },
            )
            .optional()
            .map_err(self.error("read a dead letter"))?;
        let Some((mut letter, properties)) = row else {
            return Ok(None);
        };
        letter.properties = serde_json::from_str(&properties).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            id,
            field: "properties",
            reason: e.to_string(),
        })?;
        Ok(Some(letter))
    }

    /// Deletes one dead letter; `false` if there was none with that id.
    pub fn remove(&self, id: i64) -> Result<bool, StoreError> {
        let removed = self
            .conn()
            .execute("DELETE FROM dead_letters WHERE id = ?", [id])
            .map_err(self.error("remove a dead letter"))?;
        Ok(removed > 0)
    }

    /// Deletes every dead letter that matches (the filter's limit is ignored: a purge by
    /// time or kind should not leave some behind) and returns how many.
    pub fn purge(&self, filter: &Filter) -> Result<usize, StoreError> {
        let (clause, values) = filter.to_sql();
        self.conn()
            .execute(
                &format!("DELETE FROM dead_letters{clause}"),
                params_from_iter(values),
            )
            .map_err(self.error("purge dead letters"))
    }

    /// Counts one more replay of a dead letter; `false` if there is none with that id.
    pub fn mark_replayed(&self, id: i64) -> Result<bool, StoreError> {
        let updated = self
            .conn()
            .execute(
                "UPDATE dead_letters SET replays = min(replays + 1, 4294967295) WHERE id = ?",
                [id],
            )
            .map_err(self.error("count a replay"))?;
        Ok(updated > 0)
    }
}

/// `[["em","aes_gcm"],["topic","..."]]`: ordered, duplicates kept, and read back by
/// `serde_json` as `Vec<(String, String)>`. Built as a `Value`, whose `Display` cannot fail.
fn properties_json(properties: &[(String, String)]) -> String {
    let pairs = properties
        .iter()
        .map(|(key, value)| serde_json::json!([key, value]))
        .collect();
    serde_json::Value::Array(pairs).to_string()
}

fn summary_from_row(row: &Row<'_>) -> rusqlite::Result<DeadLetterSummary> {
    Ok(DeadLetterSummary {
        id: row.get(0)?,
        time_ms: ms_from_sql(row.get(1)?),
        connector: row.get(2)?,
        vendor: row.get(3)?,
        kind: row.get(4)?,
        message: row.get(5)?,
        rule: row.get(6)?,
        step: row.get(7)?,
        event_id: row.get(8)?,
        replays: row.get(9)?,
        payload_len: u64::try_from(row.get::<_, i64>(10)?).unwrap_or(0),
    })
}

/// SQLite integers are signed; times past year 292 million saturate.
fn ms_to_sql(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Inserts one letter; its id.
fn insert(conn: &rusqlite::Connection, letter: &DeadLetterRecord) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO dead_letters (time_ms, connector, vendor, properties, payload, kind, \
         message, rule, step, event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        ms_to_sql(letter.time_ms),
        &*letter.connector,
        letter.vendor,
        properties_json(&letter.properties),
        letter.payload,
        letter.kind,
        letter.message,
        letter.rule,
        letter.step,
        letter.event_id,
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Only this module writes times, never negative; a negative one reads as the epoch.
fn ms_from_sql(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

/// The pipeline stores its dead letters here.
impl DeadLetterSink for Store {
    fn store(&self, letters: &[DeadLetterRecord]) -> Result<(), String> {
        self.add_all(letters).map_err(|e| e.to_string())
    }

    fn register_metrics(&self, metrics: &crate::metrics::Metrics) {
        if let Some(retainer) = &self.retainer {
            retainer.register(metrics);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A letter from `connector` of `kind` at `time_ms`, the rest fixed.
    fn letter(
        connector: &str,
        kind: &str,
        time_ms: u64,
        properties: &[(String, String)],
    ) -> DeadLetterRecord {
        DeadLetterRecord {
            connector: connector.into(),
            vendor: Some("tuya"),
            properties: properties.to_vec(),
            payload: b"{\"data\":\"...\"}".to_vec(),
            kind: kind.into(),
            message: "decrypt error: tag mismatch".into(),
            rule: None,
            step: None,
            event_id: None,
            time_ms,
        }
    }

    #[test]
    fn a_letter_reads_back_exactly_as_added() {
        let store = Store::open_in_memory().expect("store");
        let properties = props(&[("em", "aes_gcm"), ("topic", "a/b"), ("em", "dup=kept")]);
        let payload: Vec<u8> = (0..=255).chain([0, 0xff, 0xfe]).collect();
        let new = DeadLetterRecord {
            connector: "tuya-eu".into(),
            vendor: Some("tuya"),
            properties: properties.clone(),
            payload: payload.clone(),
            kind: "plugin:deadline".into(),
            message: "rule `lamp` step 2: plugin `deadband` ran out of time\nafter 50 ms".into(),
            rule: Some("lamp".into()),
            step: Some(2),
            event_id: Some("ev-1".into()),
            time_ms: 1_707_532_200_123,
        };
        let id = store.add(&new).expect("add");
        let got = store.get(id).expect("get").expect("present");
        assert_eq!(
            got,
            DeadLetter {
                id,
                connector: "tuya-eu".into(),
                vendor: Some("tuya".into()),
                properties: properties.clone(),
                payload: payload.clone(),
                kind: "plugin:deadline".into(),
                message: new.message.clone(),
                rule: Some("lamp".into()),
                step: Some(2),
                event_id: Some("ev-1".into()),
                time_ms: 1_707_532_200_123,
                replays: 0,
            }
        );
        assert_eq!(store.get(id + 1).expect("get"), None);
    }

    #[test]
    fn empty_properties_and_payload_round_trip() {
        let store = Store::open_in_memory().expect("store");
        let mut new = letter("mqtt", "json", 1, &[]);
        new.payload = Vec::new();
        new.vendor = None;
        let got = store
            .get(store.add(&new).expect("add"))
            .expect("get")
            .expect("present");
        assert!(got.properties.is_empty());
        assert!(got.payload.is_empty());
        assert_eq!(got.vendor, None);
    }

    #[test]
    fn list_is_newest_first_without_payloads_and_filters_narrow_it() {
        let store = Store::open_in_memory().expect("store");
        let no_props = [];
        let a = store
            .add(&letter("tuya-eu", "decrypt", 1000, &no_props))
            .expect("add");
        let b = store
            .add(&letter("tuya-eu", "plugin:deadline", 2000, &no_props))
            .expect("add");
        let mut in_rule = letter("ali", "plugin", 3000, &no_props);
        in_rule.rule = Some("lamp".into());
        let c = store.add(&in_rule).expect("add");
        let d = store
            .add(&letter("ali", "pluginx", 3000, &no_props))
            .expect("add");

        let ids = |filter: Filter| -> Vec<i64> {
            store
                .list(&filter)
                .expect("list")
                .iter()
                .map(|s| s.id)
                .collect()
        };
        assert_eq!(
            ids(Filter::default()),
            [d, c, b, a],
            "same time: higher id first"
        );
        assert_eq!(
            ids(Filter {
                connector: Some("tuya-eu".into()),
                ..Filter::default()
            }),
            [b, a]
        );
        assert_eq!(
            ids(Filter {
                kind: Some("plugin".into()),
                ..Filter::default()
            }),
            [c, b],
            "a family selects its members, not a kind that merely starts alike"
        );
        assert_eq!(
            ids(Filter {
                kind: Some("plugin:deadline".into()),
                ..Filter::default()
            }),
            [b]
        );
        assert_eq!(
            ids(Filter {
                rule: Some("lamp".into()),
                ..Filter::default()
            }),
            [c]
        );
        assert_eq!(
            ids(Filter {
                since_ms: Some(2000),
                before_ms: Some(3000),
                ..Filter::default()
            }),
            [b],
            "since is inclusive, before exclusive"
        );
        assert_eq!(
            ids(Filter {
                limit: Some(2),
                ..Filter::default()
            }),
            [d, c]
        );
        let summary = &store.list(&Filter::default()).expect("list")[3];
        assert_eq!(summary.payload_len, 14);
        assert_eq!(summary.message, "decrypt error: tag mismatch");
        assert_eq!(summary.vendor.as_deref(), Some("tuya"));
    }

    #[test]
    fn a_kind_with_like_wildcards_matches_only_itself() {
        let store = Store::open_in_memory().expect("store");
        store.add(&letter("c", "a_b", 1, &[])).expect("add");
        store.add(&letter("c", "axb", 1, &[])).expect("add");
        let filter = Filter {
            kind: Some("a_b".into()),
            ..Filter::default()
        };
        assert_eq!(store.count(&filter).expect("count"), 1);
    }

    #[test]
    fn count_and_purge_apply_to_all_matches_ignoring_the_limit() {
        let store = Store::open_in_memory().expect("store");
        for time in 0..5 {
            store.add(&letter("c", "json", time, &[])).expect("add");
        }
        let kept = store.add(&letter("c", "base64", 9, &[])).expect("add");
        let json = Filter {
            kind: Some("json".into()),
            limit: Some(1),
            ..Filter::default()
        };
        assert!(!json.selects_all());
        assert!(
            Filter {
                limit: Some(1),
                ..Filter::default()
            }
            .selects_all()
        );
        assert_eq!(store.count(&json).expect("count"), 5);
        assert_eq!(store.purge(&json).expect("purge"), 5);
        assert_eq!(store.purge(&json).expect("purge again"), 0);
        let left: Vec<i64> = store
            .list(&Filter::default())
            .expect("list")
            .iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(left, [kept]);
        assert_eq!(store.purge(&Filter::default()).expect("purge all"), 1);
        assert_eq!(store.count(&Filter::default()).expect("count"), 0);
    }

    #[test]
    fn remove_and_mark_replayed_say_whether_the_id_existed() {
        let store = Store::open_in_memory().expect("store");
        let id = store.add(&letter("c", "json", 1, &[])).expect("add");
        assert!(store.mark_replayed(id).expect("replay"));
        assert!(store.mark_replayed(id).expect("replay"));
        assert_eq!(store.get(id).expect("get").expect("present").replays, 2);
        assert_eq!(store.list(&Filter::default()).expect("list")[0].replays, 2);
        assert!(store.remove(id).expect("remove"));
        assert!(!store.remove(id).expect("remove again"));
        assert!(!store.mark_replayed(id).expect("replay gone"));
        let next = store.add(&letter("c", "json", 2, &[])).expect("add");
        assert!(next > id, "ids are not reused");
    }

    #[test]
    fn letters_survive_reopening_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("dead.db");
        let properties = props(&[("em", "aes_gcm")]);
        let id = {
            let store = Store::open(&path).expect("open");
            store
                .add(&letter("tuya-eu", "decrypt", 7, &properties))
                .expect("add")
        };
        let store = Store::open_existing(&path).expect("reopen");
        let got = store.get(id).expect("get").expect("present");
        assert_eq!(got.properties, properties);
        assert_eq!(got.time_ms, 7);
    }

    #[test]
    fn unreadable_properties_are_reported_not_panicked_on() {
        let store = Store::open_in_memory().expect("store");
        let id = store.add(&letter("c", "json", 1, &[])).expect("add");
        store
            .conn()
            .execute("UPDATE dead_letters SET properties = '{oops'", [])
            .expect("damage");
        let error = store.get(id).expect_err("corrupt");
        assert!(
            matches!(error, StoreError::Corrupt { id: bad, field: "properties", .. } if bad == id),
            "{error:?}"
        );
    }
}

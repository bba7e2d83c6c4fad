//! The service's counters and histograms, rendered in the Prometheus text format.
//!
//! A registry per service rather than the `metrics` crate's global recorder: the same
//! counters feed `/metrics`, `/status` and the summary `iotrules run` prints, several
//! services can run in one process (tests, benches) without sharing numbers, and the hot
//! path holds resolved handles (one atomic add) instead of hashing label sets per event.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sync::lock;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets it.
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// Adds one.
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one away (never below zero).
    pub(crate) fn dec(&self) {
        self.sub(1);
    }

    /// Takes `n` away (never below zero).
    pub(crate) fn sub(&self, n: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the latency buckets, in seconds: 1 µs to 1 s.
pub(crate) const LATENCY_BUCKETS: [f64; 16] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.05,
    0.25, 1.0,
];

/// A latency histogram with the [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// The bucket an observation of `elapsed` falls in; `None` past the last one.
fn bucket(elapsed: Duration) -> Option<usize> {
    let seconds = elapsed.as_secs_f64();
    LATENCY_BUCKETS.iter().position(|&le| seconds <= le)
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

impl Histogram {
    /// Records one observation.
    pub(crate) fn observe(&self, elapsed: Duration) {
        if let Some(bucket) = bucket(elapsed) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(nanos(elapsed), Ordering::Relaxed);
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The `q` quantile (0–1), as the upper bound of the bucket it falls in; `None` when
    /// empty, `+Inf` past the last bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = (q * count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, le) in self.buckets.iter().zip(LATENCY_BUCKETS) {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(le);
            }
        }
        Some(f64::INFINITY)
    }
}

/// Increments of a [`Counter`] that one thread gathers and adds in one write: for counts
/// that both rule workers make for every event, where each add would move the counter's
/// cache line from the other core. What is gathered is not yet seen in the counter: the
/// gathering thread adds it before anything that the count stands for can be observed
/// elsewhere (a rule worker, before it settles the batch's events).
#[derive(Debug)]
pub(crate) struct CounterTally {
    counter: Arc<Counter>,
    count: u64,
}

impl CounterTally {
    pub(crate) fn new(counter: Arc<Counter>) -> Self {
        CounterTally { counter, count: 0 }
    }

    /// Adds one, to be added to the counter at the next [`flush`](Self::flush).
    pub(crate) fn inc(&mut self) {
        self.count += 1;
    }

    /// Adds what was gathered to the counter.
    pub(crate) fn flush(&mut self) {
        if self.count > 0 {
            self.counter.add(std::mem::take(&mut self.count));
        }
    }
}

/// Observations of a [`Histogram`] that one thread gathers and adds at once, as a
/// [`CounterTally`] does counts.
#[derive(Debug)]
pub(crate) struct HistogramTally {
    histogram: Arc<Histogram>,
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum_ns: u64,
}

impl HistogramTally {
    pub(crate) fn new(histogram: Arc<Histogram>) -> Self {
        HistogramTally {
            histogram,
            buckets: [0; LATENCY_BUCKETS.len()],
            count: 0,
            sum_ns: 0,
        }
    }

    /// Records one observation, to be added at the next [`flush`](Self::flush).
    pub(crate) fn observe(&mut self, elapsed: Duration) {
        if let Some(bucket) = bucket(elapsed) {
            self.buckets[bucket] += 1;
        }
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(nanos(elapsed));
    }

    /// Adds what was gathered to the histogram.
    pub(crate) fn flush(&mut self) {
        if self.count == 0 {
            return;
        }
        let histogram = &self.histogram;
        for (gathered, bucket) in self.buckets.iter_mut().zip(&histogram.buckets) {
            if *gathered > 0 {
                bucket.fetch_add(std::mem::take(gathered), Ordering::Relaxed);
            }
        }
        histogram
            .count
            .fetch_add(std::mem::take(&mut self.count), Ordering::Relaxed);
        histogram
            .sum_ns
            .fetch_add(std::mem::take(&mut self.sum_ns), Ordering::Relaxed);
    }
}

/// Metrics of one name, one per set of label values.
#[derive(Debug)]
pub struct Family<M> {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    members: Mutex<BTreeMap<Vec<String>, Arc<M>>>,
}

impl<M: Default> Family<M> {
    fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Family {
            name,
            help,
            labels,
            members: Mutex::default(),
        }
    }

    /// The member for these label values (in the family's label order), made on first use.
    /// Hold on to it: the lookup takes a lock.
    pub fn with(&self, values: &[&str]) -> Arc<M> {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        lock(&self.members).entry(key).or_default().clone()
    }

    /// Makes `member` the one for these label values: for a counter kept by a part
    /// created before the metrics (the store's evictions), so none of its counts is lost.
    pub(crate) fn adopt(&self, values: &[&str], member: Arc<M>) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        lock(&self.members).insert(key, member);
    }

    /// Every member with its label values.
    pub fn members(&self) -> Vec<(Vec<String>, Arc<M>)> {
        lock(&self.members)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn label_text(&self, values: &[String], extra: Option<(&str, &str)>) -> String {
        let mut pairs: Vec<String> = self
            .labels
            .iter()
            .zip(values)
            .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
            .collect();
        if let Some((name, value)) = extra {
            pairs.push(format!("{name}=\"{value}\""));
        }
        if pairs.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", pairs.join(","))
        }
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every metric the service keeps.
#[derive(Debug)]
pub struct Metrics {
    /// Deliveries received, by connector.
    pub events_in: Family<Counter>,
    /// Events that at least one rule passed on, by connector.
    pub events_out: Family<Counter>,
    /// Deliveries that went no further, by connector and reason (`refused`, `duplicate`,
    /// `no-rule`, `rules`: every matching rule dropped or failed it).
    pub events_dropped: Family<Counter>,
    /// Events a rule took, by rule.
    pub rule_matches: Family<Counter>,
    /// How rule runs ended, by rule and outcome (`passed`, `dropped`, `dead-letter`,
    /// `dropped-on-error`).
    pub rule_outcomes: Family<Counter>,
    /// Rule errors, by rule and kind (a plugin error kind, or `condition`).
    pub rule_errors: Family<Counter>,
    /// Plugin call latency, by plugin.
    pub plugin_calls: Family<Histogram>,
    /// Commands, by path and result (`sent`, `failed`).
    pub commands: Family<Counter>,
    /// Commands a rule emitted, by rule and result (`sent`, `failed`: the path gave up on
    /// it and it became a dead letter).
    pub rule_commands: Family<Counter>,
    /// Dead letters stored, by connector and kind.
    pub dead_letters: Family<Counter>,
    /// Tuya envelopes whose signature did not match, by connector: refused under `sign =
    /// "enforce"`, processed (marked `signature=mismatch`) under `warn`.
    pub signature_mismatches: Family<Counter>,
    /// Dead letters the store evicted to stay within its limits, by reason (`age`, `rows`,
    /// `bytes`: the limit that was passed).
    pub dead_letters_evicted: Family<Counter>,
    /// Transactions that wrote plugin state and device twins to the store, each holding
    /// the writes of every call queued since the one before (no labels; absent with state in
    /// memory). Over `iotrules_events_in_total`: how many events share a commit.
    pub state_commits: Family<Counter>,
    /// Reloads, by what (`rules`, `plugin`) and result (`ok`, `refused`).
    pub reloads: Family<Counter>,
    /// Connection attempts, by connector and result (`ok`, `failed`: refused, dropped or
    /// lost after working).
    pub connects: Family<Counter>,
    /// 1 while a connector is connected and receiving, by connector.
    pub connector_up: Family<Gauge>,
    /// Times a connector's inbound byte budget (`buffer_bytes`) was full, by connector: a
    /// message not kept (an MQTT link), or reading paused until the pipeline settles some
    /// (Pulsar).
    pub buffer_full: Family<Counter>,
    /// Events received and not yet acknowledged.
    pub in_flight: Gauge,
    /// Messages the pipeline holds because their dead letters cannot be stored (they are
    /// neither acknowledged nor sent back while the store refuses them).
    pub events_held: Gauge,
    /// Time from receipt to acknowledgement.
    pub event_latency: Histogram,
    /// Devices the twin holds.
    pub twin_devices: Gauge,
    /// Devices evicted from the twin to stay within `[twin] max_devices`.
    pub twin_evictions: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            events_in: Family::new(
                "iotrules_events_in_total",
                "Deliveries received",
                &["connector"],
            ),
            events_out: Family::new(
                "iotrules_events_out_total",
                "Events at least one rule passed on",
                &["connector"],
            ),
            events_dropped: Family::new(
                "iotrules_events_dropped_total",
                "Deliveries that went no further",
                &["connector", "reason"],
            ),
            rule_matches: Family::new(
                "iotrules_rule_matches_total",
                "Events a rule took",
                &["rule"],
            ),
            rule_outcomes: Family::new(
                "iotrules_rule_outcomes_total",
                "How rule runs ended",
                &["rule", "outcome"],
            ),
            rule_errors: Family::new(
                "iotrules_rule_errors_total",
                "Failed steps and conditions",
                &["rule", "kind"],
            ),
            plugin_calls: Family::new(
                "iotrules_plugin_call_seconds",
                "Plugin handle call latency",
                &["plugin"],
            ),
            commands: Family::new(
                "iotrules_commands_total",
                "Commands by path and result",
                &["path", "result"],
            ),
            rule_commands: Family::new(
                "iotrules_rule_commands_total",
                "Commands a rule emitted, by result",
                &["rule", "result"],
            ),
            dead_letters: Family::new(
                "iotrules_dead_letters_total",
                "Dead letters stored",
                &["connector", "kind"],
            ),
            signature_mismatches: Family::new(
                "iotrules_signature_mismatches_total",
                "Tuya envelopes whose signature did not match",
                &["connector"],
            ),
            dead_letters_evicted: Family::new(
                "iotrules_dead_letters_evicted_total",
                "Dead letters evicted to stay within the store's limits",
                &["reason"],
            ),
            state_commits: Family::new(
                "iotrules_state_commits_total",
                "Transactions that wrote plugin state and device twins to the store",
                &[],
            ),
            reloads: Family::new(
                "iotrules_reloads_total",
                "Rule and plugin reloads",
                &["what", "result"],
            ),
            connects: Family::new(
                "iotrules_connector_connects_total",
                "Connection attempts by result",
                &["connector", "result"],
            ),
            connector_up: Family::new(
                "iotrules_connector_up",
                "1 while the connector is connected and receiving",
                &["connector"],
            ),
            buffer_full: Family::new(
                "iotrules_connector_buffer_full_total",
                "Times the connector's inbound byte budget was full (MQTT: a message not kept; Pulsar: reading paused)",
                &["connector"],
            ),
            in_flight: Gauge::default(),
            events_held: Gauge::default(),
            event_latency: Histogram::default(),
            twin_devices: Gauge::default(),
            twin_evictions: Counter::default(),
        }
    }
}

impl Metrics {
    /// All of it in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for family in [
            &self.events_in,
            &self.events_out,
            &self.events_dropped,
            &self.rule_matches,
            &self.rule_outcomes,
            &self.rule_errors,
            &self.commands,
            &self.rule_commands,
            &self.dead_letters,
            &self.signature_mismatches,
            &self.dead_letters_evicted,
            &self.state_commits,
            &self.reloads,
            &self.connects,
            &self.buffer_full,
        ] {
            render_counters(&mut out, family);
        }
        render_gauges(&mut out, &self.connector_up);
        render_histograms(&mut out, &self.plugin_calls);
        let _ = writeln!(
            out,
            "# HELP iotrules_in_flight Events received and not yet acknowledged\n\
             # TYPE iotrules_in_flight gauge\niotrules_in_flight {}",
            self.in_flight.get()
        );
        let _ = writeln!(
            out,
            "# HELP iotrules_events_held Messages held because their dead letters cannot be \
             stored\n# TYPE iotrules_events_held gauge\niotrules_events_held {}",
            self.events_held.get()
        );
        let _ = writeln!(
            out,
            "# HELP iotrules_twin_devices Devices the twin holds\n\
             # TYPE iotrules_twin_devices gauge\niotrules_twin_devices {}",
            self.twin_devices.get()
        );
        let _ = writeln!(
            out,
            "# HELP iotrules_twin_evictions_total Devices evicted from the twin to stay within \
             [twin] max_devices\n# TYPE iotrules_twin_evictions_total counter\n\
             iotrules_twin_evictions_total {}",
            self.twin_evictions.get()
        );
        let latency = Family::<Histogram>::new(
            "iotrules_event_seconds",
            "Time from receipt to acknowledgement",
            &[],
        );
        render_histogram(&mut out, &latency, &[], &self.event_latency, true);
        out
    }
}

fn render_counters(out: &mut String, family: &Family<Counter>) {
    render_values(out, family, "counter", Counter::get);
}

fn render_gauges(out: &mut String, family: &Family<Gauge>) {
    render_values(out, family, "gauge", Gauge::get);
}

fn render_values<M: Default>(out: &mut String, family: &Family<M>, kind: &str, get: fn(&M) -> u64) {
    let _ = writeln!(
        out,
        "# HELP {} {}\n# TYPE {} {kind}",
        family.name, family.help, family.name
    );
    for (values, member) in family.members() {
        let _ = writeln!(
            out,
            "{}{} {}",
            family.name,
            family.label_text(&values, None),
            get(&member)
        );
    }
}

fn render_histograms(out: &mut String, family: &Family<Histogram>) {
    let _ = writeln!(
        out,
        "# HELP {} {}\n# TYPE {} histogram",
        family.name, family.help, family.name
    );
    for (values, histogram) in family.members() {
        render_histogram(out, family, &values, &histogram, false);
    }
}

fn render_histogram(
    out: &mut String,
    family: &Family<Histogram>,
    values: &[String],
    histogram: &Histogram,
    header: bool,
) {
    let name = family.name;
    if header {
        let _ = writeln!(
            out,
            "# HELP {name} {}\n# TYPE {name} histogram",
            family.help
        );
    }
    let mut cumulative = 0;
    for (bucket, le) in histogram.buckets.iter().zip(LATENCY_BUCKETS) {
        cumulative += bucket.load(Ordering::Relaxed);
        let labels = family.label_text(values, Some(("le", &le.to_string())));
        let _ = writeln!(out, "{name}_bucket{labels} {cumulative}");
    }
    let count = histogram.count();
    let labels = family.label_text(values, Some(("le", "+Inf")));
    let _ = writeln!(out, "{name}_bucket{labels} {count}");
    let plain = family.label_text(values, None);
    let sum = histogram.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let _ = writeln!(out, "{name}_sum{plain} {sum}\n{name}_count{plain} {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_labels_and_escapes() {
        let metrics = Metrics::default();
        metrics.events_in.with(&["tuya-eu"]).add(3);
        metrics.events_dropped.with(&["a\"b", "duplicate"]).inc();
        let text = metrics.render();
        assert!(
            text.contains("iotrules_events_in_total{connector=\"tuya-eu\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "iotrules_events_dropped_total{connector=\"a\\\"b\",reason=\"duplicate\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE iotrules_rule_matches_total counter\n"));
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let metrics = Metrics::default();
        let calls = metrics.plugin_calls.with(&["deadband"]);
        calls.observe(Duration::from_micros(3));
        calls.observe(Duration::from_micros(3));
        calls.observe(Duration::from_millis(2));
        let text = metrics.render();
        assert!(
            text.contains(
                "iotrules_plugin_call_seconds_bucket{plugin=\"deadband\",le=\"0.000005\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "iotrules_plugin_call_seconds_bucket{plugin=\"deadband\",le=\"+Inf\"} 3\n"
            ),
            "{text}"
        );
        assert!(text.contains("iotrules_plugin_call_seconds_count{plugin=\"deadband\"} 3\n"));
        assert_eq!(calls.quantile(0.5), Some(5e-6));
        assert_eq!(calls.quantile(1.0), Some(2.5e-3));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn tallies_add_what_they_gathered_once_at_each_flush_and_nothing_before() {
        let metrics = Metrics::default();
        let counter = metrics.rule_matches.with(&["r"]);
        let calls = metrics.plugin_calls.with(&["deadband"]);
        let mut matches = CounterTally::new(counter.clone());
        let mut tally = HistogramTally::new(calls.clone());
        let direct = Histogram::default();
        for elapsed in [3, 3, 2_000, 5_000_000].map(Duration::from_micros) {
            matches.inc();
            tally.observe(elapsed);
            direct.observe(elapsed);
        }
        assert_eq!((counter.get(), calls.count()), (0, 0));
        matches.flush();
        tally.flush();
        assert_eq!(counter.get(), 4);
        let text = metrics.render();
        for line in [
            "iotrules_plugin_call_seconds_bucket{plugin=\"deadband\",le=\"0.000005\"} 2\n",
            "iotrules_plugin_call_seconds_bucket{plugin=\"deadband\",le=\"0.0025\"} 3\n",
            "iotrules_plugin_call_seconds_bucket{plugin=\"deadband\",le=\"+Inf\"} 4\n",
            "iotrules_plugin_call_seconds_sum{plugin=\"deadband\"} 5.002006\n",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        for q in [0.5, 0.75, 1.0] {
            assert_eq!(calls.quantile(q), direct.quantile(q));
        }
        // A second flush adds only what came since.
        matches.flush();
        tally.flush();
        matches.inc();
        tally.observe(Duration::from_micros(3));
        matches.flush();
        tally.flush();
        assert_eq!((counter.get(), calls.count()), (5, 5));
    }
}

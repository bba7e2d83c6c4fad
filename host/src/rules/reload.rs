//! The serving rule set, replaced as a whole on reload, and the watcher that reloads it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::error::RuleError;
use super::set::{RuleSet, is_rule_file};
use crate::plugin::Registry;
use crate::sync::lock;
use crate::watch::DirWatcher;

/// What a successful reload changed, by rule name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Counts the sets served since start: the first is 1.
    pub generation: u64,
    /// Rules new in this set.
    pub added: Vec<String>,
    /// Rules the previous set had and this one does not.
    pub removed: Vec<String>,
    /// Rules whose definition changed (anything in their table, `description` included).
    pub changed: Vec<String>,
    /// How many rules are as they were.
    pub unchanged: usize,
}

/// The result of one reload, as subscribers receive it.
pub(crate) type ReloadResult = Result<ReloadSummary, Vec<RuleError>>;

/// The rules in service: a [`RuleSet`] read lock-free by the workers and swapped atomically
/// by [`Rules::reload`]. A set with any error never replaces the serving one.
pub struct Rules {
    dir: PathBuf,
    registry: Arc<Registry>,
    current: ArcSwap<RuleSet>,
    generation: Mutex<u64>,
    subscribers: Mutex<Vec<mpsc::Sender<ReloadResult>>>,
    /// Says the generation of every set swapped in, to async waiters (the timer task).
    swapped: tokio::sync::watch::Sender<u64>,
}

impl Rules {
    /// Loads the rules of `dir` against `registry`; fails with every error if any file has one.
    pub fn load(dir: impl Into<PathBuf>, registry: Arc<Registry>) -> Result<Self, Vec<RuleError>> {
        let dir = dir.into();
        let set = RuleSet::load_dir(&dir, &registry)?;
        Ok(Rules {
            dir,
            registry,
            current: ArcSwap::from_pointee(set),
            generation: Mutex::new(1),
            subscribers: Mutex::default(),
            swapped: tokio::sync::watch::Sender::new(1),
        })
    }

    /// The set new events run on.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    /// Whether `set` is the set new events run on (cheaper than [`Rules::current`]: no
    /// reference count is touched).
    pub(crate) fn is_current(&self, set: &Arc<RuleSet>) -> bool {
        Arc::ptr_eq(&self.current.load(), set)
    }

    /// The generation of [`Rules::current`]; workers compare it to rebuild their runtimes.
    pub(crate) fn generation(&self) -> u64 {
        *lock(&self.generation)
    }

    /// Changes when a new set is swapped in.
    pub(crate) fn swapped(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swapped.subscribe()
    }

    /// The rules directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Results of every later reload.
    pub fn subscribe(&self) -> mpsc::Receiver<ReloadResult> {
        let (sender, receiver) = mpsc::channel();
        lock(&self.subscribers).push(sender);
        receiver
    }

    /// Loads the directory again. With any error in any file, nothing changes: the previous
    /// set keeps serving and the errors are returned (and logged). Otherwise the new set is
    /// swapped in at once; events already running finish on the set they started with.
    pub fn reload(&self) -> ReloadResult {
        let mut generation = lock(&self.generation);
        let result = match RuleSet::load_dir(&self.dir, &self.registry) {
            Ok(set) => {
                *generation += 1;
                let summary = summarize(&self.current.load(), &set, *generation);
                self.current.store(Arc::new(set));
                self.swapped.send_replace(*generation);
                tracing::info!(
                    generation = summary.generation,
                    added = summary.added.len(),
                    removed = summary.removed.len(),
                    changed = summary.changed.len(),
                    "Rules reloaded"
                );
                Ok(summary)
            }
            Err(errors) => {
                for error in &errors {
                    tracing::error!("Rule files refused, previous rules kept: {error}");
                }
                Err(errors)
            }
        };
        drop(generation);
        lock(&self.subscribers).retain(|s| s.send(result.clone()).is_ok());
        result
    }
}

fn summarize(old: &RuleSet, new: &RuleSet, generation: u64) -> ReloadSummary {
    let mut summary = ReloadSummary {
        generation,
        ..ReloadSummary::default()
    };
    for rule in new.rules() {
        match old.rule(rule.name()) {
            None => summary.added.push(rule.name().to_owned()),
            Some(before) if before.fingerprint != rule.fingerprint => {
                summary.changed.push(rule.name().to_owned())
            }
            Some(_) => summary.unchanged += 1,
        }
    }
    for rule in old.rules() {
        if new.rule(rule.name()).is_none() {
            summary.removed.push(rule.name().to_owned());
        }
    }
    summary
}

/// How long the rules directory must be quiet before a reload: an editor's save or a deploy
/// tool's copy of several files becomes one reload.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

/// Watches the rules directory while it lives and reloads on every change to a rule file;
/// dropping it stops watching.
pub(crate) struct RulesWatcher {
    _dir: DirWatcher,
}

impl RulesWatcher {
    /// Starts watching `rules`' directory (not subdirectories). A batch of changes to rule
    /// files triggers one [`Rules::reload`] on a thread of its own.
    pub fn start(rules: Arc<Rules>, debounce: Duration) -> notify::Result<Self> {
        let dir = rules.dir().to_owned();
        let reload = move |_: BTreeSet<PathBuf>| {
            let _ = rules.reload();
        };
        Ok(RulesWatcher {
            _dir: DirWatcher::start(
                &dir,
                "rules",
                debounce,
                is_rule_file,
                "iotrules-rules-reload",
                reload,
            )?,
        })
    }
}

//! What `/status` reports beyond the counters: recent errors and each connector's state.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::sync::lock;

/// What a connector is doing, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectorState {
    /// Starting or connecting.
    Starting,
    /// Receiving.
    Running,
    /// Lost its connection (or never got one) and trying again after a pause; the error
    /// says why.
    Reconnecting,
    /// Done: a replay that reached the end of its file.
    Finished,
    /// Stopped by an error it cannot recover from.
    Failed,
    /// Stopped for shutdown.
    Stopped,
}

/// How many recent errors are kept.
pub(crate) const KEPT_ERRORS: usize = 32;

/// One recent error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecentError {
    /// When, Unix ms.
    pub time_ms: u64,
    /// Where: `connector "tuya-eu"`, `rule "hallway"`, `command path "tuya-openapi"`, …
    pub place: String,
    /// The message (never a secret: messages are built to name, not show, credentials).
    pub message: String,
}

/// The last [`KEPT_ERRORS`] errors, newest last.
#[derive(Debug, Default)]
pub struct LastErrors(Mutex<VecDeque<RecentError>>);

impl LastErrors {
    /// Records an error.
    pub fn push(&self, place: String, message: &str) {
        let mut errors = lock(&self.0);
        if errors.len() == KEPT_ERRORS {
            errors.pop_front();
        }
        errors.push_back(RecentError {
            time_ms: crate::time::now_ms(),
            place,
            message: message.to_owned(),
        });
    }

    /// The errors kept, oldest first.
    pub fn recent(&self) -> Vec<RecentError> {
        lock(&self.0).iter().cloned().collect()
    }
}

/// A connector as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectorStatus {
    /// Its configured name.
    pub name: String,
    /// Its transport.
    pub kind: &'static str,
    /// Its dialect.
    pub dialect: &'static str,
    /// What identifies it to its peer, without secrets: a file, topic and subscription,
    /// username, …
    pub identity: Vec<(String, String)>,
    /// What it is doing.
    pub state: ConnectorState,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// How envelope signatures are checked, for the dialects that carry one (Tuya).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureStatus>,
}

impl ConnectorStatus {
    /// A connector that is starting: no identity, no error, no signature policy shown.
    pub fn starting(name: impl Into<String>, kind: &'static str, dialect: &'static str) -> Self {
        ConnectorStatus {
            name: name.into(),
            kind,
            dialect,
            identity: Vec::new(),
            state: ConnectorState::Starting,
            error: None,
            signature: None,
        }
    }
}

/// A connector's signature policy as `/status` shows it: the mode, the mismatches so far
/// (`iotrules_signature_mismatches_total`), and under `warn`, once there are any, a warning
/// that stays for the life of the process (the log says it once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureStatus {
    /// `enforce`, `warn` or `off`.
    pub mode: crate::dialect::SignMode,
    /// Envelopes whose signature did not match.
    pub mismatches: u64,
    /// What the mismatches mean for this mode, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl SignatureStatus {
    /// The status of `mode` after `mismatches`.
    pub fn new(mode: crate::dialect::SignMode, mismatches: u64) -> Self {
        use crate::dialect::SignMode;
        let warning = match mode {
            SignMode::Warn if mismatches > 0 => Some(format!(
                "{mismatches} message(s) whose envelope signature did not match were processed \
                 anyway (sign = \"warn\"): check the access key; set sign = \"enforce\" \
                 once this count stays at zero"
            )),
            SignMode::Off => Some("envelope signatures are not checked (sign = \"off\")".into()),
            _ => None,
        };
        SignatureStatus {
            mode,
            mismatches,
            warning,
        }
    }
}

/// Every connector's status, updated by the connectors.
#[derive(Debug, Default)]
pub struct Connectors(Mutex<Vec<ConnectorStatus>>);

impl Connectors {
    /// Adds a connector and returns the handle it updates its state through.
    pub fn add(self: &Arc<Self>, status: ConnectorStatus) -> ConnectorHandle {
        let mut all = lock(&self.0);
        all.push(status);
        ConnectorHandle {
            all: self.clone(),
            index: all.len() - 1,
        }
    }

    /// A snapshot.
    pub fn all(&self) -> Vec<ConnectorStatus> {
        lock(&self.0).clone()
    }
}

/// One connector's way to report its state.
#[derive(Debug, Clone)]
pub struct ConnectorHandle {
    all: Arc<Connectors>,
    index: usize,
}

impl ConnectorHandle {
    /// Replaces the identity (a connector whose username carries a timestamp shows the one
    /// of its latest login).
    pub(crate) fn set_identity(&self, identity: Vec<(String, String)>) {
        if let Some(status) = lock(&self.all.0).get_mut(self.index) {
            status.identity = identity;
        }
    }

    /// Sets the state (and clears the error unless failing).
    pub fn set(&self, state: ConnectorState, error: Option<String>) {
        if let Some(status) = lock(&self.all.0).get_mut(self.index) {
            status.state = state;
            status.error = error;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::SignMode;

    #[test]
    fn warn_mode_shows_a_warning_once_a_mismatch_was_let_through() {
        assert_eq!(SignatureStatus::new(SignMode::Warn, 0).warning, None);
        let status = SignatureStatus::new(SignMode::Warn, 3);
        assert_eq!((status.mode, status.mismatches), (SignMode::Warn, 3));
        let warning = status.warning.expect("a warning");
        assert!(warning.starts_with("3 message(s)"), "{warning}");
        assert!(warning.contains("sign = \"enforce\""), "{warning}");
        // Under enforce a mismatch is a dead letter, which says so itself.
        assert_eq!(SignatureStatus::new(SignMode::Enforce, 3).warning, None);
    }

    #[test]
    fn only_the_newest_errors_are_kept() {
        let errors = LastErrors::default();
        for n in 0..KEPT_ERRORS + 3 {
            errors.push("here".into(), &n.to_string());
        }
        let recent = errors.recent();
        assert_eq!(recent.len(), KEPT_ERRORS);
        assert_eq!(recent[0].message, "3");
        assert_eq!(
            recent[KEPT_ERRORS - 1].message,
            (KEPT_ERRORS + 2).to_string()
        );
    }
}

//! What a run leaves behind: its record, kept in the job's row so that every process on
//! the store (other daemons, `tokenwarden status`) sees the last run of every job.

use crate::outcome::{OAuthError, Outcome, Retry, RunError};
use serde::{Deserialize, Serialize};

/// Why a run started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// At start-up, the stored token was missing, expired or due.
    CatchUp,
    /// The schedule said so.
    Schedule,
    /// A retry after a failure.
    Retry,
    /// `POST /jobs/{name}/refresh` or `tokenwarden refresh`.
    Manual,
    /// A credential the failing job reads was changed.
    SecretChanged,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::CatchUp => "catch-up",
            Trigger::Schedule => "schedule",
            Trigger::Retry => "retry",
            Trigger::Manual => "manual",
            Trigger::SecretChanged => "secret-changed",
        })
    }
}

/// The longest error message kept in a record.
const MAX_MESSAGE: usize = 2048;

/// A failed run, as the admin API and logs show it. No secret values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// Stable class (`rejected`, `throttled`, `transport`, ...).
    pub class: String,
    /// Whether a retry can help.
    pub retry: Retry,
    /// The full message.
    pub message: String,
    /// The OAuth error with Entra's trace and correlation ids, when the server sent one.
    pub oauth: Option<OAuthError>,
}

impl ErrorRecord {
    /// The record of `e`.
    pub fn of(e: &RunError) -> Self {
        Self {
            class: e.class().to_string(),
            retry: e.retry(),
            message: crate::text::clean(&e.to_string(), MAX_MESSAGE),
            oauth: e.oauth().cloned(),
        }
    }
}

/// One finished run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Why it ran.
    pub trigger: Trigger,
    /// Which process ran it (`host/pid/nonce`).
    #[serde(default)]
    pub runner: String,
    /// Unix milliseconds at start.
    pub started_at_ms: u64,
    /// How long it took.
    pub duration_ms: u64,
    /// 1 for the first try since the last success, 2 for the first retry, ...
    pub attempt: u32,
    /// For scheduled runs (not manual ones): milliseconds between when it was due and when
    /// it started, i.e. the wait for a run slot.
    pub lateness_ms: Option<u64>,
    /// Whether a token was stored.
    pub ok: bool,
    /// The outcome, on success.
    pub outcome: Option<Outcome>,
    /// The error, on failure.
    pub error: Option<ErrorRecord>,
}

impl RunRecord {
    /// As the job row keeps it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// From a job row; `None` when the row's text is not a record (another version wrote
    /// it, or it was altered).
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

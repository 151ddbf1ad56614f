//! What a run produces: the component's outcome or error (the contract's types), the host's
//! own failures around it, and how the scheduler treats each. The retry decision reads the
//! HTTP status and the OAuth `error` code, never Entra's AADSTS numbers: those are for
//! people and change without notice.

use serde::{Deserialize, Serialize};
use std::time::Duration;

pub use tokenwarden_contract::{Error as PluginError, OAuthError, Outcome};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The plugin ran and reported a typed failure.
    // Not `#[from]`: that would make the contract error this one's `source` too, and
    // error chains would print its message twice.
    #[error("{}", plugin_message(.0))]
    Plugin(PluginError),
    /// The plugin trapped (crashed, or was stopped at its deadline by epoch interruption).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The run exceeded its wall-clock limit while waiting on I/O.
    #[error("run exceeded its {}s time limit", .0.as_secs_f32())]
    Timeout(Duration),
    /// The component could not be loaded, compiled or instantiated.
    #[error("component: {0}")]
    Component(String),
    /// The job's configuration cannot run (e.g. an invalid allow-list).
    #[error("job configuration: {0}")]
    Config(String),
    /// The secret store could not be reached to take the job's lease.
    #[error("secret store unavailable: {0}")]
    Store(String),
    /// A bug: the run panicked. The job carries on and retries.
    #[error("internal error (a bug; please report it): {0}")]
    Internal(String),
}

impl From<PluginError> for RunError {
    fn from(e: PluginError) -> Self {
        RunError::Plugin(e)
    }
}

/// The contract's message, plus how to fix a missing secret in this host's own store.
fn plugin_message(e: &PluginError) -> String {
    match e {
        PluginError::MissingSecret {
            name: Some(name), ..
        } => format!(
            "{e}: store it with `tokenwarden secrets set '{}'`",
            name.replace('\'', r"'\''")
        ),
        _ => e.to_string(),
    }
}

/// How the scheduler should react to a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Retry {
    /// Likely to succeed soon: back off and retry.
    Retryable,
    /// Needs a human (credentials, scope, configuration): retry slowly, report loudly.
    Permanent,
}

impl std::fmt::Display for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Retry::Retryable => "retryable",
            Retry::Permanent => "permanent",
        })
    }
}

/// OAuth `error` codes that a retry can fix (RFC 6749 §5.2 / §4.1.2.1).
const RETRYABLE_OAUTH: &[&str] = &["temporarily_unavailable", "server_error", "slow_down"];

impl RunError {
    /// Retry class: transport, throttling, 5xx and temporary OAuth errors are retryable;
    /// credentials, scope, configuration and plugin bugs are not.
    pub fn retry(&self) -> Retry {
        match self {
            RunError::Plugin(
                PluginError::Transport(_)
                | PluginError::Throttled(_)
                | PluginError::ServerError(_)
                | PluginError::SecretStore(_),
            )
            | RunError::Timeout(_)
            | RunError::Store(_)
            | RunError::Internal(_) => Retry::Retryable,
            RunError::Plugin(PluginError::Rejected(e))
                if e.status >= 500 || RETRYABLE_OAUTH.contains(&e.error.as_str()) =>
            {
                Retry::Retryable
            }
            _ => Retry::Permanent,
        }
    }

    /// A short, stable class name for logs, metrics and `--json`.
    pub fn class(&self) -> &'static str {
        match self {
            RunError::Plugin(p) => p.kind(),
            RunError::Trap(_) => "trap",
            RunError::Timeout(_) => "timeout",
            RunError::Component(_) => "component",
            RunError::Config(_) => "config",
            RunError::Store(_) => "store-unavailable",
            RunError::Internal(_) => "internal",
        }
    }

    /// The OAuth error, when the server sent one.
    pub fn oauth(&self) -> Option<&OAuthError> {
        match self {
            RunError::Plugin(PluginError::Rejected(e)) => Some(e),
            _ => None,
        }
    }

    /// `Retry-After` of a 429, when sent.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RunError::Plugin(PluginError::Throttled(s)) => {
                s.map(|s| Duration::from_secs(u64::from(s)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(status: u16, error: &str) -> RunError {
        RunError::Plugin(PluginError::Rejected(Box::new(OAuthError {
            status,
            error: error.into(),
            description: None,
            error_codes: vec![],
            trace_id: None,
            correlation_id: None,
        })))
    }

    #[test]
    fn retry_classes_follow_status_and_error_code() {
        assert_eq!(rejected(400, "invalid_client").retry(), Retry::Permanent);
        assert_eq!(rejected(400, "invalid_scope").retry(), Retry::Permanent);
        assert_eq!(
            rejected(401, "unauthorized_client").retry(),
            Retry::Permanent
        );
        assert_eq!(
            rejected(400, "temporarily_unavailable").retry(),
            Retry::Retryable
        );
        assert_eq!(rejected(503, "whatever").retry(), Retry::Retryable);
        assert_eq!(
            RunError::Plugin(PluginError::Throttled(Some(5))).retry(),
            Retry::Retryable
        );
        assert_eq!(
            RunError::Plugin(PluginError::missing("client-id")).retry(),
            Retry::Permanent
        );
        assert_eq!(RunError::Trap("boom".into()).retry(), Retry::Permanent);
    }
}

//! What a run produces: the typed outcome or error, and how the scheduler should treat it.
//!
//! These mirror the WIT types but are owned by the host, so they serialise for `--json` and
//! the admin API and carry the retry decision (DESIGN §2: decide on status and `error`,
//! never on AADSTS numbers).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A successful run: the token was stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// `token_type`, e.g. `Bearer`.
    pub token_type: String,
    /// Lifetime in seconds, when the server sent one.
    pub expires_in: Option<u64>,
    /// Unix seconds of expiry, when known.
    pub expires_at: Option<u64>,
    /// Entra's `ext_expires_in`.
    pub ext_expires_in: Option<u64>,
    /// Entra's `refresh_in`.
    pub refresh_in: Option<u64>,
    /// Granted scope.
    pub scope: Option<String>,
}

/// An OAuth error reply (RFC 6749 §5.2) with Entra's diagnostics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthError {
    /// HTTP status.
    pub status: u16,
    /// `error` code.
    pub error: String,
    /// `error_description`.
    pub description: Option<String>,
    /// Entra's AADSTS numbers.
    pub error_codes: Vec<u32>,
    /// Entra's `trace_id`.
    pub trace_id: Option<String>,
    /// Entra's `correlation_id`.
    pub correlation_id: Option<String>,
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.error, self.status)?;
        if let Some(d) = &self.description {
            // Entra appends the ids and a timestamp to the text; they are shown once below.
            let first = d.lines().next().unwrap_or_default();
            let text = first.split(" Trace ID:").next().unwrap_or(first).trim();
            write!(f, ": {text}")?;
        }
        if let Some(t) = &self.trace_id {
            write!(f, " [trace_id {t}")?;
            if let Some(c) = &self.correlation_id {
                write!(f, ", correlation_id {c}")?;
            }
            write!(f, "]")?;
        }
        Ok(())
    }
}

/// The plugin's typed failure (WIT `action.error`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", content = "detail", rename_all = "kebab-case")]
pub enum PluginError {
    /// A bound secret has no value.
    #[error(
        "secret `{name}` (role `{role}`) is not set: store it with `tokenwarden secrets set '{name}'`"
    )]
    MissingSecret {
        /// The plugin's role name.
        role: String,
        /// The store name the job binds it to.
        name: String,
    },
    /// The host refused a role.
    #[error("access to secret role `{0}` denied")]
    AccessDenied(String),
    /// The store failed.
    #[error("secret store failed: {0}")]
    SecretStore(String),
    /// Egress refused.
    #[error("request to {0} denied by the egress policy")]
    EgressDenied(String),
    /// Transport failure.
    #[error("transport failure: {0}")]
    Transport(String),
    /// HTTP 429.
    #[error("throttled (HTTP 429){}", .0.map(|s| format!(", Retry-After {s}s")).unwrap_or_default())]
    Throttled(Option<u32>),
    /// HTTP 5xx.
    #[error("token endpoint server error (HTTP {0})")]
    ServerError(u16),
    /// OAuth error reply.
    #[error("token endpoint rejected the request: {0}")]
    Rejected(Box<OAuthError>),
    /// Unusable reply.
    #[error("invalid token response: {0}")]
    InvalidResponse(String),
    /// Bad request.
    #[error("bad request: {0}")]
    BadRequest(String),
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The plugin ran and reported a typed failure.
    #[error(transparent)]
    Plugin(#[from] PluginError),
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

impl PluginError {
    /// The error with `f` applied to every text the plugin supplied: the host scrubs the
    /// run's secret values from them before they reach a log, an API body or a terminal.
    pub fn map_text(self, f: impl Fn(String) -> String) -> Self {
        use PluginError as P;
        match self {
            P::MissingSecret { role, name } => P::MissingSecret {
                role: f(role),
                name,
            },
            P::AccessDenied(t) => P::AccessDenied(f(t)),
            P::SecretStore(t) => P::SecretStore(f(t)),
            P::EgressDenied(t) => P::EgressDenied(f(t)),
            P::Transport(t) => P::Transport(f(t)),
            P::InvalidResponse(t) => P::InvalidResponse(f(t)),
            P::BadRequest(t) => P::BadRequest(f(t)),
            P::Rejected(mut e) => {
                let opt = |t: Option<String>| t.map(&f);
                e.error = f(std::mem::take(&mut e.error));
                e.description = opt(e.description.take());
                e.trace_id = opt(e.trace_id.take());
                e.correlation_id = opt(e.correlation_id.take());
                P::Rejected(e)
            }
            other @ (P::Throttled(_) | P::ServerError(_)) => other,
        }
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
            RunError::Plugin(p) => match p {
                PluginError::MissingSecret { .. } => "missing-secret",
                PluginError::AccessDenied(_) => "access-denied",
                PluginError::SecretStore(_) => "secret-store",
                PluginError::EgressDenied(_) => "egress-denied",
                PluginError::Transport(_) => "transport",
                PluginError::Throttled(_) => "throttled",
                PluginError::ServerError(_) => "server-error",
                PluginError::Rejected(_) => "rejected",
                PluginError::InvalidResponse(_) => "invalid-response",
                PluginError::BadRequest(_) => "bad-request",
            },
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
            RunError::Plugin(PluginError::MissingSecret {
                role: "client-id".into(),
                name: "Client ID".into()
            })
            .retry(),
            Retry::Permanent
        );
        assert_eq!(RunError::Trap("boom".into()).retry(), Retry::Permanent);
    }

    #[test]
    fn oauth_error_display_carries_diagnostics() {
        let e = OAuthError {
            status: 401,
            error: "invalid_client".into(),
            description: Some("AADSTS7000215: Invalid client secret provided. Trace ID: t-1 Correlation ID: c-1 Timestamp: now\r\nmore".into()),
            error_codes: vec![7000215],
            trace_id: Some("t-1".into()),
            correlation_id: Some("c-1".into()),
        };
        assert_eq!(
            e.to_string(),
            "invalid_client (HTTP 401): AADSTS7000215: Invalid client secret provided. [trace_id t-1, correlation_id c-1]"
        );
    }
}

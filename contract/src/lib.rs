//! The facts tokenwarden's component (`plugin/`) and host (`host/`) must agree on, written
//! once: the secret roles, Microsoft Entra ID's authorities, the form parameters the
//! component owns, and a run's result types.
//!
//! `wit/refresh.wit` states the same contract for the wire. Each side converts between these
//! types and its WIT bindings in one function (`plugin/src/component.rs` and the host's
//! `runtime` module), and those conversions are exhaustive matches: adding an error case is a
//! change to the WIT, to [`Error`], and to the two conversions the compiler then points at.
//!
//! No dependencies beyond an optional `serde` (the host's JSON output), so the component
//! pays nothing for it.

use std::fmt;

/// Secret role names: what the component asks the host for through the `secrets`
/// interface. A job binds each to a store name; that map is the job's whole grant.
pub mod role {
    /// Read: the application (client) id. A public identifier.
    pub const CLIENT_ID: &str = "client-id";
    /// Read: the client secret.
    pub const CLIENT_SECRET: &str = "client-secret";
    /// Read: the Entra tenant (GUID or domain); only needed without a token URL. A public
    /// identifier.
    pub const TENANT_ID: &str = "tenant-id";
    /// Write: where the access token goes. The only writable role.
    pub const ACCESS_TOKEN: &str = "access-token";
    /// Sign only: the private key of a `private_key_jwt` job. The host signs with it
    /// through the `signing` interface; no interface returns it.
    pub const PRIVATE_KEY: &str = "private-key";
    /// Read (public): the certificate of that key, for the assertion's thumbprint header.
    pub const CERTIFICATE: &str = "certificate";
    /// Read: a federated credential's assertion, which the host reads from a file at every
    /// run.
    pub const CLIENT_ASSERTION: &str = "client-assertion";
    /// Read: App Service's `IDENTITY_HEADER`, which proves a managed-identity request
    /// comes from the app.
    pub const IDENTITY_HEADER: &str = "identity-header";
}

/// RFC 7523's client assertions: what the component sends and the emulator checks.
pub mod assertion {
    /// `client_assertion_type` of a JWT assertion (RFC 7523 §2.2).
    pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
    /// The lifetime of an assertion the component builds, in seconds: long enough for a
    /// slow network and a skewed clock, short enough that a copy is soon worthless
    /// (Entra accepts up to ten minutes; MSAL uses ten).
    pub const LIFETIME_SECS: u64 = 300;
}

/// A JWS algorithm for `private_key_jwt` (RFC 7518 §3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum SigningAlg {
    /// RSASSA-PSS with SHA-256; Entra's default for certificates.
    #[default]
    PS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, for older setups (with a SHA-1 `x5t`).
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

impl SigningAlg {
    /// The JWS `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::PS256 => "PS256",
            SigningAlg::RS256 => "RS256",
            SigningAlg::ES256 => "ES256",
        }
    }
}

/// Microsoft Entra ID: where its token endpoints are and which rules only it has.
pub mod entra {
    /// A national cloud of Microsoft Entra ID.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Cloud {
        /// The name a config uses: `public`, `usgov`, `china`.
        pub name: &'static str,
        /// Its authority (the token endpoint is `{authority}/{tenant}/oauth2/v2.0/token`).
        pub authority: &'static str,
    }

    /// The national clouds, the public one first.
    pub const CLOUDS: &[Cloud] = &[
        Cloud {
            name: "public",
            authority: "https://login.microsoftonline.com",
        },
        Cloud {
            name: "usgov",
            authority: "https://login.microsoftonline.us",
        },
        Cloud {
            name: "china",
            authority: "https://login.chinacloudapi.cn",
        },
    ];

    /// The default authority: the public cloud's.
    pub const DEFAULT_AUTHORITY: &str = CLOUDS[0].authority;

    /// Login hosts that are Entra's besides the clouds' own (the China cloud's partner
    /// host).
    const OTHER_LOGIN_HOSTS: &[&str] = &["login.partner.microsoftonline.cn"];

    /// Whether `host` (no port, any case, a trailing dot allowed) is one of Entra's login
    /// hosts: only these get Entra-only rules (the `/.default` scope).
    pub fn is_login_host(host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        // A plain loop: `trim_start_matches` and iterator chains cost the component
        // kilobytes of its 150 KB budget.
        for cloud in CLOUDS {
            let login = cloud
                .authority
                .strip_prefix("https://")
                .unwrap_or(cloud.authority);
            if login.eq_ignore_ascii_case(host) {
                return true;
            }
        }
        OTHER_LOGIN_HOSTS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// The v2.0 token endpoint's path under an authority, after `/{tenant}`: the endpoint is
    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub const TOKEN_PATH: &str = "/oauth2/v2.0/token";

    /// Whether Entra's client-credentials flow accepts `scope`: it must be
    /// `{resource}/.default` (a v2.0 rule other servers do not share). Entra also refuses a
    /// list of several; that is left to Entra, as its reply says so.
    pub fn accepts_scope(scope: &str) -> bool {
        scope.ends_with("/.default")
    }

    /// Why [`accepts_scope`] refused a scope, for error messages.
    pub const SCOPE_RULE: &str =
        "Microsoft Entra ID's client-credentials flow needs `{resource}/.default`";
}

/// Form parameters the component sets itself; a job's extra parameters cannot replace
/// them.
pub const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "scope",
    "client_assertion",
    "client_assertion_type",
];

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body. Entra's default.
    #[default]
    ClientSecretPost,
    /// HTTP Basic with the form-urlencoded id and secret as user and password.
    ClientSecretBasic,
    /// A JWT assertion the host signs with the job's private key (RFC 7523 §2.2).
    PrivateKeyJwt,
    /// An assertion someone else issued, read by the host from a file (federated
    /// credentials).
    ClientAssertion,
    /// No client credential: an Azure managed identity's endpoint (IMDS or App Service).
    ManagedIdentity,
    /// Mutual TLS (RFC 8705): the host presents the job's certificate in the handshake;
    /// the form carries only `client_id`.
    TlsClientAuth,
}

/// Azure managed identity: its endpoints and the rules they share.
pub mod managed_identity {
    /// The Instance Metadata Service's token endpoint (link-local, plain http by design).
    pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
    /// The API version tokenwarden asks IMDS for.
    pub const IMDS_API_VERSION: &str = "2018-02-01";
    /// The API version tokenwarden asks App Service's `IDENTITY_ENDPOINT` for.
    pub const APP_SERVICE_API_VERSION: &str = "2019-08-01";
    /// The resource a scope names: the scope without `/.default`.
    pub fn resource(scope: &str) -> &str {
        scope.strip_suffix("/.default").unwrap_or(scope)
    }
}

/// What a successful run stored. The token itself never crosses back to the host.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Outcome {
    /// `token_type` of the reply, e.g. `Bearer`.
    pub token_type: String,
    /// `expires_in`: the lifetime in seconds, when the server sent one.
    pub expires_in: Option<u64>,
    /// Unix seconds at which the stored token expires, when known.
    pub expires_at: Option<u64>,
    /// Entra's `ext_expires_in`: how long the token stays usable during an outage.
    pub ext_expires_in: Option<u64>,
    /// Entra's `refresh_in`: when the server suggests refreshing, in seconds.
    pub refresh_in: Option<u64>,
    /// The scope the server granted, when it said (RFC 6749 §5.1).
    pub scope: Option<String>,
}

/// An OAuth error reply (RFC 6749 §5.2), with Entra's diagnostics when present.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OAuthError {
    /// HTTP status of the reply.
    pub status: u16,
    /// The `error` code, e.g. `invalid_client`.
    pub error: String,
    /// `error_description`, as the server wrote it.
    pub description: Option<String>,
    /// Entra's AADSTS numbers (`error_codes`), for people, not for decisions.
    pub error_codes: Vec<u32>,
    /// Entra's `trace_id`, to quote to Microsoft support.
    pub trace_id: Option<String>,
    /// Entra's `correlation_id`.
    pub correlation_id: Option<String>,
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

/// Why a run failed (WIT `action.error`). On every failure the stored token is left
/// untouched. No case ever carries a secret value.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(tag = "kind", content = "detail", rename_all = "kebab-case")
)]
pub enum Error {
    /// A role the run needs is bound but has no value (or an empty one).
    MissingSecret {
        /// The role, as the component names it.
        role: String,
        /// The store name the job binds the role to: filled in by the host, which alone
        /// knows it (the component only sees roles).
        name: Option<String>,
    },
    /// The host refused a secret role. Carries the role.
    AccessDenied(String),
    /// The secret store failed. Carries the store's message.
    SecretStore(String),
    /// The host's egress policy refused the request. Carries the refusal.
    EgressDenied(String),
    /// The request did not complete: DNS, connect, TLS, timeout or a broken reply.
    Transport(String),
    /// HTTP 429. Carries `Retry-After` in seconds when the server sent it.
    Throttled(Option<u32>),
    /// HTTP 5xx without an OAuth error body. Carries the status.
    ServerError(u16),
    /// The server answered with an OAuth error.
    Rejected(Box<OAuthError>),
    /// The reply could not be used: not JSON, too large, or no `access_token`.
    InvalidResponse(String),
    /// The request itself is wrong (bad URL, a scope Entra cannot accept, ...).
    BadRequest(String),
}

impl Error {
    /// A missing secret, as the component reports it (by role).
    pub fn missing(role: &str) -> Self {
        Error::MissingSecret {
            role: role.to_string(),
            name: None,
        }
    }

    /// The case's name, as the WIT spells it: a stable class for logs, metrics and JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::MissingSecret { .. } => "missing-secret",
            Error::AccessDenied(_) => "access-denied",
            Error::SecretStore(_) => "secret-store",
            Error::EgressDenied(_) => "egress-denied",
            Error::Transport(_) => "transport",
            Error::Throttled(_) => "throttled",
            Error::ServerError(_) => "server-error",
            Error::Rejected(_) => "rejected",
            Error::InvalidResponse(_) => "invalid-response",
            Error::BadRequest(_) => "bad-request",
        }
    }

    /// The error with `f` applied to every text that came from the component or the
    /// server, so the host can scrub a run's secret values before they reach a log, an
    /// API body or a terminal.
    pub fn map_text(self, f: impl Fn(String) -> String) -> Self {
        use Error as E;
        match self {
            E::MissingSecret { role, name } => E::MissingSecret {
                role: f(role),
                name,
            },
            E::AccessDenied(t) => E::AccessDenied(f(t)),
            E::SecretStore(t) => E::SecretStore(f(t)),
            E::EgressDenied(t) => E::EgressDenied(f(t)),
            E::Transport(t) => E::Transport(f(t)),
            E::InvalidResponse(t) => E::InvalidResponse(f(t)),
            E::BadRequest(t) => E::BadRequest(f(t)),
            E::Rejected(mut e) => {
                let opt = |t: Option<String>| t.map(&f);
                e.error = f(std::mem::take(&mut e.error));
                e.description = opt(e.description.take());
                e.trace_id = opt(e.trace_id.take());
                e.correlation_id = opt(e.correlation_id.take());
                E::Rejected(e)
            }
            other @ (E::Throttled(_) | E::ServerError(_)) => other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::MissingSecret {
                role,
                name: Some(name),
            } => write!(f, "secret `{name}` (role `{role}`) is not set"),
            Error::MissingSecret { role, name: None } => {
                write!(f, "the secret bound to role `{role}` is not set")
            }
            Error::AccessDenied(role) => write!(f, "access to secret role `{role}` denied"),
            Error::SecretStore(m) => write!(f, "secret store failed: {m}"),
            Error::EgressDenied(m) => write!(f, "request to {m} denied by the egress policy"),
            Error::Transport(m) => write!(f, "transport failure: {m}"),
            Error::Throttled(after) => {
                write!(f, "throttled (HTTP 429)")?;
                match after {
                    Some(s) => write!(f, ", Retry-After {s}s"),
                    None => Ok(()),
                }
            }
            Error::ServerError(status) => {
                write!(f, "token endpoint server error (HTTP {status})")
            }
            Error::Rejected(e) => write!(f, "token endpoint rejected the request: {e}"),
            Error::InvalidResponse(m) => write!(f, "invalid token response: {m}"),
            Error::BadRequest(m) => write!(f, "bad request: {m}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entra_login_hosts_are_recognised_in_any_spelling() {
        for h in [
            "login.microsoftonline.com",
            "LOGIN.microsoftonline.com",
            "login.microsoftonline.com.",
            "login.microsoftonline.us",
            "login.chinacloudapi.cn",
            "login.partner.microsoftonline.cn",
        ] {
            assert!(entra::is_login_host(h), "{h}");
        }
        for h in [
            "login.microsoftonline.com.evil",
            "evil.login.microsoftonline.com",
            "127.0.0.1",
            "",
        ] {
            assert!(!entra::is_login_host(h), "{h}");
        }
        assert_eq!(entra::CLOUDS[0].authority, entra::DEFAULT_AUTHORITY);
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

    #[test]
    fn a_missing_secret_names_the_store_name_when_known() {
        let e = Error::MissingSecret {
            role: role::CLIENT_ID.into(),
            name: Some("Client ID".into()),
        };
        assert_eq!(
            e.to_string(),
            "secret `Client ID` (role `client-id`) is not set"
        );
        assert_eq!(Error::missing(role::TENANT_ID).kind(), "missing-secret");
    }
}

//! A job: what one refresh fetches, from where, with which grant and limits. The runtime,
//! the daemon and embedders take a [`JobConfig`]; the config file is one way to make one
//! ([`crate::Config`]), [`JobConfig::new`] another.

use crate::egress::Origin;
use crate::limits::RunLimits;
use crate::schedule::Schedule;
use crate::secrets::SecretRoles;
use crate::sink::{Action, Sink};
use crate::socket::Consumers;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokenwarden_contract::entra::DEFAULT_AUTHORITY;
pub use tokenwarden_contract::{ClientAuth, SigningAlg};

/// Default wall-clock limit for one run.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// A WASI version the component runs in.
///
/// 0.2 is the default. 0.3 (`wasi:http/client@0.3.0`) is experimental in wasmtime 48 and
/// opt-in: SECURITY.md says what choosing it means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WasiVersion {
    /// WASI 0.2 (`refresher`, exporting `action`).
    #[default]
    P2,
    /// WASI 0.3 (`refresher-p3`, exporting `async-action`).
    P3,
}

/// Environment variable that sets the command line's [`crate::RuntimeOptions::wasi`] (`0.2`
/// or `0.3`) over the config file's top-level `wasi`: a way to try 0.3 engine-wide.
pub const WASI_ENV: &str = "TOKENWARDEN_WASI";

impl WasiVersion {
    /// The version [`WASI_ENV`] names; `None` when it is unset or empty, an error when it is
    /// anything but `0.2` or `0.3` (including not UTF-8).
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var(WASI_ENV) {
            Ok(v) if !v.is_empty() => v.parse().map(Some).map_err(|e| format!("{WASI_ENV}: {e}")),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!(
                "{WASI_ENV} is not UTF-8: expected \"0.2\" or \"0.3\""
            )),
        }
    }

    /// As a config file writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            WasiVersion::P2 => "0.2",
            WasiVersion::P3 => "0.3",
        }
    }
}

impl std::fmt::Display for WasiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for WasiVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "0.2" => Ok(WasiVersion::P2),
            "0.3" => Ok(WasiVersion::P3),
            other => Err(format!(
                "WASI version `{}`: expected \"0.2\" or \"0.3\"",
                crate::text::clean(other, 40)
            )),
        }
    }
}

/// Where a managed identity's token comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// The Azure Instance Metadata Service (VMs, scale sets, AKS nodes).
    Imds,
    /// App Service, Functions, Container Apps: `IDENTITY_ENDPOINT` with the
    /// `IDENTITY_HEADER` from the environment.
    AppService,
}

/// Environment variable naming App Service's identity endpoint.
pub const IDENTITY_ENDPOINT_ENV: &str = "IDENTITY_ENDPOINT";
/// Environment variable holding App Service's identity header (a secret).
pub const IDENTITY_HEADER_ENV: &str = "IDENTITY_HEADER";

/// One job, validated (a `[[jobs]]` entry, paths resolved).
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// `[a-z0-9_-]+`, unique.
    pub name: String,
    /// The scope to request.
    pub scope: String,
    /// Entra-style authority; `None` means Entra's public cloud.
    pub authority: Option<String>,
    /// Full token endpoint of any OAuth 2.0 server.
    pub token_url: Option<String>,
    /// Client authentication method.
    pub client_auth: ClientAuth,
    /// The JWS algorithm of a `private_key_jwt` assertion.
    pub signing_alg: SigningAlg,
    /// The assertion's `kid` header, when the server identifies keys by id.
    pub key_id: Option<String>,
    /// For `client_assertion`: the file the host reads the assertion from at every run.
    pub assertion_file: Option<PathBuf>,
    /// Roles answered with a value instead of from the store: a workload-identity job's
    /// `client-id` and `tenant-id` from `AZURE_CLIENT_ID` and `AZURE_TENANT_ID` (public
    /// identifiers) when `[jobs.secrets]` does not bind them.
    pub given_ids: Vec<(&'static str, String)>,
    /// For `managed_identity`: which endpoint `token_url` is (App Service's needs its
    /// `IDENTITY_HEADER`).
    pub identity_source: Option<IdentitySource>,
    /// Origins the plugin may reach; empty means the token endpoint's origin.
    pub allowed_hosts: Vec<Origin>,
    /// Origins the proxy may send this job's token to (`upstreams`; by default the https
    /// origins in the scope).
    pub upstreams: Vec<Origin>,
    /// Whether a plain-`http` token endpoint off loopback is accepted (the client secret
    /// then crosses the network unencrypted).
    pub allow_insecure_http: bool,
    /// When it runs.
    pub schedule: Schedule,
    /// A component to run instead of the built-in one (its exports say its WASI version).
    pub plugin: Option<PathBuf>,
    /// The WASI version of the built-in component this job runs; `None` takes the
    /// runtime's ([`crate::RuntimeOptions::wasi`]).
    pub wasi: Option<WasiVersion>,
    /// Role grants.
    pub secrets: SecretRoles,
    /// Extra form parameters for the token request.
    pub token_params: BTreeMap<String, String>,
    /// Wall-clock limit for one run.
    pub timeout: Duration,
    /// Memory, HTTP and output limits for one run.
    pub limits: RunLimits,
    /// Files the daemon writes the token to after every change.
    pub sinks: Vec<Sink>,
    /// What the daemon runs when the token changed (after the sinks are written).
    pub on_change: Option<Action>,
    /// Who may have the token from the daemon's token socket.
    pub consumers: Consumers,
}

impl JobConfig {
    /// A job with defaults, for embedders and the demo.
    pub fn new(name: &str, scope: &str, secrets: SecretRoles) -> Self {
        Self {
            name: name.to_string(),
            scope: scope.to_string(),
            authority: None,
            token_url: None,
            client_auth: ClientAuth::default(),
            signing_alg: SigningAlg::default(),
            key_id: None,
            assertion_file: None,
            given_ids: Vec::new(),
            identity_source: None,
            allowed_hosts: Vec::new(),
            upstreams: Vec::new(),
            allow_insecure_http: false,
            schedule: Schedule::Auto,
            plugin: None,
            wasi: None,
            secrets,
            token_params: BTreeMap::new(),
            timeout: DEFAULT_RUN_TIMEOUT,
            limits: RunLimits::default(),
            sinks: Vec::new(),
            on_change: None,
            consumers: Consumers::default(),
        }
    }

    /// The URL whose origin is reachable by default.
    pub fn endpoint_base(&self) -> &str {
        self.token_url
            .as_deref()
            .or(self.authority.as_deref())
            .unwrap_or(DEFAULT_AUTHORITY)
    }

    /// The token endpoint this job resolves to: `token_url`, else the authority's v2.0
    /// endpoint with `{tenant}` where the tenant secret goes.
    pub fn endpoint(&self) -> String {
        match &self.token_url {
            Some(url) => url.clone(),
            None => format!(
                "{}/{{tenant}}{}",
                self.endpoint_base().trim_end_matches('/'),
                tokenwarden_contract::entra::TOKEN_PATH
            ),
        }
    }

    /// The origins the plugin may reach: `allowed_hosts`, else the endpoint's own origin.
    pub fn effective_allow_list(&self) -> Result<Vec<Origin>, String> {
        if !self.allowed_hosts.is_empty() {
            return Ok(self.allowed_hosts.clone());
        }
        Origin::of_url(self.endpoint_base()).map(|o| vec![o])
    }
}

//! The configuration model: what a job is and how the daemon and store behave. Runtime,
//! grants, daemon and embedders use these types; [`parse`] turns `tokenwarden.toml` into
//! them (and is the only place that knows the file format).

mod parse;

pub use parse::ConfigError;

use crate::egress::Origin;
use crate::limits::RunLimits;
use crate::schedule::{Policy, Schedule};
use crate::store::KeySource;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "TOKENWARDEN_CONFIG";
/// Config file used when neither `--config` nor the environment names one.
pub const DEFAULT_CONFIG: &str = "tokenwarden.toml";
/// Default store path, relative to the config file.
pub const DEFAULT_STORE: &str = "data/tokenwarden.db";
/// Default master key file of a PostgreSQL store, relative to the config file.
pub const DEFAULT_PG_KEY_FILE: &str = "data/tokenwarden.key";
/// Default admin API address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8420";
/// Default wall-clock limit for one run.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Microsoft Entra ID's public-cloud authority, the default.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// The whole, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (relative paths are resolved against its folder).
    pub path: PathBuf,
    /// The secret store.
    pub store: StoreConfig,
    /// The daemon's admin API.
    pub admin: AdminConfig,
    /// The daemon's scheduling and limits.
    pub daemon: DaemonConfig,
    /// The jobs, in file order.
    pub jobs: Vec<JobConfig>,
}

/// Which database holds the secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    /// The embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by several hosts (the connection string).
    Postgres(String),
}

/// `[store]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// The database.
    pub backend: StoreBackend,
    /// Where the master key comes from: `$TOKENWARDEN_STORE_KEY`, else the key file.
    pub key: KeySource,
    /// How long a job's lease lasts unless renewed: how soon another daemon takes over a
    /// job whose holder died.
    pub lease_ttl: Duration,
    /// How often a daemon looks for what other processes wrote.
    pub poll_interval: Duration,
    /// PostgreSQL connections at most.
    pub pool_size: usize,
}

impl StoreConfig {
    /// An SQLite store at `path`, with defaults.
    pub fn sqlite(path: PathBuf) -> Self {
        Self {
            key: KeySource::env_or_file(crate::store::sqlite::SqliteStore::key_file_for(&path)),
            backend: StoreBackend::Sqlite(path),
            lease_ttl: Duration::from_secs(15),
            poll_interval: Duration::from_secs(1),
            pool_size: 8,
        }
    }

    /// The folder beside the store for compiled components and other local state.
    pub fn local_dir(&self, config_dir: &Path) -> PathBuf {
        match &self.backend {
            StoreBackend::Sqlite(p) => p.parent().unwrap_or(Path::new(".")).to_path_buf(),
            StoreBackend::Postgres(_) => config_dir.join("data"),
        }
    }
}

/// `[admin]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the admin API.
    pub listen: SocketAddr,
    /// Store name of the bearer token the API demands.
    pub token_secret: Option<String>,
    /// What the port may take of the process.
    pub limits: crate::admin::AdminLimits,
}

/// `[daemon]`: scheduling policy and limits of `tokenwarden run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Runs in flight at once across all jobs.
    pub max_concurrent_runs: usize,
    /// How long a stopping daemon lets runs in flight finish.
    pub shutdown_grace: Duration,
    /// Refresh timing and retry backoff.
    pub policy: Policy,
    /// Whether `/metrics` has series per job (else totals only, for many thousands of jobs).
    pub per_job_metrics: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            max_concurrent_runs: 16,
            shutdown_grace: Duration::from_secs(30),
            policy: Policy::default(),
            per_job_metrics: true,
        }
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Credentials in the form body (Entra's default).
    #[default]
    ClientSecretPost,
    /// HTTP Basic (RFC 6749 §2.3.1).
    ClientSecretBasic,
}

/// Store names bound to the plugin's roles (`[jobs.secrets]`): the whole grant of a job.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRoles {
    /// Read role `client-id`.
    pub client_id: String,
    /// Read role `client-secret`.
    pub client_secret: String,
    /// Read role `tenant-id`; optional when `token_url` is set.
    pub tenant_id: Option<String>,
    /// Write role `access-token`.
    pub access_token: String,
}

impl SecretRoles {
    /// The store names the job reads (its inputs).
    pub fn inputs(&self) -> impl Iterator<Item = &str> {
        [
            Some(self.client_id.as_str()),
            Some(self.client_secret.as_str()),
            self.tenant_id.as_deref(),
        ]
        .into_iter()
        .flatten()
    }
}

/// One `[[jobs]]` entry, validated and with paths resolved.
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
    /// Origins the plugin may reach; empty means the token endpoint's origin.
    pub allowed_hosts: Vec<Origin>,
    /// Whether a plain-`http` token endpoint off loopback is accepted (the client secret
    /// then crosses the network unencrypted).
    pub allow_insecure_http: bool,
    /// When it runs.
    pub schedule: Schedule,
    /// A component to run instead of the built-in one.
    pub plugin: Option<PathBuf>,
    /// Role grants.
    pub secrets: SecretRoles,
    /// Extra form parameters for the token request.
    pub token_params: BTreeMap<String, String>,
    /// Wall-clock limit for one run.
    pub timeout: Duration,
    /// Memory, HTTP and output limits for one run.
    pub limits: RunLimits,
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
            allowed_hosts: Vec::new(),
            allow_insecure_http: false,
            schedule: Schedule::Auto,
            plugin: None,
            secrets,
            token_params: BTreeMap::new(),
            timeout: DEFAULT_RUN_TIMEOUT,
            limits: RunLimits::default(),
        }
    }

    /// The URL whose origin is reachable by default.
    pub fn endpoint_base(&self) -> &str {
        self.token_url
            .as_deref()
            .or(self.authority.as_deref())
            .unwrap_or(DEFAULT_AUTHORITY)
    }

    /// The origins the plugin may reach: `allowed_hosts`, else the endpoint's own origin.
    pub fn effective_allow_list(&self) -> Result<Vec<Origin>, String> {
        if !self.allowed_hosts.is_empty() {
            return Ok(self.allowed_hosts.clone());
        }
        Origin::of_url(self.endpoint_base()).map(|o| vec![o])
    }
}

/// Where the config file is: `--config`, else `$TOKENWARDEN_CONFIG`, else `./tokenwarden.toml`.
pub fn locate(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        parse::load(path)
    }

    /// Parses config text as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        parse::parse(text, path)
    }

    /// The job called `name`.
    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// The store, for people: the SQLite file or the PostgreSQL URL without password.
    pub fn store_description(&self) -> String {
        match &self.store.backend {
            StoreBackend::Sqlite(p) => format!("SQLite {}", p.display()),
            StoreBackend::Postgres(url) => {
                let shown = match url.split_once("://") {
                    Some((scheme, rest)) => match rest.split_once('@') {
                        Some((user, host)) => {
                            format!("{scheme}://{}@{host}", user.split(':').next().unwrap_or(""))
                        }
                        None => url.clone(),
                    },
                    None => "(key=value connection string)".into(),
                };
                format!("PostgreSQL {shown}")
            }
        }
    }

    /// The folder relative paths are resolved against.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

//! The config file, `tokenwarden.toml`: one [`Config`] made of each capability's own
//! settings ([`StoreConfig`], [`AdminConfig`], [`DaemonConfig`]) and the jobs
//! ([`JobConfig`]). [`parse`] is the only place that knows the file format; the types it
//! fills belong to the modules that use them, so nothing below the file depends on it.

mod blocks;
mod consumers;
mod credentials;
mod network;
mod parse;
mod proxy;
mod raw;

pub use parse::ConfigError;

use crate::admin::AdminConfig;
use crate::daemon::DaemonConfig;
use crate::job::{JobConfig, WasiVersion};
use crate::proxy::ProxyConfig;
use crate::socket::SocketConfig;
use crate::store::StoreConfig;
use std::path::{Path, PathBuf};

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "TOKENWARDEN_CONFIG";
/// Config file used when neither `--config` nor the environment names one.
pub const DEFAULT_CONFIG: &str = "tokenwarden.toml";
/// Default store path, relative to the config file.
pub const DEFAULT_STORE: &str = "data/tokenwarden.db";
/// Default master key file of a PostgreSQL store, relative to the config file.
pub const DEFAULT_PG_KEY_FILE: &str = "data/tokenwarden.key";

/// The whole, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (relative paths are resolved against its folder).
    pub path: PathBuf,
    /// The top-level `wasi`: the WASI version of jobs that do not choose their own.
    pub wasi: Option<WasiVersion>,
    /// The secret store.
    pub store: StoreConfig,
    /// The daemon's admin API.
    pub admin: AdminConfig,
    /// The daemon's scheduling and limits.
    pub daemon: DaemonConfig,
    /// The token socket (`[socket]`), when the daemon serves one.
    pub socket: Option<SocketConfig>,
    /// What HTTPS connections trust (`[tls]`).
    pub tls: crate::egress::Trust,
    /// The outbound proxy (`[egress]`), when connections go through one.
    pub egress: Option<crate::egress::EgressProxy>,
    /// The bearer-injecting proxy (`[proxy]`), when the daemon runs one.
    pub proxy: Option<ProxyConfig>,
    /// The jobs, in file order.
    pub jobs: Vec<JobConfig>,
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

    /// The folder relative paths are resolved against.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

//! Which store to open (`[store]`), and opening it.

use super::{KeySource, SecretStore, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Which database holds the secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    /// The embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by several hosts (the connection string).
    Postgres(String),
}

/// Which store to open and how daemons share it (`[store]`).
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
            key: KeySource::env_or_file(super::sqlite::SqliteStore::key_file_for(&path)),
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

    /// The store, for people: the SQLite file or the PostgreSQL URL without password.
    pub fn describe(&self) -> String {
        match &self.backend {
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
}

/// How a command needs the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads and writes; creates the store (and its key) on first use.
    ReadWrite,
    /// Reads only: works with read access to the store's files, creates nothing.
    ReadOnly,
}

/// Opens the store `config` describes; a PostgreSQL connection over TLS trusts what
/// `trust` (`[tls]`) names, as the token endpoints' connections do.
pub async fn open(
    config: &StoreConfig,
    trust: &crate::egress::Trust,
    access: Access,
) -> Result<Arc<dyn SecretStore>, StoreError> {
    match &config.backend {
        StoreBackend::Sqlite(path) => {
            let (path, key) = (path.clone(), config.key.clone());
            let store = tokio::task::spawn_blocking(move || match access {
                Access::ReadWrite => super::sqlite::SqliteStore::open_with(&path, key),
                Access::ReadOnly => super::sqlite::SqliteStore::open_read_only(&path, key),
            })
            .await
            .map_err(|e| StoreError::Backend {
                store: "sqlite".into(),
                message: format!("opening the store failed: {e}"),
            })??;
            Ok(Arc::new(store))
        }
        StoreBackend::Postgres(url) => {
            let tls = trust
                .client_config()
                .map_err(|e| StoreError::Invalid(format!("[tls]: {e}")))?;
            Ok(Arc::new(
                super::postgres::PgStore::connect_with_tls(
                    url,
                    config.key.clone(),
                    config.pool_size,
                    tls,
                )
                .await?,
            ))
        }
    }
}

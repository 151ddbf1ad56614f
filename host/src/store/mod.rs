//! Secret storage: the trait the runtime and CLI use, and its backends.
//!
//! Values are held in [`SecretString`] on the host, so they are zeroed on drop and never
//! printed by `Debug`. Backends: [`sqlite`] (the embedded default) and [`memory`]. A shared database for
//! several hosts can implement [`SecretStore`] without touching the rest.

pub mod crypto;
pub mod memory;
pub mod sqlite;

use secrecy::SecretString;
use std::time::{SystemTime, UNIX_EPOCH};

/// A store failure. Messages name secrets, never their values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing database failed.
    #[error("secret store {path}: {message}")]
    Backend {
        /// Where the store lives.
        path: String,
        /// What failed.
        message: String,
    },
    /// A file-system step (folder, permissions) failed.
    #[error("secret store {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A name or value the store will not keep.
    #[error("{0}")]
    Invalid(String),
    /// The store key could not be read or written.
    #[error(transparent)]
    Key(#[from] crypto::KeyError),
    /// The key does not open this store.
    #[error(
        "secret store {path}: the store key does not match this store (wrong ${} or key file)",
        crypto::KEY_ENV
    )]
    WrongKey {
        /// The store.
        path: String,
    },
    /// A record failed authentication.
    #[error(
        "secret `{name}` cannot be decrypted: the record was altered or written with another key"
    )]
    Decrypt {
        /// The secret's name.
        name: String,
    },
}

/// What is known about a secret besides its value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SecretMeta {
    /// The store name.
    pub name: String,
    /// Unix seconds of the last write.
    pub updated_at: u64,
    /// Unix seconds at which the value expires, when known (tokens).
    pub expires_at: Option<u64>,
}

/// A stored value and its metadata.
#[derive(Debug)]
pub struct StoredSecret {
    /// The value.
    pub value: SecretString,
    /// Its metadata.
    pub meta: SecretMeta,
}

/// A durable key-value store for secrets. Every write is atomic: after a crash the old value
/// or the new one is there, never a mix. Safe to use from several processes at once.
pub trait SecretStore: Send + Sync {
    /// Reads a secret.
    fn get(&self, name: &str) -> Result<Option<StoredSecret>, StoreError>;
    /// Replaces a secret atomically.
    fn set(
        &self,
        name: &str,
        value: &SecretString,
        expires_at: Option<u64>,
    ) -> Result<(), StoreError>;
    /// Metadata of every secret, sorted by name; no values.
    fn list(&self) -> Result<Vec<SecretMeta>, StoreError>;
}

/// The largest secret value the store keeps. Tokens are a few KiB; this keeps a runaway
/// plugin from filling the disk.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// A name and value every backend accepts: [`check_name`], and at most [`MAX_VALUE_BYTES`].
pub fn check_entry(name: &str, value: &SecretString) -> Result<(), StoreError> {
    use secrecy::ExposeSecret;
    check_name(name)?;
    if value.expose_secret().len() > MAX_VALUE_BYTES {
        return Err(StoreError::Invalid(format!(
            "the value for `{name}` is larger than {MAX_VALUE_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Checks a secret name: printable, no control characters, at most 256 bytes. Names may
/// contain spaces ("Microsoft Client ID").
pub fn check_name(name: &str) -> Result<(), StoreError> {
    if name.trim().is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "secret name {name:?} must be 1 to 256 printable characters"
        )));
    }
    Ok(())
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

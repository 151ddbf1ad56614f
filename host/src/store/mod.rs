//! The secret store: values sealed at rest, and the little coordination state that lets
//! several processes (the CLI beside a daemon, several daemons, several hosts) share one
//! store safely.
//!
//! Every backend keeps the same four things, behind [`SecretStore`]:
//! - **secrets**, each sealed with AES-256-GCM under a versioned *data key*, the secret's
//!   name bound in as associated data (`keys`). Data keys live in the store, wrapped by
//!   the *master key* that each process brings (a key file or `$TOKENWARDEN_STORE_KEY`), so
//!   rotating the data key is one database change that every process and host picks up;
//! - a **revision** counter that every write advances, so a process can ask "what changed
//!   since revision N" ([`SecretStore::changes`]) and notice what others wrote;
//! - per-job **lease rows** ([`JobRow`]): who may refresh a job right now, the fence that
//!   makes a stale holder's token write fail, and the shared plan (next run, failures, last
//!   run) that every daemon adopts;
//! - **members**: the daemons that heartbeat, so work can be spread and handed over.
//!
//! Backends: `sqlite` (the embedded default, several processes on one machine),
//! `postgres` (several hosts) and `memory` (embedding, tests). Writes are serialised per
//! store (SQLite's write lock; a row lock on PostgreSQL), which is what makes revisions
//! gap-free and the key change of a rotation atomic.

mod crypto;
mod keys;
mod memory;
mod postgres;
mod rotation;
mod settings;
mod sqlite;

use async_trait::async_trait;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub use keys::{KEY_ENV, KeyError, KeySource};
pub use memory::MemoryStore;
pub use postgres::{PASSWORD_ENV, PgStore};
pub use rotation::NEW_KEY_ENV;
pub use settings::{Access, StoreBackend, StoreConfig, open};
pub use sqlite::SqliteStore;

/// A store failure. Messages name secrets, never their values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database answered with an error that retrying will not fix (corruption, a bug,
    /// a schema from the future).
    #[error("secret store {store}: {message}")]
    Backend {
        /// Which store (path or URL without password).
        store: String,
        /// What failed.
        message: String,
    },
    /// The database cannot be reached or is busy right now; a later try may succeed.
    #[error("secret store {store} is unavailable: {message}")]
    Unavailable {
        /// Which store.
        store: String,
        /// Why.
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
    /// A name or value the store will not keep, or an operation it does not offer.
    #[error("{0}")]
    Invalid(String),
    /// The master key could not be read or written.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The master key this process has does not open the store's data key.
    #[error("secret store {store}: {detail}")]
    WrongKey {
        /// Which store.
        store: String,
        /// What does not match, and what to do.
        detail: String,
    },
    /// A record failed authentication.
    #[error(
        "secret `{name}` cannot be decrypted: the record was altered or written with another key"
    )]
    Decrypt {
        /// The secret's name.
        name: String,
    },
    /// A write under a job lease that is no longer held: another process took the job over
    /// (after this one paused past the lease), so this write would overwrite a newer token.
    #[error("the lease on job `{job}` was taken over by another process; nothing was written")]
    Fenced {
        /// The job.
        job: String,
    },
}

impl StoreError {
    /// Whether a later try may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Fenced { .. }
        )
    }
}

/// What is known about a secret besides its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SecretMeta {
    /// The store name.
    pub name: String,
    /// Unix seconds of the last write.
    pub updated_at: u64,
    /// Unix seconds at which the value expires, when known (tokens).
    pub expires_at: Option<u64>,
    /// The store revision of the last write (see [`SecretStore::changes`]).
    #[serde(skip)]
    pub revision: u64,
}

/// A stored value and its metadata.
#[derive(Debug)]
pub struct StoredSecret {
    /// The value.
    pub value: SecretString,
    /// Its metadata.
    pub meta: SecretMeta,
}

/// A job's coordination row, shared by every process on the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRow {
    /// The job name.
    pub job: String,
    /// Advances with every lease grant: a write under an older fence is refused.
    pub fence: u64,
    /// Who holds the lease (`host/pid/nonce`), while it is held.
    pub lease_owner: Option<String>,
    /// Unix milliseconds (the store's clock) until which the lease is held; 0 when free.
    pub lease_until_ms: u64,
    /// Unix milliseconds of the next planned run, as its last runner decided.
    pub next_due_ms: Option<u64>,
    /// Failed runs since the last success.
    pub failures: u32,
    /// The last run, as JSON (the daemon's `RunRecord`); opaque to the store.
    pub last_run: Option<String>,
    /// The store revision of the last change to this row; 0 for a job never run.
    pub revision: u64,
}

impl JobRow {
    /// The lease holder, when the lease is live at `now_ms`.
    pub fn holder(&self, now_ms: u64) -> Option<&str> {
        self.lease_owner
            .as_deref()
            .filter(|_| self.lease_until_ms > now_ms)
    }
}

/// How much a backend's write must survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Secrets and keys: flushed to disk at commit, survives power loss.
    Durable,
    /// Leases, job plans, members: survives a crash of the process, and reaches the disk
    /// with the next durable commit (SQLite's `synchronous = NORMAL`, PostgreSQL's
    /// `synchronous_commit = off`). Losing one to a crash of the machine or the database
    /// server costs at most a repeated refresh (a token write is fenced by the lease and
    /// is itself durable), so a run does not pay three flushes.
    Coordination,
}

/// When a lease may be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseMode {
    /// A planned run: only if the job's row is still at `revision` (nobody ran or took it
    /// since this process made its plan) and no live lease is held. This compare-and-set is
    /// what keeps several daemons from running one due refresh twice.
    IfUnchanged {
        /// The row revision the plan was made from (0: no row yet).
        revision: u64,
    },
    /// A manual or one-shot run: whenever no live lease is held.
    Any,
}

/// A granted lease: the right to run a job and write its token until `until_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The job.
    pub job: String,
    /// The holder.
    pub owner: String,
    /// The fence of this grant.
    pub fence: u64,
    /// Unix milliseconds (the store's clock) when it lapses unless renewed.
    pub until_ms: u64,
}

/// The answer to a lease request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// Granted: run the job. The row as it was before the grant (its plan and failures).
    Granted {
        /// The lease.
        lease: Lease,
        /// The job's row before this grant.
        row: JobRow,
    },
    /// Someone holds a live lease: the row says who and until when.
    Held(JobRow),
    /// The row changed since the plan was made (someone ran the job): adopt it.
    Moved(JobRow),
}

/// What a lease holder writes back when it releases the lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobUpdate {
    /// Unix milliseconds of the next planned run.
    pub next_due_ms: Option<u64>,
    /// Failed runs since the last success.
    pub failures: u32,
    /// The run, as JSON.
    pub last_run: Option<String>,
}

/// What changed since a revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The store's revision now: pass it to the next call.
    pub revision: u64,
    /// Secrets written since (metadata only).
    pub secrets: Vec<SecretMeta>,
    /// Secrets deleted since.
    pub deleted: Vec<String>,
    /// Job rows changed since.
    pub jobs: Vec<JobRow>,
}

/// A daemon sharing the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `host/pid/nonce`, also its lease owner name.
    pub id: String,
    /// Unix milliseconds when it started.
    pub started_ms: u64,
    /// Unix milliseconds (the store's clock) of its last heartbeat.
    pub seen_ms: u64,
}

/// What a key rotation did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rotation {
    /// The new data key's version.
    pub data_key_version: u32,
    /// Secrets re-encrypted under it.
    pub secrets: usize,
    /// The new master key's id, when the master key was replaced too.
    pub master_key_id: Option<String>,
}

/// A durable store for secrets and the coordination state of the processes sharing it.
///
/// Every write is atomic: after a crash the old value or the new one is there, never a mix.
/// Safe to use from several processes (and, for shared backends, hosts) at once.
#[async_trait]
pub trait SecretStore: Send + Sync + std::fmt::Debug {
    /// The store, for messages: a path, or a URL without its password.
    fn describe(&self) -> String;

    /// Reads a secret.
    async fn get(&self, name: &str) -> Result<Option<StoredSecret>, StoreError>;
    /// Replaces a secret atomically.
    async fn set(
        &self,
        name: &str,
        value: &SecretString,
        expires_at: Option<u64>,
    ) -> Result<SecretMeta, StoreError>;
    /// Replaces a secret only while `lease` is the job's current grant; otherwise fails
    /// with [`StoreError::Fenced`] and writes nothing.
    async fn set_fenced(
        &self,
        name: &str,
        value: &SecretString,
        expires_at: Option<u64>,
        lease: &Lease,
    ) -> Result<SecretMeta, StoreError>;
    /// Deletes a secret; `false` when there was none.
    async fn delete(&self, name: &str) -> Result<bool, StoreError>;
    /// Metadata of every secret, sorted by name; no values.
    async fn list(&self) -> Result<Vec<SecretMeta>, StoreError>;
    /// What changed after `since` (0: everything).
    async fn changes(&self, since: u64) -> Result<Changes, StoreError>;
    /// Re-encrypts every secret under a new data key, and with `master` replaces the master
    /// key too (where the backend's key source allows it).
    async fn rotate_key(&self, master: bool) -> Result<Rotation, StoreError>;

    /// Asks for the lease on `job` for `ttl`.
    async fn acquire(
        &self,
        job: &str,
        owner: &str,
        ttl: Duration,
        mode: LeaseMode,
    ) -> Result<Acquired, StoreError>;
    /// Extends a held lease; `None` when it was lost.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, StoreError>;
    /// Gives a lease back and records the run; returns the row's new revision, or `None`
    /// (and nothing written) when the lease was lost.
    async fn release(&self, lease: &Lease, update: &JobUpdate) -> Result<Option<u64>, StoreError>;
    /// Every job row, sorted by name.
    async fn jobs(&self) -> Result<Vec<JobRow>, StoreError>;
    /// One job's row.
    async fn job(&self, name: &str) -> Result<Option<JobRow>, StoreError>;
    /// Records that `member` is alive and returns every member seen within `ttl`
    /// (including itself), sorted by id.
    async fn heartbeat(&self, member: &Member, ttl: Duration) -> Result<Vec<Member>, StoreError>;
    /// Removes a member at shutdown.
    async fn leave(&self, member: &str) -> Result<(), StoreError>;
}

/// The largest secret value the store keeps. Tokens are a few KiB; this keeps a runaway
/// plugin from filling the disk.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// The longest secret name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

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

/// Checks a secret name: printable, no control or formatting characters (which could
/// reorder or hide text in a listing), no leading or trailing space, at most
/// [`MAX_NAME_BYTES`]. Names may contain inner spaces ("Microsoft Client ID").
pub fn check_name(name: &str) -> Result<(), StoreError> {
    if name.trim().is_empty()
        || name.trim() != name
        || name.len() > MAX_NAME_BYTES
        || name.chars().any(crate::text::is_hidden_char)
    {
        return Err(StoreError::Invalid(format!(
            "secret name {} must be 1 to {MAX_NAME_BYTES} bytes of printable characters, without leading or trailing space",
            crate::text::quoted(name)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_hide_or_reorder_text_are_refused() {
        for bad in [
            "",
            "  ",
            "a\nb",
            " lead",
            "trail ",
            "abc\u{202e}fed",
            "zero\u{200b}width",
            "esc\u{1b}[2J",
            "bom\u{feff}",
            &"x".repeat(MAX_NAME_BYTES + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["Microsoft Client ID", "tenant-42/secret", "clé"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }
}

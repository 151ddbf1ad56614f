//! The embedded default store: one SQLite file in WAL mode, values sealed with AES-256-GCM
//! ([`super::crypto`]).
//!
//! SQLite gives the atomic, durable, multi-process writes DESIGN §7 asks for: each `set` is
//! one transaction, `synchronous = FULL` makes a committed write survive power loss, and
//! `busy_timeout` lets the CLI write while the daemon runs. The folder is created 0700 and
//! the file 0600 before SQLite opens it; SQLite gives its `-wal`/`-shm` files the same mode.

use super::crypto::{self, StoreKey};
use super::{SecretMeta, SecretStore, StoreError, StoredSecret, check_entry, unix_now};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use secrecy::{ExposeSecret, SecretString};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// How long a writer waits for another process's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Schema version in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// Name under which the key check value is sealed in the `meta` table.
const KEY_CHECK: &str = "\0key-check";

/// Where the store key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `$TOKENWARDEN_STORE_KEY`.
    Env,
    /// A key file.
    File(PathBuf),
}

/// The SQLite-backed store.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    key: std::sync::RwLock<StoreKey>,
    key_source: KeySource,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// The key file used when `$TOKENWARDEN_STORE_KEY` is not set: `<store>.key`.
    pub fn key_file_for(path: &Path) -> PathBuf {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".key");
        path.with_file_name(name)
    }

    /// Opens the store at `path`, creating the folder (0700), file (0600) and key as needed.
    /// The key comes from `$TOKENWARDEN_STORE_KEY` when set, else from `<store>.key`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        match std::env::var(crypto::KEY_ENV) {
            Ok(text) => {
                let key = StoreKey::parse(&text, &format!("${}", crypto::KEY_ENV))?;
                Self::open_with(path, key, KeySource::Env)
            }
            Err(_) => {
                let file = Self::key_file_for(path);
                let conn = Self::open_db(path)?;
                let key = if file.exists() {
                    StoreKey::read(&file)?
                } else {
                    let count: i64 = conn
                        .query_row("SELECT count(*) FROM secrets", [], |r| r.get(0))
                        .map_err(|e| backend(path, e))?;
                    if count > 0 {
                        return Err(StoreError::Backend {
                            path: path.display().to_string(),
                            message: format!(
                                "the store holds secrets but its key file {} is missing (or set ${})",
                                file.display(),
                                crypto::KEY_ENV
                            ),
                        });
                    }
                    let (key, text) = StoreKey::generate();
                    crypto::write_key_file(&file, &text)?;
                    key
                };
                Self::finish_open(path, conn, key, KeySource::File(file))
            }
        }
    }

    /// Opens the store with an explicit key.
    pub fn open_with(path: &Path, key: StoreKey, source: KeySource) -> Result<Self, StoreError> {
        let conn = Self::open_db(path)?;
        Self::finish_open(path, conn, key, source)
    }

    fn finish_open(
        path: &Path,
        conn: Connection,
        key: StoreKey,
        key_source: KeySource,
    ) -> Result<Self, StoreError> {
        let check: Option<Vec<u8>> = conn
            .query_row("SELECT value FROM meta WHERE name = ?1", [KEY_CHECK], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| backend(path, e))?;
        let key = match check {
            None => {
                conn.execute(
                    "INSERT INTO meta (name, value) VALUES (?1, ?2)",
                    params![KEY_CHECK, key.seal(KEY_CHECK, b"tokenwarden")],
                )
                .map_err(|e| backend(path, e))?;
                key
            }
            Some(sealed) if key.open(KEY_CHECK, &sealed).is_some() => key,
            Some(sealed) => {
                recover_rotation(&key_source, &sealed).ok_or_else(|| StoreError::WrongKey {
                    path: path.display().to_string(),
                })?
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            key: std::sync::RwLock::new(key),
            key_source,
        })
    }

    fn open_db(path: &Path) -> Result<Connection, StoreError> {
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| StoreError::Io { path: p, source }
        };
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        }
        // Create the file ourselves so that it is never, even briefly, readable by others.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;

        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| backend(path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| backend(path, e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| backend(path, e))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| backend(path, e))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| backend(path, e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Backend {
                path: path.display().to_string(),
                message: format!(
                    "schema version {version} is newer than this tokenwarden understands ({SCHEMA_VERSION})"
                ),
            });
        }
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS secrets (
                 name TEXT PRIMARY KEY NOT NULL,
                 value BLOB NOT NULL,
                 updated_at INTEGER NOT NULL,
                 expires_at INTEGER
             ) STRICT;
             CREATE TABLE IF NOT EXISTS meta (
                 name TEXT PRIMARY KEY NOT NULL,
                 value BLOB NOT NULL
             ) STRICT;
             PRAGMA user_version = 1;
             COMMIT;",
        )
        .map_err(|e| backend(path, e))?;
        Ok(conn)
    }

    /// Where the key comes from.
    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }

    /// Re-encrypts every secret under a new random key and replaces the key file. Crash-safe:
    /// the new key is written to `<key>.new` first, the store is re-encrypted in one
    /// transaction, then the file is renamed; an interrupted rotation is completed on the
    /// next open. Keys from `$TOKENWARDEN_STORE_KEY` cannot be rotated here.
    pub fn rotate_key(&self) -> Result<usize, StoreError> {
        let KeySource::File(file) = &self.key_source else {
            return Err(StoreError::Invalid(format!(
                "the store key comes from ${}; rotate it by re-creating the store with a new key",
                crypto::KEY_ENV
            )));
        };
        let staged = staged_key_file(file);
        let (new_key, text) = StoreKey::generate();
        crypto::write_key_file(&staged, &text)?;
        // Lock order everywhere: connection, then key.
        let mut conn = self.conn();
        let mut key = self.key.write().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| backend(&self.path, e))?;
        let rows: Vec<(String, Vec<u8>)> = {
            let mut stmt = tx
                .prepare("SELECT name, value FROM secrets")
                .map_err(|e| backend(&self.path, e))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| backend(&self.path, e))?
                .collect::<Result<_, _>>()
                .map_err(|e| backend(&self.path, e))?
        };
        for (name, sealed) in &rows {
            let plain = zeroize::Zeroizing::new(
                key.open(name, sealed)
                    .ok_or_else(|| StoreError::Decrypt { name: name.clone() })?,
            );
            tx.execute(
                "UPDATE secrets SET value = ?2 WHERE name = ?1",
                params![name, new_key.seal(name, &plain)],
            )
            .map_err(|e| backend(&self.path, e))?;
        }
        tx.execute(
            "UPDATE meta SET value = ?2 WHERE name = ?1",
            params![KEY_CHECK, new_key.seal(KEY_CHECK, b"tokenwarden")],
        )
        .map_err(|e| backend(&self.path, e))?;
        tx.commit().map_err(|e| backend(&self.path, e))?;
        match std::fs::rename(&staged, file) {
            Ok(()) => {}
            // Another process that saw the new check already promoted the staged key.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !staged.exists() => {}
            Err(source) => {
                return Err(StoreError::Io {
                    path: file.display().to_string(),
                    source,
                });
            }
        }
        *key = new_key;
        Ok(rows.len())
    }

    /// The sealed key check as committed now.
    fn committed_check(conn: &Connection, path: &Path) -> Result<Vec<u8>, StoreError> {
        conn.query_row("SELECT value FROM meta WHERE name = ?1", [KEY_CHECK], |r| {
            r.get(0)
        })
        .map_err(|e| backend(path, e))
    }

    /// Makes sure the key in memory is the committed one: another process may have rotated
    /// it since this store was opened. Without this, a long-running daemon would seal new
    /// values under a retired key, and they would open for nobody else.
    fn current_key(
        &self,
        check: &[u8],
    ) -> Result<std::sync::RwLockReadGuard<'_, StoreKey>, StoreError> {
        {
            let key = self.key.read().unwrap_or_else(|p| p.into_inner());
            if key.open(KEY_CHECK, check).is_some() {
                return Ok(key);
            }
        }
        let wrong = || StoreError::WrongKey {
            path: self.path.display().to_string(),
        };
        let KeySource::File(file) = &self.key_source else {
            return Err(wrong());
        };
        let fresh = StoreKey::read(file)
            .ok()
            .filter(|k| k.open(KEY_CHECK, check).is_some())
            .or_else(|| recover_rotation(&self.key_source, check))
            .ok_or_else(wrong)?;
        tracing::info!(key_file = %file.display(), "store key was rotated by another process; reloaded it");
        *self.key.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(self.key.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written: every statement
        // is its own transaction. So a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn staged_key_file(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    file.with_file_name(name)
}

/// After a rotation cut off between commit and rename, the store opens only with the staged
/// key: promote it.
fn recover_rotation(source: &KeySource, check: &[u8]) -> Option<StoreKey> {
    let KeySource::File(file) = source else {
        return None;
    };
    let staged = staged_key_file(file);
    let key = StoreKey::read(&staged).ok()?;
    key.open(KEY_CHECK, check)?;
    std::fs::rename(&staged, file).ok()?;
    tracing::warn!(key_file = %file.display(), "completed an interrupted store key rotation");
    Some(key)
}

fn backend(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::Backend {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn to_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

impl SecretStore for SqliteStore {
    fn get(&self, name: &str) -> Result<Option<StoredSecret>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT value, updated_at, expires_at FROM secrets WHERE name = ?1",
                params![name],
                |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        SecretMeta {
                            name: name.to_string(),
                            updated_at: to_u64(row.get(1)?).unwrap_or(0),
                            expires_at: to_u64(row.get(2)?),
                        },
                    ))
                },
            )
            .optional()
            .map_err(|e| backend(&self.path, e))?;
        let Some((sealed, meta)) = row else {
            return Ok(None);
        };
        let opened = self
            .key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .open(name, &sealed);
        let plain = match opened {
            Some(plain) => plain,
            None => {
                // Perhaps rotated elsewhere: retry once with the committed key.
                let check = Self::committed_check(&self.conn(), &self.path)?;
                self.current_key(&check)?
                    .open(name, &sealed)
                    .ok_or_else(|| StoreError::Decrypt {
                        name: name.to_string(),
                    })?
            }
        };
        let value = String::from_utf8(plain).map_err(|_| StoreError::Decrypt {
            name: name.to_string(),
        })?;
        Ok(Some(StoredSecret {
            value: SecretString::from(value),
            meta,
        }))
    }

    fn set(
        &self,
        name: &str,
        value: &SecretString,
        expires_at: Option<u64>,
    ) -> Result<(), StoreError> {
        check_entry(name, value)?;
        let expires_at = expires_at.map(|e| i64::try_from(e).unwrap_or(i64::MAX));
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        let mut conn = self.conn();
        // One write transaction: the key check read here cannot change before the commit, so
        // the value is sealed under the key every other process will use.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| backend(&self.path, e))?;
        let check = Self::committed_check(&tx, &self.path)?;
        let sealed = self
            .current_key(&check)?
            .seal(name, value.expose_secret().as_bytes());
        tx.execute(
            "INSERT INTO secrets (name, value, updated_at, expires_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET value = excluded.value,
                 updated_at = excluded.updated_at, expires_at = excluded.expires_at",
            params![name, sealed, now, expires_at],
        )
        .map_err(|e| backend(&self.path, e))?;
        tx.commit().map_err(|e| backend(&self.path, e))
    }

    fn list(&self) -> Result<Vec<SecretMeta>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name, updated_at, expires_at FROM secrets ORDER BY name")
            .map_err(|e| backend(&self.path, e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok(SecretMeta {
                    name: row.get(0)?,
                    updated_at: to_u64(row.get(1)?).unwrap_or(0),
                    expires_at: to_u64(row.get(2)?),
                })
            })
            .map_err(|e| backend(&self.path, e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| backend(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MAX_VALUE_BYTES;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn round_trip_metadata_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/store.db");
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        assert!(store.get("Microsoft Client ID").unwrap().is_none());
        store
            .set(
                "Microsoft Client ID",
                &SecretString::from("abc".to_string()),
                None,
            )
            .unwrap();
        store
            .set("tok", &SecretString::from("t1".to_string()), Some(42))
            .unwrap();
        store
            .set("tok", &SecretString::from("t2".to_string()), Some(43))
            .unwrap();
        let got = store.get("tok").unwrap().unwrap();
        assert_eq!(got.value.expose_secret(), "t2");
        assert_eq!(got.meta.expires_at, Some(43));
        let names: Vec<_> = store.list().unwrap().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["Microsoft Client ID", "tok"]);
        // A second handle (another process, in effect) sees committed writes.
        let other = SqliteStore::open(&path).unwrap();
        assert_eq!(
            other.get("tok").unwrap().unwrap().value.expose_secret(),
            "t2"
        );
    }

    #[test]
    fn debug_never_shows_values() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        store
            .set(
                "n",
                &SecretString::from("canary-value-123".to_string()),
                None,
            )
            .unwrap();
        let got = store.get("n").unwrap().unwrap();
        assert!(!format!("{got:?} {store:?}").contains("canary-value-123"));
    }

    fn raw(path: &Path, sql: &str) {
        Connection::open(path).unwrap().execute_batch(sql).unwrap();
    }

    #[test]
    fn values_are_encrypted_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).unwrap();
        let key_file = SqliteStore::key_file_for(&path);
        assert_eq!(std::fs::metadata(&key_file).unwrap().mode() & 0o777, 0o600);
        store
            .set(
                "n",
                &SecretString::from("plaintext-canary-42".to_string()),
                None,
            )
            .unwrap();
        drop(store);
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            assert!(!bytes.windows(19).any(|w| w == b"plaintext-canary-42"));
        }
        // Reopening with the same key file works.
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.get("n").unwrap().unwrap().value.expose_secret(),
            "plaintext-canary-42"
        );
    }

    #[test]
    fn wrong_key_tampering_and_swaps_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (key, _) = StoreKey::generate();
        let store = SqliteStore::open_with(&path, key.clone(), KeySource::Env).unwrap();
        store
            .set("a", &SecretString::from("value-a".to_string()), None)
            .unwrap();
        store
            .set("b", &SecretString::from("value-b".to_string()), None)
            .unwrap();
        drop(store);

        let (other, _) = StoreKey::generate();
        let err = SqliteStore::open_with(&path, other, KeySource::Env).unwrap_err();
        assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");

        // Swap the ciphertexts of a and b: neither opens under the other's name.
        raw(
            &path,
            "UPDATE secrets SET value = (SELECT value FROM secrets WHERE name = 'b') WHERE name = 'a';",
        );
        let store = SqliteStore::open_with(&path, key, KeySource::Env).unwrap();
        assert!(matches!(store.get("a"), Err(StoreError::Decrypt { name }) if name == "a"));
        assert_eq!(
            store.get("b").unwrap().unwrap().value.expose_secret(),
            "value-b"
        );
        // Flip a byte of b.
        raw(
            &path,
            "UPDATE secrets SET value = CAST(value || x'00' AS BLOB) WHERE name = 'b';",
        );
        assert!(matches!(store.get("b"), Err(StoreError::Decrypt { .. })));
    }

    #[test]
    fn a_rotation_by_another_process_is_picked_up_not_undone() {
        // Two handles on one file stand for the daemon and the CLI: each has its own key in
        // memory, as two processes would.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let daemon = SqliteStore::open(&path).unwrap();
        let cli = SqliteStore::open(&path).unwrap();
        let v = |t: &str| SecretString::from(t.to_string());
        daemon.set("client", &v("c-1"), None).unwrap();
        assert_eq!(cli.rotate_key().unwrap(), 1);
        // The daemon writes after the rotation: sealed under the new key, not its old one.
        daemon.set("token", &v("t-1"), Some(9)).unwrap();
        assert_eq!(
            cli.get("token").unwrap().unwrap().value.expose_secret(),
            "t-1"
        );
        assert_eq!(
            daemon.get("client").unwrap().unwrap().value.expose_secret(),
            "c-1"
        );
        drop((daemon, cli));
        let fresh = SqliteStore::open(&path).unwrap();
        for (name, value) in [("client", "c-1"), ("token", "t-1")] {
            assert_eq!(
                fresh.get(name).unwrap().unwrap().value.expose_secret(),
                value
            );
        }
    }

    #[test]
    fn rotation_re_encrypts_and_survives_interruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).unwrap();
        store
            .set("a", &SecretString::from("value-a".to_string()), Some(7))
            .unwrap();
        let key_file = SqliteStore::key_file_for(&path);
        let before = std::fs::read_to_string(&key_file).unwrap();
        assert_eq!(store.rotate_key().unwrap(), 1);
        let after = std::fs::read_to_string(&key_file).unwrap();
        assert_ne!(before, after);
        assert_eq!(
            store.get("a").unwrap().unwrap().value.expose_secret(),
            "value-a"
        );
        assert_eq!(store.get("a").unwrap().unwrap().meta.expires_at, Some(7));
        drop(store);
        // The old key no longer opens the store.
        let old = StoreKey::parse(&before, "old").unwrap();
        assert!(SqliteStore::open_with(&path, old, KeySource::Env).is_err());

        // Interrupted between commit and rename: the new key waits in `.key.new`.
        let store = SqliteStore::open(&path).unwrap();
        store.rotate_key().unwrap();
        drop(store);
        let current = std::fs::read_to_string(&key_file).unwrap();
        std::fs::write(staged_key_file(&key_file), &current).unwrap();
        std::fs::write(&key_file, &after).unwrap();
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.get("a").unwrap().unwrap().value.expose_secret(),
            "value-a"
        );
        assert_eq!(std::fs::read_to_string(&key_file).unwrap(), current);
    }

    #[test]
    fn a_missing_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open(&path).unwrap();
        store
            .set("a", &SecretString::from("v".to_string()), None)
            .unwrap();
        drop(store);
        std::fs::remove_file(SqliteStore::key_file_for(&path)).unwrap();
        let err = SqliteStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("key file") && err.contains("missing"), "{err}");
    }

    #[test]
    fn huge_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let big = SecretString::from("x".repeat(MAX_VALUE_BYTES + 1));
        assert!(matches!(
            store.set("a", &big, None),
            Err(StoreError::Invalid(_))
        ));
        assert!(store.get("a").unwrap().is_none());
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        for bad in ["", "  ", "a\nb"] {
            assert!(
                store
                    .set(bad, &SecretString::from("v".to_string()), None)
                    .is_err()
            );
        }
    }
}

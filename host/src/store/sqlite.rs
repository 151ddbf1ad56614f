//! The embedded default store: one SQLite file in WAL mode.
//!
//! SQLite gives the atomic, durable, multi-process writes DESIGN §7 asks for: each `set` is
//! one transaction, `synchronous = FULL` makes a committed write survive power loss, and
//! `busy_timeout` lets the CLI write while the daemon runs. The folder is created 0700 and
//! the file 0600 before SQLite opens it; SQLite gives its `-wal`/`-shm` files the same mode.

use super::{SecretMeta, SecretStore, StoreError, StoredSecret, check_name, unix_now};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use secrecy::{ExposeSecret, SecretString};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// How long a writer waits for another process's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Schema version in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// The SQLite-backed store.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens the store at `path`, creating the folder (0700) and file (0600) if needed.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
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
                 value TEXT NOT NULL,
                 updated_at INTEGER NOT NULL,
                 expires_at INTEGER
             ) STRICT;
             PRAGMA user_version = 1;
             COMMIT;",
        )
        .map_err(|e| backend(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
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
        let conn = self.conn();
        conn.query_row(
            "SELECT value, updated_at, expires_at FROM secrets WHERE name = ?1",
            params![name],
            |row| {
                Ok(StoredSecret {
                    value: SecretString::from(row.get::<_, String>(0)?),
                    meta: SecretMeta {
                        name: name.to_string(),
                        updated_at: to_u64(row.get(1)?).unwrap_or(0),
                        expires_at: to_u64(row.get(2)?),
                    },
                })
            },
        )
        .optional()
        .map_err(|e| backend(&self.path, e))
    }

    fn set(
        &self,
        name: &str,
        value: &SecretString,
        expires_at: Option<u64>,
    ) -> Result<(), StoreError> {
        check_name(name)?;
        let expires_at = expires_at.map(|e| i64::try_from(e).unwrap_or(i64::MAX));
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        self.conn()
            .execute(
                "INSERT INTO secrets (name, value, updated_at, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value,
                     updated_at = excluded.updated_at, expires_at = excluded.expires_at",
                params![name, value.expose_secret(), now, expires_at],
            )
            .map(drop)
            .map_err(|e| backend(&self.path, e))
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

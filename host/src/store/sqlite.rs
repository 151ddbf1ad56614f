//! The embedded default store: one SQLite file in WAL mode, for the processes of one
//! machine (the CLI beside a daemon, several daemons).
//!
//! Isolation and durability: every write is one `BEGIN IMMEDIATE` transaction, so writers
//! are serialised by SQLite's write lock across processes; `synchronous = FULL` makes a
//! committed write survive power loss; readers never block writers (WAL). The folder is
//! created 0700 and the file 0600 before SQLite opens it; SQLite gives its `-wal`/`-shm`
//! files the same mode. Calls run on tokio's blocking pool, so a write waiting for another
//! process's lock (up to [`BUSY_TIMEOUT`]) never stalls the daemon's other work.
//!
//! Schema 2 (its `schema` module migrates schema 1, whose values were sealed under the master key
//! directly): `secrets` (sealed value, data key version, revision), `data_keys`,
//! `tombstones` (deletions, for the change feed), `jobs` (leases and shared plans),
//! `members` and `state` (the revision counter).

use super::crypto::{Cipher, secret_aad};
use super::keys::{DataKeys, KeySource, MasterKeys, RotationLock, WrappedKey};
use super::{
    Acquired, Changes, Durability, JobRow, JobUpdate, Lease, LeaseMode, Member, Rotation,
    SecretMeta, SecretStore, StoreError, StoredSecret, check_entry,
};
use crate::time::{unix_now, unix_now_ms};
use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use secrecy::{ExposeSecret, SecretString};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod schema;
use schema::{SCHEMA_VERSION, upgrade};

/// How long a writer waits for another process's transaction before reporting the store
/// unavailable (a retryable error).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The SQLite-backed store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `None` for a store opened read-only.
    write: Option<Mutex<Writer>>,
    /// Idle read connections. Reads run on the caller's thread (a read in WAL mode never
    /// waits for a writer, and takes microseconds); each reader takes its own connection.
    readers: Mutex<Vec<Connection>>,
    read_only: bool,
    /// Read-only, from a folder this process cannot write, with no writer active: SQLite
    /// reads the file as it is (see [`connect_read_only`]).
    immutable: bool,
    master: Option<MasterKeys>,
    key_source: KeySource,
    data: DataKeys,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("read_only", &self.inner.write.is_none())
            .finish()
    }
}

type Sql<T> = rusqlite::Result<T>;

/// The write connection and the durability its last transaction used.
struct Writer {
    conn: Connection,
    full_sync: bool,
}

/// A read connection borrowed from the pool; returned on drop.
struct Reader<'a> {
    inner: &'a Inner,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = self.inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
    }
}

/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 8;
/// A reader waits this long at most (WAL readers wait only during recovery after a crash).
const READ_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Statements through the connection's prepared-statement cache: a daemon runs the same
/// few statements thousands of times a second, and parsing SQL each time was a third of
/// the store's CPU.
trait Cached {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> Sql<usize>;
    fn row<T, P: rusqlite::Params, F: FnOnce(&rusqlite::Row<'_>) -> Sql<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> Sql<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> Sql<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T, P: rusqlite::Params, F: FnOnce(&rusqlite::Row<'_>) -> Sql<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> Sql<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// The key file used when `$TOKENWARDEN_STORE_KEY` is not set: `<store>.key`.
    pub fn key_file_for(path: &Path) -> PathBuf {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".key");
        path.with_file_name(name)
    }

    /// Opens (creating as needed) the store at `path` with the master key from
    /// `$TOKENWARDEN_STORE_KEY`, else `<store>.key`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, KeySource::env_or_file(Self::key_file_for(path)))
    }

    /// Opens (creating as needed) the store at `path` with the master key from `source`.
    /// Creating the store, its key file, its first data key and migrating an older schema
    /// happen under the database's write lock, so concurrent first uses agree.
    pub fn open_with(path: &Path, source: KeySource) -> Result<Self, StoreError> {
        prepare_file(path)?;
        let mut write = connect(path, false)?;
        let master = MasterKeys::load(&source)?;
        let master = upgrade(&mut write, path, master, &source)?;
        let store = Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                write: Some(Mutex::new(Writer {
                    conn: write,
                    full_sync: true,
                })),
                readers: Mutex::new(Vec::new()),
                read_only: false,
                immutable: false,
                master: Some(master),
                key_source: source,
                data: DataKeys::default(),
            }),
        };
        store.inner.check_master()?;
        Ok(store)
    }

    /// Opens an existing store for reading only: no file, folder or key is created, and
    /// neither write access to the store nor (for metadata) the master key is needed.
    pub fn open_read_only(path: &Path, source: KeySource) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Invalid(format!(
                "no secret store at {} yet: store a secret first (`tokenwarden secrets set NAME`)",
                path.display()
            )));
        }
        let (read, immutable) = connect_read_only(path)?;
        let version: i64 = read
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| sql_err(path, e))?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::Backend {
                store: path.display().to_string(),
                message: format!(
                    "schema version {version}, this tokenwarden reads {SCHEMA_VERSION}: open it once for writing (e.g. `tokenwarden secrets list` as its owner) to upgrade it"
                ),
            });
        }
        let master = MasterKeys::load(&source)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                write: None,
                readers: Mutex::new(vec![read]),
                read_only: true,
                immutable,
                master,
                key_source: source,
                data: DataKeys::default(),
            }),
        })
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Where the master key comes from.
    pub fn key_source(&self) -> &KeySource {
        &self.inner.key_source
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        let path = inner.path.display().to_string();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend {
                store: path,
                message: format!("a store call failed: {e}"),
            })?
    }
}

/// Creates the folder (0700) and the file (0600) ourselves, so that neither is ever, even
/// briefly, readable by others.
fn prepare_file(path: &Path) -> Result<(), StoreError> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| StoreError::Io { path: p, source }
    };
    if let Some(dir) = path.parent() {
        crate::files::create_dir(dir, 0o700).map_err(io(dir))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))
}

fn connect(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let err = |e| sql_err(path, e);
    let conn = Connection::open_with_flags(path, flags).map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
    }
    Ok(conn)
}

/// A read-only connection for a reader that may not be allowed to write anything beside
/// the store. In WAL mode SQLite needs the `-shm` file to read: it uses it read-only when
/// it exists (a writer is active, or left it), and creates it otherwise, which a reader
/// without write access to the folder cannot. Then no writer is active and the WAL holds
/// nothing the file lacks (the last writer to close checkpointed it and removed both files),
/// so the file is read as it is (`immutable=1`). Returns whether it came to that.
fn connect_read_only(path: &Path) -> Result<(Connection, bool), StoreError> {
    let first = connect(path, true).and_then(|c| {
        c.busy_timeout(READ_BUSY_TIMEOUT)
            .and_then(|()| c.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0)))
            .map(|_| c)
            .map_err(|e| sql_err(path, e))
    });
    match first {
        Ok(c) => Ok((c, false)),
        Err(e) => {
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            if Path::new(&wal).exists() {
                return Err(e);
            }
            Ok((connect_immutable(path)?, true))
        }
    }
}

fn connect_immutable(path: &Path) -> Result<Connection, StoreError> {
    // In a URI filename `%`, `?` and `#` must be escaped.
    let file: String = path
        .display()
        .to_string()
        .chars()
        .map(|c| match c {
            '%' => "%25".to_string(),
            '?' => "%3f".to_string(),
            '#' => "%23".to_string(),
            c => c.to_string(),
        })
        .collect();
    let uri = format!("file:{file}?immutable=1");
    Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sql_err(path, e))
}

fn sql_err(path: &Path, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let store = path.display().to_string();
    match e.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked | C::CannotOpen | C::SystemIoFailure) => {
            StoreError::Unavailable {
                store,
                message: e.to_string(),
            }
        }
        _ => StoreError::Backend {
            store,
            message: e.to_string(),
        },
    }
}

fn current_key(conn: &Connection) -> Sql<Option<WrappedKey>> {
    conn.row(
        "SELECT version, master_id, wrapped FROM data_keys ORDER BY version DESC LIMIT 1",
        [],
        wrapped_key,
    )
    .optional()
}

fn wrapped_key(r: &rusqlite::Row<'_>) -> Sql<WrappedKey> {
    Ok(WrappedKey {
        version: u32::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
        master_id: r.get(1)?,
        wrapped: r.get(2)?,
    })
}

fn insert_key(conn: &Connection, key: &WrappedKey) -> Sql<()> {
    conn.exec(
        "INSERT INTO data_keys (version, master_id, wrapped, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![key.version, key.master_id, key.wrapped, to_i64(unix_now())],
    )
    .map(drop)
}

/// Advances the revision counter inside a write transaction and returns the new value.
fn bump(conn: &Connection) -> Sql<u64> {
    conn.row(
        "UPDATE state SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(to_u64)
}

fn job_row(r: &rusqlite::Row<'_>) -> Sql<JobRow> {
    Ok(JobRow {
        job: r.get(0)?,
        fence: to_u64(r.get(1)?),
        lease_owner: r.get(2)?,
        lease_until_ms: to_u64(r.get(3)?),
        next_due_ms: r.get::<_, Option<i64>>(4)?.map(to_u64),
        failures: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(u32::MAX),
        last_run: r.get(6)?,
        revision: to_u64(r.get(7)?),
    })
}

const JOB_COLUMNS: &str =
    "name, fence, lease_owner, lease_until_ms, next_due_ms, failures, last_run, revision";

fn meta_row(r: &rusqlite::Row<'_>) -> Sql<SecretMeta> {
    Ok(SecretMeta {
        name: r.get(0)?,
        updated_at: to_u64(r.get(1)?),
        expires_at: r.get::<_, Option<i64>>(2)?.map(to_u64),
        revision: to_u64(r.get(3)?),
    })
}

impl Inner {
    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |e| sql_err(&self.path, e)
    }

    fn store_name(&self) -> String {
        self.path.display().to_string()
    }

    fn master(&self) -> Result<&MasterKeys, StoreError> {
        self.master.as_ref().ok_or_else(|| StoreError::WrongKey {
            store: self.store_name(),
            detail: format!(
                "reading values needs the master key ({}), which is missing",
                self.key_source.describe()
            ),
        })
    }

    fn data_key(&self, key: &WrappedKey) -> Result<Cipher, StoreError> {
        self.data
            .get(self.master()?, key)
            .map_err(|detail| StoreError::WrongKey {
                store: self.store_name(),
                detail,
            })
    }

    /// Fails early, with a clear message, when the master key does not open the current
    /// data key.
    fn check_master(&self) -> Result<(), StoreError> {
        let key = current_key(&*self.read()?).map_err(self.err())?;
        match key {
            Some(k) => self.data_key(&k).map(drop),
            None => Ok(()),
        }
    }

    /// A read connection: an idle one, or a new one.
    fn read(&self) -> Result<Reader<'_>, StoreError> {
        let idle = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None if self.immutable => connect_immutable(&self.path)?,
            None => {
                let c = connect(&self.path, self.read_only)?;
                c.busy_timeout(READ_BUSY_TIMEOUT).map_err(self.err())?;
                c
            }
        };
        Ok(Reader {
            inner: self,
            conn: Some(conn),
        })
    }

    /// Runs `f` in one durable write transaction (`BEGIN IMMEDIATE`).
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_with(Durability::Durable, f)
    }

    /// Runs `f` in one write transaction of the given durability.
    fn write_with<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(writer) = &self.write else {
            return Err(StoreError::Invalid(format!(
                "secret store {} is open read-only",
                self.store_name()
            )));
        };
        // A panic while holding the lock cannot leave SQLite half-written: every write is
        // one transaction. So a poisoned lock is safe to reuse.
        let mut writer = writer.lock().unwrap_or_else(|p| p.into_inner());
        let full = durability == Durability::Durable;
        if writer.full_sync != full {
            writer
                .conn
                .pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })
                .map_err(self.err())?;
            writer.full_sync = full;
        }
        let tx = writer
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err())?;
        let out = f(&tx)?;
        tx.commit().map_err(self.err())?;
        Ok(out)
    }

    fn get(&self, name: &str) -> Result<Option<StoredSecret>, StoreError> {
        let row = self
            .read()?
            .row(
                "SELECT s.value, s.updated_at, s.expires_at, s.revision, k.version, k.master_id, k.wrapped
                 FROM secrets s LEFT JOIN data_keys k ON k.version = s.key_version
                 WHERE s.name = ?1",
                params![name],
                |r| {
                    let key = match r.get::<_, Option<i64>>(4)? {
                        Some(v) => Some(WrappedKey {
                            version: u32::try_from(v).unwrap_or(0),
                            master_id: r.get(5)?,
                            wrapped: r.get(6)?,
                        }),
                        None => None,
                    };
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        SecretMeta {
                            name: name.to_string(),
                            updated_at: to_u64(r.get(1)?),
                            expires_at: r.get::<_, Option<i64>>(2)?.map(to_u64),
                            revision: to_u64(r.get(3)?),
                        },
                        key,
                    ))
                },
            )
            .optional()
            .map_err(self.err())?;
        let Some((sealed, meta, key)) = row else {
            return Ok(None);
        };
        let decrypt = || StoreError::Decrypt {
            name: name.to_string(),
        };
        let key = key.ok_or_else(decrypt)?;
        let plain = self
            .data_key(&key)?
            .open(&secret_aad(name), &sealed)
            .ok_or_else(decrypt)?;
        let value = String::from_utf8(plain).map_err(|_| decrypt())?;
        Ok(Some(StoredSecret {
            value: SecretString::from(value),
            meta,
        }))
    }

    fn put(
        &self,
        tx: &Connection,
        name: &str,
        value: &SecretString,
        expires_at: Option<u64>,
    ) -> Result<SecretMeta, StoreError> {
        let key = current_key(tx)
            .map_err(self.err())?
            .ok_or_else(|| StoreError::Backend {
                store: self.store_name(),
                message: "the store has no data key".into(),
            })?;
        let sealed = self
            .data_key(&key)?
            .seal(&secret_aad(name), value.expose_secret().as_bytes());
        let revision = bump(tx).map_err(self.err())?;
        let updated_at = unix_now();
        tx.exec(
            "INSERT INTO secrets (name, value, updated_at, expires_at, key_version, revision)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at,
                 expires_at = excluded.expires_at, key_version = excluded.key_version,
                 revision = excluded.revision",
            params![
                name,
                sealed,
                to_i64(updated_at),
                expires_at.map(to_i64),
                key.version,
                to_i64(revision)
            ],
        )
        .map_err(self.err())?;
        tx.exec("DELETE FROM tombstones WHERE name = ?1", [name])
            .map_err(self.err())?;
        Ok(SecretMeta {
            name: name.to_string(),
            updated_at,
            expires_at,
            revision,
        })
    }

    fn holds(&self, tx: &Connection, lease: &Lease) -> Result<bool, StoreError> {
        tx.row(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE name = ?1 AND fence = ?2 AND lease_owner = ?3)",
            params![lease.job, to_i64(lease.fence), lease.owner],
            |r| r.get(0),
        )
        .map_err(self.err())
    }

    fn job(&self, conn: &Connection, name: &str) -> Result<Option<JobRow>, StoreError> {
        conn.row(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE name = ?1"),
            [name],
            job_row,
        )
        .optional()
        .map_err(self.err())
    }

    /// A new data key, one version above the current one, wrapped with `master`.
    fn add_data_key(&self, master_id: &str, master: &Cipher) -> Result<WrappedKey, StoreError> {
        self.write(|tx| {
            let version = current_key(tx)
                .map_err(self.err())?
                .map_or(1, |k| k.version.saturating_add(1));
            let key = WrappedKey::generate(version, master_id, master);
            insert_key(tx, &key).map_err(self.err())?;
            Ok(key)
        })
    }

    /// Re-seals up to `limit` secrets that use a data key older than `new`.
    fn reseal_batch(&self, new: &WrappedKey, limit: usize) -> Result<usize, StoreError> {
        let cipher = self.data_key(new)?;
        self.write(|tx| {
            let rows: Vec<(String, Vec<u8>, WrappedKey)> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT s.name, s.value, k.version, k.master_id, k.wrapped
                         FROM secrets s JOIN data_keys k ON k.version = s.key_version
                         WHERE s.key_version < ?1 LIMIT ?2",
                    )
                    .map_err(self.err())?;
                stmt.query_map(params![new.version, to_i64(limit as u64)], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        WrappedKey {
                            version: u32::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                            master_id: r.get(3)?,
                            wrapped: r.get(4)?,
                        },
                    ))
                })
                .map_err(self.err())?
                .collect::<Sql<_>>()
                .map_err(self.err())?
            };
            for (name, sealed, key) in &rows {
                let plain = super::rotation::reseal(self.data_key(key)?, &cipher, name, sealed)?;
                tx.exec(
                    "UPDATE secrets SET value = ?2, key_version = ?3 WHERE name = ?1",
                    params![name, plain, new.version],
                )
                .map_err(self.err())?;
            }
            Ok(rows.len())
        })
    }

    /// Drops data keys older than `current` that no secret uses, and re-wraps every data
    /// key not wrapped with `rewrap`'s master key.
    fn finish_keys(&self, current: u32, rewrap: Option<(&str, &Cipher)>) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.exec(
                "DELETE FROM data_keys WHERE version < ?1
                 AND NOT EXISTS (SELECT 1 FROM secrets WHERE key_version = data_keys.version)",
                [current],
            )
            .map_err(self.err())?;
            let Some((id, cipher)) = rewrap else {
                return Ok(());
            };
            let others: Vec<WrappedKey> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT version, master_id, wrapped FROM data_keys WHERE master_id != ?1",
                    )
                    .map_err(self.err())?;
                stmt.query_map([id], wrapped_key)
                    .map_err(self.err())?
                    .collect::<Sql<_>>()
                    .map_err(self.err())?
            };
            for k in others {
                let re =
                    super::rotation::rewrap(self.master()?, &k, id, cipher, &self.store_name())?;
                tx.exec(
                    "UPDATE data_keys SET master_id = ?2, wrapped = ?3 WHERE version = ?1",
                    params![re.version, re.master_id, re.wrapped],
                )
                .map_err(self.err())?;
            }
            Ok(())
        })
    }

    fn acquire(
        &self,
        job: &str,
        owner: &str,
        ttl: Duration,
        mode: LeaseMode,
    ) -> Result<Acquired, StoreError> {
        self.write_with(Durability::Coordination, |tx| {
            let now = unix_now_ms();
            let row = self.job(tx, job)?.unwrap_or_else(|| JobRow {
                job: job.to_string(),
                ..JobRow::default()
            });
            if row.holder(now).is_some() {
                return Ok(Acquired::Held(row));
            }
            if let LeaseMode::IfUnchanged { revision } = mode
                && revision != row.revision
            {
                return Ok(Acquired::Moved(row));
            }
            let revision = bump(tx).map_err(self.err())?;
            let lease = Lease {
                job: job.to_string(),
                owner: owner.to_string(),
                fence: row.fence + 1,
                until_ms: now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            };
            tx.exec(
                "INSERT INTO jobs (name, fence, lease_owner, lease_until_ms, next_due_ms, failures, last_run, revision)
                 VALUES (?1, ?2, ?3, ?4, NULL, 0, NULL, ?5)
                 ON CONFLICT(name) DO UPDATE SET fence = excluded.fence, lease_owner = excluded.lease_owner,
                     lease_until_ms = excluded.lease_until_ms, revision = excluded.revision",
                params![job, to_i64(lease.fence), owner, to_i64(lease.until_ms), to_i64(revision)],
            )
            .map_err(self.err())?;
            Ok(Acquired::Granted { lease, row })
        })
    }

    fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        self.write_with(Durability::Coordination, |tx| {
            let until = unix_now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
            let n = tx
                .exec(
                    "UPDATE jobs SET lease_until_ms = ?4 WHERE name = ?1 AND fence = ?2 AND lease_owner = ?3",
                    params![lease.job, to_i64(lease.fence), lease.owner, to_i64(until)],
                )
                .map_err(self.err())?;
            Ok((n == 1).then(|| Lease {
                until_ms: until,
                ..lease.clone()
            }))
        })
    }

    fn release(&self, lease: &Lease, update: &JobUpdate) -> Result<Option<u64>, StoreError> {
        self.write_with(Durability::Coordination, |tx| {
            if !self.holds(tx, lease)? {
                return Ok(None);
            }
            let revision = bump(tx).map_err(self.err())?;
            tx.exec(
                "UPDATE jobs SET lease_owner = NULL, lease_until_ms = 0, next_due_ms = ?2, failures = ?3,
                     last_run = ?4, revision = ?5 WHERE name = ?1",
                params![
                    lease.job,
                    update.next_due_ms.map(to_i64),
                    i64::from(update.failures),
                    update.last_run,
                    to_i64(revision)
                ],
            )
            .map_err(self.err())?;
            Ok(Some(revision))
        })
    }

    fn changes(&self, since: u64) -> Result<Changes, StoreError> {
        let conn = self.read()?;
        let tx = conn.unchecked_transaction().map_err(self.err())?;
        let revision: u64 = tx
            .row("SELECT revision FROM state WHERE id = 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(to_u64)
            .map_err(self.err())?;
        // A revision from before the store was replaced: start over.
        let since = if since > revision { 0 } else { since };
        if revision == since {
            return Ok(Changes {
                revision,
                ..Changes::default()
            });
        }
        let since = to_i64(since);
        let collect = |sql: &str| -> Result<Vec<SecretMeta>, StoreError> {
            let mut stmt = tx.prepare_cached(sql).map_err(self.err())?;
            stmt.query_map([since], meta_row)
                .map_err(self.err())?
                .collect::<Sql<_>>()
                .map_err(self.err())
        };
        let secrets = collect(
            "SELECT name, updated_at, expires_at, revision FROM secrets WHERE revision > ?1",
        )?;
        let deleted = {
            let mut stmt = tx
                .prepare_cached("SELECT name FROM tombstones WHERE revision > ?1")
                .map_err(self.err())?;
            stmt.query_map([since], |r| r.get(0))
                .map_err(self.err())?
                .collect::<Sql<_>>()
                .map_err(self.err())?
        };
        let jobs = {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE revision > ?1"
                ))
                .map_err(self.err())?;
            stmt.query_map([since], job_row)
                .map_err(self.err())?
                .collect::<Sql<_>>()
                .map_err(self.err())?
        };
        Ok(Changes {
            revision,
            secrets,
            deleted,
            jobs,
        })
    }
}

#[async_trait]
impl SecretStore for SqliteStore {
    fn describe(&self) -> String {
        self.inner.path.display().to_string()
    }

    async fn get(&self, name: &str) -> Result<Option<StoredSecret>, StoreError> {
        self.inner.get(name)
    }

    async fn set(
        &self,
        name: &str,
        value: &SecretString,
        expires_at: Option<u64>,
    ) -> Result<SecretMeta, StoreError> {
        check_entry(name, value)?;
        let (name, value) = (name.to_string(), value.clone());
        self.call(move |s| s.write(|tx| s.put(tx, &name, &value, expires_at)))
            .await
    }

    async fn set_fenced(
        &self,
        name: &str,
        value: &SecretString,
        expires_at: Option<u64>,
        lease: &Lease,
    ) -> Result<SecretMeta, StoreError> {
        check_entry(name, value)?;
        let (name, value, lease) = (name.to_string(), value.clone(), lease.clone());
        self.call(move |s| {
            s.write(|tx| {
                if !s.holds(tx, &lease)? {
                    return Err(StoreError::Fenced { job: lease.job });
                }
                s.put(tx, &name, &value, expires_at)
            })
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.call(move |s| {
            s.write(|tx| {
                let n = tx
                    .exec("DELETE FROM secrets WHERE name = ?1", [&name])
                    .map_err(s.err())?;
                if n == 0 {
                    return Ok(false);
                }
                let revision = bump(tx).map_err(s.err())?;
                tx.exec(
                    "INSERT INTO tombstones (name, revision) VALUES (?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET revision = excluded.revision",
                    params![name, to_i64(revision)],
                )
                .map_err(s.err())?;
                Ok(true)
            })
        })
        .await
    }

    async fn list(&self) -> Result<Vec<SecretMeta>, StoreError> {
        let s = &*self.inner;
        let conn = s.read()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT name, updated_at, expires_at, revision FROM secrets ORDER BY name",
            )
            .map_err(s.err())?;
        stmt.query_map([], meta_row)
            .map_err(s.err())?
            .collect::<Sql<_>>()
            .map_err(s.err())
    }

    async fn changes(&self, since: u64) -> Result<Changes, StoreError> {
        self.inner.changes(since)
    }

    async fn rotate_key(&self, master: bool) -> Result<Rotation, StoreError> {
        super::rotation::rotate(self, master).await
    }

    async fn acquire(
        &self,
        job: &str,
        owner: &str,
        ttl: Duration,
        mode: LeaseMode,
    ) -> Result<Acquired, StoreError> {
        let (job, owner) = (job.to_string(), owner.to_string());
        self.call(move |s| s.acquire(&job, &owner, ttl, mode)).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let lease = lease.clone();
        self.call(move |s| s.renew(&lease, ttl)).await
    }

    async fn release(&self, lease: &Lease, update: &JobUpdate) -> Result<Option<u64>, StoreError> {
        let (lease, update) = (lease.clone(), update.clone());
        self.call(move |s| s.release(&lease, &update)).await
    }

    async fn jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let s = &*self.inner;
        let conn = s.read()?;
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY name"))
            .map_err(s.err())?;
        stmt.query_map([], job_row)
            .map_err(s.err())?
            .collect::<Sql<_>>()
            .map_err(s.err())
    }

    async fn job(&self, name: &str) -> Result<Option<JobRow>, StoreError> {
        let s = &*self.inner;
        s.job(&*s.read()?, name)
    }

    async fn heartbeat(&self, member: &Member, ttl: Duration) -> Result<Vec<Member>, StoreError> {
        let member = member.clone();
        self.call(move |s| {
            s.write_with(Durability::Coordination, |tx| {
                let now = to_i64(unix_now_ms());
                let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
                tx.exec(
                    "INSERT INTO members (id, started_ms, seen_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT(id) DO UPDATE SET seen_ms = excluded.seen_ms",
                    params![member.id, to_i64(member.started_ms), now],
                )
                .map_err(s.err())?;
                // Members gone for ten heartbeats' time are forgotten.
                tx.exec(
                    "DELETE FROM members WHERE seen_ms < ?1",
                    [now.saturating_sub(ttl.saturating_mul(10))],
                )
                .map_err(s.err())?;
                let mut stmt = tx
                    .prepare_cached("SELECT id, started_ms, seen_ms FROM members WHERE seen_ms >= ?1 ORDER BY id")
                    .map_err(s.err())?;
                stmt.query_map([now.saturating_sub(ttl)], |r| {
                    Ok(Member {
                        id: r.get(0)?,
                        started_ms: to_u64(r.get(1)?),
                        seen_ms: to_u64(r.get(2)?),
                    })
                })
                .map_err(s.err())?
                .collect::<Sql<_>>()
                .map_err(s.err())
            })
        })
        .await
    }

    async fn leave(&self, member: &str) -> Result<(), StoreError> {
        let member = member.to_string();
        self.call(move |s| {
            s.write_with(Durability::Coordination, |tx| {
                tx.exec("DELETE FROM members WHERE id = ?1", [&member])
                    .map_err(s.err())
                    .map(drop)
            })
        })
        .await
    }
}

#[async_trait]
impl super::rotation::KeyTable for SqliteStore {
    fn master(&self) -> Result<&MasterKeys, StoreError> {
        self.inner.master()
    }

    async fn lock(&self) -> Result<Option<RotationLock>, StoreError> {
        self.call(|s| Ok(s.master()?.lock()?)).await
    }

    async fn add_data_key(
        &self,
        master_id: &str,
        master: &Cipher,
    ) -> Result<WrappedKey, StoreError> {
        let (id, master) = (master_id.to_string(), master.clone());
        self.call(move |s| s.add_data_key(&id, &master)).await
    }

    async fn reseal_batch(&self, new: &WrappedKey, limit: usize) -> Result<usize, StoreError> {
        let new = new.clone();
        self.call(move |s| s.reseal_batch(&new, limit)).await
    }

    async fn finish_keys(
        &self,
        current: u32,
        rewrap: Option<(&str, &Cipher)>,
    ) -> Result<(), StoreError> {
        let rewrap = rewrap.map(|(id, c)| (id.to_string(), c.clone()));
        self.call(move |s| s.finish_keys(current, rewrap.as_ref().map(|(id, c)| (id.as_str(), c))))
            .await
    }
}

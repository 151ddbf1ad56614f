//! The shared store for several hosts: PostgreSQL (`[store] url`).
//!
//! The same model as the SQLite store (see the parent module): values sealed under
//! versioned data keys wrapped by the master key each process brings, a revision counter,
//! job leases and members. Every write transaction starts by locking the one-row
//! `tokenwarden_state` table that holds the revision counter: writers from every host are
//! serialised exactly as SQLite's write lock serialises them, so revisions commit in order
//! (a reader of the change feed never misses one) and a key rotation's steps cannot
//! interleave with a write. Because that lock is held until commit, the hot writes (a
//! secret, a lease grant, a lease release) are server-side functions, one round trip each,
//! and lease grants and releases commit without waiting for their WAL flush (the
//! `Coordination` durability of the parent module).
//! Lease times use the database server's clock, one clock for every host.
//!
//! Connections come from a small pool (deadpool); a connection that broke while the
//! database restarted is replaced on the next call, and every failure to reach the
//! database is [`StoreError::Unavailable`], which the daemon retries with backoff. The
//! schema is created and migrated by the program, under an advisory lock so that several
//! hosts starting at once migrate it once. Tables are prefixed `tokenwarden_`, so a shared
//! database is fine.

use super::crypto::{Cipher, secret_aad};
use super::keys::{DataKeys, KeySource, MasterKeys, RotationLock, WrappedKey};
use super::{
    Acquired, Changes, JobRow, JobUpdate, Lease, LeaseMode, Member, Rotation, SecretMeta,
    SecretStore, StoreError, StoredSecret, check_entry,
};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Transaction};
use secrecy::{ExposeSecret, SecretString};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

/// Environment variable holding the database password when the URL has none.
pub const PASSWORD_ENV: &str = "TOKENWARDEN_STORE_PASSWORD";

mod schema;
use schema::migrate;

/// How long a call waits for a pooled connection, and a new connection for the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The database server's clock, in Unix milliseconds.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The PostgreSQL-backed store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    display: String,
    master: MasterKeys,
    data: DataKeys,
    /// The newest data key as last read: values are sealed with it outside the state
    /// lock, and `tokenwarden_put` refuses a stale one, so a rotation costs one retry.
    newest: std::sync::Mutex<Option<WrappedKey>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.inner.display)
            .finish()
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The URL as shown in messages: user, host, port and database, never a password.
fn display_url(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let port = config
        .get_ports()
        .first()
        .map_or(String::new(), |p| format!(":{p}"));
    format!(
        "postgresql://{}@{host}{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

fn classify(store: &str, e: &tokio_postgres::Error) -> StoreError {
    let retryable = match e.code() {
        // No server error: the connection broke, timed out or was refused.
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57P") // operator intervention (shutdown, restart)
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        }
    };
    let message = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        // tokio-postgres puts the detail ("password missing", the I/O error) in the source.
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    };
    if retryable {
        StoreError::Unavailable {
            store: store.to_string(),
            message,
        }
    } else {
        StoreError::Backend {
            store: store.to_string(),
            message,
        }
    }
}

fn pool_error(store: &str, e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => classify(store, &e),
        other => StoreError::Unavailable {
            store: store.to_string(),
            message: other.to_string(),
        },
    }
}

fn wrapped_key(r: &Row, at: usize) -> WrappedKey {
    WrappedKey {
        version: u32::try_from(r.get::<_, i32>(at)).unwrap_or(0),
        master_id: r.get(at + 1),
        wrapped: r.get(at + 2),
    }
}

const JOB_COLUMNS: &str =
    "name, fence, lease_owner, lease_until_ms, next_due_ms, failures, last_run, revision";

fn job_row(r: &Row) -> JobRow {
    job_row_at(r, 0)
}

/// A [`JobRow`] from the [`JOB_COLUMNS`] that start at column `at`.
fn job_row_at(r: &Row, at: usize) -> JobRow {
    JobRow {
        job: r.get(at),
        fence: to_u64(r.get(at + 1)),
        lease_owner: r.get(at + 2),
        lease_until_ms: to_u64(r.get(at + 3)),
        next_due_ms: r.get::<_, Option<i64>>(at + 4).map(to_u64),
        failures: u32::try_from(r.get::<_, i32>(at + 5)).unwrap_or(0),
        last_run: r.get(at + 6),
        revision: to_u64(r.get(at + 7)),
    }
}

fn meta_row(r: &Row) -> SecretMeta {
    SecretMeta {
        name: r.get(0),
        updated_at: to_u64(r.get(1)),
        expires_at: r.get::<_, Option<i64>>(2).map(to_u64),
        revision: to_u64(r.get(3)),
    }
}

impl PgStore {
    /// Connects to `url` (libpq URL or key=value forms, including a Unix-socket host such
    /// as `?host=/run/postgresql`), migrates the schema and makes sure a data key exists.
    /// A password not in the URL comes from `$TOKENWARDEN_STORE_PASSWORD`; at most
    /// `pool_size` connections are open at once. TLS follows the URL's `sslmode`
    /// (`prefer` by default), trusting the web PKI roots built into the binary.
    pub async fn connect(
        url: &str,
        source: KeySource,
        pool_size: usize,
    ) -> Result<Self, StoreError> {
        Self::connect_with_tls(url, source, pool_size, crate::egress::tls_config()).await
    }

    /// Like [`PgStore::connect`], with TLS trusting what `tls` trusts (from
    /// [`crate::egress::Trust::client_config`]: a private CA, the system's store).
    pub async fn connect_with_tls(
        url: &str,
        source: KeySource,
        pool_size: usize,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            StoreError::Invalid(format!(
                "[store] url is not a PostgreSQL connection string: {e}"
            ))
        })?;
        if config.get_password().is_none()
            && let Ok(password) = std::env::var(PASSWORD_ENV)
        {
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("tokenwarden");
        }
        let display = display_url(&config);
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls.as_ref().clone());
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Invalid(format!("PostgreSQL connection pool: {e}")))?;
        let master = MasterKeys::load(&source)?;
        let master = migrate(&pool, &display, master, &source).await?;
        let store = Self {
            inner: Arc::new(Inner {
                newest: std::sync::Mutex::default(),
                pool,
                display,
                master,
                data: DataKeys::default(),
            }),
        };
        // Fail at start, with a clear message, when the master key does not fit.
        let client = store.inner.client().await?;
        if let Some(key) = current_key(&client, &store.inner.display).await? {
            store.inner.data_key(&key)?;
        }
        Ok(store)
    }
}

async fn current_key(
    client: &impl deadpool_postgres::GenericClient,
    store: &str,
) -> Result<Option<WrappedKey>, StoreError> {
    let row = client
        .query_opt(
            "SELECT version, master_id, wrapped FROM tokenwarden_data_keys ORDER BY version DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(|e| classify(store, &e))?;
    Ok(row.map(|r| wrapped_key(&r, 0)))
}

async fn insert_key(tx: &Transaction<'_>, key: &WrappedKey, store: &str) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "INSERT INTO tokenwarden_data_keys (version, master_id, wrapped, created_at) VALUES ($1, $2, $3, {NOW_MS})"
        ),
        &[&i32::try_from(key.version).unwrap_or(i32::MAX), &key.master_id, &key.wrapped],
    )
    .await
    .map_err(|e| classify(store, &e))
    .map(drop)
}

impl Inner {
    fn err(&self) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        |e| classify(&self.display, &e)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| pool_error(&self.display, e))
    }

    fn data_key(&self, key: &WrappedKey) -> Result<Cipher, StoreError> {
        self.data
            .get(&self.master, key)
            .map_err(|detail| StoreError::WrongKey {
                store: self.display.clone(),
                detail,
            })
    }

    /// Runs `f` in one write transaction holding the state row's lock, which serialises
    /// writers across hosts; `f` advances the revision with [`Inner::bump`] when it
    /// changes anything the change feed reports. For the rare writes (deletions, key
    /// rotation); the hot ones are functions (migration 2).
    async fn write<T>(
        &self,
        f: impl AsyncFnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(self.err())?;
        tx.execute(
            "SELECT revision FROM tokenwarden_state WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(self.err())?;
        let out = f(&tx).await?;
        tx.commit().await.map_err(self.err())?;
        Ok(out)
    }

    async fn bump(&self, tx: &Transaction<'_>) -> Result<u64, StoreError> {
        let rev: i64 = tx
            .query_one(
                "UPDATE tokenwarden_state SET revision = revision + 1 WHERE id = 1 RETURNING revision",
                &[],
            )
            .await
            .map_err(self.err())?
            .get(0);
        Ok(to_u64(rev))
    }

    /// Writes a secret, fenced by `lease` when given: sealed here with the newest data
    /// key, stored by `tokenwarden_put` in one round trip.
    async fn put(
        &self,
        name: &str,
        value: &SecretString,
        expires_at: Option<u64>,
        lease: Option<&Lease>,
    ) -> Result<SecretMeta, StoreError> {
        // A rotation can add a newer key between sealing and writing; the function says so
        // and the value is sealed again. Two tries cover a rotation in between; more means
        // the keys change faster than a write, which is not a state to loop in.
        for _ in 0..3 {
            let key = self.newest_key().await?;
            let sealed = self
                .data_key(&key)?
                .seal(&secret_aad(name), value.expose_secret().as_bytes());
            let updated_at = crate::time::unix_now();
            let row = self
                .client()
                .await?
                .query_one(
                    "SELECT o_result, o_revision FROM tokenwarden_put($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &name,
                        &sealed,
                        &to_i64(updated_at),
                        &expires_at.map(to_i64),
                        &i32::try_from(key.version).unwrap_or(i32::MAX),
                        &lease.map(|l| l.job.as_str()),
                        &lease.map(|l| to_i64(l.fence)),
                        &lease.map(|l| l.owner.as_str()),
                    ],
                )
                .await
                .map_err(self.err())?;
            match row.get::<_, &str>(0) {
                "ok" => {
                    return Ok(SecretMeta {
                        name: name.to_string(),
                        updated_at,
                        expires_at,
                        revision: to_u64(row.get(1)),
                    });
                }
                "fenced" => {
                    return Err(StoreError::Fenced {
                        job: lease.map(|l| l.job.clone()).unwrap_or_default(),
                    });
                }
                _ => *self.newest.lock().unwrap_or_else(|p| p.into_inner()) = None,
            }
        }
        Err(StoreError::Backend {
            store: self.display.clone(),
            message: "the store's data key changed during three writes in a row".into(),
        })
    }

    async fn newest_key(&self) -> Result<WrappedKey, StoreError> {
        if let Some(k) = self
            .newest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(k);
        }
        let key = current_key(&self.client().await?, &self.display)
            .await?
            .ok_or_else(|| StoreError::Backend {
                store: self.display.clone(),
                message: "the store has no data key".into(),
            })?;
        *self.newest.lock().unwrap_or_else(|p| p.into_inner()) = Some(key.clone());
        Ok(key)
    }
}

#[async_trait]
impl SecretStore for PgStore {
    fn describe(&self) -> String {
        self.inner.display.clone()
    }

    async fn get(&self, name: &str) -> Result<Option<StoredSecret>, StoreError> {
        let s = &self.inner;
        let row = s
            .client()
            .await?
            .query_opt(
                "SELECT s.value, s.updated_at, s.expires_at, s.revision, k.version, k.master_id, k.wrapped
                 FROM tokenwarden_secrets s LEFT JOIN tokenwarden_data_keys k ON k.version = s.key_version
                 WHERE s.name = $1",
                &[&name],
            )
            .await
            .map_err(s.err())?;
        let Some(row) = row else {
            return Ok(None);
        };
        let decrypt = || StoreError::Decrypt {
            name: name.to_string(),
        };
        let meta = SecretMeta {
            name: name.to_string(),
            updated_at: to_u64(row.get(1)),
            expires_at: row.get::<_, Option<i64>>(2).map(to_u64),
            revision: to_u64(row.get(3)),
        };
        if row.get::<_, Option<i32>>(4).is_none() {
            return Err(decrypt());
        }
        let key = wrapped_key(&row, 4);
        let sealed: Vec<u8> = row.get(0);
        let plain = s
            .data_key(&key)?
            .open(&secret_aad(name), &sealed)
            .ok_or_else(decrypt)?;
        let value = String::from_utf8(plain).map_err(|_| decrypt())?;
        Ok(Some(StoredSecret {
            value: SecretString::from(value),
            meta,
        }))
    }

    async fn set(
        &self,
        name: &str,
        value: &SecretString,
        expires_at: Option<u64>,
    ) -> Result<SecretMeta, StoreError> {
        check_entry(name, value)?;
        self.inner.put(name, value, expires_at, None).await
    }

    async fn set_fenced(
        &self,
        name: &str,
        value: &SecretString,
        expires_at: Option<u64>,
        lease: &Lease,
    ) -> Result<SecretMeta, StoreError> {
        check_entry(name, value)?;
        self.inner.put(name, value, expires_at, Some(lease)).await
    }

    async fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let s = &self.inner;
        s.write(async |tx| {
            let n = tx
                .execute("DELETE FROM tokenwarden_secrets WHERE name = $1", &[&name])
                .await
                .map_err(s.err())?;
            if n == 0 {
                return Ok(false);
            }
            let revision = s.bump(tx).await?;
            tx.execute(
                "INSERT INTO tokenwarden_tombstones (name, revision) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET revision = EXCLUDED.revision",
                &[&name, &to_i64(revision)],
            )
            .await
            .map_err(s.err())?;
            Ok(true)
        })
        .await
    }

    async fn list(&self) -> Result<Vec<SecretMeta>, StoreError> {
        let s = &self.inner;
        let rows = s
            .client()
            .await?
            .query(
                "SELECT name, updated_at, expires_at, revision FROM tokenwarden_secrets ORDER BY name",
                &[],
            )
            .await
            .map_err(s.err())?;
        Ok(rows.iter().map(meta_row).collect())
    }

    async fn changes(&self, since: u64) -> Result<Changes, StoreError> {
        let s = &self.inner;
        let mut client = s.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(s.err())?;
        let revision = to_u64(
            tx.query_one("SELECT revision FROM tokenwarden_state WHERE id = 1", &[])
                .await
                .map_err(s.err())?
                .get(0),
        );
        let since = if since > revision { 0 } else { since };
        if since == revision {
            return Ok(Changes {
                revision,
                ..Changes::default()
            });
        }
        let since = to_i64(since);
        let secrets = tx
            .query(
                "SELECT name, updated_at, expires_at, revision FROM tokenwarden_secrets WHERE revision > $1",
                &[&since],
            )
            .await
            .map_err(s.err())?
            .iter()
            .map(meta_row)
            .collect();
        let deleted = tx
            .query(
                "SELECT name FROM tokenwarden_tombstones WHERE revision > $1",
                &[&since],
            )
            .await
            .map_err(s.err())?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let jobs = tx
            .query(
                &format!("SELECT {JOB_COLUMNS} FROM tokenwarden_jobs WHERE revision > $1"),
                &[&since],
            )
            .await
            .map_err(s.err())?
            .iter()
            .map(job_row)
            .collect();
        tx.commit().await.map_err(s.err())?;
        Ok(Changes {
            revision,
            secrets,
            deleted,
            jobs,
        })
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
        let s = &self.inner;
        let expect = match mode {
            LeaseMode::IfUnchanged { revision } => Some(to_i64(revision)),
            LeaseMode::Any => None,
        };
        let r = s
            .client()
            .await?
            .query_one(
                "SELECT o_result, o_now, $1::text, o_fence, o_owner, o_until, o_next_due, o_failures,
                        o_last_run, o_revision
                 FROM tokenwarden_acquire($1, $2, $3, $4)",
                &[&job, &owner, &ms(ttl), &expect],
            )
            .await
            .map_err(s.err())?;
        let row = job_row_at(&r, 2);
        Ok(match r.get::<_, &str>(0) {
            "held" => Acquired::Held(row),
            "moved" => Acquired::Moved(row),
            _ => Acquired::Granted {
                lease: Lease {
                    job: job.to_string(),
                    owner: owner.to_string(),
                    fence: row.fence + 1,
                    until_ms: to_u64(r.get(1)).saturating_add(to_u64(ms(ttl))),
                },
                row,
            },
        })
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        // No revision and no state lock: a renewal changes nothing another daemon acts on
        // (a live holder is seen through the lease it was granted).
        let s = &self.inner;
        let row = s
            .client()
            .await?
            .query_opt(
                &format!(
                    "UPDATE tokenwarden_jobs SET lease_until_ms = {NOW_MS} + $4
                     WHERE name = $1 AND fence = $2 AND lease_owner = $3 RETURNING lease_until_ms"
                ),
                &[&lease.job, &to_i64(lease.fence), &lease.owner, &ms(ttl)],
            )
            .await
            .map_err(s.err())?;
        Ok(row.map(|r| Lease {
            until_ms: to_u64(r.get(0)),
            ..lease.clone()
        }))
    }

    async fn release(&self, lease: &Lease, update: &JobUpdate) -> Result<Option<u64>, StoreError> {
        let s = &self.inner;
        let row = s
            .client()
            .await?
            .query_one(
                "SELECT o_revision FROM tokenwarden_release($1, $2, $3, $4, $5, $6)",
                &[
                    &lease.job,
                    &to_i64(lease.fence),
                    &lease.owner,
                    &update.next_due_ms.map(to_i64),
                    &i32::try_from(update.failures).unwrap_or(i32::MAX),
                    &update.last_run,
                ],
            )
            .await
            .map_err(s.err())?;
        Ok(row.get::<_, Option<i64>>(0).map(to_u64))
    }

    async fn jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let s = &self.inner;
        let rows = s
            .client()
            .await?
            .query(
                &format!("SELECT {JOB_COLUMNS} FROM tokenwarden_jobs ORDER BY name"),
                &[],
            )
            .await
            .map_err(s.err())?;
        Ok(rows.iter().map(job_row).collect())
    }

    async fn job(&self, name: &str) -> Result<Option<JobRow>, StoreError> {
        let s = &self.inner;
        let row = s
            .client()
            .await?
            .query_opt(
                &format!("SELECT {JOB_COLUMNS} FROM tokenwarden_jobs WHERE name = $1"),
                &[&name],
            )
            .await
            .map_err(s.err())?;
        Ok(row.map(|r| job_row(&r)))
    }

    async fn heartbeat(&self, member: &Member, ttl: Duration) -> Result<Vec<Member>, StoreError> {
        let s = &self.inner;
        let mut client = s.client().await?;
        let tx = client.transaction().await.map_err(s.err())?;
        tx.execute(
            &format!(
                "INSERT INTO tokenwarden_members (id, started_ms, seen_ms) VALUES ($1, $2, {NOW_MS})
                 ON CONFLICT (id) DO UPDATE SET seen_ms = EXCLUDED.seen_ms"
            ),
            &[&member.id, &to_i64(member.started_ms)],
        )
        .await
        .map_err(s.err())?;
        // Members gone for ten heartbeats' time are forgotten.
        tx.execute(
            &format!("DELETE FROM tokenwarden_members WHERE seen_ms < {NOW_MS} - $1"),
            &[&ms(ttl).saturating_mul(10)],
        )
        .await
        .map_err(s.err())?;
        let rows = tx
            .query(
                &format!(
                    "SELECT id, started_ms, seen_ms FROM tokenwarden_members WHERE seen_ms >= {NOW_MS} - $1 ORDER BY id"
                ),
                &[&ms(ttl)],
            )
            .await
            .map_err(s.err())?;
        tx.commit().await.map_err(s.err())?;
        Ok(rows
            .iter()
            .map(|r| Member {
                id: r.get(0),
                started_ms: to_u64(r.get(1)),
                seen_ms: to_u64(r.get(2)),
            })
            .collect())
    }

    async fn leave(&self, member: &str) -> Result<(), StoreError> {
        let s = &self.inner;
        s.client()
            .await?
            .execute("DELETE FROM tokenwarden_members WHERE id = $1", &[&member])
            .await
            .map_err(s.err())
            .map(drop)
    }
}

#[async_trait]
impl super::rotation::KeyTable for PgStore {
    fn master(&self) -> Result<&MasterKeys, StoreError> {
        Ok(&self.inner.master)
    }

    async fn lock(&self) -> Result<Option<RotationLock>, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.master.lock())
            .await
            .map_err(|e| StoreError::Backend {
                store: self.inner.display.clone(),
                message: format!("taking the rotation lock failed: {e}"),
            })?
            .map_err(StoreError::from)
    }

    async fn add_data_key(
        &self,
        master_id: &str,
        master: &Cipher,
    ) -> Result<WrappedKey, StoreError> {
        let s = &self.inner;
        s.write(async |tx| {
            let version = current_key(tx, &s.display)
                .await?
                .map_or(1, |k| k.version.saturating_add(1));
            let key = WrappedKey::generate(version, master_id, master);
            insert_key(tx, &key, &s.display).await?;
            Ok(key)
        })
        .await
    }

    async fn reseal_batch(&self, new: &WrappedKey, limit: usize) -> Result<usize, StoreError> {
        let s = &self.inner;
        let cipher = s.data_key(new)?;
        s.write(async |tx| {
            let rows = tx
                .query(
                    "SELECT s.name, s.value, k.version, k.master_id, k.wrapped
                     FROM tokenwarden_secrets s JOIN tokenwarden_data_keys k ON k.version = s.key_version
                     WHERE s.key_version < $1 LIMIT $2",
                    &[
                        &i32::try_from(new.version).unwrap_or(i32::MAX),
                        &i64::try_from(limit).unwrap_or(i64::MAX),
                    ],
                )
                .await
                .map_err(s.err())?;
            for row in &rows {
                let name: String = row.get(0);
                let sealed: Vec<u8> = row.get(1);
                let old = s.data_key(&wrapped_key(row, 2))?;
                let resealed = super::rotation::reseal(old, &cipher, &name, &sealed)?;
                tx.execute(
                    "UPDATE tokenwarden_secrets SET value = $2, key_version = $3 WHERE name = $1",
                    &[&name, &resealed, &i32::try_from(new.version).unwrap_or(i32::MAX)],
                )
                .await
                .map_err(s.err())?;
            }
            Ok(rows.len())
        })
        .await
    }

    async fn finish_keys(
        &self,
        current: u32,
        rewrap: Option<(&str, &Cipher)>,
    ) -> Result<(), StoreError> {
        let s = &self.inner;
        s.write(async |tx| {
            tx.execute(
                "DELETE FROM tokenwarden_data_keys d WHERE d.version < $1
                 AND NOT EXISTS (SELECT 1 FROM tokenwarden_secrets s WHERE s.key_version = d.version)",
                &[&i32::try_from(current).unwrap_or(i32::MAX)],
            )
            .await
            .map_err(s.err())?;
            let Some((id, cipher)) = rewrap else {
                return Ok(());
            };
            let others = tx
                .query(
                    "SELECT version, master_id, wrapped FROM tokenwarden_data_keys WHERE master_id != $1",
                    &[&id],
                )
                .await
                .map_err(s.err())?;
            for row in &others {
                let re =
                    super::rotation::rewrap(&s.master, &wrapped_key(row, 0), id, cipher, &s.display)?;
                tx.execute(
                    "UPDATE tokenwarden_data_keys SET master_id = $2, wrapped = $3 WHERE version = $1",
                    &[
                        &i32::try_from(re.version).unwrap_or(i32::MAX),
                        &re.master_id,
                        &re.wrapped,
                    ],
                )
                .await
                .map_err(s.err())?;
            }
            Ok(())
        })
        .await
    }
}

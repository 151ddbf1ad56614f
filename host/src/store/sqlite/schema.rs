//! The SQLite store's schema and its migrations: created on first open, upgraded in place
//! under the write lock (schema 1 sealed values under the master key directly; schema 2
//! seals them under data keys).

use super::*;

/// Schema version in `PRAGMA user_version`.
pub(super) const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER,
    key_version INTEGER NOT NULL DEFAULT 0,
    revision INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS data_keys (
    version INTEGER PRIMARY KEY,
    master_id TEXT NOT NULL,
    wrapped BLOB NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS tombstones (
    name TEXT PRIMARY KEY NOT NULL,
    revision INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY NOT NULL,
    fence INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until_ms INTEGER NOT NULL,
    next_due_ms INTEGER,
    failures INTEGER NOT NULL,
    last_run TEXT,
    revision INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS members (
    id TEXT PRIMARY KEY NOT NULL,
    started_ms INTEGER NOT NULL,
    seen_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
) STRICT;
INSERT OR IGNORE INTO state (id, revision) VALUES (1, 0);
";

/// Indexes created after a schema 1 table gained its columns.
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS secrets_by_revision ON secrets (revision);
CREATE INDEX IF NOT EXISTS secrets_by_key ON secrets (key_version);
CREATE INDEX IF NOT EXISTS jobs_by_revision ON jobs (revision);
CREATE INDEX IF NOT EXISTS tombstones_by_revision ON tombstones (revision);
";

/// Schema 1's name for its key check value (sealed under the master key itself).
const LEGACY_KEY_CHECK: &str = "\0key-check";

fn table_has_column(conn: &Connection, table: &str, column: &str) -> Sql<bool> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
    let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
    for n in names {
        if n? == column {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Brings the schema to the current version and makes sure a data key exists, under the
/// write lock, and returns the master keys (created now when this is a new store). Reads
/// first, so an up-to-date store costs no write transaction to open.
pub(super) fn upgrade(
    conn: &mut Connection,
    path: &Path,
    master: Option<MasterKeys>,
    source: &KeySource,
) -> Result<MasterKeys, StoreError> {
    let err = |e| sql_err(path, e);
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Backend {
            store: path.display().to_string(),
            message: format!(
                "schema version {version} is newer than this tokenwarden understands ({SCHEMA_VERSION})"
            ),
        });
    }
    if version == SCHEMA_VERSION
        && current_key(conn).map_err(err)?.is_some()
        && let Some(master) = master
    {
        return Ok(master);
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    // Under the write lock, look for the key file again: a process that created the store
    // a moment ago wrote its key file before it committed.
    let master = match master {
        Some(m) => Some(m),
        None => MasterKeys::load(source)?,
    };
    tx.execute_batch(SCHEMA).map_err(err)?;
    for (column, decl) in [
        ("key_version", "INTEGER NOT NULL DEFAULT 0"),
        ("revision", "INTEGER NOT NULL DEFAULT 0"),
    ] {
        if !table_has_column(&tx, "secrets", column).map_err(err)? {
            tx.execute_batch(&format!("ALTER TABLE secrets ADD COLUMN {column} {decl}"))
                .map_err(err)?;
        }
    }
    tx.execute_batch(INDEXES).map_err(err)?;
    let has_rows: bool = tx
        .row("SELECT EXISTS (SELECT 1 FROM secrets)", [], |r| r.get(0))
        .map_err(err)?;
    let master = match master {
        Some(m) => m,
        // Only a store without a data key may get a new master key; one whose data key or
        // secrets exist needs the key they were sealed with.
        None if current_key(&tx).map_err(err)?.is_none() && !has_rows => {
            MasterKeys::load_or_create(source)?
        }
        None => {
            return Err(StoreError::WrongKey {
                store: path.display().to_string(),
                detail: format!(
                    "the store holds secrets but its master key ({}) is missing: restore the key file or set ${}",
                    source.describe(),
                    crate::store::KEY_ENV
                ),
            });
        }
    };
    if current_key(&tx).map_err(err)?.is_none() {
        let (id, cipher) = master.primary();
        let key = WrappedKey::generate(1, &id, &cipher);
        insert_key(&tx, &key).map_err(err)?;
        migrate_legacy_values(&tx, path, &master, source, &key)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(master)
}

/// Schema 1 sealed values under the master key itself: re-seal them under the first data
/// key. A schema 1 rotation cut off between its commit and its key-file rename left the
/// new key in `<key>.new`; it is tried too, as schema 1 did on open.
fn migrate_legacy_values(
    tx: &Connection,
    path: &Path,
    master: &MasterKeys,
    source: &KeySource,
    key: &WrappedKey,
) -> Result<(), StoreError> {
    let err = |e| sql_err(path, e);
    let rows: Vec<(String, Vec<u8>)> = {
        let mut stmt = tx
            .prepare_cached("SELECT name, value FROM secrets WHERE key_version = 0")
            .map_err(err)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(err)?
            .collect::<Sql<_>>()
            .map_err(err)?
    };
    let has_meta: bool = tx
        .row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    if rows.is_empty() && !has_meta {
        return Ok(());
    }
    let check: Option<Vec<u8>> = if has_meta {
        tx.row(
            "SELECT value FROM meta WHERE name = ?1",
            [LEGACY_KEY_CHECK],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)?
    } else {
        None
    };
    let mut candidates: Vec<Cipher> = vec![master.primary().1];
    if let KeySource::File(file) = source {
        let mut staged = file.clone().into_os_string();
        staged.push(".new");
        if let Ok(Some(k)) = MasterKeys::load(&KeySource::File(staged.into())) {
            candidates.push(k.primary().1);
        }
    }
    let legacy = candidates
        .into_iter()
        .find(|c| {
            check
                .as_ref()
                .is_none_or(|s| c.open(&secret_aad(LEGACY_KEY_CHECK), s).is_some())
        })
        .ok_or_else(|| StoreError::WrongKey {
            store: path.display().to_string(),
            detail: format!(
                "the master key ({}) does not open this store",
                source.describe()
            ),
        })?;
    let data_master = master.find(&key.master_id).expect("the key just used");
    let data = Cipher::new(
        &data_master
            .open(
                &crate::store::crypto::data_key_aad(key.version),
                &key.wrapped,
            )
            .expect("the key just wrapped"),
    )
    .expect("32 bytes");
    let revision = if rows.is_empty() {
        0
    } else {
        bump(tx).map_err(err)?
    };
    for (name, sealed) in &rows {
        let plain = zeroize::Zeroizing::new(
            legacy
                .open(&secret_aad(name), sealed)
                .ok_or_else(|| StoreError::Decrypt { name: name.clone() })?,
        );
        tx.exec(
            "UPDATE secrets SET value = ?2, key_version = ?3, revision = ?4 WHERE name = ?1",
            params![
                name,
                data.seal(&secret_aad(name), &plain),
                key.version,
                to_i64(revision)
            ],
        )
        .map_err(err)?;
    }
    tx.execute_batch("DROP TABLE IF EXISTS meta").map_err(err)?;
    tracing::info!(store = %path.display(), secrets = rows.len(), "upgraded the store to envelope encryption (schema 2)");
    Ok(())
}

//! The PostgreSQL store's schema: numbered migrations, each run once, in order, by whichever
//! host gets the advisory lock first; and the first data key.

use super::*;

/// The schema, by version: each entry runs once, in order, under the migration lock.
const MIGRATIONS: &[&str] = &["
CREATE TABLE tokenwarden_state (
    id INT PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO tokenwarden_state (id, revision) VALUES (1, 0);
CREATE TABLE tokenwarden_secrets (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT,
    key_version INT NOT NULL,
    revision BIGINT NOT NULL
);
CREATE INDEX tokenwarden_secrets_by_revision ON tokenwarden_secrets (revision);
CREATE INDEX tokenwarden_secrets_by_key ON tokenwarden_secrets (key_version);
CREATE TABLE tokenwarden_data_keys (
    version INT PRIMARY KEY,
    master_id TEXT NOT NULL,
    wrapped BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE tokenwarden_tombstones (
    name TEXT PRIMARY KEY,
    revision BIGINT NOT NULL
);
CREATE INDEX tokenwarden_tombstones_by_revision ON tokenwarden_tombstones (revision);
CREATE TABLE tokenwarden_jobs (
    name TEXT PRIMARY KEY,
    fence BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until_ms BIGINT NOT NULL,
    next_due_ms BIGINT,
    failures INT NOT NULL,
    last_run TEXT,
    revision BIGINT NOT NULL
);
CREATE INDEX tokenwarden_jobs_by_revision ON tokenwarden_jobs (revision);
CREATE TABLE tokenwarden_members (
    id TEXT PRIMARY KEY,
    started_ms BIGINT NOT NULL,
    seen_ms BIGINT NOT NULL
);
", "
-- Version 2: the hot writes as functions, one round trip each. A write holds the state
-- row's lock (which orders revisions for the change feed) from its first statement to its
-- commit, so every round trip inside it is time all hosts' writers wait; as one statement
-- in autocommit the lock is held for the function and the commit only. The rules are the
-- same as the SQLite store's (a lease is held while its owner is set and its time has not
-- passed; a fenced write needs the lease's owner and fence); the store contract tests run
-- both.
CREATE FUNCTION tokenwarden_acquire(p_job TEXT, p_owner TEXT, p_ttl_ms BIGINT, p_expect BIGINT,
    OUT o_result TEXT, OUT o_now BIGINT, OUT o_fence BIGINT, OUT o_owner TEXT, OUT o_until BIGINT,
    OUT o_next_due BIGINT, OUT o_failures INT, OUT o_last_run TEXT, OUT o_revision BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    rev BIGINT;
BEGIN
    -- A lost grant costs at most a repeated refresh: no WAL flush under the lock.
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM 1 FROM tokenwarden_state WHERE id = 1 FOR UPDATE;
    o_now := (extract(epoch from clock_timestamp()) * 1000)::bigint;
    SELECT j.fence, j.lease_owner, j.lease_until_ms, j.next_due_ms, j.failures, j.last_run, j.revision
      INTO o_fence, o_owner, o_until, o_next_due, o_failures, o_last_run, o_revision
      FROM tokenwarden_jobs j WHERE j.name = p_job;
    IF NOT FOUND THEN
        o_fence := 0; o_until := 0; o_failures := 0; o_revision := 0;
    END IF;
    IF o_owner IS NOT NULL AND o_until > o_now THEN
        o_result := 'held';
        RETURN;
    END IF;
    IF p_expect IS NOT NULL AND p_expect <> o_revision THEN
        o_result := 'moved';
        RETURN;
    END IF;
    UPDATE tokenwarden_state SET revision = revision + 1 WHERE id = 1 RETURNING revision INTO rev;
    INSERT INTO tokenwarden_jobs (name, fence, lease_owner, lease_until_ms, next_due_ms, failures, last_run, revision)
        VALUES (p_job, o_fence + 1, p_owner, o_now + p_ttl_ms, NULL, 0, NULL, rev)
        ON CONFLICT (name) DO UPDATE SET fence = EXCLUDED.fence, lease_owner = EXCLUDED.lease_owner,
            lease_until_ms = EXCLUDED.lease_until_ms, revision = EXCLUDED.revision;
    o_result := 'granted';
END $$;

CREATE FUNCTION tokenwarden_release(p_job TEXT, p_fence BIGINT, p_owner TEXT, p_next_due BIGINT,
    p_failures INT, p_last_run TEXT, OUT o_revision BIGINT)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM 1 FROM tokenwarden_state WHERE id = 1 FOR UPDATE;
    PERFORM 1 FROM tokenwarden_jobs WHERE name = p_job AND fence = p_fence AND lease_owner = p_owner;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE tokenwarden_state SET revision = revision + 1 WHERE id = 1 RETURNING revision INTO o_revision;
    UPDATE tokenwarden_jobs SET lease_owner = NULL, lease_until_ms = 0, next_due_ms = p_next_due,
        failures = p_failures, last_run = p_last_run, revision = o_revision
      WHERE name = p_job;
END $$;

-- A secret write, fenced when p_job is not null. 'key' when p_key is no longer the newest
-- data key (a rotation added one since the caller sealed the value): seal again and retry.
CREATE FUNCTION tokenwarden_put(p_name TEXT, p_value BYTEA, p_updated BIGINT, p_expires BIGINT,
    p_key INT, p_job TEXT, p_fence BIGINT, p_owner TEXT, OUT o_result TEXT, OUT o_revision BIGINT)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM tokenwarden_state WHERE id = 1 FOR UPDATE;
    IF p_key IS DISTINCT FROM (SELECT MAX(version) FROM tokenwarden_data_keys) THEN
        o_result := 'key';
        RETURN;
    END IF;
    IF p_job IS NOT NULL THEN
        PERFORM 1 FROM tokenwarden_jobs WHERE name = p_job AND fence = p_fence AND lease_owner = p_owner;
        IF NOT FOUND THEN
            o_result := 'fenced';
            RETURN;
        END IF;
    END IF;
    UPDATE tokenwarden_state SET revision = revision + 1 WHERE id = 1 RETURNING revision INTO o_revision;
    DELETE FROM tokenwarden_tombstones WHERE name = p_name;
    INSERT INTO tokenwarden_secrets (name, value, updated_at, expires_at, key_version, revision)
        VALUES (p_name, p_value, p_updated, p_expires, p_key, o_revision)
        ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at,
            expires_at = EXCLUDED.expires_at, key_version = EXCLUDED.key_version,
            revision = EXCLUDED.revision;
    o_result := 'ok';
END $$;
"];

/// The advisory lock key migrations run under (an arbitrary constant of ours).
const MIGRATION_LOCK: i64 = 0x746f_6b65_6e77_6172;

/// Applies the migrations this database has not seen, and creates the first data key (and,
/// for a new store, the master key file), all under the migration lock.
pub(super) async fn migrate(
    pool: &Pool,
    store: &str,
    master: Option<MasterKeys>,
    source: &KeySource,
) -> Result<MasterKeys, StoreError> {
    let err = |e: tokio_postgres::Error| classify(store, &e);
    let mut client = pool.get().await.map_err(|e| pool_error(store, e))?;
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tokenwarden_schema (version INT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
    )
    .await
    .map_err(err)?;
    let applied: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM tokenwarden_schema",
            &[],
        )
        .await
        .map_err(err)?
        .get(0);
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if applied > known {
        return Err(StoreError::Backend {
            store: store.to_string(),
            message: format!(
                "schema version {applied} is newer than this tokenwarden understands ({known})"
            ),
        });
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(applied).unwrap_or(0))
    {
        tx.batch_execute(sql).await.map_err(err)?;
        tx.execute(
            &format!("INSERT INTO tokenwarden_schema (version, applied_ms) VALUES ($1, {NOW_MS})"),
            &[&version],
        )
        .await
        .map_err(err)?;
        tracing::info!(%store, version, "applied a store schema migration");
    }
    // Under the lock, look for the key file again: another process on this host may have
    // created the store (and its key file) a moment ago.
    let master = match master {
        Some(m) => Some(m),
        None => MasterKeys::load(source)?,
    };
    let key = current_key(&tx, store).await?;
    let has_rows: bool = tx
        .query_one("SELECT EXISTS (SELECT 1 FROM tokenwarden_secrets)", &[])
        .await
        .map_err(err)?
        .get(0);
    let master = match master {
        Some(m) => m,
        None if key.is_none() && !has_rows => MasterKeys::load_or_create(source)?,
        None => {
            return Err(StoreError::WrongKey {
                store: store.to_string(),
                detail: format!(
                    "the store holds secrets but this host has no master key ({}): copy the key file from a host that has it, or set ${}",
                    source.describe(),
                    crate::store::KEY_ENV
                ),
            });
        }
    };
    if key.is_none() {
        let (id, cipher) = master.primary();
        insert_key(&tx, &WrappedKey::generate(1, &id, &cipher), store).await?;
    }
    tx.commit().await.map_err(err)?;
    Ok(master)
}

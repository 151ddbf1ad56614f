//! The store's contract, the same for every backend: SQLite (a real file), PostgreSQL (a
//! throwaway cluster of the test's own) and memory. Two handles on one backend stand for
//! two processes: each has its own connections and its own keys in memory.

use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;
use tokenwarden::store::{
    Acquired, JobUpdate, KeySource, LeaseMode, Member, SecretStore, StoreError,
};
use tokenwarden::{MemoryStore, PgStore, SqliteStore};
use tokenwarden_tests::PgCluster;

/// A backend and a way to open more handles on it.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(PgCluster, tempfile::TempDir),
    Memory(Arc<MemoryStore>),
}

impl Backend {
    fn all() -> Vec<Backend> {
        vec![
            Backend::Sqlite(tempfile::tempdir().unwrap()),
            Backend::Postgres(PgCluster::start(), tempfile::tempdir().unwrap()),
            Backend::Memory(Arc::default()),
        ]
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(..) => "postgres",
            Backend::Memory(_) => "memory",
        }
    }

    /// Another handle on the same store, as another process would open it.
    async fn open(&self) -> Arc<dyn SecretStore> {
        match self {
            Backend::Sqlite(dir) => {
                let path = dir.path().join("data/tw.db");
                let key = KeySource::File(SqliteStore::key_file_for(&path));
                Arc::new(SqliteStore::open_with(&path, key).unwrap())
            }
            Backend::Postgres(pg, dir) => Arc::new(
                PgStore::connect(&pg.url(), KeySource::File(dir.path().join("tw.key")), 4)
                    .await
                    .unwrap(),
            ),
            Backend::Memory(m) => m.clone(),
        }
    }
}

fn v(text: &str) -> SecretString {
    SecretString::from(text.to_string())
}

async fn value(store: &dyn SecretStore, name: &str) -> Option<String> {
    store
        .get(name)
        .await
        .unwrap()
        .map(|s| s.value.expose_secret().to_string())
}

#[tokio::test]
async fn values_metadata_deletion_and_the_change_feed() {
    for backend in Backend::all() {
        let b = backend.name();
        let a = backend.open().await;
        let other = backend.open().await;
        let start = a.changes(0).await.unwrap().revision;
        let m1 = a.set("Client Secret", &v("s-1"), None).await.unwrap();
        let m2 = a
            .set("Token", &v("t-1"), Some(4_102_444_800))
            .await
            .unwrap();
        assert!(m2.revision > m1.revision, "{b}: revisions advance");
        assert_eq!(value(&*other, "Token").await.as_deref(), Some("t-1"), "{b}");
        assert_eq!(
            other.get("Token").await.unwrap().unwrap().meta.expires_at,
            Some(4_102_444_800)
        );
        let names: Vec<_> = other
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["Client Secret", "Token"], "{b}");

        // Another process sees every write since its cursor, once.
        let seen = other.changes(start).await.unwrap();
        let mut changed: Vec<_> = seen.secrets.iter().map(|m| m.name.as_str()).collect();
        changed.sort_unstable();
        assert_eq!(changed, ["Client Secret", "Token"], "{b}");
        let quiet = other.changes(seen.revision).await.unwrap();
        assert!(
            quiet.secrets.is_empty() && quiet.revision == seen.revision,
            "{b}"
        );
        a.set("Token", &v("t-2"), None).await.unwrap();
        assert!(a.delete("Client Secret").await.unwrap(), "{b}");
        assert!(
            !a.delete("Client Secret").await.unwrap(),
            "{b}: gone already"
        );
        let next = other.changes(seen.revision).await.unwrap();
        assert_eq!(
            next.secrets
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>(),
            ["Token"],
            "{b}"
        );
        assert_eq!(next.deleted, ["Client Secret"], "{b}");
        assert!(value(&*other, "Client Secret").await.is_none(), "{b}");
        // Set again after a deletion: no longer reported deleted.
        a.set("Client Secret", &v("s-2"), None).await.unwrap();
        let after = other.changes(next.revision).await.unwrap();
        assert!(after.deleted.is_empty(), "{b}");
        // A cursor from the future (a replaced store) starts over.
        let all = other.changes(u64::MAX).await.unwrap();
        assert_eq!(all.secrets.len(), 2, "{b}");
    }
}

#[tokio::test]
async fn leases_are_exclusive_compare_and_set_and_fence_late_writers() {
    for backend in Backend::all() {
        let b = backend.name();
        let a = backend.open().await;
        let other = backend.open().await;
        let ttl = Duration::from_millis(400);
        let Acquired::Granted { lease: la, row } = a
            .acquire(
                "graph",
                "daemon-a",
                ttl,
                LeaseMode::IfUnchanged { revision: 0 },
            )
            .await
            .unwrap()
        else {
            panic!("{b}: the first lease is granted");
        };
        assert_eq!(row.revision, 0, "{b}: a job never run has no row yet");
        let planned_from = a.job("graph").await.unwrap().unwrap().revision;
        // Held while live, whatever the mode.
        for mode in [LeaseMode::Any, LeaseMode::IfUnchanged { revision: 0 }] {
            match other.acquire("graph", "daemon-b", ttl, mode).await.unwrap() {
                Acquired::Held(row) => assert_eq!(row.lease_owner.as_deref(), Some("daemon-a")),
                x => panic!("{b}: {x:?}"),
            }
        }
        // The holder pauses past its lease; another process takes the job over.
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        let Acquired::Granted { lease: lb, .. } = other
            .acquire("graph", "daemon-b", ttl, LeaseMode::Any)
            .await
            .unwrap()
        else {
            panic!("{b}: a lapsed lease is granted to another");
        };
        assert!(lb.fence > la.fence, "{b}");
        other
            .set_fenced("Token", &v("newer"), None, &lb)
            .await
            .unwrap();
        // The paused holder wakes up: its write and its release are refused.
        let late = a.set_fenced("Token", &v("stale"), None, &la).await;
        assert!(
            matches!(late, Err(StoreError::Fenced { .. })),
            "{b}: {late:?}"
        );
        assert_eq!(
            a.release(&la, &JobUpdate::default()).await.unwrap(),
            None,
            "{b}"
        );
        assert_eq!(a.renew(&la, ttl).await.unwrap(), None, "{b}");
        assert_eq!(value(&*a, "Token").await.as_deref(), Some("newer"), "{b}");
        // The holder renews and releases, recording the run; the row moves.
        let renewed = other.renew(&lb, ttl).await.unwrap().expect("renewed");
        assert!(renewed.until_ms >= lb.until_ms, "{b}");
        let update = JobUpdate {
            next_due_ms: Some(42_000),
            failures: 0,
            last_run: Some("{}".into()),
        };
        let rev = other
            .release(&lb, &update)
            .await
            .unwrap()
            .expect("released");
        let row = a.job("graph").await.unwrap().unwrap();
        assert_eq!(
            (row.revision, row.next_due_ms, row.lease_owner),
            (rev, Some(42_000), None)
        );
        // A plan made before that run is stale: the compare-and-set says so.
        match a
            .acquire(
                "graph",
                "daemon-a",
                ttl,
                LeaseMode::IfUnchanged {
                    revision: planned_from,
                },
            )
            .await
            .unwrap()
        {
            Acquired::Moved(row) => assert_eq!(row.revision, rev, "{b}"),
            x => panic!("{b}: {x:?}"),
        }
        // A plan made from the current row is granted.
        assert!(matches!(
            a.acquire(
                "graph",
                "daemon-a",
                ttl,
                LeaseMode::IfUnchanged { revision: rev }
            )
            .await
            .unwrap(),
            Acquired::Granted { .. }
        ));
        let jobs = other.jobs().await.unwrap();
        assert_eq!(jobs.len(), 1, "{b}");
        assert_eq!(jobs[0].lease_owner.as_deref(), Some("daemon-a"), "{b}");
    }
}

#[tokio::test]
async fn members_are_seen_until_they_leave_or_lapse() {
    for backend in Backend::all() {
        let b = backend.name();
        let s = backend.open().await;
        let ttl = Duration::from_millis(500);
        let m = |id: &str| Member {
            id: id.into(),
            started_ms: 1,
            seen_ms: 0,
        };
        s.heartbeat(&m("x"), ttl).await.unwrap();
        let seen = s.heartbeat(&m("y"), ttl).await.unwrap();
        assert_eq!(
            seen.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["x", "y"],
            "{b}"
        );
        s.leave("x").await.unwrap();
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        let seen = s.heartbeat(&m("z"), ttl).await.unwrap();
        assert_eq!(
            seen.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["z"],
            "{b}"
        );
    }
}

/// Rotations racing each other and racing writers, from two handles: every secret reads
/// back exactly, from a third handle opened afterwards.
#[tokio::test]
async fn rotations_racing_rotations_and_writes_lose_nothing() {
    for backend in Backend::all() {
        if matches!(backend, Backend::Memory(_)) {
            continue;
        }
        let b = backend.name();
        let a = backend.open().await;
        let other = backend.open().await;
        for i in 0..600 {
            a.set(&format!("s{i}"), &v(&format!("value {i}")), None)
                .await
                .unwrap();
        }
        let mut tasks = tokio::task::JoinSet::new();
        for round in 0..3 {
            for store in [a.clone(), other.clone()] {
                tasks.spawn(async move { store.rotate_key(false).await.map(drop) });
            }
            let store = other.clone();
            tasks.spawn(async move {
                for i in 0..50 {
                    store
                        .set(&format!("w{i}"), &v(&format!("write {round} {i}")), None)
                        .await?;
                }
                Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        let fresh = backend.open().await;
        for i in 0..600 {
            assert_eq!(
                value(&*fresh, &format!("s{i}")).await,
                Some(format!("value {i}")),
                "{b}"
            );
        }
        for i in 0..50 {
            let got = value(&*fresh, &format!("w{i}")).await.unwrap();
            assert!(
                got.starts_with("write ") && got.ends_with(&format!(" {i}")),
                "{b}: {got}"
            );
        }
        // A master-key rotation: every handle still reads, and so does a new one.
        let r = a.rotate_key(true).await.unwrap();
        assert!(r.master_key_id.is_some(), "{b}");
        assert_eq!(
            value(&*other, "s7").await.as_deref(),
            Some("value 7"),
            "{b}"
        );
        other
            .set("after", &v("master rotation"), None)
            .await
            .unwrap();
        let fresh = backend.open().await;
        assert_eq!(
            value(&*fresh, "after").await.as_deref(),
            Some("master rotation"),
            "{b}"
        );
        assert_eq!(
            value(&*fresh, "s599").await.as_deref(),
            Some("value 599"),
            "{b}"
        );
    }
}

#[tokio::test]
async fn a_missing_or_wrong_master_key_is_a_clear_error_never_a_new_key() {
    // SQLite: the key file beside the store.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let file = SqliteStore::key_file_for(&path);
    let store = SqliteStore::open_with(&path, KeySource::File(file.clone())).unwrap();
    store.set("a", &v("1"), None).await.unwrap();
    drop(store);
    let kept = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let err = SqliteStore::open_with(&path, KeySource::File(file.clone())).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(
        !file.exists(),
        "no new key was made for a store that holds secrets"
    );
    let other = dir.path().join("other.key");
    std::fs::write(&other, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
    let err = SqliteStore::open_with(&path, KeySource::File(other)).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");
    std::fs::write(&file, kept).unwrap();
    let store = SqliteStore::open_with(&path, KeySource::File(file)).unwrap();
    assert_eq!(value(&store, "a").await.as_deref(), Some("1"));

    // PostgreSQL: a host without the master key cannot read, and says what to do.
    let pg = PgCluster::start();
    let keys = tempfile::tempdir().unwrap();
    let one = PgStore::connect(&pg.url(), KeySource::File(keys.path().join("a.key")), 2)
        .await
        .unwrap();
    one.set("a", &v("1"), None).await.unwrap();
    let err = PgStore::connect(&pg.url(), KeySource::File(keys.path().join("b.key")), 2)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongKey { .. }) && err.to_string().contains("copy the key file"),
        "{err}"
    );
    assert!(!keys.path().join("b.key").exists());
}

/// A PostgreSQL server whose certificate a private CA signed, reachable only over TLS: the
/// store opened as the CLI and daemon open it trusts it only when `[tls] ca_file` names
/// the CA, as the token endpoints' connections do, and says why when it does not.
#[tokio::test]
async fn a_postgres_store_over_tls_trusts_what_the_tls_section_names() {
    use tokenwarden::egress::{Roots, Trust};
    use tokenwarden::store::{Access, StoreBackend, StoreConfig};
    let pki = tokenwarden_tests::loopback_cert();
    let pg = PgCluster::start_tls(&pki.cert_pem, &pki.key_pem);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let mut config = StoreConfig::sqlite(dir.path().join("unused.db"));
    config.backend = StoreBackend::Postgres(pg.tls_url());
    config.key = KeySource::File(dir.path().join("tw.key"));

    let Err(err) = tokenwarden::store::open(&config, &Trust::default(), Access::ReadWrite).await
    else {
        panic!("the private CA is not trusted by default");
    };
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let trust = Trust {
        roots: Roots::WebPki,
        ca_file: Some(ca_file),
    };
    let store = tokenwarden::store::open(&config, &trust, Access::ReadWrite)
        .await
        .unwrap();
    store.set("over tls", &v("1"), None).await.unwrap();
    assert_eq!(value(&*store, "over tls").await.as_deref(), Some("1"));
    // The same server without TLS on TCP is refused: the store did use TLS.
    let plain = pg.tls_url().replace("sslmode=require", "sslmode=disable");
    let Err(err) = PgStore::connect(&plain, KeySource::File(dir.path().join("tw.key")), 1).await
    else {
        panic!("plain TCP is refused");
    };
    assert!(err.to_string().contains("no encryption"), "{err}");
}

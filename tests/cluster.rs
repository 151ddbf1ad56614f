//! Several processes on one store, for real: daemons sharing an SQLite file, the CLI beside
//! a daemon, and three daemons on a PostgreSQL cluster of the test's own that lose a
//! member to SIGKILL and then the database itself for a while. The emulator counts token
//! requests per tenant (one tenant per job), which is how "exactly once" is checked: two
//! refreshes of one job closer together than any schedule allows would be a double.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokenwarden::emulator::{Emulator, EmulatorConfig};
use tokenwarden::store::KeySource;
use tokenwarden::{PgStore, SecretStore, SqliteStore};
use tokenwarden_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_tokenwarden-under-test");

/// A tenant GUID per job.
fn tenant(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

async fn emulator(jobs: usize, lifetime: Duration) -> Emulator {
    start_emulator_with(EmulatorConfig {
        tenants: (0..jobs).map(tenant).collect(),
        token_lifetime: lifetime,
        ..EmulatorConfig::default()
    })
    .await
}

/// A config with `jobs` jobs against `emu`, fast timings, and `store` as `[store]` keys.
fn config(dir: &Path, emu: &Emulator, jobs: usize, store: &str) -> PathBuf {
    let mut text = format!(
        "[store]\n{store}\nlease_ttl = \"2s\"\npoll_interval = \"200ms\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [daemon]\nrefresh_lead = \"1s\"\nmin_interval = \"1s\"\nretry_initial = \"200ms\"\nretry_max = \"2s\"\n\
         permanent_retry_initial = \"1s\"\npermanent_retry_max = \"4s\"\n"
    );
    for i in 0..jobs {
        text.push_str(&job_toml(
            &format!("j{i}"),
            &emu.authority(),
            &format!("Tenant {i}"),
            &format!("Token {i}"),
        ));
    }
    let path = dir.join("tokenwarden.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn seed(store: &dyn SecretStore, jobs: usize) {
    seed_client_secrets(store).await;
    for i in 0..jobs {
        store
            .set(
                &format!("Tenant {i}"),
                &secrecy::SecretString::from(tenant(i)),
                None,
            )
            .await
            .unwrap();
    }
}

/// The gaps between consecutive token issues of one tenant, in milliseconds.
fn gaps(times: &[SystemTime]) -> Vec<u128> {
    times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap_or_default().as_millis())
        .collect()
}

#[tokio::test]
async fn two_daemons_on_one_sqlite_store_refresh_each_job_once() {
    let jobs = 3;
    let emu = emulator(jobs, Duration::from_secs(4)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &emu, jobs, "path = \"data/tw.db\"");
    seed(
        &SqliteStore::open(&dir.path().join("data/tw.db")).unwrap(),
        jobs,
    )
    .await;
    let a = DaemonProc::spawn(BIN, &cfg, &[]).await;
    let b = DaemonProc::spawn(BIN, &cfg, &[]).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut runs = [0u64, 0];
    for (k, d) in [&a, &b].into_iter().enumerate() {
        let jobs = d.get("/jobs").await.json();
        for j in jobs.as_array().unwrap() {
            runs[k] += j["runs"].as_u64().unwrap();
            assert!(j.get("lease_holder").is_some(), "{j}");
        }
    }
    for i in 0..jobs {
        let times = emu.state.issue_times(&tenant(i));
        let g = gaps(&times);
        eprintln!("job j{i}: {} tokens, gaps {g:?} ms", times.len());
        assert!(times.len() >= 5, "j{i} kept being refreshed: {g:?}");
        // 4 s tokens are refreshed at half-life (1.8 to 2 s with jitter, `refresh_lead` is
        // 1 s): a double would come within a hand-off of the first.
        assert!(
            g.iter().all(|&ms| ms >= 1_500),
            "j{i}: a refresh ran twice: {g:?}"
        );
        assert!(
            g.iter().all(|&ms| ms < 4_000),
            "j{i}: the token expired between refreshes: {g:?}"
        );
    }
    eprintln!("runs by daemon: {runs:?}");

    // A manual trigger on each daemon at once: one run, whose record both return.
    let before = emu.state.issue_times(&tenant(0)).len();
    let (ra, rb) = tokio::join!(
        tokenwarden::cli::client::post(a.admin, "/jobs/j0/refresh", None),
        tokenwarden::cli::client::post(b.admin, "/jobs/j0/refresh", None)
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(
        (ra.status, rb.status),
        (200, 200),
        "{} {}",
        ra.body,
        rb.body
    );
    assert_eq!(
        ra.json()["started_at_ms"],
        rb.json()["started_at_ms"],
        "the same run"
    );
    assert_eq!(emu.state.issue_times(&tenant(0)).len(), before + 1);
    assert!(!a.log().contains("\"level\":\"ERROR\"") && !b.log().contains("\"level\":\"ERROR\""));
}

/// `[store] url` without a password: it comes from `$TOKENWARDEN_STORE_PASSWORD`.
#[tokio::test]
async fn the_postgres_password_comes_from_the_environment() {
    let pg = PgCluster::start();
    pg.add_password_user("tw", "pg-canary-password");
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "postgresql://tw@/tokenwarden?host={}",
        pg.socket_dir().display()
    );
    let cfg = dir.path().join("tokenwarden.toml");
    std::fs::write(&cfg, format!("[store]\nurl = \"{url}\"\n")).unwrap();
    let run = async |password: Option<&str>| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(["secrets", "list", "--config"]).arg(&cfg);
        cmd.env_remove("TOKENWARDEN_STORE_PASSWORD");
        if let Some(p) = password {
            cmd.env("TOKENWARDEN_STORE_PASSWORD", p);
        }
        cmd.output().await.unwrap()
    };
    let denied = run(None).await;
    assert_eq!(denied.status.code(), Some(1));
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        err.contains("password") && !err.contains("pg-canary-password"),
        "{err}"
    );
    let ok = run(Some("pg-canary-password")).await;
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test]
async fn a_daemon_follows_what_the_cli_writes_and_rearms_on_a_fixed_secret() {
    let emu = emulator(1, Duration::from_secs(120)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &emu, 1, "path = \"data/tw.db\"");
    // Async: the emulator answers from this test's own runtime.
    let cli = async |args: &[&str], stdin: Option<&str>| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .arg("--config")
            .arg(&cfg)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use tokio::io::AsyncWriteExt;
        let mut input = child.stdin.take().unwrap();
        input
            .write_all(stdin.unwrap_or("").as_bytes())
            .await
            .unwrap();
        drop(input);
        child.wait_with_output().await.unwrap()
    };
    // The daemon starts before any credential exists: not ready, failing permanently.
    let d = DaemonProc::spawn(BIN, &cfg, &[]).await;
    assert_eq!(d.get("/readyz").await.status, 503);
    for (name, value) in [
        (CLIENT_ID, tokenwarden::emulator::DEMO_CLIENT_ID.to_string()),
        (
            CLIENT_SECRET,
            tokenwarden::emulator::DEMO_CLIENT_SECRET.to_string(),
        ),
        ("Tenant 0", tenant(0)),
    ] {
        assert_eq!(
            cli(&["secrets", "set", name], Some(&value))
                .await
                .status
                .code(),
            Some(0)
        );
    }
    // Setting the credentials re-arms the failing job at once.
    eventually(
        Duration::from_secs(5),
        "ready after the credentials were set",
        || async { d.get("/readyz").await.status == 200 },
    )
    .await;
    let job = d.get("/jobs/j0").await.json();
    assert_eq!(job["last_run"]["trigger"], "secret-changed", "{job}");

    // A refresh by the CLI: the daemon adopts its record and its plan within a poll.
    let before = emu.state.stats().tokens_issued;
    let out = cli(&["refresh", "j0"], None).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(emu.state.stats().tokens_issued, before + 1);
    eventually(
        Duration::from_secs(3),
        "the daemon shows the CLI's run",
        || async {
            let job = d.get("/jobs/j0").await.json();
            job["last_run"]["trigger"] == "manual"
                && !job["last_run"]["runner"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("/{}/", d.pid))
        },
    )
    .await;

    // A wrong secret makes the CLI's refresh fail permanently; the daemon sees the failure
    // and waits at the permanent pace, until the secret is fixed: then it runs at once.
    assert_eq!(
        cli(&["secrets", "set", CLIENT_SECRET], Some("wrong"))
            .await
            .status
            .code(),
        Some(0)
    );
    assert_eq!(cli(&["refresh", "j0"], None).await.status.code(), Some(4));
    eventually(
        Duration::from_secs(3),
        "the daemon sees the failure",
        || async { d.get("/jobs/j0").await.json()["consecutive_failures"] == 1 },
    )
    .await;
    let fixed_at = emu.state.stats().tokens_issued;
    assert_eq!(
        cli(
            &["secrets", "set", CLIENT_SECRET],
            Some(tokenwarden::emulator::DEMO_CLIENT_SECRET)
        )
        .await
        .status
        .code(),
        Some(0)
    );
    eventually(
        Duration::from_secs(3),
        "re-armed by the fixed secret",
        || async { emu.state.stats().tokens_issued > fixed_at },
    )
    .await;
    eventually(
        Duration::from_secs(3),
        "the daemon's own run succeeded",
        || async {
            let job = d.get("/jobs/j0").await.json();
            job["consecutive_failures"] == 0 && job["last_run"]["trigger"] == "secret-changed"
        },
    )
    .await;
}

#[tokio::test]
async fn three_daemons_on_postgres_fail_over_and_survive_a_database_restart() {
    let jobs = 4;
    let lifetime = Duration::from_secs(10);
    let emu = emulator(jobs, lifetime).await;
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("tw.key");
    let cfg = config(
        dir.path(),
        &emu,
        jobs,
        &format!("url = \"{}\"\nkey_file = \"tw.key\"", pg.url()),
    );
    {
        let store = PgStore::connect(&pg.url(), KeySource::File(key.clone()), 2)
            .await
            .unwrap();
        seed(&store, jobs).await;
    }
    let mut daemons = Vec::new();
    for _ in 0..3 {
        daemons.push(DaemonProc::spawn(BIN, &cfg, &[]).await);
    }
    // Watch continuity all along: some token of every job must be valid at every moment.
    let watch = {
        let state = emu.state.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut gaps = Vec::new();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if started.elapsed() < Duration::from_secs(3) {
                    continue; // catch-up at start
                }
                for i in 0..jobs {
                    if !state.has_valid_token(&tenant(i)) {
                        gaps.push((i, started.elapsed()));
                    }
                }
                if started.elapsed() > Duration::from_secs(45) {
                    return gaps;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(8)).await;

    // SIGKILL the daemon that ran j0 last.
    let runner = daemons[0].get("/jobs/j0").await.json()["last_run"]["runner"]
        .as_str()
        .unwrap()
        .to_string();
    let victim = daemons
        .iter()
        .position(|d| runner.contains(&format!("/{}/", d.pid)))
        .expect("the runner is one of ours");
    daemons[victim].signal("-KILL");
    let killed_at = SystemTime::now();
    let survivors: Vec<DaemonProc> = daemons
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, d)| d)
        .collect();
    tokio::time::sleep(Duration::from_secs(12)).await;
    for i in 0..jobs {
        let after: Vec<_> = emu
            .state
            .issue_times(&tenant(i))
            .into_iter()
            .filter(|t| *t > killed_at)
            .collect();
        assert!(after.len() >= 2, "j{i} refreshed after the kill: {after:?}");
    }

    // The database goes away for three seconds and comes back.
    pg.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.start_again();
    let restarted = SystemTime::now();
    for i in 0..jobs {
        eventually(
            Duration::from_secs(15),
            "refreshes resume after the restart",
            || async {
                emu.state
                    .issue_times(&tenant(i))
                    .iter()
                    .any(|t| *t > restarted)
            },
        )
        .await;
    }
    for d in &survivors {
        eventually(
            Duration::from_secs(10),
            "every daemon ready again",
            || async { d.get("/readyz").await.status == 200 },
        )
        .await;
        let metrics = d.get("/metrics").await.body;
        assert!(
            metrics.contains("tokenwarden_store_errors_total"),
            "{metrics}"
        );
    }
    for i in 0..jobs {
        let times = emu.state.issue_times(&tenant(i));
        let g = gaps(&times);
        eprintln!("job j{i}: {} tokens, gaps {g:?} ms", times.len());
        assert!(
            g.iter().all(|&ms| ms >= 1_000),
            "j{i}: a due refresh ran twice: {g:?}"
        );
    }
    let expired = watch.await.unwrap();
    assert!(
        expired.is_empty(),
        "a job was left without a valid token: {expired:?}"
    );
}

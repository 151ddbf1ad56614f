//! The store's lifecycle under any interleaving of real processes: dozens of `secrets set`
//! on a store that does not exist yet, `rotate-key` racing `rotate-key`, `set` and a
//! running daemon, and SIGKILLs in the middle of rotations. After each trial every
//! secret must read back exactly.

use secrecy::ExposeSecret;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokenwarden::SecretStore;
use tokenwarden::store::KeySource;
use tokenwarden_tests::*;
use tokio::io::AsyncWriteExt;

const BIN: &str = env!("CARGO_BIN_EXE_tokenwarden-under-test");

fn config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("tokenwarden.toml");
    std::fs::write(&path, format!("[store]\npath = \"data/tw.db\"\n{extra}")).unwrap();
    path
}

/// Starts `tokenwarden ARGS --config CONFIG` with `stdin` written to it.
async fn start(config: &Path, args: &[&str], stdin: Option<String>) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("TOKENWARDEN_STORE_KEY")
        .env_remove("TOKENWARDEN_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await.unwrap();
    }
    drop(input);
    child
}

async fn finish(child: tokio::process::Child, what: &str) {
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn open(dir: &Path) -> tokenwarden::SqliteStore {
    let path = dir.join("data/tw.db");
    tokenwarden::SqliteStore::open_with(
        &path,
        KeySource::File(tokenwarden::SqliteStore::key_file_for(&path)),
    )
    .expect("the store opens")
}

async fn read(store: &dyn SecretStore, name: &str) -> String {
    store
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .unwrap_or_else(|| panic!("{name} is missing"))
        .value
        .expose_secret()
        .to_string()
}

/// Twenty-four `secrets set` at once on a store that does not exist yet, six times: the
/// processes agree on one key, and every value reads back.
#[tokio::test]
async fn concurrent_first_writes_agree_on_one_store_and_key() {
    for trial in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "");
        let mut children = Vec::new();
        for i in 0..24 {
            let value = format!("value {trial}/{i}");
            children
                .push(start(&cfg, &["secrets", "set", &format!("name {i}")], Some(value)).await);
        }
        for (i, c) in children.into_iter().enumerate() {
            finish(c, &format!("trial {trial}, set {i}")).await;
        }
        let key = std::fs::read_to_string(dir.path().join("data/tw.db.key")).unwrap();
        assert_eq!(key.lines().count(), 1, "one master key");
        let store = open(dir.path());
        for i in 0..24 {
            assert_eq!(
                read(&store, &format!("name {i}")).await,
                format!("value {trial}/{i}")
            );
        }
    }
}

/// `rotate-key` racing `rotate-key` (with and without `--master`) and `set`, beside a
/// daemon refreshing a short-lived token, four times over: nothing is lost, and the daemon
/// keeps storing tokens the server accepts.
#[tokio::test]
async fn rotations_race_rotations_writes_and_a_daemon_without_loss() {
    let emu = start_emulator_with(tokenwarden::emulator::EmulatorConfig {
        token_lifetime: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[daemon]\nmin_interval = \"1s\"\n{}",
            job_toml("graph", &emu.authority(), TENANT_ID, ACCESS_TOKEN)
        ),
    );
    {
        let store = open(dir.path());
        seed_client_secrets(&store).await;
        for i in 0..5 {
            store
                .set(
                    &format!("kept {i}"),
                    &secrecy::SecretString::from(format!("kept value {i}")),
                    None,
                )
                .await
                .unwrap();
        }
    }
    let daemon = DaemonProc::spawn(BIN, &cfg, &[]).await;
    for trial in 0..4 {
        let mut children = Vec::new();
        for r in 0..3 {
            let args: &[&str] = if (trial + r) % 3 == 0 {
                &["secrets", "rotate-key", "--master"]
            } else {
                &["secrets", "rotate-key"]
            };
            children.push((format!("rotate {r}"), start(&cfg, args, None).await));
        }
        for i in 0..10 {
            let value = format!("written in trial {trial} #{i}");
            children.push((
                format!("set {i}"),
                start(
                    &cfg,
                    &["secrets", "set", &format!("written {i}")],
                    Some(value),
                )
                .await,
            ));
        }
        for (what, c) in children {
            finish(c, &format!("trial {trial}: {what}")).await;
        }
        let store = open(dir.path());
        for i in 0..5 {
            assert_eq!(
                read(&store, &format!("kept {i}")).await,
                format!("kept value {i}")
            );
        }
        for i in 0..10 {
            assert_eq!(
                read(&store, &format!("written {i}")).await,
                format!("written in trial {trial} #{i}")
            );
        }
        assert_eq!(
            read(&store, CLIENT_SECRET).await,
            tokenwarden::emulator::DEMO_CLIENT_SECRET
        );
    }
    // The daemon stored tokens throughout, sealed so that a fresh process reads them.
    let before = emu.state.stats().tokens_issued;
    eventually(
        Duration::from_secs(10),
        "the daemon refreshes after the rotations",
        || async { emu.state.stats().tokens_issued > before + 1 },
    )
    .await;
    let token = read(&open(dir.path()), ACCESS_TOKEN).await;
    assert!(emu.state.accepts(&token) || emu.state.stats().tokens_issued > before + 1);
    assert!(
        !daemon.log().contains("\"level\":\"ERROR\""),
        "{}",
        daemon.log()
    );
}

/// `rotate-key` killed with SIGKILL at random points, twenty times, half of them replacing
/// the master key: the store always opens and every secret reads back exactly; a last
/// rotation finishes the job.
#[tokio::test]
async fn sigkill_in_the_middle_of_rotations_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let n = 3000;
    {
        let store = open(dir.path());
        for i in 0..n {
            store
                .set(
                    &format!("s{i}"),
                    &secrecy::SecretString::from(format!("v{i}")),
                    None,
                )
                .await
                .unwrap();
        }
    }
    // How long a whole rotation takes here, so that the kills land inside one.
    let timed = std::time::Instant::now();
    finish(
        start(&cfg, &["secrets", "rotate-key"], None).await,
        "timed rotation",
    )
    .await;
    let whole = timed.elapsed().as_millis() as u64;
    let mut killed_mid_way = 0;
    for round in 0..20u64 {
        let args: &[&str] = if round % 2 == 0 {
            &["secrets", "rotate-key"]
        } else {
            &["secrets", "rotate-key", "--master"]
        };
        let mut child = start(&cfg, args, None).await;
        // Spread over 10 % to 90 % of a whole rotation.
        tokio::time::sleep(Duration::from_millis(
            whole / 10 + (round * 37 % 20) * whole / 25,
        ))
        .await;
        let finished = child.try_wait().unwrap().is_some();
        child.start_kill().unwrap();
        let _ = child.wait().await;
        killed_mid_way += u32::from(!finished);
        let store = open(dir.path());
        for i in (0..n).step_by(7) {
            assert_eq!(
                read(&store, &format!("s{i}")).await,
                format!("v{i}"),
                "round {round}"
            );
        }
    }
    assert!(
        killed_mid_way >= 15,
        "most kills landed inside a rotation ({whole} ms each): {killed_mid_way}"
    );
    finish(
        start(&cfg, &["secrets", "rotate-key", "--master"], None).await,
        "final rotation",
    )
    .await;
    let store = open(dir.path());
    for i in 0..n {
        assert_eq!(read(&store, &format!("s{i}")).await, format!("v{i}"));
    }
    let key = std::fs::read_to_string(dir.path().join("data/tw.db.key")).unwrap();
    assert_eq!(
        key.lines().count(),
        1,
        "the finished rotation leaves one master key"
    );
    eprintln!(
        "20 rotations killed ({killed_mid_way} mid-way, a whole one takes {whole} ms), {n} secrets intact"
    );
}

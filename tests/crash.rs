//! Crash safety of the store: a writer is killed with SIGKILL at random moments, many
//! times; the store must always open and every secret must hold a committed value.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokenwarden::{SecretStore, SqliteStore};

const WRITER: &str = env!("CARGO_BIN_EXE_store-writer");

#[test]
fn sigkill_during_writes_never_loses_or_corrupts_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/tw.db");
    drop(SqliteStore::open(&path).unwrap());
    let padding = "p".repeat(4096);
    let mut rounds_seen = 0u64;
    for kill in 0..30 {
        let mut child = Command::new(WRITER)
            .arg(&path)
            .env_remove("TOKENWARDEN_STORE_KEY")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.parse::<u64>().ok())
                .last()
        });
        std::thread::sleep(Duration::from_millis(fastrand_ms(kill)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let last_committed = reader.join().unwrap();

        let store = SqliteStore::open(&path).expect("the store opens after SIGKILL");
        for name in ["a", "b", "c"] {
            let Some(secret) = block_on(store.get(name)).expect("decrypts: no torn write") else {
                assert!(
                    last_committed.is_none(),
                    "{name} lost after round {last_committed:?}"
                );
                continue;
            };
            let value = secrecy::ExposeSecret::expose_secret(&secret.value).to_string();
            let mut parts = value.splitn(3, '-');
            assert_eq!(parts.next(), Some(name));
            let round: u64 = parts.next().unwrap().parse().unwrap();
            assert_eq!(parts.next(), Some(padding.as_str()), "value intact");
            assert_eq!(
                secret.meta.expires_at,
                Some(round),
                "metadata from the same write"
            );
            if let Some(done) = last_committed {
                // Committed rounds are never lost; at most the round in flight is newer.
                assert!(
                    round >= done && round <= done + 1,
                    "{name}: {round} vs {done}"
                );
            }
        }
        rounds_seen += last_committed.map_or(0, |r| r + 1);
    }
    eprintln!("30 SIGKILLs, {rounds_seen} committed rounds of 3 writes checked");
}

/// Kill times spread over 5 to 80 ms, different for every iteration.
fn fastrand_ms(i: u64) -> u64 {
    5 + (i * 37 + 11) % 76
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

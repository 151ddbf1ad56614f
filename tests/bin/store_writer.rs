//! Test helper for the crash-safety test: writes secrets `a`, `b`, `c` in a loop and
//! prints the round number after each round is committed, until it is killed.

use secrecy::SecretString;
use std::io::Write;
use tokenwarden::SecretStore;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let path = std::env::args().nth(1).expect("usage: store-writer STORE");
    let store = tokenwarden::SqliteStore::open(std::path::Path::new(&path)).expect("open");
    let padding = "p".repeat(4096);
    let mut out = std::io::stdout();
    for round in 0u64.. {
        for name in ["a", "b", "c"] {
            let value = SecretString::from(format!("{name}-{round}-{padding}"));
            store.set(name, &value, Some(round)).await.expect("set");
        }
        writeln!(out, "{round}").expect("stdout");
        out.flush().expect("stdout");
    }
}

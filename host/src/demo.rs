//! `tokenwarden demo`: the whole flow offline, printed for a newcomer. It starts the
//! emulator, makes a temporary store, runs the built-in component through successes and
//! failures, and shows that the last good token survives every failure.

use crate::cli::describe_success;
use crate::config::{JobConfig, SecretRoles};
use crate::emulator::{self, Emulator, EmulatorConfig, Fault};
use crate::runtime::{Runtime, RuntimeOptions};
use crate::store::sqlite::SqliteStore;
use crate::store::{SecretStore, unix_now};
use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use std::io::Write;
use std::sync::Arc;

const CLIENT_ID: &str = "Microsoft Client ID";
const CLIENT_SECRET: &str = "Microsoft Client Secret";
const TENANT_ID: &str = "Microsoft Tenant ID";
const ACCESS_TOKEN: &str = "Microsoft Access Token";

/// Runs the demo, writing its story to `out`.
pub async fn run(out: &mut impl Write) -> anyhow::Result<()> {
    let emulator = Emulator::start(
        "127.0.0.1:0".parse().expect("valid"),
        EmulatorConfig::default(),
    )
    .await
    .context("cannot start the emulator on 127.0.0.1")?;
    let dir = tempfile::Builder::new()
        .prefix("tokenwarden-demo-")
        .tempdir()?;
    let store_path = dir.path().join("tokenwarden.db");
    let store = Arc::new(SqliteStore::open(&store_path)?);
    for (name, value) in [
        (CLIENT_ID, emulator::DEMO_CLIENT_ID),
        (CLIENT_SECRET, emulator::DEMO_CLIENT_SECRET),
        (TENANT_ID, emulator::DEMO_TENANT),
    ] {
        store.set(name, &SecretString::from(value.to_string()), None)?;
    }
    let mut job = JobConfig::new(
        "graph",
        "https://graph.microsoft.com/.default",
        SecretRoles {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            tenant_id: Some(TENANT_ID.into()),
            access_token: ACCESS_TOKEN.into(),
        },
    );
    job.authority = Some(emulator.authority());

    writeln!(
        out,
        "tokenwarden demo: fetch and keep an access token, offline\n"
    )?;
    writeln!(
        out,
        "1. An Entra-compatible token endpoint (the emulator) listens on {}.",
        emulator.authority()
    )?;
    writeln!(
        out,
        "2. A temporary secret store {} holds the app's `{CLIENT_ID}`,\n   `{CLIENT_SECRET}` and `{TENANT_ID}`.",
        store_path.display()
    )?;
    writeln!(
        out,
        "3. Job `graph` asks for scope {} with the client-credentials grant.\n   The sandboxed plugin may reach only {} and only these secrets.\n",
        job.scope,
        emulator.authority()
    )?;

    let runtime = Runtime::new(RuntimeOptions::default())?;
    let started = std::time::Instant::now();
    runtime.preload(&job)?;
    writeln!(
        out,
        "   (compiled the built-in component in {} ms)\n",
        started.elapsed().as_millis()
    )?;

    let token = || -> anyhow::Result<Option<SecretString>> {
        Ok(store.get(ACCESS_TOKEN)?.map(|s| s.value))
    };
    let same = |a: &Option<SecretString>, b: &Option<SecretString>| match (a, b) {
        (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
        _ => false,
    };
    let accepted = |t: &Option<SecretString>| {
        t.as_ref()
            .is_some_and(|t| emulator.state.accepts(t.expose_secret()))
    };

    let mut step = 4;
    let mut attempt = |title: &str| {
        let line = format!("{step}. {title}");
        step += 1;
        line
    };

    writeln!(
        out,
        "{}",
        attempt("Refresh: the plugin fetches a token and stores it.")
    )?;
    let report = runtime.run(&job, store.clone()).await?;
    writeln!(
        out,
        "   ok in {} ms: {}",
        report.duration.as_millis(),
        describe_success("graph", &report, unix_now())
    )?;
    let good = token()?;
    writeln!(
        out,
        "   The emulator's protected resource accepts the stored token: {}.\n",
        yes(accepted(&good))
    )?;

    emulator.state.push_faults([Fault::Unavailable]);
    writeln!(
        out,
        "{}",
        attempt("The identity provider fails (503 temporarily_unavailable); refresh again.")
    )?;
    let err = runtime
        .run(&job, store.clone())
        .await
        .expect_err("the emulator was told to fail");
    writeln!(out, "   failed ({}, {}): {err}", err.class(), err.retry())?;
    let after = token()?;
    writeln!(
        out,
        "   The stored token is unchanged: {}; still accepted: {}.\n",
        yes(same(&good, &after)),
        yes(accepted(&after))
    )?;

    let right = store
        .get(CLIENT_SECRET)?
        .context("the demo stored the client secret")?
        .value;
    store.set(
        CLIENT_SECRET,
        &SecretString::from("a-wrong-secret".to_string()),
        None,
    )?;
    writeln!(
        out,
        "{}",
        attempt("Someone stores a wrong client secret; refresh again.")
    )?;
    let err = runtime
        .run(&job, store.clone())
        .await
        .expect_err("a wrong secret is rejected");
    writeln!(out, "   failed ({}, {}): {err}", err.class(), err.retry())?;
    writeln!(
        out,
        "   The last good token is kept: {}.\n",
        yes(same(&good, &token()?))
    )?;
    store.set(CLIENT_SECRET, &right, None)?;

    writeln!(
        out,
        "{}",
        attempt("The secret is fixed and the provider is back; refresh again.")
    )?;
    let report = runtime.run(&job, store.clone()).await?;
    let fresh = token()?;
    writeln!(
        out,
        "   ok in {} ms: a new token replaced the old one: {}; accepted: {}.\n",
        report.duration.as_millis(),
        yes(!same(&good, &fresh)),
        yes(accepted(&fresh))
    )?;

    writeln!(
        out,
        "`tokenwarden secrets list` of the demo store (names and dates, never values):"
    )?;
    write!(
        out,
        "{}",
        crate::cli::format_list(&store.list()?, unix_now())
    )?;
    writeln!(
        out,
        "\nEmulator: {} token requests, {} tokens issued. The temporary store is removed now.",
        emulator.state.stats().token_requests,
        emulator.state.stats().tokens_issued
    )?;
    writeln!(
        out,
        "Next: write a tokenwarden.toml (see README.md), `tokenwarden secrets set NAME` each\ncredential from stdin, and run `tokenwarden refresh JOB`."
    )?;
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

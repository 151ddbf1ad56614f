//! `tokenwarden demo`: the product in half a minute, offline. It starts the emulator with
//! short-lived tokens, a temporary store and the daemon with its admin API, then scripts an
//! identity-provider outage, a manual trigger and a wrong client secret, printing a
//! timeline. After each failure it checks that the last good token is still stored and
//! still accepted by the emulator's protected resource.

use super::client::{get, post};
use crate::admin;
use crate::daemon::DaemonConfig;
use crate::daemon::{Coordination, Daemon, RunEvent, Trigger};
use crate::emulator::{self, Emulator, EmulatorConfig, Fault};
use crate::job::JobConfig;
use crate::runtime::{Runtime, RuntimeOptions};
use crate::schedule::Policy;
use crate::secrets::SecretRoles;
use crate::store::SecretStore;
use crate::store::SqliteStore;
use crate::time::unix_now;
use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENT_ID: &str = "Microsoft Client ID";
const CLIENT_SECRET: &str = "Microsoft Client Secret";
const TENANT_ID: &str = "Microsoft Tenant ID";
const ACCESS_TOKEN: &str = "Microsoft Access Token";
const ADMIN_TOKEN: &str = "Admin Token";
const PROXY_KEY: &str = "Graph Proxy Key";
const LIFETIME: Duration = Duration::from_secs(10);
/// The demo ends by itself well within a minute; this is the hard stop.
const DEADLINE: Duration = Duration::from_secs(50);

/// What the script does next, driven by the daemon's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Warmup,
    Outage,
    WrongSecret,
    Recovery,
    Done,
}

/// Runs the demo, writing its story to `out`.
pub async fn run(out: &mut impl Write) -> anyhow::Result<()> {
    let emulator = Emulator::start(
        "127.0.0.1:0".parse().expect("valid"),
        EmulatorConfig {
            token_lifetime: LIFETIME,
            ..EmulatorConfig::default()
        },
    )
    .await
    .context("cannot start the emulator on 127.0.0.1")?;
    let dir = tempfile::Builder::new()
        .prefix("tokenwarden-demo-")
        .tempdir()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("tokenwarden.db"))?);
    let admin_token = uuid::Uuid::new_v4().to_string();
    let proxy_key = uuid::Uuid::new_v4().to_string();
    for (name, value) in [
        (PROXY_KEY, proxy_key.as_str()),
        (CLIENT_ID, emulator::DEMO_CLIENT_ID),
        (CLIENT_SECRET, emulator::DEMO_CLIENT_SECRET),
        (TENANT_ID, emulator::DEMO_TENANT),
        (ADMIN_TOKEN, admin_token.as_str()),
    ] {
        store
            .set(name, &SecretString::from(value.to_string()), None)
            .await?;
    }
    let mut job = JobConfig::new(
        "graph",
        "https://graph.microsoft.com/.default",
        SecretRoles {
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(CLIENT_SECRET.into()),
            tenant_id: Some(TENANT_ID.into()),
            access_token: ACCESS_TOKEN.into(),
            ..SecretRoles::default()
        },
    );
    job.authority = Some(emulator.authority());
    // A consumer's view: a JSON sink file, and the token socket.
    let sink_path = dir.path().join("graph-token.json");
    job.sinks.push(crate::sink::Sink::new(
        &sink_path,
        crate::sink::Format::Json,
    ));
    let socket_config = crate::socket::SocketConfig {
        path: dir.path().join("token.sock"),
        mode: crate::socket::DEFAULT_MODE,
        group: None,
    };
    // And the proxy: `/graph/...` goes to the emulator's `/v1.0/...` with the token added.
    let upstream = crate::proxy::Upstream::parse(&format!("{}/v1.0", emulator.authority()))
        .map_err(|e| anyhow::anyhow!(e))?;
    job.upstreams = vec![upstream.origin.clone()];
    let proxy_config = crate::proxy::ProxyConfig {
        listen: Some("127.0.0.1:0".parse().expect("valid")),
        socket: None,
        routes: vec![crate::proxy::Route {
            prefix: "/graph".into(),
            upstream,
            job: "graph".into(),
            consumer_secret: Some(PROXY_KEY.into()),
        }],
        limits: crate::proxy::ProxyLimits::default(),
    };
    // Demo-sized timings: 10 s tokens, sub-second retries.
    let daemon_config = DaemonConfig {
        policy: Policy {
            refresh_lead: Duration::from_secs(3),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(2),
            permanent_retry_initial: Duration::from_secs(3),
            permanent_retry_max: Duration::from_secs(6),
            min_interval: Duration::from_secs(2),
            ..Policy::default()
        },
        ..DaemonConfig::default()
    };

    // The library's default engine (on-demand instances), so the demo's test also covers the
    // path embedders get without `RuntimeOptions::pooling`; `run` pools.
    let wasi = super::default_wasi(None)?;
    let runtime = Arc::new(Runtime::new(RuntimeOptions {
        wasi,
        ..RuntimeOptions::default()
    })?);
    let compile = Instant::now();
    runtime.preload(&job)?;
    let compile_ms = compile.elapsed().as_millis();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let admin_addr = listener.local_addr()?;

    writeln!(
        out,
        "tokenwarden demo: keep an access token fresh through failures, offline (about 20 s)\n"
    )?;
    writeln!(out, "Setup")?;
    writeln!(
        out,
        "  emulator   Entra-compatible token endpoint at {}; tokens live {} s",
        emulator.authority(),
        LIFETIME.as_secs()
    )?;
    writeln!(
        out,
        "  store      temporary SQLite store {}",
        store.path().display()
    )?;
    writeln!(
        out,
        "  job        `graph`: scope {}, schedule `auto` (refresh at half-life)",
        job.scope
    )?;
    writeln!(
        out,
        "  sandbox    the plugin (WASI {wasi}, compiled in {compile_ms} ms) may reach only {} and its 4 bound secrets",
        emulator.authority()
    )?;
    writeln!(
        out,
        "  admin API  http://{admin_addr} (bearer token from the store)\n"
    )?;
    writeln!(out, "Timeline (seconds since start)")?;

    let store_dyn: Arc<dyn SecretStore> = store.clone();
    let started = Instant::now();
    let coord = Coordination {
        poll_interval: Duration::from_millis(250),
        ..Coordination::default()
    };
    let daemon = Daemon::start(
        vec![job.clone()],
        &daemon_config,
        coord,
        runtime,
        store_dyn.clone(),
    )
    .await?;
    let mut events = daemon.subscribe();
    let app = admin::router(daemon.clone(), store_dyn.clone(), Some(ADMIN_TOKEN));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = proxy_listener.local_addr()?;
    let proxy_server = tokio::spawn(crate::proxy::serve_tcp(
        proxy_listener,
        crate::proxy::router(
            &proxy_config,
            daemon.clone(),
            store_dyn.clone(),
            Arc::new(crate::egress::NetTransport::default()),
        ),
        proxy_config.limits,
        std::future::pending(),
    ));
    let socket_server = crate::socket::bind(&socket_config).map(|l| {
        tokio::spawn(crate::socket::serve(
            l,
            daemon.clone(),
            std::future::pending(),
        ))
    });

    let token = async || -> anyhow::Result<Option<SecretString>> {
        Ok(store.get(ACCESS_TOKEN).await?.map(|s| s.value))
    };
    let mut stage = Stage::Warmup;
    let mut successes = 0u32;
    let mut failures = 0u32;
    let mut always_valid = true;
    let deadline = tokio::time::sleep(DEADLINE);
    tokio::pin!(deadline);

    while stage != Stage::Done {
        let event = tokio::select! {
            e = events.recv() => e.context("the daemon stopped")?,
            _ = &mut deadline => bail!("the demo did not finish within {} s", DEADLINE.as_secs()),
        };
        let t = started.elapsed().as_secs_f32();
        let current = token().await?;
        let accepted = current
            .as_ref()
            .is_some_and(|v| emulator.state.accepts(v.expose_secret()));
        writeln!(out, "  {}", describe(&event, t, accepted))?;
        if event.record.ok {
            successes += 1;
        } else {
            failures += 1;
            always_valid &= accepted;
        }

        stage = match (stage, event.record.ok) {
            (Stage::Warmup, true) if successes >= 2 => {
                emulator.state.push_faults([
                    Fault::Status { status: 503 },
                    Fault::Unavailable,
                    Fault::Throttle {
                        retry_after: Some(1),
                    },
                ]);
                writeln!(
                    out,
                    "         >> the identity provider goes down for the next 3 requests: 503, 503 temporarily_unavailable, 429 Retry-After 1"
                )?;
                Stage::Outage
            }
            (Stage::Outage, true) => {
                writeln!(
                    out,
                    "         >> an operator calls POST /jobs/graph/refresh on the admin API"
                )?;
                let manual_reply =
                    post(admin_addr, "/jobs/graph/refresh", Some(&admin_token)).await?;
                let denied = post(admin_addr, "/jobs/graph/refresh", None).await?.status;
                let manual = events.recv().await.context("the daemon stopped")?;
                successes += u32::from(manual.record.ok);
                let t = started.elapsed().as_secs_f32();
                writeln!(out, "  {}", describe(&manual, t, true))?;
                writeln!(
                    out,
                    "         << HTTP {}, ok={} (the same call without the bearer token: HTTP {denied})",
                    manual_reply.status,
                    manual_reply.json()["ok"]
                )?;
                store
                    .set(
                        CLIENT_SECRET,
                        &SecretString::from("a-wrong-secret".to_string()),
                        None,
                    )
                    .await?;
                writeln!(
                    out,
                    "         >> someone stores a wrong client secret with `tokenwarden secrets set`"
                )?;
                Stage::WrongSecret
            }
            (Stage::WrongSecret, false) => {
                store
                    .set(
                        CLIENT_SECRET,
                        &SecretString::from(emulator::DEMO_CLIENT_SECRET.to_string()),
                        None,
                    )
                    .await?;
                writeln!(
                    out,
                    "         >> the operator sees the error (logs, /jobs, metrics) and fixes the secret;\n            the daemon notices the change and retries at once, not at its slow permanent-error pace"
                )?;
                Stage::Recovery
            }
            (Stage::Recovery, true) => Stage::Done,
            (s, _) => s,
        };
    }

    let ready = get(admin_addr, "/readyz", None).await?.status;
    let status = get(admin_addr, "/jobs/graph", Some(&admin_token))
        .await?
        .json();
    let consumers = consumer_paths(
        &sink_path,
        &socket_config.path,
        (proxy_addr, &proxy_key),
        &emulator,
    )
    .await;
    daemon.shutdown(Duration::from_secs(5)).await;
    server.abort();
    proxy_server.abort();
    if let Ok(s) = socket_server {
        s.abort();
    }

    writeln!(out, "\nResult")?;
    writeln!(
        out,
        "  {successes} refreshes, {failures} failed runs in {:.0} s; the stored token was valid and accepted after every failure: {}",
        started.elapsed().as_secs_f32(),
        if always_valid { "yes" } else { "NO" }
    )?;
    writeln!(
        out,
        "  GET /readyz: HTTP {ready}; GET /jobs/graph: {} runs, token expires in {} s, next run at {}",
        status["runs"],
        status["token_expires_in_seconds"],
        crate::time::rfc3339(status["next_run_at"].as_u64().unwrap_or_default())
    )?;
    writeln!(
        out,
        "\nUsing the token (no store key needed; docs/consumers.md)"
    )?;
    for line in consumers {
        writeln!(out, "  {line}")?;
    }
    writeln!(
        out,
        "\n`tokenwarden secrets list` (names and dates, never values):"
    )?;
    for line in super::report::secrets_table(&store.list().await?, unix_now()).lines() {
        writeln!(out, "  {line}")?;
    }
    writeln!(
        out,
        "\nNext: write a tokenwarden.toml (README.md), store your app's credentials with\n`tokenwarden secrets set NAME` (value on stdin), and start `tokenwarden run`."
    )?;
    Ok(())
}

/// What a consumer gets: the protected resource through the proxy (never seeing the
/// token), the sink file's token used against it directly, and the same token from the
/// token socket. Lines for the report.
async fn consumer_paths(
    sink: &std::path::Path,
    socket: &std::path::Path,
    (proxy, proxy_key): (std::net::SocketAddr, &str),
    emulator: &Emulator,
) -> Vec<String> {
    use std::os::unix::fs::MetadataExt as _;
    let mut lines = Vec::new();
    let through = super::client::proxy_get(proxy, "/graph/me", proxy_key)
        .await
        .map_or(0, |r| r.status);
    lines.push(format!(
        "proxy      curl -H 'Proxy-Authorization: Bearer <consumer secret>' http://{proxy}/graph/me: HTTP {through} (the proxy added the token)"
    ));
    let file: serde_json::Value = std::fs::read(sink)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mode = std::fs::metadata(sink).map_or(0, |m| m.mode() & 0o777);
    let token = file["access_token"].as_str().unwrap_or_default();
    lines.push(format!(
        "sink file  {} (json, mode {mode:04o}): {} token, expires in {} s",
        sink.display(),
        file["token_type"].as_str().unwrap_or("no"),
        file["expires_in"]
    ));
    let me = get(emulator.addr, "/v1.0/me", Some(token))
        .await
        .map_or(0, |r| r.status);
    lines.push(format!(
        "consumer   GET /v1.0/me with the sink's token: HTTP {me}"
    ));
    match super::client::unix_get(socket, "/tokens/graph").await {
        Ok(r) => {
            let v = r.json();
            let same = v["access_token"].as_str() == Some(token);
            lines.push(format!(
                "socket     GET /tokens/graph on {}: HTTP {}, {} (what `tokenwarden token graph` prints)",
                socket.display(),
                r.status,
                if same { "the same token" } else { "a newer token" }
            ));
        }
        Err(e) => lines.push(format!("socket     not served here: {e}")),
    }
    lines
}

fn describe(e: &RunEvent, t: f32, accepted: bool) -> String {
    let r = &e.record;
    let trigger = match r.trigger {
        Trigger::CatchUp => "catch-up".to_string(),
        Trigger::Schedule => "schedule".to_string(),
        Trigger::Manual => "manual".to_string(),
        Trigger::SecretChanged => "fixed".to_string(),
        Trigger::Retry => format!("retry {}", r.attempt - 1),
    };
    let next = e
        .next_run_at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
        .as_secs_f32();
    let left = e
        .token_expires_at
        .map(|at| i64::try_from(at).unwrap_or(0) - i64::try_from(unix_now()).unwrap_or(0))
        .unwrap_or(0);
    match &r.error {
        None => format!(
            "+{t:5.1}  {trigger:<9} ok      new token stored ({} ms), valid {} s; next refresh in {next:.1} s",
            r.duration_ms,
            r.outcome.as_ref().and_then(|o| o.expires_in).unwrap_or(0),
        ),
        Some(err) => {
            let what = match &err.oauth {
                Some(o) => format!(
                    "{} (HTTP {}{})",
                    o.error,
                    o.status,
                    o.error_codes
                        .first()
                        .map(|c| format!(", AADSTS{c}"))
                        .unwrap_or_default()
                ),
                None => err.message.clone(),
            };
            format!(
                "+{t:5.1}  {trigger:<9} FAILED  {what}, {}; last good token kept ({left} s left, accepted: {}); retry in {next:.1} s",
                err.retry,
                if accepted { "yes" } else { "NO" }
            )
        }
    }
}

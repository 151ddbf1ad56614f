//! The `tokenwarden` command line (DESIGN §4).
//!
//! Exit codes, for scripts: 0 success; 1 unexpected failure; 2 usage or configuration
//! error; 3 refresh failed, retryable (try again later); 4 refresh failed, permanent (fix
//! credentials or configuration); 5 `secrets get` found no such secret. Secret values are
//! read from stdin, never from argv, and only `secrets get` prints one.

use crate::admin;
use crate::config::{self, Config, ConfigError};
use crate::daemon::Daemon;
use crate::emulator::{self, Emulator, EmulatorConfig, Fault};
use crate::outcome::{Retry, RunError};
use crate::runtime::{BUILTIN_COMPONENT, RunReport, Runtime, RuntimeOptions};
use crate::store::sqlite::SqliteStore;
use crate::store::{SecretStore, StoreError, unix_now};
use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::Layer as _;

/// Exit codes a script can rely on.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Unexpected failure.
    pub const FAILURE: u8 = 1;
    /// Usage or configuration error.
    pub const USAGE: u8 = 2;
    /// Refresh failed; a later retry may succeed.
    pub const RETRYABLE: u8 = 3;
    /// Refresh failed; needs a human.
    pub const PERMANENT: u8 = 4;
    /// `secrets get`: no such secret.
    pub const NOT_FOUND: u8 = 5;
}

/// Environment variable holding the emulator's client secret (never argv).
pub const EMULATOR_SECRET_ENV: &str = "TOKENWARDEN_EMULATOR_CLIENT_SECRET";

/// Sandboxed OAuth 2.0 client-credentials token refresher.
#[derive(Debug, Parser)]
#[command(name = "tokenwarden", version, about, long_about = None)]
pub struct Cli {
    /// Config file [default: $TOKENWARDEN_CONFIG, else ./tokenwarden.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store, read and list secrets.
    Secrets {
        /// What to do with secrets.
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Run one job now: exit 0 when a token was stored.
    Refresh {
        /// The job's name in the config file.
        job: String,
        /// Print the outcome as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The daemon: keep every job's token fresh, serve the admin API, stop on SIGINT/SIGTERM.
    Run,
    /// Serve an Entra-compatible token endpoint for offline use and tests.
    Emulator(EmulatorArgs),
    /// The whole flow offline: emulator, temporary store, refreshes, printed.
    Demo,
    /// The built-in component.
    Component {
        /// What to do with the component.
        #[command(subcommand)]
        command: ComponentCommand,
    },
}

/// `secrets` subcommands.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Store a secret; the value is read from stdin (one trailing newline is dropped).
    Set {
        /// Store name, e.g. "Microsoft Client Secret".
        name: String,
    },
    /// Print a secret's value on stdout.
    Get {
        /// Store name.
        name: String,
    },
    /// List names with updated-at and expires-at; never values.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-encrypt every secret under a new random store key (key file only).
    RotateKey,
}

/// `component` subcommands.
#[derive(Debug, Subcommand)]
pub enum ComponentCommand {
    /// Write the built-in component to FILE, to embed it in another host.
    Export {
        /// Destination file.
        file: PathBuf,
    },
}

/// `emulator` options.
#[derive(Debug, clap::Args)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8421")]
    pub listen: SocketAddr,
    /// Tenant to accept (repeatable).
    #[arg(long = "tenant", default_value = emulator::DEMO_TENANT)]
    pub tenants: Vec<String>,
    /// Client id to accept; its secret comes from $TOKENWARDEN_EMULATOR_CLIENT_SECRET
    /// (default: the demo secret).
    #[arg(long, default_value = emulator::DEMO_CLIENT_ID)]
    pub client_id: String,
    /// Lifetime of issued tokens, e.g. 1h or 90s.
    #[arg(long, default_value = "3599s", value_parser = humantime::parse_duration)]
    pub lifetime: Duration,
    /// Delay before every token reply, e.g. 200ms.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Fault for the next token request, in order (repeatable): 503, 429, 429:5,
    /// unavailable, malformed, empty-token, missing-token, delay:1500.
    #[arg(long = "fault")]
    pub faults: Vec<Fault>,
}

/// Parses argv, runs the command and returns the process exit code.
pub fn main() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    init_logging(cli.log_format, &cli.command);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                exit::USAGE
            } else {
                exit::FAILURE
            }
        }
    }
}

/// Dependencies capped at INFO whatever the user asks (a directive matches every target
/// that starts with it). wasmtime's WASI and HTTP layers, hyper, h2 and rustls log payloads at
/// DEBUG/TRACE (a plugin's output, HTTP bodies and headers), so uncapped they would put
/// secrets in the log; wasmtime's compiler and regalloc2 write about a gigabyte per compile.
const CAPPED_LOGGERS: &[&str] = &[
    "wasmtime",
    "cranelift",
    "regalloc2",
    "hyper",
    "h2",
    "rustls",
    "tokio_rustls",
    "axum",
    "tower",
];

/// The log filter for a `TOKENWARDEN_LOG`-style spec, with [`CAPPED_LOGGERS`] capped.
///
/// The cap is a second filter that must also pass, so no directive in the spec (not even a
/// more specific one such as `wasmtime_wasi::p2=trace`) can lift it.
pub fn log_filter<S>(spec: &str) -> impl tracing_subscriber::layer::Filter<S> + use<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
    let wanted = tracing_subscriber::EnvFilter::try_new(spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let cap = CAPPED_LOGGERS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, target| t.with_target(*target, LevelFilter::INFO),
    );
    wanted.and(cap)
}

/// Engine settings for commands that run jobs: compiled components are cached beside the
/// store (`compiled/`), so only the first start pays for compilation, and instances come
/// from a pool with a slot for each run the daemon allows in flight.
fn runtime_options(config: &Config) -> RuntimeOptions {
    let dir = config
        .store
        .path
        .parent()
        .unwrap_or(Path::new("."))
        .join("compiled");
    RuntimeOptions {
        compile_cache: Some(crate::cache::CompileCache::new(dir)),
        pooling: Some(crate::runtime::Pooling::for_runs(
            config.daemon.max_concurrent_runs,
            &config.jobs,
        )),
        ..RuntimeOptions::default()
    }
}

fn init_logging(format: LogFormat, command: &Command) {
    // Servers log what they do; one-shot commands only trouble; the demo tells its own story.
    let default = match command {
        Command::Run | Command::Emulator(_) => "info",
        Command::Demo => "off",
        _ => "warn",
    };
    let spec = std::env::var("TOKENWARDEN_LOG").unwrap_or_else(|_| default.to_string());
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    let _ = match format {
        LogFormat::Text => registry
            .with(layer.with_filter(log_filter(&spec)))
            .try_init(),
        LogFormat::Json => registry
            .with(layer.json().with_filter(log_filter(&spec)))
            .try_init(),
    };
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let config_path = config::locate(cli.config.as_deref());
    match cli.command {
        Command::Secrets { command } => {
            let config = Config::load(&config_path)?;
            let store = SqliteStore::open(&config.store.path)?;
            secrets(command, &store)
        }
        Command::Refresh { job, json } => refresh(&config_path, &job, json).await,
        Command::Run => daemon(&config_path).await,
        Command::Emulator(args) => serve_emulator(args).await,
        Command::Demo => {
            crate::demo::run(&mut std::io::stdout()).await?;
            Ok(exit::OK)
        }
        Command::Component {
            command: ComponentCommand::Export { file },
        } => export(&file),
    }
}

fn secrets(command: SecretsCommand, store: &SqliteStore) -> anyhow::Result<u8> {
    match command {
        SecretsCommand::Set { name } => {
            if std::io::stdin().is_terminal() {
                eprintln!("Enter the value of `{name}`, then press Ctrl-D:");
            }
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("cannot read the value from stdin")?;
            let value = SecretString::from(value);
            let trimmed = strip_one_newline(value.expose_secret());
            if trimmed.is_empty() {
                eprintln!("error: empty value on stdin; nothing stored");
                return Ok(exit::USAGE);
            }
            match store.set(&name, &SecretString::from(trimmed.to_string()), None) {
                Ok(()) => {
                    eprintln!("stored `{name}`");
                    Ok(exit::OK)
                }
                Err(StoreError::Invalid(m)) => {
                    eprintln!("error: {m}");
                    Ok(exit::USAGE)
                }
                Err(e) => Err(e.into()),
            }
        }
        SecretsCommand::Get { name } => {
            let Some(secret) = store.get(&name)? else {
                eprintln!("error: no secret named `{name}`");
                return Ok(exit::NOT_FOUND);
            };
            if let Some(at) = secret.meta.expires_at.filter(|&at| at <= unix_now()) {
                eprintln!("warning: `{name}` expired at {}", rfc3339(at));
            }
            let mut out = std::io::stdout().lock();
            out.write_all(secret.value.expose_secret().as_bytes())?;
            // A newline for people; none for pipes, so files get the exact value.
            if out.is_terminal() {
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(exit::OK)
        }
        SecretsCommand::RotateKey => {
            let n = store.rotate_key()?;
            let file = match store.key_source() {
                crate::store::sqlite::KeySource::File(f) => f.display().to_string(),
                crate::store::sqlite::KeySource::Env => String::new(),
            };
            eprintln!("re-encrypted {n} secrets under a new key in {file}");
            Ok(exit::OK)
        }
        SecretsCommand::List { json } => {
            let list = store.list()?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &list)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", format_list(&list, unix_now()))?;
            }
            Ok(exit::OK)
        }
    }
}

fn strip_one_newline(s: &str) -> &str {
    s.strip_suffix("\r\n")
        .or_else(|| s.strip_suffix('\n'))
        .unwrap_or(s)
}

/// `2026-11-24T23:50:00Z`.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// `in 59m 59s` or `expired 3m ago`.
pub fn relative(at: u64, now: u64) -> String {
    let fmt = |s: u64| humantime::format_duration(Duration::from_secs(s)).to_string();
    if at > now {
        format!("in {}", fmt(at - now))
    } else {
        format!("expired {} ago", fmt(now - at))
    }
}

/// The `secrets list` table.
pub fn format_list(list: &[crate::store::SecretMeta], now: u64) -> String {
    let width = list.iter().map(|m| m.name.len()).max().unwrap_or(4).max(4);
    let mut s = format!("{:<width$}  {:<20}  EXPIRES\n", "NAME", "UPDATED");
    for m in list {
        let expires = m.expires_at.map_or("-".to_string(), |at| {
            format!("{} ({})", rfc3339(at), relative(at, now))
        });
        s.push_str(&format!(
            "{:<width$}  {:<20}  {expires}\n",
            m.name,
            rfc3339(m.updated_at)
        ));
    }
    s
}

/// One line describing a stored token.
pub fn describe_success(job: &str, report: &RunReport, now: u64) -> String {
    let o = &report.outcome;
    let expiry = match o.expires_at {
        Some(at) => format!(", expires {} ({})", relative(at, now), rfc3339(at)),
        None => ", no expiry given by the server".to_string(),
    };
    format!(
        "refreshed `{job}`: {} token stored in `{}`{expiry}",
        o.token_type, report.token_secret
    )
}

/// Exit code and JSON for a failed run.
pub fn failure_json(job: &str, e: &RunError) -> serde_json::Value {
    json!({
        "job": job,
        "ok": false,
        "error": {
            "class": e.class(),
            "retry": e.retry(),
            "message": e.to_string(),
            "oauth": e.oauth(),
        },
    })
}

async fn refresh(config_path: &Path, job_name: &str, as_json: bool) -> anyhow::Result<u8> {
    let config = Config::load(config_path)?;
    let Some(job) = config.job(job_name) else {
        let names: Vec<_> = config.jobs.iter().map(|j| j.name.as_str()).collect();
        eprintln!(
            "error: no job named `{job_name}` in {} (jobs: {})",
            config.path.display(),
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        );
        return Ok(exit::USAGE);
    };
    let store: Arc<dyn SecretStore> = Arc::new(SqliteStore::open(&config.store.path)?);
    let runtime = Runtime::new(runtime_options(&config))?;
    let result = runtime.run(job, store).await;
    let mut out = std::io::stdout().lock();
    match result {
        Ok(report) => {
            if as_json {
                serde_json::to_writer(
                    &mut out,
                    &json!({"job": job_name, "ok": true, "report": report}),
                )?;
                writeln!(out)?;
            } else {
                writeln!(out, "{}", describe_success(job_name, &report, unix_now()))?;
            }
            Ok(exit::OK)
        }
        Err(e) => {
            tracing::debug!(job = job_name, class = e.class(), "refresh failed");
            if as_json {
                serde_json::to_writer(&mut out, &failure_json(job_name, &e))?;
                writeln!(out)?;
            }
            let retry = e.retry();
            eprintln!(
                "error: refresh of `{job_name}` failed ({}, {retry}): {e}; the stored token was not replaced",
                e.class(),
            );
            Ok(match retry {
                Retry::Retryable => exit::RETRYABLE,
                Retry::Permanent => exit::PERMANENT,
            })
        }
    }
}

async fn serve_emulator(args: EmulatorArgs) -> anyhow::Result<u8> {
    let secret = std::env::var(EMULATOR_SECRET_ENV)
        .unwrap_or_else(|_| emulator::DEMO_CLIENT_SECRET.to_string());
    let config = EmulatorConfig {
        tenants: args.tenants,
        clients: vec![(args.client_id, secret)],
        token_lifetime: args.lifetime,
        latency: args.latency,
        faults: args.faults,
    };
    let tenants = config.tenants.join(", ");
    let server = Emulator::start(args.listen, config)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        addr = %server.addr,
        %tenants,
        "emulator listening: POST /{{tenant}}/oauth2/v2.0/token, GET /v1.0/me"
    );
    // Printed for scripts that bind port 0 and need the address.
    println!("listening on {}", server.addr);
    tokio::select! {
        _ = server.wait() => Err(anyhow!("the emulator stopped unexpectedly")),
        _ = shutdown_signal() => Ok(exit::OK),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn daemon(config_path: &Path) -> anyhow::Result<u8> {
    let config = Config::load(config_path)?;
    if config.jobs.is_empty() {
        eprintln!(
            "error: {} has no [[jobs]]; nothing to run",
            config.path.display()
        );
        return Ok(exit::USAGE);
    }
    let admin_cfg = &config.admin;
    if let Err(e) = admin::check_exposure(admin_cfg.listen, admin_cfg.token_secret.as_deref()) {
        eprintln!("error: {e}");
        return Ok(exit::USAGE);
    }
    let store: Arc<dyn SecretStore> = Arc::new(SqliteStore::open(&config.store.path)?);
    let runtime = Arc::new(Runtime::new(runtime_options(&config))?);
    let started = std::time::Instant::now();
    for job in &config.jobs {
        if let Err(e) = runtime.preload(job) {
            eprintln!("error: job `{}`: {e}", job.name);
            return Ok(exit::USAGE);
        }
    }
    tracing::info!(
        jobs = config.jobs.len(),
        compile_ms = started.elapsed().as_millis() as u64,
        "components ready"
    );
    if let Some(name) = &admin_cfg.token_secret
        && store.get(name)?.is_none()
    {
        tracing::warn!(secret = %name, "the admin token secret is not set: protected admin routes answer 401 until it is");
    }
    let listener = tokio::net::TcpListener::bind(admin_cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", admin_cfg.listen))?;
    let admin_addr = listener.local_addr()?;
    let daemon = Daemon::start(&config, runtime, store.clone())?;
    let app = admin::router(daemon.clone(), store, admin_cfg.token_secret.as_deref());
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = admin_stopped.await;
            })
            .into_future(),
    );
    tracing::info!(admin = %admin_addr, jobs = config.jobs.len(), "tokenwarden running");
    shutdown_signal().await;
    let grace = config.daemon.shutdown_grace;
    tracing::info!(
        grace_s = grace.as_secs_f32(),
        "stopping: no new runs; waiting for runs in flight"
    );
    let _ = stop_admin.send(());
    let finished = daemon.shutdown(grace).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    tracing::info!(all_runs_finished = finished, "stopped");
    Ok(exit::OK)
}

fn export(file: &Path) -> anyhow::Result<u8> {
    std::fs::write(file, BUILTIN_COMPONENT)
        .with_context(|| format!("cannot write {}", file.display()))?;
    println!(
        "wrote the built-in component ({} bytes) to {}",
        BUILTIN_COMPONENT.len(),
        file.display()
    );
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_dropped() {
        assert_eq!(strip_one_newline("abc\n"), "abc");
        assert_eq!(strip_one_newline("abc\r\n"), "abc");
        assert_eq!(strip_one_newline("abc\n\n"), "abc\n");
        assert_eq!(strip_one_newline("abc"), "abc");
    }

    #[test]
    fn relative_times() {
        assert_eq!(relative(160, 100), "in 1m");
        assert_eq!(relative(100, 160), "expired 1m ago");
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

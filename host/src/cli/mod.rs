//! The `tokenwarden` command line: argument definitions, dispatch, logging and exit codes.
//! Each group of commands lives in its own module; the text they print for people is in
//! [`report`].
//!
//! Exit codes, for scripts: 0 success; 1 unexpected failure; 2 usage or configuration
//! error; 3 refresh failed, retryable (try again later); 4 refresh failed, permanent (fix
//! credentials or configuration); 5 `secrets get`: no such secret. Secret values are read
//! from stdin, never from argv; only `secrets get` prints one, and `token` prints a job's
//! access token to a caller the daemon's token socket admits.

pub mod client;
mod consume;
mod demo;
mod jobs;
mod keys;
mod report;
mod secrets;
mod serve;
mod setup;

pub use serve::shutdown_signal;

use crate::config::{self, Config, ConfigError};
use crate::emulator::{self, Fault};
use crate::runtime::RuntimeOptions;
use crate::store::{Access, SecretStore};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::IsTerminal;
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

const ENVIRONMENT_AND_EXIT_CODES: &str = "\
Environment:
  TOKENWARDEN_CONFIG                  config file when --config is not given
  TOKENWARDEN_STORE_KEY               the store's master key (base64 of 32 bytes), instead of its key file
  TOKENWARDEN_NEW_STORE_KEY           the new master key for `secrets rotate-key --master` with TOKENWARDEN_STORE_KEY
  TOKENWARDEN_STORE_PASSWORD          PostgreSQL password when [store] url has none
  TOKENWARDEN_LOG                     log filter, e.g. `debug` or `tokenwarden=debug`
  TOKENWARDEN_EMULATOR_CLIENT_SECRET  the emulator's client secret

Exit codes:
  0  success
  1  unexpected failure
  2  usage or configuration error
  3  refresh failed, retryable (transport, 429, 5xx, temporarily_unavailable): try again later
  4  refresh failed, permanent (invalid_client, invalid_scope, missing secrets): needs a human
  5  `secrets get`: no such secret";

/// Sandboxed OAuth 2.0 client-credentials token refresher.
#[derive(Debug, Parser)]
#[command(name = "tokenwarden", version, about, long_about = None, after_long_help = ENVIRONMENT_AND_EXIT_CODES)]
pub struct Cli {
    /// Config file [default: $TOKENWARDEN_CONFIG, else ./tokenwarden.toml]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log and error format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--config`, on the commands that read a config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArg {
    /// Config file [default: $TOKENWARDEN_CONFIG, else ./tokenwarden.toml]
    #[arg(long = "config", global = true, value_name = "PATH")]
    pub path: Option<PathBuf>,
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
    /// Write a commented tokenwarden.toml to start from (never overwrites one).
    Init {
        /// A config for `tokenwarden emulator` on its default address, to try everything
        /// offline.
        #[arg(long)]
        emulator: bool,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check the config offline and show what each job resolves to.
    Config {
        /// What to do with the config.
        #[command(subcommand)]
        command: ConfigCommand,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Every job's token, last run and next run, read from the store (no daemon needed).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Store, read, list, delete secrets; rotate the store's keys.
    Secrets {
        /// What to do with secrets.
        #[command(subcommand)]
        command: SecretsCommand,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run one job now: exit 0 when a token was stored.
    Refresh {
        /// The job's name in the config file.
        job: String,
        /// Print the outcome as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a job's current token, from the daemon's token socket (no store key needed).
    Token {
        /// The job.
        job: String,
        /// The token socket [default: the config's `[socket] path`].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run a command with a job's token in its environment, from the daemon's token socket;
    /// restart (or signal) it when the token changes; exit with its status.
    Exec {
        /// What to run and how.
        #[command(flatten)]
        args: consume::ExecArgs,
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The daemon: keep every job's token fresh, serve the admin API, stop on SIGINT/SIGTERM.
    Run {
        /// The config file.
        #[command(flatten)]
        config: ConfigArg,
    },
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
    /// Print shell completions (bash, zsh, fish, ...) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout.
    Man,
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config (exit 0 or 2) and print each job's endpoint, allow-list,
    /// schedule, limits and bound secrets with whether each is set.
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
    /// Delete a secret (one bound to a job only with --force).
    Delete {
        /// Store name.
        name: String,
        /// Delete it even though a job reads or writes it.
        #[arg(long)]
        force: bool,
    },
    /// Store a private key (and its certificate) for `client_auth = "private_key_jwt"`,
    /// read from stdin: PEM (PKCS#8, or PKCS#1 for RSA; RSA 2048-4096 or EC P-256), or
    /// PKCS#12 (.pfx, .p12) with its password in TOKENWARDEN_PKCS12_PASSWORD or a file.
    ImportKey {
        /// Store name for the key, e.g. "Graph Signing Key".
        name: String,
        /// Also store the key's certificate (from the same input) under this name.
        #[arg(long, value_name = "NAME")]
        certificate: Option<String>,
        /// Read the PKCS#12 password from this file (one trailing newline dropped).
        #[arg(long, value_name = "PATH")]
        password_file: Option<PathBuf>,
    },
    /// Re-encrypt every secret under a new data key; with --master, replace the master key
    /// too.
    RotateKey {
        /// Also replace the master key (the key file, or TOKENWARDEN_STORE_KEY with the new
        /// key in TOKENWARDEN_NEW_STORE_KEY).
        #[arg(long)]
        master: bool,
    },
}

/// `component` subcommands.
#[derive(Debug, Subcommand)]
pub enum ComponentCommand {
    /// Write the built-in component to FILE, to embed it in another host.
    Export {
        /// Destination file.
        file: PathBuf,
        /// The world: `0.2` (`refresher`, the default) or `0.3` (`refresher-p3`,
        /// experimental in wasmtime 48).
        #[arg(long, default_value = "0.2")]
        wasi: crate::job::WasiVersion,
    },
}

/// `emulator` options.
#[derive(Debug, clap::Args)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = emulator::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Tenant to accept (repeatable).
    #[arg(long = "tenant", default_value = emulator::DEMO_TENANT)]
    pub tenants: Vec<String>,
    /// Client id to accept; its secret comes from $TOKENWARDEN_EMULATOR_CLIENT_SECRET
    /// (default: the demo secret, printed at start).
    #[arg(long, default_value = emulator::DEMO_CLIENT_ID)]
    pub client_id: String,
    /// A certificate (PEM file) registered for the client: assertions it signs are
    /// accepted as Entra accepts them (repeatable).
    #[arg(long = "certificate", value_name = "FILE")]
    pub certificates: Vec<PathBuf>,
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
    let format = cli.log_format;
    init_logging(format, &cli.command);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            return fail(
                format,
                &format!("cannot start the async runtime: {e}"),
                exit::FAILURE,
            );
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            let code = if e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<Usage>().is_some()
            {
                exit::USAGE
            } else {
                exit::FAILURE
            };
            fail(format, &error_chain(&e), code)
        }
    }
}

/// A usage error raised by a command: exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// `e` and its causes, each said once (an I/O error wrapped by a message that already
/// quotes it is not repeated).
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

/// Prints a final error in the chosen format and returns `code`.
fn fail(format: LogFormat, message: &str, code: u8) -> u8 {
    let message = crate::text::clean(message, 8192);
    match format {
        LogFormat::Text => eprintln!("error: {message}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({"level": "ERROR", "message": message, "exit_code": code})
        ),
    }
    code
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
    "tokio_postgres",
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

fn init_logging(format: LogFormat, command: &Command) {
    // Servers log what they do; one-shot commands only trouble; the demo tells its own story.
    let default = match command {
        Command::Run { .. } | Command::Emulator(_) | Command::Exec { .. } => "info",
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

/// The config path: the subcommand's `--config`, else the top-level one, else
/// `$TOKENWARDEN_CONFIG`, else `./tokenwarden.toml`.
fn config_path(top: &Option<PathBuf>, sub: &ConfigArg) -> PathBuf {
    config::locate(sub.path.as_deref().or(top.as_deref()))
}

/// Engine settings for commands that run jobs: compiled components are cached beside the
/// store (`compiled/`), so only the first start pays for compilation, and instances come
/// from a pool with a slot for each run the daemon allows in flight.
///
/// The WASI version of jobs that do not choose one is `$TOKENWARDEN_WASI`, else the file's
/// top-level `wasi`, else 0.2; the engine has 0.3 support only when some job can use it.
fn runtime_options(
    config: &Config,
    store: &Arc<dyn SecretStore>,
) -> anyhow::Result<RuntimeOptions> {
    let wasi = default_wasi(config.wasi)?;
    // One transport for the runs and the proxy: one connection pool, one trust, one way out.
    let mut net = crate::egress::NetTransport::default().with_tls(config.tls.client_config()?);
    if let Some(proxy) = &config.egress {
        net = net.with_proxy(proxy.clone(), Some(store.clone()));
    }
    let transport: Arc<dyn crate::egress::Transport> = Arc::new(net);
    Ok(RuntimeOptions {
        wasi,
        transport: Some(transport),
        allow_wasi_0_3: config
            .jobs
            .iter()
            .any(|j| j.wasi == Some(crate::job::WasiVersion::P3)),
        compile_cache: Some(crate::cache::CompileCache::new(
            config.store.local_dir(config.dir()).join("compiled"),
        )),
        pooling: Some(crate::runtime::Pooling::for_runs(
            config.daemon.max_concurrent_runs,
            &config.jobs,
        )),
    })
}

/// `$TOKENWARDEN_WASI`, else `file` (a config's top-level `wasi`), else 0.2. A bad value is
/// a usage error (exit 2), as the same value in the file is a configuration error.
fn default_wasi(file: Option<crate::job::WasiVersion>) -> anyhow::Result<crate::job::WasiVersion> {
    let env = crate::job::WasiVersion::from_env().map_err(Usage)?;
    Ok(env.or(file).unwrap_or_default())
}

async fn open_store(config: &Config, access: Access) -> anyhow::Result<Arc<dyn SecretStore>> {
    Ok(crate::store::open(&config.store, &config.tls, access).await?)
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let top = cli.config;
    match cli.command {
        Command::Init { emulator, config } => setup::init(&config_path(&top, &config), emulator),
        Command::Config {
            command: ConfigCommand::Check { json },
            config,
        } => jobs::check(&config_path(&top, &config), json).await,
        Command::Status { json, config } => jobs::status(&config_path(&top, &config), json).await,
        Command::Secrets { command, config } => {
            secrets::run(command, &config_path(&top, &config)).await
        }
        Command::Refresh { job, json, config } => {
            jobs::refresh(&config_path(&top, &config), &job, json).await
        }
        Command::Token {
            job,
            socket,
            config,
        } => {
            let socket = consume::socket_path(socket, &config_path(&top, &config))?;
            consume::token(&job, &socket).await
        }
        Command::Exec { args, config } => {
            let socket = consume::socket_path(args.socket.clone(), &config_path(&top, &config))?;
            consume::exec(args, &socket).await
        }
        Command::Run { config } => serve::daemon(&config_path(&top, &config)).await,
        Command::Emulator(args) => serve::emulator(args).await,
        Command::Demo => {
            demo::run(&mut std::io::stdout()).await?;
            Ok(exit::OK)
        }
        Command::Component {
            command: ComponentCommand::Export { file, wasi },
        } => setup::export(&file, wasi),
        Command::Completions { shell } => setup::completions(shell),
        Command::Man => setup::man(),
    }
}

/// The config at `path`, with the store it names.
async fn load(path: &Path, access: Access) -> anyhow::Result<(Config, Arc<dyn SecretStore>)> {
    let config = Config::load(path)?;
    let store = open_store(&config, access).await?;
    Ok((config, store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn config_flag_works_before_and_after_the_subcommand() {
        for args in [
            &["tokenwarden", "--config", "a.toml", "refresh", "graph"][..],
            &["tokenwarden", "refresh", "graph", "--config", "a.toml"][..],
            &["tokenwarden", "secrets", "set", "x", "--config", "a.toml"][..],
            &["tokenwarden", "secrets", "--config", "a.toml", "list"][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let sub = match &cli.command {
                Command::Refresh { config, .. } | Command::Secrets { config, .. } => config.clone(),
                other => panic!("{other:?}"),
            };
            assert_eq!(
                config_path(&cli.config, &sub),
                PathBuf::from("a.toml"),
                "{args:?}"
            );
        }
        // Where it does not act, it is not offered.
        assert!(Cli::try_parse_from(["tokenwarden", "demo", "--config", "a.toml"]).is_err());
    }
}

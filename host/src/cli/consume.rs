//! The consumer commands, clients of the daemon's token socket: they need neither the store
//! nor its key. `tokenwarden token JOB` prints the current token; `tokenwarden exec JOB --
//! COMMAND` runs a command with the token in its environment and restarts (or signals) it
//! when the token changes.

use super::{Usage, client, exit};
use crate::config::Config;
use crate::sink::action::parse_signal;
use anyhow::anyhow;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

/// What `exec` does to its command when the token changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnRefresh {
    /// Stop it (SIGTERM, then SIGKILL after the grace period) and start it again with the
    /// new token: its environment cannot change while it runs.
    Restart,
    /// Send it `--signal`; for a command that reads the token again itself (from a sink
    /// file or `tokenwarden token`).
    Signal,
}

/// `exec` options.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The job whose token the command gets.
    pub job: String,
    /// The environment variable that holds the token.
    #[arg(long = "env", value_name = "NAME", default_value = crate::sink::DEFAULT_ENV_NAME)]
    pub env: String,
    /// What to do when the token changes.
    #[arg(long, value_enum, default_value_t = OnRefresh::Restart)]
    pub on_refresh: OnRefresh,
    /// The signal of `--on-refresh signal`.
    #[arg(long, default_value = "HUP", value_parser = parse_signal)]
    pub signal: Signal,
    /// How long a restarted command has to exit after SIGTERM before SIGKILL.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// How long to wait for a first token before giving up (exit 3).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// The token socket [default: the config's `[socket] path`].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The token socket: `--socket`, else the config's `[socket] path`.
pub(super) fn socket_path(flag: Option<PathBuf>, config: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    let config = Config::load(config)?;
    config.socket.map(|s| s.path).ok_or_else(|| {
        Usage(format!(
            "{} has no [socket]; give --socket PATH or add a [socket] path for the daemon to serve",
            config.path.display()
        ))
        .into()
    })
}

/// A token the socket gave.
struct Got {
    token: Zeroizing<String>,
    revision: u64,
}

/// Why the socket gave no token.
enum NoToken {
    /// Worth trying again: the daemon is down or has no unexpired token yet.
    Later(String),
    /// Not for this caller, or a malformed request.
    Refused(String),
}

async fn fetch(socket: &Path, job: &str, after: Option<u64>) -> Result<Got, NoToken> {
    let job_path: String = form_urlencoded::byte_serialize(job.as_bytes()).collect();
    let path = match after {
        Some(rev) => format!("/tokens/{job_path}?after={rev}&wait=60"),
        None => format!("/tokens/{job_path}"),
    };
    let reply = client::unix_get(socket, &path).await.map_err(|e| {
        NoToken::Later(format!(
            "cannot reach the token socket {}: {e} (is `tokenwarden run` serving it?)",
            socket.display()
        ))
    })?;
    let body = Zeroizing::new(reply.body);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let message = json["message"].as_str().unwrap_or("").to_string();
    match reply.status {
        200 => match (json["access_token"].as_str(), json["revision"].as_u64()) {
            (Some(t), Some(revision)) if !t.is_empty() => Ok(Got {
                token: Zeroizing::new(t.to_string()),
                revision,
            }),
            _ => Err(NoToken::Later(
                "the token socket's reply holds no token".into(),
            )),
        },
        503 => Err(NoToken::Later(format!("job `{job}`: {message}"))),
        403 => Err(NoToken::Refused(format!(
            "the token socket refused job `{job}` to this user: no such job, or the job's [jobs.consumers] does not list this user or group"
        ))),
        s => Err(NoToken::Refused(format!(
            "the token socket answered {s}: {message}"
        ))),
    }
}

/// `tokenwarden token JOB`: prints the current token.
pub(super) async fn token(job: &str, socket: &Path) -> anyhow::Result<u8> {
    match fetch(socket, job, None).await {
        Ok(got) => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            out.write_all(got.token.as_bytes())?;
            out.write_all(b"\n")?;
            Ok(exit::OK)
        }
        Err(NoToken::Later(m)) => {
            eprintln!("error: {m}");
            Ok(exit::RETRYABLE)
        }
        Err(NoToken::Refused(m)) => Err(anyhow!(m)),
    }
}

/// The first token, tried every second until `wait` is over.
async fn first_token(socket: &Path, job: &str, wait: Duration) -> Result<Got, NoToken> {
    // A wait too long for the clock is a wait without end.
    let deadline = tokio::time::Instant::now()
        .checked_add(wait)
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400));
    loop {
        match fetch(socket, job, None).await {
            Err(NoToken::Later(m)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!("{m}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// Watches the socket for tokens newer than `revision`, sending each.
async fn watch(socket: PathBuf, job: String, mut revision: u64, newer: mpsc::Sender<Got>) {
    loop {
        match fetch(&socket, &job, Some(revision)).await {
            Ok(got) if got.revision > revision => {
                revision = got.revision;
                if newer.send(got).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(NoToken::Later(m) | NoToken::Refused(m)) => {
                tracing::warn!("{m}; the command keeps its current token");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Starts the command, or gives the exit code a shell would: 127 not found, 126 not
/// executable.
fn spawn(args: &ExecArgs, token: &str) -> Result<tokio::process::Child, u8> {
    tokio::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .env(&args.env, token)
        .spawn()
        .map_err(|e| {
            eprintln!("error: cannot start `{}`: {e}", args.command[0]);
            match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                _ => 126,
            }
        })
}

fn send_signal(child: &tokio::process::Child, signal: Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
    }
}

/// The exit code a shell gives a process's status: its code, or 128 + the signal.
fn code_of(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(exit::FAILURE),
        (None, Some(s)) => u8::try_from((128 + s).min(255)).unwrap_or(exit::FAILURE),
        _ => exit::FAILURE,
    }
}

/// `tokenwarden exec`: runs the command with the token, follows refreshes, forwards
/// signals, and exits with the command's status.
pub(super) async fn exec(args: ExecArgs, socket: &Path) -> anyhow::Result<u8> {
    use tokio::signal::unix::{SignalKind, signal};
    if args.env.is_empty() || args.env.contains(['=', '\0']) {
        return Err(Usage(format!("--env {:?} is not a variable name", args.env)).into());
    }
    let got = match first_token(socket, &args.job, args.wait).await {
        Ok(g) => g,
        Err(NoToken::Later(m)) => {
            eprintln!("error: {m}");
            return Ok(exit::RETRYABLE);
        }
        Err(NoToken::Refused(m)) => return Err(anyhow!(m)),
    };
    let (tx, mut newer) = mpsc::channel(1);
    let watcher = tokio::spawn(watch(
        socket.to_path_buf(),
        args.job.clone(),
        got.revision,
        tx,
    ));
    // Handlers first: a signal that arrives while the command starts is passed on, not the
    // default action that would end `exec` and orphan the command.
    let forwarded = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ];
    let mut streams = Vec::new();
    for kind in forwarded {
        streams.push((kind, signal(kind)?));
    }
    let mut child = match spawn(&args, &got.token) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    drop(got);
    let code = loop {
        let next_signal = futures_util::future::select_all(
            streams
                .iter_mut()
                .map(|(kind, s)| Box::pin(async move { s.recv().await.map(|_| *kind) })),
        );
        tokio::select! {
            status = child.wait() => break code_of(status?),
            (kind, _, _) = next_signal => {
                if let Some(kind) = kind
                    && let Ok(sig) = Signal::try_from(kind.as_raw_value())
                {
                    send_signal(&child, sig);
                }
            }
            Some(got) = newer.recv() => match args.on_refresh {
                OnRefresh::Signal => {
                    tracing::info!(job = %args.job, signal = %args.signal, "new token: signalling the command");
                    send_signal(&child, args.signal);
                }
                OnRefresh::Restart => {
                    tracing::info!(job = %args.job, "new token: restarting the command");
                    send_signal(&child, Signal::SIGTERM);
                    if tokio::time::timeout(args.grace, child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                    child = match spawn(&args, &got.token) {
                        Ok(c) => c,
                        Err(code) => break code,
                    };
                }
            },
        }
    };
    watcher.abort();
    Ok(code)
}

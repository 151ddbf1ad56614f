//! On-change actions: how a consumer learns that its token changed (`on_change` of a sink or
//! a job). Either a signal to a process named by a pid file (spiffe-helper's renew signal,
//! a `nginx -s reload`), or a command run without a shell, with a timeout, its output sent
//! to the log.

use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::time::Duration;

/// Default time a command may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a command may be given.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Output of a command kept for the log, per stream.
pub const MAX_OUTPUT: usize = 16 * 1024;
/// The largest pid Linux hands out (`/proc/sys/kernel/pid_max` is at most 2^22).
const PID_MAX: i32 = 1 << 22;
/// How long reading a pid file and sending the signal may take (a FIFO never answers).
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Environment variables a command inherits from the daemon; everything else (the store
/// key, the database password) stays out of it.
const PASSED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME"];

/// What to do when a token changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `signal` to the process whose pid `pid_file` holds.
    Signal {
        /// A file holding one pid (read at every change, so a restarted consumer is found).
        pid_file: PathBuf,
        /// The signal.
        signal: Signal,
    },
    /// Run `argv` (no shell), killed after `timeout`.
    Command {
        /// The program and its arguments.
        argv: Vec<String>,
        /// How long it may take.
        timeout: Duration,
    },
}

/// Why an action failed. Holds no token (the token is never given to an action).
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The pid file could not be read or does not hold a usable pid.
    #[error("pid file {path}: {why}; no signal sent")]
    PidFile {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The signal could not be sent.
    #[error("cannot send {signal} to pid {pid}: {errno}")]
    Signal {
        /// The signal.
        signal: Signal,
        /// The process.
        pid: i32,
        /// What the kernel said.
        errno: nix::errno::Errno,
    },
    /// The command could not be started.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// argv[0].
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The command failed.
    #[error("`{program}` failed: {status}")]
    Failed {
        /// argv[0].
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// The command outlived its timeout and was killed.
    #[error("`{program}` did not finish within {}; killed", humantime::format_duration(*.timeout))]
    TimedOut {
        /// argv[0].
        program: String,
        /// The timeout.
        timeout: Duration,
    },
}

/// Parses a signal name: `HUP`, `SIGHUP` or `sighup`.
pub fn parse_signal(name: &str) -> Result<Signal, String> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    match full.parse::<Signal>() {
        // SIGKILL and SIGSTOP cannot be handled, and the terminal stop signals stop a
        // process that does not handle them: they would kill or freeze the consumer.
        Ok(
            Signal::SIGKILL | Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU,
        ) => Err(format!(
            "`{}` would kill or stop the consumer; use a reload signal such as HUP",
            crate::text::clean(name, 20)
        )),
        Ok(s) => Ok(s),
        Err(_) => Err(format!(
            "`{}` is not a signal name; use one such as HUP, USR1 or TERM",
            crate::text::clean(name, 20)
        )),
    }
}

/// The pid in a pid file: one decimal number above 1. Pid 0 and negative pids would signal a
/// whole process group or every process, and 1 is init, so they are refused.
pub fn read_pid(text: &str) -> Result<i32, String> {
    let t = text.trim();
    match t.parse::<i64>() {
        Ok(p) if (2..=i64::from(PID_MAX)).contains(&p) => Ok(p as i32),
        Ok(p) => Err(format!("holds {p}, not a process id from 2 to {PID_MAX}")),
        Err(_) => Err(format!(
            "holds `{}`, not a process id",
            crate::text::clean(t, 20)
        )),
    }
}

/// The process a pid file names, if the daemon may signal it: the file is a regular file
/// (not a FIFO that never answers, not a device), its first 64 bytes hold one pid from 2 up,
/// the pid is not the daemon's own, and unless root owns the file, the process belongs to
/// the file's owner. A consumer writes its own pid file, so without that last rule it could
/// aim the daemon's signal at any process the daemon may signal.
fn target(pid_file: &std::path::Path) -> Result<i32, String> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(pid_file)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mut head = Vec::with_capacity(64);
    file.take(64)
        .read_to_end(&mut head)
        .map_err(|e| e.to_string())?;
    let pid = read_pid(&String::from_utf8_lossy(&head))?;
    if u32::try_from(pid).ok() == Some(std::process::id()) {
        return Err(format!("holds {pid}, the daemon's own pid"));
    }
    if meta.uid() != 0 {
        let owner = std::fs::metadata(format!("/proc/{pid}"))
            .map_err(|_| format!("holds {pid}, which is not a running process"))?
            .uid();
        if owner != meta.uid() {
            return Err(format!(
                "holds {pid}, a process of uid {owner}, but the file belongs to uid {}",
                meta.uid()
            ));
        }
    }
    Ok(pid)
}

impl Action {
    /// Runs the action for `job` and logs what it did. `token` is only used to scrub a
    /// command's output before it is logged; no action receives it.
    pub async fn run(&self, job: &str, token: &secrecy::SecretString) -> Result<(), ActionError> {
        match self {
            Action::Signal { pid_file, signal } => {
                let pid_error = |why: String| ActionError::PidFile {
                    path: pid_file.clone(),
                    why,
                };
                let path = pid_file.clone();
                let pid = tokio::time::timeout(
                    SIGNAL_TIMEOUT,
                    tokio::task::spawn_blocking(move || target(&path)),
                )
                .await
                .map_err(|_| pid_error("could not be read in time".into()))?
                .map_err(|e| pid_error(e.to_string()))?
                .map_err(pid_error)?;
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), *signal).map_err(
                    |errno| ActionError::Signal {
                        signal: *signal,
                        pid,
                        errno,
                    },
                )?;
                tracing::info!(job, pid, signal = %signal, "token changed: signalled the consumer");
                Ok(())
            }
            Action::Command { argv, timeout } => run_command(job, argv, *timeout, token).await,
        }
    }
}

async fn run_command(
    job: &str,
    argv: &[String],
    timeout: Duration,
    token: &secrecy::SecretString,
) -> Result<(), ActionError> {
    use secrecy::ExposeSecret as _;
    use tokio::io::AsyncReadExt as _;
    let program = argv.first().cloned().unwrap_or_default();
    let mut command = tokio::process::Command::new(&program);
    command.args(&argv[1..]).env_clear();
    for name in PASSED_ENV {
        if let Some(v) = std::env::var_os(name) {
            command.env(name, v);
        }
    }
    let mut child = command
        .env("TOKENWARDEN_JOB", job)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ActionError::Spawn {
            program: program.clone(),
            source,
        })?;
    // Read both streams (a full pipe would block the command), keeping the first MAX_OUTPUT
    // bytes of each for the log.
    async fn capped(stream: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
        let Some(mut s) = stream else {
            return String::new();
        };
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            let room = MAX_OUTPUT.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        crate::text::clean(&String::from_utf8_lossy(&kept), MAX_OUTPUT)
    }
    let out = tokio::spawn(capped(child.stdout.take()));
    let err = tokio::spawn(capped(child.stderr.take()));
    let Ok(status) = tokio::time::timeout(timeout, child.wait()).await else {
        let _ = child.kill().await;
        out.abort();
        err.abort();
        return Err(ActionError::TimedOut { program, timeout });
    };
    let status = status.map_err(|source| ActionError::Spawn {
        program: program.clone(),
        source,
    })?;
    // A background process the command left behind may hold its pipes open: its output is
    // not waited for past a second.
    let mut collected = [String::new(), String::new()];
    for (slot, task) in collected.iter_mut().zip([out, err]) {
        let abort = task.abort_handle();
        match tokio::time::timeout(Duration::from_secs(1), task).await {
            Ok(Ok(text)) => *slot = text,
            _ => abort.abort(),
        }
    }
    // The command may print what it read (a sink file): never the token in the log.
    let mut scrub = crate::redact::Redactor::default();
    scrub.add(token.expose_secret());
    let [out, err] = collected.map(|t| scrub.redact(&t));
    if !out.is_empty() || !err.is_empty() {
        tracing::info!(job, program = %program, stdout = %out, stderr = %err, "on-change command output");
    }
    if !status.success() {
        return Err(ActionError::Failed { program, status });
    }
    tracing::info!(job, program = %program, "token changed: ran the on-change command");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> secrecy::SecretString {
        secrecy::SecretString::from("the-token-value")
    }

    #[test]
    fn pids_that_would_signal_groups_or_init_are_refused() {
        assert_eq!(read_pid("1234\n"), Ok(1234));
        assert_eq!(read_pid(" 2 "), Ok(2));
        for bad in [
            "0",
            "1",
            "-1",
            "-1234",
            "4194305",
            "99999999999999999999",
            "",
            "12a",
            "1e3",
        ] {
            assert!(read_pid(bad).is_err(), "{bad}");
        }
        assert_eq!(read_pid("4194304"), Ok(4_194_304));
    }

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("HUP"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("sigusr1"), Ok(Signal::SIGUSR1));
        assert!(parse_signal("KILL").is_err());
        assert!(parse_signal("STOP").is_err());
        assert!(parse_signal("HUPP").is_err());
        assert!(parse_signal("9").is_err());
    }

    #[tokio::test]
    async fn commands_run_without_a_shell_and_are_killed_at_their_timeout() {
        let ok = Action::Command {
            argv: vec!["sh".into(), "-c".into(), "echo hello; echo oops >&2".into()],
            timeout: Duration::from_secs(10),
        };
        ok.run("j", &tok()).await.unwrap();
        let failing = Action::Command {
            argv: vec!["false".into()],
            timeout: Duration::from_secs(10),
        };
        assert!(matches!(
            failing.run("j", &tok()).await,
            Err(ActionError::Failed { .. })
        ));
        let missing = Action::Command {
            argv: vec!["/nonexistent/reload".into()],
            timeout: Duration::from_secs(10),
        };
        assert!(matches!(
            missing.run("j", &tok()).await,
            Err(ActionError::Spawn { .. })
        ));
        let started = std::time::Instant::now();
        let slow = Action::Command {
            argv: vec!["sleep".into(), "30".into()],
            timeout: Duration::from_millis(300),
        };
        assert!(matches!(
            slow.run("j", &tok()).await,
            Err(ActionError::TimedOut { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_signal_reaches_the_process_in_the_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("got-hup");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "trap 'echo hup > {}; exit 0' HUP; while :; do sleep 0.05; done",
                marker.display()
            ))
            .spawn()
            .unwrap();
        let pid_file = dir.path().join("app.pid");
        std::fs::write(&pid_file, format!("{}\n", child.id())).unwrap();
        let action = Action::Signal {
            pid_file: pid_file.clone(),
            signal: Signal::SIGHUP,
        };
        // The trap is set once the shell runs its first line.
        tokio::time::sleep(Duration::from_millis(200)).await;
        action.run("j", &tok()).await.unwrap();
        let status = child.wait().unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "hup\n");
        std::fs::write(&pid_file, "-1").unwrap();
        assert!(matches!(
            action.run("j", &tok()).await,
            Err(ActionError::PidFile { .. })
        ));
    }

    #[test]
    fn pid_files_cannot_aim_the_signal_elsewhere() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.pid");
        // The daemon itself.
        std::fs::write(&file, std::process::id().to_string()).unwrap();
        assert!(target(&file).unwrap_err().contains("own pid"));
        // A FIFO (opened without waiting for a writer), a folder, a huge file's head.
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert!(target(&fifo).unwrap_err().contains("not a regular file"));
        assert!(target(dir.path()).is_err());
        std::fs::write(&file, format!("{}{}", "1".repeat(10), " ".repeat(1 << 20))).unwrap();
        assert!(target(&file).is_err());
        // A file owned by another user may only name that user's processes.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(&file, child.id().to_string()).unwrap();
        assert_eq!(target(&file), Ok(child.id() as i32));
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(target(&file).unwrap_err().contains("belongs to uid 65534"));
        }
        child.kill().unwrap();
        let _ = child.wait();
    }

    #[tokio::test]
    async fn commands_get_no_daemon_secrets_and_their_output_is_scrubbed() {
        // The daemon's environment holds the store key; the command must not see it.
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("env");
        let probe = Action::Command {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("env > {}; echo the-token-value", seen.display()),
            ],
            timeout: Duration::from_secs(10),
        };
        probe.run("j", &tok()).await.unwrap();
        let env = std::fs::read_to_string(&seen).unwrap();
        assert!(env.contains("TOKENWARDEN_JOB=j"), "{env}");
        assert!(
            env.lines().all(
                |l| l.split('=').next().is_some_and(|k| PASSED_ENV.contains(&k)
                    || k == "TOKENWARDEN_JOB"
                    || k == "PWD"
                    || k == "SHLVL"
                    || k == "_")
            ),
            "{env}"
        );
        // A command that leaves a background process holding its pipes still finishes.
        let started = std::time::Instant::now();
        let leaves = Action::Command {
            argv: vec!["sh".into(), "-c".into(), "sleep 20 & exit 0".into()],
            timeout: Duration::from_secs(5),
        };
        leaves.run("j", &tok()).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(4));
    }
}

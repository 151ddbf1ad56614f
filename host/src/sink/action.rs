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
    #[error("pid file {path}: {why}")]
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
        // SIGKILL and SIGSTOP cannot be handled: they would kill or freeze the consumer.
        Ok(Signal::SIGKILL | Signal::SIGSTOP) => Err(format!(
            "`{}` cannot be handled by the consumer; use a reload signal such as HUP",
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

impl Action {
    /// Runs the action for `job` and logs what it did.
    pub async fn run(&self, job: &str) -> Result<(), ActionError> {
        match self {
            Action::Signal { pid_file, signal } => {
                let pid_error = |why: String| ActionError::PidFile {
                    path: pid_file.clone(),
                    why,
                };
                let text = tokio::fs::read(pid_file)
                    .await
                    .map_err(|e| pid_error(e.to_string()))?;
                let text = String::from_utf8_lossy(&text[..text.len().min(64)]).into_owned();
                let pid = read_pid(&text).map_err(pid_error)?;
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
            Action::Command { argv, timeout } => run_command(job, argv, *timeout).await,
        }
    }
}

async fn run_command(job: &str, argv: &[String], timeout: Duration) -> Result<(), ActionError> {
    use tokio::io::AsyncReadExt as _;
    let program = argv.first().cloned().unwrap_or_default();
    let mut child = tokio::process::Command::new(&program)
        .args(&argv[1..])
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
    // Read both streams to the end (a full pipe would block the command), keeping the first
    // MAX_OUTPUT bytes of each for the log.
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
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let finished = tokio::time::timeout(timeout, async {
        let (out, err, status) = tokio::join!(capped(stdout), capped(stderr), child.wait());
        (out, err, status)
    })
    .await;
    let Ok((out, err, status)) = finished else {
        let _ = child.kill().await;
        return Err(ActionError::TimedOut { program, timeout });
    };
    let status = status.map_err(|source| ActionError::Spawn {
        program: program.clone(),
        source,
    })?;
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
        ok.run("j").await.unwrap();
        let failing = Action::Command {
            argv: vec!["false".into()],
            timeout: Duration::from_secs(10),
        };
        assert!(matches!(
            failing.run("j").await,
            Err(ActionError::Failed { .. })
        ));
        let missing = Action::Command {
            argv: vec!["/nonexistent/reload".into()],
            timeout: Duration::from_secs(10),
        };
        assert!(matches!(
            missing.run("j").await,
            Err(ActionError::Spawn { .. })
        ));
        let started = std::time::Instant::now();
        let slow = Action::Command {
            argv: vec!["sleep".into(), "30".into()],
            timeout: Duration::from_millis(300),
        };
        assert!(matches!(
            slow.run("j").await,
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
        action.run("j").await.unwrap();
        let status = child.wait().unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "hup\n");
        std::fs::write(&pid_file, "-1").unwrap();
        assert!(matches!(
            action.run("j").await,
            Err(ActionError::PidFile { .. })
        ));
    }
}

//! Tokens reaching their consumers without the store key: sink files (formats, modes,
//! atomicity under thousands of refreshes, the last good file kept through failures),
//! on-change actions, the token socket with peer credentials (a caller of another uid
//! refused), `tokenwarden token` feeding curl to the emulator's protected `/v1.0/me`, and
//! `tokenwarden exec` restarting or signalling its command.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokenwarden::daemon::{Coordination, Daemon};
use tokenwarden::emulator::{EmulatorConfig, Fault};
use tokenwarden::sink::{Action, Format, Sink, Template};
use tokenwarden::{DaemonConfig, JobConfig, SecretStore as _};
use tokenwarden_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_tokenwarden-under-test");

async fn start(jobs: Vec<JobConfig>, f: &Fixture) -> Daemon {
    let coord = Coordination {
        poll_interval: Duration::from_millis(100),
        ..Coordination::default()
    };
    Daemon::start(
        jobs,
        &DaemonConfig::default(),
        coord,
        shared_runtime(),
        f.dyn_store(),
    )
    .await
    .unwrap()
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

/// Whether `bytes` is a complete file of `format` holding a token.
fn complete(format: &str, bytes: &[u8]) -> bool {
    let text = std::str::from_utf8(bytes).unwrap_or("");
    match format {
        "raw" => !text.is_empty() && !text.contains('\n'),
        "json" => serde_json::from_str::<serde_json::Value>(text)
            .is_ok_and(|v| v["access_token"].as_str().is_some_and(|t| !t.is_empty())),
        "env" => {
            let mut lines = text.lines();
            lines.next().is_some_and(|l| {
                l.starts_with("ACCESS_TOKEN='") && l.ends_with('\'') && l.len() > 16
            }) && lines
                .next()
                .is_some_and(|l| l.starts_with("ACCESS_TOKEN_EXPIRES_AT="))
                && text.ends_with('\n')
        }
        _ => unreachable!(),
    }
}

/// Three sinks of one job while 2,000 refreshes replace them, each read in a loop by its
/// own thread: every read finds a complete file, and the files end with the stored token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_partial_or_empty_sink_during_thousands_of_refreshes() {
    let f = Fixture::new().await;
    let emulator = start_emulator().await;
    let dir = f.dir.path().join("sinks");
    std::fs::create_dir(&dir).unwrap();
    let mut job = entra_job(&emulator.authority());
    let formats = ["raw", "json", "env"];
    for (name, format) in formats.iter().zip([
        Format::Raw,
        Format::Json,
        Format::Env {
            name: "ACCESS_TOKEN".into(),
        },
    ]) {
        job.sinks.push(Sink::new(dir.join(name), format));
    }
    let daemon = start(vec![job], &f).await;
    daemon.trigger("graph").await.unwrap();
    // Sinks are written off the run path: wait for the first before counting.
    eventually(Duration::from_secs(10), "the sinks are written", || async {
        formats.iter().all(|n| dir.join(n).exists())
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for name in formats {
        let (path, stop) = (dir.join(name), stop.clone());
        readers.push(std::thread::spawn(move || {
            let (mut reads, mut changes, mut last) = (0u64, 0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        assert!(
                            complete(name, &bytes),
                            "{name}: a reader saw {:?}",
                            String::from_utf8_lossy(&bytes)
                        );
                        if bytes != last {
                            changes += 1;
                            last = bytes;
                        }
                        reads += 1;
                    }
                    Err(e) => panic!("{name}: the sink vanished: {e}"),
                }
            }
            (reads, changes)
        }));
    }
    let started = Instant::now();
    const REFRESHES: u32 = 2_000;
    for _ in 0..REFRESHES {
        let record = daemon.trigger("graph").await.unwrap();
        assert!(record.ok, "{record:?}");
    }
    let refreshing = started.elapsed();
    let stored = f.get(ACCESS_TOKEN).await.unwrap();
    // The three sinks are written one after another: wait for the last token in each, so
    // no write (or its temporary file) is still in flight below.
    eventually(
        Duration::from_secs(10),
        "the last token reaches every sink",
        || async {
            formats.iter().all(|name| {
                std::fs::read_to_string(dir.join(name)).is_ok_and(|t| t.contains(&stored))
            })
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for (name, r) in formats.iter().zip(readers) {
        let (reads, changes) = r.join().unwrap();
        println!("{name}: {reads} reads, {changes} distinct tokens seen");
        assert!(
            reads > 1_000 && changes > 10,
            "{name}: {reads} reads, {changes} changes"
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("json")).unwrap()).unwrap();
    assert_eq!(json["access_token"], stored.as_str());
    assert_eq!(json["token_type"], "Bearer");
    assert!(json["expires_in"].as_u64().unwrap() > 3_000);
    for name in formats {
        assert_eq!(mode_of(&dir.join(name)), 0o600, "{name}");
    }
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    let status = daemon.status("graph").unwrap();
    let delivery = status.delivery.unwrap();
    println!(
        "{REFRESHES} refreshes with 3 sinks in {refreshing:?} ({:?} each); sink writes {}, unchanged {}",
        refreshing / REFRESHES,
        delivery.sink_writes,
        delivery.sink_unchanged
    );
    assert_eq!(delivery.sink_failures, 0);
    assert!(delivery.sink_writes >= 3 * 100, "{delivery:?}");
    let metrics = daemon.metrics();
    assert!(metrics.contains("tokenwarden_sink_writes_total{result=\"written\"}"));
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// A daemon starting with a valid stored token writes its sinks without a run; an expired
/// one is never written; failed refreshes leave the last good file; on-change actions run
/// only when the content changed.
#[tokio::test]
async fn sinks_hold_only_good_tokens_and_actions_follow_changes() {
    let f = Fixture::new().await;
    let emulator = start_emulator_with(EmulatorConfig::default()).await;
    let dir = f.dir.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    let marker = dir.join("changes.log");
    let mut job = entra_job(&emulator.authority());
    let mut sink = Sink::new(
        dir.join("token.tpl"),
        Format::Template(Template::new("Bearer {{ access_token }}\n").unwrap()),
    );
    sink.mode = 0o640;
    sink.on_change = Some(Action::Command {
        argv: vec![
            "sh".into(),
            "-c".into(),
            format!("echo \"$TOKENWARDEN_JOB\" >> {}", marker.display()),
        ],
        timeout: Duration::from_secs(10),
    });
    job.sinks.push(sink);
    // json holds `expires_in`: still the same bytes for the same token after a restart.
    job.sinks
        .push(Sink::new(dir.join("token.json"), Format::Json));

    // An expired stored token: the catch-up run fails (the emulator is down for it), and
    // nothing is written.
    f.store
        .set(
            ACCESS_TOKEN,
            &secrecy::SecretString::from("expired-token".to_string()),
            Some(unix_now() - 10),
        )
        .await
        .unwrap();
    emulator.state.push_faults([Fault::Unavailable]);
    let mut jobs = vec![job.clone()];
    jobs[0].schedule = tokenwarden::Schedule::Every(Duration::from_secs(3600));
    let daemon = start(jobs.clone(), &f).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !dir.join("token.tpl").exists(),
        "an expired token was written"
    );
    daemon.shutdown(Duration::from_secs(5)).await;

    // A valid stored token: written at start, without a run; the action runs once.
    f.store
        .set(
            ACCESS_TOKEN,
            &secrecy::SecretString::from("stored-token".to_string()),
            Some(unix_now() + 3_600),
        )
        .await
        .unwrap();
    let daemon = start(jobs.clone(), &f).await;
    eventually(
        Duration::from_secs(5),
        "the sink is written at start",
        || async {
            std::fs::read_to_string(dir.join("token.tpl"))
                .is_ok_and(|t| t == "Bearer stored-token\n")
        },
    )
    .await;
    assert_eq!(mode_of(&dir.join("token.tpl")), 0o640);
    eventually(Duration::from_secs(5), "the action ran", || async {
        std::fs::read_to_string(&marker).is_ok_and(|t| t == "graph\n")
    })
    .await;
    assert_eq!(daemon.status("graph").unwrap().runs, 0);

    // A refresh that fails keeps the file; the next success replaces it and runs the action.
    emulator.state.push_faults([Fault::Unavailable]);
    let record = daemon.trigger("graph").await.unwrap();
    assert!(!record.ok);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        std::fs::read_to_string(dir.join("token.tpl")).unwrap(),
        "Bearer stored-token\n"
    );
    assert!(daemon.trigger("graph").await.unwrap().ok);
    let fresh = f.get(ACCESS_TOKEN).await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the new token is written",
        || async {
            std::fs::read_to_string(dir.join("token.tpl"))
                .is_ok_and(|t| t == format!("Bearer {fresh}\n"))
        },
    )
    .await;
    eventually(Duration::from_secs(5), "the action ran again", || async {
        std::fs::read_to_string(&marker).is_ok_and(|t| t == "graph\ngraph\n")
    })
    .await;
    daemon.shutdown(Duration::from_secs(5)).await;

    // Restarted with the same token: the file already holds it; no action.
    let daemon = start(jobs, &f).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivery = daemon.status("graph").unwrap().delivery.unwrap();
    assert_eq!((delivery.sink_writes, delivery.sink_unchanged), (0, 2));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "graph\ngraph\n");
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// A token written by another process (here `secrets set`-style, straight into the store)
/// reaches the sinks through the change feed, and a job-level signal reaches the consumer.
#[tokio::test]
async fn tokens_written_elsewhere_reach_the_sinks_and_signal_the_consumer() {
    let f = Fixture::new().await;
    let emulator = start_emulator().await;
    let dir = f.dir.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    let got_hup = dir.join("hup");
    let mut consumer = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap 'echo hup >> {}' HUP; while :; do sleep 0.05; done",
            got_hup.display()
        ))
        .spawn()
        .unwrap();
    let pid_file = dir.join("consumer.pid");
    std::fs::write(&pid_file, format!("{}\n", consumer.id())).unwrap();
    let mut job = entra_job(&emulator.authority());
    job.schedule = tokenwarden::Schedule::Every(Duration::from_secs(3600));
    job.sinks.push(Sink::new(dir.join("raw"), Format::Raw));
    job.on_change = Some(Action::Signal {
        pid_file,
        signal: tokenwarden::sink::action::parse_signal("HUP").unwrap(),
    });
    f.store
        .set(
            ACCESS_TOKEN,
            &secrecy::SecretString::from("first".to_string()),
            Some(unix_now() + 3_600),
        )
        .await
        .unwrap();
    // The consumer already has the stored token in its file: nothing changes at start.
    std::fs::write(dir.join("raw"), "first").unwrap();
    std::fs::set_permissions(dir.join("raw"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let daemon = start(vec![job], &f).await;
    eventually(
        Duration::from_secs(5),
        "the stored token is written",
        || async { std::fs::read_to_string(dir.join("raw")).is_ok_and(|t| t == "first") },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!got_hup.exists(), "the consumer was signalled at start");
    let delivery = daemon.status("graph").unwrap().delivery.unwrap();
    assert_eq!((delivery.sink_writes, delivery.sink_unchanged), (0, 1));
    // Another writer (a second process on the same store).
    let other = tokenwarden::SqliteStore::open(&f.store_path()).unwrap();
    other
        .set(
            ACCESS_TOKEN,
            &secrecy::SecretString::from("second".to_string()),
            Some(unix_now() + 3_600),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the other process's token is written",
        || async { std::fs::read_to_string(dir.join("raw")).is_ok_and(|t| t == "second") },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the consumer got SIGHUP",
        || async { std::fs::read_to_string(&got_hup).is_ok_and(|t| t == "hup\n") },
    )
    .await;
    consumer.kill().unwrap();
    let _ = consumer.wait();
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// The daemon as a real process with a token socket, its config in `dir`.
async fn socket_daemon(dir: &Path, authority: &str, extra_job: &str) -> (DaemonProc, PathBuf) {
    let socket = dir.join("tw.sock");
    let config = dir.join("tokenwarden.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"data/tw.db\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[socket]\npath = \"tw.sock\"\n\n{}{extra_job}",
            job_toml("graph", authority, TENANT_ID, ACCESS_TOKEN)
        ),
    )
    .unwrap();
    let daemon = DaemonProc::spawn(BIN, &config, &[]).await;
    daemon.wait_for_token("graph").await;
    (daemon, socket)
}

async fn token_cli(socket: &Path, job: &str, uid: Option<u32>) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["token", job, "--socket"])
        .arg(socket)
        .env_remove("TOKENWARDEN_CONFIG")
        .env_remove("TOKENWARDEN_STORE_KEY")
        .current_dir("/");
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.output().await.unwrap()
}

/// `tokenwarden token` through the socket feeds curl to the emulator's protected resource;
/// a caller of another uid is refused by the kernel-vouched peer credentials until the job
/// lists it.
#[tokio::test]
async fn the_token_socket_answers_only_the_callers_a_job_admits() {
    let f = Fixture::new().await;
    let emulator = start_emulator().await;
    // Other users must reach the socket's folder to be refused by the daemon (not by the
    // file system).
    std::fs::set_permissions(f.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let extra = format!(
        "\n{}[jobs.consumers]\nusers = [65534]\n",
        job_toml("shared", &emulator.authority(), TENANT_ID, "Shared Token")
    );
    let (daemon, socket) = socket_daemon(f.dir.path(), &emulator.authority(), &extra).await;

    let out = token_cli(&socket, "graph", None).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string();
    assert_eq!(token, f.get(ACCESS_TOKEN).await.unwrap());
    // A real consumer: curl with the token against the emulator's protected resource.
    // (tokio's Command: the emulator runs on this test's own thread.)
    let me = tokio::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("http://{}/v1.0/me", emulator.addr))
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&me.stdout), "200");
    // curl straight on the socket: the JSON reply.
    let raw = tokio::process::Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(&socket)
        .arg("http://localhost/tokens/graph")
        .output()
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(reply["access_token"], token.as_str());
    assert!(reply["revision"].as_u64().unwrap() > 0);

    if is_root() {
        // uid 65534 (nobody): refused `graph`, which does not list it; given `shared`.
        let refused = token_cli(&socket, "graph", Some(65534)).await;
        assert_eq!(refused.status.code(), Some(1));
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("refused"), "{err}");
        assert!(refused.stdout.is_empty());
        // An unknown job gets the same answer as a refused one.
        let unknown = token_cli(&socket, "nope", Some(65534)).await;
        assert_eq!(unknown.status.code(), Some(1));
        daemon.wait_for_token("shared").await;
        let given = token_cli(&socket, "shared", Some(65534)).await;
        assert_eq!(
            given.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&given.stderr)
        );
        assert_eq!(
            String::from_utf8(given.stdout).unwrap().trim_end(),
            f.get("Shared Token").await.unwrap()
        );
        assert!(daemon.log().contains("token socket: refused a caller"));
    } else {
        println!("not root: the other-uid caller is not tried");
    }
    let metrics = daemon.get("/metrics").await.body;
    assert!(metrics.contains("tokenwarden_token_socket_requests_total{result=\"served\"}"));
    // The token never reaches the daemon's log or its admin API.
    assert!(!daemon.log().contains(&token));
    assert!(!daemon.get("/jobs").await.body.contains(&token));
}

/// `tokenwarden exec`: the command gets the token in its environment, is restarted with the
/// new one after a refresh (or signalled, when asked), gets forwarded signals, and its exit
/// status is exec's.
#[tokio::test]
async fn exec_runs_restarts_signals_and_exits_with_the_command() {
    let f = Fixture::new().await;
    let emulator = start_emulator().await;
    let (daemon, socket) = socket_daemon(f.dir.path(), &emulator.authority(), "").await;
    let out = f.dir.path().join("seen");
    let exec = |args: Vec<String>| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg("exec")
            .arg("graph")
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .env_remove("TOKENWARDEN_CONFIG")
            .kill_on_drop(true);
        cmd
    };
    let lines = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };

    // Restart (the default).
    let mut child = exec(vec![
        "--".into(),
        "sh".into(),
        "-c".into(),
        format!(
            "echo \"$ACCESS_TOKEN\" >> {}; exec sleep 600",
            out.display()
        ),
    ])
    .spawn()
    .unwrap();
    eventually(Duration::from_secs(10), "the command starts", || async {
        lines(&out).len() == 1
    })
    .await;
    assert_eq!(lines(&out)[0], f.get(ACCESS_TOKEN).await.unwrap());
    let r = tokenwarden::cli::client::post(daemon.admin, "/jobs/graph/refresh", None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(
        Duration::from_secs(10),
        "the command restarts with the new token",
        || async { lines(&out).len() == 2 },
    )
    .await;
    let seen = lines(&out);
    assert_ne!(seen[0], seen[1]);
    assert_eq!(seen[1], f.get(ACCESS_TOKEN).await.unwrap());
    // SIGTERM to exec reaches the command; exec exits as the command did (128 + 15).
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(143));

    // Signal mode: the command is told, not restarted.
    let out2 = f.dir.path().join("signalled");
    let mut child = exec(vec![
        "--on-refresh".into(),
        "signal".into(),
        "--signal".into(),
        "USR1".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        format!(
            "trap 'echo usr1 >> {0}' USR1; echo started >> {0}; while :; do sleep 0.05; done",
            out2.display()
        ),
    ])
    .spawn()
    .unwrap();
    eventually(Duration::from_secs(10), "the command starts", || async {
        lines(&out2).len() == 1
    })
    .await;
    tokenwarden::cli::client::post(daemon.admin, "/jobs/graph/refresh", None)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the command gets USR1", || async {
        lines(&out2) == ["started", "usr1"]
    })
    .await;
    // TERM, not KILL: exec forwards it, so the command does not outlive the test (a killed
    // supervisor cannot).
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();

    // The command's own exit status.
    let status = exec(vec!["--".into(), "sh".into(), "-c".into(), "exit 7".into()])
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(7));
    // A command that does not exist: 127, as in a shell. A wait too long for the clock is
    // not a panic.
    let status = exec(vec!["--".into(), "/nonexistent/program".into()])
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(127));
    let status = exec(vec![
        "--wait".into(),
        "18446744073709551615s".into(),
        "--".into(),
        "true".into(),
    ])
    .status()
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
}

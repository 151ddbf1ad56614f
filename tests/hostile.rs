//! Hostile numbers and hostile peers: token replies with absurd lifetimes, `Retry-After`
//! values from far away, servers that echo the request, replies that try to drive the
//! terminal, config values out of range, and an admin port flooded with slow connections
//! under a low descriptor limit. Nothing may panic, spin, park a job, leak a secret or
//! starve the refreshes.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokenwarden::DaemonConfig;
use tokenwarden::daemon::{Coordination, Daemon};
use tokenwarden::schedule::Policy;
use tokenwarden::{JobConfig, PluginError, SecretStore};
use tokenwarden_tests::*;
use tokio::io::AsyncWriteExt;

const BIN: &str = env!("CARGO_BIN_EXE_tokenwarden-under-test");

fn policy() -> DaemonConfig {
    DaemonConfig {
        policy: Policy {
            refresh_lead: Duration::from_secs(1),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(2),
            permanent_retry_initial: Duration::from_secs(1),
            permanent_retry_max: Duration::from_secs(2),
            min_interval: Duration::from_secs(1),
            ..Policy::default()
        },
        ..DaemonConfig::default()
    }
}

async fn daemon(jobs: Vec<JobConfig>, config: &DaemonConfig, f: &Fixture) -> Daemon {
    let runtime = Arc::new(tokenwarden::Runtime::new(pooled()).unwrap());
    let coord = Coordination {
        poll_interval: Duration::from_millis(200),
        ..Coordination::default()
    };
    Daemon::start(jobs, config, coord, runtime, f.dyn_store())
        .await
        .unwrap()
}

fn job_for(name: &str, server: &ScriptedServer) -> JobConfig {
    let mut job = url_job(&server.url("/token"), "api");
    job.name = name.into();
    job.secrets.access_token = format!("token of {name}");
    job
}

/// Lifetimes from absurd to none: the daemon neither panics nor spins nor parks a job;
/// each token's believed lifetime is clamped to `max_token_lifetime`; a manual trigger
/// still works and readiness tells the truth.
#[tokio::test]
async fn absurd_lifetimes_neither_crash_nor_spin_nor_park_the_daemon() {
    let replies = [
        (
            "u64max",
            r#"{"access_token":"A","expires_in":18446744073709551615}"#,
        ),
        ("float", r#"{"access_token":"A","expires_in":1e300}"#),
        (
            "string",
            r#"{"access_token":"A","expires_in":"18446744073709551615"}"#,
        ),
        (
            "millis",
            r#"{"access_token":"A","expires_in":1764000000000}"#,
        ),
        ("zero", r#"{"access_token":"A","expires_in":0}"#),
        ("one", r#"{"access_token":"A","expires_in":1}"#),
        (
            "refresh-in-zero",
            r#"{"access_token":"A","expires_in":3600,"refresh_in":0}"#,
        ),
    ];
    let f = Fixture::new().await;
    let mut servers = Vec::new();
    let mut jobs = Vec::new();
    for (name, body) in replies {
        let server = ScriptedServer::start(vec![Scripted::json(200, body)]).await;
        jobs.push(job_for(name, &server));
        servers.push((name, server));
    }
    let d = daemon(jobs, &policy(), &f).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let now = tokenwarden_tests::unix_now();
    for (name, server) in &servers {
        let requests = server.received().len();
        // Catch-up, then at most one run a second (`min_interval`).
        assert!(
            (1..=5).contains(&requests),
            "{name}: {requests} requests in 3.5 s"
        );
        // Not stuck in a run; a job whose token lives 0 or 1 s runs every second, so it
        // may be caught mid-run (a few milliseconds): it must finish.
        eventually(Duration::from_secs(2), "the run ends", || async {
            !d.status(name).unwrap().running
        })
        .await;
        let s = d.status(name).unwrap();
        if let Some(at) = s.token_expires_at {
            assert!(
                at <= now + 24 * 3600 + 5,
                "{name}: lifetime clamped to a day: {at}"
            );
        }
        assert!(
            s.next_run_at <= now + 12 * 3600 + 5,
            "{name}: never parked: {s:?}"
        );
        let r = d.trigger(name).await.expect("a manual trigger still works");
        assert!(r.ok, "{name}: {r:?}");
    }
    // Tokens with a lifetime in the future count as ready; 0 and 1 s ones expire at once.
    let not_ready = d.not_ready();
    for name in ["u64max", "float", "string", "millis", "refresh-in-zero"] {
        assert!(
            !not_ready.contains(&name.to_string()),
            "{name}: {not_ready:?}"
        );
    }
    assert!(
        d.metrics()
            .contains("tokenwarden_internal_errors_total{component=\"run\"} 0")
    );
    d.shutdown(Duration::from_secs(5)).await;

    // The CLI lists a stored expiry past year 9999 instead of panicking.
    f.store
        .set(
            "far",
            &secrecy::SecretString::from("x".to_string()),
            Some(u64::MAX),
        )
        .await
        .unwrap();
    let cfg = f.dir.path().join("tokenwarden.toml");
    std::fs::write(&cfg, "[store]\npath = \"data/tw.db\"\n").unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["secrets", "list", "--config"])
        .arg(&cfg)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("9999-12-31T23:59:59Z"));
}

/// A 429 with `Retry-After: 4294967295` is honoured only up to the point where the token
/// needs replacing; an HTTP-date `Retry-After` is honoured to the second.
#[tokio::test]
async fn retry_after_is_bounded_and_understood_as_a_date() {
    let f = Fixture::new().await;
    let mut config = policy();
    config.policy.max_retry_after = Duration::from_secs(24 * 3600);
    config.policy.throttle_default = Duration::from_secs(30);
    let throttled = |retry_after: String| Scripted {
        headers: vec![
            ("content-type", "application/json".into()),
            ("retry-after", retry_after),
        ],
        ..Scripted::json(429, r#"{"error":"temporarily_unavailable"}"#)
    };
    let ok = Scripted::json(200, r#"{"access_token":"A","expires_in":4}"#);
    let started = SystemTime::now();
    let century =
        ScriptedServer::start(vec![ok.clone(), throttled("4294967295".into()), ok.clone()]).await;
    // The first request of this job is throttled until a date a few seconds away (the run
    // comes after the daemon's start-up, well before the date).
    let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(8));
    let date = ScriptedServer::start(vec![throttled(soon), ok]).await;
    let d = daemon(
        vec![job_for("century", &century), job_for("date", &date)],
        &config,
        &f,
    )
    .await;
    eventually(
        Duration::from_secs(12),
        "both jobs recovered from their 429",
        || async { century.received().len() >= 3 && date.received().len() >= 2 },
    )
    .await;
    let at = |s: &ScriptedServer, i: usize| s.received()[i].at;
    // The 4 s token needs replacing a second before it expires: the retry came then, not
    // in 136 years.
    let century_wait = at(&century, 2).duration_since(at(&century, 1)).unwrap();
    assert!(century_wait < Duration::from_secs(3), "{century_wait:?}");
    // The date said eight seconds from the start; the default would have been 30 s, an
    // ignored header the 200 ms minimum.
    let date_wait = at(&date, 1).duration_since(at(&date, 0)).unwrap();
    let until_date =
        Duration::from_secs(8).saturating_sub(at(&date, 0).duration_since(started).unwrap());
    assert!(
        date_wait + Duration::from_millis(1100) >= until_date
            && date_wait <= until_date + Duration::from_millis(2000),
        "waited {date_wait:?}; the date was {until_date:?} away"
    );
    d.shutdown(Duration::from_secs(5)).await;
}

/// A server (or a proxy in front of it) that echoes the request: the client secret, raw,
/// form-encoded, JSON-escaped or inside the Basic header's base64, never reaches an error,
/// a record, a report or the log.
#[tokio::test]
async fn echoed_credentials_never_reach_any_output() {
    let echo = |status| Scripted {
        echo: true,
        ..Scripted::json(
            status,
            r#"{"error":"invalid_client","error_description":"body was {body}; auth was {authorization}"}"#,
        )
    };
    let server = ScriptedServer::start(vec![echo(401)]).await;
    let f = Fixture::new().await;
    let form: String =
        form_urlencoded::byte_serialize(tokenwarden::emulator::DEMO_CLIENT_SECRET.as_bytes())
            .collect();
    for auth in [
        tokenwarden::ClientAuth::ClientSecretPost,
        tokenwarden::ClientAuth::ClientSecretBasic,
    ] {
        let mut job = url_job(&server.url("/token"), "api");
        job.client_auth = auth;
        let e = runtime()
            .run(&job, f.dyn_store())
            .await
            .expect_err("rejected");
        let record = tokenwarden::daemon::ErrorRecord::of(&e);
        let texts = [
            e.to_string(),
            format!("{e:?}"),
            serde_json::to_string(&record).unwrap(),
        ];
        let basic = server.received().last().unwrap().header("authorization");
        for t in &texts {
            assert!(
                t.contains("[redacted]"),
                "{auth:?}: the echo was masked: {t}"
            );
            for leak in [
                Some(tokenwarden::emulator::DEMO_CLIENT_SECRET),
                Some(form.as_str()),
                basic.as_deref().and_then(|b| b.strip_prefix("Basic ")),
            ]
            .into_iter()
            .flatten()
            {
                assert!(!t.contains(leak), "{auth:?}: leaked {leak} in {t}");
            }
        }
    }
}

/// A token type with terminal escapes and a newline cannot clear a screen or forge a line.
#[tokio::test]
async fn replies_cannot_drive_the_terminal() {
    let server = ScriptedServer::start(vec![Scripted::json(
        200,
        "{\"access_token\":\"A\",\"expires_in\":60,\"token_type\":\"Bearer\\u001b[2J\\nrefreshed `x`: FORGED\"}",
    )])
    .await;
    let f = Fixture::new().await;
    let cfg = f.dir.path().join("tokenwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\npath = \"data/tw.db\"\n[[jobs]]\nname = \"x\"\ntoken_url = \"{}\"\nscope = \"api\"\n[jobs.secrets]\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\naccess_token = \"{ACCESS_TOKEN}\"\n",
            server.url("/token")
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["refresh", "x", "--config"])
        .arg(&cfg)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(!stdout.contains('\u{1b}'), "{stdout:?}");
    assert!(stdout.contains("\\u{1b}[2J\\u{a}refreshed"), "{stdout:?}");
}

/// A name that resolves to loopback, listed by name only, is refused with a message that
/// says why (the plugin cannot tell it apart from an unlisted origin otherwise).
#[tokio::test]
async fn a_name_resolving_to_loopback_says_why_it_was_refused() {
    let server = ScriptedServer::start(vec![Scripted::json(200, "{}")]).await;
    let f = Fixture::new().await;
    let url = format!("http://localhost:{}/token", server.addr.port());
    let mut job = url_job(&url, "api");
    job.allowed_hosts = vec![
        tokenwarden::egress::Origin::parse(&format!("http://localhost:{}", server.addr.port()))
            .unwrap(),
    ];
    let e = plugin_error(runtime().run(&job, f.dyn_store()).await);
    match e {
        PluginError::EgressDenied(why) => assert!(why.contains("resolves only to"), "{why}"),
        other => panic!("{other:?}"),
    }
}

async fn cli(config: &Path, args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}

/// Out-of-range config values are refused when the file loads (exit 2, file, line, key);
/// an endless config file is refused after a bound; invalid UTF-8 on stdin is a usage
/// error.
#[tokio::test]
async fn bad_input_is_refused_up_front_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tokenwarden.toml");
    let job = "[[jobs]]\nname = \"j\"\nscope = \"s\"\ntoken_url = \"https://idp.example/t\"\n";
    let secrets =
        "[jobs.secrets]\nclient_id = \"i\"\nclient_secret = \"s\"\naccess_token = \"t\"\n";
    let cases = [
        (
            format!("[limits]\nmax_memory = \"16 EiB\"\n{job}{secrets}"),
            "limits.max_memory",
            2,
        ),
        (
            format!("{job}timeout = \"18446744073709551615s\"\n{secrets}"),
            "timeout",
            5,
        ),
        (
            format!("[limits]\nmax_response_headers = 9223372036854775807\n{job}{secrets}"),
            "max_response_headers",
            2,
        ),
        (
            format!("[daemon]\nthrottle_default = \"18446744073709551615s\"\n{job}{secrets}"),
            "throttle_default",
            2,
        ),
        (
            format!("{job}allowed_hosts = [\"https://other.example\"]\n{secrets}"),
            "allowed_hosts",
            4,
        ),
        (
            format!("{job}token_params = {{ client_secret = \"x\" }}\n{secrets}"),
            "token_params",
            5,
        ),
        (
            job.replace("https://idp.example/t", "http://2130706433/t") + secrets,
            "127.0.0.1",
            4,
        ),
    ];
    for (text, key, line) in cases {
        std::fs::write(&cfg, &text).unwrap();
        let out = cli(&cfg, &["config", "check"], b"").await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {err}");
        assert!(
            err.contains(&cfg.display().to_string())
                && err.contains(&format!("line {line}"))
                && err.contains(key),
            "{key}: {err}"
        );
    }
    let out = cli(Path::new("/dev/zero"), &["config", "check"], b"").await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&cfg, "[store]\npath = \"tw.db\"\n").unwrap();
    let out = cli(&cfg, &["secrets", "set", "x"], &[0xff, 0xfe, b'a']).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("UTF-8"));
    // A missing config says how to make one.
    let out = cli(&dir.path().join("nope.toml"), &["status"], b"").await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tokenwarden init"), "{err}");
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "each OS error once: {err}"
    );
}

/// Hundreds of connections that dribble a partial request head, against a daemon limited
/// to 128 file descriptors: refreshes carry on, the admin port serves again as soon as the
/// slow ones time out, and the daemon does not spin.
#[tokio::test]
async fn slow_admin_connections_cannot_starve_refreshes() {
    let emu = start_emulator_with(tokenwarden::emulator::EmulatorConfig {
        token_lifetime: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let f = Fixture::new().await;
    let cfg = f.dir.path().join("tokenwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\npath = \"data/tw.db\"\n[admin]\nlisten = \"127.0.0.1:0\"\nheader_timeout = \"2s\"\nmax_connections = 512\n\
             [daemon]\nrefresh_lead = \"1s\"\nmin_interval = \"1s\"\n{}",
            job_toml("graph", &emu.authority(), TENANT_ID, ACCESS_TOKEN)
        ),
    )
    .unwrap();
    let d = DaemonProc::spawn_with_nofile(BIN, &cfg, 128).await;
    eventually(Duration::from_secs(5), "ready", || async {
        d.get("/readyz").await.status == 200
    })
    .await;
    // 400 connections, each sending part of a request head and then a byte a second.
    let mut slow = Vec::new();
    for _ in 0..400 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(d.admin).await {
            let _ = s
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await;
            slow.push(s);
        }
    }
    let dribble = tokio::spawn(async move {
        for _ in 0..8 {
            for s in &mut slow {
                let _ = s.write_all(b"a").await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        slow
    });
    let before = emu.state.stats().tokens_issued;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = emu.state.stats().tokens_issued - before;
    assert!(
        during >= 3,
        "refreshes carried on under the flood: {during} in 6 s"
    );
    // The slow connections time out after 2 s each; a fresh request is served.
    eventually(Duration::from_secs(6), "/healthz answers again", || async {
        matches!(
            tokio::time::timeout(
                Duration::from_secs(1),
                tokenwarden::cli::client::get(d.admin, "/healthz", None)
            )
            .await,
            Ok(Ok(r)) if r.status == 200
        )
    })
    .await;
    drop(dribble.await);
    let log = d.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.matches("cannot accept connections").count() <= 3,
        "no accept spin: {log}"
    );
    assert!(log.contains("admin API: max_connections lowered"), "{log}");
}

/// A transport that panics on its first `n` requests, then sends for real.
struct Panicky {
    left: std::sync::atomic::AtomicU32,
    net: tokenwarden::NetTransport,
}

impl tokenwarden::egress::Transport for Panicky {
    fn send(
        &self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: wasmtime_wasi_http::RequestOptions,
        allowed: Arc<Vec<tokenwarden::egress::Origin>>,
        limits: tokenwarden::egress::HttpLimits,
    ) -> tokenwarden::egress::SendFuture {
        use std::sync::atomic::Ordering;
        if self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("an injected bug in the transport");
        }
        self.net.send(request, options, allowed, limits)
    }
}

/// A bug that panics in the middle of a run does not take the job down: the run is
/// recorded as failed (class `internal`) in `/jobs` and metrics, and the job is retried.
#[tokio::test]
async fn a_panic_in_a_run_is_reported_and_the_job_carries_on() {
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    let runtime = Arc::new(
        tokenwarden::Runtime::new(tokenwarden::RuntimeOptions {
            transport: Some(Arc::new(Panicky {
                left: 2.into(),
                net: Default::default(),
            })),
            ..pooled()
        })
        .unwrap(),
    );
    let d = Daemon::start(
        vec![entra_job(&emu.authority())],
        &policy(),
        Coordination::default(),
        runtime,
        f.dyn_store(),
    )
    .await
    .unwrap();
    let mut events = d.subscribe();
    let first = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    let error = first
        .record
        .error
        .clone()
        .expect("the panicking run failed");
    assert_eq!(error.class, "internal", "{error:?}");
    assert_eq!(
        d.status("graph")
            .unwrap()
            .last_run
            .unwrap()
            .error
            .unwrap()
            .class,
        "internal"
    );
    eventually(Duration::from_secs(10), "the job recovers", || async {
        d.status("graph").unwrap().consecutive_failures == 0 && d.not_ready().is_empty()
    })
    .await;
    assert!(
        d.metrics()
            .contains("tokenwarden_internal_errors_total{component=\"run\"} 2"),
        "{}",
        d.metrics()
    );
    d.shutdown(Duration::from_secs(5)).await;
}

/// `secrets get`, `secrets list` and `status` work for a user who can read the store's
/// files but not write them or their folder.
#[tokio::test]
async fn a_reader_need_not_be_a_writer() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("twro").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let cfg = home.join("tokenwarden.toml");
    std::fs::write(&cfg, "[store]\npath = \"data/tw.db\"\n").unwrap();
    {
        let store = tokenwarden::SqliteStore::open(&home.join("data/tw.db")).unwrap();
        store
            .set(
                "readable",
                &secrecy::SecretString::from("the value".to_string()),
                Some(4_102_444_800),
            )
            .await
            .unwrap();
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .unwrap()
        .stdout
        == b"0\n";
    let reader: Vec<&str> = if root {
        // Root ignores file modes: the reader is another user, owning read-only files.
        std::process::Command::new("chown")
            .args(["-R", "nobody"])
            .arg(&home)
            .status()
            .unwrap();
        vec!["runuser", "-u", "nobody", "--"]
    } else {
        Vec::new()
    };
    for entry in walk(&home) {
        let mode = if entry.is_dir() { 0o500 } else { 0o400 };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let run = |args: &[&str]| {
        let mut argv: Vec<String> = reader.iter().map(|s| s.to_string()).collect();
        argv.push(BIN.into());
        argv.extend(args.iter().map(|s| s.to_string()));
        argv.push("--config".into());
        argv.push(cfg.display().to_string());
        std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .unwrap()
    };
    let get = run(&["secrets", "get", "readable"]);
    assert_eq!(
        get.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert_eq!(get.stdout, b"the value");
    for args in [&["secrets", "list"][..], &["status"][..]] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for entry in walk(&home) {
        let _ = std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o700));
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

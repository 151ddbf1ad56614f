//! Adversarial tests: misbehaving guests and hostile servers fail their run with a typed
//! reason, the host carries on, and no secret reaches a log line, an error or an output.
//! Logs are captured at TRACE level for the whole binary.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokenwarden::egress::{HttpLimits, Origin};
use tokenwarden::emulator::{self, Fault};
use tokenwarden::{JobConfig, Runtime};
use tokenwarden::{PluginError, RunError};
use tokenwarden_tests::*;
use tracing_subscriber::Layer as _;

/// Everything every test of this binary logged.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        // The product's own filter, asked for everything, including the capped loggers.
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || Capture(writer.clone()))
            .with_filter(tokenwarden::cli::log_filter(
                "trace,wasmtime_wasi::p2=trace,hyper::proto=trace",
            ));
        tracing_subscriber::registry().with(layer).init();
        buf
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

fn rogue(scope: &str, allowed: &[String]) -> JobConfig {
    let mut job = entra_job("http://127.0.0.1:9");
    job.scope = scope.into();
    job.plugin = Some(ROGUE_COMPONENT.into());
    job.allowed_hosts = allowed.iter().map(|o| Origin::parse(o).unwrap()).collect();
    job
}

async fn run_on(
    rt: &Runtime,
    job: &JobConfig,
    f: &Fixture,
) -> Result<tokenwarden::RunReport, RunError> {
    logs();
    rt.run(job, f.dyn_store()).await
}

#[tokio::test]
async fn a_guest_cannot_reach_a_non_allowed_origin() {
    let allowed = ScriptedServer::start(vec![Scripted::json(200, "{}")]).await;
    let other = ScriptedServer::start(vec![Scripted::json(200, "{}")]).await;
    let f = Fixture::new().await;
    let origins = [format!("http://{}", allowed.addr)];
    let ok = run_on(
        runtime(),
        &rogue(&format!("http:{}", allowed.url("/x")), &origins),
        &f,
    )
    .await;
    assert_eq!(ok.unwrap().outcome.token_type, "status:200");
    let e = plugin_error(
        run_on(
            runtime(),
            &rogue(&format!("http:{}", other.url("/x")), &origins),
            &f,
        )
        .await,
    );
    assert!(matches!(e, PluginError::EgressDenied(_)), "{e:?}");
    assert!(other.received().is_empty());
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_unless_the_address_is_allowed() {
    let server = ScriptedServer::start(vec![Scripted::json(200, "{}")]).await;
    let port = server.addr.port();
    let f = Fixture::new().await;
    let by_name = format!("http:http://localhost:{port}/x");
    let e = plugin_error(
        run_on(
            runtime(),
            &rogue(&by_name, &[format!("http://localhost:{port}")]),
            &f,
        )
        .await,
    );
    assert!(matches!(e, PluginError::EgressDenied(_)), "{e:?}");
    assert!(server.received().is_empty(), "no connection was made");
    // Allowing the address's own origin lets it through.
    let both = [
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{port}"),
    ];
    assert_eq!(
        run_on(runtime(), &rogue(&by_name, &both), &f)
            .await
            .unwrap()
            .outcome
            .token_type,
        "status:200"
    );
}

#[tokio::test]
async fn extreme_guest_timeouts_neither_panic_nor_escape_the_host_bound() {
    let mut slow = Scripted::json(200, "{}");
    slow.delay = Duration::from_secs(3);
    let server = ScriptedServer::start(vec![slow]).await;
    let f = Fixture::new().await;
    let origins = [format!("http://{}", server.addr)];
    for mode in ["http-zero-timeout", "http-huge-timeout", "http"] {
        let mut job = rogue(&format!("{mode}:{}", server.url("/")), &origins);
        job.limits.http = HttpLimits {
            connect_timeout: Duration::from_millis(500),
            first_byte_timeout: Duration::from_millis(500),
            between_bytes_timeout: Duration::from_millis(500),
            ..HttpLimits::default()
        };
        runtime().preload(&job).unwrap();
        let started = std::time::Instant::now();
        let e = plugin_error(run_on(runtime(), &job, &f).await);
        assert!(matches!(e, PluginError::Transport(_)), "{mode}: {e:?}");
        // The host's 500 ms first-byte bound holds whatever the guest asked.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{mode}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn header_floods_and_host_headers_are_refused() {
    // wasmtime-wasi-http traps a guest whose fields exceed its size limit.
    let flood = run_on(
        runtime(),
        &rogue("header-flood:http://127.0.0.1:9/", &[]),
        &Fixture::new().await,
    )
    .await;
    assert!(
        matches!(flood, Err(RunError::Trap(ref m)) if m.contains("fields exceeds limit")),
        "{flood:?}"
    );

    // Headers that would pick another destination or desync the connection are refused in
    // the guest, before anything is sent.
    let server = ScriptedServer::start(vec![Scripted::json(200, "{}")]).await;
    let origins = [format!("http://{}", server.addr)];
    for header in [
        "host=169.254.169.254",
        "Host=metadata.internal",
        "transfer-encoding=chunked",
        "connection=upgrade",
    ] {
        let mode = format!("header:{header}:{}", server.url("/"));
        let e =
            plugin_error(run_on(runtime(), &rogue(&mode, &origins), &Fixture::new().await).await);
        assert!(
            matches!(e, PluginError::BadRequest(ref m) if m.contains("Forbidden")),
            "{header}: {e:?}"
        );
    }
    assert!(server.received().is_empty(), "nothing was sent");
    // An ordinary header is fine, so the refusals above are about the names.
    let ok = run_on(
        runtime(),
        &rogue(&format!("header:x-trace=1:{}", server.url("/")), &origins),
        &Fixture::new().await,
    )
    .await;
    assert_eq!(ok.unwrap().outcome.token_type, "status:200");

    // A server flooding headers: the host refuses the response.
    let reply = Scripted::json(200, r#"{"access_token":"t"}"#).with_extra_headers(150);
    let server = ScriptedServer::start(vec![reply]).await;
    let f = Fixture::new().await;
    let e = plugin_error(run_on(runtime(), &url_job(&server.url("/token"), "api"), &f).await);
    assert!(matches!(e, PluginError::Transport(_)), "{e:?}");
    assert!(f.get(ACCESS_TOKEN).await.is_none());

    // A job's own lower header cap holds (hyper's default is 100): 30 headers pass the
    // default limits and fail a job allowing 20.
    let reply = Scripted::json(200, r#"{"access_token":"t"}"#).with_extra_headers(30);
    let server = ScriptedServer::start(vec![reply.clone(), reply]).await;
    let job = url_job(&server.url("/token"), "api");
    run_on(runtime(), &job, &Fixture::new().await)
        .await
        .unwrap();
    let mut strict = job;
    strict.limits.http.max_response_headers = 20;
    let e = plugin_error(run_on(runtime(), &strict, &f).await);
    assert!(matches!(e, PluginError::Transport(_)), "{e:?}");
    assert!(f.get(ACCESS_TOKEN).await.is_none());
}

#[tokio::test]
async fn response_bodies_over_the_host_cap_are_refused() {
    // 24 KiB: well within the plugin's own 256 KiB bound and the default 1 MiB host cap.
    let body = format!(
        r#"{{"access_token":"{}","token_type":"Bearer","expires_in":3600}}"#,
        "a".repeat(24 * 1024)
    );
    let declared = ScriptedServer::start(vec![Scripted::json(200, &body)]).await;
    // Chunked, with no Content-Length: only the host's running count can bound it.
    let chunked = ScriptedServer::start(vec![Scripted {
        chunked: true,
        ..Scripted::json(200, &body)
    }])
    .await;
    for url in [declared.url("/token"), chunked.url("/token")] {
        let job = url_job(&url, "api");
        let f = Fixture::new().await;
        run_on(runtime(), &job, &f).await.unwrap();
        assert_eq!(f.get(ACCESS_TOKEN).await.unwrap().len(), 24 * 1024, "{url}");

        // A job allowing 16 KiB: refused, by the declared length or by the running count.
        let mut strict = job;
        strict.limits.http.max_response_body = 16 * 1024;
        let f = Fixture::new().await;
        let e = plugin_error(run_on(runtime(), &strict, &f).await);
        assert!(
            matches!(e, PluginError::Transport(ref m) if m.replace('-', " ").contains("body size")),
            "{url}: {e:?}"
        );
        assert!(f.get(ACCESS_TOKEN).await.is_none(), "{url}");
    }
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target =
        ScriptedServer::start(vec![Scripted::json(200, r#"{"access_token":"stolen"}"#)]).await;
    let mut redirect = Scripted::json(302, "");
    redirect.headers.push(("location", target.url("/token")));
    let server = ScriptedServer::start(vec![redirect]).await;
    let f = Fixture::new().await;
    let mut job = url_job(&server.url("/token"), "api");
    job.allowed_hosts = vec![
        Origin::parse(&format!("http://{}", server.addr)).unwrap(),
        Origin::parse(&format!("http://{}", target.addr)).unwrap(),
    ];
    let e = plugin_error(run_on(runtime(), &job, &f).await);
    assert!(
        matches!(e, PluginError::InvalidResponse(ref m) if m.contains("redirect")),
        "{e:?}"
    );
    assert!(target.received().is_empty());
}

#[tokio::test]
async fn resource_floods_and_huge_secrets_fail_the_run_only() {
    let f = Fixture::new().await;
    f.set(ACCESS_TOKEN, "previous-token").await;
    let e = run_on(runtime(), &rogue("handle-flood", &[]), &f)
        .await
        .unwrap_err();
    assert!(matches!(e, RunError::Trap(_)), "{e:?}");
    let e = plugin_error(run_on(runtime(), &rogue("huge-secret", &[]), &f).await);
    assert!(
        matches!(e, PluginError::SecretStore(ref m) if m.contains("larger than")),
        "{e:?}"
    );
    assert_eq!(f.get(ACCESS_TOKEN).await.as_deref(), Some("previous-token"));
    // The host carries on.
    let emu = start_emulator().await;
    run_on(runtime(), &entra_job(&emu.authority()), &f)
        .await
        .unwrap();
}

#[tokio::test]
async fn guest_output_goes_to_the_log_capped_and_scrubbed() {
    let f = Fixture::new().await;
    let mut job = rogue("leak", &[]);
    job.name = "leaky".into();
    run_on(runtime(), &job, &f).await.unwrap();
    let logs = log_text();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("plugin output") && l.contains("leaky"))
        .collect();
    assert_eq!(lines.len(), 2, "stdout and stderr: {lines:?}");
    for line in lines {
        assert!(line.contains("[redacted]"), "{line}");
        assert!(line.contains("dropped_bytes="), "{line}");
        assert!(line.len() < 40 * 1024, "capped: {}", line.len());
    }
    assert!(!logs.contains(emulator::DEMO_CLIENT_SECRET));
}

/// Runs success and every failure class with TRACE logging, then looks for the client
/// secret (raw and form-encoded) and every issued token in logs, errors and reports.
#[tokio::test]
async fn canary_no_secret_in_logs_errors_or_reports() {
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    let job = entra_job(&emu.authority());
    let mut texts = Vec::new();
    let mut tokens = Vec::new();
    let record = |r: Result<tokenwarden::RunReport, RunError>, texts: &mut Vec<String>| match r {
        Ok(report) => texts.push(format!(
            "{report:?} {}",
            serde_json::to_string(&report).unwrap()
        )),
        Err(e) => texts.push(format!(
            "{e} {e:?} {}",
            serde_json::to_string(&tokenwarden::daemon::ErrorRecord::of(&e)).unwrap()
        )),
    };
    record(run_on(runtime(), &job, &f).await, &mut texts);
    tokens.push(f.get(ACCESS_TOKEN).await.unwrap());
    let mut basic = job.clone();
    basic.client_auth = tokenwarden::ClientAuth::ClientSecretBasic;
    record(run_on(runtime(), &basic, &f).await, &mut texts);
    tokens.push(f.get(ACCESS_TOKEN).await.unwrap());
    for fault in [
        Fault::Status { status: 503 },
        Fault::Unavailable,
        Fault::Throttle {
            retry_after: Some(3),
        },
        Fault::Malformed,
        Fault::EmptyToken,
        Fault::MissingToken,
    ] {
        emu.state.push_faults([fault]);
        record(run_on(runtime(), &job, &f).await, &mut texts);
    }
    let mut slow = job.clone();
    slow.timeout = Duration::from_millis(300);
    emu.state.push_faults([Fault::Delay { ms: 1000 }]);
    record(run_on(runtime(), &slow, &f).await, &mut texts);
    let mut denied = job.clone();
    denied.allowed_hosts = vec![Origin::parse("https://login.microsoftonline.com").unwrap()];
    record(run_on(runtime(), &denied, &f).await, &mut texts);
    let wrong = Fixture::new().await;
    wrong.set(CLIENT_SECRET, "wrong-canary-secret-value").await;
    record(run_on(runtime(), &job, &wrong).await, &mut texts);
    for mode in ["leak", "leak-error", "leak-outcome"] {
        record(run_on(runtime(), &rogue(mode, &[]), &f).await, &mut texts);
    }

    let encoded: String =
        form_urlencoded::byte_serialize(emulator::DEMO_CLIENT_SECRET.as_bytes()).collect();
    let mut needles = vec![
        emulator::DEMO_CLIENT_SECRET.to_string(),
        encoded,
        "wrong-canary-secret-value".to_string(),
    ];
    needles.extend(tokens);
    let haystacks = [log_text(), texts.join("\n")];
    assert!(
        haystacks[0].contains("TRACE") || haystacks[0].contains("DEBUG"),
        "trace logging was on"
    );
    for hay in &haystacks {
        for line in hay
            .lines()
            .filter(|l| needles.iter().any(|n| l.contains(n.as_str())))
            .take(5)
        {
            eprintln!("LEAK LINE: {}", &line[..line.len().min(400)]);
        }
        for needle in &needles {
            assert!(
                !hay.contains(needle.as_str()),
                "a secret leaked: {}",
                &needle[..8.min(needle.len())]
            );
        }
    }
}

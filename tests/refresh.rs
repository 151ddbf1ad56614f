//! End to end: the built-in component (and the rogue test guest) in the real host library,
//! against the emulator and a scripted server on 127.0.0.1, with a real SQLite store.

use std::sync::Arc;
use std::time::Duration;
use tokenwarden::emulator::{self, Fault};
use tokenwarden::{JobConfig, SecretStore};
use tokenwarden::{PluginError, Retry, RunError};
use tokenwarden_tests::unix_now;
use tokenwarden_tests::*;

async fn run(job: &JobConfig, f: &Fixture) -> Result<tokenwarden::RunReport, RunError> {
    runtime().run(job, f.dyn_store()).await
}

#[tokio::test]
async fn success_stores_an_accepted_token_with_its_expiry() {
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    let report = run(&entra_job(&emu.authority()), &f).await.unwrap();
    let o = &report.outcome;
    assert_eq!(o.token_type, "Bearer");
    assert_eq!(o.expires_in, Some(3599));
    assert_eq!(o.ext_expires_in, Some(3599));
    let now = unix_now();
    let expires_at = o.expires_at.unwrap();
    assert!(
        expires_at.abs_diff(now + 3599) <= 2,
        "{expires_at} vs {now}"
    );
    assert_eq!(report.token_secret, ACCESS_TOKEN);
    // The suite runs the world `$TOKENWARDEN_WASI` names (`.ci/run` runs it for both).
    assert_eq!(report.wasi, tokenwarden_tests::wasi());

    let stored = f.store.get(ACCESS_TOKEN).await.unwrap().unwrap();
    assert_eq!(stored.meta.expires_at, Some(expires_at));
    assert!(stored.meta.updated_at.abs_diff(now) <= 2);
    let token = f.get(ACCESS_TOKEN).await.unwrap();
    assert_eq!(token.split('.').count(), 3, "JWT-shaped");
    assert_eq!(get_with_bearer(emu.addr, "/v1.0/me", &token).await, 200);
    assert_eq!(get_with_bearer(emu.addr, "/v1.0/me", "forged").await, 401);
    // The token never crosses back to the host in the outcome.
    assert!(!format!("{report:?}").contains(&token));
}

#[tokio::test]
async fn wrong_secret_is_rejected_with_entra_diagnostics_and_keeps_the_old_token() {
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    f.set(ACCESS_TOKEN, "previous-good-token").await;
    f.set(CLIENT_SECRET, "wrong-secret-canary").await;
    let err = run(&entra_job(&emu.authority()), &f).await.unwrap_err();
    assert_eq!(err.retry(), Retry::Permanent);
    let oauth = err.oauth().expect("an OAuth error").clone();
    assert_eq!(
        (oauth.status, oauth.error.as_str()),
        (401, "invalid_client")
    );
    assert_eq!(oauth.error_codes, vec![7000215]);
    assert!(oauth.trace_id.is_some() && oauth.correlation_id.is_some());
    let text = format!("{err} {err:?}");
    assert!(text.contains("AADSTS7000215"), "{text}");
    assert!(!text.contains("wrong-secret-canary"), "{text}");
    assert_eq!(
        f.get(ACCESS_TOKEN).await.as_deref(),
        Some("previous-good-token")
    );
}

#[tokio::test]
async fn unknown_tenant_and_unknown_client_are_told_apart() {
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    f.set(TENANT_ID, "00000000-0000-0000-0000-000000000000")
        .await;
    let err = run(&entra_job(&emu.authority()), &f).await.unwrap_err();
    let o = err.oauth().unwrap();
    assert_eq!(
        (o.status, o.error.as_str(), o.error_codes.as_slice()),
        (400, "invalid_request", &[90002][..])
    );

    let f = Fixture::new().await;
    f.set(CLIENT_ID, "not-registered").await;
    let err = run(&entra_job(&emu.authority()), &f).await.unwrap_err();
    let o = err.oauth().unwrap();
    assert_eq!(
        (o.error.as_str(), o.error_codes.as_slice()),
        ("unauthorized_client", &[700016][..])
    );
    assert_eq!(err.retry(), Retry::Permanent);
}

#[tokio::test]
async fn throttling_and_server_errors_are_retryable_and_keep_the_token() {
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    f.set(ACCESS_TOKEN, "previous-good-token").await;
    let job = entra_job(&emu.authority());
    emu.state.push_faults([
        Fault::Throttle {
            retry_after: Some(7),
        },
        Fault::Throttle { retry_after: None },
        Fault::Status { status: 503 },
        Fault::Status { status: 500 },
        Fault::Unavailable,
    ]);
    let e = run(&job, &f).await.unwrap_err();
    assert_eq!(
        (e.retry(), e.retry_after()),
        (Retry::Retryable, Some(Duration::from_secs(7)))
    );
    assert_eq!(
        plugin_error(run(&job, &f).await),
        PluginError::Throttled(None)
    );
    assert_eq!(
        plugin_error(run(&job, &f).await),
        PluginError::ServerError(503)
    );
    assert_eq!(
        plugin_error(run(&job, &f).await),
        PluginError::ServerError(500)
    );
    let e = run(&job, &f).await.unwrap_err();
    assert_eq!(
        e.oauth().map(|o| o.error.as_str()),
        Some("temporarily_unavailable")
    );
    assert_eq!(e.retry(), Retry::Retryable);
    assert_eq!(
        f.get(ACCESS_TOKEN).await.as_deref(),
        Some("previous-good-token")
    );
    // The provider recovers.
    run(&job, &f).await.unwrap();
    assert_ne!(
        f.get(ACCESS_TOKEN).await.as_deref(),
        Some("previous-good-token")
    );
}

#[tokio::test]
async fn malformed_empty_or_missing_tokens_leave_the_stored_token_untouched() {
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    f.set(ACCESS_TOKEN, "previous-good-token").await;
    let before = f.store.get(ACCESS_TOKEN).await.unwrap().unwrap().meta;
    let job = entra_job(&emu.authority());
    for fault in [Fault::Malformed, Fault::EmptyToken, Fault::MissingToken] {
        emu.state.push_faults([fault.clone()]);
        let e = plugin_error(run(&job, &f).await);
        assert!(
            matches!(e, PluginError::InvalidResponse(_)),
            "{fault:?}: {e:?}"
        );
        assert_eq!(
            f.get(ACCESS_TOKEN).await.as_deref(),
            Some("previous-good-token")
        );
        assert_eq!(
            f.store.get(ACCESS_TOKEN).await.unwrap().unwrap().meta,
            before
        );
    }
}

#[tokio::test]
async fn oversized_and_non_json_replies_are_invalid() {
    let big = format!(r#"{{"access_token":"{}"}}"#, "a".repeat(300 * 1024));
    let server = ScriptedServer::start(vec![
        Scripted::json(200, &big),
        Scripted::json(200, "<html>hello</html>"),
    ])
    .await;
    let f = Fixture::new().await;
    let job = url_job(&server.url("/token"), "api");
    for _ in 0..2 {
        let e = plugin_error(run(&job, &f).await);
        assert!(matches!(e, PluginError::InvalidResponse(_)), "{e:?}");
    }
    assert!(f.get(ACCESS_TOKEN).await.is_none());
}

#[tokio::test]
async fn a_non_allowed_origin_is_denied_before_any_request() {
    let server = ScriptedServer::start(vec![Scripted::json(200, r#"{"access_token":"t"}"#)]).await;
    let f = Fixture::new().await;
    let mut job = url_job(&server.url("/token"), "api");
    job.allowed_hosts =
        vec![tokenwarden::egress::Origin::parse("https://login.microsoftonline.com").unwrap()];
    let e = plugin_error(run(&job, &f).await);
    assert_eq!(
        e,
        PluginError::EgressDenied(format!(
            "http://{}, which is not in the job's allowed_hosts",
            server.addr
        ))
    );
    assert!(server.received().is_empty(), "a request reached the server");
    assert!(f.get(ACCESS_TOKEN).await.is_none());

    // https is not http: the same host and port under another scheme is another origin.
    job.allowed_hosts =
        vec![tokenwarden::egress::Origin::parse(&format!("https://{}", server.addr)).unwrap()];
    assert!(matches!(
        plugin_error(run(&job, &f).await),
        PluginError::EgressDenied(_)
    ));
    assert!(server.received().is_empty());
}

#[tokio::test]
async fn generic_server_by_token_url_with_string_expiry_and_content_length() {
    let server = ScriptedServer::start(vec![Scripted::json(
        200,
        r#"{"access_token":"generic-token","token_type":"bearer","expires_in":"120","scope":"api.read"}"#,
    )])
    .await;
    let f = Fixture::new().await;
    let mut job = url_job(&server.url("/oauth2/token"), "api.read");
    job.token_params
        .insert("audience".into(), "https://api.example".into());
    let report = run(&job, &f).await.unwrap();
    assert_eq!(report.outcome.expires_in, Some(120));
    assert_eq!(report.outcome.scope.as_deref(), Some("api.read"));
    let stored = f.store.get(ACCESS_TOKEN).await.unwrap().unwrap();
    assert_eq!(stored.meta.expires_at, report.outcome.expires_at);
    assert_eq!(f.get(ACCESS_TOKEN).await.as_deref(), Some("generic-token"));

    let got = server.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.path, "/oauth2/token");
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string()));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let form = r.form();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], emulator::DEMO_CLIENT_ID);
    assert_eq!(form["client_secret"], emulator::DEMO_CLIENT_SECRET);
    assert_eq!(form["scope"], "api.read");
    assert_eq!(form["audience"], "https://api.example");
}

#[tokio::test]
async fn client_secret_basic_sends_rfc6749_credentials() {
    let server = ScriptedServer::start(vec![Scripted::json(
        200,
        r#"{"access_token":"t","expires_in":60}"#,
    )])
    .await;
    let f = Fixture::new().await;
    let mut job = url_job(&server.url("/token"), "api");
    job.client_auth = tokenwarden::ClientAuth::ClientSecretBasic;
    run(&job, &f).await.unwrap();
    let r = &server.received()[0];
    assert!(!r.form().contains_key("client_secret"));
    use base64::Engine as _;
    let auth = r.header("authorization").unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.strip_prefix("Basic ").unwrap())
        .unwrap();
    let (user, pass) = std::str::from_utf8(&decoded)
        .unwrap()
        .split_once(':')
        .unwrap();
    let dec = |s: &str| {
        form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .unwrap()
            .1
            .into_owned()
    };
    assert_eq!(dec(user), emulator::DEMO_CLIENT_ID);
    assert_eq!(dec(pass), emulator::DEMO_CLIENT_SECRET);

    // The emulator decodes Basic the same way and issues a token.
    let emu = start_emulator().await;
    let mut job = entra_job(&emu.authority());
    job.client_auth = tokenwarden::ClientAuth::ClientSecretBasic;
    run(&job, &f).await.unwrap();
}

#[tokio::test]
async fn token_url_job_against_the_emulator_stores_a_token_it_accepts() {
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    let url = format!(
        "{}/{}/oauth2/v2.0/token",
        emu.authority(),
        emulator::DEMO_TENANT
    );
    let mut job = url_job(&url, SCOPE);
    job.secrets.tenant_id = None;
    run(&job, &f).await.unwrap();
    let token = f.get(ACCESS_TOKEN).await.unwrap();
    assert_eq!(get_with_bearer(emu.addr, "/v1.0/me", &token).await, 200);
}

#[tokio::test]
async fn missing_secrets_are_typed_and_send_nothing() {
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    let mut job = entra_job(&emu.authority());
    job.secrets.client_secret = Some("Never Stored".into());
    let e = plugin_error(run(&job, &f).await);
    assert_eq!(
        e,
        PluginError::MissingSecret {
            role: "client-secret".into(),
            name: Some("Never Stored".into())
        }
    );
    // The error says what is missing by the name the user knows, and the host's error how
    // to fix it.
    assert_eq!(
        e.to_string(),
        "secret `Never Stored` (role `client-secret`) is not set"
    );
    assert_eq!(
        tokenwarden::RunError::Plugin(e.clone()).to_string(),
        "secret `Never Stored` (role `client-secret`) is not set: store it with `tokenwarden secrets set 'Never Stored'`"
    );
    assert_eq!(emu.state.stats().token_requests, 0);
}

#[tokio::test]
async fn transport_failures_and_slow_servers_are_retryable() {
    // A port with nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let f = Fixture::new().await;
    let job = url_job(&format!("http://127.0.0.1:{port}/token"), "api");
    let e = run(&job, &f).await.unwrap_err();
    assert!(
        matches!(e, RunError::Plugin(PluginError::Transport(_))),
        "{e:?}"
    );
    assert_eq!(e.retry(), Retry::Retryable);

    let emu = start_emulator().await;
    emu.state.push_faults([Fault::Delay { ms: 3000 }]);
    let mut job = entra_job(&emu.authority());
    job.timeout = Duration::from_millis(800);
    let started = std::time::Instant::now();
    let e = run(&job, &f).await.unwrap_err();
    assert!(matches!(e, RunError::Timeout(_)), "{e:?}");
    assert_eq!(e.retry(), Retry::Retryable);
    assert!(started.elapsed() < Duration::from_secs(3));
}

fn rogue_job(scope: &str) -> JobConfig {
    let mut job = entra_job("http://127.0.0.1:9");
    job.scope = scope.into();
    job.plugin = Some(ROGUE_COMPONENT.into());
    job
}

#[tokio::test]
async fn unbound_or_read_only_roles_get_access_denied() {
    let f = Fixture::new().await;
    f.set("Other Job Secret", "not-yours").await;
    // A bound role is readable.
    let ok = run(&rogue_job("get:client-id"), &f).await.unwrap();
    assert_eq!(ok.outcome.token_type, "got:true");
    for scope in [
        "get:Other Job Secret",
        "get:admin-token",
        "set:Other Job Secret",
    ] {
        let role = scope.split_once(':').unwrap().1;
        assert_eq!(
            plugin_error(run(&rogue_job(scope), &f).await),
            PluginError::AccessDenied(role.into()),
            "{scope}"
        );
    }
    // Read-only roles cannot be overwritten.
    assert_eq!(
        plugin_error(run(&rogue_job("set:client-secret"), &f).await),
        PluginError::AccessDenied("client-secret".into())
    );
    assert_eq!(
        f.get(CLIENT_SECRET).await.as_deref(),
        Some(emulator::DEMO_CLIENT_SECRET)
    );
    assert_eq!(
        f.get("Other Job Secret").await.as_deref(),
        Some("not-yours")
    );
    // The write role is writable.
    run(&rogue_job("set:access-token"), &f).await.unwrap();
    assert_eq!(
        f.get(ACCESS_TOKEN).await.as_deref(),
        Some("written-by-rogue")
    );
}

#[tokio::test]
async fn misbehaving_guests_fail_their_run_and_the_host_carries_on() {
    let f = Fixture::new().await;
    let mut looping = rogue_job("loop");
    looping.timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    // A guest that is never interrupted blocks this thread for good: fail loudly instead.
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = stopped.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        if !watchdog.load(std::sync::atomic::Ordering::SeqCst) {
            eprintln!("a looping guest was not interrupted within 30 s");
            std::process::exit(101);
        }
    });
    let e = run(&looping, &f).await.unwrap_err();
    stopped.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(e, RunError::Trap(_)), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let e = run(&rogue_job("trap"), &f).await.unwrap_err();
    assert!(matches!(e, RunError::Trap(_)), "{e:?}");

    // The memory cap (64 MiB) stops a guest that grabs memory.
    match run(&rogue_job("grab-memory"), &f).await {
        Err(RunError::Plugin(PluginError::BadRequest(m))) => {
            let mib: usize = m.split_whitespace().nth(3).unwrap().parse().unwrap();
            assert!(mib < 64, "{m}");
        }
        Err(RunError::Trap(_)) => {}
        other => panic!("memory grab was not stopped: {other:?}"),
    }
    // A job's own lower cap holds inside a pool whose slots are sized for 64 MiB.
    let mut small = rogue_job("grab-memory");
    small.limits.max_memory = 16 << 20;
    match run(&small, &f).await {
        Err(RunError::Plugin(PluginError::BadRequest(m))) => {
            let mib: usize = m.split_whitespace().nth(3).unwrap().parse().unwrap();
            assert!(mib < 16, "{m}");
        }
        Err(RunError::Trap(_)) => {}
        other => panic!("memory grab was not stopped at 16 MiB: {other:?}"),
    }

    // The same runtime still runs good jobs.
    let emu = start_emulator().await;
    run(&entra_job(&emu.authority()), &f).await.unwrap();
}

#[tokio::test]
async fn connections_are_reused_across_runs_but_not_across_policies() {
    let reply = r#"{"access_token":"tok-1","token_type":"Bearer","expires_in":3600}"#;
    let server = ScriptedServer::start(vec![Scripted::json(200, reply)]).await;
    let f = Fixture::new().await;
    let job = url_job(&server.url("/token"), "api");
    for _ in 0..3 {
        run(&job, &f).await.unwrap();
    }
    let peers: Vec<_> = server.received().iter().map(|r| r.peer).collect();
    assert_eq!(peers.len(), 3);
    assert!(
        peers.iter().all(|p| *p == peers[0]),
        "one kept-alive connection: {peers:?}"
    );

    // A job with another allow-list does not borrow that connection.
    let mut other = job.clone();
    other.allowed_hosts = vec![
        tokenwarden::egress::Origin::parse(&format!("http://{}", server.addr)).unwrap(),
        tokenwarden::egress::Origin::parse("https://example.com").unwrap(),
    ];
    run(&other, &f).await.unwrap();
    let last = server.received().last().unwrap().peer;
    assert_ne!(last, peers[0], "a new connection for another policy");

    assert_eq!(f.get(ACCESS_TOKEN).await.as_deref(), Some("tok-1"));
}

#[tokio::test]
async fn a_full_instance_pool_makes_runs_wait_within_their_timeout() {
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    let one_slot = tokenwarden::Runtime::new(tokenwarden::RuntimeOptions {
        pooling: Some(tokenwarden::Pooling::for_runs(1, &[])),
        ..tokenwarden_tests::unpooled()
    })
    .unwrap();
    let job = entra_job(&emu.authority());
    one_slot.preload(&job).unwrap();

    // Three runs at once share the one slot: each waits its turn, none fails.
    emu.state.push_faults([
        Fault::Delay { ms: 300 },
        Fault::Delay { ms: 300 },
        Fault::Delay { ms: 300 },
    ]);
    let started = std::time::Instant::now();
    let (a, b, c) = tokio::join!(
        one_slot.run(&job, f.dyn_store()),
        one_slot.run(&job, f.dyn_store()),
        one_slot.run(&job, f.dyn_store()),
    );
    for r in [a, b, c] {
        r.unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "runs took turns: {:?}",
        started.elapsed()
    );

    // A run that cannot get a slot within its timeout fails as a timeout; the holder is fine.
    emu.state.push_faults([Fault::Delay { ms: 1500 }]);
    let mut impatient = job.clone();
    impatient.timeout = Duration::from_millis(400);
    let (holder, waiter) = tokio::join!(one_slot.run(&job, f.dyn_store()), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        one_slot.run(&impatient, f.dyn_store()).await
    });
    holder.unwrap();
    assert!(
        matches!(waiter, Err(RunError::Timeout(t)) if t == impatient.timeout),
        "{waiter:?}"
    );
    assert_eq!(
        emu.state.stats().tokens_issued,
        4,
        "the waiter sent nothing"
    );
}

/// A token endpoint whose certificate no trusted authority issued: the run's error says
/// so in words, from the host's TLS layer (the plugin only sees an error code).
#[tokio::test]
async fn a_tls_failure_names_its_cause() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let f = Fixture::new().await;
    let job = url_job(&format!("https://127.0.0.1:{}/token", addr.port()), "api");
    match plugin_error(run(&job, &f).await) {
        PluginError::Transport(why) => {
            assert!(why.contains("issued by an unknown authority"), "{why}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_job_chooses_its_wasi_version_and_a_runtime_without_0_3_refuses_it() {
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    let mut job = entra_job(&emu.authority());
    // Jobs may choose 0.3 while the default stays 0.2.
    let both = tokenwarden::Runtime::new(tokenwarden::RuntimeOptions {
        wasi: tokenwarden::WasiVersion::P2,
        allow_wasi_0_3: true,
        ..Default::default()
    })
    .unwrap();
    let run = async |job: &JobConfig, f: &Fixture| both.run(job, f.dyn_store()).await;
    for wasi in [tokenwarden::WasiVersion::P2, tokenwarden::WasiVersion::P3] {
        job.wasi = Some(wasi);
        let report = run(&job, &f).await.unwrap();
        assert_eq!(report.wasi, wasi);
        let token = f.get(ACCESS_TOKEN).await.unwrap();
        assert_eq!(get_with_bearer(emu.addr, "/v1.0/me", &token).await, 200);
    }
    // Both worlds fail the same way, with the same words.
    f.set(CLIENT_SECRET, "wrong").await;
    let mut errors = Vec::new();
    for wasi in [tokenwarden::WasiVersion::P2, tokenwarden::WasiVersion::P3] {
        job.wasi = Some(wasi);
        let e = run(&job, &f).await.unwrap_err();
        errors.push(e.oauth().map(|o| (o.status, o.error.clone())));
    }
    assert_eq!(errors[0], errors[1]);
    assert_eq!(errors[0], Some((401, "invalid_client".to_string())));

    // 0.3 is opt-in: a 0.2-only engine refuses the job, and runs nothing.
    let p2_only = tokenwarden::Runtime::new(tokenwarden::RuntimeOptions {
        wasi: tokenwarden::WasiVersion::P2,
        allow_wasi_0_3: false,
        ..Default::default()
    })
    .unwrap();
    job.wasi = Some(tokenwarden::WasiVersion::P3);
    let before = emu.state.stats().token_requests;
    let e = p2_only.run(&job, f.dyn_store()).await.unwrap_err();
    assert!(matches!(e, RunError::Config(_)), "{e}");
    assert!(e.to_string().contains("WASI 0.3"), "{e}");
    assert_eq!(emu.state.stats().token_requests, before);
    // A custom plugin built for 0.3 says what to do on such an engine.
    let file = f.dir.path().join("p3.wasm");
    std::fs::write(&file, tokenwarden::BUILTIN_COMPONENT_P3).unwrap();
    job.wasi = None;
    job.plugin = Some(file);
    let e = p2_only.run(&job, f.dyn_store()).await.unwrap_err();
    assert!(e.to_string().contains("set `wasi = \"0.3\"`"), "{e}");
    // With 0.3 allowed, its export decides.
    f.set(CLIENT_SECRET, emulator::DEMO_CLIENT_SECRET).await;
    assert_eq!(
        both.run(&job, f.dyn_store()).await.unwrap().wasi,
        tokenwarden::WasiVersion::P3
    );
    assert_eq!(emu.state.stats().token_requests, before + 1);
}

//! The refresh daemon end to end: the built-in component in the real host against the
//! emulator, with short token lifetimes and fast retry timings. Timing figures are printed
//! (`--nocapture`) for the record; assertions use generous bounds so a loaded 2-core CI
//! machine does not make them flaky.

use secrecy::SecretString;
use std::time::Duration;
use tokenwarden::DaemonConfig;
use tokenwarden::cli::client;
use tokenwarden::daemon::{Coordination, Daemon, RunEvent, Trigger};
use tokenwarden::emulator::{EmulatorConfig, Fault};
use tokenwarden::schedule::Policy;
use tokenwarden::{JobConfig, SecretStore};
use tokenwarden_tests::*;
use tokio::sync::broadcast::Receiver;

fn fast_policy() -> DaemonConfig {
    DaemonConfig {
        policy: Policy {
            refresh_lead: Duration::from_secs(1),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(2),
            permanent_retry_initial: Duration::from_secs(1),
            permanent_retry_max: Duration::from_secs(8),
            throttle_default: Duration::from_secs(1),
            min_interval: Duration::from_secs(1),
            ..Policy::default()
        },
        ..DaemonConfig::default()
    }
}

async fn start(jobs: &[JobConfig], config: &DaemonConfig, f: &Fixture) -> Daemon {
    let coord = Coordination {
        poll_interval: Duration::from_millis(200),
        ..Coordination::default()
    };
    Daemon::start(
        jobs.to_vec(),
        config,
        coord,
        shared_runtime(),
        f.dyn_store(),
    )
    .await
    .unwrap()
}

async fn next(events: &mut Receiver<RunEvent>, within: Duration) -> RunEvent {
    tokio::time::timeout(within, events.recv())
        .await
        .expect("no run within the time limit")
        .expect("daemon alive")
}

async fn store_token(f: &Fixture, value: &str, expires_in: i64) {
    let at = (tokenwarden_tests::unix_now() as i64 + expires_in).max(0) as u64;
    f.store
        .set(
            ACCESS_TOKEN,
            &SecretString::from(value.to_string()),
            Some(at),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn auto_schedule_refreshes_before_expiry() {
    let emu = start_emulator_with(EmulatorConfig {
        token_lifetime: Duration::from_secs(4),
        ..EmulatorConfig::default()
    })
    .await;
    let f = Fixture::new().await;
    let daemon = start(&[entra_job(&emu.authority())], &fast_policy(), &f).await;
    let mut events = daemon.subscribe();
    let mut successes: Vec<RunEvent> = Vec::new();
    while successes.len() < 4 {
        let e = next(&mut events, Duration::from_secs(6)).await;
        assert!(e.record.ok, "{e:?}");
        successes.push(e);
    }
    assert_eq!(successes[0].record.trigger, Trigger::CatchUp);
    let mut leads = Vec::new();
    for pair in successes.windows(2) {
        let (prev, cur) = (&pair[0].record, &pair[1].record);
        assert_eq!(cur.trigger, Trigger::Schedule);
        let prev_expiry =
            prev.started_at_ms + prev.outcome.as_ref().unwrap().expires_in.unwrap() * 1000;
        let lead = prev_expiry as i64 - cur.started_at_ms as i64;
        leads.push(lead);
        // Half-life of 4 s with up to 10 % jitter: 1.8 to 2 s before expiry.
        assert!(
            (1_000..=2_300).contains(&lead),
            "refresh {lead} ms before expiry"
        );
    }
    eprintln!("auto schedule, 4 s tokens: refreshed {leads:?} ms before expiry");
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn fault_bursts_are_retried_with_backoff_and_the_old_token_is_kept() {
    let emu = start_emulator_with(EmulatorConfig {
        token_lifetime: Duration::from_secs(30),
        ..EmulatorConfig::default()
    })
    .await;
    let f = Fixture::new().await;
    let daemon = start(&[entra_job(&emu.authority())], &fast_policy(), &f).await;
    let mut events = daemon.subscribe();
    assert!(next(&mut events, Duration::from_secs(5)).await.record.ok);
    let good = f.get(ACCESS_TOKEN).await.unwrap();

    emu.state.push_faults([
        Fault::Status { status: 503 },
        Fault::Unavailable,
        Fault::Status { status: 502 },
        Fault::Throttle {
            retry_after: Some(1),
        },
        Fault::Throttle { retry_after: None },
    ]);
    // The next refresh is 15 s away: an operator-style trigger starts the burst now.
    let first = daemon.trigger("graph").await.unwrap();
    assert!(!first.ok);
    let mut failures = vec![first];
    loop {
        let e = next(&mut events, Duration::from_secs(5)).await;
        if e.record.trigger == Trigger::Manual {
            continue;
        }
        if e.record.ok {
            assert_eq!(e.record.trigger, Trigger::Retry);
            assert_eq!(e.record.attempt, 6);
            assert_eq!(e.consecutive_failures, 0);
            break;
        }
        // Between failures the last good token stays stored and usable.
        assert_eq!(f.get(ACCESS_TOKEN).await.as_deref(), Some(good.as_str()));
        assert_eq!(get_with_bearer(emu.addr, "/v1.0/me", &good).await, 200);
        assert_eq!(e.record.trigger, Trigger::Retry);
        failures.push(e.record);
    }
    let classes: Vec<_> = failures
        .iter()
        .map(|r| r.error.as_ref().unwrap().class.as_str())
        .collect();
    assert_eq!(
        classes,
        [
            "server-error",
            "rejected",
            "server-error",
            "throttled",
            "throttled"
        ]
    );
    let gaps: Vec<u64> = failures
        .windows(2)
        .map(|w| w[1].started_at_ms - (w[0].started_at_ms + w[0].duration_ms))
        .collect();
    eprintln!("retry gaps after 503, 503, 502, 429 (Retry-After 1), 429 (none): {gaps:?} ms");
    // Exponential with equal jitter: 100-200, 200-400, 400-800 ms; then Retry-After 1 s.
    assert!((80..=450).contains(&gaps[0]), "{gaps:?}");
    assert!((180..=650).contains(&gaps[1]), "{gaps:?}");
    assert!((380..=1100).contains(&gaps[2]), "{gaps:?}");
    assert!(gaps[3] >= 1000, "Retry-After honoured: {gaps:?}");
    assert!(
        f.get(ACCESS_TOKEN).await.unwrap() != good,
        "recovered with a new token"
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn permanent_errors_back_off_slowly_and_are_reported() {
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    store_token(&f, "last-good-token", 3600).await;
    f.set(CLIENT_SECRET, "wrong-secret").await;
    let mut job = entra_job(&emu.authority());
    job.schedule = tokenwarden::schedule::Schedule::parse("every 1s").unwrap();
    let daemon = start(&[job], &fast_policy(), &f).await;
    let mut events = daemon.subscribe();
    let mut gaps = Vec::new();
    let mut last: Option<RunEvent> = None;
    for _ in 0..3 {
        let e = next(&mut events, Duration::from_secs(6)).await;
        let err = e.record.error.clone().expect("fails");
        assert_eq!(
            (err.class.as_str(), err.retry),
            ("rejected", tokenwarden::Retry::Permanent)
        );
        let oauth = err.oauth.unwrap();
        assert_eq!(oauth.error, "invalid_client");
        assert!(oauth.trace_id.is_some() && oauth.correlation_id.is_some());
        if let Some(prev) = &last {
            gaps.push(
                e.record.started_at_ms - (prev.record.started_at_ms + prev.record.duration_ms),
            );
        }
        last = Some(e);
    }
    eprintln!("permanent-error retry gaps: {gaps:?} ms (retryable errors start at 100-200 ms)");
    // 1 s then 2 s backoff, each with equal jitter: at least 0.5 s and 1 s.
    assert!(gaps[0] >= 450 && gaps[1] >= 950, "{gaps:?}");
    let status = daemon.status("graph").unwrap();
    assert_eq!(status.consecutive_failures, 3);
    assert_eq!(status.last_run.unwrap().error.unwrap().class, "rejected");
    assert_eq!(
        f.get(ACCESS_TOKEN).await.as_deref(),
        Some("last-good-token")
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_trigger_during_a_run_joins_it() {
    let emu = start_emulator_with(EmulatorConfig {
        latency: Duration::from_millis(800),
        ..EmulatorConfig::default()
    })
    .await;
    let f = Fixture::new().await;
    store_token(&f, "fresh", 3600).await;
    let daemon = start(&[entra_job(&emu.authority())], &fast_policy(), &f).await;
    let (a, b, c) = tokio::join!(
        daemon.trigger("graph"),
        daemon.trigger("graph"),
        daemon.trigger("graph")
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert!(a.ok);
    assert_eq!(a, b);
    assert_eq!(b, c);
    assert_eq!(
        emu.state.stats().token_requests,
        1,
        "one run served all three"
    );
    assert!(matches!(
        daemon.trigger("nope").await,
        Err(tokenwarden::daemon::TriggerError::UnknownJob(_))
    ));
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn runs_in_flight_are_bounded_across_jobs() {
    let emu = start_emulator_with(EmulatorConfig {
        latency: Duration::from_millis(300),
        ..EmulatorConfig::default()
    })
    .await;
    let f = Fixture::new().await;
    let jobs: Vec<JobConfig> = (0..3)
        .map(|i| {
            let mut j = entra_job(&emu.authority());
            j.name = format!("job{i}");
            j.secrets.access_token = format!("token {i}");
            j
        })
        .collect();
    let config = DaemonConfig {
        max_concurrent_runs: 1,
        ..fast_policy()
    };
    let daemon = start(&jobs, &config, &f).await;
    let mut events = daemon.subscribe();
    let mut spans = Vec::new();
    for _ in 0..3 {
        let r = next(&mut events, Duration::from_secs(5)).await.record;
        assert!(r.ok);
        spans.push((r.started_at_ms, r.started_at_ms + r.duration_ms));
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "runs overlapped: {spans:?}");
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn restart_catches_up_only_when_the_token_is_missing_expired_or_due() {
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    let mut jobs = Vec::new();
    for (name, token) in [
        ("missing", None),
        ("expired", Some(-5)),
        ("fresh", Some(3600)),
    ] {
        let mut j = entra_job(&emu.authority());
        j.name = name.into();
        j.secrets.access_token = format!("token of {name}");
        if let Some(expires_in) = token {
            f.store
                .set(
                    &j.secrets.access_token,
                    &SecretString::from("old".to_string()),
                    Some((tokenwarden_tests::unix_now() as i64 + expires_in) as u64),
                )
                .await
                .unwrap();
        }
        jobs.push(j);
    }
    let daemon = start(&jobs, &fast_policy(), &f).await;
    let mut events = daemon.subscribe();
    let mut caught_up = [
        next(&mut events, Duration::from_secs(5)).await,
        next(&mut events, Duration::from_secs(5)).await,
    ];
    caught_up.sort_by(|a, b| a.job.cmp(&b.job));
    assert_eq!(
        caught_up
            .iter()
            .map(|e| (e.job.as_str(), e.record.trigger))
            .collect::<Vec<_>>(),
        [("expired", Trigger::CatchUp), ("missing", Trigger::CatchUp)]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        emu.state.stats().token_requests,
        2,
        "the fresh token is left alone"
    );
    let fresh = daemon.status("fresh").unwrap();
    let due_in = fresh.next_run_at as i64 - tokenwarden_tests::unix_now() as i64;
    assert!(
        (1600..=1800).contains(&due_in),
        "half-life of a 1 h token: {due_in}"
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn admin_api_auth_status_trigger_and_metrics() {
    let emu = start_emulator().await;
    let f = Fixture::new().await;
    f.set("Admin Token", "admin-canary-token").await;
    let daemon = start(&[entra_job(&emu.authority())], &fast_policy(), &f).await;
    let mut events = daemon.subscribe();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = tokenwarden::admin::router(daemon.clone(), f.dyn_store(), Some("Admin Token"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Open routes.
    assert_eq!(
        client::get(addr, "/healthz", None).await.unwrap().status,
        200
    );
    // Before the first token: not ready.
    let ready = client::get(addr, "/readyz", None).await.unwrap();
    if ready.status == 503 {
        assert_eq!(ready.json()["jobs_without_valid_token"][0], "graph");
    }
    assert!(next(&mut events, Duration::from_secs(5)).await.record.ok);
    assert_eq!(
        client::get(addr, "/readyz", None).await.unwrap().status,
        200
    );

    // Everything else needs the bearer token.
    for (method, path) in [
        ("GET", "/jobs"),
        ("GET", "/jobs/graph"),
        ("POST", "/jobs/graph/refresh"),
        ("GET", "/metrics"),
    ] {
        let m: http::Method = method.parse().unwrap();
        for bearer in [None, Some("wrong"), Some(""), Some("admin-canary-tokenX")] {
            let r = client::request(addr, m.clone(), path, bearer)
                .await
                .unwrap();
            assert_eq!(r.status, 401, "{method} {path} with {bearer:?}");
        }
    }
    let auth = Some("admin-canary-token");
    let jobs = client::get(addr, "/jobs", auth).await.unwrap();
    assert_eq!(jobs.status, 200);
    let token = f.get(ACCESS_TOKEN).await.unwrap();
    let status = &jobs.json()[0];
    assert_eq!(status["name"], "graph");
    assert_eq!(status["consecutive_failures"], 0);
    assert!(status["token_expires_in_seconds"].as_i64().unwrap() > 3500);
    assert!(status["next_run_at"].as_u64().is_some());

    let r = client::post(addr, "/jobs/graph/refresh", auth)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ok"], true);
    assert_eq!(r.json()["trigger"], "manual");
    assert_eq!(
        client::post(addr, "/jobs/nope/refresh", auth)
            .await
            .unwrap()
            .status,
        404
    );

    // A failing trigger answers 502 with the OAuth error and Entra's ids.
    emu.state.push_faults([Fault::Unavailable]);
    let r = client::post(addr, "/jobs/graph/refresh", auth)
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json()["error"]["oauth"]["error"],
        "temporarily_unavailable"
    );
    assert!(r.json()["error"]["oauth"]["trace_id"].is_string());
    let one = client::get(addr, "/jobs/graph", auth).await.unwrap().json();
    assert_eq!(one["consecutive_failures"], 1);
    assert_eq!(one["last_run"]["error"]["class"], "rejected");

    let metrics = client::get(addr, "/metrics", auth).await.unwrap();
    assert_eq!(metrics.status, 200);
    for needle in [
        "tokenwarden_runs_total{job_name=\"graph\",outcome=\"success\"} 2",
        "tokenwarden_runs_total{job_name=\"graph\",outcome=\"retryable\"} 1",
        "tokenwarden_runs_total{job_name=\"graph\",outcome=\"permanent\"} 0",
        "tokenwarden_run_errors_total{class=\"rejected\",retry=\"retryable\"} 1",
        "tokenwarden_run_duration_seconds_count{outcome=\"success\"} 2",
        "tokenwarden_token_expiry_timestamp_seconds{job_name=\"graph\"} 1",
        "tokenwarden_last_success_timestamp_seconds{job_name=\"graph\"} 1",
        "tokenwarden_next_run_timestamp_seconds{job_name=\"graph\"} 1",
        "tokenwarden_consecutive_failures{job_name=\"graph\"} 1",
        "tokenwarden_build_info{version=",
    ] {
        assert!(
            metrics.body.contains(needle),
            "missing {needle} in\n{}",
            metrics.body
        );
    }

    // No body ever carries the token, the client secret or the admin token.
    let new_token = f.get(ACCESS_TOKEN).await.unwrap();
    for body in [jobs.body, r.body, metrics.body, one.to_string()] {
        for secret in [
            token.as_str(),
            new_token.as_str(),
            tokenwarden::emulator::DEMO_CLIENT_SECRET,
            "admin-canary-token",
        ] {
            assert!(!body.contains(secret), "leak in {body}");
        }
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}

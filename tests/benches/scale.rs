//! Scale: one daemon with many jobs against the emulator (a separate process, so the figures
//! are the daemon's own). `cargo bench -p tokenwarden-tests --bench scale`.
//!
//! Settings (environment): `SCALE_JOBS` (10000), `SCALE_LIFETIME` token lifetime in seconds
//! (40: `auto` refreshes a token this short at a quarter of its life, about every 9-10 s with
//! jitter, so 10,000 jobs need about 1,000 refreshes/s), `SCALE_SECONDS` steady window (60),
//! `SCALE_MAX_RUNS` runs in flight (16, the daemon's default).
//!
//! Reports: catch-up time for the first refresh of every job, then over the window:
//! refreshes/s, failures, lateness (start minus due) p50/p99, CPU per refresh, and the
//! process's peak and final RSS.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenwarden::config::DaemonConfig;
use tokenwarden::daemon::{Coordination, Daemon};
use tokenwarden::runtime::Pooling;
use tokenwarden::{JobConfig, Runtime, RuntimeOptions, SecretStore, SqliteStore};
use tokenwarden_tests::SCOPE;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) of this process, from /proc (100 ticks per second on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `after` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// `VmHWM` (peak) and `VmRSS` (now), in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kib("VmHWM:"), kib("VmRSS:"))
}

struct Emulator(std::process::Child);

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Totals read from the daemon's Prometheus text.
struct Scrape {
    success: f64,
    failed: f64,
    /// Cumulative lateness buckets: (upper bound in seconds, count).
    lateness: Vec<(f64, f64)>,
}

impl Scrape {
    fn of(text: &str) -> Self {
        let mut s = Scrape {
            success: 0.0,
            failed: 0.0,
            lateness: Vec::new(),
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            if series.starts_with("tokenwarden_runs_total{") {
                if series.contains("outcome=\"success\"") {
                    s.success += value;
                } else {
                    s.failed += value;
                }
            } else if let Some(rest) =
                series.strip_prefix("tokenwarden_run_lateness_seconds_bucket{le=\"")
            {
                let bound = rest.trim_end_matches("\"}");
                let bound = if bound == "+Inf" {
                    f64::INFINITY
                } else {
                    bound.parse().unwrap()
                };
                s.lateness.push((bound, value));
            }
        }
        s
    }

    /// The bucket bound (ms) under which `q` of the runs between `before` and `self` started.
    fn lateness_quantile(&self, before: &Scrape, q: f64) -> String {
        let delta: Vec<(f64, f64)> = self
            .lateness
            .iter()
            .zip(&before.lateness)
            .map(|((b, n), (_, m))| (*b, n - m))
            .collect();
        let total = delta.last().map_or(0.0, |(_, n)| *n);
        let bound = delta
            .iter()
            .find(|(_, n)| *n >= total * q)
            .map_or(f64::INFINITY, |(b, _)| *b);
        if bound.is_finite() {
            format!("≤{:.0}", bound * 1000.0)
        } else {
            "above the largest bucket".into()
        }
    }
}

fn main() {
    let n: usize = env_or("SCALE_JOBS", 10_000);
    let lifetime: u64 = env_or("SCALE_LIFETIME", 40);
    let window: u64 = env_or("SCALE_SECONDS", 60);
    let max_runs: usize = env_or("SCALE_MAX_RUNS", 16);
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` and `cargo bench -- --list` probe bench binaries.
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _emulator = Emulator(
        std::process::Command::new(env!("CARGO_BIN_EXE_tokenwarden-under-test"))
            .args(["emulator", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--lifetime", &format!("{lifetime}s")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("emulator"),
    );
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("data/tw.db")).unwrap());
    rt.block_on(tokenwarden_tests::seed_client_secrets(&*store));
    let authority = format!("http://127.0.0.1:{port}");
    let jobs: Vec<JobConfig> = (0..n)
        .map(|i| {
            let mut roles = tokenwarden_tests::roles();
            roles.access_token = format!("Access Token {i}");
            let mut job = JobConfig::new(&format!("job-{i}"), SCOPE, roles);
            job.authority = Some(authority.clone());
            job
        })
        .collect();
    let daemon_config = DaemonConfig {
        max_concurrent_runs: max_runs,
        ..DaemonConfig::default()
    };

    let (rss_before, _) = rss_mib();
    // The engine the `run` command builds: an instance pool with a slot per run in flight.
    let runtime = Arc::new(
        Runtime::new(RuntimeOptions {
            pooling: Some(Pooling::for_runs(max_runs, &jobs)),
            ..RuntimeOptions::default()
        })
        .unwrap(),
    );
    runtime.preload(&jobs[0]).unwrap();
    let started = Instant::now();
    let daemon = rt.block_on(async {
        let store: Arc<dyn SecretStore> = store.clone();
        Daemon::start_jobs(
            jobs.clone(),
            &daemon_config,
            Coordination::default(),
            runtime,
            store,
        )
        .await
        .unwrap()
    });

    // Catch-up: every job runs once at start; done when every job holds a valid token.
    while !daemon.not_ready().is_empty() {
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "catch-up did not finish in 10 minutes"
        );
    }
    let catch_up = started.elapsed();
    // Let the first scheduled wave begin, then measure a steady window from the daemon's
    // own metrics (counts and the lateness histogram), which lose nothing under load.
    std::thread::sleep(Duration::from_secs(lifetime / 4));
    let before = Scrape::of(&daemon.metrics());
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(window));
    let after = Scrape::of(&daemon.metrics());
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let (peak, now) = rss_mib();
    let ok = after.success - before.success;
    let failed = after.failed - before.failed;
    let late = |q: f64| after.lateness_quantile(&before, q);
    println!(
        "jobs {n}, token lifetime {lifetime}s, max_concurrent_runs {max_runs}, window {window}s"
    );
    println!(
        "catch-up (first token for every job)  {:.1} s ({:.0} refreshes/s)",
        catch_up.as_secs_f64(),
        n as f64 / catch_up.as_secs_f64()
    );
    println!("steady refreshes/s                    {:.0}", ok / elapsed);
    println!("failed runs in window                 {failed}");
    println!(
        "lateness p50 / p99 (ms, bucket bound) {} / {}",
        late(0.5),
        late(0.99)
    );
    println!(
        "CPU per refresh (µs, whole process)   {:.0}",
        cpu * 1e6 / ok.max(1.0)
    );
    println!("CPU use (cores)                       {:.2}", cpu / elapsed);
    println!("RSS before daemon / peak / end (MiB)  {rss_before:.0} / {peak:.0} / {now:.0}");
    rt.block_on(daemon.shutdown(Duration::from_secs(10)));
}

//! Scale: real `tokenwarden run` processes with many jobs, against the emulator (its own
//! process too, so every figure is the daemons' alone). `cargo bench -p tokenwarden-tests
//! --bench scale`.
//!
//! Scenarios (`SCALE_SCENARIO`): `sqlite` (default): one daemon, `SCALE_JOBS` jobs (100,000)
//! on SQLite; `postgres`: `SCALE_DAEMONS` daemons (3) sharing `SCALE_JOBS` jobs (30,000) on a
//! throwaway PostgreSQL cluster; `config`: config load time for 20,000, 40,000 and 100,000
//! jobs (linear, not quadratic).
//!
//! Other settings: `SCALE_LIFETIME` token lifetime in seconds (1200: `auto` refreshes such
//! a token after 540-600 s, so 100,000 jobs ask for about 175 refreshes/s on average, and
//! the first wave after a cold start, which inherits the catch-up's density, about 800/s),
//! `SCALE_SECONDS` measured window (60), `SCALE_MAX_RUNS` runs in flight per daemon (16, the
//! default).
//!
//! Reports: config load and catch-up (the first refresh of every job), then over a window
//! inside the first scheduled wave: refreshes/s, failures, lateness (start minus due)
//! p50/p99, lease requests by result, CPU per refresh, and each daemon's peak and final RSS.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokenwarden::SecretStore;

const BIN: &str = env!("CARGO_BIN_EXE_tokenwarden-under-test");

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) of process `pid`, from /proc (100 ticks per second).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// `VmHWM` (peak) and `VmRSS` (now) of process `pid`, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
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

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    let until = Instant::now() + Duration::from_secs(120);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn emulator(lifetime: u64) -> (Proc, String) {
    let port = free_port();
    let child = Command::new(BIN)
        .args(["emulator", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--lifetime", &format!("{lifetime}s")])
        .env("TOKENWARDEN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("emulator");
    wait_for_port(port);
    (Proc(child), format!("http://127.0.0.1:{port}"))
}

/// A config with `n` jobs against `authority` (all with the demo credentials, each with
/// its own token), totals-only metrics, and `store` as the `[store]` table.
fn write_config(path: &Path, n: usize, authority: &str, store: &str, max_runs: usize, admin: u16) {
    use std::fmt::Write;
    let mut text = format!(
        "[store]\n{store}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [daemon]\nmax_concurrent_runs = {max_runs}\nper_job_metrics = false\n"
    );
    for i in 0..n {
        let _ = write!(
            text,
            "[[jobs]]\nname = \"job-{i}\"\nscope = \"https://graph.microsoft.com/.default\"\n\
             authority = \"{authority}\"\n[jobs.secrets]\nclient_id = \"Microsoft Client ID\"\n\
             client_secret = \"Microsoft Client Secret\"\ntenant_id = \"Microsoft Tenant ID\"\n\
             access_token = \"Access Token {i}\"\n"
        );
    }
    std::fs::write(path, text).unwrap();
}

struct Daemon {
    proc: Proc,
    admin: std::net::SocketAddr,
}

impl Daemon {
    fn spawn(config: &Path, admin: u16, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"])
            .arg(config)
            .env("TOKENWARDEN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc(cmd.spawn().expect("daemon"));
        wait_for_port(admin);
        Self {
            proc,
            admin: ([127, 0, 0, 1], admin).into(),
        }
    }

    fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    fn get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.admin).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_string())
    }

    fn scrape(&self) -> Scrape {
        Scrape::of(&self.get("/metrics").1)
    }
}

/// The counters the report needs, from the daemon's own metrics.
#[derive(Clone, Debug, Default)]
struct Scrape {
    success: f64,
    failures: f64,
    /// Lateness histogram: (upper bound in seconds, cumulative count).
    lateness: Vec<(f64, f64)>,
    leases: Vec<(String, f64)>,
    valid: f64,
}

impl Scrape {
    fn of(text: &str) -> Self {
        let mut s = Scrape::default();
        for line in text.lines() {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            if key == "tokenwarden_runs_total{outcome=\"success\"}" {
                s.success += v;
            } else if key.starts_with("tokenwarden_runs_total{") {
                s.failures += v;
            } else if let Some(rest) =
                key.strip_prefix("tokenwarden_run_lateness_seconds_bucket{le=\"")
            {
                let le = rest.trim_end_matches("\"}");
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                s.lateness.push((bound, v));
            } else if let Some(rest) =
                key.strip_prefix("tokenwarden_lease_attempts_total{result=\"")
            {
                s.leases.push((rest.trim_end_matches("\"}").to_string(), v));
            } else if key == "tokenwarden_jobs{token=\"valid\"}" {
                s.valid = v;
            }
        }
        s
    }

    /// The bucket bound under which `q` of the lateness observations between `self` and
    /// `later` fall.
    fn quantile(&self, later: &Scrape, q: f64) -> f64 {
        let deltas: Vec<(f64, f64)> = later
            .lateness
            .iter()
            .zip(self.lateness.iter().chain(std::iter::repeat(&(0.0, 0.0))))
            .map(|((b, c1), (_, c0))| (*b, c1 - c0))
            .collect();
        let total = deltas.last().map_or(0.0, |d| d.1);
        deltas
            .iter()
            .find(|(_, c)| *c >= q * total)
            .map_or(f64::NAN, |(b, _)| *b)
    }

    fn lease(&self, result: &str) -> f64 {
        self.leases
            .iter()
            .find(|(r, _)| r == result)
            .map_or(0.0, |(_, v)| *v)
    }
}

fn config_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenwarden.toml");
    println!("config load (release build):");
    let pid = std::process::id();
    for n in [20_000, 40_000, 100_000] {
        write_config(
            &path,
            n,
            "https://login.microsoftonline.com",
            "path = \"x.db\"",
            16,
            8420,
        );
        let bytes = std::fs::metadata(&path).unwrap().len();
        let t = Instant::now();
        let c = tokenwarden::Config::load(&path).unwrap();
        let took = t.elapsed();
        assert_eq!(c.jobs.len(), n);
        let (peak, now) = rss_mib(pid);
        println!(
            "  {n:>7} jobs ({:.1} MiB): {:.0} ms, {:.1} µs per job; RSS {now:.0} MiB with the config loaded, peak so far {peak:.0} MiB",
            bytes as f64 / (1 << 20) as f64,
            took.as_secs_f64() * 1000.0,
            took.as_secs_f64() * 1e6 / n as f64
        );
        drop(c);
    }
}

/// Waits until every daemon's jobs hold valid tokens (the catch-up wave is over).
fn wait_ready(daemons: &[Daemon], n: usize) -> Duration {
    let started = Instant::now();
    loop {
        let valid = daemons[0].scrape().valid;
        if valid as usize >= n && daemons.iter().all(|d| d.get("/readyz").0 == 200) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "catch-up did not finish"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn measure(daemons: &[Daemon], jobs: usize, lifetime: u64, window: u64, catch_up: Duration) {
    // The first scheduled wave starts when the earliest catch-up token is due (the `auto`
    // offset with the most jitter, the default 10-minute lead).
    let first = tokenwarden::schedule::auto_offset(
        Duration::from_secs(lifetime),
        None,
        Duration::from_secs(600),
        1.0,
    );
    println!(
        "  waiting {:.0} s for the first scheduled wave",
        first.saturating_sub(catch_up).as_secs_f64()
    );
    std::thread::sleep(first.saturating_sub(catch_up));
    let before: Vec<Scrape> = daemons.iter().map(Daemon::scrape).collect();
    let cpu0: Vec<f64> = daemons.iter().map(|d| cpu_seconds(d.pid())).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(window));
    let secs = t0.elapsed().as_secs_f64();
    let after: Vec<Scrape> = daemons.iter().map(Daemon::scrape).collect();
    let mut total = 0.0;
    for (i, d) in daemons.iter().enumerate() {
        let (b, a) = (&before[i], &after[i]);
        let runs = a.success - b.success;
        let failures = a.failures - b.failures;
        let cpu = cpu_seconds(d.pid()) - cpu0[i];
        let (peak, now) = rss_mib(d.pid());
        total += runs;
        println!(
            "  daemon {i}: {:.0} refreshes/s, {failures} failures, lateness p50 <= {} s, p99 <= {} s, \
             {:.0} us CPU per refresh ({:.2} cores), RSS peak {peak:.0} MiB (now {now:.0} MiB); \
             lease requests in the window: {:.0} granted, {:.0} held, {:.0} moved, {:.0} unavailable",
            runs / secs,
            b.quantile(a, 0.5),
            b.quantile(a, 0.99),
            cpu / runs.max(1.0) * 1e6,
            cpu / secs,
            a.lease("granted") - b.lease("granted"),
            a.lease("held") - b.lease("held"),
            a.lease("moved") - b.lease("moved"),
            a.lease("unavailable") - b.lease("unavailable"),
        );
    }
    println!(
        "  all daemons: {:.0} refreshes/s over {secs:.0} s for {jobs} jobs of {lifetime} s tokens",
        total / secs
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` and harness probes: nothing to run.
    }
    let scenario = std::env::var("SCALE_SCENARIO").unwrap_or_else(|_| "sqlite".into());
    let lifetime: u64 = env_or("SCALE_LIFETIME", 1200);
    let window: u64 = env_or("SCALE_SECONDS", 60);
    let max_runs: usize = env_or("SCALE_MAX_RUNS", 16);
    if scenario == "config" {
        return config_load();
    }
    let (_emulator, authority) = emulator(lifetime);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokenwarden.toml");
    let rt = tokio::runtime::Runtime::new().unwrap();
    match scenario.as_str() {
        "sqlite" => {
            let n: usize = env_or("SCALE_JOBS", 100_000);
            let admin = free_port();
            write_config(
                &config,
                n,
                &authority,
                "path = \"data/tw.db\"",
                max_runs,
                admin,
            );
            let store = tokenwarden::SqliteStore::open(&dir.path().join("data/tw.db")).unwrap();
            rt.block_on(tokenwarden_tests::seed_client_secrets(&store));
            drop(store);
            println!("sqlite: 1 daemon, {n} jobs, {lifetime} s tokens, {max_runs} runs in flight");
            let started = Instant::now();
            let daemon = Daemon::spawn(&config, admin, &[]);
            println!(
                "  started (config loaded, store opened, component ready) in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let catch_up = wait_ready(std::slice::from_ref(&daemon), n);
            println!(
                "  catch-up: every job refreshed once in {:.0} s",
                catch_up.as_secs_f64()
            );
            measure(std::slice::from_ref(&daemon), n, lifetime, window, catch_up);
        }
        "postgres" => {
            let n: usize = env_or("SCALE_JOBS", 30_000);
            let count: usize = env_or("SCALE_DAEMONS", 3);
            let pg = tokenwarden_tests::PgCluster::start_durable();
            let key = dir.path().join("tw.key");
            let store = rt
                .block_on(tokenwarden::PgStore::connect(
                    &pg.url(),
                    tokenwarden::store::KeySource::File(key),
                    2,
                ))
                .unwrap();
            rt.block_on(tokenwarden_tests::seed_client_secrets(&store));
            println!(
                "postgres: {count} daemons sharing {n} jobs, {lifetime} s tokens, {max_runs} runs in flight each"
            );
            let mut daemons = Vec::new();
            for _ in 0..count {
                let admin = free_port();
                let store = format!("url = \"{}\"\nkey_file = \"tw.key\"", pg.url());
                let path = dir.path().join(format!("d{admin}.toml"));
                write_config(&path, n, &authority, &store, max_runs, admin);
                daemons.push(Daemon::spawn(&path, admin, &[]));
            }
            let catch_up = wait_ready(&daemons, n);
            println!(
                "  catch-up: every job refreshed once in {:.0} s",
                catch_up.as_secs_f64()
            );
            measure(&daemons, n, lifetime, window, catch_up);
            let rows = rt.block_on(store.jobs()).unwrap().len();
            println!("  job rows in the store: {rows}");
            drop(daemons);
        }
        other => panic!("SCALE_SCENARIO={other}: sqlite, postgres or config"),
    }
}

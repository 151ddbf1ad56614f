//! Prometheus metrics of the daemon, all prefixed `tokenwarden_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicI64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    job: String,
    outcome: String,
}

type HistogramFamily = Family<JobLabel, Histogram, fn() -> Histogram>;

/// The daemon's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    duration: HistogramFamily,
    expiry: Family<JobLabel, Gauge<i64, AtomicI64>>,
    next_run: Family<JobLabel, Gauge<i64, AtomicI64>>,
    failures: Family<JobLabel, Gauge<i64, AtomicI64>>,
    lateness: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tokenwarden");
        let runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "runs",
            "Runs by job and outcome (success or the error class)",
            runs.clone(),
        );
        let duration = HistogramFamily::new_with_constructor(duration_histogram);
        registry.register(
            "run_duration_seconds",
            "Wall-clock duration of runs",
            duration.clone(),
        );
        let expiry = Family::default();
        registry.register(
            "token_expiry_timestamp_seconds",
            "Unix time at which the stored token expires",
            expiry.clone(),
        );
        let next_run = Family::default();
        registry.register(
            "next_run_timestamp_seconds",
            "Unix time of the next scheduled run",
            next_run.clone(),
        );
        let failures = Family::default();
        registry.register(
            "consecutive_failures",
            "Failed runs since the last success",
            failures.clone(),
        );
        // Across jobs: with thousands of jobs a per-job histogram would dominate the output.
        let lateness = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        registry.register(
            "run_lateness_seconds",
            "How long scheduled runs started after they were due (waiting for a run slot)",
            lateness.clone(),
        );
        Self {
            registry,
            runs,
            duration,
            expiry,
            next_run,
            failures,
            lateness,
        }
    }
}

fn label(job: &str) -> JobLabel {
    JobLabel {
        job: job.to_string(),
    }
}

fn secs(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Records a finished run.
    pub fn run(&self, job: &str, outcome: &str, seconds: f64) {
        self.runs
            .get_or_create(&RunLabels {
                job: job.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.duration.get_or_create(&label(job)).observe(seconds);
    }

    /// Records how late a scheduled run started.
    pub fn lateness(&self, seconds: f64) {
        self.lateness.observe(seconds);
    }

    /// Sets a job's gauges.
    pub fn job_state(&self, job: &str, expires_at: Option<u64>, next_run: u64, failures: u32) {
        if let Some(e) = expires_at {
            self.expiry.get_or_create(&label(job)).set(secs(e));
        }
        self.next_run.get_or_create(&label(job)).set(secs(next_run));
        self.failures
            .get_or_create(&label(job))
            .set(i64::from(failures));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

//! Prometheus metrics of the daemon, all prefixed `tokenwarden_`.
//!
//! Per-job series are read from the daemon's job states at scrape time (a collector),
//! so every job has its series from the start, a job costs no registry entries, and there
//! is one home for each number. The job label is `job_name`: `job` is the label Prometheus
//! itself puts on every scraped series. Runs are counted by `outcome` = `success`,
//! `retryable` or `permanent`, so "needs a human" can be alerted on; the error class is a
//! separate, job-less counter.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// A run's outcome as metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A token was stored.
    Success = 0,
    /// Failed; a retry can help.
    Retryable = 1,
    /// Failed; needs a human.
    Permanent = 2,
}

impl Outcome {
    const ALL: [(Outcome, &'static str); 3] = [
        (Outcome::Success, "success"),
        (Outcome::Retryable, "retryable"),
        (Outcome::Permanent, "permanent"),
    ];

    /// Its label value.
    pub fn label(self) -> &'static str {
        Self::ALL[self as usize].1
    }
}

/// What a job contributes to a scrape.
#[derive(Clone, Debug, Default)]
pub struct JobSample {
    /// Job name.
    pub name: String,
    /// Unix seconds the stored token expires at; 0 when there is none.
    pub token_expiry: u64,
    /// Unix seconds of the next planned run.
    pub next_run: u64,
    /// Failed runs since the last success.
    pub failures: u32,
    /// Unix seconds the token was last written (by a successful run of any process, or by
    /// hand); 0 for none.
    pub last_success: u64,
    /// Runs by this process, by [`Outcome`].
    pub runs: [u64; 3],
}

/// Where the per-job samples come from at scrape time.
pub trait JobSamples: Send + Sync + std::fmt::Debug + 'static {
    /// Calls `f` with every job's sample.
    fn each(&self, f: &mut dyn FnMut(&JobSample));
}

/// The jobs' series: one per job and metric, or (for installations with many thousands
/// of jobs, where a scrape of every job would be megabytes) only totals.
#[derive(Debug)]
struct PerJob<S> {
    samples: S,
    per_job: bool,
}

type NoExemplar = Option<&'static Exemplar<prometheus_client::encoding::NoLabelSet, u64>>;
/// A per-job gauge: its name, its help text and how to read it from a sample.
type Gauge = (&'static str, &'static str, fn(&JobSample) -> i64);

impl<S: JobSamples> Collector for PerJob<S> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Totals, always: how many jobs hold a valid token, and runs by outcome.
        let now = crate::time::unix_now();
        let mut states = [0i64; 3];
        let mut runs = [0u64; 3];
        self.samples.each(&mut |s| {
            let state = match s.token_expiry {
                0 => 2,
                at if at > now => 0,
                _ => 1,
            };
            states[state] += 1;
            for (total, n) in runs.iter_mut().zip(s.runs) {
                *total += n;
            }
        });
        let mut family = encoder.encode_descriptor(
            "jobs",
            "Jobs by the state of their stored token (valid, expired, missing)",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in ["valid", "expired", "missing"].into_iter().zip(states) {
            ConstGauge::new(n).encode(family.encode_family(&[("token", state)])?)?;
        }
        if !self.per_job {
            let mut family = encoder.encode_descriptor(
                "runs",
                "Runs by this process, by outcome (success, retryable or permanent failure)",
                None,
                MetricType::Counter,
            )?;
            for (outcome, label) in Outcome::ALL {
                family
                    .encode_family(&[("outcome", label)])?
                    .encode_counter(&runs[outcome as usize], NoExemplar::None)?;
            }
            return Ok(());
        }
        let gauges: [Gauge; 4] = [
            (
                "token_expiry_timestamp_seconds",
                "Unix time at which the stored token expires (0: no token)",
                |s| i64::try_from(s.token_expiry).unwrap_or(i64::MAX),
            ),
            (
                "next_run_timestamp_seconds",
                "Unix time of the next planned run",
                |s| i64::try_from(s.next_run).unwrap_or(i64::MAX),
            ),
            (
                "consecutive_failures",
                "Failed runs since the last success",
                |s| i64::from(s.failures),
            ),
            (
                "last_success_timestamp_seconds",
                "Unix time the token was last stored, by a successful run of any process (0: none yet)",
                |s| i64::try_from(s.last_success).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            let mut err = Ok(());
            self.samples.each(&mut |s| {
                if err.is_ok() {
                    err = family
                        .encode_family(&[("job_name", s.name.as_str())])
                        .and_then(|m| ConstGauge::new(value(s)).encode(m));
                }
            });
            err?;
        }
        let mut family = encoder.encode_descriptor(
            "runs",
            "Runs by this process, by job and outcome (success, retryable or permanent failure)",
            None,
            MetricType::Counter,
        )?;
        let mut err = Ok(());
        self.samples.each(&mut |s| {
            for (outcome, label) in Outcome::ALL {
                if err.is_ok() {
                    err = family
                        .encode_family(&[("job_name", s.name.as_str()), ("outcome", label)])
                        .and_then(|mut m| {
                            m.encode_counter(&s.runs[outcome as usize], NoExemplar::None)
                        });
                }
            }
        });
        err
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    class: String,
    retry: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabel {
    component: String,
}

type HistogramFamily = Family<OutcomeLabel, Histogram, fn() -> Histogram>;

/// The daemon's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    errors: Family<ErrorLabels, Counter>,
    duration: HistogramFamily,
    lateness: Histogram,
    internal: Family<ComponentLabel, Counter>,
    store_errors: Counter,
    leases: Family<ResultLabel, Counter>,
    sink_writes: Family<ResultLabel, Counter>,
    actions: Family<ResultLabel, Counter>,
    socket: Family<ResultLabel, Counter>,
    proxy: Family<ResultLabel, Counter>,
    proxy_retries: Family<ResultLabel, Counter>,
}

/// A `result` label: lease attempts, sink writes, actions, socket and proxy requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// A counter family by `result`, registered with every result's series present from the
/// start (so a rate over it is defined before the first event).
fn results(
    registry: &mut Registry,
    name: &str,
    help: &str,
    each: &[&'static str],
) -> Family<ResultLabel, Counter> {
    let family = Family::<ResultLabel, Counter>::default();
    registry.register(name, help, family.clone());
    for &result in each {
        let _ = family.get_or_create(&ResultLabel { result });
    }
    family
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    /// The registry, with job series read from `jobs` at every scrape (per job, or only
    /// totals without `per_job`).
    pub fn new(jobs: impl JobSamples, per_job: bool) -> Self {
        let mut registry = Registry::with_prefix("tokenwarden");
        registry.register(
            "build",
            "This tokenwarden build",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("wasmtime", crate::runtime::WASMTIME_VERSION.to_string()),
            ]),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "run_errors",
            "Failed runs by this process, by error class",
            errors.clone(),
        );
        let duration = HistogramFamily::new_with_constructor(duration_histogram);
        registry.register(
            "run_duration_seconds",
            "Wall-clock duration of runs by this process, by outcome",
            duration.clone(),
        );
        for (_, label) in Outcome::ALL {
            let _ = duration.get_or_create(&OutcomeLabel {
                outcome: label.into(),
            });
        }
        let lateness = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        registry.register(
            "run_lateness_seconds",
            "How long planned runs started after they were due (waiting for a run slot)",
            lateness.clone(),
        );
        let internal = Family::<ComponentLabel, Counter>::default();
        registry.register(
            "internal_errors",
            "Panics caught and recovered from, by component (each is a bug: please report it)",
            internal.clone(),
        );
        for c in ["run", "scheduler", "change-feed", "delivery"] {
            let _ = internal.get_or_create(&ComponentLabel {
                component: c.into(),
            });
        }
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Calls to the secret store that failed because it was unavailable",
            store_errors.clone(),
        );
        let leases = results(
            &mut registry,
            "lease_attempts",
            "Requests for a job's lease by this process: granted, held (another process is running the job), moved (another process ran it since this one planned), unavailable (the store was down)",
            &["granted", "held", "moved", "unavailable"],
        );
        let sink_writes = results(
            &mut registry,
            "sink_writes",
            "Sink files this process delivered a token to, by result: written (replaced), unchanged (already held it), failed (kept its last good token)",
            &["written", "unchanged", "failed"],
        );
        let actions = results(
            &mut registry,
            "on_change_actions",
            "On-change actions (signals and commands) this process ran, by result",
            &["ok", "failed"],
        );
        let socket = results(
            &mut registry,
            "token_socket_requests",
            "Requests to the token socket, by result: served, refused (caller not allowed, or no such job), unavailable (no unexpired token), bad (malformed request)",
            &["served", "refused", "unavailable", "bad"],
        );
        let proxy = results(
            &mut registry,
            "proxy_requests",
            "Requests to the proxy, by result: the upstream's status class (1xx to 5xx), refused (not a consumer of the route), no_route, bad_request, no_token (none unexpired, or the store down), upstream_failed (unreachable, timed out, or failed mid-exchange)",
            &super::traffic::PROXY_RESULTS,
        );
        let proxy_retries = results(
            &mut registry,
            "proxy_refresh_retries",
            "Proxied requests whose token the upstream rejected (401 invalid_token), by what followed: refreshed (the job was refreshed and the request sent again), newer_token (sent again with a token another refresh got), throttled (refreshed less than 30 s ago: the 401 went back), failed (the refresh failed: the 401 went back)",
            &super::traffic::RETRY_RESULTS,
        );
        registry.register_collector(Box::new(PerJob {
            samples: jobs,
            per_job,
        }));
        Self {
            leases,
            sink_writes,
            actions,
            socket,
            proxy,
            proxy_retries,
            registry,
            errors,
            duration,
            lateness,
            internal,
            store_errors,
        }
    }

    /// Records a finished run of this process.
    pub fn run(&self, record: &super::RunRecord) {
        let outcome = Self::outcome(record);
        if let Some(e) = &record.error {
            self.errors
                .get_or_create(&ErrorLabels {
                    class: e.class.clone(),
                    retry: e.retry.to_string(),
                })
                .inc();
        }
        self.duration
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label().into(),
            })
            .observe(record.duration_ms as f64 / 1000.0);
        if let Some(l) = record.lateness_ms {
            self.lateness.observe(l as f64 / 1000.0);
        }
    }

    /// How a record counts.
    pub fn outcome(record: &super::RunRecord) -> Outcome {
        match &record.error {
            None => Outcome::Success,
            Some(e) if e.retry == crate::outcome::Retry::Retryable => Outcome::Retryable,
            Some(_) => Outcome::Permanent,
        }
    }

    /// Counts a lease request by its result (`granted`, `held`, `moved`, `unavailable`).
    pub fn lease(&self, result: &'static str) {
        self.leases.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a sink delivery by its result (`written`, `unchanged`, `failed`).
    pub fn sink_write(&self, result: &'static str) {
        self.sink_writes
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts an on-change action by its result (`ok`, `failed`).
    pub fn action(&self, result: &'static str) {
        self.actions.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a token socket request by its result.
    pub fn socket(&self, result: &'static str) {
        self.socket.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a proxied request by its result.
    pub fn proxy(&self, result: &'static str) {
        self.proxy.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts what followed a token the upstream rejected.
    pub fn proxy_retry(&self, result: &'static str) {
        self.proxy_retries
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts a caught panic in `component`.
    pub fn internal_error(&self, component: &str) {
        self.internal
            .get_or_create(&ComponentLabel {
                component: component.into(),
            })
            .inc();
    }

    /// Counts a failed call to an unavailable store.
    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

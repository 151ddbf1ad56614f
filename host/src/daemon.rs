//! The refresh daemon: one task per job, runs at the times [`crate::schedule`] decides,
//! retries with backoff, catches up at start-up and stops cleanly.
//!
//! Guarantees: never two runs of one job at once (a trigger during a run joins it and gets
//! its outcome); at most `max_concurrent_runs` runs in flight across jobs; the last good
//! token stays stored through every failure (the plugin writes only on success); a stopping
//! daemon lets runs in flight finish within `shutdown_grace`, and one cut off after that
//! leaves the store consistent because every secret write is one SQLite transaction.

use crate::config::{Config, DaemonConfig, JobConfig};
use crate::metrics::Metrics;
use crate::outcome::{OAuthError, Outcome, PluginError, Retry, RunError};
use crate::runtime::Runtime;
use crate::schedule::{self, Policy, TokenState};
use crate::store::{SecretStore, StoreError};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, Semaphore, broadcast, watch};
use tokio::task::JoinSet;

/// Why a run started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// At start-up, the stored token was missing, expired or due.
    CatchUp,
    /// The schedule said so.
    Schedule,
    /// A retry after a failure.
    Retry,
    /// `POST /jobs/{name}/refresh`.
    Manual,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::CatchUp => "catch-up",
            Trigger::Schedule => "schedule",
            Trigger::Retry => "retry",
            Trigger::Manual => "manual",
        })
    }
}

/// A failed run, as the admin API and logs show it. No secret values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorRecord {
    /// Stable class (`rejected`, `throttled`, `transport`, ...).
    pub class: String,
    /// Whether a retry can help.
    pub retry: Retry,
    /// The full message.
    pub message: String,
    /// The OAuth error with Entra's trace and correlation ids, when the server sent one.
    pub oauth: Option<OAuthError>,
}

/// One finished run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunRecord {
    /// Why it ran.
    pub trigger: Trigger,
    /// Unix milliseconds at start.
    pub started_at_ms: u64,
    /// How long it took.
    pub duration_ms: u64,
    /// 1 for the first try since the last success, 2 for the first retry, ...
    pub attempt: u32,
    /// For scheduled runs (not triggers): milliseconds between when it was due and when it
    /// started, i.e. the wait for a run slot.
    pub lateness_ms: Option<u64>,
    /// Whether a token was stored.
    pub ok: bool,
    /// The outcome, on success.
    pub outcome: Option<Outcome>,
    /// The error, on failure.
    pub error: Option<ErrorRecord>,
}

/// A job as the admin API reports it.
#[derive(Clone, Debug, Serialize)]
pub struct JobStatus {
    /// Job name.
    pub name: String,
    /// Its schedule, as configured.
    pub schedule: String,
    /// Store name of its token.
    pub token_secret: String,
    /// Whether a run is in flight.
    pub running: bool,
    /// Unix seconds at which the stored token expires, when known.
    pub token_expires_at: Option<u64>,
    /// Seconds the stored token has left (negative: expired).
    pub token_expires_in_seconds: Option<i64>,
    /// Unix seconds of the next run.
    pub next_run_at: u64,
    /// Failed runs since the last success.
    pub consecutive_failures: u32,
    /// Runs since start.
    pub runs: u64,
    /// The last run.
    pub last_run: Option<RunRecord>,
}

/// Published after every run, for the demo, tests and embedders.
#[derive(Clone, Debug)]
pub struct RunEvent {
    /// Job name.
    pub job: String,
    /// The run.
    pub record: RunRecord,
    /// When the job runs next.
    pub next_run_at: SystemTime,
    /// Failed runs since the last success.
    pub consecutive_failures: u32,
    /// Expiry of the stored token, Unix seconds.
    pub token_expires_at: Option<u64>,
}

/// `POST /jobs/{name}/refresh` could not run the job.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// No such job.
    #[error("no job named `{0}`")]
    UnknownJob(String),
    /// The daemon is stopping.
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

struct JobState {
    running: bool,
    last: Option<RunRecord>,
    token_expires_at: Option<u64>,
    next_run_at: SystemTime,
    consecutive_failures: u32,
    runs: u64,
}

struct Slot {
    config: JobConfig,
    state: Mutex<JobState>,
    run_lock: tokio::sync::Mutex<()>,
    wake: Notify,
    completed: AtomicU64,
}

impl Slot {
    fn state(&self) -> std::sync::MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Inner {
    runtime: Arc<Runtime>,
    store: Arc<dyn SecretStore>,
    policy: Policy,
    max_runs: u32,
    slots: Vec<Arc<Slot>>,
    permits: Semaphore,
    events: broadcast::Sender<RunEvent>,
    metrics: Metrics,
    stop: watch::Sender<bool>,
    tasks: Mutex<Option<JoinSet<()>>>,
}

/// A running daemon. Cheap to clone.
#[derive(Clone)]
pub struct Daemon(Arc<Inner>);

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("jobs", &self.0.slots.len())
            .finish_non_exhaustive()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn signed_secs_until(at: u64, now: SystemTime) -> i64 {
    let now = i64::try_from(unix_secs(now)).unwrap_or(i64::MAX);
    i64::try_from(at).unwrap_or(i64::MAX).saturating_sub(now)
}

impl Daemon {
    /// Starts a task per job of `config`. Jobs whose stored token is missing, expired or
    /// due run at once (catch-up).
    pub fn start(
        config: &Config,
        runtime: Arc<Runtime>,
        store: Arc<dyn SecretStore>,
    ) -> Result<Self, StoreError> {
        Self::start_jobs(&config.jobs, &config.daemon, runtime, store)
    }

    /// Like [`Daemon::start`], for embedders without a config file.
    pub fn start_jobs(
        jobs: &[JobConfig],
        daemon: &DaemonConfig,
        runtime: Arc<Runtime>,
        store: Arc<dyn SecretStore>,
    ) -> Result<Self, StoreError> {
        let metrics = Metrics::default();
        let mut slots = Vec::new();
        for job in jobs {
            let token = store.get(&job.secrets.access_token)?.map(|s| TokenState {
                updated_at: from_unix(s.meta.updated_at),
                expires_at: s.meta.expires_at.map(from_unix),
            });
            let next = schedule::next_due(
                &job.schedule,
                &daemon.policy,
                token.as_ref(),
                None,
                fastrand::f64(),
            );
            let expires_at = token.and_then(|t| t.expires_at).map(unix_secs);
            metrics.job_state(&job.name, expires_at, unix_secs(next), 0);
            slots.push(Arc::new(Slot {
                config: job.clone(),
                state: Mutex::new(JobState {
                    running: false,
                    last: None,
                    token_expires_at: expires_at,
                    next_run_at: next,
                    consecutive_failures: 0,
                    runs: 0,
                }),
                run_lock: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
                completed: AtomicU64::new(0),
            }));
        }
        let max_runs = u32::try_from(daemon.max_concurrent_runs.max(1)).unwrap_or(u32::MAX);
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            runtime,
            store,
            policy: daemon.policy.clone(),
            max_runs,
            slots,
            permits: Semaphore::new(max_runs as usize),
            events: broadcast::channel(1024).0,
            metrics,
            stop,
            tasks: Mutex::new(None),
        });
        let mut tasks = JoinSet::new();
        for slot in &inner.slots {
            tasks.spawn(job_loop(inner.clone(), slot.clone()));
        }
        *inner.tasks.lock().unwrap_or_else(|p| p.into_inner()) = Some(tasks);
        Ok(Self(inner))
    }

    /// Events of every run from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RunEvent> {
        self.0.events.subscribe()
    }

    /// Runs a job now, or joins its run in flight, and returns that run's record.
    pub async fn trigger(&self, job: &str) -> Result<RunRecord, TriggerError> {
        if *self.0.stop.borrow() {
            return Err(TriggerError::ShuttingDown);
        }
        let slot = self
            .0
            .slots
            .iter()
            .find(|s| s.config.name == job)
            .cloned()
            .ok_or_else(|| TriggerError::UnknownJob(job.to_string()))?;
        // Spawned, so that a client hanging up does not cut the run off halfway.
        let inner = self.0.clone();
        tokio::spawn(async move { inner.run(&slot, Trigger::Manual, None).await })
            .await
            .map_err(|_| TriggerError::ShuttingDown)
    }

    /// Every job's status, in config order.
    pub fn statuses(&self) -> Vec<JobStatus> {
        self.0.slots.iter().map(|s| status(s)).collect()
    }

    /// One job's status.
    pub fn status(&self, job: &str) -> Option<JobStatus> {
        self.0
            .slots
            .iter()
            .find(|s| s.config.name == job)
            .map(|s| status(s))
    }

    /// Jobs whose stored token is missing or expired (`/readyz` fails while any is).
    pub fn not_ready(&self) -> Vec<String> {
        let now = unix_secs(SystemTime::now());
        self.0
            .slots
            .iter()
            .filter(|s| {
                let st = s.state();
                let has_token = st.token_expires_at.is_some_and(|e| e > now)
                    || (st.token_expires_at.is_none() && st.last.as_ref().is_some_and(|r| r.ok));
                !has_token
            })
            .map(|s| s.config.name.clone())
            .collect()
    }

    /// Prometheus text.
    pub fn metrics(&self) -> String {
        self.0.metrics.encode()
    }

    /// Stops scheduling and waits up to `grace` for runs in flight. Returns whether every
    /// run finished in time; runs still going after that are cut off.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.0.stop.send_replace(true);
        let tasks = self
            .0
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(mut tasks) = tasks else {
            return true;
        };
        let drained = async {
            while tasks.join_next().await.is_some() {}
            // Manual runs hold a permit too: having them all means nothing runs.
            let _all = self.0.permits.acquire_many(self.0.max_runs).await;
        };
        let finished = tokio::time::timeout(grace, drained).await.is_ok();
        if !finished {
            tracing::warn!(
                grace_s = grace.as_secs_f32(),
                "runs still in flight at the end of the grace period were cut off; the store is consistent"
            );
        }
        self.0.permits.close();
        finished
    }
}

fn status(slot: &Slot) -> JobStatus {
    let st = slot.state();
    let now = SystemTime::now();
    JobStatus {
        name: slot.config.name.clone(),
        schedule: slot.config.schedule.to_string(),
        token_secret: slot.config.secrets.access_token.clone(),
        running: st.running,
        token_expires_at: st.token_expires_at,
        token_expires_in_seconds: st.token_expires_at.map(|e| signed_secs_until(e, now)),
        next_run_at: unix_secs(st.next_run_at),
        consecutive_failures: st.consecutive_failures,
        runs: st.runs,
        last_run: st.last.clone(),
    }
}

async fn job_loop(inner: Arc<Inner>, slot: Arc<Slot>) {
    let mut stop = inner.stop.subscribe();
    let mut catch_up = slot.state().next_run_at <= SystemTime::now();
    loop {
        if *stop.borrow() {
            break;
        }
        let next = slot.state().next_run_at;
        let delay = next
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // Another run (a manual trigger) changed the plan: look again.
            _ = slot.wake.notified() => continue,
            _ = stop.changed() => break,
        }
        if slot.state().next_run_at > SystemTime::now() {
            continue;
        }
        let trigger = if std::mem::take(&mut catch_up) {
            Trigger::CatchUp
        } else if slot.state().consecutive_failures > 0 {
            Trigger::Retry
        } else {
            Trigger::Schedule
        };
        // Not inside the select: a stop request lets this run finish.
        inner.run(&slot, trigger, Some(next)).await;
    }
}

impl Inner {
    async fn run(&self, slot: &Slot, trigger: Trigger, due: Option<SystemTime>) -> RunRecord {
        let seen = slot.completed.load(Ordering::Acquire);
        let _one_at_a_time = slot.run_lock.lock().await;
        if slot.completed.load(Ordering::Acquire) != seen
            && let Some(last) = slot.state().last.clone()
        {
            // A run finished while we waited: that is the run we join.
            return last;
        }
        let _permit = self.permits.acquire().await;
        let attempt = {
            let mut st = slot.state();
            st.running = true;
            st.consecutive_failures + 1
        };
        let started = SystemTime::now();
        let lateness = due.map(|due| started.duration_since(due).unwrap_or(Duration::ZERO));
        if let Some(l) = lateness {
            self.metrics.lateness(l.as_secs_f64());
        }
        let lateness_ms = lateness.map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX));
        let clock = Instant::now();
        let result = self.runtime.run(&slot.config, self.store.clone()).await;
        let elapsed = clock.elapsed();
        let now = SystemTime::now();
        let jitter = fastrand::f64();
        let job = &slot.config;

        let (record, event) = {
            let mut st = slot.state();
            let record = match &result {
                Ok(report) => {
                    st.consecutive_failures = 0;
                    st.token_expires_at = report.outcome.expires_at;
                    // The token's life began when it was requested; `expires_in` gives it
                    // to the millisecond where `expires_at` is rounded to whole seconds.
                    let expires_at = match report.outcome.expires_in {
                        Some(s) => Some(started + Duration::from_secs(s)),
                        None => report.outcome.expires_at.map(from_unix),
                    };
                    let token = TokenState {
                        updated_at: started,
                        expires_at,
                    };
                    let refresh_in = report.outcome.refresh_in.map(Duration::from_secs);
                    st.next_run_at = schedule::next_due(
                        &job.schedule,
                        &self.policy,
                        Some(&token),
                        refresh_in,
                        jitter,
                    )
                    .max(now);
                    RunRecord {
                        trigger,
                        started_at_ms: unix_ms(started),
                        duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                        attempt,
                        lateness_ms,
                        ok: true,
                        outcome: Some(report.outcome.clone()),
                        error: None,
                    }
                }
                Err(e) => {
                    st.consecutive_failures += 1;
                    let throttled = matches!(e, RunError::Plugin(PluginError::Throttled(_)));
                    let delay = schedule::retry_delay(
                        &self.policy,
                        e.retry(),
                        throttled,
                        e.retry_after(),
                        st.consecutive_failures,
                        jitter,
                    );
                    st.next_run_at = now + delay;
                    RunRecord {
                        trigger,
                        started_at_ms: unix_ms(started),
                        duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                        attempt,
                        lateness_ms,
                        ok: false,
                        outcome: None,
                        error: Some(ErrorRecord {
                            class: e.class().to_string(),
                            retry: e.retry(),
                            message: e.to_string(),
                            oauth: e.oauth().cloned(),
                        }),
                    }
                }
            };
            st.running = false;
            st.runs += 1;
            st.last = Some(record.clone());
            let event = RunEvent {
                job: job.name.clone(),
                record: record.clone(),
                next_run_at: st.next_run_at,
                consecutive_failures: st.consecutive_failures,
                token_expires_at: st.token_expires_at,
            };
            (record, event)
        };

        let outcome = record
            .error
            .as_ref()
            .map_or("success", |e| e.class.as_str());
        self.metrics.run(&job.name, outcome, elapsed.as_secs_f64());
        self.metrics.job_state(
            &job.name,
            event.token_expires_at,
            unix_secs(event.next_run_at),
            event.consecutive_failures,
        );
        log_run(&event, now);
        slot.completed.fetch_add(1, Ordering::Release);
        slot.wake.notify_one();
        let _ = self.events.send(event);
        record
    }
}

fn log_run(event: &RunEvent, now: SystemTime) {
    let r = &event.record;
    let next_run = crate::cli::rfc3339(unix_secs(event.next_run_at));
    let next_in_s = event
        .next_run_at
        .duration_since(now)
        .unwrap_or_default()
        .as_secs_f32();
    let token_left_s = event.token_expires_at.map(|e| signed_secs_until(e, now));
    match &r.error {
        None => tracing::info!(
            job = %event.job,
            outcome = "success",
            trigger = %r.trigger,
            attempt = r.attempt,
            duration_ms = r.duration_ms,
            expires_in_s = r.outcome.as_ref().and_then(|o| o.expires_in),
            %next_run,
            next_in_s,
            "token refreshed"
        ),
        Some(e) => {
            let oauth = e.oauth.as_ref();
            let error = oauth.map(|o| o.error.as_str());
            let trace_id = oauth.and_then(|o| o.trace_id.as_deref());
            let correlation_id = oauth.and_then(|o| o.correlation_id.as_deref());
            match e.retry {
                Retry::Retryable => tracing::warn!(
                    job = %event.job, outcome = %e.class, trigger = %r.trigger, attempt = r.attempt,
                    duration_ms = r.duration_ms, error, trace_id, correlation_id, token_left_s,
                    %next_run, next_in_s, message = %e.message,
                    "refresh failed; retrying, the last good token is kept"
                ),
                Retry::Permanent => tracing::error!(
                    job = %event.job, outcome = %e.class, trigger = %r.trigger, attempt = r.attempt,
                    duration_ms = r.duration_ms, error, trace_id, correlation_id, token_left_s,
                    %next_run, next_in_s, message = %e.message,
                    "refresh failed permanently and needs attention; retrying slowly, the last good token is kept"
                ),
            }
        }
    }
}

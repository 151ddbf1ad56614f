//! The refresh daemon: runs every job at the time [`crate::schedule`] decides, retries
//! with backoff, catches up at start-up, shares the work with other daemons on the same
//! store, and stops cleanly.
//!
//! Guarantees:
//! - one run of a due refresh across every daemon on a store: runs take the job's lease
//!   with a compare-and-set on the job's row ([`run`]), and a token write under a lapsed
//!   lease is refused;
//! - within a daemon, never two runs of one job at once (a trigger during a run joins it
//!   and gets its outcome), and at most `max_concurrent_runs` runs in flight;
//! - what other processes write (tokens, credentials, job rows) is seen within a poll
//!   interval: readiness, `/jobs`, metrics and plans follow, and a failing job is re-armed
//!   at once when one of its credentials changes;
//! - the last good token stays stored through every failure (the plugin writes only on
//!   success), and a stopping daemon lets runs in flight finish within `shutdown_grace`;
//! - no input stops a job for good: a panic in a run is caught, reported in the log, in
//!   `/jobs` and in metrics, and the job is retried; the scheduler restarts itself if it
//!   ever panics.
//!
//! Work is spread across daemons by rendezvous hashing of each job over the live members:
//! the first-ranked daemon tries at the due time, the next one a hand-off delay later (and
//! only if the row has not moved), so a dead daemon delays its jobs by one hand-off, not by
//! a lease lifetime.

mod deliver;
pub(crate) mod metrics;
mod record;
mod run;
mod settings;
mod status;
mod traffic;

pub use deliver::{CurrentToken, DeliveryStatus};
pub use record::{ErrorRecord, RunRecord, Trigger};
pub(crate) use run::{Attempt, Leasing, Ran};
pub(crate) use settings::owner_name;
pub use settings::{Coordination, DaemonConfig};
pub use status::{JobStatus, RunEvent, TriggerError};
pub use traffic::{ProxyResult, ProxyStatus};

use run::panic_text;

use crate::job::JobConfig;
use crate::runtime::Runtime;
use crate::schedule::{self, Failure, Policy, TokenState};
use crate::store::{JobRow, LeaseMode, Member, SecretStore, StoreError};
use crate::time;
use futures_util::FutureExt as _;
use metrics::Metrics;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tokio::task::JoinSet;

struct JobState {
    token: Option<TokenState>,
    token_expires_at: Option<u64>,
    token_revision: u64,
    /// The job row as last seen (the compare-and-set value of the next planned run).
    row_revision: u64,
    failures: u32,
    lease: Option<(String, u64)>,
    last: Option<RunRecord>,
    next: SystemTime,
    next_trigger: Trigger,
    /// Bumped at every new plan; the scheduler ignores entries of older plans.
    generation: u64,
    running: Option<watch::Receiver<Option<RunRecord>>>,
    runs: u64,
    /// The next run its last runner recorded in the row.
    recorded_due: Option<SystemTime>,
    /// Runs by this process, by [`metrics::Outcome`].
    counts: [u64; 3],
    /// Failures to reach the store, for this daemon's own backoff (not recorded anywhere).
    store_failures: u32,
    /// What its sinks and actions did.
    delivery: DeliveryStatus,
    /// What the proxy did with its token (from the first proxied request on).
    proxy: Option<ProxyStatus>,
}

struct Job {
    config: JobConfig,
    state: Mutex<JobState>,
}

impl Job {
    fn state(&self) -> std::sync::MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a store name is a job's token or one of its credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Binding {
    Token,
    Input,
}

struct Inner {
    leasing: Leasing,
    coord: Coordination,
    policy: Policy,
    jobs: Vec<Job>,
    by_name: HashMap<String, usize>,
    by_secret: HashMap<String, Vec<(usize, Binding)>>,
    max_runs: u32,
    /// Run slots. A planned run takes its slot in the scheduler, before its task exists, so
    /// a wave of due jobs waits as heap entries, not as one parked task per job.
    permits: Arc<Semaphore>,
    events: broadcast::Sender<RunEvent>,
    metrics: Metrics,
    stop: watch::Sender<bool>,
    plans: mpsc::UnboundedSender<(usize, u64, SystemTime)>,
    members: Mutex<Vec<String>>,
    cursor: Mutex<u64>,
    services: Mutex<Option<JoinSet<()>>>,
    /// Jobs whose sinks are to be written.
    deliveries: deliver::Queue,
    /// Bumped whenever any job's stored token changes (the token socket's waiters).
    tokens: watch::Sender<u64>,
}

/// A running daemon. Cheap to clone.
#[derive(Clone)]
pub struct Daemon(Arc<Inner>);

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("jobs", &self.0.jobs.len())
            .field("owner", &self.0.coord.owner)
            .finish_non_exhaustive()
    }
}

/// A stable 64-bit hash (FNV-1a), so every daemon ranks the same way.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// This daemon's place among the live members for `job`: 0 tries first.
fn rank(job: &str, me: &str, members: &[String]) -> u32 {
    let mine = fnv(&[job, me]);
    let ahead = members
        .iter()
        .filter(|m| m.as_str() != me)
        .filter(|m| {
            let theirs = fnv(&[job, m]);
            (theirs, m.as_str()) > (mine, me)
        })
        .count();
    u32::try_from(ahead).unwrap_or(u32::MAX)
}

impl Daemon {
    /// Starts the daemon for `jobs` on `store` (a [`crate::Config`] file's `jobs`,
    /// `daemon` and `Coordination::of(&config.store)`, or values of your own). Jobs whose
    /// stored token is missing, expired or due run at once (catch-up).
    pub async fn start(
        jobs: Vec<JobConfig>,
        daemon: &DaemonConfig,
        coord: Coordination,
        runtime: Arc<Runtime>,
        store: Arc<dyn SecretStore>,
    ) -> Result<Self, StoreError> {
        let snapshot = store.changes(0).await?;
        let metas: HashMap<&str, &crate::store::SecretMeta> = snapshot
            .secrets
            .iter()
            .map(|m| (m.name.as_str(), m))
            .collect();
        let rows: HashMap<&str, &JobRow> =
            snapshot.jobs.iter().map(|r| (r.job.as_str(), r)).collect();
        let now = SystemTime::now();
        let now_ms = time::unix_ms(now);
        let mut by_name = HashMap::with_capacity(jobs.len());
        let mut by_secret: HashMap<String, Vec<(usize, Binding)>> = HashMap::new();
        let mut states = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.into_iter().enumerate() {
            by_name.insert(job.name.clone(), i);
            by_secret
                .entry(job.secrets.access_token.clone())
                .or_default()
                .push((i, Binding::Token));
            for input in job.secrets.inputs() {
                by_secret
                    .entry(input.to_string())
                    .or_default()
                    .push((i, Binding::Input));
            }
            let meta = metas.get(job.secrets.access_token.as_str());
            let token = meta.map(|m| TokenState::from_unix(m.updated_at, m.expires_at));
            let row = rows.get(job.name.as_str());
            let mut state = JobState {
                token,
                token_expires_at: meta.and_then(|m| m.expires_at),
                token_revision: meta.map_or(0, |m| m.revision),
                row_revision: 0,
                failures: 0,
                lease: None,
                last: None,
                next: now,
                next_trigger: Trigger::CatchUp,
                generation: 0,
                running: None,
                runs: 0,
                recorded_due: None,
                counts: [0; 3],
                store_failures: 0,
                delivery: DeliveryStatus::default(),
                proxy: None,
            };
            if let Some(row) = row {
                adopt_row(&mut state, row, now_ms);
            }
            states.push(Job {
                config: job,
                state: Mutex::new(state),
            });
        }
        let max_runs = u32::try_from(daemon.max_concurrent_runs.max(1)).unwrap_or(u32::MAX);
        let (stop, _) = watch::channel(false);
        let (plans, plans_rx) = mpsc::unbounded_channel();
        let (deliveries, deliveries_rx) = mpsc::unbounded_channel();
        let me = Member {
            id: coord.owner.clone(),
            started_ms: time::unix_ms(now),
            seen_ms: 0,
        };
        // Known members before the first plans, so ranks are right from the start.
        let members = match store.heartbeat(&me, coord.heartbeat() * 3).await {
            Ok(m) => m.into_iter().map(|m| m.id).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot register with the store's members; running as if alone");
                Vec::new()
            }
        };
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| Inner {
            metrics: Metrics::new(JobView(weak.clone()), daemon.per_job_metrics),
            leasing: Leasing {
                store,
                runtime,
                owner: coord.owner.clone(),
                ttl: coord.lease_ttl,
                policy: daemon.policy.clone(),
            },
            policy: daemon.policy.clone(),
            coord,
            jobs: states,
            by_name,
            by_secret,
            max_runs,
            permits: Arc::new(Semaphore::new(max_runs as usize)),
            events: broadcast::channel(1024).0,
            stop,
            plans,
            members: Mutex::new(members),
            cursor: Mutex::new(snapshot.revision),
            services: Mutex::new(None),
            deliveries,
            tokens: watch::channel(0).0,
        });
        for i in 0..inner.jobs.len() {
            inner.replan(i, now, true);
        }
        inner.log_plans(now);
        let mut services = JoinSet::new();
        services.spawn(scheduler(inner.clone(), plans_rx));
        services.spawn(watch_store(inner.clone()));
        services.spawn(heartbeat(inner.clone()));
        // Sinks get the stored token at start (the delivery skips an expired or missing one).
        for i in 0..inner.jobs.len() {
            if inner.has_consumers(i) {
                let _ = inner.deliveries.send(i);
            }
        }
        services.spawn(deliver::deliverer(inner.clone(), deliveries_rx));
        *inner.services.lock().unwrap_or_else(|p| p.into_inner()) = Some(services);
        Ok(Self(inner))
    }

    /// The configuration of job `name`.
    pub fn job_config(&self, name: &str) -> Option<&JobConfig> {
        self.0.by_name.get(name).map(|&i| &self.0.job(i).config)
    }

    /// This daemon's owner name (as lease holder and member).
    pub fn owner(&self) -> &str {
        &self.0.coord.owner
    }

    /// Events of every run of this daemon from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RunEvent> {
        self.0.events.subscribe()
    }

    /// Runs a job now, or joins its run in flight (here or in another process), and
    /// returns that run's record.
    pub async fn trigger(&self, job: &str) -> Result<RunRecord, TriggerError> {
        if *self.0.stop.borrow() {
            return Err(TriggerError::ShuttingDown);
        }
        let idx = *self
            .0
            .by_name
            .get(job)
            .ok_or_else(|| TriggerError::UnknownJob(job.to_string()))?;
        // Spawned, so that a client hanging up does not cut the run off halfway.
        let inner = self.0.clone();
        tokio::spawn(async move { inner.manual(idx).await })
            .await
            .map_err(|_| TriggerError::ShuttingDown)?
    }

    /// Every job's status, in config order.
    pub fn statuses(&self) -> Vec<JobStatus> {
        (0..self.0.jobs.len()).map(|i| self.0.status(i)).collect()
    }

    /// One job's status.
    pub fn status(&self, job: &str) -> Option<JobStatus> {
        self.0.by_name.get(job).map(|&i| self.0.status(i))
    }

    /// Jobs whose stored token is missing or expired (`/readyz` fails while any is).
    pub fn not_ready(&self) -> Vec<String> {
        let now = SystemTime::now();
        self.0
            .jobs
            .iter()
            .filter(|j| {
                let st = j.state();
                !st.token.is_some_and(|t| t.valid_at(now))
            })
            .map(|j| j.config.name.clone())
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
        let services = self
            .0
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let drained = async {
            if let Some(mut services) = services {
                while services.join_next().await.is_some() {}
            }
            // Every run holds a permit: having them all means nothing runs.
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
        if let Err(e) = self.0.leasing.store.leave(&self.0.coord.owner).await {
            tracing::debug!(error = %e, "could not leave the member list; the entry lapses by itself");
        }
        finished
    }
}

/// The daemon's jobs as the metrics collector reads them at scrape time.
#[derive(Debug)]
struct JobView(std::sync::Weak<Inner>);

impl metrics::JobSamples for JobView {
    fn each(&self, f: &mut dyn FnMut(&metrics::JobSample)) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        for job in &inner.jobs {
            let st = job.state();
            // The token is written by successful runs only (or by hand): its write time is
            // the last success, whoever ran it.
            let last_success = st.token.map_or(0, |t| time::unix_secs(t.updated_at));
            f(&metrics::JobSample {
                name: job.config.name.clone(),
                token_expiry: st.token_expires_at.unwrap_or(0),
                next_run: time::unix_secs(st.next),
                failures: st.failures,
                last_success,
                runs: st.counts,
            });
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

/// Takes in a job row written by any process.
fn adopt_row(state: &mut JobState, row: &JobRow, now_ms: u64) {
    state.row_revision = row.revision;
    state.failures = row.failures;
    state.recorded_due = row.next_due_ms.map(time::from_unix_ms);
    state.lease = row
        .holder(now_ms)
        .map(|h| (h.to_string(), row.lease_until_ms));
    if let Some(r) = row.last_run.as_deref().and_then(RunRecord::from_json) {
        state.last = Some(r);
    }
}

impl Inner {
    fn job(&self, i: usize) -> &Job {
        &self.jobs[i]
    }

    fn rank(&self, i: usize) -> u32 {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        rank(&self.job(i).config.name, &self.coord.owner, &members)
    }

    /// Sets job `i`'s next run to `at` (with `trigger`) and tells the scheduler.
    fn set_plan(&self, i: usize, at: SystemTime, trigger: Trigger) {
        let generation = {
            let mut st = self.job(i).state();
            st.next = at;
            st.next_trigger = trigger;
            st.generation += 1;
            st.generation
        };
        let _ = self.plans.send((i, generation, at));
    }

    /// Plans job `i` from what is known of it: a live lease elsewhere is watched until it
    /// lapses; otherwise the plan its last runner recorded, unless the token changed (or
    /// went) since that run, in which case the token's schedule. A lower-ranked daemon adds
    /// a hand-off delay per rank.
    fn replan(&self, i: usize, now: SystemTime, starting: bool) {
        let job = self.job(i);
        let (at, trigger) = {
            let st = job.state();
            if st.running.is_some() {
                return;
            }
            let due = self.planned_due(&job.config, &st, now);
            let trigger = if starting && due <= now {
                Trigger::CatchUp
            } else if st.failures > 0 {
                Trigger::Retry
            } else {
                Trigger::Schedule
            };
            (due, trigger)
        };
        let delay = self.coord.handoff().saturating_mul(self.rank(i));
        self.set_plan(i, time::add(at, delay), trigger);
    }

    fn planned_due(&self, job: &JobConfig, st: &JobState, now: SystemTime) -> SystemTime {
        if let Some((_, until)) = &st.lease {
            return time::from_unix_ms(*until);
        }
        let by_token = || {
            schedule::due_for(
                &job.schedule,
                &self.policy,
                st.token.as_ref(),
                None,
                now,
                fastrand::f64(),
            )
        };
        let (Some(recorded), Some(last)) = (st.recorded_due, &st.last) else {
            return by_token();
        };
        let last_end = time::from_unix_ms(last.started_at_ms.saturating_add(last.duration_ms));
        // A token written after the last run ended was stored by hand (or by a process
        // that does not record runs): its own schedule applies.
        let written_since = st
            .token
            .is_some_and(|t| t.updated_at > time::add(last_end, Duration::from_secs(1)));
        let deleted_since = st.token.is_none() && last.ok;
        if written_since || deleted_since {
            by_token()
        } else {
            recorded
        }
    }

    fn status(&self, i: usize) -> JobStatus {
        let job = self.job(i);
        let st = job.state();
        let now = time::unix_now();
        JobStatus {
            name: job.config.name.clone(),
            schedule: job.config.schedule.to_string(),
            token_secret: job.config.secrets.access_token.clone(),
            running: st.running.is_some(),
            token_expires_at: st.token_expires_at,
            token_expires_in_seconds: st.token_expires_at.map(|e| time::secs_until(e, now)),
            next_run_at: time::unix_secs(st.next),
            consecutive_failures: st.failures,
            runs: st.runs,
            last_run: st.last.clone(),
            lease_holder: st.lease.as_ref().map(|(h, _)| h.clone()),
            lease_until_ms: st.lease.as_ref().map(|(_, u)| *u),
            delivery: self.has_consumers(i).then(|| st.delivery.clone()),
            proxy: st.proxy.clone(),
        }
    }

    fn log_plans(&self, now: SystemTime) {
        const DETAIL: usize = 50;
        for job in self.jobs.iter().take(DETAIL) {
            let st = job.state();
            let in_s = st.next.duration_since(now).unwrap_or_default().as_secs();
            tracing::info!(
                job = %job.config.name,
                schedule = %job.config.schedule,
                next_run = %time::rfc3339(time::unix_secs(st.next)),
                next_in_s = in_s,
                why = %st.next_trigger,
                token_expires_at = st.token_expires_at.map(time::rfc3339),
                "job planned"
            );
        }
        if self.jobs.len() > DETAIL {
            let due = self.jobs.iter().filter(|j| j.state().next <= now).count();
            tracing::info!(
                jobs = self.jobs.len(),
                due_now = due,
                "{} more jobs planned (`GET /jobs` lists each)",
                self.jobs.len() - DETAIL
            );
        }
    }
}

impl Inner {
    /// Marks job `i` running unless it already is: the sender to publish its record, or
    /// the receiver of the run in flight to join.
    fn begin(
        &self,
        i: usize,
        generation: Option<u64>,
    ) -> Result<watch::Sender<Option<RunRecord>>, Option<watch::Receiver<Option<RunRecord>>>> {
        let mut st = self.job(i).state();
        if let Some(rx) = &st.running {
            return Err(Some(rx.clone()));
        }
        if generation.is_some_and(|g| g != st.generation) {
            return Err(None);
        }
        let (tx, rx) = watch::channel(None);
        st.running = Some(rx);
        Ok(tx)
    }

    /// Starts the planned run of job `i` in the run slot `permit`, if the plan `generation`
    /// is still current.
    fn start_planned(
        self: &Arc<Self>,
        i: usize,
        generation: u64,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        if *self.stop.borrow() {
            return;
        }
        let Ok(tx) = self.begin(i, Some(generation)) else {
            return;
        };
        let (trigger, due, revision) = {
            let st = self.job(i).state();
            (st.next_trigger, st.next, st.row_revision)
        };
        let inner = self.clone();
        tokio::spawn(async move {
            inner
                .run(
                    i,
                    trigger,
                    Some(due),
                    LeaseMode::IfUnchanged { revision },
                    tx,
                    Some(permit),
                )
                .await;
        });
    }

    /// A manual trigger: runs the job now, or joins its run in flight here or elsewhere.
    async fn manual(self: Arc<Self>, i: usize) -> Result<RunRecord, TriggerError> {
        let job = &self.job(i).config;
        let deadline = tokio::time::Instant::now()
            + job.timeout
            + self.coord.lease_ttl
            + self.coord.poll_interval * 3;
        loop {
            if *self.stop.borrow() {
                return Err(TriggerError::ShuttingDown);
            }
            let record = match self.begin(i, None) {
                Ok(tx) => {
                    self.run(i, Trigger::Manual, None, LeaseMode::Any, tx, None)
                        .await
                }
                Err(Some(mut rx)) => rx
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|r| r.clone()),
                Err(None) => None,
            };
            if let Some(record) = record {
                return Ok(record);
            }
            // Another process holds the lease: wait for its run to end, then report it.
            let (holder, seen) = {
                let st = self.job(i).state();
                (st.lease.as_ref().map(|(h, _)| h.clone()), st.row_revision)
            };
            let Some(holder) = holder else {
                continue;
            };
            loop {
                if tokio::time::Instant::now() >= deadline || *self.stop.borrow() {
                    return Err(TriggerError::Busy {
                        job: job.name.clone(),
                        holder,
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let st = self.job(i).state();
                if st.row_revision != seen && st.lease.is_none() {
                    if let Some(last) = &st.last {
                        return Ok(last.clone());
                    }
                    break;
                }
            }
        }
    }

    /// One run of job `i`: waits for a run slot, attempts it under the lease, records what
    /// happened and plans the next run. A panic anywhere in the attempt is caught and
    /// recorded as a failed run of class `internal`.
    async fn run(
        self: &Arc<Self>,
        i: usize,
        trigger: Trigger,
        due: Option<SystemTime>,
        mode: LeaseMode,
        tx: watch::Sender<Option<RunRecord>>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Option<RunRecord> {
        let job = &self.job(i).config;
        let _permit = match permit {
            Some(p) => p,
            None => match self.permits.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => {
                    self.job(i).state().running = None;
                    return None;
                }
            },
        };
        let token = self.job(i).state().token;
        let attempt = AssertUnwindSafe(self.leasing.attempt(job, trigger, mode, due, token))
            .catch_unwind()
            .await
            .inspect(|a| {
                self.metrics.lease(match a {
                    Attempt::Ran(r) => {
                        if matches!(r.result, Err(crate::outcome::RunError::Internal(_))) {
                            self.metrics.internal_error("run");
                        }
                        "granted"
                    }
                    Attempt::Held(_) => "held",
                    Attempt::Moved(_) => "moved",
                    Attempt::Unavailable(_) => "unavailable",
                })
            })
            .unwrap_or_else(|panic| {
                let message = panic_text(&*panic);
                tracing::error!(job = %job.name, panic = %message, "a run panicked; the job carries on and retries");
                self.metrics.internal_error("run");
                self.failed_attempt(i, trigger, crate::outcome::RunError::Internal(message))
            });
        self.job(i).state().running = None;
        let record = self.settle(i, attempt, trigger);
        let _ = tx.send(record.clone());
        record
    }

    /// A failed run that never reached the plugin (the store was down, or a panic): a
    /// record for this process, with this process's own backoff.
    fn failed_attempt(
        &self,
        i: usize,
        trigger: Trigger,
        error: crate::outcome::RunError,
    ) -> Attempt {
        let now = SystemTime::now();
        let (failures, token) = {
            let mut st = self.job(i).state();
            st.store_failures = st.store_failures.saturating_add(1);
            (st.failures.saturating_add(1), st.token)
        };
        let failure = Failure {
            retry: error.retry(),
            throttled: false,
            retry_after: None,
        };
        let next_due = schedule::retry_at(
            &self.policy,
            failure,
            failures,
            token.as_ref(),
            now,
            fastrand::f64(),
        );
        let record = RunRecord {
            trigger,
            runner: self.coord.owner.clone(),
            started_at_ms: time::unix_ms(now),
            duration_ms: 0,
            attempt: failures,
            lateness_ms: None,
            ok: false,
            outcome: None,
            error: Some(ErrorRecord::of(&error)),
        };
        Attempt::Ran(Box::new(Ran {
            record,
            result: Err(error),
            next_due,
            failures,
            token: None,
            row_revision: None,
        }))
    }

    /// Takes in what an attempt found, publishes it and plans the job's next run.
    fn settle(&self, i: usize, attempt: Attempt, trigger: Trigger) -> Option<RunRecord> {
        let job = self.job(i);
        let now = SystemTime::now();
        let ran = match attempt {
            Attempt::Ran(ran) => ran,
            Attempt::Held(row) | Attempt::Moved(row) => {
                adopt_row(&mut job.state(), &row, time::unix_ms(now));
                self.replan(i, now, false);
                return None;
            }
            Attempt::Unavailable(e) => {
                tracing::warn!(job = %job.config.name, error = %e, "cannot take the job's lease: the store is unavailable; retrying");
                self.metrics.store_error();
                let attempt =
                    self.failed_attempt(i, trigger, crate::outcome::RunError::Store(e.to_string()));
                return self.settle(i, attempt, trigger);
            }
        };
        let mut new_token = false;
        let event = {
            let mut st = job.state();
            st.runs += 1;
            st.counts[Metrics::outcome(&ran.record) as usize] += 1;
            st.failures = ran.failures;
            if ran.record.ok {
                st.store_failures = 0;
            }
            if let Some(t) = ran.token {
                st.token = Some(t);
                st.token_expires_at = ran.record.outcome.as_ref().and_then(|o| o.expires_at);
            }
            if let Some(rev) = ran.result.as_ref().ok().and_then(|r| r.token_revision)
                && rev > st.token_revision
            {
                st.token_revision = rev;
                new_token = true;
            }
            if let Some(rev) = ran.row_revision {
                st.row_revision = rev;
                st.lease = None;
            }
            st.recorded_due = Some(ran.next_due);
            st.last = Some(ran.record.clone());
            RunEvent {
                job: job.config.name.clone(),
                record: ran.record.clone(),
                next_run_at: ran.next_due,
                consecutive_failures: st.failures,
                token_expires_at: st.token_expires_at,
            }
        };
        self.metrics.run(&ran.record);
        log_run(&event, now);
        if new_token {
            self.token_changed(i);
        }
        let trigger = if ran.failures > 0 {
            Trigger::Retry
        } else {
            Trigger::Schedule
        };
        let delay = self.coord.handoff().saturating_mul(self.rank(i));
        self.set_plan(i, time::add(ran.next_due, delay), trigger);
        let _ = self.events.send(event);
        Some(ran.record)
    }

    /// Takes in what other processes wrote since the last look.
    fn apply(&self, changes: crate::store::Changes) {
        let now = SystemTime::now();
        let now_ms = time::unix_ms(now);
        // Per job: true to re-arm it now (a credential of a failing job changed), false to
        // plan it again from what changed.
        let mut touched: HashMap<usize, bool> = HashMap::new();
        for meta in &changes.secrets {
            for &(i, binding) in self.by_secret.get(&meta.name).into_iter().flatten() {
                let mut st = self.job(i).state();
                match binding {
                    Binding::Token if meta.revision > st.token_revision => {
                        st.token = Some(TokenState::from_unix(meta.updated_at, meta.expires_at));
                        st.token_expires_at = meta.expires_at;
                        st.token_revision = meta.revision;
                        drop(st);
                        self.token_changed(i);
                        touched.entry(i).or_insert(false);
                    }
                    Binding::Input if st.failures > 0 && st.running.is_none() => {
                        touched.insert(i, true);
                    }
                    _ => {}
                }
            }
        }
        for name in &changes.deleted {
            for &(i, binding) in self.by_secret.get(name).into_iter().flatten() {
                if binding == Binding::Token {
                    let mut st = self.job(i).state();
                    st.token = None;
                    st.token_expires_at = None;
                    drop(st);
                    self.token_changed(i);
                    touched.entry(i).or_insert(false);
                }
            }
        }
        for row in &changes.jobs {
            if let Some(&i) = self.by_name.get(&row.job) {
                let mut st = self.job(i).state();
                if row.revision > st.row_revision {
                    adopt_row(&mut st, row, now_ms);
                    touched.entry(i).or_insert(false);
                }
            }
        }
        for (i, rearm) in touched {
            if rearm {
                tracing::info!(job = %self.job(i).config.name, "a credential of the failing job changed; trying it again now");
                self.set_plan(i, now, Trigger::SecretChanged);
            } else {
                self.replan(i, now, false);
            }
        }
        *self.cursor.lock().unwrap_or_else(|p| p.into_inner()) = changes.revision;
    }
}

/// The scheduler: one task and a heap of plans for every job, so a daemon with 100,000
/// jobs keeps 100,000 small entries, not 100,000 tasks. Restarts itself (replanning every
/// job) if a turn ever panics.
async fn scheduler(
    inner: Arc<Inner>,
    mut plans: mpsc::UnboundedReceiver<(usize, u64, SystemTime)>,
) {
    let mut heap: BinaryHeap<Reverse<(u64, usize, u64)>> = BinaryHeap::new();
    let mut stop = inner.stop.subscribe();
    loop {
        let turns = AssertUnwindSafe(scheduler_turns(&inner, &mut plans, &mut heap, &mut stop))
            .catch_unwind()
            .await;
        match turns {
            Ok(()) => return,
            Err(panic) => {
                tracing::error!(panic = %panic_text(&*panic), "the scheduler panicked; restarting it with every job planned again");
                inner.metrics.internal_error("scheduler");
                heap.clear();
                let now = SystemTime::now();
                for i in 0..inner.jobs.len() {
                    inner.replan(i, now, false);
                }
            }
        }
    }
}

async fn scheduler_turns(
    inner: &Arc<Inner>,
    plans: &mut mpsc::UnboundedReceiver<(usize, u64, SystemTime)>,
    heap: &mut BinaryHeap<Reverse<(u64, usize, u64)>>,
    stop: &mut watch::Receiver<bool>,
) {
    // Wall-clock waits are re-checked at least this often (the clock can be set).
    const MAX_WAIT: Duration = Duration::from_secs(30);
    loop {
        if *stop.borrow() {
            return;
        }
        while let Ok((i, generation, at)) = plans.try_recv() {
            heap.push(Reverse((time::unix_ms(at), i, generation)));
        }
        let now_ms = time::unix_now_ms();
        let mut slots_full = false;
        while let Some(&Reverse((at, i, generation))) = heap.peek() {
            if at > now_ms {
                break;
            }
            // The run slot first: what is due waits here, in the heap.
            let permit = match inner.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    slots_full = true;
                    break;
                }
                Err(tokio::sync::TryAcquireError::Closed) => return,
            };
            heap.pop();
            inner.start_planned(i, generation, permit);
        }
        let wait = heap
            .peek()
            .map_or(MAX_WAIT, |Reverse((at, _, _))| {
                Duration::from_millis(at.saturating_sub(now_ms))
            })
            .min(MAX_WAIT);
        tokio::select! {
            plan = plans.recv() => match plan {
                Some((i, generation, at)) => heap.push(Reverse((time::unix_ms(at), i, generation))),
                None => return,
            },
            // A slot came free while runs are due.
            slot = inner.permits.acquire(), if slots_full => match slot {
                Ok(p) => drop(p),
                Err(_) => return,
            },
            _ = tokio::time::sleep(wait), if !slots_full => {}
            _ = stop.changed() => return,
        }
    }
}

/// The change feed: every poll interval, what other processes wrote.
async fn watch_store(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let mut down = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.coord.poll_interval) => {}
            _ = stop.changed() => return,
        }
        let since = *inner.cursor.lock().unwrap_or_else(|p| p.into_inner());
        match inner.leasing.store.changes(since).await {
            Ok(changes) => {
                if std::mem::take(&mut down) {
                    tracing::info!(store = %inner.leasing.store.describe(), "the store is reachable again");
                }
                if let Err(panic) =
                    std::panic::catch_unwind(AssertUnwindSafe(|| inner.apply(changes)))
                {
                    tracing::error!(panic = %panic_text(&*panic), "applying the store's changes panicked");
                    inner.metrics.internal_error("change-feed");
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut down, true) {
                    tracing::warn!(error = %e, "cannot read the store's changes; the daemon keeps its plans and retries");
                }
                inner.metrics.store_error();
            }
        }
    }
}

/// Membership: tells the store this daemon is alive and learns who else is.
async fn heartbeat(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    let interval = inner.coord.heartbeat();
    let me = Member {
        id: inner.coord.owner.clone(),
        started_ms: time::unix_now_ms(),
        seen_ms: 0,
    };
    loop {
        match inner.leasing.store.heartbeat(&me, interval * 3).await {
            Ok(members) => {
                let ids = members.into_iter().map(|m| m.id).collect();
                *inner.members.lock().unwrap_or_else(|p| p.into_inner()) = ids;
            }
            Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

fn log_run(event: &RunEvent, now: SystemTime) {
    let r = &event.record;
    let next_run = time::rfc3339(time::unix_secs(event.next_run_at));
    let next_in_s = event
        .next_run_at
        .duration_since(now)
        .unwrap_or_default()
        .as_secs_f32();
    let token_left_s = event
        .token_expires_at
        .map(|e| time::secs_until(e, time::unix_secs(now)));
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
                crate::outcome::Retry::Retryable => tracing::warn!(
                    job = %event.job, outcome = %e.class, trigger = %r.trigger, attempt = r.attempt,
                    duration_ms = r.duration_ms, error, trace_id, correlation_id, token_left_s,
                    %next_run, next_in_s, message = %e.message,
                    "refresh failed; retrying, the last good token is kept"
                ),
                crate::outcome::Retry::Permanent => tracing::error!(
                    job = %event.job, outcome = %e.class, trigger = %r.trigger, attempt = r.attempt,
                    duration_ms = r.duration_ms, error, trace_id, correlation_id, token_left_s,
                    %next_run, next_in_s, message = %e.message,
                    "refresh failed permanently and needs attention: fix it, then `POST /jobs/{}/refresh` (or `tokenwarden refresh {}`) retries at once; until then it retries slowly and the last good token is kept",
                    event.job, event.job
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_a_permutation_shared_by_every_member() {
        let members: Vec<String> = (0..5).map(|i| format!("host/{i}/0000")).collect();
        for job in ["graph", "a", "b", "tenant-42"] {
            let mut ranks: Vec<u32> = members.iter().map(|m| rank(job, m, &members)).collect();
            ranks.sort_unstable();
            assert_eq!(ranks, [0, 1, 2, 3, 4], "{job}");
        }
        let firsts: std::collections::BTreeSet<_> = (0..200)
            .map(|j| {
                let job = format!("job-{j}");
                members
                    .iter()
                    .position(|m| rank(&job, m, &members) == 0)
                    .unwrap()
            })
            .collect();
        assert_eq!(firsts.len(), 5, "every member leads some jobs");
        assert_eq!(rank("graph", "alone", &[]), 0);
    }
}

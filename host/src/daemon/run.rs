//! One leased run of a job, as the daemon and `tokenwarden refresh` both do it.
//!
//! 1. Take the job's lease in the store. A planned run asks only if the job's row is still
//!    at the revision the plan was made from (compare-and-set), so of several daemons that
//!    planned the same due refresh exactly one runs it; the others are told the row moved
//!    and adopt it.
//! 2. Run the plugin with the lease: its token write is fenced, so a holder that paused
//!    past its lease cannot overwrite the token of the process that took over. The lease is
//!    renewed while the run lasts.
//! 3. Decide the next run (the pure [`crate::schedule`] functions) and give the lease back
//!    with the run's record and plan, which every other process then adopts.

use super::record::{ErrorRecord, RunRecord, Trigger};
use crate::job::JobConfig;
use crate::outcome::{PluginError, RunError};
use crate::runtime::{RunReport, Runtime};
use crate::schedule::{self, Failure, Policy, TokenState};
use crate::store::{Acquired, JobRow, JobUpdate, Lease, LeaseMode, SecretStore, StoreError};
use crate::time;
use futures_util::FutureExt as _;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The text of a caught panic.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// What a leased run needs.
#[derive(Clone)]
pub struct Leasing {
    /// The store holding secrets and leases.
    pub store: Arc<dyn SecretStore>,
    /// The runtime.
    pub runtime: Arc<Runtime>,
    /// This process's name as a lease holder (`host/pid/nonce`).
    pub owner: String,
    /// Lease lifetime; renewed every third of it while a run lasts.
    pub ttl: Duration,
    /// Timing policy for the next run.
    pub policy: Policy,
}

/// How an attempt ended.
#[derive(Debug)]
pub enum Attempt {
    /// The job ran.
    Ran(Box<Ran>),
    /// Another process holds a live lease (it is running the job now).
    Held(JobRow),
    /// The job's row moved since the plan was made: someone else ran it.
    Moved(JobRow),
    /// The store could not be reached to take the lease.
    Unavailable(StoreError),
}

/// A run that happened.
#[derive(Debug)]
pub struct Ran {
    /// Its record.
    pub record: RunRecord,
    /// The plugin's result.
    pub result: Result<RunReport, RunError>,
    /// The plan it left: when the job runs next.
    pub next_due: SystemTime,
    /// Failed runs since the last success, this one included.
    pub failures: u32,
    /// The token it stored, on success.
    pub token: Option<TokenState>,
    /// The row's revision after the release; `None` when the lease was lost meanwhile (or
    /// the store failed at the release), so the plan was not recorded.
    pub row_revision: Option<u64>,
}

/// The state a token written by a successful run has: its life began when it was
/// requested; `expires_in` gives it to the millisecond where `expires_at` is rounded to
/// whole seconds.
pub fn token_of(report: &RunReport, started: SystemTime) -> TokenState {
    let o = &report.outcome;
    TokenState {
        updated_at: started,
        expires_at: match o.expires_in {
            Some(s) => Some(time::add(started, Duration::from_secs(s))),
            None => o.expires_at.map(time::from_unix),
        },
    }
}

impl Leasing {
    /// Runs `job` once if the lease is granted under `mode`. `due` is when the run was
    /// planned (for lateness); `token` what this process knows of the stored token (it
    /// bounds retry waits).
    pub async fn attempt(
        &self,
        job: &JobConfig,
        trigger: Trigger,
        mode: LeaseMode,
        due: Option<SystemTime>,
        token: Option<TokenState>,
    ) -> Attempt {
        let (lease, row) = match self
            .store
            .acquire(&job.name, &self.owner, self.ttl, mode)
            .await
        {
            Err(e) => return Attempt::Unavailable(e),
            Ok(Acquired::Held(row)) => return Attempt::Held(row),
            Ok(Acquired::Moved(row)) => return Attempt::Moved(row),
            Ok(Acquired::Granted { lease, row }) => (lease, row),
        };
        let started = SystemTime::now();
        let clock = Instant::now();
        // A panic in the run (a bug) becomes a failed run of class `internal`, recorded and
        // released like any other, so the lease does not sit until it lapses.
        let run = async {
            tokio::select! {
                r = self.runtime.run_with_lease(job, self.store.clone(), Some(lease.clone())) => r,
                never = self.keep(&lease) => match never {},
            }
        };
        let result = AssertUnwindSafe(run).catch_unwind().await.unwrap_or_else(|panic| {
            let message = panic_text(&*panic);
            tracing::error!(job = %job.name, panic = %message, "a run panicked; the job carries on and retries");
            Err(RunError::Internal(message))
        });
        let elapsed = clock.elapsed();
        let now = SystemTime::now();
        let jitter = fastrand::f64();
        let attempt = row.failures.saturating_add(1);
        let lateness_ms = due.map(|d| {
            u64::try_from(started.duration_since(d).unwrap_or_default().as_millis())
                .unwrap_or(u64::MAX)
        });
        let (failures, next_due, new_token) = match &result {
            Ok(report) => {
                let t = token_of(report, started);
                let refresh_in = report.outcome.refresh_in.map(Duration::from_secs);
                let next = schedule::after_success(
                    &job.schedule,
                    &self.policy,
                    &t,
                    refresh_in,
                    started,
                    jitter,
                );
                (0, next, Some(t))
            }
            Err(e) => {
                let failure = Failure {
                    retry: e.retry(),
                    throttled: matches!(e, RunError::Plugin(PluginError::Throttled(_))),
                    retry_after: e.retry_after(),
                };
                let next =
                    schedule::retry_at(&self.policy, failure, attempt, token.as_ref(), now, jitter);
                (attempt, next, None)
            }
        };
        let record = RunRecord {
            trigger,
            runner: self.owner.clone(),
            started_at_ms: time::unix_ms(started),
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            attempt,
            lateness_ms,
            ok: result.is_ok(),
            outcome: result.as_ref().ok().map(|r| r.outcome.clone()),
            error: result.as_ref().err().map(ErrorRecord::of),
        };
        let update = JobUpdate {
            next_due_ms: Some(time::unix_ms(next_due)),
            failures,
            last_run: Some(record.to_json()),
        };
        let row_revision = match self.store.release(&lease, &update).await {
            Ok(Some(rev)) => Some(rev),
            Ok(None) => {
                tracing::warn!(job = %job.name, fence = lease.fence, "the job's lease was taken over during the run; its plan was not recorded");
                None
            }
            Err(e) => {
                tracing::warn!(job = %job.name, error = %e, "could not release the job's lease; it lapses by itself");
                None
            }
        };
        Attempt::Ran(Box::new(Ran {
            record,
            result,
            next_due,
            failures,
            token: new_token,
            row_revision,
        }))
    }

    /// Renews `lease` every third of its lifetime, for as long as it is polled (the run
    /// beside it decides when that ends).
    async fn keep(&self, lease: &Lease) -> std::convert::Infallible {
        let mut lease = lease.clone();
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            match self.store.renew(&lease, self.ttl).await {
                Ok(Some(renewed)) => lease = renewed,
                Ok(None) => {
                    tracing::warn!(job = %lease.job, "lost the job's lease during a run: its token write will be refused");
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    tracing::warn!(job = %lease.job, error = %e, "could not renew the job's lease")
                }
            }
        }
    }
}

//! What the daemon reports: a job's status for the admin API, an event after every run, and
//! why a manual trigger could not run.

use super::RunRecord;
use serde::Serialize;
use std::time::SystemTime;

/// A job as the admin API reports it.
#[derive(Clone, Debug, Serialize)]
pub struct JobStatus {
    /// Job name.
    pub name: String,
    /// Its schedule, as configured.
    pub schedule: String,
    /// Store name of its token.
    pub token_secret: String,
    /// Whether a run is in flight in this daemon.
    pub running: bool,
    /// Unix seconds at which the stored token expires, when known.
    pub token_expires_at: Option<u64>,
    /// Seconds the stored token has left (negative: expired).
    pub token_expires_in_seconds: Option<i64>,
    /// Unix seconds of the next run this daemon plans.
    pub next_run_at: u64,
    /// Failed runs since the last success.
    pub consecutive_failures: u32,
    /// Runs by this daemon since it started.
    pub runs: u64,
    /// The last run, by whichever process ran it.
    pub last_run: Option<RunRecord>,
    /// Who holds the job's lease now (a run in flight somewhere).
    pub lease_holder: Option<String>,
    /// Unix milliseconds until which the lease is held.
    pub lease_until_ms: Option<u64>,
    /// What its sinks and on-change actions did in this daemon; absent for a job with none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<super::DeliveryStatus>,
    /// What the proxy did with its token in this daemon; absent until a request used it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<super::ProxyStatus>,
}

/// Published after every run of this daemon, for the demo, tests and embedders.
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
    /// Another process is running the job and did not finish within the wait.
    #[error("job `{job}` is running in {holder}, which did not finish in time")]
    Busy {
        /// The job.
        job: String,
        /// Who holds its lease.
        holder: String,
    },
}

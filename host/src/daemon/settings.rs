//! The daemon's settings: its policy and limits (`[daemon]`) and how it shares a store with
//! other daemons.

use crate::schedule::Policy;
use crate::store::StoreConfig;
use std::time::Duration;

/// The daemon's scheduling policy and limits (`[daemon]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Runs in flight at once across all jobs.
    pub max_concurrent_runs: usize,
    /// How long a stopping daemon lets runs in flight finish.
    pub shutdown_grace: Duration,
    /// Refresh timing and retry backoff.
    pub policy: Policy,
    /// Whether `/metrics` has series per job (else totals only, for many thousands of jobs).
    pub per_job_metrics: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            max_concurrent_runs: 16,
            shutdown_grace: Duration::from_secs(30),
            policy: Policy::default(),
            per_job_metrics: true,
        }
    }
}

/// How this daemon shares a store with others.
#[derive(Clone, Debug)]
pub struct Coordination {
    /// This process's name as a lease holder and member (`host/pid/nonce`).
    pub owner: String,
    /// Lease lifetime.
    pub lease_ttl: Duration,
    /// How often the store is asked what others wrote.
    pub poll_interval: Duration,
}

impl Coordination {
    /// The coordination settings of `[store]`, with a fresh owner name.
    pub fn of(store: &StoreConfig) -> Self {
        Self {
            owner: owner_name(),
            lease_ttl: store.lease_ttl,
            poll_interval: store.poll_interval,
        }
    }

    /// How long a lower-ranked daemon waits after a job's due time before trying it.
    pub(super) fn handoff(&self) -> Duration {
        (self.poll_interval * 2).max(Duration::from_secs(2))
    }

    pub(super) fn heartbeat(&self) -> Duration {
        self.poll_interval.max(Duration::from_secs(2))
    }
}

impl Default for Coordination {
    fn default() -> Self {
        Self::of(&StoreConfig::sqlite(std::path::PathBuf::new()))
    }
}

/// `host/pid/nonce`: unique among processes, readable in `/jobs`.
pub(crate) fn owner_name() -> String {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    format!(
        "{}/{}/{:04x}",
        crate::text::clean(&host, 64),
        std::process::id(),
        fastrand::u16(..)
    )
}

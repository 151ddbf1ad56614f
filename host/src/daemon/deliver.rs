//! Getting each new token to the job's consumers: its sink files and on-change actions, and
//! the callers of the token socket waiting for a newer token.
//!
//! A job is queued for delivery when its stored token changes, whoever wrote it: after this
//! daemon's own successful run, when the change feed shows another process's write, and
//! once at start (so sinks hold the stored token even if it was refreshed while this daemon
//! was down). One task writes the sinks, off the run path, so a slow disk or a slow
//! on-change command never holds a refresh; the token is read back from the store, so what
//! a sink holds is what the store holds.

use super::Inner;
use crate::sink::{self, Written};
use crate::store::StoreError;
use crate::time;
use secrecy::SecretString;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A job's token as consumers get it.
pub struct CurrentToken {
    /// The token.
    pub value: SecretString,
    /// Its type, as the last successful reply said (`Bearer` when unknown).
    pub token_type: String,
    /// Unix seconds at which it expires, when known.
    pub expires_at: Option<u64>,
    /// The store revision of its write: a newer token has a higher one.
    pub revision: u64,
    /// Unix seconds at which it was stored.
    pub stored_at: u64,
}

impl std::fmt::Debug for CurrentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentToken")
            .field("value", &"[REDACTED]")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("revision", &self.revision)
            .finish()
    }
}

/// What a job's deliveries did in this daemon, for `/jobs` and the metrics.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DeliveryStatus {
    /// Sink files replaced with a new token.
    pub sink_writes: u64,
    /// Sink files that already held the token (written by another process, or unchanged).
    pub sink_unchanged: u64,
    /// Sink writes that failed (the file keeps its last good token).
    pub sink_failures: u64,
    /// Unix seconds of the last sink write.
    pub last_sink_write_at: Option<u64>,
    /// On-change actions that succeeded.
    pub actions_ok: u64,
    /// On-change actions that failed.
    pub actions_failed: u64,
    /// The last delivery error, when the last delivery of a sink or action failed.
    pub last_error: Option<String>,
    /// The store revision of the token last delivered.
    #[serde(skip)]
    pub(super) delivered: u64,
    /// Whether a retry of failed sink writes is pending.
    #[serde(skip)]
    pub(super) retrying: bool,
}

impl CurrentToken {
    /// Whether it is still valid at `now` (Unix seconds): consumers are never given an
    /// expired token.
    pub fn unexpired_at(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }

    /// The token as `job`'s sinks render it at `now`.
    fn view<'a>(&'a self, job: &'a str, now: u64) -> sink::Token<'a> {
        sink::Token {
            job,
            access_token: &self.value,
            token_type: &self.token_type,
            expires_at: self.expires_at,
            stored_at: self.stored_at,
            now,
        }
    }
}

/// The token socket's reads: a job's token now, or once it is newer than the caller's.
impl super::Daemon {
    /// Job `name`'s token as the store holds it now (`None`: no such job, or no token).
    pub async fn token(&self, name: &str) -> Result<Option<CurrentToken>, StoreError> {
        match self.0.by_name.get(name) {
            Some(&i) => self.0.current_token(i).await,
            None => Ok(None),
        }
    }

    /// Job `name`'s token once its store revision is above `after`, or whatever it is after
    /// `wait`.
    pub async fn token_after(
        &self,
        name: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Option<CurrentToken>, StoreError> {
        let Some(&i) = self.0.by_name.get(name) else {
            return Ok(None);
        };
        let mut changes = self.0.tokens.subscribe();
        let mut stop = self.0.stop.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        while self.0.job(i).state().token_revision <= after && !*stop.borrow() {
            tokio::select! {
                r = changes.changed() => if r.is_err() { break },
                _ = stop.changed() => break,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        self.0.current_token(i).await
    }

    pub(crate) fn count_socket(&self, result: &'static str) {
        self.0.metrics.socket(result);
    }
}

/// How soon a failed sink write is tried again.
const SINK_RETRY: Duration = Duration::from_secs(10);

/// The delivery task's queue.
pub(super) type Queue = mpsc::UnboundedSender<usize>;

impl Inner {
    /// Whether job `i` has anything to deliver to.
    pub(super) fn has_consumers(&self, i: usize) -> bool {
        let c = &self.job(i).config;
        !c.sinks.is_empty() || c.on_change.is_some()
    }

    /// Notes that job `i`'s stored token changed (written or deleted): wakes the socket's
    /// waiters and queues its sinks (a delivery finding no token does nothing).
    pub(super) fn token_changed(&self, i: usize) {
        self.tokens.send_modify(|n| *n = n.wrapping_add(1));
        if self.has_consumers(i) {
            let _ = self.deliveries.send(i);
        }
    }

    /// Job `i`'s token as the store holds it now; `None` when there is none.
    pub(super) async fn current_token(&self, i: usize) -> Result<Option<CurrentToken>, StoreError> {
        let job = self.job(i);
        let Some(stored) = self
            .leasing
            .store
            .get(&job.config.secrets.access_token)
            .await?
        else {
            return Ok(None);
        };
        let token_type = job
            .state()
            .last
            .as_ref()
            .and_then(|r| r.outcome.as_ref())
            .map(|o| o.token_type.clone())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "Bearer".into());
        Ok(Some(CurrentToken {
            value: stored.value,
            token_type,
            expires_at: stored.meta.expires_at,
            revision: stored.meta.revision,
            stored_at: stored.meta.updated_at,
        }))
    }

    /// Writes job `i`'s sinks with its stored token and runs the actions of what changed:
    /// a sink's action when its file changed, the job's when any sink changed (or, for a job
    /// without sinks, at every new token but the first after start, which its consumer
    /// already had or finds when it starts).
    async fn deliver(self: &Arc<Self>, i: usize, starting: bool) {
        let job = &self.job(i).config;
        let token = match self.current_token(i).await {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(job = %job.name, error = %e, "cannot read the token for the job's sinks; trying again in a second");
                self.metrics.store_error();
                self.requeue_after(i, Duration::from_secs(1));
                return;
            }
        };
        if token.revision <= self.job(i).state().delivery.delivered {
            return;
        }
        let now = time::unix_now();
        if let Some(why) = token.view(&job.name, now).unusable() {
            tracing::warn!(job = %job.name, reason = %why, "not delivering the stored token");
            return;
        }
        let token = Arc::new(token);
        let mut changed_any = false;
        let mut failed = false;
        for s in &job.sinks {
            // File writes block (fsync): off the async threads, with shared copies.
            let (sink, shared, name) = (s.clone(), token.clone(), job.name.clone());
            let result =
                tokio::task::spawn_blocking(move || sink::write(&sink, &shared.view(&name, now)))
                    .await
                    .unwrap_or_else(|e| {
                        Err(sink::SinkError::Io {
                            path: s.path.clone(),
                            source: std::io::Error::other(e.to_string()),
                        })
                    });
            let outcome = match &result {
                Ok(Written::Changed) => "written",
                Ok(Written::Unchanged) => "unchanged",
                Err(_) => "failed",
            };
            self.metrics.sink_write(outcome);
            let mut st = self.job(i).state();
            match result {
                Ok(Written::Changed) => {
                    st.delivery.sink_writes += 1;
                    st.delivery.last_sink_write_at = Some(now);
                    changed_any = true;
                    drop(st);
                    tracing::debug!(job = %job.name, path = %s.path.display(), "sink written");
                    if let Some(action) = &s.on_change {
                        self.spawn_action(i, action.clone(), token.value.clone());
                    }
                }
                Ok(Written::Unchanged) => st.delivery.sink_unchanged += 1,
                Err(e) => {
                    st.delivery.sink_failures += 1;
                    let message = format!("sink {}: {e}", s.path.display());
                    st.delivery.last_error = Some(message.clone());
                    drop(st);
                    tracing::error!(job = %job.name, error = %message, "cannot write a sink; it keeps its last good token");
                    failed = true;
                }
            }
        }
        if failed {
            // Tried again (sinks already holding the token are skipped) until it succeeds
            // or a newer token comes; one retry pending per job, however many tokens failed.
            let pending = std::mem::replace(&mut self.job(i).state().delivery.retrying, true);
            if !pending {
                let inner = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(SINK_RETRY).await;
                    inner.job(i).state().delivery.retrying = false;
                    let _ = inner.deliveries.send(i);
                });
            }
        } else {
            let mut st = self.job(i).state();
            st.delivery.delivered = token.revision;
            if changed_any {
                st.delivery.last_error = None;
            }
        }
        if let Some(action) = &job.on_change
            && (changed_any || (job.sinks.is_empty() && !starting))
        {
            self.spawn_action(i, action.clone(), token.value.clone());
        }
    }

    /// Queues job `i` again after `delay`.
    fn requeue_after(&self, i: usize, delay: Duration) {
        let queue = self.deliveries.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = queue.send(i);
        });
    }

    fn spawn_action(self: &Arc<Self>, i: usize, action: sink::Action, token: SecretString) {
        let inner = self.clone();
        tokio::spawn(async move {
            let job = &inner.job(i).config.name;
            let result = action.run(job, &token).await;
            inner
                .metrics
                .action(if result.is_ok() { "ok" } else { "failed" });
            let mut st = inner.job(i).state();
            match result {
                Ok(()) => st.delivery.actions_ok += 1,
                Err(e) => {
                    st.delivery.actions_failed += 1;
                    st.delivery.last_error = Some(format!("on_change: {e}"));
                    drop(st);
                    tracing::error!(job = %job, error = %e, "the on-change action failed");
                }
            }
        });
    }
}

/// The delivery task: writes each queued job's sinks, in turn.
pub(super) async fn deliverer(inner: Arc<Inner>, mut queue: mpsc::UnboundedReceiver<usize>) {
    use futures_util::FutureExt as _;
    let mut stop = inner.stop.subscribe();
    // Jobs delivered once already: a first delivery runs no job-level action.
    let mut seen = vec![false; inner.jobs.len()];
    loop {
        let i = tokio::select! {
            i = queue.recv() => match i { Some(i) => i, None => return },
            _ = stop.changed() => return,
        };
        let starting = !std::mem::replace(&mut seen[i], true);
        if let Err(panic) = std::panic::AssertUnwindSafe(inner.deliver(i, starting))
            .catch_unwind()
            .await
        {
            tracing::error!(panic = %super::panic_text(&*panic), "delivering a token panicked");
            inner.metrics.internal_error("delivery");
        }
    }
}

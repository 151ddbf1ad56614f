//! A process-local store: for embedders who keep secrets elsewhere and hand them over per
//! run, for tests and for benchmarks. Not durable and not encrypted (it never leaves the
//! process); leases, revisions and the change feed behave as in the durable backends, so
//! a daemon runs on it unchanged.

use super::{
    Acquired, Changes, JobRow, JobUpdate, Lease, LeaseMode, Member, Rotation, SecretMeta,
    SecretStore, StoreError, StoredSecret, check_entry,
};
use crate::time::{unix_now, unix_now_ms};
use async_trait::async_trait;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Secrets in memory, with the same rules as the durable stores (names, sizes, metadata,
/// leases).
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    revision: u64,
    secrets: BTreeMap<String, (SecretString, SecretMeta)>,
    tombstones: BTreeMap<String, u64>,
    jobs: BTreeMap<String, JobRow>,
    members: BTreeMap<String, Member>,
}

impl State {
    fn bump(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn put(&mut self, name: &str, value: &SecretString, expires_at: Option<u64>) -> SecretMeta {
        let meta = SecretMeta {
            name: name.to_string(),
            updated_at: unix_now(),
            expires_at,
            revision: self.bump(),
        };
        self.tombstones.remove(name);
        self.secrets
            .insert(name.to_string(), (value.clone(), meta.clone()));
        meta
    }

    fn holds(&self, lease: &Lease) -> bool {
        self.jobs.get(&lease.job).is_some_and(|r| {
            r.fence == lease.fence && r.lease_owner.as_deref() == Some(&lease.owner)
        })
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl SecretStore for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    async fn get(&self, name: &str) -> Result<Option<StoredSecret>, StoreError> {
        Ok(self
            .state()
            .secrets
            .get(name)
            .map(|(value, meta)| StoredSecret {
                value: value.clone(),
                meta: meta.clone(),
            }))
    }

    async fn set(
        &self,
        name: &str,
        value: &SecretString,
        expires_at: Option<u64>,
    ) -> Result<SecretMeta, StoreError> {
        check_entry(name, value)?;
        Ok(self.state().put(name, value, expires_at))
    }

    async fn set_fenced(
        &self,
        name: &str,
        value: &SecretString,
        expires_at: Option<u64>,
        lease: &Lease,
    ) -> Result<SecretMeta, StoreError> {
        check_entry(name, value)?;
        let mut state = self.state();
        if !state.holds(lease) {
            return Err(StoreError::Fenced {
                job: lease.job.clone(),
            });
        }
        Ok(state.put(name, value, expires_at))
    }

    async fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let mut state = self.state();
        if state.secrets.remove(name).is_none() {
            return Ok(false);
        }
        let revision = state.bump();
        state.tombstones.insert(name.to_string(), revision);
        Ok(true)
    }

    async fn list(&self) -> Result<Vec<SecretMeta>, StoreError> {
        Ok(self
            .state()
            .secrets
            .values()
            .map(|(_, meta)| meta.clone())
            .collect())
    }

    async fn changes(&self, since: u64) -> Result<Changes, StoreError> {
        let state = self.state();
        let since = if since > state.revision { 0 } else { since };
        Ok(Changes {
            revision: state.revision,
            secrets: state
                .secrets
                .values()
                .filter(|(_, m)| m.revision > since)
                .map(|(_, m)| m.clone())
                .collect(),
            deleted: state
                .tombstones
                .iter()
                .filter(|(_, r)| **r > since)
                .map(|(n, _)| n.clone())
                .collect(),
            jobs: state
                .jobs
                .values()
                .filter(|j| j.revision > since)
                .cloned()
                .collect(),
        })
    }

    async fn rotate_key(&self, _master: bool) -> Result<Rotation, StoreError> {
        Err(StoreError::Invalid(
            "a memory store keeps no keys to rotate".into(),
        ))
    }

    async fn acquire(
        &self,
        job: &str,
        owner: &str,
        ttl: Duration,
        mode: LeaseMode,
    ) -> Result<Acquired, StoreError> {
        let mut state = self.state();
        let now = unix_now_ms();
        let row = state.jobs.get(job).cloned().unwrap_or_else(|| JobRow {
            job: job.to_string(),
            ..JobRow::default()
        });
        if row.holder(now).is_some() {
            return Ok(Acquired::Held(row));
        }
        if let LeaseMode::IfUnchanged { revision } = mode
            && revision != row.revision
        {
            return Ok(Acquired::Moved(row));
        }
        let revision = state.bump();
        let lease = Lease {
            job: job.to_string(),
            owner: owner.to_string(),
            fence: row.fence + 1,
            until_ms: now.saturating_add(ms(ttl)),
        };
        state.jobs.insert(
            job.to_string(),
            JobRow {
                fence: lease.fence,
                lease_owner: Some(owner.to_string()),
                lease_until_ms: lease.until_ms,
                revision,
                ..row.clone()
            },
        );
        Ok(Acquired::Granted { lease, row })
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let mut state = self.state();
        if !state.holds(lease) {
            return Ok(None);
        }
        let until = unix_now_ms().saturating_add(ms(ttl));
        if let Some(row) = state.jobs.get_mut(&lease.job) {
            row.lease_until_ms = until;
        }
        Ok(Some(Lease {
            until_ms: until,
            ..lease.clone()
        }))
    }

    async fn release(&self, lease: &Lease, update: &JobUpdate) -> Result<Option<u64>, StoreError> {
        let mut state = self.state();
        if !state.holds(lease) {
            return Ok(None);
        }
        let revision = state.bump();
        if let Some(row) = state.jobs.get_mut(&lease.job) {
            row.lease_owner = None;
            row.lease_until_ms = 0;
            row.next_due_ms = update.next_due_ms;
            row.failures = update.failures;
            row.last_run = update.last_run.clone();
            row.revision = revision;
        }
        Ok(Some(revision))
    }

    async fn jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        Ok(self.state().jobs.values().cloned().collect())
    }

    async fn job(&self, name: &str) -> Result<Option<JobRow>, StoreError> {
        Ok(self.state().jobs.get(name).cloned())
    }

    async fn heartbeat(&self, member: &Member, ttl: Duration) -> Result<Vec<Member>, StoreError> {
        let mut state = self.state();
        let now = unix_now_ms();
        state.members.insert(
            member.id.clone(),
            Member {
                seen_ms: now,
                ..member.clone()
            },
        );
        let alive = now.saturating_sub(ms(ttl));
        Ok(state
            .members
            .values()
            .filter(|m| m.seen_ms >= alive)
            .cloned()
            .collect())
    }

    async fn leave(&self, member: &str) -> Result<(), StoreError> {
        self.state().members.remove(member);
        Ok(())
    }
}

//! The `secrets` interface, backed by the store and limited by the job's grants.
//!
//! Isolation model: the plugin names roles, never store names. A job's `[jobs.secrets]`
//! table maps each role to one store name; `access-token` is the only writable role. Any
//! other role, or a write to a read-only one, gets `access-denied`, so a plugin cannot read
//! or overwrite secrets of other jobs.

use crate::bindings::secrets;
use crate::config::SecretRoles;
use crate::redact::Redactor;
use crate::store::{Lease, SecretStore};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;

/// One role a job grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The plugin's role name, e.g. `client-secret`.
    pub role: &'static str,
    /// The store name it maps to.
    pub name: String,
    /// Whether the plugin may write it.
    pub writable: bool,
    /// Whether its value is a secret (masked wherever it could appear) rather than a
    /// public identifier (a client or tenant id, shown in errors so a user sees what was
    /// sent).
    pub secret: bool,
}

/// A job's whole grant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants(pub Vec<Grant>);

impl Grants {
    /// The grants of a `[jobs.secrets]` table.
    pub fn from_roles(roles: &SecretRoles) -> Self {
        let read = |role, name: &String, secret| Grant {
            role,
            name: name.clone(),
            writable: false,
            secret,
        };
        let mut grants = vec![
            read("client-id", &roles.client_id, false),
            read("client-secret", &roles.client_secret, true),
        ];
        if let Some(t) = &roles.tenant_id {
            grants.push(read("tenant-id", t, false));
        }
        grants.push(Grant {
            role: "access-token",
            name: roles.access_token.clone(),
            writable: true,
            secret: true,
        });
        Self(grants)
    }

    /// The store name bound to `role`.
    pub fn store_name(&self, role: &str) -> Option<&str> {
        self.find(role).map(|g| g.name.as_str())
    }

    fn find(&self, role: &str) -> Option<&Grant> {
        self.0.iter().find(|g| g.role == role)
    }
}

/// Per-run state behind the `secrets` interface.
pub struct SecretsCtx {
    grants: Grants,
    store: Arc<dyn SecretStore>,
    /// The job lease the run holds: the token write is fenced by it.
    lease: Option<Lease>,
    /// The latest expiry a written token may claim (Unix seconds).
    max_expires_at: u64,
    /// Every value the plugin read or wrote, in every encoding, to scrub from anything it
    /// prints or returns.
    seen: Redactor,
    /// The store revision of the token the plugin wrote, if it wrote one.
    pub written: Option<u64>,
}

impl SecretsCtx {
    /// A context for one run. With `lease`, the token write succeeds only while the lease
    /// is the job's current grant; a written token claims at most `max_token_lifetime`.
    pub fn new(
        grants: Grants,
        store: Arc<dyn SecretStore>,
        lease: Option<Lease>,
        max_token_lifetime: std::time::Duration,
    ) -> Self {
        Self {
            grants,
            store,
            lease,
            max_expires_at: crate::time::unix_now()
                .saturating_add(max_token_lifetime.as_secs())
                .min(crate::time::MAX_UNIX_SECS),
            seen: Redactor::default(),
            written: None,
        }
    }

    /// `text` with every secret value of this run, in any encoding an echo could use,
    /// replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        self.seen.redact(text)
    }
}

impl secrets::Host for SecretsCtx {
    async fn get(&mut self, role: String) -> Result<Option<String>, secrets::Error> {
        let Some(grant) = self.grants.find(&role) else {
            // The role name is the plugin's text: scrub it like its output.
            tracing::warn!(role = %self.redact(&role), "plugin asked for a secret role its job does not bind");
            return Err(secrets::Error::AccessDenied(role));
        };
        tracing::debug!(role = grant.role, name = %grant.name, "plugin reads a secret");
        match self.store.get(&grant.name).await {
            Ok(found) => {
                let secret = grant.secret;
                Ok(found.map(|s| {
                    let value = s.value.expose_secret().to_string();
                    if secret {
                        self.seen.add(&value);
                    }
                    value
                }))
            }
            Err(e) => Err(secrets::Error::Unavailable(e.to_string())),
        }
    }

    async fn set(
        &mut self,
        role: String,
        value: String,
        expires_at: Option<u64>,
    ) -> Result<(), secrets::Error> {
        let grant = match self.grants.find(&role) {
            Some(g) if g.writable => g.clone(),
            _ => {
                tracing::warn!(role = %self.redact(&role), "plugin tried to write a secret role it may not write");
                return Err(secrets::Error::AccessDenied(role));
            }
        };
        self.seen.add(&value);
        let value = SecretString::from(value);
        let expires_at = expires_at.map(|e| {
            if e > self.max_expires_at {
                tracing::warn!(role = grant.role, name = %grant.name, "the token claims a lifetime beyond max_token_lifetime; its expiry is stored clamped");
            }
            e.min(self.max_expires_at)
        });
        let written = match &self.lease {
            Some(lease) => {
                self.store
                    .set_fenced(&grant.name, &value, expires_at, lease)
                    .await
            }
            None => self.store.set(&grant.name, &value, expires_at).await,
        };
        let meta = written.map_err(|e| secrets::Error::Unavailable(e.to_string()))?;
        self.written = Some(meta.revision);
        Ok(())
    }
}

//! The `secrets` capability: the host side of the WIT `secrets` interface, backed by a
//! [`SecretStore`] and limited to one job's grant. It owns its bindings and its linking, as
//! wasmtime's capability crates do: an embedder adds it to a linker with [`add_to_linker`]
//! and gives each store a [`SecretsCtx`].
//!
//! Isolation model: the component names roles, never store names. A job's
//! [`SecretRoles`] (`[jobs.secrets]`) map each role to one store name; `access-token` is the
//! only writable role, and `private-key` is not readable at all (the host signs with it,
//! [`crate::signing`]). `client-assertion` is read from the job's `assertion_file` at each
//! call. Any other role, or a write to a read-only one, gets `access-denied`,
//! so a component cannot read or overwrite secrets of other jobs. Every value it reads (of
//! a secret role) or writes is remembered, in every encoding an echo could use, so the host
//! can scrub it from whatever the run prints or returns.

use crate::redact::Redactor;
use crate::store::{Lease, SecretStore};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use tokenwarden_contract::role;
use wasmtime::component::{HasData, Linker};

mod generated {
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        path: "../wit",
        interfaces: "import tokenwarden:refresh/secrets@0.2.0;",
        imports: { default: async },
    });
}

/// The generated host side of the WIT `secrets` interface (its `Host` trait, `Error` and
/// raw `add_to_linker`), for embedders who back it with something of their own.
pub use generated::tokenwarden::refresh::secrets as bindings;

/// Adds the `secrets` interface to `linker`; `get` finds a store's [`SecretsCtx`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut SecretsCtx,
) -> wasmtime::Result<()> {
    bindings::add_to_linker::<T, HasSecrets>(linker, get)
}

/// The `HasData` marker of [`add_to_linker`]: a store's data lends its [`SecretsCtx`].
struct HasSecrets;

impl HasData for HasSecrets {
    type Data<'a> = &'a mut SecretsCtx;
}

/// Store names bound to the component's roles (`[jobs.secrets]`): the whole grant of a job.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRoles {
    /// Read role `client-id`; optional for a workload-identity job, whose client id comes
    /// from `AZURE_CLIENT_ID` ([`crate::JobConfig::given_ids`]), and for a managed identity
    /// (bound: a user-assigned identity's client id).
    pub client_id: Option<String>,
    /// Read role `client-secret`, for the `client_secret_*` methods.
    pub client_secret: Option<String>,
    /// Read role `tenant-id`; optional when the job has a `token_url`.
    pub tenant_id: Option<String>,
    /// Write role `access-token`.
    pub access_token: String,
    /// Sign-only role `private-key`, for `private_key_jwt`: never readable.
    pub private_key: Option<String>,
    /// Read role `certificate` (public): the private key's certificate.
    pub certificate: Option<String>,
}

impl Default for SecretRoles {
    /// Each role bound to the secret named after it (`client-id`, `client-secret`,
    /// `tenant-id`, `access-token`): the natural grant for a host with one job.
    fn default() -> Self {
        Self {
            client_id: Some(role::CLIENT_ID.into()),
            client_secret: Some(role::CLIENT_SECRET.into()),
            tenant_id: Some(role::TENANT_ID.into()),
            access_token: role::ACCESS_TOKEN.into(),
            private_key: None,
            certificate: None,
        }
    }
}

impl SecretRoles {
    /// The store names the job reads or signs with (its inputs).
    pub fn inputs(&self) -> impl Iterator<Item = &str> {
        [
            self.client_id.as_deref(),
            self.client_secret.as_deref(),
            self.tenant_id.as_deref(),
            self.private_key.as_deref(),
            self.certificate.as_deref(),
        ]
        .into_iter()
        .flatten()
    }

    /// Every bound role with its config key and store name, the token last.
    pub fn bindings(&self) -> Vec<(&'static str, &str)> {
        let mut all = Vec::new();
        for (key, name) in [
            ("client_id", &self.client_id),
            ("client_secret", &self.client_secret),
            ("tenant_id", &self.tenant_id),
            ("private_key", &self.private_key),
            ("certificate", &self.certificate),
        ] {
            if let Some(n) = name {
                all.push((key, n.as_str()));
            }
        }
        all.push(("access_token", self.access_token.as_str()));
        all
    }
}

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
        let mut grants = Vec::new();
        if let Some(id) = &roles.client_id {
            grants.push(read(role::CLIENT_ID, id, false));
        }
        if let Some(s) = &roles.client_secret {
            grants.push(read(role::CLIENT_SECRET, s, true));
        }
        if let Some(t) = &roles.tenant_id {
            grants.push(read(role::TENANT_ID, t, false));
        }
        if let Some(c) = &roles.certificate {
            grants.push(read(role::CERTIFICATE, c, false));
        }
        // `private-key` is deliberately absent: only `signing` may use it.
        grants.push(Grant {
            role: role::ACCESS_TOKEN,
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

/// Per-run state behind the `secrets` interface: one job's grant over a store.
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
    written: Option<u64>,
    /// Where the `client-assertion` role is read from, when the job has one.
    assertion_file: Option<std::path::PathBuf>,
    /// Public identifiers given as values, by role.
    given: Vec<(&'static str, String)>,
    /// Whether `identity-header` is App Service's `IDENTITY_HEADER`, from the environment.
    identity_header: bool,
}

/// The largest assertion file read: a Kubernetes or CI token is 1-2 KiB.
pub const MAX_ASSERTION_BYTES: u64 = 64 * 1024;

impl SecretsCtx {
    /// A context for one run of a job bound by `roles`: unfenced, and a written token
    /// claims at most the default `max_token_lifetime`.
    pub fn new(roles: &SecretRoles, store: Arc<dyn SecretStore>) -> Self {
        let mut ctx = Self {
            grants: Grants::from_roles(roles),
            store,
            lease: None,
            max_expires_at: 0,
            seen: Redactor::default(),
            written: None,
            assertion_file: None,
            given: Vec::new(),
            identity_header: false,
        };
        ctx.set_max_token_lifetime(crate::limits::RunLimits::default().max_token_lifetime);
        ctx
    }

    /// The token write succeeds only while `lease` is the job's current lease.
    pub fn fenced_by(mut self, lease: Option<Lease>) -> Self {
        self.lease = lease;
        self
    }

    /// A written token claims at most `lifetime` from now; a longer expiry is stored
    /// clamped.
    pub fn max_token_lifetime(mut self, lifetime: std::time::Duration) -> Self {
        self.set_max_token_lifetime(lifetime);
        self
    }

    fn set_max_token_lifetime(&mut self, lifetime: std::time::Duration) {
        self.max_expires_at = crate::time::unix_now()
            .saturating_add(lifetime.as_secs())
            .min(crate::time::MAX_UNIX_SECS);
    }

    /// The `client-assertion` role reads `file` at every call (federated credentials).
    pub fn assertion_file(mut self, file: Option<std::path::PathBuf>) -> Self {
        self.assertion_file = file;
        self
    }

    /// Roles answered with these values (public identifiers, e.g. workload identity's
    /// client and tenant ids from the environment) instead of from the store.
    pub fn given_ids(mut self, given: Vec<(&'static str, String)>) -> Self {
        self.given = given;
        self
    }

    /// The `identity-header` role answers with App Service's `IDENTITY_HEADER`, read from
    /// the environment at each call (a secret: scrubbed like one).
    pub fn identity_header_from_env(mut self, on: bool) -> Self {
        self.identity_header = on;
        self
    }

    /// The assertion file's content, read now: a projected token is rotated on disk, so a
    /// copy would go stale.
    async fn read_assertion(
        &mut self,
        file: &std::path::Path,
    ) -> Result<Option<String>, bindings::Error> {
        use tokio::io::AsyncReadExt as _;
        let unavailable = |why: String| {
            bindings::Error::Unavailable(format!("assertion file {}: {why}", file.display()))
        };
        // A FIFO or a device would hold a blocking thread until the run's timeout and past
        // it; a projected token is a regular file (behind symlinks, which are followed).
        let meta = tokio::fs::metadata(file)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !meta.is_file() {
            return Err(unavailable("not a regular file".into()));
        }
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut bytes = Vec::new();
        f.take(MAX_ASSERTION_BYTES + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if bytes.len() as u64 > MAX_ASSERTION_BYTES {
            return Err(unavailable(format!(
                "larger than {MAX_ASSERTION_BYTES} bytes; not an assertion"
            )));
        }
        let text = String::from_utf8(bytes).map_err(|_| unavailable("not UTF-8".into()))?;
        self.seen.add(text.trim());
        Ok(Some(text).filter(|t| !t.trim().is_empty()))
    }

    /// The grant this context enforces.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// The store revision of the token the component wrote, if it wrote one.
    pub fn written(&self) -> Option<u64> {
        self.written
    }

    /// `text` with every secret value of this run, in any encoding an echo could use,
    /// replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        self.seen.redact(text)
    }
}

impl bindings::Host for SecretsCtx {
    async fn get(&mut self, role: String) -> Result<Option<String>, bindings::Error> {
        if role == role::CLIENT_ASSERTION
            && let Some(file) = self.assertion_file.clone()
        {
            tracing::debug!(file = %file.display(), "plugin reads the assertion file");
            return self.read_assertion(&file).await;
        }
        if role == role::IDENTITY_HEADER && self.identity_header {
            let header = std::env::var(crate::job::IDENTITY_HEADER_ENV).ok();
            if let Some(h) = &header {
                self.seen.add(h);
            }
            return Ok(header.filter(|h| !h.is_empty()));
        }
        if let Some((_, value)) = self.given.iter().find(|(r, _)| *r == role) {
            return Ok(Some(value.clone()));
        }
        let Some(grant) = self.grants.find(&role) else {
            // The role name is the plugin's text: scrub it like its output.
            tracing::warn!(role = %self.redact(&role), "plugin asked for a secret role its job does not bind");
            return Err(bindings::Error::AccessDenied(role));
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
            Err(e) => Err(bindings::Error::Unavailable(e.to_string())),
        }
    }

    async fn set(
        &mut self,
        role: String,
        value: String,
        expires_at: Option<u64>,
    ) -> Result<(), bindings::Error> {
        let grant = match self.grants.find(&role) {
            Some(g) if g.writable => g.clone(),
            _ => {
                tracing::warn!(role = %self.redact(&role), "plugin tried to write a secret role it may not write");
                return Err(bindings::Error::AccessDenied(role));
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
        let meta = written.map_err(|e| bindings::Error::Unavailable(e.to_string()))?;
        self.written = Some(meta.revision);
        Ok(())
    }
}

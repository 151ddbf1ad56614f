//! The `signing` capability: the host side of the WIT `signing` interface. A job that
//! authenticates with `private_key_jwt` binds a `private-key` role (and usually a
//! `certificate`); the component asks the host to sign its assertion with that key and to
//! tell it the certificate's thumbprints. No function returns the key, and `secrets` refuses
//! the `private-key` role, so the key never enters the sandbox.
//!
//! Like [`crate::secrets`], the module owns its bindings and linking: an embedder adds it
//! with [`add_to_linker`] and gives each store a [`SigningCtx`].

pub mod keys;

use crate::redact::Redactor;
use crate::secrets::SecretRoles;
use crate::store::SecretStore;
use base64::Engine as _;
use keys::{Certificate, SigningKey};
use secrecy::ExposeSecret;
use std::sync::Arc;
use tokenwarden_contract::{SigningAlg, role};
use wasmtime::component::{HasData, Linker};

mod generated {
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        path: "../wit",
        interfaces: "import tokenwarden:refresh/signing@0.2.0;",
        imports: { default: async },
    });
}

/// The generated host side of the WIT `signing` interface.
pub use generated::tokenwarden::refresh::signing as bindings;

/// The largest signing input accepted: an assertion is well under 4 KiB; this bounds what
/// a component can make the host hash.
pub const MAX_SIGNING_INPUT: usize = 64 * 1024;

/// Adds the `signing` interface to `linker`; `get` finds a store's [`SigningCtx`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut SigningCtx,
) -> wasmtime::Result<()> {
    bindings::add_to_linker::<T, HasSigning>(linker, get)
}

struct HasSigning;

impl HasData for HasSigning {
    type Data<'a> = &'a mut SigningCtx;
}

/// Per-run state behind `signing`: the store names of the job's key and certificate, and
/// the signatures made, to scrub from what the run prints or returns.
pub struct SigningCtx {
    store: Arc<dyn SecretStore>,
    private_key: Option<String>,
    certificate: Option<String>,
    signed: Redactor,
}

impl SigningCtx {
    /// A context for one run of a job bound by `roles`.
    pub fn new(roles: &SecretRoles, store: Arc<dyn SecretStore>) -> Self {
        Self {
            store,
            private_key: roles.private_key.clone(),
            certificate: roles.certificate.clone(),
            signed: Redactor::default(),
        }
    }

    /// This context signing with the job's key only when `signs` (a `private_key_jwt` job):
    /// a key bound for another use, such as the host's TLS client authentication, is
    /// refused to the component like an unbound one.
    pub fn signs(mut self, signs: bool) -> Self {
        if !signs {
            self.private_key = None;
        }
        self
    }

    /// `text` with every signature this run made replaced by `[redacted]`, in any encoding:
    /// with its signature an assertion is a credential for its lifetime, without it an
    /// assertion is just claims.
    pub fn redact(&self, text: &str) -> String {
        self.signed.redact(text)
    }

    async fn read(&self, name: &str) -> Result<Option<String>, bindings::Error> {
        match self.store.get(name).await {
            Ok(found) => Ok(found.map(|s| s.value.expose_secret().to_string())),
            Err(e) => Err(bindings::Error::Unavailable(e.to_string())),
        }
    }
}

fn unusable(name: &str, e: keys::KeyError) -> bindings::Error {
    bindings::Error::Unusable(format!("secret `{name}`: {e}"))
}

impl bindings::Host for SigningCtx {
    async fn certificate(
        &mut self,
        role_name: String,
    ) -> Result<Option<bindings::Thumbprints>, bindings::Error> {
        let Some(name) = self
            .certificate
            .clone()
            .filter(|_| role_name == role::CERTIFICATE)
        else {
            return Err(bindings::Error::AccessDenied(crate::text::clean(
                &role_name, 64,
            )));
        };
        let Some(pem) = self.read(&name).await? else {
            return Ok(None);
        };
        let t = Certificate::from_pem(&pem)
            .map_err(|e| unusable(&name, e))?
            .thumbprints();
        Ok(Some(bindings::Thumbprints {
            sha256: t.sha256,
            sha1: t.sha1,
        }))
    }

    async fn sign(
        &mut self,
        role_name: String,
        alg: bindings::Algorithm,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, bindings::Error> {
        let Some(name) = self
            .private_key
            .clone()
            .filter(|_| role_name == role::PRIVATE_KEY)
        else {
            tracing::warn!(role = %crate::text::clean(&role_name, 64), "plugin asked to sign with a role its job does not bind to a key");
            return Err(bindings::Error::AccessDenied(crate::text::clean(
                &role_name, 64,
            )));
        };
        if data.len() > MAX_SIGNING_INPUT {
            return Err(bindings::Error::Unusable(format!(
                "a signing input of {} bytes is over the {MAX_SIGNING_INPUT}-byte limit",
                data.len()
            )));
        }
        let Some(pem) = self.read(&name).await? else {
            return Err(bindings::Error::Unusable(format!(
                "secret `{name}` (role `private-key`) is not set; import a key with `tokenwarden secrets import-key`"
            )));
        };
        let pem = zeroize::Zeroizing::new(pem);
        let alg = match alg {
            bindings::Algorithm::Ps256 => SigningAlg::PS256,
            bindings::Algorithm::Rs256 => SigningAlg::RS256,
            bindings::Algorithm::Es256 => SigningAlg::ES256,
        };
        let key = SigningKey::from_pem(&pem).map_err(|e| unusable(&name, e))?;
        tracing::debug!(name = %name, alg = alg.as_str(), "signing an assertion for the plugin");
        let signature = key.sign(alg, &data).map_err(|e| unusable(&name, e))?;
        self.signed
            .add(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&signature));
        Ok(signature)
    }
}

//! A job's TLS client identity, for mutual TLS at its token endpoint (RFC 8705
//! `tls_client_auth` and `self_signed_tls_client_auth`): the certificate chain and private
//! key the host presents in the handshake.
//!
//! It is read from the store at the start of each run (a key imported again takes effect
//! at the next run), attached by [`super::EgressPolicy`] only to requests for the token
//! endpoint's origin, and used by the transport's TLS; the component never sees the key
//! and cannot choose where it is presented. Connections made with an identity are pooled
//! apart from all others (the pool key carries its fingerprint) and never resume a TLS
//! session (see [`ClientIdentity::tls_config`]).

use crate::secrets::SecretRoles;
use crate::signing::keys::{Certificate, KeyError, MAX_CHAIN, SigningKey};
use crate::store::SecretStore;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::sign::CertifiedKey;
use secrecy::ExposeSecret;
use std::sync::Arc;

/// Why a job's client identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The store did not answer.
    #[error("secret store unavailable: {0}")]
    Store(String),
    /// The job binds no key or no certificate.
    #[error("`tls_client_auth` needs `private_key` and `certificate` in `[jobs.secrets]`")]
    Unbound,
    /// A bound secret has no value.
    #[error(
        "secret `{name}` (role `{role}`) is not set; import the key and its certificate with `tokenwarden secrets import-key KEY --certificate CERT`"
    )]
    Missing {
        /// The role.
        role: &'static str,
        /// The store name.
        name: String,
    },
    /// The key or certificate cannot be used.
    #[error("secrets `{key}` and `{certificate}`: {why}")]
    Unusable {
        /// The key's store name.
        key: String,
        /// The certificate's store name.
        certificate: String,
        /// Why.
        why: KeyError,
    },
}

/// A certificate chain and its private key, ready to present.
#[derive(Clone)]
pub struct ClientIdentity {
    key: Arc<CertifiedKey>,
    fingerprint: [u8; 32],
    subject: Arc<str>,
}

// The subject and fingerprint only: never the key.
impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("subject", &self.subject)
            .field("sha256", &crate::text::hex(&self.fingerprint))
            .finish()
    }
}

impl ClientIdentity {
    /// The identity bound by `roles`, read from `store` now.
    pub async fn load(roles: &SecretRoles, store: &dyn SecretStore) -> Result<Self, IdentityError> {
        let (Some(key), Some(certificate)) = (&roles.private_key, &roles.certificate) else {
            return Err(IdentityError::Unbound);
        };
        let read = async |role, name: &String| match store.get(name).await {
            Err(e) => Err(IdentityError::Store(e.to_string())),
            Ok(None) => Err(IdentityError::Missing {
                role,
                name: name.clone(),
            }),
            Ok(Some(s)) => Ok(zeroize::Zeroizing::new(s.value.expose_secret().to_string())),
        };
        let key_pem = read(tokenwarden_contract::role::PRIVATE_KEY, key).await?;
        let chain_pem = read(tokenwarden_contract::role::CERTIFICATE, certificate).await?;
        Self::from_pem(&key_pem, &chain_pem).map_err(|why| IdentityError::Unusable {
            key: key.clone(),
            certificate: certificate.clone(),
            why,
        })
    }

    /// The key in `key_pem` (PKCS#8, or PKCS#1 for RSA: the kinds `import-key` stores) and
    /// the chain in `chain_pem` (the leaf first, then intermediates), checked to belong
    /// together and to be in date.
    pub fn from_pem(key_pem: &str, chain_pem: &str) -> Result<Self, KeyError> {
        // Our own parse first: the same kinds and sizes as signing, with its messages.
        let parsed = SigningKey::from_pem(key_pem)?;
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| KeyError::BadCertificate(format!("a PEM block does not decode ({e})")))?;
        let Some(leaf) = chain.first() else {
            return Err(KeyError::NotFound("certificate"));
        };
        if chain.len() > MAX_CHAIN {
            return Err(KeyError::BadCertificate(format!(
                "the chain holds {} certificates; at most {MAX_CHAIN} are presented",
                chain.len()
            )));
        }
        let leaf = Certificate::from_der(leaf.to_vec())?;
        if !leaf.certifies(&parsed) {
            return Err(KeyError::Mismatch);
        }
        if let Some(from) = leaf.not_yet_valid() {
            return Err(KeyError::BadCertificate(format!(
                "it is not valid before {from}"
            )));
        }
        if leaf.expired() {
            return Err(KeyError::BadCertificate(format!(
                "it has expired ({}); import a renewed one",
                leaf.summary()
            )));
        }
        let der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| KeyError::NotFound("private key"))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&der)
            .map_err(|e| KeyError::BadKey(e.to_string()))?;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for cert in &chain {
            digest.update(&(cert.len() as u64).to_be_bytes());
            digest.update(cert);
        }
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(digest.finish().as_ref());
        Ok(Self {
            key: Arc::new(CertifiedKey::new(chain, signer)),
            fingerprint,
            subject: leaf.summary().into(),
        })
    }

    /// SHA-256 over the chain: which connections this identity may reuse.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The leaf's subject and expiry, for logs.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// `base` presenting this identity, without session resumption.
    pub(super) fn tls_config(&self, base: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
        let mut config = base.clone();
        config.client_auth_cert_resolver = Arc::new(Presents(self.clone()));
        // A resumed session keeps the authentication of the connection that made it. rustls
        // already refuses to resume across client-certificate resolvers (this one is new
        // per connection); without resumption, these sessions also stay out of `base`'s
        // cache, where they would push out the tickets of connections that present none.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

/// Presents one identity to any server that asks.
#[derive(Debug)]
struct Presents(ClientIdentity);

impl ResolvesClientCert for Presents {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client key, its leaf certificate (expired when `expired`) and the CA's, as PEM.
    fn ca_and_leaf(expired: bool) -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["client".to_string()]).unwrap();
        if expired {
            leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
            leaf.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = leaf.signed_by(&key, &ca).unwrap();
        (key.serialize_pem(), cert.pem(), ca.pem())
    }

    #[test]
    fn a_key_and_its_chain_make_an_identity_and_nothing_else_does() {
        let (key, leaf, ca) = ca_and_leaf(false);
        let chain = format!("{leaf}{ca}");
        let id = ClientIdentity::from_pem(&key, &chain).unwrap();
        assert_eq!(id.key.cert.len(), 2);
        assert!(id.key.keys_match().is_ok());
        let debug = format!("{id:?}");
        assert!(
            debug.contains("sha256") && !debug.contains("PRIVATE"),
            "{debug}"
        );
        // The same chain, the same pool; another chain, another.
        assert_eq!(
            ClientIdentity::from_pem(&key, &chain)
                .unwrap()
                .fingerprint(),
            id.fingerprint()
        );
        assert_ne!(
            ClientIdentity::from_pem(&key, &leaf).unwrap().fingerprint(),
            id.fingerprint()
        );

        let (other_key, _, _) = ca_and_leaf(false);
        assert_eq!(
            ClientIdentity::from_pem(&other_key, &chain).unwrap_err(),
            KeyError::Mismatch
        );
        assert_eq!(
            ClientIdentity::from_pem(&key, "").unwrap_err(),
            KeyError::NotFound("certificate")
        );
        assert!(matches!(
            ClientIdentity::from_pem(&leaf, &chain).unwrap_err(),
            KeyError::NotFound(_)
        ));
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let mut later = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap();
        later.not_before = rcgen::date_time_ymd(2090, 1, 1);
        later.not_after = rcgen::date_time_ymd(2091, 1, 1);
        let later = later.self_signed(&key_pair).unwrap();
        let e = ClientIdentity::from_pem(&key_pair.serialize_pem(), &later.pem()).unwrap_err();
        assert!(e.to_string().contains("not valid before"), "{e}");
        let (old_key, old_leaf, _) = ca_and_leaf(true);
        let e = ClientIdentity::from_pem(&old_key, &old_leaf).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        let long = leaf.repeat(MAX_CHAIN + 1);
        let e = ClientIdentity::from_pem(&key, &long).unwrap_err();
        assert!(e.to_string().contains("at most 8"), "{e}");
    }

    #[test]
    fn the_config_presents_the_identity_and_never_resumes() {
        let (key, leaf, _) = ca_and_leaf(false);
        let id = ClientIdentity::from_pem(&key, &leaf).unwrap();
        let config = id.tls_config(&super::super::tls_config());
        assert!(config.client_auth_cert_resolver.has_certs());
        assert!(config.client_auth_cert_resolver.resolve(&[], &[]).is_some());
        assert!(
            !super::super::tls_config()
                .client_auth_cert_resolver
                .has_certs()
        );
    }
}

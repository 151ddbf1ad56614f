//! Which certificate authorities the host's TLS connections trust (token endpoints, proxy
//! upstreams and the PostgreSQL store): the web PKI roots built into the binary (the default: the same on every
//! machine), the operating system's trust store, or both, plus a PEM bundle of extra CAs (a
//! corporate CA that signs an internal identity provider or an intercepting proxy).

use std::path::PathBuf;
use std::sync::Arc;

/// The root set a connection starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Roots {
    /// The Mozilla roots compiled into the binary (`webpki-roots`).
    #[default]
    WebPki,
    /// The operating system's trust store (`rustls-native-certs`: the distribution's CA
    /// bundle, `SSL_CERT_FILE`/`SSL_CERT_DIR` when set).
    System,
    /// Both.
    Both,
}

impl Roots {
    /// The config names, in order.
    pub const NAMES: [&str; 3] = ["webpki", "system", "both"];

    /// From a config name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "webpki" => Some(Self::WebPki),
            "system" => Some(Self::System),
            "both" => Some(Self::Both),
            _ => None,
        }
    }
}

/// `[tls]`: what HTTPS connections trust.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    /// The root set.
    pub roots: Roots,
    /// Extra CA certificates (PEM), added to the roots.
    pub ca_file: Option<PathBuf>,
}

/// Why the trusted roots could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The CA file cannot be read or holds something other than PEM certificates.
    #[error("cannot use the CA file {path}: {why}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The system trust store holds no usable certificate.
    #[error("the system trust store has no usable CA certificate ({0})")]
    System(String),
}

impl Trust {
    /// A client configuration trusting these roots; the default is shared and built once.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TrustError> {
        if *self == Self::default() {
            return Ok(super::tls_config());
        }
        let mut roots = rustls::RootCertStore::empty();
        if matches!(self.roots, Roots::WebPki | Roots::Both) {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if matches!(self.roots, Roots::System | Roots::Both) {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or("none found".to_string(), ToString::to_string);
                return Err(TrustError::System(why));
            }
            if !found.errors.is_empty() {
                tracing::warn!(errors = found.errors.len(), first = %found.errors[0], "some system CA certificates could not be read");
            }
        }
        if let Some(path) = &self.ca_file {
            add_pem_file(&mut roots, path)?;
        }
        Ok(Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    }
}

/// Adds every certificate of a PEM file; a file with none, or an unparsable one, is an
/// error (a typo must not silently trust nothing new).
fn add_pem_file(roots: &mut rustls::RootCertStore, path: &PathBuf) -> Result<(), TrustError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let bad = |why: String| TrustError::CaFile {
        path: path.clone(),
        why,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(bad("it holds no `BEGIN CERTIFICATE` block".into()));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| bad(format!("a certificate is not a usable CA: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let trust = |name: &str, body: Option<&str>| {
            let path = dir.path().join(name);
            if let Some(b) = body {
                std::fs::write(&path, b).unwrap();
            }
            Trust {
                roots: Roots::WebPki,
                ca_file: Some(path),
            }
            .client_config()
            .map(|_| ())
            .unwrap_err()
            .to_string()
        };
        assert!(trust("missing.pem", None).contains("No such file"));
        assert!(trust("empty.pem", Some("")).contains("no `BEGIN CERTIFICATE`"));
        assert!(
            trust(
                "garbage.pem",
                Some("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
            )
            .contains("not PEM")
        );
        assert!(
            trust(
                "key.pem",
                Some("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            )
            .contains("no `BEGIN CERTIFICATE`")
        );
    }

    #[test]
    fn the_system_store_and_both_load_here() {
        for roots in [Roots::System, Roots::Both] {
            let t = Trust {
                roots,
                ca_file: None,
            };
            assert!(t.client_config().is_ok(), "{roots:?}");
        }
    }
}

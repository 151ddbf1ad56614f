//! Private keys and certificates for `private_key_jwt`: reading them (PEM, PKCS#12),
//! checking that they belong together, thumbprints, and signing. Everything here runs in
//! the host; the component only ever gets thumbprints and signatures.
//!
//! Keys are RSA of 2048 to 4096 bits (PS256, RS256) or EC P-256 (ES256), in PKCS#8 (or
//! PKCS#1 for RSA): what Entra accepts and `ring` signs with. A key is stored as the PEM it
//! was given (or, from PKCS#12, as PKCS#8 PEM) and parsed again for each signature, so
//! nothing but the store holds it between runs.

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use tokenwarden_contract::SigningAlg;
use x509_parser::pem::Pem;
use zeroize::Zeroizing;

/// The most certificates a stored chain may hold (the key's own and the CAs that issued
/// it; real chains have 2 to 4). Only `tls_client_auth` presents more than the first.
pub const MAX_CHAIN: usize = 8;

/// RSA modulus sizes accepted, in bits (Entra's range; below 2048 is breakable).
pub const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

/// Why a key or certificate cannot be used. No case carries key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The text holds no PEM block of the kind needed.
    #[error(
        "no {0} found (expected PEM: `-----BEGIN PRIVATE KEY-----` or `-----BEGIN CERTIFICATE-----`)"
    )]
    NotFound(&'static str),
    /// A PEM block of a kind the host does not read, with what to do instead.
    #[error("{0}")]
    Unsupported(String),
    /// The key does not parse or is of an unaccepted size or curve.
    #[error("the private key is not usable: {0}")]
    BadKey(String),
    /// The certificate does not parse.
    #[error("the certificate is not usable: {0}")]
    BadCertificate(String),
    /// The key cannot make signatures of this algorithm.
    #[error("{alg} needs {needs} key, and the bound key is {is}")]
    WrongAlgorithm {
        /// The algorithm asked for.
        alg: &'static str,
        /// What it needs.
        needs: &'static str,
        /// What the key is.
        is: &'static str,
    },
    /// The certificate is not the key's.
    #[error("the certificate's public key is not the private key's")]
    Mismatch,
    /// A PKCS#12 file did not open.
    #[error("the PKCS#12 file did not open (wrong password, or not PKCS#12)")]
    Pkcs12,
}

/// A parsed private key, ready to sign.
pub enum SigningKey {
    /// RSA, for PS256 and RS256.
    Rsa(RsaKeyPair),
    /// EC P-256, for ES256.
    P256(EcdsaKeyPair),
}

// Never the key, only what kind it is.
impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe().as_str())
    }
}

impl SigningKey {
    /// The first private key in `pem`.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let (label, der) = key_block(pem)?;
        Self::from_block(label, &der)
    }

    fn from_block(label: &str, der: &[u8]) -> Result<Self, KeyError> {
        if label == "RSA PRIVATE KEY" {
            return RsaKeyPair::from_der(der)
                .map_err(|e| KeyError::BadKey(format!("RSA (PKCS#1): {e}")))
                .and_then(Self::rsa);
        }
        Self::from_pkcs8(der)
    }

    /// A PKCS#8 key: RSA or EC P-256.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        match RsaKeyPair::from_pkcs8(der) {
            Ok(rsa) => return Self::rsa(rsa),
            // An RSA key of a size ring will not take: say so, rather than that it is
            // not EC either.
            Err(e) if matches!(e.to_string().as_str(), "TooSmall" | "TooLarge") => {
                return Err(KeyError::BadKey(format!(
                    "RSA ({e}); RSA keys of {} to {} bits are accepted",
                    RSA_BITS.start(),
                    RSA_BITS.end()
                )));
            }
            Err(_) => {}
        }
        let rng = SystemRandom::new();
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map(SigningKey::P256)
            .map_err(|_| {
                KeyError::BadKey(
                    "not an RSA or EC P-256 key in PKCS#8 (other curves and Ed25519 are not accepted)"
                        .into(),
                )
            })
    }

    fn rsa(key: RsaKeyPair) -> Result<Self, KeyError> {
        let bits = key.public().modulus_len() * 8;
        if !RSA_BITS.contains(&bits) {
            return Err(KeyError::BadKey(format!(
                "RSA keys of {} to {} bits are accepted; this one has {bits}",
                RSA_BITS.start(),
                RSA_BITS.end()
            )));
        }
        Ok(SigningKey::Rsa(key))
    }

    /// "RSA 2048-bit" or "EC P-256", for messages.
    pub fn describe(&self) -> String {
        match self {
            SigningKey::Rsa(k) => format!("RSA {}-bit", k.public().modulus_len() * 8),
            SigningKey::P256(_) => "EC P-256".into(),
        }
    }

    /// The algorithm a job gets by default with this key.
    pub fn default_alg(&self) -> SigningAlg {
        match self {
            SigningKey::Rsa(_) => SigningAlg::PS256,
            SigningKey::P256(_) => SigningAlg::ES256,
        }
    }

    /// The public key as a certificate's SubjectPublicKeyInfo carries it (RSAPublicKey DER,
    /// or the uncompressed EC point).
    fn public_key(&self) -> &[u8] {
        match self {
            SigningKey::Rsa(k) => k.public_key().as_ref(),
            SigningKey::P256(k) => k.public_key().as_ref(),
        }
    }

    /// The JWS signature of `data` (RFC 7518 §3.3-3.5; ES256 as `r || s`).
    pub fn sign(&self, alg: SigningAlg, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        let failed = |_| KeyError::BadKey("signing failed".into());
        match (self, alg) {
            (SigningKey::Rsa(key), SigningAlg::PS256 | SigningAlg::RS256) => {
                let padding: &dyn signature::RsaEncoding = if alg == SigningAlg::PS256 {
                    &signature::RSA_PSS_SHA256
                } else {
                    &signature::RSA_PKCS1_SHA256
                };
                let mut sig = vec![0; key.public().modulus_len()];
                key.sign(padding, &rng, data, &mut sig).map_err(failed)?;
                Ok(sig)
            }
            (SigningKey::P256(key), SigningAlg::ES256) => {
                Ok(key.sign(&rng, data).map_err(failed)?.as_ref().to_vec())
            }
            (key, alg) => Err(KeyError::WrongAlgorithm {
                alg: alg.as_str(),
                needs: if alg == SigningAlg::ES256 {
                    "an EC P-256"
                } else {
                    "an RSA"
                },
                is: match key {
                    SigningKey::Rsa(_) => "RSA",
                    SigningKey::P256(_) => "EC P-256",
                },
            }),
        }
    }
}

/// A certificate, as DER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
}

/// A certificate's thumbprints, base64url without padding (RFC 7515 §4.1.7-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thumbprints {
    /// `x5t#S256`.
    pub sha256: String,
    /// `x5t`.
    pub sha1: String,
}

impl Certificate {
    /// The first certificate in `pem`.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        for block in Pem::iter_from_buffer(pem.as_bytes()) {
            let block = block.map_err(|e| KeyError::BadCertificate(e.to_string()))?;
            if block.label == "CERTIFICATE" {
                return Self::from_der(block.contents);
            }
        }
        Err(KeyError::NotFound("certificate"))
    }

    /// A DER certificate, checked to parse.
    pub fn from_der(der: Vec<u8>) -> Result<Self, KeyError> {
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| KeyError::BadCertificate(e.to_string()))?;
        Ok(Self { der })
    }

    /// As PEM, for the store.
    pub fn to_pem(&self) -> String {
        pem("CERTIFICATE", &self.der)
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Its thumbprints.
    pub fn thumbprints(&self) -> Thumbprints {
        let b64 = |alg| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(ring::digest::digest(alg, &self.der))
        };
        Thumbprints {
            sha256: b64(&ring::digest::SHA256),
            sha1: b64(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
        }
    }

    /// Whether it certifies `key`'s public key.
    pub fn certifies(&self, key: &SigningKey) -> bool {
        x509_parser::parse_x509_certificate(&self.der).is_ok_and(|(_, cert)| {
            cert.public_key().subject_public_key.data.as_ref() == key.public_key()
        })
    }

    /// Subject and expiry, for the import report.
    pub fn summary(&self) -> String {
        match x509_parser::parse_x509_certificate(&self.der) {
            Ok((_, cert)) => format!(
                "subject {}, valid until {}",
                cert.subject(),
                cert.validity().not_after
            ),
            Err(_) => "unreadable".into(),
        }
    }

    /// Whether it has expired.
    pub fn expired(&self) -> bool {
        x509_parser::parse_x509_certificate(&self.der)
            .is_ok_and(|(_, cert)| cert.validity().not_after < x509_parser::time::ASN1Time::now())
    }

    /// When it becomes valid, if that is still to come.
    pub fn not_yet_valid(&self) -> Option<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.der).ok()?;
        let from = cert.validity().not_before;
        (from > x509_parser::time::ASN1Time::now()).then(|| from.to_string())
    }
}

/// A key (and its certificate) ready to store.
pub struct Imported {
    /// The key as PEM: what was given, or PKCS#8 from PKCS#12.
    pub key_pem: Zeroizing<String>,
    /// The parsed key.
    pub key: SigningKey,
    /// The certificate that certifies it, when the input had one.
    pub certificate: Option<Certificate>,
    /// The input's other certificates, in its order: the CAs that issued `certificate`,
    /// which a server checking it in a TLS handshake may need.
    pub chain: Vec<Certificate>,
}

impl Imported {
    /// A key and optionally its certificate from PEM text (in any order; other
    /// certificates, such as the chain, are skipped).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let (label, der) = key_block(text)?;
        let key = SigningKey::from_block(label, &der)?;
        let mut certs = Vec::new();
        for block in Pem::iter_from_buffer(text.as_bytes()).flatten() {
            if block.label == "CERTIFICATE" {
                certs.push(Certificate::from_der(block.contents)?);
            }
        }
        let certificate = match certs.iter().position(|c| c.certifies(&key)) {
            Some(i) => Some(certs.remove(i)),
            None if certs.is_empty() => None,
            None => return Err(KeyError::Mismatch),
        };
        // Only the key's own block is kept: the text may hold comments.
        Self::checked(Zeroizing::new(pem(label, &der)), key, certificate, certs)
    }

    /// A chain only beside its leaf, and within [`MAX_CHAIN`].
    fn checked(
        key_pem: Zeroizing<String>,
        key: SigningKey,
        certificate: Option<Certificate>,
        mut chain: Vec<Certificate>,
    ) -> Result<Self, KeyError> {
        if certificate.is_none() {
            chain.clear();
        }
        chain.dedup();
        if chain.len() + 1 > MAX_CHAIN {
            return Err(KeyError::BadCertificate(format!(
                "the input holds {} certificates; a chain of at most {MAX_CHAIN} is stored",
                chain.len() + 1
            )));
        }
        Ok(Self {
            key_pem,
            key,
            certificate,
            chain,
        })
    }

    /// The certificate and its chain as the PEM the `certificate` role stores (the key's
    /// own first), when there is a certificate.
    pub fn certificate_pem(&self) -> Option<String> {
        let leaf = self.certificate.as_ref()?;
        Some(
            std::iter::once(leaf)
                .chain(&self.chain)
                .map(Certificate::to_pem)
                .collect(),
        )
    }

    /// The key and its certificate from a PKCS#12 (`.pfx`, `.p12`) file.
    pub fn from_pkcs12(bytes: &[u8], password: &str) -> Result<Self, KeyError> {
        let store = p12_keystore::KeyStore::from_pkcs12(
            bytes,
            password,
            p12_keystore::Pkcs12ImportPolicy::Relaxed,
        )
        .map_err(|_| KeyError::Pkcs12)?;
        let (_, chain) = store
            .private_key_chain()
            .ok_or(KeyError::NotFound("private key"))?;
        let der = Zeroizing::new(chain.key().as_der().to_vec());
        let key = SigningKey::from_pkcs8(&der)?;
        let mut certs = chain
            .certs()
            .iter()
            .map(|c| Certificate::from_der(c.as_der().to_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        let certificate = match certs.iter().position(|c| c.certifies(&key)) {
            Some(i) => Some(certs.remove(i)),
            None if certs.is_empty() => None,
            None => return Err(KeyError::Mismatch),
        };
        Self::checked(
            Zeroizing::new(pem("PRIVATE KEY", &der)),
            key,
            certificate,
            certs,
        )
    }
}

/// The first private-key PEM block of `text`: its label and DER.
fn key_block(text: &str) -> Result<(&'static str, Zeroizing<Vec<u8>>), KeyError> {
    for block in Pem::iter_from_buffer(text.as_bytes()) {
        let Ok(block) = block else {
            return Err(KeyError::BadKey("a PEM block does not decode".into()));
        };
        let der = Zeroizing::new(block.contents);
        match block.label.as_str() {
            "PRIVATE KEY" => return Ok(("PRIVATE KEY", der)),
            "RSA PRIVATE KEY" => return Ok(("RSA PRIVATE KEY", der)),
            "EC PRIVATE KEY" => {
                return Err(KeyError::Unsupported(
                    "an `EC PRIVATE KEY` (SEC1) is not read; convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt`".into(),
                ));
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(KeyError::Unsupported(
                    "an encrypted PEM key is not read; import it as PKCS#12 with its password, or decrypt it with `openssl pkcs8`".into(),
                ));
            }
            _ => {}
        }
    }
    Err(KeyError::NotFound("private key"))
}

/// `der` as a PEM block with 64-column lines (RFC 7468).
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An EC P-256 key (PKCS#8 PEM) and its self-signed certificate (PEM).
    pub(crate) fn ec_key_and_cert() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["tokenwarden.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (key.serialize_pem(), cert.pem())
    }

    #[test]
    fn import_keeps_the_chain_after_the_keys_own_certificate() {
        let (key, leaf) = ec_key_and_cert();
        let (_, ca1) = ec_key_and_cert();
        let (_, ca2) = ec_key_and_cert();
        // The key's certificate last in the input, a CA twice in a row.
        let imported = Imported::from_pem(&format!("{ca1}{ca1}{ca2}{key}{leaf}")).unwrap();
        assert_eq!(imported.chain.len(), 2);
        let stored = imported.certificate_pem().unwrap();
        assert_eq!(stored.matches("BEGIN CERTIFICATE").count(), 3);
        assert_eq!(
            Certificate::from_pem(&stored).unwrap(),
            Certificate::from_pem(&leaf).unwrap(),
            "the key's own certificate first"
        );
        // Without the key's certificate, no chain is kept.
        let (_, stranger) = ec_key_and_cert();
        assert_eq!(
            Imported::from_pem(&format!("{key}{stranger}")).err(),
            Some(KeyError::Mismatch)
        );
        let bare = Imported::from_pem(&key).unwrap();
        assert!(bare.certificate_pem().is_none() && bare.chain.is_empty());
        let long: String = (0..MAX_CHAIN)
            .map(|_| ec_key_and_cert().1)
            .chain([key, leaf])
            .collect();
        let e = Imported::from_pem(&long).err().unwrap();
        assert!(e.to_string().contains("at most 8"), "{e}");
    }

    #[test]
    fn an_ec_key_signs_es256_that_its_certificate_verifies_and_nothing_else() {
        let (key_pem, cert_pem) = ec_key_and_cert();
        let key = SigningKey::from_pem(&key_pem).unwrap();
        assert_eq!(key.describe(), "EC P-256");
        assert_eq!(key.default_alg(), SigningAlg::ES256);
        assert!(!format!("{key:?}").contains(&key_pem[30..60]));
        let sig = key.sign(SigningAlg::ES256, b"input").unwrap();
        assert_eq!(sig.len(), 64, "r || s, as JWS wants");
        let cert = Certificate::from_pem(&cert_pem).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            parsed.public_key().subject_public_key.data.as_ref(),
        )
        .verify(b"input", &sig)
        .unwrap();
        assert!(cert.certifies(&key));
        for alg in [SigningAlg::PS256, SigningAlg::RS256] {
            assert_eq!(
                key.sign(alg, b"input").unwrap_err().to_string(),
                format!(
                    "{} needs an RSA key, and the bound key is EC P-256",
                    alg.as_str()
                )
            );
        }
    }

    #[test]
    fn thumbprints_are_the_base64url_digests_of_the_der() {
        use sha2::Digest as _;
        let (_, cert_pem) = ec_key_and_cert();
        let cert = Certificate::from_pem(&cert_pem).unwrap();
        let t = cert.thumbprints();
        let b64 = |d: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
        assert_eq!(t.sha256, b64(&sha2::Sha256::digest(cert.der())));
        assert_eq!(t.sha1.len(), 27, "20 bytes, base64url without padding");
        assert_eq!(cert.to_pem().trim(), cert_pem.trim().replace("\r\n", "\n"));
    }

    #[test]
    fn import_takes_key_and_certificate_in_any_order_and_refuses_a_stranger() {
        let (key_pem, cert_pem) = ec_key_and_cert();
        let (_, other_cert) = ec_key_and_cert();
        let i = Imported::from_pem(&format!("a comment\n{cert_pem}\n{key_pem}")).unwrap();
        assert!(i.certificate.is_some());
        assert_eq!(
            SigningKey::from_pem(&i.key_pem).unwrap().describe(),
            "EC P-256"
        );
        // A chain: the key's own certificate is picked whatever its place.
        let chain = format!("{other_cert}{cert_pem}{key_pem}");
        let i = Imported::from_pem(&chain).unwrap();
        assert_eq!(
            i.certificate.unwrap().der(),
            Certificate::from_pem(&cert_pem).unwrap().der()
        );
        assert_eq!(
            Imported::from_pem(&format!("{other_cert}{key_pem}")).err(),
            Some(KeyError::Mismatch)
        );
        assert!(Imported::from_pem(&key_pem).unwrap().certificate.is_none());
    }

    #[test]
    fn keys_it_cannot_use_get_a_message_saying_what_to_do() {
        let cases = [
            ("", "no private key found"),
            ("just text", "no private key found"),
            (
                "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n",
                "openssl pkcs8 -topk8",
            ),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
                "PKCS#12",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
                "does not decode",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "not an RSA or EC P-256 key",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
                "PKCS#1",
            ),
            ("-----BEGIN PRIVATE KEY-----\nAAAA\n", "does not decode"),
        ];
        for (pem, needle) in cases {
            let e = SigningKey::from_pem(pem).unwrap_err().to_string();
            assert!(e.contains(needle), "{pem:?}: {e}");
        }
        // An Ed25519 key (PKCS#8) is not one Entra takes.
        let ed = ring::signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pem = pem("PRIVATE KEY", ed.as_ref());
        assert!(
            SigningKey::from_pem(&pem)
                .unwrap_err()
                .to_string()
                .contains("Ed25519")
        );
        assert_eq!(
            Imported::from_pkcs12(b"not pkcs12", "pw").err(),
            Some(KeyError::Pkcs12)
        );
        assert!(Certificate::from_pem("").is_err());
        assert!(Certificate::from_der(vec![0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
    }
}

//! Encryption at rest for the embedded store: AES-256-GCM (RustCrypto `aes-gcm`).
//!
//! Each value is sealed with a fresh random 96-bit nonce, and the secret's name is bound in
//! as associated data, so a ciphertext copied from one name to another does not open. A
//! wrong key or a tampered record fails authentication: a clear error, never garbage.
//!
//! The key is 32 random bytes, base64 in `$TOKENWARDEN_STORE_KEY` or in a key file created
//! 0600 beside the store on first use (`<store>.key`).

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Environment variable that can hold the store key (base64 of 32 bytes).
pub const KEY_ENV: &str = "TOKENWARDEN_STORE_KEY";

/// Format byte in front of every sealed value, for future formats.
const FORMAT: u8 = 1;
const NONCE_LEN: usize = 12;

/// A store key. The cipher zeroes its key schedule on drop; `Debug` shows nothing.
#[derive(Clone)]
pub struct StoreKey {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey([redacted])")
    }
}

/// A key could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("store key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not base64 of 32 bytes.
    #[error("store key from {from} is not base64 of 32 bytes")]
    Malformed {
        /// Where it came from.
        from: String,
    },
}

fn aad(name: &str) -> Vec<u8> {
    let mut aad = b"tokenwarden/secret/v1\0".to_vec();
    aad.extend_from_slice(name.as_bytes());
    aad
}

impl StoreKey {
    /// A new random key and its base64 text.
    pub fn generate() -> (Self, String) {
        let key = Aes256Gcm::generate_key(OsRng);
        let text = STANDARD.encode(key.as_slice());
        (
            Self {
                cipher: Aes256Gcm::new(&key),
            },
            text,
        )
    }

    /// Parses base64 of 32 bytes; `from` names the source in errors.
    pub fn parse(text: &str, from: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD
            .decode(text.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| KeyError::Malformed {
                from: from.to_string(),
            })?;
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| KeyError::Malformed {
            from: from.to_string(),
        })?;
        Ok(Self { cipher })
    }

    /// Reads a key file.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Seals `value` for the secret `name`.
    pub fn seal(&self, name: &str, value: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value,
                    aad: &aad(name),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed for `name`; `None` when the key is wrong or the record was
    /// altered (or moved from another name).
    pub fn open(&self, name: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (&format, rest) = sealed.split_first()?;
        if format != FORMAT || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad(name),
                },
            )
            .ok()
    }
}

/// Writes a key file 0600, atomically (temporary file, fsync, rename).
pub fn write_key_file(path: &Path, text: &str) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("key.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(format!("{text}\n").as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let (key, text) = StoreKey::generate();
        let sealed = key.seal("a", b"value");
        assert_eq!(key.open("a", &sealed).as_deref(), Some(&b"value"[..]));
        // Bound to the name.
        assert!(key.open("b", &sealed).is_none());
        // Any flipped bit fails.
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(key.open("a", &t).is_none(), "byte {i}");
        }
        // Another key fails; the same key from text works.
        let (other, _) = StoreKey::generate();
        assert!(other.open("a", &sealed).is_none());
        let again = StoreKey::parse(&text, "test").unwrap();
        assert_eq!(again.open("a", &sealed).as_deref(), Some(&b"value"[..]));
        // Fresh nonces: the same value never seals the same way twice.
        assert_ne!(key.seal("a", b"value"), key.seal("a", b"value"));
        assert!(!format!("{key:?}").contains(&text));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in ["", "abc", &STANDARD.encode([0u8; 16])] {
            assert!(StoreKey::parse(bad, "test").is_err());
        }
    }
}

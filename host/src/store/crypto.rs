//! The sealing primitive: AES-256-GCM (RustCrypto `aes-gcm`) with a fresh random 96-bit
//! nonce per seal and associated data naming what the plaintext is, so a ciphertext copied
//! to another place (another secret's name, another data key version) does not open.
//!
//! Sealed layout: one format byte, the nonce, then ciphertext and tag. A wrong key or a
//! tampered record fails authentication: `None`, never garbage.

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Nonce};

/// Format byte in front of every sealed value, for future formats.
const FORMAT: u8 = 1;
const NONCE_LEN: usize = 12;

/// An AES-256-GCM key. The cipher zeroes its key schedule on drop; `Debug` shows nothing.
#[derive(Clone)]
pub struct Cipher(Aes256Gcm);

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher([redacted])")
    }
}

impl Cipher {
    /// A cipher for 32 key bytes; `None` for any other length.
    pub fn new(key: &[u8]) -> Option<Self> {
        Aes256Gcm::new_from_slice(key).ok().map(Self)
    }

    /// A new random key: the cipher and the raw bytes (to wrap or write).
    pub fn generate() -> (Self, zeroize::Zeroizing<Vec<u8>>) {
        let key = Aes256Gcm::generate_key(OsRng);
        let bytes = zeroize::Zeroizing::new(key.to_vec());
        (Self(Aes256Gcm::new(&key)), bytes)
    }

    /// Seals `value` bound to `aad`.
    pub fn seal(&self, aad: &[u8], value: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .0
            .encrypt(&nonce, Payload { msg: value, aad })
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed for `aad`; `None` when the key is wrong or the record was
    /// altered or moved.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (&format, rest) = sealed.split_first()?;
        if format != FORMAT || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        self.0
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
    }
}

/// Associated data of a secret's value: its name.
pub fn secret_aad(name: &str) -> Vec<u8> {
    let mut aad = b"tokenwarden/secret/v1\0".to_vec();
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// Associated data of a wrapped data key: its version.
pub fn data_key_aad(version: u32) -> Vec<u8> {
    format!("tokenwarden/data-key/v1\0{version}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let (key, bytes) = Cipher::generate();
        let sealed = key.seal(&secret_aad("a"), b"value");
        assert_eq!(
            key.open(&secret_aad("a"), &sealed).as_deref(),
            Some(&b"value"[..])
        );
        assert!(
            key.open(&secret_aad("b"), &sealed).is_none(),
            "bound to the name"
        );
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(key.open(&secret_aad("a"), &t).is_none(), "byte {i}");
        }
        let (other, _) = Cipher::generate();
        assert!(other.open(&secret_aad("a"), &sealed).is_none());
        let again = Cipher::new(&bytes).unwrap();
        assert!(again.open(&secret_aad("a"), &sealed).is_some());
        assert_ne!(key.seal(b"x", b"v"), key.seal(b"x", b"v"), "fresh nonces");
        assert!(Cipher::new(&[0; 16]).is_none());
        assert!(!format!("{key:?}").contains('0'));
    }
}

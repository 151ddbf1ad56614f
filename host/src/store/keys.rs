//! Master keys and data keys: envelope encryption.
//!
//! Secrets are sealed under a **data key** that lives in the store, versioned, wrapped
//! (sealed) by a **master key** that never enters the store. Each secret row records its
//! data key's version and each data key row its master key's id, so a reader always knows
//! which key a record needs. Rotating the data key is then a database change like any
//! other: one transaction makes a new version current, and every process and host that
//! holds the master key picks it up; there is no file for concurrent rotations to fight
//! over.
//!
//! The master key comes from `$TOKENWARDEN_STORE_KEY` or a key file (one base64 key per
//! line, newest first). A key file is created exclusively on a store's first use, so
//! concurrent first writers agree on one key. Replacing the master key (key files only)
//! is serialised by a lock file beside the key file and goes through a two-key keyring:
//! the new key is added, the data keys are re-wrapped, then the old key is dropped; a
//! process killed at any point leaves a keyring that still opens the store.

use super::crypto::{Cipher, data_key_aad};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Environment variable that can hold the master key (base64 of 32 bytes).
pub const KEY_ENV: &str = "TOKENWARDEN_STORE_KEY";

/// A master key could not be read, parsed or written.
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
    #[error("store key from {from} is not base64 of 32 bytes (one key per line)")]
    Malformed {
        /// Where it came from.
        from: String,
    },
}

/// Where a process gets the master key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `$TOKENWARDEN_STORE_KEY`.
    Env,
    /// A key file.
    File(PathBuf),
}

impl KeySource {
    /// `$TOKENWARDEN_STORE_KEY` when it is set, else `file`.
    pub fn env_or_file(file: PathBuf) -> Self {
        if std::env::var_os(KEY_ENV).is_some() {
            KeySource::Env
        } else {
            KeySource::File(file)
        }
    }

    /// For messages.
    pub fn describe(&self) -> String {
        match self {
            KeySource::Env => format!("${KEY_ENV}"),
            KeySource::File(f) => f.display().to_string(),
        }
    }
}

/// A master key's public name: the first 8 bytes of a hash of it, in hex. Safe to store and
/// print; it only says which key is which.
pub fn key_id(key: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(b"tokenwarden/master-key-id/v1\0")
        .chain_update(key)
        .finalize();
    crate::text::hex(&digest[..8])
}

struct MasterKey {
    id: String,
    cipher: Cipher,
}

fn parse_ring(text: &str, from: &str) -> Result<Vec<MasterKey>, KeyError> {
    let malformed = || KeyError::Malformed {
        from: from.to_string(),
    };
    let mut ring = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bytes = zeroize::Zeroizing::new(STANDARD.decode(line).map_err(|_| malformed())?);
        let cipher = Cipher::new(&bytes).ok_or_else(malformed)?;
        ring.push(MasterKey {
            id: key_id(&bytes),
            cipher,
        });
    }
    if ring.is_empty() {
        return Err(malformed());
    }
    Ok(ring)
}

/// The master keys a process holds: the one from the environment, or the keyring of a
/// key file (the first is the one new data keys are wrapped with).
pub struct MasterKeys {
    source: KeySource,
    ring: RwLock<Vec<MasterKey>>,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKeys")
            .field("source", &self.source.describe())
            .field("ids", &self.ids())
            .finish()
    }
}

fn read_file(path: &Path) -> Result<Option<String>, KeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeyError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn ring_text(keys: &[&[u8]]) -> String {
    keys.iter()
        .map(|k| format!("{}\n", STANDARD.encode(k)))
        .collect()
}

impl MasterKeys {
    /// The keys of `source`; `Ok(None)` when it is a key file that does not exist.
    pub fn load(source: &KeySource) -> Result<Option<Self>, KeyError> {
        let ring = match source {
            KeySource::Env => {
                let text = std::env::var(KEY_ENV).map_err(|_| KeyError::Malformed {
                    from: format!("${KEY_ENV}"),
                })?;
                parse_ring(&text, &format!("${KEY_ENV}"))?
            }
            KeySource::File(path) => match read_file(path)? {
                Some(text) => parse_ring(&text, &path.display().to_string())?,
                None => return Ok(None),
            },
        };
        Ok(Some(Self {
            source: source.clone(),
            ring: RwLock::new(ring),
        }))
    }

    /// Loads `source`, creating the key file with a new random key when it does not exist.
    /// The creation is exclusive: of several processes creating it at once, one wins and
    /// the others load its key.
    pub fn load_or_create(source: &KeySource) -> Result<Self, KeyError> {
        if let Some(keys) = Self::load(source)? {
            return Ok(keys);
        }
        let KeySource::File(path) = source else {
            unreachable!("an environment key always loads or fails")
        };
        let (_, bytes) = Cipher::generate();
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        crate::files::create_dir(path.parent().unwrap_or(Path::new(".")), 0o700).map_err(io)?;
        crate::files::create_exclusive(path, ring_text(&[&bytes]).as_bytes(), 0o600).map_err(io)?;
        // Whoever won, the file now holds the key everyone uses.
        Self::load(source)?.ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the key file vanished right after it was created",
            ))
        })
    }

    /// One key from text (base64 of 32 bytes): its id and cipher.
    pub fn parse_one(text: &str, from: &str) -> Result<(String, Cipher), KeyError> {
        let mut ring = parse_ring(text, from)?;
        if ring.len() != 1 {
            return Err(KeyError::Malformed {
                from: from.to_string(),
            });
        }
        let k = ring.remove(0);
        Ok((k.id, k.cipher))
    }

    /// Where the keys come from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The ids of the keys held, newest first.
    pub fn ids(&self) -> Vec<String> {
        self.ring().iter().map(|k| k.id.clone()).collect()
    }

    fn ring(&self) -> std::sync::RwLockReadGuard<'_, Vec<MasterKey>> {
        self.ring.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The key new data keys are wrapped with, and its id.
    pub fn primary(&self) -> (String, Cipher) {
        let ring = self.ring();
        (ring[0].id.clone(), ring[0].cipher.clone())
    }

    /// The key with `id`. A key file is read again once when this process does not hold
    /// that key: another process may have replaced the master key since this one started.
    pub fn find(&self, id: &str) -> Option<Cipher> {
        if let Some(k) = self.ring().iter().find(|k| k.id == id) {
            return Some(k.cipher.clone());
        }
        if let Ok(Some(fresh)) = Self::load(&self.source) {
            let found = fresh.ring().iter().find(|k| k.id == id)?.cipher.clone();
            tracing::info!(key_source = %self.source.describe(), "the store's master key was replaced by another process; reloaded it");
            *self.ring.write().unwrap_or_else(|p| p.into_inner()) =
                fresh.ring.into_inner().unwrap_or_else(|p| p.into_inner());
            return Some(found);
        }
        None
    }

    /// Takes the rotation lock of a key file, waiting for another process's rotation to
    /// finish, and reloads the keyring under it, so what this process wraps new data keys
    /// with is the current key. `None` for a key from the environment, which no process
    /// can replace.
    pub fn lock(&self) -> Result<Option<RotationLock>, KeyError> {
        let KeySource::File(path) = &self.source else {
            return Ok(None);
        };
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        let current = Self::load(&self.source)?.ok_or_else(|| {
            io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the key file is missing",
            ))
        })?;
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) =
            current.ring.into_inner().unwrap_or_else(|p| p.into_inner());
        Ok(Some(RotationLock { _file: file }))
    }

    /// Starts replacing the master key of a key file, under `lock`: writes a keyring of a
    /// new key followed by every key held now, and returns the rotation to finish once the
    /// data keys are re-wrapped. A process killed before [`MasterRotation::finish`] leaves
    /// both keys in the file, which opens the store whichever way the database change went.
    pub fn begin_rotation(&self, _lock: &RotationLock) -> Result<MasterRotation<'_>, KeyError> {
        let KeySource::File(path) = &self.source else {
            unreachable!("a rotation lock exists only for key files")
        };
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        let (cipher, bytes) = Cipher::generate();
        let id = key_id(&bytes);
        let current_text = read_file(path)?.unwrap_or_default();
        let text = format!("{}{current_text}", ring_text(&[&bytes]));
        crate::files::write_atomic(path, text.as_bytes(), 0o600).map_err(io)?;
        self.ring.write().unwrap_or_else(|p| p.into_inner()).insert(
            0,
            MasterKey {
                id: id.clone(),
                cipher: cipher.clone(),
            },
        );
        Ok(MasterRotation {
            keys: self,
            path: path.clone(),
            bytes,
            id,
            cipher,
        })
    }
}

/// The rotation lock of a key file (see [`MasterKeys::lock`]); released when dropped.
pub struct RotationLock {
    _file: std::fs::File,
}

/// A master-key replacement in flight (see [`MasterKeys::begin_rotation`]).
pub struct MasterRotation<'a> {
    keys: &'a MasterKeys,
    path: PathBuf,
    bytes: zeroize::Zeroizing<Vec<u8>>,
    id: String,
    cipher: Cipher,
}

impl MasterRotation<'_> {
    /// The new key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The new key.
    pub fn cipher(&self) -> &Cipher {
        &self.cipher
    }

    /// After every data key was re-wrapped under the new key: the key file keeps only it.
    pub fn finish(self) -> Result<String, KeyError> {
        crate::files::write_atomic(&self.path, ring_text(&[&self.bytes]).as_bytes(), 0o600)
            .map_err(|source| KeyError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.keys
            .ring
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k| k.id == self.id);
        Ok(self.id.clone())
    }
}

/// A data key as its row stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    /// Its version: higher is newer; the highest is current.
    pub version: u32,
    /// The id of the master key that wraps it.
    pub master_id: String,
    /// The sealed key bytes.
    pub wrapped: Vec<u8>,
}

impl WrappedKey {
    /// A new random data key of `version`, wrapped with `master`.
    pub fn generate(version: u32, master_id: &str, master: &Cipher) -> Self {
        let (_, bytes) = Cipher::generate();
        Self {
            version,
            master_id: master_id.to_string(),
            wrapped: master.seal(&data_key_aad(version), &bytes),
        }
    }

    /// The same data key wrapped with another master key; `None` when `current` does not
    /// open it.
    pub fn rewrap(&self, current: &Cipher, new_id: &str, new: &Cipher) -> Option<Self> {
        let bytes =
            zeroize::Zeroizing::new(current.open(&data_key_aad(self.version), &self.wrapped)?);
        Some(Self {
            version: self.version,
            master_id: new_id.to_string(),
            wrapped: new.seal(&data_key_aad(self.version), &bytes),
        })
    }
}

/// Data keys unwrapped by this process, by version.
#[derive(Default)]
pub struct DataKeys {
    cache: RwLock<HashMap<u32, Cipher>>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKeys([redacted])")
    }
}

impl DataKeys {
    /// The data key `key`, unwrapping it with `master` the first time. The error explains
    /// what is missing, for [`super::StoreError::WrongKey`].
    pub fn get(&self, master: &MasterKeys, key: &WrappedKey) -> Result<Cipher, String> {
        if let Some(c) = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key.version)
        {
            return Ok(c.clone());
        }
        let Some(wrapper) = master.find(&key.master_id) else {
            return Err(format!(
                "its data key (version {}) is sealed with master key {}, and {} holds {} instead: \
                 use the key file or ${KEY_ENV} this store was created with",
                key.version,
                key.master_id,
                master.source().describe(),
                master.ids().join(", ")
            ));
        };
        let bytes = zeroize::Zeroizing::new(
            wrapper
                .open(&data_key_aad(key.version), &key.wrapped)
                .ok_or_else(|| {
                    format!(
                        "data key version {} does not open with master key {}: the record was altered",
                        key.version, key.master_id
                    )
                })?,
        );
        let cipher = Cipher::new(&bytes)
            .ok_or_else(|| format!("data key version {} has the wrong length", key.version))?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.version, cipher.clone());
        Ok(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_created_once_and_keep_every_key_during_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let source = KeySource::File(dir.path().join("nested/s.key"));
        let a = MasterKeys::load_or_create(&source).unwrap();
        let b = MasterKeys::load_or_create(&source).unwrap();
        assert_eq!(a.ids(), b.ids(), "the second use loads the first key");
        let first = a.ids()[0].clone();
        let data = WrappedKey::generate(1, &a.primary().0, &a.primary().1);

        let lock = a.lock().unwrap().unwrap();
        let rotation = a.begin_rotation(&lock).unwrap();
        let ids = MasterKeys::load(&source).unwrap().unwrap().ids();
        assert_eq!(
            ids,
            [rotation.id().to_string(), first.clone()],
            "both keys while in flight"
        );
        let rewrapped = data
            .rewrap(&a.find(&first).unwrap(), rotation.id(), rotation.cipher())
            .unwrap();
        let new = rotation.finish().unwrap();
        drop(lock);
        assert_eq!(
            MasterKeys::load(&source).unwrap().unwrap().ids(),
            std::slice::from_ref(&new)
        );
        // Another process that still has only the old key reloads the file on demand.
        let keys = DataKeys::default();
        assert!(keys.get(&b, &rewrapped).is_ok());
        assert_eq!(b.ids(), [new]);
        // A key it cannot find is explained, not guessed.
        let stray = WrappedKey::generate(9, "0011223344556677", &Cipher::generate().0);
        let err = keys.get(&b, &stray).unwrap_err();
        assert!(err.contains("0011223344556677"), "{err}");
    }

    #[test]
    fn malformed_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "abc", &STANDARD.encode([0u8; 16]), "# only a comment\n"] {
            let f = dir.path().join("k");
            std::fs::write(&f, bad).unwrap();
            assert!(MasterKeys::load(&KeySource::File(f)).is_err(), "{bad:?}");
        }
    }
}

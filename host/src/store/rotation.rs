//! Key rotation, one algorithm for every backend that keeps data keys in its tables.
//!
//! 1. Under the key file's rotation lock (so one rotation at a time per key file, with the
//!    keyring reloaded), optionally start a master-key replacement: the key file then holds
//!    the new key and the old one.
//! 2. Add a data key one version above the current one; from that commit on, every write
//!    in every process seals under it.
//! 3. Re-seal the secrets still under older versions, a batch per transaction, so other
//!    writers never wait for the whole store.
//! 4. Drop older data keys no secret uses, re-wrap the rest with the new master key, and
//!    only then drop the old master key from the key file.
//!
//! Every step is a transaction of its own, and each row says which data key it needs, so a
//! rotation cut off anywhere leaves a store that opens and reads; running the rotation
//! again finishes the job. Concurrent rotations converge: each re-seals everything below
//! its own version.

use super::crypto::{Cipher, secret_aad};
use super::keys::{MasterKeys, RotationLock, WrappedKey};
use super::{Rotation, StoreError};
use async_trait::async_trait;

/// Secrets re-sealed per transaction.
pub const BATCH: usize = 500;

/// The environment variable holding the new master key when the current one comes from
/// `$TOKENWARDEN_STORE_KEY` (which no process can rewrite).
pub const NEW_KEY_ENV: &str = "TOKENWARDEN_NEW_STORE_KEY";

/// What a backend provides for [`rotate`].
#[async_trait]
pub(crate) trait KeyTable: Send + Sync {
    /// The master keys of this process.
    fn master(&self) -> Result<&MasterKeys, StoreError>;
    /// [`MasterKeys::lock`], off the async threads.
    async fn lock(&self) -> Result<Option<RotationLock>, StoreError>;
    /// Adds the data key one version above the current one, wrapped with `master`.
    async fn add_data_key(
        &self,
        master_id: &str,
        master: &Cipher,
    ) -> Result<WrappedKey, StoreError>;
    /// Re-seals up to `limit` secrets below `new`'s version; returns how many.
    async fn reseal_batch(&self, new: &WrappedKey, limit: usize) -> Result<usize, StoreError>;
    /// Drops unused data keys below `current` and re-wraps the others with `rewrap`.
    async fn finish_keys(
        &self,
        current: u32,
        rewrap: Option<(&str, &Cipher)>,
    ) -> Result<(), StoreError>;
}

/// The value sealed under `old` for `name`, sealed again under `new`.
pub(crate) fn reseal(
    old: Cipher,
    new: &Cipher,
    name: &str,
    sealed: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let plain = zeroize::Zeroizing::new(old.open(&secret_aad(name), sealed).ok_or_else(|| {
        StoreError::Decrypt {
            name: name.to_string(),
        }
    })?);
    Ok(new.seal(&secret_aad(name), &plain))
}

/// `key` wrapped with the master key `id` instead of its own.
pub(crate) fn rewrap(
    master: &MasterKeys,
    key: &WrappedKey,
    id: &str,
    cipher: &Cipher,
    store: &str,
) -> Result<WrappedKey, StoreError> {
    let wrong = |detail: String| StoreError::WrongKey {
        store: store.to_string(),
        detail,
    };
    let old = master.find(&key.master_id).ok_or_else(|| {
        wrong(format!(
            "data key version {} is sealed with master key {}, which this process does not have",
            key.version, key.master_id
        ))
    })?;
    key.rewrap(&old, id, cipher).ok_or_else(|| {
        wrong(format!(
            "data key version {} does not open with master key {}",
            key.version, key.master_id
        ))
    })
}

/// Rotates the data key, and with `master_too` the master key (see the module comment).
pub(crate) async fn rotate(t: &impl KeyTable, master_too: bool) -> Result<Rotation, StoreError> {
    let lock = t.lock().await?;
    let master = t.master()?;
    let (file_rotation, new_master) = match (master_too, &lock) {
        (false, _) => (None, None),
        (true, Some(lock)) => {
            let r = master.begin_rotation(lock)?;
            let new = (r.id().to_string(), r.cipher().clone());
            (Some(r), Some(new))
        }
        (true, None) => (None, Some(env_master()?)),
    };
    let (id, cipher) = new_master.clone().unwrap_or_else(|| master.primary());
    let new = t.add_data_key(&id, &cipher).await?;
    let mut secrets = 0;
    loop {
        let n = t.reseal_batch(&new, BATCH).await?;
        secrets += n;
        if n == 0 {
            break;
        }
    }
    let rewrap = new_master.as_ref().map(|(id, c)| (id.as_str(), c));
    t.finish_keys(new.version, rewrap).await?;
    let master_key_id = match file_rotation {
        Some(r) => Some(r.finish()?),
        None => new_master.map(|(id, _)| id),
    };
    drop(lock);
    Ok(Rotation {
        data_key_version: new.version,
        secrets,
        master_key_id,
    })
}

/// The new master key from [`NEW_KEY_ENV`].
fn env_master() -> Result<(String, Cipher), StoreError> {
    let missing = || {
        StoreError::Invalid(format!(
            "the master key comes from ${}: put the new key (base64 of 32 random bytes, e.g. `head -c32 /dev/urandom | base64`) in ${NEW_KEY_ENV}, rotate, then give every process the new key in ${}",
            super::KEY_ENV,
            super::KEY_ENV
        ))
    };
    let text = std::env::var(NEW_KEY_ENV).map_err(|_| missing())?;
    Ok(MasterKeys::parse_one(&text, &format!("${NEW_KEY_ENV}"))?)
}

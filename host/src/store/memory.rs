//! A process-local store: for embedders who keep secrets elsewhere and hand them over per
//! run, for tests and for benchmarks. Not durable.

use super::{SecretMeta, SecretStore, StoreError, StoredSecret, check_entry, unix_now};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Secrets in memory, with the same rules as the durable store (names, sizes, metadata).
#[derive(Default)]
pub struct MemoryStore {
    secrets: Mutex<BTreeMap<String, (SecretString, SecretMeta)>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl SecretStore for MemoryStore {
    fn get(&self, name: &str) -> Result<Option<StoredSecret>, StoreError> {
        let secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        Ok(secrets.get(name).map(|(value, meta)| StoredSecret {
            value: value.clone(),
            meta: meta.clone(),
        }))
    }

    fn set(
        &self,
        name: &str,
        value: &SecretString,
        expires_at: Option<u64>,
    ) -> Result<(), StoreError> {
        check_entry(name, value)?;
        let meta = SecretMeta {
            name: name.to_string(),
            updated_at: unix_now(),
            expires_at,
        };
        self.secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (value.clone(), meta));
        Ok(())
    }

    fn list(&self) -> Result<Vec<SecretMeta>, StoreError> {
        let secrets = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        Ok(secrets.values().map(|(_, meta)| meta.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MAX_VALUE_BYTES;
    use secrecy::ExposeSecret;

    #[test]
    fn round_trip_and_rules() {
        let store = MemoryStore::default();
        let v = |t: &str| SecretString::from(t.to_string());
        store.set("b", &v("2"), Some(5)).unwrap();
        store.set("a", &v("1"), None).unwrap();
        assert_eq!(store.get("b").unwrap().unwrap().value.expose_secret(), "2");
        assert_eq!(store.get("b").unwrap().unwrap().meta.expires_at, Some(5));
        let names: Vec<_> = store.list().unwrap().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(store.set("", &v("x"), None).is_err());
        assert!(
            store
                .set("big", &v(&"x".repeat(MAX_VALUE_BYTES + 1)), None)
                .is_err()
        );
        assert!(!format!("{store:?}").contains('2'));
    }
}

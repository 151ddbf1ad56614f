//! A disk cache of compiled components, so a restart does not pay Cranelift again.
//!
//! An entry is named `<engine>-<component>.cwasm`: the first part hashes wasmtime's
//! `precompile_compatibility_hash` (version, target, settings), the second the component's
//! bytes. Its content is the SHA-256 of the payload followed by the payload
//! (`Component::serialize`). Before use an entry must be a regular file (not a symlink)
//! owned by this user, readable by nobody else, in a folder only this user can enter, and
//! its digest must match: loading compiled code is trusted like loading a library, so a
//! file anyone else could have written, or a torn one, is rebuilt instead. When an entry is
//! written, only the newest [`MAX_ENTRIES`] are kept: entries of an old wasmtime go, while
//! the engines in use side by side (with and without WASI 0.3) keep theirs.

use crate::text::hex;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Entries kept: two engines (WASI 0.3 off and on) times a few components, with room for
/// custom plugins.
pub const MAX_ENTRIES: usize = 8;

/// How a component was obtained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a valid cache entry.
    Hit,
    /// Compiled; the entry was missing.
    Compiled,
    /// Compiled; the entry was there but refused (the reason).
    Rebuilt(String),
}

/// The cache folder (created 0700).
#[derive(Clone, Debug)]
pub struct CompileCache {
    dir: PathBuf,
}

/// Feeds `Hash` output into SHA-256, for a stable engine fingerprint.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the digest is used")
    }
}

impl CompileCache {
    /// A cache in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn engine_tag(engine: &Engine) -> String {
        let mut h = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        hex(&h.0.finalize()[..8])
    }

    /// The entry file for `wasm` under `engine`.
    pub fn entry(&self, engine: &Engine, wasm: &[u8]) -> PathBuf {
        let component = hex(&Sha256::digest(wasm)[..16]);
        self.dir
            .join(format!("{}-{component}.cwasm", Self::engine_tag(engine)))
    }

    /// The compiled `wasm`: from the cache when a valid entry exists, else compiled and
    /// stored. A cache that cannot be written costs the next start a compile, nothing more.
    pub fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let entry = self.entry(engine, wasm);
        let refused = match self.read_valid(&entry) {
            Ok(Some(payload)) => {
                // SAFETY: `payload` is what `Component::serialize` wrote for an engine with the
                // same compatibility hash (it is in the file name, and wasmtime checks its own
                // header again); the file passed `read_valid`: owned by this user, mode 0600,
                // in a 0700 folder, not a symlink, digest intact.
                #[allow(unsafe_code)]
                let loaded = unsafe { Component::deserialize(engine, &payload) };
                match loaded {
                    Ok(component) => return Ok((component, CacheOutcome::Hit)),
                    Err(e) => Some(format!("wasmtime refused it: {e}")),
                }
            }
            Ok(None) => None,
            Err(reason) => Some(reason),
        };
        let component = Component::new(engine, wasm)?;
        if let Err(e) = self.store(&entry, &component) {
            tracing::warn!(cache = %self.dir.display(), error = %e, "cannot write the compiled-component cache");
        }
        let outcome = match refused {
            Some(reason) => {
                tracing::warn!(entry = %entry.display(), %reason, "compiled-component cache entry refused; rebuilt it");
                CacheOutcome::Rebuilt(reason)
            }
            None => CacheOutcome::Compiled,
        };
        Ok((component, outcome))
    }

    /// The entry's payload; `Ok(None)` when there is no entry, `Err(reason)` when there is
    /// one that must not be used.
    fn read_valid(&self, entry: &Path) -> Result<Option<Vec<u8>>, String> {
        let dir = match std::fs::symlink_metadata(&self.dir) {
            Ok(m) => m,
            Err(_) => return Ok(None),
        };
        let me = dir.uid();
        if !dir.is_dir() || dir.mode() & 0o077 != 0 {
            return Err(format!(
                "{} is not a private folder (0700)",
                self.dir.display()
            ));
        }
        let meta = match std::fs::symlink_metadata(entry) {
            Ok(m) => m,
            Err(_) => return Ok(None),
        };
        if !meta.is_file() || meta.uid() != me || meta.mode() & 0o077 != 0 {
            return Err("not a private regular file owned by the cache's owner".into());
        }
        let bytes = std::fs::read(entry).map_err(|e| e.to_string())?;
        if bytes.len() < 32 || Sha256::digest(&bytes[32..])[..] != bytes[..32] {
            return Err("digest mismatch (torn or altered)".into());
        }
        Ok(Some(bytes[32..].to_vec()))
    }

    fn store(&self, entry: &Path, component: &Component) -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        let payload = component.serialize().map_err(std::io::Error::other)?;
        let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&Sha256::digest(&payload))?;
        file.write_all(&payload)?;
        file.sync_all()?;
        drop(file);
        // Atomic: readers see the old entry, no entry, or the whole new one.
        std::fs::rename(&tmp, entry)?;
        // The newest entries stay; an old wasmtime's (which can never load again) and those
        // no engine wrote for a long time go.
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&self.dir)?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (_, old) in entries.iter().skip(MAX_ENTRIES) {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BUILTIN_COMPONENT;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        Engine::new(&config).unwrap()
    }

    #[test]
    fn miss_then_hit_and_refusals_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(dir.path().join("compiled"));
        let engine = engine();
        let (_, first) = cache.load(&engine, BUILTIN_COMPONENT).unwrap();
        assert_eq!(first, CacheOutcome::Compiled);
        let entry = cache.entry(&engine, BUILTIN_COMPONENT);
        assert_eq!(std::fs::metadata(&entry).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(cache.dir()).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(
            cache.load(&engine, BUILTIN_COMPONENT).unwrap().1,
            CacheOutcome::Hit
        );

        // A flipped byte in the payload: refused, rebuilt, then a hit again.
        let mut bytes = std::fs::read(&entry).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&entry, &bytes).unwrap();
        let (_, outcome) = cache.load(&engine, BUILTIN_COMPONENT).unwrap();
        assert!(
            matches!(outcome, CacheOutcome::Rebuilt(ref r) if r.contains("digest")),
            "{outcome:?}"
        );
        assert_eq!(
            cache.load(&engine, BUILTIN_COMPONENT).unwrap().1,
            CacheOutcome::Hit
        );

        // Readable by others: refused.
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            cache.load(&engine, BUILTIN_COMPONENT).unwrap().1,
            CacheOutcome::Rebuilt(_)
        ));

        // A symlink in place of the entry: refused.
        let elsewhere = dir.path().join("elsewhere.cwasm");
        std::fs::rename(&entry, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &entry).unwrap();
        assert!(matches!(
            cache.load(&engine, BUILTIN_COMPONENT).unwrap().1,
            CacheOutcome::Rebuilt(_)
        ));
        assert!(
            std::fs::symlink_metadata(&entry).unwrap().is_file(),
            "replaced by a real entry"
        );
    }

    #[test]
    fn only_the_newest_entries_are_kept_whatever_their_engine() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(dir.path());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let hour = std::time::Duration::from_secs(3600);
        let now = std::time::SystemTime::now();
        // Another engine's recent entry (WASI 0.3 on, say) and older ones of old builds.
        let entry = |name: &str, age: u32| {
            let path = dir.path().join(name);
            let f = std::fs::File::create(&path).unwrap();
            f.set_modified(now - hour * age).unwrap();
            path
        };
        let recent = entry("1111111111111111-abc.cwasm", 1);
        let old: Vec<_> = (0..MAX_ENTRIES)
            .map(|i| entry(&format!("0000000000000000-{i}.cwasm"), 10 + i as u32))
            .collect();
        cache.load(&engine(), BUILTIN_COMPONENT).unwrap();
        assert!(recent.exists(), "a recent entry of another engine is kept");
        let kept = old.iter().filter(|p| p.exists()).count();
        assert_eq!(
            kept,
            MAX_ENTRIES - 2,
            "the new entry and the recent one, then the newest old"
        );
        assert!(!old[MAX_ENTRIES - 1].exists() && old[0].exists());
    }
}

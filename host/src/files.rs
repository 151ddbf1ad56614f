//! Files that must never be seen half-written or by the wrong user: key files, token sink
//! files, the store's folder.
//!
//! Writes go to a temporary file in the same folder (created with the final mode, so never
//! readable by others even briefly), are flushed to disk, then renamed over the target, and
//! the folder is flushed too: a reader, or a crash, sees the old file or the new one.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` and its missing parents with `mode` (existing folders are left as they are).
pub fn create_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
}

fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes a complete temporary file beside `path` with `mode` (and `owner`/`group` when
/// given, set before a byte is written), flushed to disk.
fn staged(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
) -> std::io::Result<tempfile::NamedTempFile> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tokenwarden-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(folder_of(path))?;
    // The builder's mode is filtered by the umask; the final mode must be exact.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    if owner.is_some() || group.is_some() {
        std::os::unix::fs::fchown(tmp.as_file(), owner, group)?;
        // chown clears set-id bits; the mode is set again so it is exact.
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    Ok(tmp)
}

fn sync_folder(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(folder_of(path))?.sync_all()
}

/// Replaces `path` with `bytes` atomically (temporary file, fsync, rename, folder fsync).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomic_owned(path, bytes, mode, None, None)
}

/// [`write_atomic`], with the file's owner and group set (`None` keeps the writer's).
pub fn write_atomic_owned(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
) -> std::io::Result<()> {
    let tmp = staged(path, bytes, mode, owner, group)?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_folder(path)
}

/// Creates `path` with `bytes` only if it does not exist, atomically: the complete file is
/// linked into place, so a concurrent creator either wins with a whole file or finds one.
/// Returns `false` when the file already existed (and leaves it untouched).
pub fn create_exclusive(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<bool> {
    let tmp = staged(path, bytes, mode, None, None)?;
    match std::fs::hard_link(tmp.path(), path) {
        Ok(()) => {
            sync_folder(path)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn atomic_and_exclusive_writes_keep_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        assert!(create_exclusive(&f, b"one", 0o600).unwrap());
        assert!(!create_exclusive(&f, b"two", 0o600).unwrap());
        assert_eq!(std::fs::read(&f).unwrap(), b"one");
        write_atomic(&f, b"three", 0o640).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"three");
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o640);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left behind");
    }
}

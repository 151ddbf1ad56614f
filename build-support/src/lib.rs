//! Builds a workspace crate for `wasm32-wasip2` from a build script.
//!
//! The nested cargo gets its own target directory: sharing the outer one deadlocks under
//! `--release`, because the outer cargo holds its lock while build scripts run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest target.
pub const TARGET: &str = "wasm32-wasip2";
/// The size profile defined in the workspace `Cargo.toml`.
pub const PROFILE: &str = "wasm-release";

/// The workspace root, from a member crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run from a build script"));
    manifest
        .ancestors()
        .find(|p| p.join("Cargo.lock").exists() || p.join("rust-toolchain.toml").exists())
        .map(Path::to_path_buf)
        .unwrap_or(manifest)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Settings meant for the outer build (host flags, clippy's wrapper, a forced target)
    // must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Makes sure the `wasm32-wasip2` standard library is installed, installing it with rustup
/// when possible, else stopping the build with the exact command to run.
pub fn ensure_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if libdir
        .as_deref()
        .is_some_and(|d| d.join("libstd.rlib").exists() || has_std(d))
    {
        return;
    }
    println!("cargo::warning=installing the {TARGET} target with rustup");
    let ok = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        panic!(
            "the {TARGET} Rust target is missing and `rustup target add {TARGET}` failed; \
             run `rustup target add {TARGET}` and build again"
        );
    }
}

fn has_std(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
    })
}

/// Builds `package` (a workspace member) with the size profile and returns the component's
/// path. Tells cargo to rerun when any of `watch` (paths relative to the workspace root)
/// changes.
pub fn build_component(package: &str, watch: &[&str]) -> PathBuf {
    build_component_with(package, &[], "plugin-wasm", watch)
}

/// Like [`build_component`], with cargo `features` and in its own target directory
/// `target/{subdir}`: the same package built with other features yields a file of the same
/// name, so each build keeps its own.
pub fn build_component_with(
    package: &str,
    features: &[&str],
    subdir: &str,
    watch: &[&str],
) -> PathBuf {
    let root = workspace_root();
    for path in watch.iter().chain(&["Cargo.toml", "Cargo.lock"]) {
        println!("cargo::rerun-if-changed={}", root.join(path).display());
    }
    ensure_target();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join(subdir);
    let mut cmd = cargo();
    cmd.current_dir(&root).args([
        "build",
        "--locked",
        "-p",
        package,
        "--target",
        TARGET,
        "--profile",
        PROFILE,
    ]);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    let status = cmd
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .unwrap_or_else(|e| panic!("could not start cargo to build {package}: {e}"));
    assert!(
        status.success(),
        "building the {package} component for {TARGET} failed"
    );
    let file = format!("{}.wasm", package.replace('-', "_"));
    let built = target_dir.join(TARGET).join(PROFILE).join(file);
    let bytes = std::fs::read(&built)
        .unwrap_or_else(|e| panic!("{} was not produced: {e}", built.display()));
    let stripped = strip_component_names(&bytes)
        .unwrap_or_else(|| panic!("{} is not a well-formed component", built.display()));
    // Beside cargo's output rather than over it, so cargo's own record of it stays true.
    let path = built.with_extension("stripped.wasm");
    if std::fs::read(&path).ok().as_deref() != Some(stripped.as_slice()) {
        std::fs::write(&path, &stripped)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
    path
}

/// `component` without its top-level `component-name` custom section: names of the
/// component's imports, instances and functions for debuggers, 8 KB of a 150 KB budget
/// that nothing at run time reads. (`strip = true` strips the core module's names;
/// wasm-component-ld 0.5 has no flag for the component's.) The same as `wasm-tools strip
/// --all` for that one section, written here for a scan of the top-level sections rather
/// than a dependency. `None` when the bytes are not a component.
pub fn strip_component_names(component: &[u8]) -> Option<Vec<u8>> {
    const HEADER: usize = 8;
    // `\0asm`, then the component-model version and layer (0x0d 0x00, 0x01 0x00).
    if component.get(..HEADER)? != b"\0asm\x0d\0\x01\0" {
        return None;
    }
    let mut out = component[..HEADER].to_vec();
    let mut at = HEADER;
    while at < component.len() {
        let start = at;
        let id = component[at];
        let (size, after) = leb128(component, at + 1)?;
        let end = after.checked_add(size)?;
        let payload = component.get(after..end)?;
        let is_names = id == 0 && {
            let (len, name_at) = leb128(payload, 0)?;
            payload.get(name_at..name_at.checked_add(len)?) == Some(b"component-name".as_slice())
        };
        if !is_names {
            out.extend_from_slice(&component[start..end]);
        }
        at = end;
    }
    Some(out)
}

/// An unsigned LEB128 (a section size) at `at`: its value and where it ends.
fn leb128(bytes: &[u8], mut at: usize) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for shift in (0..35).step_by(7) {
        let b = *bytes.get(at)?;
        at += 1;
        value |= usize::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some((value, at));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::strip_component_names;

    const HEADER: &[u8] = b"\0asm\x0d\0\x01\0";

    fn custom(name: &str, data: &[u8]) -> Vec<u8> {
        let mut payload = vec![name.len() as u8];
        payload.extend_from_slice(name.as_bytes());
        payload.extend_from_slice(data);
        let mut s = vec![0, payload.len() as u8];
        s.extend(payload);
        s
    }

    #[test]
    fn only_the_component_name_section_goes() {
        let other = custom("producers", b"xyz");
        let kept_section = [7u8, 2, 0xaa, 0xbb];
        let mut input = HEADER.to_vec();
        input.extend(&kept_section);
        input.extend(custom("component-name", &[1; 100]));
        input.extend(&other);
        let mut expected = HEADER.to_vec();
        expected.extend(&kept_section);
        expected.extend(&other);
        assert_eq!(strip_component_names(&input).unwrap(), expected);
        // Idempotent, and a component without one is unchanged.
        assert_eq!(strip_component_names(&expected).unwrap(), expected);
    }

    #[test]
    fn a_core_module_or_a_truncated_section_is_refused() {
        assert!(strip_component_names(b"\0asm\x01\0\0\0").is_none());
        let mut cut = HEADER.to_vec();
        cut.extend([7u8, 9, 1]);
        assert!(strip_component_names(&cut).is_none());
        assert!(strip_component_names(b"").is_none());
    }
}

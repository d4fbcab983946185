//! Where the release binaries under test live. The tests never build them;
//! a missing binary is an error telling the reader which command builds it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The command that builds every binary the tests run.
pub const BUILD_HINT: &str = "cargo build --release -p gateway -p clients";

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The workspace target directory: `CARGO_TARGET_DIR` when set (at run time,
/// else at build time; a relative one is taken from the workspace root), else
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let configured = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from));
    match configured {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The path of release binary `name`, or an error saying how to build it.
pub fn release_binary(name: &str) -> Result<PathBuf> {
    let path = target_dir().join("release").join(name);
    if !path.is_file() {
        bail!(
            "{} not found: run `{BUILD_HINT}` first (the tests do not build it)",
            path.display()
        );
    }
    Ok(path)
}

/// The gateway server binary.
pub fn gateway() -> Result<PathBuf> {
    release_binary("gateway")
}

/// The `gateway-cli` client binary (subscribe, publish, watch).
pub fn gateway_cli() -> Result<PathBuf> {
    release_binary("gateway-cli")
}

//! Output files (`--logits-out`, `--trace`) are checked before any work starts, so a typo in a
//! path costs milliseconds, not a whole compile and generation.

use anyhow::{bail, Context};
use std::path::Path;

/// Checks that `path`, given to `flag`, can be written: its folder exists, it is not a folder,
/// and the folder (or the existing file) accepts writes. Creates and removes a probe file in the
/// folder when `path` does not exist yet; never truncates an existing file.
pub fn check_writable(flag: &str, path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!("{flag} {}: is a folder, not a file", path.display());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "{flag} {}: the folder {} does not exist",
            path.display(),
            parent.display()
        );
    }
    if path.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("{flag} {}: cannot write", path.display()))?;
    } else {
        tempfile::Builder::new()
            .prefix(".kiln-write-probe")
            .tempfile_in(parent)
            .with_context(|| {
                format!(
                    "{flag} {}: cannot create files in {}",
                    path.display(),
                    parent.display()
                )
            })?;
    }
    Ok(())
}

//! Output files (`--logits-out`, `--trace`) are checked before any work starts, so a typo in a
//! path costs milliseconds, not a whole compile and generation.

use anyhow::{bail, Context};
use std::path::Path;

/// Fails when two output flags name the same file (the second write would replace the
/// first): compared as written and, for files that exist, by identity (a link, `./x` and `x`).
pub fn check_distinct(outputs: &[(&str, Option<&Path>)]) -> anyhow::Result<()> {
    let given: Vec<(&str, &Path)> = outputs
        .iter()
        .filter_map(|(f, p)| p.map(|p| (*f, p)))
        .collect();
    for (i, (fa, a)) in given.iter().enumerate() {
        for (fb, b) in &given[i + 1..] {
            if same_file(a, b) {
                bail!(
                    "{fa} {} and {fb} {} are the same file: give each output its own",
                    a.display(),
                    b.display()
                );
            }
        }
    }
    Ok(())
}

/// Whether two output paths are one file: the same file once it exists (device and inode),
/// else the same folder (resolved) and the same name.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return x.dev() == y.dev() && x.ino() == y.ino();
    }
    let folder = |p: &Path| {
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        parent.canonicalize().ok()
    };
    a.file_name() == b.file_name() && folder(a).is_some() && folder(a) == folder(b)
}

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

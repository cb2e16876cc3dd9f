//! The local kernel cache for commands that compile (`$KILN_CACHE_DIR`, else `~/.cache/kiln`),
//! and the wgpu driver's shader cache inside it; `--no-cache` bypasses both. The remote tier
//! behind it is `remote.rs`.

use std::path::PathBuf;

/// The kernel cache unless `--no-cache`; an unusable cache dir is a warning, not an error.
pub fn open(no_cache: bool) -> Option<kiln_compile::KernelCache> {
    if no_cache {
        return None;
    }
    match kiln_compile::KernelCache::open(kiln_compile::KernelCache::default_dir()) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("warning: {e}; compiling without the kernel cache");
            None
        }
    }
}

/// The directory of the wgpu driver's shader cache: inside kiln's kernel cache, unless
/// `--no-cache` (then the driver's default).
pub fn driver_dir(no_cache: bool) -> Option<PathBuf> {
    if no_cache {
        return None;
    }
    kiln_compile::KernelCache::open(kiln_compile::KernelCache::default_dir())
        .ok()
        .map(|c| c.driver_dir("wgpu"))
}

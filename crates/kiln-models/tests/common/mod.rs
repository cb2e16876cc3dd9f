//! Shared by the model tests: where the reference fixtures are.

use std::path::PathBuf;

/// `$KILN_FIXTURES`, else `../shared/fixtures` beside the repository; fails loudly if missing.
pub fn fixtures() -> PathBuf {
    let p = std::env::var_os("KILN_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    assert!(
        p.join("README.md").exists(),
        "reference fixtures not found at {} (set KILN_FIXTURES)",
        p.display()
    );
    p
}

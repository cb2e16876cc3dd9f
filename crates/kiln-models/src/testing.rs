//! For tests of kiln and of programs built on it: where the reference fixtures are.

use std::path::PathBuf;

/// The reference fixtures that come with the repository (`tests/fixtures`: tiny Qwen
/// checkpoints with what `transformers` computes for them, the tokenizer's reference
/// encodings), or `$KILN_FIXTURES`. Panics with the path tried when they are missing.
pub fn fixtures() -> PathBuf {
    let p = std::env::var_os("KILN_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures"));
    assert!(
        p.join("README.md").exists(),
        "reference fixtures not found at {} (set KILN_FIXTURES)",
        p.display()
    );
    p
}

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

/// The Qwen3 `tokenizer.json` cut down to its first `vocab` ids and the merges among them
/// (same normalizer, pre-tokenizer, decoder and special tokens): a small, real tokenizer file
/// for tests and fuzzing that must load many variants of it quickly.
pub fn small_qwen_tokenizer_json(vocab: u32) -> Vec<u8> {
    use std::io::Read;
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(crate::tokenizer::EMBEDDED_QWEN)
        .read_to_end(&mut text)
        .expect("the embedded tokenizer decompresses");
    let mut v: serde_json::Value = serde_json::from_slice(&text).expect("embedded tokenizer JSON");
    let model = &mut v["model"];
    let kept: std::collections::HashSet<String> = model["vocab"]
        .as_object()
        .expect("BPE vocab")
        .iter()
        .filter(|(_, id)| id.as_u64().is_some_and(|id| id < vocab as u64))
        .map(|(t, _)| t.clone())
        .collect();
    let vocab_map: serde_json::Map<String, serde_json::Value> = model["vocab"]
        .as_object()
        .expect("BPE vocab")
        .iter()
        .filter(|(t, _)| kept.contains(*t))
        .map(|(t, id)| (t.clone(), id.clone()))
        .collect();
    let merges: Vec<serde_json::Value> = model["merges"]
        .as_array()
        .expect("BPE merges")
        .iter()
        .filter(|m| {
            let parts: Vec<&str> = m
                .as_array()
                .map(|p| p.iter().filter_map(|s| s.as_str()).collect())
                .unwrap_or_default();
            parts.len() == 2
                && kept.contains(parts[0])
                && kept.contains(parts[1])
                && kept.contains(&format!("{}{}", parts[0], parts[1]))
        })
        .cloned()
        .collect();
    model["vocab"] = vocab_map.into();
    model["merges"] = merges.into();
    serde_json::to_vec(&v).expect("serializes")
}

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

/// Checks another backend's greedy generation against the CPU's, for the same prompt: both sum
/// in f32 in different orders (and a GPU's exp2/sin are not libm's), so logits differ in the
/// last bits. Tokens must match until a step where the CPU's top-2 logits are that close (a
/// near tie); after a divergence the two continue from different prefixes and are not
/// compared. Every compared step's logits must agree within 1e-3 of the largest logit.
/// `other` names the backend in the messages.
pub fn assert_greedy_agrees(cpu: &crate::Generation, got: &crate::Generation, other: &str) {
    let mut worst = 0.0f32;
    for k in 0..cpu.generated_ids.len().min(got.generated_ids.len()) {
        let d = cpu.step_logits[k]
            .iter()
            .zip(&got.step_logits[k])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        worst = worst.max(d);
        if cpu.generated_ids[k] != got.generated_ids[k] {
            let mut row = cpu.step_logits[k].clone();
            row.sort_by(|a, b| b.total_cmp(a));
            let margin = row[0] - row[1];
            eprintln!(
                "token {k} differs (cpu {} vs {other} {}): cpu top-2 margin {margin}, max logit diff {d}",
                cpu.generated_ids[k], got.generated_ids[k]
            );
            assert!(
                margin <= 2.0 * d,
                "token {k} differs although the cpu's top-2 margin {margin} exceeds twice the logit difference {d}"
            );
            break;
        }
    }
    let scale = cpu.step_logits[0]
        .iter()
        .fold(1.0f32, |m, x| m.max(x.abs()));
    eprintln!("cpu vs {other}: max logit difference {worst} (largest logit {scale})");
    assert!(
        worst <= 1e-3 * scale,
        "cpu and {other} logits differ by {worst} (largest logit {scale})"
    );
}

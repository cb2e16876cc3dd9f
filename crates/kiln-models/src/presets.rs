//! Built-in presets: the real Qwen architectures, for compiling and running with seeded random
//! weights on a machine with no download.

use crate::config::{Arch, QwenConfig};

/// (name, arch, vocab, hidden, intermediate, layers, heads, kv heads, head_dim, tied)
type Row = (
    &'static str,
    Arch,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    bool,
);

const PRESETS: &[Row] = &[
    (
        "qwen3-0.6b",
        Arch::Qwen3,
        151936,
        1024,
        3072,
        28,
        16,
        8,
        128,
        true,
    ),
    (
        "qwen3-1.7b",
        Arch::Qwen3,
        151936,
        2048,
        6144,
        28,
        16,
        8,
        128,
        true,
    ),
    (
        "qwen3-4b",
        Arch::Qwen3,
        151936,
        2560,
        9728,
        36,
        32,
        8,
        128,
        true,
    ),
    (
        "qwen3-8b",
        Arch::Qwen3,
        151936,
        4096,
        12288,
        36,
        32,
        8,
        128,
        false,
    ),
    (
        "qwen2.5-0.5b",
        Arch::Qwen2,
        151936,
        896,
        4864,
        24,
        14,
        2,
        64,
        true,
    ),
    (
        "qwen2.5-1.5b",
        Arch::Qwen2,
        151936,
        1536,
        8960,
        28,
        12,
        2,
        128,
        true,
    ),
    (
        "qwen2.5-7b",
        Arch::Qwen2,
        152064,
        3584,
        18944,
        28,
        28,
        4,
        128,
        false,
    ),
];

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.0).collect()
}

pub fn preset(name: &str) -> Option<QwenConfig> {
    let &(_, arch, vocab, hidden, inter, layers, heads, kv, head_dim, tied) =
        PRESETS.iter().find(|p| p.0 == name)?;
    Some(QwenConfig {
        arch,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        tie_word_embeddings: tied,
        max_position_embeddings: 32768,
        attention_bias: arch == Arch::Qwen2,
        bos_token_id: Some(151643),
        eos_token_ids: vec![151645, 151643],
        // Qwen checkpoints are published in bf16.
        weight_dtype: crate::model::WeightDtype::BF16,
        file_quant: Default::default(),
    })
}

//! Writes the starting corpus of every fuzz target into `<out>/<target>/`, from kiln's real
//! fixtures: `cargo run --manifest-path fuzz/Cargo.toml -p kiln-fuzz-seeds -- fuzz/corpus`.

use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus folder");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: kiln-fuzz-seeds OUT_DIR"),
    );
    let fx = kiln_models::testing::fixtures();
    let read = |p: &str| std::fs::read(fx.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));

    // Safetensors: the last (smallest) shard, a file of one tensor of each dtype kiln reads,
    // and the whole tiny-qwen3 checkpoint.
    let st = out.join("safetensors_header");
    write(
        &st,
        "shard3",
        &read("tiny-qwen3-sharded/model-00003-of-00003.safetensors"),
    );
    write(&st, "tiny-qwen3", &read("tiny-qwen3/model.safetensors"));
    let mut small = Vec::new();
    let header = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},"c":{"dtype":"F16","shape":[1],"data_offsets":[22,24]}}"#;
    small.extend_from_slice(&(header.len() as u64).to_le_bytes());
    small.extend_from_slice(header.as_bytes());
    small.extend((0..24u8).map(|i| i.wrapping_mul(37)));
    write(&st, "three-dtypes", &small);

    // Shard index: the real one, and one that points outside the folder.
    let ix = out.join("shard_index");
    let index = read("tiny-qwen3-sharded/model.safetensors.index.json");
    write(&ix, "real", &index);
    let outside = String::from_utf8(index.clone())
        .unwrap()
        .replace("model-00003-of-00003.safetensors", "../outside.safetensors");
    write(&ix, "outside", outside.as_bytes());

    // config.json: the fixtures' and the published Qwen layouts' spellings.
    let cj = out.join("config_json");
    write(&cj, "tiny-qwen3", &read("tiny-qwen3/config.json"));
    write(&cj, "tiny-qwen3-bf16", &read("tiny-qwen3-bf16/config.json"));
    let mut v: serde_json::Value = serde_json::from_slice(&read("tiny-qwen3/config.json")).unwrap();
    v["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
    v["model_type"] = "qwen2".into();
    v["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0});
    write(&cj, "qwen2-yarn", &serde_json::to_vec_pretty(&v).unwrap());

    // Cache entries: [key length][key][entry] (see fuzz_targets/cache_entry.rs).
    let ce = out.join("cache_entry");
    let key = "3f9a0c1d2e4b5a6978877665544332211ffeeddccbbaa00998877665544332211";
    let payload: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let entry =
        kiln_compile::cache::encode("cpu", key, &["kiln_matmul_1", "kiln_rms_2"], &payload, 42);
    let mut seed = vec![key.len() as u8];
    seed.extend_from_slice(key.as_bytes());
    seed.extend_from_slice(&entry);
    write(&ce, "valid", &seed);

    // tokenizer.json: the Qwen tokenizer cut to 300 and 1000 tokens (the full one is 11 MB).
    let tk = out.join("tokenizer_file");
    write(
        &tk,
        "qwen-300",
        &kiln_models::testing::small_qwen_tokenizer_json(300),
    );
    write(
        &tk,
        "qwen-1000",
        &kiln_models::testing::small_qwen_tokenizer_json(1000),
    );
    // GGUF: fixture files (Qwen3 with a mix of 32-value block types, Qwen2 with biases) and a
    // small file with a tokenizer.
    let gg = out.join("gguf_header");
    let gf = kiln_models::testing::gguf_fixtures();
    for f in [
        "tiny-qwen3/tiny-qwen3-Q4_K_M.gguf",
        "tiny-qwen2/tiny-qwen2-Q8_0.gguf",
    ] {
        let bytes = std::fs::read(gf.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        write(&gg, f.rsplit('/').next().unwrap(), &bytes);
    }
    let small = kiln_models::testing::GgufBuilder::default()
        .str("general.architecture", "qwen2")
        .u32("qwen2.block_count", 1)
        .u32("qwen2.embedding_length", 8)
        .u32("qwen2.feed_forward_length", 32)
        .u32("qwen2.attention.head_count", 2)
        .str("tokenizer.ggml.model", "gpt2")
        .str("tokenizer.ggml.pre", "qwen2")
        .strs("tokenizer.ggml.tokens", &["a", "b", "ab"])
        .i32s("tokenizer.ggml.token_type", &[1, 1, 3])
        .strs("tokenizer.ggml.merges", &["a b"])
        .f32_tensor("token_embd.weight", &[3, 8], &[0.5; 24])
        .tensor("blk.0.attn_q.weight", &[32, 2], 8, vec![7; 68])
        .build();
    write(&gg, "small-qwen2", &small);
    eprintln!("seeds written to {}", out.display());
}

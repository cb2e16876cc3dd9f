//! Any bytes as `model.safetensors.index.json`, beside the real shards of tiny-qwen3-sharded
//! (and a file outside the model folder that a hostile index may try to reach).
#![no_main]
mod common;

use libfuzzer_sys::fuzz_target;

fn model_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let root = common::scratch().join("index");
        let dir = root.join("model");
        std::fs::create_dir_all(&dir).unwrap();
        let src = common::fixtures().join("tiny-qwen3-sharded");
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "safetensors") {
                std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
            }
        }
        std::fs::copy(
            src.join("model-00003-of-00003.safetensors"),
            root.join("outside.safetensors"),
        )
        .unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = model_dir();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kiln_models::weights::parse_index(text);
    }
    std::fs::write(dir.join("model.safetensors.index.json"), data).unwrap();
    common::exercise_checkpoint(dir);
});

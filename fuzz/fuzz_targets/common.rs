//! Shared by the fuzz targets: a scratch folder per process and the reference fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A folder of this fuzzing process (fuzz inputs are written there as the files kiln reads).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("kiln-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

pub fn fixtures() -> PathBuf {
    kiln_models::testing::fixtures()
}

/// The tiny-qwen3 config, which the checkpoint targets check the fuzzed files against.
pub fn tiny_config() -> &'static kiln_models::QwenConfig {
    static C: OnceLock<kiln_models::QwenConfig> = OnceLock::new();
    C.get_or_init(|| {
        kiln_models::QwenConfig::from_file(&fixtures().join("tiny-qwen3/config.json"))
            .expect("fixture config")
    })
}

/// Opens, checks and loads a checkpoint folder as kiln does, then every tensor it holds.
pub fn exercise_checkpoint(dir: &Path) {
    use kiln_models::weights::Checkpoint;
    use kiln_models::WeightDtype;
    let Ok(ck) = Checkpoint::open(dir) else {
        return;
    };
    let config = tiny_config();
    if ck.check(config).is_ok() {
        let shapes = kiln_models::weight_shapes(config);
        ck.load(&shapes, WeightDtype::F32)
            .expect("a checked checkpoint loads");
        ck.load(&shapes, WeightDtype::BF16)
            .expect("a checked checkpoint loads");
    }
    for (name, shape) in ck.tensors() {
        let _ = ck.load(&[(name, shape)], WeightDtype::F32);
    }
}

/// Opens a GGUF file as kiln does: config, check, weights, tokenizer.
pub fn exercise_gguf(path: &Path) {
    use kiln_models::gguf::qwen::GgufCheckpoint;
    use kiln_models::WeightDtype;
    let Ok(ck) = GgufCheckpoint::open(path) else {
        return;
    };
    let _ = kiln_models::gguf::tokenizer::from_gguf(ck.file());
    let Ok(config) = ck.config() else { return };
    // Weights of models up to tiny-qwen3's size (115k parameters): decoding a larger one
    // (which the input's few hundred KB cannot hold anyway) only slows the fuzzer down.
    if ck.check(&config).is_ok() && config.num_params() <= 200_000 {
        let shapes = kiln_models::weight_shapes(&config);
        // As kiln loads it (the file's Q8_0/Q4_0/Q4_K blocks kept), and all decoded.
        ck.load(&shapes, WeightDtype::F32, &config.file_quant)
            .expect("a checked GGUF file loads");
        ck.load(&shapes, WeightDtype::BF16, &Default::default())
            .expect("a checked GGUF file loads");
    }
}

//! Any bytes as a checkpoint's `model.safetensors`: open, check against the tiny-qwen3 config,
//! load. An error is fine; a panic, hang or out-of-memory is a bug.
#![no_main]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch().join("safetensors");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), data).unwrap();
    common::exercise_checkpoint(&dir);
});

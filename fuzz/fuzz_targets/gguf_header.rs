//! Any bytes as a GGUF file: open (header, metadata, tensor table), the Qwen config, the check
//! against it, the weights (f32 and bf16) and the tokenizer. An error is fine; a panic, hang
//! or out-of-memory is a bug.
#![no_main]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch().join("model.gguf");
    std::fs::write(&path, data).unwrap();
    common::exercise_gguf(&path);
});

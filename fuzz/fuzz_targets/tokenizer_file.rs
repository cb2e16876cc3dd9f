//! Any bytes as `tokenizer.json`: load through kiln, then encode and decode.
//!
//! kiln catches panics of the tokenizers library (it has some on malformed files) and reports
//! them as errors, so this target restores the default panic hook: libfuzzer-sys's hook would
//! abort on a panic that kiln catches. A panic that escapes kiln still aborts (libfuzzer-sys
//! catches it around each input).
#![no_main]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| {
        let p = common::scratch().join("tokenizer.json");
        std::fs::write(&p, data).unwrap();
        let Ok(t) = kiln_models::Tokenizer::from_file(&p) else { return };
        for text in ["Hello, world! 你好", "<|im_start|>user\n hi<|im_end|>", "  \t\r\n"] {
            if let Ok(ids) = t.encode(text) {
                let _ = t.decode(&ids);
            }
        }
        let _ = t.decode(&[0, 1, 2, 599, 600, 151643, u32::MAX]);
    }
);

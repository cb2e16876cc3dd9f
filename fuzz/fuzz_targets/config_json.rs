//! Any bytes as `config.json`. A config kiln accepts must also give its weight list, sizes and
//! (when small) a graph without panicking.
#![no_main]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = kiln_models::QwenConfig::from_json(text) else {
        return;
    };
    let _ = (c.weight_bytes(), c.num_params(), c.check_prompt(&[0, 1, 2]));
    let _ = kiln_models::model::weights(&c).take(64).count();
    if c.num_layers <= 2 && c.weight_bytes() < (1 << 40) {
        kiln_models::build_graph(&c, kiln_models::GraphOptions::default())
            .expect("an accepted config builds");
    }
});

//! The qwen3-0.6b preset (the real architecture, seeded random bf16 weights) on wgpu and on the
//! CPU backend: the same greedy tokens, or a divergence explained by a near tie.
//!
//! lavapipe runs this slowly (a GEMV streams the 1.2 GB of weights through lavapipe's per-lane
//! storage loads), so the number of tokens is `KILN_WGPU_QWEN3_TOKENS` (default 16); the test
//! prints how long each backend took.

use kiln_compile::Target;
use kiln_models::{LoadOptions, Model, ModelSource, Sampling};
use std::time::Instant;

mod common;

#[test]
fn wgpu_and_cpu_agree_on_the_qwen3_preset() {
    let Some(wgpu) = common::backend() else {
        return;
    };
    let tokens: usize = std::env::var("KILN_WGPU_QWEN3_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let prompt: Vec<u32> = vec![9707, 11, 1879, 0, 220];
    let run = |target: &dyn Target| {
        let t = Instant::now();
        let mut m = Model::load(
            &ModelSource::Preset("qwen3-0.6b".into()),
            &LoadOptions::new(target),
        )
        .unwrap();
        let load = t.elapsed();
        let g = m
            .generate(&prompt, tokens, &Sampling::default(), &[], |_| {})
            .unwrap();
        eprintln!(
            "qwen3-0.6b on {}: load {:.1} s, prefill {:.1} s, {tokens} tokens at {:.3} tokens/s",
            target.name(),
            load.as_secs_f64(),
            g.prefill_ms / 1e3,
            g.decode_tokens_per_s()
        );
        g
    };
    let cpu = run(&kiln_cpu::CpuBackend::default());
    let gpu = run(&wgpu);
    kiln_models::testing::assert_greedy_agrees(&cpu, &gpu, "wgpu");
}

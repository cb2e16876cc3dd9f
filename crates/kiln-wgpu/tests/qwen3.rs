//! The qwen3-0.6b preset (the real architecture, seeded random bf16 weights) on wgpu and on the
//! CPU backend: the same greedy tokens, or a divergence explained by a near tie.
//!
//! lavapipe runs this slowly (a GEMV streams the 1.2 GB of weights through lavapipe's per-lane
//! storage loads), so the number of tokens is `KILN_WGPU_QWEN3_TOKENS` (default 16); the test
//! prints how long each backend took.

use kiln_models::{LoadOptions, Model, ModelSource, Sampling};
use kiln_runtime::Target;
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
    // Both sum in f32 in different orders (and WGSL's exp2/sin are not libm's), so logits
    // differ in the last bits. Tokens must match until a step where the CPU's top-2 logits are
    // that close (a near tie); after a divergence the two continue from different prefixes and
    // are not compared.
    let mut worst = 0.0f32;
    for k in 0..tokens {
        let d = cpu.step_logits[k]
            .iter()
            .zip(&gpu.step_logits[k])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        worst = worst.max(d);
        if cpu.generated_ids[k] != gpu.generated_ids[k] {
            let mut row = cpu.step_logits[k].clone();
            row.sort_by(|a, b| b.total_cmp(a));
            let margin = row[0] - row[1];
            eprintln!(
                "token {k} differs (cpu {} vs wgpu {}): cpu top-2 margin {margin}, max logit diff {d}",
                cpu.generated_ids[k], gpu.generated_ids[k]
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
    eprintln!("cpu vs wgpu on qwen3-0.6b: max logit difference {worst} (largest logit {scale})");
    assert!(
        worst <= 1e-3 * scale,
        "cpu and wgpu logits differ by {worst} (largest logit {scale})"
    );
}

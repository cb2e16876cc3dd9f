//! kiln against Hugging Face `transformers` on the reference checkpoints in tests/fixtures:
//! per-layer hidden states, prefill logits, and 16 greedy tokens with their logits, with the
//! CPU kernels of each ISA this machine runs (AVX2, and AVX-512 where the compiler targets it).

use kiln_compile::CompileOptions;
use kiln_cpu::{CpuBackend, Isa};
use kiln_models::testing::{max_abs_diff, Reference};
use kiln_models::{GraphOptions, KvCache, LoadOptions, Model, ModelSource, Sampling};
use std::path::Path;

/// The CPU kernel ISAs to check: AVX2 everywhere, AVX-512 where the compiler targets it (the
/// test says when it skips it).
fn isas() -> Vec<Isa> {
    match CpuBackend::default().with_isa(Isa::Avx512).isa() {
        Ok(_) => vec![Isa::Avx2, Isa::Avx512],
        Err(e) => {
            eprintln!("skipping the AVX-512 kernels: {e}");
            vec![Isa::Avx2]
        }
    }
}

fn load(dir: &Path, graph: GraphOptions, isa: Isa) -> Model {
    let cpu = CpuBackend::default().with_isa(isa).with_run_threads(2);
    let opts = LoadOptions {
        compile: CompileOptions {
            threads: 2,
            ..Default::default()
        },
        graph,
        ..LoadOptions::new(&cpu)
    };
    Model::load(&ModelSource::Dir(dir.to_path_buf()), &opts)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn check_model(name: &str, prompts: &[&str]) {
    for isa in isas() {
        check_model_with(name, prompts, isa);
    }
}

fn check_model_with(name: &str, prompts: &[&str], isa: Isa) {
    let dir = kiln_models::testing::fixtures().join(name);
    let mut full = load(
        &dir,
        GraphOptions {
            all_logits: true,
            hidden_states: true,
            ..Default::default()
        },
        isa,
    );
    let mut gen = load(&dir, GraphOptions::default(), isa);
    for prompt in prompts {
        let reference = Reference::read(name, prompt);
        let (ids, greedy) = (&reference.prompt_ids, &reference.greedy_ids);

        // Prefill: every hidden state and all logits, layer by layer so a mismatch names its layer.
        let mut cache = KvCache::new(&full.config);
        let logits = full.forward(ids, &mut cache).unwrap();
        let mut outs = std::mem::take(&mut full.last_outputs);
        outs.insert("prefill_logits".into(), logits);
        for (tname, want) in reference.tensors() {
            let got = outs
                .get(&tname)
                .unwrap_or_else(|| panic!("kiln has no output {tname}"));
            let tol = if tname.starts_with("hidden.") {
                2e-4
            } else {
                1e-4
            };
            let d = max_abs_diff(got.as_f32(), &want);
            assert!(
                d <= tol,
                "{name}/{prompt} ({isa:?}): {tname} differs by {d} (> {tol})"
            );
        }

        // Greedy generation with the KV cache.
        let g = gen
            .generate(ids, 16, &Sampling::default(), &[], |_| {})
            .unwrap();
        assert_eq!(
            &g.generated_ids, greedy,
            "{name}/{prompt} ({isa:?}): greedy ids"
        );
        for (k, want) in reference.step_logits.iter().enumerate() {
            let d = max_abs_diff(&g.step_logits[k], want);
            assert!(
                d <= 1e-4,
                "{name}/{prompt} ({isa:?}): step_logits[{k}] differs by {d}"
            );
        }
    }
}

#[test]
fn tiny_qwen3_matches_transformers() {
    check_model("tiny-qwen3", &["p1", "p2", "p3"]);
}

#[test]
fn tiny_qwen3_sharded_matches_transformers() {
    check_model("tiny-qwen3-sharded", &["p1", "p2", "p3"]);
}

#[test]
fn tiny_qwen3_bf16_matches_transformers() {
    check_model("tiny-qwen3-bf16", &["p1"]);
}

//! Block-quantized weights (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K in GGUF's byte layout) on wgpu (lavapipe in CI):
//! the matmul kernels read the blocks from 32-bit words (WGSL has no 8- or 16-bit loads) and
//! dequantize each element as ggml does (`codegen::quantized_load`). The op case
//! `quantized_weight_matmuls` also runs in `ops.rs` on the adapter's own GEMV plan; here under
//! every plan, through views that start mid-block, and the GGUF fixtures.
//!
//! Tolerance of the fixtures' logits: 1e-3, the wgpu tests' tolerance for the safetensors
//! fixtures (`fixtures.rs` says why: WGSL's exp2, sin, sqrt and division are approximations);
//! the dequantized weights themselves are ggml's values, compared with the interpreter at
//! 1e-5 + 1e-4 relative by the op cases.
mod common;
use common::*;
use kiln_ir::testing::op_cases::{quantized_weight_matmuls, quantized_weight_views};
use kiln_ir::testing::OpCase;
use kiln_models::testing::{assert_gguf_fixture_matches, GGUF_QUANTIZED_FILES};
use kiln_wgpu::{GemvPlan, WgpuBackend};

fn run_on(b: &WgpuBackend, case: &OpCase) {
    let mut exe = build(b, &case.graph, case.threads);
    case.check(|ins, bind| exe.run_with(ins, bind));
}

/// The GPU-style GEMV for one row and for up to 4, the CPU-style column GEMV for up to 64 (the
/// op cases have 1, 3, 17 and 18 rows): every path reads the blocks.
#[test]
fn quantized_matmuls_under_every_gemv_plan() {
    let Some(_) = backend() else { return };
    for (rows, columns) in [(1, false), (4, false), (64, true)] {
        let b = backend()
            .unwrap()
            .with_gemv_plan(GemvPlan { rows, columns });
        run_on(&b, &quantized_weight_matmuls());
        run_on(&b, &quantized_weight_views());
    }
}

#[test]
fn quantized_gguf_fixtures_match_their_numpy_references() {
    let Some(b) = backend() else { return };
    let mut worst = 0.0f32;
    for file in GGUF_QUANTIZED_FILES {
        worst = worst.max(assert_gguf_fixture_matches(&b, file, 1e-3));
    }
    eprintln!("wgpu, all quantized GGUF files: max |kiln - numpy| {worst:.2e}");
}

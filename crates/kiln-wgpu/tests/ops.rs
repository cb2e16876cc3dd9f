//! Every primitive op, view and dtype conversion on the wgpu backend (lavapipe in CI) against
//! the interpreter: the cases of `kiln_ir::testing::op_cases`, which every backend runs. They
//! check the WGSL dialect's arithmetic, casts and rounding, packed bf16/f16/bool loads and
//! stores, reductions through workgroup memory and both matmul paths (every GEMV plan, below).
//!
//! Tolerances: WGSL's `exp2`, `log2`, `sin` and `/` are not correctly rounded (lavapipe's are
//! LLVM's vectorised approximations, a few f32 ulps; the WGSL spec allows 3 + 2|x| ulps for exp2
//! and an absolute 2^-11 for sin on [-pi, pi]); the C backends call libm. So `unary_ops`
//! compares at 1e-5 relative + 1e-5 absolute (sin's argument there is |x| < 1, where lavapipe
//! stays within a few ulps), where the table says 1e-6 absolute. Every other case runs at the
//! table's tolerance: integer ops, casts and the f16/bf16 rounding are bit-exact.
mod common;
use common::*;
use kiln_ir::testing::{OpCase, Tolerance};
use kiln_ir::{DType, Expr, Graph, Tensor};
use kiln_wgpu::WgpuBackend;

fn run_on(b: &WgpuBackend, case: &OpCase) {
    let mut exe = build(b, &case.graph, case.threads);
    case.check(|ins, bind| exe.run_with(ins, bind));
}

fn run(case: OpCase) {
    let Some(b) = backend() else { return };
    let case = match case.name {
        "unary_ops" => case.with_tolerance(Tolerance::new(1e-5, 1e-5)),
        _ => case,
    };
    run_on(&b, &case);
}

kiln_ir::op_case_tests!(run);

/// Every way a device may run matmuls with few rows, whatever the adapter would choose: the
/// GPU-style GEMV for one row (a GPU's default), for up to 4 rows, and the CPU-style column
/// GEMV for up to 64 rows (a CPU adapter's default). Rows above the threshold take the tiles.
const GEMV_PLANS: [kiln_wgpu::GemvPlan; 3] = [
    kiln_wgpu::GemvPlan {
        rows: 1,
        columns: false,
    },
    kiln_wgpu::GemvPlan {
        rows: 4,
        columns: false,
    },
    kiln_wgpu::GemvPlan {
        rows: 64,
        columns: true,
    },
];

/// The matmul cases (the op cases run them on the adapter's own plan) under every GEMV plan.
#[test]
fn matmuls_under_every_gemv_plan() {
    let Some(_) = backend() else { return };
    for plan in GEMV_PLANS {
        let b = backend().unwrap().with_gemv_plan(plan);
        run_on(&b, &kiln_ir::testing::op_cases::matmul_layouts());
        run_on(
            &b,
            &kiln_ir::testing::op_cases::bf16_weight_gemv_reads_whole_words(),
        );
    }
}

/// The executor gives an in-place output the storage of the input it updates; carried, the
/// cache is then never copied from one run to the next.
#[test]
fn a_cache_written_in_place_is_carried_without_copies() {
    let (c, s, p) = (Expr::sym("c"), Expr::sym("s"), Expr::sym("p"));
    let mut g = Graph::new();
    let cache = g
        .input("cache", DType::F32, &[c.clone(), 2.into()])
        .unwrap();
    let x = g.input("x", DType::F32, &[s.clone(), 2.into()]).unwrap();
    let updated = g.write_slice(cache, x, 0, p.clone()).unwrap();
    let seen = g.slice(updated, 0, 0, p.clone().add(s.clone())).unwrap();
    let total = g.sum(seen, 0).unwrap();
    g.output("cache_out", updated);
    g.output("total", total);
    let Some(bk) = backend() else { return };
    let mut exe = build(&bk, &g, 1);
    exe.carry("cache_out", "cache", Tensor::zeros(DType::F32, &[8, 2]))
        .unwrap();
    let mut sum = [0.0f32; 2];
    for step in 0..8i64 {
        let row = [step as f32, 10.0 * step as f32];
        sum[0] += row[0];
        sum[1] += row[1];
        let ins = inputs(&[("x", Tensor::from_f32(&[1, 2], &row))]);
        let out = exe
            .run_with(&ins, &[("p".to_string(), step)].into())
            .unwrap();
        assert_eq!(out["total"].as_f32(), &sum, "step {step}");
        // Only the new row and the sum are written: the cache is not copied.
        assert_eq!(exe.last_run().bytes_written, (2 + 2) * 4, "step {step}");
    }
    let kept = exe.carried("cache").unwrap();
    assert_eq!(kept.as_f32()[14..], [7.0, 70.0]);
}

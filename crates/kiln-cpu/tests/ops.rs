//! Every primitive op, view and dtype conversion on the CPU backend against the interpreter:
//! the cases of `kiln_ir::testing::op_cases`, which every backend runs. The CPU runs them all,
//! at their tolerances (its kernels call libm).
mod common;
use common::*;
use kiln_compile::{CompileOptions, Target};
use kiln_cpu::QuantRequest;
use kiln_ir::testing::OpCase;
use kiln_ir::{DType, Expr, Graph, Tensor};

/// Each case on every kernel ISA this machine can run (AVX2, and AVX-512 where the compiler
/// targets it; `isas` says when it skips). Quantized weights take the f32-dequantizing path,
/// which computes the interpreter's function at the cases' tolerances; the integer path
/// quantizes activations and is checked against its exact model in `gemm_qint8.rs`.
fn run(case: OpCase) {
    for isa in isas() {
        // Shown with the failure, if any: which kernels failed.
        eprintln!("{isa:?} kernels");
        let opts = CompileOptions {
            threads: case.threads,
            ..Default::default()
        };
        let mut exe = backend(Some(isa))
            .with_quant(QuantRequest::Dequant)
            .with_run_threads(case.threads)
            .load(&case.graph, &opts)
            .unwrap_or_else(|e| panic!("compile failed: {e}"))
            .exe;
        case.check(|ins, b| exe.run_with(ins, b));
    }
}

kiln_ir::op_case_tests!(run);

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
    let mut exe = build(&g, 1);
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

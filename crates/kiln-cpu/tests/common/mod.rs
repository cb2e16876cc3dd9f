//! Helpers shared by the CPU backend's tests: compile with the real C compiler, run, and compare
//! with the reference interpreter.
#![allow(dead_code)]

use kiln_compile::CompileOptions;
use kiln_cpu::CpuBackend;
use kiln_ir::{Bindings, Graph, Tensor};
pub use kiln_runtime::Executable;
use kiln_runtime::Target;
use std::collections::HashMap;

/// Compiles `g` with the real C compiler and loads it, `threads` compiling and running.
pub fn build(g: &Graph, threads: usize) -> Box<dyn Executable> {
    let opts = CompileOptions {
        threads,
        ..Default::default()
    };
    CpuBackend::default()
        .with_run_threads(threads)
        .load(g, &opts)
        .unwrap_or_else(|e| panic!("compile failed: {e}"))
        .exe
}

pub fn inputs(pairs: &[(&str, Tensor)]) -> HashMap<String, Tensor> {
    pairs
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect()
}

/// Max |a-b| / (atol + rtol*|b|) <= 1, NaNs and infinities equal where both are.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{name}: dtype");
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let same = (a.is_nan() && b.is_nan()) || a == b;
        assert!(
            same || (a - b).abs() <= atol + rtol * b.abs(),
            "{name}[{i}]: got {a}, want {b} (atol {atol}, rtol {rtol})"
        );
    }
}

/// Runs `g` on the CPU backend and on the interpreter and compares every output.
pub fn check(
    exe: &mut dyn Executable,
    g: &Graph,
    ins: &HashMap<String, Tensor>,
    atol: f64,
    rtol: f64,
) {
    let got = exe.run(ins).unwrap_or_else(|e| panic!("run failed: {e}"));
    let want = kiln_ir::interpret(g, ins, &Bindings::new()).expect("interpreter");
    for (name, w) in &want {
        assert_close(name, &got[name], w, atol, rtol);
    }
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The pipeline's fault-injecting backend over the real C compiler.
pub type Faulty = kiln_compile::testing::Faulty<CpuBackend>;

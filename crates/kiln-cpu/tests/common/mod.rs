//! Helpers shared by the CPU backend's tests: compile with the real C compiler, run, and compare
//! with the reference interpreter.
#![allow(dead_code)]

use kiln_compile::CompileOptions;
use kiln_cpu::CpuBackend;
pub use kiln_cpu::Isa;
// Not every test binary uses every helper.
use kiln_compile::Target;
#[allow(unused_imports)]
pub use kiln_ir::testing::{assert_close, inputs, values};
use kiln_ir::{DType, Expr, Graph, Tensor};
pub use kiln_runtime::Executable;
use std::collections::HashMap;

/// Compiles `g` with the real C compiler and loads it, `threads` compiling and running.
pub fn build(g: &Graph, threads: usize) -> Box<dyn Executable> {
    build_for(g, threads, None)
}

/// [`build`] with kernels for `isa` (None: what `KILN_CPU_ISA` and the CPU say).
pub fn build_for(g: &Graph, threads: usize, isa: Option<Isa>) -> Box<dyn Executable> {
    let opts = CompileOptions {
        threads,
        ..Default::default()
    };
    backend(isa)
        .with_run_threads(threads)
        .load(g, &opts)
        .unwrap_or_else(|e| panic!("compile failed: {e}"))
        .exe
}

/// A kernel cache shared by the tests of one binary that compile the same kernels several
/// times (a graph loaded once per run-thread count or per binding style), in Cargo's scratch
/// folder for integration tests. Not for tests of the cache or of cold compiles.
pub fn shared_cache(name: &str) -> Option<kiln_compile::KernelCache> {
    kiln_compile::KernelCache::open(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name))
        .ok()
}

/// The CPU backend, with kernels for `isa` if given.
pub fn backend(isa: Option<Isa>) -> CpuBackend {
    match isa {
        Some(isa) => CpuBackend::default().with_isa(isa),
        None => CpuBackend::default(),
    }
}

/// The kernel ISAs this machine runs: AVX2 (16-column panels; the portable C where the CPU has
/// no AVX2) everywhere, AVX-512 where the compiler targets it. Says so when AVX-512 is skipped.
pub fn isas() -> Vec<Isa> {
    match CpuBackend::default().with_isa(Isa::Avx512).isa() {
        Ok(_) => vec![Isa::Avx2, Isa::Avx512],
        Err(e) => {
            eprintln!("skipping the AVX-512 kernels: {e}");
            vec![Isa::Avx2]
        }
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
    kiln_ir::testing::assert_matches_interpreter(&got, g, ins, atol, rtol);
}

/// The pipeline's fault-injecting backend over the real C compiler.
pub type Faulty = kiln_compile::testing::Faulty<CpuBackend>;

/// `y = x @ W^T + r` and `h = silu(g) * u` with `[g | u] = x @ V^T` split at column `half`,
/// W [n, k] and V [2 * half, k] in `dtype`.
pub fn linear_graph(dtype: DType, n: i64, half: i64, k: i64) -> Graph {
    let mut g = Graph::new();
    let m = Expr::sym("m");
    let x = g.input("x", DType::F32, &[m.clone(), k.into()]).unwrap();
    let w = g.input("w", dtype, &[n.into(), k.into()]).unwrap();
    let r = g.input("r", DType::F32, &[m.clone(), n.into()]).unwrap();
    let wt = g.transpose(w, 0, 1).unwrap();
    let y = g.matmul(x, wt).unwrap();
    let y = g.add(y, r).unwrap();
    g.output("y", y);
    let v = g.input("v", dtype, &[(2 * half).into(), k.into()]).unwrap();
    let vt = g.transpose(v, 0, 1).unwrap();
    let gu = g.matmul(x, vt).unwrap();
    let gate = g.slice(gu, 1, 0, half).unwrap();
    let up = g.slice(gu, 1, half, 2 * half).unwrap();
    let act = g.silu(gate).unwrap();
    let h = g.mul(act, up).unwrap();
    g.output("h", h);
    g
}

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
use kiln_ir::{Graph, Tensor};
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

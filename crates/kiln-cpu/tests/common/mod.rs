//! Helpers shared by the CPU backend's tests: compile with the real C compiler, run, and compare
//! with the reference interpreter.
#![allow(dead_code)]

use kiln_compile::CompileOptions;
use kiln_cpu::CpuBackend;
// Not every test binary uses every helper.
use kiln_compile::Target;
#[allow(unused_imports)]
pub use kiln_ir::testing::{assert_close, inputs, values};
use kiln_ir::{Graph, Tensor};
pub use kiln_runtime::Executable;
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

//! Helpers shared by the CPU backend's tests: compile with the real C compiler, run, and compare
//! with the reference interpreter.
#![allow(dead_code)]

pub use kiln_compile::Executable;
use kiln_compile::{compile, Backend, CompileError, CompileOptions, Kernel, KernelSource};
use kiln_cpu::{CpuBackend, CpuExecutable, CpuModule};
use kiln_ir::{Bindings, Graph, Tensor};
use std::collections::HashMap;

pub fn build(g: &Graph, threads: usize) -> CpuExecutable {
    let opts = CompileOptions {
        threads,
        ..Default::default()
    };
    let compiled =
        compile(g, &CpuBackend::default(), &opts).unwrap_or_else(|e| panic!("compile failed: {e}"));
    CpuExecutable::new(compiled, threads).expect("load")
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
    exe: &mut CpuExecutable,
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

/// The real CPU backend with faults injected, to test how the pipeline reports them.
pub struct Faulty {
    pub inner: CpuBackend,
    /// Breaks the C of these kernel labels.
    pub broken: &'static [&'static str],
    /// Panics when compiling a batch containing a kernel with this label.
    pub panic_on: Option<&'static str>,
}

impl Backend for Faulty {
    type Module = CpuModule;
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn identity(&self) -> Result<String, CompileError> {
        self.inner.identity()
    }
    fn codegen(&self, k: &Kernel) -> KernelSource {
        let s = self.inner.codegen(k);
        if self.broken.contains(&k.label().as_str()) {
            return KernelSource {
                source: s.source.replacen("{\n", "{\n    broken_on_purpose;\n", 1),
                name: s.name,
            };
        }
        s
    }
    fn compile(&self, ks: &[&KernelSource]) -> Result<Vec<u8>, String> {
        if let Some(p) = self.panic_on {
            if ks.iter().any(|k| k.name.contains(p)) {
                panic!("injected panic in {}", ks[0].name);
            }
        }
        self.inner.compile(ks)
    }
    fn load(&self, a: &[u8]) -> Result<CpuModule, String> {
        self.inner.load(a)
    }
    fn source_extension(&self) -> &'static str {
        "c"
    }
}

//! A fault-injecting backend for tests of the pipeline's error handling, over any real
//! backend (the CPU tests break C, the CUDA tests break CUDA C).

use crate::{Backend, BackendError, Kernel, KernelSource};

/// Wraps a real backend; breaks the source of some kernels or panics while compiling others.
pub struct Faulty<B> {
    pub inner: B,
    /// Breaks the source of kernels with these labels (a statement no C-family compiler accepts).
    pub broken: &'static [&'static str],
    /// Panics when compiling a batch containing a kernel with this label.
    pub panic_on: Option<&'static str>,
}

impl<B: Backend> Backend for Faulty<B> {
    type Module = B::Module;
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn identity(&self) -> Result<String, BackendError> {
        self.inner.identity()
    }
    fn codegen(&self, k: &Kernel) -> KernelSource {
        let s = self.inner.codegen(k);
        if self.broken.contains(&k.label().as_str()) {
            return KernelSource {
                source: s.source.replacen("{\n", "{\n    broken_on_purpose;\n", 1),
                ..s
            };
        }
        s
    }
    fn compile(&self, ks: &[&KernelSource]) -> Result<Vec<u8>, BackendError> {
        if let Some(p) = self.panic_on {
            if ks.iter().any(|k| k.name.contains(p)) {
                panic!("injected panic in {}", ks[0].name);
            }
        }
        self.inner.compile(ks)
    }
    fn verify(&self, a: &[u8], kernels: &[&str]) -> Result<(), BackendError> {
        self.inner.verify(a, kernels)
    }
    fn load(&self, a: &[u8]) -> Result<B::Module, BackendError> {
        self.inner.load(a)
    }
    fn runtime(&self, kernels: &[KernelSource]) -> Vec<KernelSource> {
        self.inner.runtime(kernels)
    }
    fn load_runtime(&self, a: &[u8]) -> Result<B::Module, BackendError> {
        self.inner.load_runtime(a)
    }
    fn source_extension(&self) -> &'static str {
        self.inner.source_extension()
    }
    fn invocation_overhead(&self) -> u64 {
        self.inner.invocation_overhead()
    }
    fn compiles_on_local_cores(&self) -> bool {
        self.inner.compiles_on_local_cores()
    }
    fn compile_memory_estimate(&self) -> u64 {
        self.inner.compile_memory_estimate()
    }
    fn supports_weight_dtype(&self, dtype: kiln_ir::DType) -> bool {
        self.inner.supports_weight_dtype(dtype)
    }

    fn supports_fusion(&self) -> bool {
        self.inner.supports_fusion()
    }
}

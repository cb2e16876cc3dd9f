//! Backends for tests (and measuring tools) that are a real backend but for one hook: the
//! delegating [`Wrapped`], and over it the fault-injecting [`Faulty`] for tests of the
//! pipeline's error handling (the CPU tests break C, the CUDA tests break CUDA C).

use crate::{Backend, BackendError, Kernel, KernelSource};
use kiln_program::{RunError, Runtime};

/// A backend that is `inner` except where `hooks` say otherwise: every [`Backend`] (and
/// [`Runtime`]) method forwards to `inner`, those in [`Hooks`] through `hooks`.
pub struct Wrapped<B, H> {
    pub inner: B,
    pub hooks: H,
}

/// What a [`Wrapped`] backend may change; each hook defaults to the inner backend's method.
/// (The hooks are those some wrapper changes; add one here when a new wrapper needs it.)
pub trait Hooks<B: Backend>: Sync {
    fn name(&self, inner: &B) -> &'static str {
        inner.name()
    }
    fn codegen(&self, inner: &B, kernel: &Kernel) -> KernelSource {
        inner.codegen(kernel)
    }
    fn compile(&self, inner: &B, kernels: &[&KernelSource]) -> Result<Vec<u8>, BackendError> {
        inner.compile(kernels)
    }
    fn runtime(&self, inner: &B, kernels: &[KernelSource]) -> Vec<KernelSource> {
        inner.runtime(kernels)
    }
    fn supports_weight_dtype(&self, inner: &B, dtype: kiln_ir::DType) -> bool {
        inner.supports_weight_dtype(dtype)
    }
}

impl<B: Backend, H: Hooks<B>> Backend for Wrapped<B, H> {
    type Module = B::Module;
    fn name(&self) -> &'static str {
        self.hooks.name(&self.inner)
    }
    fn identity(&self) -> Result<String, BackendError> {
        self.inner.identity()
    }
    fn codegen(&self, kernel: &Kernel) -> KernelSource {
        self.hooks.codegen(&self.inner, kernel)
    }
    fn compile(&self, kernels: &[&KernelSource]) -> Result<Vec<u8>, BackendError> {
        self.hooks.compile(&self.inner, kernels)
    }
    fn verify(&self, artifact: &[u8], kernels: &[&str]) -> Result<(), BackendError> {
        self.inner.verify(artifact, kernels)
    }
    fn load(&self, artifact: &[u8]) -> Result<B::Module, BackendError> {
        self.inner.load(artifact)
    }
    fn runtime(&self, kernels: &[KernelSource]) -> Vec<KernelSource> {
        self.hooks.runtime(&self.inner, kernels)
    }
    fn load_runtime(&self, artifact: &[u8]) -> Result<B::Module, BackendError> {
        self.inner.load_runtime(artifact)
    }
    fn supports_fusion(&self) -> bool {
        self.inner.supports_fusion()
    }
    fn supports_weight_dtype(&self, dtype: kiln_ir::DType) -> bool {
        self.hooks.supports_weight_dtype(&self.inner, dtype)
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
}

impl<B: Runtime, H: Hooks<B> + Send> Runtime for Wrapped<B, H> {
    type Device = B::Device;
    fn device(&self) -> Result<B::Device, RunError> {
        self.inner.device()
    }
    fn bandwidth(&self) -> Option<Result<(String, f64), RunError>> {
        self.inner.bandwidth()
    }
}

/// A real backend that breaks the source of some kernels or panics while compiling others.
pub type Faulty<B> = Wrapped<B, Faults>;

/// The faults a [`Faulty`] backend injects.
pub struct Faults {
    /// Breaks the source of kernels with these labels (a statement no C-family compiler accepts).
    pub broken: &'static [&'static str],
    /// Panics when compiling a batch containing a kernel with this label.
    pub panic_on: Option<&'static str>,
}

impl<B: Backend> Hooks<B> for Faults {
    fn codegen(&self, inner: &B, k: &Kernel) -> KernelSource {
        let s = inner.codegen(k);
        if self.broken.contains(&k.label().as_str()) {
            return KernelSource {
                source: s.source.replacen("{\n", "{\n    broken_on_purpose;\n", 1),
                ..s
            };
        }
        s
    }
    fn compile(&self, inner: &B, ks: &[&KernelSource]) -> Result<Vec<u8>, BackendError> {
        if let Some(p) = self.panic_on {
            if ks.iter().any(|k| k.name.contains(p)) {
                panic!("injected panic in {}", ks[0].name);
            }
        }
        inner.compile(ks)
    }
}

/// Compiles `graph` on `inner` with one kernel's source broken (`broken`: a label that names
/// one distinct kernel of the graph), on two threads, and checks what every backend must
/// say: the compile fails for that kernel alone, names it, and writes its broken source (with
/// the backend's extension) for inspection. Returns the error's message and the kernel's
/// failure, whose diagnostics the caller checks against its own compiler's.
pub fn compile_with_a_broken_kernel<B: Backend>(
    graph: &kiln_ir::Graph,
    inner: B,
    broken: &'static [&'static str; 1],
) -> (String, crate::KernelFailure) {
    let extension = inner.source_extension();
    let backend = Faulty {
        inner,
        hooks: Faults {
            broken,
            panic_on: None,
        },
    };
    let options = crate::CompileOptions {
        threads: 2,
        ..Default::default()
    };
    let err = crate::compile(graph, &backend, &options)
        .err()
        .expect("a broken kernel must fail");
    let msg = err.to_string();
    let crate::CompileError::Kernels(mut fails) = err else {
        panic!("{msg}")
    };
    assert_eq!(fails.len(), 1, "{msg}");
    let fail = fails.remove(0);
    assert!(
        fail.kernel.starts_with(&format!("kiln_{}_", broken[0])),
        "{msg}"
    );
    let path = fail.source_path.as_ref().expect("source written");
    assert_eq!(path.extension().unwrap(), extension, "{}", path.display());
    let source = std::fs::read_to_string(path).expect("the written source");
    assert!(source.contains("broken_on_purpose"), "{}", path.display());
    (msg, fail)
}

/// Compiles `graph` on one thread without a cache `rounds` times (at least once) and returns
/// its units in the schedule's order, each named by its kernels' names joined with spaces:
/// the keys under which a timing [`Hooks::compile`] records them (the `unit_cpu_times`
/// examples of kiln-cuda and kiln-models).
pub fn units_in_schedule_order<B: Backend>(
    graph: &kiln_ir::Graph,
    backend: &B,
    rounds: usize,
) -> Vec<String> {
    let opts = crate::CompileOptions {
        threads: 1,
        ..crate::CompileOptions::default()
    };
    let mut order = Vec::new();
    for _ in 0..rounds.max(1) {
        let c = crate::compile(graph, backend, &opts).expect("compile");
        order = c.report.units.iter().map(|u| u.kernels.join(" ")).collect();
    }
    order
}

/// The header of the table [`print_unit_times`] adds rows to.
pub const UNIT_TIMES_HEADER: &str = "| model | units | sum of units CPU ms | critical path CPU ms | available parallelism | modelled speedup at 16 |\n| --- | --- | --- | --- | --- | --- |";

/// Lists each unit's time on stderr and prints `model`'s row: units, their sum, the longest,
/// the available parallelism and the modelled speedup at 16 threads (kiln's list schedule).
/// `ms[i]` is `units[i]`'s time, in the schedule's order.
pub fn print_unit_times(model: &str, units: &[String], ms: &[f64]) {
    let sum: f64 = ms.iter().sum();
    let crit = ms.iter().copied().fold(0.0, f64::max);
    for (u, t) in units.iter().zip(ms) {
        eprintln!("{model}  {t:7.1} ms  {u}");
    }
    println!(
        "| {model} | {} | {sum:.0} | {crit:.1} | {:.1} | {:.1} |",
        ms.len(),
        sum / crit,
        crate::modelled_makespan_ms(ms, 1) / crate::modelled_makespan_ms(ms, 16)
    );
}

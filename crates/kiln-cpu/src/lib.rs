//! kiln's CPU backend: C source per kernel, compiled by the system C compiler into shared
//! objects, loaded with `libloading`, executed on a rayon pool split by rows, elements or tiles.

mod cc;
pub mod codegen;
mod device;
pub mod isa;
pub mod pack;
pub mod pack_quant;
mod pool;
pub mod probe;
pub mod runtime;

pub use cc::{CCompiler, FLAGS};
pub use device::{CpuBuffer, CpuDevice, CpuKernel};
pub use isa::{Isa, QuantRequest};

use kiln_ir::Expr;
use kiln_program::{Backend, BackendError, Kernel, KernelSource, LaunchSpec};
use kiln_program::{RunError, Runtime};
use std::sync::OnceLock;

/// The C compiler's fixed cost per compile unit, in bytes of kernel source (the schedule's
/// unit, [`Backend::invocation_overhead`]): measured in CPU time (gcc 12, Zen 4), a unit costs
/// ~30 ms whatever it holds (the compiler's start, the prelude, the link) and ~15-19 ms per KB
/// of kernel source, so one invocation costs what ~2 KB do. The default (4 KB) overstated it,
/// and the batches of small kernels came out as long as the longest kernel: ~10 units of
/// ~70-100 ms beside the runtime's ~14, too few to fill 16 workers twice (issue 27).
const INVOCATION_OVERHEAD: u64 = 2048;

/// The CPU backend: compiles with the system C compiler, runs on `run_threads` threads.
pub struct CpuBackend {
    cc: CCompiler,
    run_threads: usize,
    identity: OnceLock<Result<String, String>>,
}

impl Default for CpuBackend {
    /// `$CC` (else `cc`), kernels run on every core.
    fn default() -> Self {
        CpuBackend::new(CCompiler::from_env(), kiln_process::default_threads())
    }
}

impl CpuBackend {
    pub fn new(cc: CCompiler, run_threads: usize) -> CpuBackend {
        CpuBackend {
            cc,
            run_threads: run_threads.max(1),
            identity: OnceLock::new(),
        }
    }

    /// The same compiler, kernels run on `threads` threads.
    pub fn with_run_threads(mut self, threads: usize) -> CpuBackend {
        self.run_threads = threads.max(1);
        self
    }

    /// Kernels for `isa` whatever `KILN_CPU_ISA` says (tests run both ISAs in one process).
    pub fn with_isa(mut self, isa: Isa) -> CpuBackend {
        self.cc = self.cc.with_isa(isa);
        self.identity = OnceLock::new();
        self
    }

    /// Quantized matmuls on the path `quant` asks for whatever `KILN_CPU_QUANT` says.
    pub fn with_quant(mut self, quant: isa::QuantRequest) -> CpuBackend {
        self.cc = self.cc.with_quant(quant);
        self.identity = OnceLock::new();
        self
    }

    /// Which quantized types' matmuls take the integer path ([`isa::Int8Types`],
    /// [`isa::QuantRequest`]).
    pub fn quant_int8(&self) -> Result<isa::Int8Types, BackendError> {
        self.cc.quant_int8()
    }

    /// The vector ISA the kernels are compiled for ([`isa`]).
    pub fn isa(&self) -> Result<Isa, BackendError> {
        self.cc.isa()
    }

    /// The same compiler with another time limit per compiler invocation.
    pub fn with_compile_timeout(mut self, timeout: std::time::Duration) -> CpuBackend {
        self.cc = self.cc.with_timeout(timeout);
        self
    }
}

/// A loaded shared object.
pub type CpuModule = kiln_runtime::HostLibrary;

impl Backend for CpuBackend {
    type Module = CpuModule;

    fn name(&self) -> &'static str {
        "cpu"
    }

    /// Every dtype: the packed matmul kernels read Q8_0, Q4_0, Q4_K, Q5_K and Q6_K weights
    /// (`c/gemm_quant.h`, `c/gemm_q4k.h`, `c/gemm_q6k.h`, `c/gemm_q5k.h`).
    fn supports_weight_dtype(&self, _: kiln_ir::DType) -> bool {
        true
    }

    fn identity(&self) -> Result<String, BackendError> {
        self.identity
            .get_or_init(|| self.cc.identity().map_err(|e| e.to_string()))
            .clone()
            .map_err(BackendError::Unavailable)
    }

    fn codegen(&self, kernel: &Kernel) -> KernelSource {
        KernelSource::named(
            &kernel.label(),
            &codegen::kernel_source(kernel),
            codegen::launch(kernel),
        )
    }

    /// A unit of kernels, or one part of the runtime object (alone in its unit).
    fn compile(&self, kernels: &[&KernelSource]) -> Result<Vec<u8>, BackendError> {
        match kernels {
            [part] if runtime::is_part(&part.name) => self.cc.compile_runtime(&part.source),
            _ => {
                let sources: Vec<&str> = kernels.iter().map(|k| k.source.as_str()).collect();
                self.cc.compile(&sources)
            }
        }
    }

    /// The parts of the runtime object ([`runtime`]) that `kernels` call (none where it is
    /// off).
    fn runtime(&self, kernels: &[KernelSource]) -> Vec<KernelSource> {
        if !self.cc.use_runtime {
            return Vec::new();
        }
        let called = runtime::parts_called(kernels.iter().map(|k| k.source.as_str()));
        called
            .into_iter()
            .filter_map(|part| self.cc.runtime_part(&part).ok())
            .map(|(name, source)| KernelSource {
                name,
                source,
                // Never launched: its module is loaded, not run.
                launch: LaunchSpec::units(Vec::new(), Expr::Const(0), Expr::Const(0)),
            })
            .collect()
    }

    /// A runtime part, its functions made visible to the kernels' modules loaded after it.
    fn load_runtime(&self, artifact: &[u8]) -> Result<CpuModule, BackendError> {
        CpuModule::open_global(artifact)
    }

    /// Loads the shared object and finds every kernel in it: what the compiler wrote is
    /// checked as it will be used, before it is cached.
    fn verify(&self, artifact: &[u8], kernels: &[&str]) -> Result<(), BackendError> {
        let module = CpuModule::open(artifact)?;
        for k in kernels {
            // SAFETY: only the symbol's presence is checked; nothing is called.
            unsafe { module.lib.get::<*const ()>(k.as_bytes()) }.map_err(|e| {
                BackendError::Invalid(format!(
                    "the compiled shared object does not define kernel {k}: {e}"
                ))
            })?;
        }
        Ok(())
    }

    /// Loads a kernels' module, its calls into the runtime object bound now: where the runtime
    /// is not loaded (a backend wrapper that does not pass `runtime` on), the load fails
    /// naming the function, rather than the process at the first call.
    fn load(&self, artifact: &[u8]) -> Result<CpuModule, BackendError> {
        CpuModule::open_bound(artifact)
    }

    fn source_extension(&self) -> &'static str {
        "c"
    }

    fn invocation_overhead(&self) -> u64 {
        INVOCATION_OVERHEAD
    }
}

impl Runtime for CpuBackend {
    type Device = CpuDevice;

    fn device(&self) -> Result<CpuDevice, RunError> {
        CpuDevice::new(self.run_threads)
    }
}

//! The boundary between the pipeline and a device compiler: render, compile, verify, load.
//! The pipeline never special-cases a backend; a backend never schedules, caches or dedupes.

use crate::kernel::Kernel;
use crate::source::KernelSource;
use std::time::Duration;

/// What went wrong in a backend. Messages are complete sentences fragments a user can act on;
/// compiler diagnostics are kept verbatim.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot work on this machine (compiler missing, bad target, no device).
    #[error("{0}")]
    Unavailable(String),
    /// The device compiler rejected the source; its diagnostics.
    #[error("{0}")]
    Rejected(String),
    /// The device compiler did not finish in time; its process group was killed.
    #[error(
        "the compiler did not finish within the time limit of {} s (--compile-timeout, KILN_COMPILE_TIMEOUT) and was killed",
        .0.as_secs_f64()
    )]
    Timeout(Duration),
    /// The program was interrupted (SIGINT, SIGTERM) while the compiler ran; it was killed.
    #[error("interrupted")]
    Interrupted,
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// An artifact that is not what it should be (lacks a kernel, cannot be loaded).
    #[error("{0}")]
    Invalid(String),
}

impl BackendError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> BackendError {
        BackendError::Io {
            what: what.into(),
            source,
        }
    }
}

/// [`Backend::invocation_overhead`] unless a backend says otherwise.
pub const DEFAULT_INVOCATION_OVERHEAD: u64 = 4096;

/// A device compiler and loader: codegen, compile, verify and load. Implemented by each
/// backend crate; driven by the compile pipeline (`kiln_compile::compile`).
pub trait Backend: Sync {
    /// A loaded artifact (a shared object, a CUDA module).
    type Module;

    /// Short name: `cpu`, `cuda`. Part of cache keys.
    fn name(&self) -> &'static str;

    /// Identity of the device compiler: program, version, flags, target, prelude. Part of
    /// every cache key. Fails with a clear message when the compiler is missing.
    fn identity(&self) -> Result<String, BackendError>;

    /// Canonical source for one kernel, with how to launch it ([`KernelSource::launch`]: the
    /// geometry of the parallel structure the text has, for the backend's device to evaluate).
    fn codegen(&self, kernel: &Kernel) -> KernelSource;

    /// Compiles kernels in one compiler invocation into one artifact. Called from worker
    /// threads.
    fn compile(&self, kernels: &[&KernelSource]) -> Result<Vec<u8>, BackendError>;

    /// Checks that an artifact holds every one of `kernels` before it is cached or used.
    /// Called from worker threads. The default looks for each kernel's name in the artifact's
    /// bytes (symbol tables of ELF objects and CUBINs hold them).
    fn verify(&self, artifact: &[u8], kernels: &[&str]) -> Result<(), BackendError> {
        for k in kernels {
            let mut needle = k.as_bytes().to_vec();
            needle.push(0);
            if !artifact.windows(needle.len()).any(|w| w == needle) {
                return Err(BackendError::Invalid(format!(
                    "the compiled artifact ({} bytes) does not define kernel {k}",
                    artifact.len()
                )));
            }
        }
        Ok(())
    }

    /// Loads an artifact. Called sequentially on the thread that will run the kernels.
    fn load(&self, artifact: &[u8]) -> Result<Self::Module, BackendError>;

    /// Code that `kernels` call but do not contain (kiln-cpu: the packed GEMM/GEMV
    /// micro-kernels, the attention's helpers), as sources of their own: each is one more
    /// compile unit, scheduled first, compiled by [`Backend::compile`] alone, keyed, cached and
    /// verified (it defines a symbol named after it) like the kernels' units, and loaded
    /// before them with [`Backend::load_runtime`]. Must be a function of `kernels` and the
    /// backend's identity only (so that artifacts do not depend on threads or caches); the
    /// identity must change with the runtime's code, since the kernels' keys must. None by
    /// default: kernels contain everything they call.
    fn runtime(&self, _kernels: &[KernelSource]) -> Vec<KernelSource> {
        Vec::new()
    }

    /// Loads a [`Backend::runtime`] artifact so that the kernels' modules loaded after it
    /// find its functions. Called before any kernel's module is loaded.
    fn load_runtime(&self, artifact: &[u8]) -> Result<Self::Module, BackendError> {
        self.load(artifact)
    }

    /// Whether this backend renders the kinds the fusion passes make (`Attention`,
    /// `ReduceMap`, matmul `Epilogue`s). A backend that returns false gets the unfused
    /// kernels whatever the compile's `fusion` option says: only
    /// `Elementwise`, `Reduce`, `Write` and plain `MatMul`.
    fn supports_fusion(&self) -> bool {
        true
    }

    /// Whether this backend's kernels read weights stored in `dtype`. The block-quantized
    /// dtypes (`DType::is_quantized`) are read only by backends whose matmul kernels read
    /// GGML blocks (kiln-cpu, kiln-cuda and kiln-wgpu say so); the compile refuses a graph
    /// with such an input on any other, naming the backend, the input and the dtype
    /// (`CompileError::UnsupportedDType`).
    fn supports_weight_dtype(&self, dtype: kiln_ir::DType) -> bool {
        !dtype.is_quantized()
    }

    /// File extension for kernel sources written for inspection (`c`, `cu`).
    fn source_extension(&self) -> &'static str;

    /// The fixed cost of one compiler invocation, in the unit of a kernel's cost estimate
    /// (bytes of kernel source): what the schedule adds per compile unit and what it weighs
    /// batching small kernels against. The default, [`DEFAULT_INVOCATION_OVERHEAD`], says a
    /// process start and its headers cost about what 4 KB of kernel source do; kiln-cpu's C
    /// compiler and kiln-cuda's NVRTC measured at about half that (2 KB). A compiler with a
    /// smaller fixed cost gets smaller batches.
    fn invocation_overhead(&self) -> u64 {
        DEFAULT_INVOCATION_OVERHEAD
    }

    /// Whether [`Backend::compile`] runs inside this process, on this machine's cores (NVRTC),
    /// rather than as a compiler process that may run elsewhere (cc through distcc). Then no
    /// more invocations than the machine has cores run at once, whatever `--threads` says:
    /// more would only time-slice the same cores while each holds its memory.
    fn compiles_on_local_cores(&self) -> bool {
        false
    }

    /// Expected peak memory of one compiler invocation (bytes), for the in-flight budget.
    fn compile_memory_estimate(&self) -> u64 {
        128 << 20
    }
}

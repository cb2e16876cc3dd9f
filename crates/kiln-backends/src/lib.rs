//! kiln's backend registry: the one place that knows which backends exist. A program picks a
//! [`BackendKind`] (parsed once, e.g. by clap, which rejects unknown names with the list) and
//! calls [`open`]; what comes back is a `dyn Target` that compiles and runs graphs, whatever the
//! backend. The CLI, the tests and any program embedding kiln open backends here; the model
//! crate receives the opened target and depends on no backend crate.

use kiln_compile::BackendError;
use kiln_runtime::Target;

/// Every backend kiln has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum BackendKind {
    /// C per kernel, the system C compiler, multi-threaded on the CPU.
    Cpu,
    /// CUDA C per kernel, NVRTC to CUBIN, an NVIDIA GPU.
    Cuda,
}

impl BackendKind {
    pub const ALL: &'static [BackendKind] = &[BackendKind::Cpu, BackendKind::Cuda];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        BackendKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = BackendKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown backend '{s}' (backends: {})", names.join(", "))
            })
    }
}

/// How to open a backend. Every field has a sensible default.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Threads that run kernels on the CPU.
    pub run_threads: usize,
    /// CUDA: the target architecture (e.g. `sm_90`); default: the device's.
    pub arch: Option<String>,
    /// Open for compiling only: CUDA then needs no GPU (but an `arch`).
    pub compile_only: bool,
    /// How long one external compiler invocation (the C compiler) may take before it is
    /// killed. NVRTC runs in-process and has no limit.
    pub compile_timeout: std::time::Duration,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            run_threads: kiln_compile::default_threads(),
            arch: None,
            compile_only: false,
            compile_timeout: kiln_compile::default_compile_timeout(),
        }
    }
}

/// Opens backend `kind`.
pub fn open(kind: BackendKind, opts: &BackendOptions) -> Result<Box<dyn Target>, BackendError> {
    match kind {
        BackendKind::Cpu => {
            if opts.arch.is_some() {
                return Err(BackendError::Unavailable(
                    "--arch applies to the cuda backend only".into(),
                ));
            }
            Ok(Box::new(
                kiln_cpu::CpuBackend::default()
                    .with_run_threads(opts.run_threads)
                    .with_compile_timeout(opts.compile_timeout),
            ))
        }
        BackendKind::Cuda => {
            if kiln_cuda::cuda_device_present() {
                return Ok(Box::new(kiln_cuda::CudaBackend::for_device(
                    0,
                    opts.arch.as_deref(),
                )?));
            }
            match &opts.arch {
                Some(arch) if opts.compile_only => {
                    Ok(Box::new(kiln_cuda::CudaBackend::compile_only(arch)?))
                }
                _ if opts.compile_only => Err(BackendError::Unavailable(
                    "no CUDA device found: pass --arch (e.g. --arch sm_90) to compile CUBINs without one"
                        .into(),
                )),
                _ => Err(BackendError::Unavailable(
                    "--backend cuda needs an NVIDIA GPU with its driver, and none was found".into(),
                )),
            }
        }
    }
}

/// The CPU's FMA peak in GFLOP/s on `threads` threads and its vector width in f32 lanes
/// (`kiln_cpu::probe`): what `kiln bench decode` measures prefill against.
pub fn cpu_fma_peak(threads: usize) -> Result<(f64, usize), BackendError> {
    kiln_cpu::probe::fma_peak(&kiln_cpu::CCompiler::from_env(), threads, 25)
}

//! kiln's backend registry: the one place that knows which backends exist. A program picks a
//! [`BackendKind`] (parsed once, e.g. by clap, which rejects unknown names with the list) and
//! calls [`open`]; what comes back is a `dyn Target` that compiles and runs graphs, whatever the
//! backend. The CLI, the tests and any program embedding kiln open backends here; the model
//! crate receives the opened target and depends on no backend crate.

use kiln_compile::BackendError;
use kiln_compile::Target;

/// Every backend kiln has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum BackendKind {
    /// C per kernel, the system C compiler, multi-threaded on the CPU.
    Cpu,
    /// CUDA C per kernel, NVRTC to CUBIN, an NVIDIA GPU.
    Cuda,
    /// WGSL per kernel, validated by naga, through wgpu on Vulkan, Metal or DX12 (Mesa's
    /// lavapipe on a machine without a GPU).
    Wgpu,
}

impl BackendKind {
    pub const ALL: &'static [BackendKind] =
        &[BackendKind::Cpu, BackendKind::Cuda, BackendKind::Wgpu];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Wgpu => "wgpu",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend name that is none of [`BackendKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend '{0}' (backends: {names})", names = BackendKind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "))]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for BackendKind {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        BackendKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownBackend(s.to_string()))
    }
}

/// How to open a backend. Every field has a sensible default.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Threads that run kernels on the CPU.
    pub run_threads: usize,
    /// CUDA: the target architecture (e.g. `sm_90`); default: the device's.
    pub arch: Option<String>,
    /// Open for compiling only: CUDA then needs no GPU (but an `arch`); wgpu needs no
    /// adapter (naga validates; with an adapter its driver compiles too).
    pub compile_only: bool,
    /// wgpu: the directory of the driver's shader cache (Mesa's), normally inside kiln's
    /// kernel cache directory; None leaves the driver's default.
    pub driver_cache: Option<std::path::PathBuf>,
    /// How long one external compiler invocation (the C compiler) may take before it is
    /// killed. NVRTC and wgpu (naga and the Vulkan/Metal/DX12 driver's compiler) run
    /// in-process and have no limit.
    pub compile_timeout: std::time::Duration,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            run_threads: kiln_compile::default_threads(),
            arch: None,
            compile_only: false,
            driver_cache: None,
            compile_timeout: kiln_compile::default_compile_timeout(),
        }
    }
}

/// Opens backend `kind`.
pub fn open(kind: BackendKind, opts: &BackendOptions) -> Result<Box<dyn Target>, BackendError> {
    if opts.arch.is_some() && kind != BackendKind::Cuda {
        return Err(BackendError::Unavailable(
            "--arch applies to the cuda backend only".into(),
        ));
    }
    match kind {
        BackendKind::Cpu => Ok(Box::new(
            kiln_cpu::CpuBackend::default()
                .with_run_threads(opts.run_threads)
                .with_compile_timeout(opts.compile_timeout),
        )),
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
        BackendKind::Wgpu => Ok(Box::new(kiln_wgpu::WgpuBackend::open(
            &kiln_wgpu::WgpuOptions {
                compile_only: opts.compile_only,
                driver_cache: opts.driver_cache.clone(),
                memory_budget: None,
            },
        )?)),
    }
}

/// The CPU's FMA peak in GFLOP/s on `threads` threads and its vector width in f32 lanes
/// (`kiln_cpu::probe`): what `kiln bench decode` measures prefill against.
pub fn cpu_fma_peak(threads: usize) -> Result<(f64, usize), BackendError> {
    kiln_cpu::probe::fma_peak(&kiln_cpu::CCompiler::from_env(), threads, 25)
}

/// Shader text `kiln compile --emit` writes.
pub use kiln_wgpu::ShaderFormat;

/// Writes the wgpu backend's Metal Shading Language or SPIR-V for every distinct kernel of
/// `graph` into `dir` (naga's output, checked to hold each entry point); returns the paths.
/// Needs no adapter: kernels are validated by naga only.
pub fn emit_shaders(
    graph: &kiln_ir::Graph,
    opts: &kiln_compile::CompileOptions<'_>,
    format: ShaderFormat,
    dir: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>, kiln_compile::CompileError> {
    let backend = kiln_wgpu::WgpuBackend::validate_only();
    let compiled = kiln_compile::compile(graph, &backend, opts)?;
    let sources: Vec<&kiln_compile::KernelSource> =
        compiled.loaded.kernels.iter().map(|k| &k.source).collect();
    Ok(kiln_wgpu::emit(&sources, format, dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_an_unknown_one_lists_the_backends() {
        for &k in BackendKind::ALL {
            assert_eq!(k.name().parse::<BackendKind>(), Ok(k));
        }
        let e = "metal".parse::<BackendKind>().unwrap_err();
        assert_eq!(e, UnknownBackend("metal".into()));
        assert_eq!(
            e.to_string(),
            "unknown backend 'metal' (backends: cpu, cuda, wgpu)"
        );
    }
}

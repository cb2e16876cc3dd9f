//! kiln's CUDA backend: CUDA C per kernel, compiled by NVRTC to CUBIN for the target arch
//! (in parallel, by the pipeline), loaded sequentially on the thread that owns the CUDA context,
//! launched on a stream.
//!
//! Everything is loaded at run time (cudarc's dynamic loading): kiln builds and runs without
//! CUDA, `kiln compile --backend cuda --arch sm_90` works without a GPU, and only running
//! kernels needs a device.

pub mod codegen;
mod device;
mod dialect;
pub mod emulator;
mod launch;
pub mod nvrtc;
pub mod preflight;

pub use device::{copy_bandwidth, cuda_device_present, CudaDevice, CudaKernel};

use kiln_program::{Backend, BackendError, Kernel, KernelSource};
use kiln_program::{RunError, Runtime};

/// The CUDA prelude: NVRTC-specific definitions and the shared scalar helpers.
pub fn prelude() -> &'static str {
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| kiln_render::cstyle::prelude(include_str!("cu/prelude.cuh")))
}

/// NVRTC options for every kernel (besides the arch). IEEE division and square root, FMA
/// contraction allowed, like the CPU backend.
pub const OPTIONS: &[&str] = &[
    "--std=c++17",
    "--fmad=true",
    "--prec-div=true",
    "--prec-sqrt=true",
    "--ftz=false",
];

/// NVRTC's `-minimal` (12.4 and later): leaves out the declarations of texture, surface and
/// device-runtime functions that kernels never use. The CUBIN is the same (checked on every
/// kernel of qwen3-0.6b with NVRTC 13.0), each program compiles ~7% faster: a program's
/// fixed cost is most of a small unit's (issue 27).
const MINIMAL: &str = "-minimal";

/// [`OPTIONS`], and `-minimal` where NVRTC `version` has it.
pub fn options(version: (i32, i32)) -> Vec<&'static str> {
    let mut o = OPTIONS.to_vec();
    if version >= (12, 4) {
        o.push(MINIMAL);
    }
    o
}

pub struct CudaBackend {
    arch: String,
    /// The device to load modules on; None compiles only (modules stay CUBIN bytes).
    context: Option<std::sync::Arc<cudarc::driver::CudaContext>>,
    /// The modules of split matmuls' decode kernels loaded so far (`load_runtime`), which
    /// every kernels' module loaded after them carries ([`CudaModule::Loaded`]).
    decode_modules: std::sync::Mutex<Vec<std::sync::Arc<cudarc::driver::CudaModule>>>,
}

/// A loaded CUDA module, or the CUBIN of a compile-only run.
pub enum CudaModule {
    Loaded {
        module: std::sync::Arc<cudarc::driver::CudaModule>,
        /// The decode kernels' modules loaded before it: where the device finds the decode
        /// kernel of a split matmul in `module` ([`codegen::decode_rows`]).
        decode_modules: Vec<std::sync::Arc<cudarc::driver::CudaModule>>,
    },
    Cubin(Vec<u8>),
}

impl CudaBackend {
    /// Compile-only for `arch` (e.g. `sm_90`, `sm_80`): no device needed.
    pub fn compile_only(arch: &str) -> Result<CudaBackend, BackendError> {
        check_arch(arch)?;
        Ok(CudaBackend {
            arch: arch.into(),
            context: None,
            decode_modules: Default::default(),
        })
    }

    /// For device `ordinal`; the arch is the device's unless given.
    pub fn for_device(ordinal: usize, arch: Option<&str>) -> Result<CudaBackend, BackendError> {
        let ctx = cudarc::driver::CudaContext::new(ordinal).map_err(|e| {
            BackendError::Unavailable(format!("cannot open CUDA device {ordinal}: {e}"))
        })?;
        let arch = match arch {
            Some(a) => a.to_string(),
            None => {
                let (maj, min) = ctx.compute_capability().map_err(|e| {
                    BackendError::Unavailable(format!("CUDA device {ordinal}: {e}"))
                })?;
                format!("sm_{maj}{min}")
            }
        };
        check_arch(&arch)?;
        Ok(CudaBackend {
            arch,
            context: Some(ctx),
            decode_modules: Default::default(),
        })
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn context(&self) -> Option<&std::sync::Arc<cudarc::driver::CudaContext>> {
        self.context.as_ref()
    }
}

/// `kernels` in one NVRTC program with the prelude, compiled for `arch` with [`options`] and
/// `extra`: the CUBIN and NVRTC's log.
pub(crate) fn compile_unit(
    arch: &str,
    kernels: &[&KernelSource],
    extra: &[&str],
) -> Result<(Vec<u8>, String), BackendError> {
    let unit = kiln_render::translation_unit(prelude(), kernels.iter().map(|k| k.source.as_str()));
    let (version, _) = nvrtc::version()?;
    let mut opts = options(version);
    opts.extend_from_slice(extra);
    nvrtc::compile_with_log(&unit, arch, &opts)
}

fn check_arch(arch: &str) -> Result<(), BackendError> {
    let ok = arch
        .strip_prefix("sm_")
        .is_some_and(|n| n.len() >= 2 && n.chars().all(|c| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(BackendError::Unavailable(format!(
            "invalid CUDA arch '{arch}': expected sm_XY such as sm_80 or sm_90"
        )))
    }
}

impl Backend for CudaBackend {
    type Module = CudaModule;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn identity(&self) -> Result<String, BackendError> {
        let ((maj, min), path) = nvrtc::version()?;
        // The prelude is part of every program, so it is part of every cache key.
        let prelude = blake3::hash(prelude().as_bytes()).to_hex();
        Ok(format!(
            "nvrtc {maj}.{min} ({}) | {} | {} | prelude {}",
            path.display(),
            self.arch,
            options((maj, min)).join(" "),
            &prelude[..16]
        ))
    }

    fn codegen(&self, kernel: &Kernel) -> KernelSource {
        KernelSource::named(
            &kernel.label(),
            &codegen::kernel_source(kernel),
            codegen::launch(kernel),
        )
    }

    /// NVRTC compiles inside this process, so `--compile-timeout` does not apply to it and an
    /// interrupt takes effect once the NVRTC calls in progress return: a library call cannot be
    /// stopped from outside without ending the process. (The external compilers — the C
    /// compiler, the emulator's g++ — run as child processes and are killed on both.)
    fn compile(&self, kernels: &[&KernelSource]) -> Result<Vec<u8>, BackendError> {
        compile_unit(&self.arch, kernels, &[]).map(|(cubin, _)| cubin)
    }

    fn load(&self, artifact: &[u8]) -> Result<CudaModule, BackendError> {
        let Some(ctx) = &self.context else {
            return Ok(CudaModule::Cubin(artifact.to_vec()));
        };
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(artifact.to_vec()))
            .map_err(|e| {
                BackendError::Invalid(format!("the CUDA driver rejected the CUBIN: {e}"))
            })?;
        let decode_modules = self.decode_modules.lock().unwrap().clone();
        Ok(CudaModule::Loaded {
            module,
            decode_modules,
        })
    }

    /// The decode kernels of the split matmuls ([`codegen::decode_variants`]): each a
    /// program of its own, so that the GEMV and the tiled product compile in parallel.
    fn runtime(&self, kernels: &[KernelSource]) -> Vec<KernelSource> {
        codegen::decode_variants(kernels)
    }

    /// A decode kernel's module, kept for the kernels' modules loaded after it.
    fn load_runtime(&self, artifact: &[u8]) -> Result<CudaModule, BackendError> {
        let loaded = self.load(artifact)?;
        if let CudaModule::Loaded { module, .. } = &loaded {
            self.decode_modules.lock().unwrap().push(module.clone());
        }
        Ok(loaded)
    }

    /// Every dtype: the matmul kernels read Q8_0, Q4_0, Q4_K, Q5_K and Q6_K weights in their GGML blocks
    /// (`kiln_q*_at` in kiln-render's C-family helpers).
    fn supports_weight_dtype(&self, _: kiln_ir::DType) -> bool {
        true
    }

    fn source_extension(&self) -> &'static str {
        "cu"
    }

    /// Half a C compiler's: an NVRTC program's fixed cost (the builtin header, linking
    /// libdevice, ptxas's setup) is ~20 ms against cc's ~45 ms (an empty kernel with the
    /// prelude, NVRTC 13.0, sm_90, Zen 4). With the C compiler's overhead, batches of small
    /// kernels grew longer than the longest single kernel and set the critical path (issue 27).
    fn invocation_overhead(&self) -> u64 {
        kiln_program::DEFAULT_INVOCATION_OVERHEAD / 2
    }

    /// NVRTC compiles on the calling thread: more programs at once than cores only share the
    /// cores, each holding its memory (issue 27).
    fn compiles_on_local_cores(&self) -> bool {
        true
    }

    /// Measured (issue 27, NVRTC 13.0, sm_90): kiln's peak RSS grows by 8-12 MB per NVRTC
    /// program in flight for qwen3-0.6b and qwen3-8b (`--threads 16`, budgets admitting 1, 2,
    /// 4, 8 and 12 programs); 32 MB leaves room for larger units, and a small
    /// `--memory-budget-mb` no longer holds a many-core machine to a few programs (at 512 MB,
    /// 1 GB admitted 2).
    fn compile_memory_estimate(&self) -> u64 {
        32 << 20
    }
}

impl Runtime for CudaBackend {
    type Device = CudaDevice;

    fn device(&self) -> Result<CudaDevice, RunError> {
        match &self.context {
            Some(ctx) => Ok(CudaDevice::new(ctx.clone())),
            None => Err(RunError::Unsupported(format!(
                "this CUDA backend compiles for {} without a device; running needs an NVIDIA GPU",
                self.arch
            ))),
        }
    }

    fn bandwidth(&self) -> Option<Result<(String, f64), RunError>> {
        self.context.as_ref()?;
        Some(copy_bandwidth(1 << 30))
    }
}

//! kiln's wgpu backend: one WGSL kernel per distinct kernel, validated by naga, run through
//! wgpu on Vulkan (Linux, Windows, Android; Mesa's lavapipe on a CPU), Metal (macOS, iOS) or
//! DX12 (Windows).
//!
//! Compiling a unit of kernels, on the compile pool's threads:
//! 1. naga parses and validates each kernel's WGSL (a rejection names the kernel and shows
//!    naga's report);
//! 2. when an adapter is present, the driver compiles each kernel on a *helper device* of the
//!    calling thread: pipeline creation and a warm-up dispatch (lavapipe JITs a pipeline at its
//!    first dispatch, not at creation). Drivers compile a device's pipelines on that device's
//!    own thread (lavapipe's queue thread), so one device per compile thread is what lets the
//!    driver's work run in parallel; the driver's on-disk shader cache (Mesa's, pointed inside
//!    kiln's cache directory by the registry) carries the result to the device that runs;
//! 3. the artifact is the validated WGSL ([`artifact`]), cached like every other artifact.
//!
//! Loading creates each pipeline on the running device and warms it up (from the driver's
//! cache, a fraction of the compile). The device ([`WgpuDevice`]) records launches into one
//! compute pass per batch.
//!
//! Adapter selection: `WGPU_BACKEND` (`vulkan`, `metal`, `dx12`) and `KILN_WGPU_ADAPTER` (a
//! substring of the adapter's name); a discrete GPU is preferred. There is no OpenGL backend.

pub mod artifact;
pub mod codegen;
mod device;
pub mod dialect;
mod gpu;
pub mod plan;
pub mod shader;

pub use artifact::ArtifactError;
pub use device::{WgpuBuffer, WgpuDevice, WgpuKernel};
pub use gpu::{backends_from_env, select_adapter, Adapter, AdapterError, Gpu, GpuError, Pipeline};
pub use plan::GemvPlan;
pub use shader::ShaderError;
/// The wgpu kiln is built with, for callers that inspect adapters.
pub use wgpu;

use kiln_program::{Backend, BackendError, Kernel, KernelSource};
use kiln_program::{RunError, Runtime};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The wgpu and naga versions kiln is built with (pinned in the workspace), part of the cache
/// key: naga decides what validates.
pub const WGPU_VERSION: &str = "30.0.2";

/// How to open the wgpu backend.
#[derive(Clone, Debug, Default)]
pub struct WgpuOptions {
    /// Compile only: no device to run on. With an adapter the driver still compiles every
    /// kernel (on helper devices); without one, kernels are validated by naga only.
    pub compile_only: bool,
    /// The driver's shader cache directory (Mesa's `MESA_SHADER_CACHE_DIR`), set for this
    /// process unless the environment already sets it. kiln points it inside its own cache
    /// directory so that a cold kiln cache is a cold driver cache too.
    pub driver_cache: Option<PathBuf>,
    /// Bytes of device memory kiln may allocate (default: `KILN_WGPU_MEMORY_MB`, else 90% of
    /// the available host memory for a CPU adapter such as lavapipe, else no own limit: the
    /// driver's budget applies).
    pub memory_budget: Option<u64>,
}

/// The driver behind the compile: helper devices on one adapter.
struct Driver {
    adapter: Adapter,
    /// Idle helper devices; a compile thread takes one (or opens one) and puts it back.
    helpers: Mutex<Vec<Gpu>>,
}

/// The wgpu backend: naga-validated WGSL, compiled by the driver on helper devices, run on one
/// device.
pub struct WgpuBackend {
    driver: Option<Driver>,
    /// The device kernels run on; None compiles only.
    main: Option<Arc<Gpu>>,
    memory_budget: Option<u64>,
    /// How matmuls with few rows run; None: the adapter's default ([`GemvPlan::for_adapter`]).
    gemv: Option<GemvPlan>,
}

/// The kernels of one compile unit: pipelines on the running device, or, compiled without a
/// device, nothing (the sources stay in the artifact).
pub struct WgpuModule {
    pipelines: Vec<(String, Pipeline)>,
    loaded: bool,
}

impl WgpuModule {
    /// Kernel `name`'s pipeline.
    pub fn pipeline(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p)
    }

    /// Whether the module was loaded onto a device.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }
}

/// Points the driver's shader cache at `dir` for this process unless the environment chose
/// already. Must run before the first adapter is enumerated (drivers read it then).
fn point_driver_cache(dir: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Mesa makes only the last folder of its cache path (`mesa_shader_cache`) and turns
        // its cache off when the parent is missing, so the folder is made here.
        if std::env::var_os("MESA_SHADER_CACHE_DIR").is_none() && made_dir(dir) {
            // Before any wgpu instance exists; the CLI calls this while it is single-threaded.
            std::env::set_var("MESA_SHADER_CACHE_DIR", dir);
        }
    });
}

/// Makes `dir` (and its parents); false, with a warning, where it cannot be made.
fn made_dir(dir: &Path) -> bool {
    match std::fs::create_dir_all(dir) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                "cannot make the driver's shader cache folder {}: {e}; the driver keeps its default",
                dir.display()
            );
            false
        }
    }
}

/// `KILN_WGPU_MEMORY_MB`, else for a CPU adapter 90% of `MemAvailable`.
fn default_budget(info: &wgpu::AdapterInfo) -> Option<u64> {
    if let Some(mb) = std::env::var("KILN_WGPU_MEMORY_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        return Some(mb.saturating_mul(1 << 20));
    }
    if info.device_type != wgpu::DeviceType::Cpu {
        return None;
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024 / 10 * 9)
}

impl WgpuBackend {
    /// Opens the adapter chosen by the environment (see the crate docs) and, unless compiling
    /// only, a device on it. Compiling only works without an adapter (naga validation only).
    pub fn open(opts: &WgpuOptions) -> Result<WgpuBackend, BackendError> {
        if let Some(dir) = &opts.driver_cache {
            point_driver_cache(dir);
        }
        let adapter = match gpu::select_adapter() {
            Ok(a) => a,
            Err(e) if opts.compile_only => {
                tracing::warn!("{e}; kernels are validated by naga only, the driver compiles them when they are loaded");
                return Ok(WgpuBackend::validate_only());
            }
            Err(e) => return Err(BackendError::Unavailable(e.to_string())),
        };
        tracing::info!("wgpu adapter: {}", adapter.describe());
        let main = if opts.compile_only {
            None
        } else {
            Some(Arc::new(
                Gpu::new(&adapter, "kiln").map_err(|e| BackendError::Unavailable(e.to_string()))?,
            ))
        };
        let memory_budget = opts.memory_budget.or_else(|| default_budget(&adapter.info));
        Ok(WgpuBackend {
            driver: Some(Driver {
                adapter,
                helpers: Mutex::new(Vec::new()),
            }),
            main,
            memory_budget,
            gemv: None,
        })
    }

    /// Validates with naga and never touches a driver (what `--emit` uses, and compiling on a
    /// machine without an adapter).
    pub fn validate_only() -> WgpuBackend {
        WgpuBackend {
            driver: None,
            main: None,
            memory_budget: None,
            gemv: None,
        }
    }

    /// The adapter kernels compile (and run) on, if any.
    pub fn adapter_info(&self) -> Option<&wgpu::AdapterInfo> {
        self.driver.as_ref().map(|d| &d.adapter.info)
    }

    /// The limits of the device kernels run on, if any.
    pub fn limits(&self) -> Option<wgpu::Limits> {
        self.main.as_ref().map(|g| g.limits.clone())
    }

    /// The bytes of device memory kiln allows itself, where it keeps its own account.
    pub fn memory_budget(&self) -> Option<u64> {
        self.memory_budget
    }

    /// The same backend running matmuls with few rows as `plan` says instead of the adapter's
    /// default: the tests run the GPU-style GEMV on lavapipe this way, so both paths of the
    /// matmul kernel are checked on a CPU adapter.
    pub fn with_gemv_plan(mut self, plan: GemvPlan) -> WgpuBackend {
        self.gemv = Some(plan);
        self
    }

    /// The same backend with its own limit on device memory.
    pub fn with_memory_budget(mut self, bytes: u64) -> WgpuBackend {
        self.memory_budget = Some(bytes);
        self
    }

    /// The driver compiles `kernels` on a helper device of this thread: pipeline and warm-up.
    fn driver_compile(
        &self,
        d: &Driver,
        kernels: Vec<(&str, shader::Validated)>,
    ) -> Result<(), BackendError> {
        let helper = d.helpers.lock().expect("helpers").pop();
        let helper = match helper {
            Some(h) => h,
            None => Gpu::new(&d.adapter, "kiln compile helper")
                .map_err(|e| BackendError::Unavailable(e.to_string()))?,
        };
        let result = kernels.into_iter().try_for_each(|(name, v)| {
            let p = helper.pipeline(name, v)?;
            helper.warm_up(name, &p)
        });
        match result {
            Ok(()) => {
                d.helpers.lock().expect("helpers").push(helper);
                Ok(())
            }
            // A helper that failed is dropped, not reused: it may be lost.
            Err(e) => Err(BackendError::Rejected(format!(
                "the driver rejected it: {e}"
            ))),
        }
    }
}

/// A kernel's source, checked: the plan's verdict on its sizes, then naga.
fn validated(k: &KernelSource) -> Result<shader::Validated, BackendError> {
    if let Some(reason) = k
        .source
        .lines()
        .next()
        .and_then(|l| l.strip_prefix(codegen::CANNOT_COMPILE))
    {
        return Err(BackendError::Rejected(reason.to_string()));
    }
    shader::validate(&k.name, &k.source).map_err(|e| BackendError::Rejected(e.to_string()))
}

impl Backend for WgpuBackend {
    type Module = WgpuModule;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    /// The artifact is the WGSL naga accepted, the same whatever the adapter: the identity is
    /// naga's (and wgpu's) version and the validation capabilities.
    fn identity(&self) -> Result<String, BackendError> {
        Ok(format!(
            "wgpu {WGPU_VERSION} naga {WGPU_VERSION} | WGSL validated with capabilities {:?}",
            shader::CAPABILITIES
        ))
    }

    /// The WGSL dialect renders the primitive kinds only (no `Attention`, `ReduceMap` or
    /// matmul epilogues yet): the compiler gives this backend the unfused kernels.
    fn supports_fusion(&self) -> bool {
        false
    }

    fn codegen(&self, kernel: &Kernel) -> KernelSource {
        KernelSource::named(
            &kernel.label(),
            &codegen::kernel_source(kernel),
            codegen::launch(kernel),
        )
    }

    fn compile(&self, kernels: &[&KernelSource]) -> Result<Vec<u8>, BackendError> {
        let mut checked = Vec::with_capacity(kernels.len());
        for k in kernels {
            checked.push((k.name.as_str(), validated(k)?));
        }
        if let Some(d) = &self.driver {
            self.driver_compile(d, checked)?;
        }
        Ok(artifact::pack(
            kernels.iter().map(|k| (k.name.as_str(), k.source.as_str())),
        ))
    }

    /// Reads the artifact back and finds each kernel's entry point in it.
    fn verify(&self, artifact: &[u8], kernels: &[&str]) -> Result<(), BackendError> {
        let found = artifact::unpack(artifact).map_err(|e| BackendError::Invalid(e.to_string()))?;
        for k in kernels {
            let has = found
                .iter()
                .any(|(n, src)| n == k && src.contains(&format!("fn {k}(")));
            if !has {
                return Err(BackendError::Invalid(format!(
                    "the artifact does not define kernel {k}"
                )));
            }
        }
        Ok(())
    }

    fn load(&self, artifact: &[u8]) -> Result<WgpuModule, BackendError> {
        let kernels =
            artifact::unpack(artifact).map_err(|e| BackendError::Invalid(e.to_string()))?;
        let Some(gpu) = &self.main else {
            return Ok(WgpuModule {
                pipelines: Vec::new(),
                loaded: false,
            });
        };
        let mut pipelines = Vec::with_capacity(kernels.len());
        for (name, source) in kernels {
            let v = shader::validate(&name, &source)
                .map_err(|e| BackendError::Invalid(format!("kernel {name}: {e}")))?;
            let p = gpu
                .pipeline(&name, v)
                .and_then(|p| gpu.warm_up(&name, &p).map(|()| p))
                .map_err(|e| BackendError::Invalid(e.to_string()))?;
            pipelines.push((name, p));
        }
        Ok(WgpuModule {
            pipelines,
            loaded: true,
        })
    }

    /// Every dtype: the matmul kernels read Q8_0, Q4_0, Q4_K, Q5_K and Q6_K weights in their GGML blocks,
    /// a byte at a time from 32-bit words (`codegen::quantized_load`).
    fn supports_weight_dtype(&self, _: kiln_ir::DType) -> bool {
        true
    }

    fn source_extension(&self) -> &'static str {
        "wgsl"
    }

    fn compile_memory_estimate(&self) -> u64 {
        // naga's IR and one driver JIT of a small kernel.
        64 << 20
    }
}

impl Runtime for WgpuBackend {
    type Device = WgpuDevice;

    fn device(&self) -> Result<WgpuDevice, RunError> {
        match &self.main {
            Some(gpu) => Ok(WgpuDevice::new(gpu.clone(), self.memory_budget, self.gemv)),
            None => Err(RunError::Unsupported(
                "this wgpu backend was opened for compiling only; running needs a device".into(),
            )),
        }
    }

    fn bandwidth(&self) -> Option<Result<(String, f64), RunError>> {
        let gpu = self.main.as_ref()?;
        Some(device::copy_bandwidth(gpu))
    }
}

/// What `kiln compile --emit` writes for each kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShaderFormat {
    /// Metal Shading Language, as wgpu's Metal backend would compile it.
    Msl,
    /// SPIR-V 1.3, as wgpu's Vulkan backend would hand it to the driver.
    Spv,
}

impl ShaderFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ShaderFormat::Msl => "metal",
            ShaderFormat::Spv => "spv",
        }
    }
}

/// Writes naga's MSL or SPIR-V of each kernel into `dir` (created if missing), one file per
/// kernel named after it, each checked to hold the kernel's entry point. Returns the paths.
pub fn emit(
    kernels: &[&KernelSource],
    format: ShaderFormat,
    dir: &Path,
) -> Result<Vec<PathBuf>, BackendError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| BackendError::io(format!("cannot create {}", dir.display()), e))?;
    let mut paths = Vec::with_capacity(kernels.len());
    for k in kernels {
        let v =
            validated(k).map_err(|e| BackendError::Rejected(format!("kernel {}: {e}", k.name)))?;
        let bytes = match format {
            ShaderFormat::Msl => shader::to_msl(&k.name, &v).map(|(src, _)| src.into_bytes()),
            ShaderFormat::Spv => shader::to_spirv(&k.name, &v)
                .map(|w| w.iter().flat_map(|x| x.to_le_bytes()).collect()),
        }
        .map_err(|e| BackendError::Rejected(format!("kernel {}: {e}", k.name)))?;
        let path = dir.join(format!("{}.{}", k.name, format.extension()));
        std::fs::write(&path, bytes)
            .map_err(|e| BackendError::io(format!("cannot write {}", path.display()), e))?;
        paths.push(path);
    }
    Ok(paths)
}

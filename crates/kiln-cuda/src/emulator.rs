//! Runs the CUDA C that kiln generates on the CPU, for machines without a GPU: a backend of
//! its own (`cuda-emulated`) whose compiler is the host C++ compiler and whose device is the
//! CPU. Selected by tests, never by the product's backend registry.
//!
//! Each kernel's source is exactly what the CUDA backend generates, plus a small launcher that
//! unpacks `void **args` into the kernel's typed parameters. A compile unit (with the CUDA
//! prelude) is compiled as C++ by `$CXX` (else `g++`) against `emu/kernel.h`, which maps CUDA's
//! keywords, built-in variables and intrinsics onto a small runtime (`emu/runtime.cpp`): blocks
//! run one after another, and the threads of a block that synchronises (reductions' warp
//! shuffles, the tiled matmul's `__syncthreads`) run as coroutines that switch at every
//! barrier. A shuffle waits for the lanes of its warp only and `__syncthreads` for the whole
//! block, so warps that run different numbers of shuffles (attention's warps over their share
//! of the keys) run as on a GPU; a shuffle that a returned lane misses, and a block whose
//! threads wait at barriers that can never all be reached, abort with a message. Launch geometry and argument order come from the same launch spec the CUDA
//! device uses, so the emulator checks the kernels' indexing, reductions and tiling as the GPU
//! would run them.
//!
//! What it does not check: GPU arithmetic (device `sinf`/`exp2f` are the host libm's), races
//! between warps, memory limits, NVRTC's acceptance of the source, or anything about the
//! driver. It is slow (one coroutine switch per thread per barrier; on x86-64 a hand-written
//! register and stack switch, elsewhere ucontext's, which makes a system call per switch) and
//! meant for tests of small graphs; the GPU tests stay the judge.

use kiln_ir::{Bindings, Expr};
use kiln_process::{self as process, ChildError};
use kiln_program::{Backend, BackendError, Kernel, KernelKind, KernelSource, UniqueKernel};
use kiln_program::{Device, LaunchSpec, RunError, Runtime};
use kiln_render::cstyle::CStyle;
use kiln_render::Dialect;
use kiln_runtime::{HostBuffer, HostLibrary};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const ABI_H: &str = include_str!("emu/abi.h");
const KERNEL_H: &str = include_str!("emu/kernel.h");
const RUNTIME_CPP: &str = include_str!("emu/runtime.cpp");

type LaunchFn = unsafe extern "C" fn(*mut *mut u8, *const u32, *const u32) -> i32;

/// The launcher of a kernel is its name with this suffix.
const LAUNCHER_SUFFIX: &str = "_emu_launch";

/// The emulated CUDA backend.
pub struct EmulatedCuda {
    identity: OnceLock<Result<String, String>>,
    /// The decode kernels' objects loaded so far (`load_runtime`), as in the CUDA backend.
    decode_modules: Mutex<Vec<Arc<HostLibrary>>>,
    /// How long one g++ invocation may take before its process group is killed.
    timeout: Duration,
}

impl Default for EmulatedCuda {
    /// The time limit from `KILN_COMPILE_TIMEOUT`, else the default.
    fn default() -> Self {
        EmulatedCuda {
            identity: OnceLock::new(),
            decode_modules: Mutex::default(),
            timeout: kiln_process::default_compile_timeout(),
        }
    }
}

impl EmulatedCuda {
    /// The same backend with another time limit per compiler invocation.
    pub fn with_compile_timeout(mut self, timeout: Duration) -> EmulatedCuda {
        self.timeout = timeout;
        self
    }
}

/// Runs the C++ compiler under the time limit; a missing compiler says how to get one.
fn run_cxx(
    cmd: &mut Command,
    cxx: &str,
    timeout: Duration,
) -> Result<std::process::Output, BackendError> {
    process::run(cmd, timeout).map_err(|e| match e {
        ChildError::Spawn(e) => BackendError::Unavailable(format!(
            "CUDA emulator: cannot run the C++ compiler '{cxx}' ({e}); install g++ or set CXX"
        )),
        e => BackendError::from(e),
    })
}

/// A compiled unit's shared object, with the decode kernels' objects loaded before it (where
/// the device finds a split matmul's decode kernel, as on the GPU).
pub struct EmulatedModule {
    lib: Arc<HostLibrary>,
    decode_modules: Vec<Arc<HostLibrary>>,
}

/// The C++ compiler: `$CXX`, else `g++`.
fn cxx() -> String {
    std::env::var("CXX")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "g++".into())
}

/// The launcher of kernel function `name`: unpacks `void **args` (output, inputs, then the
/// symbols and `kiln_units` as int64 scalars passed by address) into the kernel's typed
/// parameters.
fn launcher(k: &Kernel, name: &str) -> String {
    let d = CStyle;
    let mut args = vec![format!("({} *)a[0]", d.storage_type(k.out_dtype))];
    for (j, t) in k.inputs.iter().enumerate() {
        args.push(format!("(const {} *)a[{}]", d.storage_type(*t), j + 1));
    }
    for j in 0..=k.symbols().len() {
        args.push(format!("*(const int64_t *)a[{}]", k.inputs.len() + 1 + j));
    }
    // Kernels with barriers or warp shuffles run their threads as coroutines.
    let cooperative = matches!(
        k.kind,
        KernelKind::Reduce { .. }
            | KernelKind::ReduceMap { .. }
            | KernelKind::MatMul { .. }
            | KernelKind::Attention { .. }
    );
    let mut s = String::new();
    kiln_render::emit!(
        s,
        "static void {name}_emu_body(void **a) {{ {name}({}); }}\n\
         extern \"C\" int {name}{LAUNCHER_SUFFIX}(void **a, const unsigned *g, const unsigned *b) \
         {{ return kiln_emu_launch({name}_emu_body, a, g, b, {}); }}",
        args.join(", "),
        cooperative as i32
    );
    s.push('\n');
    s
}

impl Backend for EmulatedCuda {
    type Module = EmulatedModule;

    fn name(&self) -> &'static str {
        "cuda-emulated"
    }

    fn identity(&self) -> Result<String, BackendError> {
        self.identity
            .get_or_init(|| {
                let cxx = cxx();
                // In a scratch folder, like the compile: never in the user's working directory.
                let scratch = process::scratch_dir("kiln-cuda-emu-")
                    .map_err(|e| format!("CUDA emulator: temporary folder: {e}"))?;
                let mut cmd = Command::new(&cxx);
                cmd.arg("--version").current_dir(scratch.path());
                let out = run_cxx(&mut cmd, &cxx, self.timeout).map_err(|e| e.to_string())?;
                let version = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let mut h = blake3::Hasher::new();
                for part in [crate::prelude(), ABI_H, KERNEL_H, RUNTIME_CPP] {
                    h.update(part.as_bytes());
                }
                Ok(format!(
                    "{cxx} | {version} | emulator {}",
                    &h.finalize().to_hex()[..16]
                ))
            })
            .clone()
            .map_err(BackendError::Unavailable)
    }

    fn codegen(&self, kernel: &Kernel) -> KernelSource {
        let template = crate::codegen::kernel_source_with(kernel, &|name| launcher(kernel, name));
        KernelSource::named(&kernel.label(), &template, crate::codegen::launch(kernel))
    }

    fn compile(&self, kernels: &[&KernelSource]) -> Result<Vec<u8>, BackendError> {
        let dir = process::scratch_dir("kiln-cuda-emu-")
            .map_err(|e| BackendError::io("CUDA emulator: temporary folder", e))?;
        // The CUDA prelude and kernels, after the header that maps CUDA's built-ins to C++.
        let prelude = format!("#include \"kernel.h\"\n{}", crate::prelude());
        let unit =
            kiln_render::translation_unit(&prelude, kernels.iter().map(|k| k.source.as_str()));
        for (name, text) in [
            ("abi.h", ABI_H),
            ("kernel.h", KERNEL_H),
            ("runtime.cpp", RUNTIME_CPP),
            ("kernels.cpp", unit.as_str()),
        ] {
            std::fs::write(dir.path().join(name), text)
                .map_err(|e| BackendError::io(format!("CUDA emulator: writing {name}"), e))?;
        }
        let cxx = cxx();
        let mut cmd = Command::new(&cxx);
        cmd.current_dir(dir.path())
            .args([
                "-std=c++17",
                "-O1",
                "-fno-strict-aliasing",
                "-fPIC",
                "-shared",
                "-w",
                "-o",
            ])
            .arg("emulated.so")
            .args(["kernels.cpp", "runtime.cpp"]);
        let out = run_cxx(&mut cmd, &cxx, self.timeout)?;
        if !out.status.success() {
            return Err(BackendError::Rejected(process::diagnostics(&out.stderr)));
        }
        std::fs::read(dir.path().join("emulated.so"))
            .map_err(|e| BackendError::io("CUDA emulator: reading the compiled kernels", e))
    }

    fn load(&self, artifact: &[u8]) -> Result<EmulatedModule, BackendError> {
        Ok(EmulatedModule {
            lib: Arc::new(HostLibrary::open(artifact)?),
            decode_modules: self.decode_modules.lock().unwrap().clone(),
        })
    }

    /// As the CUDA backend: split matmuls' decode kernels, each compiled apart.
    fn runtime(&self, kernels: &[KernelSource]) -> Vec<KernelSource> {
        crate::codegen::decode_variants(kernels)
    }

    fn load_runtime(&self, artifact: &[u8]) -> Result<EmulatedModule, BackendError> {
        let module = self.load(artifact)?;
        self.decode_modules.lock().unwrap().push(module.lib.clone());
        Ok(module)
    }

    /// As the CUDA backend: the same kernels read GGML blocks.
    fn supports_weight_dtype(&self, _: kiln_ir::DType) -> bool {
        true
    }

    fn source_extension(&self) -> &'static str {
        "cu"
    }
}

impl Runtime for EmulatedCuda {
    type Device = EmulatedDevice;

    fn device(&self) -> Result<EmulatedDevice, RunError> {
        Ok(EmulatedDevice)
    }
}

/// An emulated kernel: its launcher and launch spec; for a split matmul, also its decode
/// kernel's launcher and the row count that picks it (as [`crate::CudaKernel`]).
pub struct EmulatedKernel {
    name: String,
    /// The output's and inputs' dtypes (`launch::dtypes`).
    dtypes: Vec<kiln_ir::DType>,
    spec: LaunchSpec,
    launch: LaunchFn,
    decode: Option<(LaunchFn, Expr)>,
}

/// The CPU playing a GPU: host buffers, kernels launched through their launchers.
pub struct EmulatedDevice;

impl Device for EmulatedDevice {
    type Module = EmulatedModule;
    type Buffer = HostBuffer;
    type Kernel = EmulatedKernel;

    fn describe(&self) -> String {
        "emulated CUDA device".into()
    }

    fn resolve(
        &mut self,
        module: &EmulatedModule,
        k: &UniqueKernel,
    ) -> Result<EmulatedKernel, RunError> {
        let launcher_in = |lib: &HostLibrary, kernel: &str| {
            let symbol = format!("{kernel}{LAUNCHER_SUFFIX}");
            // SAFETY: generated with exactly this signature by `launcher`.
            unsafe { lib.lib.get::<LaunchFn>(symbol.as_bytes()) }.map(|f| *f)
        };
        let launch = launcher_in(&module.lib, &k.source.name).map_err(|e| RunError::Kernel {
            kernel: k.source.name.clone(),
            detail: format!("CUDA emulator: {e}"),
        })?;
        let decode = crate::launch::resolve_decode(
            k,
            &module.decode_modules,
            |lib, name| launcher_in(lib, name).ok(),
            "CUDA emulator: in none of the decode kernels' objects loaded before its matmul's \
             (Backend::load_runtime)",
        )?;
        Ok(EmulatedKernel {
            name: k.source.name.clone(),
            dtypes: crate::launch::dtypes(&k.kernel),
            spec: k.source.launch.clone(),
            launch,
            decode,
        })
    }

    fn alloc(&mut self, bytes: usize, _what: &str) -> Result<HostBuffer, RunError> {
        Ok(HostBuffer::zeroed(bytes))
    }

    fn upload(&mut self, data: &[u8], _what: &str) -> Result<HostBuffer, RunError> {
        Ok(HostBuffer::from_bytes(data))
    }

    fn download(&mut self, buf: &HostBuffer, bytes: usize) -> Result<Vec<u8>, RunError> {
        Ok(buf.read(bytes))
    }

    fn launch(
        &mut self,
        k: &EmulatedKernel,
        out: &HostBuffer,
        inputs: &[&HostBuffer],
        b: &Bindings,
    ) -> Result<(), RunError> {
        let bytes: Vec<usize> = [out.len()]
            .into_iter()
            .chain(inputs.iter().map(|i| i.len()))
            .collect();
        let buffers = crate::launch::elements(&k.dtypes, &bytes);
        let Some(launch) = crate::launch::resolve(&k.spec, b, &k.name, &buffers)? else {
            return Ok(());
        };
        let scalars: Vec<i64> = launch
            .symbols
            .iter()
            .copied()
            .chain([launch.units])
            .collect();
        let mut args: Vec<*mut u8> = vec![out.as_mut_ptr()];
        args.extend(inputs.iter().map(|i| i.as_mut_ptr()));
        args.extend(scalars.iter().map(|v| v as *const i64 as *mut u8));
        // SAFETY: the launcher unpacks exactly these arguments; buffers are sized by the plan.
        let f = match &k.decode {
            Some((decode, rows)) if rows.eval(b)? == 1 => decode,
            _ => &k.launch,
        };
        let rc = unsafe {
            f(
                args.as_mut_ptr(),
                launch.grid.as_ptr(),
                launch.block.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(RunError::Kernel {
                kernel: k.name.clone(),
                detail: "CUDA emulator: out of host memory for its threads".into(),
            });
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), RunError> {
        Ok(())
    }
}

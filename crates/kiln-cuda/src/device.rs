//! A CUDA GPU as a [`Device`]: buffers in device memory, kernels are functions of loaded
//! modules, launched in order on the context's default stream.

use crate::CudaModule;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use kiln_ir::{Bindings, Expr};
use kiln_program::UniqueKernel;
use kiln_program::{Device, LaunchSpec, RunError};
use std::sync::Arc;

/// True when the CUDA driver is installed and sees at least one device.
pub fn cuda_device_present() -> bool {
    // SAFETY: only probes for libcuda by name; nothing is called if it is absent.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return false;
    }
    CudaContext::device_count().map(|n| n > 0).unwrap_or(false)
}

/// A kernel's function and its launch spec; for a split matmul, also its decode kernel and
/// the row count that picks it (where it evaluates to 1; `codegen::decode_rows`).
pub struct CudaKernel {
    name: String,
    /// The output's and inputs' dtypes (`launch::dtypes`).
    dtypes: Vec<kiln_ir::DType>,
    f: CudaFunction,
    decode: Option<(CudaFunction, Expr)>,
    launch: LaunchSpec,
}

/// One GPU, through its context's default stream.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
}

impl CudaDevice {
    pub fn new(ctx: Arc<CudaContext>) -> CudaDevice {
        let name = format!(
            "CUDA device {} ({})",
            ctx.ordinal(),
            ctx.name().unwrap_or_else(|_| "unknown".into())
        );
        CudaDevice {
            stream: ctx.default_stream(),
            ctx,
            name,
        }
    }

    fn err(&self, what: &str, e: impl std::error::Error + Send + Sync + 'static) -> RunError {
        RunError::device(self.name.clone(), what, e)
    }

    /// Device memory check before an allocation: a clear error instead of a crash.
    fn ensure_free(&self, what: &str, bytes: usize) -> Result<(), RunError> {
        let (free, total) = self
            .ctx
            .mem_get_info()
            .map_err(|e| self.err("querying free memory", e))?;
        if bytes > free {
            return Err(RunError::OutOfMemory {
                device: self.name.clone(),
                what: what.into(),
                needed: bytes as u64,
                free: free as u64,
                total: total as u64,
            });
        }
        Ok(())
    }
}

impl Device for CudaDevice {
    type Module = CudaModule;
    type Buffer = CudaSlice<u8>;
    type Kernel = CudaKernel;

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn resolve(&mut self, module: &CudaModule, k: &UniqueKernel) -> Result<CudaKernel, RunError> {
        let not_found = |name: &str, detail: String| RunError::Kernel {
            kernel: name.to_string(),
            detail,
        };
        let CudaModule::Loaded {
            module,
            decode_modules,
        } = module
        else {
            return Err(not_found(
                &k.source.name,
                "was compiled without a device; compile with CudaBackend::for_device".into(),
            ));
        };
        let f = module
            .load_function(&k.source.name)
            .map_err(|e| not_found(&k.source.name, e.to_string()))?;
        let decode = crate::launch::resolve_decode(
            k,
            decode_modules,
            |m, name| m.load_function(name).ok(),
            "is in none of the decode kernels' modules loaded before its matmul's \
             (Backend::load_runtime)",
        )?;
        // A block larger than the driver allows the function (its registers and shared
        // memory) is refused here, naming the kernel, not at its launch with
        // CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES. The decode kernel has the matmul's block.
        let block = k.source.launch.local;
        check_block(&f, &k.source.name, block)?;
        if let Some((d, _)) = &decode {
            let name = format!("{}{}", k.source.name, crate::codegen::DECODE_SUFFIX);
            check_block(d, &name, block)?;
        }
        Ok(CudaKernel {
            name: k.source.name.clone(),
            dtypes: crate::launch::dtypes(&k.kernel),
            f,
            decode,
            launch: k.source.launch.clone(),
        })
    }

    fn alloc(&mut self, bytes: usize, what: &str) -> Result<CudaSlice<u8>, RunError> {
        self.ensure_free(what, bytes)?;
        self.stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(|e| self.err(&format!("allocating {what}"), e))
    }

    fn upload(&mut self, data: &[u8], what: &str) -> Result<CudaSlice<u8>, RunError> {
        if data.is_empty() {
            return self.alloc(1, what);
        }
        self.ensure_free(what, data.len())?;
        self.stream
            .clone_htod(data)
            .map_err(|e| self.err(&format!("uploading {what}"), e))
    }

    fn download(&mut self, buf: &CudaSlice<u8>, bytes: usize) -> Result<Vec<u8>, RunError> {
        let mut host = self
            .stream
            .clone_dtoh(&buf.slice(..bytes.max(1)))
            .map_err(|e| self.err("downloading an output", e))?;
        host.truncate(bytes);
        Ok(host)
    }

    fn launch(
        &mut self,
        k: &CudaKernel,
        out: &CudaSlice<u8>,
        inputs: &[&CudaSlice<u8>],
        b: &Bindings,
    ) -> Result<(), RunError> {
        let bytes: Vec<usize> = [out.len()]
            .into_iter()
            .chain(inputs.iter().map(|i| i.len()))
            .collect();
        let buffers = crate::launch::elements(&k.dtypes, &bytes);
        let Some(launch) = crate::launch::resolve(&k.launch, b, &k.name, &buffers)? else {
            return Ok(());
        };
        let f = match &k.decode {
            Some((decode, rows)) if rows.eval(b)? == 1 => decode,
            _ => &k.f,
        };
        let mut lb = self.stream.launch_builder(f);
        lb.arg(out);
        for i in inputs {
            lb.arg(*i);
        }
        for v in &launch.symbols {
            lb.arg(v);
        }
        lb.arg(&launch.units);
        let cfg = LaunchConfig {
            grid_dim: launch.grid.into(),
            block_dim: launch.block.into(),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match the kernel's generated signature; buffers are sized by the plan.
        unsafe { lb.launch(cfg) }.map_err(|e| self.err("launching a kernel", e))?;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), RunError> {
        self.stream
            .synchronize()
            .map_err(|e| self.err("synchronizing", e))
    }
}

/// Whether a block of `block` threads fits function `f` (`kernel`):
/// [`crate::preflight::check_block`] against the driver's limit for it.
fn check_block(f: &CudaFunction, kernel: &str, block: [u32; 3]) -> Result<(), RunError> {
    let error = |detail: String| RunError::Kernel {
        kernel: kernel.to_string(),
        detail,
    };
    let limit = f
        .max_threads_per_block()
        .map_err(|e| error(format!("querying its maximum threads per block: {e}")))?;
    crate::preflight::check_block(block, limit).map_err(error)
}

/// GPU 0's name and its device-to-device copy bandwidth (bytes read plus bytes written, per
/// second): the streaming bandwidth that bounds decode, as `kiln bench decode` reports it.
pub fn copy_bandwidth(bytes: usize) -> Result<(String, f64), RunError> {
    let fail =
        |what: &str, e: cudarc::driver::DriverError| RunError::device("CUDA device 0", what, e);
    let ctx = CudaContext::new(0).map_err(|e| fail("opening", e))?;
    let name = ctx.name().map_err(|e| fail("name", e))?;
    let stream = ctx.default_stream();
    let src = stream
        .alloc_zeros::<u8>(bytes)
        .map_err(|e| fail("alloc", e))?;
    let mut dst = stream
        .alloc_zeros::<u8>(bytes)
        .map_err(|e| fail("alloc", e))?;
    let mut best = 0.0f64;
    for _ in 0..5 {
        stream.synchronize().map_err(|e| fail("synchronize", e))?;
        let t = std::time::Instant::now();
        stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(|e| fail("copy", e))?;
        stream.synchronize().map_err(|e| fail("synchronize", e))?;
        best = best.max(2.0 * bytes as f64 / t.elapsed().as_secs_f64());
    }
    Ok((name, best))
}

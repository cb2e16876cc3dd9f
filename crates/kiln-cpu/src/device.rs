//! The CPU as a [`Device`]: buffers in host memory, kernels are functions in loaded shared
//! objects, each launch split into chunks of work units across a rayon pool.

use crate::codegen::work_units;
use crate::CpuModule;
use kiln_compile::UniqueKernel;
use kiln_ir::{Bindings, Expr, Tensor};
use kiln_runtime::{Device, HostBuffer, RunError};
use rayon::prelude::*;
use std::ffi::c_void;

type KernelFn = unsafe extern "C" fn(*const *mut c_void, *const i64, i64, i64);

/// Below this many element operations a kernel runs on the calling thread: splitting costs more.
const PARALLEL_WORK_THRESHOLD: i64 = 1 << 15;

/// A kernel's function and how its work splits.
pub struct CpuKernel {
    f: KernelFn,
    units: Expr,
    unit_work: Expr,
    symbols: Vec<String>,
}

/// Runs kernels on `threads` threads.
pub struct CpuDevice {
    pool: Option<rayon::ThreadPool>,
    threads: usize,
}

#[derive(Clone, Copy)]
struct Args<'a>(&'a [*mut c_void], &'a [i64]);
// SAFETY: kernels only read inputs and write disjoint output ranges per [lo, hi) chunk.
unsafe impl Send for Args<'_> {}
unsafe impl Sync for Args<'_> {}

impl Args<'_> {
    /// Calls a kernel on work units `[lo, hi)`.
    ///
    /// # Safety
    /// The pointers must cover the buffers the memory plan sized for this run.
    unsafe fn call(&self, f: KernelFn, lo: i64, hi: i64) {
        f(self.0.as_ptr(), self.1.as_ptr(), lo, hi)
    }
}

impl CpuDevice {
    pub fn new(threads: usize) -> Result<CpuDevice, RunError> {
        let threads = threads.max(1);
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("kiln-run-{i}"))
                    .build()
                    .map_err(|e| {
                        RunError::Unsupported(format!("cannot start {threads} threads: {e}"))
                    })?,
            )
        } else {
            None
        };
        Ok(CpuDevice { pool, threads })
    }
}

impl Device for CpuDevice {
    type Module = CpuModule;
    type Buffer = HostBuffer;
    type Kernel = CpuKernel;

    fn describe(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn resolve(&mut self, module: &CpuModule, k: &UniqueKernel) -> Result<CpuKernel, RunError> {
        // SAFETY: every kernel is defined with exactly this signature by codegen.
        let f: KernelFn = unsafe {
            *module
                .lib
                .get::<KernelFn>(k.source.name.as_bytes())
                .map_err(|e| RunError::Kernel {
                    kernel: k.source.name.clone(),
                    detail: e.to_string(),
                })?
        };
        let (units, unit_work) = work_units(&k.kernel);
        Ok(CpuKernel {
            f,
            units,
            unit_work,
            symbols: k.kernel.symbols(),
        })
    }

    fn alloc(&mut self, bytes: usize, _what: &str) -> Result<HostBuffer, RunError> {
        Ok(HostBuffer::zeroed(bytes))
    }

    fn upload(&mut self, data: &[u8], _what: &str) -> Result<HostBuffer, RunError> {
        Ok(HostBuffer::from_bytes(data))
    }

    fn adopt(&mut self, t: Tensor, _what: &str) -> Result<HostBuffer, RunError> {
        Ok(HostBuffer::from_tensor(t))
    }

    fn download(&mut self, buf: &HostBuffer, bytes: usize) -> Result<Vec<u8>, RunError> {
        Ok(buf.read(bytes))
    }

    fn launch(
        &mut self,
        k: &CpuKernel,
        out: &HostBuffer,
        inputs: &[&HostBuffer],
        b: &Bindings,
    ) -> Result<(), RunError> {
        let units = k.units.eval(b)?;
        if units <= 0 {
            return Ok(());
        }
        let syms: Vec<i64> = k
            .symbols
            .iter()
            .map(|s| Expr::sym(s).eval(b))
            .collect::<Result<_, _>>()?;
        let ptrs: Vec<*mut c_void> = std::iter::once(out)
            .chain(inputs.iter().copied())
            .map(|buf| buf.as_mut_ptr() as *mut c_void)
            .collect();
        let work = units.saturating_mul(k.unit_work.eval(b)?.max(1));
        let (f, args) = (k.f, Args(&ptrs, &syms));
        match &self.pool {
            Some(pool) if work >= PARALLEL_WORK_THRESHOLD && units > 1 => {
                let chunks = units.min(self.threads as i64 * 4);
                let per = (units + chunks - 1) / chunks;
                pool.install(|| {
                    (0..chunks).into_par_iter().for_each(|c| {
                        let (lo, hi) = (c * per, ((c + 1) * per).min(units));
                        if lo < hi {
                            // SAFETY: pointers cover the buffers the plan sized for `b`.
                            unsafe { args.call(f, lo, hi) }
                        }
                    })
                });
            }
            // SAFETY: as above.
            _ => unsafe { args.call(f, 0, units) },
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), RunError> {
        Ok(())
    }
}

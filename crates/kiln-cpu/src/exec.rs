//! Running a compiled graph on the CPU: buffers from the memory plan, kernels launched in
//! program order, each split into chunks of work units across a rayon pool.

use crate::codegen::work_units;
use crate::CpuModule;
use kiln_compile::carry::{slot_allocation, CarriedState};
use kiln_compile::{Compiled, Executable};
use kiln_ir::{Expr, IrError, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;
use std::ffi::c_void;

pub type RunError = IrError;

type KernelFn = unsafe extern "C" fn(*const *mut c_void, *const i64, i64, i64);

/// Below this many element operations a kernel runs on the calling thread: splitting costs more.
const PARALLEL_WORK_THRESHOLD: i64 = 1 << 15;

struct Launch {
    f: KernelFn,
    units: Expr,
    unit_work: Expr,
    symbols: Vec<String>,
}

pub struct CpuExecutable {
    compiled: Compiled<CpuModule>,
    launches: Vec<Launch>,
    params: HashMap<String, Tensor>,
    pool: Option<rayon::ThreadPool>,
    threads: usize,
    slots: Vec<Vec<u64>>,
    /// Outputs kept for the next run (see [`Executable::carry`]).
    carried: CarriedState<Vec<u64>>,
    /// With `KILN_PROFILE=1`: seconds and launches per kernel, printed when dropped.
    profile: Option<Vec<(f64, usize)>>,
}

#[derive(Clone, Copy)]
struct Ptrs<'a>(&'a [*mut c_void], &'a [i64]);
// SAFETY: kernels only read inputs and write disjoint output ranges per [lo, hi) chunk.
unsafe impl Send for Ptrs<'_> {}
unsafe impl Sync for Ptrs<'_> {}

impl Ptrs<'_> {
    /// Calls a kernel on work units `[lo, hi)`.
    ///
    /// # Safety
    /// The pointers must cover the buffers the memory plan sized for this run.
    unsafe fn call(&self, f: KernelFn, lo: i64, hi: i64) {
        f(self.0.as_ptr(), self.1.as_ptr(), lo, hi)
    }
}

impl CpuExecutable {
    /// Resolves every kernel's function; `threads` is the number of execution threads.
    pub fn new(compiled: Compiled<CpuModule>, threads: usize) -> Result<CpuExecutable, String> {
        let mut launches = Vec::new();
        for k in &compiled.kernels {
            let lib = &compiled.modules[k.module].lib;
            // SAFETY: every kernel is defined with exactly this signature by codegen.
            let f: KernelFn = unsafe {
                *lib.get::<KernelFn>(k.source.name.as_bytes())
                    .map_err(|e| format!("kernel {}: {e}", k.source.name))?
            };
            let (units, unit_work) = work_units(&k.kernel);
            launches.push(Launch {
                f,
                units,
                unit_work,
                symbols: k.kernel.symbols(),
            });
        }
        let threads = threads.max(1);
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("kiln-run-{i}"))
                    .build()
                    .map_err(|e| format!("cannot start {threads} threads: {e}"))?,
            )
        } else {
            None
        };
        Ok(CpuExecutable {
            compiled,
            launches,
            params: HashMap::new(),
            pool,
            threads,
            slots: Vec::new(),
            carried: CarriedState::default(),
            profile: std::env::var_os("KILN_PROFILE")
                .filter(|v| v != "0")
                .map(|_| vec![(0.0, 0); 0]),
        })
    }

    pub fn compiled(&self) -> &Compiled<CpuModule> {
        &self.compiled
    }
}

impl Executable for CpuExecutable {
    fn set_param(&mut self, name: &str, t: Tensor) -> Result<(), IrError> {
        self.compiled.program.check_param(name, &t)?;
        self.params.insert(name.into(), t);
        Ok(())
    }

    /// Runs the graph; `inputs` together with the bound params must cover every input.
    fn run(
        &mut self,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>, RunError> {
        let program = &self.compiled.program;
        let params = self.params.iter().map(|(k, v)| (k.as_str(), v));
        let b = program.bind_run(params, inputs, self.carried.shapes())?;

        let plan = &self.compiled.plan;
        let sizes = plan.slot_bytes(program, &b)?;
        self.slots.resize(sizes.len(), Vec::new());
        for (i, (slot, &bytes)) in self.slots.iter_mut().zip(&sizes).enumerate() {
            let words = bytes.div_ceil(8).max(1);
            if slot.len() < words {
                let carried = self.carried.holds_output(program, &plan.slot_of, i);
                *slot = vec![0u64; slot_allocation(bytes, carried).div_ceil(8).max(1)];
            }
        }
        let ptrs: Vec<*mut c_void> = program
            .buffers
            .iter()
            .enumerate()
            .map(|(i, buf)| match &buf.input {
                Some(name) => match self.carried.input(name) {
                    Some(c) => c.buf.as_ptr() as *mut c_void,
                    None => inputs
                        .get(name)
                        .unwrap_or_else(|| &self.params[name])
                        .bytes()
                        .as_ptr() as *mut c_void,
                },
                None => self.slots
                    [self.compiled.plan.slot_of[i].expect("every kernel output is planned")]
                .as_mut_ptr() as *mut c_void,
            })
            .collect();

        for (step, &u) in program.steps.iter().zip(&self.compiled.step_kernel) {
            let l = &self.launches[u];
            let units = l.units.eval(&b)?;
            if units <= 0 {
                continue;
            }
            let syms: Vec<i64> = l
                .symbols
                .iter()
                .map(|s| Expr::sym(s).eval(&b))
                .collect::<Result<_, _>>()?;
            let args: Vec<*mut c_void> = std::iter::once(ptrs[step.output])
                .chain(step.inputs.iter().map(|&i| ptrs[i]))
                .collect();
            let work = units.saturating_mul(l.unit_work.eval(&b)?.max(1));
            let f = l.f;
            let p = Ptrs(&args, &syms);
            let started = self.profile.is_some().then(std::time::Instant::now);
            match &self.pool {
                Some(pool) if work >= PARALLEL_WORK_THRESHOLD && units > 1 => {
                    let chunks = units.min(self.threads as i64 * 4);
                    let per = (units + chunks - 1) / chunks;
                    pool.install(|| {
                        (0..chunks).into_par_iter().for_each(|c| {
                            let (lo, hi) = (c * per, ((c + 1) * per).min(units));
                            if lo < hi {
                                // SAFETY: pointers cover the buffers the plan sized for `b`.
                                unsafe { p.call(f, lo, hi) }
                            }
                        })
                    });
                }
                // SAFETY: as above.
                _ => unsafe { f(args.as_ptr(), syms.as_ptr(), 0, units) },
            }
            if let (Some(prof), Some(t)) = (&mut self.profile, started) {
                prof.resize(self.launches.len(), (0.0, 0));
                prof[u].0 += t.elapsed().as_secs_f64();
                prof[u].1 += 1;
            }
        }

        let mut out = HashMap::new();
        for o in program.output_layouts(&b)? {
            if let Some(c) = self.carried.output_mut(o.name) {
                // The output's slot becomes the next run's input; the old input's buffer,
                // read for the last time by this run, becomes the slot.
                let slot = plan.slot_of[o.buffer].expect("carried outputs are computed");
                std::mem::swap(&mut self.slots[slot], &mut c.buf);
                c.shape = o.shape;
                continue;
            }
            // SAFETY: the output buffer holds o.bytes bytes written by its kernel.
            let bytes = unsafe { std::slice::from_raw_parts(ptrs[o.buffer] as *const u8, o.bytes) };
            out.insert(
                o.name.to_string(),
                Tensor::from_bytes(o.dtype, &o.shape, bytes),
            );
        }
        Ok(out)
    }

    fn carry(&mut self, output: &str, input: &str, initial: Tensor) -> Result<bool, IrError> {
        let mut buf = vec![0u64; initial.bytes().len().div_ceil(8).max(1)];
        // SAFETY: u64 storage viewed as bytes, at least as long as the tensor's.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, buf.len() * 8) };
        dst[..initial.bytes().len()].copy_from_slice(initial.bytes());
        self.carried
            .set(&self.compiled.program, output, input, &initial, buf)?;
        Ok(true)
    }
}

impl Drop for CpuExecutable {
    /// The `KILN_PROFILE` table: where run time went, per distinct kernel.
    fn drop(&mut self) {
        let Some(prof) = &self.profile else { return };
        let total: f64 = prof.iter().map(|p| p.0).sum();
        let mut rows: Vec<(usize, &(f64, usize))> = prof.iter().enumerate().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        eprintln!("kiln profile: {:.1} ms in kernels", total * 1e3);
        for (u, (secs, n)) in rows.into_iter().take(20) {
            eprintln!(
                "  {:>9.1} ms {:>5.1}% {:>7} launches  {}",
                secs * 1e3,
                100.0 * secs / total.max(1e-12),
                n,
                self.compiled.kernels[u].source.name
            );
        }
    }
}

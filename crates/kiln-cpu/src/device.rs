//! The CPU as a [`Device`]: buffers in host memory, kernels are functions in loaded shared
//! objects, each launch split into chunks of work units across the device's threads (a
//! persistent spin-then-park pool, [`crate::pool`], or a rayon pool). Weights that
//! matmuls read as `x @ W^T` are packed into panels when they are bound ([`crate::pack`]);
//! each worker has scratch memory that kernels use for their tiles.

use crate::codegen::SCRATCH_HEADER;
use crate::isa::Int8Types;
use crate::pack::{pack, packed_weight, Panels};
use crate::CpuModule;
use kiln_ir::{Bindings, DType, Expr, Tensor};
use kiln_program::{Device, LaunchSpec, RunError};
use kiln_program::{Kernel, KernelKind, UniqueKernel};
use kiln_runtime::{HostBuffer, HugePageArena};
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::ffi::c_void;

type KernelFn = unsafe extern "C" fn(*const *mut c_void, *const i64, i64, i64, *mut c_void);

/// Below this many element operations a kernel runs on the calling thread: splitting costs more.
const PARALLEL_WORK_THRESHOLD: i64 = 1 << 15;

/// A kernel's function and how its work splits (its launch spec, from codegen).
pub struct CpuKernel {
    name: String,
    f: KernelFn,
    launch: LaunchSpec,
    /// The launch spec's symbols in `sym[]` order, as expressions made once (a launch
    /// evaluates them without allocating).
    symbols: Vec<Expr>,
    /// The input read as packed panels, its dtype, depth (`K`) and panel width (`KILN_NR`
    /// of the module the kernel was compiled in).
    packed: Option<(usize, DType, Expr, Panels)>,
}

/// A buffer in host memory; a weight may be held packed for the matmuls that read it so.
pub struct CpuBuffer {
    /// The bytes as the graph sees them; `None` for a weight only packed readers read.
    plain: Option<HostBuffer>,
    /// The weight in panels ([`crate::pack`]).
    packed: Option<HostBuffer>,
}

impl CpuBuffer {
    fn plain(b: HostBuffer) -> CpuBuffer {
        CpuBuffer {
            plain: Some(b),
            packed: None,
        }
    }
}

/// How launches are spread over threads. `KILN_CPU_DISPATCH=rayon` picks a rayon pool (a
/// join per launch), for comparison; the default is the persistent pool.
enum Dispatch {
    /// One thread: every launch runs on the caller.
    Caller,
    /// `threads - 1` persistent workers plus the caller.
    Spin(crate::pool::Pool),
    /// A rayon pool of `threads` threads; the caller waits.
    Rayon(rayon::ThreadPool),
}

/// Scratch memory per thread (the pool's workers, the calling thread last), 64-byte
/// aligned, grown to what the largest launch so far asked for.
struct Scratch {
    arenas: Vec<HostBuffer>,
    /// Each arena's first 64-byte boundary (what kernels get).
    aligned: Vec<usize>,
    bytes: usize,
}

impl Scratch {
    fn new(threads: usize) -> Scratch {
        // Room for the zeroed header at a 64-byte boundary before any launch reserves more.
        Scratch::of(threads, 64)
    }

    fn of(threads: usize, bytes: usize) -> Scratch {
        let arenas: Vec<HostBuffer> = (0..threads)
            .map(|_| HostBuffer::zeroed(bytes + 64))
            .collect();
        let aligned = arenas
            .iter()
            .map(|a| (a.as_mut_ptr() as usize).next_multiple_of(64))
            .collect();
        Scratch {
            arenas,
            aligned,
            bytes,
        }
    }

    fn reserve(&mut self, bytes: usize) {
        if bytes > self.bytes {
            *self = Scratch::of(self.arenas.len(), bytes);
        }
    }

    /// Each thread's scratch, with its first [`SCRATCH_HEADER`] bytes zeroed: a launch starts
    /// with no state from the one before.
    fn ptrs(&self) -> &[usize] {
        for &p in &self.aligned {
            // SAFETY: the arena holds at least `bytes + 64` bytes from its start, at least
            // 128, so the header after the alignment; no kernel runs now.
            unsafe { std::ptr::write_bytes(p as *mut u8, 0, SCRATCH_HEADER as usize) };
        }
        &self.aligned
    }
}

/// Runs kernels on `threads` threads.
pub struct CpuDevice {
    dispatch: Dispatch,
    threads: usize,
    scratch: Scratch,
    /// The panels of the kernels resolved so far (every module of a program is compiled for
    /// one ISA and quantized path); weights are packed to them.
    panel: Option<Panels>,
    /// Where packed weights (all but the largest) are placed, one after the other on 2 MiB
    /// pages: the GEMV streams them through huge pages, none rounded up to whole ones.
    weights: HugePageArena,
    /// A launch's argument arrays, kept from launch to launch (no allocation per launch).
    args: ArgArrays,
}

/// The kernel arguments of the launch in progress: buffer pointers (output first) and symbol
/// values. Between launches they hold stale values nothing reads.
#[derive(Default)]
struct ArgArrays {
    ptrs: Vec<*mut c_void>,
    syms: Vec<i64>,
}
// SAFETY: the pointers are only dereferenced by the kernels of the launch that set them,
// while the buffers they point into are borrowed by that launch.
unsafe impl Send for ArgArrays {}

#[derive(Clone, Copy)]
struct Args<'a>(&'a [*mut c_void], &'a [i64], &'a [usize]);
// SAFETY: kernels only read inputs and write disjoint output ranges per [lo, hi) chunk.
unsafe impl Send for Args<'_> {}
unsafe impl Sync for Args<'_> {}

impl Args<'_> {
    /// Calls a kernel on work units `[lo, hi)`.
    ///
    /// # Safety
    /// The pointers must cover the buffers the memory plan sized for this run.
    unsafe fn call(&self, f: KernelFn, lo: i64, hi: i64, worker: usize) {
        f(
            self.0.as_ptr(),
            self.1.as_ptr(),
            lo,
            hi,
            self.2[worker] as *mut c_void,
        )
    }
}

impl CpuDevice {
    pub fn new(threads: usize) -> Result<CpuDevice, RunError> {
        let threads = threads.max(1);
        let cannot = |e: &dyn std::fmt::Display| {
            RunError::Unsupported(format!("cannot start {threads} threads: {e}"))
        };
        let rayon = std::env::var("KILN_CPU_DISPATCH").is_ok_and(|v| v == "rayon");
        let dispatch = if threads == 1 {
            Dispatch::Caller
        } else if rayon {
            Dispatch::Rayon(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("kiln-run-{i}"))
                    .build()
                    .map_err(|e| cannot(&e))?,
            )
        } else {
            Dispatch::Spin(crate::pool::Pool::new(threads - 1).map_err(|e| cannot(&e))?)
        };
        let scratch = Scratch::new(threads);
        Ok(CpuDevice {
            dispatch,
            threads,
            scratch,
            panel: None,
            weights: HugePageArena::default(),
            args: ArgArrays::default(),
        })
    }
}

impl CpuDevice {
    /// The panels `module` was compiled for (its `kiln_panel_columns` and `kiln_quant_int8`),
    /// which must be those of every module resolved before: weights are packed once, for all
    /// their readers.
    fn panel_of(&mut self, module: &CpuModule, kernel: &str) -> Result<Panels, RunError> {
        let bad = |detail: String| RunError::Kernel {
            kernel: kernel.to_string(),
            detail,
        };
        let read = |name: &str| -> Result<i32, RunError> {
            // SAFETY: the prelude of every translation unit defines both as a `const int`.
            unsafe {
                let sym = module.lib.get::<*const i32>(name.as_bytes()).map_err(|e| {
                    bad(format!("its module does not say its panels ({name}): {e}"))
                })?;
                Ok(**sym)
            }
        };
        let columns = read("kiln_panel_columns")?;
        let columns = usize::try_from(columns)
            .ok()
            .filter(|p| [16, 32].contains(p))
            .ok_or_else(|| bad(format!("its module says panels are {columns} columns wide")))?;
        let bits = read("kiln_quant_int8")?;
        let int8_quant = u32::try_from(bits)
            .ok()
            .and_then(Int8Types::from_bits)
            .ok_or_else(|| bad(format!("its module says integer-path types {bits:#x}")))?;
        let panel = Panels {
            columns,
            int8_quant,
        };
        match self.panel {
            Some(p) if p != panel => Err(bad(format!(
                "compiled for {panel:?}, but this device packs weights as {p:?} for kernels resolved before (kernels compiled for two ISAs or quantized paths in one program)"
            ))),
            _ => {
                self.panel = Some(panel);
                Ok(panel)
            }
        }
    }
}

impl Device for CpuDevice {
    type Module = CpuModule;
    type Buffer = CpuBuffer;
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
        let packed = match packed_weight(&k.kernel) {
            Some(i) => {
                let depth = match &k.kernel.kind {
                    KernelKind::MatMul { k, .. } => k.clone(),
                    _ => unreachable!("packed operands are matmul operands"),
                };
                let panel = self.panel_of(module, &k.source.name)?;
                Some((i, k.kernel.inputs[i], depth, panel))
            }
            None => None,
        };
        Ok(CpuKernel {
            name: k.source.name.clone(),
            f,
            symbols: k
                .source
                .launch
                .symbols
                .iter()
                .map(|s| Expr::sym(s))
                .collect(),
            launch: k.source.launch.clone(),
            packed,
        })
    }

    fn alloc(&mut self, bytes: usize, _what: &str) -> Result<CpuBuffer, RunError> {
        Ok(CpuBuffer::plain(HostBuffer::zeroed(bytes)))
    }

    fn upload(&mut self, data: &[u8], _what: &str) -> Result<CpuBuffer, RunError> {
        Ok(CpuBuffer::plain(HostBuffer::from_bytes(data)))
    }

    fn adopt(&mut self, t: Tensor, _what: &str) -> Result<CpuBuffer, RunError> {
        Ok(CpuBuffer::plain(HostBuffer::from_tensor(t)))
    }

    /// Packs the weight for the matmuls that read it as packed panels ([`packed_weight`]);
    /// keeps the plain bytes only if another kernel reads them (a tied embedding's gather),
    /// without a copy when they are a view of a mapped file.
    fn adopt_weight(
        &mut self,
        t: Tensor,
        readers: &[(&Kernel, usize)],
        bindings: &Bindings,
        what: &str,
    ) -> Result<CpuBuffer, RunError> {
        let packed: Vec<&Kernel> = readers
            .iter()
            .filter(|(k, i)| packed_weight(k) == Some(*i))
            .map(|(k, _)| *k)
            .collect();
        // The panels' depth is the products' K, which need not be the tensor's last dimension
        // (a reshaped weight), evaluated with the symbols the weight's shape binds. Readers
        // that disagree on it, or whose K the weight does not determine, get the plain bytes,
        // packed per launch with their own K (`launch`).
        let depths: BTreeSet<Option<i64>> =
            packed.iter().map(|k| matmul_depth(k, bindings)).collect();
        let depth = match depths.iter().next() {
            Some(Some(d)) if depths.len() == 1 && *d > 0 => *d as usize,
            _ => return self.adopt(t, what),
        };
        let Some(panel) = self.panel else {
            return Err(RunError::Unsupported(format!(
                "{what} is read as packed panels by kernels this device has not resolved"
            )));
        };
        let packed_reads = packed.len();
        let pack_it = || {
            if t.is_shared() {
                pack_shared(&t, depth, panel)
            } else {
                pack(t.bytes(), t.dtype(), depth, panel)
            }
        };
        let packed = match &self.dispatch {
            Dispatch::Rayon(pool) => pool.install(pack_it),
            _ => pack_it(),
        };
        // A weight in a mapped file (`Tensor::from_shared`: a GGUF file's embedding table)
        // stays a view of it: the gather touches only the pages of the rows it reads. One no
        // other kernel reads is freed before its panels are copied into the arena.
        let plain = (packed_reads < readers.len()).then(|| HostBuffer::from_tensor(t));
        let packed = self.weights.place(packed);
        Ok(CpuBuffer {
            plain,
            packed: Some(packed),
        })
    }

    fn download(&mut self, buf: &CpuBuffer, bytes: usize) -> Result<Vec<u8>, RunError> {
        let plain = buf
            .plain
            .as_ref()
            .ok_or_else(|| RunError::Unsupported("a packed weight cannot be read back".into()))?;
        Ok(plain.read(bytes))
    }

    fn download_into(&mut self, buf: &CpuBuffer, out: &mut [u8]) -> Result<(), RunError> {
        let plain = buf
            .plain
            .as_ref()
            .ok_or_else(|| RunError::Unsupported("a packed weight cannot be read back".into()))?;
        // SAFETY: launches are synchronous: no kernel writes the buffer now.
        out.copy_from_slice(unsafe { plain.bytes(out.len()) });
        Ok(())
    }

    fn launch(
        &mut self,
        k: &CpuKernel,
        out: &CpuBuffer,
        inputs: &[&CpuBuffer],
        b: &Bindings,
    ) -> Result<(), RunError> {
        let units = k.launch.units.eval(b)?;
        if units <= 0 {
            return Ok(());
        }
        let ArgArrays { ptrs, syms } = &mut self.args;
        syms.clear();
        for s in &k.symbols {
            syms.push(s.eval(b)?);
        }
        fn plain<'b>(k: &CpuKernel, buf: &'b CpuBuffer) -> Result<&'b HostBuffer, RunError> {
            buf.plain.as_ref().ok_or_else(|| RunError::Kernel {
                kernel: k.name.clone(),
                detail: "reads a weight that the device holds only packed".into(),
            })
        }
        // A per-run input read as packed panels (weights are packed once, when bound).
        let mut packed_now = None;
        ptrs.clear();
        ptrs.push(plain(k, out)?.as_mut_ptr() as *mut c_void);
        for (i, buf) in inputs.iter().enumerate() {
            let host = match (&k.packed, &buf.packed) {
                (Some((j, ..)), Some(p)) if *j == i => p,
                (Some((j, dtype, depth, panel)), None) if *j == i => {
                    let src = plain(k, buf)?;
                    let depth = depth.eval(b)?.max(1) as usize;
                    // SAFETY: launches are synchronous: nothing writes the input now.
                    let bytes = unsafe { src.bytes(src.len()) };
                    packed_now.insert(pack(bytes, *dtype, depth, *panel))
                }
                _ => plain(k, buf)?,
            };
            ptrs.push(host.as_mut_ptr() as *mut c_void);
        }
        self.scratch
            .reserve(k.launch.scratch.eval(b)?.max(0) as usize);
        let scratch = self.scratch.ptrs();
        let work = units.saturating_mul(k.launch.unit_work.eval(b)?.max(1));
        let threads = self.threads;
        let (f, args) = (k.f, Args(ptrs, syms, scratch));
        let parallel = work >= PARALLEL_WORK_THRESHOLD && units > 1;
        let chunks = units.min(threads as i64 * 4);
        let per = (units + chunks - 1) / chunks;
        match &mut self.dispatch {
            Dispatch::Spin(pool) if parallel => {
                pool.run(chunks as usize, &|c, worker| {
                    let (lo, hi) = (c as i64 * per, ((c as i64 + 1) * per).min(units));
                    if lo < hi {
                        // SAFETY: pointers cover the buffers the plan sized for `b`; each
                        // worker has its own scratch.
                        unsafe { args.call(f, lo, hi, worker) }
                    }
                });
            }
            Dispatch::Rayon(pool) if parallel => {
                pool.install(|| {
                    (0..chunks).into_par_iter().for_each(|c| {
                        let (lo, hi) = (c * per, ((c + 1) * per).min(units));
                        let worker = rayon::current_thread_index().unwrap_or(threads - 1);
                        if lo < hi {
                            // SAFETY: pointers cover the buffers the plan sized for `b`; each
                            // worker has its own scratch.
                            unsafe { args.call(f, lo, hi, worker) }
                        }
                    })
                });
            }
            // SAFETY: as above; the calling thread's scratch is the last.
            _ => unsafe { args.call(f, 0, units, threads - 1) },
        }
        drop(packed_now);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), RunError> {
        Ok(())
    }
}

/// [`pack`] for a weight that views a mapped file (`Tensor::from_shared`), a slice of rows at a
/// time, its pages given back after each: packed whole, all of it would be resident beside the
/// panels at once (a Qwen embedding table: 80 to 160 MB more at the peak of a load). The
/// slices are whole panels, so the panels are those `pack` makes of the whole.
fn pack_shared(t: &Tensor, depth: usize, panels: Panels) -> HostBuffer {
    /// Rows per slice, in panels.
    const SLICE_PANELS: usize = 256;
    let (dtype, bytes, columns) = (t.dtype(), t.bytes(), panels.columns);
    let rows = t.numel() / depth.max(1);
    let slice_rows = SLICE_PANELS * columns;
    if rows <= slice_rows {
        let p = pack(bytes, dtype, depth, panels);
        t.release_pages();
        return p;
    }
    let row_bytes = bytes.len() / rows;
    let panel_bytes = if dtype.is_quantized() {
        let group = if panels.int8_quant.has(dtype) && crate::pack_quant::integer_layout(dtype) {
            crate::pack_quant::group_bytes_int8(dtype, columns)
        } else {
            crate::pack_quant::group_bytes(dtype, columns)
        };
        depth / crate::pack_quant::GROUP * group
    } else {
        depth * columns * dtype.size_bytes()
    };
    let out = HostBuffer::zeroed(rows.div_ceil(columns) * panel_bytes);
    for (i, slice) in bytes.chunks(slice_rows * row_bytes).enumerate() {
        let part = pack(slice, dtype, depth, panels);
        let n = (slice.len() / row_bytes).div_ceil(columns) * panel_bytes;
        // SAFETY: `part` holds the slice's panels (n bytes) and `out` every panel; slice i's
        // panels start at panel i * SLICE_PANELS; nothing else refers to either.
        unsafe {
            std::ptr::copy_nonoverlapping(
                part.as_mut_ptr(),
                out.as_mut_ptr().add(i * SLICE_PANELS * panel_bytes),
                n,
            )
        };
        t.release_pages();
    }
    out
}

/// A matmul's depth `K`, when `bindings` determine it.
fn matmul_depth(k: &Kernel, bindings: &Bindings) -> Option<i64> {
    match &k.kind {
        KernelKind::MatMul { k, .. } => k.eval(bindings).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::tensor::SharedBytes;
    use std::sync::Arc;

    struct Words(Vec<u64>);

    impl SharedBytes for Words {
        fn bytes(&self) -> &[u8] {
            // SAFETY: the words' bytes; u8 has no alignment needs.
            unsafe { std::slice::from_raw_parts(self.0.as_ptr() as *const u8, self.0.len() * 8) }
        }
    }

    /// A shared weight packed a slice at a time gives the panels `pack` makes of the whole,
    /// for a row count that ends in a partial slice and a partial panel.
    #[test]
    fn packing_in_slices_makes_the_same_panels() {
        for (dtype, depth) in [(DType::Q8_0, 64), (DType::Q4_0, 32), (DType::F32, 8)] {
            // Whole 8-byte words of blocks (what `from_shared` takes).
            let rows = 2 * 256 * 32 + 40;
            let values: Vec<f32> = (0..rows * depth)
                .map(|i| ((i * 7919) % 251) as f32 / 50.0 - 2.5)
                .collect();
            let t = if dtype == DType::F32 {
                Tensor::from_f32(&[rows, depth], &values)
            } else {
                Tensor::quantize(dtype, &[rows, depth], &values).unwrap()
            };
            let words = Arc::new(Words(t.clone().into_words()));
            let len = t.bytes().len();
            assert_eq!(len % 8, 0);
            let shared = Tensor::from_shared(dtype, &[rows, depth], words).unwrap();
            for panels in [
                Panels::dequant(32),
                Panels::dequant(16),
                Panels {
                    columns: 32,
                    int8_quant: Int8Types::VNNI,
                },
                Panels {
                    columns: 16,
                    int8_quant: Int8Types::from_bits(Int8Types::bit(dtype)).unwrap(),
                },
            ] {
                let whole = pack(t.bytes(), dtype, depth, panels);
                let sliced = pack_shared(&shared, depth, panels);
                let n = whole.len().min(sliced.len());
                assert_eq!(whole.read(n), sliced.read(n), "{dtype} {panels:?}");
            }
        }
    }
}

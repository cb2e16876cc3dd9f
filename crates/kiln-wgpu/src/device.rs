//! A wgpu device as a kiln [`Device`]: storage buffers, kernels as compute pipelines, and
//! launches recorded into one compute pass per batch, submitted at `sync` or `download`.
//!
//! Each launch writes its `Params` words into the batch's params buffer at its own aligned
//! offset (a dynamic uniform offset), so a batch of hundreds of launches is one buffer write
//! and one submit; wgpu inserts the barriers between dependent dispatches.
//!
//! Memory is accounted here: lavapipe (and any driver without a memory budget) reports no
//! out-of-memory — it overcommits host memory and the process is killed later — so a
//! buffer that would pass the budget ([`WgpuDevice::budget`]) is refused with an error naming
//! it and the sizes.

use crate::gpu::{GpuError, Pipeline};
use crate::plan::{GemvPlan, KernelPlan, SLICE_BYTES};
use crate::{Gpu, WgpuModule};
use kiln_ir::Bindings;
use kiln_program::UniqueKernel;
use kiln_program::{Device, LaunchSpec, RunError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Launches one params buffer holds; a batch with more is submitted and a new one started.
const LAUNCHES_PER_BATCH: u64 = 2048;

/// A device buffer. Its size is a multiple of 4 bytes (wgpu's copy alignment).
pub struct WgpuBuffer {
    buf: wgpu::Buffer,
    accounted: Arc<AtomicU64>,
}

impl Drop for WgpuBuffer {
    fn drop(&mut self) {
        self.accounted.fetch_sub(self.buf.size(), Ordering::Relaxed);
    }
}

/// A kernel's pipeline, its launch spec (from codegen) and its plan (its i32 indices and
/// bindings).
pub struct WgpuKernel {
    name: String,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    launch: LaunchSpec,
    plan: KernelPlan,
    /// Bytes of its `Params` binding.
    params_bytes: u64,
}

/// Launches recorded but not submitted.
struct Batch {
    params: wgpu::Buffer,
    host: Vec<u8>,
    passes: Vec<(wgpu::ComputePipeline, wgpu::BindGroup, u32, [u32; 3])>,
}

/// One wgpu device, driven by kiln's executor.
pub struct WgpuDevice {
    gpu: Arc<Gpu>,
    name: String,
    budget: Option<u64>,
    allocated: Arc<AtomicU64>,
    batch: Option<Batch>,
    /// Distance between two launches' params (the device's uniform offset alignment).
    params_stride: u64,
    /// How matmuls with few rows run on this device.
    gemv: GemvPlan,
}

impl WgpuDevice {
    pub(crate) fn new(gpu: Arc<Gpu>, budget: Option<u64>, gemv: Option<GemvPlan>) -> WgpuDevice {
        let params_stride = (gpu.limits.min_uniform_buffer_offset_alignment as u64).max(256);
        WgpuDevice {
            gemv: gemv.unwrap_or_else(|| GemvPlan::for_adapter(gpu.info.device_type)),
            name: format!("wgpu device {}", gpu.describe()),
            gpu,
            budget,
            allocated: Arc::new(AtomicU64::new(0)),
            batch: None,
            params_stride,
        }
    }

    /// The bytes of device memory kiln may use on this device, if it keeps its own account.
    pub fn budget(&self) -> Option<u64> {
        self.budget
    }

    /// The wgpu device underneath (tests simulate device loss through it).
    #[doc(hidden)]
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    fn err(&self, what: &str, e: GpuError) -> RunError {
        RunError::device(self.name.clone(), what, e)
    }

    /// A zero-filled (wgpu clears new buffers) storage buffer of at least `bytes` bytes,
    /// mapped for writing when `mapped`.
    fn create(&mut self, bytes: usize, what: &str, mapped: bool) -> Result<WgpuBuffer, RunError> {
        let size = (bytes as u64).next_multiple_of(4).max(4);
        let max = self.gpu.limits.max_buffer_size;
        if size > max {
            return Err(RunError::Unsupported(format!(
                "{what} needs {size} bytes in one buffer, more than {} allows (max_buffer_size {max})",
                self.name
            )));
        }
        let used = self.allocated.load(Ordering::Relaxed);
        if let Some(total) = self.budget {
            if used + size > total {
                return Err(RunError::OutOfMemory {
                    device: self.name.clone(),
                    what: what.into(),
                    needed: size,
                    free: total.saturating_sub(used),
                    total,
                });
            }
        }
        let buf = self
            .gpu
            .scoped(&format!("allocating {what} ({size} bytes)"), || {
                self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(what),
                    size,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: mapped,
                })
            })
            .map_err(|e| self.err(&format!("allocating {what}"), e))?;
        self.allocated.fetch_add(size, Ordering::Relaxed);
        Ok(WgpuBuffer {
            buf,
            accounted: self.allocated.clone(),
        })
    }

    /// Submits the recorded launches.
    fn flush(&mut self) -> Result<(), RunError> {
        let Some(batch) = self.batch.take() else {
            return Ok(());
        };
        let n = batch.passes.len();
        self.gpu
            .scoped(&format!("submitting {n} kernel launches"), || {
                self.gpu.queue.write_buffer(&batch.params, 0, &batch.host);
                let mut enc = self.gpu.device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    for (pipeline, bind_group, offset, grid) in &batch.passes {
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, bind_group, &[*offset]);
                        pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
                    }
                }
                self.gpu.queue.submit([enc.finish()]);
            })
            .map_err(|e| self.err(&format!("running {n} kernels"), e))
    }

    /// The batch to record into, with room for one more launch.
    fn batch(&mut self) -> Result<&mut Batch, RunError> {
        let full = self
            .batch
            .as_ref()
            .is_some_and(|b| b.passes.len() as u64 >= LAUNCHES_PER_BATCH);
        if full {
            self.flush()?;
        }
        if self.batch.is_none() {
            let size = LAUNCHES_PER_BATCH * self.params_stride;
            let params = self
                .gpu
                .scoped("allocating launch parameters", || {
                    self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("launch parameters"),
                        size,
                        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    })
                })
                .map_err(|e| self.err("allocating launch parameters", e))?;
            self.batch = Some(Batch {
                params,
                host: Vec::new(),
                passes: Vec::new(),
            });
        }
        Ok(self.batch.as_mut().expect("just created"))
    }
}

/// Names buffer `i` of a kernel (0: its output) in messages.
fn buffer_name(i: usize) -> String {
    if i == 0 {
        "its output".into()
    } else {
        format!("its input {}", i - 1)
    }
}

impl Device for WgpuDevice {
    type Module = WgpuModule;
    type Buffer = WgpuBuffer;
    type Kernel = WgpuKernel;

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn resolve(&mut self, module: &WgpuModule, k: &UniqueKernel) -> Result<WgpuKernel, RunError> {
        let name = &k.source.name;
        let fail = |detail: String| RunError::Kernel {
            kernel: name.clone(),
            detail,
        };
        let Some(Pipeline {
            pipeline,
            layout,
            bindings,
        }) = module.pipeline(name)
        else {
            return Err(fail(if module.is_loaded() {
                "is not in its module".into()
            } else {
                "was compiled without a device; open the wgpu backend for running".into()
            }));
        };
        let plan = KernelPlan::of(&k.kernel);
        let expected = 1 + plan.slices.iter().sum::<u32>() as usize;
        if bindings.len() != expected {
            return Err(fail(format!(
                "its shader has {} bindings, its plan {expected}",
                bindings.len()
            )));
        }
        Ok(WgpuKernel {
            name: name.clone(),
            pipeline: pipeline.clone(),
            layout: layout.clone(),
            params_bytes: (4 * plan.params_words() as u64).next_multiple_of(16),
            launch: k.source.launch.clone(),
            plan,
        })
    }

    fn alloc(&mut self, bytes: usize, what: &str) -> Result<WgpuBuffer, RunError> {
        self.create(bytes, what, false)
    }

    fn upload(&mut self, data: &[u8], what: &str) -> Result<WgpuBuffer, RunError> {
        let b = self.create(data.len(), what, true)?;
        {
            let mut view = b
                .buf
                .get_mapped_range_mut(..)
                .map_err(|e| RunError::device(self.name.clone(), format!("uploading {what}"), e))?;
            view.slice(..data.len()).copy_from_slice(data);
        }
        b.buf.unmap();
        Ok(b)
    }

    fn download(&mut self, buf: &WgpuBuffer, bytes: usize) -> Result<Vec<u8>, RunError> {
        self.flush()?;
        self.gpu
            .read(&buf.buf, bytes as u64)
            .map_err(|e| self.err("downloading an output", e))
    }

    fn launch(
        &mut self,
        k: &WgpuKernel,
        out: &WgpuBuffer,
        inputs: &[&WgpuBuffer],
        b: &Bindings,
    ) -> Result<(), RunError> {
        let limits = &self.gpu.limits;
        let launch = k
            .plan
            .launch(
                &k.launch,
                b,
                limits.max_compute_workgroups_per_dimension,
                self.gemv,
            )
            .map_err(|e| RunError::Kernel {
                kernel: k.name.clone(),
                detail: format!("cannot run on {}: {e}", self.name),
            })?;
        let Some(launch) = launch else {
            return Ok(());
        };
        // Storage bindings: each buffer whole when one binding holds it, else in slices.
        let max_binding = limits.max_storage_buffer_binding_size / 4 * 4;
        let mut ranges: Vec<(&wgpu::Buffer, u64, u64)> = Vec::new();
        for (i, buf) in std::iter::once(out)
            .chain(inputs.iter().copied())
            .enumerate()
        {
            let size = buf.buf.size();
            let slices = k.plan.slices[i] as u64;
            let holds = if slices == 1 {
                max_binding
            } else {
                slices * SLICE_BYTES
            };
            // Only what the kernel may touch must be bound (a slot's buffer can be larger
            // than the tensor in it).
            let needed = launch.extents[i].min(size);
            if needed > holds {
                return Err(RunError::Kernel {
                    kernel: k.name.clone(),
                    detail: format!(
                        "{} spans {needed} bytes, more than {} binds ({holds} bytes; \
                         max_storage_buffer_binding_size {})",
                        buffer_name(i),
                        self.name,
                        limits.max_storage_buffer_binding_size
                    ),
                });
            }
            if slices == 1 {
                ranges.push((&buf.buf, 0, size.min(max_binding)));
            } else {
                for j in 0..slices {
                    let off = j * SLICE_BYTES;
                    // Slices past the end of a smaller buffer repeat its start; never read.
                    let (off, len) = if off < size {
                        (off, (size - off).min(SLICE_BYTES))
                    } else {
                        (0, size.min(SLICE_BYTES))
                    };
                    ranges.push((&buf.buf, off, len));
                }
            }
        }
        let stride = self.params_stride;
        let (name, layout, params_bytes) = (k.name.clone(), k.layout.clone(), k.params_bytes);
        let gpu = self.gpu.clone();
        let batch = self.batch()?;
        let offset = batch.passes.len() as u64 * stride;
        let mut words: Vec<u8> = launch.params.iter().flat_map(|w| w.to_le_bytes()).collect();
        words.resize(params_bytes as usize, 0);
        batch.host.resize(offset as usize, 0);
        batch.host.extend_from_slice(&words);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &batch.params,
                offset: 0,
                size: std::num::NonZeroU64::new(params_bytes),
            }),
        }];
        for (j, (buf, off, len)) in ranges.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: 1 + j as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: buf,
                    offset: *off,
                    size: std::num::NonZeroU64::new(*len),
                }),
            });
        }
        let bind_group = gpu
            .scoped(&format!("binding the buffers of kernel {name}"), || {
                gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(&name),
                    layout: &layout,
                    entries: &entries,
                })
            })
            .map_err(|e| {
                RunError::device(
                    format!("wgpu device {}", gpu.describe()),
                    format!("launching kernel {name}"),
                    e,
                )
            })?;
        batch
            .passes
            .push((k.pipeline.clone(), bind_group, offset as u32, launch.grid));
        Ok(())
    }

    fn sync(&mut self) -> Result<(), RunError> {
        self.flush()?;
        self.gpu
            .wait(None)
            .map_err(|e| self.err("waiting for kernels", e))
    }
}

/// The device's copy bandwidth (bytes read plus bytes written per second, best of five
/// buffer-to-buffer copies of 256 MiB): the streaming bandwidth that bounds decode.
pub(crate) fn copy_bandwidth(gpu: &Gpu) -> Result<(String, f64), RunError> {
    let name = gpu.describe();
    let fail = |what: &str, e: GpuError| RunError::device(name.clone(), what, e);
    let bytes: u64 = (256 << 20).min(gpu.limits.max_buffer_size / 4 * 4);
    let make = || {
        gpu.scoped("allocating a bandwidth probe", || {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bandwidth probe"),
                size: bytes,
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    };
    let (src, dst) = (
        make().map_err(|e| fail("alloc", e))?,
        make().map_err(|e| fail("alloc", e))?,
    );
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let idx = gpu
            .scoped("copying", || {
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                enc.copy_buffer_to_buffer(&src, 0, &dst, 0, bytes);
                gpu.queue.submit([enc.finish()])
            })
            .map_err(|e| fail("copy", e))?;
        gpu.wait(Some(idx)).map_err(|e| fail("copy", e))?;
        best = best.max(2.0 * bytes as f64 / t.elapsed().as_secs_f64());
    }
    Ok((name, best))
}

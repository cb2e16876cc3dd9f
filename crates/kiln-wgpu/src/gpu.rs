//! wgpu underneath kiln: adapter selection, devices, pipelines, warm-up dispatches, buffers,
//! and errors that never panic.
//!
//! wgpu reports most errors asynchronously to an "uncaptured error" handler whose default
//! panics. Here every call that can fail runs inside error scopes (`OutOfMemory`, `Validation`,
//! `Internal`; thread-local, so compile threads do not see each other's errors), the
//! uncaptured handler only records, and device loss is latched by the device-lost callback and
//! checked before and after each operation.

use crate::shader::{Binding, Validated};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// What went wrong on a wgpu device; the message names the operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GpuError {
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
    #[error("wgpu validation error: {0}")]
    Validation(String),
    #[error("wgpu internal error: {0}")]
    Internal(String),
    #[error("the device was lost: {0}")]
    DeviceLost(String),
    #[error("reading a buffer back failed: {0}")]
    Map(String),
    /// The adapter would not open a device ([`Gpu::new`]); `adapter` describes it.
    #[error("{adapter}: requesting a device failed: {source}")]
    RequestDevice {
        adapter: String,
        #[source]
        source: wgpu::RequestDeviceError,
    },
}

/// No adapter kiln can run on ([`select_adapter`]): what was asked for and what was found.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", no_adapter_message(self))]
pub struct AdapterError {
    /// The APIs searched (`WGPU_BACKEND`, else Vulkan, Metal and DX12).
    pub backends: wgpu::Backends,
    /// `KILN_WGPU_ADAPTER`, when set.
    pub filter: Option<String>,
    /// Every adapter enumerated (none matched the filter), described.
    pub seen: Vec<String>,
}

fn no_adapter_message(e: &AdapterError) -> String {
    let mut m = format!("no wgpu adapter found for {:?}", e.backends);
    if let Some(f) = &e.filter {
        m.push_str(&format!(" matching KILN_WGPU_ADAPTER={f:?}"));
    }
    if e.seen.is_empty() {
        m.push_str(
            " (none was enumerated: is a GPU driver installed? On Linux without a GPU, \
             install Mesa's lavapipe (Debian: mesa-vulkan-drivers); check \
             VK_DRIVER_FILES and WGPU_BACKEND)",
        );
    } else {
        m.push_str(&format!(" (adapters seen: {})", e.seen.join("; ")));
    }
    m
}

/// An adapter kiln runs on, and the instance that found it.
#[derive(Clone)]
pub struct Adapter {
    pub adapter: wgpu::Adapter,
    pub info: wgpu::AdapterInfo,
    _instance: wgpu::Instance,
}

impl Adapter {
    /// The adapter, its API and driver in one line.
    pub fn describe(&self) -> String {
        describe(&self.info)
    }
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    let driver = [info.driver.as_str(), info.driver_info.as_str()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "{} ({:?}, {:?}{})",
        info.name,
        info.backend,
        info.device_type,
        if driver.is_empty() {
            String::new()
        } else {
            format!(", {driver}")
        }
    )
}

/// The APIs kiln looks for adapters on: `WGPU_BACKEND` (wgpu's own parser: `vulkan`, `metal`,
/// `dx12`, comma lists) or else Vulkan, Metal and DX12. kiln is built without wgpu's OpenGL
/// backend, to which wgpu otherwise falls back silently where no Vulkan driver is installed.
pub fn backends_from_env() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY)
}

/// Picks an adapter: `KILN_WGPU_ADAPTER` is a case-insensitive substring of the adapter's name;
/// among the matches a discrete GPU beats an integrated one, a virtual one, then the CPU.
pub fn select_adapter() -> Result<Adapter, AdapterError> {
    let backends = backends_from_env();
    let filter = std::env::var("KILN_WGPU_ADAPTER")
        .ok()
        .filter(|s| !s.is_empty());
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    desc.flags = wgpu::InstanceFlags::from_build_config().with_env();
    // Where the driver reports a memory budget (VK_EXT_memory_budget, DXGI; not lavapipe),
    // creating resources past 95% of it fails with OutOfMemory instead of overcommitting.
    desc.memory_budget_thresholds = wgpu::MemoryBudgetThresholds {
        for_resource_creation: Some(95),
        for_device_loss: None,
    };
    let instance = wgpu::Instance::new(desc);
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    let seen: Vec<String> = adapters.iter().map(|a| describe(&a.get_info())).collect();
    let rank = |t: wgpu::DeviceType| match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let want = filter.as_ref().map(|f| f.to_lowercase());
    let best = adapters
        .into_iter()
        .filter(|a| {
            want.as_ref()
                .is_none_or(|w| a.get_info().name.to_lowercase().contains(w.as_str()))
        })
        .min_by_key(|a| rank(a.get_info().device_type));
    match best {
        Some(adapter) => Ok(Adapter {
            info: adapter.get_info(),
            adapter,
            _instance: instance,
        }),
        None => Err(AdapterError {
            backends,
            filter,
            seen,
        }),
    }
}

/// A compiled kernel on one device: its pipeline and how it binds buffers.
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub bindings: Vec<Binding>,
}

/// One wgpu device and its queue.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Arc<Mutex<Vec<String>>>,
    /// Tiny zeroed buffers for warm-up dispatches (zero params: no work). The read-write one
    /// differs from the read-only one: a buffer may not be both in one dispatch.
    warm_params: wgpu::Buffer,
    warm_read: wgpu::Buffer,
    warm_write: wgpu::Buffer,
}

/// Bytes of the params buffer a warm-up binds (more than any kernel's `Params`).
const WARM_PARAMS_BYTES: u64 = 4096;

impl Gpu {
    /// Opens a device on `adapter` with the adapter's own limits (wgpu's defaults stop at
    /// 256 MiB buffers, which a Qwen embedding exceeds).
    pub fn new(adapter: &Adapter, label: &str) -> Result<Gpu, GpuError> {
        let limits = adapter.adapter.limits();
        let (device, queue) =
            pollster::block_on(adapter.adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some(label),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            }))
            .map_err(|source| GpuError::RequestDevice {
                adapter: adapter.describe(),
                source,
            })?;
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        // Replaces wgpu's default handler, which panics.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().expect("error sink").push(e.to_string());
        }));
        let lost = Arc::new(Mutex::new(None));
        let latch = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *latch.lock().expect("lost latch") = Some(format!("{reason:?}: {msg}"));
        });
        let tiny = |label: &str, size: u64, usage: wgpu::BufferUsages| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        };
        Ok(Gpu {
            warm_params: tiny(
                "warm-up params",
                WARM_PARAMS_BYTES,
                wgpu::BufferUsages::UNIFORM,
            ),
            warm_read: tiny("warm-up input", 256, wgpu::BufferUsages::STORAGE),
            warm_write: tiny("warm-up output", 256, wgpu::BufferUsages::STORAGE),
            limits: device.limits(),
            info: adapter.info.clone(),
            device,
            queue,
            lost,
            uncaptured,
        })
    }

    pub fn describe(&self) -> String {
        describe(&self.info)
    }

    fn check_lost(&self) -> Result<(), GpuError> {
        match &*self.lost.lock().expect("lost latch") {
            Some(m) => Err(GpuError::DeviceLost(m.clone())),
            None => Ok(()),
        }
    }

    /// Runs `f` inside OutOfMemory, Validation and Internal error scopes and turns what they
    /// caught into a [`GpuError`] whose message starts with `what`.
    pub fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T, GpuError> {
        self.check_lost()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let int = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let r = f();
        // Popped in reverse order; on native these futures are ready at once.
        let e_int = pollster::block_on(int.pop());
        let e_val = pollster::block_on(val.pop());
        let e_oom = pollster::block_on(oom.pop());
        self.check_lost()?;
        if let Some(e) = e_oom {
            return Err(GpuError::OutOfMemory(format!("{what}: {e}")));
        }
        if let Some(e) = e_val {
            return Err(GpuError::Validation(format!("{what}: {e}")));
        }
        if let Some(e) = e_int {
            return Err(GpuError::Internal(format!("{what}: {e}")));
        }
        let escaped = std::mem::take(&mut *self.uncaptured.lock().expect("error sink"));
        if !escaped.is_empty() {
            return Err(GpuError::Internal(format!(
                "{what}: {}",
                escaped.join("; ")
            )));
        }
        Ok(r)
    }

    /// Waits for submission `idx` (or everything submitted). No timeout: lavapipe runs a large
    /// submission for minutes; a lost device ends the wait with an error.
    pub fn wait(&self, idx: Option<wgpu::SubmissionIndex>) -> Result<(), GpuError> {
        self.check_lost()?;
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: idx,
                timeout: None,
            })
            .map_err(|e| GpuError::DeviceLost(format!("waiting for the device: {e}")))?;
        self.check_lost()
    }

    /// Creates kernel `name`'s pipeline from its validated module. Bindings come from the
    /// module: the params uniform with a dynamic offset, storage buffers read or read-write.
    pub fn pipeline(&self, name: &str, v: Validated) -> Result<Pipeline, GpuError> {
        let bindings = crate::shader::bindings(&v.module)
            .map_err(|e| GpuError::Validation(format!("kernel {name}: {e}")))?;
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b {
                        Binding::Params => wgpu::BufferBindingType::Uniform,
                        Binding::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Binding::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: *b == Binding::Params,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        self.scoped(&format!("creating the pipeline of kernel {name}"), || {
            // The validated naga IR goes in as is: wgpu does not parse the WGSL again.
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: wgpu::ShaderSource::Naga(Cow::Owned(v.module)),
                });
            let layout = self
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(name),
                    entries: &entries,
                });
            let pl = self
                .device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(name),
                    bind_group_layouts: &[Some(&layout)],
                    immediate_size: 0,
                });
            let pipeline = self
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(name),
                    layout: Some(&pl),
                    module: &module,
                    entry_point: Some(name),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        // kiln's kernels write workgroup memory before a barrier and a read.
                        zero_initialize_workgroup_memory: false,
                        ..Default::default()
                    },
                    cache: None,
                });
            Pipeline {
                pipeline,
                layout,
                bindings,
            }
        })
    }

    /// One dispatch of a single workgroup on tiny buffers with zero params (no work), waited
    /// for. Drivers that compile lazily (lavapipe JITs a pipeline at its first dispatch) do
    /// their work here, on the calling thread's time.
    pub fn warm_up(&self, name: &str, p: &Pipeline) -> Result<(), GpuError> {
        let idx = self.scoped(&format!("warming up kernel {name}"), || {
            let entries: Vec<wgpu::BindGroupEntry> = p
                .bindings
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: match b {
                        Binding::Params => self.warm_params.as_entire_binding(),
                        Binding::Read => self.warm_read.as_entire_binding(),
                        Binding::ReadWrite => self.warm_write.as_entire_binding(),
                    },
                })
                .collect();
            let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("warm-up"),
                layout: &p.layout,
                entries: &entries,
            });
            let mut enc = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&p.pipeline);
                pass.set_bind_group(0, &bg, &[0]);
                pass.dispatch_workgroups(1, 1, 1);
            }
            self.queue.submit([enc.finish()])
        })?;
        self.wait(Some(idx))
    }

    /// Reads the first `bytes` bytes of `buf` (after all submitted work).
    pub fn read(&self, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>, GpuError> {
        let size = bytes.next_multiple_of(4).max(4);
        let staging = self.scoped("creating a download buffer", || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("download"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        let idx = self.scoped("copying a buffer for download", || {
            let mut enc = self.device.create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(buf, 0, &staging, 0, size);
            self.queue.submit([enc.finish()])
        })?;
        let done = Arc::new(Mutex::new(None));
        let d = done.clone();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            *d.lock().expect("map result") = Some(r)
        });
        self.wait(Some(idx))?;
        match done.lock().expect("map result").take() {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(GpuError::Map(e.to_string())),
            None => return Err(GpuError::Map("the map callback did not run".into())),
        }
        let out = staging
            .get_mapped_range(..)
            .map_err(|e| GpuError::Map(e.to_string()))?[..bytes as usize]
            .to_vec();
        staging.unmap();
        Ok(out)
    }

    /// Destroys the device, as a driver reset or a removed GPU would (for tests of device
    /// loss), and polls it, which is when wgpu reports a loss.
    #[doc(hidden)]
    pub fn destroy(&self) {
        self.device.destroy();
        let _ = self.device.poll(wgpu::PollType::Poll);
    }
}

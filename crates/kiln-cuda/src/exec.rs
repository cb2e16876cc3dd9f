//! Running a compiled graph on a CUDA device: weights uploaded once, buffers from the memory
//! plan, kernels launched in program order on one stream.

use crate::codegen::LaunchPlan;
use crate::CudaModule;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use kiln_compile::carry::{slot_allocation, CarriedState};
use kiln_compile::{Compiled, Executable};
use kiln_ir::{IrError, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

/// True when the CUDA driver is installed and sees at least one device.
pub fn cuda_device_present() -> bool {
    // SAFETY: only probes for libcuda by name; nothing is called if it is absent.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return false;
    }
    CudaContext::device_count().map(|n| n > 0).unwrap_or(false)
}

struct Launch {
    f: CudaFunction,
    plan: LaunchPlan,
}

pub struct CudaExecutable {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    compiled: Compiled<CudaModule>,
    launches: Vec<Launch>,
    /// Host copies keep the shapes for binding; device copies are what kernels read.
    params: HashMap<String, (Tensor, CudaSlice<u8>)>,
    slots: Vec<CudaSlice<u8>>,
    /// Outputs kept in device memory for the next run (see [`Executable::carry`]).
    carried: CarriedState<CudaSlice<u8>>,
}

fn dev_err(what: &str, e: impl std::fmt::Display) -> IrError {
    IrError::Invalid {
        what: format!("CUDA {what}: {e}"),
    }
}

impl CudaExecutable {
    /// Resolves every kernel's function in its loaded module (on this thread).
    pub fn new(
        compiled: Compiled<CudaModule>,
        ctx: Arc<CudaContext>,
    ) -> Result<CudaExecutable, String> {
        let mut launches = Vec::new();
        for k in &compiled.kernels {
            let CudaModule::Loaded(m) = &compiled.modules[k.module] else {
                return Err(format!(
                    "kernel {} was compiled without a device; compile with CudaBackend::for_device",
                    k.source.name
                ));
            };
            let f = m
                .load_function(&k.source.name)
                .map_err(|e| format!("kernel {}: {e}", k.source.name))?;
            launches.push(Launch {
                f,
                plan: LaunchPlan::new(&k.kernel),
            });
        }
        let stream = ctx.default_stream();
        Ok(CudaExecutable {
            ctx,
            stream,
            compiled,
            launches,
            params: HashMap::new(),
            slots: Vec::new(),
            carried: CarriedState::default(),
        })
    }

    /// Device memory check before an allocation: a clear error instead of a crash.
    fn ensure_free(&self, what: &str, bytes: usize) -> Result<(), IrError> {
        let (free, total) = self
            .ctx
            .mem_get_info()
            .map_err(|e| dev_err("mem_get_info", e))?;
        if bytes > free {
            return Err(IrError::Invalid {
                what: format!(
                    "{what} needs {:.1} MB of GPU memory but only {:.1} MB of {:.1} MB are free",
                    bytes as f64 / 1e6,
                    free as f64 / 1e6,
                    total as f64 / 1e6
                ),
            });
        }
        Ok(())
    }

    fn upload(&self, what: &str, bytes: &[u8]) -> Result<CudaSlice<u8>, IrError> {
        self.ensure_free(what, bytes.len())?;
        if bytes.is_empty() {
            return self
                .stream
                .alloc_zeros::<u8>(1)
                .map_err(|e| dev_err("alloc", e));
        }
        self.stream
            .clone_htod(bytes)
            .map_err(|e| dev_err(&format!("upload of {what}"), e))
    }
}

impl Executable for CudaExecutable {
    fn set_param(&mut self, name: &str, t: Tensor) -> Result<(), IrError> {
        self.compiled.program.check_param(name, &t)?;
        let dev = self.upload(&format!("weight '{name}'"), t.bytes())?;
        self.params.insert(name.into(), (t, dev));
        Ok(())
    }

    fn run(
        &mut self,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>, IrError> {
        let params = self.params.iter().map(|(k, v)| (k.as_str(), &v.0));
        let b = self
            .compiled
            .program
            .bind_run(params, inputs, self.carried.shapes())?;

        let (program, plan) = (&self.compiled.program, &self.compiled.plan);
        let sizes = plan.slot_bytes(program, &b)?;
        for (i, &bytes) in sizes.iter().enumerate() {
            if self.slots.get(i).is_none_or(|s| s.len() < bytes.max(1)) {
                let carried = self.carried.holds_output(program, &plan.slot_of, i);
                let need = slot_allocation(bytes, carried).max(1);
                self.ensure_free("intermediate buffers", need)?;
                let s = self
                    .stream
                    .alloc_zeros::<u8>(need)
                    .map_err(|e| dev_err("alloc", e))?;
                if i < self.slots.len() {
                    self.slots[i] = s;
                } else {
                    self.slots.push(s);
                }
            }
        }
        let mut uploaded: HashMap<&str, CudaSlice<u8>> = HashMap::new();
        for (name, t) in inputs {
            uploaded.insert(
                name.as_str(),
                self.upload(&format!("input '{name}'"), t.bytes())?,
            );
        }
        let program = &self.compiled.program;
        let bufs: Vec<&CudaSlice<u8>> = program
            .buffers
            .iter()
            .enumerate()
            .map(|(i, buf)| match &buf.input {
                Some(name) => match self.carried.input(name) {
                    Some(c) => &c.buf,
                    None => uploaded
                        .get(name.as_str())
                        .unwrap_or_else(|| &self.params[name.as_str()].1),
                },
                None => &self.slots[self.compiled.plan.slot_of[i].expect("planned")],
            })
            .collect();

        for (step, &u) in program.steps.iter().zip(&self.compiled.step_kernel) {
            let l = &self.launches[u];
            let Some(launch) = l.plan.resolve(&b)? else {
                continue;
            };
            let mut lb = self.stream.launch_builder(&l.f);
            lb.arg(bufs[step.output]);
            for &i in &step.inputs {
                lb.arg(bufs[i]);
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
            unsafe { lb.launch(cfg) }.map_err(|e| dev_err("launch", e))?;
        }
        self.stream
            .synchronize()
            .map_err(|e| dev_err("synchronize", e))?;

        let mut out = HashMap::new();
        let mut keep = Vec::new();
        for o in program.output_layouts(&b)? {
            if self.carried.carries(o.name) {
                keep.push((o.name.to_string(), o.buffer, o.shape));
                continue;
            }
            let host = self
                .stream
                .clone_dtoh(&bufs[o.buffer].slice(..o.bytes.max(1)))
                .map_err(|e| dev_err("download", e))?;
            out.insert(
                o.name.to_string(),
                Tensor::from_bytes(o.dtype, &o.shape, &host[..o.bytes]),
            );
        }
        drop(bufs);
        for (name, buffer, shape) in keep {
            // The output stays on the device as the next run's input; the old input's buffer,
            // read for the last time by this run, becomes the slot.
            let slot = self.compiled.plan.slot_of[buffer].expect("carried outputs are computed");
            let c = self.carried.output_mut(&name).expect("carried");
            std::mem::swap(&mut self.slots[slot], &mut c.buf);
            c.shape = shape;
        }
        Ok(out)
    }

    fn carry(&mut self, output: &str, input: &str, initial: Tensor) -> Result<bool, IrError> {
        let buf = self.upload(&format!("initial '{input}'"), initial.bytes())?;
        self.carried
            .set(&self.compiled.program, output, input, &initial, buf)?;
        Ok(true)
    }
}

/// GPU 0's name and its device-to-device copy bandwidth (bytes read plus bytes written, per
/// second): the streaming bandwidth that bounds decode, as `kiln bench decode` reports it.
pub fn copy_bandwidth(bytes: usize) -> Result<(String, f64), String> {
    let ctx = CudaContext::new(0).map_err(|e| format!("CUDA device 0: {e}"))?;
    let name = ctx.name().map_err(|e| e.to_string())?;
    let stream = ctx.default_stream();
    let src = stream.alloc_zeros::<u8>(bytes).map_err(|e| e.to_string())?;
    let mut dst = stream.alloc_zeros::<u8>(bytes).map_err(|e| e.to_string())?;
    let mut best = 0.0f64;
    for _ in 0..5 {
        stream.synchronize().map_err(|e| e.to_string())?;
        let t = std::time::Instant::now();
        stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(|e| e.to_string())?;
        stream.synchronize().map_err(|e| e.to_string())?;
        best = best.max(2.0 * bytes as f64 / t.elapsed().as_secs_f64());
    }
    Ok((name, best))
}

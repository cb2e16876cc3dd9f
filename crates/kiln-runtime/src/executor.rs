//! The one executor: runs a compiled program on any [`Device`]. It binds inputs and weights,
//! sizes buffers from the memory plan for each run's symbol values, keeps carried values (a
//! KV cache) on the device between runs, launches kernels in program order, and collects the
//! outputs. With `KILN_PROFILE=1` it times every launch and prints a table per kernel when
//! dropped.

use crate::binding::{bind_run, check_param, output_layouts, param_bindings};
use crate::carry::{slot_allocation, CarriedState};
use crate::profile::Profile;
use kiln_ir::{Bindings, DType, Expr, IrError, Tensor};
use kiln_program::{
    canonical_symbol, Device, Kernel, LoadedProgram, MemoryPlan, Program, RunError, SlotSizes,
};
use std::collections::HashMap;
use std::time::Instant;

/// A compiled graph ready to run: weights bound once, inputs per run.
pub trait Executable: Send {
    /// Binds an input that stays the same across runs (a weight), checked against its
    /// declaration; the device keeps it.
    fn set_param(&mut self, name: &str, t: Tensor) -> Result<(), RunError>;

    /// Runs the graph; `inputs` together with the bound params and carried values must cover
    /// every graph input. Symbols are bound from the inputs' shapes.
    fn run(
        &mut self,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>, RunError> {
        self.run_with(inputs, &Bindings::new())
    }

    /// [`Executable::run`] with symbols that no input's shape binds (a position in a cache)
    /// given explicitly.
    fn run_with(
        &mut self,
        inputs: &HashMap<String, Tensor>,
        symbols: &Bindings,
    ) -> Result<HashMap<String, Tensor>, RunError>;

    /// Carries graph output `output` of each run into the next run's input `input` on the
    /// device (a KV cache stays in device memory): from now on `run` neither takes `input` nor
    /// returns `output`, and the next run reads `initial`. Calling it again for the same input
    /// starts over from the new `initial`.
    fn carry(&mut self, output: &str, input: &str, initial: Tensor) -> Result<(), RunError>;

    /// A copy of the value now carried into `input` (downloaded from the device).
    fn carried(&mut self, input: &str) -> Result<Tensor, RunError>;

    /// Hands back a tensor that a run returned as `output`, once the caller is done with it:
    /// the next run downloads that output into its memory (when dtype and shape are the same)
    /// instead of newly allocated memory. A decode loop that hands back each step's logits
    /// reads the next ones into pages already mapped: a fresh 600 KB tensor (a 151,936-token
    /// vocabulary) was ~150 page faults a token. Giving back nothing, or anything, is correct.
    fn recycle(&mut self, output: &str, t: Tensor) {
        let _ = (output, t);
    }

    /// What the last run did.
    fn last_run(&self) -> RunStats;

    /// The device, for messages and reports.
    fn describe(&self) -> String;
}

/// Counters of one run (not times: these are the same on every machine).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Kernel launches.
    pub launches: usize,
    /// Bytes the kernels wrote to their outputs.
    pub bytes_written: u64,
}

struct Param<B> {
    dtype: DType,
    shape: Vec<usize>,
    buf: B,
}

/// A buffer and the bytes it can hold.
struct Slot<B> {
    buf: B,
    capacity: usize,
}

/// Runs a [`LoadedProgram`] on device `D`.
pub struct Executor<D: Device> {
    device: D,
    program: Program,
    plan: MemoryPlan,
    /// The plan's slot sizes, as expressions built once (evaluated before every run).
    slot_sizes: SlotSizes,
    step_kernel: Vec<usize>,
    /// Each step's launch bindings, reused from run to run: its canonical kernel's symbols
    /// bound to the values of the step's own (`kiln_program::launch_bindings`).
    step_bindings: Vec<StepBindings>,
    /// Elements each step writes (`Kernel::written_elements`) and the bytes of one.
    step_written: Vec<(Expr, u64)>,
    /// The last run's launches and symbol values: [`Executable::last_run`] counts its bytes
    /// from them when asked, not in the launch loop.
    last: Option<(usize, Bindings)>,
    kernel_names: Vec<String>,
    kernels: Vec<D::Kernel>,
    params: HashMap<String, Param<D::Buffer>>,
    slots: Vec<Option<Slot<D::Buffer>>>,
    carried: CarriedState<Slot<D::Buffer>>,
    /// Tensors handed back by [`Executable::recycle`], by output name: the next run
    /// downloads that output into one of them.
    recycled: HashMap<String, Tensor>,
    /// With `KILN_PROFILE=1`: where run time went ([`Profile`]).
    profile: Option<Profile>,
    /// Declared last: dropped after the kernels that point into them.
    _modules: Vec<D::Module>,
}

impl<D: Device> Executor<D> {
    /// Resolves every distinct kernel on `device`, in order.
    pub fn new(mut device: D, compiled: LoadedProgram<D::Module>) -> Result<Executor<D>, RunError> {
        let mut kernels = Vec::with_capacity(compiled.kernels.len());
        for k in &compiled.kernels {
            kernels.push(device.resolve(&compiled.modules[k.module], k)?);
        }
        let profile = Profile::from_env(kernels.len(), compiled.program.steps.len());
        let step_bindings = compiled
            .program
            .steps
            .iter()
            .map(|s| StepBindings::new(s.kernel.symbols()))
            .collect();
        let step_written = compiled
            .program
            .steps
            .iter()
            .map(|s| {
                let k = &s.kernel;
                (k.written_elements(), k.out_dtype.size_bytes() as u64)
            })
            .collect();
        Ok(Executor {
            device,
            kernel_names: compiled
                .kernels
                .iter()
                .map(|k| k.source.name.clone())
                .collect(),
            slot_sizes: compiled.plan.slot_sizes(&compiled.program),
            program: compiled.program,
            plan: compiled.plan,
            step_bindings,
            step_written,
            step_kernel: compiled.step_kernel,
            kernels,
            params: HashMap::new(),
            slots: Vec::new(),
            carried: CarriedState::default(),
            last: None,
            recycled: HashMap::new(),
            profile,
            _modules: compiled.modules,
        })
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    /// Grows the plan's slots to what bindings `b` need.
    fn size_slots(&mut self, b: &Bindings) -> Result<(), RunError> {
        let sizes = self.slot_sizes.eval(b)?;
        self.slots.resize_with(sizes.len(), || None);
        for (i, &bytes) in sizes.iter().enumerate() {
            if matches!(&self.slots[i], Some(s) if s.capacity >= bytes.max(1)) {
                continue;
            }
            // A carried output's slot grows with headroom: it grows by a little every run.
            let carried = self
                .carried
                .holds_output(&self.program, &self.plan.slot_of, i);
            let capacity = slot_allocation(bytes, carried).max(1);
            self.slots[i] = None; // free the old buffer before allocating the new one
            let buf = self.device.alloc(capacity, "intermediate buffers")?;
            self.slots[i] = Some(Slot { buf, capacity });
        }
        Ok(())
    }
}

impl<D: Device> Executable for Executor<D> {
    fn set_param(&mut self, name: &str, t: Tensor) -> Result<(), RunError> {
        check_param(&self.program, name, &t)?;
        let (dtype, shape) = (t.dtype(), t.shape().to_vec());
        // The kernels that read the weight, so that the device can lay it out for them.
        let buffer = self
            .program
            .buffers
            .iter()
            .position(|b| b.input.as_deref() == Some(name));
        let readers: Vec<(&Kernel, usize)> = self
            .program
            .steps
            .iter()
            .flat_map(|step| {
                step.inputs
                    .iter()
                    .enumerate()
                    .filter(|(_, &b)| Some(b) == buffer)
                    .map(move |(i, _)| (&step.kernel, i))
            })
            .collect();
        let what = format!("weight '{name}'");
        // A weight that is also a graph output is read back as it is: no device layout.
        let is_output = self.program.outputs.iter().any(|(_, b)| Some(*b) == buffer);
        let buf = if is_output {
            self.device.adopt(t, &what)?
        } else {
            let bindings = param_bindings(&self.program, name, &t);
            self.device.adopt_weight(t, &readers, &bindings, &what)?
        };
        self.params
            .insert(name.to_string(), Param { dtype, shape, buf });
        Ok(())
    }

    fn run_with(
        &mut self,
        inputs: &HashMap<String, Tensor>,
        symbols: &Bindings,
    ) -> Result<HashMap<String, Tensor>, RunError> {
        let params = self
            .params
            .iter()
            .map(|(n, p)| (n.as_str(), p.dtype, p.shape.as_slice()));
        let b = bind_run(
            &self.program,
            params,
            inputs,
            self.carried.shapes(),
            symbols,
        )?;
        // A weight stays the same across runs: the graph may not update it in place.
        for (buf, input) in self.plan.input_of.iter().enumerate() {
            if let Some(name) = input.and_then(|i| self.program.buffers[i].input.as_ref()) {
                if self.params.contains_key(name) {
                    return Err(RunError::Unsupported(format!(
                        "the graph updates input '{name}' in place (buffer {buf}); pass it to each run or carry it, do not bind it as a weight"
                    )));
                }
            }
        }
        self.size_slots(&b)?;
        let mut uploaded = HashMap::new();
        for (name, t) in inputs {
            let buf = self.device.upload(t.bytes(), &format!("input '{name}'"))?;
            uploaded.insert(name.as_str(), buf);
        }

        let Executor {
            device,
            program,
            plan,
            step_kernel,
            step_bindings,
            kernels,
            params,
            slots,
            carried,
            last,
            recycled,
            profile,
            ..
        } = self;
        let input_buf = |name: &str| match carried.input(name) {
            Some(c) => &c.buf.buf,
            None => uploaded.get(name).unwrap_or_else(|| &params[name].buf),
        };
        let bufs: Vec<&D::Buffer> = program
            .buffers
            .iter()
            .enumerate()
            .map(|(i, buf)| match (&buf.input, plan.input_of[i]) {
                (Some(name), _) => input_buf(name),
                // Written in place into an input: that input's storage.
                (None, Some(inp)) => {
                    input_buf(program.buffers[inp].input.as_deref().expect("an input"))
                }
                (None, None) => {
                    let slot = plan.slot_of[i].expect("every kernel output has a slot");
                    &slots[slot].as_ref().expect("slots sized").buf
                }
            })
            .collect();

        *last = None;
        if let Some(p) = profile.as_mut() {
            p.start_run();
        }
        let mut ins: Vec<&D::Buffer> = Vec::new();
        for (s, ((step, &u), launch_b)) in program
            .steps
            .iter()
            .zip(step_kernel.iter())
            .zip(step_bindings.iter_mut())
            .enumerate()
        {
            ins.clear();
            ins.extend(step.inputs.iter().map(|&i| bufs[i]));
            // The compiled kernel is the canonical one: its symbols are bound by place.
            let launch_b = launch_b.bind(&b)?;
            let started = profile.is_some().then(Instant::now);
            device.launch(&kernels[u], bufs[step.output], &ins, launch_b)?;
            if let (Some(prof), Some(t)) = (profile.as_mut(), started) {
                device.sync()?;
                prof.launched(s, u, t);
            }
        }
        device.sync()?;
        *last = Some((program.steps.len(), b.clone()));

        let mut out = HashMap::new();
        let mut kept = Vec::new();
        for o in output_layouts(program, &b)? {
            if carried.carries(o.name) {
                kept.push((o.name.to_string(), o.buffer, o.shape));
                continue;
            }
            let mut t = match recycled.remove(o.name) {
                Some(t) if t.dtype() == o.dtype && t.shape() == o.shape => t,
                _ => Tensor::zeros(o.dtype, &o.shape),
            };
            device.download_into(bufs[o.buffer], t.bytes_mut())?;
            out.insert(o.name.to_string(), t);
        }
        drop(bufs);
        for (name, buffer, shape) in kept {
            let c = carried.output_mut(&name).expect("carried");
            // The output's slot becomes the next run's input; the old input's buffer, read
            // for the last time by this run, becomes the slot. An output written in place
            // into the carried input is already there.
            if let Some(slot) = plan.slot_of[buffer] {
                std::mem::swap(slots[slot].as_mut().expect("sized"), &mut c.buf);
            }
            c.shape = shape;
        }
        Ok(out)
    }

    fn carry(&mut self, output: &str, input: &str, initial: Tensor) -> Result<(), RunError> {
        // Checked before anything is allocated.
        self.carried.check(&self.program, output, input, &initial)?;
        let capacity = initial.bytes().len().max(1);
        let buf = self
            .device
            .upload(initial.bytes(), &format!("initial value of '{input}'"))?;
        self.carried
            .set(output, input, &initial, Slot { buf, capacity });
        Ok(())
    }

    fn carried(&mut self, input: &str) -> Result<Tensor, RunError> {
        let c = self.carried.input(input).ok_or_else(|| {
            RunError::Graph(kiln_ir::IrError::Input {
                name: input.into(),
                detail: "is not carried".into(),
            })
        })?;
        let mut t = Tensor::zeros(c.dtype, &c.shape);
        self.device.download_into(&c.buf.buf, t.bytes_mut())?;
        Ok(t)
    }

    fn recycle(&mut self, output: &str, t: Tensor) {
        let is_output = self.program.outputs.iter().any(|(name, _)| name == output);
        if is_output && !t.is_shared() {
            self.recycled.insert(output.to_string(), t);
        }
    }

    fn last_run(&self) -> RunStats {
        let Some((launches, b)) = &self.last else {
            return RunStats::default();
        };
        // Every symbol a step's size names was bound for its launch.
        let bytes_written = self
            .step_written
            .iter()
            .map(|(elements, bytes)| elements.eval(b).unwrap_or(0).max(0) as u64 * bytes)
            .sum();
        RunStats {
            launches: *launches,
            bytes_written,
        }
    }

    fn describe(&self) -> String {
        self.device.describe()
    }
}

/// One step's launch bindings (`kiln_program::launch_bindings`), kept from run to run so
/// that a launch allocates nothing: a batched model launches some thousands of kernels a run.
struct StepBindings {
    /// The step's own symbols, in the order its canonical kernel takes them.
    symbols: Vec<String>,
    /// `canonical_symbol(i)` for each, bound to the last run's values.
    bound: Bindings,
    /// For the k-th entry of `bound` in its order, the index of its symbol in `symbols`.
    order: Vec<usize>,
}

impl StepBindings {
    fn new(symbols: Vec<String>) -> StepBindings {
        let bound: Bindings = (0..symbols.len())
            .map(|i| (canonical_symbol(i), 0))
            .collect();
        let order = bound
            .keys()
            .map(|k| (0..symbols.len()).position(|i| canonical_symbol(i) == *k))
            .map(|i| i.expect("a canonical name of this step"))
            .collect();
        StepBindings {
            symbols,
            bound,
            order,
        }
    }

    /// The bindings of this step's launch under the run's bindings `b`.
    fn bind(&mut self, b: &Bindings) -> Result<&Bindings, IrError> {
        for (value, &i) in self.bound.values_mut().zip(&self.order) {
            let symbol = &self.symbols[i];
            *value = *b.get(symbol).ok_or_else(|| IrError::UnboundSymbol {
                symbol: symbol.clone(),
                bound: b.keys().cloned().collect(),
            })?;
        }
        Ok(&self.bound)
    }
}

impl<D: Device> Drop for Executor<D> {
    /// The `KILN_PROFILE` table.
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            p.print(
                &self.device.describe(),
                &self.step_kernel,
                &self.kernel_names,
            );
        }
    }
}

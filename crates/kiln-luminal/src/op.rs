//! The luminal operators that stand in for a compiled kiln segment, and the run-time state they
//! share.
//!
//! A segment becomes, in luminal's graph:
//! - one [`KilnOp`], which runs the segment's kiln executable;
//! - one [`KilnOutput`] at each replaced node whose value is read afterwards (same node index,
//!   so the user's `GraphTensor`s and `retrieve` marks stay valid);
//! - a [`KilnDims`] source when the segment has dynamic dimensions: its edges carry them as a
//!   `ShapeTracker` whose dims are the dimension chars, which luminal's `execute` resolves from
//!   `cx.set_dyn_dim` before the consumer runs, so no op reaches into the graph for them;
//! - [`KilnPack`]s when the segment reads more than 255 tensors (luminal numbers a node's inputs
//!   with a `u8`).
//!
//! luminal's `Operator::process` returns no error, so a failure at run time (a kiln
//! `RunError`, an input of the wrong length) panics with a message that names the segment, the
//! luminal node of its `KilnOp`, the input's luminal node where one is involved, and the kiln
//! error.

use kiln_compile::CompileReport;
use kiln_ir::{Bindings, DType, Expr, Tensor};
use kiln_runtime::Executable;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::ShapeTracker;
use luminal::shape::symbolic::Expression;
use luminal::tensor::Tensor as LTensor;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// [`Operator::custom`] key: the segment's `CompileReport`.
pub const REPORT_KEY: &str = "kiln_report";
/// [`Operator::custom`] key: the segment's [`SegmentStats`].
pub const STATS_KEY: &str = "kiln_stats";
/// [`Operator::custom`] key: forget what is bound, so every kept input is bound again at the
/// next execute (see [`crate::rebind_kept_inputs`]).
pub const REBIND_KEY: &str = "kiln_rebind";

/// luminal's `ShapeTracker` holds at most 6 dims: the most dynamic dimensions one edge carries.
pub(crate) const DIMS_PER_EDGE: usize = 6;

/// How a segment input receives its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Produced anew for every execute (an input set with `set`/`set_dyn` and not kept, or in
    /// fallback mode the output of an op luminal runs): copied into kiln on every run.
    PerRun,
    /// A source tensor luminal keeps between executes (`keep()`, `cx.keep_tensors(..)`: how
    /// luminal holds weights). Bound into kiln once (`Executable::set_param`) and again only when
    /// its contents change.
    Kept,
}

/// One input of a segment: a luminal tensor read by kiln.
pub(crate) struct InputSpec {
    /// The kiln graph's input name.
    pub name: String,
    /// Its kiln shape (symbols are luminal's dynamic dimensions).
    pub shape: Vec<Expr>,
    pub role: Role,
    /// The luminal node it comes from, for messages.
    pub from: String,
}

/// What a segment did at run time (from [`crate::segment_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Runs of the kiln executable.
    pub runs: usize,
    /// Inputs copied in on every run.
    pub per_run_inputs: usize,
    /// Inputs luminal keeps (weights), bound once.
    pub kept_inputs: usize,
    /// `set_param` calls so far: `kept_inputs` after the first run, more only when a kept input
    /// changed (or after [`crate::rebind_kept_inputs`]).
    pub kept_binds: usize,
}

/// A segment's executable and what is bound to it. Shared by its [`KilnOp`] and [`KilnPack`]s
/// (a kept input that reaches the segment through a pack is bound by the pack, so it is not
/// copied into the pack's output on every run).
pub(crate) struct Runner {
    pub segment: usize,
    /// The luminal node of the segment's `KilnOp` (set once it is in the graph).
    pub node: usize,
    pub exe: Box<dyn Executable>,
    pub inputs: Vec<InputSpec>,
    /// kiln symbol and luminal dynamic dimension, in the order the [`KilnDims`] edges carry them.
    pub symbols: Vec<(String, char)>,
    /// Inputs `dim_<sym>` of shape `[sym]` that only tell kiln a symbol's value (kiln binds
    /// symbols from whole input dimensions).
    pub carriers: Vec<(String, String)>,
    /// The kiln output names, in luminal output order.
    pub outputs: Vec<String>,
    /// Check a kept input's contents on every execute (a fingerprint) and re-bind it when it
    /// changed; when false it is bound once and trusted.
    pub verify_kept: bool,
    /// For each input: the fingerprint of what is bound as its param (kept inputs only).
    bound: Vec<Option<blake3::Hash>>,
    stats: SegmentStats,
}

/// Shared handle on a [`Runner`]. luminal runs ops on one thread; the mutex only makes the ops
/// `Send` (luminal does not require it: its `Operator` trait has no `Send` bound and its `Graph`,
/// holding `Box<dyn Operator>`, is not `Send` itself).
pub(crate) type SharedRunner = Arc<Mutex<Runner>>;

fn lock(r: &SharedRunner) -> std::sync::MutexGuard<'_, Runner> {
    // A panic while the lock was held already reported its cause; the state is still usable
    // (every bind is all-or-nothing), so a later execute may go on.
    r.lock().unwrap_or_else(|e| e.into_inner())
}

impl Runner {
    pub fn new(
        segment: usize,
        exe: Box<dyn Executable>,
        inputs: Vec<InputSpec>,
        symbols: Vec<(String, char)>,
        carriers: Vec<(String, String)>,
        outputs: Vec<String>,
        verify_kept: bool,
    ) -> Runner {
        let stats = SegmentStats {
            per_run_inputs: inputs.iter().filter(|i| i.role == Role::PerRun).count(),
            kept_inputs: inputs.iter().filter(|i| i.role == Role::Kept).count(),
            ..SegmentStats::default()
        };
        Runner {
            segment,
            node: usize::MAX,
            exe,
            bound: vec![None; inputs.len()],
            inputs,
            symbols,
            carriers,
            outputs,
            verify_kept,
            stats,
        }
    }

    /// Panics with what failed, naming the segment and its luminal node.
    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "kiln-luminal: kiln segment {} (luminal node {}, {}): {what}",
            self.segment,
            self.node,
            self.exe.describe()
        )
    }

    /// The symbol values luminal resolved on the [`KilnDims`] edges (the first of `inp`).
    fn bindings(&self, inp: &[(InputTensor, ShapeTracker)]) -> Bindings {
        let mut b = Bindings::new();
        for (i, (sym, c)) in self.symbols.iter().enumerate() {
            let tracker = &inp[i / DIMS_PER_EDGE].1;
            match tracker.dims[i % DIMS_PER_EDGE].to_usize() {
                Some(v) => {
                    b.insert(sym.clone(), v as i64);
                }
                None => self.fail(format_args!(
                    "dynamic dimension '{c}' was not resolved by luminal; set it with \
                     cx.set_dyn_dim('{c}', n) or an input's set_dyn before execute"
                )),
            }
        }
        b
    }

    /// The concrete shape of input `i` under `b`, checked against the number of values luminal
    /// handed over.
    fn shape_of(&self, i: usize, values: usize, b: &Bindings) -> Vec<usize> {
        let spec = &self.inputs[i];
        let shape: Vec<usize> = spec
            .shape
            .iter()
            .map(|d| match d.eval(b) {
                Ok(v) => v.max(0) as usize,
                Err(e) => self.fail(format_args!("shape of the input from {}: {e}", spec.from)),
            })
            .collect();
        let want: usize = shape.iter().product();
        if want != values {
            self.fail(format_args!(
                "the input from {} has {values} values but kiln expects {want} (shape {} = {:?})",
                spec.from,
                kiln_ir::shape_str(&spec.shape),
                shape
            ));
        }
        shape
    }

    /// Binds kept input `i` as a param unless what it holds is already bound.
    fn offer_kept(&mut self, i: usize, data: &[f32], b: &Bindings) {
        if self.bound[i].is_some() && !self.verify_kept {
            return;
        }
        let fp = fingerprint(data);
        if self.bound[i] == Some(fp) {
            return;
        }
        let shape = self.shape_of(i, data.len(), b);
        let name = self.inputs[i].name.clone();
        if let Err(e) = self.exe.set_param(&name, Tensor::from_f32(&shape, data)) {
            self.fail(format_args!(
                "binding the kept input from {}: {e}",
                self.inputs[i].from
            ));
        }
        self.bound[i] = Some(fp);
        self.stats.kept_binds += 1;
    }

    /// Takes input `i`'s value: binds it if kept, else returns it for this run.
    fn take<'a>(&mut self, i: usize, data: &'a [f32], b: &Bindings) -> Option<&'a [f32]> {
        match self.inputs[i].role {
            Role::Kept => {
                self.offer_kept(i, data, b);
                None
            }
            Role::PerRun => Some(data),
        }
    }

    /// Runs the executable on this execute's per-run inputs (`values[i]` for input `i`).
    fn run(&mut self, values: &[Option<&[f32]>], b: &Bindings) -> Vec<LTensor> {
        let mut ins: HashMap<String, Tensor> = HashMap::new();
        for (i, spec) in self.inputs.iter().enumerate() {
            match (spec.role, values[i]) {
                (Role::PerRun, Some(data)) => {
                    let shape = self.shape_of(i, data.len(), b);
                    ins.insert(spec.name.clone(), Tensor::from_f32(&shape, data));
                }
                (Role::PerRun, None) => self.fail(format_args!(
                    "no value arrived for the input from {}",
                    spec.from
                )),
                (Role::Kept, _) => {}
            }
        }
        for (name, sym) in &self.carriers {
            ins.insert(
                name.clone(),
                Tensor::zeros(DType::Bool, &[b[sym].max(0) as usize]),
            );
        }
        let mut outs = match self.exe.run(&ins) {
            Ok(o) => o,
            Err(e) => self.fail(format_args!("run failed: {e}")),
        };
        self.stats.runs += 1;
        self.outputs
            .iter()
            .map(|name| match outs.remove(name) {
                Some(t) => LTensor::new(t.as_f32().to_vec()),
                None => self.fail(format_args!("kiln returned no output {name}")),
            })
            .collect()
    }
}

/// The identity of a kept input's contents (compared only within this process, so native
/// byte order is fine).
fn fingerprint(data: &[f32]) -> blake3::Hash {
    // SAFETY: f32 has no padding bytes; the slice covers exactly the floats' memory.
    let bytes = unsafe {
        std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data))
    };
    let mut h = blake3::Hasher::new();
    if bytes.len() >= 1 << 20 {
        // Large weights: hash on every core (blake3's tree mode; same hash as `update`).
        h.update_rayon(bytes);
    } else {
        h.update(bytes);
    }
    h.finalize()
}

/// The `Vec<f32>` a CPU luminal tensor holds.
fn f32_data<'a>(t: &'a LTensor, runner: &Runner, from: &str) -> &'a [f32] {
    match t.data.as_any().downcast_ref::<Vec<f32>>() {
        Some(v) => v,
        None => runner.fail(format_args!(
            "the input from {from} is not a CPU Vec<f32> tensor (luminal ops of another \
             backend cannot feed kiln)"
        )),
    }
}

/// How the inputs reach a [`KilnOp`] after its [`KilnDims`] edges.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Transport {
    /// Edge `k` carries input `k`.
    Direct,
    /// Edge `k` is the output of [`KilnPack`] `k`, holding inputs `k*255..`.
    Packed,
}

/// Runs one compiled kiln segment.
pub struct KilnOp {
    pub(crate) runner: SharedRunner,
    pub(crate) transport: Transport,
    /// Edges from [`KilnDims`] before the data edges.
    pub(crate) dim_edges: usize,
    pub(crate) report: CompileReport,
}

impl KilnOp {
    /// Its segment's index: segments run in index order.
    pub fn segment(&self) -> usize {
        lock(&self.runner).segment
    }
}

impl std::fmt::Debug for KilnOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KilnOp(segment {}, {} kernels, {} unique)",
            lock(&self.runner).segment,
            self.report.kernels_total,
            self.report.kernels_unique
        )
    }
}

/// Never merged by luminal's CSE: every segment is its own executable.
impl PartialEq for KilnOp {
    fn eq(&self, _: &Self) -> bool {
        false
    }
}

impl Operator for KilnOp {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<LTensor> {
        let mut runner = lock(&self.runner);
        let b = runner.bindings(&inp);
        let n = runner.inputs.len();
        let mut values: Vec<Option<&[f32]>> = vec![None; n];
        let data = &inp[self.dim_edges..];
        match self.transport {
            Transport::Direct => {
                if data.len() != n {
                    runner.fail(format_args!(
                        "expected {n} input tensors, got {}",
                        data.len()
                    ));
                }
                for (i, (t, _)) in data.iter().enumerate() {
                    let v = f32_data(t.borrowed(), &runner, &runner.inputs[i].from);
                    values[i] = runner.take(i, v, &b);
                }
            }
            Transport::Packed => {
                for (t, _) in data {
                    let Some(p) = t.borrowed().data.as_any().downcast_ref::<Packed>() else {
                        runner.fail("a pack edge does not hold a kiln pack");
                    };
                    for (i, v) in &p.0 {
                        values[*i] = Some(v.as_slice());
                    }
                }
            }
        }
        runner.run(&values, &b)
    }

    fn custom(&mut self, key: &str, _input: Box<dyn Any>) -> Option<Box<dyn Any>> {
        match key {
            REPORT_KEY => Some(Box::new(self.report.clone())),
            STATS_KEY => Some(Box::new(lock(&self.runner).stats)),
            REBIND_KEY => {
                let mut r = lock(&self.runner);
                r.bound.iter_mut().for_each(|b| *b = None);
                Some(Box::new(()))
            }
            _ => None,
        }
    }
}

/// Stands where a replaced luminal node was read from (same node index): forwards output `.0`
/// of its segment's [`KilnOp`].
#[derive(Debug, Clone, PartialEq)]
pub struct KilnOutput(pub usize);

impl Operator for KilnOutput {
    fn process(&mut self, mut inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<LTensor> {
        // The KilnOp's output has this node as its only reader: luminal hands it over owned.
        vec![inp.pop().expect("a KilnOutput has one input").0.cloned()]
    }
}

/// A source whose outgoing edges carry a segment's dynamic dimensions in their `ShapeTracker`
/// (luminal resolves them before the reader runs). Its own value is empty.
#[derive(Debug, Clone, PartialEq)]
pub struct KilnDims;

impl KilnDims {
    /// The trackers of the edges carrying `dims`, at most six per edge.
    pub(crate) fn trackers(dims: &[char]) -> Vec<ShapeTracker> {
        dims.chunks(DIMS_PER_EDGE)
            .map(|c| {
                let d: Vec<Expression> = c.iter().map(|&c| Expression::from(c)).collect();
                ShapeTracker::new(&d)
            })
            .collect()
    }
}

impl Operator for KilnDims {
    fn process(&mut self, _inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<LTensor> {
        vec![LTensor::new(Vec::<f32>::new())]
    }
}

/// The per-run inputs of one [`KilnPack`]: (input index in the segment, values).
#[derive(Debug, Clone)]
pub struct Packed(pub Vec<(usize, Vec<f32>)>);

impl luminal::tensor::Data for Packed {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Gathers up to 255 inputs of a segment that reads more (the weights of a deep model): binds
/// the kept ones into the segment's executable and packs the per-run ones into one [`Packed`]
/// tensor for the [`KilnOp`].
pub struct KilnPack {
    pub(crate) runner: SharedRunner,
    /// Index of its first input in the segment.
    pub(crate) first: usize,
    pub(crate) dim_edges: usize,
}

impl std::fmt::Debug for KilnPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KilnPack(segment {}, inputs from {})",
            lock(&self.runner).segment,
            self.first
        )
    }
}

impl PartialEq for KilnPack {
    fn eq(&self, _: &Self) -> bool {
        false
    }
}

impl Operator for KilnPack {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<LTensor> {
        let mut runner = lock(&self.runner);
        let b = runner.bindings(&inp);
        let mut per_run = Vec::new();
        for (k, (t, _)) in inp.into_iter().skip(self.dim_edges).enumerate() {
            let i = self.first + k;
            match runner.inputs[i].role {
                Role::Kept => {
                    let v = f32_data(t.borrowed(), &runner, &runner.inputs[i].from);
                    runner.offer_kept(i, v, &b);
                }
                Role::PerRun => {
                    f32_data(t.borrowed(), &runner, &runner.inputs[i].from);
                    // Moved when luminal hands the tensor over (its last reader), else copied.
                    let mut t = t.cloned();
                    let v = t.data.as_any_mut().downcast_mut::<Vec<f32>>();
                    per_run.push((i, std::mem::take(v.expect("checked above"))));
                }
            }
        }
        vec![LTensor::new(Packed(per_run))]
    }
}

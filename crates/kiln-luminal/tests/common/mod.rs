#![allow(dead_code)]
//! Helpers: build the same luminal graph twice, compile one with kiln and one with luminal's own
//! CPU compiler, feed both the same data, compare, and prove the comparison can fail.

use kiln_luminal::{KilnCompiler, KilnCompilerBuilder};
use luminal::op::Function;
use luminal::prelude::*;

// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use kiln_ir::testing::values;

/// Replaces the data a luminal `Function` (input or weight) node produces.
pub fn set_node(cx: &mut Graph, id: NodeIndex, data: Vec<f32>) {
    let f = cx
        .graph
        .node_weight_mut(id)
        .unwrap()
        .as_any_mut()
        .downcast_mut::<Function>()
        .expect("a Function node");
    f.1 = Box::new(move |_| vec![Tensor::new(data.clone())]);
}

/// Sets every weight of a module to seeded values (luminal initialises with thread_rng).
pub fn seed_weights<M: SerializeModule>(cx: &mut Graph, model: &M, seed: u64, scale: f32) {
    for (i, id) in state_set(model).into_iter().enumerate() {
        let n = weight_len(cx, id);
        let v = values(n, seed * 1000 + i as u64)
            .into_iter()
            .map(|x| x * scale)
            .collect();
        set_node(cx, id, v);
    }
}

fn weight_len(cx: &Graph, id: NodeIndex) -> usize {
    // The first consumer's view of the weight tells its size.
    let e = cx
        .graph
        .edges_directed(id, petgraph::Direction::Outgoing)
        .find_map(|e| e.weight().as_data())
        .expect("weight is used");
    e.2.n_physical_elements()
        .to_usize()
        .expect("constant weight")
}

/// Max over elements of |a - b| / max(|b|, 1).
pub fn max_rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    got.iter()
        .zip(want)
        .map(|(&a, &b)| {
            if a.is_nan() && b.is_nan() || a == b {
                0.0
            } else {
                (a as f64 - b as f64).abs() / (b.abs() as f64).max(1.0)
            }
        })
        .fold(0.0, f64::max)
}

pub fn close(got: &[f32], want: &[f32], tol: f64) -> bool {
    got.len() == want.len() && max_rel_err(got, want) <= tol
}

pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let e = max_rel_err(got, want);
    assert!(
        e <= tol,
        "{what}: max relative error {e:e} > {tol:e}\n got {:?}\nwant {:?}",
        &got[..got.len().min(8)],
        &want[..want.len().min(8)]
    );
}

/// Builds a test graph: (input node ids, output).
pub type BuildFn = dyn Fn(&mut Graph) -> (Vec<NodeIndex>, GraphTensor<()>);

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Kiln,
    /// (GenericCompiler, CPUCompiler): luminal's reference CPU compiler.
    Luminal,
    /// GenericCompiler only: luminal's primitive ops run one by one (no CPU rewrites).
    LuminalPrimitive,
}

/// The kiln compiler the comparison tests use: 2 compile threads, and one kernel cache shared by
/// the tests of this process (a fresh directory: the first test to need a kernel compiles it;
/// the 2- and 8-layer encoders share most kernels). Tests about compiling itself use no cache.
pub fn kiln() -> KilnCompiler {
    kiln_builder().build()
}

/// [`kiln`]'s options, to add to.
pub fn kiln_builder() -> KilnCompilerBuilder {
    static CACHE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = CACHE.get_or_init(|| tempfile::tempdir().expect("temp dir"));
    KilnCompiler::builder().threads(2).cache_dir(dir.path())
}

/// A built test graph: its inputs (node ids) and the output.
pub struct Case {
    pub cx: Box<Graph>,
    pub inputs: Vec<NodeIndex>,
    pub out: GraphTensor<()>,
}

impl Case {
    /// Builds with `build`, compiles with the backend (kiln: the given compiler).
    pub fn new(backend: Backend, kiln: &KilnCompiler, build: &BuildFn) -> Case {
        let mut cx = Box::new(Graph::new());
        let (inputs, out) = build(&mut cx);
        let mut out = out.retrieve();
        match backend {
            Backend::Kiln => cx.compile((GenericCompiler::default(), kiln.clone()), &mut out),
            Backend::Luminal => cx.compile(
                (GenericCompiler::default(), CPUCompiler::default()),
                &mut out,
            ),
            Backend::LuminalPrimitive => cx.compile(GenericCompiler::default(), &mut out),
        }
        Case { cx, inputs, out }
    }

    /// Sets inputs and dyn dims, executes, returns the output and drops it (so the next execute
    /// recomputes it: luminal skips nodes whose output is still held).
    pub fn run(&mut self, data: &[Vec<f32>], dyn_dims: &[(char, usize)]) -> Vec<f32> {
        for (&id, d) in self.inputs.iter().zip(data) {
            set_node(&mut self.cx, id, d.clone());
        }
        for &(c, v) in dyn_dims {
            self.cx.set_dyn_dim(c, v);
        }
        self.cx.execute();
        let v = self.out.data();
        self.cx.drop_tensors(self.out.id);
        v
    }
}

/// Compiles `build` with kiln and with luminal's CPU compiler, then [`check_run`].
/// Returns (kiln case, luminal case) for further runs.
pub fn compare(
    what: &str,
    build: &BuildFn,
    data: &[Vec<f32>],
    dyn_dims: &[(char, usize)],
    tol: f64,
) -> (Case, Case) {
    compare_with(Backend::Luminal, what, build, data, dyn_dims, tol)
}

/// [`compare`] against another luminal configuration.
pub fn compare_with(
    reference: Backend,
    what: &str,
    build: &BuildFn,
    data: &[Vec<f32>],
    dyn_dims: &[(char, usize)],
    tol: f64,
) -> (Case, Case) {
    compare_using(&kiln(), reference, what, build, data, dyn_dims, tol)
}

/// [`compare_with`] with a given kiln compiler.
pub fn compare_using(
    k: &KilnCompiler,
    reference: Backend,
    what: &str,
    build: &BuildFn,
    data: &[Vec<f32>],
    dyn_dims: &[(char, usize)],
    tol: f64,
) -> (Case, Case) {
    let mut kc = Case::new(Backend::Kiln, k, build);
    let mut lc = Case::new(reference, k, build);
    check_run(what, &mut kc, &mut lc, data, dyn_dims, tol);
    (kc, lc)
}

/// Runs both on `data`, checks they agree within `tol`, then proves the check can fail: a
/// perturbed input must move kiln's result beyond `tol` (on the same compiled graph); finally
/// the unperturbed run must reproduce the first result exactly.
pub fn check_run(
    what: &str,
    kc: &mut Case,
    lc: &mut Case,
    data: &[Vec<f32>],
    dyn_dims: &[(char, usize)],
    tol: f64,
) {
    let got = kc.run(data, dyn_dims);
    let want = lc.run(data, dyn_dims);
    assert!(!got.is_empty());
    assert_close(what, &got, &want, tol);
    eprintln!(
        "{what} {dyn_dims:?}: {} values, max rel err {:e}",
        got.len(),
        max_rel_err(&got, &want)
    );
    let mut bad = data.to_vec();
    let which = bad.iter().position(|d| !d.is_empty()).unwrap();
    for (i, x) in bad[which].iter_mut().enumerate() {
        *x += 0.25 * ((i % 5) as f32 - 2.0); // not a uniform shift (softmax/norms ignore those)
    }
    let got_bad = kc.run(&bad, dyn_dims);
    assert!(
        !close(&got_bad, &want, tol),
        "{what}: perturbing input {which} did not change kiln's result; the comparison cannot fail"
    );
    let again = kc.run(data, dyn_dims);
    assert_eq!(again, got, "{what}: rerun differs");
}

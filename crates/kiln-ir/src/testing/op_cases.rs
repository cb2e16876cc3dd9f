//! The op test cases every backend runs: each primitive op, view and dtype conversion, as a
//! graph, the inputs of a few runs at different symbolic sizes, and the tolerance against the
//! interpreter. One table, so that a case added here runs on every backend.
//!
//! A backend's test file expands [`op_case_tests!`](crate::op_case_tests) with a function that
//! compiles [`OpCase::graph`], then hands [`OpCase::check`] a closure that runs it; that function
//! states (and explains) the cases the backend skips or runs with another tolerance.
//!
//! Tolerances are what a backend with correctly rounded `exp2`/`log2`/`sin`/`sqrt`/division (the
//! C backends call libm) meets: `|got - want| <= atol + rtol * |want|` against the interpreter's
//! f64 results rounded to the output dtype. Integer ops, casts and f16/bf16 rounding are exact.

use super::{assert_close, inputs, values};
use crate::{Bindings, DType, Expr, Graph, NodeId, Tensor};
use std::collections::HashMap;

/// `|got - want| <= atol + rtol * |want|`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

impl Tolerance {
    /// Bit for bit.
    pub const EXACT: Tolerance = Tolerance {
        atol: 0.0,
        rtol: 0.0,
    };

    pub const fn new(atol: f64, rtol: f64) -> Tolerance {
        Tolerance { atol, rtol }
    }
}

/// One run of a case: its inputs, the symbols no input's shape binds, and, when the run must be
/// refused, what the error says.
pub struct Run {
    pub inputs: HashMap<String, Tensor>,
    pub bindings: Bindings,
    /// The run must fail with a message containing every one of these.
    pub fails_with: Option<&'static [&'static str]>,
}

impl Run {
    fn new(inputs: HashMap<String, Tensor>) -> Run {
        Run {
            inputs,
            bindings: Bindings::new(),
            fails_with: None,
        }
    }

    fn bound(mut self, symbol: &str, value: i64) -> Run {
        self.bindings.insert(symbol.to_string(), value);
        self
    }
}

/// An op test: a graph, the runs to compare with the interpreter, and how close.
pub struct OpCase {
    pub name: &'static str,
    pub graph: Graph,
    pub runs: Vec<Run>,
    /// Threads to compile and run with.
    pub threads: usize,
    pub tol: Tolerance,
    /// Outputs compared with another tolerance than `tol`.
    pub output_tol: Vec<(&'static str, Tolerance)>,
}

impl OpCase {
    fn new(name: &'static str, graph: Graph, threads: usize, tol: Tolerance) -> OpCase {
        OpCase {
            name,
            graph,
            runs: Vec::new(),
            threads,
            tol,
            output_tol: Vec::new(),
        }
    }

    /// The same case compared with another tolerance (a backend whose math is not correctly
    /// rounded says so where it calls this).
    pub fn with_tolerance(mut self, tol: Tolerance) -> OpCase {
        self.tol = tol;
        self
    }

    /// The tolerance of output `name`.
    pub fn tolerance_of(&self, name: &str) -> Tolerance {
        self.output_tol
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(self.tol, |(_, t)| *t)
    }

    /// Runs every run through `run` (the compiled graph on a backend: inputs and bindings to
    /// outputs, or an error) and compares with the interpreter, or checks that the run is
    /// refused with the expected message. Panics naming the case, the run and the output that
    /// is off.
    pub fn check<E: std::fmt::Display>(
        &self,
        mut run: impl FnMut(&HashMap<String, Tensor>, &Bindings) -> Result<HashMap<String, Tensor>, E>,
    ) {
        for (i, r) in self.runs.iter().enumerate() {
            let got = run(&r.inputs, &r.bindings);
            if let Some(says) = r.fails_with {
                let e = match got {
                    Ok(_) => panic!("{} run {i}: must fail, saying {says:?}", self.name),
                    Err(e) => e.to_string(),
                };
                assert!(
                    says.iter().all(|s| e.contains(s)),
                    "{} run {i}: the error must say {says:?}: {e}",
                    self.name
                );
                continue;
            }
            let got = got.unwrap_or_else(|e| panic!("{} run {i} failed: {e}", self.name));
            let want = crate::interpret(&self.graph, &r.inputs, &r.bindings)
                .unwrap_or_else(|e| panic!("{} run {i}: interpreter: {e}", self.name));
            for (name, w) in &want {
                let g = got
                    .get(name)
                    .unwrap_or_else(|| panic!("{} run {i}: no output {name}", self.name));
                let t = self.tolerance_of(name);
                assert_close(
                    &format!("{} run {i}: {name}", self.name),
                    g,
                    w,
                    t.atol,
                    t.rtol,
                );
            }
        }
    }
}

/// One `#[test]` per op case, each calling `$run(case)` (`fn(OpCase)`: compile the case's
/// graph on the backend and [`OpCase::check`] it). Expand it in a module of its own where a
/// file runs the table on several targets (`mod emulated { kiln_ir::op_case_tests!(..); }`).
#[macro_export]
macro_rules! op_case_tests {
    ($run:path) => {
        $crate::op_case_tests!(@each $run;
            unary_ops,
            binary_ops_and_where,
            integer_ops_wrap_like_the_interpreter,
            reductions_over_every_axis,
            matmul_layouts,
            views_gather_concat_iota,
            dtype_conversions_round_like_half,
            half_precision_inputs_are_read_exactly,
            write_slice_in_place_and_as_a_copy,
            write_slice_into_a_packed_buffer_keeps_the_neighbours,
            packed_outputs_from_every_kernel_kind,
            large_launches_split_their_grid,
            special_values_follow_the_interpreter,
            non_finite_constants_follow_the_interpreter,
            bf16_weight_gemv_reads_whole_words,
            quantized_weight_matmuls,
            norm_matmul_softmax_and_a_gated_epilogue,
            attention_over_a_16_bit_kv_cache
        );
    };
    (@each $run:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $run($crate::testing::op_cases::$case())
            }
        )*
    };
}

fn f32s(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_f32(shape, &values(shape.iter().product(), seed))
}

fn bf16s(shape: &[usize], seed: u64) -> Tensor {
    f32s(shape, seed).to_dtype(DType::BF16)
}

fn x_rows(g: &mut Graph) -> NodeId {
    g.input("x", DType::F32, &[Expr::sym("n"), 6.into()])
        .expect("x")
}

/// Every unary op (and the composites built from them), at 1, 4 and 9 rows.
pub fn unary_ops() -> OpCase {
    let mut g = Graph::new();
    let x = x_rows(&mut g);
    let sq = g.mul(x, x).expect("mul");
    let pos = g.add_scalar(sq, 0.25).expect("add");
    let outs = [
        ("exp2", g.exp2(x).expect("exp2")),
        ("log2", g.log2(pos).expect("log2")),
        ("sin", g.sin(x).expect("sin")),
        ("sqrt", g.sqrt(pos).expect("sqrt")),
        ("recip", g.recip(pos).expect("recip")),
        ("neg", g.neg(x).expect("neg")),
        ("exp", g.exp(x).expect("exp")),
        ("cos", g.cos(x).expect("cos")),
        ("silu", g.silu(x).expect("silu")),
    ];
    for (n, o) in outs {
        g.output(n, o);
    }
    let mut c = OpCase::new("unary_ops", g, 2, Tolerance::new(1e-6, 1e-5));
    for n in [1, 4, 9] {
        c.runs
            .push(Run::new(inputs(&[("x", f32s(&[n, 6], n as u64))])));
    }
    c
}

/// Every binary op and `where`, one operand broadcast over the rows.
pub fn binary_ops_and_where() -> OpCase {
    let mut g = Graph::new();
    let x = x_rows(&mut g);
    let y = g.input("y", DType::F32, &[6.into()]).expect("y");
    let lt = g.lt(x, y).expect("lt");
    let outs = [
        ("add", g.add(x, y).expect("add")),
        ("mul", g.mul(x, y).expect("mul")),
        ("max", g.maximum(x, y).expect("max")),
        ("mod", g.rem(x, y).expect("rem")),
        ("sub", g.sub(x, y).expect("sub")),
        ("div", g.div(x, y).expect("div")),
        ("lt", lt),
        ("where", g.where_(lt, x, y).expect("where")),
    ];
    for (n, o) in outs {
        g.output(n, o);
    }
    let mut c = OpCase::new("binary_ops_and_where", g, 1, Tolerance::new(1e-6, 1e-5));
    for n in [1, 3, 7] {
        c.runs.push(Run::new(inputs(&[
            ("x", f32s(&[n, 6], 5)),
            (
                "y",
                Tensor::from_f32(&[6], &[0.5, -0.25, 0.75, -1.0, 0.125, 0.3]),
            ),
        ])));
    }
    c
}

/// i32 arithmetic at the edges (overflow wraps, `%` by zero and by -1) and integer reductions.
pub fn integer_ops_wrap_like_the_interpreter() -> OpCase {
    let mut g = Graph::new();
    let a = g.input("a", DType::I32, &[Expr::sym("n")]).expect("a");
    let b = g.input("b", DType::I32, &[Expr::sym("n")]).expect("b");
    let outs = [
        ("add", g.add(a, b).expect("add")),
        ("mul", g.mul(a, b).expect("mul")),
        ("mod", g.rem(a, b).expect("rem")),
        ("max", g.maximum(a, b).expect("max")),
        ("neg", g.neg(a).expect("neg")),
        ("sum", g.sum(a, 0).expect("sum")),
        ("maxr", g.max(b, 0).expect("max")),
    ];
    for (n, o) in outs {
        g.output(n, o);
    }
    let mut c = OpCase::new(
        "integer_ops_wrap_like_the_interpreter",
        g,
        1,
        Tolerance::EXACT,
    );
    c.runs.push(Run::new(inputs(&[
        (
            "a",
            Tensor::from_i32(&[6], &[i32::MAX, -7, 13, 0, i32::MIN, 5]),
        ),
        ("b", Tensor::from_i32(&[6], &[2, 3, -4, 0, -1, 5])),
    ])));
    c
}

/// Sum and max over each axis of a 3-d tensor with two symbolic axes, softmax and a mean over a
/// symbolic length.
pub fn reductions_over_every_axis() -> OpCase {
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, &[Expr::sym("a"), 5.into(), Expr::sym("b")])
        .expect("x");
    for axis in 0..3 {
        let s = g.sum(x, axis).expect("sum");
        g.output(&format!("sum{axis}"), s);
        let m = g.max(x, axis).expect("max");
        g.output(&format!("max{axis}"), m);
    }
    let sm = g.softmax(x, 2).expect("softmax");
    g.output("softmax", sm);
    let mean = g.mean(x, 2).expect("mean");
    g.output("mean_symbolic", mean);
    let mut c = OpCase::new(
        "reductions_over_every_axis",
        g,
        2,
        Tolerance::new(1e-6, 1e-5),
    );
    for (a, b) in [(1, 1), (3, 4), (2, 33)] {
        c.runs.push(Run::new(inputs(&[("x", f32s(&[a, 5, b], 9))])));
    }
    c
}

/// Matmuls in every layout: B contiguous along n or along k, strided operands, a batch
/// broadcast, a transposed view of a view, bf16 weights times f32 activations; at sizes from
/// 1 x 1 to past the CPU's blocking (130 rows, k 64).
pub fn matmul_layouts() -> OpCase {
    let mut g = Graph::new();
    let (m, k, n) = (Expr::sym("m"), Expr::sym("k"), 19);
    let a = g
        .input("a", DType::F32, &[m.clone(), k.clone()])
        .expect("a");
    let b = g.input("b", DType::F32, &[k.clone(), n.into()]).expect("b");
    let bt = g
        .input("bt", DType::F32, &[n.into(), k.clone()])
        .expect("bt");
    let nn = g.matmul(a, b).expect("nn"); // B contiguous along n
    let btt = g.transpose(bt, 0, 1).expect("bt^T");
    let nt = g.matmul(a, btt).expect("nt"); // both contiguous along k
    let at = g.transpose(a, 0, 1).expect("a^T");
    let att = g.transpose(at, 0, 1).expect("a^T^T");
    let ntt = g.transpose(nt, 0, 1).expect("nt^T");
    let generic = g.matmul(nn, ntt).expect("generic"); // [m, m], strided
    let batched_a = g
        .reshape(a, &[1.into(), m.clone(), k.clone()])
        .expect("batch");
    let batched = g.matmul(batched_a, b).expect("batched"); // batch broadcast
                                                            // bf16 weights times f32 activations (widened inside the kernel).
    let wb = g.input("wb", DType::BF16, &[n.into(), k]).expect("wb");
    let wbt = g.transpose(wb, 0, 1).expect("wb^T");
    let mixed = g.matmul(a, wbt).expect("mixed");
    g.output("mixed_bf16", mixed);
    g.output("nn", nn);
    g.output("nt", nt);
    g.output("generic", generic);
    g.output("batched", batched);
    g.output("view", att);
    // `generic` multiplies two f32 matmul results: its error is f32 rounding of the operands
    // times the sum of |terms| (about 19 x 7 here), ~1e-5, not relative to the result.
    let mut c = OpCase::new("matmul_layouts", g, 2, Tolerance::new(1e-4, 1e-5));
    for (mm, kk) in [(1, 1), (2, 8), (67, 37), (130, 64)] {
        c.runs.push(Run::new(inputs(&[
            ("a", f32s(&[mm, kk], 1)),
            ("b", f32s(&[kk, n], 2)),
            ("bt", f32s(&[n, kk], 3)),
            ("wb", bf16s(&[n, kk], 4)),
        ])));
    }
    c
}

/// Views (permute, reshape, slice, expand), concat, gather, iota, the causal mask and RoPE.
pub fn views_gather_concat_iota() -> OpCase {
    let mut g = Graph::new();
    let n = Expr::sym("n");
    let x = g
        .input("x", DType::F32, &[n.clone(), 4.into(), 6.into()])
        .expect("x");
    let table = g
        .input("table", DType::F32, &[10.into(), 6.into()])
        .expect("table");
    let ids = g
        .input("ids", DType::I32, std::slice::from_ref(&n))
        .expect("ids");
    let p = g.permute(x, &[2, 0, 1]).expect("permute");
    let e = g.exp2(p).expect("exp2"); // view then compute
    let r = g
        .reshape(e, &[6.into(), n.clone().mul(4)])
        .expect("reshape");
    let sl = g.slice(x, 2, 1, 5).expect("slice");
    let row = g.slice(x, 0, 0, 1).expect("row");
    let ex = g
        .expand(row, &[n.clone(), 4.into(), 6.into()])
        .expect("expand");
    let cat = g.concat(&[x, ex, sl], 2).expect("concat");
    let gat = g.gather(table, ids).expect("gather");
    let io = g.iota(DType::F32, &[n.clone(), 3.into()], 0).expect("iota");
    let mask = g.causal_mask(Expr::Const(2), n.clone()).expect("mask");
    let (cos, sin) = g
        .rope_tables(Expr::Const(3), n, 6, 10000.0)
        .expect("rope tables");
    let heads = g.permute(x, &[1, 0, 2]).expect("heads"); // [4, n, 6]: rope's [.., seq, d]
    let rope = g.rope(heads, cos, sin).expect("rope");
    for (name, o) in [
        ("permute_reshape", r),
        ("slice", sl),
        ("expand_concat", cat),
        ("gather", gat),
        ("iota", io),
        ("mask", mask),
        ("rope", rope),
    ] {
        g.output(name, o);
    }
    let mut c = OpCase::new("views_gather_concat_iota", g, 2, Tolerance::new(1e-5, 1e-5));
    for nn in [1usize, 3, 5] {
        let idv: Vec<i32> = (0..nn as i32).map(|i| (i * 7 + 3) % 10).collect();
        c.runs.push(Run::new(inputs(&[
            ("x", f32s(&[nn, 4, 6], 4)),
            ("table", f32s(&[10, 6], 5)),
            ("ids", Tensor::from_i32(&[nn], &idv)),
        ])));
    }
    c
}

/// Casts between f32, f16, bf16, i32 and bool, and f16 arithmetic, on values that round,
/// overflow, underflow and are not numbers: bit for bit like the `half` crate.
pub fn dtype_conversions_round_like_half() -> OpCase {
    let special = [
        0.0f32,
        -0.0,
        1.0,
        -2.5,
        65504.0,
        65520.0,
        1e-8,
        6.1e-5,
        3.0e-6,
        1.0 / 3.0,
        1e30,
        -1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        2.5,
        -3.5,
        0.1,
    ];
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, &[special.len().into()])
        .expect("x");
    let mut outs = vec![];
    for d in [DType::F16, DType::BF16, DType::I32, DType::Bool] {
        let c = g.cast(x, d);
        outs.push((format!("to_{d}"), c));
        let back = g.cast(c, DType::F32);
        outs.push((format!("{d}_to_f32"), back));
    }
    let h = g.cast(x, DType::F16);
    let hb = g.cast(h, DType::BF16);
    outs.push(("f16_to_bf16".into(), hb));
    let i = g.cast(x, DType::I32);
    let ih = g.cast(i, DType::F16);
    outs.push(("i32_to_f16".into(), ih));
    let hh = g.mul(h, h).expect("f16 mul"); // f16 arithmetic rounds per op
    outs.push(("f16_mul".into(), hh));
    for (n, o) in outs {
        g.output(&n, o);
    }
    let mut c = OpCase::new("dtype_conversions_round_like_half", g, 1, Tolerance::EXACT);
    c.runs.push(Run::new(inputs(&[(
        "x",
        Tensor::from_f32(&[special.len()], &special),
    )])));
    c
}

/// Inputs stored as f16 and bf16 are read as the values they hold.
pub fn half_precision_inputs_are_read_exactly() -> OpCase {
    let mut g = Graph::new();
    for d in [DType::F16, DType::BF16] {
        let a = g.input(&format!("in_{d}"), d, &[4.into()]).expect("input");
        let f = g.cast(a, DType::F32);
        let y = g.add_scalar(f, 1.0).expect("add");
        g.output(&format!("out_{d}"), y);
    }
    let mut c = OpCase::new(
        "half_precision_inputs_are_read_exactly",
        g,
        1,
        Tolerance::EXACT,
    );
    let v = [0.5, -1.25, 1000.0, 3.0e-5];
    c.runs.push(Run::new(inputs(&[
        ("in_f16", Tensor::from_f64(DType::F16, &[4], &v)),
        ("in_bf16", Tensor::from_f64(DType::BF16, &[4], &v)),
    ])));
    c
}

/// `write_slice` in place (the destination has no other reader: only the new part is written
/// into its buffer) and as a copy (the destination is read again afterwards), at symbolic
/// positions given to the run; a write past the end is refused before anything runs, naming
/// the op and the sizes.
pub fn write_slice_in_place_and_as_a_copy() -> OpCase {
    let (c, s, p) = (Expr::sym("c"), Expr::sym("s"), Expr::sym("p"));
    let mut g = Graph::new();
    let cache = g
        .input("cache", DType::F32, &[2.into(), c.clone(), 3.into()])
        .expect("cache");
    let other = g
        .input("other", DType::F32, &[2.into(), c, 3.into()])
        .expect("other");
    let x = g
        .input("x", DType::F32, &[2.into(), s, 3.into()])
        .expect("x");
    let x2 = g.mul_scalar(x, 2.0).expect("x2");
    let updated = g.write_slice(cache, x2, 1, p.clone()).expect("in place");
    let copied = g.write_slice(other, x, 1, p).expect("copy"); // `other` is read again below
    let again = g.add_scalar(other, 1.0).expect("again");
    g.output("updated", updated);
    g.output("copied", copied);
    g.output("again", again);
    let mut case = OpCase::new("write_slice_in_place_and_as_a_copy", g, 2, Tolerance::EXACT);
    let run = |cv: usize, sv: usize| {
        Run::new(inputs(&[
            ("cache", f32s(&[2, cv, 3], 1)),
            ("other", f32s(&[2, cv, 3], 2)),
            ("x", f32s(&[2, sv, 3], 3)),
        ]))
    };
    for (cv, sv, pv) in [(5usize, 2usize, 0i64), (5, 2, 3), (7, 1, 6), (4, 4, 0)] {
        case.runs.push(run(cv, sv).bound("p", pv));
    }
    let mut past_the_end = run(4, 2).bound("p", 3);
    past_the_end.fails_with = Some(&["write_slice", "(p + s) = 5"]);
    case.runs.push(past_the_end);
    case
}

/// An in-place write into a packed (bf16) buffer: each written element shares its 32-bit word
/// (on backends that pack two per word) with an element that must keep its value (the row
/// width is odd, positions odd and even).
pub fn write_slice_into_a_packed_buffer_keeps_the_neighbours() -> OpCase {
    let (c, s, p) = (Expr::sym("c"), Expr::sym("s"), Expr::sym("p"));
    let mut g = Graph::new();
    let cache = g
        .input("cache", DType::BF16, &[c, 3.into()])
        .expect("cache");
    let x = g.input("x", DType::BF16, &[s, 3.into()]).expect("x");
    let updated = g.write_slice(cache, x, 0, p).expect("write");
    g.output("updated", updated);
    let mut case = OpCase::new(
        "write_slice_into_a_packed_buffer_keeps_the_neighbours",
        g,
        1,
        Tolerance::EXACT,
    );
    for (cv, sv, pv) in [(7usize, 1usize, 0i64), (7, 1, 3), (9, 2, 5), (6, 3, 2)] {
        case.runs.push(
            Run::new(inputs(&[
                ("cache", bf16s(&[cv, 3], 5)),
                ("x", bf16s(&[sv, 3], 6)),
            ]))
            .bound("p", pv),
        );
    }
    case
}

/// Packed outputs (bf16, f16, bool: two or four per 32-bit word where a backend packs them)
/// written by many threads at once: neighbouring elements belong to different threads
/// (elementwise), different blocks (reductions) and different tiles (matmul), and each store
/// must leave its neighbours intact. Sizes are odd so words straddle rows.
pub fn packed_outputs_from_every_kernel_kind() -> OpCase {
    let mut g = Graph::new();
    let n = Expr::sym("n");
    let x = g.input("x", DType::F32, &[n, 37.into()]).expect("x");
    let w = g
        .input("w", DType::BF16, &[21.into(), 37.into()])
        .expect("w");
    let xb = g.cast(x, DType::BF16);
    let xh = g.cast(x, DType::F16);
    let zero = g.mul_scalar(x, 0.0).expect("zero");
    let pos = g.lt(zero, x).expect("lt");
    let sum_b = g.sum(xb, 1).expect("sum");
    let max_h = g.max(xh, 0).expect("max");
    let wt = g.transpose(w, 0, 1).expect("w^T");
    let mm = g.matmul(xb, wt).expect("matmul");
    for (name, o) in [
        ("cast_bf16", xb),
        ("cast_f16", xh),
        ("lt_bool", pos),
        ("sum_bf16", sum_b),
        ("max_f16", max_h),
        ("matmul_bf16", mm),
    ] {
        g.output(name, o);
    }
    // Sums accumulate in f32 on a backend and in f64 in the interpreter before the final
    // rounding to bf16: at most one bf16 ulp (2^-8 relative) apart where a sum lands near a
    // rounding boundary. Casts and max are exact.
    let mut c = OpCase::new(
        "packed_outputs_from_every_kernel_kind",
        g,
        2,
        Tolerance::new(1e-6, 1.0 / 128.0),
    );
    for nn in [1usize, 3, 17] {
        c.runs.push(Run::new(inputs(&[
            ("x", f32s(&[nn, 37], 21)),
            ("w", bf16s(&[21, 37], 22)),
        ])));
    }
    c
}

/// Symbolic sizes that need a GPU's 2-D grid split (2^24 + 64 elements: more than 65535
/// blocks of 256 in x), and 262145 reduced rows.
pub fn large_launches_split_their_grid() -> OpCase {
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, &[Expr::sym("r"), 64.into()])
        .expect("x");
    let y = g.mul(x, x).expect("square");
    let y = g.add_scalar(y, 1.0).expect("add");
    let s = g.sum(x, 1).expect("sum");
    g.output("y", y);
    g.output("s", s);
    // `s` sums 64 values of magnitude up to 1 in f32, in the backend's order: a few ulps of
    // the partial sums (~1e-6 each) apart from the interpreter's f64 sum.
    let mut c = OpCase::new(
        "large_launches_split_their_grid",
        g,
        2,
        Tolerance::new(1e-5, 1e-6),
    );
    let rows = (1usize << 18) + 1;
    c.runs
        .push(Run::new(inputs(&[("x", f32s(&[rows, 64], 3))])));
    c
}

/// NaN, infinities and large values through max, `%`, reductions and float -> i32 casts, bit
/// for bit as the interpreter: NaN propagates through max, `%` is C's exact `fmodf`, casts
/// wrap like Rust's `v as i64 as i32` (WGSL's `i32()` saturates; kiln's kernels must not).
pub fn special_values_follow_the_interpreter() -> OpCase {
    let xs = [
        f32::NAN,
        1.0,
        -0.0,
        f32::INFINITY,
        1e30,
        -7.5,
        3.0e9,
        -3.0e9,
        1e19,
        -1e19,
        2147483648.0,
        -2147483648.0,
        5.0e-39,
        123456.79,
    ];
    let ys = [
        1.0f32,
        f32::NAN,
        2.0,
        3.0,
        3.0,
        2.0,
        7.0,
        -7.0,
        0.1,
        0.0,
        -1.0,
        1.5,
        2.0e-39,
        0.375,
    ];
    let n = xs.len();
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, &[n.into()]).expect("x");
    let y = g.input("y", DType::F32, &[n.into()]).expect("y");
    let rows = g.reshape(x, &[2.into(), (n / 2).into()]).expect("rows");
    let outs = [
        ("max", g.maximum(x, y).expect("max")),
        ("rem", g.rem(x, y).expect("rem")),
        ("max_rows", g.max(rows, 1).expect("max rows")),
        ("to_i32", g.cast(x, DType::I32)),
        ("to_bool", g.cast(x, DType::Bool)),
        ("lt", g.lt(x, y).expect("lt")),
    ];
    for (name, o) in outs {
        g.output(name, o);
    }
    let mut c = OpCase::new(
        "special_values_follow_the_interpreter",
        g,
        1,
        Tolerance::EXACT,
    );
    c.runs.push(Run::new(inputs(&[
        ("x", Tensor::from_f32(&[n], &xs)),
        ("y", Tensor::from_f32(&[n], &ys)),
    ])));
    c
}

/// Infinities, NaN and f64 constants past f32's range in products, sums, maxima, comparisons,
/// reductions and a bf16 cast ([`super::non_finite_constants_graph`]): an f32 `1e39` once
/// rendered as `inff` in C, and WGSL refuses infinite constant expressions.
pub fn non_finite_constants_follow_the_interpreter() -> OpCase {
    let mut c = OpCase::new(
        "non_finite_constants_follow_the_interpreter",
        super::non_finite_constants_graph(),
        1,
        Tolerance::new(0.0, 1e-6),
    );
    c.runs.push(Run::new(super::non_finite_inputs()));
    c
}

/// Matrix-vector products with bf16 weights `[N, K]`: K much longer than a thread block, N not
/// a multiple of a block's columns, batched weights, and 1, 2 and 5 rows (a GEMV on some
/// backends, tiles on others).
pub fn bf16_weight_gemv_reads_whole_words() -> OpCase {
    let mut g = Graph::new();
    let s = Expr::sym("s");
    let x = g
        .input("x", DType::F32, &[s.clone(), 2050.into()])
        .expect("x");
    let w = g
        .input("w", DType::BF16, &[19.into(), 2050.into()])
        .expect("w");
    let wt = g.transpose(w, 0, 1).expect("w^T");
    let y = g.matmul(x, wt).expect("y");
    let xb = g
        .input("xb", DType::F32, &[2.into(), s, 64.into()])
        .expect("xb");
    let wb = g
        .input("wb", DType::BF16, &[2.into(), 21.into(), 64.into()])
        .expect("wb");
    let wbt = g.transpose(wb, 1, 2).expect("wb^T");
    let yb = g.matmul(xb, wbt).expect("yb");
    g.output("y", y);
    g.output("yb", yb);
    // Sums of 2050 products below 1 in f32, in another order than the interpreter's f64:
    // within 1e-4.
    let mut c = OpCase::new(
        "bf16_weight_gemv_reads_whole_words",
        g,
        2,
        Tolerance::new(1e-4, 1e-5),
    );
    for sv in [1usize, 2, 5] {
        c.runs.push(Run::new(inputs(&[
            ("x", f32s(&[sv, 2050], 31)),
            ("w", bf16s(&[19, 2050], 32)),
            ("xb", f32s(&[2, sv, 64], 33)),
            ("wb", bf16s(&[2, 21, 64], 34)),
        ])));
    }
    c
}

/// Matmuls of block-quantized weights (Q8_0, Q4_0, Q4_K, Q6_K and Q5_K in GGML's byte layout, read
/// as blocks by the kernels, dequantized by the interpreter): `x @ W^T` for each type with an
/// odd number of weight rows, so that Q8_0's 34-byte, Q4_0's 18-byte and Q6_K's 210-byte
/// blocks start on every even byte and not only on 32-bit words, and SiLU(gate) * up from one Q4_0 weight (an epilogue
/// reading two products per element, where a backend fuses it); at one row (the GEMV), a few
/// rows, and more rows than a 16-row tile.
pub fn quantized_weight_matmuls() -> OpCase {
    let mut g = Graph::new();
    let s = Expr::sym("s");
    // (weight dtype, name, rows, depth): depths of whole blocks (K types: 256-value
    // super-blocks).
    let weights = [
        (DType::Q8_0, "w8", 19usize, 96usize),
        (DType::Q4_0, "w4", 21, 64),
        (DType::Q4_K, "wk", 7, 512),
        (DType::Q6_K, "w6", 5, 512),
        (DType::Q5_K, "w5", 9, 512),
    ];
    for (dtype, name, n, k) in weights {
        let x = g
            .input(&format!("x_{name}"), DType::F32, &[s.clone(), k.into()])
            .expect("x");
        let w = g.input(name, dtype, &[n.into(), k.into()]).expect("w");
        let wt = g.transpose(w, 0, 1).expect("w^T");
        let y = g.matmul(x, wt).expect("x w^T");
        g.output(&format!("y_{name}"), y);
    }
    let (half, k) = (12i64, 64usize);
    let x = g.input("x_gu", DType::F32, &[s, k.into()]).expect("x");
    let wgu = g
        .input("wgu", DType::Q4_0, &[(2 * half).into(), k.into()])
        .expect("wgu");
    let wgut = g.transpose(wgu, 0, 1).expect("wgu^T");
    let gu = g.matmul(x, wgut).expect("x wgu^T");
    let gate = g.slice(gu, 1, 0, half).expect("gate");
    let up = g.slice(gu, 1, half, 2 * half).expect("up");
    let act = g.silu(gate).expect("silu");
    let h = g.mul(act, up).expect("silu(gate) * up");
    g.output("h", h);
    // Dequantized weights summed in f32 in another order than the interpreter's f64, sums of
    // at most 512 products of magnitude below 1 / sqrt(depth): within 1e-5 + 1e-4 relative.
    let mut c = OpCase::new("quantized_weight_matmuls", g, 2, Tolerance::new(1e-5, 1e-4));
    let quantized = |dtype: DType, n: usize, k: usize, seed: u64| {
        let v: Vec<f32> = values(n * k, seed)
            .into_iter()
            .map(|x| x / (k as f32).sqrt())
            .collect();
        Tensor::quantize(dtype, &[n, k], &v).expect("whole blocks")
    };
    for sv in [1usize, 3, 17] {
        let mut ins = vec![
            ("x_gu", f32s(&[sv, k], 40)),
            ("wgu", quantized(DType::Q4_0, 2 * half as usize, k, 41)),
        ];
        for (i, (dtype, name, n, k)) in weights.into_iter().enumerate() {
            let seed = 42 + 2 * i as u64;
            ins.push((
                ["x_w8", "x_w4", "x_wk", "x_w6", "x_w5"][i],
                f32s(&[sv, k], seed),
            ));
            ins.push((name, quantized(dtype, n, k, seed + 1)));
        }
        c.runs.push(Run::new(inputs(&ins)));
    }
    c
}

/// Quantized weights read through views whose elements do not start a block: a product with
/// columns 8..40 of each row of a Q8_0 and a Q4_0 weight (every element index of the operand
/// lands mid-block). The graph admits it; kiln-cpu's packed kernels take only whole rows of
/// blocks and refuse it, so this case is not in [`op_case_tests!`](crate::op_case_tests):
/// the GPU backends, which read any element of a block, run it.
pub fn quantized_weight_views() -> OpCase {
    let mut g = Graph::new();
    let s = Expr::sym("s");
    let x = g
        .input("x", DType::F32, &[s.clone(), 32.into()])
        .expect("x");
    for (dtype, name) in [(DType::Q8_0, "w8"), (DType::Q4_0, "w4")] {
        let w = g.input(name, dtype, &[5.into(), 64.into()]).expect("w");
        let cols = g.slice(w, 1, 8, 40).expect("w[:, 8..40]");
        let wt = g.transpose(cols, 0, 1).expect("^T");
        let y = g.matmul(x, wt).expect("x w^T");
        g.output(&format!("y_{name}"), y);
    }
    let mut c = OpCase::new("quantized_weight_views", g, 2, Tolerance::new(1e-5, 1e-4));
    for sv in [1usize, 18] {
        let w = |dtype, seed| {
            let v: Vec<f32> = values(5 * 64, seed).iter().map(|x| x / 8.0).collect();
            Tensor::quantize(dtype, &[5, 64], &v).expect("whole blocks")
        };
        c.runs.push(Run::new(inputs(&[
            ("x", f32s(&[sv, 32], 50)),
            ("w8", w(DType::Q8_0, 51)),
            ("w4", w(DType::Q4_0, 52)),
        ])));
    }
    c
}

/// What the fusion passes make of a model's layer: RMSNorm read by a matmul, SiLU in the
/// matmul's epilogue, a softmax over the product's rows cast to bf16, and SiLU(gate) * up from
/// one `[s, 2i]` product (an epilogue reading two products per element).
pub fn norm_matmul_softmax_and_a_gated_epilogue() -> OpCase {
    let mut g = Graph::new();
    let s = Expr::sym("s");
    let x = g.input("x", DType::F32, &[s, 64.into()]).expect("x");
    let w = g
        .input("w", DType::F32, &[48.into(), 64.into()])
        .expect("w");
    let nw = g.input("nw", DType::F32, &[64.into()]).expect("nw");
    let h = g.rms_norm(x, nw, 1e-6).expect("rms_norm");
    let wt = g.transpose(w, 0, 1).expect("w^T");
    let y = g.matmul(h, wt).expect("h w^T");
    let y = g.silu(y).expect("silu");
    let sm = g.softmax(y, 1).expect("softmax");
    let c = g.cast(sm, DType::BF16);
    let wgu = g
        .input("wgu", DType::F32, &[48.into(), 64.into()])
        .expect("wgu");
    let wgut = g.transpose(wgu, 0, 1).expect("wgu^T");
    let gu = g.matmul(h, wgut).expect("h wgu^T");
    let gate = g.slice(gu, 1, 0, 24).expect("gate");
    let up = g.slice(gu, 1, 24, 48).expect("up");
    let act = g.silu(gate).expect("silu");
    let gated = g.mul(act, up).expect("gated");
    g.output("softmax", sm);
    g.output("bf16", c);
    g.output("gated", gated);
    let mut case = OpCase::new(
        "norm_matmul_softmax_and_a_gated_epilogue",
        g,
        2,
        Tolerance::new(1e-5, 1e-5),
    );
    // `bf16` rounds the softmax: one bf16 ulp (2^-8 relative) where f32 and f64 land on both
    // sides of a rounding boundary. `gated` is a product of two sums of 64 terms (magnitudes up
    // to ~50): f32 rounding in another order.
    case.output_tol = vec![
        ("bf16", Tolerance::new(1e-6, 1.0 / 128.0)),
        ("gated", Tolerance::new(1e-3, 1e-5)),
    ];
    for n in [1usize, 7, 33] {
        case.runs.push(Run::new(inputs(&[
            ("x", f32s(&[n, 64], 1)),
            ("w", f32s(&[48, 64], 2)),
            ("nw", f32s(&[64], 3)),
            ("wgu", f32s(&[48, 64], 4)),
        ])));
    }
    case
}

/// A model's attention over a 16-bit KV cache (`--kv-dtype bf16|f16`), once per dtype: this
/// step's f32 keys and values rounded to the cache's dtype as they are written at `p` (in
/// place), grouped-query attention (two KV heads of three query heads) over the `p + s`
/// positions read back from it, scaled and causally masked. Key depth 20 and 24 value columns
/// (vector remainders), a prompt of 75 (several row blocks and key blocks), a decode step at
/// the end of a 150-position cache, a short step in between. The written caches are exact (a
/// rounding of the same f32 values); the attention is f32 arithmetic on the widened values.
pub fn attention_over_a_16_bit_kv_cache() -> OpCase {
    const KV: usize = 2;
    const G: usize = 3;
    const D: usize = 20;
    const DV: usize = 24;
    let (c, s, p) = (Expr::sym("c"), Expr::sym("s"), Expr::sym("p"));
    let t = p.clone().add(s.clone());
    let rows = s.clone().mul(G as i64);
    let mut g = Graph::new();
    let q = g
        .input("q", DType::F32, &[KV.into(), G.into(), s.clone(), D.into()])
        .expect("q");
    let q = g
        .reshape(q, &[KV.into(), rows.clone(), D.into()])
        .expect("q rows");
    let k = g
        .input("k", DType::F32, &[KV.into(), s.clone(), D.into()])
        .expect("k");
    let v = g
        .input("v", DType::F32, &[KV.into(), s.clone(), DV.into()])
        .expect("v");
    let mask = g.causal_mask(p.clone(), s.clone()).expect("mask");
    for (dtype, name) in [(DType::BF16, "bf16"), (DType::F16, "f16")] {
        let mut cache = |x: NodeId, which: &str, width: usize| {
            let shape = [KV.into(), c.clone(), width.into()];
            let cache = g
                .input(&format!("{which}_cache_{name}"), dtype, &shape)
                .expect("cache");
            let x = g.cast(x, dtype);
            let written = g.write_slice(cache, x, 1, p.clone()).expect("write");
            g.output(&format!("{which}_cache_out_{name}"), written);
            g.slice(written, 1, 0, t.clone())
                .expect("the positions written")
        };
        let (k_all, v_all) = (cache(k, "k", D), cache(v, "v", DV));
        let kt = g.transpose(k_all, 1, 2).expect("k^T");
        let scores = g.matmul(q, kt).expect("q k^T");
        let scores = g
            .reshape(scores, &[(KV * G).into(), s.clone(), t.clone()])
            .expect("per head");
        let scores = g.mul_scalar(scores, 0.3).expect("scale");
        let scores = g.add(scores, mask).expect("masked");
        let probs = g.softmax(scores, 2).expect("softmax");
        let probs = g
            .reshape(probs, &[KV.into(), rows.clone(), t.clone()])
            .expect("probs");
        let o = g.matmul(probs, v_all).expect("p v");
        g.output(&format!("o_{name}"), o);
    }
    let mut case = OpCase::new(
        "attention_over_a_16_bit_kv_cache",
        g,
        2,
        Tolerance::new(1e-5, 1e-4),
    );
    case.output_tol = [
        "k_cache_out_bf16",
        "v_cache_out_bf16",
        "k_cache_out_f16",
        "v_cache_out_f16",
    ]
    .into_iter()
    .map(|n| (n, Tolerance::EXACT))
    .collect();
    const C: usize = 150;
    for (sv, pv) in [(75usize, 0i64), (1, 149), (3, 7)] {
        let mut ins: HashMap<String, Tensor> = inputs(&[
            ("q", f32s(&[KV, G, sv, D], 1)),
            ("k", f32s(&[KV, sv, D], 2)),
            ("v", f32s(&[KV, sv, DV], 3)),
        ]);
        for (dtype, name) in [(DType::BF16, "bf16"), (DType::F16, "f16")] {
            let cache = |shape: &[usize], seed| f32s(shape, seed).to_dtype(dtype);
            ins.insert(format!("k_cache_{name}"), cache(&[KV, C, D], 4));
            ins.insert(format!("v_cache_{name}"), cache(&[KV, C, DV], 5));
        }
        case.runs.push(Run::new(ins).bound("p", pv));
    }
    case
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interpreter against itself: every case builds, every run that must succeed runs,
    /// and the run that must fail does, with the message the backends are held to.
    fn self_check(case: OpCase) {
        let g = case.graph.clone();
        case.check(|ins, b| crate::interpret(&g, ins, b));
    }

    crate::op_case_tests!(self_check);

    #[test]
    fn constant_write_positions_are_checked_while_building() {
        let mut g = Graph::new();
        let cache = g
            .input("cache", DType::F32, &[2.into(), 4.into(), 3.into()])
            .unwrap();
        let x = g
            .input("x", DType::F32, &[2.into(), 1.into(), 3.into()])
            .unwrap();
        let e = g.write_slice(cache, x, 1, -1).unwrap_err().to_string();
        assert!(e.contains("write_slice"), "{e}");
    }
}

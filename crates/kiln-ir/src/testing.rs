//! What the backends' tests share: the op cases every backend runs ([`op_cases`]), random
//! graphs for property tests against the interpreter (deterministic given the op codes, so
//! proptest can shrink them), deterministic values, the comparison of a backend's outputs with
//! the interpreter's, [`require`] (a test that must not skip) and a counting allocator
//! ([`alloc`]).
//!
//! Compiled only for tests (`cfg(test)`, or the `testing` feature that other crates' tests turn
//! on through their dev-dependencies), never into the release binary.

use crate::{Bindings, DType, Expr, Graph, IrError, NodeId, Tensor};
use std::collections::HashMap;

pub mod alloc;
pub mod op_cases;
pub use op_cases::{OpCase, Run, Tolerance};

/// Deterministic pseudo-random values in [-1, 1) (xorshift from `seed`).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Whether the environment variable `var` (`KILN_REQUIRE_WGPU`, `KILN_REQUIRE_CUDA`) asks that
/// tests needing a device fail instead of skipping where it is missing: set, and neither empty
/// nor `0`.
pub fn require(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Named tensors as a run's inputs.
pub fn inputs(pairs: &[(&str, Tensor)]) -> HashMap<String, Tensor> {
    pairs
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect()
}

/// Panics unless |got - want| <= atol + rtol * |want| everywhere (NaNs and infinities equal
/// where both are), naming the tensor and the first element that is off.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{name}: dtype");
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let same = (a.is_nan() && b.is_nan()) || a == b;
        assert!(
            same || (a - b).abs() <= atol + rtol * b.abs(),
            "{name}[{i}]: got {a}, want {b} (atol {atol}, rtol {rtol})"
        );
    }
}

/// Compares a backend's outputs of `g` on `ins` with the interpreter's, output by output.
pub fn assert_matches_interpreter(
    got: &HashMap<String, Tensor>,
    g: &Graph,
    ins: &HashMap<String, Tensor>,
    atol: f64,
    rtol: f64,
) {
    let want = crate::interpret(g, ins, &Bindings::new()).expect("interpreter");
    for (name, w) in &want {
        assert_close(name, &got[name], w, atol, rtol);
    }
}

/// The inputs of a [`random_graph`] with its symbols bound to `a = na`, `b = nb`: `x` and `y`,
/// `[na, nb]` f32 tensors of [`values`] from seeds `seed_x` and `seed_y`.
pub fn random_graph_inputs(
    na: usize,
    nb: usize,
    seed_x: u64,
    seed_y: u64,
) -> HashMap<String, Tensor> {
    inputs(&[
        ("x", Tensor::from_f32(&[na, nb], &values(na * nb, seed_x))),
        ("y", Tensor::from_f32(&[na, nb], &values(na * nb, seed_y))),
    ])
}

/// Constants a kernel cannot spell as a plain literal — infinities, NaN, and f64 values past
/// f32's range (1e39 is infinity in f32) — and a large finite one, each combined with an
/// input `x` `[2, 4]` (values from [`non_finite_inputs`]): outputs `<op>_<k>` for the `k`th
/// constant: a sum, a maximum, a comparison, a row sum, a row max and a bf16 cast of the sum
/// (and of the product, for the constants f32 and the interpreter's f64 agree on: `0 * 1e39`
/// is 0 in f64 but NaN in f32).
pub fn non_finite_constants_graph() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, &[2.into(), 4.into()]).expect("x");
    let constants = [
        (f64::INFINITY, true),
        (f64::NEG_INFINITY, true),
        (f64::NAN, true),
        (1e37, true),
        (1e39, false),
        (-1e39, false),
    ];
    for (k, (c, products_agree)) in constants.into_iter().enumerate() {
        let c = g.scalar(c, DType::F32);
        let c = g.broadcast_to(c, &[2.into(), 4.into()]).expect("broadcast");
        let sum = g.add(x, c).expect("add");
        let mut outs = vec![
            ("add", sum),
            ("max", g.maximum(x, c).expect("max")),
            ("lt", g.lt(x, c).expect("lt")),
            ("rowsum", g.sum(sum, 1).expect("sum")),
            ("rowmax", g.max(sum, 1).expect("rowmax")),
            ("bf16", g.cast(sum, DType::BF16)),
        ];
        if products_agree {
            let prod = g.mul(x, c).expect("mul");
            outs.push(("mul", prod));
            outs.push(("mulsum", g.sum(prod, 1).expect("sum")));
            outs.push(("mulmax", g.max(prod, 1).expect("max")));
        }
        for (name, o) in outs {
            g.output(&format!("{name}_{k}"), o);
        }
    }
    g
}

/// The input of [`non_finite_constants_graph`]: positive, negative and zero values.
pub fn non_finite_inputs() -> HashMap<String, Tensor> {
    inputs(&[(
        "x",
        Tensor::from_f32(&[2, 4], &[1.0, -2.0, 0.0, 0.5, -0.0, 3.0, -1.5, 2.5]),
    )])
}

/// Grouped-query attention as a model writes it, for the fused attention kernels' tests:
/// `softmax(0.3 q k^T [+ causal mask]) v` with `heads` query heads per KV head. Inputs `q`
/// `[kv, heads, s, d]` (its shape binds s), `k` `[kv, t, d]` and `v` `[kv, t, dv]` (t keys,
/// the mask's past is `t - s`; values from [`attention_inputs`]); output `o`
/// `[kv, heads * s, dv]`.
pub fn attention_graph(kv: usize, heads: usize, d: usize, dv: usize, masked: bool) -> Graph {
    attention_graph_kv(kv, heads, d, dv, masked, DType::F32)
}

/// [`attention_graph`] with keys and values `k`, `v` in `kv_dtype` (a 16-bit KV cache).
pub fn attention_graph_kv(
    kv: usize,
    heads: usize,
    d: usize,
    dv: usize,
    masked: bool,
    kv_dtype: DType,
) -> Graph {
    let mut g = Graph::new();
    let (s, t) = (Expr::sym("s"), Expr::sym("t"));
    let rows = s.clone().mul(heads as i64);
    let q = g
        .input(
            "q",
            DType::F32,
            &[kv.into(), heads.into(), s.clone(), d.into()],
        )
        .expect("q");
    let q = g
        .reshape(q, &[kv.into(), rows.clone(), d.into()])
        .expect("q rows");
    let k = g
        .input("k", kv_dtype, &[kv.into(), t.clone(), d.into()])
        .expect("k");
    let v = g
        .input("v", kv_dtype, &[kv.into(), t.clone(), dv.into()])
        .expect("v");
    let kt = g.transpose(k, 1, 2).expect("k^T");
    let scores = g.matmul(q, kt).expect("q k^T");
    let scores = g
        .reshape(scores, &[(kv * heads).into(), s.clone(), t.clone()])
        .expect("scores per head");
    let mut scores = g.mul_scalar(scores, 0.3).expect("scale");
    if masked {
        let mask = g.causal_mask(t.clone().sub(s.clone()), s).expect("mask");
        scores = g.add(scores, mask).expect("masked");
    }
    let probs = g.softmax(scores, 2).expect("softmax");
    let probs = g.reshape(probs, &[kv.into(), rows, t]).expect("probs");
    let o = g.matmul(probs, v).expect("p v");
    g.output("o", o);
    g
}

/// Inputs of [`attention_graph`] for `s` query positions per head and `t` keys.
pub fn attention_inputs(
    kv: usize,
    heads: usize,
    d: usize,
    dv: usize,
    s: usize,
    t: usize,
) -> HashMap<String, Tensor> {
    inputs(&[
        (
            "q",
            Tensor::from_f32(&[kv, heads, s, d], &values(kv * heads * s * d, 1)),
        ),
        ("k", Tensor::from_f32(&[kv, t, d], &values(kv * t * d, 2))),
        ("v", Tensor::from_f32(&[kv, t, dv], &values(kv * t * dv, 3))),
    ])
}

/// [`attention_graph`] (masked) with its output read as a model's output projection reads
/// it: `[kv, heads * s, dv]` viewed as `[s, kv * heads * dv]` (head-major columns) times `w`
/// `[kv * heads * dv, 5]`; output `y` `[s, 5]`. Inputs from [`attention_projected_inputs`].
pub fn attention_graph_projected(kv: usize, heads: usize, d: usize, dv: usize) -> Graph {
    let mut g = attention_graph(kv, heads, d, dv, true);
    let (_, o) = g.outputs.pop().expect("the attention's output");
    let s = Expr::sym("s");
    let nh = kv * heads;
    let o = g
        .reshape(o, &[nh.into(), s.clone(), dv.into()])
        .expect("per head");
    let o = g.permute(o, &[1, 0, 2]).expect("per position");
    let o = g.reshape(o, &[s, (nh * dv).into()]).expect("rows");
    let w = g
        .input("w", DType::F32, &[(nh * dv).into(), 5.into()])
        .expect("w");
    let y = g.matmul(o, w).expect("projection");
    g.output("y", y);
    g
}

/// Inputs of [`attention_graph_projected`]: [`attention_inputs`] and `w`.
pub fn attention_projected_inputs(
    kv: usize,
    heads: usize,
    d: usize,
    dv: usize,
    s: usize,
    t: usize,
) -> HashMap<String, Tensor> {
    let mut ins = attention_inputs(kv, heads, d, dv, s, t);
    let rows = kv * heads * dv;
    ins.insert(
        "w".into(),
        Tensor::from_f32(&[rows, 5], &values(rows * 5, 4)),
    );
    ins
}

/// A graph over inputs `x`, `y` of shape [a, b] (symbols), built by applying `ops`; its one
/// output is `out`. Elementwise, reduction, matmul, view, concat and select ops all occur.
///
/// The graphs are kept well-conditioned (values stay small, no exp2 towers, sums are means,
/// matmul chains are scaled back): the tests compare f32 kernels with an f64 oracle under a
/// fixed tolerance, which only means something where one f32 rounding cannot be amplified past
/// it. Each such rule came from a case a property test found (see the comments below).
pub fn random_graph(ops: &[(u8, u8)]) -> Graph {
    let mut g = Graph::new();
    let (a, b) = (Expr::sym("a"), Expr::sym("b"));
    let x = g
        .input("x", DType::F32, &[a.clone(), b.clone()])
        .expect("input");
    let y = g.input("y", DType::F32, &[a, b]).expect("input");
    let mut stack = vec![x, y];
    for (code, arg) in ops {
        apply(&mut g, &mut stack, *code, *arg);
    }
    let last = *stack.last().expect("non-empty");
    g.output("out", last);
    g
}

/// Applies one op code to the stack of nodes; ops whose shapes do not fit are skipped.
fn apply(g: &mut Graph, stack: &mut Vec<NodeId>, code: u8, arg: u8) {
    let top = *stack.last().expect("non-empty");
    let other = stack[arg as usize % stack.len()];
    let rank = g.shape(top).len();
    let r: Result<NodeId, IrError> = (|| match code % 12 {
        // exp2 of -x^2/2, not of x: towers of exp2(x) multiply an input's rounding error by
        // ln2 * |x| per level, and a three-level tower (values ~1e34) turned one f32 rounding
        // into 4e-5 of relative error on every backend. exp2(-x^2/2) has a slope below 1.
        0 => {
            let sq = g.mul(top, top)?;
            let h = g.mul_scalar(sq, -0.5)?;
            g.exp2(h)
        }
        1 => g.sin(top),
        2 => {
            let sq = g.mul(top, top)?;
            let p = g.add_scalar(sq, 0.5)?;
            if arg.is_multiple_of(2) {
                g.sqrt(p)
            } else {
                g.recip(p)
            }
        }
        3 => g.add(top, other),
        4 => g.mul(top, other),
        5 => g.maximum(top, other),
        6 => {
            let axis = arg as usize % rank;
            // A mean, not a bare sum: a sum of up to 8 values feeding exp2 and sin is
            // ill-conditioned (one ulp of the sum moved an output by 1.4e-5), and f32 sums in
            // different orders (the CPU's sequential loop, a GPU warp's shuffle tree) differ by
            // that ulp. The mean's scale keeps the order's effect below the tolerance.
            let red = if arg.is_multiple_of(2) {
                g.mean(top, axis)?
            } else {
                g.max(top, axis)?
            };
            g.add(top, red) // broadcast back
        }
        7 => {
            let t = g.transpose(other, 0, 1)?;
            let m = g.matmul(top, t)?; // [a, b] x [b, a] -> [a, a]
            let m = g.matmul(m, top)?; // -> [a, b]
                                       // Scaled back to |x| <= 1 (a, b < 9): unscaled chains reach |x| in the hundreds, where
                                       // a following sin or exp2 turns f32 rounding of its argument (|x| * 2^-24) into
                                       // errors no f32 kernel can avoid against the f64 oracle.
            g.mul_scalar(m, 1.0 / 64.0)
        }
        8 => g.transpose(top, 0, 1),
        9 => {
            let axis = arg as usize % rank;
            let len = g.shape(top)[axis].clone();
            let half = len.clone().div(2);
            let a = g.slice(top, axis, 0, half.clone())?;
            let b = g.slice(top, axis, half, len)?;
            let nb = g.neg(b)?;
            g.concat(&[nb, a], axis)
        }
        10 => {
            let s = g.shape(top).to_vec();
            let flat = g.reshape(top, &[s[0].clone().mul(s[1].clone())])?;
            let sq = g.mul(flat, flat)?;
            let nsq = g.neg(sq)?;
            let e = g.exp2(nsq)?; // bounded, like op 0
            g.reshape(e, &[s[1].clone(), s[0].clone()])
        }
        _ => {
            let c = g.lt(top, other)?;
            g.where_(c, top, other)
        }
    })();
    if let Ok(n) = r {
        stack.push(n);
    }
}

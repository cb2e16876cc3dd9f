//! Every primitive op, view and dtype conversion on the CPU backend against the interpreter.
mod common;
use common::*;
use kiln_ir::{Bindings, DType, Expr, Graph, NodeId, Tensor};

fn x_input(g: &mut Graph) -> NodeId {
    g.input("x", DType::F32, &[Expr::sym("n"), 6.into()])
        .unwrap()
}

fn run_x(n: usize) -> std::collections::HashMap<String, Tensor> {
    inputs(&[("x", Tensor::from_f32(&[n, 6], &values(n * 6, n as u64)))])
}

#[test]
fn unary_ops() {
    let mut g = Graph::new();
    let x = x_input(&mut g);
    let sq = g.mul(x, x).unwrap();
    let pos = g.add_scalar(sq, 0.25).unwrap();
    let outs = [
        ("exp2", g.exp2(x).unwrap()),
        ("log2", g.log2(pos).unwrap()),
        ("sin", g.sin(x).unwrap()),
        ("sqrt", g.sqrt(pos).unwrap()),
        ("recip", g.recip(pos).unwrap()),
        ("neg", g.neg(x).unwrap()),
        ("exp", g.exp(x).unwrap()),
        ("cos", g.cos(x).unwrap()),
        ("silu", g.silu(x).unwrap()),
    ];
    for (n, o) in outs {
        g.output(n, o);
    }
    let mut exe = build(&g, 2);
    for n in [1, 4, 9] {
        check(exe.as_mut(), &g, &run_x(n), 1e-6, 1e-5);
    }
}

#[test]
fn non_finite_constants_follow_the_interpreter() {
    // Infinities, NaN and f64 constants past f32's range, in products, sums, maxima,
    // comparisons, reductions and a bf16 cast (an f32 `1e39` once rendered as `inff`).
    let g = kiln_ir::testing::non_finite_constants_graph();
    let mut exe = build(&g, 1);
    check(
        exe.as_mut(),
        &g,
        &kiln_ir::testing::non_finite_inputs(),
        0.0,
        1e-6,
    );
}

#[test]
fn binary_ops_and_where() {
    let mut g = Graph::new();
    let x = x_input(&mut g);
    let y = g.input("y", DType::F32, &[6.into()]).unwrap(); // broadcast over rows
    let lt = g.lt(x, y).unwrap();
    let outs = [
        ("add", g.add(x, y).unwrap()),
        ("mul", g.mul(x, y).unwrap()),
        ("max", g.maximum(x, y).unwrap()),
        ("mod", g.rem(x, y).unwrap()),
        ("sub", g.sub(x, y).unwrap()),
        ("div", g.div(x, y).unwrap()),
        ("lt", lt),
        ("where", g.where_(lt, x, y).unwrap()),
    ];
    for (n, o) in outs {
        g.output(n, o);
    }
    let mut exe = build(&g, 1);
    for n in [1, 3, 7] {
        let ins = inputs(&[
            ("x", Tensor::from_f32(&[n, 6], &values(n * 6, 5))),
            (
                "y",
                Tensor::from_f32(&[6], &[0.5, -0.25, 0.75, -1.0, 0.125, 0.3]),
            ),
        ]);
        check(exe.as_mut(), &g, &ins, 1e-6, 1e-5);
    }
}

#[test]
fn integer_ops_wrap_like_the_interpreter() {
    let mut g = Graph::new();
    let a = g.input("a", DType::I32, &[Expr::sym("n")]).unwrap();
    let b = g.input("b", DType::I32, &[Expr::sym("n")]).unwrap();
    let outs = [
        ("add", g.add(a, b).unwrap()),
        ("mul", g.mul(a, b).unwrap()),
        ("mod", g.rem(a, b).unwrap()),
        ("max", g.maximum(a, b).unwrap()),
        ("neg", g.neg(a).unwrap()),
        ("sum", g.sum(a, 0).unwrap()),
        ("maxr", g.max(b, 0).unwrap()),
    ];
    for (n, o) in outs {
        g.output(n, o);
    }
    let mut exe = build(&g, 1);
    let av = [i32::MAX, -7, 13, 0, i32::MIN, 5];
    let bv = [2, 3, -4, 0, -1, 5];
    let ins = inputs(&[
        ("a", Tensor::from_i32(&[6], &av)),
        ("b", Tensor::from_i32(&[6], &bv)),
    ]);
    check(exe.as_mut(), &g, &ins, 0.0, 0.0);
}

#[test]
fn reductions_over_every_axis() {
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, &[Expr::sym("a"), 5.into(), Expr::sym("b")])
        .unwrap();
    for axis in 0..3 {
        let s = g.sum(x, axis).unwrap();
        g.output(&format!("sum{axis}"), s);
        let m = g.max(x, axis).unwrap();
        g.output(&format!("max{axis}"), m);
    }
    let sm = g.softmax(x, 2).unwrap();
    g.output("softmax", sm);
    let mean = g.mean(x, 2).unwrap();
    g.output("mean_symbolic", mean);
    let mut exe = build(&g, 2);
    for (a, b) in [(1, 1), (3, 4), (2, 33)] {
        let ins = inputs(&[("x", Tensor::from_f32(&[a, 5, b], &values(a * 5 * b, 9)))]);
        check(exe.as_mut(), &g, &ins, 1e-6, 1e-5);
    }
}

#[test]
fn matmul_layouts() {
    let mut g = Graph::new();
    let (m, k, n) = (Expr::sym("m"), Expr::sym("k"), 19);
    let a = g.input("a", DType::F32, &[m.clone(), k.clone()]).unwrap();
    let b = g.input("b", DType::F32, &[k.clone(), n.into()]).unwrap();
    let bt = g.input("bt", DType::F32, &[n.into(), k.clone()]).unwrap();
    let nn = g.matmul(a, b).unwrap(); // B contiguous along n
    let btt = g.transpose(bt, 0, 1).unwrap();
    let nt = g.matmul(a, btt).unwrap(); // both contiguous along k
    let at = g.transpose(a, 0, 1).unwrap();
    let att = g.transpose(at, 0, 1).unwrap();
    let ntt = g.transpose(nt, 0, 1).unwrap();
    let generic = g.matmul(nn, ntt).unwrap(); // [m, m], strided
    let batched_a = g.reshape(a, &[1.into(), m.clone(), k.clone()]).unwrap();
    let batched = g.matmul(batched_a, b).unwrap(); // batch broadcast
                                                   // bf16 weights times f32 activations (widened inside the NT kernel)
    let wb = g.input("wb", DType::BF16, &[n.into(), k.clone()]).unwrap();
    let wbt = g.transpose(wb, 0, 1).unwrap();
    let mixed = g.matmul(a, wbt).unwrap();
    g.output("mixed_bf16", mixed);
    g.output("nn", nn);
    g.output("nt", nt);
    g.output("generic", generic);
    g.output("batched", batched);
    g.output("view", att);
    let mut exe = build(&g, 2);
    for (mm, kk) in [(1, 1), (2, 8), (67, 37), (130, 64)] {
        let ins = inputs(&[
            ("a", Tensor::from_f32(&[mm, kk], &values(mm * kk, 1))),
            ("b", Tensor::from_f32(&[kk, n], &values(kk * n, 2))),
            ("bt", Tensor::from_f32(&[n, kk], &values(kk * n, 3))),
            (
                "wb",
                Tensor::from_f32(&[n, kk], &values(kk * n, 4)).to_dtype(DType::BF16),
            ),
        ]);
        // `generic` multiplies two f32 matmul results: its error is f32 rounding of the operands
        // times the sum of |terms| (about 19 x 7 here), ~1e-5, not relative to the result.
        check(exe.as_mut(), &g, &ins, 1e-4, 1e-5);
    }
}

#[test]
fn views_gather_concat_iota() {
    let mut g = Graph::new();
    let n = Expr::sym("n");
    let x = g
        .input("x", DType::F32, &[n.clone(), 4.into(), 6.into()])
        .unwrap();
    let table = g
        .input("table", DType::F32, &[10.into(), 6.into()])
        .unwrap();
    let ids = g
        .input("ids", DType::I32, std::slice::from_ref(&n))
        .unwrap();
    let p = g.permute(x, &[2, 0, 1]).unwrap();
    let e = g.exp2(p).unwrap(); // view then compute
    let r = g.reshape(e, &[6.into(), n.clone().mul(4)]).unwrap();
    let sl = g.slice(x, 2, 1, 5).unwrap();
    let row = g.slice(x, 0, 0, 1).unwrap();
    let ex = g.expand(row, &[n.clone(), 4.into(), 6.into()]).unwrap();
    let cat = g.concat(&[x, ex, sl], 2).unwrap();
    let gat = g.gather(table, ids).unwrap();
    let io = g.iota(DType::F32, &[n.clone(), 3.into()], 0).unwrap();
    let mask = g.causal_mask(Expr::Const(2), n.clone()).unwrap();
    let (cos, sin) = g
        .rope_tables(Expr::Const(3), n.clone(), 6, 10000.0)
        .unwrap();
    let heads = g.permute(x, &[1, 0, 2]).unwrap(); // [4, n, 6]: rope's [.., seq, d]
    let rope = g.rope(heads, cos, sin).unwrap();
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
    let mut exe = build(&g, 2);
    for nn in [1usize, 3, 5] {
        let idv: Vec<i32> = (0..nn as i32).map(|i| (i * 7 + 3) % 10).collect();
        let ins = inputs(&[
            ("x", Tensor::from_f32(&[nn, 4, 6], &values(nn * 24, 4))),
            ("table", Tensor::from_f32(&[10, 6], &values(60, 5))),
            ("ids", Tensor::from_i32(&[nn], &idv)),
        ]);
        check(exe.as_mut(), &g, &ins, 1e-5, 1e-5);
    }
}

#[test]
fn dtype_conversions_round_like_half() {
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
    let x = g.input("x", DType::F32, &[special.len().into()]).unwrap();
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
    let hh = g.mul(h, h).unwrap(); // f16 arithmetic rounds per op
    outs.push(("f16_mul".into(), hh));
    for (n, o) in outs {
        g.output(&n, o);
    }
    let mut exe = build(&g, 1);
    let ins = inputs(&[("x", Tensor::from_f32(&[special.len()], &special))]);
    check(exe.as_mut(), &g, &ins, 0.0, 0.0);
    // inputs stored as f16/bf16 are read correctly too
    let mut g2 = Graph::new();
    for d in [DType::F16, DType::BF16] {
        let a = g2.input(&format!("in_{d}"), d, &[4.into()]).unwrap();
        let f = g2.cast(a, DType::F32);
        let y = g2.add_scalar(f, 1.0).unwrap();
        g2.output(&format!("out_{d}"), y);
    }
    let mut exe2 = build(&g2, 1);
    let v = [0.5, -1.25, 1000.0, 3.0e-5];
    let ins2 = inputs(&[
        ("in_f16", Tensor::from_f64(DType::F16, &[4], &v)),
        ("in_bf16", Tensor::from_f64(DType::BF16, &[4], &v)),
    ]);
    check(exe2.as_mut(), &g2, &ins2, 0.0, 0.0);
}

/// `write_slice` in place (the destination has no other reader: only the new part is written
/// into its buffer) and as a copy (the destination is read again afterwards), against the
/// interpreter, at symbolic positions given to the run.
#[test]
fn write_slice_in_place_and_as_a_copy() {
    let (c, s, p) = (Expr::sym("c"), Expr::sym("s"), Expr::sym("p"));
    let mut g = Graph::new();
    let cache = g
        .input("cache", DType::F32, &[2.into(), c.clone(), 3.into()])
        .unwrap();
    let other = g
        .input("other", DType::F32, &[2.into(), c.clone(), 3.into()])
        .unwrap();
    let x = g
        .input("x", DType::F32, &[2.into(), s.clone(), 3.into()])
        .unwrap();
    let x2 = g.mul_scalar(x, 2.0).unwrap();
    let updated = g.write_slice(cache, x2, 1, p.clone()).unwrap(); // in place
    let copied = g.write_slice(other, x, 1, p.clone()).unwrap(); // `other` is read again below
    let again = g.add_scalar(other, 1.0).unwrap();
    g.output("updated", updated);
    g.output("copied", copied);
    g.output("again", again);
    let mut exe = build(&g, 2);
    for (cv, sv, pv) in [(5usize, 2usize, 0i64), (5, 2, 3), (7, 1, 6), (4, 4, 0)] {
        let ins = inputs(&[
            ("cache", Tensor::from_f32(&[2, cv, 3], &values(6 * cv, 1))),
            ("other", Tensor::from_f32(&[2, cv, 3], &values(6 * cv, 2))),
            ("x", Tensor::from_f32(&[2, sv, 3], &values(6 * sv, 3))),
        ]);
        let b: Bindings = [("p".to_string(), pv)].into();
        let got = exe.run_with(&ins, &b).unwrap();
        let want = kiln_ir::interpret(&g, &ins, &b).unwrap();
        for (name, w) in &want {
            assert_close(name, &got[name], w, 0.0, 0.0);
        }
    }
    // A write past the end is refused before anything runs, naming the op and the sizes.
    let ins = inputs(&[
        ("cache", Tensor::from_f32(&[2, 4, 3], &values(24, 1))),
        ("other", Tensor::from_f32(&[2, 4, 3], &values(24, 2))),
        ("x", Tensor::from_f32(&[2, 2, 3], &values(12, 3))),
    ]);
    let b: Bindings = [("p".to_string(), 3)].into();
    let e = exe.run_with(&ins, &b).unwrap_err().to_string();
    assert!(
        e.contains("write_slice") && e.contains("(p + s) = 5"),
        "{e}"
    );
    // Constant bounds are checked while building.
    let e = g.write_slice(cache, x, 1, -1).unwrap_err().to_string();
    assert!(e.contains("write_slice"), "{e}");
}

/// The executor gives an in-place output the storage of the input it updates; carried, the
/// cache is then never copied from one run to the next.
#[test]
fn a_cache_written_in_place_is_carried_without_copies() {
    let (c, s, p) = (Expr::sym("c"), Expr::sym("s"), Expr::sym("p"));
    let mut g = Graph::new();
    let cache = g
        .input("cache", DType::F32, &[c.clone(), 2.into()])
        .unwrap();
    let x = g.input("x", DType::F32, &[s.clone(), 2.into()]).unwrap();
    let updated = g.write_slice(cache, x, 0, p.clone()).unwrap();
    let seen = g.slice(updated, 0, 0, p.clone().add(s.clone())).unwrap();
    let total = g.sum(seen, 0).unwrap();
    g.output("cache_out", updated);
    g.output("total", total);
    let mut exe = build(&g, 1);
    exe.carry("cache_out", "cache", Tensor::zeros(DType::F32, &[8, 2]))
        .unwrap();
    let mut sum = [0.0f32; 2];
    for step in 0..8i64 {
        let row = [step as f32, 10.0 * step as f32];
        sum[0] += row[0];
        sum[1] += row[1];
        let ins = inputs(&[("x", Tensor::from_f32(&[1, 2], &row))]);
        let out = exe
            .run_with(&ins, &[("p".to_string(), step)].into())
            .unwrap();
        assert_eq!(out["total"].as_f32(), &sum, "step {step}");
        // Only the new row and the sum are written: the cache is not copied.
        assert_eq!(exe.last_run().bytes_written, (2 + 2) * 4, "step {step}");
    }
    let kept = exe.carried("cache").unwrap();
    assert_eq!(kept.as_f32()[14..], [7.0, 70.0]);
}

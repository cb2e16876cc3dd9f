//! Every primitive op, view and dtype conversion on the wgpu backend (lavapipe in CI) against
//! the interpreter: the WGSL dialect's arithmetic, casts and rounding, packed bf16/f16/bool
//! loads and stores, reductions through workgroup memory and both matmul paths.
//!
//! Tolerances: WGSL's `exp2`, `log2`, `sin` and `/` are not correctly rounded (lavapipe's are
//! LLVM's vectorised approximations, a few f32 ulps; the WGSL spec allows 3 + 2|x| ulps for exp2
//! and an absolute 2^-11 for sin on [-pi, pi]); the C backends call libm. So transcendental ops
//! compare at 1e-5 relative + 1e-5 absolute (sin's argument here is |x| < 1, where lavapipe stays
//! within a few ulps), where the CPU test uses 1e-6. Integer ops, casts and the f16/bf16
//! rounding are bit-exact and compared with zero tolerance.
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
    let Some(b) = backend() else { return };
    let mut exe = build(&b, &g, 2);
    for n in [1, 4, 9] {
        check(exe.as_mut(), &g, &run_x(n), 1e-5, 1e-5);
    }
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
    let Some(b) = backend() else { return };
    let mut exe = build(&b, &g, 1);
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
    let Some(b) = backend() else { return };
    let mut exe = build(&b, &g, 1);
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
    let Some(b) = backend() else { return };
    let mut exe = build(&b, &g, 2);
    for (a, b) in [(1, 1), (3, 4), (2, 33)] {
        let ins = inputs(&[("x", Tensor::from_f32(&[a, 5, b], &values(a * 5 * b, 9)))]);
        check(exe.as_mut(), &g, &ins, 1e-6, 1e-5);
    }
}

/// Every way a device may run matmuls with few rows, whatever the adapter would choose: the
/// GPU-style GEMV for one row (a GPU's default), for up to 4 rows, and the CPU-style column
/// GEMV for up to 64 rows (a CPU adapter's default). Rows above the threshold take the tiles.
const GEMV_PLANS: [kiln_wgpu::GemvPlan; 3] = [
    kiln_wgpu::GemvPlan {
        rows: 1,
        columns: false,
    },
    kiln_wgpu::GemvPlan {
        rows: 4,
        columns: false,
    },
    kiln_wgpu::GemvPlan {
        rows: 64,
        columns: true,
    },
];

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
    let Some(b) = backend() else { return };
    for plan in GEMV_PLANS {
        let b = backend().unwrap().with_gemv_plan(plan);
        matmul_layouts_on(&b, &g);
    }
    matmul_layouts_on(&b, &g); // the adapter's own choice
}

fn matmul_layouts_on(b: &kiln_wgpu::WgpuBackend, g: &Graph) {
    let n = 19;
    let mut exe = build(b, g, 2);
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
        check(exe.as_mut(), g, &ins, 1e-4, 1e-5);
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
    let Some(b) = backend() else { return };
    let mut exe = build(&b, &g, 2);
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
    let Some(b) = backend() else { return };
    let mut exe = build(&b, &g, 1);
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
    let mut exe2 = build(&b, &g2, 1);
    let v = [0.5, -1.25, 1000.0, 3.0e-5];
    let ins2 = inputs(&[
        ("in_f16", Tensor::from_f64(DType::F16, &[4], &v)),
        ("in_bf16", Tensor::from_f64(DType::BF16, &[4], &v)),
    ]);
    check(exe2.as_mut(), &g2, &ins2, 0.0, 0.0);
}

/// Packed outputs (bf16, f16, bool: two or four per 32-bit word) written by many invocations
/// and workgroups at once: neighbouring elements belong to different invocations (elementwise),
/// different workgroups (reductions) and different tiles (matmul), and each store must leave
/// its neighbours intact. Sizes are odd so words straddle rows.
#[test]
fn packed_outputs_from_every_kernel_kind() {
    let mut g = Graph::new();
    let n = Expr::sym("n");
    let x = g.input("x", DType::F32, &[n.clone(), 37.into()]).unwrap();
    let w = g.input("w", DType::BF16, &[21.into(), 37.into()]).unwrap();
    let xb = g.cast(x, DType::BF16);
    let xh = g.cast(x, DType::F16);
    let zero = g.mul_scalar(x, 0.0).unwrap();
    let pos = g.lt(zero, x).unwrap();
    let sum_b = g.sum(xb, 1).unwrap();
    let max_h = g.max(xh, 0).unwrap();
    let wt = g.transpose(w, 0, 1).unwrap();
    let mm = g.matmul(xb, wt).unwrap();
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
    let Some(b) = backend() else { return };
    let mut exe = build(&b, &g, 2);
    for nn in [1usize, 3, 17] {
        let ins = inputs(&[
            ("x", Tensor::from_f32(&[nn, 37], &values(nn * 37, 21))),
            (
                "w",
                Tensor::from_f32(&[21, 37], &values(21 * 37, 22)).to_dtype(DType::BF16),
            ),
        ]);
        // Sums accumulate in f32 here and in f64 in the interpreter before the final rounding
        // to bf16: at most one bf16 ulp (2^-8 relative) apart where a sum lands near a
        // rounding boundary. Casts and max are exact.
        check(exe.as_mut(), &g, &ins, 1e-6, 1.0 / 128.0);
    }
}

/// Symbolic sizes that need the 2-D grid split (more than 65535 workgroups in x) and a matmul
/// whose tiles do not divide its sizes.
#[test]
fn large_launches_split_their_grid() {
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, &[Expr::sym("r"), 64.into()])
        .unwrap();
    let y = g.mul(x, x).unwrap();
    let y = g.add_scalar(y, 1.0).unwrap();
    let s = g.sum(x, 1).unwrap();
    g.output("y", y);
    g.output("s", s);
    let Some(b) = backend() else { return };
    let mut exe = build(&b, &g, 2);
    // 2^24 + 64 elements: 65537 workgroups of 256, and 262145 reduced rows.
    let rows = (1usize << 18) + 1;
    let ins = inputs(&[("x", Tensor::from_f32(&[rows, 64], &values(rows * 64, 3)))]);
    check(exe.as_mut(), &g, &ins, 1e-6, 1e-6);
}

/// NaN, infinities and large values through max, `%`, reductions and float -> i32 casts, bit
/// for bit as the interpreter: NaN propagates through max (WGSL's `max` leaves it
/// unspecified), `%` is C's exact fmodf (WGSL's `%` is `a - b * trunc(a / b)`), casts wrap like
/// Rust's `v as i64 as i32` (WGSL's `i32()` saturates).
#[test]
fn non_finite_constants_follow_the_interpreter() {
    // WGSL rejects constant expressions that are infinite or NaN: they must come from bits at
    // run time, 1e39 (infinite in f32) included.
    let g = kiln_ir::testing::non_finite_constants_graph();
    let Some(b) = backend() else { return };
    let mut exe = build(&b, &g, 1);
    check(
        exe.as_mut(),
        &g,
        &kiln_ir::testing::non_finite_inputs(),
        0.0,
        1e-6,
    );
}

#[test]
fn special_values_follow_the_interpreter() {
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
    let x = g.input("x", DType::F32, &[n.into()]).unwrap();
    let y = g.input("y", DType::F32, &[n.into()]).unwrap();
    let rows = g.reshape(x, &[2.into(), (n / 2).into()]).unwrap();
    let outs = [
        ("max", g.maximum(x, y).unwrap()),
        ("rem", g.rem(x, y).unwrap()),
        ("max_rows", g.max(rows, 1).unwrap()),
        ("to_i32", g.cast(x, DType::I32)),
        ("to_bool", g.cast(x, DType::Bool)),
        ("lt", g.lt(x, y).unwrap()),
    ];
    for (name, o) in outs {
        g.output(name, o);
    }
    let Some(b) = backend() else { return };
    let mut exe = build(&b, &g, 1);
    let ins = inputs(&[
        ("x", Tensor::from_f32(&[n], &xs)),
        ("y", Tensor::from_f32(&[n], &ys)),
    ]);
    check(exe.as_mut(), &g, &ins, 0.0, 0.0);
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
    let Some(b) = backend() else { return };
    let mut exe = build(&b, &g, 2);
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
    let Some(bk) = backend() else { return };
    let mut exe = build(&bk, &g, 1);
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

/// An in-place write into a packed (bf16) buffer: each written element shares its 32-bit word
/// with an element that must keep its value (the row width is odd, positions odd and even).
#[test]
fn write_slice_into_a_packed_buffer_keeps_the_neighbours() {
    let (c, s, p) = (Expr::sym("c"), Expr::sym("s"), Expr::sym("p"));
    let mut g = Graph::new();
    let cache = g
        .input("cache", DType::BF16, &[c.clone(), 3.into()])
        .unwrap();
    let x = g.input("x", DType::BF16, &[s.clone(), 3.into()]).unwrap();
    let updated = g.write_slice(cache, x, 0, p.clone()).unwrap();
    g.output("updated", updated);
    let Some(b) = backend() else { return };
    let mut exe = build(&b, &g, 1);
    for (cv, sv, pv) in [(7usize, 1usize, 0i64), (7, 1, 3), (9, 2, 5), (6, 3, 2)] {
        let ins = inputs(&[
            (
                "cache",
                Tensor::from_f32(&[cv, 3], &values(3 * cv, 5)).to_dtype(DType::BF16),
            ),
            (
                "x",
                Tensor::from_f32(&[sv, 3], &values(3 * sv, 6)).to_dtype(DType::BF16),
            ),
        ]);
        let bind: Bindings = [("p".to_string(), pv)].into();
        let got = exe.run_with(&ins, &bind).unwrap();
        let want = kiln_ir::interpret(&g, &ins, &bind).unwrap();
        assert_close("updated", &got["updated"], &want["updated"], 0.0, 0.0);
    }
}

/// The GEMVs for bf16 weights `[N, K]` (the CPU-style one reads two elements per 32-bit word)
/// under every [`GEMV_PLANS`]: K much longer than a workgroup, N not a multiple of a workgroup's
/// columns, batched weights, and rows that take the GEMV or the tiles depending on the plan.
#[test]
fn bf16_weight_gemv_reads_whole_words() {
    let mut g = Graph::new();
    let s = Expr::sym("s");
    let x = g.input("x", DType::F32, &[s.clone(), 2050.into()]).unwrap();
    let w = g
        .input("w", DType::BF16, &[19.into(), 2050.into()])
        .unwrap();
    let wt = g.transpose(w, 0, 1).unwrap();
    let y = g.matmul(x, wt).unwrap();
    let xb = g
        .input("xb", DType::F32, &[2.into(), s.clone(), 64.into()])
        .unwrap();
    let wb = g
        .input("wb", DType::BF16, &[2.into(), 21.into(), 64.into()])
        .unwrap();
    let wbt = g.transpose(wb, 1, 2).unwrap();
    let yb = g.matmul(xb, wbt).unwrap();
    g.output("y", y);
    g.output("yb", yb);
    let Some(_) = backend() else { return };
    for plan in GEMV_PLANS {
        let b = backend().unwrap().with_gemv_plan(plan);
        let mut exe = build(&b, &g, 2);
        for sv in [1usize, 2, 5] {
            let ins = inputs(&[
                ("x", Tensor::from_f32(&[sv, 2050], &values(sv * 2050, 31))),
                (
                    "w",
                    Tensor::from_f32(&[19, 2050], &values(19 * 2050, 32)).to_dtype(DType::BF16),
                ),
                (
                    "xb",
                    Tensor::from_f32(&[2, sv, 64], &values(2 * sv * 64, 33)),
                ),
                (
                    "wb",
                    Tensor::from_f32(&[2, 21, 64], &values(2 * 21 * 64, 34)).to_dtype(DType::BF16),
                ),
            ]);
            // Sums of 2050 products below 1 in f32, in another order than the interpreter's f64:
            // within 1e-4.
            check(exe.as_mut(), &g, &ins, 1e-4, 1e-5);
        }
    }
}

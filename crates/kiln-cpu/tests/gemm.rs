//! The packed-weight GEMM and GEMV (`c/gemm.h`) against the interpreter, for each kernel ISA
//! this machine runs (AVX2 with 16-column panels and 6-row strips, AVX-512 with 32 and 12; the
//! AVX-512 half says when it is skipped): sizes that are not multiples of any block (M, N, K
//! around MR, the panels, the 64 x 132 work units and the 1024-deep k block), f32 and bf16
//! weights, weights bound once (packed when bound) and passed per run (packed at launch),
//! epilogues whose product columns start on and off a panel boundary, bitwise equality across
//! thread counts, and between the ISAs (every product is the same FMA chain).
mod common;
use common::*;
use kiln_compile::CompileOptions;
use kiln_compile::Target;
use kiln_ir::{DType, Expr, Graph, Tensor};

fn weights(dtype: DType, n: i64, half: i64, k: i64) -> Vec<(&'static str, Tensor)> {
    let (n, half, k) = (n as usize, half as usize, k as usize);
    // Weights about 1/sqrt(k): products of the size a model's are.
    let scale = |v: Vec<f32>| {
        v.into_iter()
            .map(|x| x / (k as f32).sqrt())
            .collect::<Vec<_>>()
    };
    vec![
        (
            "w",
            Tensor::from_f32(&[n, k], &scale(values(n * k, 7))).to_dtype(dtype),
        ),
        (
            "v",
            Tensor::from_f32(&[2 * half, k], &scale(values(2 * half * k, 8))).to_dtype(dtype),
        ),
    ]
}

fn activations(m: usize, n: i64, k: i64) -> Vec<(&'static str, Tensor)> {
    let (n, k) = (n as usize, k as usize);
    vec![
        ("x", Tensor::from_f32(&[m, k], &values(m * k, m as u64))),
        ("r", Tensor::from_f32(&[m, n], &values(m * n, 3))),
    ]
}

/// Rows around MR = 6 and 12, the GEMV limits 4 (several panels per pass) and 32 (rows 4 at a
/// time), and the 132-row block.
const ROWS: [usize; 14] = [1, 3, 4, 5, 7, 8, 9, 12, 13, 25, 32, 33, 133, 140];

fn check_sizes(dtype: DType, n: i64, half: i64, k: i64) {
    for isa in isas() {
        check_sizes_for(isa, dtype, n, half, k);
    }
}

fn check_sizes_for(isa: Isa, dtype: DType, n: i64, half: i64, k: i64) {
    let g = linear_graph(dtype, n, half, k);
    // Weights bound once: the device packs them.
    let mut bound = build_for(&g, 2, Some(isa));
    for (name, t) in weights(dtype, n, half, k) {
        bound.set_param(name, t).unwrap();
    }
    // The same weights passed with every run: packed at launch.
    let mut per_run = build_for(&g, 2, Some(isa));
    for m in ROWS {
        let act = activations(m, n, k);
        let all: Vec<(&str, Tensor)> = act
            .iter()
            .cloned()
            .chain(weights(dtype, n, half, k))
            .collect();
        let want = kiln_ir::interpret(&g, &inputs(&all), &Default::default()).unwrap();
        let got = bound.run(&inputs(&act)).unwrap();
        let again = per_run.run(&inputs(&all)).unwrap();
        for name in ["y", "h"] {
            let what = format!("{isa:?}: {dtype} n={n} half={half} k={k} m={m} {name}");
            assert_close(&what, &got[name], &want[name], 1e-5, 1e-4);
            assert_eq!(
                got[name], again[name],
                "{what}: packed when bound vs at launch"
            );
        }
    }
}

#[test]
fn f32_weights_at_awkward_sizes() {
    // half = 24: the up columns start mid-panel (scalar chains); k = 1029 > KC.
    check_sizes(DType::F32, 70, 24, 1029);
    check_sizes(DType::F32, 17, 16, 13);
}

#[test]
fn bf16_weights_at_awkward_sizes() {
    // half = 48: the up columns start on a 16-column panel, mid-way through a 32-column one.
    check_sizes(DType::BF16, 70, 48, 37);
    check_sizes(DType::BF16, 1, 8, 1);
    // Three 32-column panels and a partial fourth, k across the k block.
    check_sizes(DType::BF16, 100, 64, 1030);
    // half = 40: the up columns start mid-panel on both ISAs (scalar chains on bf16 panels).
    check_sizes(DType::BF16, 50, 40, 19);
}

/// Every product is one sequential FMA chain over k, whoever computes it: the same bits on 1
/// and 2 threads, a row computed alone (the decode GEMV) equals the same row inside a prefill
/// GEMM, and the AVX2 and AVX-512 kernels give the same bits.
#[test]
fn results_do_not_depend_on_threads_or_on_the_rows_beside_them() {
    let (n, half, k) = (200, 64, 1100);
    let g = linear_graph(DType::BF16, n, half, k);
    let m = 140;
    let act = inputs(&activations(m, n, k));
    let mut first: Option<(Isa, std::collections::HashMap<String, Tensor>)> = None;
    for isa in isas() {
        let mut exes: Vec<_> = [1, 2]
            .into_iter()
            .map(|t| {
                let mut e = backend(Some(isa))
                    .with_run_threads(t)
                    .load(
                        &g,
                        &CompileOptions {
                            threads: 1,
                            ..Default::default()
                        },
                    )
                    .unwrap()
                    .exe;
                for (name, w) in weights(DType::BF16, n, half, k) {
                    e.set_param(name, w).unwrap();
                }
                e
            })
            .collect();
        let one = exes[0].run(&act).unwrap();
        let two = exes[1].run(&act).unwrap();
        for name in ["y", "h"] {
            assert_eq!(one[name], two[name], "{isa:?} {name}: 1 vs 2 threads");
        }
        // Row 9 alone (GEMV) against row 9 of the 140-row product (GEMM).
        let row = |t: &Tensor, i: usize, w: usize| t.as_f32()[i * w..(i + 1) * w].to_vec();
        let x9 = Tensor::from_f32(&[1, k as usize], &row(&act["x"], 9, k as usize));
        let r9 = Tensor::from_f32(&[1, n as usize], &row(&act["r"], 9, n as usize));
        let alone = exes[1].run(&inputs(&[("x", x9), ("r", r9)])).unwrap();
        assert_eq!(
            alone["y"].as_f32(),
            row(&two["y"], 9, n as usize),
            "{isa:?}"
        );
        assert_eq!(
            alone["h"].as_f32(),
            row(&two["h"], 9, half as usize),
            "{isa:?}: the gated epilogue"
        );
        match &first {
            None => first = Some((isa, two)),
            Some((other, theirs)) => {
                for name in ["y", "h"] {
                    assert_eq!(theirs[name], two[name], "{name}: {other:?} vs {isa:?}");
                }
            }
        }
    }
}

/// Runs `g` with `params` bound once and with them passed per run, against the interpreter.
fn check_bound_and_per_run(
    what: &str,
    g: &Graph,
    params: &[(&'static str, Tensor)],
    acts: &[(&'static str, Tensor)],
) {
    for isa in isas() {
        let mut bound = build_for(g, 2, Some(isa));
        for (name, t) in params {
            bound.set_param(name, t.clone()).unwrap();
        }
        let mut per_run = build_for(g, 2, Some(isa));
        let all: Vec<(&str, Tensor)> = acts.iter().chain(params).cloned().collect();
        let want = kiln_ir::interpret(g, &inputs(&all), &Default::default()).unwrap();
        let got = bound.run(&inputs(acts)).unwrap();
        let again = per_run.run(&inputs(&all)).unwrap();
        for (name, w) in &want {
            assert_close(
                &format!("{isa:?} {what}: {name}"),
                &got[name],
                w,
                1e-5,
                1e-4,
            );
            assert_close(
                &format!("{isa:?} {what}: {name} per run"),
                &again[name],
                w,
                1e-5,
                1e-4,
            );
        }
    }
}

/// The packed GEMM reads A's rows contiguous along k: an A operand that is a transposed view
/// (k strided) must not take the packed path.
#[test]
fn a_transposed_activation_times_a_weight() {
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, &[8.into(), Expr::sym("s")])
        .unwrap();
    let w = g.input("w", DType::F32, &[20.into(), 8.into()]).unwrap();
    let xt = g.transpose(x, 0, 1).unwrap();
    let wt = g.transpose(w, 0, 1).unwrap();
    let y = g.matmul(xt, wt).unwrap();
    g.output("y", y);
    for s in [1usize, 6, 9] {
        check_bound_and_per_run(
            &format!("s={s}"),
            &g,
            &[("w", Tensor::from_f32(&[20, 8], &values(160, 5)))],
            &[("x", Tensor::from_f32(&[8, s], &values(8 * s, 6)))],
        );
    }
}

/// A weight reshaped before the product: its panels are as deep as the product's K (3), not
/// as the tensor's last dimension (48).
#[test]
fn a_reshaped_weight_is_packed_with_the_products_depth() {
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, &[Expr::sym("s"), 3.into()])
        .unwrap();
    let w = g.input("w", DType::F32, &[48.into()]).unwrap();
    let w2 = g.reshape(w, &[16.into(), 3.into()]).unwrap();
    let wt = g.transpose(w2, 0, 1).unwrap();
    let y = g.matmul(x, wt).unwrap();
    g.output("y", y);
    for s in [1usize, 7] {
        check_bound_and_per_run(
            &format!("s={s}"),
            &g,
            &[("w", Tensor::from_f32(&[48], &values(48, 5)))],
            &[("x", Tensor::from_f32(&[s, 3], &values(3 * s, 6)))],
        );
    }
}

/// A weight that is also a graph output is read back as it was bound.
#[test]
fn a_weight_that_is_also_an_output_reads_back() {
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, &[Expr::sym("s"), 8.into()])
        .unwrap();
    let w = g.input("w", DType::F32, &[20.into(), 8.into()]).unwrap();
    let wt = g.transpose(w, 0, 1).unwrap();
    let y = g.matmul(x, wt).unwrap();
    g.output("y", y);
    g.output("w_out", w);
    check_bound_and_per_run(
        "w_out",
        &g,
        &[("w", Tensor::from_f32(&[20, 8], &values(160, 5)))],
        &[("x", Tensor::from_f32(&[6, 8], &values(48, 6)))],
    );
}

/// Products of depth 0 are zeros on every path (the GEMM's row blocks too).
#[test]
fn empty_products_are_zero() {
    let mut g = Graph::new();
    let k = Expr::sym("k");
    let x = g
        .input("x", DType::F32, &[Expr::sym("s"), k.clone()])
        .unwrap();
    let w = g.input("w", DType::F32, &[20.into(), k]).unwrap();
    let wt = g.transpose(w, 0, 1).unwrap();
    let y = g.matmul(x, wt).unwrap();
    g.output("y", y);
    let mut exe = build(&g, 2);
    // A run with k > 0 first, so that the scratch holds stale products.
    for (s, k) in [(7usize, 5usize), (7, 0), (2, 0)] {
        let ins = inputs(&[
            ("x", Tensor::from_f32(&[s, k], &values(s * k, 1))),
            ("w", Tensor::from_f32(&[20, k], &values(20 * k, 2))),
        ]);
        let got = exe.run(&ins).unwrap();
        let want = kiln_ir::interpret(&g, &ins, &Default::default()).unwrap();
        assert_close(&format!("s={s} k={k}"), &got["y"], &want["y"], 1e-5, 1e-4);
    }
}

/// Each worker keeps the rows of A it packed for the calls of one launch, and only of that
/// launch: runs with new activations of the same shape (likely at the same address) and a
/// second product of the first's output must not see rows packed for an earlier launch.
#[test]
fn packed_rows_of_a_do_not_outlive_their_launch() {
    let (k, n) = (40i64, 96i64);
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, &[Expr::sym("m"), k.into()])
        .unwrap();
    let w = g.input("w", DType::F32, &[n.into(), k.into()]).unwrap();
    let v = g.input("v", DType::F32, &[k.into(), n.into()]).unwrap();
    let wt = g.transpose(w, 0, 1).unwrap();
    let vt = g.transpose(v, 0, 1).unwrap();
    let y = g.matmul(x, wt).unwrap();
    let z = g.matmul(y, vt).unwrap();
    g.output("z", z);
    let params = [
        (
            "w",
            Tensor::from_f32(&[n as usize, k as usize], &values((n * k) as usize, 1)),
        ),
        (
            "v",
            Tensor::from_f32(&[k as usize, n as usize], &values((n * k) as usize, 2)),
        ),
    ];
    for isa in isas() {
        let mut exe = build_for(&g, 2, Some(isa));
        for (name, t) in &params {
            exe.set_param(name, t.clone()).unwrap();
        }
        for seed in 0..4u64 {
            let x = Tensor::from_f32(&[140, k as usize], &values(140 * k as usize, 10 + seed));
            let mut all = params.to_vec();
            all.push(("x", x.clone()));
            let want = kiln_ir::interpret(&g, &inputs(&all), &Default::default()).unwrap();
            let got = exe.run(&inputs(&[("x", x)])).unwrap();
            assert_close(
                &format!("{isa:?} run {seed}"),
                &got["z"],
                &want["z"],
                1e-4,
                1e-4,
            );
        }
    }
}

/// A batched decode step: 5 to 33 rows at once (the GEMV passes up to 32 rows, the packed GEMM
/// from 33), f32 and bf16 weights, each ISA. Every row of the batch is bitwise the row
/// computed alone (M = 1), on the weights bound once and packed at launch.
#[test]
fn each_row_of_a_small_batch_equals_the_row_alone_bitwise() {
    // half = 64: the up columns start on a panel on both ISAs (the GEMV, not scalar chains).
    let (n, half, k) = (100, 64, 1030);
    for dtype in [DType::F32, DType::BF16] {
        let g = linear_graph(dtype, n, half, k);
        for isa in isas() {
            let mut exe = build_for(&g, 2, Some(isa));
            for (name, t) in weights(dtype, n, half, k) {
                exe.set_param(name, t).unwrap();
            }
            let row = |t: &Tensor, i: usize, w: usize| t.as_f32()[i * w..(i + 1) * w].to_vec();
            for m in [5, 6, 7, 8, 9, 12, 13, 16, 24, 31, 32, 33] {
                let act = activations(m, n, k);
                let all = exe.run(&inputs(&act)).unwrap();
                for i in 0..m {
                    let x = Tensor::from_f32(&[1, k as usize], &row(&act[0].1, i, k as usize));
                    let r = Tensor::from_f32(&[1, n as usize], &row(&act[1].1, i, n as usize));
                    let alone = exe.run(&inputs(&[("x", x), ("r", r)])).unwrap();
                    for (name, w) in [("y", n as usize), ("h", half as usize)] {
                        assert_eq!(
                            alone[name].as_f32(),
                            row(&all[name], i, w),
                            "{isa:?} {dtype}: row {i} of {m}, {name}"
                        );
                    }
                }
            }
        }
    }
}

//! A bf16 weight larger than one storage binding (the Qwen embedding and LM head are 311 MB;
//! WebGPU guarantees 128 MiB per binding, lavapipe allows no more) is bound as slices of one
//! buffer: a gather and both matmul paths read rows on both sides of every slice boundary.

mod common;
use common::*;
use kiln_ir::{DType, Expr, Graph, Tensor};

#[test]
fn a_weight_above_one_binding_is_read_in_slices() {
    let Some(b) = backend() else { return };
    // [70000, 1024] bf16 = 143 MB: two 128 MiB slices; row 65536 starts the second.
    let (rows, dim) = (70_000usize, 1024usize);
    let mut g = Graph::new();
    let w = g
        .input("w", DType::BF16, &[rows.into(), dim.into()])
        .unwrap();
    let ids = g.input("ids", DType::I32, &[Expr::sym("t")]).unwrap();
    let x = g
        .input("x", DType::F32, &[Expr::sym("s"), dim.into()])
        .unwrap();
    let emb = g.gather(w, ids).unwrap();
    let wt = g.transpose(w, 0, 1).unwrap();
    let logits = g.matmul(x, wt).unwrap();
    g.output("emb", emb);
    g.output("logits", logits);
    let mut exe = build(&b, &g, 2);

    let wv = Tensor::from_f32(&[rows, dim], &values(rows * dim, 7)).to_dtype(DType::BF16);
    let wf = wv.to_f64_vec();
    exe.set_param("w", wv).unwrap();
    let pick = [0i32, 65535, 65536, 69999, 12345];
    for s in [1usize, 3] {
        let xv = values(s * dim, 8 + s as u64);
        let ins = inputs(&[
            ("ids", Tensor::from_i32(&[pick.len()], &pick)),
            ("x", Tensor::from_f32(&[s, dim], &xv)),
        ]);
        let out = exe.run(&ins).unwrap();
        let emb = out["emb"].to_f64_vec(); // bf16, like the table
        for (i, &r) in pick.iter().enumerate() {
            for c in 0..dim {
                assert_eq!(
                    emb[i * dim + c],
                    wf[r as usize * dim + c],
                    "row {r} col {c}"
                );
            }
        }
        // Every output column (weight row) of every input row, against an f64 dot product:
        // 1024 products of values below 1 summed in f32 stay within 1e-4.
        let got = out["logits"].as_f32();
        for m in 0..s {
            for n in 0..rows {
                let want: f64 = (0..dim)
                    .map(|k| xv[m * dim + k] as f64 * wf[n * dim + k])
                    .sum();
                let d = (got[m * rows + n] as f64 - want).abs();
                assert!(
                    d <= 1e-4,
                    "s = {s}: logits[{m}, {n}] = {}, want {want}",
                    got[m * rows + n]
                );
            }
        }
    }
}

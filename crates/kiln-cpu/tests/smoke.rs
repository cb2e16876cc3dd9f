mod common;
use common::*;
use kiln_ir::{DType, Expr, Graph, Tensor};

#[test]
fn mlp_block_matches_interpreter() {
    let mut g = Graph::new();
    let s = Expr::sym("s");
    let x = g.input("x", DType::F32, &[s.clone(), 64.into()]).unwrap();
    let w = g.input("w", DType::F32, &[96.into(), 64.into()]).unwrap();
    let nw = g.input("nw", DType::F32, &[64.into()]).unwrap();
    let h = g.rms_norm(x, nw, 1e-6).unwrap();
    let wt = g.transpose(w, 0, 1).unwrap();
    let y = g.matmul(h, wt).unwrap();
    let y = g.silu(y).unwrap();
    let sm = g.softmax(y, 1).unwrap();
    g.output("y", sm);
    let mut exe = build(&g, 2);
    for seq in [1usize, 5, 37] {
        let ins = inputs(&[
            ("x", Tensor::from_f32(&[seq, 64], &values(seq * 64, 1))),
            ("w", Tensor::from_f32(&[96, 64], &values(96 * 64, 2))),
            ("nw", Tensor::from_f32(&[64], &values(64, 3))),
        ]);
        check(exe.as_mut(), &g, &ins, 1e-5, 1e-4);
    }
}

//! Random graphs of elementwise, reduction, matmul and view ops with random symbolic-dimension
//! bindings: the CPU backend must agree with the reference interpreter, for several bindings of
//! one compiled graph (no recompiling).
mod common;
use common::*;
use kiln_ir::{DType, Expr, Graph, NodeId, Tensor};
use proptest::prelude::*;

/// Applies one op code to the stack of nodes; ops whose shapes do not fit are skipped.
fn apply(g: &mut Graph, stack: &mut Vec<NodeId>, code: u8, arg: u8) {
    let top = *stack.last().expect("non-empty");
    let other = stack[arg as usize % stack.len()];
    let rank = g.shape(top).len();
    let r: Result<NodeId, kiln_ir::IrError> = (|| match code % 12 {
        0 => {
            let h = g.mul_scalar(top, 0.5)?;
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
            let red = if arg.is_multiple_of(2) {
                g.sum(top, axis)?
            } else {
                g.max(top, axis)?
            };
            g.add(top, red) // broadcast back
        }
        7 => {
            let t = g.transpose(other, 0, 1)?;
            let m = g.matmul(top, t)?; // [a, b] x [b, a] -> [a, a]
            g.matmul(m, top) // -> [a, b]
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
            let e = g.exp2(flat)?;
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn cpu_backend_matches_interpreter(
        ops in proptest::collection::vec((any::<u8>(), any::<u8>()), 1..8),
        binds in proptest::collection::vec((1usize..6, 1usize..9), 3),
        seed in any::<u64>(),
    ) {
        let mut g = Graph::new();
        let (a, b) = (Expr::sym("a"), Expr::sym("b"));
        let x = g.input("x", DType::F32, &[a.clone(), b.clone()]).unwrap();
        let y = g.input("y", DType::F32, &[a, b]).unwrap();
        let mut stack = vec![x, y];
        for (code, arg) in &ops {
            apply(&mut g, &mut stack, *code, *arg);
        }
        let last = *stack.last().unwrap();
        g.output("out", last);
        let mut exe = build(&g, 2);
        for (i, (na, nb)) in binds.iter().enumerate() {
            let ins = inputs(&[
                ("x", Tensor::from_f32(&[*na, *nb], &values(na * nb, seed ^ i as u64))),
                ("y", Tensor::from_f32(&[*na, *nb], &values(na * nb, seed.wrapping_add(77 + i as u64)))),
            ]);
            // f32 kernels vs the f64 oracle: chains of up to 7 ops (two of them sums of up to
            // 8 x 8 products) keep the error within a few hundred f32 ulps.
            check(&mut exe, &g, &ins, 1e-5, 2e-5);
        }
    }
}

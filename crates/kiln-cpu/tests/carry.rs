//! Outputs carried into the next run inside the executor (how a KV cache stays put).
mod common;

use common::*;
use kiln_ir::{DType, Expr, Graph, Tensor};

/// acc_out = concat(acc, x): a cache that grows by len(x) per run; `seen` returns what was read.
fn growing() -> Graph {
    let mut g = Graph::new();
    let acc = g.input("acc", DType::F32, &[Expr::sym("p")]).unwrap();
    let x = g.input("x", DType::F32, &[Expr::sym("s")]).unwrap();
    let grown = g.concat(&[acc, x], 0).unwrap();
    let seen = g.mul_scalar(acc, 1.0).unwrap();
    g.output("acc_out", grown);
    g.output("seen", seen);
    g
}

#[test]
fn a_carried_output_is_the_next_runs_input() {
    let mut exe = build(&growing(), 2);
    let empty = Tensor::from_f32(&[0], &[]);
    exe.carry("acc_out", "acc", empty.clone()).unwrap();
    for step in 0..40 {
        let x = Tensor::from_f32(&[1], &[step as f32]);
        let out = exe.run(&inputs(&[("x", x)])).unwrap();
        assert!(
            !out.contains_key("acc_out"),
            "a carried output is not returned"
        );
        let want: Vec<f32> = (0..step).map(|i| i as f32).collect();
        assert_eq!(out["seen"].as_f32(), &want[..], "step {step}");
    }
    // Carrying again starts over.
    exe.carry("acc_out", "acc", Tensor::from_f32(&[2], &[7.0, 8.0]))
        .unwrap();
    let out = exe
        .run(&inputs(&[("x", Tensor::from_f32(&[1], &[0.0]))]))
        .unwrap();
    assert_eq!(out["seen"].as_f32(), &[7.0, 8.0]);
}

#[test]
fn carry_errors_name_the_culprit() {
    let mut exe = build(&growing(), 1);
    let empty = Tensor::from_f32(&[0], &[]);
    let err =
        |r: Result<(), kiln_runtime::RunError>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let e = err(exe.carry("nope", "acc", empty.clone()));
    assert!(e.contains("'nope'") && e.contains("not an output"), "{e}");
    let e = err(exe.carry("acc_out", "nope", empty.clone()));
    assert!(e.contains("'nope'") && e.contains("not an input"), "{e}");
    let e = err(exe.carry("acc_out", "acc", Tensor::from_i32(&[0], &[])));
    assert!(e.contains("'acc'") && e.contains("f32"), "{e}");

    exe.carry("acc_out", "acc", empty.clone()).unwrap();
    let both = inputs(&[("x", empty.clone()), ("acc", empty)]);
    let Err(e) = exe.run(&both) else {
        panic!("passing a carried input must fail")
    };
    assert!(e.to_string().contains("carried over"), "{e}");
}

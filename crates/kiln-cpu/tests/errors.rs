//! Errors name what is wrong: the op and shapes, the symbol, the input, the kernel.
mod common;
use common::*;
use kiln_cpu::CpuBackend;
use kiln_ir::{Bindings, DType, Expr, Graph, IrError, Tensor};
use kiln_runtime::RunError;

#[test]
fn shape_mismatch_names_op_and_shapes() {
    let mut g = Graph::new();
    let a = g.input("a", DType::F32, &[3.into(), 4.into()]).unwrap();
    let b = g.input("b", DType::F32, &[3.into(), 5.into()]).unwrap();
    let e = g.add(a, b).unwrap_err().to_string();
    assert!(
        e.contains("add") && e.contains("[3, 4]") && e.contains("[3, 5]"),
        "{e}"
    );
    let e = g.matmul(a, a).unwrap_err().to_string();
    assert!(
        e.contains("matmul") && e.contains("inner dimensions 4 and 3"),
        "{e}"
    );
    let e = g.reshape(a, &[5.into()]).unwrap_err().to_string();
    assert!(e.contains("reshape") && e.contains("12 elements"), "{e}");
    let e = g.slice(a, 1, 2, 9).unwrap_err().to_string();
    assert!(e.contains("slice") && e.contains("2..9"), "{e}");
    let i = g.input("i", DType::I32, &[3.into()]).unwrap();
    let e = g.add(a, i).unwrap_err().to_string();
    assert!(e.contains("f32 and i32"), "{e}");
}

#[test]
fn unbound_symbol_is_named() {
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, &[Expr::sym("s")]).unwrap();
    let t = g.iota(DType::F32, &[Expr::sym("q")], 0).unwrap();
    let s = g.sum(t, 0).unwrap();
    let y = g.add(x, s).unwrap();
    g.output("y", y);
    let mut exe = build(&g, 1);
    let ins = inputs(&[("x", Tensor::from_f32(&[2], &[1.0, 2.0]))]);
    let e = exe.run(&ins).unwrap_err();
    assert!(
        matches!(&e, RunError::Graph(IrError::UnboundSymbol { symbol, .. }) if symbol == "q"),
        "{e}"
    );
    let e = kiln_ir::interpret(&g, &ins, &Bindings::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("'q'"), "{e}");
}

#[test]
fn wrong_inputs_at_run_time() {
    let mut g = Graph::new();
    let s = Expr::sym("s");
    let x = g.input("x", DType::F32, &[s.clone(), 2.into()]).unwrap();
    let y = g.input("y", DType::F32, std::slice::from_ref(&s)).unwrap();
    let y2 = g.unsqueeze(y, 1).unwrap();
    let z = g.add(x, y2).unwrap();
    g.output("z", z);
    let mut exe = build(&g, 1);
    let good_x = Tensor::from_f32(&[3, 2], &[0.0; 6]);
    let cases = [
        (inputs(&[("x", good_x.clone())]), "input 'y': missing"),
        (
            inputs(&[
                ("x", good_x.clone()),
                ("y", Tensor::from_f32(&[3], &[0.0; 3])),
                ("w", Tensor::from_f32(&[1], &[0.0])),
            ]),
            "input 'w': is not an input",
        ),
        (
            inputs(&[
                ("x", good_x.clone()),
                ("y", Tensor::from_i32(&[3], &[0; 3])),
            ]),
            "input 'y': expected dtype f32, got i32",
        ),
        (
            inputs(&[
                ("x", good_x.clone()),
                ("y", Tensor::from_f32(&[3, 1], &[0.0; 3])),
            ]),
            "input 'y': expected shape [s]",
        ),
        (
            inputs(&[
                ("x", good_x.clone()),
                ("y", Tensor::from_f32(&[4], &[0.0; 4])),
            ]),
            "s = 4 conflicts with s = 3",
        ),
        (
            inputs(&[
                ("x", Tensor::from_f32(&[3, 5], &[0.0; 15])),
                ("y", Tensor::from_f32(&[3], &[0.0; 3])),
            ]),
            "dimension 1 should be 2",
        ),
    ];
    for (ins, want) in cases {
        let e = exe.run(&ins).unwrap_err().to_string();
        assert!(e.contains(want), "expected {want:?} in {e:?}");
    }
}

#[test]
fn kernel_that_fails_to_compile_is_named_with_the_compiler_message() {
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, &[4.into(), 4.into()]).unwrap();
    let e = g.exp2(x).unwrap();
    let s = g.sum(e, 1).unwrap();
    g.output("s", s);
    let (msg, fail) = kiln_compile::testing::compile_with_a_broken_kernel(
        &g,
        CpuBackend::default(),
        &["reduce_sum"],
    );
    let diagnostics = fail.error.to_string();
    assert!(diagnostics.contains("broken_on_purpose"), "{diagnostics}");
    assert!(
        msg.contains("1 kernel(s) failed to compile") && msg.contains(&fail.kernel),
        "{msg}"
    );
}

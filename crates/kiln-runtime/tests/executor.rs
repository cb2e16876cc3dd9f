//! The executor on its own: programs written out by hand, run on a device that evaluates
//! kernels with the interpreter's semantics (tests/common). Binding and its errors, slots
//! sized per run and shared, weights, values carried from run to run, in-place updates.

mod common;

use common::*;
use kiln_ir::{BinaryOp, Bindings, DType, Expr, Tensor};
use kiln_program::{KernelKind, MemoryPlan, Program, RunError, ScalarExpr, Step};
use kiln_runtime::RunStats;
use std::collections::HashMap;

fn s() -> Expr {
    Expr::sym("s")
}

/// `y = (x * w + 1)^2` in three steps over `x: [s, 4]` and a weight `w: [4]`; the third
/// step's output takes the slot of the first's, which no step reads any more.
fn chain() -> (Program, MemoryPlan) {
    let rows = || vec![s(), Expr::Const(4)];
    let scaled = bin(BinaryOp::Mul, load(0, at2(4)), load(1, Expr::Var(1)));
    let plus_one = bin(BinaryOp::Add, load(0, at2(4)), constant(1.0));
    let squared = bin(BinaryOp::Mul, load(0, at2(4)), load(0, at2(4)));
    let program = Program {
        graph: graph(&[("x", rows()), ("w", vec![Expr::Const(4)])]),
        buffers: vec![
            buffer(rows(), Some("x")),
            buffer(vec![Expr::Const(4)], Some("w")),
            buffer(rows(), None),
            buffer(rows(), None),
            buffer(rows(), None),
        ],
        steps: vec![
            step(elementwise(rows(), 2, scaled), 2, vec![0, 1]),
            step(elementwise(rows(), 1, plus_one), 3, vec![2]),
            step(elementwise(rows(), 1, squared), 4, vec![3]),
        ],
        outputs: vec![("y".into(), 4)],
    };
    let plan = MemoryPlan {
        slot_of: vec![None, None, Some(0), Some(1), Some(0)],
        slots: vec![vec![2, 4], vec![3]],
        input_of: vec![None; 5],
    };
    (program, plan)
}

fn x(rows: usize) -> Tensor {
    let values: Vec<f32> = (0..rows * 4).map(|i| i as f32 * 0.5 - 3.0).collect();
    Tensor::from_f32(&[rows, 4], &values)
}

fn inputs(pairs: &[(&str, Tensor)]) -> HashMap<String, Tensor> {
    pairs
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect()
}

#[test]
fn runs_size_their_slots_from_the_bound_symbols() {
    let (program, plan) = chain();
    let mut exe = executor(program, plan);
    let w = [1.0f32, -2.0, 0.5, 3.0];
    exe.set_param("w", Tensor::from_f32(&[4], &w)).unwrap();
    // A shape, a larger one (the slots grow), a smaller one, and no rows at all.
    for rows in [2, 7, 3, 0] {
        let x = x(rows);
        let out = exe.run(&inputs(&[("x", x.clone())])).unwrap();
        let y = &out["y"];
        assert_eq!(y.shape(), &[rows, 4]);
        let expected: Vec<f32> = x
            .as_f32()
            .iter()
            .enumerate()
            .map(|(i, &v)| (v * w[i % 4] + 1.0).powi(2))
            .collect();
        assert_eq!(y.as_f32(), expected.as_slice(), "{rows} rows");
        assert_eq!(
            exe.last_run(),
            RunStats {
                launches: 3,
                bytes_written: 3 * rows as u64 * 4 * 4,
            }
        );
    }
}

/// An output handed back is where the next run's value of it is written (its memory is
/// reused), with the new values; one of another shape or name is not used.
#[test]
fn a_recycled_output_takes_the_next_value() {
    let (program, plan) = chain();
    let mut exe = executor(program, plan);
    let w = [1.0f32, -2.0, 0.5, 3.0];
    exe.set_param("w", Tensor::from_f32(&[4], &w)).unwrap();
    let expected = |x: &Tensor| -> Vec<f32> {
        let xs = x.as_f32().iter().enumerate();
        xs.map(|(i, &v)| (v * w[i % 4] + 1.0).powi(2)).collect()
    };
    let first = exe
        .run(&inputs(&[("x", x(3))]))
        .unwrap()
        .remove("y")
        .unwrap();
    let memory = first.as_f32().as_ptr();
    exe.recycle("y", first);
    let x2 = Tensor::from_f32(&[3, 4], &[0.25; 12]);
    let second = exe
        .run(&inputs(&[("x", x2.clone())]))
        .unwrap()
        .remove("y")
        .unwrap();
    assert_eq!(
        second.as_f32().as_ptr(),
        memory,
        "the handed-back tensor's memory"
    );
    assert_eq!(second.as_f32(), expected(&x2).as_slice());
    // Another shape: a new tensor, the right values.
    exe.recycle("y", second);
    let third = exe
        .run(&inputs(&[("x", x(5))]))
        .unwrap()
        .remove("y")
        .unwrap();
    assert_eq!(third.shape(), &[5, 4]);
    assert_eq!(third.as_f32(), expected(&x(5)).as_slice());
    // A name that is no output is ignored.
    exe.recycle("x", third);
    let fourth = exe
        .run(&inputs(&[("x", x(2))]))
        .unwrap()
        .remove("y")
        .unwrap();
    assert_eq!(fourth.as_f32(), expected(&x(2)).as_slice());
}

#[test]
fn binding_errors_name_the_input_and_what_is_wrong() {
    let (program, plan) = chain();
    let mut exe = executor(program, plan);
    let err = |e: RunError| e.to_string();

    let e = err(exe
        .set_param("v", Tensor::zeros(DType::F32, &[4]))
        .unwrap_err());
    assert!(
        e.contains("input 'v'") && e.contains("is not an input"),
        "{e}"
    );
    let e = err(exe
        .set_param("w", Tensor::zeros(DType::F32, &[5]))
        .unwrap_err());
    assert!(
        e.contains("input 'w'") && e.contains("expected f32 [4]"),
        "{e}"
    );
    let e = err(exe
        .set_param("w", Tensor::zeros(DType::I32, &[4]))
        .unwrap_err());
    assert!(e.contains("expected f32"), "{e}");

    exe.set_param("w", Tensor::zeros(DType::F32, &[4])).unwrap();
    let e = err(exe.run(&HashMap::new()).unwrap_err());
    assert!(e.contains("input 'x'") && e.contains("missing"), "{e}");
    let e = err(exe
        .run(&inputs(&[("x", Tensor::zeros(DType::F32, &[2, 5]))]))
        .unwrap_err());
    assert!(e.contains("input 'x'"), "{e}");
    let e = err(exe.run(&inputs(&[("x", x(2)), ("z", x(2))])).unwrap_err());
    assert!(e.contains("input 'z'") && e.contains("not an input"), "{e}");
}

/// `cache_out = concat(cache, x)` along rows: `cache: [t, 4]`, `x: [1, 4]`, out `[t + 1, 4]`.
fn append() -> (Program, MemoryPlan) {
    let t = Expr::sym("t");
    let grown = vec![t.clone().add(1), Expr::Const(4)];
    let body = ScalarExpr::Select {
        lhs: Expr::Var(0),
        rhs: t.clone(),
        then: Box::new(load(0, at2(4))),
        otherwise: Box::new(load(
            1,
            Expr::Var(0).sub(t.clone()).mul(4).add(Expr::Var(1)),
        )),
        dtype: DType::F32,
    };
    let program = Program {
        graph: graph(&[
            ("cache", vec![t.clone(), Expr::Const(4)]),
            ("x", vec![Expr::Const(1), Expr::Const(4)]),
        ]),
        buffers: vec![
            buffer(vec![t, Expr::Const(4)], Some("cache")),
            buffer(vec![Expr::Const(1), Expr::Const(4)], Some("x")),
            buffer(grown.clone(), None),
        ],
        steps: vec![step(elementwise(grown, 2, body), 2, vec![0, 1])],
        outputs: vec![("cache_out".into(), 2)],
    };
    let plan = MemoryPlan {
        slot_of: vec![None, None, Some(0)],
        slots: vec![vec![2]],
        input_of: vec![None; 3],
    };
    (program, plan)
}

fn row(k: usize) -> Tensor {
    Tensor::from_f32(&[1, 4], &[k as f32, 10.0 + k as f32, -(k as f32), 0.25])
}

#[test]
fn a_carried_value_stays_on_the_device_and_grows_run_by_run() {
    let (program, plan) = append();
    let mut exe = executor(program, plan);
    exe.carry("cache_out", "cache", Tensor::zeros(DType::F32, &[0, 4]))
        .unwrap();
    for k in 0..6 {
        let out = exe.run(&inputs(&[("x", row(k))])).unwrap();
        assert!(out.is_empty(), "a carried output is not returned");
    }
    let cache = exe.carried("cache").unwrap();
    assert_eq!(cache.shape(), &[6, 4]);
    let expected: Vec<f32> = (0..6).flat_map(|k| row(k).as_f32().to_vec()).collect();
    assert_eq!(cache.as_f32(), expected.as_slice());

    // Passing the carried input explicitly is an error naming it.
    let e = exe
        .run(&inputs(&[
            ("x", row(0)),
            ("cache", Tensor::zeros(DType::F32, &[1, 4])),
        ]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("input 'cache'") && e.contains("carried"), "{e}");

    // Carrying again starts over from the new initial value.
    exe.carry("cache_out", "cache", row(9)).unwrap();
    exe.run(&inputs(&[("x", row(1))])).unwrap();
    let cache = exe.carried("cache").unwrap();
    let expected: Vec<f32> = [9, 1]
        .iter()
        .flat_map(|&k| row(k).as_f32().to_vec())
        .collect();
    assert_eq!(cache.as_f32(), expected.as_slice());
}

#[test]
fn carrying_what_cannot_be_carried_is_an_error() {
    let (program, plan) = append();
    let mut exe = executor(program, plan);
    let e = exe
        .carry("nothing", "cache", Tensor::zeros(DType::F32, &[0, 4]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'nothing'") && e.contains("not an output"),
        "{e}"
    );
    let e = exe
        .carry("cache_out", "cache", Tensor::zeros(DType::I32, &[0, 4]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("input 'cache'") && e.contains("expected f32"),
        "{e}"
    );
    let e = exe.carried("x").unwrap_err().to_string();
    assert!(e.contains("not carried"), "{e}");
}

/// `cache_out` = `cache` with row `p` replaced by `x`, written in place into the input.
fn write_row() -> (Program, MemoryPlan) {
    let shape = vec![Expr::Const(8), Expr::Const(4)];
    let kernel = kiln_program::Kernel {
        kind: KernelKind::Write {
            shape: vec![Expr::Const(1), Expr::Const(4)],
            axis: 0,
            start: Expr::sym("p"),
            body: load(0, Expr::Var(1)),
        },
        out_dtype: DType::F32,
        out_shape: shape.clone(),
        inputs: vec![DType::F32],
    };
    let program = Program {
        graph: graph(&[
            ("cache", shape.clone()),
            ("x", vec![Expr::Const(1), Expr::Const(4)]),
        ]),
        buffers: vec![
            buffer(shape.clone(), Some("cache")),
            buffer(vec![Expr::Const(1), Expr::Const(4)], Some("x")),
            buffer(shape, None),
        ],
        steps: vec![Step {
            writes_into: Some(0),
            ..step(kernel, 2, vec![1])
        }],
        outputs: vec![("cache_out".into(), 2)],
    };
    // In place into a graph input: the output is the input's storage, no slot.
    let plan = MemoryPlan {
        slot_of: vec![None; 3],
        slots: Vec::new(),
        input_of: vec![None, None, Some(0)],
    };
    (program, plan)
}

#[test]
fn an_in_place_update_writes_into_its_input() {
    let (program, plan) = write_row();
    let mut exe = executor(program, plan);
    let cache: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let cache = Tensor::from_f32(&[8, 4], &cache);
    let p: Bindings = [("p".to_string(), 5)].into();
    let out = exe
        .run_with(&inputs(&[("cache", cache.clone()), ("x", row(3))]), &p)
        .unwrap();
    let mut expected = cache.as_f32().to_vec();
    expected[20..24].copy_from_slice(row(3).as_f32());
    assert_eq!(out["cache_out"].as_f32(), expected.as_slice());
    assert_eq!(
        exe.last_run().bytes_written,
        4 * 4,
        "only the row is written"
    );

    // Without `p` bound, the run says which symbol is missing.
    let e = exe
        .run(&inputs(&[("cache", cache.clone()), ("x", row(3))]))
        .unwrap_err()
        .to_string();
    assert!(e.contains('p'), "{e}");

    // A weight stays the same across runs: the graph may not update it in place.
    exe.set_param("cache", cache).unwrap();
    let e = exe.run_with(&inputs(&[("x", row(3))]), &p).unwrap_err();
    assert!(matches!(e, RunError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("in place"), "{e}");
}

#[test]
fn a_kernel_the_device_cannot_run_is_named() {
    let (mut program, plan) = chain();
    program.steps[1].kernel.kind = KernelKind::Reduce {
        op: kiln_ir::ReduceOp::Sum,
        axis: 1,
        len: Expr::Const(4),
        body: ScalarExpr::Acc {
            slot: 0,
            dtype: DType::F32,
        },
    };
    let mut exe = executor(program, plan);
    exe.set_param("w", Tensor::zeros(DType::F32, &[4])).unwrap();
    let e = exe.run(&inputs(&[("x", x(2))])).unwrap_err();
    assert!(matches!(e, RunError::Kernel { .. }), "{e}");
    assert!(e.to_string().contains("reduce_sum"), "{e}");
}

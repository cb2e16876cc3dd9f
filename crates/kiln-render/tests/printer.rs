//! The printer and the shared kernel parts, on their own.
//!
//! Index arithmetic is checked for meaning, not spelling: a dialect that prints
//! s-expressions (`(add a b)`) lets the test evaluate what the printer wrote and compare it with
//! the IR's own evaluation, for every operator, for the unflattening of a flat index into loop
//! variables and for a gather's clamped rows. The C dialect's text is then checked where
//! its spelling is the contract (names of parameters, loads and stores of packed dtypes).

use kiln_ir::{BinaryOp, Bindings, DType, Expr, ReduceOp, UnaryOp};
use kiln_program::{Kernel, KernelKind, Let, ScalarExpr};
use kiln_render::cstyle::CStyle;
use kiln_render::parts::{element, written_element, Params, Reduction};
use kiln_render::{Dialect, IndexOp, Printer};
use std::collections::HashMap;

/// Prints everything as s-expressions: `(op arg ...)`.
struct Sexp;

fn sexp(op: &str, args: &[&str]) -> String {
    format!("({op} {})", args.join(" "))
}

impl Dialect for Sexp {
    fn storage_type(&self, _: DType) -> &'static str {
        "value"
    }
    fn compute_type(&self, _: DType) -> &'static str {
        "value"
    }
    fn index_type(&self) -> &'static str {
        "index"
    }
    fn index_literal(&self, v: i64) -> String {
        v.to_string()
    }
    fn index_op(&self, op: IndexOp, a: &str, b: &str) -> String {
        let name = match op {
            IndexOp::Add => "add",
            IndexOp::Sub => "sub",
            IndexOp::Mul => "mul",
            IndexOp::Div => "div",
            IndexOp::Rem => "rem",
            IndexOp::Min => "min",
            IndexOp::Max => "max",
        };
        sexp(name, &[a, b])
    }
    fn index_clamp(&self, v: &str, lo: &str, hi: &str) -> String {
        sexp("clamp", &[v, lo, hi])
    }
    fn value_to_index(&self, value: &str) -> String {
        sexp("to_index", &[value])
    }
    fn index_to_value(&self, index: &str, _: DType) -> String {
        sexp("to_value", &[index])
    }
    fn declare_index(&self, name: &str, value: &str) -> String {
        format!("{name} = {value}")
    }
    fn literal(&self, bits: u64, _: DType) -> String {
        f64::from_bits(bits).to_string()
    }
    fn load(&self, _: DType, buf: &str, index: &str) -> String {
        sexp("load", &[buf, index])
    }
    fn store(&self, _: DType, buf: &str, index: &str, value: &str) -> String {
        format!("{buf}[{index}] = {value}")
    }
    fn select(&self, cond: &str, a: &str, b: &str) -> String {
        sexp("select", &[cond, a, b])
    }
    fn unary(&self, op: UnaryOp, _: DType, x: &str) -> String {
        sexp(&format!("{op:?}").to_lowercase(), &[x])
    }
    fn binary(&self, op: BinaryOp, _: DType, a: &str, b: &str) -> String {
        sexp(&format!("{op:?}").to_lowercase(), &[a, b])
    }
    fn cast(&self, _: DType, _: DType, x: &str) -> String {
        sexp("cast", &[x])
    }
    fn round(&self, _: DType, x: &str) -> String {
        x.to_string()
    }
    fn reduce_combine(&self, op: ReduceOp, _: DType, acc: &str, x: &str) -> String {
        sexp(&format!("{op:?}").to_lowercase(), &[acc, x])
    }
}

/// Evaluates the index arithmetic [`Sexp`] prints, with `names` bound (symbols, variables,
/// and `to_index` of a load reading `loads`).
fn eval(text: &str, names: &HashMap<String, i64>, loads: &[i64]) -> i64 {
    fn parse<'t>(tokens: &mut std::iter::Peekable<impl Iterator<Item = &'t str>>) -> Tree<'t> {
        match tokens.next().expect("a token") {
            "(" => {
                let op = tokens.next().expect("an operator");
                let mut args = Vec::new();
                while tokens.peek() != Some(&")") {
                    args.push(parse(tokens));
                }
                tokens.next();
                Tree::Op(op, args)
            }
            atom => Tree::Atom(atom),
        }
    }
    enum Tree<'t> {
        Atom(&'t str),
        Op(&'t str, Vec<Tree<'t>>),
    }
    fn value(t: &Tree, names: &HashMap<String, i64>, loads: &[i64]) -> i64 {
        match t {
            Tree::Atom(a) => a
                .parse()
                .unwrap_or_else(|_| *names.get(*a).unwrap_or_else(|| panic!("unbound {a}"))),
            // A load's first argument names its buffer; the test has one.
            Tree::Op("load", args) => loads[value(&args[1], names, loads) as usize],
            Tree::Op(op, args) => {
                let v: Vec<i64> = args.iter().map(|a| value(a, names, loads)).collect();
                match *op {
                    "add" => v[0] + v[1],
                    "sub" => v[0] - v[1],
                    "mul" => v[0] * v[1],
                    "div" => v[0] / v[1],
                    "rem" => v[0] % v[1],
                    "min" => v[0].min(v[1]),
                    "max" => v[0].max(v[1]),
                    "clamp" => v[0].clamp(v[1], v[2]),
                    "to_index" => v[0],
                    other => panic!("not index arithmetic: {other}"),
                }
            }
        }
    }
    let spaced = text.replace('(', " ( ").replace(')', " ) ");
    let mut tokens = spaced.split_whitespace().peekable();
    let tree = parse(&mut tokens);
    assert!(tokens.next().is_none(), "one expression: {text}");
    value(&tree, names, loads)
}

/// The name → value table for symbol `s` and loop variables `vars`.
fn names(s: i64, vars: &[i64]) -> HashMap<String, i64> {
    let mut n: HashMap<String, i64> = [(Sexp.sym_name("s"), s)].into();
    for (i, &v) in vars.iter().enumerate() {
        n.insert(Sexp.var_name(i as u32), v);
    }
    n
}

#[test]
fn printed_index_arithmetic_means_what_the_expression_does() {
    let (s, v0, v1) = (Expr::sym("s"), Expr::Var(0), Expr::Var(1));
    let exprs = [
        v0.clone().mul(s.clone()).add(v1.clone()),
        v0.clone().add(7).rem(s.clone()).sub(3),
        v1.clone().mul(4).div(s.clone().add(1)),
        v0.clone().min(s.clone()).max(v1.clone().sub(5)),
        Expr::Const(-12).add(v0.clone().mul(-3)),
    ];
    let p = Printer::new(&Sexp);
    for e in &exprs {
        let text = p.index(e);
        for (sv, a, b) in [(1, 0, 0), (5, 3, 2), (9, 8, 17), (16, 2, 40)] {
            let bound: Bindings = [("s".to_string(), sv)].into();
            let expected = e.eval_with(&bound, &[a, b]).unwrap();
            assert_eq!(
                eval(&text, &names(sv, &[a, b]), &[]),
                expected,
                "{e} as {text}"
            );
        }
    }
}

#[test]
fn unflatten_recovers_every_loop_variable_from_the_flat_index() {
    let shape = [
        Expr::Const(3),
        Expr::Const(1),
        Expr::sym("s"),
        Expr::Const(4),
    ];
    let p = Printer::new(&Sexp);
    let lines = p.unflatten(&shape, "flat", None);
    // The size-1 axis is always 0 and is not declared.
    assert_eq!(lines.len(), 3, "{lines:?}");
    let s = 5;
    for flat in 0..3 * s * 4 {
        let mut n = names(s, &[]);
        n.insert("flat".into(), flat);
        for line in &lines {
            let (var, value) = line.split_once(" = ").expect("a declaration");
            let v = eval(value, &n, &[]);
            n.insert(var.to_string(), v);
        }
        let expected = [flat / (s * 4), 0, flat / 4 % s, flat % 4];
        for (axis, want) in expected.iter().enumerate() {
            let got = n.get(&Sexp.var_name(axis as u32)).copied().unwrap_or(0);
            assert_eq!(got, *want, "axis {axis} of flat index {flat}");
        }
    }
}

#[test]
fn a_gather_row_is_clamped_into_the_table() {
    let rows = Expr::sym("s");
    let let_ = Let {
        var: 7,
        value: ScalarExpr::Load {
            input: 1,
            offset: Expr::Var(0),
            dtype: DType::I32,
        },
        rows: rows.clone(),
    };
    let p = Printer::new(&Sexp);
    let lines = p.lets(std::slice::from_ref(&let_));
    let (var, value) = lines[0].split_once(" = ").unwrap();
    assert_eq!(var, Sexp.var_name(7));
    // Token ids from the load: in range, negative, past the end.
    for (id, want) in [(3, 3), (-4, 0), (10, 5)] {
        let n = names(6, &[0]);
        assert_eq!(eval(value, &n, &[id]), want, "id {id}: {value}");
    }
}

fn load(input: usize, offset: Expr, dtype: DType) -> ScalarExpr {
    ScalarExpr::Load {
        input,
        offset,
        dtype,
    }
}

/// `out[v0, v1] = in1[v1] * bf16 in0[v0 * 8 + v1]` over `[s, 8]`, and symbol `t` read too.
fn scale() -> Kernel {
    Kernel {
        kind: KernelKind::Elementwise {
            lets: Vec::new(),
            body: ScalarExpr::Binary {
                op: BinaryOp::Mul,
                a: Box::new(load(1, Expr::Var(1), DType::F32)),
                b: Box::new(load(
                    0,
                    Expr::Var(0).mul(8).add(Expr::Var(1)).add(Expr::sym("t")),
                    DType::BF16,
                )),
                dtype: DType::BF16,
            },
        },
        out_dtype: DType::BF16,
        out_shape: vec![Expr::sym("s"), Expr::Const(8)],
        inputs: vec![DType::BF16, DType::F32],
    }
}

#[test]
fn parameters_are_the_output_the_inputs_then_the_sorted_symbols() {
    let params = Params::of(&scale());
    assert_eq!(params.out, DType::BF16);
    assert_eq!(params.inputs, vec![DType::BF16, DType::F32]);
    assert_eq!(params.symbols, vec!["s".to_string(), "t".to_string()]);
}

#[test]
fn an_element_in_c_widens_bf16_loads_and_narrows_the_store() {
    let p = Printer::new(&CStyle);
    let lines = element(&p, &scale(), "i");
    assert_eq!(lines.len(), 1, "no lets: one store");
    let store = &lines[0];
    assert!(store.starts_with("out[i] = kiln_f32_to_bf16("), "{store}");
    assert!(store.contains("kiln_bf16_to_f32(in0["), "{store}");
    assert!(store.contains("in1["), "{store}");
    // The product is rounded to bf16 before the store rounds it again (as the interpreter
    // rounds each op).
    assert!(store.matches("bf16").count() >= 3, "{store}");
}

#[test]
fn a_written_part_lands_at_its_offset_along_the_axis() {
    let k = Kernel {
        kind: KernelKind::Write {
            shape: vec![Expr::Const(1), Expr::Const(4)],
            axis: 0,
            start: Expr::sym("p"),
            body: load(0, Expr::Var(1), DType::F32),
        },
        out_dtype: DType::F32,
        out_shape: vec![Expr::Const(16), Expr::Const(4)],
        inputs: vec![DType::F32],
    };
    let p = Printer::new(&Sexp);
    let lines = written_element(&p, &k);
    let store = lines.last().unwrap();
    let (target, _) = store.split_once(" = ").unwrap();
    let index = target
        .strip_prefix("out[")
        .and_then(|t| t.strip_suffix(']'))
        .unwrap();
    // Row 0 of the part (its only row) is row p of the output.
    let mut n = names(0, &[0, 3]);
    n.insert(Sexp.sym_name("p"), 9);
    assert_eq!(eval(index, &n, &[]), 9 * 4 + 3, "{store}");
}

#[test]
fn a_reduction_starts_from_its_identity_and_runs_over_its_axis() {
    let k = |op| Kernel {
        kind: KernelKind::Reduce {
            op,
            axis: 1,
            len: Expr::Const(8),
            body: load(0, Expr::Var(0).mul(8).add(Expr::Var(1)), DType::F32),
        },
        out_dtype: DType::F32,
        out_shape: vec![Expr::Const(4), Expr::Const(1)],
        inputs: vec![DType::F32],
    };
    let c = Printer::new(&CStyle);
    assert_eq!(Reduction::of(&c, &k(ReduceOp::Sum)).init, "0.0f");
    assert_eq!(Reduction::of(&c, &k(ReduceOp::Max)).init, "(-INFINITY)");
    let r = Reduction::of(&Printer::new(&Sexp), &k(ReduceOp::Sum));
    assert_eq!(
        (r.var.as_str(), r.len.as_str()),
        (Sexp.var_name(1).as_str(), "8")
    );
    // Element j of output row 2 reads input element 2 * 8 + j.
    let index = r
        .element
        .strip_prefix("(load in0 ")
        .and_then(|e| e.strip_suffix(')'))
        .unwrap_or_else(|| panic!("a load of in0: {}", r.element));
    assert_eq!(eval(index, &names(0, &[2, 5]), &[]), 21);
}

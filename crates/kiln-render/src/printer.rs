//! Index expressions and scalar expressions as source text, in any [`Dialect`].

use crate::dialect::{Dialect, IndexOp};
use kiln_ir::{contiguous_strides, DType, Expr, UnaryOp};
use kiln_program::{Let, ScalarExpr};

/// Prints expressions through a dialect.
#[derive(Clone, Copy)]
pub struct Printer<'d> {
    pub d: &'d dyn Dialect,
}

impl<'d> Printer<'d> {
    pub fn new(d: &'d dyn Dialect) -> Printer<'d> {
        Printer { d }
    }

    /// Index arithmetic: symbols, loop variables and constants in the index type.
    pub fn index(&self, e: &Expr) -> String {
        let bin = |op, a: &Expr, b: &Expr| self.d.index_op(op, &self.index(a), &self.index(b));
        match e {
            Expr::Const(c) => self.d.index_literal(*c),
            Expr::Sym(s) => self.d.sym_name(s),
            Expr::Var(v) => self.d.var_name(*v),
            Expr::Add(a, b) => bin(IndexOp::Add, a, b),
            Expr::Sub(a, b) => bin(IndexOp::Sub, a, b),
            Expr::Mul(a, b) => bin(IndexOp::Mul, a, b),
            Expr::Div(a, b) => bin(IndexOp::Div, a, b),
            Expr::Mod(a, b) => bin(IndexOp::Rem, a, b),
            Expr::Min(a, b) => bin(IndexOp::Min, a, b),
            Expr::Max(a, b) => bin(IndexOp::Max, a, b),
        }
    }

    /// The value of `e` in its compute type; input `i` is the buffer named `in{i}`.
    pub fn scalar(&self, e: &ScalarExpr) -> String {
        let d = self.d;
        match e {
            ScalarExpr::Load {
                input,
                offset,
                dtype,
            } => d.load(*dtype, &input_name(*input), &self.index(offset)),
            ScalarExpr::Const { bits, dtype } => d.literal(*bits, *dtype),
            ScalarExpr::Index { expr, dtype } => d.index_to_value(&self.index(expr), *dtype),
            ScalarExpr::Unary {
                op: UnaryOp::Cast,
                x,
                dtype,
            } => d.cast(x.dtype(), *dtype, &self.scalar(x)),
            ScalarExpr::Unary { op, x, dtype } => d.unary(*op, *dtype, &self.scalar(x)),
            ScalarExpr::Binary { op, a, b, dtype } => {
                let v = d.binary(*op, a.dtype(), &self.scalar(a), &self.scalar(b));
                if *dtype == DType::Bool {
                    v
                } else {
                    d.round(*dtype, &v)
                }
            }
            ScalarExpr::Where { cond, a, b, .. } => {
                d.select(&self.scalar(cond), &self.scalar(a), &self.scalar(b))
            }
            ScalarExpr::Select {
                lhs,
                rhs,
                then,
                otherwise,
                ..
            } => {
                let cond = d.binary(
                    kiln_ir::BinaryOp::Lt,
                    DType::I32,
                    &self.index(lhs),
                    &self.index(rhs),
                );
                d.select(&cond, &self.scalar(then), &self.scalar(otherwise))
            }
            ScalarExpr::Acc { slot, .. } => acc_name(*slot),
        }
    }

    /// Statements declaring the loop variable of each axis of `shape` (except `skip` and
    /// size-1 axes, whose index is always 0) from the flat row-major index `flat`.
    pub fn unflatten(&self, shape: &[Expr], flat: &str, skip: Option<usize>) -> Vec<String> {
        let strides = contiguous_strides(shape);
        let mut out = Vec::new();
        for (i, dim) in shape.iter().enumerate() {
            if Some(i) == skip || dim.is_const(1) {
                continue;
            }
            let q = if strides[i].is_const(1) {
                flat.to_string()
            } else {
                self.d
                    .index_op(IndexOp::Div, flat, &self.index(&strides[i]))
            };
            let v = if i == 0 {
                q
            } else {
                self.d.index_op(IndexOp::Rem, &q, &self.index(dim))
            };
            out.push(self.d.declare_index(&self.d.var_name(i as u32), &v));
        }
        out
    }

    /// Statements binding a gather's row variables: `var = clamp(id, 0, rows - 1)`.
    pub fn lets(&self, lets: &[Let]) -> Vec<String> {
        lets.iter()
            .map(|l| {
                let id = self.d.value_to_index(&self.scalar(&l.value));
                let hi =
                    self.d
                        .index_op(IndexOp::Sub, &self.index(&l.rows), &self.d.index_literal(1));
                let v = self.d.index_clamp(&id, &self.d.index_literal(0), &hi);
                self.d.declare_index(&self.d.var_name(l.var), &v)
            })
            .collect()
    }
}

/// The variable holding value `slot` a kernel computed before its body (a matmul product, a
/// row's reduction): what [`ScalarExpr::Acc`] prints as.
pub fn acc_name(slot: usize) -> String {
    format!("kiln_acc{slot}")
}

/// The name of a kernel's input buffer `i`.
pub fn input_name(i: usize) -> String {
    format!("in{i}")
}

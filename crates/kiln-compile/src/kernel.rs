//! What a backend compiles: a self-contained description of one fused kernel. Nothing in it
//! refers to graph node ids — inputs are numbered in order of first use — so two layers with the
//! same structure produce equal kernels, equal source and one compile.

use kiln_ir::{BinaryOp, DType, Expr, ReduceOp, UnaryOp};
use std::collections::BTreeSet;

/// A scalar computation for one output element, over loop variables `Var(i)` and symbols.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ScalarExpr {
    /// `inputs[input][offset]`, offset in elements.
    Load {
        input: usize,
        offset: Expr,
        dtype: DType,
    },
    /// A constant, as f64 bits.
    Const { bits: u64, dtype: DType },
    /// The value of an index expression (iota).
    Index { expr: Expr, dtype: DType },
    Unary {
        op: UnaryOp,
        x: Box<ScalarExpr>,
        dtype: DType,
    },
    Binary {
        op: BinaryOp,
        a: Box<ScalarExpr>,
        b: Box<ScalarExpr>,
        dtype: DType,
    },
    Where {
        cond: Box<ScalarExpr>,
        a: Box<ScalarExpr>,
        b: Box<ScalarExpr>,
        dtype: DType,
    },
    /// `lhs < rhs ? then : otherwise` on indices (how concat picks its part).
    Select {
        lhs: Expr,
        rhs: Expr,
        then: Box<ScalarExpr>,
        otherwise: Box<ScalarExpr>,
        dtype: DType,
    },
}

impl ScalarExpr {
    pub fn dtype(&self) -> DType {
        match self {
            ScalarExpr::Load { dtype, .. }
            | ScalarExpr::Const { dtype, .. }
            | ScalarExpr::Index { dtype, .. }
            | ScalarExpr::Unary { dtype, .. }
            | ScalarExpr::Binary { dtype, .. }
            | ScalarExpr::Where { dtype, .. }
            | ScalarExpr::Select { dtype, .. } => *dtype,
        }
    }

    /// Number of operations, a rough measure of work per element.
    pub fn op_count(&self) -> usize {
        match self {
            ScalarExpr::Load { .. } | ScalarExpr::Const { .. } | ScalarExpr::Index { .. } => 1,
            ScalarExpr::Unary { x, .. } => 1 + x.op_count(),
            ScalarExpr::Binary { a, b, .. } => 1 + a.op_count() + b.op_count(),
            ScalarExpr::Where { cond, a, b, .. } => {
                1 + cond.op_count() + a.op_count() + b.op_count()
            }
            ScalarExpr::Select {
                then, otherwise, ..
            } => 1 + then.op_count() + otherwise.op_count(),
        }
    }

    fn symbols(&self, out: &mut BTreeSet<String>) {
        match self {
            ScalarExpr::Load { offset, .. } => offset.symbols(out),
            ScalarExpr::Const { .. } => {}
            ScalarExpr::Index { expr, .. } => expr.symbols(out),
            ScalarExpr::Unary { x, .. } => x.symbols(out),
            ScalarExpr::Binary { a, b, .. } => {
                a.symbols(out);
                b.symbols(out);
            }
            ScalarExpr::Where { cond, a, b, .. } => {
                cond.symbols(out);
                a.symbols(out);
                b.symbols(out);
            }
            ScalarExpr::Select {
                lhs,
                rhs,
                then,
                otherwise,
                ..
            } => {
                lhs.symbols(out);
                rhs.symbols(out);
                then.symbols(out);
                otherwise.symbols(out);
            }
        }
    }
}

/// Binds loop variable `var` to a clamped integer row index read from data (embedding lookup):
/// `var = clamp((int) value, 0, rows - 1)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Let {
    pub var: u32,
    pub value: ScalarExpr,
    pub rows: Expr,
}

/// A strided matmul operand: element (batch b, row r, col c) is at
/// `offset + sum(b_i * batch_strides_i) + r * row_stride + c * col_stride` of input `input`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Operand {
    pub input: usize,
    pub dtype: DType,
    pub offset: Expr,
    pub batch_strides: Vec<Expr>,
    pub row_stride: Expr,
    pub col_stride: Expr,
}

// A program holds a few hundred kernels at most: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KernelKind {
    /// `out[v0, .., vn] = lets; body`.
    Elementwise { lets: Vec<Let>, body: ScalarExpr },
    /// `out[.., 0 @ axis, ..] = reduce over v_axis in 0..len of body`.
    Reduce {
        op: ReduceOp,
        axis: usize,
        len: Expr,
        body: ScalarExpr,
    },
    /// `out[v0, .., v_axis + start, .., vn] = body` for `v` over `shape` (a part of the
    /// output, whose shape is the kernel's `out_shape`); the rest of the output keeps what it
    /// holds: the output buffer is one the step updates in place.
    Write {
        shape: Vec<Expr>,
        axis: usize,
        start: Expr,
        body: ScalarExpr,
    },
    /// `out[b.., m, n] = sum_k a[b.., m, k] * b[b.., k, n]`.
    MatMul {
        batch: Vec<Expr>,
        m: Expr,
        n: Expr,
        k: Expr,
        a: Operand,
        b: Operand,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Kernel {
    pub kind: KernelKind,
    pub out_dtype: DType,
    /// Shape of the (contiguous) output buffer.
    pub out_shape: Vec<Expr>,
    /// Dtypes of the input buffers, in the kernel's own numbering.
    pub inputs: Vec<DType>,
}

impl Kernel {
    /// A short human label used in kernel names and reports.
    pub fn label(&self) -> String {
        match &self.kind {
            KernelKind::Elementwise { lets, .. } if !lets.is_empty() => "gather".into(),
            KernelKind::Elementwise { .. } => "elementwise".into(),
            KernelKind::Reduce { op, .. } => format!("reduce_{op:?}").to_lowercase(),
            KernelKind::Write { .. } => "write".into(),
            KernelKind::MatMul { .. } => "matmul".into(),
        }
    }

    /// The symbols the kernel reads at run time, sorted: its symbol parameter order.
    pub fn symbols(&self) -> Vec<String> {
        let mut s = BTreeSet::new();
        for d in &self.out_shape {
            d.symbols(&mut s);
        }
        match &self.kind {
            KernelKind::Elementwise { lets, body } => {
                for l in lets {
                    l.value.symbols(&mut s);
                    l.rows.symbols(&mut s);
                }
                body.symbols(&mut s);
            }
            KernelKind::Reduce { len, body, .. } => {
                len.symbols(&mut s);
                body.symbols(&mut s);
            }
            KernelKind::Write {
                shape, start, body, ..
            } => {
                for e in shape.iter().chain([start]) {
                    e.symbols(&mut s);
                }
                body.symbols(&mut s);
            }
            KernelKind::MatMul {
                batch,
                m,
                n,
                k,
                a,
                b,
            } => {
                for e in batch.iter().chain([m, n, k]) {
                    e.symbols(&mut s);
                }
                for o in [a, b] {
                    for e in o
                        .batch_strides
                        .iter()
                        .chain([&o.offset, &o.row_stride, &o.col_stride])
                    {
                        e.symbols(&mut s);
                    }
                }
            }
        }
        s.into_iter().collect()
    }

    /// How many elements one launch writes: the whole output, or the written part of an
    /// in-place update.
    pub fn written_elements(&self) -> Expr {
        match &self.kind {
            KernelKind::Write { shape, .. } => kiln_ir::numel(shape),
            _ => kiln_ir::numel(&self.out_shape),
        }
    }

    /// Expected work per output element (for scheduling and cost estimates).
    pub fn op_count(&self) -> usize {
        match &self.kind {
            KernelKind::Elementwise { lets, body } => {
                body.op_count() + lets.iter().map(|l| l.value.op_count()).sum::<usize>()
            }
            KernelKind::Reduce { body, .. } => body.op_count() + 1,
            KernelKind::Write { body, .. } => body.op_count(),
            KernelKind::MatMul { .. } => 2,
        }
    }
}

/// Reductions' identity element, shared by backends and the planner.
pub fn reduce_identity(op: ReduceOp, dtype: DType) -> f64 {
    match (op, dtype) {
        (ReduceOp::Sum, _) => 0.0,
        (ReduceOp::Max, DType::I32) => i32::MIN as f64,
        (ReduceOp::Max, DType::Bool) => 0.0,
        (ReduceOp::Max, _) => f64::NEG_INFINITY,
    }
}

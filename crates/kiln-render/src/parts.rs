//! The pieces of each kernel kind that do not depend on how the hardware runs it: what an
//! element computes and where it goes, what a reduction starts from and how it combines, where
//! a matmul's operands live. A backend's kernel template only adds the structure (loops over
//! work units on a CPU, threads and tiles on a GPU).

use crate::dialect::{Dialect, IndexOp};
use crate::printer::{input_name, Printer};
use kiln_compile::kernel::reduce_identity;
use kiln_compile::{Kernel, KernelKind, Operand};
use kiln_ir::{contiguous_strides, DType, Expr, ReduceOp};

/// The name of every kernel's output buffer.
pub const OUT: &str = "out";

/// A kernel's parameters in their fixed order: the output buffer, the input buffers
/// (`in0`, `in1`, ...), then the symbols it reads (sorted by name).
pub struct Params {
    pub out: DType,
    pub inputs: Vec<DType>,
    pub symbols: Vec<String>,
}

impl Params {
    pub fn of(k: &Kernel) -> Params {
        Params {
            out: k.out_dtype,
            inputs: k.inputs.clone(),
            symbols: k.symbols(),
        }
    }
}

/// One element of an elementwise kernel, once its loop variables are declared: the gather
/// lets and the store of the body's value at the output index `out_index`.
pub fn element(p: &Printer, k: &Kernel, out_index: &str) -> Vec<String> {
    let KernelKind::Elementwise { lets, body } = &k.kind else {
        panic!("element() of a {} kernel", k.label());
    };
    let mut s = p.lets(lets);
    s.push(p.d.store(k.out_dtype, OUT, out_index, &p.scalar(body)));
    s
}

/// One element of a `Write` kernel, once the loop variables of the written part's shape are
/// declared: the store of the body's value at its place in the (larger) output.
pub fn written_element(p: &Printer, k: &Kernel) -> Vec<String> {
    let KernelKind::Write {
        shape,
        axis,
        start,
        body,
    } = &k.kind
    else {
        panic!("written_element() of a {} kernel", k.label());
    };
    let strides = contiguous_strides(&k.out_shape);
    let mut offset = Expr::Const(0);
    for (i, dim) in shape.iter().enumerate() {
        let mut v = if dim.is_const(1) {
            Expr::Const(0)
        } else {
            Expr::Var(i as u32)
        };
        if i == *axis {
            v = v.add(start.clone());
        }
        offset = offset.add(v.mul(strides[i].clone()));
    }
    vec![p
        .d
        .store(k.out_dtype, OUT, &p.index(&offset), &p.scalar(body))]
}

/// A reduction's accumulator: its type, start value, the update for one element of the
/// reduced axis and the final store.
pub struct Reduction {
    pub op: ReduceOp,
    pub dtype: DType,
    /// The reduced axis (its loop variable is `var`).
    pub axis: usize,
    pub var: String,
    pub len: String,
    pub acc_type: &'static str,
    pub init: String,
    /// The value of one element of the reduced axis.
    pub element: String,
}

impl Reduction {
    pub fn of(p: &Printer, k: &Kernel) -> Reduction {
        let KernelKind::Reduce {
            op,
            axis,
            len,
            body,
        } = &k.kind
        else {
            panic!("Reduction::of a {} kernel", k.label());
        };
        Reduction {
            op: *op,
            dtype: k.out_dtype,
            axis: *axis,
            var: p.d.var_name(*axis as u32),
            len: p.index(len),
            acc_type: p.d.compute_type(k.out_dtype),
            init: p
                .d
                .literal(reduce_identity(*op, k.out_dtype).to_bits(), k.out_dtype),
            element: p.scalar(body),
        }
    }

    /// `acc op x`.
    pub fn combine(&self, d: &dyn Dialect, acc: &str, x: &str) -> String {
        d.reduce_combine(self.op, self.dtype, acc, x)
    }

    /// The statement storing accumulator `acc` at `out_index`.
    pub fn store(&self, d: &dyn Dialect, acc: &str, out_index: &str) -> String {
        d.store(self.dtype, OUT, out_index, &d.round(self.dtype, acc))
    }
}

/// One matmul operand: where its current batch starts and its row/column strides.
pub struct MatOperand {
    pub buf: String,
    pub dtype: DType,
    /// Element offset of the batch slice, in terms of the batch loop variables `v0..`.
    pub base: String,
    pub row_stride: String,
    pub col_stride: String,
    /// Strides as expressions, for layout decisions (`is_const(1)`).
    pub row_stride_expr: Expr,
    pub col_stride_expr: Expr,
}

impl MatOperand {
    fn of(p: &Printer, o: &Operand, batch: &[Expr]) -> MatOperand {
        let mut off = o.offset.clone();
        for (i, st) in o.batch_strides.iter().enumerate() {
            if !batch[i].is_const(1) {
                off = off.add(Expr::Var(i as u32).mul(st.clone()));
            }
        }
        MatOperand {
            buf: input_name(o.input),
            dtype: o.dtype,
            base: p.index(&off),
            row_stride: p.index(&o.row_stride),
            col_stride: p.index(&o.col_stride),
            row_stride_expr: o.row_stride.clone(),
            col_stride_expr: o.col_stride.clone(),
        }
    }

    /// Element (row, col) of this operand's batch slice, read from a buffer (or pointer)
    /// named `from` that starts at the slice, in the compute type.
    pub fn at(&self, d: &dyn Dialect, from: &str, row: &str, col: &str) -> String {
        let r = d.index_op(IndexOp::Mul, row, &self.row_stride);
        let c = d.index_op(IndexOp::Mul, col, &self.col_stride);
        d.load(self.dtype, from, &d.index_op(IndexOp::Add, &r, &c))
    }
}

/// A matmul `out[b.., m, n] = sum_k a[b.., m, k] * b[b.., k, n]`, its sizes and operands.
pub struct MatMul {
    pub out: DType,
    pub batch: Vec<Expr>,
    /// Number of batches (an index expression).
    pub batches: String,
    pub m: String,
    pub n: String,
    pub k: String,
    pub a: MatOperand,
    pub b: MatOperand,
}

impl MatMul {
    pub fn of(p: &Printer, kernel: &Kernel) -> MatMul {
        let KernelKind::MatMul {
            batch,
            m,
            n,
            k,
            a,
            b,
        } = &kernel.kind
        else {
            panic!("MatMul::of a {} kernel", kernel.label());
        };
        MatMul {
            out: kernel.out_dtype,
            batch: batch.clone(),
            batches: p.index(&kiln_ir::numel(batch)),
            m: p.index(m),
            n: p.index(n),
            k: p.index(k),
            a: MatOperand::of(p, a, batch),
            b: MatOperand::of(p, b, batch),
        }
    }

    /// The statement storing accumulator `acc` as element `index` of `buf` (the output, or a
    /// pointer into it).
    pub fn store(&self, d: &dyn Dialect, buf: &str, acc: &str, index: &str) -> String {
        d.store(self.out, buf, index, &d.round(self.out, acc))
    }
}

/// Appends `lines` to `out`, each on its own line at `indent`.
pub fn push_lines(out: &mut String, indent: &str, lines: impl IntoIterator<Item = String>) {
    for l in lines {
        out.push_str(indent);
        out.push_str(&l);
        out.push('\n');
    }
}

//! The pieces of each kernel kind that do not depend on how the hardware runs it: what an
//! element computes and where it goes, what a reduction starts from and how it combines, where
//! a matmul's operands live. A backend's kernel template only adds the structure (loops over
//! work units on a CPU, threads and tiles on a GPU).

use crate::dialect::{Dialect, IndexOp};
use crate::printer::{acc_name, input_name, Printer};
use kiln_ir::{contiguous_strides, DType, Expr, ReduceOp};
use kiln_program::kernel::reduce_identity;
use kiln_program::{Kernel, KernelKind, Operand, ScalarExpr};

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
    let offset = written_offset(&k.out_shape, shape, *axis, start);
    vec![p
        .d
        .store(k.out_dtype, OUT, &p.index(&offset), &p.scalar(body))]
}

/// Where element `v0..` of the part `shape` written at `start` along `axis` lies in the output
/// (of shape `out`).
fn written_offset(out: &[Expr], shape: &[Expr], axis: usize, start: &Expr) -> Expr {
    let strides = contiguous_strides(out);
    let mut offset = Expr::Const(0);
    for (i, dim) in shape.iter().enumerate() {
        let mut v = if dim.is_const(1) {
            Expr::Const(0)
        } else {
            Expr::Var(i as u32)
        };
        if i == axis {
            v = v.add(start.clone());
        }
        offset = offset.add(v.mul(strides[i].clone()));
    }
    offset
}

/// An elementwise or a write kernel, seen as what both are: one loop nest over an iteration
/// shape (the output's, or the written part's), each element a few statements. A backend
/// writes one skeleton for both kinds from this.
pub struct Pointwise<'k> {
    /// The shape iterated over; its loop variables are `v0..`.
    pub shape: &'k [Expr],
    kernel: &'k Kernel,
}

impl<'k> Pointwise<'k> {
    /// `None` for the other kinds.
    pub fn of(k: &'k Kernel) -> Option<Pointwise<'k>> {
        match &k.kind {
            KernelKind::Elementwise { .. } => Some(Pointwise {
                shape: &k.out_shape,
                kernel: k,
            }),
            KernelKind::Write { shape, .. } => Some(Pointwise {
                shape: shape.as_slice(),
                kernel: k,
            }),
            _ => None,
        }
    }

    /// The statements of one element once the loop variables of [`Self::shape`] are declared;
    /// `flat` is the element's flat index in the shape (an elementwise kernel stores there; a
    /// write computes its place in the larger output from the loop variables).
    pub fn element(&self, p: &Printer, flat: &str) -> Vec<String> {
        match &self.kernel.kind {
            KernelKind::Write { .. } => written_element(p, self.kernel),
            _ => element(p, self.kernel, flat),
        }
    }

    /// One element from its flat index alone (one thread per element): the declarations of
    /// the loop variables, then [`Self::element`].
    pub fn at_flat(&self, p: &Printer, flat: &str) -> Vec<String> {
        let mut s = p.unflatten(self.shape, flat, None);
        s.extend(self.element(p, flat));
        s
    }
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

/// A reduce-then-map kernel (`KernelKind::ReduceMap`): the reduction of a row, then the map
/// over the row's last axis, which reads the reduction as [`acc_name`]`(0)`.
pub struct RowReduction {
    pub op: ReduceOp,
    pub dtype: DType,
    /// The reduction's loop variable (`Var(rank)`) and length.
    pub var: String,
    pub len: String,
    pub acc_type: &'static str,
    pub acc: String,
    pub init: String,
    /// One element of the reduction.
    pub element: String,
    /// The output's last axis: its loop variable and length.
    pub map_var: String,
    pub map_len: String,
    /// The output element (the map's value, in the output dtype's compute type).
    pub value: String,
    /// The rows (all axes but the last of the output, or of the part written in place).
    pub rows: Vec<Expr>,
    /// Where the map's element goes in a part written in place: its offset in the output, in
    /// the loop variables; `None`: at `row * map_len + map_var`.
    pub written_at: Option<String>,
    out: DType,
}

impl RowReduction {
    pub fn of(p: &Printer, k: &Kernel) -> RowReduction {
        let KernelKind::ReduceMap {
            op,
            len,
            body,
            map,
            write,
        } = &k.kind
        else {
            panic!("RowReduction::of a {} kernel", k.label());
        };
        let shape = k.iteration_shape();
        let rank = shape.len();
        let dtype = body.dtype();
        RowReduction {
            op: *op,
            dtype,
            var: p.d.var_name(rank as u32),
            len: p.index(len),
            acc_type: p.d.compute_type(dtype),
            acc: acc_name(0),
            init: p.d.literal(reduce_identity(*op, dtype).to_bits(), dtype),
            element: p.scalar(body),
            map_var: p.d.var_name(rank as u32 - 1),
            map_len: p.index(&shape[rank - 1]),
            value: p.scalar(map),
            rows: shape[..rank - 1].to_vec(),
            written_at: write
                .as_ref()
                .map(|w| p.index(&written_offset(&k.out_shape, &w.shape, w.axis, &w.start))),
            out: k.out_dtype,
        }
    }

    /// The statement storing the map's value of row `row` (its flat index over
    /// [`Self::rows`]), once the row's and the map's loop variables are declared.
    pub fn store(&self, d: &dyn Dialect, row: &str) -> String {
        let at = match &self.written_at {
            Some(at) => at.clone(),
            None => format!("{row} * {} + {}", self.map_len, self.map_var),
        };
        d.store(self.out, OUT, &at, &self.value)
    }

    /// `acc op x`.
    pub fn combine(&self, d: &dyn Dialect, acc: &str, x: &str) -> String {
        d.reduce_combine(self.op, self.dtype, acc, x)
    }

    /// The statement rounding the accumulator to the reduction's dtype, as the interpreter
    /// stores a reduced value before reading it back.
    pub fn round_acc(&self, d: &dyn Dialect) -> String {
        format!("{} = {};", self.acc, d.round(self.dtype, &self.acc))
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

    /// The offset of element (row, col) from the start of the batch slice.
    pub fn offset(&self, d: &dyn Dialect, row: &str, col: &str) -> String {
        let r = d.index_op(IndexOp::Mul, row, &self.row_stride);
        let c = d.index_op(IndexOp::Mul, col, &self.col_stride);
        d.index_op(IndexOp::Add, &r, &c)
    }

    /// Element (row, col) of this operand's batch slice, read from a buffer (or pointer)
    /// named `from` that starts at the slice, in the compute type. A block-quantized operand
    /// has no pointer to its slice (the slice may start inside a block): `from` is the buffer
    /// itself and the element index includes [`Self::base`].
    pub fn at(&self, d: &dyn Dialect, from: &str, row: &str, col: &str) -> String {
        let offset = self.offset(d, row, col);
        if self.dtype.is_quantized() {
            d.load(
                self.dtype,
                from,
                &d.index_op(IndexOp::Add, &self.base, &offset),
            )
        } else {
            d.load(self.dtype, from, &offset)
        }
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
    /// Column offsets of the products each element needs (`[0]` without an epilogue).
    pub cols: Vec<String>,
    /// The element's value from its products ([`acc_name`]`(slot)`), in the compute type;
    /// `None`: the product itself.
    pub epilogue: Option<String>,
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
            epilogue,
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
            cols: match epilogue {
                Some(e) => e.cols.iter().map(|c| p.index(c)).collect(),
                None => vec![p.d.index_literal(0)],
            },
            epilogue: epilogue.as_ref().map(|e| p.scalar(&e.body)),
        }
    }

    /// The sizes as the kernels name them: `M`, `N`, `K` and their index expressions.
    pub fn sizes(&self) -> [(&'static str, &str); 3] {
        [("M", &self.m), ("N", &self.n), ("K", &self.k)]
    }

    /// The output element's value from the products [`acc_name`]`(0..)`.
    pub fn value(&self) -> String {
        self.epilogue.clone().unwrap_or_else(|| acc_name(0))
    }

    /// The output's loop variables of the row and column (`v(r-2)`, `v(r-1)`), which an
    /// epilogue's loads index with.
    pub fn row_col_vars(&self, d: &dyn Dialect) -> (String, String) {
        let r = self.batch.len() as u32 + 2;
        (d.var_name(r - 2), d.var_name(r - 1))
    }

    /// The statement storing accumulator `acc` as element `index` of `buf` (the output, or a
    /// pointer into it).
    pub fn store(&self, d: &dyn Dialect, buf: &str, acc: &str, index: &str) -> String {
        d.store(self.out, buf, index, &d.round(self.out, acc))
    }
}

/// An attention kernel (`KernelKind::Attention`): sizes, operands and the score.
pub struct AttentionParts {
    pub batch: Vec<Expr>,
    pub m: String,
    pub n: String,
    pub k: String,
    pub dv: String,
    pub q: MatOperand,
    pub kt: MatOperand,
    pub v: MatOperand,
    /// The score of (row `v(r-2)`, key `v(r-1)`) from the product [`acc_name`]`(0)`.
    pub score: String,
    /// When the score is `f(product) + bias` with a bias that does not read the product (a
    /// causal mask): the bias, and the score with the bias read as [`acc_name`]`(1)`. A key
    /// whose bias is -inf has weight 0 whatever its product: its product (and its value row)
    /// need not be read. Backends may skip masked keys, so a masked key's K and V are assumed
    /// finite: where they are not, the unfused graph's `0 * inf` or `0 * NaN` gives NaN and a
    /// backend that skipped the key does not.
    pub biased: Option<(String, String)>,
    /// The row and key variables.
    pub row_var: String,
    pub key_var: String,
    /// The flat offset of row (b.., i)'s first output value, in the batch variables and
    /// [`AttentionParts::row_var`], where the output is not contiguous `[b.., m, dv]`
    /// (`KernelKind::Attention::out_rows`); the row's values follow at stride 1.
    pub out_rows: Option<String>,
}

impl AttentionParts {
    /// The sizes as the kernels name them: rows `M`, keys `T`, head dimension `KD` and value
    /// dimension `DV`, with their index expressions.
    pub fn sizes(&self) -> [(&'static str, &str); 4] {
        [
            ("M", &self.m),
            ("T", &self.n),
            ("KD", &self.k),
            ("DV", &self.dv),
        ]
    }

    pub fn of(p: &Printer, kernel: &Kernel) -> AttentionParts {
        let KernelKind::Attention {
            batch,
            m,
            n,
            k,
            dv,
            q,
            kt,
            v,
            score,
            out_rows,
        } = &kernel.kind
        else {
            panic!("AttentionParts::of a {} kernel", kernel.label());
        };
        let r = batch.len() as u32 + 2;
        let biased = match score {
            ScalarExpr::Binary {
                op: kiln_ir::BinaryOp::Add,
                a,
                b,
                dtype,
            } if (a.acc_slots() > 0) != (b.acc_slots() > 0) => {
                let bias_slot = ScalarExpr::Acc {
                    slot: 1,
                    dtype: *dtype,
                };
                let (bias, rest) = if a.acc_slots() > 0 {
                    (
                        b,
                        ScalarExpr::Binary {
                            op: kiln_ir::BinaryOp::Add,
                            a: a.clone(),
                            b: Box::new(bias_slot),
                            dtype: *dtype,
                        },
                    )
                } else {
                    (
                        a,
                        ScalarExpr::Binary {
                            op: kiln_ir::BinaryOp::Add,
                            a: Box::new(bias_slot),
                            b: b.clone(),
                            dtype: *dtype,
                        },
                    )
                };
                Some((p.scalar(bias), p.scalar(&rest)))
            }
            _ => None,
        };
        AttentionParts {
            batch: batch.clone(),
            m: p.index(m),
            n: p.index(n),
            k: p.index(k),
            dv: p.index(dv),
            q: MatOperand::of(p, q, batch),
            kt: MatOperand::of(p, kt, batch),
            v: MatOperand::of(p, v, batch),
            score: p.scalar(score),
            biased,
            row_var: p.d.var_name(r - 2),
            key_var: p.d.var_name(r - 1),
            out_rows: out_rows.as_ref().map(|e| p.index(e)),
        }
    }
}

//! What a backend compiles: a self-contained description of one fused kernel. Nothing in it
//! refers to graph node ids — inputs are numbered in order of first use — so two layers with the
//! same structure produce equal kernels, equal source and one compile.

use kiln_ir::{BinaryOp, Bindings, DType, Expr, IrError, ReduceOp, UnaryOp};
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
    /// A value the kernel computed before this expression: in a matmul [`Epilogue`], product
    /// `slot` of the output element; in a [`KernelKind::ReduceMap`], the row's reduction
    /// (slot 0). Backends print it as a variable their kernel structure declares.
    Acc { slot: usize, dtype: DType },
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
            | ScalarExpr::Select { dtype, .. }
            | ScalarExpr::Acc { dtype, .. } => *dtype,
        }
    }

    /// Number of operations, a rough measure of work per element.
    pub fn op_count(&self) -> usize {
        match self {
            ScalarExpr::Load { .. }
            | ScalarExpr::Const { .. }
            | ScalarExpr::Index { .. }
            | ScalarExpr::Acc { .. } => 1,
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

    /// The largest `Acc` slot it reads, plus one (0 when it reads none).
    pub fn acc_slots(&self) -> usize {
        match self {
            ScalarExpr::Acc { slot, .. } => slot + 1,
            ScalarExpr::Load { .. } | ScalarExpr::Const { .. } | ScalarExpr::Index { .. } => 0,
            ScalarExpr::Unary { x, .. } => x.acc_slots(),
            ScalarExpr::Binary { a, b, .. } => a.acc_slots().max(b.acc_slots()),
            ScalarExpr::Where { cond, a, b, .. } => {
                cond.acc_slots().max(a.acc_slots()).max(b.acc_slots())
            }
            ScalarExpr::Select {
                then, otherwise, ..
            } => then.acc_slots().max(otherwise.acc_slots()),
        }
    }

    /// The same expression with `f` applied to every index expression in it (load offsets,
    /// iota values, select bounds).
    pub fn map_indices(&self, f: &impl Fn(&Expr) -> Expr) -> ScalarExpr {
        let b = |x: &ScalarExpr| Box::new(x.map_indices(f));
        match self {
            ScalarExpr::Load {
                input,
                offset,
                dtype,
            } => ScalarExpr::Load {
                input: *input,
                offset: f(offset),
                dtype: *dtype,
            },
            ScalarExpr::Const { .. } | ScalarExpr::Acc { .. } => self.clone(),
            ScalarExpr::Index { expr, dtype } => ScalarExpr::Index {
                expr: f(expr),
                dtype: *dtype,
            },
            ScalarExpr::Unary { op, x, dtype } => ScalarExpr::Unary {
                op: *op,
                x: b(x),
                dtype: *dtype,
            },
            ScalarExpr::Binary { op, a, b: y, dtype } => ScalarExpr::Binary {
                op: *op,
                a: b(a),
                b: b(y),
                dtype: *dtype,
            },
            ScalarExpr::Where {
                cond,
                a,
                b: y,
                dtype,
            } => ScalarExpr::Where {
                cond: b(cond),
                a: b(a),
                b: b(y),
                dtype: *dtype,
            },
            ScalarExpr::Select {
                lhs,
                rhs,
                then,
                otherwise,
                dtype,
            } => ScalarExpr::Select {
                lhs: f(lhs),
                rhs: f(rhs),
                then: b(then),
                otherwise: b(otherwise),
                dtype: *dtype,
            },
        }
    }

    /// Whether it loads from kernel input `input`.
    pub fn reads_input(&self, input: usize) -> bool {
        match self {
            ScalarExpr::Load { input: i, .. } => *i == input,
            ScalarExpr::Const { .. } | ScalarExpr::Index { .. } | ScalarExpr::Acc { .. } => false,
            ScalarExpr::Unary { x, .. } => x.reads_input(input),
            ScalarExpr::Binary { a, b, .. } => a.reads_input(input) || b.reads_input(input),
            ScalarExpr::Where { cond, a, b, .. } => {
                cond.reads_input(input) || a.reads_input(input) || b.reads_input(input)
            }
            ScalarExpr::Select {
                then, otherwise, ..
            } => then.reads_input(input) || otherwise.reads_input(input),
        }
    }

    fn symbols(&self, out: &mut BTreeSet<String>) {
        match self {
            ScalarExpr::Load { offset, .. } => offset.symbols(out),
            ScalarExpr::Const { .. } | ScalarExpr::Acc { .. } => {}
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
    /// The operand reads a graph input directly (a weight, usually), not a kernel's output: a
    /// device may hold such a buffer in a layout of its own, prepared once when the weight is
    /// bound (the CPU packs `x @ W^T` weights into column panels, see kiln-cpu's `pack`).
    /// Set on a matmul's B operand only: an A operand or an attention operand is read as it
    /// lies whatever it is, and its kernel stays equal to one reading a buffer.
    pub from_input: bool,
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
    /// `out[b.., m, n] = sum_k a[b.., m, k] * b[b.., k, n]` for n in `0..n`, or with an
    /// epilogue `out[b.., m, n] = epilogue.body`, the products being taken at columns
    /// `n + epilogue.cols[slot]` of `b` (which may be wider than the output).
    MatMul {
        batch: Vec<Expr>,
        m: Expr,
        n: Expr,
        k: Expr,
        a: Operand,
        b: Operand,
        epilogue: Option<Epilogue>,
    },
    /// A reduction and an elementwise map over the reduced row in one kernel (RMSNorm, a
    /// softmax step, RoPE of a normalised row): for each output row (every axis but the last,
    /// `v0..v(r-2)`), `acc` = reduce over `Var(r)` in `0..len` of `body` (which reads through
    /// the row's variables), then `out[row, v(r-1)] = map` for every `v(r-1)` of the last axis,
    /// with `Acc(0)` in `map` standing for `acc`. One work unit per row. With `write`, the rows
    /// are those of a part of the output, which the step updates in place (as `Write`): a KV
    /// cache write of normalised, rotated keys.
    ReduceMap {
        op: ReduceOp,
        len: Expr,
        body: ScalarExpr,
        map: ScalarExpr,
        write: Option<RowWrite>,
    },
    /// `out[b.., i, :] = sum_j softmax_j(score) * v[b.., j, :]` over keys `j` in `0..n`, where
    /// `Acc(0)` in `score` is the product `q[b.., i, :] . kt[b.., :, j]` (depth `k`) and loads
    /// in `score` use `v0..` batch, `v(r-2)` = i, `v(r-1)` = j. Softmax is the graph's
    /// composite (`exp2((x - max) * log2 e) / sum`), computed online over key blocks: no
    /// score is stored. Output `[b.., m, dv]`; one work unit per block of rows of a batch,
    /// so query heads that share a KV head (rows of one batch) share every K and V load.
    Attention {
        batch: Vec<Expr>,
        m: Expr,
        n: Expr,
        k: Expr,
        dv: Expr,
        q: Operand,
        kt: Operand,
        v: Operand,
        score: ScalarExpr,
        /// Where row (b.., i) goes when the output is not `[b.., m, dv]` itself but a view of
        /// it that keeps each row's `dv` values together (grouped-query attention's
        /// `[kv, group * s, d]` written as `[s, heads * d]`, what the output projection
        /// reads): the flat offset of the row's first value, in the batch variables `v0..`
        /// and the row variable `v(r-2)`; its values follow at stride 1. `None`: contiguous.
        out_rows: Option<Expr>,
    },
}

/// The part of its output a row kernel writes in place (`KernelKind::ReduceMap::write`): its
/// rows are those of `shape` (loop variables `v0..`, the last axis the map's), element `v` is
/// stored at `v_axis + start` along `axis` of the output, as a `Write` stores it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RowWrite {
    pub shape: Vec<Expr>,
    pub axis: usize,
    pub start: Expr,
}

/// What a matmul computes from its products before it stores an element (a residual add,
/// SiLU(gate) * up). `Acc(slot)` in `body` is the product at the output's row and at column
/// `n + cols[slot]` of the product; loads in `body` use the output's loop variables
/// (`v0..` batch, then m, then n). A backend computes one product per slot and element.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Epilogue {
    pub cols: Vec<Expr>,
    pub body: ScalarExpr,
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
            KernelKind::MatMul { epilogue: None, .. } => "matmul".into(),
            KernelKind::MatMul { .. } => "matmul_epilogue".into(),
            KernelKind::ReduceMap { op, .. } => format!("reduce_{op:?}_map").to_lowercase(),
            KernelKind::Attention { .. } => "attention".into(),
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
                epilogue,
            } => {
                for e in batch.iter().chain([m, n, k]) {
                    e.symbols(&mut s);
                }
                if let Some(ep) = epilogue {
                    for c in &ep.cols {
                        c.symbols(&mut s);
                    }
                    ep.body.symbols(&mut s);
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
            KernelKind::ReduceMap {
                len,
                body,
                map,
                write,
                ..
            } => {
                if let Some(w) = write {
                    for e in w.shape.iter().chain([&w.start]) {
                        e.symbols(&mut s);
                    }
                }
                len.symbols(&mut s);
                body.symbols(&mut s);
                map.symbols(&mut s);
            }
            KernelKind::Attention {
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
            } => {
                for e in batch.iter().chain([m, n, k, dv]).chain(out_rows) {
                    e.symbols(&mut s);
                }
                for o in [q, kt, v] {
                    for e in o
                        .batch_strides
                        .iter()
                        .chain([&o.offset, &o.row_stride, &o.col_stride])
                    {
                        e.symbols(&mut s);
                    }
                }
                score.symbols(&mut s);
            }
        }
        s.into_iter().collect()
    }

    /// The same kernel with every index and size expression in it mapped by `f`.
    pub fn map_exprs(&self, f: &impl Fn(&Expr) -> Expr) -> Kernel {
        let all = |v: &[Expr]| v.iter().map(f).collect::<Vec<_>>();
        let operand = |o: &Operand| Operand {
            offset: f(&o.offset),
            batch_strides: all(&o.batch_strides),
            row_stride: f(&o.row_stride),
            col_stride: f(&o.col_stride),
            ..o.clone()
        };
        let kind = match &self.kind {
            KernelKind::Elementwise { lets, body } => KernelKind::Elementwise {
                lets: lets
                    .iter()
                    .map(|l| Let {
                        var: l.var,
                        value: l.value.map_indices(f),
                        rows: f(&l.rows),
                    })
                    .collect(),
                body: body.map_indices(f),
            },
            KernelKind::Reduce {
                op,
                axis,
                len,
                body,
            } => KernelKind::Reduce {
                op: *op,
                axis: *axis,
                len: f(len),
                body: body.map_indices(f),
            },
            KernelKind::Write {
                shape,
                axis,
                start,
                body,
            } => KernelKind::Write {
                shape: all(shape),
                axis: *axis,
                start: f(start),
                body: body.map_indices(f),
            },
            KernelKind::MatMul {
                batch,
                m,
                n,
                k,
                a,
                b,
                epilogue,
            } => KernelKind::MatMul {
                batch: all(batch),
                m: f(m),
                n: f(n),
                k: f(k),
                a: operand(a),
                b: operand(b),
                epilogue: epilogue.as_ref().map(|e| Epilogue {
                    cols: all(&e.cols),
                    body: e.body.map_indices(f),
                }),
            },
            KernelKind::ReduceMap {
                op,
                len,
                body,
                map,
                write,
            } => KernelKind::ReduceMap {
                op: *op,
                len: f(len),
                body: body.map_indices(f),
                map: map.map_indices(f),
                write: write.as_ref().map(|w| RowWrite {
                    shape: all(&w.shape),
                    axis: w.axis,
                    start: f(&w.start),
                }),
            },
            KernelKind::Attention {
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
            } => KernelKind::Attention {
                batch: all(batch),
                m: f(m),
                n: f(n),
                k: f(k),
                dv: f(dv),
                q: operand(q),
                kt: operand(kt),
                v: operand(v),
                score: score.map_indices(f),
                out_rows: out_rows.as_ref().map(f),
            },
        };
        Kernel {
            kind,
            out_dtype: self.out_dtype,
            out_shape: all(&self.out_shape),
            inputs: self.inputs.clone(),
        }
    }

    /// The kernel with its symbols named by their place: the `i`-th of [`Kernel::symbols`]
    /// becomes [`canonical_symbol`]`(i)`. Two launches whose kernels differ only in the names
    /// of their symbols (the same attention over KV cache slot 0's `n0`, `p0` and slot 3's
    /// `n3`, `p3`) share one canonical kernel, so one compiled kernel; each launch binds its
    /// own symbols to the canonical names ([`launch_bindings`]).
    pub fn canonical(&self) -> Kernel {
        let names = self.symbols();
        if names.is_empty() {
            return self.clone();
        }
        let rename = |s: &str| {
            let i = names.binary_search_by(|n| n.as_str().cmp(s));
            canonical_symbol(i.expect("a symbol of the kernel"))
        };
        self.map_exprs(&|e| e.rename_symbols(&rename))
    }

    /// How many elements one launch writes: the whole output, or the written part of an
    /// in-place update.
    pub fn written_elements(&self) -> Expr {
        kiln_ir::numel(self.iteration_shape())
    }

    /// The shape an elementwise, write or row kernel iterates over: the written part of an
    /// in-place update (`Write`, `ReduceMap` with `write`), else the output's.
    pub fn iteration_shape(&self) -> &[Expr] {
        match &self.kind {
            KernelKind::Write { shape, .. }
            | KernelKind::ReduceMap {
                write: Some(RowWrite { shape, .. }),
                ..
            } => shape,
            _ => &self.out_shape,
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
            KernelKind::MatMul { epilogue, .. } => {
                2 + epilogue.as_ref().map_or(0, |e| e.body.op_count())
            }
            KernelKind::ReduceMap { body, map, .. } => body.op_count() + map.op_count() + 1,
            KernelKind::Attention { score, .. } => score.op_count() + 8,
        }
    }
}

/// The name of a canonical kernel's `i`-th symbol ([`Kernel::canonical`]). The names sort in
/// `i`'s order, so a canonical kernel's symbol parameters keep the order of the original's.
pub fn canonical_symbol(i: usize) -> String {
    format!("a{i:03}")
}

/// The bindings of a canonical kernel's symbols for one launch: `canonical_symbol(i)` is bound
/// to `b[symbols[i]]`, `symbols` being the launch's own kernel's [`Kernel::symbols`].
pub fn launch_bindings(symbols: &[String], b: &Bindings) -> Result<Bindings, IrError> {
    symbols
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v = b.get(s).ok_or_else(|| IrError::UnboundSymbol {
                symbol: s.clone(),
                bound: b.keys().cloned().collect(),
            })?;
            Ok((canonical_symbol(i), *v))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `out[v0, v1] = in[(o + v0) * 8 + v1]` over `[n, 8]`, reading `o` and `n` (a slot's
    /// rows of a batched forward).
    fn rows_of_slot(n: &str, o: &str) -> Kernel {
        let offset = Expr::sym(o).add(Expr::Var(0)).mul(8).add(Expr::Var(1));
        Kernel {
            kind: KernelKind::Elementwise {
                lets: Vec::new(),
                body: ScalarExpr::Load {
                    input: 0,
                    offset,
                    dtype: DType::F32,
                },
            },
            out_dtype: DType::F32,
            out_shape: vec![Expr::sym(n), Expr::Const(8)],
            inputs: vec![DType::F32],
        }
    }

    #[test]
    fn kernels_that_differ_only_in_symbol_names_have_one_canonical_form() {
        let (slot0, slot3) = (rows_of_slot("n0", "o0"), rows_of_slot("n3", "o3"));
        assert_ne!(slot0, slot3);
        assert_eq!(slot0.canonical(), slot3.canonical());
        assert_eq!(slot3.canonical(), rows_of_slot("a000", "a001"));
        // Each launch binds its own symbols, by place.
        let b: Bindings = [("n0", 2), ("o0", 0), ("n3", 5), ("o3", 7)]
            .map(|(s, v)| (s.to_string(), v))
            .into();
        let at3 = launch_bindings(&slot3.symbols(), &b).unwrap();
        assert_eq!(
            at3,
            [("a000".to_string(), 5), ("a001".to_string(), 7)].into()
        );
        // A kernel that reads the same structure through different symbols is another kernel.
        assert_ne!(
            rows_of_slot("n0", "o0").canonical(),
            rows_of_slot("o0", "n0").canonical()
        );
        let missing = launch_bindings(&["q".to_string()], &b).unwrap_err();
        assert!(matches!(missing, IrError::UnboundSymbol { symbol, .. } if symbol == "q"));
    }
}

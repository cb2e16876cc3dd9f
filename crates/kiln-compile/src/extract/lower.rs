//! Lowering: each realized node becomes one canonical [`Kernel`] reading the buffers it needs,
//! numbered in order of first use; inlined nodes become its loop body, views its index
//! arithmetic.

use super::fusion::{read_counts, Realized};
use super::{Buffer, Program, Step};
use kiln_ir::{contiguous_strides, DType, Expr, Graph, NodeId, Op, ViewOp};
use kiln_program::{Epilogue, Kernel, KernelKind, Let, Operand, RowWrite, ScalarExpr};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

struct Builder<'g> {
    graph: &'g Graph,
    realized: &'g Realized,
    buffer_of: HashMap<NodeId, usize>,
    /// How often each node is read (through views too).
    read_counts: Vec<usize>,
    /// Indices already simplified within loop extents: every layer lowers the same kernels,
    /// and the normal forms cost more than the rest of lowering.
    in_bounds: InBounds,
}

/// A memo of [`Expr::simplify_in_bounds`] by expression and extents.
#[derive(Default)]
struct InBounds(RefCell<HashMap<(Expr, Vec<Expr>), Expr>>);

impl InBounds {
    fn simplify(&self, e: &Expr, extents: &[Expr]) -> Expr {
        let key = (e.clone(), extents.to_vec());
        if let Some(done) = self.0.borrow().get(&key) {
            return done.clone();
        }
        let bounds: BTreeMap<u32, Expr> = extents
            .iter()
            .enumerate()
            .map(|(i, d)| (i as u32, d.clone()))
            .collect();
        let simpler = e.simplify_in_bounds(&bounds);
        self.0.borrow_mut().insert(key, simpler.clone());
        simpler
    }
}

/// Lowers one kernel: collects the buffers it reads, numbered in order of first use.
struct Lowering<'a, 'g> {
    b: &'a Builder<'g>,
    root: NodeId,
    reads: Vec<NodeId>,
    /// The node whose buffer the kernel updates in place, if any.
    in_place: Option<NodeId>,
    /// The root's own index (its loop variables), set while an elementwise root or an
    /// in-place write's part is lowered: only such a kernel can compute a fused reduction (and
    /// only an elementwise one a fused matmul).
    fusing: Option<Vec<Expr>>,
    /// The shape those loop variables run over: the root's, or the written part's.
    fusing_shape: Vec<Expr>,
    /// The reduction this kernel computes (an unrealized reduce it reads) and where.
    reduce: Option<(NodeId, Vec<Expr>)>,
    /// The reduction is read at an index computed from the row variables through views
    /// (not the row variables themselves), and whether one read of it lies outside every
    /// [`Lowering::selects`]: see `fused_reduce`.
    reduce_through_views: bool,
    reduce_read_unshifted: bool,
    /// How many branches of a concatenation or slice write enclose what is being lowered: an
    /// index there is shifted, in range only where the branch is taken.
    selects: usize,
    /// The matmul whose products this kernel's epilogue reads, and the column offsets.
    matmul: Option<(NodeId, Vec<Expr>)>,
    /// A fused node read where this kernel cannot compute it: realize it and lower again.
    unfusable: Option<NodeId>,
    /// While an attention's score is lowered: its `Q K^T` product, read as `Acc(0)`.
    scores_of: Option<NodeId>,
}

/// Lowers every realized node, or returns the matmul operands that must be realized first.
pub fn build(graph: &Graph, realized: &Realized) -> Result<Program, Vec<NodeId>> {
    let mut b = Builder {
        graph,
        realized,
        buffer_of: HashMap::new(),
        read_counts: read_counts(graph),
        in_bounds: InBounds::default(),
    };
    let mut buffers = Vec::new();
    let mut steps = Vec::new();
    let mut failed = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let id = NodeId(i as u32);
        if !realized[i] {
            continue;
        }
        // A kernel is a few microseconds of work: an interrupted compile stops here.
        if crate::cancel::requested() {
            crate::cancel::discard((buffers, steps));
            return Err(Vec::new());
        }
        let input = match &node.op {
            Op::Input { name } => Some(name.clone()),
            _ => None,
        };
        let is_input = input.is_some();
        b.buffer_of.insert(id, buffers.len());
        buffers.push(Buffer {
            dtype: node.dtype,
            shape: node.shape.clone(),
            input,
        });
        if is_input {
            continue;
        }
        let mut l = Lowering {
            b: &b,
            root: id,
            reads: Vec::new(),
            in_place: None,
            fusing: None,
            fusing_shape: Vec::new(),
            reduce: None,
            reduce_through_views: false,
            reduce_read_unshifted: false,
            selects: 0,
            matmul: None,
            unfusable: None,
            scores_of: None,
        };
        let kind = match l.kernel_kind() {
            Ok(k) => k,
            Err(operand) => {
                failed.push(operand);
                continue;
            }
        };
        let inputs: Vec<usize> = l.reads.iter().map(|r| b.buffer_of[r]).collect();
        steps.push(Step {
            kernel: Kernel {
                kind,
                out_dtype: node.dtype,
                out_shape: node.shape.clone(),
                inputs: l.reads.iter().map(|r| graph.dtype(*r)).collect(),
            },
            output: b.buffer_of[&id],
            inputs,
            writes_into: l.in_place.map(|n| b.buffer_of[&n]),
        });
    }
    if !failed.is_empty() {
        return Err(failed);
    }
    assert_eq!(
        steps.len(),
        buffers.iter().filter(|b| b.input.is_none()).count(),
        "every realized node has exactly one kernel"
    );
    let outputs = graph
        .outputs
        .iter()
        .map(|(n, id)| (n.clone(), b.buffer_of[id]))
        .collect();
    Ok(Program {
        graph: graph.clone(),
        buffers,
        steps,
        outputs,
    })
}

/// The program of an interrupted extraction: no kernels (see `extract_with`).
pub fn empty() -> Program {
    Program {
        graph: Graph::new(),
        buffers: Vec::new(),
        steps: Vec::new(),
        outputs: Vec::new(),
    }
}

/// An elementwise body's (or a row kernel's) indices simplified with its loop variables'
/// extents (`shape`, `Var(i)` over `shape[i]`; `memo` across the layers' equal kernels): the
/// divisions that unflatten an index read through reshapes (`(h * s * 128 + i * 128 + j) /
/// (s * 128)`) go where the extents decide them (see [`Expr::simplify_in_bounds`]). An index
/// is replaced only where that leaves fewer divisions: other kernels keep their text.
fn within_extents(memo: &InBounds, body: ScalarExpr, shape: &[Expr]) -> ScalarExpr {
    body.map_indices(&|e| {
        let divisions = divisions(e);
        if divisions == 0 {
            return e.clone();
        }
        let simpler = memo.simplify(e, shape);
        if self::divisions(&simpler) < divisions {
            simpler
        } else {
            e.clone()
        }
    })
}

/// Whether every loop variable in `e` is below `Var(last)`.
fn vars_below(e: &Expr, last: usize) -> bool {
    let mut below = true;
    e.visit(&mut |x| {
        if let Expr::Var(i) = x {
            below &= (*i as usize) < last;
        }
    });
    below
}

/// How many `/` and `%` an index computes.
fn divisions(e: &Expr) -> usize {
    let mut n = 0;
    e.visit(&mut |x| n += matches!(x, Expr::Div(..) | Expr::Mod(..)) as usize);
    n
}

fn vars(rank: usize, shape: &[Expr]) -> Vec<Expr> {
    // Size-1 axes always have index 0: say so, which keeps index arithmetic simple.
    (0..rank)
        .map(|i| {
            if shape[i].is_const(1) {
                Expr::Const(0)
            } else {
                Expr::Var(i as u32)
            }
        })
        .collect()
}

impl Lowering<'_, '_> {
    fn kernel_kind(&mut self) -> Result<KernelKind, NodeId> {
        let g = self.b.graph;
        let node = g.node(self.root);
        let rank = node.shape.len();
        match &node.op {
            Op::Reduce(op, x, axis) => {
                let len = g.shape(*x)[*axis].clone();
                let mut idx = vars(rank, &node.shape);
                idx[*axis] = if len.is_const(1) {
                    Expr::Const(0)
                } else {
                    Expr::Var(*axis as u32)
                };
                let body = self.at(*x, &idx);
                Ok(KernelKind::Reduce {
                    op: *op,
                    axis: *axis,
                    len,
                    body,
                })
            }
            Op::MatMul(..) if self.attention_at(self.root).is_some() => {
                let a = self.attention_at(self.root).expect("checked");
                self.attention_kind(&a, None)
            }
            // The view of an attention's output that its reader needs (fusion pass 8): the
            // attention kernel writes each row where the view puts it.
            Op::View(..) if self.attention_under_view().is_some() => {
                let a = self.attention_under_view().expect("checked");
                let rows = super::attention::output_rows(g, a.pv, self.root).ok_or(a.pv)?;
                let rows = self.b.in_bounds.simplify(&rows, g.shape(a.pv));
                self.attention_kind(&a, Some(rows))
            }
            Op::MatMul(a, b) => {
                let r = rank;
                let batch = node.shape[..r - 2].to_vec();
                let (m, n) = (node.shape[r - 2].clone(), node.shape[r - 1].clone());
                let k = g.shape(*a)[r - 1].clone();
                let a = self.operand(*a, r, false)?;
                let b = self.operand(*b, r, true)?;
                Ok(KernelKind::MatMul {
                    batch,
                    m,
                    n,
                    k,
                    a,
                    b,
                    epilogue: None,
                })
            }
            // In place where the written buffer has no other reader: only the new part is
            // written. Otherwise a copy of `dst` with the new part (see `inline`).
            Op::WriteSlice {
                dst,
                src,
                axis,
                start,
            } if self.b.realized[dst.index()] && self.b.read_counts[dst.index()] == 1 => {
                let shape = g.shape(*src).to_vec();
                let idx = vars(rank, &shape);
                // The part may be a row kernel's rows (fusion pass 6: a KV cache write of
                // normalised keys reduces each head's row first).
                self.fusing = Some(idx.clone());
                self.fusing_shape = shape.clone();
                let body = self.at(*src, &idx);
                self.fusing = None;
                self.in_place = Some(*dst);
                let (axis, start) = (*axis, start.clone());
                match self.fused_kind(body)? {
                    KernelKind::ReduceMap {
                        op, len, body, map, ..
                    } => {
                        let row = [shape.as_slice(), std::slice::from_ref(&len)].concat();
                        Ok(KernelKind::ReduceMap {
                            op,
                            body: within_extents(&self.b.in_bounds, body, &row),
                            map: within_extents(&self.b.in_bounds, map, &shape),
                            len,
                            write: Some(RowWrite { shape, axis, start }),
                        })
                    }
                    KernelKind::Elementwise { body, .. } => Ok(KernelKind::Write {
                        shape,
                        axis,
                        start,
                        body,
                    }),
                    _ => unreachable!("a write's part computes no matmul"),
                }
            }
            Op::Gather(table, ids) => {
                let var = rank as u32;
                let value = self.at(*ids, &[Expr::Var(0)]);
                let body = self.at(*table, &[Expr::Var(var), Expr::Var(1)]);
                let rows = g.shape(*table)[0].clone();
                Ok(KernelKind::Elementwise {
                    lets: vec![Let { var, value, rows }],
                    body,
                })
            }
            _ => {
                let idx = vars(rank, &node.shape);
                self.fusing = Some(idx.clone());
                self.fusing_shape = node.shape.clone();
                let body = self.inline(self.root, &idx);
                self.fusing = None;
                self.fused_kind(body).map(|kind| match kind {
                    KernelKind::Elementwise { lets, body } if lets.is_empty() => {
                        let body = within_extents(&self.b.in_bounds, body, &node.shape);
                        KernelKind::Elementwise { lets, body }
                    }
                    // The reduction's own variable, `Var(rank)`, runs over `len`.
                    KernelKind::ReduceMap {
                        op, len, body, map, ..
                    } => {
                        let row = [node.shape.as_slice(), std::slice::from_ref(&len)].concat();
                        KernelKind::ReduceMap {
                            op,
                            body: within_extents(&self.b.in_bounds, body, &row),
                            map: within_extents(&self.b.in_bounds, map, &node.shape),
                            len,
                            write: None,
                        }
                    }
                    other => other,
                })
            }
        }
        .and_then(|k| match self.unfusable {
            Some(x) => Err(x),
            None => Ok(k),
        })
    }

    /// The attention whose value product is `pv`, if fusion gave its nodes away.
    fn attention_at(&self, pv: NodeId) -> Option<super::attention::Attention> {
        let a = super::attention::at(self.b.graph, pv, self.b.realized)?;
        a.inner
            .iter()
            .all(|x| !self.b.realized[x.index()])
            .then_some(a)
    }

    /// The attention under this root, a view, when the value product has no buffer of its
    /// own (fusion pass 8): the view's kernel computes it.
    fn attention_under_view(&self) -> Option<super::attention::Attention> {
        let g = self.b.graph;
        let mut x = self.root;
        while let Op::View(_, src) = g.node(x).op {
            if x != self.root && self.b.realized[x.index()] {
                return None;
            }
            x = src;
        }
        let unrealized_matmul =
            matches!(g.node(x).op, Op::MatMul(..)) && !self.b.realized[x.index()];
        unrealized_matmul.then(|| self.attention_at(x)).flatten()
    }

    /// The attention kernel: the score at element (b.., i, j) is X at the same flat position
    /// (row b.., i of the product, key j), with `Q K^T` there as `Acc(0)`. Its rows are stored
    /// contiguously (`out_rows` `None`) or at `out_rows`.
    fn attention_kind(
        &mut self,
        a: &super::attention::Attention,
        out_rows: Option<Expr>,
    ) -> Result<KernelKind, NodeId> {
        let g = self.b.graph;
        let shape = g.shape(a.pv).to_vec();
        let r = shape.len();
        let (Op::MatMul(pa, v), Op::MatMul(q, kt)) = (&g.node(a.pv).op, &g.node(a.qk).op) else {
            unreachable!("matmuls")
        };
        let keys = g.shape(*pa)[r - 1].clone();
        let own = vars(r, &shape);
        let row_strides = contiguous_strides(&shape[..r - 1]);
        let row = own[..r - 1]
            .iter()
            .zip(&row_strides)
            .fold(Expr::Const(0), |acc, (i, s)| {
                acc.add(i.clone().mul(s.clone()))
            });
        let xshape = g.shape(a.x).to_vec();
        let xr = xshape.len();
        let xstrides = contiguous_strides(&xshape[..xr - 1]);
        let mut xidx: Vec<Expr> = (0..xr - 1)
            .map(|l| {
                if xshape[l].is_const(1) {
                    Expr::Const(0)
                } else if l == 0 {
                    row.clone().div(xstrides[0].clone())
                } else {
                    row.clone().div(xstrides[l].clone()).rem(xshape[l].clone())
                }
            })
            .collect();
        xidx.push(if keys.is_const(1) {
            Expr::Const(0)
        } else {
            Expr::Var(r as u32 - 1)
        });
        self.scores_of = Some(a.qk);
        // The score reads its operands (a mask, say) at `[row.., key]` flattened and then
        // unflattened again: with the loop variables' extents known, `(row * T + key) / T` is
        // `row` and `% T` is `key`, two divisions fewer per score.
        let extents: BTreeMap<u32, Expr> = (0..r as u32)
            .map(|l| {
                (
                    l,
                    if l + 1 == r as u32 {
                        keys.clone()
                    } else {
                        shape[l as usize].clone()
                    },
                )
            })
            .collect();
        let score = self
            .at(a.x, &xidx)
            .map_indices(&|e| e.simplify_within(&extents));
        self.scores_of = None;
        let depth = g.shape(*q)[r - 1].clone();
        let q = self.operand(*q, r, false)?;
        let kt = self.operand(*kt, r, false)?;
        let v = self.operand(*v, r, false)?;
        Ok(KernelKind::Attention {
            batch: shape[..r - 2].to_vec(),
            m: shape[r - 2].clone(),
            n: keys,
            k: depth,
            dv: shape[r - 1].clone(),
            q,
            kt,
            v,
            score,
            out_rows,
        })
    }

    /// An elementwise root's kernel: plain, or computing the reduction or the matmul products
    /// its body read (see `fused_reduce` and `fused_matmul`).
    fn fused_kind(&mut self, body: ScalarExpr) -> Result<KernelKind, NodeId> {
        let g = self.b.graph;
        let shape = self.fusing_shape.clone();
        let rank = shape.len();
        if let Some((x, idx)) = self.reduce.clone() {
            if self.reduce_through_views && !self.reduce_read_unshifted {
                return Err(x);
            }
            let Op::Reduce(op, src, axis) = g.node(x).op else {
                unreachable!("a reduce")
            };
            let len = g.shape(src)[axis].clone();
            let mut ridx = idx;
            ridx[axis] = if len.is_const(1) {
                Expr::Const(0)
            } else {
                Expr::Var(rank as u32)
            };
            let reduced = self.at(src, &ridx);
            return Ok(KernelKind::ReduceMap {
                op,
                len,
                body: reduced,
                map: body,
                write: None,
            });
        }
        if let Some((x, cols)) = self.matmul.clone() {
            let Op::MatMul(a, b) = g.node(x).op else {
                unreachable!("a matmul")
            };
            let k = g.shape(a)[rank - 1].clone();
            let a = self.operand(a, rank, false)?;
            let b = self.operand(b, rank, true)?;
            return Ok(KernelKind::MatMul {
                batch: shape[..rank - 2].to_vec(),
                m: shape[rank - 2].clone(),
                n: shape[rank - 1].clone(),
                k,
                a,
                b,
                epilogue: Some(Epilogue { cols, body }),
            });
        }
        Ok(KernelKind::Elementwise { lets: vec![], body })
    }

    /// Records that node `x` cannot be fused here; the value returned stands in for it.
    fn unfusable(&mut self, x: NodeId) -> ScalarExpr {
        self.unfusable.get_or_insert(x);
        ScalarExpr::Const {
            bits: 0,
            dtype: self.b.graph.dtype(x),
        }
    }

    /// An unrealized reduction read by an elementwise root at `idx` (the reduced axis at 0):
    /// the kernel reduces each of its rows first. Every read must be at the same index, which
    /// must name a reduced row that exists for every row of the kernel, and must not change
    /// along the kernel's last axis. Either the index is the root's row variables over equal
    /// dimensions, or (simplified with the loop extents) an expression of the row variables
    /// reached through views: views map an index in range to one in range, so such an index is
    /// in range wherever no concatenation or slice write shifted it (the kernel must read the
    /// reduction once outside every such branch; with one index for every read, all are in
    /// range). The second form is a RoPE of normalised heads read through the
    /// `[kv, group * s, d]` reshape of grouped-query attention.
    fn fused_reduce(&mut self, x: NodeId, idx: &[Expr]) -> ScalarExpr {
        let g = self.b.graph;
        let Some(own) = self.fusing.clone() else {
            return self.unfusable(x);
        };
        let Op::Reduce(_, _, axis) = g.node(x).op else {
            unreachable!("a reduce")
        };
        let (rshape, eshape) = (g.shape(x), self.fusing_shape.as_slice());
        let last = own.len().wrapping_sub(1);
        let idx: Vec<Expr> = idx
            .iter()
            .map(|e| self.b.in_bounds.simplify(e, eshape))
            .collect();
        let in_row = |j: usize, e: &Expr| match e {
            Expr::Var(i) => {
                let i = *i as usize;
                j != axis && i < last && rshape[j].provably_equal(&eshape[i])
            }
            _ => e.is_const(0) && (j == axis || rshape[j].is_const(1)),
        };
        let direct = idx.iter().enumerate().all(|(j, e)| in_row(j, e));
        let through_views = !direct && idx.iter().all(|e| vars_below(e, last));
        let fits = !own.is_empty()
            && idx.len() == rshape.len()
            && idx[axis].is_const(0)
            && (direct || through_views)
            && self.matmul.is_none()
            && self
                .reduce
                .as_ref()
                .is_none_or(|(r, at)| *r == x && *at == idx);
        if !fits {
            return self.unfusable(x);
        }
        self.reduce_through_views |= through_views;
        self.reduce_read_unshifted |= self.selects == 0;
        self.reduce = Some((x, idx));
        ScalarExpr::Acc {
            slot: 0,
            dtype: g.dtype(x),
        }
    }

    /// An unrealized matmul read by an elementwise root at `idx`: the root's batch and row
    /// variables, and its column variable plus a constant offset that keeps every product
    /// column inside the matmul; each offset is one product per element (an `Acc` slot).
    fn fused_matmul(&mut self, x: NodeId, idx: &[Expr]) -> ScalarExpr {
        let g = self.b.graph;
        // A write's part has no matmul epilogue.
        let writes = matches!(g.node(self.root).op, Op::WriteSlice { .. });
        let Some(own) = self.fusing.clone().filter(|_| !writes) else {
            return self.unfusable(x);
        };
        let (mshape, eshape) = (g.shape(x), g.shape(self.root));
        let r = own.len();
        if r < 2 || mshape.len() != r || self.reduce.is_some() {
            return self.unfusable(x);
        }
        let rows_match = (0..r - 1).all(|i| {
            idx[i].normalize() == own[i].normalize() && mshape[i].provably_equal(&eshape[i])
        });
        let col = idx[r - 1].clone().sub(own[r - 1].clone()).normalize();
        let inside = mshape[r - 1]
            .clone()
            .sub(eshape[r - 1].clone())
            .sub(col.clone())
            .provably_nonneg();
        let same = self.matmul.as_ref().is_none_or(|(m, _)| *m == x);
        if !rows_match || col.has_vars() || !col.provably_nonneg() || !inside || !same {
            return self.unfusable(x);
        }
        let cols = &mut self.matmul.get_or_insert_with(|| (x, Vec::new())).1;
        let slot = match cols.iter().position(|c| c.provably_equal(&col)) {
            Some(s) => s,
            None => {
                cols.push(col);
                cols.len() - 1
            }
        };
        ScalarExpr::Acc {
            slot,
            dtype: g.dtype(x),
        }
    }

    /// A matmul operand as a strided view: its index (batch.., row, col) uses Var(0..rank).
    /// `weight_side`: the operand is a product's B, the only one a device may keep in a
    /// layout of its own ([`Operand::from_input`]); elsewhere `from_input` stays false, so
    /// that a kernel reading a graph input and one reading a buffer in that place are equal.
    fn operand(&mut self, x: NodeId, rank: usize, weight_side: bool) -> Result<Operand, NodeId> {
        let idx: Vec<Expr> = (0..rank).map(|i| Expr::Var(i as u32)).collect();
        match self.at(x, &idx) {
            ScalarExpr::Load {
                input,
                offset,
                dtype,
            } => {
                let (coeffs, offset) = offset.affine(rank).ok_or(x)?;
                let from_input = weight_side
                    && matches!(self.b.graph.node(self.reads[input]).op, Op::Input { .. });
                Ok(Operand {
                    input,
                    from_input,
                    dtype,
                    offset,
                    batch_strides: coeffs[..rank - 2].to_vec(),
                    row_stride: coeffs[rank - 2].clone(),
                    col_stride: coeffs[rank - 1].clone(),
                })
            }
            _ => Err(x),
        }
    }

    fn load(&mut self, x: NodeId, offset: Expr) -> ScalarExpr {
        let input = match self.reads.iter().position(|r| *r == x) {
            Some(i) => i,
            None => {
                self.reads.push(x);
                self.reads.len() - 1
            }
        };
        ScalarExpr::Load {
            input,
            offset,
            dtype: self.b.graph.dtype(x),
        }
    }

    /// The value of node `x` at index `idx`: a load if it has a buffer, else its inlined body.
    fn at(&mut self, x: NodeId, idx: &[Expr]) -> ScalarExpr {
        if self.b.realized[x.index()] && x != self.root {
            let strides = contiguous_strides(self.b.graph.shape(x));
            let offset = idx
                .iter()
                .zip(strides)
                .fold(Expr::Const(0), |acc, (i, s)| acc.add(i.clone().mul(s)));
            return self.load(x, offset);
        }
        self.inline(x, idx)
    }

    /// The value at flat (row-major) position `flat` of node `x`.
    fn at_flat(&mut self, x: NodeId, flat: Expr) -> ScalarExpr {
        let g = self.b.graph;
        if self.b.realized[x.index()] && x != self.root {
            return self.load(x, flat);
        }
        if let Op::View(ViewOp::Reshape(_), src) = g.node(x).op {
            return self.at_flat(src, flat);
        }
        let shape = g.shape(x).to_vec();
        let strides = contiguous_strides(&shape);
        let idx: Vec<Expr> = (0..shape.len())
            .map(|i| {
                if shape[i].is_const(1) {
                    Expr::Const(0)
                } else if i == 0 {
                    flat.clone().div(strides[0].clone())
                } else {
                    flat.clone().div(strides[i].clone()).rem(shape[i].clone())
                }
            })
            .collect();
        self.inline(x, &idx)
    }

    fn inline(&mut self, x: NodeId, idx: &[Expr]) -> ScalarExpr {
        let g = self.b.graph;
        let node = g.node(x);
        let dtype = node.dtype;
        match &node.op {
            Op::Const { bits } => ScalarExpr::Const { bits: *bits, dtype },
            Op::Iota { axis } => ScalarExpr::Index {
                expr: idx[*axis].clone(),
                dtype,
            },
            Op::Unary(op, a) => ScalarExpr::Unary {
                op: *op,
                x: Box::new(self.at(*a, idx)),
                dtype,
            },
            Op::Binary(op, a, b) => {
                let a = self.at(*a, idx);
                let b = self.at(*b, idx);
                ScalarExpr::Binary {
                    op: *op,
                    a: Box::new(a),
                    b: Box::new(b),
                    dtype,
                }
            }
            Op::Where(c, a, b) => {
                let c = self.at(*c, idx);
                let a = self.at(*a, idx);
                let b = self.at(*b, idx);
                ScalarExpr::Where {
                    cond: Box::new(c),
                    a: Box::new(a),
                    b: Box::new(b),
                    dtype,
                }
            }
            Op::Concat(parts, axis) => self.concat(parts, *axis, idx, dtype),
            Op::WriteSlice {
                dst,
                src,
                axis,
                start,
            } => self.write_slice([*dst, *src], *axis, start, idx, dtype),
            Op::View(view, src) => self.view(view, *src, idx),
            Op::Reduce(..) => self.fused_reduce(x, idx),
            Op::MatMul(..) if self.scores_of == Some(x) => ScalarExpr::Acc {
                slot: 0,
                dtype: node.dtype,
            },
            Op::MatMul(..) => self.fused_matmul(x, idx),
            Op::Input { .. } | Op::Gather(..) => {
                unreachable!("realized nodes are loaded, never inlined")
            }
        }
    }

    /// Element `idx` of a concatenation: built from the last part backwards, `if i < end(part)
    /// { part } else { rest }`.
    fn concat(&mut self, parts: &[NodeId], axis: usize, idx: &[Expr], dtype: DType) -> ScalarExpr {
        let g = self.b.graph;
        let mut ends = Vec::new();
        let mut end = Expr::Const(0);
        for p in parts {
            end = end.add(g.shape(*p)[axis].clone());
            ends.push(end.clone());
        }
        let start_of = |j: usize| {
            if j == 0 {
                Expr::Const(0)
            } else {
                ends[j - 1].clone()
            }
        };
        let last = parts.len() - 1;
        let mut shifted = idx.to_vec();
        shifted[axis] = idx[axis].clone().sub(start_of(last));
        self.selects += 1;
        let mut e = self.at(parts[last], &shifted);
        for j in (0..last).rev() {
            let mut shifted = idx.to_vec();
            shifted[axis] = idx[axis].clone().sub(start_of(j));
            let then = self.at(parts[j], &shifted);
            e = ScalarExpr::Select {
                lhs: idx[axis].clone(),
                rhs: ends[j].clone(),
                then: Box::new(then),
                otherwise: Box::new(e),
                dtype,
            };
        }
        self.selects -= 1;
        e
    }

    /// Element `idx` of `dst` with the range from `start` along `axis` replaced by `src`: dst
    /// before the range, src inside it, dst after it.
    fn write_slice(
        &mut self,
        [dst, src]: [NodeId; 2],
        axis: usize,
        start: &Expr,
        idx: &[Expr],
        dtype: DType,
    ) -> ScalarExpr {
        let g = self.b.graph;
        let end = start.clone().add(g.shape(src)[axis].clone());
        let mut shifted = idx.to_vec();
        shifted[axis] = idx[axis].clone().sub(start.clone());
        self.selects += 1;
        let inside = self.at(src, &shifted);
        let outside = self.at(dst, idx);
        self.selects -= 1;
        ScalarExpr::Select {
            lhs: idx[axis].clone(),
            rhs: start.clone(),
            then: Box::new(outside.clone()),
            otherwise: Box::new(ScalarExpr::Select {
                lhs: idx[axis].clone(),
                rhs: end,
                then: Box::new(inside),
                otherwise: Box::new(outside),
                dtype,
            }),
            dtype,
        }
    }

    /// Element `idx` of a view of `src`: index arithmetic on `src`'s element.
    fn view(&mut self, view: &ViewOp, src: NodeId, idx: &[Expr]) -> ScalarExpr {
        let g = self.b.graph;
        match view {
            ViewOp::Reshape(shape) => {
                let strides = contiguous_strides(shape);
                let flat = idx
                    .iter()
                    .zip(strides)
                    .fold(Expr::Const(0), |acc, (i, s)| acc.add(i.clone().mul(s)));
                self.at_flat(src, flat)
            }
            ViewOp::Permute(perm) => {
                let mut j = vec![Expr::Const(0); idx.len()];
                for (i, &p) in perm.iter().enumerate() {
                    j[p] = idx[i].clone();
                }
                self.at(src, &j)
            }
            ViewOp::Slice { axis, start } => {
                let mut j = idx.to_vec();
                j[*axis] = j[*axis].clone().add(start.clone());
                self.at(src, &j)
            }
            ViewOp::Expand => {
                let from = g.shape(src);
                let j: Vec<Expr> = idx
                    .iter()
                    .zip(from)
                    .map(|(i, d)| {
                        if d.is_const(1) {
                            Expr::Const(0)
                        } else {
                            i.clone()
                        }
                    })
                    .collect();
                self.at(src, &j)
            }
        }
    }
}

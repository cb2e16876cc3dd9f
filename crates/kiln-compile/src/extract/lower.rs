//! Lowering: each realized node becomes one canonical [`Kernel`] reading the buffers it needs,
//! numbered in order of first use; inlined nodes become its loop body, views its index
//! arithmetic.

use super::fusion::{read_counts, Realized};
use super::{Buffer, Program, Step};
use crate::kernel::{Kernel, KernelKind, Let, Operand, ScalarExpr};
use kiln_ir::{contiguous_strides, Expr, Graph, NodeId, Op, ViewOp};
use std::collections::HashMap;

struct Builder<'g> {
    graph: &'g Graph,
    realized: &'g Realized,
    buffer_of: HashMap<NodeId, usize>,
    /// How often each node is read (through views too).
    read_counts: Vec<usize>,
}

/// Lowers one kernel: collects the buffers it reads, numbered in order of first use.
struct Lowering<'a, 'g> {
    b: &'a Builder<'g>,
    root: NodeId,
    reads: Vec<NodeId>,
    /// The node whose buffer the kernel updates in place, if any.
    in_place: Option<NodeId>,
}

/// Lowers every realized node, or returns the matmul operands that must be realized first.
pub fn build(graph: &Graph, realized: &Realized) -> Result<Program, Vec<NodeId>> {
    let mut b = Builder {
        graph,
        realized,
        buffer_of: HashMap::new(),
        read_counts: read_counts(graph),
    };
    let mut buffers = Vec::new();
    let mut steps = Vec::new();
    let mut failed = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let id = NodeId(i as u32);
        if !realized[i] {
            continue;
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
            Op::MatMul(a, b) => {
                let r = rank;
                let batch = node.shape[..r - 2].to_vec();
                let (m, n) = (node.shape[r - 2].clone(), node.shape[r - 1].clone());
                let k = g.shape(*a)[r - 1].clone();
                let a = self.operand(*a, r)?;
                let b = self.operand(*b, r)?;
                Ok(KernelKind::MatMul {
                    batch,
                    m,
                    n,
                    k,
                    a,
                    b,
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
                let body = self.at(*src, &vars(rank, &shape));
                self.in_place = Some(*dst);
                Ok(KernelKind::Write {
                    shape,
                    axis: *axis,
                    start: start.clone(),
                    body,
                })
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
                Ok(KernelKind::Elementwise {
                    lets: vec![],
                    body: self.inline(self.root, &idx),
                })
            }
        }
    }

    /// A matmul operand as a strided view: its index (batch.., row, col) uses Var(0..rank).
    fn operand(&mut self, x: NodeId, rank: usize) -> Result<Operand, NodeId> {
        let idx: Vec<Expr> = (0..rank).map(|i| Expr::Var(i as u32)).collect();
        match self.at(x, &idx) {
            ScalarExpr::Load {
                input,
                offset,
                dtype,
            } => {
                let (coeffs, offset) = offset.affine(rank).ok_or(x)?;
                Ok(Operand {
                    input,
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
            Op::Concat(parts, axis) => {
                // Built from the last part backwards: if i < end(part) { part } else { rest }.
                let mut ends = Vec::new();
                let mut end = Expr::Const(0);
                for p in parts {
                    end = end.add(g.shape(*p)[*axis].clone());
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
                shifted[*axis] = idx[*axis].clone().sub(start_of(last));
                let mut e = self.at(parts[last], &shifted);
                for j in (0..last).rev() {
                    let mut shifted = idx.to_vec();
                    shifted[*axis] = idx[*axis].clone().sub(start_of(j));
                    let then = self.at(parts[j], &shifted);
                    e = ScalarExpr::Select {
                        lhs: idx[*axis].clone(),
                        rhs: ends[j].clone(),
                        then: Box::new(then),
                        otherwise: Box::new(e),
                        dtype,
                    };
                }
                e
            }
            Op::WriteSlice {
                dst,
                src,
                axis,
                start,
            } => {
                // dst before the range, src inside it, dst after it.
                let end = start.clone().add(g.shape(*src)[*axis].clone());
                let mut shifted = idx.to_vec();
                shifted[*axis] = idx[*axis].clone().sub(start.clone());
                let inside = self.at(*src, &shifted);
                let outside = self.at(*dst, idx);
                ScalarExpr::Select {
                    lhs: idx[*axis].clone(),
                    rhs: start.clone(),
                    then: Box::new(outside.clone()),
                    otherwise: Box::new(ScalarExpr::Select {
                        lhs: idx[*axis].clone(),
                        rhs: end,
                        then: Box::new(inside),
                        otherwise: Box::new(outside),
                        dtype,
                    }),
                    dtype,
                }
            }
            Op::View(view, src) => match view {
                ViewOp::Reshape(shape) => {
                    let strides = contiguous_strides(shape);
                    let flat = idx
                        .iter()
                        .zip(strides)
                        .fold(Expr::Const(0), |acc, (i, s)| acc.add(i.clone().mul(s)));
                    self.at_flat(*src, flat)
                }
                ViewOp::Permute(perm) => {
                    let mut j = vec![Expr::Const(0); idx.len()];
                    for (i, &p) in perm.iter().enumerate() {
                        j[p] = idx[i].clone();
                    }
                    self.at(*src, &j)
                }
                ViewOp::Slice { axis, start } => {
                    let mut j = idx.to_vec();
                    j[*axis] = j[*axis].clone().add(start.clone());
                    self.at(*src, &j)
                }
                ViewOp::Expand => {
                    let from = g.shape(*src);
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
                    self.at(*src, &j)
                }
            },
            Op::Input { .. } | Op::Reduce(..) | Op::MatMul(..) | Op::Gather(..) => {
                unreachable!("realized nodes are loaded, never inlined")
            }
        }
    }
}

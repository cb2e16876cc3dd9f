//! Kernel extraction: partition the analysed graph into fused kernels.
//!
//! Rules, in order:
//! - inputs, reductions, matmuls, gathers and graph outputs are *realized* (own a buffer);
//! - an elementwise node read more than once is realized too (no recompute), except constants
//!   and iotas, which are free to recompute;
//! - everything else is inlined into its consumer's kernel: elementwise chains become one loop
//!   body, elementwise producers of a reduction become its prologue;
//! - views never own a buffer: they become index arithmetic in the loads that read through them;
//! - a matmul operand must be a strided view of a buffer; if it is not, it is realized first.

use crate::kernel::{Kernel, KernelKind, Let, Operand, ScalarExpr};
use kiln_ir::{contiguous_strides, numel, DType, Expr, Graph, NodeId, Op, ViewOp};
use std::collections::HashMap;

/// A buffer of the program: a graph input or a kernel output.
#[derive(Clone, Debug)]
pub struct Buffer {
    pub dtype: DType,
    pub shape: Vec<Expr>,
    /// The graph input that fills it, if any.
    pub input: Option<String>,
}

impl Buffer {
    pub fn bytes(&self) -> Expr {
        numel(&self.shape).mul(self.dtype.size_bytes() as i64)
    }
}

/// One kernel launch: `kernels[kernel]` writes `output` reading `inputs` (in kernel order).
#[derive(Clone, Debug)]
pub struct Step {
    pub kernel: usize,
    pub output: usize,
    pub inputs: Vec<usize>,
}

/// The graph as a sequence of kernel launches over buffers.
#[derive(Clone, Debug)]
pub struct Program {
    pub graph: Graph,
    pub buffers: Vec<Buffer>,
    pub steps: Vec<Step>,
    /// One kernel per step, before dedupe.
    pub kernels: Vec<Kernel>,
    pub outputs: Vec<(String, usize)>,
}

/// Where one graph output lies after a run.
pub struct OutputLayout<'p> {
    pub name: &'p str,
    pub buffer: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: usize,
}

impl Program {
    /// Binds the graph's symbols for one run from the bound params, the run's inputs and the
    /// values the executor carries over from the previous run, checking every input against
    /// its declaration (what each executor does first).
    pub fn bind_run<'a>(
        &self,
        params: impl Iterator<Item = (&'a str, &'a kiln_ir::Tensor)>,
        inputs: &'a std::collections::HashMap<String, kiln_ir::Tensor>,
        carried: impl Iterator<Item = (&'a str, DType, &'a [usize])>,
    ) -> Result<kiln_ir::Bindings, kiln_ir::IrError> {
        let mut all: std::collections::HashMap<&str, (DType, &[usize])> =
            params.map(|(n, t)| (n, (t.dtype(), t.shape()))).collect();
        all.extend(
            inputs
                .iter()
                .map(|(n, t)| (n.as_str(), (t.dtype(), t.shape()))),
        );
        for (name, dtype, shape) in carried {
            if inputs.contains_key(name) {
                return Err(kiln_ir::IrError::Input {
                    name: name.into(),
                    detail: "is carried over from the previous run by the executor; do not pass it"
                        .into(),
                });
            }
            all.insert(name, (dtype, shape));
        }
        self.graph.bind_shapes(&all, &kiln_ir::Bindings::new())
    }

    /// Each output's buffer and concrete shape under bindings `b`.
    pub fn output_layouts(
        &self,
        b: &kiln_ir::Bindings,
    ) -> Result<Vec<OutputLayout<'_>>, kiln_ir::IrError> {
        self.outputs
            .iter()
            .map(|(name, buf)| {
                let info = &self.buffers[*buf];
                let shape: Vec<usize> = info
                    .shape
                    .iter()
                    .map(|d| d.eval(b).map(|v| v.max(0) as usize))
                    .collect::<Result<_, _>>()?;
                let bytes = shape.iter().product::<usize>() * info.dtype.size_bytes();
                Ok(OutputLayout {
                    name,
                    buffer: *buf,
                    dtype: info.dtype,
                    shape,
                    bytes,
                })
            })
            .collect()
    }

    /// Checks a weight against its input declaration (dtype, rank, constant dims).
    pub fn check_param(&self, name: &str, t: &kiln_ir::Tensor) -> Result<(), kiln_ir::IrError> {
        let g = &self.graph;
        let (id, _) = g
            .inputs()
            .into_iter()
            .find(|(_, n)| *n == name)
            .ok_or_else(|| kiln_ir::IrError::Input {
                name: name.into(),
                detail: "is not an input of this graph".into(),
            })?;
        let node = g.node(id);
        let ok = t.dtype() == node.dtype
            && t.shape().len() == node.shape.len()
            && node
                .shape
                .iter()
                .zip(t.shape())
                .all(|(d, &a)| d.as_const().is_none_or(|c| c == a as i64));
        if !ok {
            return Err(kiln_ir::IrError::Input {
                name: name.into(),
                detail: format!(
                    "expected {} {}, got {} {:?}",
                    node.dtype,
                    kiln_ir::shape_str(&node.shape),
                    t.dtype(),
                    t.shape()
                ),
            });
        }
        Ok(())
    }
}

pub fn extract(graph: &Graph) -> Program {
    let mut realized = initial_realized(graph);
    loop {
        match build(graph, &realized) {
            Ok(p) => return p,
            // Matmul operands that could not be read as strided views: realize them and redo
            // (all found in one pass, so this converges in one or two rounds).
            Err(operands) => {
                for o in operands {
                    realized[o.index()] = true;
                }
            }
        }
    }
}

fn initial_realized(graph: &Graph) -> Vec<bool> {
    let n = graph.nodes.len();
    // Reads of each node, counting reads through views as reads of the viewed node.
    let mut reads = vec![0usize; n];
    for (_, o) in &graph.outputs {
        reads[o.index()] += 1;
    }
    for i in (0..n).rev() {
        let node = &graph.nodes[i];
        for inp in node.op.inputs() {
            reads[inp.index()] += if node.op.is_view() {
                reads[i].max(1)
            } else {
                1
            };
        }
    }
    let mut realized: Vec<bool> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| match &node.op {
            Op::Input { .. } | Op::Reduce(..) | Op::MatMul(..) | Op::Gather(..) => true,
            Op::Const { .. } | Op::Iota { .. } | Op::View(..) => false,
            Op::Unary(..) | Op::Binary(..) | Op::Where(..) | Op::Concat(..) => reads[i] > 1,
        })
        .collect();
    for (_, o) in &graph.outputs {
        realized[o.index()] = true;
    }
    // Matmul operands must reach a buffer through views only.
    for node in &graph.nodes {
        if let Op::MatMul(a, b) = node.op {
            for operand in [a, b] {
                let mut x = operand;
                while let Op::View(_, src) = graph.node(x).op {
                    if realized[x.index()] {
                        break;
                    }
                    x = src;
                }
                if !realized[x.index()] {
                    realized[operand.index()] = true;
                }
            }
        }
    }
    realized
}

struct Builder<'g> {
    graph: &'g Graph,
    realized: &'g [bool],
    buffer_of: HashMap<NodeId, usize>,
}

/// Lowers one kernel: collects the buffers it reads, numbered in order of first use.
struct Lowering<'a, 'g> {
    b: &'a Builder<'g>,
    root: NodeId,
    reads: Vec<NodeId>,
}

fn build(graph: &Graph, realized: &[bool]) -> Result<Program, Vec<NodeId>> {
    let mut b = Builder {
        graph,
        realized,
        buffer_of: HashMap::new(),
    };
    let mut buffers = Vec::new();
    let mut steps = Vec::new();
    let mut kernels = Vec::new();
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
        };
        let kind = match l.kernel_kind() {
            Ok(k) => k,
            Err(operand) => {
                failed.push(operand);
                continue;
            }
        };
        let inputs: Vec<usize> = l.reads.iter().map(|r| b.buffer_of[r]).collect();
        kernels.push(Kernel {
            kind,
            out_dtype: node.dtype,
            out_shape: node.shape.clone(),
            inputs: l.reads.iter().map(|r| graph.dtype(*r)).collect(),
        });
        steps.push(Step {
            kernel: kernels.len() - 1,
            output: b.buffer_of[&id],
            inputs,
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
        kernels,
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

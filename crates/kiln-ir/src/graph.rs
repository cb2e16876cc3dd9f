//! The graph: primitive ops, nodes with symbolic shapes, and a builder that checks shapes and
//! dtypes as it goes. Binary ops broadcast numpy-style by inserting explicit expand views, so a
//! node's inputs always have exactly its shape.

use crate::expr::{numel, shape_str, Bindings, Expr};
use crate::{DType, IrError, Result, Tensor};
use std::collections::{BTreeSet, HashMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Exp2,
    Log2,
    Sin,
    Sqrt,
    Recip,
    Neg,
    /// Convert to the node's dtype.
    Cast,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Mul,
    Max,
    /// `a < b`, a Bool result.
    Lt,
    /// C `%` for ints (x % 0 = 0), fmod for floats.
    Mod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// Views reinterpret their input's index space; they never move data.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ViewOp {
    Reshape(Vec<Expr>),
    /// Output axis `i` is input axis `perm[i]`.
    Permute(Vec<usize>),
    Slice {
        axis: usize,
        start: Expr,
    },
    /// Size-1 axes repeated to the node's shape.
    Expand,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A named runtime input (activations, weights, KV cache).
    Input {
        name: String,
    },
    /// A scalar (as f64 bits) broadcast to the node's shape.
    Const {
        bits: u64,
    },
    /// The index along `axis` at each position.
    Iota {
        axis: usize,
    },
    Unary(UnaryOp, NodeId),
    Binary(BinaryOp, NodeId, NodeId),
    /// `cond ? a : b` elementwise.
    Where(NodeId, NodeId, NodeId),
    /// Reduces `axis`, keeping it with size 1.
    Reduce(ReduceOp, NodeId, usize),
    /// `[.., m, k] x [.., k, n] -> [.., m, n]`, batch dims equal.
    MatMul(NodeId, NodeId),
    /// Rows of `table` (`[rows, cols]`) picked by integer `ids` (`[n]`) -> `[n, cols]`.
    Gather(NodeId, NodeId),
    Concat(Vec<NodeId>, usize),
    /// `dst` with `src` written at positions `start..start + len` of `axis` (len: `src`'s size
    /// there); everything else as in `dst`. Compiled in place where `dst` has no other reader:
    /// how a KV cache takes a step's keys without copying the cache.
    WriteSlice {
        dst: NodeId,
        src: NodeId,
        axis: usize,
        start: Expr,
    },
    View(ViewOp, NodeId),
}

impl Op {
    pub fn inputs(&self) -> Vec<NodeId> {
        match self {
            Op::Input { .. } | Op::Const { .. } | Op::Iota { .. } => vec![],
            Op::Unary(_, a) | Op::Reduce(_, a, _) | Op::View(_, a) => vec![*a],
            Op::Binary(_, a, b) | Op::MatMul(a, b) | Op::Gather(a, b) => vec![*a, *b],
            Op::Where(c, a, b) => vec![*c, *a, *b],
            Op::Concat(xs, _) => xs.clone(),
            Op::WriteSlice { dst, src, .. } => vec![*dst, *src],
        }
    }

    /// The same op reading other nodes (used by graph rewrites).
    pub fn map_inputs(&self, f: impl Fn(NodeId) -> NodeId) -> Op {
        match self {
            Op::Input { .. } | Op::Const { .. } | Op::Iota { .. } => self.clone(),
            Op::Unary(u, a) => Op::Unary(*u, f(*a)),
            Op::Reduce(r, a, ax) => Op::Reduce(*r, f(*a), *ax),
            Op::View(v, a) => Op::View(v.clone(), f(*a)),
            Op::Binary(o, a, b) => Op::Binary(*o, f(*a), f(*b)),
            Op::MatMul(a, b) => Op::MatMul(f(*a), f(*b)),
            Op::Gather(a, b) => Op::Gather(f(*a), f(*b)),
            Op::Where(c, a, b) => Op::Where(f(*c), f(*a), f(*b)),
            Op::Concat(xs, ax) => Op::Concat(xs.iter().map(|x| f(*x)).collect(), *ax),
            Op::WriteSlice {
                dst,
                src,
                axis,
                start,
            } => Op::WriteSlice {
                dst: f(*dst),
                src: f(*src),
                axis: *axis,
                start: start.clone(),
            },
        }
    }

    pub fn is_view(&self) -> bool {
        matches!(self, Op::View(..))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub op: Op,
    pub dtype: DType,
    pub shape: Vec<Expr>,
}

/// A computation graph. Nodes are stored in creation order, which is a topological order.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// Append through [`Graph::push`] (or the typed builders), which keeps the input index.
    pub nodes: Vec<Node>,
    pub outputs: Vec<(String, NodeId)>,
    /// Relations between symbols that shapes alone cannot express, checked when a run's
    /// symbols are bound (e.g. a write into a cache stays inside it).
    pub requirements: Vec<Requirement>,
    /// Input name -> its node, so that declaring or finding an input costs the same in a
    /// 1-layer and a 100000-layer model (a scan of the nodes made building quadratic in depth).
    input_ids: HashMap<String, NodeId>,
}

/// `lhs <= rhs` for every run; `what` says whose requirement it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub lhs: Expr,
    pub rhs: Expr,
    pub what: String,
}

/// True when two dimensions are provably equal: equal for every binding of the (non-negative)
/// symbols, shown by normalising their difference to 0 ([`Expr::provably_equal`]). Dimensions
/// that are equal but not provably so by the normal form count as different: a shape check may
/// reject a graph, never accept a wrong one.
pub fn dims_equal(a: &Expr, b: &Expr) -> bool {
    a.provably_equal(b)
}

fn shapes_equal(a: &[Expr], b: &[Expr]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| dims_equal(x, y))
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }
    pub fn shape(&self, id: NodeId) -> &[Expr] {
        &self.node(id).shape
    }
    pub fn dtype(&self, id: NodeId) -> DType {
        self.node(id).dtype
    }

    /// Appends a node without checks (checks happen in the typed builders below).
    pub fn push(&mut self, op: Op, dtype: DType, shape: Vec<Expr>) -> NodeId {
        let id = NodeId(self.nodes.len() as u32);
        if let Op::Input { name } = &op {
            self.input_ids.entry(name.clone()).or_insert(id);
        }
        self.nodes.push(Node { op, dtype, shape });
        id
    }

    /// The node of the input called `name`.
    pub fn input_id(&self, name: &str) -> Option<NodeId> {
        self.input_ids.get(name).copied()
    }

    /// The named inputs, in creation order.
    pub fn inputs(&self) -> Vec<(NodeId, &str)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.op {
                Op::Input { name } => Some((NodeId(i as u32), name.as_str())),
                _ => None,
            })
            .collect()
    }

    pub fn output(&mut self, name: &str, x: NodeId) {
        self.outputs.push((name.to_string(), x));
    }

    // ---- leaves -------------------------------------------------------------------------

    pub fn input(&mut self, name: &str, dtype: DType, shape: &[Expr]) -> Result<NodeId> {
        if self.input_ids.contains_key(name) {
            return Err(IrError::Invalid {
                what: format!("input '{name}' is declared twice"),
            });
        }
        if let Some(q) = dtype.quant() {
            let whole_blocks = shape.len() == 2
                && shape[1]
                    .as_const()
                    .is_some_and(|k| k > 0 && k % q.block_elems() as i64 == 0);
            if !whole_blocks {
                return Err(IrError::DType {
                    op: format!("input '{name}'"),
                    detail: format!(
                        "a {dtype} weight is a matrix whose rows are whole {}-value blocks (a constant last dimension), got {}",
                        q.block_elems(),
                        shape_str(shape)
                    ),
                });
            }
        }
        Ok(self.push(Op::Input { name: name.into() }, dtype, shape.to_vec()))
    }

    /// Checks where block-quantized values are read: through views by the `b` operand of
    /// matrix products (a weight of `x @ W^T`) and as the table of a gather (an embedding
    /// lookup, which dequantizes the rows it reads), never by another op, the `a` operand or
    /// as a graph output. Backends read quantized blocks in their matmul kernels and gathers
    /// and nowhere else.
    pub fn check_quantized_reads(&self) -> Result<()> {
        for node in &self.nodes {
            let reads_ok = |x: NodeId| match &node.op {
                Op::View(..) => true,
                Op::MatMul(a, b) => *b == x && *a != x,
                Op::Gather(table, ids) => *table == x && *ids != x,
                _ => false,
            };
            for x in node.op.inputs() {
                let dt = self.dtype(x);
                if dt.is_quantized() && !reads_ok(x) {
                    return Err(IrError::DType {
                        op: format!("{:?}", node.op),
                        detail: format!(
                            "reads a {dt} value: block-quantized weights are read only as the b operand of a matmul or the table of a gather"
                        ),
                    });
                }
            }
        }
        for (name, x) in &self.outputs {
            if self.dtype(*x).is_quantized() {
                return Err(IrError::DType {
                    op: format!("output '{name}'"),
                    detail: format!(
                        "is {}: a block-quantized weight cannot be an output",
                        self.dtype(*x)
                    ),
                });
            }
        }
        Ok(())
    }

    /// A scalar constant; binary ops broadcast it.
    pub fn scalar(&mut self, value: f64, dtype: DType) -> NodeId {
        let v = dtype.round(value);
        self.push(Op::Const { bits: v.to_bits() }, dtype, vec![])
    }

    pub fn iota(&mut self, dtype: DType, shape: &[Expr], axis: usize) -> Result<NodeId> {
        if axis >= shape.len() {
            return Err(shape_err(
                "iota",
                format!("axis {axis} out of range for {}", shape_str(shape)),
            ));
        }
        Ok(self.push(Op::Iota { axis }, dtype, shape.to_vec()))
    }

    // ---- elementwise ----------------------------------------------------------------------

    fn unary(&mut self, op: UnaryOp, x: NodeId) -> Result<NodeId> {
        let dt = self.dtype(x);
        if !dt.is_float() && op != UnaryOp::Neg {
            return Err(IrError::DType {
                op: format!("{op:?}").to_lowercase(),
                detail: format!("needs a float input, got {dt}"),
            });
        }
        Ok(self.push(Op::Unary(op, x), dt, self.shape(x).to_vec()))
    }
    pub fn exp2(&mut self, x: NodeId) -> Result<NodeId> {
        self.unary(UnaryOp::Exp2, x)
    }
    pub fn log2(&mut self, x: NodeId) -> Result<NodeId> {
        self.unary(UnaryOp::Log2, x)
    }
    pub fn sin(&mut self, x: NodeId) -> Result<NodeId> {
        self.unary(UnaryOp::Sin, x)
    }
    pub fn sqrt(&mut self, x: NodeId) -> Result<NodeId> {
        self.unary(UnaryOp::Sqrt, x)
    }
    pub fn recip(&mut self, x: NodeId) -> Result<NodeId> {
        self.unary(UnaryOp::Recip, x)
    }
    pub fn neg(&mut self, x: NodeId) -> Result<NodeId> {
        self.unary(UnaryOp::Neg, x)
    }
    pub fn cast(&mut self, x: NodeId, dtype: DType) -> NodeId {
        if self.dtype(x) == dtype {
            return x;
        }
        self.push(Op::Unary(UnaryOp::Cast, x), dtype, self.shape(x).to_vec())
    }

    fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> Result<NodeId> {
        let name = format!("{op:?}").to_lowercase();
        let (da, db) = (self.dtype(a), self.dtype(b));
        if da != db {
            return Err(IrError::DType {
                op: name,
                detail: format!("operand dtypes differ: {da} and {db}"),
            });
        }
        let (a, b) = self.broadcast_pair(&name, a, b)?;
        let dtype = if op == BinaryOp::Lt { DType::Bool } else { da };
        Ok(self.push(Op::Binary(op, a, b), dtype, self.shape(a).to_vec()))
    }
    pub fn add(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Add, a, b)
    }
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Mul, a, b)
    }
    pub fn maximum(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Max, a, b)
    }
    pub fn lt(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Lt, a, b)
    }
    pub fn rem(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.binary(BinaryOp::Mod, a, b)
    }
    pub fn sub(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        let nb = self.neg(b)?;
        self.add(a, nb)
    }
    pub fn div(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        let rb = self.recip(b)?;
        self.mul(a, rb)
    }

    /// `cond ? a : b`; all three broadcast together.
    pub fn where_(&mut self, cond: NodeId, a: NodeId, b: NodeId) -> Result<NodeId> {
        let (da, db) = (self.dtype(a), self.dtype(b));
        if da != db {
            return Err(IrError::DType {
                op: "where".into(),
                detail: format!("branch dtypes differ: {da} and {db}"),
            });
        }
        let shape = self.broadcast_shape("where", &[cond, a, b])?;
        let c = self.broadcast_to(cond, &shape)?;
        let a = self.broadcast_to(a, &shape)?;
        let b = self.broadcast_to(b, &shape)?;
        Ok(self.push(Op::Where(c, a, b), da, shape))
    }

    // ---- reductions, matmul, gather, concat --------------------------------------------------

    fn reduce(&mut self, op: ReduceOp, x: NodeId, axis: usize) -> Result<NodeId> {
        let mut shape = self.shape(x).to_vec();
        if axis >= shape.len() {
            return Err(shape_err(
                &format!("reduce_{op:?}").to_lowercase(),
                format!("axis {axis} out of range for {}", shape_str(&shape)),
            ));
        }
        shape[axis] = Expr::Const(1);
        Ok(self.push(Op::Reduce(op, x, axis), self.dtype(x), shape))
    }
    /// Sum over `axis`, keeping it as size 1.
    pub fn sum(&mut self, x: NodeId, axis: usize) -> Result<NodeId> {
        self.reduce(ReduceOp::Sum, x, axis)
    }
    /// Max over `axis`, keeping it as size 1.
    pub fn max(&mut self, x: NodeId, axis: usize) -> Result<NodeId> {
        self.reduce(ReduceOp::Max, x, axis)
    }

    /// Batched matrix product; batch dims broadcast; the result has `a`'s dtype.
    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId> {
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        let err = |d: String| {
            shape_err(
                "matmul",
                format!("{} x {}: {d}", shape_str(&sa), shape_str(&sb)),
            )
        };
        if sa.len() < 2 || sb.len() < 2 {
            return Err(err("operands need at least 2 dims".into()));
        }
        // Mixed float dtypes are allowed (f32 activations times bf16 weights): products
        // accumulate in f32 and the result has `a`'s dtype.
        // A block-quantized `b` (a weight) is read as its f32 values.
        if !self.dtype(a).is_float() || !(self.dtype(b).is_float() || self.dtype(b).is_quantized())
        {
            return Err(IrError::DType {
                op: "matmul".into(),
                detail: format!(
                    "needs float operands, got {} and {}",
                    self.dtype(a),
                    self.dtype(b)
                ),
            });
        }
        let (m, k) = (&sa[sa.len() - 2], &sa[sa.len() - 1]);
        let (k2, n) = (&sb[sb.len() - 2], &sb[sb.len() - 1]);
        if !dims_equal(k, k2) {
            return Err(err(format!("inner dimensions {k} and {k2} differ")));
        }
        let batch = broadcast_shapes(&sa[..sa.len() - 2], &sb[..sb.len() - 2])
            .ok_or_else(|| err("batch dims do not broadcast".into()))?;
        let (m, n, k) = (m.clone(), n.clone(), k.clone());
        let a = self.broadcast_to(a, &[batch.clone(), vec![m.clone(), k.clone()]].concat())?;
        let b = self.broadcast_to(b, &[batch.clone(), vec![k, n.clone()]].concat())?;
        Ok(self.push(
            Op::MatMul(a, b),
            self.dtype(a),
            [batch, vec![m, n]].concat(),
        ))
    }

    /// Embedding lookup: `table[ids[i], :]`. A block-quantized table (an embedding held in
    /// the file's blocks) gives its rows dequantized, in f32; any other table its own dtype.
    pub fn gather(&mut self, table: NodeId, ids: NodeId) -> Result<NodeId> {
        let (st, si) = (self.shape(table).to_vec(), self.shape(ids).to_vec());
        if st.len() != 2 || si.len() != 1 {
            return Err(shape_err(
                "gather",
                format!(
                    "needs table [rows, cols] and ids [n], got {} and {}",
                    shape_str(&st),
                    shape_str(&si)
                ),
            ));
        }
        if self.dtype(ids) != DType::I32 {
            return Err(IrError::DType {
                op: "gather".into(),
                detail: format!("ids must be i32, got {}", self.dtype(ids)),
            });
        }
        let dtype = match self.dtype(table) {
            q if q.is_quantized() => DType::F32,
            d => d,
        };
        Ok(self.push(
            Op::Gather(table, ids),
            dtype,
            vec![si[0].clone(), st[1].clone()],
        ))
    }

    pub fn concat(&mut self, xs: &[NodeId], axis: usize) -> Result<NodeId> {
        let first = *xs
            .first()
            .ok_or_else(|| shape_err("concat", "needs at least one input".into()))?;
        let mut shape = self.shape(first).to_vec();
        if axis >= shape.len() {
            return Err(shape_err(
                "concat",
                format!("axis {axis} out of range for {}", shape_str(&shape)),
            ));
        }
        for &x in &xs[1..] {
            let s = self.shape(x);
            let same_rest = s.len() == shape.len()
                && (0..s.len()).all(|i| i == axis || dims_equal(&s[i], &shape[i]));
            if !same_rest || self.dtype(x) != self.dtype(first) {
                return Err(shape_err(
                    "concat",
                    format!(
                        "{} {} does not fit {} {} along axis {axis}",
                        self.dtype(x),
                        shape_str(s),
                        self.dtype(first),
                        shape_str(self.shape(first))
                    ),
                ));
            }
            shape[axis] = shape[axis].clone().add(s[axis].clone());
        }
        if xs.len() == 1 {
            return Ok(first);
        }
        Ok(self.push(Op::Concat(xs.to_vec(), axis), self.dtype(first), shape))
    }

    /// `dst` with `src` written at `start..start + len` of `axis`, `len` being `src`'s size
    /// along `axis`; the other dimensions must be equal. A symbolic range is required to fit
    /// `dst` at run time (checked when the run's symbols are bound).
    pub fn write_slice(
        &mut self,
        dst: NodeId,
        src: NodeId,
        axis: usize,
        start: impl Into<Expr>,
    ) -> Result<NodeId> {
        let start = start.into();
        let (sd, ss) = (self.shape(dst).to_vec(), self.shape(src).to_vec());
        let fits = sd.len() == ss.len()
            && axis < sd.len()
            && (0..sd.len()).all(|i| i == axis || dims_equal(&sd[i], &ss[i]));
        if !fits || self.dtype(dst) != self.dtype(src) {
            return Err(shape_err(
                "write_slice",
                format!(
                    "cannot write {} {} into {} {} along axis {axis}",
                    self.dtype(src),
                    shape_str(&ss),
                    self.dtype(dst),
                    shape_str(&sd)
                ),
            ));
        }
        let end = start.clone().add(ss[axis].clone());
        let outside = start.as_const().is_some_and(|s| s < 0)
            || matches!((end.as_const(), sd[axis].as_const()), (Some(e), Some(n)) if e > n);
        if outside {
            return Err(shape_err(
                "write_slice",
                format!(
                    "range {start}..{end} is outside axis {axis} of {}",
                    shape_str(&sd)
                ),
            ));
        }
        if end.as_const().is_none() || sd[axis].as_const().is_none() {
            self.require_le(end, sd[axis].clone(), "write_slice");
        }
        Ok(self.push(
            Op::WriteSlice {
                dst,
                src,
                axis,
                start,
            },
            self.dtype(dst),
            sd,
        ))
    }

    // ---- views ----------------------------------------------------------------------------

    pub fn reshape(&mut self, x: NodeId, shape: &[Expr]) -> Result<NodeId> {
        let from = self.shape(x);
        if !dims_equal(&numel(from), &numel(shape)) {
            return Err(shape_err(
                "reshape",
                format!(
                    "cannot reshape {} ({} elements) to {} ({} elements)",
                    shape_str(from),
                    numel(from),
                    shape_str(shape),
                    numel(shape)
                ),
            ));
        }
        if shapes_equal(from, shape) {
            return Ok(x);
        }
        Ok(self.push(
            Op::View(ViewOp::Reshape(shape.to_vec()), x),
            self.dtype(x),
            shape.to_vec(),
        ))
    }

    pub fn permute(&mut self, x: NodeId, perm: &[usize]) -> Result<NodeId> {
        let from = self.shape(x).to_vec();
        let mut seen = perm.to_vec();
        seen.sort();
        if seen != (0..from.len()).collect::<Vec<_>>() {
            return Err(shape_err(
                "permute",
                format!(
                    "{perm:?} is not a permutation of the axes of {}",
                    shape_str(&from)
                ),
            ));
        }
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(x);
        }
        let shape = perm.iter().map(|&p| from[p].clone()).collect();
        Ok(self.push(
            Op::View(ViewOp::Permute(perm.to_vec()), x),
            self.dtype(x),
            shape,
        ))
    }

    /// Swaps two axes.
    pub fn transpose(&mut self, x: NodeId, a: usize, b: usize) -> Result<NodeId> {
        let mut perm: Vec<usize> = (0..self.shape(x).len()).collect();
        if a >= perm.len() || b >= perm.len() {
            return Err(shape_err(
                "transpose",
                format!(
                    "axes {a}, {b} out of range for {}",
                    shape_str(self.shape(x))
                ),
            ));
        }
        perm.swap(a, b);
        self.permute(x, &perm)
    }

    /// Elements `start..end` of `axis`. Bounds are checked when they are constants.
    pub fn slice(
        &mut self,
        x: NodeId,
        axis: usize,
        start: impl Into<Expr>,
        end: impl Into<Expr>,
    ) -> Result<NodeId> {
        let (start, end) = (start.into(), end.into());
        let mut shape = self.shape(x).to_vec();
        if axis >= shape.len() {
            return Err(shape_err(
                "slice",
                format!("axis {axis} out of range for {}", shape_str(&shape)),
            ));
        }
        if let (Some(s), Some(e)) = (start.as_const(), end.as_const()) {
            let within = shape[axis].as_const().is_none_or(|n| e <= n);
            if s < 0 || e < s || !within {
                return Err(shape_err(
                    "slice",
                    format!(
                        "range {s}..{e} is outside axis {axis} of {}",
                        shape_str(&shape)
                    ),
                ));
            }
        }
        shape[axis] = end.sub(start.clone());
        Ok(self.push(
            Op::View(ViewOp::Slice { axis, start }, x),
            self.dtype(x),
            shape,
        ))
    }

    /// Repeats size-1 axes to `shape` (same rank).
    pub fn expand(&mut self, x: NodeId, shape: &[Expr]) -> Result<NodeId> {
        let from = self.shape(x).to_vec();
        let ok = from.len() == shape.len()
            && from
                .iter()
                .zip(shape)
                .all(|(f, t)| f.is_const(1) || dims_equal(f, t));
        if !ok {
            return Err(shape_err(
                "expand",
                format!("cannot expand {} to {}", shape_str(&from), shape_str(shape)),
            ));
        }
        if shapes_equal(&from, shape) {
            return Ok(x);
        }
        Ok(self.push(Op::View(ViewOp::Expand, x), self.dtype(x), shape.to_vec()))
    }

    /// Inserts a size-1 axis at `axis`.
    pub fn unsqueeze(&mut self, x: NodeId, axis: usize) -> Result<NodeId> {
        let mut shape = self.shape(x).to_vec();
        shape.insert(axis.min(shape.len()), Expr::Const(1));
        self.reshape(x, &shape)
    }

    /// numpy broadcasting of `x` to `shape`: leading 1s, then expand.
    pub fn broadcast_to(&mut self, x: NodeId, shape: &[Expr]) -> Result<NodeId> {
        let from = self.shape(x).to_vec();
        if from.len() > shape.len() {
            return Err(shape_err(
                "broadcast",
                format!(
                    "cannot broadcast {} to {}",
                    shape_str(&from),
                    shape_str(shape)
                ),
            ));
        }
        let mut padded = vec![Expr::Const(1); shape.len() - from.len()];
        padded.extend(from);
        let x = self.reshape(x, &padded)?;
        self.expand(x, shape)
    }

    fn broadcast_shape(&self, op: &str, xs: &[NodeId]) -> Result<Vec<Expr>> {
        let mut shape = self.shape(xs[0]).to_vec();
        for &x in &xs[1..] {
            shape = broadcast_shapes(&shape, self.shape(x)).ok_or_else(|| {
                let all: Vec<String> = xs.iter().map(|&x| shape_str(self.shape(x))).collect();
                shape_err(op, format!("shapes {} cannot broadcast", all.join(" and ")))
            })?;
        }
        Ok(shape)
    }

    fn broadcast_pair(&mut self, op: &str, a: NodeId, b: NodeId) -> Result<(NodeId, NodeId)> {
        let shape = self.broadcast_shape(op, &[a, b])?;
        Ok((self.broadcast_to(a, &shape)?, self.broadcast_to(b, &shape)?))
    }

    // ---- running ------------------------------------------------------------------------------

    /// Checks run-time inputs against the declared ones (names, count, dtype, rank, dims) and
    /// binds each symbol that appears as a whole input dimension. `extra` may bind more symbols.
    pub fn bind_inputs(
        &self,
        inputs: &HashMap<&str, &Tensor>,
        extra: &Bindings,
    ) -> Result<Bindings> {
        let shapes: HashMap<&str, (DType, &[usize])> = inputs
            .iter()
            .map(|(&n, t)| (n, (t.dtype(), t.shape())))
            .collect();
        self.bind_shapes(&shapes, extra)
    }

    /// [`Graph::bind_inputs`] from each input's dtype and shape alone (for inputs whose data
    /// lives elsewhere, such as a KV cache kept in device memory).
    pub fn bind_shapes(
        &self,
        inputs: &HashMap<&str, (DType, &[usize])>,
        extra: &Bindings,
    ) -> Result<Bindings> {
        let declared = self.inputs();
        for name in inputs.keys() {
            if self.input_id(name).is_none() {
                let names: Vec<&str> = declared.iter().map(|(_, n)| *n).collect();
                return Err(IrError::Input {
                    name: name.to_string(),
                    detail: format!(
                        "is not an input of this graph (inputs: {})",
                        names.join(", ")
                    ),
                });
            }
        }
        let mut b = extra.clone();
        for (id, name) in &declared {
            let node = self.node(*id);
            let &(dtype, shape) = inputs.get(*name).ok_or_else(|| IrError::Input {
                name: name.to_string(),
                detail: format!("missing ({} {})", node.dtype, shape_str(&node.shape)),
            })?;
            if dtype != node.dtype {
                return Err(IrError::Input {
                    name: name.to_string(),
                    detail: format!("expected dtype {}, got {}", node.dtype, dtype),
                });
            }
            if shape.len() != node.shape.len() {
                return Err(IrError::Input {
                    name: name.to_string(),
                    detail: format!("expected shape {}, got {:?}", shape_str(&node.shape), shape),
                });
            }
            for (d, &actual) in node.shape.iter().zip(shape) {
                if let Expr::Sym(s) = d {
                    let prev = *b.entry(s.to_string()).or_insert(actual as i64);
                    if prev != actual as i64 {
                        return Err(IrError::Input { name: name.to_string(), detail: format!("dimension {s} = {actual} conflicts with {s} = {prev} from another input") });
                    }
                }
            }
        }
        // Second pass: every dimension (also compound ones like p + s) must now evaluate and match.
        for (id, name) in &declared {
            let node = self.node(*id);
            let shape = inputs[*name].1;
            for (i, (d, &actual)) in node.shape.iter().zip(shape).enumerate() {
                let want = d.eval(&b)?;
                if want != actual as i64 {
                    return Err(IrError::Input {
                        name: name.to_string(),
                        detail: format!(
                            "dimension {i} should be {d} = {want}, got {actual} (shape {:?})",
                            shape
                        ),
                    });
                }
            }
        }
        for r in &self.requirements {
            let (l, h) = (r.lhs.eval(&b)?, r.rhs.eval(&b)?);
            if l > h {
                return Err(IrError::Invalid {
                    what: format!(
                        "{}: needs {} <= {}, but {} = {l} and {} = {h}",
                        r.what, r.lhs, r.rhs, r.lhs, r.rhs
                    ),
                });
            }
        }
        Ok(b)
    }

    /// Requires `lhs <= rhs` of every run (checked when inputs are bound); `what` names the op
    /// that needs it. Relations that hold for constants are checked by the builders right away.
    pub fn require_le(&mut self, lhs: Expr, rhs: Expr, what: &str) {
        let r = Requirement {
            lhs,
            rhs,
            what: what.to_string(),
        };
        if !self.requirements.contains(&r) {
            self.requirements.push(r);
        }
    }

    /// Symbols any node mentions.
    pub fn symbols(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for n in &self.nodes {
            for d in &n.shape {
                d.symbols(&mut out);
            }
        }
        out
    }
}

fn shape_err(op: &str, detail: String) -> IrError {
    IrError::Shape {
        op: op.into(),
        detail,
    }
}

/// numpy broadcasting of two shapes, or None.
fn broadcast_shapes(a: &[Expr], b: &[Expr]) -> Option<Vec<Expr>> {
    let n = a.len().max(b.len());
    let one = Expr::Const(1);
    (0..n)
        .map(|i| {
            let x = if i + a.len() >= n {
                &a[i + a.len() - n]
            } else {
                &one
            };
            let y = if i + b.len() >= n {
                &b[i + b.len() - n]
            } else {
                &one
            };
            if dims_equal(x, y) || y.is_const(1) {
                Some(x.clone())
            } else if x.is_const(1) {
                Some(y.clone())
            } else {
                None
            }
        })
        .collect()
}

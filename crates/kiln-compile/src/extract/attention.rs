//! Recognises attention in a graph: `softmax(score(Q K)) V`, the scores never stored.
//!
//! The pattern is what `Graph::softmax` builds between two matmuls, through reshapes only:
//!
//! ```text
//! QK = matmul(Q, K^T)            [b.., m, t]
//! X  = f(reshape(QK), other loads)   same flat order, softmax over the last axis (length t)
//! P  = exp2((X - max(X)) * log2 e) / sum(...)
//! PV = matmul(reshape(P), V)     [b.., m, dv]
//! ```
//!
//! where `f` is elementwise (a scale, a mask). Reshapes keep the flat order, so element
//! (b.., i, j) of QK, X and P is the same flat position and row `b.., i` of the product is
//! one softmax row. Every intermediate must be read only inside the pattern. Lowering then
//! computes PV as one `KernelKind::Attention`: scores per key block, an online softmax, the
//! value product.

use kiln_ir::{contiguous_strides, BinaryOp, Expr, Graph, NodeId, Op, ReduceOp, UnaryOp, ViewOp};

/// The nodes of one recognised attention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attention {
    /// The value product (the kernel's root).
    pub pv: NodeId,
    /// The score product `Q K^T`.
    pub qk: NodeId,
    /// The scores the softmax reads.
    pub x: NodeId,
    /// Every node computed inside the kernel (which loses its buffer), `qk` and `x` included.
    pub inner: Vec<NodeId>,
}

/// Follows reshape views down from `x`, collecting them.
fn through_reshapes(g: &Graph, mut x: NodeId, seen: &mut Vec<NodeId>) -> NodeId {
    while let Op::View(ViewOp::Reshape(_), src) = g.node(x).op {
        seen.push(x);
        x = src;
    }
    x
}

/// `expand(y)` or `y` (broadcasting a kept-dim reduction back over its axis).
fn through_expand(g: &Graph, x: NodeId, seen: &mut Vec<NodeId>) -> NodeId {
    match g.node(x).op {
        Op::View(ViewOp::Expand, src) => {
            seen.push(x);
            src
        }
        _ => x,
    }
}

fn is_const(g: &Graph, mut x: NodeId, value: f64) -> bool {
    loop {
        match &g.node(x).op {
            // Constants (and their broadcasts) are free to recompute and often shared (CSE):
            // not part of the pattern.
            Op::View(_, src) => x = *src,
            Op::Const { bits } => {
                let v = f64::from_bits(*bits);
                return (v - value).abs() <= 1e-6 * value.abs();
            }
            _ => return false,
        }
    }
}

/// Matches the softmax composite at `probs`: returns (X, nodes).
fn softmax_at(g: &Graph, probs: NodeId) -> Option<(NodeId, Vec<NodeId>)> {
    let mut seen = vec![probs];
    let last = g.shape(probs).len().checked_sub(1)?;
    let Op::Binary(BinaryOp::Mul, e, r) = g.node(probs).op else {
        return None;
    };
    let r = through_expand(g, r, &mut seen);
    let Op::Unary(UnaryOp::Recip, s) = g.node(r).op else {
        return None;
    };
    let Op::Reduce(ReduceOp::Sum, e2, axis) = g.node(s).op else {
        return None;
    };
    seen.extend([r, s]);
    let Op::Unary(UnaryOp::Exp2, scaled) = g.node(e).op else {
        return None;
    };
    let Op::Binary(BinaryOp::Mul, shifted, c) = g.node(scaled).op else {
        return None;
    };
    if e2 != e || axis != last || !is_const(g, c, std::f64::consts::LOG2_E) {
        return None;
    }
    let Op::Binary(BinaryOp::Add, x, nm) = g.node(shifted).op else {
        return None;
    };
    let nm = through_expand(g, nm, &mut seen);
    let Op::Unary(UnaryOp::Neg, m) = g.node(nm).op else {
        return None;
    };
    let Op::Reduce(ReduceOp::Max, x2, axis) = g.node(m).op else {
        return None;
    };
    if x2 != x || axis != last {
        return None;
    }
    seen.extend([e, scaled, shifted, nm, m, x]);
    Some((x, seen))
}

/// The score product under X: X's elementwise tree reaches exactly one matmul, and only
/// through elementwise ops and reshapes (so at the same flat position). Returns it and the
/// nodes on the way.
fn score_product(g: &Graph, x: NodeId, realized: &[bool]) -> Option<(NodeId, Vec<NodeId>)> {
    let mut found = None;
    let mut on_path = Vec::new();
    // Nodes whose value at X's position is at the same flat position.
    let mut stack = vec![x];
    while let Some(n) = stack.pop() {
        match &g.node(n).op {
            Op::MatMul(..) => {
                if found.is_some_and(|f| f != n) {
                    return None;
                }
                found = Some(n);
            }
            Op::Unary(..) | Op::Binary(..) | Op::Where(..) => {
                if n != x && realized[n.index()] {
                    continue; // a buffer of its own: loaded, wherever it comes from
                }
                on_path.push(n);
                stack.extend(g.node(n).op.inputs());
            }
            Op::View(ViewOp::Reshape(_), src) if !realized[n.index()] => {
                on_path.push(n);
                stack.push(*src);
            }
            // Any other view, a constant, an input, a buffer: read at its own index. A matmul
            // behind such a view would not be at the same position: it stays a buffer.
            _ => {}
        }
    }
    Some((found?, on_path))
}

/// Recognises attention whose value product is `pv`.
pub fn at(g: &Graph, pv: NodeId, realized: &[bool]) -> Option<Attention> {
    let Op::MatMul(pa, v) = g.node(pv).op else {
        return None;
    };
    let _ = v;
    let mut inner = Vec::new();
    let probs = through_reshapes(g, pa, &mut inner);
    let (x, soft) = softmax_at(g, probs)?;
    inner.extend(soft);
    let (qk, path) = score_product(g, x, realized)?;
    inner.extend(path);
    inner.push(qk);
    // Q K^T's rows are PV's rows, its columns the keys.
    let (sq, sp) = (g.shape(qk), g.shape(pv));
    let r = sp.len();
    let keys = g.shape(pa)[r - 1].clone();
    let same_rows = sq.len() == r && (0..r - 1).all(|i| sq[i].provably_equal(&sp[i]));
    let x_keys = g.shape(x).last()?.provably_equal(&keys);
    if !same_rows || !x_keys || !sq[r - 1].provably_equal(&keys) {
        return None;
    }
    // The matmul operands of QK must stay buffers (read, not recomputed per key).
    let Op::MatMul(q, kt) = g.node(qk).op else {
        unreachable!("a matmul")
    };
    if [q, kt].iter().any(|o| inner.contains(o)) {
        return None;
    }
    inner.sort();
    inner.dedup();
    Some(Attention { pv, qk, x, inner })
}

/// Where the attention output `pv` (`[b.., m, dv]`) lands when its kernel writes `top`, a
/// chain of views of it, instead: the flat offset in `top`'s buffer of row (b.., i)'s first
/// value, in the batch variables and the row variable (`Var(0..r-1)`), each row's `dv`
/// values following at stride 1. The chain may permute the axes before the last and reshape
/// them (keeping the last); reshapes at its top may do anything, as they keep the flat order.
/// Grouped-query attention's `[kv, group * s, d]` read as `[s, heads * d]` is such a chain.
/// `None` for any other (a slice, a broadcast, a permute that moves the last axis).
pub fn output_rows(g: &Graph, pv: NodeId, top: NodeId) -> Option<Expr> {
    let mut chain = Vec::new();
    let mut x = top;
    while x != pv {
        let Op::View(view, src) = &g.node(x).op else {
            return None;
        };
        chain.push(view);
        x = *src;
    }
    let mut shape = g.shape(pv).to_vec();
    let unflatten = |flat: Expr, dims: &[Expr]| -> Vec<Expr> {
        let strides = contiguous_strides(dims);
        (0..dims.len())
            .map(|i| {
                if dims[i].is_const(1) {
                    Expr::Const(0)
                } else if i == 0 {
                    flat.clone().div(strides[0].clone())
                } else {
                    flat.clone().div(strides[i].clone()).rem(dims[i].clone())
                }
            })
            .collect()
    };
    let offset = |rows: &[Expr], dims: &[Expr]| {
        rows.iter()
            .zip(contiguous_strides(dims))
            .fold(Expr::Const(0), |acc, (i, s)| acc.add(i.clone().mul(s)))
    };
    let last = shape.len().checked_sub(1)?;
    let mut rows: Vec<Expr> = (0..last)
        .map(|i| {
            if shape[i].is_const(1) {
                Expr::Const(0)
            } else {
                Expr::Var(i as u32)
            }
        })
        .collect();
    // Past the first reshape that changes the row length, only the flat order is known.
    let mut flat_only = false;
    for view in chain.into_iter().rev() {
        let last = shape.len() - 1;
        match view {
            ViewOp::Reshape(new)
                if !flat_only && new.last().is_some_and(|d| d.provably_equal(&shape[last])) =>
            {
                let flat = offset(&rows, &shape[..last]);
                rows = unflatten(flat, &new[..new.len() - 1]);
                shape = new.clone();
            }
            ViewOp::Reshape(_) => flat_only = true,
            ViewOp::Permute(perm) if !flat_only && perm.last() == Some(&last) => {
                rows = perm[..last].iter().map(|&p| rows[p].clone()).collect();
                shape = perm.iter().map(|&p| shape[p].clone()).collect();
            }
            _ => return None,
        }
    }
    Some(offset(&rows, &shape[..shape.len() - 1]).mul(shape[shape.len() - 1].clone()))
}

/// Every attention of the graph whose intermediates nothing else reads.
pub fn find(g: &Graph, realized: &[bool]) -> Vec<Attention> {
    let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for x in n.op.inputs() {
            users[x.index()].push(NodeId(i as u32));
        }
    }
    let outputs = super::fusion::output_mask(g);
    let mut found = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if !matches!(n.op, Op::MatMul(..)) {
            continue;
        }
        let Some(a) = at(g, NodeId(i as u32), realized) else {
            continue;
        };
        let private = a.inner.iter().all(|x| {
            !outputs[x.index()]
                && users[x.index()]
                    .iter()
                    .all(|u| *u == a.pv || a.inner.binary_search(u).is_ok())
        });
        if private {
            found.push(a);
        }
    }
    found
}

//! Fusion: which nodes own a buffer ("realized"). A realized node becomes one kernel; every
//! other node is inlined into the kernels that read it. The decision is made by ordered
//! passes over the graph, each adding realized nodes for one reason:
//!
//! 1. [`realize_roots`]: graph inputs, reductions, matmuls, gathers, slice writes and graph
//!    outputs;
//! 2. [`realize_shared`]: elementwise nodes read more than once (no recompute), except
//!    constants and iotas, which are free to recompute;
//! 3. [`realize_matmul_operands`]: a matmul operand must reach a buffer through views only.
//!
//! Views never own a buffer: they become index arithmetic in the loads that read through
//! them. Lowering may still find a matmul operand whose index is not a strided (affine) view
//! and hands it back to [`realize`].

use kiln_ir::{Graph, NodeId, Op};

/// For each node, whether it owns a buffer.
pub type Realized = Vec<bool>;

/// Runs the passes in order.
pub fn plan(graph: &Graph) -> Realized {
    let mut r = vec![false; graph.nodes.len()];
    realize_roots(graph, &mut r);
    realize_shared(graph, &mut r);
    realize_matmul_operands(graph, &mut r);
    r
}

/// Marks `nodes` realized.
pub fn realize(r: &mut Realized, nodes: &[NodeId]) {
    for n in nodes {
        r[n.index()] = true;
    }
}

/// Pass 1: nodes that always own a buffer.
pub fn realize_roots(graph: &Graph, r: &mut Realized) {
    for (i, node) in graph.nodes.iter().enumerate() {
        if matches!(
            node.op,
            Op::Input { .. }
                | Op::Reduce(..)
                | Op::MatMul(..)
                | Op::Gather(..)
                | Op::WriteSlice { .. }
        ) {
            r[i] = true;
        }
    }
    for (_, o) in &graph.outputs {
        r[o.index()] = true;
    }
}

/// How many times each node is read, counting reads through views as reads of the viewed
/// node (a view read twice reads its source twice).
pub fn read_counts(graph: &Graph) -> Vec<usize> {
    let n = graph.nodes.len();
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
    reads
}

/// Pass 2: computed elementwise values read more than once are computed once.
pub fn realize_shared(graph: &Graph, r: &mut Realized) {
    let reads = read_counts(graph);
    for (i, node) in graph.nodes.iter().enumerate() {
        if matches!(
            node.op,
            Op::Unary(..) | Op::Binary(..) | Op::Where(..) | Op::Concat(..)
        ) && reads[i] > 1
        {
            r[i] = true;
        }
    }
}

/// Pass 3: a matmul reads its operands as strided views of buffers; an operand that is not a
/// chain of views down to a realized node is realized itself.
pub fn realize_matmul_operands(graph: &Graph, r: &mut Realized) {
    for node in &graph.nodes {
        let Op::MatMul(a, b) = node.op else { continue };
        for operand in [a, b] {
            let mut x = operand;
            while let Op::View(_, src) = graph.node(x).op {
                if r[x.index()] {
                    break;
                }
                x = src;
            }
            if !r[x.index()] {
                r[operand.index()] = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::{DType, Expr};

    fn x(g: &mut Graph) -> NodeId {
        g.input("x", DType::F32, &[Expr::sym("s"), Expr::Const(4)])
            .unwrap()
    }

    #[test]
    fn roots_are_inputs_reductions_matmuls_and_outputs() {
        let mut g = Graph::new();
        let a = x(&mut g);
        let e = g.exp2(a).unwrap();
        let s = g.sum(e, 1).unwrap();
        let t = g.sin(s).unwrap();
        g.output("y", t);
        let mut r = vec![false; g.nodes.len()];
        realize_roots(&g, &mut r);
        assert!(r[a.index()] && r[s.index()] && r[t.index()]);
        assert!(
            !r[e.index()],
            "exp2 is inlined into the reduction as its prologue"
        );
    }

    #[test]
    fn shared_values_are_computed_once_but_constants_are_not() {
        let mut g = Graph::new();
        let a = x(&mut g);
        let two = g.scalar(2.0, DType::F32);
        let e = g.mul(a, two).unwrap(); // read twice below
        let p = g.sin(e).unwrap();
        let q = g.exp2(e).unwrap();
        let y = g.add(p, q).unwrap();
        g.output("y", y);
        let mut r = vec![false; g.nodes.len()];
        realize_shared(&g, &mut r);
        assert!(r[e.index()]);
        assert!(!r[two.index()], "constants are recomputed, never stored");
        assert!(!r[p.index()] && !r[q.index()]);
    }

    #[test]
    fn a_computed_matmul_operand_is_realized_but_a_view_of_an_input_is_not() {
        let mut g = Graph::new();
        let a = x(&mut g);
        let w = g
            .input("w", DType::F32, &[Expr::Const(8), Expr::Const(4)])
            .unwrap();
        let wt = g.transpose(w, 0, 1).unwrap(); // a view: read in place
        let e = g.exp2(a).unwrap(); // computed: must be realized first
        let m = g.matmul(e, wt).unwrap();
        g.output("y", m);
        let r = plan(&g);
        assert!(r[e.index()]);
        assert!(!r[wt.index()]);
    }
}

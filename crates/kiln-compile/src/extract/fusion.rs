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
//! Then passes that take buffers away again, so that fewer, bigger kernels run:
//!
//! 4. [`fuse_attention`]: `softmax(f(Q K^T)) V` (`extract/attention.rs`) is one kernel; the
//!    scores, the softmax and everything between them lose their buffers;
//! 5. [`fuse_reductions_into_maps`]: a reduction read by one elementwise kernel only is
//!    computed inside it (a `ReduceMap` kernel: RMSNorm, a softmax step);
//! 6. [`fuse_row_maps_into_readers`]: such a row kernel read by one elementwise kernel or one
//!    in-place slice write only is inlined into it too (RoPE applied to a normalised row; the
//!    k heads' norm and RoPE computed by the KV cache write);
//! 7. [`fuse_matmul_epilogues`]: a matmul read by one elementwise kernel only computes that
//!    kernel's elements from its products (a residual add, SiLU(gate) * up); an attention's
//!    value product stays the attention's root;
//! 8. [`fuse_attention_outputs`]: an attention read only by a matmul through views that keep
//!    each output row together (grouped-query attention's `[kv, group * s, d]` read as
//!    `[s, heads * d]`) writes that view's buffer itself, in place of a copy.
//!
//! Views never own a buffer: they become index arithmetic in the loads that read through
//! them. Lowering may still find a matmul operand whose index is not a strided (affine) view,
//! or a fused reduction or matmul read at an index its kernel cannot compute, and hands the
//! node back to [`realize`].

use kiln_ir::{Graph, NodeId, Op};

/// For each node, whether it owns a buffer.
pub type Realized = Vec<bool>;

/// Runs the passes in order.
pub fn plan(graph: &Graph) -> Realized {
    let mut r = vec![false; graph.nodes.len()];
    // Each pass is linear in the graph and short; between passes, an interrupted compile
    // stops (see `extract_with`).
    let stop = crate::cancel::requested;
    realize_roots(graph, &mut r);
    realize_shared(graph, &mut r);
    realize_matmul_operands(graph, &mut r);
    if stop() {
        return r;
    }
    let attention_roots = fuse_attention(graph, &mut r);
    if stop() {
        return r;
    }
    let row_maps = fuse_reductions_into_maps(graph, &mut r);
    if stop() {
        return r;
    }
    let row_maps = fuse_row_maps_into_readers(graph, &mut r, row_maps);
    if stop() {
        return r;
    }
    fuse_matmul_epilogues(graph, &mut r, &row_maps, &attention_roots);
    fuse_attention_outputs(graph, &mut r, &attention_roots);
    r
}

/// Pass 4: each recognised attention is computed by its value product's kernel: the nodes in
/// between lose their buffers (lowering recognises the pattern again at the root). Returns
/// the roots.
pub fn fuse_attention(graph: &Graph, r: &mut Realized) -> Vec<NodeId> {
    let mut roots = Vec::new();
    for a in super::attention::find(graph, r) {
        for x in a.inner {
            r[x.index()] = false;
        }
        roots.push(a.pv);
    }
    roots
}

/// Passes 1-3 only: every reduction and matmul owns its buffer.
pub fn plan_unfused(graph: &Graph) -> Realized {
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

/// For each node, the realized nodes whose kernels load it: walking each kernel's inlined
/// nodes down to the realized ones it reads. Only realized nodes have readers.
pub fn kernel_readers(graph: &Graph, r: &Realized) -> Vec<Vec<NodeId>> {
    let mut readers: Vec<Vec<NodeId>> = vec![Vec::new(); graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        if !r[i] || matches!(node.op, Op::Input { .. }) {
            continue;
        }
        let root = NodeId(i as u32);
        let mut stack = node.op.inputs();
        let mut seen = std::collections::HashSet::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            if r[x.index()] {
                readers[x.index()].push(root);
            } else {
                stack.extend(graph.node(x).op.inputs());
            }
        }
    }
    readers
}

/// Whether a realized node's kernel is lowered as an elementwise body (the kernels that can
/// absorb a reduction or a matmul).
fn is_elementwise_kernel(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(..) | Op::Binary(..) | Op::Where(..) | Op::Concat(..) | Op::View(..)
    )
}

/// For each node, whether it is a graph output. (A model has two outputs per layer, its KV
/// cache: a scan of the outputs per node would make extraction quadratic in depth.)
pub fn output_mask(graph: &Graph) -> Vec<bool> {
    let mut out = vec![false; graph.nodes.len()];
    for (_, o) in &graph.outputs {
        out[o.index()] = true;
    }
    out
}

/// The single kernel that reads realized node `x`, if it is an elementwise kernel and `x` is no
/// graph output (`outputs`: [`output_mask`]).
fn sole_elementwise_reader(
    graph: &Graph,
    r: &Realized,
    readers: &[Vec<NodeId>],
    outputs: &[bool],
    x: usize,
) -> Option<NodeId> {
    match readers[x].as_slice() {
        [e] if r[e.index()] && is_elementwise_kernel(&graph.node(*e).op) && !outputs[x] => Some(*e),
        _ => None,
    }
}

/// Pass 5: a reduction whose only reader is one elementwise kernel is computed by that kernel
/// (a `ReduceMap`: reduce the row, then map over it), at most one reduction per kernel.
/// Returns, per node, whether its kernel now computes a reduction.
pub fn fuse_reductions_into_maps(graph: &Graph, r: &mut Realized) -> Vec<bool> {
    let readers = kernel_readers(graph, r);
    let outputs = output_mask(graph);
    let mut row_map = vec![false; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        if !r[i] || !matches!(node.op, Op::Reduce(..)) {
            continue;
        }
        if let Some(e) = sole_elementwise_reader(graph, r, &readers, &outputs, i) {
            if !row_map[e.index()] {
                r[i] = false;
                row_map[e.index()] = true;
            }
        }
    }
    row_map
}

/// Whether realized node `w` is a slice write that lowering makes in place (the written
/// buffer has no other reader): its kernel iterates over the written part only, whose rows a
/// row kernel can compute (a KV cache write).
fn writes_in_place(graph: &Graph, r: &Realized, reads: &[usize], w: NodeId) -> bool {
    matches!(graph.node(w).op, Op::WriteSlice { dst, .. } if r[dst.index()] && reads[dst.index()] == 1)
}

/// Pass 6: a row kernel (pass 5) whose only reader is another elementwise kernel or an
/// in-place slice write, which does not compute a reduction of its own, is recomputed inside
/// it: the reader then reduces the row and applies both maps (RoPE on a normalised row reads
/// each value twice; recomputing `x * r * w` costs less than a launch and a round trip
/// through memory; the keys' norm and RoPE are computed by their KV cache write).
pub fn fuse_row_maps_into_readers(
    graph: &Graph,
    r: &mut Realized,
    mut row_map: Vec<bool>,
) -> Vec<bool> {
    let readers = kernel_readers(graph, r);
    let outputs = output_mask(graph);
    let reads = read_counts(graph);
    for i in 0..graph.nodes.len() {
        if !r[i] || !row_map[i] {
            continue;
        }
        let writer = match readers[i].as_slice() {
            [w] if r[w.index()] && !outputs[i] && writes_in_place(graph, r, &reads, *w) => Some(*w),
            _ => None,
        };
        let reader = sole_elementwise_reader(graph, r, &readers, &outputs, i).or(writer);
        if let Some(e) = reader {
            if !row_map[e.index()] && graph.shape(e).len() == graph.shape(NodeId(i as u32)).len() {
                r[i] = false;
                row_map[i] = false;
                row_map[e.index()] = true;
            }
        }
    }
    row_map
}

/// Pass 7: a matmul whose only reader is one elementwise kernel that computes no reduction is
/// computed by that kernel, as the products its epilogue reads.
pub fn fuse_matmul_epilogues(
    graph: &Graph,
    r: &mut Realized,
    row_map: &[bool],
    attention_roots: &[NodeId],
) {
    let readers = kernel_readers(graph, r);
    let outputs = output_mask(graph);
    let mut attention = vec![false; graph.nodes.len()];
    for root in attention_roots {
        attention[root.index()] = true;
    }
    let mut taken = vec![false; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        // An attention's value product stays its kernel's root: as an epilogue's matmul its
        // fused scores would be lowered as plain buffers again.
        if !r[i] || !matches!(node.op, Op::MatMul(..)) || attention[i] {
            continue;
        }
        if let Some(e) = sole_elementwise_reader(graph, r, &readers, &outputs, i) {
            if !row_map[e.index()] && !taken[e.index()] {
                r[i] = false;
                taken[e.index()] = true;
            }
        }
    }
}

/// Pass 8: an attention read only by a matmul (one with a kernel of its own or a kernel's
/// epilogue product), through views that no one else reads and that the attention kernel can
/// write (`attention::output_rows`), writes the matmul's operand: the top view gets the
/// buffer, the attention loses its own. Otherwise that operand, not a strided view of the
/// attention's `[b.., m, dv]` rows, is copied by a kernel of its own (`realize`). Runs last, so
/// that the passes above, which take a realized view for an elementwise kernel, never see
/// this one.
pub fn fuse_attention_outputs(graph: &Graph, r: &mut Realized, attention_roots: &[NodeId]) {
    let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); graph.nodes.len()];
    for (i, n) in graph.nodes.iter().enumerate() {
        for x in n.op.inputs() {
            users[x.index()].push(NodeId(i as u32));
        }
    }
    let outputs = output_mask(graph);
    for &pv in attention_roots {
        // Up the chain of views while each is the only reader of the one below.
        let mut top = pv;
        loop {
            if outputs[top.index()] || (top != pv && r[top.index()]) {
                break;
            }
            match users[top.index()].as_slice() {
                [u] if graph.node(*u).op.is_view() => top = *u,
                _ => break,
            }
        }
        let read_by_one_matmul = match users[top.index()].as_slice() {
            [m] => matches!(graph.node(*m).op, Op::MatMul(a, b) if (a == top) != (b == top)),
            _ => false,
        };
        if top != pv
            && !r[top.index()]
            && !outputs[top.index()]
            && read_by_one_matmul
            && super::attention::output_rows(graph, pv, top).is_some()
        {
            r[top.index()] = true;
            r[pv.index()] = false;
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

    fn kinds(g: &Graph, fuse: bool) -> Vec<String> {
        crate::extract::extract_with(g, fuse)
            .steps
            .iter()
            .map(|s| s.kernel.label())
            .collect()
    }

    #[test]
    fn rms_norm_is_one_row_kernel() {
        let mut g = Graph::new();
        let a = x(&mut g);
        let w = g.input("w", DType::F32, &[Expr::Const(4)]).unwrap();
        let y = g.rms_norm(a, w, 1e-6).unwrap();
        g.output("y", y);
        assert_eq!(kinds(&g, false), ["reduce_sum", "elementwise"]);
        assert_eq!(kinds(&g, true), ["reduce_sum_map"]);
        let mut r = plan_unfused(&g);
        let maps = fuse_reductions_into_maps(&g, &mut r);
        assert!(maps[y.index()] && r.iter().filter(|&&x| x).count() == 3);
    }

    #[test]
    fn a_reduction_read_by_two_kernels_keeps_its_buffer() {
        let mut g = Graph::new();
        let a = x(&mut g);
        let s = g.sum(a, 1).unwrap();
        let p = g.mul(a, s).unwrap();
        let q = g.add(a, s).unwrap();
        g.output("p", p);
        g.output("q", q);
        assert_eq!(
            kinds(&g, true),
            ["reduce_sum", "elementwise", "elementwise"]
        );
    }

    #[test]
    fn a_reduction_read_at_a_shifted_row_is_not_fused() {
        // concat([x, y * sum(y)]) along rows: the reduction's row is (row - n), which not every
        // row of the kernel has.
        let mut g = Graph::new();
        let a = x(&mut g);
        let b = g
            .input("y", DType::F32, &[Expr::sym("t"), Expr::Const(4)])
            .unwrap();
        let s = g.sum(b, 1).unwrap();
        let m = g.mul(b, s).unwrap();
        let c = g.concat(&[a, m], 0).unwrap();
        g.output("c", c);
        assert_eq!(kinds(&g, true), ["reduce_sum", "elementwise"]);
    }

    #[test]
    fn rope_of_a_normalised_row_is_one_kernel() {
        let mut g = Graph::new();
        let q = g
            .input(
                "q",
                DType::F32,
                &[Expr::sym("s"), Expr::Const(2), Expr::Const(8)],
            )
            .unwrap();
        let w = g.input("w", DType::F32, &[Expr::Const(8)]).unwrap();
        let n = g.rms_norm(q, w, 1e-6).unwrap();
        let n = g.permute(n, &[1, 0, 2]).unwrap();
        let (cos, sin) = g
            .rope_tables(Expr::Const(0), Expr::sym("s"), 8, 1e4)
            .unwrap();
        let y = g.rope(n, cos, sin).unwrap();
        g.output("y", y);
        // The RoPE tables keep their kernels either way; the reduction and the normalised
        // row are computed by the RoPE kernel.
        let (unfused, fused) = (kinds(&g, false), kinds(&g, true));
        assert_eq!(unfused[..2], ["reduce_sum", "elementwise"], "{unfused:?}");
        assert_eq!(fused.last().unwrap(), "reduce_sum_map", "{fused:?}");
        assert_eq!(fused.len() + 2, unfused.len(), "{fused:?}");
    }

    #[test]
    fn rope_of_normalised_heads_read_through_a_grouped_reshape_is_one_row_kernel() {
        // Grouped-query attention reads the rotated heads as [kv, group * s, d]: each row of
        // that kernel is one (head, position) row of the norm, reached through views only.
        let s = Expr::sym("s");
        let mut g = Graph::new();
        let q = g
            .input(
                "q",
                DType::F32,
                &[s.clone(), Expr::Const(4), Expr::Const(8)],
            )
            .unwrap();
        let w = g.input("w", DType::F32, &[Expr::Const(8)]).unwrap();
        let n = g.rms_norm(q, w, 1e-6).unwrap();
        let n = g.permute(n, &[1, 0, 2]).unwrap();
        let (cos, sin) = g.rope_tables(Expr::Const(0), s.clone(), 8, 1e4).unwrap();
        let y = g.rope(n, cos, sin).unwrap();
        let grouped = g
            .reshape(y, &[Expr::Const(2), s.mul(2), Expr::Const(8)])
            .unwrap();
        g.output("y", grouped);
        let fused = kinds(&g, true);
        assert_eq!(fused.last().unwrap(), "reduce_sum_map", "{fused:?}");
        assert!(!fused.contains(&"reduce_sum".to_string()), "{fused:?}");
        // The reduction is read at (position, head) of each row; the RoPE tables keep
        // their kernels.
        assert_eq!(kinds(&g, false).len(), fused.len() + 2, "{fused:?}");
    }

    #[test]
    fn a_cache_write_of_normalised_rotated_keys_is_one_row_kernel() {
        // The keys' norm, RoPE and the in-place write into the cache at p: one kernel that
        // reduces each head's row and stores its rotated values in the cache.
        let (s, p) = (Expr::sym("s"), Expr::sym("p"));
        let mut g = Graph::new();
        let k = g
            .input(
                "k",
                DType::F32,
                &[s.clone(), Expr::Const(2), Expr::Const(8)],
            )
            .unwrap();
        let w = g.input("w", DType::F32, &[Expr::Const(8)]).unwrap();
        let n = g.rms_norm(k, w, 1e-6).unwrap();
        let n = g.permute(n, &[1, 0, 2]).unwrap();
        let (cos, sin) = g.rope_tables(p.clone(), s, 8, 1e4).unwrap();
        let y = g.rope(n, cos, sin).unwrap();
        let cache = g
            .input(
                "cache",
                DType::F32,
                &[Expr::Const(2), Expr::sym("c"), Expr::Const(8)],
            )
            .unwrap();
        let written = g.write_slice(cache, y, 1, p).unwrap();
        g.output("cache_out", written);
        let (unfused, fused) = (kinds(&g, false), kinds(&g, true));
        assert_eq!(unfused[..2], ["reduce_sum", "elementwise"], "{unfused:?}");
        assert_eq!(unfused.last().unwrap(), "write", "{unfused:?}");
        assert_eq!(fused.last().unwrap(), "reduce_sum_map", "{fused:?}");
        assert_eq!(fused.len() + 2, unfused.len(), "{fused:?}");
        let program = crate::extract::extract(&g);
        let last = program.steps.last().unwrap();
        assert!(last.writes_into.is_some(), "in place");
        let crate::KernelKind::ReduceMap {
            write: Some(part), ..
        } = &last.kernel.kind
        else {
            panic!("a row kernel writing part of the cache")
        };
        assert_eq!((part.axis, part.shape.len()), (1, 3));
    }

    fn linear(g: &mut Graph, x: NodeId, name: &str, out: i64) -> NodeId {
        let k = g.shape(x)[1].clone();
        let w = g.input(name, DType::F32, &[Expr::Const(out), k]).unwrap();
        let wt = g.transpose(w, 0, 1).unwrap();
        g.matmul(x, wt).unwrap()
    }

    #[test]
    fn a_residual_add_is_the_matmuls_epilogue() {
        let mut g = Graph::new();
        let a = x(&mut g);
        let m = linear(&mut g, a, "w", 4);
        let y = g.add(a, m).unwrap();
        let z = g.exp2(y).unwrap(); // y is read twice: it keeps a buffer
        let z = g.add(z, y).unwrap();
        g.output("z", z);
        assert_eq!(kinds(&g, false), ["matmul", "elementwise", "elementwise"]);
        assert_eq!(kinds(&g, true), ["matmul_epilogue", "elementwise"]);
    }

    #[test]
    fn silu_gate_times_up_from_one_matmul_reads_two_column_ranges() {
        let mut g = Graph::new();
        let a = x(&mut g);
        let gu = linear(&mut g, a, "w_gate_up", 12);
        let s = Expr::sym("s");
        let gate = g.slice(gu, 1, 0, 6).unwrap();
        let up = g.slice(gu, 1, 6, 12).unwrap();
        let act = g.silu(gate).unwrap();
        let h = g.mul(act, up).unwrap();
        let down = linear(&mut g, h, "w_down", 4);
        g.output("y", down);
        let p = crate::extract::extract(&g);
        let labels: Vec<String> = p.steps.iter().map(|s| s.kernel.label()).collect();
        assert_eq!(labels, ["matmul_epilogue", "matmul"]);
        let crate::KernelKind::MatMul {
            epilogue: Some(e),
            n,
            ..
        } = &p.steps[0].kernel.kind
        else {
            panic!("an epilogue")
        };
        assert_eq!(e.cols, [Expr::Const(0), Expr::Const(6)]);
        assert_eq!(*n, Expr::Const(6));
        assert_eq!(p.steps[0].kernel.out_shape, [s, Expr::Const(6)]);
    }

    #[test]
    fn gate_and_up_as_two_matmuls_fuse_one_of_them() {
        let mut g = Graph::new();
        let a = x(&mut g);
        let gate = linear(&mut g, a, "w_gate", 6);
        let up = linear(&mut g, a, "w_up", 6);
        let act = g.silu(gate).unwrap();
        let h = g.mul(act, up).unwrap();
        g.output("h", h);
        assert_eq!(kinds(&g, true), ["matmul", "matmul_epilogue"]);
    }

    #[test]
    fn grouped_query_attention_writes_the_rows_its_output_projection_reads() {
        // [kv, group * s, d] read as [s, heads * d]: not a strided view of the attention's
        // rows, so a copy kernel while the attention wrote them contiguously.
        let g = kiln_ir::testing::attention_graph_projected(2, 3, 8, 8);
        assert_eq!(kinds(&g, true), ["attention", "matmul"]);
        let p = crate::extract::extract(&g);
        let crate::KernelKind::Attention {
            out_rows: Some(rows),
            ..
        } = &p.steps[0].kernel.kind
        else {
            panic!("an attention writing its rows elsewhere")
        };
        // Row i of KV head v0's group is head v0 * 3 + i / s at position i % s.
        let s = Expr::sym("s");
        let (b, i) = (Expr::Var(0), Expr::Var(1));
        let flat = b.mul(s.clone().mul(3)).add(i);
        let want = flat.clone().rem(s.clone()).mul(48).add(flat.div(s).mul(8));
        let bind: kiln_ir::Bindings = [("s".to_string(), 5)].into();
        for (v0, v1) in [(0, 0), (0, 14), (1, 3), (1, 11)] {
            assert_eq!(
                rows.eval_with(&bind, &[v0, v1]).unwrap(),
                want.eval_with(&bind, &[v0, v1]).unwrap(),
                "{rows:?} at ({v0}, {v1})"
            );
        }
    }

    #[test]
    fn an_attention_read_through_a_slice_keeps_its_copy() {
        // Each head's first position only: most rows the attention writes are not in the view.
        let mut g = kiln_ir::testing::attention_graph(2, 3, 8, 8, true);
        let (_, pv) = g.outputs.pop().unwrap();
        let first = g.slice(pv, 1, 0, 1).unwrap();
        let heads = g
            .reshape(first, &[Expr::Const(1), Expr::Const(16)])
            .unwrap();
        let w = g
            .input("w", DType::F32, &[Expr::Const(16), Expr::Const(4)])
            .unwrap();
        let y = g.matmul(heads, w).unwrap();
        g.output("y", y);
        assert_eq!(kinds(&g, true), ["attention", "elementwise", "matmul"]);
        let p = crate::extract::extract(&g);
        assert!(matches!(
            p.steps[0].kernel.kind,
            crate::KernelKind::Attention { out_rows: None, .. }
        ));
    }

    #[test]
    fn a_matmul_read_beyond_its_columns_is_not_fused() {
        // concat([x @ W^T, x]) along columns: the epilogue would need products past N.
        let mut g = Graph::new();
        let a = x(&mut g);
        let m = linear(&mut g, a, "w", 4);
        let c = g.concat(&[m, a], 1).unwrap();
        g.output("c", c);
        assert_eq!(kinds(&g, true), ["matmul", "elementwise"]);
    }
}

//! Which luminal nodes kiln takes, and how they split into kiln segments. Reads the graph only.

use crate::translate;
use luminal::prelude::{
    petgraph::{visit::EdgeRef, Direction},
    Graph, NodeIndex,
};
use rustc_hash::{FxHashMap, FxHashSet};

/// What kiln does with a luminal node.
pub(crate) enum Kind {
    /// A `Function` without inputs: data luminal provides (inputs, weights). Stays in luminal;
    /// kiln reads it as an input.
    Source,
    /// Translated into kiln.
    Supported,
    /// Stays in luminal (fallback mode) or is the error (default), with the reason.
    Unsupported(String),
}

/// The `Debug` name luminal shows for a node (`Add`, `SumReduce(1)`, `Weight Load`, ...).
pub(crate) fn op_name(cx: &Graph, n: NodeIndex) -> String {
    format!("{:?}", cx.graph[n])
}

/// Classifies one node: its op, then every view it reads through.
pub(crate) fn classify(cx: &Graph, n: NodeIndex) -> Kind {
    let o = cx.graph[n].as_ref();
    let srcs = cx.get_sources(n);
    if o.as_any().is::<luminal::op::Function>() {
        return if srcs.is_empty() {
            Kind::Source
        } else {
            Kind::Unsupported("a Function with inputs is opaque CPU code".into())
        };
    }
    if !translate::is_supported_op(o) {
        return Kind::Unsupported("kiln has no translation for this op".into());
    }
    if let Err(e) = translate::check_constant(o) {
        return Kind::Unsupported(e);
    }
    for (i, (s, out, st)) in srcs.iter().enumerate() {
        if *out != 0 {
            return Kind::Unsupported(format!("reads output {out} of node {}", s.index()));
        }
        if let Err(e) = translate::check_tracker(st) {
            return Kind::Unsupported(format!("input {i} (from node {}): {e}", s.index()));
        }
    }
    Kind::Supported
}

/// One kiln graph's worth of luminal nodes.
pub(crate) struct Segment {
    pub index: usize,
    /// Nodes translated into this segment, in topological order.
    pub nodes: Vec<NodeIndex>,
    /// Nodes whose value leaves the segment, in output order.
    pub outputs: Vec<NodeIndex>,
}

/// The nodes that must stay readable after compile: retrieved or kept tensors and the ids the
/// caller asked to remap.
pub(crate) fn roots(cx: &Graph, remap: &[NodeIndex]) -> FxHashSet<NodeIndex> {
    cx.no_delete
        .iter()
        .chain(cx.to_retrieve.iter())
        .chain(remap.iter())
        .copied()
        .filter(|&n| cx.graph.contains_node(n))
        .collect()
}

/// Splits the supported nodes into segments.
///
/// Needed nodes are those read afterwards (`roots`) or by luminal ops, and what they read;
/// dead supported nodes are dropped. A supported node's level is the number of luminal-kept ops
/// on the longest path to it, and each level is one segment, so a segment reads only sources,
/// luminal ops and earlier segments (no cycles). Without unsupported nodes there is one segment.
pub(crate) fn segments(
    cx: &Graph,
    topo: &[NodeIndex],
    kind: &FxHashMap<NodeIndex, Kind>,
    roots: &FxHashSet<NodeIndex>,
) -> Vec<Segment> {
    let supported = |n: &NodeIndex| matches!(kind[n], Kind::Supported);
    let mut needed: FxHashSet<NodeIndex> = FxHashSet::default();
    let mut stack: Vec<NodeIndex> = roots.iter().copied().filter(supported).collect();
    for &n in topo {
        if let Kind::Unsupported(_) = kind[&n] {
            stack.extend(cx.get_sources(n).into_iter().map(|s| s.0).filter(supported));
        }
    }
    while let Some(n) = stack.pop() {
        if needed.insert(n) {
            stack.extend(cx.get_sources(n).into_iter().map(|s| s.0).filter(supported));
        }
    }

    let mut level: FxHashMap<NodeIndex, usize> = FxHashMap::default();
    for &n in topo {
        let pred = cx
            .get_sources(n)
            .iter()
            .map(|s| level[&s.0])
            .max()
            .unwrap_or(0);
        let l = match kind[&n] {
            Kind::Source => 0,
            Kind::Supported => pred,
            Kind::Unsupported(_) => pred + 1,
        };
        level.insert(n, l);
    }
    let max_level = level.values().copied().max().unwrap_or(0);
    let mut segments: Vec<Segment> = Vec::new();
    for l in 0..=max_level {
        let nodes: Vec<NodeIndex> = topo
            .iter()
            .copied()
            .filter(|n| needed.contains(n) && level[n] == l)
            .collect();
        if nodes.is_empty() {
            continue;
        }
        let set: FxHashSet<NodeIndex> = nodes.iter().copied().collect();
        let outputs = nodes
            .iter()
            .copied()
            .filter(|n| {
                roots.contains(n)
                    || cx
                        .graph
                        .edges_directed(*n, Direction::Outgoing)
                        .filter(|e| !e.weight().is_schedule())
                        .any(|e| {
                            let t = e.target();
                            !set.contains(&t) && (needed.contains(&t) || !supported(&t))
                        })
            })
            .collect();
        segments.push(Segment {
            index: segments.len(),
            nodes,
            outputs,
        });
    }
    segments
}

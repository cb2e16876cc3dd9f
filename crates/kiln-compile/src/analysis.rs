//! Analysis: validate the graph, then eliminate common subexpressions and dead nodes. The result
//! is a new graph in topological order holding only what the outputs need.

use kiln_ir::{Graph, Node, NodeId, Op};
use std::collections::HashMap;

use crate::{cancel, CompileError};

pub fn analyze(graph: &Graph) -> Result<Graph, CompileError> {
    validate(graph)?;
    let cse = eliminate_common_subexpressions(graph)?;
    let dce = eliminate_dead_nodes(&cse);
    if dce.is_err() {
        cancel::discard(cse);
    }
    dce
}

fn validate(graph: &Graph) -> Result<(), CompileError> {
    let invalid = |what: String| Err(CompileError::InvalidGraph(what));
    if graph.outputs.is_empty() {
        return invalid("the graph has no outputs".into());
    }
    let mut names = std::collections::HashSet::new();
    for (name, id) in &graph.outputs {
        if !names.insert(name) {
            return invalid(format!("output '{name}' is declared twice"));
        }
        if id.index() >= graph.nodes.len() {
            return invalid(format!(
                "output '{name}' refers to a node that does not exist"
            ));
        }
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        cancel::check_every(i)?;
        for inp in node.op.inputs() {
            if inp.index() >= i {
                return invalid(format!(
                    "node {i} ({:?}) reads node {} that is not before it",
                    node.op, inp.0
                ));
            }
        }
    }
    if let Err(e) = graph.check_quantized_reads() {
        return invalid(e.to_string());
    }
    Ok(())
}

/// Merges nodes with the same op, inputs, dtype and shape (e.g. the RoPE tables every layer
/// builds): the first occurrence wins.
fn eliminate_common_subexpressions(graph: &Graph) -> Result<Graph, CompileError> {
    let mut out = Graph::new();
    let mut seen: HashMap<Node, NodeId> = HashMap::new();
    let mut remap: Vec<NodeId> = Vec::with_capacity(graph.nodes.len());
    for (i, node) in graph.nodes.iter().enumerate() {
        if let Err(e) = cancel::check_every(i) {
            cancel::discard((out, seen));
            return Err(e);
        }
        let n = Node {
            op: node.op.map_inputs(|x| remap[x.index()]),
            dtype: node.dtype,
            shape: node.shape.clone(),
        };
        let id = *seen
            .entry(n.clone())
            .or_insert_with(|| out.push(n.op, n.dtype, n.shape));
        remap.push(id);
    }
    out.outputs = graph
        .outputs
        .iter()
        .map(|(n, id)| (n.clone(), remap[id.index()]))
        .collect();
    out.requirements = graph.requirements.clone();
    Ok(out)
}

/// Drops nodes no output depends on. Inputs are kept even when unused, so that callers may pass
/// every declared input.
fn eliminate_dead_nodes(graph: &Graph) -> Result<Graph, CompileError> {
    let mut live = vec![false; graph.nodes.len()];
    for (_, o) in &graph.outputs {
        live[o.index()] = true;
    }
    for i in (0..graph.nodes.len()).rev() {
        if live[i] {
            for inp in graph.nodes[i].op.inputs() {
                live[inp.index()] = true;
            }
        }
        if matches!(graph.nodes[i].op, Op::Input { .. }) {
            live[i] = true;
        }
    }
    let mut out = Graph::new();
    let mut remap = vec![NodeId(u32::MAX); graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        if let Err(e) = cancel::check_every(i) {
            cancel::discard(out);
            return Err(e);
        }
        if live[i] {
            remap[i] = out.push(
                node.op.map_inputs(|x| remap[x.index()]),
                node.dtype,
                node.shape.clone(),
            );
        }
    }
    out.outputs = graph
        .outputs
        .iter()
        .map(|(n, id)| (n.clone(), remap[id.index()]))
        .collect();
    out.requirements = graph.requirements.clone();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::{DType, Expr};

    #[test]
    fn cse_merges_duplicates_and_dce_drops_dead_nodes() {
        let mut g = Graph::new();
        let x = g.input("x", DType::F32, &[Expr::sym("s")]).unwrap();
        let a = g.exp2(x).unwrap();
        let b = g.exp2(x).unwrap();
        let _dead = g.sin(x).unwrap();
        let y = g.add(a, b).unwrap();
        g.output("y", y);
        let out = analyze(&g).unwrap();
        assert_eq!(out.nodes.len(), 3, "{:?}", out.nodes);
    }

    #[test]
    fn rejects_graph_without_outputs() {
        let g = Graph::new();
        assert!(analyze(&g).unwrap_err().to_string().contains("no outputs"));
    }
}

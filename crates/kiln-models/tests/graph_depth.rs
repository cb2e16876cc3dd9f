//! Building a model's graph costs work linear in its depth. Work is counted, not timed: every
//! heap allocation made while building goes through a counting allocator (a quadratic step,
//! such as scanning all nodes to declare each input, allocates in proportion to the graph).
use kiln_ir::testing::alloc::{allocated, CountingAlloc};
use kiln_models::{build_graph, GraphOptions, QwenConfig};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// (nodes, bytes allocated, allocations) of building the graph of `c` with `layers` layers.
fn build(c: &QwenConfig, layers: usize) -> (usize, u64, u64) {
    let mut c = c.clone();
    c.num_layers = layers;
    let (b0, c0) = allocated();
    let g = build_graph(&c, GraphOptions::default()).unwrap();
    let (b1, c1) = allocated();
    (g.nodes.len(), b1 - b0, c1 - c0)
}

#[test]
fn graph_building_is_linear_in_depth() {
    // One test in this binary: nothing else allocates while a graph is built.
    let c = kiln_models::presets::preset("qwen2.5-0.5b").unwrap();
    let l = 100;
    let (n1, b1, a1) = build(&c, l);
    let (n2, _, _) = build(&c, 2 * l);
    let (n4, b4, a4) = build(&c, 4 * l);
    // Every layer adds the same nodes.
    let per_layer = (n2 - n1) / l;
    assert_eq!(n2 - n1, per_layer * l);
    assert_eq!(n4 - n1, per_layer * 3 * l, "nodes {n1} {n2} {n4}");
    // 4x the layers, at most 4x the work (plus a little slack for doubling vectors).
    let (bytes_ratio, calls_ratio) = (b4 as f64 / b1 as f64, a4 as f64 / a1 as f64);
    eprintln!(
        "{l} -> {} layers: nodes {n1} -> {n4}, bytes allocated {b1} -> {b4} ({bytes_ratio:.2}x), \
         allocations {a1} -> {a4} ({calls_ratio:.2}x)",
        4 * l
    );
    assert!(
        bytes_ratio < 4.5,
        "bytes allocated grew {bytes_ratio:.2}x for 4x the layers"
    );
    assert!(
        calls_ratio < 4.5,
        "allocations grew {calls_ratio:.2}x for 4x the layers"
    );
}

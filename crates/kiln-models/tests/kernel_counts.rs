//! What fusion and dedupe make of the Qwen graphs, pinned: a lost fusion (more launches) or a
//! kernel that stopped being canonical (more unique kernels) fails here. No compiler runs:
//! extraction and dedupe only.
use kiln_compile::{analysis::analyze, dedupe::dedupe, extract::extract_with};
use kiln_models::{build_graph, presets::preset, GraphOptions};

const QWEN25_LAUNCHES: usize = 250;
const QWEN25_UNIQUE: usize = 19;

/// (launches, distinct kernels) of a preset's decoder graph, optionally with `layers` layers.
fn counts(name: &str, layers: Option<usize>) -> (usize, usize) {
    counts_with(name, layers, true)
}

/// [`counts`], with or without the fusion passes (attention, row reductions with their maps,
/// matmul epilogues).
fn counts_with(name: &str, layers: Option<usize>, fusion: bool) -> (usize, usize) {
    let mut c = preset(name).unwrap();
    if let Some(l) = layers {
        c.num_layers = l;
    }
    let g = analyze(&build_graph(&c, GraphOptions::default()).unwrap()).unwrap();
    let p = extract_with(&g, fusion);
    let d = dedupe(&p, true);
    (p.steps.len(), d.kernels.len())
}

#[test]
fn qwen3_0_6b_launches_and_unique_kernels() {
    // 10 launches per layer (10 more for the embedding, the final norm and the LM head). The
    // q heads' norm and RoPE are one row kernel (13 per layer and 23 distinct kernels while
    // the norm's reduction had a kernel of its own); the attention writes its output as
    // `[s, heads * d]`, what o_proj reads (12 per layer and 21 distinct kernels while a copy
    // kernel did); the k heads' norm and RoPE are computed by the k cache write (11 per layer
    // and 20 distinct kernels while the norm had a kernel of its own).
    assert_eq!(counts("qwen3-0.6b", None), (290, 19));
    // Without the fusion passes: 26 per layer.
    assert_eq!(counts_with("qwen3-0.6b", None, false), (739, 33));
}

#[test]
fn unique_kernels_do_not_grow_with_depth_and_launches_grow_linearly() {
    let (l2, u2) = counts("qwen3-0.6b", Some(2));
    let (l3, u3) = counts("qwen3-0.6b", Some(3));
    let (l28, u28) = counts("qwen3-0.6b", Some(28));
    assert_eq!(u2, u28, "distinct kernels must not depend on depth");
    assert_eq!(u3, u28);
    let per_layer = l3 - l2;
    assert_eq!(
        l28,
        l2 + 26 * per_layer,
        "launches grow by the same amount per layer"
    );
    eprintln!("qwen3-0.6b: {per_layer} launches per layer, {u28} distinct kernels");
}

#[test]
fn qwen2_5_0_5b_launches_and_unique_kernels() {
    // Biases on q/k/v, no q/k norms, 24 layers.
    assert_eq!(
        counts("qwen2.5-0.5b", None),
        (QWEN25_LAUNCHES, QWEN25_UNIQUE)
    );
    assert_eq!(counts_with("qwen2.5-0.5b", None, false), (563, 30));
}

/// (launches, distinct kernels) of the batched graph of a preset for `slots` KV cache slots.
fn batched_counts(name: &str, slots: usize) -> (usize, usize) {
    let c = preset(name).unwrap();
    let g = kiln_models::build_batched_graph(&c, GraphOptions::default(), slots).unwrap();
    let p = extract_with(&analyze(&g).unwrap(), true);
    (p.steps.len(), dedupe(&p, true).kernels.len())
}

#[test]
fn batched_graph_slots_share_their_attention_kernels() {
    // Each slot launches its own attention kernels (4 per layer: the k norm + RoPE + cache
    // write, the v cache write, the q norm + RoPE, the attention; 5 while the k norm had a
    // kernel of its own), but they differ from slot 0's only in the names of their symbols:
    // one canonical kernel each, whatever the slots (108 distinct kernels at 8 slots before
    // the kernels were compared by canonical form).
    assert_eq!(batched_counts("qwen3-0.6b", 8), (1146, 22));
    let (launches_2, distinct_2) = batched_counts("qwen3-0.6b", 2);
    assert_eq!(
        distinct_2, 22,
        "distinct kernels must not grow with the slots"
    );
    assert_eq!(
        1146 - launches_2,
        6 * (28 * 4 + 6),
        "per slot: 4 per layer, 6 per forward"
    );
}

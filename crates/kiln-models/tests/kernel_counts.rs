//! What fusion and dedupe make of the Qwen graphs, pinned: a lost fusion (more launches) or a
//! kernel that stopped being canonical (more unique kernels) fails here. No compiler runs:
//! extraction and dedupe only.
use kiln_compile::{analysis::analyze, dedupe::dedupe, extract::extract};
use kiln_models::{build_graph, presets::preset, GraphOptions};

const QWEN25_LAUNCHES: usize = 563;
const QWEN25_UNIQUE: usize = 30;

/// (launches, distinct kernels) of a preset's decoder graph, optionally with `layers` layers.
fn counts(name: &str, layers: Option<usize>) -> (usize, usize) {
    let mut c = preset(name).unwrap();
    if let Some(l) = layers {
        c.num_layers = l;
    }
    let g = analyze(&build_graph(&c, GraphOptions::default()).unwrap()).unwrap();
    let p = extract(&g);
    let d = dedupe(&p, true);
    (p.steps.len(), d.kernels.len())
}

#[test]
fn qwen3_0_6b_launches_and_unique_kernels() {
    assert_eq!(counts("qwen3-0.6b", None), (739, 33));
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
}

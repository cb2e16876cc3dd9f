//! Compile [luminal](https://crates.io/crates/luminal) 0.2 graphs with kiln.
//!
//! ```
//! use kiln_luminal::KilnCompiler;
//! use luminal::nn::linear::Linear;
//! use luminal::prelude::*;
//!
//! let mut cx = Graph::new();
//! let model: Linear<4, 3> = InitModule::initialize(&mut cx);
//! cx.keep_tensors(state_set(&model)); // weights: kept by luminal, bound into kiln once
//! let x = cx.tensor::<(Dyn<'s'>, Const<4>)>();
//! let mut out = model.forward(x).softmax::<1>().retrieve();
//!
//! let kiln = KilnCompiler::builder().threads(2).no_cache().build(); // or ::default()
//! cx.compile((GenericCompiler::default(), kiln.clone()), &mut out);
//! for s in [2, 5] {
//!     x.set_dyn(vec![0.5; s * 4], &[s, 4]); // one compile serves every length
//!     cx.execute();
//!     let y = out.data(); // what luminal's CPUCompiler gives
//!     assert_eq!(y.len(), s * 3);
//!     out.drop(); // luminal skips nodes whose output is still held
//! }
//! let report = kiln.report().unwrap(); // kiln_compile::CompileReport
//! assert!(report.kernels_unique > 0);
//! ```
//!
//! [`KilnCompiler`] is a luminal compiler pass. After luminal's `GenericCompiler` the graph
//! holds luminal's primitive ops (Log2, Exp2, Sin, Recip, Sqrt, Add, Mul, Mod, LessThan,
//! SumReduce, MaxReduce, Contiguous, Constant) reading each other through `ShapeTracker` views;
//! the pass translates them into one kiln graph (views as kiln view ops, luminal's dynamic
//! dimensions as kiln symbols, luminal's matmul pattern as kiln's `matmul`), compiles it with
//! kiln's pipeline (parallel, deduplicated, cached, observable) on a backend from kiln's
//! registry, and replaces the translated nodes in luminal's graph with a [`KilnOp`] that runs the
//! compiled executable. Tensors are copied only at that boundary; inputs luminal keeps between
//! executes (weights) are bound into kiln once.
//!
//! An op kiln does not support is an error naming the op and the node
//! ([`BridgeError::Unsupported`]), or with
//! [`KilnCompilerBuilder::fallback_to_luminal`] stays in luminal with a warning; kiln then
//! compiles the parts around it.
//!
//! luminal's `Operator::process` cannot return an error: a failure while a kiln segment runs
//! panics with a message naming the segment, its luminal node and kiln's error.

mod compiler;
mod error;
mod op;
mod partition;
mod translate;

pub use compiler::{KilnCompiler, KilnCompilerBuilder};
pub use error::BridgeError;
pub use op::{
    KilnDims, KilnOp, KilnOutput, KilnPack, Packed, Role, SegmentStats, REBIND_KEY, REPORT_KEY,
    STATS_KEY,
};

use kiln_compile::CompileReport;
use luminal::prelude::{Graph, NodeIndex};

/// The [`KilnOp`]s of a compiled graph, in segment order.
fn kiln_ops(cx: &Graph) -> Vec<NodeIndex> {
    let mut ops: Vec<(usize, NodeIndex)> = cx
        .graph
        .node_indices()
        .filter_map(|n| {
            let op = cx.graph[n].as_any().downcast_ref::<KilnOp>()?;
            Some((op.segment(), n))
        })
        .collect();
    ops.sort();
    ops.into_iter().map(|(_, n)| n).collect()
}

/// The reports of the kiln segments in a compiled graph, found through the graph itself (for
/// `cx.compile(<(GenericCompiler, KilnCompiler)>::default(), ..)`, where the compiler value is
/// gone afterwards). One per segment, in execution order.
pub fn reports(cx: &mut Graph) -> Vec<CompileReport> {
    kiln_ops(cx)
        .into_iter()
        .filter_map(|n| cx.node_custom::<CompileReport, ()>(n, REPORT_KEY, ()))
        .collect()
}

/// What each kiln segment of a compiled graph did so far (runs, kept inputs bound).
pub fn segment_stats(cx: &mut Graph) -> Vec<SegmentStats> {
    kiln_ops(cx)
        .into_iter()
        .filter_map(|n| cx.node_custom::<SegmentStats, ()>(n, STATS_KEY, ()))
        .collect()
}

/// Makes every kiln segment bind its kept inputs again at the next execute. Needed only with
/// [`KilnCompilerBuilder::verify_kept_inputs`]`(false)`, after changing a kept tensor.
pub fn rebind_kept_inputs(cx: &mut Graph) {
    for n in kiln_ops(cx) {
        cx.node_custom::<(), ()>(n, REBIND_KEY, ());
    }
}

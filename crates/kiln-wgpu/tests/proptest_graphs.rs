//! The interpreter property test on wgpu: random graphs of elementwise, reduction, matmul and
//! view ops, several bindings of one compiled graph each, against the f64 interpreter.
//!
//! Tolerance, as for the CPU and CUDA backends (`crates/kiln-cpu/tests/proptest_graphs.rs`):
//! f32 kernels against the f64 oracle over chains of up to 7 ops, kept well-conditioned by the
//! generator, stay within a few hundred f32 ulps: 1e-5 absolute + 2e-5 relative. The
//! reductions here sum in a tree through workgroup memory and the GEMV sums 16 partial sums,
//! a different order from the CPU's sequential loop: the generator's means (not sums) keep the
//! order's effect below the tolerance, as the CUDA warp shuffles showed. WGSL's exp2 and sin on
//! lavapipe are within a few ulps for the bounded arguments the generator produces.
mod common;
use common::*;
use kiln_ir::testing::random_graph_inputs;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn wgpu_backend_matches_interpreter(
        ops in proptest::collection::vec((any::<u8>(), any::<u8>()), 1..8),
        binds in proptest::collection::vec((1usize..6, 1usize..9), 3),
        seed in any::<u64>(),
    ) {
        let Some(b) = backend() else { return Ok(()) };
        let g = kiln_ir::testing::random_graph(&ops);
        let mut exe = build(&b, &g, 2);
        for (i, (na, nb)) in binds.iter().enumerate() {
            let ins = random_graph_inputs(*na, *nb, seed ^ i as u64, seed.wrapping_add(77 + i as u64));
            check(exe.as_mut(), &g, &ins, 1e-5, 2e-5);
        }
    }
}

/// Found by the CPU property test (two chained matmuls then sin); kept for wgpu, whose GEMV
/// and tiled paths both occur in it.
#[test]
fn matmul_chain_then_sin() {
    let Some(b) = backend() else { return };
    let g = kiln_ir::testing::random_graph(&[(103, 223), (103, 20), (181, 0)]);
    let mut exe = build(&b, &g, 2);
    for (na, nb) in [(1usize, 1usize), (5, 3), (8, 8)] {
        let ins = random_graph_inputs(
            na,
            nb,
            11586058300773422267,
            11586058300773422267u64.wrapping_add(79),
        );
        check(exe.as_mut(), &g, &ins, 1e-5, 2e-5);
    }
}

//! Kernel extraction: partition the analysed graph into fused kernels, one per launch.
//!
//! Two steps. [`fusion`] decides which nodes are *realized* (own a buffer), in ordered passes
//! that can each be tested alone; everything else is inlined into the kernel that reads it.
//! `lower` then turns each realized node into a canonical [`Kernel`](kiln_program::Kernel):
//! inlined elementwise chains become its loop body, views become index arithmetic in its loads,
//! and its inputs are numbered in order of first use, so the kernel never mentions a node id.

mod attention;
pub mod fusion;
mod lower;

use kiln_ir::Graph;

pub use kiln_program::{Buffer, Program, Step};

/// Extracts the kernels of an analysed graph.
pub fn extract(graph: &Graph) -> Program {
    extract_with(graph, true)
}

/// [`extract`], with the fusion passes that put reductions and matmuls inside their readers
/// (`fuse`) or without them (the unfused kernels fused ones are tested against).
///
/// Once the program is interrupted ([`crate::interrupt`]), the passes and lowering stop early
/// and the program returned is incomplete: [`crate::compile`] looks at the flag after this
/// stage and fails with [`crate::CompileError::Interrupted`].
pub fn extract_with(graph: &Graph, fuse: bool) -> Program {
    let mut realized = if fuse {
        fusion::plan(graph)
    } else {
        fusion::plan_unfused(graph)
    };
    loop {
        match lower::build(graph, &realized) {
            Ok(p) => return p,
            Err(_) if crate::cancel::requested() => return lower::empty(),
            // Matmul operands that could not be read as strided views: realize them and redo
            // (all found in one pass, so this converges in one or two rounds).
            Err(operands) => fusion::realize(&mut realized, &operands),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::{DType, Expr, Graph};
    use kiln_program::{KernelKind, ScalarExpr};

    fn x(g: &mut Graph, name: &str) -> kiln_ir::NodeId {
        g.input(name, DType::F32, &[Expr::sym("s"), Expr::Const(8)])
            .unwrap()
    }

    #[test]
    fn an_elementwise_chain_is_one_kernel_reading_its_inputs_once() {
        let mut g = Graph::new();
        let a = x(&mut g, "a");
        let b = x(&mut g, "b");
        let e = g.exp2(a).unwrap();
        let m = g.mul(e, b).unwrap();
        let y = g.sin(m).unwrap();
        g.output("y", y);
        let p = extract(&g);
        assert_eq!(p.steps.len(), 1);
        let k = &p.steps[0].kernel;
        assert!(matches!(k.kind, KernelKind::Elementwise { .. }));
        assert_eq!(k.inputs, vec![DType::F32, DType::F32]);
        assert_eq!(
            p.steps[0].inputs,
            vec![0, 1],
            "a then b, in order of first use"
        );
    }

    #[test]
    fn a_transposed_weight_is_read_in_place_through_its_strides() {
        let mut g = Graph::new();
        let a = x(&mut g, "a");
        let w = g
            .input("w", DType::F32, &[Expr::Const(4), Expr::Const(8)])
            .unwrap();
        let wt = g.transpose(w, 0, 1).unwrap();
        let y = g.matmul(a, wt).unwrap();
        g.output("y", y);
        let p = extract(&g);
        assert_eq!(p.steps.len(), 1, "no copy of the transposed weight");
        let KernelKind::MatMul { b, .. } = &p.steps[0].kernel.kind else {
            panic!("a matmul")
        };
        assert_eq!(
            (b.row_stride.clone(), b.col_stride.clone()),
            (1.into(), 8.into())
        );
    }

    #[test]
    fn equal_structure_gives_equal_kernels_whatever_the_node_ids() {
        // Two "layers" of the same shape, built at different node ids.
        let mut g = Graph::new();
        let mut h = x(&mut g, "x");
        for l in 0..2 {
            let w = g
                .input(
                    &format!("w{l}"),
                    DType::F32,
                    &[Expr::Const(8), Expr::Const(8)],
                )
                .unwrap();
            let m = g.matmul(h, w).unwrap();
            let s = g.softmax(m, 1).unwrap();
            h = g.add(s, h).unwrap();
        }
        g.output("y", h);
        let p = extract(&g);
        assert_eq!(p.steps.len() % 2, 0);
        let half = p.steps.len() / 2;
        for i in 0..half {
            assert_eq!(p.steps[i].kernel, p.steps[half + i].kernel, "step {i}");
        }
    }

    #[test]
    fn a_reduction_inlines_its_elementwise_prologue() {
        let mut g = Graph::new();
        let a = x(&mut g, "a");
        let sq = g.mul(a, a).unwrap();
        let s = g.sum(sq, 1).unwrap();
        g.output("s", s);
        let p = extract(&g);
        assert_eq!(p.steps.len(), 1);
        let KernelKind::Reduce { body, .. } = &p.steps[0].kernel.kind else {
            panic!("a reduction")
        };
        assert!(matches!(body, ScalarExpr::Binary { .. }), "{body:?}");
    }
}

//! Kernel extraction: partition the analysed graph into fused kernels, one per launch.
//!
//! Two steps. [`fusion`] decides which nodes are *realized* (own a buffer), in ordered passes
//! that can each be tested alone; everything else is inlined into the kernel that reads it.
//! `lower` then turns each realized node into a canonical [`Kernel`]: inlined elementwise
//! chains become its loop body, views become index arithmetic in its loads, and its inputs are
//! numbered in order of first use, so the kernel never mentions a node id.

mod attention;
pub mod fusion;
mod lower;

use crate::kernel::Kernel;
use kiln_ir::{numel, DType, Expr, Graph};

/// A buffer of the program: a graph input or a kernel output.
#[derive(Clone, Debug)]
pub struct Buffer {
    pub dtype: DType,
    pub shape: Vec<Expr>,
    /// The graph input that fills it, if any.
    pub input: Option<String>,
}

impl Buffer {
    pub fn bytes(&self) -> Expr {
        numel(&self.shape).mul(self.dtype.size_bytes() as i64)
    }
}

/// One kernel launch: `kernel` writes buffer `output` reading buffers `inputs` (in the
/// kernel's input order).
#[derive(Clone, Debug)]
pub struct Step {
    pub kernel: Kernel,
    pub output: usize,
    pub inputs: Vec<usize>,
    /// In place: `output` is this buffer's storage, updated by the kernel (which writes only
    /// part of it). Lowering sets it only where this step is the buffer's last reader.
    pub writes_into: Option<usize>,
}

/// The graph as a sequence of kernel launches over buffers.
#[derive(Clone, Debug)]
pub struct Program {
    pub graph: Graph,
    pub buffers: Vec<Buffer>,
    /// Kernel launches in order; equal kernels appear in many steps until dedupe.
    pub steps: Vec<Step>,
    pub outputs: Vec<(String, usize)>,
}

/// Where one graph output lies after a run.
pub struct OutputLayout<'p> {
    pub name: &'p str,
    pub buffer: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: usize,
}

impl Program {
    /// Binds the graph's symbols for one run from the bound params' and carried values'
    /// dtypes and shapes and the run's inputs, checking every input against its declaration
    /// (what an executor does first).
    pub fn bind_run<'a>(
        &self,
        params: impl Iterator<Item = (&'a str, DType, &'a [usize])>,
        inputs: &'a std::collections::HashMap<String, kiln_ir::Tensor>,
        carried: impl Iterator<Item = (&'a str, DType, &'a [usize])>,
        symbols: &kiln_ir::Bindings,
    ) -> Result<kiln_ir::Bindings, kiln_ir::IrError> {
        let mut all: std::collections::HashMap<&str, (DType, &[usize])> =
            params.map(|(n, d, s)| (n, (d, s))).collect();
        all.extend(
            inputs
                .iter()
                .map(|(n, t)| (n.as_str(), (t.dtype(), t.shape()))),
        );
        for (name, dtype, shape) in carried {
            if inputs.contains_key(name) {
                return Err(kiln_ir::IrError::Input {
                    name: name.into(),
                    detail: "is carried over from the previous run by the executor; do not pass it"
                        .into(),
                });
            }
            all.insert(name, (dtype, shape));
        }
        self.graph.bind_shapes(&all, symbols)
    }

    /// Each output's buffer and concrete shape under bindings `b`.
    pub fn output_layouts(
        &self,
        b: &kiln_ir::Bindings,
    ) -> Result<Vec<OutputLayout<'_>>, kiln_ir::IrError> {
        self.outputs
            .iter()
            .map(|(name, buf)| {
                let info = &self.buffers[*buf];
                let shape: Vec<usize> = info
                    .shape
                    .iter()
                    .map(|d| d.eval(b).map(|v| v.max(0) as usize))
                    .collect::<Result<_, _>>()?;
                let bytes = shape.iter().product::<usize>() * info.dtype.size_bytes();
                Ok(OutputLayout {
                    name,
                    buffer: *buf,
                    dtype: info.dtype,
                    shape,
                    bytes,
                })
            })
            .collect()
    }

    /// Checks a weight against its input declaration (dtype, rank, constant dims).
    /// The symbols a parameter's shape binds when `t` is bound to it (dimensions that are a
    /// plain symbol), so that a device can evaluate its readers' sizes when it is bound.
    pub fn param_bindings(&self, name: &str, t: &kiln_ir::Tensor) -> kiln_ir::Bindings {
        let g = &self.graph;
        let mut b = kiln_ir::Bindings::new();
        if let Some((id, _)) = g.inputs().into_iter().find(|(_, n)| *n == name) {
            for (d, &a) in g.node(id).shape.iter().zip(t.shape()) {
                if let Expr::Sym(s) = d {
                    b.insert(s.to_string(), a as i64);
                }
            }
        }
        b
    }

    pub fn check_param(&self, name: &str, t: &kiln_ir::Tensor) -> Result<(), kiln_ir::IrError> {
        let g = &self.graph;
        let (id, _) = g
            .inputs()
            .into_iter()
            .find(|(_, n)| *n == name)
            .ok_or_else(|| kiln_ir::IrError::Input {
                name: name.into(),
                detail: "is not an input of this graph".into(),
            })?;
        let node = g.node(id);
        let ok = t.dtype() == node.dtype
            && t.shape().len() == node.shape.len()
            && node
                .shape
                .iter()
                .zip(t.shape())
                .all(|(d, &a)| d.as_const().is_none_or(|c| c == a as i64));
        if !ok {
            return Err(kiln_ir::IrError::Input {
                name: name.into(),
                detail: format!(
                    "expected {} {}, got {} {:?}",
                    node.dtype,
                    kiln_ir::shape_str(&node.shape),
                    t.dtype(),
                    t.shape()
                ),
            });
        }
        Ok(())
    }
}

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
    use crate::kernel::{KernelKind, ScalarExpr};
    use kiln_ir::{DType, Expr, Graph};

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

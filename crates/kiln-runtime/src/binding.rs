//! Binding a run: what the executor checks and evaluates before it launches anything. The
//! graph's symbols are bound from the shapes of what the run reads (bound weights, carried
//! values, the run's inputs), each checked against its declaration; outputs are then laid out
//! under those bindings.

use kiln_ir::{shape_str, Bindings, DType, Expr, IrError, Tensor};
use kiln_program::Program;
use std::collections::HashMap;

/// Where one graph output lies after a run.
pub struct OutputLayout<'p> {
    pub name: &'p str,
    pub buffer: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: usize,
}

/// Binds the graph's symbols for one run from the bound params' and carried values' dtypes
/// and shapes and the run's inputs, checking every input against its declaration; `symbols`
/// are the ones no input's shape binds (a position in a cache), given by the caller.
pub fn bind_run<'a>(
    program: &Program,
    params: impl Iterator<Item = (&'a str, DType, &'a [usize])>,
    inputs: &'a HashMap<String, Tensor>,
    carried: impl Iterator<Item = (&'a str, DType, &'a [usize])>,
    symbols: &Bindings,
) -> Result<Bindings, IrError> {
    let mut all: HashMap<&str, (DType, &[usize])> = params.map(|(n, d, s)| (n, (d, s))).collect();
    all.extend(
        inputs
            .iter()
            .map(|(n, t)| (n.as_str(), (t.dtype(), t.shape()))),
    );
    for (name, dtype, shape) in carried {
        if inputs.contains_key(name) {
            return Err(IrError::Input {
                name: name.into(),
                detail: "is carried over from the previous run by the executor; do not pass it"
                    .into(),
            });
        }
        all.insert(name, (dtype, shape));
    }
    program.graph.bind_shapes(&all, symbols)
}

/// Each output's buffer and concrete shape under bindings `b`.
pub fn output_layouts<'p>(
    program: &'p Program,
    b: &Bindings,
) -> Result<Vec<OutputLayout<'p>>, IrError> {
    program
        .outputs
        .iter()
        .map(|(name, buf)| {
            let info = &program.buffers[*buf];
            let shape: Vec<usize> = info
                .shape
                .iter()
                .map(|d| d.eval(b).map(|v| v.max(0) as usize))
                .collect::<Result<_, _>>()?;
            let bytes = info.dtype.storage_bytes(shape.iter().product::<usize>());
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

/// The symbols a parameter's shape binds when `t` is bound to it (dimensions that are a
/// plain symbol), so that a device can evaluate its readers' sizes when it is bound.
pub fn param_bindings(program: &Program, name: &str, t: &Tensor) -> Bindings {
    let g = &program.graph;
    let mut b = Bindings::new();
    if let Some((id, _)) = g.inputs().into_iter().find(|(_, n)| *n == name) {
        for (d, &a) in g.node(id).shape.iter().zip(t.shape()) {
            if let Expr::Sym(s) = d {
                b.insert(s.to_string(), a as i64);
            }
        }
    }
    b
}

/// Checks a weight (or a carried value's initial tensor) against its input declaration:
/// dtype, rank, constant dims.
pub fn check_param(program: &Program, name: &str, t: &Tensor) -> Result<(), IrError> {
    let g = &program.graph;
    let (id, _) = g
        .inputs()
        .into_iter()
        .find(|(_, n)| *n == name)
        .ok_or_else(|| IrError::Input {
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
        return Err(IrError::Input {
            name: name.into(),
            detail: format!(
                "expected {} {}, got {} {:?}",
                node.dtype,
                shape_str(&node.shape),
                t.dtype(),
                t.shape()
            ),
        });
    }
    Ok(())
}

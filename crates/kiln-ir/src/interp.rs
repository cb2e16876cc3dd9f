//! The reference interpreter: runs any graph on plain Rust, one op at a time, in f64 with the
//! rounding each dtype requires. Slow and simple on purpose — it is the oracle.

use crate::graph::{BinaryOp, Op, ReduceOp, UnaryOp, ViewOp};
use crate::{Bindings, DType, Graph, IrError, Result, Tensor};
use std::collections::HashMap;

struct Value {
    shape: Vec<usize>,
    data: Vec<f64>,
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn unravel(mut flat: usize, shape: &[usize], out: &mut [usize]) {
    for i in (0..shape.len()).rev() {
        out[i] = flat % shape[i].max(1);
        flat /= shape[i].max(1);
    }
}

/// Builds a value of `shape` where each element is `f(index)`.
fn build(shape: &[usize], mut f: impl FnMut(&[usize]) -> Result<f64>) -> Result<Value> {
    let n: usize = shape.iter().product();
    let mut idx = vec![0; shape.len()];
    let mut data = Vec::with_capacity(n);
    for flat in 0..n {
        unravel(flat, shape, &mut idx);
        data.push(f(&idx)?);
    }
    Ok(Value {
        shape: shape.to_vec(),
        data,
    })
}

impl Value {
    fn at(&self, idx: &[usize]) -> f64 {
        let st = strides(&self.shape);
        self.data[idx.iter().zip(&st).map(|(i, s)| i * s).sum::<usize>()]
    }
}

fn as_i32(v: f64) -> i32 {
    v as i64 as i32
}

/// The interpreter's semantics of a unary op on a value of dtype `dt` (before the result is
/// rounded to `dt`): what a device that evaluates kernels on the host (kiln-runtime's tests)
/// computes too.
pub fn unary(op: UnaryOp, x: f64, dt: DType) -> f64 {
    match op {
        UnaryOp::Exp2 => x.exp2(),
        UnaryOp::Log2 => x.log2(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Neg if dt == DType::I32 => as_i32(x).wrapping_neg() as f64,
        UnaryOp::Neg => -x,
        UnaryOp::Cast => x,
    }
}

/// The interpreter's semantics of a binary op on operands of dtype `operand` (before the
/// result is rounded to its dtype).
pub fn binary(op: BinaryOp, a: f64, b: f64, operand: DType) -> f64 {
    let int = operand == DType::I32;
    match op {
        BinaryOp::Add if int => as_i32(a).wrapping_add(as_i32(b)) as f64,
        BinaryOp::Mul if int => as_i32(a).wrapping_mul(as_i32(b)) as f64,
        BinaryOp::Mod if int => {
            if as_i32(b) == 0 {
                0.0
            } else {
                as_i32(a).wrapping_rem(as_i32(b)) as f64
            }
        }
        BinaryOp::Add => a + b,
        BinaryOp::Mul => a * b,
        BinaryOp::Mod => a % b,
        BinaryOp::Max => {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.max(b)
            }
        }
        BinaryOp::Lt => (a < b) as u8 as f64,
    }
}

/// Runs `graph` on `inputs` (symbols bound from input shapes, plus `extra`).
pub fn interpret(
    graph: &Graph,
    inputs: &HashMap<String, Tensor>,
    extra: &Bindings,
) -> Result<HashMap<String, Tensor>> {
    let refs: HashMap<&str, &Tensor> = inputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    graph.check_quantized_reads()?;
    let b = graph.bind_inputs(&refs, extra)?;
    let mut needed = vec![false; graph.nodes.len()];
    for (_, o) in &graph.outputs {
        needed[o.index()] = true;
    }
    for i in (0..graph.nodes.len()).rev() {
        if needed[i] {
            for inp in graph.nodes[i].op.inputs() {
                needed[inp.index()] = true;
            }
        }
    }
    let mut vals: Vec<Option<Value>> = (0..graph.nodes.len()).map(|_| None).collect();
    for (i, node) in graph.nodes.iter().enumerate() {
        if !needed[i] {
            continue;
        }
        let shape: Vec<usize> = node
            .shape
            .iter()
            .map(|d| d.eval(&b).map(|v| v.max(0) as usize))
            .collect::<Result<_>>()?;
        let v = |id: crate::NodeId| vals[id.index()].as_ref().expect("topological order");
        let dt = node.dtype;
        let value = match &node.op {
            Op::Input { name } => Value {
                shape,
                data: inputs[name].to_f64_vec(),
            },
            Op::Const { bits } => build(&shape, |_| Ok(f64::from_bits(*bits)))?,
            Op::Iota { axis } => build(&shape, |idx| Ok(dt.round(idx[*axis] as f64)))?,
            Op::Unary(op, x) => {
                let x = v(*x);
                Value {
                    shape,
                    data: x
                        .data
                        .iter()
                        .map(|&a| dt.round(unary(*op, a, dt)))
                        .collect(),
                }
            }
            Op::Binary(op, x, y) => {
                let operand = graph.dtype(*x);
                let (x, y) = (v(*x), v(*y));
                let data = x
                    .data
                    .iter()
                    .zip(&y.data)
                    .map(|(&a, &c)| dt.round(binary(*op, a, c, operand)))
                    .collect();
                Value { shape, data }
            }
            Op::Where(c, x, y) => {
                let (c, x, y) = (v(*c), v(*x), v(*y));
                let data = (0..c.data.len())
                    .map(|i| {
                        if c.data[i] != 0.0 {
                            x.data[i]
                        } else {
                            y.data[i]
                        }
                    })
                    .collect();
                Value { shape, data }
            }
            Op::Reduce(op, x, axis) => {
                let x = v(*x);
                let len = x.shape[*axis];
                build(&shape, |idx| {
                    let mut j = idx.to_vec();
                    let mut acc = match op {
                        ReduceOp::Sum => 0.0,
                        ReduceOp::Max => f64::NEG_INFINITY,
                    };
                    if *op == ReduceOp::Max && dt == DType::I32 {
                        acc = i32::MIN as f64;
                    }
                    for r in 0..len {
                        j[*axis] = r;
                        let e = x.at(&j);
                        acc = match op {
                            ReduceOp::Sum => binary(BinaryOp::Add, acc, e, dt),
                            ReduceOp::Max => binary(BinaryOp::Max, acc, e, dt),
                        };
                    }
                    Ok(dt.round(acc))
                })?
            }
            Op::MatMul(a, c) => {
                let (a, c) = (v(*a), v(*c));
                let r = a.shape.len();
                let k = a.shape[r - 1];
                build(&shape, |idx| {
                    let mut ia = idx.to_vec();
                    let mut ic = idx.to_vec();
                    let mut acc = 0.0;
                    for kk in 0..k {
                        ia[r - 1] = kk;
                        ic[r - 2] = kk;
                        acc += a.at(&ia) * c.at(&ic);
                    }
                    Ok(dt.round(acc))
                })?
            }
            Op::Gather(table, ids) => {
                let (t, ids) = (v(*table), v(*ids));
                build(&shape, |idx| {
                    let row = ids.data[idx[0]];
                    if row < 0.0 || row as usize >= t.shape[0] {
                        return Err(IrError::Invalid {
                            what: format!(
                                "gather: id {row} is out of range for a table with {} rows",
                                t.shape[0]
                            ),
                        });
                    }
                    Ok(t.at(&[row as usize, idx[1]]))
                })?
            }
            Op::Concat(xs, axis) => {
                let parts: Vec<&Value> = xs.iter().map(|x| v(*x)).collect();
                build(&shape, |idx| {
                    let mut j = idx.to_vec();
                    for p in &parts {
                        if j[*axis] < p.shape[*axis] {
                            return Ok(p.at(&j));
                        }
                        j[*axis] -= p.shape[*axis];
                    }
                    unreachable!("index inside the concatenated axis")
                })?
            }
            Op::WriteSlice {
                dst,
                src,
                axis,
                start,
            } => {
                let (d, src) = (v(*dst), v(*src));
                let start = start.eval(&b)?;
                let len = src.shape[*axis] as i64;
                build(&shape, |idx| {
                    let i = idx[*axis] as i64;
                    if i < start || i >= start + len {
                        return Ok(d.at(idx));
                    }
                    let mut j = idx.to_vec();
                    j[*axis] = (i - start) as usize;
                    Ok(src.at(&j))
                })?
            }
            Op::View(view, x) => {
                let x = v(*x);
                match view {
                    ViewOp::Reshape(_) => Value {
                        shape,
                        data: x.data.clone(),
                    },
                    ViewOp::Permute(perm) => build(&shape, |idx| {
                        let mut j = vec![0; idx.len()];
                        for (i, &p) in perm.iter().enumerate() {
                            j[p] = idx[i];
                        }
                        Ok(x.at(&j))
                    })?,
                    ViewOp::Slice { axis, start } => {
                        let start = start.eval(&b)? as usize;
                        build(&shape, |idx| {
                            let mut j = idx.to_vec();
                            j[*axis] += start;
                            Ok(x.at(&j))
                        })?
                    }
                    ViewOp::Expand => build(&shape, |idx| {
                        let j: Vec<usize> = idx
                            .iter()
                            .zip(&x.shape)
                            .map(|(&i, &d)| if d == 1 { 0 } else { i })
                            .collect();
                        Ok(x.at(&j))
                    })?,
                }
            }
        };
        vals[i] = Some(value);
    }
    Ok(graph
        .outputs
        .iter()
        .map(|(name, id)| {
            let v = vals[id.index()].as_ref().expect("computed");
            (
                name.clone(),
                Tensor::from_f64(graph.dtype(*id), &v.shape, &v.data),
            )
        })
        .collect())
}

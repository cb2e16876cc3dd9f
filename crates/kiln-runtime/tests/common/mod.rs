//! What the executor's tests run on without a compiler: a device that evaluates each kernel's
//! description on the host with the reference interpreter's scalar semantics
//! (`kiln_ir::interp`), and programs written out by hand (buffers, steps, a memory plan), as
//! the compile pipeline would hand them over.

#![allow(dead_code)] // each test file uses part of it

use kiln_ir::interp::{binary, unary};
use kiln_ir::{numel, Bindings, DType, Expr, Graph, ReduceOp, UnaryOp};
use kiln_program::kernel::reduce_identity;
use kiln_program::{
    Buffer, Device, Kernel, KernelKind, KernelSource, LaunchSpec, Let, LoadedProgram, MemoryPlan,
    Program, RunError, ScalarExpr, Step, UniqueKernel,
};
use kiln_runtime::{Executable, Executor};
use std::cell::RefCell;

/// Runs `Elementwise`, `Write` and `Reduce` kernels one element at a time in f64, rounding as
/// the interpreter does; any other kind is an error. A load outside its buffer is an error
/// too: the executor sized the buffer wrong.
#[derive(Default)]
pub struct HostInterpreter;

/// A kernel as the host interpreter runs it: its description and its launch spec.
pub struct InterpKernel {
    kernel: Kernel,
    launch: LaunchSpec,
}

impl Device for HostInterpreter {
    type Module = ();
    type Buffer = RefCell<Vec<u8>>;
    type Kernel = InterpKernel;

    fn describe(&self) -> String {
        "host interpreter".into()
    }

    fn resolve(&mut self, _: &(), k: &UniqueKernel) -> Result<InterpKernel, RunError> {
        Ok(InterpKernel {
            kernel: k.kernel.clone(),
            launch: k.source.launch.clone(),
        })
    }

    fn alloc(&mut self, bytes: usize, _: &str) -> Result<Self::Buffer, RunError> {
        Ok(RefCell::new(vec![0; bytes]))
    }

    fn upload(&mut self, data: &[u8], _: &str) -> Result<Self::Buffer, RunError> {
        Ok(RefCell::new(data.to_vec()))
    }

    fn download(&mut self, buf: &Self::Buffer, bytes: usize) -> Result<Vec<u8>, RunError> {
        Ok(buf.borrow()[..bytes].to_vec())
    }

    fn launch(
        &mut self,
        k: &InterpKernel,
        out: &Self::Buffer,
        inputs: &[&Self::Buffer],
        b: &Bindings,
    ) -> Result<(), RunError> {
        if k.launch.units.eval(b)? <= 0 {
            return Ok(());
        }
        let kernel = &k.kernel;
        // Every value first, then the stores: an in-place update may read what it writes.
        let values = {
            let guards: Vec<_> = inputs.iter().map(|i| i.borrow()).collect();
            let ins: Vec<&[u8]> = guards.iter().map(|g| g.as_slice()).collect();
            let eval = Eval { b, ins: &ins };
            match &kernel.kind {
                KernelKind::Elementwise { lets, body } => eval.elementwise(kernel, lets, body),
                KernelKind::Write {
                    shape,
                    axis,
                    start,
                    body,
                } => eval.write(kernel, shape, *axis, start, body),
                KernelKind::Reduce {
                    op,
                    axis,
                    len,
                    body,
                } => eval.reduce(kernel, *op, *axis, len, body),
                _ => Err(format!(
                    "is a {} kernel, which the host interpreter does not run",
                    kernel.label()
                )),
            }
        };
        let fault = |detail: String| RunError::Kernel {
            kernel: kernel.label(),
            detail,
        };
        let values = values.map_err(fault)?;
        let size = kernel.out_dtype.size_bytes();
        let mut out = out.borrow_mut();
        for (at, v) in values {
            let bytes = out
                .get_mut(at * size..(at + 1) * size)
                .ok_or_else(|| fault(format!("stores element {at} past its output's end")))?;
            kernel.out_dtype.write(v, bytes);
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), RunError> {
        Ok(())
    }
}

/// One launch's evaluation: the bindings and the inputs' bytes. Errors say what went wrong
/// with the kernel.
struct Eval<'a> {
    b: &'a Bindings,
    ins: &'a [&'a [u8]],
}

type Values = Result<Vec<(usize, f64)>, String>;

impl Eval<'_> {
    fn eval(&self, e: &Expr, vars: &[i64]) -> Result<i64, String> {
        e.eval_with(self.b, vars).map_err(|e| e.to_string())
    }

    fn dims(&self, shape: &[Expr]) -> Result<Vec<usize>, String> {
        shape
            .iter()
            .map(|d| Ok(self.eval(d, &[])?.max(0) as usize))
            .collect()
    }

    /// `(output element, value)` for every element of the output.
    fn elementwise(&self, k: &Kernel, lets: &[Let], body: &ScalarExpr) -> Values {
        let shape = self.dims(&k.out_shape)?;
        let n = self.eval(&numel(&k.out_shape), &[])?.max(0) as usize;
        (0..n)
            .map(|flat| {
                let mut vars = unravel(flat, &shape);
                for l in lets {
                    let rows = self.eval(&l.rows, &[])?;
                    let row = (self.scalar(&l.value, &vars)?.trunc() as i64).clamp(0, rows - 1);
                    let v = l.var as usize;
                    if vars.len() <= v {
                        vars.resize(v + 1, 0);
                    }
                    vars[v] = row;
                }
                Ok((flat, self.scalar(body, &vars)?))
            })
            .collect()
    }

    /// The written part's elements, at their place in the (larger) output.
    fn write(
        &self,
        k: &Kernel,
        shape: &[Expr],
        axis: usize,
        start: &Expr,
        body: &ScalarExpr,
    ) -> Values {
        let part = self.dims(shape)?;
        let out = self.dims(&k.out_shape)?;
        let start = self.eval(start, &[])?.max(0) as usize;
        (0..part.iter().product())
            .map(|flat| {
                let vars = unravel(flat, &part);
                let mut at = 0;
                for (i, (&v, &d)) in vars.iter().zip(&out).enumerate() {
                    at = at * d + v as usize + if i == axis { start } else { 0 };
                }
                Ok((at, self.scalar(body, &vars)?))
            })
            .collect()
    }

    /// Each output element: `body` reduced over `0..len` along `axis`.
    fn reduce(
        &self,
        k: &Kernel,
        op: ReduceOp,
        axis: usize,
        len: &Expr,
        body: &ScalarExpr,
    ) -> Values {
        let shape = self.dims(&k.out_shape)?;
        let len = self.eval(len, &[])?;
        let dt = k.out_dtype;
        let combine = match op {
            ReduceOp::Sum => kiln_ir::BinaryOp::Add,
            ReduceOp::Max => kiln_ir::BinaryOp::Max,
        };
        (0..shape.iter().product())
            .map(|flat| {
                let mut vars = unravel(flat, &shape);
                let mut acc = reduce_identity(op, dt);
                for j in 0..len {
                    vars[axis] = j;
                    acc = binary(combine, acc, self.scalar(body, &vars)?, dt);
                }
                Ok((flat, dt.round(acc)))
            })
            .collect()
    }

    /// The value of `e` at loop variables `vars`, as the interpreter computes it.
    fn scalar(&self, e: &ScalarExpr, vars: &[i64]) -> Result<f64, String> {
        Ok(match e {
            ScalarExpr::Load {
                input,
                offset,
                dtype,
            } => {
                let at = self.eval(offset, vars)?;
                let size = dtype.size_bytes();
                let bytes = usize::try_from(at)
                    .ok()
                    .and_then(|at| self.ins[*input].get(at * size..(at + 1) * size))
                    .ok_or_else(|| format!("loads element {at} of input {input}, past its end"))?;
                dtype.read(bytes)
            }
            ScalarExpr::Const { bits, dtype } => dtype.round(f64::from_bits(*bits)),
            ScalarExpr::Index { expr, dtype } => dtype.round(self.eval(expr, vars)? as f64),
            ScalarExpr::Unary {
                op: UnaryOp::Cast,
                x,
                dtype,
            } => dtype.round(self.scalar(x, vars)?),
            ScalarExpr::Unary { op, x, dtype } => {
                dtype.round(unary(*op, self.scalar(x, vars)?, *dtype))
            }
            ScalarExpr::Binary { op, a, b, dtype } => {
                let (x, y) = (self.scalar(a, vars)?, self.scalar(b, vars)?);
                dtype.round(binary(*op, x, y, a.dtype()))
            }
            ScalarExpr::Where { cond, a, b, .. } => {
                if self.scalar(cond, vars)? != 0.0 {
                    self.scalar(a, vars)?
                } else {
                    self.scalar(b, vars)?
                }
            }
            ScalarExpr::Select {
                lhs,
                rhs,
                then,
                otherwise,
                ..
            } => {
                if self.eval(lhs, vars)? < self.eval(rhs, vars)? {
                    self.scalar(then, vars)?
                } else {
                    self.scalar(otherwise, vars)?
                }
            }
            ScalarExpr::Acc { .. } => {
                return Err("reads an accumulator, which no kind it runs has".into())
            }
        })
    }
}

/// The loop variables of element `flat` of a contiguous `shape`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<i64> {
    let mut vars = vec![0; shape.len()];
    for i in (0..shape.len()).rev() {
        let d = shape[i].max(1);
        vars[i] = (flat % d) as i64;
        flat /= d;
    }
    vars
}

// ---- programs written out by hand ----

/// `inputs[input][offset]` in f32.
pub fn load(input: usize, offset: Expr) -> ScalarExpr {
    ScalarExpr::Load {
        input,
        offset,
        dtype: DType::F32,
    }
}

pub fn constant(v: f64) -> ScalarExpr {
    ScalarExpr::Const {
        bits: v.to_bits(),
        dtype: DType::F32,
    }
}

pub fn bin(op: kiln_ir::BinaryOp, a: ScalarExpr, b: ScalarExpr) -> ScalarExpr {
    ScalarExpr::Binary {
        op,
        a: Box::new(a),
        b: Box::new(b),
        dtype: DType::F32,
    }
}

/// The row-major offset of element `(v0, v1)` of a matrix with `cols` columns.
pub fn at2(cols: i64) -> Expr {
    Expr::Var(0).mul(cols).add(Expr::Var(1))
}

/// An f32 elementwise kernel of `shape` over `inputs` f32 inputs.
pub fn elementwise(shape: Vec<Expr>, inputs: usize, body: ScalarExpr) -> Kernel {
    Kernel {
        kind: KernelKind::Elementwise {
            lets: Vec::new(),
            body,
        },
        out_dtype: DType::F32,
        out_shape: shape,
        inputs: vec![DType::F32; inputs],
    }
}

/// A buffer of f32 elements; `input` names the graph input that fills it.
pub fn buffer(shape: Vec<Expr>, input: Option<&str>) -> Buffer {
    Buffer {
        dtype: DType::F32,
        shape,
        input: input.map(String::from),
    }
}

pub fn step(kernel: Kernel, output: usize, inputs: Vec<usize>) -> Step {
    Step {
        kernel,
        output,
        inputs,
        writes_into: None,
    }
}

/// What the pipeline would hand the executor: each step's kernel distinct and canonical
/// (symbols named by their place), with the launch spec a host device needs (its elements, or
/// its written part's, as units).
pub fn loaded(program: Program, plan: MemoryPlan) -> LoadedProgram<()> {
    let kernels = program
        .steps
        .iter()
        .map(|s| {
            let k = s.kernel.canonical();
            let launch = LaunchSpec::units(k.symbols(), k.written_elements(), 1.into());
            UniqueKernel {
                source: KernelSource::named(&k.label(), "interpreted", launch),
                kernel: k,
                key: String::new(),
                module: 0,
            }
        })
        .collect();
    LoadedProgram {
        step_kernel: (0..program.steps.len()).collect(),
        kernels,
        modules: vec![()],
        program,
        plan,
    }
}

/// The executor over `program` on the host interpreter.
pub fn executor(program: Program, plan: MemoryPlan) -> Box<dyn Executable> {
    Box::new(Executor::new(HostInterpreter, loaded(program, plan)).expect("resolves"))
}

/// A graph that only declares `inputs` (name, shape; f32): what binding reads of it.
pub fn graph(inputs: &[(&str, Vec<Expr>)]) -> Graph {
    let mut g = Graph::new();
    for (name, shape) in inputs {
        g.input(name, DType::F32, shape).expect("a valid input");
    }
    g
}

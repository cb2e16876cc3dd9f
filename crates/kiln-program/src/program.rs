//! A graph as a sequence of kernel launches over buffers — what kernel extraction produces —
//! and the compiled form an executor runs.

use crate::kernel::Kernel;
use crate::memplan::MemoryPlan;
use crate::source::KernelSource;
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
        self.dtype.storage_bytes_expr(numel(&self.shape))
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

/// One distinct kernel of a compiled program.
pub struct UniqueKernel {
    /// Canonical ([`Kernel::canonical`]): a step binds its own kernel's symbols to it by
    /// place ([`crate::launch_bindings`]).
    pub kernel: Kernel,
    pub source: KernelSource,
    /// The cache key of the compile unit that holds it.
    pub key: String,
    /// Index into [`LoadedProgram::modules`].
    pub module: usize,
}

/// A compiled program with its modules loaded: what an executor runs.
pub struct LoadedProgram<M> {
    pub program: Program,
    /// The distinct kernels, in order of first launch.
    pub kernels: Vec<UniqueKernel>,
    /// For each step of the program, its kernel in `kernels`.
    pub step_kernel: Vec<usize>,
    /// One loaded module per compile unit (none when the compile stopped before loading).
    pub modules: Vec<M>,
    pub plan: MemoryPlan,
}

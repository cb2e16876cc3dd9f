//! Codegen: the backend renders each distinct kernel's canonical source, in parallel.

use crate::pool::Workers;
use kiln_program::Kernel;
use kiln_program::{Backend, KernelSource};

/// One source per kernel, in the kernels' order.
pub fn codegen<B: Backend>(kernels: &[Kernel], backend: &B, pool: &Workers) -> Vec<KernelSource> {
    pool.map(kernels, |k| backend.codegen(k))
}

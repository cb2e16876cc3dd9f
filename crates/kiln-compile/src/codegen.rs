//! Codegen: the backend renders each distinct kernel's canonical source (with its launch
//! spec), in parallel. Kernels whose sources come out equal are then one compiled kernel
//! ([`Deduped::merge_equal_sources`]), unless dedupe is off.

use crate::dedupe::Deduped;
use crate::pool::Workers;
use kiln_program::{Backend, KernelSource};

/// One source per distinct kernel, in the kernels' order (after any merge).
pub fn codegen<B: Backend>(
    kernels: &mut Deduped,
    backend: &B,
    pool: &Workers,
) -> Vec<KernelSource> {
    let sources = pool.map(&kernels.kernels, |k| backend.codegen(k));
    if kernels.enabled {
        kernels.merge_equal_sources(sources)
    } else {
        sources
    }
}

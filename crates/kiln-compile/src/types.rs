//! What a compile returns.

use crate::report::CompileReport;
use crate::unit::{unit_of_kernel, Unit};
use kiln_program::{Kernel, KernelSource, LoadedProgram, UniqueKernel};

/// A compiled graph: the program with its distinct kernels loaded and its memory plan (what an
/// executor runs), and how the compile went.
pub struct Compiled<M> {
    pub loaded: LoadedProgram<M>,
    pub report: CompileReport,
}

/// The distinct kernels with their sources, each with the key and index of the unit that
/// holds it.
pub(crate) fn unique_kernels(
    kernels: Vec<Kernel>,
    sources: Vec<KernelSource>,
    units: &[Unit],
) -> Vec<UniqueKernel> {
    let unit_of = unit_of_kernel(units, sources.len());
    kernels
        .into_iter()
        .zip(sources)
        .zip(unit_of)
        .map(|((kernel, source), u)| UniqueKernel {
            kernel,
            source,
            key: units[u].key.clone(),
            module: u,
        })
        .collect()
}

//! What every stage after codegen reads: one compile's backend and options, the compiler's
//! identity, the workers, the distinct kernels and their sources, and where built artifacts
//! go ([`Store`]).

use crate::dedupe::Deduped;
use crate::observer::{warn, Observer};
use crate::pool::Workers;
use crate::store::Store;
use crate::CompileOptions;
use kiln_program::{Backend, KernelSource};

/// One compile's shared state, built by the driver once the kernels are rendered and handed
/// to every later stage.
pub struct Context<'a, B: Backend> {
    pub backend: &'a B,
    pub opts: &'a CompileOptions<'a>,
    /// The device compiler's identity, part of every cache key.
    pub identity: String,
    pub pool: Workers,
    /// The distinct kernels (and the kernel of each step, and their uses).
    pub kernels: Deduped,
    /// Their sources, in the same order.
    pub sources: Vec<KernelSource>,
    pub store: Store<'a>,
}

impl<'a, B: Backend> Context<'a, B> {
    pub fn observer(&self) -> Option<&'a dyn Observer> {
        self.opts.observer
    }

    /// Tells the user (through the observer) about something that does not stop the compile.
    pub fn warn(&self, message: &str) {
        warn(self.observer(), message);
    }

    /// The sources of `kernels` (indices into the distinct kernels).
    pub fn sources_of(&self, kernels: &[usize]) -> Vec<&KernelSource> {
        kernels.iter().map(|&k| &self.sources[k]).collect()
    }
}

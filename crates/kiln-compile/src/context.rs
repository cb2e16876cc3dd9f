//! What every stage after codegen reads: one compile's backend and options, the compiler's
//! identity, the workers, the distinct kernels and their sources, and where built artifacts
//! go ([`Store`]).

use crate::dedupe::Deduped;
use crate::observer::{warn, Observer};
use crate::pool::Workers;
use crate::store::Store;
use crate::unit::Unit;
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
    /// The backend's runtime parts these kernels call (`Backend::runtime`).
    pub runtime: Vec<KernelSource>,
    pub store: Store<'a>,
    /// The memory budget for compilers in flight (bytes; None: no limit), and how many
    /// invocations it admits at once ([`crate::budget`]).
    pub memory_budget: Option<u64>,
    pub max_in_flight: usize,
}

impl<'a, B: Backend> Context<'a, B> {
    pub fn observer(&self) -> Option<&'a dyn Observer> {
        self.opts.observer
    }

    /// Tells the user (through the observer) about something that does not stop the compile.
    pub fn warn(&self, message: &str) {
        warn(self.observer(), message);
    }

    /// The sources `unit` compiles: its kernels', or its runtime part's.
    pub fn sources_of(&self, unit: &Unit) -> Vec<&KernelSource> {
        let from = if unit.runtime {
            &self.runtime
        } else {
            &self.sources
        };
        unit.kernels.iter().map(|&k| &from[k]).collect()
    }
}

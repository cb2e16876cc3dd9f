//! An opened backend: something a graph can be compiled for and run on. Programs embedding
//! kiln (the CLI, the model crate, tests) hold a `&dyn Target` and never name a backend crate.
//! It lives here, with the pipeline, because it needs both halves: [`compile`] and
//! kiln-runtime's [`Executor`].

use crate::{compile, precompile, CompileError, CompileOptions, CompileReport};
use kiln_ir::Graph;
use kiln_program::{Backend, RunError, Runtime};
use kiln_runtime::{Executable, Executor};

/// A compiled graph on its device, and how the compile went.
pub struct Loaded {
    pub exe: Box<dyn Executable>,
    pub report: CompileReport,
}

/// Either half of [`Target::load`] can fail.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// An opened backend, object-safe: compile a graph, or compile and load it onto the device.
pub trait Target: Send + Sync {
    /// The backend's short name (`cpu`, `cuda`, ...), as in cache keys and reports.
    fn name(&self) -> &'static str;

    /// Compiles every kernel of `graph` (through the caches) without running anything; works
    /// without a device where the backend can (CUDA with an explicit arch). With
    /// [`CompileOptions::shard`], only that shard's units, into the caches.
    fn compile(
        &self,
        graph: &Graph,
        opts: &CompileOptions<'_>,
    ) -> Result<CompileReport, CompileError>;

    /// Compiles `graph` and loads it onto the device, ready to run.
    fn load(&self, graph: &Graph, opts: &CompileOptions<'_>) -> Result<Loaded, LoadError>;

    /// See [`Runtime::bandwidth`].
    fn bandwidth(&self) -> Option<Result<(String, f64), RunError>>;
}

impl<R: Runtime> Target for R
where
    R::Module: 'static,
{
    fn name(&self) -> &'static str {
        Backend::name(self)
    }

    fn compile(
        &self,
        graph: &Graph,
        opts: &CompileOptions<'_>,
    ) -> Result<CompileReport, CompileError> {
        if opts.shard.is_some() {
            return precompile(graph, self, opts);
        }
        Ok(compile(graph, self, opts)?.report)
    }

    fn load(&self, graph: &Graph, opts: &CompileOptions<'_>) -> Result<Loaded, LoadError> {
        // The device first: without one, compiling would be wasted work.
        let device = self.device()?;
        let compiled = compile(graph, self, opts)?;
        let exe = Executor::new(device, compiled.loaded)?;
        let report = compiled.report;
        Ok(Loaded {
            exe: Box::new(exe),
            report,
        })
    }

    fn bandwidth(&self) -> Option<Result<(String, f64), RunError>> {
        Runtime::bandwidth(self)
    }
}

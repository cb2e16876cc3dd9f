//! kiln's CPU backend: C source per kernel, compiled by the system C compiler into shared
//! objects, loaded with `libloading`, executed on a rayon pool split by rows, elements or tiles.

mod cc;
pub mod codegen;
mod exec;

pub use cc::{CCompiler, FLAGS};
pub use exec::{CpuExecutable, RunError};

use kiln_compile::{Backend, CompileError, Kernel, KernelSource};
use std::sync::OnceLock;

/// The CPU backend.
pub struct CpuBackend {
    cc: CCompiler,
    identity: OnceLock<Result<String, String>>,
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend::new(CCompiler::from_env())
    }
}

impl CpuBackend {
    pub fn new(cc: CCompiler) -> CpuBackend {
        CpuBackend {
            cc,
            identity: OnceLock::new(),
        }
    }
}

/// A loaded shared object.
pub struct CpuModule {
    pub lib: libloading::Library,
}

impl Backend for CpuBackend {
    type Module = CpuModule;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn identity(&self) -> Result<String, CompileError> {
        self.identity
            .get_or_init(|| self.cc.identity())
            .clone()
            .map_err(CompileError::Backend)
    }

    fn codegen(&self, kernel: &Kernel) -> KernelSource {
        KernelSource::named(&kernel.label(), &codegen::kernel_source(kernel))
    }

    fn compile(&self, kernels: &[&KernelSource]) -> Result<Vec<u8>, String> {
        let sources: Vec<&str> = kernels.iter().map(|k| k.source.as_str()).collect();
        self.cc.compile(&sources)
    }

    fn load(&self, artifact: &[u8]) -> Result<CpuModule, String> {
        // dlopen needs a file; the mapping outlives the file, which is removed right away.
        let mut f = tempfile::Builder::new()
            .prefix("kiln-")
            .suffix(".so")
            .tempfile()
            .map_err(|e| e.to_string())?;
        std::io::Write::write_all(&mut f, artifact).map_err(|e| e.to_string())?;
        let path = f.into_temp_path();
        // SAFETY: the artifact is a shared object kiln compiled from its own source; its
        // initialisers are the C compiler's defaults.
        let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| e.to_string())?;
        Ok(CpuModule { lib })
    }

    fn source_extension(&self) -> &'static str {
        "c"
    }
}

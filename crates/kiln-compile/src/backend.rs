//! The boundary between the pipeline and a device: codegen, compile, load. The pipeline never
//! special-cases a backend; a backend never schedules, caches or dedupes.

use crate::kernel::Kernel;
use crate::CompileError;

/// Canonical source of one kernel and the function name inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSource {
    pub name: String,
    pub source: String,
}

/// Placeholder a backend writes where the kernel's function name goes.
pub const NAME_PLACEHOLDER: &str = "KILN_KERNEL_NAME";

impl KernelSource {
    /// Names a kernel after its label and a hash of its source, so the name (and therefore the
    /// whole source) depends only on the kernel's structure.
    pub fn named(label: &str, template: &str) -> KernelSource {
        let hash = blake3::hash(template.as_bytes()).to_hex();
        let name = format!("kiln_{label}_{}", &hash[..16]);
        KernelSource {
            source: template.replace(NAME_PLACEHOLDER, &name),
            name,
        }
    }
}

pub trait Backend: Sync {
    /// A loaded artifact (a shared object, a CUDA module).
    type Module;

    /// Short name: `cpu`, `cuda`. Part of cache keys.
    fn name(&self) -> &'static str;

    /// Identity of the device compiler: program, version, flags, target. Part of every cache
    /// key. Fails with a clear message when the compiler is missing.
    fn identity(&self) -> Result<String, CompileError>;

    /// Canonical source for one kernel.
    fn codegen(&self, kernel: &Kernel) -> KernelSource;

    /// Compiles kernels in one compiler invocation into one artifact; on failure returns the
    /// compiler's diagnostics. Called from worker threads.
    fn compile(&self, kernels: &[&KernelSource]) -> Result<Vec<u8>, String>;

    /// Loads an artifact. Called sequentially on the thread that will run the kernels.
    fn load(&self, artifact: &[u8]) -> Result<Self::Module, String>;

    /// File extension for kernel sources written for inspection (`c`, `cu`).
    fn source_extension(&self) -> &'static str;

    /// Expected peak memory of one compiler invocation (bytes), for the in-flight budget.
    fn compile_memory_estimate(&self) -> u64 {
        128 << 20
    }
}

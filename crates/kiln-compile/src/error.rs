//! Why a compile failed: [`CompileError`], and for kernels the compiler rejected, where their
//! source was written for the user to open.

use kiln_program::{BackendError, KernelSource};
use std::fmt;
use std::path::PathBuf;

/// One kernel the device compiler rejected (or whose compile panicked or timed out).
#[derive(Debug)]
pub struct KernelFailure {
    pub kernel: String,
    pub error: BackendError,
    /// Where its source was written for inspection.
    pub source_path: Option<PathBuf>,
}

/// Why a compile failed.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("invalid graph: {0}")]
    InvalidGraph(String),
    /// The backend's kernels do not read an input's storage dtype (a block-quantized weight
    /// on a backend without quantized kernels).
    #[error("the {backend} backend does not read {dtype} weights (input '{input}'); block-quantized weights run on the cpu, cuda and wgpu backends")]
    UnsupportedDType {
        backend: String,
        input: String,
        dtype: kiln_ir::DType,
    },
    /// The backend cannot work at all (compiler missing, unsupported target, ...).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Every failing kernel, sorted by name.
    #[error("{}", KernelFailures(.0))]
    Kernels(Vec<KernelFailure>),
    /// A shard was asked of something that needs the whole program.
    #[error("{0}")]
    Shard(String),
    #[error("cannot start {threads} compile threads: {reason}")]
    Threads { threads: usize, reason: String },
    /// A signal stopped the compile: compilers were killed, nothing half-written was kept.
    #[error("interrupted by signal {signal}; compilers stopped, the kernel cache is consistent")]
    Interrupted { signal: i32 },
    #[error("loading the compiled module of kernel {kernel}: {source}")]
    Load {
        kernel: String,
        #[source]
        source: BackendError,
    },
}

struct KernelFailures<'a>(&'a [KernelFailure]);

impl fmt::Display for KernelFailures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} kernel(s) failed to compile:", self.0.len())?;
        // Kernels that failed with the same message — a unit's shared verdict, a compiler that
        // says the same for each kernel — are listed together and the message shown once: one
        // invocation's output is never repeated per kernel.
        let mut groups: Vec<(String, Vec<&KernelFailure>)> = Vec::new();
        for k in self.0 {
            let msg = k.error.to_string();
            match groups.iter_mut().find(|(m, _)| *m == msg) {
                Some((_, kernels)) => kernels.push(k),
                None => groups.push((msg, vec![k])),
            }
        }
        for (msg, kernels) in &groups {
            for (i, k) in kernels.iter().enumerate() {
                write!(f, "  kernel {}", k.kernel)?;
                if let Some(p) = &k.source_path {
                    write!(f, " (source: {})", p.display())?;
                }
                writeln!(f, "{}", if i + 1 == kernels.len() { ":" } else { "," })?;
            }
            for line in msg.trim_end().lines() {
                writeln!(f, "    {line}")?;
            }
        }
        Ok(())
    }
}

/// Writes a failing kernel's source where the user can open it: a new folder per compile,
/// readable by this user only, which the error message names.
pub(crate) fn write_failed_source(src: &KernelSource, ext: &str) -> Option<std::path::PathBuf> {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("kiln-failed-kernels-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .ok()
            .map(|d| d.keep())
    });
    let path = dir.as_ref()?.join(format!("{}.{ext}", src.name));
    std::fs::write(&path, &src.source).ok()?;
    Some(path)
}

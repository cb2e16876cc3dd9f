//! Why a luminal graph could not be handed to kiln.

use kiln_backends::BackendKind;
use kiln_compile::{BackendError, CacheError, CompileError};
use kiln_runtime::RunError;

/// An error of [`crate::KilnCompiler::try_compile`]. On any of them the luminal graph is left
/// exactly as it was: everything is translated, compiled and loaded before the graph is touched.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// An op kiln has no translation for (or a view it cannot reproduce), named by its luminal
    /// node index and its `Debug` name (what luminal's own graph display shows).
    #[error("kiln cannot compile luminal node {node} ({op}): {reason}")]
    Unsupported {
        node: usize,
        op: String,
        reason: String,
    },
    /// The backend could not be opened (no C compiler, no GPU, ...).
    #[error("kiln could not open the {backend} backend: {source}")]
    Backend {
        backend: BackendKind,
        #[source]
        source: BackendError,
    },
    /// The kernel cache directory could not be opened.
    #[error("kiln could not open its kernel cache: {0}")]
    Cache(#[source] CacheError),
    /// kiln's pipeline rejected the translated graph or failed to compile a kernel (the error
    /// names the kernel and where its source was written).
    #[error("kiln failed to compile segment {segment} of the luminal graph: {source}")]
    Compile {
        segment: usize,
        #[source]
        source: CompileError,
    },
    /// The compiled segment could not be loaded onto the device.
    #[error("kiln could not load segment {segment} of the luminal graph: {source}")]
    Load {
        segment: usize,
        #[source]
        source: RunError,
    },
}

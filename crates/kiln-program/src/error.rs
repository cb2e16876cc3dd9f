//! What can go wrong when running a compiled graph.

use kiln_ir::IrError;

/// A boxed error from a device API (a CUDA driver error, a loader error, ...).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// An error from an executor or its device. Each message names what failed: the input, the
/// buffer or the kernel, and the sizes involved. The underlying error, if any, is both part of
/// the message and available as [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The inputs do not fit the graph (missing, wrong dtype or shape, unbound symbol).
    #[error(transparent)]
    Graph(#[from] IrError),
    /// Not enough device memory for a buffer.
    #[error("{what} needs {:.1} MB of {device} memory but only {:.1} MB of {:.1} MB are free", *.needed as f64 / 1e6, *.free as f64 / 1e6, *.total as f64 / 1e6)]
    OutOfMemory {
        device: String,
        what: String,
        needed: u64,
        free: u64,
        total: u64,
    },
    /// A device API call failed.
    #[error("{device}: {what}: {source}")]
    Device {
        device: String,
        what: String,
        #[source]
        source: Cause,
    },
    /// A kernel could not be found in its module or launched.
    #[error("kernel {kernel}: {detail}")]
    Kernel { kernel: String, detail: String },
    /// The device cannot run this graph at all (a launch beyond its limits, no device).
    #[error("{0}")]
    Unsupported(String),
}

impl RunError {
    /// A device API failure with its cause.
    pub fn device(
        device: impl Into<String>,
        what: impl Into<String>,
        source: impl Into<Cause>,
    ) -> RunError {
        RunError::Device {
            device: device.into(),
            what: what.into(),
            source: source.into(),
        }
    }
}

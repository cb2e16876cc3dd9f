//! The record the stages share: one [`Unit`] per compile unit, formed by the schedule from the
//! kernels alone, given an artifact by the cache lookup or the compile, then loaded. Each
//! stage reads and fills its fields; the report is built from them.

/// Where a unit's artifact came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The local kernel cache.
    Cache,
    /// The remote tier (and is now in the local cache too).
    Remote,
    /// The device compiler, in this compile.
    Compiled,
}

/// One compile unit: a batch of kernels, one compiler invocation, one artifact, one cache
/// entry.
#[derive(Debug)]
pub struct Unit {
    /// Its kernels: indices into the distinct kernels and their sources, in the unit's order.
    pub kernels: Vec<usize>,
    /// Their function names, in the same order.
    pub names: Vec<String>,
    /// A part of the backend's runtime (`Backend::runtime`): `kernels` then holds one index
    /// into the runtime's sources ([`crate::context::Context::runtime`]), not a kernel.
    pub runtime: bool,
    /// The schedule's cost estimate (source bytes plus the invocation overhead).
    pub estimate: u64,
    /// Its cache key: the backend, the compiler's identity and the kernels' sources.
    pub key: String,
    /// Whether this compile builds it (false for another shard's unit).
    pub wanted: bool,
    /// The local cache lacked it and the remote tier was asked.
    pub asked_remote: bool,
    /// Where its artifact came from; None while it has none.
    pub origin: Option<Origin>,
    /// The verified artifact, once found or built.
    pub artifact: Option<Vec<u8>>,
    /// Time of the compiler invocation that built the artifact, ms (from the cache entry when
    /// it was cached).
    pub compile_ms: f64,
    /// Compiler invocations this compile ran for it (a failing unit is split: several) and
    /// the seconds they took.
    pub invocations: usize,
    pub busy_s: f64,
}

impl Unit {
    /// A unit of `kernels` (named `names`) not yet looked up or built.
    pub fn new(kernels: Vec<usize>, names: Vec<String>, estimate: u64, key: String) -> Unit {
        Unit {
            kernels,
            names,
            runtime: false,
            estimate,
            key,
            wanted: true,
            asked_remote: false,
            origin: None,
            artifact: None,
            compile_ms: 0.0,
            invocations: 0,
            busy_s: 0.0,
        }
    }

    /// A cache held its artifact: `origin` (local or remote), and the compile time the
    /// entry recorded.
    pub fn found(&mut self, origin: Origin, artifact: Vec<u8>, compile_us: u64) {
        self.origin = Some(origin);
        self.artifact = Some(artifact);
        self.compile_ms = compile_us as f64 / 1e3;
    }

    /// Its artifact came from a cache, local or remote.
    pub fn cached(&self) -> bool {
        matches!(self.origin, Some(Origin::Cache | Origin::Remote))
    }

    /// Its kernels' names joined, for messages.
    pub fn label(&self) -> String {
        self.names.join(", ")
    }
}

/// The unit of each of `kernels` distinct kernels.
pub fn unit_of_kernel(units: &[Unit], kernels: usize) -> Vec<usize> {
    let mut unit_of = vec![0; kernels];
    for (u, unit) in units.iter().enumerate().filter(|(_, unit)| !unit.runtime) {
        for &k in &unit.kernels {
            unit_of[k] = u;
        }
    }
    unit_of
}

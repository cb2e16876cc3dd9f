//! How a kernel is launched, as data: the backend's codegen decides it together with the
//! kernel's text (it knows the parallel structure it wrote), as expressions over the kernel's
//! symbols, and the device evaluates it with each run's bindings — tinygrad's global and local
//! sizes. A device never reads a backend's codegen for launch geometry.
//!
//! The spec travels with the source ([`crate::KernelSource::launch`]) but is not part of the
//! text: it changes no cache key and no artifact, and two kernels whose texts are equal (merged
//! into one by dedupe) have specs that evaluate alike, since the text takes what differs as
//! parameters.

use kiln_ir::{Bindings, Expr, IrError};

/// How to launch one kernel, for any binding of its symbols. Each backend fills what its device
/// reads: the CPU its work units, their cost and its scratch; CUDA and wgpu their units and the
/// grid of thread groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The symbols the kernel takes as arguments, in argument order (sorted by name: see
    /// [`crate::Kernel::symbols`]).
    pub symbols: Vec<String>,
    /// Units of parallel work (rows, elements, output blocks): passed to the kernel (CUDA's
    /// and WGSL's `kiln_units`) or split over threads (the CPU's `[lo, hi)`). A launch without
    /// any is skipped.
    pub units: Expr,
    /// Element operations in one unit: what a unit costs (a host device runs a small launch on
    /// the calling thread rather than splitting it).
    pub unit_work: Expr,
    /// Threads along x, y and z in all (the global size); a device launches
    /// `ceil(global / local)` groups along each.
    pub global: [Expr; 3],
    /// Threads of one group (a CUDA block, a WebGPU workgroup) along x, y and z (the local
    /// size).
    pub local: [u32; 3],
    /// Bytes of scratch memory one call needs (a CPU worker's chunk of units).
    pub scratch: Expr,
    /// The largest element count the kernel's own index arithmetic spans (its iteration and
    /// its output), for a device whose kernels divide indices in 32 bits (CUDA's) to check at
    /// launch; 0 where the backend does not say.
    pub index_extent: Expr,
}

impl LaunchSpec {
    /// A launch of `units` units of `unit_work` operations each, one thread per unit and no
    /// groups or scratch: the simplest spec; set the other fields to refine it.
    pub fn units(symbols: Vec<String>, units: Expr, unit_work: Expr) -> LaunchSpec {
        LaunchSpec {
            symbols,
            global: [units.clone(), Expr::Const(1), Expr::Const(1)],
            units,
            unit_work,
            local: [1, 1, 1],
            scratch: Expr::Const(0),
            index_extent: Expr::Const(0),
        }
    }

    /// The symbols' values under `b`, in argument order.
    pub fn symbol_values(&self, b: &Bindings) -> Result<Vec<i64>, IrError> {
        self.symbols.iter().map(|s| Expr::sym(s).eval(b)).collect()
    }

    /// The number of groups along x, y and z under `b`: `ceil(global / local)`.
    pub fn groups(&self, b: &Bindings) -> Result<[i64; 3], IrError> {
        let mut g = [0; 3];
        for (i, (threads, &local)) in self.global.iter().zip(&self.local).enumerate() {
            g[i] = ceil_div(threads.eval(b)?, local as i64);
        }
        Ok(g)
    }
}

/// `ceil(n / d)` for `d > 0` (and `n >= 0`, the sizes it is used for).
pub fn ceil_div(n: i64, d: i64) -> i64 {
    (n + d - 1) / d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_cover_the_global_size() {
        let s = Expr::sym("s");
        let spec = LaunchSpec {
            global: [s.clone().mul(64), s.clone(), Expr::Const(3)],
            local: [256, 16, 1],
            ..LaunchSpec::units(vec!["s".into()], s, Expr::Const(1))
        };
        let b: Bindings = [("s".to_string(), 10)].into();
        assert_eq!(spec.groups(&b).unwrap(), [3, 1, 3]);
        assert_eq!(spec.symbol_values(&b).unwrap(), vec![10]);
        assert!(spec.groups(&Bindings::new()).is_err(), "s is unbound");
    }
}

//! Dedupe: launches of equal kernels share one compiled kernel. Kernels are canonical (no node
//! ids, inputs numbered by first use), so the 28 layers of a model produce the same handful of
//! distinct kernels as 2 layers do; comparing the [`Kernel`]s themselves, before any codegen,
//! means 823 launches cost 34 codegens.

use crate::extract::Program;
use crate::kernel::Kernel;
use std::collections::HashMap;

/// The distinct kernels of a program.
pub struct Deduped {
    /// Distinct kernels, in order of first launch.
    pub kernels: Vec<Kernel>,
    /// For each step of the program, its kernel in `kernels`.
    pub step_kernel: Vec<usize>,
    /// Launches of each distinct kernel.
    pub uses: Vec<usize>,
}

/// Finds the distinct kernels; with `enabled` false every launch keeps its own (to measure
/// what dedupe saves).
pub fn dedupe(program: &Program, enabled: bool) -> Deduped {
    let mut index: HashMap<&Kernel, usize> = HashMap::new();
    let mut kernels: Vec<Kernel> = Vec::new();
    let mut uses: Vec<usize> = Vec::new();
    let step_kernel = program
        .steps
        .iter()
        .map(|step| {
            let u = match index.get(&step.kernel) {
                Some(&u) if enabled => u,
                _ => {
                    kernels.push(step.kernel.clone());
                    uses.push(0);
                    index.insert(&step.kernel, kernels.len() - 1);
                    kernels.len() - 1
                }
            };
            uses[u] += 1;
            u
        })
        .collect();
    Deduped {
        kernels,
        step_kernel,
        uses,
    }
}

//! Dedupe: launches of equal kernels share one compiled kernel. Kernels are canonical (no node
//! ids, inputs numbered by first use, symbols named by their place: `Kernel::canonical`), so the 28 layers of a model produce the same handful of
//! distinct kernels as 2 layers do; comparing the [`Kernel`]s themselves, before any codegen,
//! means 823 launches cost 34 codegens.

use crate::extract::Program;
use kiln_program::Kernel;
use kiln_program::KernelSource;
use std::collections::HashMap;

/// The distinct kernels of a program.
pub struct Deduped {
    /// Distinct kernels, in order of first launch.
    pub kernels: Vec<Kernel>,
    /// For each step of the program, its kernel in `kernels`.
    pub step_kernel: Vec<usize>,
    /// Launches of each distinct kernel.
    pub uses: Vec<usize>,
    /// Whether equal kernels were merged (off only to measure what dedupe saves); codegen
    /// then merges kernels whose sources come out equal too.
    pub enabled: bool,
}

/// Finds the distinct kernels; with `enabled` false every launch keeps its own (to measure
/// what dedupe saves).
pub fn dedupe(program: &Program, enabled: bool) -> Deduped {
    let mut index: HashMap<Kernel, usize> = HashMap::new();
    let mut kernels: Vec<Kernel> = Vec::new();
    let mut uses: Vec<usize> = Vec::new();
    // An interrupted compile stops here (`compile` then fails with `Interrupted`).
    let step_kernel = program
        .steps
        .iter()
        .enumerate()
        .take_while(|(i, _)| crate::cancel::check_every(*i).is_ok())
        .map(|(_, step)| {
            // Compared by their canonical form: kernels that differ only in the names of
            // their symbols are one (each launch binds its own names, `launch_bindings`).
            let kernel = step.kernel.canonical();
            let u = match index.get(&kernel) {
                Some(&u) if enabled => u,
                _ => {
                    kernels.push(kernel.clone());
                    uses.push(0);
                    index.insert(kernel, kernels.len() - 1);
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
        enabled,
    }
}

impl Deduped {
    /// Merges kernels whose sources came out equal (kernels that differ only in ways the
    /// backend does not print, e.g. an output extent `a * b` against `b * a` where the size is
    /// a launch parameter): equal sources have equal names, so they are one compiled kernel,
    /// and two of them must never share a compile unit. Returns the surviving sources.
    pub fn merge_equal_sources(&mut self, sources: Vec<KernelSource>) -> Vec<KernelSource> {
        let mut first: HashMap<String, usize> = HashMap::new();
        let mut remap = Vec::with_capacity(sources.len());
        let (mut kernels, mut uses) = (Vec::new(), Vec::new());
        let mut kept: Vec<KernelSource> = Vec::new();
        for (i, s) in sources.into_iter().enumerate() {
            match first.get(&s.name) {
                Some(&j) if kept[j].same_text(&s) => {
                    uses[j] += self.uses[i];
                    remap.push(j);
                }
                _ => {
                    first.insert(s.name.clone(), kept.len());
                    remap.push(kept.len());
                    kernels.push(self.kernels[i].clone());
                    uses.push(self.uses[i]);
                    kept.push(s);
                }
            }
        }
        for k in &mut self.step_kernel {
            *k = remap[*k];
        }
        self.kernels = kernels;
        self.uses = uses;
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::{DType, Expr};
    use kiln_program::{KernelKind, LaunchSpec, ScalarExpr};

    fn copy(shape: Expr) -> Kernel {
        Kernel {
            kind: KernelKind::Elementwise {
                lets: Vec::new(),
                body: ScalarExpr::Load {
                    input: 0,
                    offset: Expr::Var(0),
                    dtype: DType::F32,
                },
            },
            out_dtype: DType::F32,
            out_shape: vec![shape],
            inputs: vec![DType::F32],
        }
    }

    #[test]
    fn kernels_with_equal_sources_become_one() {
        let (a, b) = (Expr::sym("a"), Expr::sym("b"));
        let ab = copy(a.clone().mul(b.clone()));
        let ba = copy(b.mul(a));
        assert_ne!(ab, ba);
        let mut d = Deduped {
            kernels: vec![ab, ba],
            step_kernel: vec![0, 1, 1, 0],
            uses: vec![2, 2],
            enabled: true,
        };
        // A backend that prints the size as a parameter renders both the same text; their
        // launch specs differ as the kernels do, and evaluate alike.
        let rendered = |units: &Kernel| {
            let launch = LaunchSpec::units(vec![], units.out_shape[0].clone(), Expr::Const(1));
            KernelSource::named("elementwise", "void KILN_KERNEL_NAME() {}", launch)
        };
        let sources: Vec<KernelSource> = d.kernels.iter().map(rendered).collect();
        assert_ne!(sources[0].launch, sources[1].launch);
        let kept = d.merge_equal_sources(sources);
        assert_eq!(kept.len(), 1);
        assert_eq!(d.kernels.len(), 1);
        assert_eq!(d.uses, vec![4]);
        assert_eq!(d.step_kernel, vec![0, 0, 0, 0]);
    }
}

//! The GPU preflight, without a GPU: every distinct kernel of qwen3-0.6b and qwen3-8b, for
//! every weight dtype, the split matmuls' decode GEMVs included, compiled by NVRTC for sm_90
//! and sm_80 with ptxas's report (`kiln_cuda::preflight`), must launch at its block size:
//! registers (whole warps, allocation units) within a block's 65536, static shared memory
//! within 48 KB, threads within 1024. A launch past these fails on a real GPU only
//! (`CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES`), which neither NVRTC nor the emulator sees. Prints
//! the kernels that spill and the heaviest register users (`cargo test -- --nocapture`).

use kiln_compile::testing::{Hooks, Wrapped};
use kiln_compile::{compile, CompileOptions};
use kiln_cuda::preflight::{self, Resources};
use kiln_cuda::{codegen, CudaBackend};
use kiln_models::{build_graph, presets::preset, GraphOptions, WeightDtype};
use kiln_program::{BackendError, KernelSource};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// The real backend's kernels and runtime parts, compiled by nothing: the artifact only names
/// its kernels (what the pipeline verifies), so the pipeline hands out every distinct kernel's
/// source and launch spec in milliseconds.
struct SourcesOnly;

impl Hooks<CudaBackend> for SourcesOnly {
    fn compile(&self, _: &CudaBackend, ks: &[&KernelSource]) -> Result<Vec<u8>, BackendError> {
        Ok(ks
            .iter()
            .flat_map(|k| [k.name.as_bytes(), b"\0"].concat())
            .collect())
    }
}

/// Every distinct kernel of the presets at every weight dtype (with the decode kernels of the
/// split matmuls), by name, with where it occurs.
fn kernels() -> BTreeMap<String, (KernelSource, BTreeSet<String>)> {
    let backend = Wrapped {
        inner: CudaBackend::compile_only("sm_90").unwrap(),
        hooks: SourcesOnly,
    };
    let mut all: BTreeMap<String, (KernelSource, BTreeSet<String>)> = BTreeMap::new();
    for model in ["qwen3-0.6b", "qwen3-8b"] {
        for dtype in WeightDtype::ALL {
            let options = GraphOptions {
                weight_dtype: Some(dtype),
                ..Default::default()
            };
            let graph = build_graph(&preset(model).unwrap(), options).unwrap();
            let c = compile(&graph, &backend, &CompileOptions::default())
                .unwrap_or_else(|e| panic!("{model} {}: {e}", dtype.name()));
            let sources: Vec<KernelSource> =
                c.loaded.kernels.iter().map(|k| k.source.clone()).collect();
            let decode = codegen::decode_variants(&sources);
            for k in sources.into_iter().chain(decode) {
                let at = all
                    .entry(k.name.clone())
                    .or_insert_with(|| (k.clone(), BTreeSet::new()));
                assert!(at.0.same_text(&k), "two sources named {}", k.name);
                at.1.insert(format!("{model} {}", dtype.name()));
            }
        }
    }
    all
}

/// Kernels per NVRTC program: enough to spread NVRTC's fixed cost, few enough to keep the
/// cores busy to the end.
const PER_PROGRAM: usize = 4;

/// ptxas's report of every kernel for `arch`, by name, the programs compiled on every core.
/// A decode kernel is a program of its own, as in the pipeline: it defines
/// [`codegen::DECODE_VARIANT`] for the rest of its program.
fn resources(arch: &str, kernels: &[&KernelSource]) -> BTreeMap<String, Resources> {
    let (decode, rest): (Vec<&KernelSource>, Vec<&KernelSource>) =
        kernels.iter().partition(|k| is_decode(k));
    let programs: Vec<&[&KernelSource]> =
        decode.chunks(1).chain(rest.chunks(PER_PROGRAM)).collect();
    programs
        .par_iter()
        .flat_map_iter(|p| preflight::resources(arch, p).unwrap_or_else(|e| panic!("{arch}: {e}")))
        .map(|r| (r.function.clone(), r))
        .collect()
}

/// A split matmul's decode kernel ([`codegen::decode_variant`]).
fn is_decode(k: &KernelSource) -> bool {
    k.source
        .starts_with(&format!("#define {}\n", codegen::DECODE_VARIANT))
}

fn threads(k: &KernelSource) -> u32 {
    k.launch.local.iter().product()
}

#[test]
fn every_kernel_fits_a_block_of_its_launch_on_sm_90_and_sm_80() {
    let start = std::time::Instant::now();
    let kernels = kernels();
    let sources: Vec<&KernelSource> = kernels.values().map(|(k, _)| k).collect();
    let decode = sources.iter().filter(|k| is_decode(k)).count();
    assert!(
        decode > 0,
        "the split matmuls' decode kernels are checked too"
    );
    let ((major, minor), _) = kiln_cuda::nvrtc::version().unwrap();
    eprintln!(
        "{} distinct kernels ({decode} decode GEMVs) of qwen3-0.6b and qwen3-8b at {} weight \
         dtypes, rendered in {:.1} s; NVRTC {major}.{minor}",
        sources.len(),
        WeightDtype::ALL.len(),
        start.elapsed().as_secs_f64()
    );
    let mut over = Vec::new();
    for arch in ["sm_90", "sm_80"] {
        let t = std::time::Instant::now();
        let found = resources(arch, &sources);
        eprintln!(
            "{arch}: ptxas reports of {} kernels in {:.1} s",
            found.len(),
            t.elapsed().as_secs_f64()
        );
        let mut rows: Vec<(&Resources, &KernelSource, &BTreeSet<String>)> = kernels
            .values()
            .map(|(k, at)| (&found[&k.name], k, at))
            .collect();
        for (r, k, at) in &rows {
            if let Err(e) = preflight::check(r, threads(k)) {
                over.push(format!("{arch}, in {at:?}: {e}"));
            }
        }
        rows.sort_by_key(|(r, k, _)| (std::cmp::Reverse(r.registers), k.name.clone()));
        let row = |(r, k, at): &(&Resources, &KernelSource, &BTreeSet<String>)| {
            format!(
                "  {:<44} {:>4} regs {:>5} threads {:>6} smem {:>5} stack {:>5}/{:<5} spill st/ld  {}{}",
                r.function,
                r.registers,
                threads(k),
                r.shared_bytes,
                r.stack_bytes,
                r.spill_store_bytes,
                r.spill_load_bytes,
                at.iter().next().map_or("", |s| s.as_str()),
                match at.len() {
                    1 => String::new(),
                    n => format!(" (+{} more)", n - 1),
                }
            )
        };
        eprintln!("{arch}: the 12 heaviest register users");
        rows.iter().take(12).for_each(|r| eprintln!("{}", row(r)));
        let spills: Vec<_> = rows.iter().filter(|(r, _, _)| r.spills()).collect();
        eprintln!("{arch}: {} kernels spill", spills.len());
        spills.iter().for_each(|r| eprintln!("{}", row(r)));
    }
    eprintln!("preflight in {:.1} s", start.elapsed().as_secs_f64());
    assert!(
        over.is_empty(),
        "kernels a GPU would refuse to launch:\n{}",
        over.join("\n")
    );
}

//! The runtime object (kiln-cpu `runtime.rs`): the micro-kernels every matmul kernel calls are
//! compiled once per compile, as a unit of their own, cached like a kernel's unit, rebuilt
//! when their cache entry is damaged, and the kernels that call them compute what the
//! interpreter does.
mod common;
use common::*;
use kiln_compile::{CompileOptions, KernelCache, Target};
use kiln_cpu::CpuBackend;
use kiln_ir::{DType, Tensor};

fn weights(n: i64, half: i64, k: i64) -> Vec<(&'static str, Tensor)> {
    let (n, half, k) = (n as usize, half as usize, k as usize);
    vec![
        (
            "w",
            Tensor::from_f32(&[n, k], &values(n * k, 7)).to_dtype(DType::BF16),
        ),
        (
            "v",
            Tensor::from_f32(&[2 * half, k], &values(2 * half * k, 8)).to_dtype(DType::BF16),
        ),
    ]
}

/// The .kart files under a cache folder.
fn entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(entries(&e.path()));
        } else if e.path().extension().is_some_and(|x| x == "kart") {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn the_runtime_is_compiled_once_cached_and_rebuilt_when_damaged() {
    let (n, half, k) = (72, 40, 96);
    let g = linear_graph(DType::BF16, n, half, k);
    let dir = tempfile::tempdir().unwrap();
    // One kernel per unit: both matmul kernels (and their units) call the bf16 GEMM.
    let opts = CompileOptions {
        threads: 2,
        batching: false,
        cache: Some(KernelCache::open(dir.path()).unwrap()),
        ..Default::default()
    };
    let run = |report_origin: &str| {
        let loaded = CpuBackend::default().load(&g, &opts).unwrap();
        let report = loaded.report;
        let runtime: Vec<_> = report.units.iter().filter(|u| u.runtime).collect();
        // The bf16 tile, compiled in its three cases (columns off a panel boundary, GEMV
        // passes, GEMM), and the parts they call: the micro-kernel, the A packing, the GEMV
        // pass shapes (several panels, one panel); those first, as they load first. The list
        // is `kiln_cpu::runtime`'s (its unit tests spell it out); here, that the compile
        // builds those parts and no other, in that order.
        let parts: Vec<&str> = runtime.iter().map(|u| u.kernels[0].as_str()).collect();
        let expected = kiln_cpu::runtime::parts_called(["kiln_packed_tile_bf16("]);
        assert_eq!(
            parts.len(),
            expected.len(),
            "{expected:?}: {:?}",
            report.units
        );
        for (part, name) in parts.iter().zip(&expected) {
            assert!(part.starts_with(&format!("kiln_rt_{name}_")), "{parts:?}");
        }
        assert_eq!(runtime[0].origin, report_origin, "{:?}", report.units);
        let matmuls = report
            .kernels
            .iter()
            .filter(|k| k.label.contains("matmul"))
            .count();
        assert!(matmuls >= 2, "{:?}", report.kernels);
        // The runtime is first in the schedule, and only kernels count as kernels.
        assert!(report.units[0].runtime);
        assert_eq!(report.compiled + report.cache_hits, report.kernels_unique);
        let mut exe = loaded.exe;
        let ws = weights(n, half, k);
        for (name, w) in &ws {
            exe.set_param(name, w.clone()).unwrap();
        }
        // Rows that take every path of the tile: 1 to 4 (decode), 5 to KILN_GEMV_ROWS = 32
        // (batched decode), and more (GEMM).
        for m in [1, 2, 3, 4, 5, 7, 12, 13, 30, 45] {
            let act = vec![
                (
                    "x",
                    Tensor::from_f32(&[m, k as usize], &values(m * k as usize, 5)),
                ),
                (
                    "r",
                    Tensor::from_f32(&[m, n as usize], &values(m * n as usize, 3)),
                ),
            ];
            let got = exe.run(&inputs(&act)).unwrap();
            let all: Vec<_> = act.into_iter().chain(ws.iter().cloned()).collect();
            kiln_ir::testing::assert_matches_interpreter(&got, &g, &inputs(&all), 1e-4, 1e-4);
        }
        report
    };

    // Cold: every unit compiled once, the runtime among them.
    let cold = run("compiled");
    assert_eq!(cold.compiler_invocations, cold.units.len());
    // Warm: nothing compiled, the runtime from the cache too.
    let warm = run("cache");
    assert_eq!(warm.compiler_invocations, 0);
    assert_eq!(warm.artifact_digest, cold.artifact_digest);

    // A damaged runtime entry (its header names the part): detected, rebuilt alone.
    let part = cold.units[0].kernels[0].clone();
    let entry = entries(dir.path())
        .into_iter()
        .find(|p| {
            let bytes = std::fs::read(p).unwrap();
            bytes.windows(part.len()).any(|w| w == part.as_bytes())
        })
        .expect("the runtime's cache entry");
    let mut bytes = std::fs::read(&entry).unwrap();
    let at = bytes.len() - 64;
    bytes[at] ^= 0x40;
    std::fs::write(&entry, &bytes).unwrap();
    let rebuilt = run("compiled");
    assert_eq!(rebuilt.compiler_invocations, 1, "{:?}", rebuilt.units);
    assert_eq!(rebuilt.artifact_digest, cold.artifact_digest);
}

/// A program without a matmul or an attention calls no part of the runtime: nothing extra is
/// compiled.
#[test]
fn programs_that_call_no_runtime_function_compile_none() {
    let mut g = kiln_ir::Graph::new();
    let x = g
        .input("x", DType::F32, &[kiln_ir::Expr::sym("s"), 8.into()])
        .unwrap();
    let e = g.exp2(x).unwrap();
    g.output("y", e);
    let report = kiln_compile::compile(
        &g,
        &CpuBackend::default(),
        &CompileOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap()
    .report;
    assert!(
        report.units.iter().all(|u| !u.runtime),
        "{:?}",
        report.units
    );
}

/// A backend wrapper that does not pass the runtime on: the kernels that call it fail to load,
/// naming the function they call, instead of ending the process when they run.
#[test]
fn kernels_whose_runtime_is_missing_fail_to_load_by_name() {
    use kiln_program::KernelSource;
    struct NoRuntime;
    impl kiln_compile::testing::Hooks<CpuBackend> for NoRuntime {
        fn runtime(&self, _: &CpuBackend, _: &[KernelSource]) -> Vec<KernelSource> {
            Vec::new()
        }
    }
    let g = linear_graph(DType::BF16, 40, 24, 32);
    let opts = CompileOptions {
        threads: 1,
        ..Default::default()
    };
    let backend = kiln_compile::testing::Wrapped {
        inner: CpuBackend::default(),
        hooks: NoRuntime,
    };
    let err = kiln_compile::compile(&g, &backend, &opts)
        .err()
        .expect("the kernels cannot be loaded without the runtime");
    let msg = err.to_string();
    assert!(msg.contains("kiln_packed_tile_bf16_"), "{msg}");
}

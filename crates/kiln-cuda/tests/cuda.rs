//! The CUDA backend. Compiling to CUBIN needs only NVRTC and runs everywhere (CI installs the
//! NVRTC 13 wheel `nvidia-cuda-nvrtc`; a missing libnvrtc fails these tests, it does not skip them).
//! Running kernels needs an NVIDIA GPU: those tests say so and skip when there is none. Their
//! bodies also run on the CUDA emulator (the same CUDA C on the CPU), which runs everywhere.

use kiln_compile::Target;
use kiln_compile::{compile, CompileOptions};
use kiln_cpu::CpuBackend;
use kiln_cuda::emulator::EmulatedCuda;
use kiln_cuda::{cuda_device_present, CudaBackend, CudaModule};
use kiln_models::testing::{fixtures, max_abs_diff, Reference};
use kiln_models::{
    build_graph, presets::preset, GraphOptions, LoadOptions, Model, ModelSource, Sampling,
};
use kiln_runtime::Executable;

#[test]
fn qwen3_preset_compiles_to_cubin_deterministically() {
    let graph = build_graph(&preset("qwen3-0.6b").unwrap(), GraphOptions::default()).unwrap();
    for arch in ["sm_90", "sm_80"] {
        let backend = CudaBackend::compile_only(arch).unwrap();
        let mut digests = Vec::new();
        // NVRTC compiles inside kiln: never more programs at once than cores, whatever the
        // threads (with a memory budget that holds them all).
        let cores = std::thread::available_parallelism().unwrap().get();
        for threads in [1, 2, 16] {
            let c = compile(
                &graph,
                &backend,
                &CompileOptions {
                    threads,
                    memory_budget: Some(1 << 40),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{arch}, {threads} threads: {e}"));
            assert_eq!(c.report.compiled, c.report.kernels_unique);
            assert_eq!(c.report.max_compilers_in_flight, threads.min(cores));
            for m in &c.loaded.modules {
                let CudaModule::Cubin(bytes) = m else {
                    panic!("compile-only loads nothing")
                };
                assert_eq!(&bytes[..4], b"\x7fELF", "a CUBIN is an ELF image");
            }
            digests.push(c.report.artifact_digest);
        }
        assert!(
            digests.iter().all(|d| *d == digests[0]),
            "{arch}: same CUBINs for 1, 2 and 16 threads: {digests:?}"
        );
    }
}

#[test]
fn a_cuda_syntax_error_names_the_kernel_with_nvrtc_log() {
    let graph = build_graph(&preset("qwen3-0.6b").unwrap(), GraphOptions::default()).unwrap();
    // The fused attention: one distinct kernel (the softmax's max is inside it).
    let (_, fail) = kiln_compile::testing::compile_with_a_broken_kernel(
        &graph,
        CudaBackend::compile_only("sm_90").unwrap(),
        &["attention"],
    );
    let log = fail.error.to_string();
    assert!(
        log.contains("error") && log.contains("kernels.cu"),
        "NVRTC log: {log}"
    );
}

#[test]
fn invalid_arch_is_a_clear_error() {
    let e = CudaBackend::compile_only("hopper")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("invalid CUDA arch 'hopper'"), "{e}");
}

/// Whether there is a CUDA device to run the `gpu_*` tests on. Without one they skip, saying
/// so once; with `KILN_REQUIRE_CUDA=1` (`scripts/gpu-check.sh` sets it) they fail instead.
fn gpu() -> bool {
    let present = cuda_device_present();
    assert!(
        present || !kiln_ir::testing::require("KILN_REQUIRE_CUDA"),
        "KILN_REQUIRE_CUDA is set but there is no CUDA device (or no driver)"
    );
    if !present {
        // Once per run, written past the test harness's capture so that CI logs show it.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipping the GPU tests (gpu_*): no CUDA device; they run kernels on an NVIDIA GPU"
            );
        });
    }
    present
}

/// Where a test runs the CUDA kernels: on the GPU, or the same CUDA C in the CPU emulator.
#[derive(Clone, Copy, Debug)]
enum Where {
    Gpu,
    Emulated,
}

impl Where {
    fn target(self) -> Box<dyn Target> {
        match self {
            Where::Gpu => Box::new(CudaBackend::for_device(0, None).unwrap()),
            Where::Emulated => Box::new(EmulatedCuda::default()),
        }
    }
}

/// Compiles `g` with the CUDA backend and returns something that runs it on `target`.
fn cuda_executable(g: &kiln_ir::Graph, target: Where) -> Box<dyn Executable> {
    target
        .target()
        .load(g, &CompileOptions::default())
        .unwrap()
        .exe
}

/// Runs an op case of `kiln_ir::testing::op_cases` (the table every backend runs) on `target`.
fn run_op_case(target: Where, case: kiln_ir::testing::OpCase) {
    let mut exe = cuda_executable(&case.graph, target);
    case.check(|ins, b| exe.run_with(ins, b));
}

/// The op cases on the GPU: every one.
mod gpu_ops {
    fn run(case: kiln_ir::testing::OpCase) {
        if super::gpu() {
            super::run_op_case(super::Where::Gpu, case);
        }
    }
    kiln_ir::op_case_tests!(run);
}

/// The op cases on the CUDA emulator, all but one: `large_launches_split_their_grid` (2^24
/// elements, each a coroutine thread of the emulator: minutes on a CPU) checks the grid split
/// that only a GPU's limits need, and runs in `gpu_ops`.
mod emulated_ops {
    fn run(case: kiln_ir::testing::OpCase) {
        if case.name == "large_launches_split_their_grid" {
            eprintln!("{}: skipped on the emulator (runs on the GPU)", case.name);
            return;
        }
        super::run_op_case(super::Where::Emulated, case);
    }
    kiln_ir::op_case_tests!(run);
}

#[test]
fn gpu_attention_matches_the_interpreter_at_awkward_sizes() {
    if gpu() {
        attention_matches_the_interpreter(Where::Gpu);
    }
}

#[test]
fn emulated_attention_matches_the_interpreter_at_awkward_sizes() {
    attention_matches_the_interpreter(Where::Emulated);
}

/// The fused attention kernel (one block per query row, warps splitting the keys, lanes the
/// columns) at sizes that fit none of its strides: a key depth of 20 (not a multiple of the
/// 32 lanes), 160 value columns (two passes of 128, the second partial), three query heads per
/// KV head, key counts that do not divide among the 8 warps or are smaller than them, with and
/// without a causal mask.
fn attention_matches_the_interpreter(target: Where) {
    use kiln_ir::testing::{assert_matches_interpreter, attention_graph, attention_inputs};
    const KV: usize = 2;
    const G: usize = 3;
    const D: usize = 20;
    const DV: usize = 160;
    for masked in [true, false] {
        let g = attention_graph(KV, G, D, DV, masked);
        let mut exe = cuda_executable(&g, target);
        // (s, p): a prompt, decode steps at positions whose key counts split unevenly among
        // the warps, and a single key.
        for (s, p) in [(19usize, 0usize), (1, 37), (3, 2), (1, 0)] {
            let ins = attention_inputs(KV, G, D, DV, s, s + p);
            let got = exe.run(&ins).unwrap();
            eprintln!("{target:?}, masked {masked}, s {s}, p {p}");
            assert_matches_interpreter(&got, &g, &ins, 1e-5, 1e-5);
        }
    }
}

#[test]
fn gpu_attention_writes_the_rows_its_projection_reads() {
    if gpu() {
        attention_writes_the_rows_its_projection_reads(Where::Gpu);
    }
}

#[test]
fn emulated_attention_writes_the_rows_its_projection_reads() {
    attention_writes_the_rows_its_projection_reads(Where::Emulated);
}

/// Grouped-query attention read by a projection as `[s, heads * dv]`: one attention kernel
/// that stores each row where that view puts it (`out_rows`), then the projection; no copy.
fn attention_writes_the_rows_its_projection_reads(target: Where) {
    use kiln_ir::testing::{
        assert_matches_interpreter, attention_graph_projected, attention_projected_inputs,
    };
    const KV: usize = 2;
    const G: usize = 3;
    const D: usize = 20;
    const DV: usize = 40;
    let g = attention_graph_projected(KV, G, D, DV);
    let program = kiln_compile::extract::extract(&kiln_compile::analysis::analyze(&g).unwrap());
    let labels: Vec<String> = program.steps.iter().map(|s| s.kernel.label()).collect();
    assert_eq!(labels, ["attention", "matmul"]);
    let mut exe = cuda_executable(&g, target);
    for (s, p) in [(5usize, 0usize), (1, 37), (3, 2)] {
        let ins = attention_projected_inputs(KV, G, D, DV, s, s + p);
        let got = exe.run(&ins).unwrap();
        assert_matches_interpreter(&got, &g, &ins, 1e-5, 1e-4);
    }
}

#[test]
fn write_kernels_compile_with_nvrtc() {
    let backend = CudaBackend::compile_only("sm_90").unwrap();
    let case = kiln_ir::testing::op_cases::write_slice_in_place_and_as_a_copy();
    let c = compile(&case.graph, &backend, &CompileOptions::default()).unwrap();
    assert!(c.loaded.kernels.iter().any(|k| k.kernel.label() == "write"));
}

/// Infinities, NaN and f64 constants past f32's range compile with NVRTC (an f32 `1e39` once
/// rendered as `inff`; the op cases run them on the emulator and the GPU).
#[test]
fn non_finite_constants_compile_with_nvrtc() {
    let backend = CudaBackend::compile_only("sm_90").unwrap();
    let g = kiln_ir::testing::non_finite_constants_graph();
    compile(&g, &backend, &CompileOptions::default()).unwrap();
}

/// Buffers larger than the card are a clear error naming what was needed and what is free.
#[test]
fn gpu_out_of_device_memory_is_a_clear_error() {
    if !gpu() {
        return;
    }
    use kiln_ir::{DType, Expr, Graph, Tensor};
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, &[Expr::sym("s"), 1.into()])
        .unwrap();
    let z = g
        .input("z", DType::F32, &[1.into(), Expr::sym("n")])
        .unwrap();
    let y = g.add(x, z).unwrap();
    g.output("y", y);
    let mut exe = cuda_executable(&g, Where::Gpu);
    // [2^18, 2^20] f32 = 1 TiB, more than any card holds; the inputs are 1 MiB and 4 MiB.
    let ins: std::collections::HashMap<String, Tensor> = [
        ("x".to_string(), Tensor::zeros(DType::F32, &[1 << 18, 1])),
        ("z".to_string(), Tensor::zeros(DType::F32, &[1, 1 << 20])),
    ]
    .into();
    let Err(e) = exe.run(&ins) else {
        panic!("1 TiB cannot fit on a GPU")
    };
    let e = e.to_string();
    assert!(
        e.contains("needs 1099511.6 MB of") && e.contains("are free"),
        "{e}"
    );
}

#[test]
fn gpu_fixtures_reproduce_transformers_greedy_ids() {
    if gpu() {
        fixtures_reproduce_transformers_greedy_ids(Where::Gpu);
    }
}

#[test]
fn emulated_fixtures_reproduce_transformers_greedy_ids() {
    fixtures_reproduce_transformers_greedy_ids(Where::Emulated);
}

fn fixtures_reproduce_transformers_greedy_ids(device: Where) {
    let target = device.target();
    for name in ["tiny-qwen3", "tiny-qwen3-sharded", "tiny-qwen3-bf16"] {
        let dir = fixtures().join(name);
        let opts = LoadOptions::new(target.as_ref());
        let mut m = Model::load(&ModelSource::Dir(dir.clone()), &opts).unwrap();
        let r = Reference::read(name, "p1");
        let g = m
            .generate(&r.prompt_ids, 16, &Sampling::default(), &[], |_| {})
            .unwrap();
        assert_eq!(g.generated_ids, r.greedy_ids, "{name} on {device:?}");
        for (k, want) in r.step_logits.iter().enumerate() {
            let d = max_abs_diff(want, &g.step_logits[k]);
            assert!(d <= 1e-3, "{name} on {device:?}, step {k}: {d}");
        }
    }
}

/// The batched graph (several sequences per forward, a KV cache slot each) gives each
/// sequence bitwise what the single-sequence graph gives it on the same device.
#[test]
fn emulated_batched_model_equals_the_single_sequence_model() {
    kiln_models::testing::assert_batched_equals_single(
        Where::Emulated.target().as_ref(),
        "tiny-qwen3",
        kiln_models::testing::BatchExactness::Close,
    );
}

#[test]
fn gpu_batched_model_equals_the_single_sequence_model() {
    if gpu() {
        kiln_models::testing::assert_batched_equals_single(
            Where::Gpu.target().as_ref(),
            "tiny-qwen3",
            kiln_models::testing::BatchExactness::Close,
        );
    }
}

#[test]
fn gpu_and_cpu_agree_on_the_qwen3_preset() {
    if !gpu() {
        return;
    }
    let prompt: Vec<u32> = vec![9707, 11, 1879, 0, 220];
    let run = |target: &dyn Target| {
        let mut m = Model::load(
            &ModelSource::Preset("qwen3-0.6b".into()),
            &LoadOptions::new(target),
        )
        .unwrap();
        m.generate(&prompt, 32, &Sampling::default(), &[], |_| {})
            .unwrap()
    };
    let (cpu, gpu) = (
        run(&CpuBackend::default()),
        run(Where::Gpu.target().as_ref()),
    );
    kiln_models::testing::assert_greedy_agrees(&cpu, &gpu, "cuda");
}

/// The CPU backend's property test on CUDA: random graphs and bindings vs the interpreter.
fn random_graph_matches_the_interpreter(
    target: Where,
    ops: &[(u8, u8)],
    binds: &[(usize, usize)],
) -> Result<(), proptest::test_runner::TestCaseError> {
    use kiln_ir::Tensor;
    let g = kiln_ir::testing::random_graph(ops);
    let mut exe = cuda_executable(&g, target);
    for (i, (na, nb)) in binds.iter().enumerate() {
        let vals = |seed: usize| {
            (0..na * nb)
                .map(|j| (((j * 7919 + seed * 31 + i) % 1000) as f32 / 500.0) - 1.0)
                .collect::<Vec<_>>()
        };
        let ins: std::collections::HashMap<String, Tensor> = [
            ("x".to_string(), Tensor::from_f32(&[*na, *nb], &vals(1))),
            ("y".to_string(), Tensor::from_f32(&[*na, *nb], &vals(2))),
        ]
        .into();
        let got = exe.run(&ins).unwrap();
        let want = kiln_ir::interpret(&g, &ins, &Default::default()).unwrap();
        let (a, b) = (got["out"].to_f64_vec(), want["out"].to_f64_vec());
        for (x, y) in a.iter().zip(&b) {
            let same = (x.is_nan() && y.is_nan()) || x == y;
            proptest::prop_assert!(
                same || (x - y).abs() <= 1e-5 + 2e-5 * y.abs(),
                "{target:?}: got {x}, want {y}"
            );
        }
    }
    Ok(())
}

/// Found by the property test: two flattened copies of one row (`[a * b]` and `[b * a]`) are
/// different kernels whose CUDA C is the same (the size is a launch parameter), so they had the
/// same name and were compiled into one unit twice. Equal sources are now one kernel.
#[test]
fn kernels_with_equal_cuda_sources_compile_once() {
    random_graph_matches_the_interpreter(
        Where::Emulated,
        &[(118, 0), (190, 0), (98, 0), (187, 3), (80, 0)],
        &[(1, 1), (2, 3), (5, 8)],
    )
    .unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, failure_persistence: None, ..Default::default() })]

    #[test]
    fn gpu_random_graphs_match_the_interpreter(
        ops in proptest::collection::vec((proptest::prelude::any::<u8>(), proptest::prelude::any::<u8>()), 1..8),
        binds in proptest::collection::vec((1usize..6, 1usize..9), 3),
    ) {
        if gpu() {
            random_graph_matches_the_interpreter(Where::Gpu, &ops, &binds)?;
        }
    }

    #[test]
    fn emulated_random_graphs_match_the_interpreter(
        ops in proptest::collection::vec((proptest::prelude::any::<u8>(), proptest::prelude::any::<u8>()), 1..8),
        binds in proptest::collection::vec((1usize..6, 1usize..9), 3),
    ) {
        random_graph_matches_the_interpreter(Where::Emulated, &ops, &binds)?;
    }
}

/// A matmul with symbolic rows is two kernels, each compiled in a program of its own: the tiled
/// product in the kernels' units, the decode GEMV as a runtime unit (`codegen::decode_rows`).
/// Each launch runs the one its rows pick, one launch per step: at 1 row the GEMV, at more the
/// tiled product, both matching the interpreter (as the op cases check on every backend).
#[test]
fn a_matmul_with_symbolic_rows_compiles_its_decode_kernel_apart() {
    let case = kiln_ir::testing::op_cases::bf16_weight_gemv_reads_whole_words();
    for threads in [1, 2] {
        let opts = CompileOptions {
            threads,
            ..Default::default()
        };
        let c = compile(
            &case.graph,
            &CudaBackend::compile_only("sm_90").unwrap(),
            &opts,
        )
        .unwrap();
        let matmuls: Vec<&str> = c
            .loaded
            .kernels
            .iter()
            .filter(|k| kiln_cuda::codegen::decode_rows(&k.kernel).is_some())
            .map(|k| k.source.name.as_str())
            .collect();
        assert_eq!(matmuls.len(), 2, "both matmuls have symbolic rows");
        let mut decode: Vec<String> = c
            .report
            .units
            .iter()
            .filter(|u| u.runtime)
            .flat_map(|u| u.kernels.clone())
            .collect();
        decode.sort();
        let mut want: Vec<String> = matmuls.iter().map(|m| format!("{m}_gemv")).collect();
        want.sort();
        assert_eq!(decode, want, "one decode unit per split matmul");
        // The kernels' units hold the tiled product only: no CUBIN defines both kernels.
        for (unit, m) in c.report.units.iter().zip(&c.loaded.modules) {
            let CudaModule::Cubin(cubin) = m else {
                panic!("compile-only")
            };
            let defines = |name: &str| {
                let needle = [name.as_bytes(), b"\0"].concat();
                cubin.windows(needle.len()).any(|w| w == needle)
            };
            for k in &matmuls {
                let gemv = format!("{k}_gemv");
                assert!(!(defines(k) && defines(&gemv)), "{unit:?}");
            }
        }
    }
    run_op_case(Where::Emulated, case);
}

/// The emulator without its runtime parts: the decode kernels are never compiled, and
/// loading says which one is missing instead of running the tiled product at one row.
struct WithoutRuntime;

impl kiln_compile::testing::Hooks<EmulatedCuda> for WithoutRuntime {
    fn name(&self, _: &EmulatedCuda) -> &'static str {
        "cuda-emulated-without-runtime"
    }
    fn runtime(
        &self,
        _: &EmulatedCuda,
        _: &[kiln_program::KernelSource],
    ) -> Vec<kiln_program::KernelSource> {
        Vec::new()
    }
}

#[test]
fn a_missing_decode_kernel_is_a_load_error_naming_it() {
    let case = kiln_ir::testing::op_cases::bf16_weight_gemv_reads_whole_words();
    let backend = kiln_compile::testing::Wrapped {
        inner: EmulatedCuda::default(),
        hooks: WithoutRuntime,
    };
    let err = match backend.load(&case.graph, &Default::default()) {
        Ok(_) => panic!("must fail: the decode kernels were never compiled"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("_gemv") && err.contains("load_runtime"),
        "{err}"
    );
}

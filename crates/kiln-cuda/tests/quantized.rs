//! Block-quantized weights (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K in GGUF's byte layout) on the CUDA backend: its
//! matmul kernels (the GEMV and the tiled product) read the blocks and dequantize each element
//! as ggml does (`kiln_q*_at` in kiln-render's C-family helpers). NVRTC compiles them; the CUDA
//! emulator runs them (the op case `quantized_weight_matmuls` runs in `cuda.rs` with the other
//! op cases, on the emulator and on a GPU when there is one), here views that start mid-block
//! and the GGUF fixtures. A backend that does not read blocks still refuses them.
//!
//! Tolerance of the fixtures' logits: 1e-3, the CUDA tests' tolerance for the safetensors
//! fixtures (`cuda.rs`): the kernels sum in f32 in other orders than the CPU and the NumPy
//! reference; the weights they read are bit for bit ggml's dequantized values (the op case
//! compares them with the interpreter at 1e-5 + 1e-4 relative).
use kiln_compile::{compile, CompileOptions, Target};
use kiln_cuda::emulator::EmulatedCuda;
use kiln_cuda::CudaBackend;
use kiln_models::testing::{assert_gguf_fixture_matches, GGUF_QUANTIZED_FILES};

#[test]
fn quantized_matmuls_compile_with_nvrtc() {
    let case = kiln_ir::testing::op_cases::quantized_weight_matmuls();
    for arch in ["sm_90", "sm_80"] {
        let backend = CudaBackend::compile_only(arch).unwrap();
        let c = compile(&case.graph, &backend, &CompileOptions::default())
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        // One product per weight, the gate/up one with its SiLU(gate) * up epilogue.
        let matmuls = c
            .loaded
            .kernels
            .iter()
            .filter(|k| matches!(k.kernel.kind, kiln_program::KernelKind::MatMul { .. }))
            .count();
        assert_eq!(matmuls, 6, "{arch}");
    }
}

/// Whole quantized models (their graphs as `kiln compile --backend cuda` builds them from the
/// GGUF metadata, fused projections and a tied head reading blocks included) compile to CUBIN.
#[test]
fn quantized_gguf_models_compile_with_nvrtc() {
    let backend = CudaBackend::compile_only("sm_90").unwrap();
    for file in GGUF_QUANTIZED_FILES {
        let path = kiln_models::testing::gguf_fixtures().join(file);
        let config = kiln_models::ModelSource::Gguf(path).config().unwrap();
        let graph = kiln_models::build_graph(&config, Default::default()).unwrap();
        let quantized = graph
            .inputs()
            .into_iter()
            .filter(|(id, _)| graph.dtype(*id).is_quantized())
            .count();
        assert!(quantized > 0, "{file}: no quantized weight in the graph");
        compile(&graph, &backend, &CompileOptions::default())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

/// Weights read through views that start mid-block (not an op case: the CPU refuses them).
#[test]
fn emulated_quantized_weight_views_match_the_interpreter() {
    let case = kiln_ir::testing::op_cases::quantized_weight_views();
    let mut exe = EmulatedCuda::default()
        .load(&case.graph, &CompileOptions::default())
        .unwrap()
        .exe;
    case.check(|ins, b| exe.run_with(ins, b));
}

#[test]
fn emulated_quantized_gguf_fixtures_match_their_numpy_references() {
    // One thread per file, each with its own emulator: the emulator runs a kernel on one core,
    // so the files run side by side on the cores a test binary has (CI: 2).
    let worst = std::thread::scope(|s| {
        let files: Vec<_> = GGUF_QUANTIZED_FILES
            .iter()
            .map(|file| {
                s.spawn(move || assert_gguf_fixture_matches(&EmulatedCuda::default(), file, 1e-3))
            })
            .collect();
        files
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .fold(0.0f32, f32::max)
    });
    eprintln!("CUDA emulator, all quantized GGUF files: max |kiln - numpy| {worst:.2e}");
}

/// The emulator, but for what it says of weight dtypes: the trait's default, which refuses
/// the block-quantized ones (the emulator renders and compiles for it), to check the refusal
/// that a backend without quantized kernels gets.
struct WithoutQuantizedKernels;

impl kiln_compile::testing::Hooks<EmulatedCuda> for WithoutQuantizedKernels {
    fn name(&self, _: &EmulatedCuda) -> &'static str {
        "no-quantized-kernels"
    }
    fn supports_weight_dtype(&self, _: &EmulatedCuda, dtype: kiln_ir::DType) -> bool {
        !dtype.is_quantized()
    }
}

/// A backend that does not say it reads quantized weights gets a typed error naming the
/// backend, the input and the dtype before any kernel is rendered.
#[test]
fn a_backend_without_quantized_kernels_refuses_them_naming_backend_input_and_dtype() {
    use kiln_program::Backend;
    let case = kiln_ir::testing::op_cases::quantized_weight_matmuls();
    let backend = kiln_compile::testing::Wrapped {
        inner: EmulatedCuda::default(),
        hooks: WithoutQuantizedKernels,
    };
    let err = compile(&case.graph, &backend, &CompileOptions::default())
        .err()
        .expect("refused");
    let kiln_compile::CompileError::UnsupportedDType {
        backend: name,
        input,
        dtype,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(name, Backend::name(&backend));
    assert!(dtype.is_quantized() && input.starts_with('w'), "{err}");
    assert!(err.to_string().contains(dtype.name()), "{err}");
}

//! Block-quantized weights are read only by the CPU backend's kernels: CUDA (here its
//! emulator, the same codegen) refuses them before any kernel is rendered, with a typed error
//! naming the backend, the input and the dtype.
use kiln_compile::{CompileError, CompileOptions};
use kiln_cuda::emulator::EmulatedCuda;
use kiln_ir::{DType, Expr, Graph};

#[test]
fn a_quantized_weight_is_refused_naming_backend_input_and_dtype() {
    for dtype in DType::QUANTIZED {
        let mut g = Graph::new();
        let x = g
            .input("x", DType::F32, &[Expr::sym("m"), 256.into()])
            .unwrap();
        let w = g.input("w", dtype, &[8.into(), 256.into()]).unwrap();
        let wt = g.transpose(w, 0, 1).unwrap();
        let y = g.matmul(x, wt).unwrap();
        g.output("y", y);
        let err = kiln_compile::compile(&g, &EmulatedCuda::default(), &CompileOptions::default())
            .err()
            .expect("refused");
        match &err {
            CompileError::UnsupportedDType {
                backend,
                input,
                dtype: d,
            } => {
                assert_eq!(
                    (backend.as_str(), input.as_str(), *d),
                    ("cuda-emulated", "w", dtype)
                );
            }
            other => panic!("{dtype}: {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(dtype.name()) && msg.contains("cuda"), "{msg}");
    }
}

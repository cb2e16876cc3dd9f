//! The block-quantized GEMM and GEMV (`c/gemm_quant.h`, `c/gemm_q6k.h`, `c/gemm_q5k.h`: Q8_0,
//! Q4_0, Q4_K, Q5_K and Q6_K weights read as
//! blocks inside the kernels) for each kernel ISA this machine runs (AVX2 with 16-column
//! panels, AVX-512 with 32; the AVX-512 half says when it is skipped): against the interpreter
//! (which dequantizes the weights to f32, the oracle), and bit for bit against the f32 kernels
//! given the dequantized weights — every weight is dequantized exactly as ggml does and every
//! product is the f32 path's FMA chain. Sizes off every block: rows around the GEMV limit and
//! the micro-kernel's strips, a partial last panel, K past the 1024-deep k block, epilogue
//! columns on and off a panel boundary; weights bound once (packed when bound) and passed per
//! run (packed at launch); 1 vs 2 threads and a decode row against the same row of a prefill.
//! Where a kernel ISA has a type's integer path (AVX-512 with VNNI: every type; AVX2: the
//! types of `Int8Types::AVX2`), that path (activations quantized to int8) runs too: against the interpreter within the activation quantization's
//! error (stated below), not bit for bit against the f32 kernels; its exact model is
//! tests/gemm_qint8.rs. The f32-dequantizing kernels of each ISA are then forced
//! (`QuantRequest::Dequant`) so they stay tested.
mod common;
use common::*;
use kiln_compile::{CompileOptions, Target};
use kiln_cpu::QuantRequest;
use kiln_ir::{DType, Graph, Tensor};
use std::collections::HashMap;

/// The weights quantized to `dtype` with ggml's reference quantizer.
fn weights(dtype: DType, n: i64, half: i64, k: i64) -> Vec<(&'static str, Tensor)> {
    let (n, half, k) = (n as usize, half as usize, k as usize);
    let scale = |v: Vec<f32>| {
        v.into_iter()
            .map(|x| x / (k as f32).sqrt())
            .collect::<Vec<_>>()
    };
    vec![
        (
            "w",
            Tensor::quantize(dtype, &[n, k], &scale(values(n * k, 7))).unwrap(),
        ),
        (
            "v",
            Tensor::quantize(dtype, &[2 * half, k], &scale(values(2 * half * k, 8))).unwrap(),
        ),
    ]
}

fn activations(m: usize, n: i64, k: i64) -> Vec<(&'static str, Tensor)> {
    let (n, k) = (n as usize, k as usize);
    vec![
        ("x", Tensor::from_f32(&[m, k], &values(m * k, m as u64))),
        ("r", Tensor::from_f32(&[m, n], &values(m * n, 3))),
    ]
}

/// Rows around the GEMV limit 4, MR = 6 and 12, and the 132-row block.
const ROWS: [usize; 8] = [1, 2, 4, 5, 7, 13, 25, 133];

/// The kernel paths this machine runs: each ISA's kernels dequantizing to f32 (forced:
/// `QuantRequest::Dequant`), and each ISA's integer path where its kernels have one
/// (`QuantRequest::Auto` there: AVX-512 with VNNI, all five types; AVX2, the types of
/// `Int8Types::AVX2`, the others on f32 there too; says so when it is skipped).
fn paths() -> Vec<(Isa, QuantRequest)> {
    let mut paths = Vec::new();
    for isa in isas() {
        paths.push((isa, QuantRequest::Dequant));
        match backend(Some(isa))
            .with_quant(QuantRequest::Int8)
            .quant_int8()
        {
            Ok(_) => paths.push((isa, QuantRequest::Auto)),
            Err(e) => eprintln!("skipping the {} integer quantized kernels: {e}", isa.name()),
        }
    }
    paths
}

fn load(g: &Graph, (isa, quant): (Isa, QuantRequest), threads: usize) -> Box<dyn Executable> {
    backend(Some(isa))
        .with_quant(quant)
        .with_run_threads(threads)
        .load(
            g,
            &CompileOptions {
                threads: 2,
                // `bound`, `one_thread` and `per_run` are the same kernels: compiled once.
                cache: shared_cache("gemm-quant-cache"),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("compile failed: {e}"))
        .exe
}

fn check_sizes(dtype: DType, n: i64, half: i64, k: i64) {
    for isa in paths() {
        // The integer path quantizes the activations (exact model: tests/gemm_qint8.rs).
        let int8 = backend(Some(isa.0))
            .with_quant(isa.1)
            .quant_int8()
            .unwrap()
            .has(dtype);
        eprintln!(
            "{dtype} n={n} half={half} k={k}: the {} kernels, {}",
            isa.0.name(),
            if int8 {
                "integer path"
            } else {
                "f32-dequant path"
            }
        );
        let g = linear_graph(dtype, n, half, k);
        let q = weights(dtype, n, half, k);
        let deq: Vec<(&str, Tensor)> = q
            .iter()
            .map(|(name, t)| (*name, t.to_dtype(DType::F32)))
            .collect();
        let mut bound = load(&g, isa, 2);
        let mut one_thread = load(&g, isa, 1);
        for (name, t) in &q {
            bound.set_param(name, t.clone()).unwrap();
            one_thread.set_param(name, t.clone()).unwrap();
        }
        let mut per_run = load(&g, isa, 2);
        // The f32 kernels on the dequantized weights.
        let mut f32s = load(&linear_graph(DType::F32, n, half, k), isa, 2);
        for (name, t) in &deq {
            f32s.set_param(name, t.clone()).unwrap();
        }
        let mut rows: HashMap<usize, HashMap<String, Tensor>> = HashMap::new();
        for m in ROWS {
            let act = activations(m, n, k);
            let all: Vec<(&str, Tensor)> = act.iter().cloned().chain(q.clone()).collect();
            let want = kiln_ir::interpret(&g, &inputs(&all), &Default::default()).unwrap();
            let got = bound.run(&inputs(&act)).unwrap();
            let again = per_run.run(&inputs(&all)).unwrap();
            let single = one_thread.run(&inputs(&act)).unwrap();
            let f32_got = f32s.run(&inputs(&act)).unwrap();
            for name in ["y", "h"] {
                let what = format!("{isa:?}: {dtype} n={n} half={half} k={k} m={m} {name}");
                // int8: each activation is off by at most half a step (amax / 254) of its
                // block, so a product of k terms |w| ~ 1/sqrt(k) moves by a random walk of
                // such errors: ~1e-3 here, measured up to 5.8e-3 (printed); 2e-2 leaves room
                // and still fails a wrong block or scale (an error of order 1).
                let (atol, rtol) = if int8 { (2e-2, 0.0) } else { (1e-5, 1e-4) };
                if int8 {
                    let d = got[name]
                        .as_f32()
                        .iter()
                        .zip(want[name].as_f32())
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    eprintln!("{what}: int8 path, max |kiln - interpreter| {d:.2e}");
                }
                assert_close(&what, &got[name], &want[name], atol, rtol);
                assert_eq!(got[name], again[name], "{what}: bound vs per run");
                assert_eq!(got[name], single[name], "{what}: 2 vs 1 threads");
                if !int8 {
                    assert_eq!(
                        got[name], f32_got[name],
                        "{what}: the f32 kernels on the dequantized weights"
                    );
                }
            }
            rows.insert(m, got);
        }
        // Row 3 of the 133-row product (GEMM) equals the same row computed alone (GEMV).
        let act = inputs(&activations(133, n, k));
        let row = |t: &Tensor, i: usize, w: usize| t.as_f32()[i * w..(i + 1) * w].to_vec();
        let x3 = Tensor::from_f32(&[1, k as usize], &row(&act["x"], 3, k as usize));
        let r3 = Tensor::from_f32(&[1, n as usize], &row(&act["r"], 3, n as usize));
        let alone = bound.run(&inputs(&[("x", x3), ("r", r3)])).unwrap();
        assert_eq!(
            alone["y"].as_f32(),
            row(&rows[&133]["y"], 3, n as usize),
            "{isa:?} {dtype}: decode row vs prefill row"
        );
    }
}

#[test]
fn q8_0_weights_at_awkward_sizes() {
    // half = 24: the up columns start mid-panel (scalar chains); k = 1056 > KC.
    check_sizes(DType::Q8_0, 70, 24, 1056);
    check_sizes(DType::Q8_0, 17, 16, 32);
    // 17 units of gate/up columns: several per chunk, computed slot by slot in a launch of
    // one row block (the up columns mid-panel: 1040 % 32 = 16).
    check_sizes(DType::Q8_0, 17, 1040, 64);
}

#[test]
fn q4_0_weights_at_awkward_sizes() {
    check_sizes(DType::Q4_0, 70, 48, 1088);
    check_sizes(DType::Q4_0, 1, 8, 64);
    // As Q8_0's: several gate/up units per chunk, the up columns on a panel boundary.
    check_sizes(DType::Q4_0, 8, 1024, 64);
}

#[test]
fn q4_k_weights_at_awkward_sizes() {
    // Five super-blocks per row: across the k block.
    check_sizes(DType::Q4_K, 70, 40, 1280);
    check_sizes(DType::Q4_K, 33, 16, 256);
}

#[test]
fn q5_k_weights_at_awkward_sizes() {
    // Q4_K's scales with a fifth bit per value (a bit plane per row); five super-blocks: across
    // the k block; half = 40: the up columns start mid-panel.
    check_sizes(DType::Q5_K, 70, 40, 1280);
    check_sizes(DType::Q5_K, 33, 16, 256);
}

#[test]
fn q6_k_weights_at_awkward_sizes() {
    // Two scales per 32-value group (16-value sub-blocks); five super-blocks: across the k
    // block; half = 40: the up columns start mid-panel.
    check_sizes(DType::Q6_K, 70, 40, 1280);
    check_sizes(DType::Q6_K, 33, 16, 256);
}

/// A quantized weight read other than as a product's `b` operand is refused by the graph.
#[test]
fn quantized_values_are_only_matmul_weights() {
    let mut g = Graph::new();
    let w = g.input("w", DType::Q8_0, &[4.into(), 32.into()]).unwrap();
    let x = g.input("x", DType::F32, &[4.into(), 32.into()]).unwrap();
    let wt = g.transpose(w, 0, 1).unwrap();
    let y = g.matmul(wt, x).unwrap_err();
    assert!(y.to_string().contains("q8_0"), "{y}");
    let err = g
        .input("bad", DType::Q4_K, &[4.into(), 32.into()])
        .unwrap_err();
    assert!(err.to_string().contains("256-value blocks"), "{err}");
    let s = g.sum(w, 1).unwrap();
    g.output("s", s);
    let err = backend(None)
        .load(&g, &CompileOptions::default())
        .err()
        .expect("a sum of a quantized weight is refused");
    assert!(err.to_string().contains("q8_0"), "{err}");
}

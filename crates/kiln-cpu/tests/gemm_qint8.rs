//! The integer path of the quantized GEMM and GEMV (`c/gemm_quant.h`, `c/gemm_q4k.h`,
//! `c/gemm_q6k.h`, `c/gemm_q5k.h`: Q8_0, Q4_0, Q4_K, Q5_K and Q6_K weights times activations
//! quantized to int8, on AVX-512 VNNI and on AVX2 for the types it has) against a scalar model
//! of the same arithmetic, bit for bit: each activation block (Q8_0 and Q4_0: each 16-value
//! half block) quantized as ggml's quantize_row_q8_0 does (d = amax / 127,
//! q = round-half-even(x * (1 / d)), d kept in f32), each (half) block's dot product an exact
//! integer, and summed in order with `acc = fma(dot as f32, sw * sa, acc)` (Q6_K's dot is
//! `sum(sc * (q - 32) * a)` over both 16-value halves and `sw` the super-block's d; Q4_K and
//! Q5_K, `c/gemm_q4k.h`, sum per super-block: `model_q4_k`). Both sides do the same f32 operations in the same
//! order, so equality is exact, not a tolerance, and each ISA's kernels give the same bits.
//! Sizes: rows around the GEMV limit (4) and the micro-kernels' strips (6 rows with AVX-512, 4
//! with AVX2), a partial last panel, K past the 1024-deep k block, product
//! columns starting mid-panel (the scalar chains), blocks of zeros (d = 0); 1 vs 2 threads;
//! a decode row against the same row of a prefill. Run on every kernel ISA this machine runs
//! that has the type's integer kernels; says which ran and which were skipped.
mod common;
use common::*;
use half::f16;
use kiln_compile::{CompileOptions, Target};
use kiln_cpu::QuantRequest;
use kiln_ir::quant::{sub_block, sub_block_q6_k, super_block_q4_k, super_block_q5_k};
use kiln_ir::{DType, Expr, Graph, Tensor};

fn int8_backend(isa: Isa) -> kiln_cpu::CpuBackend {
    backend(Some(isa)).with_quant(QuantRequest::Int8)
}

/// The kernel ISAs that take `dtype` on the integer path: each kernel ISA this machine
/// runs (AVX2 everywhere, AVX-512 where the compiler targets it) that has `dtype`'s integer
/// kernels (AVX-512: with VNNI; AVX2: `Int8Types::AVX2`). Says which ran and which were skipped.
fn int8_isas(dtype: DType) -> Vec<Isa> {
    let mut out = Vec::new();
    for isa in isas() {
        match int8_backend(isa).quant_int8() {
            Ok(types) if types.has(dtype) => {
                eprintln!("{dtype}: the integer path of the {} kernels", isa.name());
                out.push(isa);
            }
            Ok(_) => eprintln!(
                "{dtype}: skipped on the {} kernels (no integer path for it there)",
                isa.name()
            ),
            Err(e) => eprintln!("{dtype}: skipped on the {} kernels: {e}", isa.name()),
        }
    }
    out
}

/// `y = x @ W^T`, and `s = g + u` with `[g | u] = x @ V^T` split at column `half`.
fn graph(dtype: DType, n: i64, half: i64, k: i64) -> Graph {
    let mut g = Graph::new();
    let m = Expr::sym("m");
    let x = g.input("x", DType::F32, &[m, k.into()]).unwrap();
    let w = g.input("w", dtype, &[n.into(), k.into()]).unwrap();
    let wt = g.transpose(w, 0, 1).unwrap();
    let y = g.matmul(x, wt).unwrap();
    g.output("y", y);
    let v = g.input("v", dtype, &[(2 * half).into(), k.into()]).unwrap();
    let vt = g.transpose(v, 0, 1).unwrap();
    let gu = g.matmul(x, vt).unwrap();
    let gate = g.slice(gu, 1, 0, half).unwrap();
    let up = g.slice(gu, 1, half, 2 * half).unwrap();
    let s = g.add(gate, up).unwrap();
    g.output("s", s);
    g
}

/// One activation block (32 values; Q8_0's and Q4_0's halves: 16) quantized as the kernels
/// do: (d, q).
fn quantize<const N: usize>(x: &[f32]) -> (f32, [i32; N]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i32; N];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i32;
    }
    (d, q)
}

fn quantize_block(x: &[f32]) -> (f32, [i32; 32]) {
    quantize::<32>(x)
}

/// A super-block's min sums as the Q4_K kernels carry them: per 32-value group
/// `A_g = sa_g * sum(q_g)` (f32), as integers in units of `u = max_g |A_g| / 16383`
/// (round-half-even, so |A'_g| <= 16383: the two bytes `128 h + l` of the kernels' words).
fn min_sums(blocks: &[(f32, [i32; 32])]) -> (f32, [i32; 8]) {
    let a: Vec<f32> = blocks
        .iter()
        .map(|(sa, q)| sa * q.iter().sum::<i32>() as f32)
        .collect();
    let amax = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let u = amax / 16383.0;
    let iu = if u != 0.0 { 1.0 / u } else { 0.0 };
    let mut ai = [0i32; 8];
    for (ai, a) in ai.iter_mut().zip(&a) {
        *ai = (a * iu).round_ties_even() as i32;
        assert!(ai.abs() <= 16383);
    }
    (u, ai)
}

/// The Q4_K (and Q5_K: 5-bit q) model: activations per 32 values as the other types; per
/// super-block `T = sum_g fma((sc_g * dot_g) as f32, sa_g, T)` (an exact integer per group),
/// `Mi = sum_g m_g * A'_g` (exact: [`min_sums`]), then `acc = fma(Mi, -dmin * u, acc)`,
/// `acc = fma(T, d, acc)`.
fn model_q4_k(dtype: DType, x: &[f32], m: usize, k: usize, w: &Tensor) -> Vec<f32> {
    let (row_bytes, read): (usize, fn(&[u8], usize) -> _) = if dtype == DType::Q5_K {
        (k / 256 * 176, super_block_q5_k)
    } else {
        (k / 256 * 144, super_block_q4_k)
    };
    let rows = w.bytes().len() / row_bytes;
    let mut out = vec![0f32; m * rows];
    for i in 0..m {
        let blocks: Vec<(f32, [i32; 32])> = x[i * k..(i + 1) * k]
            .chunks(32)
            .map(quantize_block)
            .collect();
        let mins: Vec<(f32, [i32; 8])> = blocks.chunks(8).map(min_sums).collect();
        for n in 0..rows {
            let row = &w.bytes()[n * row_bytes..(n + 1) * row_bytes];
            let mut acc = 0f32;
            for (b, (sb, (u, ai))) in blocks.chunks(8).zip(&mins).enumerate() {
                let (d, dmin, sc, mns, qw) = read(row, b).unwrap();
                let (mut t, mut mi) = (0f32, 0i32);
                for (g, (sa, qa)) in sb.iter().enumerate() {
                    let dot: i32 = (0..32).map(|j| qa[j] * qw[g][j] as i32).sum();
                    t = ((sc[g] as i32 * dot) as f32).mul_add(*sa, t);
                    mi += mns[g] as i32 * ai[g];
                }
                let (d, dmin) = (f16::from_bits(d).to_f32(), f16::from_bits(dmin).to_f32());
                acc = (mi as f32).mul_add(-dmin * u, acc);
                acc = t.mul_add(d, acc);
            }
            out[i * rows + n] = acc;
        }
    }
    out
}

/// The model: `x [m, k]` times the rows of `w` (`dtype` blocks), `[m, rows]`.
fn model(dtype: DType, x: &[f32], m: usize, k: usize, w: &Tensor) -> Vec<f32> {
    if matches!(dtype, DType::Q4_K | DType::Q5_K) {
        return model_q4_k(dtype, x, m, k, w);
    }
    let q = dtype.quant().unwrap();
    let row_bytes = k / q.block_elems() * q.block_bytes();
    let rows = w.bytes().len() / row_bytes;
    let mut out = vec![0f32; m * rows];
    for i in 0..m {
        let blocks: Vec<(f32, [i32; 32])> = x[i * k..(i + 1) * k]
            .chunks(32)
            .map(quantize_block)
            .collect();
        for n in 0..rows {
            let row = &w.bytes()[n * row_bytes..(n + 1) * row_bytes];
            let mut acc = 0f32;
            for (b, (sa, qa)) in blocks.iter().enumerate() {
                if dtype == DType::Q6_K {
                    // Two 16-value halves with their own i8 scales: one exact integer
                    // sum(sc * (q - 32) * a) per block, times d * sa.
                    let (d, sc, qw) = sub_block_q6_k(row, b).unwrap();
                    let dot: i32 = (0..32)
                        .map(|j| qa[j] * sc[j / 16] as i32 * (qw[j] as i32 - 32))
                        .sum();
                    acc = (dot as f32).mul_add(d * sa, acc);
                    continue;
                }
                // Q8_0, Q4_0: activations per 16 values; the halves' scaled dots summed
                // (`d0 * sa0`, then an FMA with `d1, sa1`), then one FMA with the weight's d.
                let (sw, _, qw) = sub_block(q, row, b).unwrap();
                let x = &x[i * k + 32 * b..i * k + 32 * b + 32];
                let mut hs = 0f32;
                for h in 0..2 {
                    let (sa, qa) = quantize::<16>(&x[16 * h..16 * h + 16]);
                    let dot: i32 = (0..16)
                        .map(|j| {
                            let wv = match dtype {
                                DType::Q8_0 => qw[16 * h + j] as i8 as i32,
                                _ => qw[16 * h + j] as i32 - 8,
                            };
                            qa[j] * wv
                        })
                        .sum();
                    hs = if h == 0 {
                        dot as f32 * sa
                    } else {
                        (dot as f32).mul_add(sa, hs)
                    };
                }
                acc = hs.mul_add(sw, acc);
            }
            out[i * rows + n] = acc;
        }
    }
    out
}

/// Activations with awkward blocks: one of zeros, one with a single large value.
fn activations(m: usize, k: usize) -> Vec<f32> {
    let mut x = values(m * k, m as u64 + 11);
    for i in 0..m {
        if k >= 64 {
            x[i * k + 32..i * k + 64].fill(0.0);
        }
        if k >= 768 {
            // a whole Q4_K super-block of zeros (its activation scale 0)
            x[i * k + 512..i * k + 768].fill(0.0);
        }
        x[i * k + (7 * i) % k] = 40.0;
    }
    x
}

const ROWS: [usize; 9] = [1, 2, 3, 4, 5, 6, 7, 13, 133];

fn check(dtype: DType, n: i64, half: i64, k: i64) {
    for isa in int8_isas(dtype) {
        check_on(isa, dtype, n, half, k);
    }
}

fn check_on(isa: Isa, dtype: DType, n: i64, half: i64, k: i64) {
    let g = graph(dtype, n, half, k);
    let load = |threads: usize| {
        int8_backend(isa)
            .with_run_threads(threads)
            .load(
                &g,
                &CompileOptions {
                    threads: 2,
                    // The 2- and 1-thread loads are the same kernels: compiled once.
                    cache: shared_cache("gemm-qint8-cache"),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("compile failed: {e}"))
            .exe
    };
    let (nu, hu, ku) = (n as usize, half as usize, k as usize);
    let scaled = |v: Vec<f32>| v.iter().map(|x| x / (k as f32).sqrt()).collect::<Vec<_>>();
    let w = Tensor::quantize(dtype, &[nu, ku], &scaled(values(nu * ku, 5))).unwrap();
    let v = Tensor::quantize(dtype, &[2 * hu, ku], &scaled(values(2 * hu * ku, 6))).unwrap();
    let (mut two, mut one) = (load(2), load(1));
    for exe in [&mut two, &mut one] {
        exe.set_param("w", w.clone()).unwrap();
        exe.set_param("v", v.clone()).unwrap();
    }
    let mut prefill_row3 = None;
    for m in ROWS {
        let x = activations(m, ku);
        let ins = inputs(&[("x", Tensor::from_f32(&[m, ku], &x))]);
        let got = two.run(&ins).unwrap();
        let single = one.run(&ins).unwrap();
        let what = format!("{dtype} {} n={n} half={half} k={k} m={m}", isa.name());
        let want_y = model(dtype, &x, m, ku, &w);
        let gu = model(dtype, &x, m, ku, &v);
        let want_s: Vec<f32> = (0..m * hu)
            .map(|e| {
                let (i, j) = (e / hu, e % hu);
                gu[i * 2 * hu + j] + gu[i * 2 * hu + hu + j]
            })
            .collect();
        assert_eq!(got["y"].as_f32(), want_y, "{what}: y against the model");
        assert_eq!(got["s"].as_f32(), want_s, "{what}: s against the model");
        assert_eq!(got["y"], single["y"], "{what}: 2 vs 1 threads");
        assert_eq!(got["s"], single["s"], "{what}: 2 vs 1 threads");
        if m == 133 {
            prefill_row3 = Some(got["y"].as_f32()[3 * nu..4 * nu].to_vec());
        }
    }
    // Row 3 of the 133-row product (GEMM) equals the same row computed alone (GEMV).
    let x3 = activations(133, ku)[3 * ku..4 * ku].to_vec();
    let alone = two
        .run(&inputs(&[("x", Tensor::from_f32(&[1, ku], &x3))]))
        .unwrap();
    assert_eq!(
        Some(alone["y"].as_f32().to_vec()),
        prefill_row3,
        "{dtype} {}: decode row vs prefill row",
        isa.name()
    );
}

#[test]
fn q8_0_integer_path_is_the_model() {
    // half = 24: the up columns start mid-panel (scalar chains); k = 1056 > KC.
    check(DType::Q8_0, 70, 24, 1056);
    check(DType::Q8_0, 1, 16, 32);
    check(DType::Q8_0, 33, 40, 2080);
}

#[test]
fn q4_k_integer_path_is_the_model() {
    // Five 256-value super-blocks per row: across the k block.
    check(DType::Q4_K, 70, 40, 1280);
    check(DType::Q4_K, 33, 16, 256);
}

#[test]
fn q4_0_integer_path_is_the_model() {
    check(DType::Q4_0, 70, 48, 1088);
    check(DType::Q4_0, 1, 8, 64);
    check(DType::Q4_0, 64, 24, 2080);
}

#[test]
fn q5_k_integer_path_is_the_model() {
    // 5-bit values (Q4_K's super-blocks plus a plane of fifth bits); five super-blocks: across the k block;
    // half = 40: the up columns start mid-panel (the scalar chains).
    check(DType::Q5_K, 70, 40, 1280);
    check(DType::Q5_K, 33, 16, 256);
}

#[test]
fn q6_k_integer_path_is_the_model() {
    check(DType::Q6_K, 70, 40, 1280);
    check(DType::Q6_K, 33, 16, 256);
}

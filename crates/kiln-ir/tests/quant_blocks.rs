//! GGML block formats: every type decoded from hand-built blocks, each expectation written
//! from the format's documented layout (which bit of which byte holds value `v`) rather than
//! from the decoder's loops; the reference quantizers' round trips and error bounds; length
//! errors. The bit-exact comparisons with ggml and the `gguf` package are in kiln-models'
//! `gguf_quant` test, on the fixture files.
// Each expectation is written for value index `v`, from the layout: index loops say that best.
#![allow(clippy::needless_range_loop)]

use half::f16;
use kiln_ir::quant::{QuantError, QuantType, QK_K};

fn h(x: f32) -> [u8; 2] {
    let v = f16::from_f32(x);
    assert_eq!(v.to_f32(), x, "{x} is not an f16 value");
    v.to_le_bytes()
}

fn decode(t: QuantType, block: &[u8]) -> Vec<f32> {
    let mut y = vec![f32::NAN; t.block_elems()];
    t.dequantize_row(block, &mut y).unwrap();
    y
}

/// A deterministic byte pattern.
fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| {
            (i.wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40503))
                >> 13) as u8
        })
        .collect()
}

#[test]
fn type_ids_sizes_and_names() {
    let table = [
        ("F32", 0, 1, 4),
        ("F16", 1, 1, 2),
        ("Q4_0", 2, 32, 18),
        ("Q4_1", 3, 32, 20),
        ("Q5_0", 6, 32, 22),
        ("Q5_1", 7, 32, 24),
        ("Q8_0", 8, 32, 34),
        ("Q4_K", 12, 256, 144),
        ("Q5_K", 13, 256, 176),
        ("Q6_K", 14, 256, 210),
        ("BF16", 30, 1, 2),
    ];
    for (name, id, elems, bytes) in table {
        let t = QuantType::from_ggml_id(id).unwrap();
        assert_eq!((t.name(), t.ggml_id()), (name, id));
        assert_eq!((t.block_elems(), t.block_bytes()), (elems, bytes), "{name}");
        assert_eq!(QuantType::from_name(&name.to_lowercase()), Some(t));
    }
    for id in [4, 5, 9, 10, 11, 15, 16, 23, 24, 29, 31, 39, 1000] {
        assert_eq!(QuantType::from_ggml_id(id), None, "id {id}");
    }
    assert_eq!(QuantType::Q4_K.bytes_of(512), Some(288));
    assert_eq!(QuantType::Q4_K.bytes_of(100), None);
    assert_eq!(QuantType::Q8_0.bytes_of(u64::MAX - 31), None);
}

#[test]
fn q8_0_is_d_times_signed_bytes() {
    let mut b = h(0.5).to_vec();
    let qs: Vec<i8> = (0..32).map(|i| (i * 8 - 128) as i8).collect();
    b.extend(qs.iter().map(|&q| q as u8));
    let y = decode(QuantType::Q8_0, &b);
    for (v, &q) in qs.iter().enumerate() {
        assert_eq!(y[v], q as f32 * 0.5, "value {v}");
    }
}

/// Value `v` of a 32-value block with 4-bit parts in bytes `qs`: low nibble of byte `v` for
/// v < 16, high nibble of byte `v - 16` after.
fn nibble(qs: &[u8], v: usize) -> u8 {
    if v < 16 {
        qs[v] & 15
    } else {
        qs[v - 16] >> 4
    }
}

#[test]
fn q4_0_and_q4_1() {
    let qs = pattern(16, 1);
    let mut b = h(-2.0).to_vec();
    b.extend(&qs);
    let y = decode(QuantType::Q4_0, &b);
    for v in 0..32 {
        assert_eq!(y[v], (nibble(&qs, v) as f32 - 8.0) * -2.0, "Q4_0 value {v}");
    }
    let mut b = h(0.25).to_vec();
    b.extend(h(-1.5));
    b.extend(&qs);
    let y = decode(QuantType::Q4_1, &b);
    for v in 0..32 {
        assert_eq!(y[v], nibble(&qs, v) as f32 * 0.25 - 1.5, "Q4_1 value {v}");
    }
}

#[test]
fn q5_0_and_q5_1_take_the_fifth_bit_of_value_v_from_bit_v() {
    let qs = pattern(16, 2);
    let qh: u32 = 0xA5C3_0F96;
    let fifth = |v: usize| ((qh >> v) & 1) as u8;
    let mut b = h(0.5).to_vec();
    b.extend(qh.to_le_bytes());
    b.extend(&qs);
    let y = decode(QuantType::Q5_0, &b);
    for v in 0..32 {
        let q = nibble(&qs, v) | (fifth(v) << 4);
        assert_eq!(y[v], (q as f32 - 16.0) * 0.5, "Q5_0 value {v}");
    }
    let mut b = h(0.125).to_vec();
    b.extend(h(3.0));
    b.extend(qh.to_le_bytes());
    b.extend(&qs);
    let y = decode(QuantType::Q5_1, &b);
    for v in 0..32 {
        let q = nibble(&qs, v) | (fifth(v) << 4);
        assert_eq!(y[v], q as f32 * 0.125 + 3.0, "Q5_1 value {v}");
    }
}

/// The 12 bytes of 8 six-bit (scale, min) pairs of a Q4_K/Q5_K block, packed as the format
/// documents: pairs 0..4 in the low 6 bits of bytes 0..4 (scales) and 4..8 (mins); pairs 4..8
/// in the nibbles of bytes 8..12 (scale low, min high), their top 2 bits in the top 2 bits of
/// bytes 0..4 (scales) and 4..8 (mins).
fn pack_k_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
    }
    s
}

const K_SC: [u8; 8] = [1, 63, 17, 32, 5, 48, 33, 60];
const K_M: [u8; 8] = [62, 0, 31, 16, 47, 2, 63, 19];

/// The 4-bit part of value `v` of a Q4_K/Q5_K block from its 128 bytes `qs`: group g = v/64
/// reads bytes 32g..32g+32, low nibbles for its first 32 values, high for the next 32.
fn k_nibble(qs: &[u8], v: usize) -> u8 {
    let (g, r) = (v / 64, v % 64);
    let byte = qs[32 * g + r % 32];
    if r < 32 {
        byte & 15
    } else {
        byte >> 4
    }
}

/// A Q4_K block (`qh` None) or a Q5_K block (`qh` its 32 bytes of fifth bits) of `d`, `dmin`,
/// the scales and mins [`K_SC`], [`K_M`] and the nibbles `qs`, laid out as the format documents,
/// decodes to `d * sc * q - dmin * m` for every value.
fn assert_k_block_decodes(d: f32, dmin: f32, qh: Option<&[u8]>, qs: &[u8]) {
    let (t, len) = if qh.is_some() {
        (QuantType::Q5_K, 176)
    } else {
        (QuantType::Q4_K, 144)
    };
    let mut b = h(d).to_vec();
    b.extend(h(dmin));
    b.extend(pack_k_scales(K_SC, K_M));
    b.extend(qh.unwrap_or_default());
    b.extend(qs);
    assert_eq!(b.len(), len, "{t}");
    let y = decode(t, &b);
    for v in 0..QK_K {
        let s = v / 32;
        // Sub-block s's fifth bits are bit s of bytes qh[0..32].
        let fifth = qh.map_or(0, |qh| (qh[v % 32] >> s) & 1);
        let q = k_nibble(qs, v) | (fifth << 4);
        let want = d * K_SC[s] as f32 * q as f32 - dmin * K_M[s] as f32;
        assert_eq!(y[v], want, "{t} value {v}");
    }
}

#[test]
fn q4_k_sub_block_scales_and_mins() {
    assert_k_block_decodes(0.5, 0.25, None, &pattern(128, 3));
}

#[test]
fn q5_k_fifth_bits() {
    assert_k_block_decodes(0.125, 2.0, Some(&pattern(32, 4)), &pattern(128, 5));
}

#[test]
fn q6_k_layout() {
    let d = 0.0625f32;
    let ql = pattern(128, 6);
    let qh = pattern(64, 7);
    let sc: Vec<i8> = (0..16).map(|i| (i * 17 - 128) as i8).collect();
    let mut b = ql.clone();
    b.extend(&qh);
    b.extend(sc.iter().map(|&s| s as u8));
    b.extend(h(d));
    assert_eq!(b.len(), 210);
    let y = decode(QuantType::Q6_K, &b);
    for v in 0..QK_K {
        // Half h = v/128; within it quarter k = r/32 and position l = r%32: the low 4 bits
        // are a nibble of ql[64h + l + 32(k%2)] (low for k < 2), the high 2 bits are bits
        // 2k..2k+2 of qh[32h + l]; the scale is that of the 16-value sub-block v/16.
        let (half, r) = (v / 128, v % 128);
        let (k, l) = (r / 32, r % 32);
        let byte = ql[64 * half + l + 32 * (k % 2)];
        let low = if k < 2 { byte & 15 } else { byte >> 4 };
        let high = (qh[32 * half + l] >> (2 * k)) & 3;
        let q = (low | (high << 4)) as i32 - 32;
        let want = d * sc[v / 16] as f32 * q as f32;
        assert_eq!(y[v], want, "Q6_K value {v}");
    }
}

#[test]
fn plain_float_types() {
    let x = [1.5f32, -0.0, 65504.0, 3.0e-5];
    let mut y = [0.0f32; 4];
    let f32_bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    QuantType::F32.dequantize_row(&f32_bytes, &mut y).unwrap();
    assert_eq!(y, x);
    let f16_bytes = QuantType::F16.quantize(&x).unwrap();
    QuantType::F16.dequantize_row(&f16_bytes, &mut y).unwrap();
    assert_eq!(y[..3], x[..3]);
    assert_eq!(y[3], f16::from_f32(3.0e-5).to_f32());
    let bf16_bytes = QuantType::BF16.quantize(&[1.5, -2.0]).unwrap();
    assert_eq!(bf16_bytes, [0xC0, 0x3F, 0x00, 0xC0]);
}

/// A deterministic, roughly normal row (sum of uniforms), scaled.
fn gaussian_row(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| ((0..4).map(|_| uniform()).sum::<f32>() - 2.0) * scale)
        .collect()
}

fn round_trip(t: QuantType, x: &[f32]) -> Vec<f32> {
    let q = t.quantize(x).unwrap();
    assert_eq!(q.len(), x.len() / t.block_elems() * t.block_bytes());
    let mut y = vec![0.0; x.len()];
    t.dequantize_row(&q, &mut y).unwrap();
    y
}

#[test]
fn q8_0_round_trip_is_within_half_a_step() {
    let x = gaussian_row(32 * 64, 11, 0.7);
    let y = round_trip(QuantType::Q8_0, &x);
    for (b, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = f16::from_f32(amax / 127.0).to_f32();
        for (a, b2) in xs.iter().zip(ys) {
            // Half a step, plus the scale's f16 rounding carried over up to 127 steps.
            assert!(
                (a - b2).abs() <= d * 0.5 + amax * 1e-3,
                "block {b}: {a} -> {b2}"
            );
        }
    }
    // Multiples of a power-of-two step that reach 127 steps come back exactly.
    let x: Vec<f32> = (0..32)
        .map(|i| (i as f32 - 16.0) * 0.25)
        .chain([127.0 * 0.25])
        .skip(1)
        .collect();
    assert_eq!(round_trip(QuantType::Q8_0, &x), x);
}

#[test]
fn q4_0_round_trip_is_within_a_step() {
    let x = gaussian_row(32 * 64, 12, 1.3);
    let y = round_trip(QuantType::Q4_0, &x);
    for (xs, ys) in x.chunks(32).zip(y.chunks(32)) {
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 8.0;
        for (a, b) in xs.iter().zip(ys) {
            assert!((a - b).abs() <= d * 1.01, "{a} -> {b} (step {d})");
        }
        // The value of largest magnitude maps to -8 steps exactly (up to the f16 scale).
        let i = xs.iter().position(|v| v.abs() == amax).unwrap();
        assert!((xs[i] - ys[i]).abs() <= amax * 1e-3);
    }
}

/// A K-quant test row: `QK_K * 16` Gaussian values of `scale`, moved by `shift * scale` (so
/// that a sub-block's range need not hold 0 in its middle).
fn k_quant_row(seed: u64, scale: f32, shift: f32) -> Vec<f32> {
    gaussian_row(QK_K * 16, seed, scale)
        .into_iter()
        .map(|v| v + shift * scale)
        .collect()
}

/// Every value of `y` (`x` quantized to a K type of `steps + 1` levels and back) within 3/4 of
/// a step over its 32-value sub-block's range (with 0 in it), plus the 6-bit rounding of the
/// sub-block's scale and min.
fn assert_within_k_steps(x: &[f32], y: &[f32], steps: f32) {
    for (xs, ys) in x.chunks(32).zip(y.chunks(32)) {
        let (lo, hi) = xs
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        let range = hi.max(0.0) - lo.min(0.0);
        for (a, b) in xs.iter().zip(ys) {
            assert!(
                (a - b).abs() <= range / steps * 0.75 + range * 0.05,
                "{a} -> {b}"
            );
        }
    }
}

/// The mean squared difference of `x` and `y`.
fn mse(x: &[f32], y: &[f32]) -> f32 {
    x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / x.len() as f32
}

#[test]
fn q4_k_round_trip_error_is_small() {
    for (seed, scale, shift) in [(13, 0.05f32, 0.0f32), (14, 1.0, 0.3), (15, 20.0, -4.0)] {
        let x = k_quant_row(seed, scale, shift);
        let y = round_trip(QuantType::Q4_K, &x);
        assert_within_k_steps(&x, &y, 15.0);
        let mse = mse(&x, &y);
        let var: f32 = x.iter().map(|a| a * a).sum::<f32>() / x.len() as f32;
        assert!(
            mse < var * 0.01,
            "seed {seed}: mse {mse}, mean square {var}"
        );
    }
}

/// Q5_K's quantizer (32 levels, Q4_K's scales and mins): within 3/4 of a step of its
/// sub-block's range plus the scales' 6-bit rounding, and a quarter of Q4_K's mean error or
/// better on the same rows (twice the levels: about a quarter of the squared error).
#[test]
fn q5_k_round_trip_error_is_small() {
    for (seed, scale, shift) in [(16, 0.05f32, 0.0f32), (17, 1.0, 0.3), (18, 20.0, -4.0)] {
        let x = k_quant_row(seed, scale, shift);
        let y = round_trip(QuantType::Q5_K, &x);
        assert_within_k_steps(&x, &y, 31.0);
        let q4 = round_trip(QuantType::Q4_K, &x);
        let (mse_q5, mse_q4) = (mse(&x, &y), mse(&x, &q4));
        assert!(
            mse_q5 < mse_q4 * 0.4,
            "seed {seed}: Q5_K mse {mse_q5}, Q4_K {mse_q4}"
        );
    }
}

/// The quantizer's bytes in Q5_K's layout: the values it chose (the dequantization of every
/// level, read back per the format) use all 32 levels, fifth bits included.
#[test]
fn q5_k_quantizer_sets_fifth_bits() {
    let x = gaussian_row(QK_K * 4, 19, 1.0);
    let q = QuantType::Q5_K.quantize(&x).unwrap();
    let mut seen = [false; 32];
    for b in q.chunks(176) {
        let (qh, qs) = (&b[16..48], &b[48..176]);
        for v in 0..QK_K {
            seen[(k_nibble(qs, v) | (((qh[v % 32] >> (v / 32)) & 1) << 4)) as usize] = true;
        }
    }
    assert!(seen.iter().all(|&s| s), "{seen:?}");
}

#[test]
fn zero_and_constant_blocks() {
    for t in QuantType::QUANTIZERS {
        let n = t.block_elems() * 2;
        assert_eq!(round_trip(t, &vec![0.0; n]), vec![0.0; n], "{t}");
        let c = round_trip(t, &vec![-3.0; n]);
        assert!(c.iter().all(|&v| (v + 3.0).abs() < 0.02), "{t}: {c:?}");
    }
}

#[test]
fn lengths_that_do_not_fit_are_errors() {
    let mut y = vec![0.0f32; 48];
    assert!(matches!(
        QuantType::Q8_0.dequantize_row(&[0; 34], &mut y),
        Err(QuantError::PartialBlock {
            elems: 48,
            block: 32,
            ..
        })
    ));
    let mut y = vec![0.0f32; 64];
    let e = QuantType::Q8_0
        .dequantize_row(&[0; 34], &mut y)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Q8_0: 64 values take 68 bytes, the buffer has 34"
    );
    let mut out = vec![0u8; 22];
    assert_eq!(
        QuantType::Q5_0.quantize_row(&[0.0; 32], &mut out),
        Err(QuantError::NoQuantizer(QuantType::Q5_0))
    );
    assert!(QuantType::Q4_K.quantize(&[0.0; 100]).is_err());
}

/// `sub_block_q6_k` (what the kernels' packers read) gives back every value of a Q6_K row as
/// ggml dequantizes it: `(d * sc) * (q - 32)`, `sc` the scale of the value's 16-value half.
#[test]
fn q6_k_sub_blocks_are_the_dequantization() {
    let x: Vec<f32> = (0..2 * QK_K)
        .map(|i| ((i * 7919) % 257) as f32 / 16.0 - 8.0)
        .collect();
    let row = QuantType::Q6_K.quantize(&x).unwrap();
    let mut y = vec![f32::NAN; x.len()];
    QuantType::Q6_K.dequantize_row(&row, &mut y).unwrap();
    for g in 0..2 * QK_K / 32 {
        let (d, sc, q) = kiln_ir::quant::sub_block_q6_k(&row, g).unwrap();
        for (j, &q) in q.iter().enumerate() {
            assert!(q < 64, "group {g} value {j}: {q}");
            let got = (d * sc[j / 16] as f32) * (q as i32 - 32) as f32;
            assert_eq!(
                got.to_bits(),
                y[32 * g + j].to_bits(),
                "group {g} value {j}"
            );
        }
    }
    assert!(kiln_ir::quant::sub_block_q6_k(&row, 2 * QK_K / 32).is_none());
}

/// `sub_block` of Q5_K (what the kernels' packers read) gives back every value of a Q5_K row
/// as ggml dequantizes it: `scale * q - min` with `q` the 5-bit value.
#[test]
fn q5_k_sub_blocks_are_the_dequantization() {
    let x: Vec<f32> = (0..2 * QK_K)
        .map(|i| ((i * 7919) % 257) as f32 / 16.0 - 7.0)
        .collect();
    let row = QuantType::Q5_K.quantize(&x).unwrap();
    let mut y = vec![f32::NAN; x.len()];
    QuantType::Q5_K.dequantize_row(&row, &mut y).unwrap();
    for g in 0..2 * QK_K / 32 {
        let (scale, min, q) = kiln_ir::quant::sub_block(QuantType::Q5_K, &row, g).unwrap();
        for (j, &q) in q.iter().enumerate() {
            assert!(q < 32, "group {g} value {j}: {q}");
            let got = scale * q as f32 - min;
            assert_eq!(
                got.to_bits(),
                y[32 * g + j].to_bits(),
                "group {g} value {j}"
            );
        }
    }
    assert!(kiln_ir::quant::sub_block(QuantType::Q5_K, &row, 2 * QK_K / 32).is_none());
}

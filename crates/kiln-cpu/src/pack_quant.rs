//! Block-quantized weights in panels: the layout the CPU's matmul kernels read Q8_0, Q4_0,
//! Q4_K, Q5_K and Q6_K weights in (`c/gemm_quant.h`, `c/gemm_q6k.h`, `c/gemm_q5k.h`),
//! repacked once when a weight
//! is bound, like the f32 and bf16 panels of [`crate::pack`].
//!
//! A weight `W` of `rows x k` values (rows of GGML blocks, `k` a multiple of 32) becomes
//! panels of `panel` rows (product columns); a panel is `k / 32` groups, one per 32 values of
//! `k`, each holding for its `panel` columns:
//! - `scale: [f32; panel]` — Q8_0/Q4_0: the block's `d`; Q4_K: the sub-block's `d * sc`;
//! - `min: [f32; panel]` — Q4_K only: the sub-block's `dmin * m`;
//! - the 32 values of each column, row by row (`k` within the group): Q8_0 `[32][panel]` i8;
//!   Q4_0/Q4_K `[32][panel / 2]` bytes, column `c` in the low nibble of byte `c` and column
//!   `c + panel / 2` in its high nibble, so one byte load widens to both halves of a row.
//!
//! So the GEMV streams one contiguous run of bytes per panel, a row of a group dequantizes
//! with one widening load, a shift or mask, a conversion and a multiply per vector (its
//! scales loaded once per group), and every value is bit for bit ggml's dequantization
//! (`kiln_ir::quant::sub_block` gives the operations). Columns past the last row are zero.
//! Bytes per 32 values and column: Q8_0 36 (GGUF 34), Q4_0 20 (18), Q4_K 24 (18): the f32
//! scales cost a little memory and save a conversion per group on every token.
//!
//! Q6_K (two 16-value scales per group, 6-bit values) has its own group layout, described in
//! `c/gemm_q6k.h`: f32 `d * sc` of each half, the low nibbles as Q4_0's, then a plane of the
//! high bit pairs — 32 bytes per 32 values and column (GGUF 26.25).
//!
//! Q5_K (`c/gemm_q5k.h`) is Q4_K's group (`d * sc`, `dmin * m`, the low 4 bits as nibbles)
//! followed by a plane of the fifth bits, `[32][panel / 8]` bytes (row `r`'s bits, column `c`
//! at bit `c % 8` of byte `c / 8`) — 28 bytes per 32 values and column (GGUF 22).
//!
//! **Integer layout** (Q8_0, Q4_0 and Q4_K when the kernels were compiled for AVX-512 VNNI:
//! `kiln_quant_int8` in the prelude, [`pack_quant_int8`]): the kernels multiply int8
//! activations with the weights' integers (`vpdpbusd`, four u8 x s8 products per i32 lane),
//! so a group's values are grouped four k-values per 32-bit lane: quad `q` (values
//! `4q..4q+3` of the group) is `[panel][4]` bytes, one 64-byte load per 16 columns. Per group:
//! - Q8_0: `scale: [f32; panel]`, `bias: [i32; panel]` = `-128 * sum(q)` (the kernel feeds the
//!   activations as `a + 128`, unsigned, and starts each block's dot at this), then
//!   `[8][panel][4]` i8 — 40 bytes per 32 values and column;
//! - Q4_0: `scale: [f32; panel]`, then `[8][panel / 2][4]` bytes, column `c` in the low nibble
//!   of byte `(c, j)` and column `c + panel / 2` in its high nibble (the stored 0..15, the
//!   kernel subtracts `8 * sum(a)`) — 20 bytes, as in the f32 layout;
//! - Q4_K: `scale: [f32; panel]` (`d * sc`), `neg_min: [f32; panel]` (`-(dmin * m)`), then the
//!   nibbles as Q4_0 — 24 bytes, as in the f32 layout;
//! - Q6_K: `d: [f32; panel]`, `sc: [[i8; panel]; 2]`, then the 6-bit values, three vectors per
//!   two quads with the fourth quad's bits in their top bit pairs (`c/gemm_q6k.h` says how and
//!   why) — 30 bytes;
//! - Q5_K: Q4_K's group, then per quad the fifth bits as `panel / 2` bytes: bit `4 j + t` of
//!   the word of half `h` is value `t` of column `j + h * panel / 2`, the k mask of one
//!   vpdpbusd operand (`c/gemm_q5k.h`) — 28 bytes.

use kiln_ir::quant::{sub_block, sub_block_q6_k, QuantType};
use kiln_ir::DType;
use kiln_runtime::HostBuffer;
use rayon::prelude::*;

/// Values of `k` per group.
pub const GROUP: usize = 32;

/// Bytes of one group of a `panel`-column panel of `dtype` (`KILN_GB_*` in the C header).
pub fn group_bytes(dtype: DType, panel: usize) -> usize {
    match dtype {
        DType::Q8_0 => (4 + GROUP) * panel,
        DType::Q4_0 => (4 + GROUP / 2) * panel,
        DType::Q4_K => (8 + GROUP / 2) * panel,
        DType::Q6_K => (8 + GROUP / 2 + GROUP / 4) * panel,
        DType::Q5_K => (8 + GROUP / 2 + GROUP / 8) * panel,
        other => panic!("{other} is not block-quantized"),
    }
}

/// Packs `bytes` (rows of `depth` values in GGML blocks of `dtype`) into quantized panels of
/// `panel` columns, on the current rayon pool. `depth` is a multiple of the type's block (the
/// graph checks it: `Graph::input`); a trailing partial row (buffer padding) is ignored.
pub fn pack_quant(bytes: &[u8], dtype: DType, depth: usize, panel: usize) -> HostBuffer {
    if dtype == DType::Q6_K {
        return pack_q6_k(bytes, depth, panel);
    }
    if dtype == DType::Q5_K {
        return pack_q5_k(bytes, depth, panel, false);
    }
    let (with_min, nibbles) = match dtype {
        DType::Q8_0 => (false, false),
        DType::Q4_0 => (false, true),
        _ => (true, true),
    };
    let gb = group_bytes(dtype, panel);
    let q = dtype.quant().expect("a block-quantized dtype");
    pack_groups(
        bytes,
        dtype,
        depth,
        panel,
        gb,
        |row, g| sub_block(q, row, g).expect("whole blocks"),
        |grp, c, (scale, min, vals)| {
            grp[4 * c..4 * c + 4].copy_from_slice(&scale.to_le_bytes());
            let mut at = 4 * panel;
            if with_min {
                grp[at + 4 * c..at + 4 * c + 4].copy_from_slice(&min.to_le_bytes());
                at += 4 * panel;
            }
            for (r, &v) in vals.iter().enumerate() {
                if nibbles {
                    let half = panel / 2;
                    let (byte, shift) = (c % half, if c < half { 0 } else { 4 });
                    grp[at + r * half + byte] |= v << shift;
                } else {
                    grp[at + r * panel + c] = v;
                }
            }
        },
    )
}

/// The walk both layouts share: `bytes` (rows of `depth` values in GGML blocks of `dtype`) as
/// panels of `panel` columns, each `depth / GROUP` groups of `gb` bytes, packed in parallel
/// (one panel per task); `write(group, column, sub)` fills one column of one group with
/// `sub = read(row, g)`, sub-block `g` of that column's row (`kiln_ir::quant::sub_block`).
/// Columns past the last row stay zero.
fn pack_groups<S>(
    bytes: &[u8],
    dtype: DType,
    depth: usize,
    panel: usize,
    gb: usize,
    read: impl Fn(&[u8], usize) -> S + Sync,
    write: impl Fn(&mut [u8], usize, S) + Sync,
) -> HostBuffer {
    let q = dtype.quant().expect("a block-quantized dtype");
    assert!(
        depth > 0 && depth.is_multiple_of(q.block_elems()),
        "{dtype} rows of {depth} values are not whole blocks"
    );
    let row_bytes = depth / q.block_elems() * q.block_bytes();
    let rows = bytes.len() / row_bytes;
    let groups = depth / GROUP;
    let panel_bytes = groups * gb;
    let panels = rows.div_ceil(panel);
    let out = HostBuffer::zeroed(panels * panel_bytes);
    let dst = out.as_mut_ptr() as usize;
    (0..panels).into_par_iter().for_each(|p| {
        // SAFETY: panel p owns bytes [p * panel_bytes, (p + 1) * panel_bytes) of `out`;
        // nothing else writes them.
        let dst = unsafe {
            std::slice::from_raw_parts_mut((dst as *mut u8).add(p * panel_bytes), panel_bytes)
        };
        let live = panel.min(rows - p * panel);
        for c in 0..live {
            let row = &bytes[(p * panel + c) * row_bytes..][..row_bytes];
            for g in 0..groups {
                write(&mut dst[g * gb..][..gb], c, read(row, g));
            }
        }
    });
    out
}

/// Whether `dtype` has an integer layout ([`pack_quant_int8`]).
pub fn integer_layout(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q8_0 | DType::Q4_0 | DType::Q4_K | DType::Q5_K | DType::Q6_K
    )
}

/// Bytes of one group of a `panel`-column panel of `dtype` in the integer layout
/// (`KILN_GBI_*` in the C header).
pub fn group_bytes_int8(dtype: DType, panel: usize) -> usize {
    match dtype {
        DType::Q8_0 => (8 + GROUP) * panel,
        DType::Q4_0 => (4 + GROUP / 2) * panel,
        DType::Q4_K => (8 + GROUP / 2) * panel,
        DType::Q6_K => (6 + 3 * GROUP / 4) * panel,
        DType::Q5_K => (8 + GROUP / 2 + GROUP / 8) * panel,
        other => panic!("{other} has no integer layout"),
    }
}

/// [`pack_quant`] in the integer layout (see the module's documentation): Q8_0, Q4_0, Q4_K,
/// Q5_K, Q6_K.
pub fn pack_quant_int8(bytes: &[u8], dtype: DType, depth: usize, panel: usize) -> HostBuffer {
    assert!(integer_layout(dtype), "{dtype} has no integer layout");
    if dtype == DType::Q6_K {
        return pack_q6_k_int8(bytes, depth, panel);
    }
    if dtype == DType::Q5_K {
        return pack_q5_k(bytes, depth, panel, true);
    }
    let half = panel / 2;
    let gb = group_bytes_int8(dtype, panel);
    let q = dtype.quant().expect("a block-quantized dtype");
    pack_groups(
        bytes,
        dtype,
        depth,
        panel,
        gb,
        |row, g| sub_block(q, row, g).expect("whole blocks"),
        |grp, c, (scale, min, vals)| {
            grp[4 * c..4 * c + 4].copy_from_slice(&scale.to_le_bytes());
            if dtype == DType::Q8_0 {
                let sum: i32 = vals.iter().map(|&v| v as i8 as i32).sum();
                grp[4 * panel + 4 * c..][..4].copy_from_slice(&(-128 * sum).to_le_bytes());
                for (k, &v) in vals.iter().enumerate() {
                    grp[8 * panel + (k / 4) * 4 * panel + 4 * c + k % 4] = v;
                }
            } else {
                let mut at = 4 * panel;
                if dtype == DType::Q4_K {
                    grp[at + 4 * c..][..4].copy_from_slice(&(-min).to_le_bytes());
                    at += 4 * panel;
                }
                let shift = if c < half { 0 } else { 4 };
                for (k, &v) in vals.iter().enumerate() {
                    grp[at + (k / 4) * 2 * panel + 4 * (c % half) + k % 4] |= v << shift;
                }
            }
        },
    )
}

/// Q6_K in the f32 layout (`c/gemm_q6k.h`): per group `[f32; panel]` of `d * sc` for each
/// 16-value half, the low nibbles as Q4_0's, then `[16][panel / 2]` bytes of high bit pairs:
/// byte `(r, c % half)` holds those of column `c` (bits 0-1) and `c + half` (2-3) at row `r`,
/// then at row `r + 16` (4-5, 6-7).
fn pack_q6_k(bytes: &[u8], depth: usize, panel: usize) -> HostBuffer {
    let half = panel / 2;
    let gb = group_bytes(DType::Q6_K, panel);
    pack_groups(
        bytes,
        DType::Q6_K,
        depth,
        panel,
        gb,
        |row, g| sub_block_q6_k(row, g).expect("whole blocks"),
        |grp, c, (d, sc, vals)| {
            for (hf, &s) in sc.iter().enumerate() {
                // ggml's `d * sc`, rounded once: the kernels multiply it by `q - 32`.
                let scale = d * s as f32;
                grp[4 * (hf * panel + c)..][..4].copy_from_slice(&scale.to_le_bytes());
            }
            let shift = if c < half { 0 } else { 4 };
            for (r, &v) in vals.iter().enumerate() {
                grp[8 * panel + r * half + c % half] |= (v & 15) << shift;
                let pair = 2 * (c / half) + 4 * (r / 16);
                grp[24 * panel + (r % 16) * half + c % half] |= (v >> 4) << pair;
            }
        },
    )
}

/// Q6_K in the integer layout (`c/gemm_q6k.h`): per group `d: [f32; panel]`,
/// `sc: [[i8; panel]; 2]`, then for each pair `p` of quads (`p` and `p + 4`) three vectors X,
/// Y, Z of `[panel / 2][4]` bytes: byte `(j, t)` holds value `4 p + t` of column `j` (X, low 6
/// bits) and of column `j + half` (Y), value `16 + 4 p + t` of column `j` (Z), and in the top
/// two bits of X, Y, Z bits 0-1, 2-3, 4-5 of value `16 + 4 p + t` of column `j + half`.
fn pack_q6_k_int8(bytes: &[u8], depth: usize, panel: usize) -> HostBuffer {
    let half = panel / 2;
    let gb = group_bytes_int8(DType::Q6_K, panel);
    pack_groups(
        bytes,
        DType::Q6_K,
        depth,
        panel,
        gb,
        |row, g| sub_block_q6_k(row, g).expect("whole blocks"),
        |grp, c, (d, sc, vals)| {
            grp[4 * c..][..4].copy_from_slice(&d.to_le_bytes());
            grp[4 * panel + c] = sc[0] as u8;
            grp[5 * panel + c] = sc[1] as u8;
            // vector v (0 X, 1 Y, 2 Z) of pair p, byte (j, t)
            let at = |p: usize, v: usize, t: usize| {
                6 * panel + p * 6 * panel + v * 2 * panel + 4 * (c % half) + t
            };
            for (k, &q) in vals.iter().enumerate() {
                let (quad, t) = (k / 4, k % 4);
                let p = quad % 4;
                match (c < half, quad < 4) {
                    (true, true) => grp[at(p, 0, t)] |= q,
                    (false, true) => grp[at(p, 1, t)] |= q,
                    (true, false) => grp[at(p, 2, t)] |= q,
                    (false, false) => {
                        for v in 0..3 {
                            grp[at(p, v, t)] |= ((q >> (2 * v)) & 3) << 6;
                        }
                    }
                }
            }
        },
    )
}

/// Q5_K in either layout (`c/gemm_q5k.h`): Q4_K's group — `[f32; panel]` of `d * sc`, of
/// `dmin * m` (the integer layout: `-(dmin * m)`), the low 4 bits as nibbles (f32 layout
/// `[32][panel / 2]`, integer layout `[8][panel / 2][4]`) — then the fifth bits, `panel * 4`
/// bytes: f32 layout row `r`'s at `r * panel / 8`, column `c` bit `c % 8` of byte `c / 8`;
/// integer layout quad `q`'s at `q * panel / 2`, value `t` of column `c` at bit
/// `4 (c % half) + t` of half `c / half`'s `half / 2` bytes.
fn pack_q5_k(bytes: &[u8], depth: usize, panel: usize, int8: bool) -> HostBuffer {
    let half = panel / 2;
    let gb = group_bytes(DType::Q5_K, panel);
    pack_groups(
        bytes,
        DType::Q5_K,
        depth,
        panel,
        gb,
        |row, g| sub_block(QuantType::Q5_K, row, g).expect("whole blocks"),
        |grp, c, (scale, min, vals)| {
            grp[4 * c..4 * c + 4].copy_from_slice(&scale.to_le_bytes());
            let min = if int8 { -min } else { min };
            grp[4 * (panel + c)..][..4].copy_from_slice(&min.to_le_bytes());
            let shift = if c < half { 0 } else { 4 };
            for (k, &v) in vals.iter().enumerate() {
                let (nibble, fifth) = (v & 15, v >> 4);
                let (at, bit) = if int8 {
                    grp[8 * panel + (k / 4) * 2 * panel + 4 * (c % half) + k % 4] |=
                        nibble << shift;
                    let bit = (c / half) * 4 * half + 4 * (c % half) + k % 4;
                    (24 * panel + (k / 4) * half + bit / 8, bit % 8)
                } else {
                    grp[8 * panel + k * half + c % half] |= nibble << shift;
                    (24 * panel + k * (panel / 8) + c / 8, c % 8)
                };
                grp[at] |= fifth << bit;
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::QuantType;

    /// Reads value (n, k) back from the panels as the C header does, in f32.
    fn value_at(p: &[u8], dtype: DType, depth: usize, panel: usize, n: usize, k: usize) -> f32 {
        let gb = group_bytes(dtype, panel);
        let g = &p[(n / panel) * (depth / GROUP) * gb + (k / GROUP) * gb..][..gb];
        let (c, r) = (n % panel, k % GROUP);
        let f = |at: usize| f32::from_le_bytes(g[at..at + 4].try_into().unwrap());
        let scale = f(4 * c);
        let half = panel / 2;
        match dtype {
            DType::Q8_0 => (g[4 * panel + r * panel + c] as i8) as f32 * scale,
            DType::Q5_K => {
                let byte = g[8 * panel + r * half + c % half];
                let low = if c < half { byte & 15 } else { byte >> 4 };
                let fifth = (g[24 * panel + r * (panel / 8) + c / 8] >> (c % 8)) & 1;
                scale * (low | (fifth << 4)) as f32 - f(4 * panel + 4 * c)
            }
            DType::Q6_K => {
                let byte = g[8 * panel + r * half + c % half];
                let low = if c < half { byte & 15 } else { byte >> 4 };
                let pair = 2 * (c / half) + 4 * (r / 16);
                let high = (g[24 * panel + (r % 16) * half + c % half] >> pair) & 3;
                f(4 * ((r / 16) * panel + c)) * ((low | (high << 4)) as i32 - 32) as f32
            }
            _ => {
                let at = if dtype == DType::Q4_K { 8 } else { 4 } * panel;
                let byte = g[at + r * half + c % half];
                let v = if c < half { byte & 15 } else { byte >> 4 };
                if dtype == DType::Q4_0 {
                    (v as i32 - 8) as f32 * scale
                } else {
                    scale * v as f32 - f(4 * panel + 4 * c)
                }
            }
        }
    }

    #[test]
    fn every_value_is_ggmls_dequantization() {
        for dtype in DType::QUANTIZED {
            let q: QuantType = dtype.quant().unwrap();
            let depth = 2 * q.block_elems();
            let rows = 37;
            let w: Vec<f32> = (0..rows * depth)
                .map(|i| ((i * 7919) % 257) as f32 / 64.0 - 2.0)
                .collect();
            let bytes = q.quantize(&w).unwrap();
            let mut want = vec![0f32; w.len()];
            q.dequantize_row(&bytes, &mut want).unwrap();
            for panel in [16, 32] {
                let p = pack_quant(&bytes, dtype, depth, panel);
                let len = rows.div_ceil(panel) * (depth / GROUP) * group_bytes(dtype, panel);
                // SAFETY: nothing writes the buffer.
                let got = unsafe { p.bytes(len) };
                for n in 0..rows {
                    for k in 0..depth {
                        let v = value_at(got, dtype, depth, panel, n, k);
                        assert_eq!(
                            v.to_bits(),
                            want[n * depth + k].to_bits(),
                            "{dtype} panel {panel}: ({n}, {k})"
                        );
                    }
                }
            }
        }
    }
}

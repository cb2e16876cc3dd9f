//! Block-quantized weights in panels: the layout the CPU's matmul kernels read Q8_0, Q4_0,
//! Q4_K, Q5_K and Q6_K weights in (`c/gemm_quant.h`, `c/gemm_q4k.h`, `c/gemm_q6k.h`,
//! `c/gemm_q5k.h`), repacked once when a weight
//! is bound, like the f32 and bf16 panels of [`crate::pack`].
//!
//! A weight `W` of `rows x k` values (rows of GGML blocks, `k` a multiple of 32) becomes
//! panels of `panel` rows (product columns); a panel is `k / 32` groups, one per 32 values of
//! `k`, each holding for its `panel` columns:
//! - `scale` — Q8_0/Q4_0: `[f16; panel]`, the block's own `d` (its bits, copied from the
//!   file; the kernels widen it with `vcvtph2ps`, exactly); Q4_K: `[f32; panel]`, the
//!   sub-block's `d * sc`;
//! - `min: [f32; panel]` — Q4_K only: the sub-block's `dmin * m`;
//! - the 32 values of each column, row by row (`k` within the group): Q8_0 `[32][panel]` i8;
//!   Q4_0/Q4_K `[32][panel / 2]` bytes, column `c` in the low nibble of byte `c` and column
//!   `c + panel / 2` in its high nibble, so one byte load widens to both halves of a row.
//!
//! So the GEMV streams one contiguous run of bytes per panel, a row of a group dequantizes
//! with one widening load, a shift or mask, a conversion and a multiply per vector (its
//! scales loaded once per group), and every value is bit for bit ggml's dequantization
//! (`kiln_ir::quant::sub_block` gives the operations). Columns past the last row are zero.
//! Bytes per 32 values and column: Q8_0 34 and Q4_0 18, exactly the GGUF blocks' (the decode
//! GEMV reads no byte more than the file holds; one f16 conversion per group and 16 columns,
//! hoisted out of the group's rows), Q4_K 24 (GGUF 18: f32 `d * sc` and `dmin * m`).
//!
//! Q6_K (two 16-value scales per group, 6-bit values) has its own group layout, described in
//! `c/gemm_q6k.h`: f32 `d * sc` of each half, the low nibbles as Q4_0's, then a plane of the
//! high bit pairs — 32 bytes per 32 values and column (GGUF 26.25).
//!
//! Q5_K (`c/gemm_q5k.h`) is Q4_K's group (`d * sc`, `dmin * m`, the low 4 bits as nibbles)
//! followed by a plane of the fifth bits, `[32][panel / 8]` bytes (row `r`'s bits, column `c`
//! at bit `c % 8` of byte `c / 8`) — 28 bytes per 32 values and column (GGUF 22).
//!
//! **Integer layout** (Q8_0, Q4_0, Q4_K, Q5_K and Q6_K when the kernels were compiled for
//! AVX-512 VNNI, the types of `Int8Types::AVX2` for AVX2: `kiln_quant_int8` in the prelude,
//! [`pack_quant_int8`]; the same layout at either panel width): the kernels multiply int8
//! activations with the weights' integers (`vpdpbusd`, four u8 x s8 products per i32 lane; on
//! AVX2 `vpmaddubsw` + `vpmaddwd`), so a group's values are grouped four k-values per 32-bit
//! lane: quad `q` (values `4q..4q+3` of the group) is `[panel][4]` bytes, one vector load per
//! 16 columns (AVX-512) or 8 (AVX2). The
//! weights are `vpdpbusd`'s unsigned operand, the activations its signed one. Per group:
//! - Q8_0: `d: [f16; panel]`, then `[8][panel][4]` bytes `q + 128` (`q ^ 0x80`, 0..255; the
//!   kernel starts each block's dot at `-128 * sum(a)`, a term of the activations, so the
//!   dot is exactly `sum(q * a)`) — 34 bytes per 32 values and column, the GGUF block's;
//! - Q4_0: `d: [f16; panel]`, then `[8][panel / 2][4]` bytes, column `c` in the low nibble
//!   of byte `(c, j)` and column `c + panel / 2` in its high nibble (the stored 0..15, the
//!   kernel subtracts `8 * sum(a)`) — 18 bytes, as in the f32 layout and the file;
//! - Q4_K, per super-block of 256 values, not per group (`c/gemm_q4k.h`: the kernels apply
//!   the group scales in int32 and convert once per super-block, as llama.cpp's q4_K x q8_K
//!   dot does): `d: [f16; panel]`, `dmin: [f16; panel]` (the file's bits), `m: [2][panel][4]`
//!   u8 (group `4j + t`'s 6-bit min of column `c` at `(j, c, t)`: a vpdpbusd operand),
//!   `sc: [8][panel]` u8 (the 6-bit scales), then each group's nibbles as Q4_0's — 148 bytes
//!   per 256 values and column, 18.5 per 32 (GGUF 18; the former per-group f32 `d * sc` and
//!   `-(dmin * m)`: 24);
//! - Q6_K, per super-block of 256 values: `d: [f16; panel]` (the file's bits), then per group
//!   `sc: [[i8; panel]; 2]` and the 6-bit values, three vectors per two quads with the fourth
//!   quad's bits in their top bit pairs (`c/gemm_q6k.h` says how and why) — 210 bytes per 256
//!   values and column, 26.25 per 32, the file's size (`d` per group in f32: 30);
//! - Q5_K, per super-block of 256 values: Q4_K's super-block (its `q` the low 4 bits), each
//!   group's nibbles followed by its fifth bits, per quad `panel / 2` bytes: bit `4 j + t` of
//!   the word of half `h` is value `t` of column `j + h * panel / 2`, the k mask of one
//!   vpdpbusd operand (`c/gemm_q4k.h`) — 180 bytes per 256 values and column, 22.5 per 32
//!   (GGUF 22).

use kiln_ir::quant::{sub_block, sub_block_q6_k, super_block_q4_k, super_block_q5_k};
use kiln_ir::DType;
use kiln_runtime::HostBuffer;
use rayon::prelude::*;

/// Values of `k` per group.
pub const GROUP: usize = 32;

/// Bytes of one group of a `panel`-column panel of `dtype` (`KILN_GB_*` in the C header).
pub fn group_bytes(dtype: DType, panel: usize) -> usize {
    match dtype {
        DType::Q8_0 => (2 + GROUP) * panel,
        DType::Q4_0 => (2 + GROUP / 2) * panel,
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
    match dtype {
        DType::Q6_K => pack_q6_k(bytes, depth, panel),
        DType::Q8_0 | DType::Q4_0 => pack_q8_0_q4_0(bytes, dtype, depth, panel, false),
        DType::Q4_K | DType::Q5_K => pack_k(bytes, dtype, depth, panel),
        other => panic!("{other} is not block-quantized"),
    }
}

/// Q8_0 and Q4_0 in either layout (the module's documentation): per group the blocks' own f16
/// `d` (its bits, copied from the file: the kernels widen it exactly), then the values: f32
/// layout Q8_0 `[32][panel]` i8, Q4_0 `[32][panel / 2]` nibbles; integer layout Q8_0
/// `[8][panel][4]` bytes `q + 128` (`q ^ 0x80`), Q4_0 `[8][panel / 2][4]` nibbles. So a group
/// is exactly as large as the GGUF blocks it holds.
fn pack_q8_0_q4_0(
    bytes: &[u8],
    dtype: DType,
    depth: usize,
    panel: usize,
    int8: bool,
) -> HostBuffer {
    let q = dtype.quant().expect("a block-quantized dtype");
    let block = q.block_bytes();
    let gb = if int8 {
        group_bytes_int8(dtype, panel)
    } else {
        group_bytes(dtype, panel)
    };
    let (half, at) = (panel / 2, 2 * panel);
    pack_units(
        bytes,
        dtype,
        depth,
        panel,
        GROUP,
        gb,
        |row, g| {
            let (_, _, vals) = sub_block(q, row, g).expect("whole blocks");
            ([row[g * block], row[g * block + 1]], vals)
        },
        |grp, c, (d, vals)| {
            grp[2 * c..2 * c + 2].copy_from_slice(&d);
            let shift = if c < half { 0 } else { 4 };
            for (k, &v) in vals.iter().enumerate() {
                match (dtype, int8) {
                    (DType::Q8_0, false) => grp[at + k * panel + c] = v,
                    (DType::Q8_0, true) => grp[at + (k / 4) * 4 * panel + 4 * c + k % 4] = v ^ 0x80,
                    (_, false) => grp[at + k * half + c % half] |= v << shift,
                    (_, true) => {
                        grp[at + (k / 4) * 2 * panel + 4 * (c % half) + k % 4] |= v << shift
                    }
                }
            }
        },
    )
}

/// The walk every layout shares: `bytes` (rows of `depth` values in GGML blocks of `dtype`)
/// as panels of `panel` columns, each `depth / unit` units of `ub` bytes — a unit is a group
/// of [`GROUP`] values of `k` or, in the K types' integer layouts, a super-block of 256 (a
/// multiple of the type's block or a divisor of it) — packed in parallel (one panel per task);
/// `write(unit, column, sub)` fills one column of one unit with `sub = read(row, u)`, unit `u`
/// of that column's row (`kiln_ir::quant::sub_block` for a group). Columns past the last row
/// stay zero.
#[allow(clippy::too_many_arguments)]
fn pack_units<S>(
    bytes: &[u8],
    dtype: DType,
    depth: usize,
    panel: usize,
    unit: usize,
    ub: usize,
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
    let units = depth / unit;
    let panel_bytes = units * ub;
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
            for u in 0..units {
                write(&mut dst[u * ub..][..ub], c, read(row, u));
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
/// (`KILN_GBI_*` in the C header; Q4_K's and Q6_K's panels are whole super-blocks: an eighth
/// of one).
pub fn group_bytes_int8(dtype: DType, panel: usize) -> usize {
    match dtype {
        DType::Q8_0 => (2 + GROUP) * panel,
        DType::Q4_0 => (2 + GROUP / 2) * panel,
        DType::Q4_K => Q4_K_SUPER_BLOCK_INT8 * panel / 8,
        DType::Q5_K => Q5_K_SUPER_BLOCK_INT8 * panel / 8,
        DType::Q6_K => Q6_K_SUPER_BLOCK_INT8 * panel / 8,
        other => panic!("{other} has no integer layout"),
    }
}

/// [`pack_quant`] in the integer layout (see the module's documentation): Q8_0, Q4_0, Q4_K,
/// Q5_K, Q6_K.
pub fn pack_quant_int8(bytes: &[u8], dtype: DType, depth: usize, panel: usize) -> HostBuffer {
    assert!(integer_layout(dtype), "{dtype} has no integer layout");
    match dtype {
        DType::Q8_0 | DType::Q4_0 => pack_q8_0_q4_0(bytes, dtype, depth, panel, true),
        DType::Q4_K | DType::Q5_K => pack_k_int8(bytes, dtype, depth, panel),
        DType::Q6_K => pack_q6_k_int8(bytes, depth, panel),
        other => unreachable!("{other} has no integer layout"),
    }
}

/// Bytes per column of one Q4_K super-block (256 values) in the integer layout.
const Q4_K_SUPER_BLOCK_INT8: usize = 148;
/// Q5_K's: Q4_K's and a plane of fifth bits (256 bits per column).
const Q5_K_SUPER_BLOCK_INT8: usize = Q4_K_SUPER_BLOCK_INT8 + 32;

/// Q4_K or Q5_K in the integer layout (`c/gemm_q4k.h`), per super-block: `d: [f16; panel]`,
/// `dmin: [f16; panel]`, `m: [2][panel][4]` u8 (group `4 j + t`'s min of column `c` at
/// `(j, c, t)`), `sc: [8][panel]` u8, then each group's nibbles as Q4_0's integer layout, for
/// Q5_K each followed by the group's fifth bits (quad `qd`'s at `qd * panel / 2`).
fn pack_k_int8(bytes: &[u8], dtype: DType, depth: usize, panel: usize) -> HostBuffer {
    let half = panel / 2;
    let (sbytes, read): (usize, fn(&[u8], usize) -> _) = if dtype == DType::Q5_K {
        (Q5_K_SUPER_BLOCK_INT8, super_block_q5_k)
    } else {
        (Q4_K_SUPER_BLOCK_INT8, super_block_q4_k)
    };
    // bytes of a group's q: its nibbles, and Q5_K's fifth bits after them
    let group_q = (sbytes - 20) / 8 * panel;
    pack_units(
        bytes,
        dtype,
        depth,
        panel,
        256,
        sbytes * panel,
        |row, b| read(row, b).expect("whole blocks"),
        |sb, c, (d, dmin, sc, m, q)| {
            sb[2 * c..][..2].copy_from_slice(&d.to_le_bytes());
            sb[2 * panel + 2 * c..][..2].copy_from_slice(&dmin.to_le_bytes());
            let shift = if c < half { 0 } else { 4 };
            for g in 0..8 {
                sb[4 * panel + (g / 4) * 4 * panel + 4 * c + g % 4] = m[g];
                sb[12 * panel + g * panel + c] = sc[g];
                let qg = &mut sb[20 * panel + g * group_q..][..group_q];
                for (k, &v) in q[g].iter().enumerate() {
                    qg[(k / 4) * 2 * panel + 4 * (c % half) + k % 4] |= (v & 15) << shift;
                    if dtype == DType::Q5_K {
                        // quad k / 4's word of half c / half, bit 4 (c % half) + k % 4
                        let bit = (c / half) * 4 * half + 4 * (c % half) + k % 4;
                        qg[16 * panel + (k / 4) * half + bit / 8] |= (v >> 4) << (bit % 8);
                    }
                }
            }
        },
    )
}

/// Q4_K or Q5_K in the f32 layout (`c/gemm_q5k.h` for Q5_K): per group `[f32; panel]` of
/// `d * sc`, of `dmin * m`, the low 4 bits as nibbles `[32][panel / 2]` (Q4_0's), then for
/// Q5_K the plane of fifth bits, `panel * 4` bytes: row `r`'s at `r * panel / 8`, column `c`
/// bit `c % 8` of byte `c / 8`.
fn pack_k(bytes: &[u8], dtype: DType, depth: usize, panel: usize) -> HostBuffer {
    let q = dtype.quant().expect("a block-quantized dtype");
    let fifth_bits = dtype == DType::Q5_K;
    let half = panel / 2;
    pack_units(
        bytes,
        dtype,
        depth,
        panel,
        GROUP,
        group_bytes(dtype, panel),
        |row, g| sub_block(q, row, g).expect("whole blocks"),
        |grp, c, (scale, min, vals)| {
            grp[4 * c..4 * c + 4].copy_from_slice(&scale.to_le_bytes());
            grp[4 * (panel + c)..][..4].copy_from_slice(&min.to_le_bytes());
            let shift = if c < half { 0 } else { 4 };
            for (k, &v) in vals.iter().enumerate() {
                grp[8 * panel + k * half + c % half] |= (v & 15) << shift;
                if fifth_bits {
                    grp[24 * panel + k * (panel / 8) + c / 8] |= (v >> 4) << (c % 8);
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
    pack_units(
        bytes,
        DType::Q6_K,
        depth,
        panel,
        GROUP,
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

/// Bytes per column of one Q6_K super-block (256 values) in the integer layout.
const Q6_K_SUPER_BLOCK_INT8: usize = 210;

/// Q6_K in the integer layout (`c/gemm_q6k.h`): per super-block `d: [f16; panel]` (the file's
/// bits), then per group `sc: [[i8; panel]; 2]`, then for each pair `p` of quads (`p` and
/// `p + 4`) three vectors X, Y, Z of `[panel / 2][4]` bytes: byte `(j, t)` holds value
/// `4 p + t` of column `j` (X, low 6 bits) and of column `j + half` (Y), value `16 + 4 p + t`
/// of column `j` (Z), and in the top two bits of X, Y, Z bits 0-1, 2-3, 4-5 of value
/// `16 + 4 p + t` of column `j + half`.
fn pack_q6_k_int8(bytes: &[u8], depth: usize, panel: usize) -> HostBuffer {
    pack_units(
        bytes,
        DType::Q6_K,
        depth,
        panel,
        256,
        Q6_K_SUPER_BLOCK_INT8 * panel,
        |row, b| {
            // ggml's block_q6_K ends with its f16 d (bytes 208..210 of 210)
            let d = u16::from_le_bytes([row[210 * b + 208], row[210 * b + 209]]);
            let groups: [_; 8] =
                std::array::from_fn(|g| sub_block_q6_k(row, 8 * b + g).expect("whole blocks"));
            (d, groups)
        },
        |sb, c, (d, groups)| {
            sb[2 * c..][..2].copy_from_slice(&d.to_le_bytes());
            for (g, (_, sc, vals)) in groups.into_iter().enumerate() {
                let grp = &mut sb[2 * panel + g * 26 * panel..][..26 * panel];
                write_q6_k_group(grp, panel, c, sc, vals);
            }
        },
    )
}

/// Column `c` of one Q6_K group in the integer layout: `sc: [[i8; panel]; 2]`, then the three
/// vectors of each pair of quads (see [`pack_q6_k_int8`]).
fn write_q6_k_group(grp: &mut [u8], panel: usize, c: usize, sc: [i8; 2], vals: [u8; 32]) {
    let half = panel / 2;
    grp[c] = sc[0] as u8;
    grp[panel + c] = sc[1] as u8;
    // vector v (0 X, 1 Y, 2 Z) of pair p, byte (j, t)
    let at = |p: usize, v: usize, t: usize| {
        2 * panel + p * 6 * panel + v * 2 * panel + 4 * (c % half) + t
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
        let d = half::f16::from_le_bytes([g[2 * c], g[2 * c + 1]]).to_f32();
        let half = panel / 2;
        match dtype {
            DType::Q8_0 => (g[2 * panel + r * panel + c] as i8) as f32 * d,
            DType::Q4_0 => {
                let byte = g[2 * panel + r * half + c % half];
                let v = if c < half { byte & 15 } else { byte >> 4 };
                (v as i32 - 8) as f32 * d
            }
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
                let byte = g[8 * panel + r * half + c % half];
                let v = if c < half { byte & 15 } else { byte >> 4 };
                scale * v as f32 - f(4 * panel + 4 * c)
            }
        }
    }

    /// Value (n, k) of a Q8_0 or Q4_0 weight read back from the integer layout, as the
    /// kernels' scalar columns do (`kiln_qiw_at_*` in the C header): `d * q`.
    fn value_at_int8(p: &[u8], dtype: DType, depth: usize, n: usize, k: usize) -> f32 {
        let panel = 32;
        let gb = group_bytes_int8(dtype, panel);
        let g = &p[(n / panel) * (depth / GROUP) * gb + (k / GROUP) * gb..][..gb];
        let (c, kk, half) = (n % panel, k % GROUP, panel / 2);
        let d = half::f16::from_le_bytes([g[2 * c], g[2 * c + 1]]).to_f32();
        let q = if dtype == DType::Q8_0 {
            g[2 * panel + (kk / 4) * 4 * panel + 4 * c + kk % 4] as i32 - 128
        } else {
            let b = g[2 * panel + (kk / 4) * 2 * panel + 4 * (c % half) + kk % 4];
            (if c < half { b & 15 } else { b >> 4 }) as i32 - 8
        };
        q as f32 * d
    }

    #[test]
    fn q8_0_and_q4_0_groups_are_the_files_bytes_and_read_back_exactly() {
        for dtype in [DType::Q8_0, DType::Q4_0] {
            let q: QuantType = dtype.quant().unwrap();
            for panel in [16, 32] {
                assert_eq!(group_bytes(dtype, panel), panel * q.block_bytes());
                assert_eq!(group_bytes_int8(dtype, panel), panel * q.block_bytes());
            }
            let (depth, rows) = (3 * GROUP, 45);
            // every Q8_0 value from -128 to 127 (the file may hold -128; ggml writes -127..127)
            let mut bytes = q.quantize(&vec![0.5f32; rows * depth]).unwrap();
            for (i, b) in bytes.chunks_mut(q.block_bytes()).enumerate() {
                b[..2].copy_from_slice(&half::f16::from_f32(0.25 + i as f32 / 64.0).to_le_bytes());
                for (j, v) in b[2..].iter_mut().enumerate() {
                    *v = (i * 37 + j * 11) as u8;
                }
            }
            let mut want = vec![0f32; rows * depth];
            q.dequantize_row(&bytes, &mut want).unwrap();
            let p = pack_quant_int8(&bytes, dtype, depth, 32);
            let len = rows.div_ceil(32) * (depth / GROUP) * group_bytes_int8(dtype, 32);
            // SAFETY: nothing writes the buffer.
            let got = unsafe { p.bytes(len) };
            for n in 0..rows {
                for k in 0..depth {
                    let v = value_at_int8(got, dtype, depth, n, k);
                    assert_eq!(
                        v.to_bits(),
                        want[n * depth + k].to_bits(),
                        "{dtype}: ({n}, {k})"
                    );
                }
            }
        }
    }

    /// Q4_K's and Q5_K's integer layout read back as `c/gemm_q4k.h` reads it gives ggml's
    /// values.
    #[test]
    fn q4_k_and_q5_k_integer_layout_holds_ggmls_values() {
        for (dtype, sbytes) in [
            (DType::Q4_K, Q4_K_SUPER_BLOCK_INT8),
            (DType::Q5_K, Q5_K_SUPER_BLOCK_INT8),
        ] {
            let q: QuantType = dtype.quant().unwrap();
            let (rows, depth, panel): (usize, usize, usize) = (37, 512, 32);
            let w: Vec<f32> = (0..rows * depth)
                .map(|i| ((i * 7919) % 257) as f32 / 64.0 - 2.0)
                .collect();
            let bytes = q.quantize(&w).unwrap();
            let mut want = vec![0f32; w.len()];
            q.dequantize_row(&bytes, &mut want).unwrap();
            let sbb = sbytes * panel;
            let len = rows.div_ceil(panel) * (depth / 256) * sbb;
            assert_eq!(
                len,
                rows.div_ceil(panel) * (depth / GROUP) * group_bytes_int8(dtype, panel)
            );
            let p = pack_quant_int8(&bytes, dtype, depth, panel);
            // SAFETY: nothing writes the buffer.
            let got = unsafe { p.bytes(len) };
            let half = panel / 2;
            for n in 0..rows {
                for k in 0..depth {
                    let sb = &got[((n / panel) * (depth / 256) + k / 256) * sbb..][..sbb];
                    let (c, g, kk) = (n % panel, (k % 256) / 32, k % 32);
                    let f16 = |at: usize| half::f16::from_le_bytes([sb[at], sb[at + 1]]).to_f32();
                    let (d, dmin) = (f16(2 * c), f16(2 * panel + 2 * c));
                    let m = sb[4 * panel + (g / 4) * 4 * panel + 4 * c + g % 4];
                    let sc = sb[12 * panel + g * panel + c];
                    let qg = 20 * panel + g * (sbytes - 20) / 8 * panel;
                    let byte = sb[qg + (kk / 4) * 2 * panel + 4 * (c % half) + kk % 4];
                    let mut v = if c < half { byte & 15 } else { byte >> 4 };
                    if dtype == DType::Q5_K {
                        let bit = 4 * (c % half) + kk % 4;
                        let word = qg + 16 * panel + (kk / 4) * half + (c / half) * 8;
                        v |= ((sb[word + bit / 8] >> (bit % 8)) & 1) << 4;
                    }
                    let value = (d * sc as f32) * v as f32 - dmin * m as f32;
                    assert_eq!(
                        value.to_bits(),
                        want[n * depth + k].to_bits(),
                        "{dtype} ({n}, {k})"
                    );
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

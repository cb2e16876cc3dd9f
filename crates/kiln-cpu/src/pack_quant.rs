//! Block-quantized weights in panels: the layout the CPU's matmul kernels read Q8_0, Q4_0 and
//! Q4_K weights in (`c/gemm_quant.h`), repacked once when a weight is bound, like the f32 and
//! bf16 panels of [`crate::pack`].
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
//!   nibbles as Q4_0 — 24 bytes, as in the f32 layout.

use kiln_ir::quant::sub_block;
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
        other => panic!("{other} is not block-quantized"),
    }
}

/// Packs `bytes` (rows of `depth` values in GGML blocks of `dtype`) into quantized panels of
/// `panel` columns, on the current rayon pool. `depth` is a multiple of the type's block (the
/// graph checks it: `Graph::input`); a trailing partial row (buffer padding) is ignored.
pub fn pack_quant(bytes: &[u8], dtype: DType, depth: usize, panel: usize) -> HostBuffer {
    let (with_min, nibbles) = match dtype {
        DType::Q8_0 => (false, false),
        DType::Q4_0 => (false, true),
        _ => (true, true),
    };
    let gb = group_bytes(dtype, panel);
    pack_groups(
        bytes,
        dtype,
        depth,
        panel,
        gb,
        |grp, c, scale, min, vals| {
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
/// (one panel per task); `write(group, column, scale, min, values)` fills one column of one
/// group with sub-block `g` of that column's row (`kiln_ir::quant::sub_block`). Columns past
/// the last row stay zero.
fn pack_groups(
    bytes: &[u8],
    dtype: DType,
    depth: usize,
    panel: usize,
    gb: usize,
    write: impl Fn(&mut [u8], usize, f32, f32, &[u8; GROUP]) + Sync,
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
                let (scale, min, vals) = sub_block(q, row, g).expect("whole blocks");
                write(&mut dst[g * gb..][..gb], c, scale, min, &vals);
            }
        }
    });
    out
}

/// Whether `dtype` has an integer layout ([`pack_quant_int8`]).
pub fn integer_layout(dtype: DType) -> bool {
    matches!(dtype, DType::Q8_0 | DType::Q4_0 | DType::Q4_K)
}

/// Bytes of one group of a `panel`-column panel of `dtype` in the integer layout
/// (`KILN_GBI_*` in the C header).
pub fn group_bytes_int8(dtype: DType, panel: usize) -> usize {
    match dtype {
        DType::Q8_0 => (8 + GROUP) * panel,
        DType::Q4_0 => (4 + GROUP / 2) * panel,
        DType::Q4_K => (8 + GROUP / 2) * panel,
        other => panic!("{other} has no integer layout"),
    }
}

/// [`pack_quant`] in the integer layout (see the module's documentation): Q8_0, Q4_0, Q4_K.
pub fn pack_quant_int8(bytes: &[u8], dtype: DType, depth: usize, panel: usize) -> HostBuffer {
    assert!(integer_layout(dtype), "{dtype} has no integer layout");
    let half = panel / 2;
    let gb = group_bytes_int8(dtype, panel);
    pack_groups(
        bytes,
        dtype,
        depth,
        panel,
        gb,
        |grp, c, scale, min, vals| {
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
        match dtype {
            DType::Q8_0 => (g[4 * panel + r * panel + c] as i8) as f32 * scale,
            _ => {
                let at = if dtype == DType::Q4_K { 8 } else { 4 } * panel;
                let half = panel / 2;
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

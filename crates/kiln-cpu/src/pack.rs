//! Packed weights: the layout the CPU's matmul kernels read `x @ W^T` weights in, made once
//! when a weight is bound (`Device::adopt_weight`), never per launch.
//!
//! A weight `W` of `rows x k` elements (row-major, `k` its last dimension) becomes panels of
//! `panel` rows each: `[ceil(rows / panel)][k][panel]`, zero past the last row, in the
//! weight's own dtype (bf16 stays bf16). Element `(n, j)` is at
//! `(n / panel) * k * panel + j * panel + n % panel` for f32; for bf16 `n % panel` is stored at
//! [`bf16_position`] instead, the order in which one unpack instruction per vector widens a
//! panel row to f32 in register order (`kiln_ldbf_panel_lo/hi` in the C prelude). The panel
//! width is two vectors of the ISA
//! the reading kernels were compiled for (32 with AVX-512, 16 otherwise: [`crate::Isa`]); the
//! compiled kernels say which (`kiln_panel_columns`), and the device packs to that. A panel is
//! one contiguous stream: the
//! decode GEMV reads it front to back, the prefill GEMM reuses a `KC x panel` strip of it from
//! L1/L2 across every row block. `c/gemm.h` reads this layout; which kernel input is packed is
//! decided from the kernel's description alone ([`packed_weight`]).

use crate::isa::Int8Types;
use kiln_ir::DType;
use kiln_program::{Kernel, KernelKind};
use kiln_runtime::HostBuffer;
use rayon::prelude::*;

/// The input of `k` that its kernel reads as packed panels, if any: the `b` operand of a
/// matmul `x @ W^T` where `W` is a graph input read whole and row-major (element (k, n) of the
/// operand at `n * K + k`, no batch stride), in f32 or bf16 or block-quantized (whole blocks
/// along a constant K: [`crate::pack_quant`]), with f32 activations whose rows
/// are contiguous along k (what the packed GEMM/GEMV read) and an f32 output, and read by
/// nothing else in the kernel: the kernel gets only the packed copy, so an `a`
/// operand or epilogue reading the same input (`x @ x^T`) would read panels as rows.
pub fn packed_weight(k: &Kernel) -> Option<usize> {
    let KernelKind::MatMul {
        k: depth,
        a,
        b,
        epilogue,
        ..
    } = &k.kind
    else {
        return None;
    };
    let nt = b.from_input
        && a.col_stride.is_const(1)
        && a.input != b.input
        && epilogue
            .as_ref()
            .is_none_or(|e| !e.body.reads_input(b.input))
        && b.offset.is_const(0)
        && b.row_stride.is_const(1)
        && b.col_stride.provably_equal(depth)
        && b.batch_strides.iter().all(|s| s.is_const(0))
        && (matches!(b.dtype, DType::F32 | DType::BF16) || quantized_rows(b.dtype, depth))
        && a.dtype == DType::F32
        && k.out_dtype == DType::F32;
    nt.then_some(b.input)
}

/// Whether a block-quantized weight's products have a constant depth of whole 32-value groups
/// and blocks (what the quantized panels of [`crate::pack_quant`] need).
fn quantized_rows(dtype: DType, depth: &kiln_ir::Expr) -> bool {
    dtype.is_quantized()
        && depth
            .as_const()
            .is_some_and(|k| k > 0 && k % dtype.block_elems() as i64 == 0)
}

/// What the kernels a device resolved read packed weights as (each module says so:
/// `kiln_panel_columns`, `kiln_quant_int8` in the C prelude).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Panels {
    /// Columns per panel (`KILN_NR`): 32 with AVX-512, 16 otherwise.
    pub columns: usize,
    /// The quantized types packed in the integer layout of [`crate::pack_quant`] (the others
    /// in the f32-dequantizing one).
    pub int8_quant: Int8Types,
}

impl Panels {
    /// `columns`-wide panels, quantized weights in the f32-dequantizing layout.
    pub fn dequant(columns: usize) -> Panels {
        Panels {
            columns,
            int8_quant: Int8Types::NONE,
        }
    }
}

/// Packs `bytes` (a row-major weight of `rows x depth` elements of `dtype`, f32 or bf16, at
/// least 4-byte aligned as tensors and device buffers are) into panels of `panel` columns of
/// the product (`KILN_NR` in the C prelude), on the current rayon pool.
pub fn pack(bytes: &[u8], dtype: DType, depth: usize, panels: Panels) -> HostBuffer {
    let panel = panels.columns;
    if dtype.is_quantized() {
        if panels.int8_quant.has(dtype) && crate::pack_quant::integer_layout(dtype) {
            return crate::pack_quant::pack_quant_int8(bytes, dtype, depth, panel);
        }
        return crate::pack_quant::pack_quant(bytes, dtype, depth, panel);
    }
    match dtype.size_bytes() {
        4 => pack_as::<u32>(bytes, depth, panel),
        2 => pack_as::<u16>(bytes, depth, panel),
        n => panic!("packing {n}-byte elements: only f32 and bf16 weights are packed"),
    }
}

/// Where column `c` (< `panel`) of a bf16 panel row is stored: column `4L + i` of the low half
/// at `8L + i`, of the high half at `8L + 4 + i` (`kiln_bf16_pos` in the C prelude). An unpack
/// of the row's 16-bit values against zeros, within each 128-bit lane, then gives the columns
/// of each half in order, as f32.
pub fn bf16_position(c: usize, panel: usize) -> usize {
    let half = panel / 2;
    let (h, c) = if c >= half { (1, c - half) } else { (0, c) };
    (c / 4) * 8 + h * 4 + c % 4
}

fn pack_as<T: Copy + Default + Send + Sync>(
    bytes: &[u8],
    depth: usize,
    width: usize,
) -> HostBuffer {
    let esize = std::mem::size_of::<T>();
    assert_eq!(
        bytes.as_ptr() as usize % esize,
        0,
        "weight storage is aligned"
    );
    // SAFETY: aligned (checked), in bounds, and T is a plain integer type.
    let w: &[T] =
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / esize) };
    let depth = depth.max(1);
    let rows = w.len() / depth;
    let panels = rows.div_ceil(width);
    let panel_len = depth * width;
    let out = HostBuffer::zeroed(panels * panel_len * esize);
    let dst = out.as_mut_ptr() as usize;
    (0..panels).into_par_iter().for_each(|p| {
        // SAFETY: panel p owns elements [p * panel_len, (p + 1) * panel_len) of `out` (8-byte
        // aligned, panels * panel_len elements long); nothing else writes them.
        let panel = unsafe {
            std::slice::from_raw_parts_mut((dst as *mut T).add(p * panel_len), panel_len)
        };
        let live = width.min(rows - p * width);
        // 64-column tiles of `depth`: the reads of a panel's rows stay in L1.
        for j0 in (0..depth).step_by(64) {
            let jn = 64.min(depth - j0);
            for r in 0..live {
                let at = if esize == 2 {
                    bf16_position(r, width)
                } else {
                    r
                };
                let src = &w[(p * width + r) * depth + j0..][..jn];
                for (j, &v) in src.iter().enumerate() {
                    panel[(j0 + j) * width + at] = v;
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_n_j_lands_where_the_kernels_read_it() {
        for panel in [16, 32] {
            element_n_j_lands_at(panel);
            bf16_element_n_j_lands_at(panel);
        }
    }

    #[test]
    fn bf16_positions_are_a_permutation_a_lane_unpack_undoes() {
        for panel in [16, 32] {
            let mut seen = vec![false; panel];
            for c in 0..panel {
                let at = bf16_position(c, panel);
                assert!(!seen[at], "{panel}: {c}");
                seen[at] = true;
                // vpunpck{l,h}wd: lane L of the result holds 16-bit elements 8L.. (low half)
                // or 8L + 4.. (high half) of the source, as the high halves of 4 dwords.
                let (half, lane, i) = (c / (panel / 2), (c % (panel / 2)) / 4, c % 4);
                assert_eq!(at, 8 * lane + 4 * half + i);
            }
        }
    }

    fn bf16_element_n_j_lands_at(panel: usize) {
        let (rows, depth) = (37usize, 3usize);
        let w: Vec<u16> = (0..rows * depth).map(|i| i as u16 + 1).collect();
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = pack(&bytes, DType::BF16, depth, Panels::dequant(panel));
        let panels = rows.div_ceil(panel);
        // SAFETY: nothing writes the buffer.
        let got = unsafe { p.bytes(panels * depth * panel * 2) };
        let at = |i: usize| u16::from_le_bytes(got[i * 2..i * 2 + 2].try_into().unwrap());
        for n in 0..panels * panel {
            for j in 0..depth {
                let want = if n < rows { w[n * depth + j] } else { 0 };
                let pos = (n / panel) * depth * panel + j * panel + bf16_position(n % panel, panel);
                assert_eq!(at(pos), want);
            }
        }
    }

    fn element_n_j_lands_at(panel: usize) {
        let (rows, depth) = (37usize, 5usize);
        let w: Vec<f32> = (0..rows * depth).map(|i| i as f32 + 1.0).collect();
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = pack(&bytes, DType::F32, depth, Panels::dequant(panel));
        let panels = rows.div_ceil(panel);
        assert_eq!(p.len(), (panels * depth * panel * 4).div_ceil(8) * 8);
        // SAFETY: nothing writes the buffer.
        let got = unsafe { p.bytes(panels * depth * panel * 4) };
        let at = |i: usize| f32::from_le_bytes(got[i * 4..i * 4 + 4].try_into().unwrap());
        for n in 0..panels * panel {
            for j in 0..depth {
                let want = if n < rows { w[n * depth + j] } else { 0.0 };
                assert_eq!(
                    at((n / panel) * depth * panel + j * panel + n % panel),
                    want
                );
            }
        }
    }
}

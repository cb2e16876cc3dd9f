//! GGML's weight formats, the tensor types of GGUF files: their type ids, their block layouts,
//! dequantization to f32 exactly as ggml's reference C (`dequantize_row_*` in
//! `ggml-quants.c`), and ggml's reference quantizers for Q8_0, Q4_0, Q4_K, Q5_K and Q6_K
//! (`quantize_row_*_ref`: the bytes llama.cpp's own quantizer writes when it is given no
//! importance matrix).
//!
//! A quantized row of `n` values is `n / block_elems` blocks of `block_bytes` bytes; each block
//! carries its own f16 scale `d` (and, for the `_1` and K types, an offset). The K types group
//! 256 values into a super-block whose 8 or 16 sub-blocks have their own scales, themselves
//! quantized against the super-block's `d`. All multi-byte fields are little-endian.
//!
//! The arithmetic follows the C reference operation by operation (same operand order, f32
//! throughout, no fused multiply-add), so a dequantized value is bit-identical to ggml's and
//! to the `gguf` Python package's.

use half::{bf16, f16};

/// Values per K-type super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// A GGML tensor type kiln reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)]
pub enum QuantType {
    F32,
    F16,
    BF16,
    /// 32 values: f16 `d`, 32 x i8; `x = d * q`.
    Q8_0,
    /// 32 values: f16 `d`, 16 bytes of 4-bit `q` (low nibbles: values 0..16, high: 16..32);
    /// `x = d * (q - 8)`.
    Q4_0,
    /// 32 values: f16 `d`, f16 `m`, 4-bit `q` as Q4_0; `x = d * q + m`.
    Q4_1,
    /// 32 values: f16 `d`, u32 of fifth bits, 4-bit low parts as Q4_0; `x = d * (q - 16)`.
    Q5_0,
    /// 32 values: f16 `d`, f16 `m`, u32 of fifth bits, 4-bit low parts; `x = d * q + m`.
    Q5_1,
    /// 256 values in 8 sub-blocks of 32: f16 `d`, f16 `dmin`, 12 bytes of 6-bit sub-block
    /// scales and mins, 128 bytes of 4-bit `q`; `x = d * sc * q - dmin * m`.
    Q4_K,
    /// As Q4_K plus 32 bytes of fifth bits (5-bit `q`).
    Q5_K,
    /// 256 values in 16 sub-blocks of 16: 128 bytes of low 4 bits, 64 bytes of high 2 bits,
    /// 16 x i8 sub-block scales, then f16 `d`; `x = d * sc * (q - 32)`.
    Q6_K,
}

impl QuantType {
    /// Every type, in GGML type-id order.
    pub const ALL: [QuantType; 11] = [
        QuantType::F32,
        QuantType::F16,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
        QuantType::BF16,
    ];

    /// The types [`QuantType::quantize_row`] writes.
    pub const QUANTIZERS: [QuantType; 8] = [
        QuantType::F32,
        QuantType::F16,
        QuantType::BF16,
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
    ];

    /// The type's id in GGUF tensor infos (`enum ggml_type`).
    pub fn ggml_id(self) -> u32 {
        match self {
            QuantType::F32 => 0,
            QuantType::F16 => 1,
            QuantType::Q4_0 => 2,
            QuantType::Q4_1 => 3,
            QuantType::Q5_0 => 6,
            QuantType::Q5_1 => 7,
            QuantType::Q8_0 => 8,
            QuantType::Q4_K => 12,
            QuantType::Q5_K => 13,
            QuantType::Q6_K => 14,
            QuantType::BF16 => 30,
        }
    }

    pub fn from_ggml_id(id: u32) -> Option<QuantType> {
        QuantType::ALL.into_iter().find(|t| t.ggml_id() == id)
    }

    /// GGML's name of the type (`Q4_K`, ...).
    pub fn name(self) -> &'static str {
        match self {
            QuantType::F32 => "F32",
            QuantType::F16 => "F16",
            QuantType::BF16 => "BF16",
            QuantType::Q8_0 => "Q8_0",
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q4_1 => "Q4_1",
            QuantType::Q5_0 => "Q5_0",
            QuantType::Q5_1 => "Q5_1",
            QuantType::Q4_K => "Q4_K",
            QuantType::Q5_K => "Q5_K",
            QuantType::Q6_K => "Q6_K",
        }
    }

    /// Parses a name as [`QuantType::name`] spells it (any case).
    pub fn from_name(name: &str) -> Option<QuantType> {
        QuantType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Values per block.
    pub fn block_elems(self) -> usize {
        match self {
            QuantType::F32 | QuantType::F16 | QuantType::BF16 => 1,
            QuantType::Q8_0
            | QuantType::Q4_0
            | QuantType::Q4_1
            | QuantType::Q5_0
            | QuantType::Q5_1 => 32,
            QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::F32 => 4,
            QuantType::F16 | QuantType::BF16 => 2,
            QuantType::Q8_0 => 34,
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
            QuantType::Q5_0 => 22,
            QuantType::Q5_1 => 24,
            QuantType::Q4_K => 144,
            QuantType::Q5_K => 176,
            QuantType::Q6_K => 210,
        }
    }

    /// Bytes of `elems` values: None when `elems` is not a whole number of blocks or the size
    /// overflows.
    pub fn bytes_of(self, elems: u64) -> Option<u64> {
        let be = self.block_elems() as u64;
        if !elems.is_multiple_of(be) {
            return None;
        }
        (elems / be).checked_mul(self.block_bytes() as u64)
    }

    /// Checks that `bytes` hold exactly `elems` values.
    fn check_len(self, elems: usize, bytes: usize) -> Result<usize, QuantError> {
        let be = self.block_elems();
        if !elems.is_multiple_of(be) {
            return Err(QuantError::PartialBlock {
                ty: self,
                elems,
                block: be,
            });
        }
        let blocks = elems / be;
        match blocks.checked_mul(self.block_bytes()) {
            Some(expected) if expected == bytes => Ok(blocks),
            expected => Err(QuantError::Length {
                ty: self,
                elems,
                expected,
                got: bytes,
            }),
        }
    }

    /// Decodes whole blocks `src` into `dst` (`dst.len()` values: a multiple of
    /// [`QuantType::block_elems`], and `src` exactly their bytes).
    pub fn dequantize_row(self, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
        self.check_len(dst.len(), src.len())?;
        let (bb, be) = (self.block_bytes(), self.block_elems());
        let blocks = src.chunks_exact(bb).zip(dst.chunks_exact_mut(be));
        match self {
            QuantType::F32 => {
                for (b, y) in blocks {
                    y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            QuantType::F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0)),
            QuantType::BF16 => {
                blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32())
            }
            QuantType::Q8_0 => blocks.for_each(|(b, y)| dequantize_q8_0(b, y)),
            QuantType::Q4_0 => blocks.for_each(|(b, y)| dequantize_q4_0(b, y)),
            QuantType::Q4_1 => blocks.for_each(|(b, y)| dequantize_q4_1(b, y)),
            QuantType::Q5_0 => blocks.for_each(|(b, y)| dequantize_q5_0(b, y)),
            QuantType::Q5_1 => blocks.for_each(|(b, y)| dequantize_q5_1(b, y)),
            QuantType::Q4_K => blocks.for_each(|(b, y)| dequantize_k::<false>(b, y)),
            QuantType::Q5_K => blocks.for_each(|(b, y)| dequantize_k::<true>(b, y)),
            QuantType::Q6_K => blocks.for_each(|(b, y)| dequantize_q6_k(b, y)),
        }
        Ok(())
    }

    /// Encodes `src` (a multiple of [`QuantType::block_elems`] values) into `dst` (exactly
    /// their bytes) with ggml's reference quantizer; for the types in
    /// [`QuantType::QUANTIZERS`].
    pub fn quantize_row(self, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
        self.check_len(src.len(), dst.len())?;
        let (bb, be) = (self.block_bytes(), self.block_elems());
        let blocks = src.chunks_exact(be).zip(dst.chunks_exact_mut(bb));
        match self {
            QuantType::F32 => blocks.for_each(|(x, b)| b.copy_from_slice(&x[0].to_le_bytes())),
            QuantType::F16 => {
                blocks.for_each(|(x, b)| b.copy_from_slice(&f16::from_f32(x[0]).to_le_bytes()))
            }
            QuantType::BF16 => {
                blocks.for_each(|(x, b)| b.copy_from_slice(&bf16::from_f32(x[0]).to_le_bytes()))
            }
            QuantType::Q8_0 => blocks.for_each(|(x, b)| quantize_q8_0(x, b)),
            QuantType::Q4_0 => blocks.for_each(|(x, b)| quantize_q4_0(x, b)),
            QuantType::Q4_K => blocks.for_each(|(x, b)| quantize_q4_k(x, b)),
            QuantType::Q5_K => blocks.for_each(|(x, b)| quantize_q5_k(x, b)),
            QuantType::Q6_K => blocks.for_each(|(x, b)| quantize_q6_k(x, b)),
            other => return Err(QuantError::NoQuantizer(other)),
        }
        Ok(())
    }

    /// [`QuantType::quantize_row`] into a new buffer.
    pub fn quantize(self, src: &[f32]) -> Result<Vec<u8>, QuantError> {
        let be = self.block_elems();
        let bytes = (src.len() / be).saturating_mul(self.block_bytes());
        let mut out = vec![
            0u8;
            if src.len().is_multiple_of(be) {
                bytes
            } else {
                0
            }
        ];
        self.quantize_row(src, &mut out)?;
        Ok(out)
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A row and a buffer that do not fit a type's blocks, or a type with no quantizer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("{ty}: {elems} values are not a whole number of {block}-value blocks")]
    PartialBlock {
        ty: QuantType,
        elems: usize,
        block: usize,
    },
    #[error("{ty}: {elems} values take {} bytes, the buffer has {got}",
        expected.map(|e| e.to_string()).unwrap_or_else(|| "more than usize".into()))]
    Length {
        ty: QuantType,
        elems: usize,
        expected: Option<usize>,
        got: usize,
    },
    #[error(
        "kiln has no quantizer for {0} (it writes F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K)"
    )]
    NoQuantizer(QuantType),
}

/// Sub-block `g` (values `32 g .. 32 g + 32`) of a row of Q8_0, Q4_0, Q4_K or Q5_K blocks, as
/// the kernels that read blocks unpack it: `(scale, min, q)` with `q` the 32 stored integers
/// (the i8 bits for Q8_0, the 4-bit values for Q4_0 and Q4_K, the 5-bit values 0..=31 for
/// Q5_K, in value order), such that ggml's dequantization of value `j` is, in f32:
/// Q8_0 `(q[j] as i8) as f32 * scale`; Q4_0 `(q[j] as i32 - 8) as f32 * scale`;
/// Q4_K and Q5_K `scale * q[j] as f32 - min` (its `d * sc` and `dmin * m`, computed here as
/// ggml does).
/// `None` for another type or a sub-block past the row.
pub fn sub_block(ty: QuantType, row: &[u8], g: usize) -> Option<(f32, f32, [u8; 32])> {
    let mut q = [0u8; 32];
    match ty {
        QuantType::Q8_0 | QuantType::Q4_0 => {
            let b = row.get(g * ty.block_bytes()..(g + 1) * ty.block_bytes())?;
            if ty == QuantType::Q8_0 {
                q.copy_from_slice(&b[2..34]);
            } else {
                for (j, &v) in b[2..18].iter().enumerate() {
                    q[j] = v & 0x0F;
                    q[j + 16] = v >> 4;
                }
            }
            Some((f16_at(b, 0), 0.0, q))
        }
        QuantType::Q4_K => {
            let b = row.get((g / 8) * 144..(g / 8 + 1) * 144)?;
            let j = g % 8;
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (sc, m) = scale_min_k4(j, &b[4..16]);
            let bytes = &b[16 + 32 * (j / 2)..16 + 32 * (j / 2) + 32];
            for (l, &v) in bytes.iter().enumerate() {
                q[l] = if j.is_multiple_of(2) {
                    v & 0x0F
                } else {
                    v >> 4
                };
            }
            Some((d * sc as f32, dmin * m as f32, q))
        }
        QuantType::Q5_K => {
            let b = row.get((g / 8) * 176..(g / 8 + 1) * 176)?;
            let j = g % 8;
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (sc, m) = scale_min_k4(j, &b[4..16]);
            // Sub-block j: nibble j % 2 of the 32 bytes of pair j / 2, fifth bit j of qh[l].
            let (qh, ql) = (&b[16..48], &b[48 + 32 * (j / 2)..48 + 32 * (j / 2) + 32]);
            for (l, q) in q.iter_mut().enumerate() {
                let low = if j.is_multiple_of(2) {
                    ql[l] & 0x0F
                } else {
                    ql[l] >> 4
                };
                *q = low | (((qh[l] >> j) & 1) << 4);
            }
            Some((d * sc as f32, dmin * m as f32, q))
        }
        _ => None,
    }
}

/// Sub-block pair `g` (values `32 g .. 32 g + 32`) of a row of Q6_K super-blocks, as the
/// kernels that read them unpack it: `(d, [sc0, sc1], q)` with `d` the super-block's scale,
/// `sc0` the i8 scale of values `0..16` of the group and `sc1` of `16..32`, and `q` the 32
/// stored 6-bit integers (0..=63) in value order, such that ggml's dequantization of value
/// `j` is, in f32, `(d * sc as f32) * (q[j] as i32 - 32) as f32` (`sc` its half's scale).
/// `None` for a group past the row.
pub fn sub_block_q6_k(row: &[u8], g: usize) -> Option<(f32, [i8; 2], [u8; 32])> {
    let b = row.get((g / 8) * 210..(g / 8 + 1) * 210)?;
    // A super-block is two halves of 128 values; within one, group `part` (0..4) takes
    // nibble `part / 2` of `ql[32 * (part % 2) + l]` and bit pair `part` of `qh[l]`.
    let (h, part) = ((g % 8) / 4, g % 4);
    let (ql, qh) = (&b[64 * h..64 * h + 64], &b[128 + 32 * h..128 + 32 * h + 32]);
    let mut q = [0u8; 32];
    for (l, q) in q.iter_mut().enumerate() {
        let low = (ql[32 * (part % 2) + l] >> (4 * (part / 2))) & 0x0F;
        *q = low | (((qh[l] >> (2 * part)) & 3) << 4);
    }
    let sc = 192 + 8 * h + 2 * part;
    Some((f16_at(b, 208), [b[sc] as i8, b[sc + 1] as i8], q))
}

/// Super-block `b` (values `256 b .. 256 b + 256`) of a row of Q4_K blocks, its integers as
/// stored: `(d, dmin, sc, m, q)` with `d` and `dmin` the f16 bits, `sc[g]` and `m[g]` group
/// `g`'s 6-bit scale and min, and `q[g]` its 32 4-bit values in value order, such that ggml's
/// dequantization of value `j` of group `g` is `d * sc[g] * q[g][j] - dmin * m[g]` (as
/// [`sub_block`] gives it in f32). `None` for a super-block past the row.
#[allow(clippy::type_complexity)]
pub fn super_block_q4_k(
    row: &[u8],
    b: usize,
) -> Option<(u16, u16, [u8; 8], [u8; 8], [[u8; 32]; 8])> {
    super_block_k(row.get(b * 144..(b + 1) * 144)?, None)
}

/// [`super_block_q4_k`] for a row of Q5_K blocks: the same super-block with `q[g][j]` 5-bit
/// (0..31, its fifth bit from the block's `qh` plane), dequantized by the same formula.
#[allow(clippy::type_complexity)]
pub fn super_block_q5_k(
    row: &[u8],
    b: usize,
) -> Option<(u16, u16, [u8; 8], [u8; 8], [[u8; 32]; 8])> {
    let blk = row.get(b * 176..(b + 1) * 176)?;
    let mut qs = blk[..16].to_vec();
    qs.extend_from_slice(&blk[48..176]);
    super_block_k(&qs, Some(&blk[16..48]))
}

/// A Q4_K block (d, dmin, 12 scale bytes, 128 nibble bytes), plus Q5_K's 32 `qh` bytes (the
/// fifth bit of value `l` of group `j` is bit `j` of `qh[l]`).
#[allow(clippy::type_complexity)]
fn super_block_k(
    blk: &[u8],
    qh: Option<&[u8]>,
) -> Option<(u16, u16, [u8; 8], [u8; 8], [[u8; 32]; 8])> {
    let (mut sc, mut m, mut q) = ([0u8; 8], [0u8; 8], [[0u8; 32]; 8]);
    for j in 0..8 {
        (sc[j], m[j]) = scale_min_k4(j, &blk[4..16]);
        for (l, &v) in blk[16 + 32 * (j / 2)..][..32].iter().enumerate() {
            let fifth = qh.map_or(0, |qh| ((qh[l] >> j) & 1) << 4);
            q[j][l] = (if j % 2 == 0 { v & 0x0F } else { v >> 4 }) | fifth;
        }
    }
    let bits = |at: usize| u16::from_le_bytes([blk[at], blk[at + 1]]);
    Some((bits(0), bits(2), sc, m, q))
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// ggml's `GGML_FP32_TO_FP16` then back: a scale as the block stores it (round to nearest even).
fn f16_round(x: f32) -> (f32, [u8; 2]) {
    let h = f16::from_f32(x);
    (h.to_f32(), h.to_le_bytes())
}

// ---------------------------------------------------------------- dequantization

fn dequantize_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = (q as i8) as f32 * d;
    }
}

fn dequantize_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

fn dequantize_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = (q & 0x0F) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// The fifth bits of a Q5 block's values `j` and `j + 16`, at bit 4.
fn q5_high_bits(qh: u32, j: usize) -> (u8, u8) {
    (
        (((qh >> j) << 4) & 0x10) as u8,
        ((qh >> (j + 12)) & 0x10) as u8,
    )
}

fn dequantize_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let (h0, h1) = q5_high_bits(qh, j);
        y[j] = (((q & 0x0F) | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((q >> 4) | h1) as i32 - 16) as f32 * d;
    }
}

fn dequantize_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let (h0, h1) = q5_high_bits(qh, j);
        y[j] = ((q & 0x0F) | h0) as f32 * d + m;
        y[j + 16] = ((q >> 4) | h1) as f32 * d + m;
    }
}

/// Sub-block `j`'s 6-bit scale and min from a K block's 12 packed bytes (ggml's
/// `get_scale_min_k4`): sub-blocks 0..4 in the low 6 bits of bytes 0..4 (scales) and 4..8
/// (mins); sub-blocks 4..8 in the nibbles of bytes 8..12, their top 2 bits in the top bits of
/// bytes 0..8.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K, or with `FIFTH` Q5_K (Q4_K's block with 32 bytes of fifth bits before the nibbles).
fn dequantize_k<const FIFTH: bool>(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let (qh, qs) = if FIFTH {
        (&b[16..48], &b[48..176])
    } else {
        (&b[16..16], &b[16..144])
    };
    // 4 groups of 64 values; each reads 32 bytes: low nibbles are the first 32 values.
    for (g, ql) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        // Group g's fifth bits: bit 2g of qh[l] for the first 32 values, bit 2g+1 for the next.
        let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
        let y = &mut y[64 * g..64 * g + 64];
        for l in 0..32 {
            let (h1, h2) = if FIFTH {
                ((qh[l] & u1 != 0) as u8 * 16, (qh[l] & u2 != 0) as u8 * 16)
            } else {
                (0, 0)
            };
            y[l] = d1 * ((ql[l] & 0x0F) + h1) as f32 - m1;
            y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
    }
}

fn dequantize_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    // Two halves of 128 values: 64 bytes of low nibbles, 32 of high bit pairs, 8 scales.
    for h in 0..2 {
        let ql = &b[64 * h..64 * h + 64];
        let qh = &b[128 + 32 * h..128 + 32 * h + 32];
        let sc = &b[192 + 8 * h..192 + 8 * h + 8];
        let y = &mut y[128 * h..128 * h + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| sc[is + k] as i8 as f32;
            y[l] = d * s(0) * q1 as f32;
            y[l + 32] = d * s(2) * q2 as f32;
            y[l + 64] = d * s(4) * q3 as f32;
            y[l + 96] = d * s(6) * q4 as f32;
        }
    }
}

// ---------------------------------------------------------------- reference quantizers

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below it quantizes to zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round to nearest, ties to even, through the float mantissa (valid for
/// |x| < 2^22, which every caller's range guarantees).
fn nearest_int(x: f32) -> i32 {
    let bits = (x + 12_582_912.0f32).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// C's `MAX(a, b)`: `a > b ? a : b` (so a NaN `b` wins, as in ggml).
fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// `quantize_row_q8_0_ref`: the scale maps the largest magnitude to 127.
fn quantize_q8_0(x: &[f32], b: &mut [u8]) {
    let amax = x.iter().fold(0.0f32, |m, v| c_max(m, v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b[0..2].copy_from_slice(&f16_round(d).1);
    for (q, &v) in b[2..34].iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
}

/// `quantize_row_q4_0_ref`: the value of largest magnitude (first such, with its sign) maps
/// to -8, so the scale carries the sign and the other end of the range is +7.
fn quantize_q4_0(x: &[f32], b: &mut [u8]) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b[0..2].copy_from_slice(&f16_round(d).1);
    for j in 0..16 {
        let lo = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let hi = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        b[2 + j] = lo | (hi << 4);
    }
}

/// ggml's `make_qkx2_quants`: the scale and min (returned as `-min`, non-negative) of `x` on
/// levels `0..=nmax`, minimising the weighted squared error over `nstep + 1` candidate scales
/// around `nmax / (max - min)`; the levels land in `l`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    l_aux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            l_aux[i] = q as u8;
            let (w, q) = (weights[i], q as f32);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * l_aux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&l_aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The search both K quantizers start with (`quantize_row_q4_K_ref`, `quantize_row_q5_K_ref`):
/// each sub-block of 32 values weighted towards its large values (`av_x + |x|`) and searched
/// by `make_qkx2_quants` on levels `0..=nmax`, candidate scales from `rmin` in `nstep` steps of
/// 0.1; returns the sub-blocks' scales and mins (their levels into `levels`).
fn k_sub_block_scales(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    levels: &mut [u8; QK_K],
) -> ([f32; 8], [f32; 8]) {
    let mut l_aux = [0u8; 32];
    let mut weights = [0.0f32; 32];
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut levels[32 * j..32 * j + 32],
            &mut l_aux,
            rmin,
            0.1,
            nstep,
        );
    }
    (scales, mins)
}

/// What both K quantizers do before packing their levels: [`k_sub_block_scales`]'s search
/// (levels `0..=nmax`, `rmin`, `nstep`), the scales and mins stored in `b[0..16]`
/// ([`store_k_scales`]), then the values re-quantized against the stored (rounded) scales; a
/// sub-block whose stored scale is 0 keeps the search's levels. Returns the 256 levels.
fn k_levels(x: &[f32], nmax: i32, rmin: f32, nstep: i32, b: &mut [u8]) -> [u8; QK_K] {
    let mut levels = [0u8; QK_K];
    let (scales, mins) = k_sub_block_scales(x, nmax, rmin, nstep, &mut levels);
    let (d, dmin) = store_k_scales(&scales, &mins, b);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &b[4..16]);
        let d = d * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    levels
}

/// `quantize_row_q4_K_ref`: each sub-block of 32 gets a scale and min (weighted towards its
/// large values), those are quantized to 6 bits against the super-block's largest, and the
/// values are re-quantized against the stored (rounded) scales.
fn quantize_q4_k(x: &[f32], b: &mut [u8]) {
    let levels = k_levels(x, 15, -1.0, 20, b);
    for (g, q) in b[16..144].chunks_exact_mut(32).enumerate() {
        for (l, q) in q.iter_mut().enumerate() {
            *q = levels[64 * g + l] | (levels[64 * g + l + 32] << 4);
        }
    }
}

/// The 6-bit scales and mins of a K block's 8 sub-blocks (`scales`, `mins`: the values
/// `make_qkx2_quants` found) quantized against their largest, as `quantize_row_q4_K_ref` and
/// `quantize_row_q5_K_ref` store them:
/// `d`, `dmin` (f16) in bytes 0..4 and the 12 packed bytes (`scale_min_k4`'s layout) in
/// 4..16; returns `d` and `dmin` as stored, in f32.
fn store_k_scales(scales: &[f32; 8], mins: &[f32; 8], b: &mut [u8]) -> (f32, f32) {
    // ggml: `if (scale > max_scale) max_scale = scale;` from 0 (a NaN never wins).
    let max_scale = scales.iter().fold(0.0f32, |m, &v| c_max(v, m));
    let max_min = mins.iter().fold(0.0f32, |m, &v| c_max(v, m));
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let packed = &mut b[4..16];
    packed.fill(0);
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let (d, d_bytes) = f16_round(max_scale / 63.0);
    let (dmin, dmin_bytes) = f16_round(max_min / 63.0);
    b[0..2].copy_from_slice(&d_bytes);
    b[2..4].copy_from_slice(&dmin_bytes);
    (d, dmin)
}

/// `quantize_row_q5_K_ref`: Q4_K's search on levels `0..=31` (its candidate scales from
/// `rmin` -0.5 in 16 steps of 0.1), the same 6-bit scales and mins, then the values
/// re-quantized against the stored scales; the low 4 bits packed as Q4_K's, the fifth bits of
/// sub-block `j` in bit `j` of `qh[l]`.
fn quantize_q5_k(x: &[f32], b: &mut [u8]) {
    let levels = k_levels(x, 31, -0.5, 15, b);
    let (qh, ql) = b[16..176].split_at_mut(32);
    qh.fill(0);
    for (g, q) in ql.chunks_exact_mut(32).enumerate() {
        for (l, q) in q.iter_mut().enumerate() {
            let (l1, l2) = (levels[64 * g + l], levels[64 * g + l + 32]);
            qh[l] |= ((l1 >> 4) << (2 * g)) | ((l2 >> 4) << (2 * g + 1));
            *q = (l1 & 0x0F) | ((l2 & 0x0F) << 4);
        }
    }
}

/// ggml's `make_qx_quants` with `rmse_type` 1 and no importance weights: the signed scale of
/// `x` on levels `-nmax..nmax` (stored in `l` as `level + nmax`), the best of 19 candidate
/// scales around `-nmax / max` under the squared error weighted by `x^2`.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Weighted sums of x * level and level^2 (w = x^2), in ggml's operation order.
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let q = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (l, &v) in l.iter_mut().zip(x) {
        *l = (level(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in l.iter_mut().zip(x) {
                *l = (level(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `quantize_row_q6_K_ref`: each sub-block of 16 gets a signed scale ([`make_qx_quants`] on
/// 32 levels each side), those are quantized to i8 against the super-block's largest (which
/// maps to -128), and the values are re-quantized against the stored (rounded) scales.
fn quantize_q6_k(x: &[f32], b: &mut [u8]) {
    let mut levels = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for (ib, s) in scales.iter_mut().enumerate() {
        let r = 16 * ib..16 * ib + 16;
        *s = make_qx_quants(32, &x[r.clone()], &mut levels[r]);
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = *s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        b.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let (d, d_bytes) = f16_round(1.0 / iscale);
    b[208..210].copy_from_slice(&d_bytes);
    for (ib, &s) in scales.iter().enumerate() {
        b[192 + ib] = nearest_int(iscale * s).min(127) as i8 as u8;
    }
    for j in 0..16 {
        let d = d * b[192 + j] as i8 as f32;
        if d == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            levels[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as i8;
        }
    }
    for h in 0..2 {
        let l6 = |i: usize| levels[128 * h + i] as u8;
        for l in 0..32 {
            b[64 * h + l] = (l6(l) & 0x0F) | ((l6(l + 64) & 0x0F) << 4);
            b[64 * h + l + 32] = (l6(l + 32) & 0x0F) | ((l6(l + 96) & 0x0F) << 4);
            b[128 + 32 * h + l] = (l6(l) >> 4)
                | ((l6(l + 32) >> 4) << 2)
                | ((l6(l + 64) >> 4) << 4)
                | ((l6(l + 96) >> 4) << 6);
        }
    }
}

//! A host tensor: dtype, concrete shape and little-endian bytes in an 8-byte-aligned allocation
//! (so kernels may read it as f32/i32 directly), or a view of bytes kept elsewhere (a weight in
//! a mapped file: [`Tensor::from_shared`]).

use crate::DType;
use std::sync::Arc;

#[derive(Clone)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    storage: Storage,
    len: usize,
}

#[derive(Clone)]
enum Storage {
    Owned(Vec<u64>),
    /// Read-only bytes kept by their owner (8-byte aligned, whole words); a write copies them.
    Shared(Arc<dyn SharedBytes>),
}

/// Bytes a tensor may view instead of copying: a weight in a memory-mapped model file, whose
/// pages are resident only while read (a gather reading a few rows of an embedding table
/// touches only their pages).
pub trait SharedBytes: Send + Sync {
    fn bytes(&self) -> &[u8];
    /// Drops the bytes' pages from this process's memory (they are read back from their file
    /// when touched again): after a reader has read them all once.
    fn release(&self) {}
    /// Makes `bytes()[start..start + len]` resident for a reader about to read it, without
    /// mapping the pages around it where the owner can (a mapped file's read fault maps
    /// ~60 KiB of neighbours); nothing by default (the read faults them in).
    fn make_resident(&self, _start: usize, _len: usize) {}
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Tensor) -> bool {
        self.dtype == other.dtype && self.shape == other.shape && self.bytes() == other.bytes()
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({}, {:?})", self.dtype, self.shape)
    }
}

impl Tensor {
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        let len = dtype.storage_bytes(shape.iter().product::<usize>());
        Tensor {
            dtype,
            shape: shape.to_vec(),
            storage: Storage::Owned(vec![0; len.div_ceil(8)]),
            len,
        }
    }

    /// A view of `bytes`, the little-endian bytes of `dtype` `shape`, without a copy; None when
    /// they are not that many bytes, 8-byte aligned and whole words (then copy them).
    pub fn from_shared(
        dtype: DType,
        shape: &[usize],
        bytes: Arc<dyn SharedBytes>,
    ) -> Option<Tensor> {
        let b = bytes.bytes();
        let len = dtype.storage_bytes(shape.iter().product::<usize>());
        (b.len() == len && len.is_multiple_of(8) && (b.as_ptr() as usize).is_multiple_of(8)).then(
            || Tensor {
                dtype,
                shape: shape.to_vec(),
                storage: Storage::Shared(bytes),
                len,
            },
        )
    }

    /// Whether this tensor views bytes kept elsewhere ([`Tensor::from_shared`]).
    pub fn is_shared(&self) -> bool {
        matches!(self.storage, Storage::Shared(_))
    }

    /// Drops a shared tensor's resident pages ([`SharedBytes::release`]); nothing for a tensor
    /// that owns its bytes.
    pub fn release_pages(&self) {
        if let Storage::Shared(s) = &self.storage {
            s.release();
        }
    }

    /// Makes bytes `start..start + len` of a shared tensor resident
    /// ([`SharedBytes::make_resident`]); nothing for a tensor that owns its bytes.
    pub fn make_resident(&self, start: usize, len: usize) {
        if let Storage::Shared(s) = &self.storage {
            s.make_resident(start, len);
        }
    }

    /// The owned words, copied out of shared bytes first.
    fn words_mut(&mut self) -> &mut Vec<u64> {
        if let Storage::Shared(s) = &self.storage {
            let mut words = vec![0u64; self.len.div_ceil(8)];
            // SAFETY: `words` holds at least `len` bytes; u8 has no alignment needs.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    s.bytes().as_ptr(),
                    words.as_mut_ptr() as *mut u8,
                    self.len,
                )
            };
            self.storage = Storage::Owned(words);
        }
        match &mut self.storage {
            Storage::Owned(w) => w,
            Storage::Shared(_) => unreachable!("copied above"),
        }
    }

    /// From values encoded in `dtype` (rounded as the dtype requires).
    pub fn from_f64(dtype: DType, shape: &[usize], values: &[f64]) -> Tensor {
        let mut t = Tensor::zeros(dtype, shape);
        assert_eq!(
            values.len(),
            t.numel(),
            "value count does not match shape {shape:?}"
        );
        let sz = dtype.size_bytes();
        let bytes = t.bytes_mut();
        for (i, v) in values.iter().enumerate() {
            dtype.write(*v, &mut bytes[i * sz..]);
        }
        t
    }

    pub fn from_f32(shape: &[usize], values: &[f32]) -> Tensor {
        let mut t = Tensor::zeros(DType::F32, shape);
        assert_eq!(
            values.len(),
            t.numel(),
            "value count does not match shape {shape:?}"
        );
        t.as_f32_mut().copy_from_slice(values);
        t
    }

    pub fn from_i32(shape: &[usize], values: &[i32]) -> Tensor {
        let v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
        Tensor::from_f64(DType::I32, shape, &v)
    }

    /// `values` quantized to the block-quantized `dtype` with ggml's reference quantizer
    /// (`kiln_ir::quant`); the last dimension must be whole blocks.
    pub fn quantize(
        dtype: DType,
        shape: &[usize],
        values: &[f32],
    ) -> Result<Tensor, crate::quant::QuantError> {
        let q = dtype
            .quant()
            .unwrap_or_else(|| panic!("Tensor::quantize to {dtype}, which is not quantized"));
        assert_eq!(
            values.len(),
            shape.iter().product::<usize>(),
            "value count does not match shape {shape:?}"
        );
        let mut t = Tensor::zeros(dtype, shape);
        q.quantize_row(values, t.bytes_mut())?;
        Ok(t)
    }

    /// From raw little-endian bytes of `dtype`.
    pub fn from_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Tensor {
        let mut t = Tensor::zeros(dtype, shape);
        assert_eq!(
            bytes.len(),
            t.len,
            "byte count does not match {dtype} {shape:?}"
        );
        t.bytes_mut().copy_from_slice(bytes);
        t
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            // SAFETY: `words` holds at least `len` initialised bytes; u8 has no alignment needs.
            Storage::Owned(w) => unsafe {
                std::slice::from_raw_parts(w.as_ptr() as *const u8, self.len)
            },
            Storage::Shared(s) => s.bytes(),
        }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        let words = self.words_mut();
        // SAFETY: as above, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, len) }
    }

    /// The data as f32 (only for F32 tensors).
    pub fn as_f32(&self) -> &[f32] {
        assert_eq!(self.dtype, DType::F32, "as_f32 on a {} tensor", self.dtype);
        // SAFETY: 8-byte aligned storage (owned or shared) of `numel` f32 values.
        unsafe { std::slice::from_raw_parts(self.bytes().as_ptr() as *const f32, self.numel()) }
    }

    pub fn as_f32_mut(&mut self) -> &mut [f32] {
        assert_eq!(
            self.dtype,
            DType::F32,
            "as_f32_mut on a {} tensor",
            self.dtype
        );
        let n = self.numel();
        let words = self.words_mut();
        // SAFETY: as above, exclusive.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut f32, n) }
    }

    /// Every value widened to f64, whatever the dtype.
    /// Block-quantized values are their ggml dequantization to f32.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        if let Some(q) = self.dtype.quant() {
            let mut v = vec![0f32; self.numel()];
            q.dequantize_row(self.bytes(), &mut v)
                .expect("a tensor holds whole blocks of its values");
            return v.into_iter().map(f64::from).collect();
        }
        let sz = self.dtype.size_bytes();
        self.bytes()
            .chunks_exact(sz)
            .map(|c| self.dtype.read(c))
            .collect()
    }

    /// A copy converted to another dtype.
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype {
            return self.clone();
        }
        if dtype.is_quantized() {
            let v: Vec<f32> = self.to_f64_vec().into_iter().map(|x| x as f32).collect();
            return Tensor::quantize(dtype, &self.shape, &v)
                .unwrap_or_else(|e| panic!("{dtype} of a {:?} tensor: {e}", self.shape));
        }
        Tensor::from_f64(dtype, &self.shape, &self.to_f64_vec())
    }

    /// The storage: the little-endian bytes in 8-byte words (the last one zero-padded); shared
    /// bytes are copied.
    pub fn into_words(mut self) -> Vec<u64> {
        std::mem::take(self.words_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes(Vec<u64>);

    impl SharedBytes for Bytes {
        fn bytes(&self) -> &[u8] {
            // SAFETY: the words' bytes; u8 has no alignment needs.
            unsafe { std::slice::from_raw_parts(self.0.as_ptr() as *const u8, self.0.len() * 8) }
        }
    }

    #[test]
    fn a_shared_tensor_reads_its_owners_bytes_and_copies_them_on_write() {
        let owner: Arc<dyn SharedBytes> = Arc::new(Bytes(vec![1f32.to_bits() as u64; 2]));
        let mut t = Tensor::from_shared(DType::F32, &[4], owner.clone()).unwrap();
        assert!(t.is_shared());
        assert_eq!(t.bytes().as_ptr(), owner.bytes().as_ptr(), "no copy");
        assert_eq!(t.as_f32(), [1.0, 0.0, 1.0, 0.0]);
        assert_eq!(t, Tensor::from_f32(&[4], &[1.0, 0.0, 1.0, 0.0]));
        t.as_f32_mut()[1] = 2.0;
        assert!(!t.is_shared());
        assert_eq!(t.as_f32(), [1.0, 2.0, 1.0, 0.0]);
        assert_eq!(
            owner.bytes()[4..8],
            [0; 4],
            "the owner's bytes are unchanged"
        );
        // Bytes that do not hold the shape are refused (the caller copies them instead).
        assert!(Tensor::from_shared(DType::F32, &[3], owner.clone()).is_none());
        let t = Tensor::from_shared(DType::F32, &[4], owner).unwrap();
        assert_eq!(t.into_words(), vec![1f32.to_bits() as u64; 2]);
    }
}

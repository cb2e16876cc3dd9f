//! A host tensor: dtype, concrete shape and little-endian bytes in an 8-byte-aligned allocation
//! (so kernels may read it as f32/i32 directly).

use crate::DType;

#[derive(Clone, PartialEq)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    words: Vec<u64>,
    len: usize,
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
            words: vec![0; len.div_ceil(8)],
            len,
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
        // SAFETY: `words` holds at least `len` initialised bytes; u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, self.len) }
    }

    /// The data as f32 (only for F32 tensors).
    pub fn as_f32(&self) -> &[f32] {
        assert_eq!(self.dtype, DType::F32, "as_f32 on a {} tensor", self.dtype);
        // SAFETY: 8-byte aligned storage of `numel` f32 values.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const f32, self.numel()) }
    }

    pub fn as_f32_mut(&mut self) -> &mut [f32] {
        assert_eq!(
            self.dtype,
            DType::F32,
            "as_f32_mut on a {} tensor",
            self.dtype
        );
        let n = self.numel();
        // SAFETY: as above, exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut f32, n) }
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

    /// The storage: the little-endian bytes in 8-byte words (the last one zero-padded).
    pub fn into_words(self) -> Vec<u64> {
        self.words
    }
}

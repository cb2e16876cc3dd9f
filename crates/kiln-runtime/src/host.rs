//! Host memory for the devices that run kernels on the CPU (the CPU backend, the CUDA
//! emulator): 8-byte aligned, so kernels may read any dtype from it, and written by kernels
//! through raw pointers while the executor holds shared references.

use kiln_ir::Tensor;
use std::ptr::NonNull;

/// A zero-initialised, 8-byte aligned allocation.
pub struct HostBuffer {
    ptr: NonNull<u64>,
    words: usize,
}

// SAFETY: the buffer owns its allocation; kernels that write it through `as_mut_ptr` are
// launched by the executor, which never hands out a buffer to two runs at once.
unsafe impl Send for HostBuffer {}
unsafe impl Sync for HostBuffer {}

impl HostBuffer {
    /// At least `bytes` bytes (at least one word), zeroed.
    pub fn zeroed(bytes: usize) -> HostBuffer {
        Self::from_words(vec![0u64; bytes.div_ceil(8).max(1)])
    }

    /// A copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> HostBuffer {
        let b = HostBuffer::zeroed(bytes.len());
        // SAFETY: the new buffer holds at least bytes.len() bytes and nothing else refers to it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), b.as_mut_ptr(), bytes.len()) };
        b
    }

    /// A tensor's storage, without copying it.
    pub fn from_tensor(t: Tensor) -> HostBuffer {
        let mut words = t.into_words();
        if words.is_empty() {
            words.push(0);
        }
        Self::from_words(words)
    }

    fn from_words(words: Vec<u64>) -> HostBuffer {
        let boxed = words.into_boxed_slice();
        let words = boxed.len();
        let ptr =
            NonNull::new(Box::into_raw(boxed) as *mut u64).expect("Box pointers are non-null");
        HostBuffer { ptr, words }
    }

    /// Capacity in bytes.
    pub fn len(&self) -> usize {
        self.words * 8
    }

    pub fn is_empty(&self) -> bool {
        self.words == 0
    }

    /// The start of the buffer, for kernels to read and write.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr() as *mut u8
    }

    /// The first `n` bytes.
    ///
    /// # Safety
    /// No kernel may be writing the buffer while the slice lives.
    pub unsafe fn bytes(&self, n: usize) -> &[u8] {
        assert!(
            n <= self.len(),
            "reading {n} bytes of a {}-byte buffer",
            self.len()
        );
        std::slice::from_raw_parts(self.as_mut_ptr(), n)
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        // SAFETY: ptr and words come from Box::into_raw of a boxed slice of this length.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.ptr.as_ptr(),
                self.words,
            )))
        };
    }
}

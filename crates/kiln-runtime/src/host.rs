//! For the devices that run kernels on the CPU (the CPU backend, the CUDA emulator): host
//! memory, 8-byte aligned so kernels may read any dtype from it and written by kernels through
//! raw pointers while the executor holds shared references; and shared objects loaded from an
//! artifact's bytes.

use kiln_ir::Tensor;
use kiln_program::BackendError;
use std::ptr::NonNull;

/// A shared object loaded from bytes (dlopen needs a file: it lives as long as the library).
pub struct HostLibrary {
    pub lib: libloading::Library,
    _file: tempfile::TempPath,
}

impl HostLibrary {
    /// Writes `artifact` to a temporary file and loads it.
    pub fn open(artifact: &[u8]) -> Result<HostLibrary, BackendError> {
        let mut f = tempfile::Builder::new()
            .prefix("kiln-")
            .suffix(".so")
            .tempfile()
            .map_err(|e| BackendError::io("cannot create a temporary file", e))?;
        std::io::Write::write_all(&mut f, artifact)
            .map_err(|e| BackendError::io("cannot write a temporary file", e))?;
        let file = f.into_temp_path();
        // SAFETY: the artifact is a shared object kiln compiled from its own source (or a cache
        // entry whose checksum and key matched); its initialisers are the compiler's defaults.
        let lib = unsafe { libloading::Library::new(&file) }
            .map_err(|e| BackendError::Invalid(format!("not a loadable shared object: {e}")))?;
        Ok(HostLibrary { lib, _file: file })
    }
}

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

    /// A copy of the first `n` bytes, once no kernel is writing (host launches are
    /// synchronous, so a device's `download` can call it right away).
    pub fn read(&self, n: usize) -> Vec<u8> {
        // SAFETY: callers download between launches; nothing else writes the buffer.
        unsafe { self.bytes(n) }.to_vec()
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

//! For the devices that run kernels on the CPU (the CPU backend, the CUDA emulator): host
//! memory, 8-byte aligned so kernels may read any dtype from it and written by kernels through
//! raw pointers while the executor holds shared references; and shared objects loaded from an
//! artifact's bytes.

use kiln_ir::Tensor;
use kiln_program::BackendError;
use std::ptr::NonNull;
use std::sync::Arc;

/// A shared object loaded from bytes (dlopen needs a file: it lives as long as the library).
pub struct HostLibrary {
    pub lib: libloading::Library,
    _file: tempfile::TempPath,
}

impl HostLibrary {
    /// Writes `artifact` to a temporary file and loads it (its symbols its own: `RTLD_LOCAL`).
    pub fn open(artifact: &[u8]) -> Result<HostLibrary, BackendError> {
        // SAFETY: the artifact is a shared object kiln compiled from its own source (or a cache
        // entry whose checksum and key matched); its initialisers are the compiler's defaults.
        Self::open_with(artifact, |file| unsafe { libloading::Library::new(file) })
    }

    /// Writes `artifact` to a temporary file and loads it with its symbols made global
    /// (`RTLD_NOW | RTLD_GLOBAL`): shared objects loaded after it resolve their undefined
    /// references to them (the CPU backend's runtime object, whose functions have names no
    /// other object defines).
    #[cfg(unix)]
    pub fn open_global(artifact: &[u8]) -> Result<HostLibrary, BackendError> {
        use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
        // SAFETY: as for `open`.
        Self::open_with(artifact, |file| unsafe {
            Library::open(Some(file), RTLD_NOW | RTLD_GLOBAL).map(Into::into)
        })
    }

    /// [`HostLibrary::open`], with every undefined symbol resolved now (`RTLD_NOW`): a
    /// library that calls a function nothing loaded defines fails here, naming the symbol,
    /// instead of ending the process when the call is first made.
    #[cfg(unix)]
    pub fn open_bound(artifact: &[u8]) -> Result<HostLibrary, BackendError> {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        // SAFETY: as for `open`.
        Self::open_with(artifact, |file| unsafe {
            Library::open(Some(file), RTLD_NOW | RTLD_LOCAL).map(Into::into)
        })
    }

    fn open_with(
        artifact: &[u8],
        load: impl FnOnce(&std::path::Path) -> Result<libloading::Library, libloading::Error>,
    ) -> Result<HostLibrary, BackendError> {
        let mut f = tempfile::Builder::new()
            .prefix("kiln-")
            .suffix(".so")
            .tempfile()
            .map_err(|e| BackendError::io("cannot create a temporary file", e))?;
        std::io::Write::write_all(&mut f, artifact)
            .map_err(|e| BackendError::io("cannot write a temporary file", e))?;
        let file = f.into_temp_path();
        let lib = load(&file)
            .map_err(|e| BackendError::Invalid(format!("not a loadable shared object: {e}")))?;
        Ok(HostLibrary { lib, _file: file })
    }
}

/// A zero-initialised, 8-byte aligned allocation. On Linux, one of at least [`HUGE_MIN`] bytes
/// is mapped on its own, 2 MiB aligned and advised as transparent huge pages: kernels stream
/// weights and KV caches of hundreds of MB, and with 4 KiB pages a core spends much of a
/// stream on TLB misses (a streaming read on one core of a KVM guest: 16 GB/s with 4 KiB
/// pages, 31 GB/s with 2 MiB ones).
pub struct HostBuffer {
    ptr: NonNull<u64>,
    words: usize,
    /// Bytes mapped with mmap (freed with munmap), or 0 for a boxed slice.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    mapped: usize,
    /// A shared tensor whose bytes this buffer is (`Tensor::from_shared`: a weight in a mapped
    /// file), read-only: kernels only read weights.
    view: Option<Tensor>,
    /// The huge-page chunk of a [`HugePageArena`] this buffer is a part of, kept mapped while
    /// any part lives.
    chunk: Option<Arc<HostBuffer>>,
}

/// Buffers from this size up get their own huge-page mapping.
pub const HUGE_MIN: usize = 4 << 20;
const HUGE_PAGE: usize = 2 << 20;

// SAFETY: the buffer owns its allocation; kernels that write it through `as_mut_ptr` are
// launched by the executor, which never hands out a buffer to two runs at once.
unsafe impl Send for HostBuffer {}
unsafe impl Sync for HostBuffer {}

impl HostBuffer {
    /// At least `bytes` bytes (at least one word), zeroed.
    pub fn zeroed(bytes: usize) -> HostBuffer {
        if bytes >= HUGE_MIN {
            if let Some(b) = Self::mapped(bytes) {
                return b;
            }
        }
        Self::from_words(vec![0u64; bytes.div_ceil(8).max(1)])
    }

    /// `bytes` (rounded up to whole huge pages) of fresh zero pages at a 2 MiB boundary,
    /// advised as huge pages before anything touches them; None where that fails (then the
    /// allocator's memory serves).
    #[cfg(target_os = "linux")]
    fn mapped(bytes: usize) -> Option<HostBuffer> {
        let len = bytes.next_multiple_of(HUGE_PAGE);
        // SAFETY: an anonymous private mapping; the slack around the aligned part is unmapped
        // again, and nothing else refers to any of it.
        unsafe {
            let raw = libc::mmap(
                std::ptr::null_mut(),
                len + HUGE_PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if raw == libc::MAP_FAILED {
                return None;
            }
            let start = (raw as usize).next_multiple_of(HUGE_PAGE);
            let head = start - raw as usize;
            if head > 0 {
                libc::munmap(raw, head);
            }
            if HUGE_PAGE - head > 0 {
                libc::munmap((start + len) as *mut libc::c_void, HUGE_PAGE - head);
            }
            // Advice only: without transparent huge pages the mapping still works.
            libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
            Some(HostBuffer {
                ptr: NonNull::new(start as *mut u64)?,
                // The bytes asked for, not the mapping's: a copy of the buffer (into a
                // `HugePageArena`) takes only those.
                words: bytes.div_ceil(8).max(1),
                mapped: len,
                view: None,
                chunk: None,
            })
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn mapped(_bytes: usize) -> Option<HostBuffer> {
        None
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
        if t.is_shared() {
            // Kept as it is (whole 8-byte-aligned words: `Tensor::from_shared`).
            let ptr = NonNull::new(t.bytes().as_ptr() as *mut u64);
            if let Some(ptr) = ptr.filter(|_| !t.bytes().is_empty()) {
                return HostBuffer {
                    ptr,
                    words: t.bytes().len() / 8,
                    mapped: 0,
                    view: Some(t),
                    chunk: None,
                };
            }
        }
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
        HostBuffer {
            ptr,
            words,
            mapped: 0,
            view: None,
            chunk: None,
        }
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
        if self.view.is_some() || self.chunk.is_some() {
            return; // the tensor, or the arena's chunk, frees (or unmaps) its own bytes
        }
        #[cfg(target_os = "linux")]
        if self.mapped > 0 {
            // SAFETY: ptr and mapped are the mapping `mapped` made; nothing refers to it now.
            unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.mapped) };
            return;
        }
        // SAFETY: ptr and words come from Box::into_raw of a boxed slice of this length.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.ptr.as_ptr(),
                self.words,
            )))
        };
    }
}

/// Long-lived buffers (a model's packed weights) placed one after the other in huge-page
/// chunks, so that they are read through 2 MiB pages without each being rounded up to whole
/// ones. A small model's packed quantized weights are 0.6-8 MB each (Qwen3-0.6B Q4_0: 1.3 MB
/// for q_proj, 2 MB for down_proj); on 4 KiB pages its decode GEMV read them at ~17 GB/s,
/// against 56-69 GB/s on huge pages (`docs/benchmarks.md`). A buffer of a few MiB mapped on
/// its own would hold its last huge page whole: 1 MiB on average, resident for nothing (28 x
/// 1.5 MiB in a Qwen3-0.6B Q8_0 or Q4_K_M model's panels); in a chunk, the next part uses it.
#[derive(Default)]
pub struct HugePageArena {
    /// Each chunk and the bytes of it in use (its parts lie in `[0, used)`).
    chunks: Vec<(Arc<HostBuffer>, usize)>,
}

/// Bytes of one arena chunk. Buffers from this size up keep their own mapping: copying one
/// would hold it twice for a moment, and its rounding is a small part of it.
const ARENA_CHUNK: usize = 32 << 20;

impl HugePageArena {
    /// `buf`, or a copy of it in the arena where it is below [`ARENA_CHUNK`] and huge-page
    /// chunks can be mapped here: in the first chunk with room (first fit, so that small
    /// buffers fill the ends that larger ones left), else in a new one.
    pub fn place(&mut self, buf: HostBuffer) -> HostBuffer {
        let bytes = buf.len();
        if bytes >= ARENA_CHUNK || buf.view.is_some() {
            return buf;
        }
        let fits = |(chunk, used): &(Arc<HostBuffer>, usize)| chunk.len() - used >= bytes;
        let i = match self.chunks.iter().position(fits) {
            Some(i) => i,
            None => {
                let chunk = HostBuffer::zeroed(ARENA_CHUNK);
                if chunk.mapped == 0 {
                    return buf; // no huge-page mapping here: the allocator's memory serves
                }
                self.chunks.push((Arc::new(chunk), 0));
                self.chunks.len() - 1
            }
        };
        let (chunk, used) = &mut self.chunks[i];
        // SAFETY: [used, used + bytes) lies in the chunk and no other part of the arena refers
        // to it; `buf` holds `bytes` bytes.
        let ptr = unsafe {
            let at = chunk.as_mut_ptr().add(*used);
            std::ptr::copy_nonoverlapping(buf.as_mut_ptr(), at, bytes);
            NonNull::new(at as *mut u64).expect("inside a mapping")
        };
        // The next part on a cache line of its own (`bytes` is whole words).
        *used = (*used + bytes).next_multiple_of(64).min(chunk.len());
        HostBuffer {
            ptr,
            words: bytes / 8,
            mapped: 0,
            view: None,
            chunk: Some(chunk.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_zeroed_writable_and_huge_page_aligned() {
        for bytes in [HUGE_MIN - 8, HUGE_MIN + 5, 3 * HUGE_MIN + 4096] {
            let b = HostBuffer::zeroed(bytes);
            assert!(b.len() >= bytes);
            if cfg!(target_os = "linux") && bytes >= HUGE_MIN {
                assert_eq!(b.as_mut_ptr() as usize % HUGE_PAGE, 0, "{bytes}");
            }
            // SAFETY: nothing else refers to the buffer.
            unsafe {
                assert!(b.bytes(bytes).iter().all(|&x| x == 0));
                std::ptr::write_bytes(b.as_mut_ptr(), 7, b.len());
            }
            assert_eq!(b.read(bytes)[bytes - 1], 7);
            let c = HostBuffer::from_bytes(&b.read(bytes));
            assert_eq!(c.read(bytes), b.read(bytes));
        }
    }

    #[test]
    fn arena_parts_are_copies_on_huge_pages_that_outlive_the_arena() {
        let mut arena = HugePageArena::default();
        let sizes = [
            8,
            1 << 20,
            3 << 20,
            3 << 20,
            HUGE_MIN + 8,
            5000 * 8,
            24 << 20,
            8 << 20,
            ARENA_CHUNK,
        ];
        let parts: Vec<(HostBuffer, Vec<u8>)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let want: Vec<u8> = (0..n).map(|j| (i * 31 + j % 251) as u8).collect();
                (arena.place(HostBuffer::from_bytes(&want)), want)
            })
            .collect();
        drop(arena);
        for (b, want) in &parts {
            assert_eq!(&b.read(want.len()), want);
            if cfg!(target_os = "linux") {
                assert_eq!(
                    b.chunk.is_some(),
                    want.len() < ARENA_CHUNK,
                    "{} bytes: in the arena only below a chunk",
                    want.len()
                );
            }
        }
        if cfg!(target_os = "linux") {
            // 1 MiB and 3 MiB share the first chunk, each part on its own cache lines.
            let (a, b) = (&parts[1].0, &parts[2].0);
            assert_eq!(b.as_mut_ptr() as usize - a.as_mut_ptr() as usize, 1 << 20);
            assert_eq!(a.as_mut_ptr() as usize % 64, 0);
            // 24 MiB no longer fits the first chunk (11 MiB used): a second one. The 8 MiB
            // after it fills the first chunk's end (first fit), right after the parts before.
            let chunk = |i: usize| parts[i].0.chunk.as_ref().expect("in the arena");
            assert!(!Arc::ptr_eq(chunk(6), chunk(0)));
            assert!(Arc::ptr_eq(chunk(7), chunk(0)));
            let end_of_5 = parts[5].0.as_mut_ptr() as usize + 5000 * 8;
            assert_eq!(
                parts[7].0.as_mut_ptr() as usize,
                end_of_5.next_multiple_of(64)
            );
        }
    }
}

//! Counting heap allocations, for tests that bound a step's work by what it allocates rather
//! than by how long it takes. A test binary installs [`CountingAlloc`] as its global allocator:
//!
//! ```text
//! #[global_allocator]
//! static ALLOC: kiln_ir::testing::alloc::CountingAlloc = kiln_ir::testing::alloc::CountingAlloc;
//! ```
//!
//! and reads [`allocated`] before and after the step.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// The system allocator, counting the bytes and the calls of every allocation and
/// reallocation (frees are not subtracted: the count is work done, not memory held).
pub struct CountingAlloc;

static BYTES: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

/// (bytes allocated, allocations) so far, by every thread, through [`CountingAlloc`]; zeros
/// in a binary that does not install it.
pub fn allocated() -> (u64, u64) {
    (BYTES.load(Ordering::SeqCst), CALLS.load(Ordering::SeqCst))
}

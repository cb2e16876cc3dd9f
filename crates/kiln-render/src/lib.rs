//! kiln's kernel renderers.
//!
//! A backend turns each canonical [`kiln_program::Kernel`] into source text for its device
//! compiler. The text has two layers:
//! - **the dialect** ([`Dialect`]): how the language spells types, literals, index arithmetic,
//!   loads, stores, select, math and casts. C and CUDA C share one ([`cstyle::CStyle`]); WGSL
//!   has its own (64-bit indices and `?:` do not exist there).
//! - **the kernel's structure**: what is shared by every backend is written once here
//!   ([`Printer`] for expressions, [`parts`] for what an element, a reduction or a matmul
//!   computes); each backend adds only the structure its hardware needs (loops over work
//!   units on a CPU, threads, warps and tiles on a GPU).
//!
//! Nothing here knows node ids: the text depends only on the kernel's structure, so equal
//! kernels get equal source and one compile.

pub mod cstyle;
pub mod dialect;
pub mod emit;
pub mod parts;
pub mod printer;

pub use dialect::{Dialect, IndexOp};
pub use emit::{translation_unit, Emit};
pub use printer::Printer;

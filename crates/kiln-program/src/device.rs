//! The boundary between the executor and a device: memory, kernels, launches. A device never
//! sees the graph, the memory plan or carried values; the executor never sees device APIs.

use crate::backend::Backend;
use crate::kernel::Kernel;
use crate::program::UniqueKernel;
use crate::RunError;
use kiln_ir::{Bindings, Tensor};

/// One device (the CPU, a GPU, an emulator) as the executor drives it.
///
/// Buffers are written by kernels while the executor holds shared references to them
/// (`launch` takes `&Buffer`), as device memory is.
pub trait Device: Send {
    /// What the backend's `load` produced: a shared object, a CUDA module, ...
    type Module: Send;
    /// A block of device memory.
    type Buffer: Send;
    /// A kernel resolved for launching (a function pointer, a `CUfunction`, a pipeline).
    type Kernel: Send;

    /// A short description for messages: `cpu (2 threads)`, `CUDA device 0 (NVIDIA H200)`.
    fn describe(&self) -> String;

    /// Finds `kernel` in the module that holds it. Called once per distinct kernel, in order.
    /// How to launch it is `kernel.source.launch`, which the backend's codegen wrote.
    fn resolve(
        &mut self,
        module: &Self::Module,
        kernel: &UniqueKernel,
    ) -> Result<Self::Kernel, RunError>;

    /// At least `bytes` bytes, for kernel outputs; `what` names it in errors.
    fn alloc(&mut self, bytes: usize, what: &str) -> Result<Self::Buffer, RunError>;

    /// A new buffer holding a copy of `data`.
    fn upload(&mut self, data: &[u8], what: &str) -> Result<Self::Buffer, RunError>;

    /// A buffer holding `t`, which the device may keep instead of copying (host devices do).
    fn adopt(&mut self, t: Tensor, what: &str) -> Result<Self::Buffer, RunError> {
        self.upload(t.bytes(), what)
    }

    /// A weight: a buffer bound once and read, unchanged, by every run; `readers` are the
    /// kernels that read it, each with the kernel input it is, and `bindings` the symbols its
    /// own shape binds (to evaluate the readers' sizes). A device may keep it in a
    /// layout of its own for those kernels (the CPU packs `x @ W^T` weights into panels): the
    /// layout must follow from the kernels' descriptions alone, and a kernel handed the same
    /// tensor as a per-run input must compute the same values. The default adopts it as is.
    fn adopt_weight(
        &mut self,
        t: Tensor,
        readers: &[(&Kernel, usize)],
        bindings: &Bindings,
        what: &str,
    ) -> Result<Self::Buffer, RunError> {
        let _ = (readers, bindings);
        self.adopt(t, what)
    }

    /// The first `bytes` bytes of `buf`, once every launch before has finished.
    fn download(&mut self, buf: &Self::Buffer, bytes: usize) -> Result<Vec<u8>, RunError>;

    /// [`Device::download`] into `out` (its first `out.len()` bytes). A host device copies
    /// straight into it: a decode step's logits (600 KB for a 151,936-token vocabulary) are
    /// then copied once, into the tensor the caller gets, not into a vector first.
    fn download_into(&mut self, buf: &Self::Buffer, out: &mut [u8]) -> Result<(), RunError> {
        let bytes = self.download(buf, out.len())?;
        out.copy_from_slice(&bytes[..out.len()]);
        Ok(())
    }

    /// Runs `kernel` writing `out` and reading `inputs` (in the kernel's input order), with its
    /// symbols taken from `bindings` (its launch spec evaluated with them; no launch where it
    /// has no work units). May return before the kernel finishes.
    fn launch(
        &mut self,
        kernel: &Self::Kernel,
        out: &Self::Buffer,
        inputs: &[&Self::Buffer],
        bindings: &Bindings,
    ) -> Result<(), RunError>;

    /// Waits for every launch so far.
    fn sync(&mut self) -> Result<(), RunError>;
}

/// A backend that can also run what it compiles, on its [`Device`].
pub trait Runtime: Backend + Send + Sync {
    type Device: Device<Module = Self::Module> + 'static;

    /// The device the kernels run on; an error where there is none (a compile-only CUDA
    /// backend on a machine without a GPU).
    fn device(&self) -> Result<Self::Device, RunError>;

    /// The device's own streaming bandwidth (bytes per second) and its name, where the
    /// backend can measure it (a GPU's device-to-device copy); None for host memory, which the
    /// caller measures itself.
    fn bandwidth(&self) -> Option<Result<(String, f64), RunError>> {
        None
    }
}

//! What a backend's codegen returns for one kernel: its canonical text, the name of its
//! function in it, and how to launch it.

use crate::launch::LaunchSpec;

/// Canonical source of one kernel, the function name inside it, and its launch spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSource {
    pub name: String,
    pub source: String,
    /// How a device launches it: decided with the text, not part of it (no cache key or
    /// artifact depends on it).
    pub launch: LaunchSpec,
}

/// Placeholder a backend writes where the kernel's function name goes.
pub const NAME_PLACEHOLDER: &str = "KILN_KERNEL_NAME";

impl KernelSource {
    /// Names a kernel after its label and a hash of its source, so the name (and therefore the
    /// whole source) depends only on the kernel's structure.
    pub fn named(label: &str, template: &str, launch: LaunchSpec) -> KernelSource {
        let hash = blake3::hash(template.as_bytes()).to_hex();
        let name = format!("kiln_{label}_{}", &hash[..16]);
        KernelSource {
            source: template.replace(NAME_PLACEHOLDER, &name),
            name,
            launch,
        }
    }

    /// Whether `other` is the same compiled kernel: the same name and text (launch specs of
    /// equal texts evaluate alike, see [`crate::launch`]).
    pub fn same_text(&self, other: &KernelSource) -> bool {
        self.name == other.name && self.source == other.source
    }
}

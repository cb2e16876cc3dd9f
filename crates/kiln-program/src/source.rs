//! What a backend's codegen returns for one kernel: its canonical text and the name of its
//! function in it.

/// Canonical source of one kernel and the function name inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSource {
    pub name: String,
    pub source: String,
}

/// Placeholder a backend writes where the kernel's function name goes.
pub const NAME_PLACEHOLDER: &str = "KILN_KERNEL_NAME";

impl KernelSource {
    /// Names a kernel after its label and a hash of its source, so the name (and therefore the
    /// whole source) depends only on the kernel's structure.
    pub fn named(label: &str, template: &str) -> KernelSource {
        let hash = blake3::hash(template.as_bytes()).to_hex();
        let name = format!("kiln_{label}_{}", &hash[..16]);
        KernelSource {
            source: template.replace(NAME_PLACEHOLDER, &name),
            name,
        }
    }
}

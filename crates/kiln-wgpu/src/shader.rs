//! naga in front of the driver: every kernel is parsed and validated here, with naga's
//! annotated report when it fails, before wgpu sees it. The same module is emitted as Metal
//! Shading Language (what wgpu's Metal backend compiles on macOS) and SPIR-V (what Vulkan
//! gets), each checked to still contain the kernel's entry point under its own name.

use naga::back::{msl, spv};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};

/// Why a kernel's WGSL is not a kernel kiln can run, or cannot be translated for Metal or
/// Vulkan. The parse and validation variants hold naga's annotated report (the source line and
/// a caret) and keep naga's error (boxed: it is large) as the source.
#[derive(Debug, thiserror::Error)]
pub enum ShaderError {
    #[error("WGSL parse error:\n{report}")]
    Parse {
        report: String,
        #[source]
        source: Box<naga::front::wgsl::ParseError>,
    },
    #[error("WGSL validation error:\n{report}")]
    Invalid {
        report: String,
        #[source]
        source: Box<naga::WithSpan<naga::valid::ValidationError>>,
    },
    #[error("the module has no entry point named {name} (entry points: {found:?})")]
    NoEntryPoint { name: String, found: Vec<String> },
    /// A binding kiln does not make (another group, another address space, a gap).
    #[error("{0}")]
    Bindings(String),
    #[error("MSL: {0:?}")]
    Msl(naga::back::msl::Error),
    #[error("SPIR-V: {0:?}")]
    Spirv(naga::back::spv::Error),
    /// The translation lost or renamed the entry point.
    #[error("{0}")]
    EntryPointLost(String),
}

/// A kernel naga parsed and validated.
pub struct Validated {
    pub module: naga::Module,
    pub info: ModuleInfo,
}

/// How a kernel binds one buffer (group 0, in binding order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// The launch's `Params`, a uniform bound with a dynamic offset.
    Params,
    /// A storage buffer the kernel only reads.
    Read,
    /// The storage buffer the kernel writes.
    ReadWrite,
}

/// The capabilities kiln's kernels need: none beyond core WGSL (no f16, subgroups or 64-bit
/// integers), so they validate the same for Vulkan, Metal, DX12 and the browser.
pub const CAPABILITIES: Capabilities = Capabilities::empty();

/// Parses and validates `src`, whose entry point must be `name`. The error is naga's own
/// report with the source line and a caret.
pub fn validate(name: &str, src: &str) -> Result<Validated, ShaderError> {
    let module = naga::front::wgsl::parse_str(src).map_err(|source| ShaderError::Parse {
        report: source.emit_to_string(src),
        source: Box::new(source),
    })?;
    let info = Validator::new(ValidationFlags::all(), CAPABILITIES)
        .validate(&module)
        .map_err(|source| ShaderError::Invalid {
            report: source.emit_to_string(src),
            source: Box::new(source),
        })?;
    if !module.entry_points.iter().any(|ep| ep.name == name) {
        return Err(ShaderError::NoEntryPoint {
            name: name.to_string(),
            found: module
                .entry_points
                .iter()
                .map(|ep| ep.name.clone())
                .collect(),
        });
    }
    Ok(Validated { module, info })
}

/// The kernel's bindings in group 0, in binding order, read from the module itself.
pub fn bindings(module: &naga::Module) -> Result<Vec<Binding>, ShaderError> {
    let mut found: Vec<(u32, Binding)> = Vec::new();
    for (_, g) in module.global_variables.iter() {
        let Some(rb) = &g.binding else { continue };
        if rb.group != 0 {
            return Err(ShaderError::Bindings(format!(
                "binding group {} (kiln uses group 0 only)",
                rb.group
            )));
        }
        let kind = match g.space {
            naga::AddressSpace::Uniform => Binding::Params,
            naga::AddressSpace::Storage { access } => {
                if access.contains(naga::StorageAccess::STORE) {
                    Binding::ReadWrite
                } else {
                    Binding::Read
                }
            }
            other => {
                return Err(ShaderError::Bindings(format!(
                    "binding {} in address space {other:?}",
                    rb.binding
                )))
            }
        };
        found.push((rb.binding, kind));
    }
    found.sort_by_key(|b| b.0);
    if found.iter().enumerate().any(|(i, b)| b.0 != i as u32) {
        return Err(ShaderError::Bindings(format!(
            "bindings are not numbered 0..{}: {:?}",
            found.len(),
            found.iter().map(|b| b.0).collect::<Vec<_>>()
        )));
    }
    Ok(found.into_iter().map(|b| b.1).collect())
}

/// The Metal Shading Language version kiln's kernels need: 2.0 (macOS 10.13, iOS 11) covers
/// compute kernels with threadgroup memory and device atomics; nothing here uses SIMD-group
/// functions (2.1+).
pub const MSL_VERSION: (u8, u8) = (2, 0);

/// MSL for one kernel as Metal accepts it: an explicit binding map for the entry point (group 0
/// binding i -> `[[buffer(i)]]`, the output mutable), a sizes buffer in the slot after the last
/// binding (runtime-sized arrays need it for bounds checks), no invented bindings, and the
/// entry point checked to be present. Returns the source and the entry point's MSL name:
/// naga's namer appends `_` to a name that ends in a digit (as wgpu's Metal backend then
/// looks it up).
pub fn to_msl(name: &str, v: &Validated) -> Result<(String, String), ShaderError> {
    let binds = bindings(&v.module)?;
    let mut resources = msl::BindingMap::new();
    for (i, b) in binds.iter().enumerate() {
        resources.insert(
            naga::ResourceBinding {
                group: 0,
                binding: i as u32,
            },
            msl::BindTarget {
                buffer: Some(i as u8),
                mutable: *b == Binding::ReadWrite,
                ..Default::default()
            },
        );
    }
    let ep_resources = msl::EntryPointResources {
        resources,
        immediates_buffer: None,
        sizes_buffer: Some(binds.len() as u8),
    };
    // What wgpu-hal's Metal backend uses.
    let policy = naga::proc::BoundsCheckPolicy::ReadZeroSkipWrite;
    let options = msl::Options {
        lang_version: MSL_VERSION,
        per_entry_point_map: [(name.to_string(), ep_resources)].into_iter().collect(),
        fake_missing_bindings: false,
        bounds_check_policies: naga::proc::BoundsCheckPolicies {
            index: policy,
            buffer: policy,
            image_load: policy,
            binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
        },
        zero_initialize_workgroup_memory: false,
        ..Default::default()
    };
    let pipeline = msl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, name.to_string())),
        ..Default::default()
    };
    let (src, tinfo) =
        msl::write_string(&v.module, &v.info, &options, &pipeline).map_err(ShaderError::Msl)?;
    // With `fake_missing_bindings: false` an entry point that cannot be translated is dropped
    // silently from the source; its error is here.
    let ep = match tinfo.entry_point_names.as_slice() {
        [Ok(n)] => n.clone(),
        [Err(e)] => return Err(ShaderError::EntryPointLost(format!("MSL entry point: {e}"))),
        other => {
            return Err(ShaderError::EntryPointLost(format!(
                "MSL produced {} entry points",
                other.len()
            )))
        }
    };
    let renamed = ep == name || ep.strip_suffix('_') == Some(name);
    if !renamed || !src.contains(&format!("kernel void {ep}(")) {
        return Err(ShaderError::EntryPointLost(format!(
            "entry point {name} is missing from the MSL (translated as {ep})"
        )));
    }
    Ok((src, ep))
}

/// SPIR-V 1.3 (Vulkan 1.1) for the kernel's entry point.
pub fn to_spirv(name: &str, v: &Validated) -> Result<Vec<u32>, ShaderError> {
    let options = spv::Options {
        lang_version: (1, 3),
        flags: spv::WriterFlags::empty(),
        ..Default::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: name.to_string(),
    };
    let words = spv::write_vec(&v.module, &v.info, &options, Some(&pipeline))
        .map_err(ShaderError::Spirv)?;
    let eps = spirv_entry_points(&words);
    if eps != [name] {
        return Err(ShaderError::EntryPointLost(format!(
            "SPIR-V entry points are {eps:?}, expected [{name}]"
        )));
    }
    Ok(words)
}

/// Names of the `OpEntryPoint`s of a SPIR-V module (a minimal reader, enough to check).
pub fn spirv_entry_points(words: &[u32]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 5; // the header
    while i < words.len() {
        let (count, op) = ((words[i] >> 16) as usize, words[i] & 0xffff);
        if count == 0 {
            break;
        }
        // OpEntryPoint ExecutionModel <id> Name...
        if op == 15 && i + 3 < words.len() {
            let bytes: Vec<u8> = words[i + 3..(i + count).min(words.len())]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .take_while(|&b| b != 0)
                .collect();
            out.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        i += count;
    }
    out
}

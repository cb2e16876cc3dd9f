//! What each compiled kernel asks of a GPU, read from ptxas's report (`--ptxas-options=-v` in
//! NVRTC's log, the same lines in NVRTC 12 and 13), and the launch limits it must fit: the
//! resource failures that neither NVRTC nor the emulator sees and a real GPU refuses at launch
//! (`CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES`), and the register spills that make a kernel slow.
//!
//! The unit is compiled as the backend compiles it ([`crate::compile_unit`]); `-v` adds the
//! report to the log and changes no section of the CUBIN but the note where NVRTC 13's ptxas
//! records its options (checked below).

use kiln_program::{BackendError, KernelSource};
use std::collections::BTreeMap;

/// Registers a block may hold (every arch kiln targets, sm_50 to sm_120).
pub const REGISTERS_PER_BLOCK: u32 = 65536;
/// Registers are allocated per warp in units of this many (the CUDA occupancy calculator's
/// register allocation unit size, sm_50 to sm_120).
pub const REGISTER_ALLOCATION_UNIT: u32 = 256;
/// Static (`__shared__`) memory a block may declare; more needs dynamic shared memory.
pub const STATIC_SHARED_BYTES: u32 = 48 * 1024;
/// Threads a block may have.
pub const THREADS_PER_BLOCK: u32 = 1024;

/// ptxas's report of one kernel (an entry function).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub function: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory, bytes.
    pub shared_bytes: u32,
    /// Local memory a thread's stack frame holds (arrays indexed at run time, spills), bytes.
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

impl Resources {
    pub fn spills(&self) -> bool {
        self.spill_store_bytes > 0 || self.spill_load_bytes > 0
    }
}

/// The registers a block of `threads` threads holds of a kernel using `registers` per thread:
/// whole warps, each allocated a multiple of [`REGISTER_ALLOCATION_UNIT`].
pub fn block_registers(registers: u32, threads: u32) -> u64 {
    let unit = REGISTER_ALLOCATION_UNIT as u64;
    let per_warp = (registers as u64 * 32).div_ceil(unit) * unit;
    (threads as u64).div_ceil(32) * per_warp
}

/// Whether a block of `threads` threads of `r` can launch: an error naming what exceeds which
/// limit.
pub fn check(r: &Resources, threads: u32) -> Result<(), String> {
    let mut over = Vec::new();
    if threads > THREADS_PER_BLOCK {
        over.push(format!(
            "{threads} threads > {THREADS_PER_BLOCK} threads per block"
        ));
    }
    let regs = block_registers(r.registers, threads);
    if regs > REGISTERS_PER_BLOCK as u64 {
        over.push(format!(
            "{} registers x {threads} threads = {regs} allocated > {REGISTERS_PER_BLOCK} \
             registers per block",
            r.registers
        ));
    }
    if r.shared_bytes > STATIC_SHARED_BYTES {
        over.push(format!(
            "{} bytes of static shared memory > {STATIC_SHARED_BYTES}",
            r.shared_bytes
        ));
    }
    if over.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {}", r.function, over.join("; ")))
    }
}

/// Whether a block of `block` fits the `limit` on threads per block that the driver gives a
/// loaded function (`CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK`: 1024, or fewer where its
/// registers or shared memory would not fit a block of 1024): an error saying both.
pub fn check_block(block: [u32; 3], limit: i32) -> Result<(), String> {
    let threads: u64 = block.iter().map(|&b| b as u64).product();
    if threads <= limit.max(0) as u64 {
        return Ok(());
    }
    let [x, y, z] = block;
    Err(format!(
        "its block of {threads} threads ({x}x{y}x{z}) exceeds the {limit} threads per block \
         that the CUDA driver allows this function (CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: \
         its registers or shared memory do not fit a larger block)"
    ))
}

/// The number that `line` writes just before `unit` (`"Used 40 registers"`, unit
/// `" registers"`), if it writes `unit`.
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let at = line.find(unit)?;
    let digits = line[..at].rsplit(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// The text between the first pair of single quotes after `prefix` in `line`.
fn quoted_after<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let rest = rest.strip_prefix('\'')?;
    Some(&rest[..rest.find('\'')?])
}

/// The entry functions ptxas reports in `log`, by name. Per function, ptxas writes
/// ```text
/// ptxas info    : Compiling entry function 'k' for 'sm_90'
/// ptxas info    : Function properties for k
/// ptxas         .     256 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 39 registers, used 1 barriers, 256 bytes cumulative stack size, 1200 bytes smem
/// ```
/// (the smem clause only where there is shared memory); the properties of device functions
/// that are not inlined are reported too, and are not entries.
pub fn parse_ptxas_log(log: &str) -> BTreeMap<String, Resources> {
    let mut found: BTreeMap<String, Resources> = BTreeMap::new();
    let (mut entry, mut properties_of) = (None::<String>, None::<String>);
    for line in log.lines() {
        if let Some(name) = quoted_after(line, "Compiling entry function ") {
            found.insert(
                name.to_string(),
                Resources {
                    function: name.to_string(),
                    ..Default::default()
                },
            );
            entry = Some(name.to_string());
        } else if let Some(at) = line.find("Function properties for ") {
            properties_of = Some(line[at + "Function properties for ".len()..].trim().into());
        } else if let Some(stack) = number_before(line, " bytes stack frame") {
            if let Some(r) = properties_of.as_ref().and_then(|n| found.get_mut(n)) {
                r.stack_bytes = stack;
                r.spill_store_bytes = number_before(line, " bytes spill stores").unwrap_or(0);
                r.spill_load_bytes = number_before(line, " bytes spill loads").unwrap_or(0);
            }
        } else if let Some(registers) = number_before(line, " registers") {
            if let Some(r) = entry.as_ref().and_then(|n| found.get_mut(n)) {
                r.registers = registers;
                r.shared_bytes = number_before(line, " bytes smem").unwrap_or(0);
            }
        }
    }
    found
}

/// Compiles `kernels` in one program for `arch`, as the backend does, and returns ptxas's
/// report of each, in their order; an error where the report lacks one.
pub fn resources(arch: &str, kernels: &[&KernelSource]) -> Result<Vec<Resources>, BackendError> {
    let (_, log) = crate::compile_unit(arch, kernels, &["--ptxas-options=-v"])?;
    let mut found = parse_ptxas_log(&log);
    kernels
        .iter()
        .map(|k| {
            found.remove(&k.name).ok_or_else(|| {
                BackendError::Invalid(format!(
                    "ptxas reported no resources for {} ({arch}); its log:\n{log}",
                    k.name
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC 13.0's log for sm_80 (12.8 writes the same lines), with a device function that is
    /// not inlined between the entries.
    const LOG: &str = "ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k2' for 'sm_80'
ptxas info    : Function properties for k2
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers, 360 bytes cmem[0]
ptxas info    : Compile time = 2.335 ms
ptxas info    : Function properties for helper
ptxas         .     64 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Compiling entry function 'k' for 'sm_80'
ptxas info    : Function properties for k
ptxas         .     256 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 39 registers, used 1 barriers, 256 bytes cumulative stack size, 1200 bytes smem, 376 bytes cmem[0]
ptxas info    : Compile time = 110.864 ms
";

    #[test]
    fn the_report_of_each_entry_is_read() {
        let r = parse_ptxas_log(LOG);
        assert_eq!(r.keys().collect::<Vec<_>>(), ["k", "k2"]);
        assert_eq!(
            r["k"],
            Resources {
                function: "k".into(),
                registers: 39,
                shared_bytes: 1200,
                stack_bytes: 256,
                spill_store_bytes: 12,
                spill_load_bytes: 16,
            }
        );
        assert_eq!((r["k2"].registers, r["k2"].shared_bytes), (8, 0));
        assert!(!r["k2"].spills() && r["k"].spills());
    }

    #[test]
    fn blocks_allocate_registers_by_whole_warps_and_units() {
        // 33 registers: 1056 a warp, rounded to 1280; 100 threads are 4 warps.
        assert_eq!(block_registers(33, 100), 4 * 1280);
        assert_eq!(block_registers(255, 256), 8 * 8192);
        let r = |registers| Resources {
            function: "k".into(),
            registers,
            ..Default::default()
        };
        assert!(check(&r(255), 256).is_ok(), "255 x 256 fits exactly");
        assert!(check(&r(64), 1024).is_ok());
        let e = check(&r(72), 1024).unwrap_err();
        assert!(e.contains("k: 72 registers x 1024 threads = 73728"), "{e}");
        let e = check(&r(8), 2048).unwrap_err();
        assert!(e.contains("2048 threads > 1024"), "{e}");
        let big = Resources {
            shared_bytes: 48 * 1024 + 4,
            ..r(8)
        };
        assert!(check(&big, 32).unwrap_err().contains("49156 bytes"));
    }

    /// An ELF64 image's sections by name: (type, bytes; no bytes for NOBITS, only its size).
    fn sections(elf: &[u8]) -> BTreeMap<String, (u32, Vec<u8>, u64)> {
        let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
        let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
        let (shoff, shentsize) = (u64_at(0x28) as usize, u16_at(0x3a));
        let (shnum, shstrndx) = (u16_at(0x3c), u16_at(0x3e));
        let header = |i: usize| shoff + i * shentsize;
        let names = u64_at(header(shstrndx) + 0x18) as usize;
        (0..shnum)
            .map(|i| {
                let h = header(i);
                let start = names + u32_at(h) as usize;
                let end = start + elf[start..].iter().position(|&b| b == 0).unwrap();
                let name = String::from_utf8_lossy(&elf[start..end]).into_owned();
                let (kind, at, size) = (u32_at(h + 4), u64_at(h + 0x18), u64_at(h + 0x20));
                let bytes = if kind == 8 {
                    Vec::new()
                } else {
                    elf[at as usize..(at + size) as usize].to_vec()
                };
                (name, (kind, bytes, size))
            })
            .collect()
    }

    /// What the preflight measures is what the backend loads: with `-v`, the CUBIN differs only
    /// in the note where NVRTC 13's ptxas records its options (`.note.nv.tkinfo`) and in where
    /// sections lie.
    #[test]
    fn the_report_comes_with_the_backends_cubin() {
        let k = KernelSource {
            name: "kiln_preflight_probe".into(),
            source:
                "extern \"C\" __global__ void kiln_preflight_probe(float *o, const float *a) {\n\
                     __shared__ float s[300];\n    s[threadIdx.x] = a[threadIdx.x];\n\
                     __syncthreads();\n    o[threadIdx.x] = s[(threadIdx.x + 1) % 256];\n}\n"
                    .into(),
            launch: kiln_program::LaunchSpec::units(
                Vec::new(),
                kiln_ir::Expr::Const(1),
                kiln_ir::Expr::Const(1),
            ),
        };
        for arch in ["sm_90", "sm_80"] {
            let (plain, _) = crate::compile_unit(arch, &[&k], &[]).unwrap();
            let (reported, log) =
                crate::compile_unit(arch, &[&k], &["--ptxas-options=-v"]).unwrap();
            let (mut plain, mut reported) = (sections(&plain), sections(&reported));
            for s in [&mut plain, &mut reported] {
                s.remove(".note.nv.tkinfo");
            }
            assert!(plain.contains_key(".text.kiln_preflight_probe"), "{arch}");
            assert!(
                plain == reported,
                "{arch}: -v changed a section of the CUBIN"
            );
            let r = &parse_ptxas_log(&log)["kiln_preflight_probe"];
            assert_eq!(r.shared_bytes, 1200, "{arch}: {log}");
            assert!(r.registers > 0 && !r.spills(), "{arch}: {log}");
        }
    }

    #[test]
    fn a_block_past_the_functions_thread_limit_is_refused_saying_both() {
        assert!(check_block([16, 16, 1], 1024).is_ok());
        assert!(check_block([256, 1, 1], 256).is_ok());
        let e = check_block([16, 16, 1], 128).unwrap_err();
        assert!(
            e.contains("block of 256 threads (16x16x1) exceeds the 128 threads"),
            "{e}"
        );
    }
}

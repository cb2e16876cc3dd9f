//! The system C compiler: `$CC`, else `cc`. `$CC` is a command, words separated by spaces:
//! a compiler (`gcc`, `/usr/bin/clang-16`), or a compiler behind wrappers that distribute or
//! cache compiles (`distcc gcc`, `icecc gcc`, `ccache gcc`). One invocation compiles a batch of
//! kernels (one translation unit) into an object, which the real compiler then links into a
//! shared object locally: distcc only sends `-c` compiles to other machines. Every invocation
//! runs in a private scratch folder under a time limit (`kiln_process`).
//!
//! The cache key holds the *real* compiler's identity (its `--version`, the flags), never the
//! wrappers': an artifact does not depend on where distcc compiled it. For that to be true,
//! `-march=native` is resolved here, on the machine the kernels run on, into the explicit
//! flags it stands for (gcc reports them); otherwise each distcc server would compile for its
//! own CPU. Resolving changes no byte of the output (checked: the shared objects are identical).

use crate::isa::{
    Int8Types, Isa, IsaError, IsaRequest, QuantRequest, AVX2_FLAG, AVX512_FLAGS, ISA_ENV,
    QUANT_ENV, VNNI_FLAG,
};
use crate::runtime;
use kiln_process::{self as process, ChildError};
use kiln_program::BackendError;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The C prelude for code compiled for `isa`: CPU-specific definitions, the shared scalar
/// helpers, the matmul blocks and the packed-weight GEMM/GEMV (`c/gemm.h`), with the blocking
/// constants of [`crate::codegen`] and the panel width of `isa` defined first so that C and
/// Rust agree on them. The whole of it: [`prelude_upto`] with [`Section::Quant`].
pub fn prelude(isa: Isa) -> &'static str {
    prelude_upto(isa, Section::Quant)
}

/// How much of the prelude a translation unit compiles: each section adds headers to the one
/// before, and a unit that needs none of a section's code does not pay for parsing it (~4 ms
/// of gcc for `c/gemm.h`, ~8 ms for the quantized headers, of a ~45 ms unit; issue 27).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    /// `c/prelude.h`: the scalar and vector helpers, `kiln_mm_nt`, the attention's blocks.
    Base,
    /// And `c/gemm.h`: the packed f32 and bf16 GEMM/GEMV (and the types of its scratch,
    /// which the kernels that call it pass on).
    Gemm,
    /// And `c/gemm_quant.h`, `c/gemm_q4k.h`, `c/gemm_q6k.h` and `c/gemm_q5k.h`: the
    /// block-quantized tiles.
    Quant,
}

/// The prelude up to and including `section`: what the runtime object's parts and the kernels'
/// translation units start with (kernels: followed by the runtime's prototypes,
/// [`runtime::kernel_prelude`]).
pub fn prelude_upto(isa: Isa, section: Section) -> &'static str {
    use crate::codegen::{MM_KC, MM_MC, MM_NC};
    static P: [[OnceLock<String>; 3]; 2] = [
        [OnceLock::new(), OnceLock::new(), OnceLock::new()],
        [OnceLock::new(), OnceLock::new(), OnceLock::new()],
    ];
    P[isa as usize][section as usize].get_or_init(|| {
        let defines = format!(
            "#define KILN_NR {}\n#define KILN_MC {MM_MC}\n#define KILN_NC {MM_NC}\n#define KILN_KC {MM_KC}\n",
            isa.panel()
        );
        let base = kiln_render::cstyle::prelude(include_str!("c/prelude.h"));
        let gemm = match section {
            Section::Base => "",
            Section::Gemm => include_str!("c/gemm.h"),
            Section::Quant => concat!(
                include_str!("c/gemm.h"),
                include_str!("c/gemm_quant.h"),
                include_str!("c/gemm_q4k.h"),
                include_str!("c/gemm_q6k.h"),
                include_str!("c/gemm_q5k.h")
            ),
        };
        format!("{defines}{}", base.replace("/* KILN_GEMM */", gemm))
    })
}

/// Compile flags for every kernel. -march=native: kernels run where they are compiled (the
/// cache key names the CPU; see [`CCompiler::compile_flags`] for how it is resolved). No
/// -ffast-math: kernels keep IEEE semantics (inf in masks, NaN propagation).
pub const FLAGS: &[&str] = &[
    "-O3",
    "-march=native",
    "-fPIC",
    "-std=gnu11",
    "-fno-math-errno",
];

/// Link flags: a shared object, with no build id (so equal code gives equal bytes), lazily
/// bindable whatever the toolchain's default: `verify` opens a kernels' module before the
/// runtime object it calls is loaded (see [`crate::runtime`]). Without the C library's start
/// files and default libraries (`-nostdlib`): a kernels' module has no constructors, and the
/// functions it calls outside the runtime (`memcpy`, libm's `expf`, `sinf`) are bound when it
/// is loaded, from the process that loads it, as libm's always were (gcc never links libm by
/// default). Reading the C library's linker scripts, start files and shared objects was
/// ~5 ms of a ~12 ms link, for every compile unit (a ~35 ms fixed cost; issue 27).
pub const LINK_FLAGS: &[&str] = &["-shared", "-nostdlib", "-Wl,--build-id=none", "-Wl,-z,lazy"];

/// Libraries linked after the object: libgcc's static helpers (a 128-bit division, a
/// popcount without the instruction), which `-nostdlib` drops and code may need.
pub const LINK_LIBS: &[&str] = &["-lgcc"];

/// Extra compile flag of the runtime object's parts: only their wrappers are exported.
const RUNTIME_FLAGS: &[&str] = &["-fvisibility=hidden"];

/// Programs that run a compiler given after them: they are not the compiler.
const WRAPPERS: &[&str] = &["distcc", "icecc", "ccache", "sccache"];

/// Whether the CPU this process runs on has a feature (`is_x86_feature_detected!`; false off x86-64).
macro_rules! host_has {
    ($feature:tt) => {{
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!($feature)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }};
}

#[derive(Clone, Debug)]
pub struct CCompiler {
    /// The command: a program and its leading arguments (`distcc gcc`).
    pub command: Vec<String>,
    /// Where the choice came from, for error messages.
    pub origin: &'static str,
    /// What `-march=native` means here, asked of the real compiler once.
    native: OnceLock<Option<Vec<String>>>,
    /// The kernels' vector ISA asked for (`KILN_CPU_ISA`, or [`CCompiler::with_isa`]).
    isa_request: Result<IsaRequest, IsaError>,
    /// The quantized matmul path asked for (`KILN_CPU_QUANT`, or [`CCompiler::with_quant`]).
    quant_request: Result<QuantRequest, IsaError>,
    /// How long one invocation may take before its process group is killed.
    pub timeout: Duration,
    /// [`CCompiler::base_identity`], asked of the compiler once.
    base: OnceLock<Result<String, String>>,
    /// Whether kernels call the runtime object (the default) or compile the code it holds
    /// themselves (`KILN_CPU_RUNTIME=off`: for A/B measurements, and for processes that bind
    /// symbols when a library is loaded, `LD_BIND_NOW`).
    pub use_runtime: bool,
}

/// The variable that turns the runtime object off (`off`).
pub const RUNTIME_ENV: &str = "KILN_CPU_RUNTIME";

impl CCompiler {
    /// `$CC` if set, else `cc`; the time limit from `KILN_COMPILE_TIMEOUT`, else the default.
    pub fn from_env() -> CCompiler {
        match std::env::var("CC").ok().filter(|v| !v.trim().is_empty()) {
            Some(cc) => CCompiler::command(&cc, "$CC"),
            None => CCompiler::command("cc", "the default `cc`"),
        }
    }

    /// A command line such as `distcc gcc` (split at spaces). A relative path in it
    /// (`./mycc`) is made absolute here: compiles run in a scratch folder, where it would name
    /// nothing (the `--version` check, run here, would pass and every kernel then fail).
    pub fn command(line: &str, origin: &'static str) -> CCompiler {
        let cwd = std::env::current_dir().ok();
        let absolute = |w: &str| -> String {
            match &cwd {
                Some(d) if !w.starts_with('-') && w.contains('/') && Path::new(w).is_relative() => {
                    d.join(w).to_string_lossy().into_owned()
                }
                _ => w.to_string(),
            }
        };
        CCompiler {
            command: line.split_whitespace().map(absolute).collect(),
            origin,
            native: OnceLock::new(),
            isa_request: IsaRequest::from_env(),
            quant_request: QuantRequest::from_env(),
            timeout: kiln_process::default_compile_timeout(),
            base: OnceLock::new(),
            use_runtime: !matches!(std::env::var(RUNTIME_ENV).as_deref(), Ok("off" | "0")),
        }
    }

    /// The same compiler, kernels for `isa` whatever `KILN_CPU_ISA` says (tests compare both).
    pub fn with_isa(mut self, isa: Isa) -> CCompiler {
        self.isa_request = Ok(IsaRequest::Force(isa));
        self.base = OnceLock::new();
        self
    }

    /// The same compiler, quantized matmuls on the path `quant` asks for whatever
    /// `KILN_CPU_QUANT` says (tests compare both).
    pub fn with_quant(mut self, quant: QuantRequest) -> CCompiler {
        self.quant_request = Ok(quant);
        self
    }

    /// Which quantized types' matmuls the kernels take on the integer path (`kiln_quant_int8`
    /// in the prelude, [`Int8Types`]): with AVX-512 kernels on a target with VNNI all five,
    /// with AVX2 kernels on a target with AVX2 those of [`Int8Types::AVX2`]; none with
    /// `KILN_CPU_QUANT=dequant`.
    pub fn quant_int8(&self) -> Result<Int8Types, BackendError> {
        let request = self
            .quant_request
            .clone()
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        let available = match self.int8_primitives()? {
            Some(Isa::Avx512) => Int8Types::VNNI,
            Some(Isa::Avx2) => Int8Types::AVX2,
            None => Int8Types::NONE,
        };
        match request {
            QuantRequest::Dequant => Ok(Int8Types::NONE),
            QuantRequest::Auto => Ok(available),
            QuantRequest::Int8 if !available.is_empty() => Ok(available),
            QuantRequest::Int8 => Err(BackendError::Unavailable(format!(
                "{QUANT_ENV}=int8, but no quantized type has an integer path in these kernels (`{}` kernels: the integer path needs AVX-512 with VNNI for every type, or AVX2 for {}; -march=native means `{}`)",
                self.isa()?.name(),
                Int8Types::AVX2,
                self.native().map_or("(not reported)".to_string(), |f| f.join(" "))
            ))),
        }
    }

    /// The ISA whose integer primitives the kernels have (the prelude's `KILN_QINT8`): AVX-512
    /// kernels on a target with VNNI, AVX2 kernels on a target with AVX2; None otherwise.
    fn int8_primitives(&self) -> Result<Option<Isa>, BackendError> {
        Ok(match self.isa()? {
            Isa::Avx512 if self.target_has_vnni() => Some(Isa::Avx512),
            Isa::Avx2 if self.target_has_avx2() => Some(Isa::Avx2),
            _ => None,
        })
    }

    fn target_has_avx2(&self) -> bool {
        self.target_has(AVX2_FLAG, host_has!("avx2"))
    }

    fn target_has_vnni(&self) -> bool {
        self.target_has(VNNI_FLAG, host_has!("avx512vnni"))
    }

    /// Whether the compiler's target has the feature of `flag` (`-mavx2`, ...): not where the
    /// command turns it off (`-mno-...`), else as `-march=native` resolves, else as the CPU this
    /// process runs on reports (`host`).
    fn target_has(&self, flag: &str, host: bool) -> bool {
        let off = flag.replacen("-m", "-mno-", 1);
        if self.real().contains(&off) {
            return false;
        }
        match self.native() {
            Some(flags) => flags.iter().any(|g| g == flag),
            None => host,
        }
    }

    /// Whether the compiler's target (`-march=native` as resolved, and the command's own
    /// flags) has the AVX-512 subsets the kernels use.
    fn target_has_avx512(&self) -> bool {
        if self.real().iter().any(|w| w.starts_with("-mno-avx512")) {
            return false;
        }
        match self.native() {
            Some(flags) => AVX512_FLAGS.iter().all(|f| flags.iter().any(|g| g == f)),
            // A compiler that does not say what -march=native means targets this CPU.
            None => Isa::host_has_avx512(),
        }
    }

    /// The vector ISA the kernels are compiled for: `KILN_CPU_ISA` if set, else AVX-512 where
    /// the compiler's target has it, else AVX2 (see [`crate::isa`]).
    pub fn isa(&self) -> Result<Isa, BackendError> {
        let request = self
            .isa_request
            .clone()
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        match request {
            IsaRequest::Auto if self.target_has_avx512() => Ok(Isa::Avx512),
            IsaRequest::Auto | IsaRequest::Force(Isa::Avx2) => Ok(Isa::Avx2),
            IsaRequest::Force(Isa::Avx512) if self.target_has_avx512() => Ok(Isa::Avx512),
            IsaRequest::Force(Isa::Avx512) => Err(BackendError::Unavailable(format!(
                "{ISA_ENV}=avx512, but the C compiler `{}` does not target AVX-512 (F, BW, DQ and VL) here: -march=native means `{}`",
                self.real().join(" "),
                self.native().map_or("(not reported)".to_string(), |f| f.join(" "))
            ))),
        }
    }

    fn native(&self) -> Option<&Vec<String>> {
        self.native
            .get_or_init(|| native_flags(&self.real(), self.timeout))
            .as_ref()
    }

    /// The same compiler with another time limit per invocation.
    pub fn with_timeout(mut self, timeout: Duration) -> CCompiler {
        self.timeout = timeout;
        self
    }

    fn shown(&self) -> String {
        self.command.join(" ")
    }

    /// The compiler behind any wrappers: `gcc` in `distcc gcc` (`cc` for a bare `distcc`,
    /// which runs `cc`).
    pub fn real(&self) -> Vec<String> {
        let start = self
            .command
            .iter()
            .position(|w| {
                let name = Path::new(w)
                    .file_name()
                    .map_or(w.as_str(), |n| n.to_str().unwrap_or(w));
                !WRAPPERS.contains(&name)
            })
            .unwrap_or(self.command.len());
        match &self.command[start..] {
            [] => vec!["cc".into()],
            real => real.to_vec(),
        }
    }

    fn run(&self, words: &[String]) -> Command {
        let mut c = Command::new(&words[0]);
        c.args(&words[1..]);
        c
    }

    /// Compiler version line, flags, CPU, ISA, the kernels' prelude and the runtime object's
    /// tag: everything that changes the machine code. The real compiler's, not a wrapper's.
    pub fn identity(&self) -> Result<String, BackendError> {
        // The prelude is part of every translation unit, so it is part of every cache key; it
        // names the runtime's functions by their tag, so a kernel's key changes with the
        // runtime's code too. A quantized path asked for but unavailable is an error here.
        self.quant_int8()?;
        // (The GEMM section's: the base one is the same code less the GEMM's.)
        let prelude = blake3::hash(self.kernel_prelude(Section::Gemm)?.as_bytes()).to_hex();
        let runtime = match self.use_runtime {
            true => self.runtime_tag()?,
            false => "off".to_string(),
        };
        Ok(format!(
            "{} | prelude {} | runtime {runtime}",
            self.base_identity()?,
            &prelude[..16]
        ))
    }

    /// What precedes kernels in their translation units: the prelude (up to `section` with the
    /// runtime, [`runtime::kernel_section`]), and the runtime object's prototypes unless it is off.
    fn kernel_prelude(&self, section: Section) -> Result<String, BackendError> {
        let isa = self.isa()?;
        Ok(match self.use_runtime {
            true => runtime::kernel_prelude(isa, &self.runtime_tag()?, section),
            false => prelude(isa).to_string(),
        })
    }

    /// The runtime object's tag ([`crate::runtime`]): a hash of its code and of
    /// [`CCompiler::base_identity`].
    pub fn runtime_tag(&self) -> Result<String, BackendError> {
        let mut h = blake3::Hasher::new();
        h.update(self.base_identity()?.as_bytes());
        h.update(RUNTIME_FLAGS.join(" ").as_bytes());
        h.update(runtime::code(self.isa()?).as_bytes());
        Ok(h.finalize().to_hex()[..16].to_string())
    }

    /// Compiler version line, flags, CPU and ISA, asked of the compiler once.
    fn base_identity(&self) -> Result<String, BackendError> {
        self.base
            .get_or_init(|| self.ask_identity().map_err(|e| e.to_string()))
            .clone()
            .map_err(BackendError::Unavailable)
    }

    fn ask_identity(&self) -> Result<String, BackendError> {
        if self.command.is_empty() {
            return Err(BackendError::Unavailable(format!(
                "C compiler ({}) is empty: set CC to a compiler such as gcc",
                self.origin
            )));
        }
        let real = self.real();
        // Like every invocation, in a scratch folder: a compiler (or a wrapper script) may
        // write into its working directory, which must never be the user's.
        let scratch = process::scratch_dir("kiln-cc-")
            .map_err(|e| BackendError::io("cannot create a temporary folder", e))?;
        let mut cmd = self.run(&real);
        cmd.arg("--version").current_dir(scratch.path());
        let out = process::run(&mut cmd, self.timeout).map_err(|e| match e {
            ChildError::Spawn(e) => BackendError::Unavailable(format!(
                "C compiler `{}` ({}) could not be run: {e}. kiln's CPU backend needs a C compiler: install one (Debian/Ubuntu: `apt-get install gcc`) or set CC to its path",
                real.join(" "),
                self.origin
            )),
            e => BackendError::from(e),
        })?;
        if !out.status.success() {
            return Err(BackendError::Unavailable(format!(
                "C compiler `{}` ({}) failed on --version: {}",
                real.join(" "),
                self.origin,
                process::diagnostics(&out.stderr).trim()
            )));
        }
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        Ok(format!(
            "{} | {version} | {} {} | {} | {} kernels",
            real.join(" "),
            self.compile_flags().join(" "),
            [LINK_FLAGS, LINK_LIBS].concat().join(" "),
            cpu_identity(),
            self.isa()?.name(),
        ))
    }

    /// [`FLAGS`] with `-march=native` replaced by the flags it means on this machine, as the
    /// real compiler reports them (gcc; unchanged where the compiler does not report them),
    /// and `-mno-avx512f` last where the AVX2 kernels are forced on an AVX-512 target.
    pub fn compile_flags(&self) -> Vec<String> {
        let native = self.native();
        let mut flags: Vec<String> = FLAGS
            .iter()
            .flat_map(|&f| match (f, native) {
                ("-march=native", Some(n)) => n.clone(),
                _ => vec![f.to_string()],
            })
            .collect();
        if matches!(self.isa(), Ok(Isa::Avx2)) && self.target_has_avx512() {
            flags.push("-mno-avx512f".into());
        }
        // Only where it changes the kernels (the prelude would have the integer primitives).
        if matches!(self.quant_request, Ok(QuantRequest::Dequant))
            && matches!(self.int8_primitives(), Ok(Some(_)))
        {
            flags.push("-DKILN_QUANT_DEQUANT".into());
        }
        flags
    }

    /// Compiles one translation unit of kernels (after the kernels' prelude, which calls the
    /// runtime object); returns the shared object's bytes or the diagnostics.
    pub fn compile(&self, sources: &[&str]) -> Result<Vec<u8>, BackendError> {
        let section = runtime::kernel_section(sources.iter().copied());
        let unit =
            kiln_render::translation_unit(&self.kernel_prelude(section)?, sources.iter().copied());
        self.compile_unit(&unit, &[])
    }

    /// Compiles one part of the runtime object (its whole translation unit,
    /// [`runtime::part_source`]).
    pub fn compile_runtime(&self, source: &str) -> Result<Vec<u8>, BackendError> {
        self.compile_unit(source, RUNTIME_FLAGS)
    }

    /// The source of runtime part `part` for this compiler, and its name.
    pub fn runtime_part(&self, part: &str) -> Result<(String, String), BackendError> {
        let tag = self.runtime_tag()?;
        Ok((
            runtime::part_name(part, &tag),
            runtime::part_source(self.isa()?, &tag, part),
        ))
    }

    fn compile_unit(&self, unit: &str, extra_flags: &[&str]) -> Result<Vec<u8>, BackendError> {
        let dir = process::scratch_dir("kiln-cc-")
            .map_err(|e| BackendError::io("cannot create a temporary folder", e))?;
        std::fs::write(dir.path().join("kernels.c"), unit)
            .map_err(|e| BackendError::io("cannot write the kernel source", e))?;
        // Compile (through the wrappers: this is what distcc distributes), then link locally.
        let mut compile = self.run(&self.command);
        compile.args(self.compile_flags()).args(extra_flags).args([
            "-c",
            "-o",
            "kernels.o",
            "kernels.c",
        ]);
        self.invoke(compile, dir.path(), &self.shown())?;
        let real = self.real();
        let mut link = self.run(&real);
        link.args(LINK_FLAGS)
            .args(["-o", "kernels.so", "kernels.o"])
            .args(LINK_LIBS);
        self.invoke(link, dir.path(), &real.join(" "))?;
        std::fs::read(dir.path().join("kernels.so"))
            .map_err(|e| BackendError::io("cannot read the compiled kernels", e))
    }

    fn invoke(&self, mut cmd: Command, dir: &Path, shown: &str) -> Result<(), BackendError> {
        cmd.current_dir(dir);
        let out = process::run(&mut cmd, self.timeout).map_err(|e| match e {
            ChildError::Spawn(e) => BackendError::io(format!("cannot run C compiler `{shown}`"), e),
            e => BackendError::from(e),
        })?;
        if !out.status.success() {
            let mut msg = process::diagnostics(&out.stderr);
            if msg.trim().is_empty() {
                msg = format!("C compiler `{shown}` exited with {}", out.status);
            }
            return Err(BackendError::Rejected(msg));
        }
        Ok(())
    }
}

/// What `-march=native` stands for on this machine: the `-m...` and `--param` options gcc's
/// driver passes to `cc1` for it (`gcc -march=native -E -v -`). None where the compiler does
/// not say (clang prints another format): then `-march=native` stays as it is.
fn native_flags(real: &[String], timeout: Duration) -> Option<Vec<String>> {
    // Run where it can write nothing of the user's (a wrapper script need not be a real gcc).
    let scratch = process::scratch_dir("kiln-cc-").ok()?;
    let mut cmd = Command::new(&real[0]);
    cmd.args(&real[1..])
        .args(["-march=native", "-E", "-v", "-"])
        .current_dir(scratch.path());
    let out = process::run(&mut cmd, timeout).ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("cc1") && l.contains(" -march="))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut flags = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if w == "--param" && i + 1 < words.len() {
            flags.push(format!("--param={}", words[i + 1]));
            i += 2;
            continue;
        }
        if w.starts_with("-m") || w.starts_with("--param=") {
            flags.push(w.to_string());
        }
        i += 1;
    }
    flags
        .iter()
        .any(|f| f.starts_with("-march=") && f != "-march=native")
        .then_some(flags)
}

/// CPU model and feature flags (hashed): -march=native output depends on them.
fn cpu_identity() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split(':').nth(1))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let flags = blake3::hash(field("flags").as_bytes()).to_hex();
        format!(
            "{} {} flags:{}",
            std::env::consts::ARCH,
            field("model name"),
            &flags[..12]
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `source` compiled by the system's `cc` with `flags` into a shared library and loaded
    /// (the folder holding it comes back too: the library lives as long as both).
    fn selftest_library(
        source: &str,
        flags: &[String],
    ) -> (tempfile::TempDir, libloading::Library) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("selftest.c");
        let so = dir.path().join("selftest.so");
        std::fs::write(&src, source).unwrap();
        let out = std::process::Command::new("cc")
            .args(flags)
            .args(["-fPIC", "-shared", "-std=gnu11", "-fno-math-errno", "-o"])
            .arg(&so)
            .arg(&src)
            .arg("-lm")
            .output()
            .expect("run cc");
        assert!(
            out.status.success(),
            "cc {flags:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SAFETY: a library compiled just now from the test's own C, with no initialisers.
        let lib = unsafe { libloading::Library::new(&so).unwrap() };
        (dir, lib)
    }

    /// `kiln_selftest` of `source` (compiled as [`selftest_library`] does) handed to `call`
    /// while its library is loaded.
    ///
    /// # Safety
    /// `F` is the C signature of `source`'s `kiln_selftest`.
    unsafe fn with_selftest<F: Copy, R>(
        source: &str,
        flags: &[String],
        call: impl FnOnce(F) -> R,
    ) -> R {
        let (_dir, lib) = selftest_library(source, flags);
        // SAFETY: the caller's `F` is the function's signature.
        let f = unsafe { *lib.get::<F>(b"kiln_selftest").unwrap() };
        call(f)
    }

    /// The ISA whose kernels this CPU runs: AVX-512 where it has it, else AVX2.
    fn host_isa() -> Isa {
        if Isa::host_has_avx512() {
            Isa::Avx512
        } else {
            Isa::Avx2
        }
    }

    #[test]
    fn the_real_compiler_is_behind_the_wrappers() {
        let real = |cc: &str| CCompiler::command(cc, "test").real().join(" ");
        assert_eq!(real("gcc"), "gcc");
        assert_eq!(real("distcc gcc"), "gcc");
        assert_eq!(
            real("/usr/bin/ccache /usr/bin/distcc gcc-12 -m64"),
            "gcc-12 -m64"
        );
        assert_eq!(real("distcc"), "cc");
    }

    #[test]
    fn wrappers_do_not_change_the_identity() {
        let plain = CCompiler::command("gcc", "test").identity().unwrap();
        let distcc = CCompiler::command("distcc gcc", "test").identity().unwrap();
        assert_eq!(plain, distcc);
        // gcc says what -march=native means here; the key holds that, not "native".
        assert!(
            plain.contains(" -march=") && !plain.contains("-march=native"),
            "{plain}"
        );
        let other = CCompiler::command("gcc -fno-tree-vectorize", "test")
            .identity()
            .unwrap();
        assert_ne!(plain, other, "compiler arguments are part of the identity");
    }

    /// The AVX-512 prelude (32-column panels) on a target without AVX-512 stops the compile
    /// with a message, instead of kernels that read panels with the wrong stride.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn panels_for_another_isa_do_not_compile() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("mismatch.c");
        std::fs::write(&src, prelude(Isa::Avx512)).unwrap();
        let out = std::process::Command::new("cc")
            .args(["-O0", "-march=x86-64-v3", "-std=gnu11", "-c", "-o"])
            .arg(dir.path().join("mismatch.o"))
            .arg(&src)
            .output()
            .expect("run cc");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("KILN_NR does not match"), "{err}");
    }

    /// The ISA is part of the identity (and so of every cache key): forcing AVX2 on an
    /// AVX-512 machine adds `-mno-avx512f` and changes the prelude's panel width.
    #[test]
    fn the_isa_is_part_of_the_identity() {
        let avx2 = CCompiler::command("gcc", "test").with_isa(Isa::Avx2);
        assert_eq!(avx2.isa().unwrap(), Isa::Avx2);
        let id2 = avx2.identity().unwrap();
        assert!(id2.contains("avx2 kernels"), "{id2}");
        let avx512 = CCompiler::command("gcc", "test").with_isa(Isa::Avx512);
        match avx512.isa() {
            Ok(isa) => {
                assert_eq!(isa, Isa::Avx512);
                assert!(
                    avx2.compile_flags().last().unwrap() == "-mno-avx512f",
                    "{:?}",
                    avx2.compile_flags()
                );
                assert_ne!(avx512.identity().unwrap(), id2);
            }
            Err(e) => {
                assert!(e.to_string().contains("KILN_CPU_ISA=avx512"), "{e}");
                eprintln!("skipping the AVX-512 half: {e}");
            }
        }
    }

    /// The packed GEMM/GEMV of `c/gemm.h` against plain `fmaf` chains, compiled for each ISA
    /// this CPU runs: baseline x86-64 (the portable C), x86-64-v3 (the AVX2 kernels) and
    /// x86-64-v4 (the AVX-512 ones), bit for bit: f32 and bf16 panels, 1 to 13 rows (the GEMV
    /// and the micro-kernel with row remainders), 75 columns (partial panels), k = 1029 (across
    /// the k block), product columns on and off a panel boundary.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_packed_kernels_are_fma_chains_on_every_isa() {
        let check = r#"
static float kiln_test_value(int64_t i) { return (float)((i * 7919) % 2001 - 1000) / 1000.0f; }
int kiln_selftest(void) {
    enum { M = 13, N = 75, K = 1029 };
    const int64_t np = (N + KILN_NR - 1) / KILN_NR;
    float *a = malloc(sizeof(float) * M * K), *w = malloc(sizeof(float) * N * K);
    float *wpf = calloc(np * K * KILN_NR, sizeof(float));
    uint16_t *wpb = calloc(np * K * KILN_NR, sizeof(uint16_t));
    float *t = malloc(sizeof(float) * KILN_MC * (KILN_NC + KILN_NR));
    float *abuf = malloc(sizeof(float) * KILN_MC * K), *bbuf = malloc(sizeof(float) * KILN_KC * KILN_NR);
    for (int64_t i = 0; i < M * K; ++i) a[i] = kiln_test_value(i);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
            const uint32_t bits = kiln_f2u(kiln_test_value(3 * (n * K + k) + 1)) & 0xffff0000u;
            const int64_t at = (n / KILN_NR) * K * KILN_NR + k * KILN_NR;
            w[n * K + k] = kiln_u2f(bits);
            wpf[at + n % KILN_NR] = kiln_u2f(bits);
            wpb[at + kiln_bf16_pos(n % KILN_NR)] = (uint16_t)(bits >> 16);
        }
    int bad = 0;
    const int64_t rows[] = {1, 2, 3, 4, 5, 12, 13}, cols[] = {0, KILN_NR, 8};
    for (int ri = 0; ri < 7; ++ri)
        for (int ci = 0; ci < 3; ++ci)
            for (int bf = 0; bf < 2; ++bf) {
                const int64_t m = rows[ri], c0 = cols[ci], tn = kiln_min(N - c0, KILN_NC);
                kiln_gemm_state st = {0, 0};
                kiln_gemm_ctx ctx = {abuf, bbuf, &st};
                if (bf) kiln_packed_tile_bf16(&ctx, a, K, wpb, K, 0, m, c0, tn, t, KILN_NC);
                else kiln_packed_tile_f32(&ctx, a, K, wpf, K, 0, m, c0, tn, t, KILN_NC);
                for (int64_t i = 0; i < m; ++i)
                    for (int64_t j = 0; j < tn; ++j) {
                        float acc = 0.0f;
                        for (int64_t k = 0; k < K; ++k) acc = fmaf(a[i * K + k], w[(c0 + j) * K + k], acc);
                        bad += acc != t[i * KILN_NC + j];
                    }
            }
    free(a); free(w); free(wpf); free(wpb); free(t); free(abuf); free(bbuf);
    return bad;
}
"#;
        let mut targets = vec![("x86-64", Isa::Avx2)];
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            targets.push(("x86-64-v3", Isa::Avx2));
        }
        if Isa::host_has_avx512() {
            targets.push(("x86-64-v4", Isa::Avx512));
        } else {
            eprintln!("skipping the AVX-512 kernels: this CPU has no AVX-512");
        }
        for (march, isa) in targets {
            // SAFETY: the checker above defines `int kiln_selftest(void)`.
            let bad = unsafe {
                with_selftest(
                    &format!("{}\n#include <stdlib.h>\n{check}", prelude(isa)),
                    &["-O2".into(), format!("-march={march}")],
                    |f: unsafe extern "C" fn() -> i32| f(),
                )
            };
            assert_eq!(
                bad, 0,
                "{march} ({isa:?}): products that are not fmaf chains"
            );
        }
    }

    /// `kiln_mm_nt` and `kiln_mm_nt_bf16` (Q K^T and the small products): a row computed alone
    /// equals the same row inside a call of 2 to 7 rows (the M <= 2 path against the register
    /// blocks), for K with and without a scalar tail, and the results do not depend on GCC's
    /// loop vectoriser (the runtime compiles them without it, `runtime::MM_NT_OPTIMIZE`): the
    /// tails are explicit `fmaf` chains. Written `s += a * b`, the bf16 blocks' tails once gave
    /// a row alone other last bits than the same row in a call of 3 or more.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn mm_nt_rows_are_the_same_alone_and_in_blocks_with_or_without_the_vectoriser() {
        let check = r#"
static float kiln_test_value(int64_t i) { return (float)((i * 7919) % 2001 - 1000) / 1000.0f; }
static uint64_t kiln_test_mix(uint64_t h, float v) { return (h ^ kiln_f2u(v)) * 1099511628211ull; }
int64_t kiln_selftest(uint64_t *digest) {
    enum { MM = 7, NN = 9, LD = 300 };
    static float a[MM * LD], b[NN * LD], c[MM * NN], r[NN];
    static uint16_t bb[NN * LD];
    for (int64_t i = 0; i < MM * LD; ++i) a[i] = kiln_test_value(i);
    for (int64_t i = 0; i < NN * LD; ++i) {
        b[i] = kiln_test_value(3 * i + 1);
        bb[i] = (uint16_t)(kiln_f2u(b[i]) >> 16);
    }
    const int64_t ks[] = {1, 3, 15, 16, 17, 31, 33, 47, 131, 300};
    int64_t bad = 0;
    uint64_t h = 1469598103934665603ull;
    for (int bf = 0; bf < 2; ++bf)
        for (int ki = 0; ki < 10; ++ki)
            for (int64_t m = 1; m <= MM; ++m)
                for (int64_t n = 1; n <= NN; ++n) {
                    const int64_t k = ks[ki];
                    if (bf) kiln_mm_nt_bf16(a, LD, bb, LD, c, NN, m, n, k);
                    else kiln_mm_nt(a, LD, b, LD, c, NN, m, n, k);
                    for (int64_t i = 0; i < m; ++i) {
                        if (bf) kiln_mm_nt_bf16(a + i * LD, LD, bb, LD, r, NN, 1, n, k);
                        else kiln_mm_nt(a + i * LD, LD, b, LD, r, NN, 1, n, k);
                        for (int64_t j = 0; j < n; ++j) {
                            bad += kiln_f2u(r[j]) != kiln_f2u(c[i * NN + j]);
                            h = kiln_test_mix(h, c[i * NN + j]);
                        }
                    }
                }
    *digest = h;
    return bad;
}
"#;
        let isa = host_isa();
        let mut digests = Vec::new();
        for extra in [None, Some("-fno-tree-loop-vectorize")] {
            let flags: Vec<String> = ["-O3", "-march=native"]
                .into_iter()
                .chain(extra)
                .map(String::from)
                .collect();
            let mut digest = 0u64;
            // SAFETY: the checker above defines `int64_t kiln_selftest(uint64_t *)`.
            let bad = unsafe {
                with_selftest(
                    &format!("{}\n{check}", prelude(isa)),
                    &flags,
                    |f: unsafe extern "C" fn(*mut u64) -> i64| f(&mut digest),
                )
            };
            assert_eq!(
                bad, 0,
                "{extra:?}: rows alone differ from the same rows in a call"
            );
            digests.push(digest);
        }
        assert_eq!(
            digests[0], digests[1],
            "kiln_mm_nt's results depend on the loop vectoriser"
        );
    }

    /// A 16-bit KV cache's keys and values widened in registers (`kiln_mm_nt_f16`,
    /// `kiln_mm_nt_bf16`, `kiln_att_pv_f16`, `kiln_att_pv_bf16`) give the bits of the f32
    /// kernels (`kiln_mm_nt`, `kiln_att_pv`) over the same values widened first: every path
    /// (decode's M <= 2, the register blocks, the K tail, the keys left; the P V tiles, passes
    /// and columns left), f16 over its whole finite range (subnormals and signed zeros too).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn sixteen_bit_keys_and_values_give_the_f32_kernels_bits() {
        let check = r#"
static float kiln_test_value(int64_t i) { return (float)((i * 7919) % 2001 - 1000) / 1000.0f; }
/* f16 bits over the whole finite range (subnormals, zeros of both signs), bf16 the top half of a value */
static uint16_t kiln_test_f16(int64_t i) { return (uint16_t)(((i * 40503) & 0x7bff) ^ ((i & 1) << 15)); }
int64_t kiln_selftest(void) {
    enum { MM = 7, NN = 9, LD = 300, PK = 64, PN = 136 };
    static float a[MM * LD], w[NN * LD], c[MM * NN], cw[MM * NN];
    static uint16_t h[2][NN * LD];
    static float p[MM * PK], o[MM * PN], ow[MM * PN], vw[PK * PN];
    static uint16_t vh[2][PK * PN];
    for (int64_t i = 0; i < MM * LD; ++i) a[i] = kiln_test_value(i);
    for (int64_t i = 0; i < NN * LD; ++i) {
        h[0][i] = kiln_test_f16(i);
        h[1][i] = (uint16_t)(kiln_f2u(kiln_test_value(3 * i + 1)) >> 16);
    }
    for (int64_t i = 0; i < MM * PK; ++i) p[i] = kiln_test_value(5 * i + 2) + 1.0f;
    for (int64_t i = 0; i < PK * PN; ++i) {
        vh[0][i] = kiln_test_f16(7 * i + 3);
        vh[1][i] = (uint16_t)(kiln_f2u(kiln_test_value(11 * i + 4)) >> 16);
    }
    const int64_t ks[] = {1, 3, 15, 16, 17, 31, 33, 47, 131, 300};
    const int64_t pks[] = {1, 2, 7, 64}, pns[] = {1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 100, 128, 129, 136};
    int64_t bad = 0;
    for (int bf = 0; bf < 2; ++bf) {
        /* Q K^T: keys widened in registers against kiln_mm_nt over the widened keys */
        for (int64_t i = 0; i < NN * LD; ++i) w[i] = bf ? kiln_bf16_to_f32(h[1][i]) : kiln_f16_to_f32(h[0][i]);
        for (int ki = 0; ki < 10; ++ki)
            for (int64_t m = 1; m <= MM; ++m)
                for (int64_t n = 1; n <= NN; ++n) {
                    const int64_t k = ks[ki];
                    if (bf) kiln_mm_nt_bf16(a, LD, h[1], LD, c, NN, m, n, k);
                    else kiln_mm_nt_f16(a, LD, h[0], LD, c, NN, m, n, k);
                    kiln_mm_nt(a, LD, w, LD, cw, NN, m, n, k);
                    for (int64_t i = 0; i < m; ++i)
                        for (int64_t j = 0; j < n; ++j) bad += kiln_f2u(c[i * NN + j]) != kiln_f2u(cw[i * NN + j]);
                }
        /* O += P V: values widened in registers against kiln_att_pv over the widened values */
        for (int64_t i = 0; i < PK * PN; ++i) vw[i] = bf ? kiln_bf16_to_f32(vh[1][i]) : kiln_f16_to_f32(vh[0][i]);
        for (int ki = 0; ki < 4; ++ki)
            for (int ni = 0; ni < 14; ++ni)
                for (int64_t m = 1; m <= MM; ++m) {
                    const int64_t k = pks[ki], n = pns[ni];
                    for (int64_t i = 0; i < MM * PN; ++i) o[i] = ow[i] = kiln_test_value(13 * i + 5);
                    if (bf) kiln_att_pv_bf16(o, PN, p, PK, vh[1], PN, m, k, n);
                    else kiln_att_pv_f16(o, PN, p, PK, vh[0], PN, m, k, n);
                    kiln_att_pv(ow, PN, p, PK, vw, PN, m, k, n);
                    for (int64_t i = 0; i < MM * PN; ++i) bad += kiln_f2u(o[i]) != kiln_f2u(ow[i]);
                }
    }
    return bad;
}
"#;
        let isa = host_isa();
        let flags: Vec<String> = ["-O3", "-march=native"].map(String::from).to_vec();
        // SAFETY: the checker above defines `int64_t kiln_selftest(void)`.
        let bad = unsafe {
            with_selftest(
                &format!("{}\n{check}", prelude(isa)),
                &flags,
                |f: unsafe extern "C" fn() -> i64| f(),
            )
        };
        assert_eq!(bad, 0, "16-bit operands differ from the f32 kernels");
    }

    /// `-march=native` is not always AVX2 (QEMU's default CPU models, some Atoms and
    /// Celerons): the prelude's building blocks must compile for baseline x86-64 too (a register
    /// constraint for 32-byte vectors once broke every kernel there).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_prelude_compiles_for_baseline_x86_64() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("baseline.c");
        let uses = "void kiln_uses(float *o, const float *a, float *s) {\n\
            kiln_mm_nt(a, 64, a, 64, o, 64, 3, 5, 64);\n\
            kiln_att_pv(o, 40, s, 64, a, 40, 3, 9, 40);\n\
            kiln_mm_nt_f16(a, 64, (const uint16_t *)a, 64, o, 64, 3, 5, 64);\n\
            kiln_att_pv_f16(o, 40, s, 64, (const uint16_t *)a, 40, 3, 9, 40);\n\
            kiln_att_pv_bf16(o, 40, s, 64, (const uint16_t *)a, 40, 3, 9, 40);\n\
            o[0] += kiln_softmax_weights(s, 13, 0.5f);\n\
            o[1] += kiln_maxv(s, 13);\n}\n";
        std::fs::write(&src, format!("{}\n{uses}", prelude(Isa::Avx2))).unwrap();
        let out = std::process::Command::new("cc")
            .args([
                "-O2",
                "-march=x86-64",
                "-std=gnu11",
                "-fno-math-errno",
                "-c",
                "-o",
            ])
            .arg(dir.path().join("baseline.o"))
            .arg(&src)
            .output()
            .expect("run cc");
        assert!(
            out.status.success(),
            "the prelude does not compile with -march=x86-64:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

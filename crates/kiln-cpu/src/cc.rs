//! The system C compiler: `$CC`, else `cc`. `$CC` is a command, words separated by spaces:
//! a compiler (`gcc`, `/usr/bin/clang-16`), or a compiler behind wrappers that distribute or
//! cache compiles (`distcc gcc`, `icecc gcc`, `ccache gcc`). One invocation compiles a batch of
//! kernels (one translation unit) into an object, which the real compiler then links into a
//! shared object locally: distcc only sends `-c` compiles to other machines. Every invocation
//! runs in a private scratch folder under a time limit (`kiln_compile::process`).
//!
//! The cache key holds the *real* compiler's identity (its `--version`, the flags), never the
//! wrappers': an artifact does not depend on where distcc compiled it. For that to be true,
//! `-march=native` is resolved here, on the machine the kernels run on, into the explicit
//! flags it stands for (gcc reports them); otherwise each distcc server would compile for its
//! own CPU. Resolving changes no byte of the output (checked: the shared objects are identical).

use kiln_compile::process::{self, ChildError};
use kiln_compile::BackendError;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The C prelude: CPU-specific definitions, the shared scalar helpers, the matmul blocks and
/// the packed-weight GEMM/GEMV (`c/gemm.h`), with the blocking constants of
/// [`crate::codegen`] defined first so that C and Rust agree on them.
pub fn prelude() -> &'static str {
    use crate::codegen::{MM_KC, MM_MC, MM_NC};
    use crate::pack::PANEL;
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| {
        let defines = format!(
            "#define KILN_NR {PANEL}\n#define KILN_MC {MM_MC}\n#define KILN_NC {MM_NC}\n#define KILN_KC {MM_KC}\n"
        );
        let base = kiln_render::cstyle::prelude(include_str!("c/prelude.h"));
        format!("{defines}{}", base.replace("/* KILN_GEMM */", include_str!("c/gemm.h")))
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

/// Link flags: a shared object, with no build id (so equal code gives equal bytes).
pub const LINK_FLAGS: &[&str] = &["-shared", "-Wl,--build-id=none"];

/// Programs that run a compiler given after them: they are not the compiler.
const WRAPPERS: &[&str] = &["distcc", "icecc", "ccache", "sccache"];

#[derive(Clone, Debug)]
pub struct CCompiler {
    /// The command: a program and its leading arguments (`distcc gcc`).
    pub command: Vec<String>,
    /// Where the choice came from, for error messages.
    pub origin: &'static str,
    /// What `-march=native` means here, asked of the real compiler once.
    native: OnceLock<Option<Vec<String>>>,
    /// How long one invocation may take before its process group is killed.
    pub timeout: Duration,
}

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
            timeout: kiln_compile::default_compile_timeout(),
        }
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

    /// Compiler version line, flags, CPU and prelude: everything that changes the machine code.
    /// The real compiler's, not a wrapper's.
    pub fn identity(&self) -> Result<String, BackendError> {
        if self.command.is_empty() {
            return Err(BackendError::Unavailable(format!(
                "C compiler ({}) is empty: set CC to a compiler such as gcc",
                self.origin
            )));
        }
        let real = self.real();
        let mut cmd = self.run(&real);
        cmd.arg("--version");
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
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        // The prelude is part of every translation unit, so it is part of every cache key.
        let prelude = blake3::hash(prelude().as_bytes()).to_hex();
        Ok(format!(
            "{} | {version} | {} {} | {} | prelude {}",
            real.join(" "),
            self.compile_flags().join(" "),
            LINK_FLAGS.join(" "),
            cpu_identity(),
            &prelude[..16]
        ))
    }

    /// [`FLAGS`] with `-march=native` replaced by the flags it means on this machine, as the
    /// real compiler reports them (gcc); unchanged where the compiler does not report them.
    pub fn compile_flags(&self) -> Vec<String> {
        let native = self
            .native
            .get_or_init(|| native_flags(&self.real(), self.timeout));
        FLAGS
            .iter()
            .flat_map(|&f| match (f, native) {
                ("-march=native", Some(n)) => n.clone(),
                _ => vec![f.to_string()],
            })
            .collect()
    }

    /// Compiles one translation unit; returns the shared object's bytes or the diagnostics.
    pub fn compile(&self, sources: &[&str]) -> Result<Vec<u8>, BackendError> {
        let dir = process::scratch_dir("kiln-cc-")
            .map_err(|e| BackendError::io("cannot create a temporary folder", e))?;
        let mut unit = String::from(prelude());
        for s in sources {
            unit.push('\n');
            unit.push_str(s);
        }
        std::fs::write(dir.path().join("kernels.c"), unit)
            .map_err(|e| BackendError::io("cannot write the kernel source", e))?;
        // Compile (through the wrappers: this is what distcc distributes), then link locally.
        let mut compile = self.run(&self.command);
        compile
            .args(self.compile_flags())
            .args(["-c", "-o", "kernels.o", "kernels.c"]);
        self.invoke(compile, dir.path(), &self.shown())?;
        let real = self.real();
        let mut link = self.run(&real);
        link.args(LINK_FLAGS)
            .args(["-o", "kernels.so", "kernels.o"]);
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
            let mut msg = String::from_utf8_lossy(&out.stderr).to_string();
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
    let mut cmd = Command::new(&real[0]);
    // Run where it can write nothing of the user's (a wrapper script need not be a real gcc).
    cmd.args(&real[1..])
        .args(["-march=native", "-E", "-v", "-"])
        .current_dir(std::env::temp_dir());
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
            o[0] += kiln_softmax_weights(s, 13, 0.5f);\n}\n";
        std::fs::write(&src, format!("{}\n{uses}", prelude())).unwrap();
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

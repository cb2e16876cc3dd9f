//! The system C compiler: `$CC`, else `cc`. One invocation compiles a batch of kernels (one
//! translation unit) into one shared object.

use kiln_compile::BackendError;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

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

/// Flags for every kernel. -march=native: kernels run where they are compiled (the cache key
/// names the CPU). No -ffast-math: kernels keep IEEE semantics (inf in masks, NaN propagation).
pub const FLAGS: &[&str] = &[
    "-O3",
    "-march=native",
    "-fPIC",
    "-shared",
    "-std=gnu11",
    "-fno-math-errno",
    "-Wl,--build-id=none",
];

#[derive(Clone, Debug)]
pub struct CCompiler {
    pub program: PathBuf,
    /// Where the choice came from, for error messages.
    pub origin: &'static str,
}

impl CCompiler {
    /// `$CC` if set, else `cc`.
    pub fn from_env() -> CCompiler {
        match std::env::var_os("CC").filter(|v| !v.is_empty()) {
            Some(cc) => CCompiler {
                program: PathBuf::from(cc),
                origin: "$CC",
            },
            None => CCompiler {
                program: PathBuf::from("cc"),
                origin: "the default `cc`",
            },
        }
    }

    /// Compiler version line, flags, CPU and prelude: everything that changes the machine code.
    pub fn identity(&self) -> Result<String, BackendError> {
        let out = Command::new(&self.program).arg("--version").output().map_err(|e| {
            BackendError::Unavailable(format!(
                "C compiler `{}` ({}) could not be run: {e}. kiln's CPU backend needs a C compiler: install one (Debian/Ubuntu: `apt-get install gcc`) or set CC to its path",
                self.program.display(),
                self.origin
            ))
        })?;
        if !out.status.success() {
            return Err(BackendError::Unavailable(format!(
                "C compiler `{}` ({}) failed on --version: {}",
                self.program.display(),
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
            "{} | {version} | {} | {} | prelude {}",
            self.program.display(),
            FLAGS.join(" "),
            cpu_identity(),
            &prelude[..16]
        ))
    }

    /// Compiles one translation unit; returns the shared object's bytes or the diagnostics.
    pub fn compile(&self, sources: &[&str]) -> Result<Vec<u8>, BackendError> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-cc-")
            .tempdir()
            .map_err(|e| BackendError::io("cannot create a temporary folder", e))?;
        let mut unit = String::from(prelude());
        for s in sources {
            unit.push('\n');
            unit.push_str(s);
        }
        std::fs::write(dir.path().join("kernels.c"), unit)
            .map_err(|e| BackendError::io("cannot write the kernel source", e))?;
        let out = Command::new(&self.program)
            .args(FLAGS)
            .args(["-o", "kernels.so", "kernels.c"])
            .current_dir(dir.path())
            .output()
            .map_err(|e| {
                BackendError::io(
                    format!("cannot run C compiler `{}`", self.program.display()),
                    e,
                )
            })?;
        if !out.status.success() {
            let mut msg = String::from_utf8_lossy(&out.stderr).to_string();
            if msg.trim().is_empty() {
                msg = format!("C compiler exited with {}", out.status);
            }
            return Err(BackendError::Rejected(msg));
        }
        std::fs::read(dir.path().join("kernels.so"))
            .map_err(|e| BackendError::io("cannot read the compiled kernels", e))
    }
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

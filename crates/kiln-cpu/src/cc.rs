//! The system C compiler: `$CC`, else `cc`. One invocation compiles a batch of kernels (one
//! translation unit) into one shared object, in a private scratch folder, under a time limit
//! (`kiln_compile::process`).

use kiln_compile::process::{self, ChildError};
use kiln_compile::BackendError;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The C prelude: CPU-specific definitions, the shared scalar helpers, the matmul blocks.
pub fn prelude() -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| kiln_render::cstyle::prelude(include_str!("c/prelude.h")))
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
    /// How long one invocation may take before its process group is killed.
    pub timeout: Duration,
}

impl CCompiler {
    /// `$CC` if set, else `cc`; the time limit from `KILN_COMPILE_TIMEOUT`, else the default.
    pub fn from_env() -> CCompiler {
        let timeout = kiln_compile::default_compile_timeout();
        match std::env::var_os("CC").filter(|v| !v.is_empty()) {
            Some(cc) => CCompiler {
                program: PathBuf::from(cc),
                origin: "$CC",
                timeout,
            },
            None => CCompiler {
                program: PathBuf::from("cc"),
                origin: "the default `cc`",
                timeout,
            },
        }
    }

    /// The same compiler with another time limit per invocation.
    pub fn with_timeout(mut self, timeout: Duration) -> CCompiler {
        self.timeout = timeout;
        self
    }

    /// Compiler version line, flags, CPU and prelude: everything that changes the machine code.
    pub fn identity(&self) -> Result<String, BackendError> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--version");
        let out = process::run(&mut cmd, self.timeout).map_err(|e| match e {
            ChildError::Spawn(e) => BackendError::Unavailable(format!(
                "C compiler `{}` ({}) could not be run: {e}. kiln's CPU backend needs a C compiler: install one (Debian/Ubuntu: `apt-get install gcc`) or set CC to its path",
                self.program.display(),
                self.origin
            )),
            e => BackendError::from(e),
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
        let dir = process::scratch_dir("kiln-cc-")
            .map_err(|e| BackendError::io("cannot create a temporary folder", e))?;
        let mut unit = String::from(prelude());
        for s in sources {
            unit.push('\n');
            unit.push_str(s);
        }
        std::fs::write(dir.path().join("kernels.c"), unit)
            .map_err(|e| BackendError::io("cannot write the kernel source", e))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(FLAGS)
            .args(["-o", "kernels.so", "kernels.c"])
            .current_dir(dir.path());
        let out = process::run(&mut cmd, self.timeout).map_err(|e| match e {
            ChildError::Spawn(e) => BackendError::io(
                format!("cannot run C compiler `{}`", self.program.display()),
                e,
            ),
            e => BackendError::from(e),
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

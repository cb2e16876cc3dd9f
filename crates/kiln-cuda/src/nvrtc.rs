//! Finding and driving NVRTC. kiln loads `libnvrtc` at run time (through cudarc's dynamic
//! loading), so it builds and runs on machines without CUDA; only `--backend cuda` needs it.
//!
//! Search order: `$KILN_NVRTC_LIB` (a file), the standard CUDA locations, the Python wheel
//! `nvidia-cuda-nvrtc-cu12` (its `nvidia/cuda_nvrtc/lib`), then the loader's own search path.
//! The library found is opened by its full path first; cudarc's later open by soname
//! (`libnvrtc.so.12`) then resolves to that same, already loaded, library.

use cudarc::nvrtc::{result, sys};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const INSTALL_HINT: &str =
    "install NVRTC: `pip install nvidia-cuda-nvrtc-cu12` (then kiln finds it through python3), \
     or the CUDA toolkit, or set KILN_NVRTC_LIB to the path of libnvrtc.so.12";

struct Loaded {
    path: PathBuf,
    version: (i32, i32),
    _lib: libloading::Library,
}

fn candidates() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("KILN_NVRTC_LIB").filter(|p| !p.is_empty()) {
        c.push(PathBuf::from(p));
        return c; // an explicit choice is the only choice
    }
    let mut roots: Vec<PathBuf> = ["CUDA_PATH", "CUDA_HOME", "CUDA_ROOT"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    roots.push("/usr/local/cuda".into());
    for r in roots {
        for lib in ["lib64", "lib", "targets/x86_64-linux/lib"] {
            c.push(r.join(lib).join("libnvrtc.so.12"));
            c.push(r.join(lib).join("libnvrtc.so"));
        }
    }
    c.push("/usr/lib/x86_64-linux-gnu/libnvrtc.so.12".into());
    c.push("/usr/lib/x86_64-linux-gnu/libnvrtc.so".into());
    for dir in wheel_dirs() {
        c.push(dir.join("libnvrtc.so.12"));
    }
    c
}

/// `nvidia/cuda_nvrtc/lib` of the Python wheel, for the active virtualenv and for python3.
fn wheel_dirs() -> Vec<PathBuf> {
    let mut pythons = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        pythons.push(PathBuf::from(v).join("bin/python"));
    }
    pythons.push("python3".into());
    let script =
        "import os, nvidia.cuda_nvrtc as m; print(os.path.join(list(m.__path__)[0], 'lib'))";
    pythons
        .iter()
        .filter_map(|py| {
            std::process::Command::new(py)
                .args(["-c", script])
                .output()
                .ok()
        })
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .collect()
}

fn load() -> Result<Loaded, String> {
    let mut tried = Vec::new();
    let mut found = None;
    for path in candidates() {
        if !path.exists() {
            tried.push(path.display().to_string());
            continue;
        }
        // SAFETY: libnvrtc's initialisers are safe to run; we keep it loaded for the process.
        match unsafe { libloading::Library::new(&path) } {
            Ok(lib) => {
                found = Some((path, lib));
                break;
            }
            Err(e) => tried.push(format!("{} ({e})", path.display())),
        }
    }
    let (path, lib) = match found {
        Some(f) => f,
        // Last, whatever the dynamic loader finds by name.
        None => match unsafe { libloading::Library::new("libnvrtc.so.12") } {
            Ok(lib) => (PathBuf::from("libnvrtc.so.12"), lib),
            Err(_) => {
                return Err(format!(
                    "NVRTC (libnvrtc.so.12) not found; tried {}. To fix: {INSTALL_HINT}",
                    tried.join(", ")
                ))
            }
        },
    };
    // SAFETY: only probes for the library by name.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(format!(
            "{} was loaded but cudarc cannot open libnvrtc by name; {INSTALL_HINT}",
            path.display()
        ));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| format!("nvrtcVersion: {e:?}"))?;
    Ok(Loaded {
        path,
        version: (major, minor),
        _lib: lib,
    })
}

fn loaded() -> Result<&'static Loaded, String> {
    static L: OnceLock<Result<Loaded, String>> = OnceLock::new();
    L.get_or_init(load).as_ref().map_err(Clone::clone)
}

/// NVRTC's version and where it was loaded from.
pub fn version() -> Result<((i32, i32), &'static Path), String> {
    loaded().map(|l| (l.version, l.path.as_path()))
}

/// Compiles CUDA C to a CUBIN for `arch` (e.g. `sm_90`); on failure returns NVRTC's log.
pub fn compile_cubin(source: &str, arch: &str, options: &[&str]) -> Result<Vec<u8>, String> {
    loaded()?;
    let src = CString::new(source).map_err(|e| e.to_string())?;
    let name = CString::new("kernels.cu").expect("no nul");
    let prog = result::create_program(&src, Some(&name))
        .map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    let mut opts: Vec<String> = vec![format!("--gpu-architecture={arch}")];
    opts.extend(options.iter().map(|s| s.to_string()));
    // SAFETY: prog is a live program; destroyed below on every path.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    let out = match compiled {
        Ok(()) => cubin(prog),
        Err(e) => {
            let log = log(prog).unwrap_or_default();
            Err(if log.trim().is_empty() {
                format!("NVRTC failed: {e:?}")
            } else {
                log
            })
        }
    };
    // SAFETY: created above, not used afterwards.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

fn log(prog: sys::nvrtcProgram) -> Option<String> {
    // SAFETY: prog is live.
    let raw = unsafe { result::get_program_log(prog) }.ok()?;
    let bytes: Vec<u8> = raw
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    Some(String::from_utf8_lossy(&bytes).to_string())
}

fn cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, String> {
    let mut size = 0usize;
    // SAFETY: prog is live and compiled; the buffer has the size NVRTC reports.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBINSize: {e:?}"))?;
    let mut buf = vec![0u8; size];
    unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut _) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBIN: {e:?}"))?;
    Ok(buf)
}

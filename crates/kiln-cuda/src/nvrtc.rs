//! Finding and driving NVRTC. kiln loads `libnvrtc` at run time (through cudarc's dynamic
//! loading), so it builds and runs on machines without CUDA; only `--backend cuda` needs it.
//!
//! NVRTC 13 and 12 both work (the handful of NVRTC calls kiln makes are the same in both);
//! cudarc's bindings are pinned to 13.0 (`cuda-13000`), the version CI tests against.
//! Search order: `$KILN_NVRTC_LIB` (a file), the standard CUDA locations, the Python wheels
//! `nvidia-cuda-nvrtc` (CUDA 13: `nvidia/cu13/lib`) and `nvidia-cuda-nvrtc-cu12`
//! (`nvidia/cuda_nvrtc/lib`), then the loader's own search path. NVRTC 13 comes first unless the
//! installed driver is older than CUDA 13, which could not load its CUBINs.
//! The library found is opened by its full path first; cudarc's later open by soname
//! (`libnvrtc.so.13` / `.so.12`) then resolves to that same, already loaded, library, which
//! `load` checks.

use cudarc::nvrtc::{result, sys};
use kiln_program::BackendError;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const INSTALL_HINT: &str = "install NVRTC: `pip install nvidia-cuda-nvrtc` (CUDA 13) or \
     `pip install nvidia-cuda-nvrtc-cu12` (CUDA 12; then kiln finds it through python3), or the \
     CUDA toolkit, or set KILN_NVRTC_LIB to the path of libnvrtc.so.13 or libnvrtc.so.12";

struct Loaded {
    path: PathBuf,
    version: (i32, i32),
    _libs: Vec<libloading::Library>,
}

/// The sonames kiln accepts, newest first; NVRTC 13 only when the driver (if any) is CUDA 13+.
fn sonames() -> Vec<&'static str> {
    match driver_major() {
        Some(major) if major < 13 => vec!["libnvrtc.so.12"],
        _ => vec!["libnvrtc.so.13", "libnvrtc.so.12"],
    }
}

/// The installed CUDA driver's major version, when there is a driver.
fn driver_major() -> Option<i32> {
    // SAFETY: probes for libcuda by name; cuDriverGetVersion needs no initialisation.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            return None;
        }
        let mut v = 0;
        let ok = cudarc::driver::sys::cuDriverGetVersion(&mut v)
            == cudarc::driver::sys::CUresult::CUDA_SUCCESS;
        ok.then_some(v / 1000)
    }
}

fn candidates(sonames: &[&str]) -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_NVRTC_LIB").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)]; // an explicit choice is the only choice
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    let roots = ["CUDA_PATH", "CUDA_HOME", "CUDA_ROOT"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .chain([PathBuf::from("/usr/local/cuda")]);
    for r in roots {
        for lib in ["lib64", "lib", "targets/x86_64-linux/lib"] {
            dirs.push(r.join(lib));
        }
    }
    dirs.push("/usr/lib/x86_64-linux-gnu".into());
    dirs.extend(wheel_dirs());
    let mut c = Vec::new();
    for soname in sonames {
        c.extend(dirs.iter().map(|d| d.join(soname)));
    }
    c
}

/// The `lib` folders of the NVRTC wheels (CUDA 13 and 12) for the active virtualenv and python3.
fn wheel_dirs() -> Vec<PathBuf> {
    let mut pythons = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        pythons.push(PathBuf::from(v).join("bin/python"));
    }
    pythons.push("python3".into());
    let script = "import nvidia; print('\\n'.join(nvidia.__path__))";
    let mut dirs = Vec::new();
    for py in &pythons {
        let Ok(out) = std::process::Command::new(py).args(["-c", script]).output() else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        for root in String::from_utf8_lossy(&out.stdout).lines() {
            dirs.push(Path::new(root).join("cu13/lib"));
            dirs.push(Path::new(root).join("cuda_nvrtc/lib"));
        }
    }
    dirs
}

/// NVRTC opens `libnvrtc-builtins.so.X.Y` by name at its first compile; not every install puts
/// it on the loader's path (the CUDA 13 wheel does not), so the copy beside libnvrtc is opened
/// by path first and NVRTC's open by soname then resolves to it.
fn load_builtins_beside(nvrtc: &Path) -> Vec<libloading::Library> {
    let Some(dir) = nvrtc.parent() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so."))
        })
        .collect();
    names.sort();
    names
        .iter()
        // SAFETY: as for libnvrtc itself.
        .filter_map(|p| unsafe { libloading::Library::new(p) }.ok())
        .collect()
}

/// NVRTC's version as reported by the library kiln opened by path (not through cudarc).
fn version_of(lib: &libloading::Library) -> Option<(i32, i32)> {
    type VersionFn = unsafe extern "C" fn(*mut i32, *mut i32) -> i32;
    // SAFETY: nvrtcVersion has this signature in NVRTC 12 and 13; plain out-parameters.
    unsafe {
        let f = lib.get::<VersionFn>(b"nvrtcVersion").ok()?;
        let (mut major, mut minor) = (0, 0);
        (f(&mut major, &mut minor) == 0).then_some((major, minor))
    }
}

fn load() -> Result<Loaded, String> {
    let mut tried = Vec::new();
    let mut found = None;
    // Asks the driver (if any) once: which NVRTC majors can build CUBINs it loads.
    let sonames = sonames();
    let mut builtins = Vec::new();
    for path in candidates(&sonames) {
        if !path.exists() {
            tried.push(path.display().to_string());
            continue;
        }
        builtins = load_builtins_beside(&path);
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
        None => sonames
            .iter()
            // SAFETY: as above.
            .find_map(|name| {
                unsafe { libloading::Library::new(name) }
                    .ok()
                    .map(|l| (PathBuf::from(name), l))
            })
            .ok_or_else(|| {
                format!(
                    "NVRTC ({}) not found; tried {}. To fix: {INSTALL_HINT}",
                    sonames.join(" or "),
                    tried.join(", ")
                )
            })?,
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
    // cudarc opens libnvrtc by name: make sure that is the library found above, not another
    // NVRTC earlier on the loader's path.
    if let Some(ours) = version_of(&lib).filter(|&v| v != (major, minor)) {
        return Err(format!(
            "{} is NVRTC {}.{}, but the dynamic loader resolves libnvrtc to NVRTC {major}.{minor} \
             first; set LD_LIBRARY_PATH or KILN_NVRTC_LIB so that only one NVRTC is found",
            path.display(),
            ours.0,
            ours.1
        ));
    }
    builtins.push(lib);
    Ok(Loaded {
        path,
        version: (major, minor),
        _libs: builtins,
    })
}

fn loaded() -> Result<&'static Loaded, String> {
    static L: OnceLock<Result<Loaded, String>> = OnceLock::new();
    L.get_or_init(load).as_ref().map_err(Clone::clone)
}

/// NVRTC's version and where it was loaded from.
pub fn version() -> Result<((i32, i32), &'static Path), BackendError> {
    loaded()
        .map(|l| (l.version, l.path.as_path()))
        .map_err(BackendError::Unavailable)
}

/// Compiles CUDA C to a CUBIN for `arch` (e.g. `sm_90`); on failure returns NVRTC's log.
pub fn compile_cubin(source: &str, arch: &str, options: &[&str]) -> Result<Vec<u8>, BackendError> {
    compile_with_log(source, arch, options).map(|(cubin, _)| cubin)
}

/// [`compile_cubin`], also returning the log of a successful compile whole (what ptxas reports
/// with `--ptxas-options=-v`: [`crate::preflight`]).
pub fn compile_with_log(
    source: &str,
    arch: &str,
    options: &[&str],
) -> Result<(Vec<u8>, String), BackendError> {
    loaded().map_err(BackendError::Unavailable)?;
    let src =
        CString::new(source).map_err(|e| BackendError::Invalid(format!("kernel source: {e}")))?;
    let name = CString::new("kernels.cu").expect("no nul");
    let prog = result::create_program(&src, Some(&name))
        .map_err(|e| BackendError::Invalid(format!("nvrtcCreateProgram: {e:?}")))?;
    let mut opts: Vec<String> = vec![format!("--gpu-architecture={arch}")];
    opts.extend(options.iter().map(|s| s.to_string()));
    // SAFETY: prog is a live program; destroyed below on every path.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    let out = match compiled {
        Ok(()) => cubin(prog).map(|c| (c, raw_log(prog).unwrap_or_default())),
        Err(e) => {
            let log = log(prog).unwrap_or_default();
            Err(BackendError::Rejected(if log.trim().is_empty() {
                format!("NVRTC failed: {e:?}")
            } else {
                log
            }))
        }
    };
    // SAFETY: created above, not used afterwards.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// The program's log, escaped and cut like an external compiler's output.
fn log(prog: sys::nvrtcProgram) -> Option<String> {
    raw_log(prog).map(|l| kiln_process::diagnostics(l.as_bytes()))
}

/// The program's log as NVRTC wrote it.
fn raw_log(prog: sys::nvrtcProgram) -> Option<String> {
    // SAFETY: prog is live.
    let raw = unsafe { result::get_program_log(prog) }.ok()?;
    let bytes: Vec<u8> = raw
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, BackendError> {
    let mut size = 0usize;
    // SAFETY: prog is live and compiled; the buffer has the size NVRTC reports.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| BackendError::Invalid(format!("nvrtcGetCUBINSize: {e:?}")))?;
    let mut buf = vec![0u8; size];
    unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut _) }
        .result()
        .map_err(|e| BackendError::Invalid(format!("nvrtcGetCUBIN: {e:?}")))?;
    Ok(buf)
}

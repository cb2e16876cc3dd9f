//! The CUDA emulator's C++ compiler runs under the same time limit as the C compiler: a `CXX`
//! that hangs is killed with its process group, and the error names the kernel and the limit.
//! (Its own test binary: it sets `CXX` for the whole process.)
use kiln_compile::{compile, BackendError, CompileError, CompileOptions};
use kiln_cuda::emulator::EmulatedCuda;
use kiln_ir::{DType, Graph};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

#[test]
fn a_hanging_cxx_is_killed_at_the_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let cxx = dir.path().join("hanging-cxx");
    std::fs::write(
        &cxx,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then exec g++ --version; fi\necho $$ > {}\nexec sleep 60\n",
            pid_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cxx, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::env::set_var("CXX", &cxx);

    let mut g = Graph::new();
    let x = g.input("x", DType::F32, &[4.into()]).unwrap();
    let y = g.exp2(x).unwrap();
    g.output("y", y);
    let backend = EmulatedCuda::default().with_compile_timeout(Duration::from_secs(1));
    let start = Instant::now();
    let err = compile(
        &g,
        &backend,
        &CompileOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .err()
    .expect("must fail");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    let CompileError::Kernels(fails) = &err else {
        panic!("{err}")
    };
    assert_eq!(fails.len(), 1);
    assert!(matches!(fails[0].error, BackendError::Timeout(d) if d == Duration::from_secs(1)));
    let msg = err.to_string();
    assert!(
        msg.contains(&fails[0].kernel) && msg.contains("time limit of 1 s"),
        "{msg}"
    );
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    assert!(
        stat.is_empty() || state.starts_with('Z'),
        "the compiler still runs: {stat}"
    );
}

//! A missing C compiler is a clear error naming the variable and the package. (Its own test
//! binary: it changes the process environment.)
use kiln_compile::{compile, CompileOptions};
use kiln_cpu::CpuBackend;
use kiln_ir::{DType, Graph};

#[test]
fn missing_compiler_says_how_to_fix_it() {
    std::env::set_var("CC", "/nonexistent/bin/cc");
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, &[2.into()]).unwrap();
    let y = g.exp2(x).unwrap();
    g.output("y", y);
    let err = compile(
        &g,
        &CpuBackend::default(),
        &CompileOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .err()
    .expect("must fail")
    .to_string();
    assert!(
        err.contains("/nonexistent/bin/cc")
            && err.contains("$CC")
            && err.contains("apt-get install gcc"),
        "{err}"
    );
}

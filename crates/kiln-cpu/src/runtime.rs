//! The runtime object: the C code that kernels call but do not contain (the packed GEMM/GEMV
//! micro-kernels of `c/gemm.h`, `c/gemm_quant.h` and `c/gemm_q6k.h`, the attention's helpers of
//! `c/prelude.h`), compiled once per compiler identity, flags and ISA instead of once per
//! compile unit that calls it.
//!
//! It is split into parts (one shared object each, one compile unit each, so that no part
//! is a long pole of the parallel compile), and a program compiles only the parts its kernels
//! call. A part's source is the whole prelude (headers as they are) followed by an exported
//! wrapper per function: `kiln_packed_tile_bf16_<tag>` calls the prelude's static
//! `kiln_packed_tile_bf16`, which GCC inlines into it (a static function called once). A
//! kernel's prelude ([`kernel_prelude`]) is the same prelude followed by each wrapper's
//! prototype and a `#define` of the function's name to the wrapper's: the kernel's call goes
//! to the runtime, and the prelude's static copy, unused, is never compiled.
//!
//! The tag is a hash of the runtime's code and of the compiler's identity (version, flags,
//! CPU, ISA). The runtime's shared objects are loaded with `RTLD_GLOBAL` before the kernels'
//! (`Backend::load_runtime`), and the kernels' modules, linked with undefined references to
//! the tagged names, are loaded after them with those references bound then (`RTLD_NOW`):
//! kernels compile and link without waiting for the runtime, and two runtimes in one process
//! (AVX2 and AVX-512 kernels, other flags) never resolve each other's functions, since their
//! tags differ. `verify` opens kernel modules before the runtime exists, which lazy binding
//! (`-Wl,-z,lazy`) allows; with `LD_BIND_NOW` set that fails (`KILN_CPU_RUNTIME=off`).

use crate::isa::Isa;

/// One function of the runtime: its part, return type, name, parameters and the arguments
/// that pass them on.
pub struct RuntimeFn {
    pub part: &'static str,
    ret: &'static str,
    pub name: &'static str,
    params: &'static str,
    args: &'static str,
}

const TILE_ARGS: &str = "(ctx, a, lda, wp, K, m0, tm, c0, tn, t, ldt)";
const fn tile(part: &'static str, name: &'static str, params: &'static str) -> RuntimeFn {
    RuntimeFn {
        part,
        ret: "void",
        name,
        params,
        args: TILE_ARGS,
    }
}

/// Every function of the runtime, by part. A kernel that calls a prelude function not listed
/// here still compiles it itself (the static copy in its prelude), as before the runtime.
pub const FUNCTIONS: &[RuntimeFn] = &[
    tile("gemm_f32", "kiln_packed_tile_f32", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const float *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    tile("gemm_bf16", "kiln_packed_tile_bf16", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint16_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    tile("gemm_q8_0", "kiln_packed_tile_q8_0", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    tile("gemm_q4_0", "kiln_packed_tile_q4_0", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    tile("gemm_q4_k", "kiln_packed_tile_q4_k", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    tile("gemm_q6_k", "kiln_packed_tile_q6_k", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    RuntimeFn {
        part: "mm_nt",
        ret: "void",
        name: "kiln_mm_nt",
        params: "(const float *restrict a, int64_t lda, const float *restrict b, int64_t ldb, float *restrict c, int64_t ldc, int64_t M, int64_t N, int64_t K)",
        args: "(a, lda, b, ldb, c, ldc, M, N, K)",
    },
    RuntimeFn {
        part: "mm_nt_bf16",
        ret: "void",
        name: "kiln_mm_nt_bf16",
        params: "(const float *restrict a, int64_t lda, const uint16_t *restrict b, int64_t ldb, float *restrict c, int64_t ldc, int64_t M, int64_t N, int64_t K)",
        args: "(a, lda, b, ldb, c, ldc, M, N, K)",
    },
    RuntimeFn {
        part: "mm_nn",
        ret: "void",
        name: "kiln_mm_nn",
        params: "(const float *restrict a, int64_t lda, int64_t sak, const float *restrict b, int64_t ldb, float *restrict c, int64_t ldc, int64_t M, int64_t N, int64_t K)",
        args: "(a, lda, sak, b, ldb, c, ldc, M, N, K)",
    },
    RuntimeFn {
        part: "attention",
        ret: "void",
        name: "kiln_att_pv",
        params: "(float *restrict o, int64_t ldo, const float *restrict p, int64_t ldp, const float *restrict v, int64_t ldv, int64_t M, int64_t K, int64_t N)",
        args: "(o, ldo, p, ldp, v, ldv, M, K, N)",
    },
    RuntimeFn {
        part: "attention",
        ret: "float",
        name: "kiln_softmax_weights",
        params: "(float *restrict s, int64_t n, float m)",
        args: "(s, n, m)",
    },
];

/// What starts the name of every runtime part (and no kernel's: kernels are `kiln_<label>_`).
pub const PART_PREFIX: &str = "kiln_rt_";

/// The parts, in a fixed order (the table's).
fn parts() -> Vec<&'static str> {
    let mut parts: Vec<&str> = Vec::new();
    for f in FUNCTIONS {
        if !parts.contains(&f.part) {
            parts.push(f.part);
        }
    }
    parts
}

/// The symbol (and unit name) of a part: defined by its shared object, so that `verify` can
/// find it there.
pub fn part_name(part: &str, tag: &str) -> String {
    format!("{PART_PREFIX}{part}_{tag}")
}

/// Whether a compile unit's source is a runtime part (by its name).
pub fn is_part(name: &str) -> bool {
    name.starts_with(PART_PREFIX)
}

/// What the tag hashes besides the compiler's identity: the code of every part.
pub fn code(isa: Isa) -> String {
    let mut code = crate::cc::prelude(isa).to_string();
    for f in FUNCTIONS {
        code.push_str(&format!(
            "{} | {} {}{} -> {}\n",
            f.part, f.ret, f.name, f.params, f.args
        ));
    }
    code
}

/// The prelude of a kernel's translation unit: the whole prelude, then each runtime
/// function's prototype under its tagged name, and its plain name defined to that.
pub fn kernel_prelude(isa: Isa, tag: &str) -> String {
    let mut p = crate::cc::prelude(isa).to_string();
    p.push_str("\n/* ---- the runtime object's functions (kiln-cpu runtime.rs): called, not compiled here */\n");
    for f in FUNCTIONS {
        p.push_str(&format!(
            "{} {}_{tag}{};\n#define {} {}_{tag}\n",
            f.ret, f.name, f.params, f.name, f.name
        ));
    }
    p
}

/// The translation unit of one part: the whole prelude, the part's symbol, and an exported
/// wrapper per function (compiled with `-fvisibility=hidden`: nothing else is exported).
pub fn part_source(isa: Isa, tag: &str, part: &str) -> String {
    let mut s = crate::cc::prelude(isa).to_string();
    let export = "__attribute__((visibility(\"default\")))";
    s.push_str(&format!(
        "\n/* ---- runtime part {part} (kiln-cpu runtime.rs) */\n{export} const int {} = 1;\n",
        part_name(part, tag)
    ));
    for f in FUNCTIONS.iter().filter(|f| f.part == part) {
        let ret = if f.ret == "void" { "" } else { "return " };
        s.push_str(&format!(
            "{export} {} {}_{tag}{} {{ {ret}{}{}; }}\n",
            f.ret, f.name, f.params, f.name, f.args
        ));
    }
    s
}

/// The parts the given kernel sources call (in the table's order): a function is called
/// where its name is followed by `(`.
pub fn parts_called<'a>(sources: impl IntoIterator<Item = &'a str> + Clone) -> Vec<&'static str> {
    parts()
        .into_iter()
        .filter(|part| {
            FUNCTIONS.iter().filter(|f| f.part == *part).any(|f| {
                let call = format!("{}(", f.name);
                sources.clone().into_iter().any(|s| s.contains(&call))
            })
        })
        .collect()
}

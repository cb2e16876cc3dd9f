//! The runtime object: the C code that kernels call but do not contain (the packed GEMM/GEMV
//! micro-kernels of `c/gemm.h`, `c/gemm_quant.h`, `c/gemm_q6k.h` and `c/gemm_q5k.h`, the attention's helpers of
//! `c/prelude.h`), compiled once per compiler identity, flags and ISA instead of once per
//! compile unit that calls it.
//!
//! It is split into parts (one shared object each, one compile unit each, so that no part
//! is a long pole of the parallel compile), and a program compiles only the parts its kernels
//! call. A part's source is the whole prelude (headers as they are) followed by an exported
//! wrapper per function: `kiln_mm_nn_<tag>` calls the prelude's static `kiln_mm_nn`, which
//! GCC inlines into it (a static function called once). A kernel's prelude
//! ([`kernel_prelude`]) is the same prelude followed by each wrapper's prototype and a
//! `#define` of the function's name to the wrapper's: the kernel's call goes to the runtime,
//! and the prelude's static copy, unused, is never compiled.
//!
//! The longest functions (the packed tiles, `kiln_mm_nt`) are compiled in cases ([`Case`]):
//! one part per range of rows, each the same body compiled knowing its range, so that the
//! paths of one function (decode GEMV passes, register-blocked GEMM) compile in parallel; the
//! kernel's prelude defines the function's tagged name as a dispatcher over the cases.
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

/// One function of the runtime: its part, return type, name, parameters, the arguments that
/// pass them on, and the cases it is compiled in.
pub struct RuntimeFn {
    pub part: &'static str,
    ret: &'static str,
    pub name: &'static str,
    params: &'static str,
    args: &'static str,
    /// The function is compiled once per case, each case a part of its own (`<part>_<case>`):
    /// a case is a condition on the arguments, and its part compiles the function's body
    /// knowing it (the paths the condition rules out are never compiled there). The kernel
    /// calls a dispatcher that tests the conditions in order and calls the first case whose
    /// condition holds, the last case where none does (its condition is `else`). Every case
    /// runs the same body: results are the same whichever part computes them. Empty: one part,
    /// the whole function.
    cases: &'static [Case],
    /// GCC optimisation options of its parts (`#pragma GCC optimize`, first in the part's
    /// source, so in its cache key and tag), where the defaults spend compile time on code
    /// that does not run faster for it. Empty: none.
    optimize: &'static str,
}

/// A case of a runtime function: the suffix of its part and its condition (C, over the
/// function's parameters).
pub struct Case {
    pub suffix: &'static str,
    pub when: &'static str,
}

/// The cases of a packed f32 or bf16 tile (`c/gemm.h`): product columns off a panel boundary
/// (the scalar `fmaf` chains), then by rows: the GEMV passes (decode and batched decode, up to
/// `KILN_GEMV_ROWS` rows) and the register-blocked GEMM. All paths of the bf16 tile compiled
/// together were the longest compile unit of a model (issue 27); the scalar path, compiled in
/// both row cases, was ~20 ms of each, and one case of its own takes it out of both (the GEMM
/// case is the longest part). Splitting the GEMV passes once more (at 4 rows) shortened the
/// longest unit no further and cost a unit's fixed cost.
const TILE_CASES: &[Case] = &[
    Case {
        suffix: "cols",
        when: "c0 % KILN_NR != 0",
    },
    Case {
        suffix: "gemv",
        when: "tm <= KILN_GEMV_ROWS",
    },
    Case {
        suffix: "gemm",
        when: "else",
    },
];

/// The cases of a quantized tile (`c/gemm_quant.h`): the GEMV passes (up to 4 rows) and the
/// GEMM (the quantized tiles have no batched-decode path of their own).
const QTILE_CASES: &[Case] = &[
    Case {
        suffix: "gemv",
        when: "tm <= 4",
    },
    Case {
        suffix: "gemm",
        when: "else",
    },
];

/// The cases of `kiln_mm_nt`: the decode rows (M <= 2, a row of B at a time), and the
/// register-blocked rest.
const MM_NT_CASES: &[Case] = &[
    Case {
        suffix: "rows2",
        when: "M <= 2",
    },
    Case {
        suffix: "blocks",
        when: "else",
    },
];

/// `kiln_mm_nt` without GCC's loop vectoriser: its loops are written in vector types already,
/// and the vectoriser spent ~0.1 s of the blocked case's ~0.19 s on the scalar K tails
/// (explicit `fmaf` chains, so the results do not depend on it), for no speed (a C harness,
/// M = 1, 2, 64, N = 1536, K = 128: the same per-thread CPU time; issue 27).
const MM_NT_OPTIMIZE: &str = "no-tree-loop-vectorize";

const TILE_ARGS: &str = "(ctx, a, lda, wp, K, m0, tm, c0, tn, t, ldt)";
const fn tile(part: &'static str, name: &'static str, params: &'static str) -> RuntimeFn {
    RuntimeFn {
        part,
        ret: "void",
        name,
        params,
        args: TILE_ARGS,
        cases: TILE_CASES,
        optimize: "",
    }
}
const fn qtile(part: &'static str, name: &'static str, params: &'static str) -> RuntimeFn {
    RuntimeFn {
        cases: QTILE_CASES,
        ..tile(part, name, params)
    }
}

/// Every function of the runtime, by part. A kernel that calls a prelude function not listed
/// here still compiles it itself (the static copy in its prelude), as before the runtime.
pub const FUNCTIONS: &[RuntimeFn] = &[
    tile("gemm_f32", "kiln_packed_tile_f32", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const float *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    tile("gemm_bf16", "kiln_packed_tile_bf16", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint16_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    qtile("gemm_q8_0", "kiln_packed_tile_q8_0", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    qtile("gemm_q4_0", "kiln_packed_tile_q4_0", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    qtile("gemm_q4_k", "kiln_packed_tile_q4_k", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    qtile("gemm_q5_k", "kiln_packed_tile_q5_k", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    qtile("gemm_q6_k", "kiln_packed_tile_q6_k", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    RuntimeFn {
        part: "mm_nt",
        ret: "void",
        name: "kiln_mm_nt",
        params: "(const float *restrict a, int64_t lda, const float *restrict b, int64_t ldb, float *restrict c, int64_t ldc, int64_t M, int64_t N, int64_t K)",
        args: "(a, lda, b, ldb, c, ldc, M, N, K)",
        cases: MM_NT_CASES,
        optimize: MM_NT_OPTIMIZE,
    },
    RuntimeFn {
        part: "mm_nt_bf16",
        ret: "void",
        name: "kiln_mm_nt_bf16",
        params: "(const float *restrict a, int64_t lda, const uint16_t *restrict b, int64_t ldb, float *restrict c, int64_t ldc, int64_t M, int64_t N, int64_t K)",
        args: "(a, lda, b, ldb, c, ldc, M, N, K)",
        cases: MM_NT_CASES,
        optimize: MM_NT_OPTIMIZE,
    },
    RuntimeFn {
        part: "mm_nn",
        ret: "void",
        name: "kiln_mm_nn",
        params: "(const float *restrict a, int64_t lda, int64_t sak, const float *restrict b, int64_t ldb, float *restrict c, int64_t ldc, int64_t M, int64_t N, int64_t K)",
        args: "(a, lda, sak, b, ldb, c, ldc, M, N, K)",
        cases: &[],
        optimize: "",
    },
    RuntimeFn {
        part: "attention",
        ret: "void",
        name: "kiln_att_pv",
        params: "(float *restrict o, int64_t ldo, const float *restrict p, int64_t ldp, const float *restrict v, int64_t ldv, int64_t M, int64_t K, int64_t N)",
        args: "(o, ldo, p, ldp, v, ldv, M, K, N)",
        cases: &[],
        optimize: "",
    },
    RuntimeFn {
        part: "attention",
        ret: "float",
        name: "kiln_softmax_weights",
        params: "(float *restrict s, int64_t n, float m)",
        args: "(s, n, m)",
        cases: &[],
        optimize: "",
    },
];

/// What starts the name of every runtime part (and no kernel's: kernels are `kiln_<label>_`).
pub const PART_PREFIX: &str = "kiln_rt_";

impl RuntimeFn {
    /// The parts this function is compiled in: its part, or one per case.
    fn parts(&self) -> Vec<String> {
        match self.cases {
            [] => vec![self.part.to_string()],
            cases => cases
                .iter()
                .map(|c| format!("{}_{}", self.part, c.suffix))
                .collect(),
        }
    }

    /// The condition under which case `i` is taken: its own (unless `else`), and none of
    /// the earlier ones, as the dispatcher tests them.
    fn reached(&self, i: usize) -> String {
        let mut terms: Vec<String> = self.cases[..i]
            .iter()
            .map(|c| format!("!({})", c.when))
            .collect();
        if self.cases[i].when != "else" {
            terms.push(format!("({})", self.cases[i].when));
        }
        match terms.is_empty() {
            true => "1".to_string(),
            false => terms.join(" && "),
        }
    }

    /// A call of `callee` with this function's arguments, as a statement that returns.
    fn call_and_return(&self, callee: &str) -> String {
        match self.ret {
            "void" => format!("{{ {callee}{}; return; }}", self.args),
            _ => format!("return {callee}{};", self.args),
        }
    }
}

/// The parts, in a fixed order (the table's).
fn parts() -> Vec<String> {
    let mut parts: Vec<String> = Vec::new();
    for p in FUNCTIONS.iter().flat_map(RuntimeFn::parts) {
        if !parts.contains(&p) {
            parts.push(p);
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
            "{} | {} {}{} -> {} [{}]\n",
            f.part, f.ret, f.name, f.params, f.args, f.optimize
        ));
        for c in f.cases {
            code.push_str(&format!("  case {}: {}\n", c.suffix, c.when));
        }
    }
    code
}

/// The prelude of a kernel's translation unit: the whole prelude, then each runtime
/// function's prototype under its tagged name (a function compiled in cases: each case's
/// prototype, and a dispatcher under the tagged name), and its plain name defined to that.
pub fn kernel_prelude(isa: Isa, tag: &str) -> String {
    let mut p = crate::cc::prelude(isa).to_string();
    p.push_str("\n/* ---- the runtime object's functions (kiln-cpu runtime.rs): called, not compiled here */\n");
    for f in FUNCTIONS {
        if f.cases.is_empty() {
            p.push_str(&format!("{} {}_{tag}{};\n", f.ret, f.name, f.params));
        } else {
            for c in f.cases {
                p.push_str(&format!(
                    "{} {}_{}_{tag}{};\n",
                    f.ret, f.name, c.suffix, f.params
                ));
            }
            p.push_str(&format!(
                "static inline {} {}_{tag}{} {{\n",
                f.ret, f.name, f.params
            ));
            let last = f.cases.len() - 1;
            for (i, c) in f.cases.iter().enumerate() {
                let call = f.call_and_return(&format!("{}_{}_{tag}", f.name, c.suffix));
                match i == last {
                    true => p.push_str(&format!("    {call}\n}}\n")),
                    false => p.push_str(&format!("    if ({}) {call}\n", c.when)),
                }
            }
        }
        p.push_str(&format!("#define {} {}_{tag}\n", f.name, f.name));
    }
    p
}

/// The translation unit of one part: the whole prelude, the part's symbol, and an exported
/// wrapper per function, or per case of a function, in the part (compiled with
/// `-fvisibility=hidden`: nothing else is exported). A case's wrapper tells the compiler its
/// condition (`__builtin_unreachable` where it does not hold) and has the function's body
/// inlined into it (`flatten`) before the optimiser prunes the paths the condition excludes.
pub fn part_source(isa: Isa, tag: &str, part: &str) -> String {
    let mut s = String::new();
    if let Some(f) = FUNCTIONS
        .iter()
        .find(|f| f.parts().iter().any(|p| p == part) && !f.optimize.is_empty())
    {
        s.push_str(&format!("#pragma GCC optimize (\"{}\")\n", f.optimize));
    }
    s.push_str(crate::cc::prelude(isa));
    let export = "__attribute__((visibility(\"default\")))";
    s.push_str(&format!(
        "\n/* ---- runtime part {part} (kiln-cpu runtime.rs) */\n{export} const int {} = 1;\n",
        part_name(part, tag)
    ));
    for f in FUNCTIONS {
        if f.cases.is_empty() && f.part == part {
            let ret = if f.ret == "void" { "" } else { "return " };
            s.push_str(&format!(
                "{export} {} {}_{tag}{} {{ {ret}{}{}; }}\n",
                f.ret, f.name, f.params, f.name, f.args
            ));
        }
        for (i, c) in f.cases.iter().enumerate() {
            if format!("{}_{}", f.part, c.suffix) != part {
                continue;
            }
            s.push_str(&format!(
                "{export} __attribute__((flatten)) {} {}_{}_{tag}{} {{\n    if (!({})) __builtin_unreachable();\n    {}\n}}\n",
                f.ret,
                f.name,
                c.suffix,
                f.params,
                f.reached(i),
                f.call_and_return(f.name)
            ));
        }
    }
    s
}

/// The parts the given kernel sources call (in the table's order): a function is called
/// where its name is followed by `(`; every part of a function compiled in cases is called.
pub fn parts_called<'a>(sources: impl IntoIterator<Item = &'a str> + Clone) -> Vec<String> {
    let called: Vec<&RuntimeFn> = FUNCTIONS
        .iter()
        .filter(|f| {
            let call = format!("{}(", f.name);
            sources.clone().into_iter().any(|s| s.contains(&call))
        })
        .collect();
    parts()
        .into_iter()
        .filter(|part| called.iter().any(|f| f.parts().contains(part)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every function compiled in cases ends with the `else` case, and only there: the
    /// dispatcher always calls a part, and each part's condition is what reaches it.
    #[test]
    fn cases_end_with_else_and_have_parts_of_their_own() {
        for f in FUNCTIONS.iter().filter(|f| !f.cases.is_empty()) {
            let last = f.cases.len() - 1;
            for (i, c) in f.cases.iter().enumerate() {
                assert_eq!(c.when == "else", i == last, "{}: {}", f.name, c.suffix);
            }
            assert_eq!(f.reached(0), format!("({})", f.cases[0].when));
            assert!(f.reached(last).starts_with('!'), "{}", f.reached(last));
        }
        // A part holds one function compiled in cases, or functions without cases only.
        for p in parts() {
            let in_part: Vec<&RuntimeFn> = FUNCTIONS
                .iter()
                .filter(|f| f.parts().contains(&p))
                .collect();
            assert!(
                in_part.len() == 1 || in_part.iter().all(|f| f.cases.is_empty()),
                "{p}"
            );
        }
    }

    /// The kernels' prelude dispatches a function compiled in cases to its cases' parts, in
    /// order; a part defines the wrappers of its own case only.
    #[test]
    fn a_function_in_cases_is_dispatched_to_its_parts() {
        let p = kernel_prelude(Isa::Avx2, "T");
        assert!(
            p.contains("static inline void kiln_packed_tile_bf16_T("),
            "{p}"
        );
        let gemv = p.find("kiln_packed_tile_bf16_gemv_T(ctx").unwrap();
        let gemm = p.find("kiln_packed_tile_bf16_gemm_T(ctx").unwrap();
        assert!(gemv < gemm);
        assert!(p.contains("#define kiln_packed_tile_bf16 kiln_packed_tile_bf16_T"));
        let part = part_source(Isa::Avx2, "T", "gemm_bf16_gemm");
        assert!(part.contains("kiln_rt_gemm_bf16_gemm_T"));
        assert!(
            part.contains(
                "if (!(!(c0 % KILN_NR != 0) && !(tm <= KILN_GEMV_ROWS))) __builtin_unreachable();"
            ),
            "{part}"
        );
        assert!(!part.contains("kiln_packed_tile_bf16_gemv_T"));
        let called = parts_called(["y = kiln_mm_nt(a"]);
        assert_eq!(called, ["mm_nt_rows2", "mm_nt_blocks"]);
    }
}

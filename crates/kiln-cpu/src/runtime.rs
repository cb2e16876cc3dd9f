//! The runtime object: the C code that kernels call but do not contain (the packed GEMM/GEMV
//! micro-kernels of `c/gemm.h`, `c/gemm_quant.h`, `c/gemm_q4k.h`, `c/gemm_q6k.h` and `c/gemm_q5k.h`, the attention's helpers of
//! `c/prelude.h`), compiled once per compiler identity, flags and ISA instead of once per
//! compile unit that calls it.
//!
//! It is split into parts (one shared object each, one compile unit each, so that no part
//! is a long pole of the parallel compile), and a program compiles only the parts its kernels
//! call. A part's source is the prelude (headers as they are, up to the section its functions
//! need) followed by an exported wrapper per function: `kiln_mm_nn_<tag>` calls the prelude's static `kiln_mm_nn`, which
//! GCC inlines into it (a static function called once). A kernel's prelude
//! ([`kernel_prelude`]) is the prelude followed by each wrapper's prototype and a
//! `#define` of the function's name to the wrapper's: the kernel's call goes to the runtime,
//! and the prelude's static copy, unused, is never compiled.
//!
//! The longest functions (the packed tiles) are compiled in cases ([`Case`]):
//! one part per range of rows, each the same body compiled knowing its range, so that the
//! paths of one function (decode GEMV passes, register-blocked GEMM) compile in parallel; the
//! kernel's prelude defines the function's tagged name as a dispatcher over the cases.
//!
//! A part may call functions of other parts instead of compiling them ([`RuntimeFn::calls`]:
//! the tiles' micro-kernel, A packing and GEMV pass shapes, `kiln_mm_nt`'s register blocks and
//! the passes of `kiln_att_pv` are parts of their own), so that no part holds a whole long
//! function's code; and a part compiles only the prelude's
//! sections its functions need ([`Section`]).
//!
//! The tag is a hash of the runtime's code and of the compiler's identity (version, flags,
//! CPU, ISA). The runtime's shared objects are loaded with `RTLD_GLOBAL` before the kernels'
//! (`Backend::load_runtime`), and the kernels' modules, linked with undefined references to
//! the tagged names, are loaded after them with those references bound then (`RTLD_NOW`):
//! kernels compile and link without waiting for the runtime, and two runtimes in one process
//! (AVX2 and AVX-512 kernels, other flags) never resolve each other's functions, since their
//! tags differ. `verify` opens kernel modules before the runtime exists, which lazy binding
//! (`-Wl,-z,lazy`) allows; with `LD_BIND_NOW` set that fails (`KILN_CPU_RUNTIME=off`).

use crate::cc::{prelude_upto, Section};
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
    /// Parts whose functions this one's body calls rather than compiles: in its parts, each
    /// of their functions' names is defined, before the prelude, to that part's exported
    /// function, so that the prelude's static copy (guarded by `#if !defined(name)` in the C
    /// headers) is not compiled there. What lets one long function be compiled in several
    /// parts at once (issue 27); those parts are earlier in [`FUNCTIONS`], since a part's
    /// module is loaded with its calls bound (`RTLD_NOW`), after the parts it calls.
    calls: &'static [&'static str],
    /// How much of the prelude its parts compile.
    section: Section,
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
/// both row cases, was ~20 ms of each, and one case of its own takes it out of both. The
/// GEMM and GEMV cases then call what was most of them in parts of their own (see [`tile`]).
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

/// `kiln_mm_nt` without GCC's loop vectoriser: its loops are written in vector types already,
/// and the vectoriser spent ~0.1 s of the blocked case's ~0.19 s on the scalar K tails
/// (explicit `fmaf` chains, so the results do not depend on it), for no speed (a C harness,
/// M = 1, 2, 64, N = 1536, K = 128: the same per-thread CPU time; issue 27).
const MM_NT_OPTIMIZE: &str = "no-tree-loop-vectorize";

const TILE_ARGS: &str = "(ctx, a, lda, wp, K, m0, tm, c0, tn, t, ldt)";
/// A packed f32 or bf16 tile: its GEMM case calls the micro-kernel and the A packing
/// ([`GEMM_UKR`], [`GEMM_PACK_A`]), its GEMV case the pass shapes of `gemv` (parts of their own: compiled in
/// the tile's GEMM case, they made it the longest unit of a model, ~145 ms of gcc of which
/// ~35 ms the packing and ~30 ms the micro-kernel; the GEMV case ~145 ms of which the shapes
/// ~70 ms; issue 27).
const fn tile(
    part: &'static str,
    name: &'static str,
    params: &'static str,
    calls: &'static [&'static str],
) -> RuntimeFn {
    RuntimeFn {
        part,
        ret: "void",
        name,
        params,
        args: TILE_ARGS,
        cases: TILE_CASES,
        optimize: "",
        calls,
        section: Section::Gemm,
    }
}
/// A quantized tile: it compiles what it calls itself (on the integer path, VNNI's or AVX2's,
/// it calls neither the micro-kernel nor the packing; the dequantizing one is not a model's
/// longest unit).
const fn qtile(part: &'static str, name: &'static str, params: &'static str) -> RuntimeFn {
    RuntimeFn {
        cases: QTILE_CASES,
        section: Section::Quant,
        ..tile(part, name, params, &[])
    }
}

/// A function of the prelude's base section in a part of its own: no cases, no options, no
/// calls (see [`RuntimeFn::calling`]).
const fn base(
    part: &'static str,
    ret: &'static str,
    name: &'static str,
    params: &'static str,
    args: &'static str,
) -> RuntimeFn {
    RuntimeFn {
        part,
        ret,
        name,
        params,
        args,
        cases: &[],
        optimize: "",
        calls: &[],
        section: Section::Base,
    }
}

/// A function of its own part, no cases: the parts that [`RuntimeFn::calls`] name.
const fn called(
    part: &'static str,
    name: &'static str,
    params: &'static str,
    args: &'static str,
) -> RuntimeFn {
    RuntimeFn {
        section: Section::Gemm,
        ..base(part, "void", name, params, args)
    }
}

/// The parts of the micro-kernel and of the A packing of the f32 and bf16 tiles' GEMM case:
/// one each (together, ~90 ms of gcc, they were one of a model's longest units; issue 27).
const GEMM_UKR: &str = "gemm_ukr";
const GEMM_PACK_A: &str = "gemm_pack_a";
const GEMV_F32_PARAMS: &str = "(const float *restrict x, int64_t ldx, const float *const *w, int64_t K, float *restrict t, int64_t ldt)";
const GEMV_BF16_PARAMS: &str = "(const float *restrict x, int64_t ldx, const uint16_t *const *w, int64_t K, float *restrict t, int64_t ldt)";
const GEMV_ARGS: &str = "(x, ldx, w, K, t, ldt)";
const ATT_PV_PARAMS: &str = "(float *restrict o, int64_t ldo, const float *restrict p, int64_t ldp, const float *restrict v, int64_t ldv, int64_t M, int64_t K, int64_t N)";
/// The P V passes of a 16-bit KV cache's values (f16 or bf16 bits).
const ATT_PV_HALF_PARAMS: &str = "(float *restrict o, int64_t ldo, const float *restrict p, int64_t ldp, const uint16_t *restrict v, int64_t ldv, int64_t M, int64_t K, int64_t N)";
const ATT_PV_HALF_COLS_PARAMS: &str = "(float *restrict o, int64_t ldo, const float *restrict p, int64_t ldp, const uint16_t *restrict v, int64_t ldv, int64_t M, int64_t K, int64_t n0, int64_t N)";
const ATT_PV_COLS_ARGS: &str = "(o, ldo, p, ldp, v, ldv, M, K, n0, N)";
const MM_NT_PARAMS: &str = "(const float *restrict a, int64_t lda, const float *restrict b, int64_t ldb, float *restrict c, int64_t ldc, int64_t M, int64_t N, int64_t K)";
/// `kiln_mm_nt`'s over 16-bit keys (bf16 or f16 bits, widened in registers).
const MM_NT_HALF_PARAMS: &str = "(const float *restrict a, int64_t lda, const uint16_t *restrict b, int64_t ldb, float *restrict c, int64_t ldc, int64_t M, int64_t N, int64_t K)";
const MM_NT_ARGS: &str = "(a, lda, b, ldb, c, ldc, M, N, K)";
const fn mm_nt_half(part: &'static str, name: &'static str, params: &'static str) -> RuntimeFn {
    RuntimeFn {
        optimize: MM_NT_OPTIMIZE,
        ..base(part, "void", name, params, MM_NT_ARGS)
    }
}
const ATT_PV_ARGS: &str = "(o, ldo, p, ldp, v, ldv, M, K, N)";
const fn att_pv_pass(
    part: &'static str,
    name: &'static str,
    params: &'static str,
    args: &'static str,
) -> RuntimeFn {
    base(part, "void", name, params, args)
}
const fn gemv_f32(part: &'static str, name: &'static str) -> RuntimeFn {
    called(part, name, GEMV_F32_PARAMS, GEMV_ARGS)
}
const fn gemv_bf16(part: &'static str, name: &'static str) -> RuntimeFn {
    called(part, name, GEMV_BF16_PARAMS, GEMV_ARGS)
}

/// Every function of the runtime, by part. A kernel that calls a prelude function not listed
/// here still compiles it itself (the static copy in its prelude), as before the runtime.
pub const FUNCTIONS: &[RuntimeFn] = &[
    // Called by other parts (before them: see `RuntimeFn::calls`). The GEMV pass shapes of
    // `c/gemm.h` (`KILN_GEMV_SHAPES`: R rows x S panels).
    called(GEMM_UKR, "kiln_ukr", "(int64_t kc, const float *restrict a, const float *restrict b, float *restrict c, int64_t ldc, int load_c)", "(kc, a, b, c, ldc, load_c)"),
    called(GEMM_PACK_A, "kiln_pack_a_rows", "(const float *restrict a, int64_t lda, int64_t tm, int64_t K, float *restrict ap)", "(a, lda, tm, K, ap)"),
    // Several panels per pass (one row: 4 or 2 panels, two rows: 2), then one panel, 1 to 4
    // rows: two parts a type (~70 ms of gcc each; one part of all seven shapes was the longest
    // of the parts after the split).
    gemv_f32("gemv_f32_panels", "kiln_gemv_pass_f32_1x4"),
    gemv_f32("gemv_f32_panels", "kiln_gemv_pass_f32_1x2"),
    gemv_f32("gemv_f32_panels", "kiln_gemv_pass_f32_2x2"),
    gemv_f32("gemv_f32_rows", "kiln_gemv_pass_f32_1x1"),
    gemv_f32("gemv_f32_rows", "kiln_gemv_pass_f32_2x1"),
    gemv_f32("gemv_f32_rows", "kiln_gemv_pass_f32_3x1"),
    gemv_f32("gemv_f32_rows", "kiln_gemv_pass_f32_4x1"),
    gemv_bf16("gemv_bf16_panels", "kiln_gemv_pass_bf16_1x4"),
    gemv_bf16("gemv_bf16_panels", "kiln_gemv_pass_bf16_1x2"),
    gemv_bf16("gemv_bf16_panels", "kiln_gemv_pass_bf16_2x2"),
    gemv_bf16("gemv_bf16_rows", "kiln_gemv_pass_bf16_1x1"),
    gemv_bf16("gemv_bf16_rows", "kiln_gemv_pass_bf16_2x1"),
    gemv_bf16("gemv_bf16_rows", "kiln_gemv_pass_bf16_3x1"),
    gemv_bf16("gemv_bf16_rows", "kiln_gemv_pass_bf16_4x1"),
    // The attention's P V product: its AVX-512 tiles of 4 rows with the columns no pass took
    // (those once, where each pass compiled its own copy), and its passes of 2 and 1 rows
    // (with the columns, ~95 ms of gcc: a model's longest unit; issue 27).
    att_pv_pass("attention_pv_rows4", "kiln_att_pv_rows4", ATT_PV_PARAMS, ATT_PV_ARGS),
    att_pv_pass("attention_pv_rows4", "kiln_att_pv_cols", "(float *restrict o, int64_t ldo, const float *restrict p, int64_t ldp, const float *restrict v, int64_t ldv, int64_t M, int64_t K, int64_t n0, int64_t N)", ATT_PV_COLS_ARGS),
    att_pv_pass("attention_pv_rows2", "kiln_att_pv_rows2", ATT_PV_PARAMS, ATT_PV_ARGS),
    // The same for a 16-bit KV cache's values, widened in registers (f16, bf16).
    att_pv_pass("attention_pv_f16_rows4", "kiln_att_pv_f16_rows4", ATT_PV_HALF_PARAMS, ATT_PV_ARGS),
    att_pv_pass("attention_pv_f16_rows4", "kiln_att_pv_f16_cols", ATT_PV_HALF_COLS_PARAMS, ATT_PV_COLS_ARGS),
    att_pv_pass("attention_pv_f16_rows2", "kiln_att_pv_f16_rows2", ATT_PV_HALF_PARAMS, ATT_PV_ARGS),
    att_pv_pass("attention_pv_bf16_rows4", "kiln_att_pv_bf16_rows4", ATT_PV_HALF_PARAMS, ATT_PV_ARGS),
    att_pv_pass("attention_pv_bf16_rows4", "kiln_att_pv_bf16_cols", ATT_PV_HALF_COLS_PARAMS, ATT_PV_COLS_ARGS),
    att_pv_pass("attention_pv_bf16_rows2", "kiln_att_pv_bf16_rows2", ATT_PV_HALF_PARAMS, ATT_PV_ARGS),
    // `kiln_mm_nt`'s register blocks (its M <= 2 rows stay in its own part): tiles of
    // KILN_MMT_ROWS rows, and the rows left. Each ~half of what was the longest part.
    mm_nt_half("mm_nt_tiles", "kiln_mm_nt_tiles", MM_NT_PARAMS),
    mm_nt_half("mm_nt_rows", "kiln_mm_nt_rows", MM_NT_PARAMS),
    mm_nt_half("mm_nt_bf16_tiles", "kiln_mm_nt_bf16_tiles", MM_NT_HALF_PARAMS),
    mm_nt_half("mm_nt_bf16_rows", "kiln_mm_nt_bf16_rows", MM_NT_HALF_PARAMS),
    mm_nt_half("mm_nt_f16_tiles", "kiln_mm_nt_f16_tiles", MM_NT_HALF_PARAMS),
    mm_nt_half("mm_nt_f16_rows", "kiln_mm_nt_f16_rows", MM_NT_HALF_PARAMS),
    // Called by the kernels.
    tile("gemm_f32", "kiln_packed_tile_f32", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const float *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)", &[GEMM_UKR, GEMM_PACK_A, "gemv_f32_panels", "gemv_f32_rows"]),
    tile("gemm_bf16", "kiln_packed_tile_bf16", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint16_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)", &[GEMM_UKR, GEMM_PACK_A, "gemv_bf16_panels", "gemv_bf16_rows"]),
    qtile("gemm_q8_0", "kiln_packed_tile_q8_0", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    qtile("gemm_q4_0", "kiln_packed_tile_q4_0", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    qtile("gemm_q4_k", "kiln_packed_tile_q4_k", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    qtile("gemm_q5_k", "kiln_packed_tile_q5_k", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    qtile("gemm_q6_k", "kiln_packed_tile_q6_k", "(kiln_gemm_ctx *ctx, const float *restrict a, int64_t lda, const uint8_t *restrict wp, int64_t K, int64_t m0, int64_t tm, int64_t c0, int64_t tn, float *restrict t, int64_t ldt)"),
    mm_nt_half("mm_nt", "kiln_mm_nt", MM_NT_PARAMS).calling(&["mm_nt_tiles", "mm_nt_rows"]),
    mm_nt_half("mm_nt_bf16", "kiln_mm_nt_bf16", MM_NT_HALF_PARAMS).calling(&["mm_nt_bf16_tiles", "mm_nt_bf16_rows"]),
    // f16 keys (a 16-bit KV cache's) widened in registers.
    mm_nt_half("mm_nt_f16", "kiln_mm_nt_f16", MM_NT_HALF_PARAMS).calling(&["mm_nt_f16_tiles", "mm_nt_f16_rows"]),
    base("mm_nn", "void", "kiln_mm_nn", "(const float *restrict a, int64_t lda, int64_t sak, const float *restrict b, int64_t ldb, float *restrict c, int64_t ldc, int64_t M, int64_t N, int64_t K)", "(a, lda, sak, b, ldb, c, ldc, M, N, K)"),
    // The attention's helpers: the P V product (its passes in parts of their own, above; a
    // part of its own, so that a program with a 16-bit cache does not compile them) and the
    // online softmax's weights.
    base("attention_pv", "void", "kiln_att_pv", ATT_PV_PARAMS, ATT_PV_ARGS).calling(&["attention_pv_rows4", "attention_pv_rows2"]),
    // A 16-bit KV cache's P V products, in parts of their own: a program with an f32 cache
    // does not compile them.
    base("attention_pv_f16", "void", "kiln_att_pv_f16", ATT_PV_HALF_PARAMS, ATT_PV_ARGS).calling(&["attention_pv_f16_rows4", "attention_pv_f16_rows2"]),
    base("attention_pv_bf16", "void", "kiln_att_pv_bf16", ATT_PV_HALF_PARAMS, ATT_PV_ARGS).calling(&["attention_pv_bf16_rows4", "attention_pv_bf16_rows2"]),
    base("attention", "float", "kiln_softmax_weights", "(float *restrict s, int64_t n, float m)", "(s, n, m)"),
    // The rows' start and rescaling of the online softmax (loops of the attention kernel
    // before: ~20 ms of its unit's gcc; issue 27) and the largest score of a key block, in a
    // part of their own (with the others: ~105 ms of gcc, a model's longest unit).
    base("attention_rows", "void", "kiln_att_start", "(float *restrict o, float *restrict mx, float *restrict sum, int64_t bi, int64_t dv)", "(o, mx, sum, bi, dv)"),
    base("attention_rows", "void", "kiln_att_rescale", "(float *restrict o, int64_t n, float c)", "(o, n, c)"),
    // The largest score of a key block (inlined, it was ~20 ms of the attention kernel's gcc).
    base("attention_rows", "float", "kiln_maxv", "(const float *restrict s, int64_t n)", "(s, n)"),
];

/// What starts the name of every runtime part (and no kernel's: kernels are `kiln_<label>_`).
pub const PART_PREFIX: &str = "kiln_rt_";

impl RuntimeFn {
    /// This function, its body calling the functions of `calls` (see [`RuntimeFn::calls`]).
    const fn calling(self, calls: &'static [&'static str]) -> RuntimeFn {
        RuntimeFn { calls, ..self }
    }

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
            "{} | {} {}{} -> {} [{}] calls {:?} {:?}\n",
            f.part, f.ret, f.name, f.params, f.args, f.optimize, f.calls, f.section
        ));
        for c in f.cases {
            code.push_str(&format!("  case {}: {}\n", c.suffix, c.when));
        }
    }
    code
}

/// The section of the prelude a kernels' translation unit compiles: the GEMM section where a
/// kernel calls a packed tile (it passes the tile the scratch types of `c/gemm.h`), else the
/// base (~4 ms of gcc less a unit; the quantized headers hold nothing a kernel calls but through
/// the runtime).
pub fn kernel_section<'a>(sources: impl IntoIterator<Item = &'a str>) -> Section {
    match sources
        .into_iter()
        .any(|s| s.contains("kiln_packed_tile_") || s.contains("kiln_gemm_"))
    {
        true => Section::Gemm,
        false => Section::Base,
    }
}

/// The prelude of a kernels' translation unit: the prelude up to `section`, then each runtime
/// function's prototype under its tagged name (a function compiled in cases: each case's
/// prototype, and a dispatcher under the tagged name), and its plain name defined to that;
/// with the base section, not the functions that take the GEMM's scratch (the tiles).
pub fn kernel_prelude(isa: Isa, tag: &str, section: Section) -> String {
    let mut p = prelude_upto(isa, section).to_string();
    p.push_str("\n/* ---- the runtime object's functions (kiln-cpu runtime.rs): called, not compiled here */\n");
    for f in FUNCTIONS {
        if section < Section::Gemm && f.params.contains("kiln_gemm_ctx") {
            continue;
        }
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

/// The translation unit of one part: the prototypes of the functions it calls in other parts
/// ([`RuntimeFn::calls`]) and their names defined to them, the prelude up to the section its
/// functions need, the part's symbol, and an exported wrapper per function, or per case of a
/// function, in the part (compiled with `-fvisibility=hidden`: nothing else is exported). A
/// case's wrapper tells the compiler its condition (`__builtin_unreachable` where it does not
/// hold) and has the function's body inlined into it (`flatten`) before the optimiser prunes
/// the paths the condition excludes.
pub fn part_source(isa: Isa, tag: &str, part: &str) -> String {
    let own: Vec<&RuntimeFn> = FUNCTIONS
        .iter()
        .filter(|f| f.parts().iter().any(|p| p == part))
        .collect();
    let mut s = String::new();
    if let Some(f) = own.iter().find(|f| !f.optimize.is_empty()) {
        s.push_str(&format!("#pragma GCC optimize (\"{}\")\n", f.optimize));
    }
    let export = "__attribute__((visibility(\"default\")))";
    let mut calls: Vec<&str> = own.iter().flat_map(|f| f.calls.iter().copied()).collect();
    calls.sort_unstable();
    calls.dedup();
    if !calls.is_empty() {
        s.push_str("#include <stdint.h>\n/* ---- called in other parts of the runtime object (kiln-cpu runtime.rs) */\n");
    }
    for f in FUNCTIONS.iter().filter(|f| calls.contains(&f.part)) {
        s.push_str(&format!(
            "{export} {} {}_{tag}{};\n#define {} {}_{tag}\n",
            f.ret, f.name, f.params, f.name, f.name
        ));
    }
    let section = own.iter().map(|f| f.section).max().unwrap_or(Section::Base);
    s.push_str(prelude_upto(isa, section));
    s.push_str(&format!(
        "\n/* ---- runtime part {part} (kiln-cpu runtime.rs) */\n{export} const int {} = 1;\n",
        part_name(part, tag)
    ));
    for f in own {
        if f.cases.is_empty() {
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

/// The parts the given kernel sources call, and the parts those call (in the table's order,
/// so a part comes after the parts it calls): a function is called where its name is followed
/// by `(`; every part of a function compiled in cases is called.
pub fn parts_called<'a>(sources: impl IntoIterator<Item = &'a str> + Clone) -> Vec<String> {
    let mut called: Vec<&RuntimeFn> = FUNCTIONS
        .iter()
        .filter(|f| {
            let call = format!("{}(", f.name);
            sources.clone().into_iter().any(|s| s.contains(&call))
        })
        .collect();
    // One level: the parts that `calls` names call nothing themselves (a test checks it).
    let by_calls: Vec<&RuntimeFn> = FUNCTIONS
        .iter()
        .filter(|g| called.iter().any(|f| f.calls.contains(&g.part)))
        .collect();
    called.extend(by_calls);
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
        let p = kernel_prelude(Isa::Avx2, "T", Section::Gemm);
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
        assert_eq!(called, ["mm_nt_tiles", "mm_nt_rows", "mm_nt"]);
        // an f16 KV cache's attention compiles its own P V passes, not the f32 ones
        let called = parts_called([
            "kiln_mm_nt_f16(pq",
            "kiln_att_pv_f16(kiln_o",
            "kiln_softmax_weights(s",
        ]);
        assert_eq!(
            called,
            [
                "attention_pv_f16_rows4",
                "attention_pv_f16_rows2",
                "mm_nt_f16_tiles",
                "mm_nt_f16_rows",
                "mm_nt_f16",
                "attention_pv_f16",
                "attention"
            ]
        );
        // a unit without a tile call compiles the base prelude, and no tile prototype
        assert_eq!(kernel_section(["y = kiln_mm_nt(a"]), Section::Base);
        let base = kernel_prelude(Isa::Avx2, "T", Section::Base);
        assert!(
            !base.contains("kiln_packed_tile_bf16_T")
                && base.contains("#define kiln_mm_nt kiln_mm_nt_T")
        );
        assert_eq!(
            kernel_section(["kiln_packed_tile_bf16(&kiln_ctx"]),
            Section::Gemm
        );
    }

    /// A part that calls another part's functions comes after it (its module is loaded with
    /// its calls bound), is given their prototypes and names before the prelude (so the
    /// prelude's guarded static copies are not compiled), and a program that calls the
    /// caller gets both; the called parts call nothing themselves.
    #[test]
    fn called_parts_come_first_and_replace_the_static_copies() {
        let order = parts();
        for f in FUNCTIONS {
            for &c in f.calls {
                let callee = order.iter().position(|p| p == c).expect(c);
                for p in f.parts() {
                    let caller = order.iter().position(|q| *q == p).unwrap();
                    assert!(callee < caller, "{c} after {p}");
                }
                assert!(FUNCTIONS
                    .iter()
                    .filter(|g| g.part == c)
                    .all(|g| g.calls.is_empty() && g.cases.is_empty()));
            }
        }
        let part = part_source(Isa::Avx512, "T", "gemm_bf16_gemm");
        let prelude = part.find("#define KILN_NR").unwrap();
        let define = part.find("#define kiln_ukr kiln_ukr_T\n").unwrap();
        assert!(define < prelude, "{part}");
        assert!(part.contains("#define kiln_gemv_pass_bf16_4x1 kiln_gemv_pass_bf16_4x1_T\n"));
        assert!(!part.contains("kiln_gemv_pass_f32_4x1_T"));
        // the tile's part compiles the GEMM section only; a quantized tile's the whole prelude
        assert!(!part.contains("kiln_packed_tile_q8_0"));
        assert!(part_source(Isa::Avx512, "T", "gemm_q8_0_gemm").contains("kiln_packed_tile_q8_0"));
        let ukr = part_source(Isa::Avx512, "T", "gemm_ukr");
        assert!(ukr.contains("void kiln_ukr_T(int64_t kc"), "{ukr}");
        assert!(!ukr.contains("#define kiln_ukr") && !ukr.contains("kiln_pack_a_rows_T"));
        let called = parts_called(["kiln_packed_tile_bf16(ctx"]);
        assert_eq!(
            called,
            [
                "gemm_ukr",
                "gemm_pack_a",
                "gemv_bf16_panels",
                "gemv_bf16_rows",
                "gemm_bf16_cols",
                "gemm_bf16_gemv",
                "gemm_bf16_gemm"
            ]
        );
    }
}

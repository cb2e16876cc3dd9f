//! WGSL for one kernel: the WGSL dialect ([`crate::dialect::Wgsl`]) and the shared kernel
//! pieces of `kiln_render::parts`, laid out as workgroups. Canonical: the text depends only on
//! the kernel's structure (never on the adapter, its limits or a thread count), so the artifact
//! digest is the same everywhere.
//!
//! Every kernel is one self-contained WGSL module:
//! - `@group(0) @binding(0)`: `var<uniform> P: Params`, bound with a dynamic offset into one
//!   buffer of every launch's params: the kernel's symbols as `i32` in sorted order
//!   ([`kiln_program::Kernel::symbols`]), then `kiln_units`, then for a matmul
//!   `kiln_gemv_rows` and `kiln_gemv_columns` (the device's choice of path, see
//!   [`crate::plan::GemvPlan`]). All-zero
//!   params mean no work, which is what a warm-up dispatch sends.
//! - `@binding(1)`: the output, `read_write`. bf16, f16 and bool outputs are packed words
//!   written with `atomicAnd`/`atomicOr`: two invocations storing the two halves of one word
//!   then never race.
//! - `@binding(2..)`: the inputs, `read`, in the kernel's input numbering; an input spans
//!   [`KernelPlan::slices`] consecutive bindings (slices of [`SLICE_BYTES`] of one buffer).
//! - Loads and stores go through `ld_<buf>(i)` / `st_out(i, v)`, defined here per buffer. A
//!   Q8_0, Q4_0, Q4_K, Q5_K or Q6_K weight is bound as its GGML bytes and `ld_<buf>(i)` dequantizes
//!   element `i` from them (`quantized_load`).
//!
//! Structure per kind ([`crate::plan`] has the launch grids):
//! - elementwise: one invocation per output element, workgroups of [`ELEMENTWISE_WG`];
//! - write (an in-place update of part of the output): one invocation per written element;
//! - reduction: one workgroup of [`REDUCE_WG`] per output element; lanes stride the reduced
//!   axis, then a tree in workgroup memory;
//! - matmul: one [`TILE`] x [`TILE`] workgroup per output tile of one batch; with one row
//!   (decode) a GEMV where each workgroup row owns a column and its lanes stride K, otherwise
//!   tiles of A and B staged through workgroup memory.

use crate::dialect::{Wgsl, PRELUDE};
use crate::plan::{KernelPlan, ELEMENTWISE_WG, REDUCE_WG, SLICE_BYTES, SLICE_WORDS_LOG2, TILE};
use kiln_ir::{numel, DType, Expr};
use kiln_program::{Kernel, KernelKind, LaunchSpec, NAME_PLACEHOLDER};
use kiln_render::parts::{MatMul, MatOperand, Pointwise, Reduction, OUT};
use kiln_render::printer::input_name;
use kiln_render::{emit, Emit};
use kiln_render::{Dialect, IndexOp, Printer};

/// The first line of a kernel that cannot be compiled (its constant sizes overflow WGSL's
/// i32 indices, or its kind is not rendered), followed by the reason; `compile` reports it
/// instead of running naga.
pub const CANNOT_COMPILE: &str = "// kiln-wgpu: cannot compile: ";

/// The kernel's WGSL source, with [`NAME_PLACEHOLDER`] where its entry point's name goes.
pub fn kernel_source(k: &Kernel) -> String {
    if is_fused(k) {
        // The backend opts out of fusion, so only a caller that bypasses `compile` gets here.
        return format!(
            "{CANNOT_COMPILE}the WGSL dialect does not render fused `{}` kernels\n",
            k.label()
        );
    }
    let plan = KernelPlan::of(k);
    let d = &Wgsl;
    let p = Printer::new(d);
    let mut s = String::new();
    if let Some(o) = plan.static_overflow() {
        emit!(
            s,
            "{CANNOT_COMPILE}{o}; this kernel's sizes do not fit WGSL's 32-bit indices"
        );
    }
    s.push_str(PRELUDE);
    params(&plan, &mut s);
    buffers(&plan, &mut s);
    match &k.kind {
        KernelKind::Elementwise { .. } | KernelKind::Write { .. } => {
            pointwise(&p, k, &plan, &mut s)
        }
        KernelKind::Reduce { .. } => reduce(&p, k, &plan, &mut s),
        KernelKind::MatMul { .. } => matmul(&p, k, &plan, &mut s),
        KernelKind::ReduceMap { .. } | KernelKind::Attention { .. } => unreachable!("is_fused"),
    }
    s
}

/// How the kernel is launched: `kiln_units` and its workgroups. One invocation per element
/// in workgroups of [`ELEMENTWISE_WG`], one workgroup of [`REDUCE_WG`] per reduced element,
/// matmuls over their output `[n, m, batch]` in TILE x TILE tiles (or per row, as the device's
/// `GemvPlan` says: see `plan::KernelPlan::launch`).
pub fn launch(k: &Kernel) -> LaunchSpec {
    let out = numel(&k.out_shape);
    let flat = |units: Expr, threads: Expr, wg: u32| LaunchSpec {
        global: [threads, Expr::Const(1), Expr::Const(1)],
        local: [wg, 1, 1],
        ..LaunchSpec::units(k.symbols(), units, Expr::Const(1))
    };
    match &k.kind {
        KernelKind::Elementwise { .. } => flat(out.clone(), out, ELEMENTWISE_WG),
        KernelKind::Write { shape, .. } => flat(numel(shape), numel(shape), ELEMENTWISE_WG),
        KernelKind::Reduce { .. } => flat(out.clone(), out.mul(REDUCE_WG as i64), REDUCE_WG),
        // Never compiled here (see `is_fused`): one workgroup per element.
        KernelKind::ReduceMap { .. } | KernelKind::Attention { .. } => flat(out.clone(), out, 1),
        KernelKind::MatMul { batch, m, n, .. } => LaunchSpec {
            global: [n.clone(), m.clone(), numel(batch)],
            local: [TILE, TILE, 1],
            ..LaunchSpec::units(k.symbols(), numel(batch), Expr::Const(1))
        },
    }
}

/// The kinds the fusion passes make, which this dialect does not render.
fn is_fused(k: &Kernel) -> bool {
    matches!(
        k.kind,
        KernelKind::ReduceMap { .. }
            | KernelKind::Attention { .. }
            | KernelKind::MatMul {
                epilogue: Some(_),
                ..
            }
    )
}

fn params(plan: &KernelPlan, s: &mut String) {
    s.push_str("\nstruct Params {\n");
    for sym in &plan.symbols {
        emit!(s, "    {}: i32,", Wgsl.sym_name(sym));
    }
    s.push_str("    kiln_units: i32,\n");
    if plan.matmul {
        s.push_str("    kiln_gemv_rows: i32,\n    kiln_gemv_columns: i32,\n");
    }
    s.push_str("}\n@group(0) @binding(0) var<uniform> P: Params;\n");
}

/// Declarations of the output and inputs and their load/store functions.
fn buffers(plan: &KernelPlan, s: &mut String) {
    let mut binding = 1;
    // The output: one binding; packed dtypes as atomic words.
    let out = plan.dtypes[0];
    let word = match out {
        DType::F32 => "f32",
        DType::I32 => "i32",
        _ => "atomic<u32>",
    };
    emit!(
        s,
        "@group(0) @binding({binding}) var<storage, read_write> {OUT}: array<{word}>;"
    );
    binding += 1;
    let ty = Wgsl.compute_type(out);
    match out {
        DType::F32 | DType::I32 => {
            emit!(s, "fn st_{OUT}(i: i32, v: {ty}) {{ {OUT}[i] = v; }}")
        }
        _ => {
            // (elements per word - 1, bits per element, the element's bits)
            let (lanes, bits, value): (u32, u32, &str) = match out {
                DType::BF16 => (1, 16, "kiln_f32_to_bf16(v)"),
                DType::F16 => (1, 16, "kiln_f32_to_f16(v)"),
                _ => (3, 8, "select(0u, 1u, v != 0i)"),
            };
            let shift = lanes.count_ones();
            let mask = (1u32 << bits) - 1;
            emit!(s, "fn st_{OUT}(i: i32, v: {ty}) {{");
            emit!(
                s,
                "    let sh = u32(i & {lanes}i) * {bits}u;\n    let w = i >> {shift}u;"
            );
            emit!(
                s,
                "    atomicAnd(&{OUT}[w], ~({mask:#x}u << sh));\n    atomicOr(&{OUT}[w], {value} << sh);\n}}"
            );
        }
    }
    for (i, &dt) in plan.dtypes[1..].iter().enumerate() {
        let name = input_name(i);
        let word = Wgsl.storage_type(dt);
        let slices = plan.slices[1 + i];
        // `w_<name>(w)`: word w of the input.
        if slices == 1 {
            emit!(
                s,
                "@group(0) @binding({binding}) var<storage, read> {name}: array<{word}>;\nfn w_{name}(w: i32) -> {word} {{ return {name}[w]; }}"
            );
            binding += 1;
        } else {
            // Slices of SLICE_BYTES of one buffer: word w is word (w & mask) of slice w >> shift.
            for j in 0..slices {
                emit!(
                    s,
                    "@group(0) @binding({binding}) var<storage, read> {name}_{j}: array<{word}>;"
                );
                binding += 1;
            }
            let mask = (SLICE_BYTES / 4) - 1;
            emit!(s, "fn w_{name}(w: i32) -> {word} {{\n    let o = w & {mask}i;\n    switch (w >> {SLICE_WORDS_LOG2}u) {{");
            for j in 0..slices - 1 {
                emit!(s, "        case {j}i: {{ return {name}_{j}[o]; }}");
            }
            emit!(
                s,
                "        default: {{ return {name}_{}[o]; }}\n    }}\n}}",
                slices - 1
            );
        }
        let at = |w: &str| format!("w_{name}({w})");
        let ty = Wgsl.compute_type(dt);
        let body = match dt {
            DType::F32 | DType::I32 => format!("return {};", at("i")),
            DType::BF16 => format!(
                "let w = {};\n    return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1i) == 1i));",
                at("i >> 1u")
            ),
            DType::F16 => format!(
                "let w = {};\n    return kiln_f16_to_f32((w >> (u32(i & 1i) * 16u)) & 0xffffu);",
                at("i >> 1u")
            ),
            DType::Bool => format!(
                "let w = {};\n    return i32((w >> (u32(i & 3i) * 8u)) & 0xffu);",
                at("i >> 2u")
            ),
            DType::Q8_0 | DType::Q4_0 | DType::Q4_K | DType::Q5_K | DType::Q6_K => {
                s.push_str(&quantized_bytes(&name));
                quantized_load(dt, &name)
            }
        };
        emit!(s, "fn ld_{name}(i: i32) -> {ty} {{\n    {body}\n}}");
    }
}

/// Byte `p` and the f16 at (even) byte `p` of input `name`, from its words: a weight of GGML
/// blocks is bound in the file's byte layout, whose Q8_0 and Q4_0 blocks (34 and 18 bytes)
/// start on any even byte, so a block's fields are read as a word and a shift. The f16 scales
/// sit at even offsets of every block and never straddle two words. Byte offsets are `u32`:
/// a weight's bytes exceed its element count (34/32 for Q8_0), which fits in `i32`.
fn quantized_bytes(name: &str) -> String {
    format!(
        "fn kiln_byte_{name}(p: u32) -> u32 {{ return (w_{name}(i32(p >> 2u)) >> ((p & 3u) * 8u)) & 0xffu; }}\n\
         fn kiln_f16_{name}(p: u32) -> f32 {{ return kiln_f16_to_f32((w_{name}(i32(p >> 2u)) >> ((p & 2u) * 8u)) & 0xffffu); }}\n"
    )
}

/// The body of `ld_<name>(i)` for a weight of GGML blocks: element `i` (a flat element index)
/// dequantized exactly as ggml does (`kiln_ir::quant`; the same steps as `kiln_q*_at` in
/// kiln-render's `cstyle_helpers.h`): the f16 scale to f32, then `d * q`, or for Q4_K
/// `d * sc * q - dmin * m` with ggml's 6-bit sub-block scale and min (Q5_K: `q` with its
/// fifth bit, bit `j` of `qh[l]` for value `l` of sub-block `j`), for Q6_K
/// `d * sc * (q - 32)` with the i8 scale of the value's 16-value sub-block.
fn quantized_load(dt: DType, name: &str) -> String {
    let byte = |p: &str| format!("kiln_byte_{name}({p})");
    let half = |p: &str| format!("kiln_f16_{name}({p})");
    match dt {
        DType::Q8_0 => format!(
            "let e = u32(i);\n    let b = (e >> 5u) * 34u;\n    \
             let q = bitcast<i32>({} << 24u) >> 24u;\n    return f32(q) * {};",
            byte("b + 2u + (e & 31u)"),
            half("b")
        ),
        DType::Q4_0 => format!(
            "let e = u32(i);\n    let b = (e >> 5u) * 18u;\n    let j = e & 31u;\n    \
             let q = ({} >> ((j >> 4u) * 4u)) & 15u;\n    return f32(i32(q) - 8i) * {};",
            byte("b + 2u + (j & 15u)"),
            half("b")
        ),
        DType::Q4_K | DType::Q5_K => {
            // The two share a super-block's head (f16 d and dmin, then 12 bytes of 6-bit
            // sub-block scales and mins) and its dequantization; Q5_K's nibbles come after
            // 32 bytes of fifth bits.
            let (bytes, note, q) = if dt == DType::Q4_K {
                (
                    144,
                    "// ggml's get_scale_min_k4 for sub-block j (the 12 scale bytes start at b + 4).\n    ",
                    format!(
                        "({} >> ((l >> 5u) * 4u)) & 15u",
                        byte("b + 16u + 32u * (v >> 6u) + (l & 31u)")
                    ),
                )
            } else {
                (
                    176,
                    "",
                    format!(
                        "(({} >> ((l >> 5u) * 4u)) & 15u) | ((({} >> j) & 1u) << 4u)",
                        byte("b + 48u + 32u * (v >> 6u) + (l & 31u)"),
                        byte("b + 16u + (v & 31u)")
                    ),
                )
            };
            format!(
                "let e = u32(i);\n    let b = (e >> 8u) * {bytes}u;\n    let v = e & 255u;\n    \
                 let j = v >> 5u;\n    let l = v & 63u;\n    {note}\
                 var sc = {} & 63u;\n    var m = {} & 63u;\n    \
                 if (j >= 4u) {{\n        let x = {};\n        \
                 sc = (x & 15u) | (({} >> 6u) << 4u);\n        \
                 m = (x >> 4u) | (({} >> 6u) << 4u);\n    }}\n    \
                 let q = {q};\n    \
                 let d = {} * f32(sc);\n    let dm = {} * f32(m);\n    return d * f32(q) - dm;",
                byte("b + 4u + j"),
                byte("b + 8u + j"),
                byte("b + 8u + j"),
                byte("b + j"),
                byte("b + 4u + j"),
                half("b"),
                half("b + 2u")
            )
        }
        DType::Q6_K => format!(
            "let e = u32(i);\n    let b = (e >> 8u) * 210u;\n    let v = e & 255u;\n    \
             // Half h of 128 values; quarter k takes nibble k / 2 of ql[l + 32 (k % 2)] and\n    \
             // bit pair k of qh[l]; sub-block (l / 16) + 2 k of the half has the scale.\n    \
             let h = v >> 7u;\n    let k = (v >> 5u) & 3u;\n    let l = v & 31u;\n    \
             let low = ({} >> ((k >> 1u) * 4u)) & 15u;\n    \
             let high = ({} >> (k * 2u)) & 3u;\n    \
             let sc = bitcast<i32>({} << 24u) >> 24u;\n    \
             return {} * f32(sc) * f32(i32(low | (high << 4u)) - 32i);",
            byte("b + 64u * h + l + 32u * (k & 1u)"),
            byte("b + 128u + 32u * h + l"),
            byte("b + 192u + 8u * h + (l >> 4u) + 2u * k"),
            half("b + 208u")
        ),
        _ => unreachable!("{dt} is not block-quantized"),
    }
}

/// `let s_x: i32 = P.s_x;` for every symbol, inside the entry point.
fn symbols(plan: &KernelPlan, s: &mut String) {
    for sym in &plan.symbols {
        let n = Wgsl.sym_name(sym);
        emit!(s, "    let {n}: i32 = P.{n};");
    }
}

/// The entry point of a kernel with one invocation per element (`kiln_i`, below the unit
/// count), before its body.
fn one_per_element(plan: &KernelPlan, s: &mut String) {
    let wg = ELEMENTWISE_WG;
    emit!(s, "\n@compute @workgroup_size({wg})");
    emit!(s, "fn {NAME_PLACEHOLDER}(@builtin(workgroup_id) kiln_wg: vec3<u32>, @builtin(num_workgroups) kiln_nwg: vec3<u32>, @builtin(local_invocation_index) kiln_li: u32) {{");
    emit!(
        s,
        "    let kiln_g = (kiln_wg.y * kiln_nwg.x + kiln_wg.x) * {wg}u + kiln_li;"
    );
    emit!(
        s,
        "    if (kiln_g >= u32(P.kiln_units)) {{ return; }}\n    let kiln_i = i32(kiln_g);"
    );
    symbols(plan, s);
}

/// Elementwise and write kernels: one invocation per element of the output (or of the
/// written part: an in-place update, where the rest of the output keeps what it holds, packed
/// outputs too, their stores changing only their own bits).
fn pointwise(p: &Printer, k: &Kernel, plan: &KernelPlan, s: &mut String) {
    one_per_element(plan, s);
    let pw = Pointwise::of(k).expect("an elementwise or write kernel");
    s.lines("    ", pw.at_flat(p, "kiln_i"));
    s.push_str("}\n");
}

/// One workgroup per output element: lanes stride the reduced axis, then a tree.
fn reduce(p: &Printer, k: &Kernel, plan: &KernelPlan, s: &mut String) {
    let d = p.d;
    let wg = REDUCE_WG;
    let r = Reduction::of(p, k);
    emit!(s, "\nvar<workgroup> kiln_red: array<{}, {wg}>;", r.acc_type);
    emit!(s, "@compute @workgroup_size({wg})");
    emit!(s, "fn {NAME_PLACEHOLDER}(@builtin(workgroup_id) kiln_wg: vec3<u32>, @builtin(num_workgroups) kiln_nwg: vec3<u32>, @builtin(local_invocation_index) kiln_li: u32) {{");
    // Uniform per workgroup, so the barriers below stay in uniform control flow.
    emit!(
        s,
        "    let kiln_o = i32(kiln_wg.y * kiln_nwg.x + kiln_wg.x);\n    if (kiln_o >= P.kiln_units) {{ return; }}"
    );
    symbols(plan, s);
    s.lines("    ", p.unflatten(&k.out_shape, "kiln_o", Some(r.axis)));
    emit!(s, "    var acc: {} = {};", r.acc_type, r.init);
    let v = &r.var;
    emit!(
        s,
        "    for (var {v}: i32 = i32(kiln_li); {v} < {}; {v} = {v} + {wg}i) {{ acc = {}; }}",
        r.len,
        r.combine(d, "acc", &r.element)
    );
    emit!(s, "    kiln_red[kiln_li] = acc;\n    workgroupBarrier();");
    emit!(
        s,
        "    for (var kiln_s = {}u; kiln_s > 0u; kiln_s = kiln_s >> 1u) {{",
        wg / 2
    );
    emit!(
        s,
        "        if (kiln_li < kiln_s) {{ kiln_red[kiln_li] = {}; }}\n        workgroupBarrier();\n    }}",
        r.combine(d, "kiln_red[kiln_li]", "kiln_red[kiln_li + kiln_s]")
    );
    emit!(
        s,
        "    if (kiln_li == 0u) {{ {} }}\n}}",
        r.store(d, "kiln_red[0]", "kiln_o")
    );
}

/// Element (row, col) of a matmul operand as f32: `ld(base + row * rs + col * cs)` (WGSL has
/// no pointers into a buffer: the batch slice's start `base` is part of the index).
fn operand_at(d: &dyn Dialect, o: &MatOperand, base: &str, row: &str, col: &str) -> String {
    let at = d.index_op(IndexOp::Add, base, &o.offset(d, row, col));
    let v = d.load(o.dtype, &o.buf, &at);
    if o.dtype.is_float() {
        v
    } else {
        format!("f32({v})")
    }
}

/// Columns one invocation computes on the CPU-style GEMV path: each activation it loads
/// serves this many weight rows.
pub const GEMV_COLS: i32 = 4;
/// Invocations of a workgroup that work on the CPU-style GEMV path; the workgroup covers
/// `GEMV_COLS * GEMV_INVOCATIONS` columns.
pub const GEMV_INVOCATIONS: i32 = 64;

/// The column stride of B (in elements) when a GEMV can read B two elements per 32-bit word:
/// B is bf16 with k contiguous (a weight `[N, K]` seen transposed), and every row starts on a
/// word (offset, batch strides and row stride even) and ends on one (K even).
pub fn packed_gemv(k: &Kernel) -> Option<i64> {
    let KernelKind::MatMul {
        batch, k: kk, a, b, ..
    } = &k.kind
    else {
        return None;
    };
    let even = |e: &kiln_ir::Expr| e.as_const().is_some_and(|c| c % 2 == 0);
    let batch_even = batch
        .iter()
        .zip(&b.batch_strides)
        .all(|(d, st)| d.is_const(1) || even(st));
    let ok = b.dtype == DType::BF16
        && a.dtype == DType::F32
        && b.row_stride.is_const(1)
        && even(&b.col_stride)
        && even(&b.offset)
        && even(kk)
        && batch_even;
    ok.then(|| b.col_stride.as_const().expect("constant"))
}

/// The GPU-style GEMV of row `row` of A: each workgroup row (`ty`) owns one output column, its
/// TILE lanes (`tx`) stride K (consecutive lanes, consecutive addresses for a `[N, K]` weight),
/// and the partial sums are added in workgroup memory.
fn gemv_lanes(
    d: &dyn Dialect,
    a: &MatOperand,
    b: &MatOperand,
    store: &dyn Fn(&str, &str) -> String,
    s: &mut String,
) {
    let t = TILE;
    emit!(
        s,
        "        let col = i32(kiln_wg.x) * {t}i + ty;\n        var acc = 0.0f;"
    );
    emit!(
        s,
        "        if (col < N) {{\n            for (var kx = tx; kx < K; kx = kx + {t}i) {{ acc = acc + {} * {}; }}\n        }}",
        operand_at(d, a, "kiln_pa", "row", "kx"),
        operand_at(d, b, "kiln_pb", "kx", "col")
    );
    emit!(
        s,
        "        kiln_bs[ty][tx] = acc;\n        workgroupBarrier();"
    );
    emit!(s, "        if (tx == 0i && col < N) {{");
    emit!(
        s,
        "            var sum = 0.0f;\n            for (var q = 0i; q < {t}i; q = q + 1i) {{ sum = sum + kiln_bs[ty][q]; }}"
    );
    emit!(
        s,
        "            {}\n        }}",
        store("(kiln_b * M + row) * N + col", "sum")
    );
}

/// The CPU-style GEMV of row `row` of A: [`GEMV_INVOCATIONS`] invocations of the workgroup each
/// compute [`GEMV_COLS`] whole columns, with no workgroup memory and no barrier. On lavapipe a
/// barrier switches every SIMD fiber of the workgroup and each load is a per-lane access, so
/// this beats the GPU-style GEMV; a bf16 weight is read a word (two elements) at a time (see
/// [`packed_gemv`]). The accumulators are unrolled by hand: a private array indexed in a loop
/// becomes per-lane scratch memory there.
fn gemv_columns(
    d: &dyn Dialect,
    a: &MatOperand,
    b: &MatOperand,
    packed: Option<i64>,
    store: &dyn Fn(&str, &str) -> String,
    s: &mut String,
) {
    let (t, c, n) = (TILE as i32, GEMV_COLS, GEMV_INVOCATIONS);
    emit!(
        s,
        "        let li = ty * {t}i + tx;\n        let c0 = i32(kiln_wg.x) * {}i + li * {c}i;\n        if (li < {n}i && c0 < N) {{",
        c * n
    );
    let cols = 0..c;
    for j in cols.clone() {
        emit!(s, "            var acc{j} = 0.0f;");
    }
    match packed {
        Some(cs) => {
            // The word of element 0 of each column's weight row (rows start on a word).
            for j in cols.clone() {
                emit!(
                    s,
                    "            let r{j} = (kiln_pb + min(c0 + {j}i, N - 1i) * {cs}i) / 2i;"
                );
            }
            emit!(
                s,
                "            for (var q = 0i; q < K / 2i; q = q + 1i) {{\n                let x0 = {};\n                let x1 = {};",
                operand_at(d, a, "kiln_pa", "row", "(2i * q)"),
                operand_at(d, a, "kiln_pa", "row", "(2i * q + 1i)")
            );
            for j in cols.clone() {
                emit!(
                    s,
                    "                let w{j} = w_{}(r{j} + q);\n                acc{j} = acc{j} + x0 * bitcast<f32>(w{j} << 16u) + x1 * bitcast<f32>(w{j} & 0xffff0000u);",
                    b.buf
                );
            }
        }
        None => {
            emit!(
                s,
                "            for (var kx = 0i; kx < K; kx = kx + 1i) {{\n                let x = {};",
                operand_at(d, a, "kiln_pa", "row", "kx")
            );
            for j in cols.clone() {
                emit!(
                    s,
                    "                acc{j} = acc{j} + x * {};",
                    operand_at(d, b, "kiln_pb", "kx", &format!("min(c0 + {j}i, N - 1i)"))
                );
            }
        }
    }
    emit!(s, "            }}");
    for j in cols {
        emit!(
            s,
            "            if (c0 + {j}i < N) {{ let col = c0 + {j}i; {} }}",
            store("(kiln_b * M + row) * N + col", &format!("acc{j}"))
        );
    }
    emit!(s, "        }}");
}

/// One TILE x TILE workgroup per output tile of one batch (grid z). Two paths in one kernel,
/// because the row count is symbolic (the same kernel serves prefill and decode):
/// - few rows (decode: one): a GEMV per row, [`gemv_lanes`] on a GPU, [`gemv_columns`] on a
///   CPU adapter (the device chooses through the params).
/// - otherwise tiles of A and B staged through workgroup memory; the B tile is read along k
///   by consecutive lanes when k is B's contiguous axis (weights `[N, K]` seen transposed).
///
/// Accumulates in f32.
fn matmul(p: &Printer, k: &Kernel, plan: &KernelPlan, s: &mut String) {
    let d = p.d;
    let t = TILE;
    let mm = MatMul::of(p, k);
    let (a, b) = (&mm.a, &mm.b);
    let store = |index: &str, acc: &str| {
        let v = if mm.out.is_float() {
            d.round(mm.out, acc)
        } else {
            d.cast(DType::F32, mm.out, acc)
        };
        d.store(mm.out, OUT, index, &v)
    };
    emit!(
        s,
        "\nvar<workgroup> kiln_as: array<array<f32, {}>, {t}>;\nvar<workgroup> kiln_bs: array<array<f32, {}>, {t}>;",
        t + 1,
        t + 1
    );
    emit!(s, "@compute @workgroup_size({t}, {t})");
    emit!(s, "fn {NAME_PLACEHOLDER}(@builtin(workgroup_id) kiln_wg: vec3<u32>, @builtin(local_invocation_id) kiln_lid: vec3<u32>) {{");
    emit!(
        s,
        "    let kiln_b = i32(kiln_wg.z);\n    if (kiln_b >= P.kiln_units) {{ return; }}"
    );
    symbols(plan, s);
    s.lines(
        "    ",
        mm.sizes().map(|(name, v)| Wgsl.declare_index(name, v)),
    );
    s.lines("    ", p.unflatten(&mm.batch, "kiln_b", None));
    emit!(
        s,
        "    let kiln_pa: i32 = {};\n    let kiln_pb: i32 = {};",
        a.base,
        b.base
    );
    emit!(
        s,
        "    let tx = i32(kiln_lid.x);\n    let ty = i32(kiln_lid.y);"
    );

    // Few rows (decode: one): one GEMV per row, the row in grid y, GPU- or CPU-style. The
    // device chooses both (`kiln_gemv_rows`, `kiln_gemv_columns`; see `plan::GemvPlan`).
    emit!(
        s,
        "    if (M <= P.kiln_gemv_rows) {{\n        let row = i32(kiln_wg.y);\n        if (P.kiln_gemv_columns != 0i) {{"
    );
    gemv_columns(d, a, b, packed_gemv(k), &store, s);
    emit!(s, "        }} else {{");
    gemv_lanes(d, a, b, &store, s);
    emit!(s, "        }}\n        return;\n    }}");

    // Tiled.
    emit!(
        s,
        "    let row = i32(kiln_wg.y) * {t}i + ty;\n    let col = i32(kiln_wg.x) * {t}i + tx;\n    var acc = 0.0f;"
    );
    emit!(s, "    for (var k0 = 0i; k0 < K; k0 = k0 + {t}i) {{");
    emit!(
        s,
        "        var av = 0.0f;\n        if (row < M && k0 + tx < K) {{ av = {}; }}\n        kiln_as[ty][tx] = av;",
        operand_at(d, a, "kiln_pa", "row", "(k0 + tx)")
    );
    if b.row_stride_expr.is_const(1) && !b.col_stride_expr.is_const(1) {
        // k is B's contiguous axis: lanes (tx) walk k, workgroup rows (ty) walk columns.
        emit!(
            s,
            "        let bcol = i32(kiln_wg.x) * {t}i + ty;\n        var bv = 0.0f;\n        if (k0 + tx < K && bcol < N) {{ bv = {}; }}\n        kiln_bs[tx][ty] = bv;",
            operand_at(d, b, "kiln_pb", "(k0 + tx)", "bcol")
        );
    } else {
        emit!(
            s,
            "        var bv = 0.0f;\n        if (k0 + ty < K && col < N) {{ bv = {}; }}\n        kiln_bs[ty][tx] = bv;",
            operand_at(d, b, "kiln_pb", "(k0 + ty)", "col")
        );
    }
    emit!(
        s,
        "        workgroupBarrier();\n        for (var q = 0i; q < {t}i; q = q + 1i) {{ acc = acc + kiln_as[ty][q] * kiln_bs[q][tx]; }}\n        workgroupBarrier();\n    }}"
    );
    emit!(
        s,
        "    if (row < M && col < N) {{ {} }}\n}}",
        store("(kiln_b * M + row) * N + col", "acc")
    );
}

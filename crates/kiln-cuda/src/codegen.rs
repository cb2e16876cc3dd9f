//! CUDA C for one kernel, canonical like the CPU backend's: the text depends only on the
//! kernel's structure. The C-family dialect ([`crate::dialect::CudaC`]: the CPU's, but for index
//! division) and the shared
//! kernel pieces, laid out as threads, warps and tiles.
//!
//! Signature: `extern "C" __global__ void NAME(OUT *out, const IN0 *in0, ..., int64_t sym..., int64_t kiln_units)`
//! with symbols in sorted order. The launch geometry of each kind is its [`launch`] spec.

use crate::dialect::CudaC;
use kiln_ir::{numel, DType, Expr};
use kiln_program::{Kernel, KernelKind, KernelSource, LaunchSpec, NAME_PLACEHOLDER};
use kiln_render::cstyle::{attention_slices, declare_sizes, slice_pointer};
use kiln_render::parts::{AttentionParts, MatMul, Params, Pointwise, Reduction, RowReduction, OUT};
use kiln_render::printer::{acc_name, input_name};
use kiln_render::{emit, Emit};
use kiln_render::{Dialect, IndexOp, Printer};

pub const BLOCK: u32 = 256;
pub const TILE: u32 = 16;

/// How the kernel is launched: `kiln_units` (the last argument) and the grid. Threads of 1-D
/// blocks of [`BLOCK`] for every kind but the matmul, whose blocks are TILE x TILE output
/// tiles over (n, m, batch).
pub fn launch(k: &Kernel) -> LaunchSpec {
    LaunchSpec {
        // What index division divides (see `crate::dialect`): checked at each launch.
        index_extent: numel(k.iteration_shape()).max(numel(&k.out_shape)),
        ..geometry(k)
    }
}

/// The units and grid of [`launch`].
fn geometry(k: &Kernel) -> LaunchSpec {
    let threads = |units: Expr, threads: Expr| LaunchSpec {
        global: [threads, Expr::Const(1), Expr::Const(1)],
        local: [BLOCK, 1, 1],
        ..LaunchSpec::units(k.symbols(), units, Expr::Const(1))
    };
    match &k.kind {
        KernelKind::Elementwise { .. } => {
            let n = numel(&k.out_shape);
            threads(n.clone(), n)
        }
        // A warp per output element.
        KernelKind::Reduce { .. } => {
            let n = numel(&k.out_shape);
            threads(n.clone(), n.mul(32))
        }
        KernelKind::ReduceMap { .. } => {
            // One warp per row; whole blocks, since every thread reaches the block barrier.
            let shape = k.iteration_shape();
            let rows = numel(&shape[..shape.len() - 1]);
            let warps = (BLOCK / 32) as i64;
            let n = rows.clone().add(warps - 1).div(warps).mul(BLOCK as i64);
            threads(rows, n)
        }
        KernelKind::Write { shape, .. } => {
            let n = numel(shape);
            threads(n.clone(), n)
        }
        KernelKind::Attention { batch, m, .. } => {
            // One block per query row (the output may be a view of `[b.., m, dv]` of another
            // shape: see `out_rows`).
            let rows = numel(batch).mul(m.clone());
            threads(rows.clone(), rows.mul(BLOCK as i64))
        }
        KernelKind::MatMul { batch, m, n, .. } => LaunchSpec {
            global: [n.clone(), m.clone(), numel(batch)],
            local: [TILE, TILE, 1],
            ..LaunchSpec::units(k.symbols(), numel(batch), Expr::Const(1))
        },
    }
}

fn header(d: &dyn Dialect, params: &Params, name: &str, s: &mut String) {
    let mut ps = vec![format!(
        "{} *__restrict__ {OUT}",
        d.storage_type(params.out)
    )];
    for (i, t) in params.inputs.iter().enumerate() {
        ps.push(format!(
            "const {} *__restrict__ {}",
            d.storage_type(*t),
            input_name(i)
        ));
    }
    for sym in &params.symbols {
        ps.push(format!("int64_t {}", d.sym_name(sym)));
    }
    ps.push("int64_t kiln_units".into());
    emit!(
        s,
        "extern \"C\" __global__ void {name}({}) {{",
        ps.join(", ")
    );
}

/// The macro that selects a split matmul's decode kernel (see [`decode_rows`]): its
/// [`decode_variant`] defines it, the kernel's own unit does not.
pub const DECODE_VARIANT: &str = "KILN_DECODE_VARIANT";

/// The decode kernel of a split matmul is named after the kernel with this suffix.
pub const DECODE_SUFFIX: &str = "_gemv";

/// The row count that picks the kernel of a matmul split in two, when it is: a matmul whose
/// rows are symbolic serves prefill and decode, and its source holds two kernels, the tiled
/// product (the kernel's own name) and the decode GEMV ([`DECODE_SUFFIX`]), each compiled in
/// a program of its own (NVRTC 13 takes ~50 and ~45 ms of CPU for them apart, ~80-90 ms for
/// both in one program: apart, the two compile in parallel, issue 27). The device launches the GEMV where the rows
/// evaluate to 1 and the tiled product otherwise: one launch per step, as with one kernel that
/// branched on `M == 1`, and the same arithmetic. A matmul with constant rows keeps its one
/// kernel (the branch is decided at compile time).
pub fn decode_rows(k: &Kernel) -> Option<&Expr> {
    match &k.kind {
        KernelKind::MatMul { m, .. } if m.as_const().is_none() => Some(m),
        _ => None,
    }
}

/// The kernel's CUDA C source, with [`NAME_PLACEHOLDER`] where its name goes.
pub fn kernel_source(k: &Kernel) -> String {
    kernel_source_with(k, &|_| String::new())
}

/// [`kernel_source`], with `after(name)` written after each kernel function `name` (the
/// emulator's launchers). A split matmul ([`decode_rows`]) is
/// `#ifndef KILN_DECODE_VARIANT <tiled kernel> #else <decode kernel> #endif`.
pub fn kernel_source_with(k: &Kernel, after: &dyn Fn(&str) -> String) -> String {
    let function = |name: &str, part: MatMulPart| {
        let mut s = function_source(k, name, part);
        s.push_str(&after(name));
        s
    };
    if decode_rows(k).is_none() {
        return function(NAME_PLACEHOLDER, MatMulPart::Both);
    }
    let mut s = format!("#ifndef {DECODE_VARIANT}\n");
    s.push_str(&function(NAME_PLACEHOLDER, MatMulPart::Tiled));
    s.push_str("#else\n");
    s.push_str(&function(
        &format!("{NAME_PLACEHOLDER}{DECODE_SUFFIX}"),
        MatMulPart::Decode,
    ));
    s.push_str("#endif\n");
    s
}

/// The decode kernel of a split matmul's source (`kernel`, as [`Backend::codegen`] wrote it)
/// as a program of its own: the same text with [`DECODE_VARIANT`] defined, named after the
/// kernel with [`DECODE_SUFFIX`]. None for any other kernel. The backends hand these to the
/// pipeline as their runtime parts (`Backend::runtime`): each is a compile unit of its own,
/// keyed, cached and verified like the kernels' units and loaded before them.
///
/// [`Backend::codegen`]: kiln_program::Backend::codegen
pub fn decode_variant(kernel: &KernelSource) -> Option<KernelSource> {
    let split = kernel
        .source
        .starts_with(&format!("#ifndef {DECODE_VARIANT}\n"));
    split.then(|| KernelSource {
        name: format!("{}{DECODE_SUFFIX}", kernel.name),
        source: format!("#define {DECODE_VARIANT}\n{}", kernel.source),
        launch: kernel.launch.clone(),
    })
}

/// The decode variants of `kernels` ([`decode_variant`]), once each, ordered by name: a
/// function of the kernels only.
pub fn decode_variants(kernels: &[KernelSource]) -> Vec<KernelSource> {
    let by_name: std::collections::BTreeMap<String, KernelSource> = kernels
        .iter()
        .filter_map(decode_variant)
        .map(|v| (v.name.clone(), v))
        .collect();
    by_name.into_values().collect()
}

/// Which part of a matmul a kernel function holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MatMulPart {
    /// Both paths, branching on `M == 1` (also every kernel of any other kind).
    Both,
    /// The shared-memory tiled product only.
    Tiled,
    /// The decode GEMV only.
    Decode,
}

/// One kernel function named `name`.
fn function_source(k: &Kernel, name: &str, part: MatMulPart) -> String {
    let d: &dyn Dialect = &CudaC;
    let p = Printer::new(d);
    let mut s = String::new();
    header(d, &Params::of(k), name, &mut s);
    match &k.kind {
        KernelKind::Elementwise { .. } | KernelKind::Write { .. } => {
            // One thread per element of the output (or of the written part).
            emit!(s, "    const int64_t kiln_i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;\n    if (kiln_i >= kiln_units) return;");
            let pw = Pointwise::of(k).expect("an elementwise or write kernel");
            s.lines("    ", pw.at_flat(&p, "kiln_i"));
        }
        KernelKind::Reduce { .. } => {
            // One warp per output element: lanes stride the axis, then a shuffle tree.
            let r = Reduction::of(&p, k);
            emit!(
                s,
                "    const int64_t kiln_w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;"
            );
            emit!(s, "    const int kiln_lane = threadIdx.x & 31;\n    if (kiln_w >= kiln_units) return;");
            s.lines("    ", p.unflatten(&k.out_shape, "kiln_w", Some(r.axis)));
            emit!(s, "    {} acc = {};", r.acc_type, r.init);
            let v = &r.var;
            emit!(
                s,
                "    for (int64_t {v} = kiln_lane; {v} < {}; {v} += 32) acc = {};",
                r.len,
                r.combine(d, "acc", &r.element)
            );
            warp_reduce(&mut s, r.acc_type, "acc", &r.combine(d, "acc", "kiln_x"));
            emit!(s, "    if (kiln_lane == 0) {}", r.store(d, "acc", "kiln_w"));
        }
        KernelKind::ReduceMap { .. } => reduce_map(&p, k, &mut s),
        KernelKind::Attention { .. } => attention(&p, k, &mut s),
        KernelKind::MatMul { .. } => matmul(&p, k, part, &mut s),
    }
    s.push_str("}\n");
    s
}

/// The shuffle tree of a warp's reduction: afterwards lane 0's `acc` (of type `ty`) holds the
/// 32 lanes' values combined; `combined` is `acc` combined with the other lane's `kiln_x`.
fn warp_reduce(s: &mut String, ty: &str, acc: &str, combined: &str) {
    emit!(s, "    for (int kiln_o = 16; kiln_o > 0; kiln_o >>= 1) {{");
    emit!(
        s,
        "        {ty} kiln_x = __shfl_down_sync(0xffffffffu, {acc}, kiln_o);\n        {acc} = {combined};\n    }}"
    );
}

/// How far the row kernels' lane loops unroll: a row of constant length (1024 on qwen3-0.6b,
/// 32 iterations a lane) was unrolled whole, and ptxas compiled the map's body (a precise
/// division and square root per element) 32 times. Four iterations keep four loads in flight
/// per lane (issue 27).
const ROW_UNROLL: u32 = 4;

/// One warp per row: lanes stride the reduction and combine with shuffles; lane 0 hands the
/// row's value to its warp through shared memory (one block barrier); lanes then stride the
/// row's last axis applying the map.
fn reduce_map(p: &Printer, k: &Kernel, s: &mut String) {
    let d = p.d;
    let r = RowReduction::of(p, k);
    let warps = BLOCK / 32;
    emit!(
        s,
        "    const int64_t kiln_w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;"
    );
    emit!(
        s,
        "    const int kiln_lane = threadIdx.x & 31;\n    const bool kiln_live = kiln_w < kiln_units;"
    );
    emit!(s, "    __shared__ {} kiln_rows[{warps}];", r.acc_type);
    emit!(s, "    {} {} = {};", r.acc_type, r.acc, r.init);
    emit!(s, "    if (kiln_live) {{");
    s.lines("        ", p.unflatten(&r.rows, "kiln_w", None));
    emit!(
        s,
        "        #pragma unroll {ROW_UNROLL}\n        for (int64_t {0} = kiln_lane; {0} < {1}; {0} += 32) {2} = {3};",
        r.var,
        r.len,
        r.acc,
        r.combine(d, &r.acc, &r.element)
    );
    emit!(s, "    }}");
    warp_reduce(s, r.acc_type, &r.acc, &r.combine(d, &r.acc, "kiln_x"));
    emit!(
        s,
        "    if (kiln_lane == 0) kiln_rows[threadIdx.x >> 5] = {};",
        r.acc
    );
    emit!(
        s,
        "    __syncthreads();\n    {} = kiln_rows[threadIdx.x >> 5];\n    {}",
        r.acc,
        r.round_acc(d)
    );
    emit!(s, "    if (!kiln_live) return;");
    s.lines("    ", p.unflatten(&r.rows, "kiln_w", None));
    emit!(
        s,
        "    #pragma unroll {ROW_UNROLL}\n    for (int64_t {0} = kiln_lane; {0} < {1}; {0} += 32) {2}",
        r.map_var,
        r.map_len,
        r.store(d, "kiln_w")
    );
}

/// Output columns one attention pass covers: each lane of a warp owns
/// `ATTENTION_COLS / 32` of them (a value dimension wider than this takes several passes,
/// each recomputing the scores).
pub const ATTENTION_COLS: u32 = 128;
// The merge gives each of a pass's columns its own thread, and lanes own whole columns.
const _: () = assert!(BLOCK >= ATTENTION_COLS && ATTENTION_COLS.is_multiple_of(32));
// The GEMV's shuffle tree sums the 16 lanes of a half-warp: two block rows per warp.
const _: () = assert!(TILE == 16);

/// One block per query row (b.., i), an online softmax as in flash attention: the block's
/// warps split the keys, each warp keeping an online softmax of its keys; lanes share each
/// score's dot product (they stride KD, then an xor butterfly of shuffles leaves the same bits
/// in every lane, so the branches on the score below are uniform in the warp) and own
/// [`ATTENTION_COLS`]` / 32` output columns each. The warps' partial results are merged through
/// shared memory. A key whose bias is -inf (a causal mask) is skipped before its product.
/// Keys are split among one block's warps only, not among blocks: decode runs one block per
/// query head (16 on qwen3-0.6b), which the GPU measurements have to judge.
fn attention(p: &Printer, k: &Kernel, s: &mut String) {
    let d = p.d;
    let a = AttentionParts::of(p, k);
    let (q, kt, v) = (&a.q, &a.kt, &a.v);
    let (i, j) = (&a.row_var, &a.key_var);
    let warps = BLOCK / 32;
    let per_lane = ATTENTION_COLS / 32;
    const LOG2E: &str = "1.44269504088896340736f";
    emit!(
        s,
        "    const int64_t kiln_r = blockIdx.x;\n    if (kiln_r >= kiln_units) return;"
    );
    emit!(s, "    {}", declare_sizes(&a.sizes()));
    emit!(
        s,
        "    const int64_t kiln_b = {}, {i} = {};",
        d.index_op(IndexOp::Div, "kiln_r", "M"),
        d.index_op(IndexOp::Rem, "kiln_r", "M")
    );
    s.lines("    ", attention_slices(p, &a));
    emit!(
        s,
        "    const int kiln_warp = threadIdx.x >> 5, kiln_lane = threadIdx.x & 31;"
    );
    emit!(
        s,
        "    __shared__ float kiln_wmx[{warps}], kiln_wsum[{warps}], kiln_wacc[{warps}][{ATTENTION_COLS}];"
    );
    emit!(
        s,
        "    for (int64_t kiln_c0 = 0; kiln_c0 < DV; kiln_c0 += {ATTENTION_COLS}) {{"
    );
    emit!(
        s,
        "        float mx = -INFINITY, sum = 0.0f, acc[{per_lane}] = {{0.0f}};"
    );
    emit!(
        s,
        "        for (int64_t {j} = kiln_warp; {j} < T; {j} += {warps}) {{"
    );
    // Every lane of a warp has the same key: the branches below are uniform in the warp.
    if let Some((bias, _)) = &a.biased {
        emit!(
            s,
            "            const float {} = {bias};\n            if ({} == -INFINITY) continue;",
            acc_name(1),
            acc_name(1)
        );
    }
    emit!(
        s,
        "            float {0} = 0.0f;\n            for (int64_t kk = kiln_lane; kk < KD; kk += 32) {0} += (float)({1}) * (float)({2});",
        acc_name(0),
        q.at(d, "pq", i, "kk"),
        kt.at(d, "pk", "kk", j)
    );
    emit!(
        s,
        "            for (int kiln_o = 16; kiln_o > 0; kiln_o >>= 1) {0} += __shfl_xor_sync(0xffffffffu, {0}, kiln_o);",
        acc_name(0)
    );
    let score = a.biased.as_ref().map_or(&a.score, |(_, rest)| rest);
    emit!(s, "            const float sc = {score};");
    emit!(s, "            if (sc == -INFINITY) continue;");
    emit!(s, "            const float mnew = mx > sc ? mx : sc;");
    emit!(
        s,
        "            const float corr = mx == -INFINITY ? 0.0f : exp2f((mx - mnew) * {LOG2E});"
    );
    emit!(
        s,
        "            const float pj = exp2f((sc - mnew) * {LOG2E});\n            sum = sum * corr + pj;\n            mx = mnew;"
    );
    emit!(
        s,
        "            #pragma unroll\n            for (int t = 0; t < {per_lane}; ++t) {{\n                const int64_t kiln_c = kiln_c0 + kiln_lane + 32 * t;\n                acc[t] = acc[t] * corr + (kiln_c < DV ? pj * (float)({}) : 0.0f);\n            }}",
        v.at(d, "pv", j, "kiln_c")
    );
    emit!(s, "        }}");
    // Merge the warps: rescale each to the largest maximum, then sum. Both loops over the warps
    // stay rolled: they run once per block, and unrolled (eight exp2f, eight compares) they
    // cost ptxas ~8 ms and ~4 ms of the kernel's ~90 (issue 27).
    emit!(
        s,
        "        if (kiln_lane == 0) {{ kiln_wmx[kiln_warp] = mx; kiln_wsum[kiln_warp] = sum; }}\n        #pragma unroll\n        for (int t = 0; t < {per_lane}; ++t) kiln_wacc[kiln_warp][kiln_lane + 32 * t] = acc[t];\n        __syncthreads();"
    );
    emit!(
        s,
        "        const int64_t kiln_c = kiln_c0 + threadIdx.x;\n        if (threadIdx.x < {ATTENTION_COLS} && kiln_c < DV) {{"
    );
    emit!(
        s,
        "            float big = -INFINITY, total = 0.0f, val = 0.0f;\n            #pragma unroll 1\n            for (int w = 0; w < {warps}; ++w) big = kiln_wmx[w] > big ? kiln_wmx[w] : big;"
    );
    emit!(
        s,
        "            #pragma unroll 1\n            for (int w = 0; w < {warps}; ++w) {{\n                if (kiln_wmx[w] == -INFINITY) continue;\n                const float f = exp2f((kiln_wmx[w] - big) * {LOG2E});\n                total += kiln_wsum[w] * f;\n                val += kiln_wacc[w][threadIdx.x] * f;\n            }}"
    );
    // The normalization divides by `total`, which lies in [1, T] (the warp holding the row's
    // largest score contributes at least exp(0) = 1): in that range `__fdividef` is within 2 ulp
    // of IEEE division, and the precise division (its slow path inlined) cost ~12% of NVRTC's
    // work on the kernel (issue 27).
    // Row (b.., i) at `kiln_r * DV`, or where the output view puts it (`out_rows`).
    let at = match &a.out_rows {
        None => "kiln_r * DV + kiln_c".to_string(),
        Some(rows) => format!("{rows} + kiln_c"),
    };
    emit!(
        s,
        "            {}",
        d.store(
            k.out_dtype,
            OUT,
            &at,
            &d.round(k.out_dtype, "(T > 0 ? __fdividef(val, total) : 0.0f)")
        )
    );
    emit!(s, "        }}\n        __syncthreads();\n    }}");
}

/// Matmul, one TILE x TILE block per output tile and one batch per grid z. Two paths, because
/// the row count is symbolic (the same kernel serves prefill and decode); `part` says which
/// this function holds: both, branching on `M == 1`, or one of them, where the matmul is
/// split into two kernels that the device picks between at launch ([`decode_rows`]):
/// - `M == 1` (decode): a GEMV. Each block row (`ty`) owns one output column, its 16 `tx`
///   lanes stride K and sum with shuffles: every thread works and, for weights stored
///   `[N, K]`, consecutive lanes read consecutive addresses.
/// - otherwise a shared-memory tiled product; the B tile is read along k by consecutive
///   threads when k is B's contiguous axis (weights `[N, K]` seen transposed), so loads coalesce.
///
/// An epilogue that reads several products per element (SiLU(gate) * up over one fused
/// weight: columns `col + c` for each offset `c`) keeps one accumulator per product on both
/// paths, so its weight reads are as coalesced as a plain product's.
///
/// Plain FMA in f32, no tensor cores; not tuned for Hopper beyond that. A Q8_0, Q4_0, Q4_K, Q5_K or Q6_K
/// weight is read an element at a time from its GGML blocks on both paths (`kiln_q*_at`, the
/// dequantization ggml does): correct, not tuned (each element re-reads its block's scale).
fn matmul(p: &Printer, k: &Kernel, part: MatMulPart, s: &mut String) {
    let d = p.d;
    let t = TILE;
    let mm = MatMul::of(p, k);
    let (a, b) = (&mm.a, &mm.b);
    let slots: Vec<(String, &String)> = mm
        .cols
        .iter()
        .enumerate()
        .map(|(slot, c)| (acc_name(slot), c))
        .collect();
    let zero_accs = slots
        .iter()
        .map(|(acc, _)| format!("{acc} = 0.0f"))
        .collect::<Vec<_>>()
        .join(", ");
    emit!(s, "    {}", declare_sizes(&mm.sizes()));
    emit!(
        s,
        "    const int64_t kiln_b = blockIdx.z;\n    if (kiln_b >= kiln_units) return;"
    );
    s.lines("    ", p.unflatten(&mm.batch, "kiln_b", None));
    s.lines("    ", [slice_pointer("pa", a), slice_pointer("pb", b)]);
    emit!(s, "    const int tx = threadIdx.x, ty = threadIdx.y;");
    let (vm, vn) = mm.row_col_vars(d);
    // The element at (row, col) from its products (the accumulators): the epilogue, or the
    // product itself.
    let store = |row: &str, col: &str, index: &str| {
        format!(
            "{{ const int64_t {vm} = {row}, {vn} = {col}; (void){vm}; (void){vn}; {} }}",
            mm.store(d, OUT, &mm.value(), index)
        )
    };

    // Decode: one row.
    match part {
        MatMulPart::Both => emit!(s, "    if (M == 1) {{"),
        MatMulPart::Decode => emit!(s, "    {{"),
        MatMulPart::Tiled => {}
    }
    if part != MatMulPart::Tiled {
        emit!(
            s,
            "        const int64_t col = (int64_t)blockIdx.x * {t} + ty;"
        );
        emit!(s, "        float {zero_accs};");
        emit!(s, "        if (col < N) {{");
        gemv_products(d, &mm, &slots, s);
        emit!(s, "        }}");
        // Every lane of the warp reaches the shuffles (a lane past N adds its zeros).
        emit!(
            s,
            "        for (int kiln_o = {}; kiln_o > 0; kiln_o >>= 1) {{",
            t / 2
        );
        for (acc, _) in &slots {
            emit!(
                s,
                "            {acc} += __shfl_down_sync(0xffffffffu, {acc}, kiln_o);"
            );
        }
        emit!(s, "        }}");
        emit!(
            s,
            "        if (tx == 0 && col < N) {}",
            store("0", "col", "kiln_b * N + col")
        );
    }
    match part {
        MatMulPart::Both => emit!(s, "        return;\n    }}"),
        MatMulPart::Decode => {
            emit!(s, "    }}");
            return;
        }
        MatMulPart::Tiled => {}
    }

    // Tiled: one A tile and one B tile per product.
    emit!(
        s,
        "    __shared__ float As[{t}][{}], Bs[{}][{t}][{}];",
        t + 1,
        slots.len(),
        t + 1
    );
    emit!(s, "    const int64_t row = (int64_t)blockIdx.y * {t} + ty, col = (int64_t)blockIdx.x * {t} + tx;");
    emit!(
        s,
        "    float {zero_accs};\n    for (int64_t k0 = 0; k0 < K; k0 += {t}) {{"
    );
    emit!(
        s,
        "        As[ty][tx] = (row < M && k0 + tx < K) ? (float)({}) : 0.0f;",
        a.at(d, "pa", "row", "(k0 + tx)")
    );
    let k_contiguous = b.row_stride_expr.is_const(1) && !b.col_stride_expr.is_const(1);
    if k_contiguous {
        // k is B's contiguous axis: lanes (tx) walk k, rows of the block (ty) walk columns.
        emit!(
            s,
            "        const int64_t bcol = (int64_t)blockIdx.x * {t} + ty;"
        );
    }
    for (slot, (_, c)) in slots.iter().enumerate() {
        if k_contiguous {
            emit!(
                s,
                "        Bs[{slot}][tx][ty] = (k0 + tx < K && bcol < N) ? (float)({}) : 0.0f;",
                b.at(d, "pb", "(k0 + tx)", &format!("(bcol + {c})"))
            );
        } else {
            emit!(
                s,
                "        Bs[{slot}][ty][tx] = (k0 + ty < K && col < N) ? (float)({}) : 0.0f;",
                b.at(d, "pb", "(k0 + ty)", &format!("(col + {c})"))
            );
        }
    }
    emit!(
        s,
        "        __syncthreads();\n        #pragma unroll\n        for (int q = 0; q < {t}; ++q) {{\n            const float kiln_a = As[ty][q];"
    );
    for (slot, (acc, _)) in slots.iter().enumerate() {
        emit!(s, "            {acc} += kiln_a * Bs[{slot}][q][tx];");
    }
    emit!(s, "        }}\n        __syncthreads();\n    }}");
    emit!(
        s,
        "    if (row < M && col < N) {}",
        store("row", "col", "kiln_b * M * N + row * N + col")
    );
}

/// The products of the decode row's column `col`, each lane `tx` of the 16 striding K. Where
/// B's k axis is contiguous and B is bf16 or f32, a lane reads 16 bytes of each column at once
/// (8 or 4 consecutive k) when every column starts 16-byte aligned and K is a multiple of that
/// (checked at run time: buffers are aligned, views into them need not be); otherwise one
/// element at a time. Decode streams every weight once per token, so this loop is what the
/// token rate is made of.
fn gemv_products(d: &dyn Dialect, mm: &MatMul, slots: &[(String, &String)], s: &mut String) {
    let (a, b) = (&mm.a, &mm.b);
    let t = TILE;
    // `fallback`: the loop only views that are not 16-byte aligned take; kept rolled, which
    // takes ~9 ms (of ~65) off NVRTC's time for the decode kernel (issue 27).
    let scalar_loop = |s: &mut String, indent: &str, fallback: bool| {
        if fallback {
            emit!(s, "{indent}#pragma unroll 1");
        }
        emit!(
            s,
            "{indent}for (int64_t kx = tx; kx < K; kx += {t}) {{\n{indent}    const float kiln_a = (float)({});",
            a.at(d, "pa", "0", "kx"),
        );
        for (acc, c) in slots {
            emit!(
                s,
                "{indent}    {acc} += kiln_a * (float)({});",
                b.at(d, "pb", "kx", &format!("(col + {c})"))
            );
        }
        emit!(s, "{indent}}}");
    };
    let unpack = match b.dtype {
        DType::BF16 => Some((8, "kiln_bf16x8_at")),
        DType::F32 => Some((4, "kiln_f32x4_at")),
        _ => None,
    };
    let (Some((lanes, at)), true) = (unpack, b.row_stride_expr.is_const(1)) else {
        scalar_loop(s, "            ", false);
        return;
    };
    let ty = d.storage_type(b.dtype);
    let starts: Vec<String> = slots
        .iter()
        .enumerate()
        .map(|(slot, (_, c))| {
            format!(
                "*kiln_w{slot} = pb + {}",
                d.index_op(IndexOp::Mul, &format!("(col + {c})"), &b.col_stride)
            )
        })
        .collect();
    emit!(s, "            const {ty} {};", starts.join(", "));
    let aligned = (0..slots.len())
        .map(|slot| format!("(unsigned long long)kiln_w{slot}"))
        .collect::<Vec<_>>()
        .join(" | ");
    emit!(
        s,
        "            if (K % {lanes} == 0 && (({aligned}) & 15) == 0) {{"
    );
    emit!(
        s,
        "                for (int64_t kx = tx * {lanes}; kx < K; kx += {}) {{",
        t * lanes
    );
    for slot in 0..slots.len() {
        emit!(
            s,
            "                    const uint4 kiln_q{slot} = *(const uint4 *)(kiln_w{slot} + kx);"
        );
    }
    emit!(
        s,
        "                    #pragma unroll\n                    for (int e = 0; e < {lanes}; ++e) {{\n                        const float kiln_a = (float)({});",
        a.at(d, "pa", "0", "(kx + e)")
    );
    for (slot, (acc, _)) in slots.iter().enumerate() {
        emit!(
            s,
            "                        {acc} += kiln_a * {at}(kiln_q{slot}, e);"
        );
    }
    emit!(
        s,
        "                    }}\n                }}\n            }} else {{"
    );
    scalar_loop(s, "                ", true);
    emit!(s, "            }}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str, text: &str) -> KernelSource {
        KernelSource {
            name: name.into(),
            source: text.into(),
            launch: LaunchSpec::units(Vec::new(), Expr::Const(1), Expr::Const(1)),
        }
    }

    #[test]
    fn decode_variants_are_the_split_sources_once_each_by_name() {
        let split = format!("#ifndef {DECODE_VARIANT}\ntiled\n#else\ngemv\n#endif\n");
        let kernels = [
            source("kiln_matmul_b", &split),
            source(
                "kiln_elementwise_a",
                "extern \"C\" __global__ void a() {}\n",
            ),
            source("kiln_matmul_a", &split),
            // Without dedupe, equal kernels repeat: their decode kernel is compiled once.
            source("kiln_matmul_b", &split),
        ];
        let v = decode_variants(&kernels);
        let names: Vec<&str> = v.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["kiln_matmul_a_gemv", "kiln_matmul_b_gemv"]);
        assert_eq!(
            v[0].source,
            format!("#define {DECODE_VARIANT}\n{split}"),
            "the same text, compiled with the decode kernel selected"
        );
        assert!(decode_variant(&kernels[1]).is_none());
    }
}

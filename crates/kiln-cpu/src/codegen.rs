//! C source for one kernel: the C-family dialect ([`kiln_render::cstyle::CStyle`]) and the
//! shared kernel pieces, laid out as loops over a range of work units. Canonical: the text
//! depends only on the kernel's structure.
//!
//! Every kernel has the signature
//! `void NAME(void *const *buf, const int64_t *sym, int64_t lo, int64_t hi, void *scratch)`:
//! `buf[0]` is the output, `buf[1 + i]` input `i`; `sym` holds the kernel's symbols in sorted
//! order; `[lo, hi)` is the range of parallel work units this call computes (rows for
//! elementwise and row-reduction kernels, output elements for reductions, output blocks for
//! matmuls); `scratch` is the calling worker's scratch memory, at least the launch spec's
//! `scratch` bytes, 64-byte aligned, its first [`SCRATCH_HEADER`] bytes zeroed before each
//! launch (only matmuls and attention use it).
//!
//! [`launch`] is the launch spec that goes with the text: the work units, the element
//! operations of one unit (the device splits large launches over its threads) and the scratch
//! bytes, as expressions the device evaluates at each launch.

use crate::pack::packed_weight;
use kiln_ir::{numel, DType, Expr};
use kiln_program::{Kernel, KernelKind, LaunchSpec, NAME_PLACEHOLDER};
use kiln_render::cstyle::{attention_slices, declare_sizes, slice_pointer, CStyle};
use kiln_render::parts::{AttentionParts, MatMul, Params, Pointwise, Reduction, RowReduction, OUT};
use kiln_render::printer::{acc_name, input_name};
use kiln_render::{emit, Emit};
use kiln_render::{Dialect, Printer};

/// Matmul work unit: an output block of `MM_MC` rows x `MM_NC` columns (`KILN_MC`, `KILN_NC`).
/// 132 rows = 11 micro-kernel strips of 12 (22 of 6), so a 128-token prompt is one row block
/// and each weight panel streams from memory once per launch; 64 columns = 2 or 4 panels, the
/// granularity of the thread split (48 units at N = 3072) and, in decode, a 128 KiB bf16
/// stream.
pub const MM_MC: i64 = 132;
pub const MM_NC: i64 = 64;
// The micro-kernels write whole strips of 12 (AVX-512), 6 (AVX2) or 4 (portable) rows: a row
// block must be a multiple of each, or the last strip of a block overruns its tile in the
// scratch.
const _: () = assert!(MM_MC % 12 == 0);
/// k block of the prefill GEMM (`KILN_KC`): a `KC x NR` weight strip stays in L2 while the
/// row strips of a block reuse it. No blocking constant changes a bit of any result.
pub const MM_KC: i64 = 1024;

/// Attention work unit: `ATT_ROWS` rows of one batch (query heads sharing a KV head are rows
/// of one batch, so they share every key and value load); keys in blocks of `ATT_KEYS`, whose
/// scores sit in the worker's scratch.
pub const ATT_ROWS: i64 = 16;
pub const ATT_KEYS: i64 = 64;

/// How the CPU device launches `k`: its work units, the operations of one, its scratch.
pub fn launch(k: &Kernel) -> LaunchSpec {
    let (units, unit_work) = work_units(k);
    LaunchSpec {
        scratch: scratch_bytes(k),
        ..LaunchSpec::units(k.symbols(), units, unit_work)
    }
}

/// Units of parallel work for a kernel and the work (in element operations) of each unit.
fn work_units(k: &Kernel) -> (Expr, Expr) {
    let ops = k.op_count() as i64;
    match &k.kind {
        KernelKind::Elementwise { .. } => match k.out_shape.split_last() {
            None => (Expr::Const(1), Expr::Const(ops)),
            Some((last, outer)) => (numel(outer), last.clone().mul(ops)),
        },
        KernelKind::Reduce { len, .. } => (numel(&k.out_shape), len.clone().mul(ops)),
        KernelKind::ReduceMap { len, .. } => {
            let (last, outer) = k
                .iteration_shape()
                .split_last()
                .expect("a row kernel has rank >= 1");
            (numel(outer), len.clone().add(last.clone()).mul(ops))
        }
        KernelKind::Write { shape, .. } => match shape.split_last() {
            None => (Expr::Const(1), Expr::Const(ops)),
            Some((last, outer)) => (numel(outer), last.clone().mul(ops)),
        },
        KernelKind::Attention {
            batch, m, n, k, dv, ..
        } => (
            numel(batch).mul(blocks(m, ATT_ROWS)),
            n.clone()
                .mul(k.clone().add(dv.clone()).add(ops))
                .mul(ATT_ROWS * 2),
        ),
        KernelKind::MatMul {
            batch,
            m,
            n,
            k: kk,
            epilogue,
            ..
        } => {
            let slots = epilogue.as_ref().map_or(1, |e| e.cols.len()) as i64;
            (
                numel(batch).mul(blocks(m, MM_MC)).mul(blocks(n, MM_NC)),
                kk.clone().mul(MM_MC * MM_NC * 2 * slots),
            )
        }
    }
}

fn blocks(len: &Expr, block: i64) -> Expr {
    len.clone().add(block - 1).div(block)
}

/// The first bytes of every worker's scratch, which the device zeroes before each launch: a
/// packed matmul keeps there which rows of A the worker has packed in this launch
/// (`kiln_gemm_state`), so that its later calls of the launch reuse them.
pub const SCRATCH_HEADER: i64 = 64;

/// Bytes of scratch one call of `k` needs: for a matmul, one `MC x NC` f32 tile per product
/// slot, and with a packed weight the launch's packing state ([`SCRATCH_HEADER`]), the packed
/// rows of A (`MC x K`) and a widened bf16 strip (`KC x NR`); each part 64-byte aligned.
fn scratch_bytes(k: &Kernel) -> Expr {
    if let KernelKind::Attention { dv, .. } = &k.kind {
        // The rows' unnormalised outputs, and the scores and biases of one key block (a 16-bit
        // KV cache's keys and values are widened in registers: `attention_block`).
        return dv
            .clone()
            .mul(ATT_ROWS * 4)
            .add(2 * ATT_ROWS * ATT_KEYS * 4 + 128);
    }
    let KernelKind::MatMul {
        k: depth, epilogue, ..
    } = &k.kind
    else {
        return Expr::Const(0);
    };
    let slots = epilogue.as_ref().map_or(1, |e| e.cols.len()) as i64;
    let tiles = Expr::Const(slots * MM_MC * MM_NC * 4 + 64);
    if packed_weight(k).is_none() {
        return tiles;
    }
    // Sized for the widest panel, whatever ISA the kernel is compiled for.
    let strip = (MM_KC * crate::isa::MAX_PANEL as i64) * 4 + 64;
    tiles
        .add(depth.clone().mul(MM_MC * 4))
        .add(strip + 64 + SCRATCH_HEADER)
}

/// GCC options of a blocked attention kernel's function ([`attention_block`]), put on that
/// function alone (`__attribute__((optimize))`: the kernels after it in its unit keep the
/// flags of every kernel). Its own loops are O(head dim) or O(keys) per row and block (zeroing,
/// bias, scores, correction, output) next to the O(keys x head dim) products it calls in the
/// runtime object, yet GCC's loop vectoriser, with the vector and scalar epilogues it adds to
/// every loop of unknown trip count, took ~30 of its unit's ~120 ms of gcc CPU time (qwen3-0.6b,
/// gcc 12), the longest unit of a model's compile (issue 27). The very cheap cost model
/// vectorises only loops that need no epilogue: the bias and score loops run once for a whole
/// key block (`ATT_KEYS` keys, vectorised) and once for the last, partial one (scalar),
/// [`whole_or_last_key_block`]; the head-dim loops have a constant trip count. Without the vectoriser at all
/// a prefill's attention ran ~20% slower; with this, as fast as before (docs/benchmarks.md).
/// The loops are elementwise: the same bits vectorised or scalar (no -ffast-math).
const ATTENTION_BLOCK_OPTIMIZE: &str = "vect-cost-model=very-cheap";

/// The function header and the declarations of symbols, output and inputs; `optimize`, if not
/// empty, the GCC options of this function alone.
fn header(d: &dyn Dialect, params: &Params, optimize: &str, out: &mut String) {
    if !optimize.is_empty() {
        emit!(out, "__attribute__((optimize(\"{optimize}\")))");
    }
    emit!(out, "void {NAME_PLACEHOLDER}(void *const *restrict kiln_buf, const int64_t *restrict kiln_sym, int64_t kiln_lo, int64_t kiln_hi, void *restrict kiln_scratch) {{");
    emit!(out, "    (void)kiln_scratch;");
    for (i, s) in params.symbols.iter().enumerate() {
        emit!(out, "    const int64_t {} = kiln_sym[{i}];", d.sym_name(s));
    }
    emit!(
        out,
        "    {0} *restrict {OUT} = ({0} *)kiln_buf[0];",
        d.storage_type(params.out)
    );
    for (i, t) in params.inputs.iter().enumerate() {
        emit!(
            out,
            "    const {0} *restrict {1} = (const {0} *)kiln_buf[{2}];",
            d.storage_type(*t),
            input_name(i),
            i + 1
        );
    }
}

/// The kernel's C source, with [`NAME_PLACEHOLDER`] where its name goes.
pub fn kernel_source(k: &Kernel) -> String {
    let d: &dyn Dialect = &CStyle;
    let p = Printer::new(d);
    let mut s = String::new();
    let optimize = match &k.kind {
        KernelKind::Attention { .. } if attention_is_blocked(&AttentionParts::of(&p, k)) => {
            ATTENTION_BLOCK_OPTIMIZE
        }
        _ => "",
    };
    header(d, &Params::of(k), optimize, &mut s);
    match &k.kind {
        KernelKind::Elementwise { .. } | KernelKind::Write { .. } => pointwise(&p, k, &mut s),
        KernelKind::Reduce { .. } => reduce(&p, k, &mut s),
        KernelKind::ReduceMap { .. } => reduce_map(&p, k, &mut s),
        KernelKind::Attention { .. } => attention(&p, k, &mut s),
        KernelKind::MatMul { .. } => matmul(&p, k, &mut s),
    }
    s.push_str("}\n");
    s
}

/// Elementwise and write kernels. Work unit = one row of the iteration shape (the output's, or
/// the written part's: all but its last axis); the last axis is the inner loop, which the C
/// compiler vectorises.
fn pointwise(p: &Printer, k: &Kernel, s: &mut String) {
    let pw = Pointwise::of(k).expect("an elementwise or write kernel");
    let Some((last, outer)) = pw.shape.split_last() else {
        emit!(s, "    (void)kiln_lo; (void)kiln_hi;");
        s.lines("    ", pw.element(p, "0"));
        return;
    };
    let len = p.index(last);
    let v = p.d.var_name(outer.len() as u32);
    emit!(
        s,
        "    for (int64_t kiln_row = kiln_lo; kiln_row < kiln_hi; ++kiln_row) {{"
    );
    s.lines("        ", p.unflatten(outer, "kiln_row", None));
    emit!(s, "        for (int64_t {v} = 0; {v} < {len}; ++{v}) {{");
    s.lines(
        "            ",
        pw.element(p, &format!("kiln_row * {len} + {v}")),
    );
    emit!(s, "        }}\n    }}");
}

/// Work unit = one output element; the reduced axis is a sequential loop.
fn reduce(p: &Printer, k: &Kernel, s: &mut String) {
    let r = Reduction::of(p, k);
    emit!(
        s,
        "    for (int64_t kiln_o = kiln_lo; kiln_o < kiln_hi; ++kiln_o) {{"
    );
    s.lines(
        "        ",
        p.unflatten(&k.out_shape, "kiln_o", Some(r.axis)),
    );
    emit!(s, "        {} acc = {};", r.acc_type, r.init);
    emit!(
        s,
        "        for (int64_t {0} = 0; {0} < {1}; ++{0}) acc = {2};",
        r.var,
        r.len,
        r.combine(p.d, "acc", &r.element)
    );
    emit!(s, "        {}\n    }}", r.store(p.d, "acc", "kiln_o"));
}

/// Work unit = one output row; the reduction over `Var(rank)`, then the map over the last axis.
fn reduce_map(p: &Printer, k: &Kernel, s: &mut String) {
    let r = RowReduction::of(p, k);
    emit!(
        s,
        "    for (int64_t kiln_row = kiln_lo; kiln_row < kiln_hi; ++kiln_row) {{"
    );
    s.lines("        ", p.unflatten(&r.rows, "kiln_row", None));
    emit!(s, "        {} {} = {};", r.acc_type, r.acc, r.init);
    emit!(
        s,
        "        for (int64_t {0} = 0; {0} < {1}; ++{0}) {2} = {3};",
        r.var,
        r.len,
        r.acc,
        r.combine(p.d, &r.acc, &r.element)
    );
    emit!(s, "        {}", r.round_acc(p.d));
    emit!(
        s,
        "        for (int64_t {0} = 0; {0} < {1}; ++{0}) {{",
        r.map_var,
        r.map_len
    );
    emit!(
        s,
        "            {}\n        }}\n    }}",
        r.store(p.d, "kiln_row")
    );
}

/// Work unit = one MM_MC x MM_NC output block of one batch. Each product slot (column offset
/// of the epilogue, or the product itself) is computed into a tile of the worker's scratch,
/// then every element of the block is stored through the epilogue.
/// - `x @ W^T` with W a packed weight ([`packed_weight`]): the prelude's packed GEMM/GEMV;
/// - B contiguous along k (`Q K^T`): the 2x4 register-blocked NT kernel of the prelude;
/// - B contiguous along n (`P V`): the NN kernel;
/// - anything else: a plain triple loop, accumulating in float.
fn matmul(p: &Printer, k: &Kernel, s: &mut String) {
    let d = p.d;
    let mm = MatMul::of(p, k);
    let (a, b) = (&mm.a, &mm.b);
    let f32_in = a.dtype == DType::F32;
    let packed = packed_weight(k).map(|_| match b.dtype {
        DType::BF16 => "kiln_packed_tile_bf16",
        DType::Q8_0 => "kiln_packed_tile_q8_0",
        DType::Q4_0 => "kiln_packed_tile_q4_0",
        DType::Q4_K => "kiln_packed_tile_q4_k",
        DType::Q5_K => "kiln_packed_tile_q5_k",
        DType::Q6_K => "kiln_packed_tile_q6_k",
        _ => "kiln_packed_tile_f32",
    });
    if b.dtype.is_quantized() && packed.is_none() {
        // The graph admits a quantized weight only as a matmul's `b` operand; the packed
        // kernels are the only ones that read blocks. Anything else stops the compile here,
        // naming the kernel (`Backend::compile` reports the compiler's diagnostics).
        emit!(
            s,
            "#error \"kiln-cpu: this matmul reads a {} weight other than as x @ W^T with whole rows of blocks along a constant K\"",
            b.dtype
        );
    }
    let nt = match b.dtype {
        DType::F32 => Some("kiln_mm_nt"),
        DType::BF16 => Some("kiln_mm_nt_bf16"),
        _ => None,
    }
    .filter(|_| f32_in && a.col_stride_expr.is_const(1) && b.row_stride_expr.is_const(1));
    let nn = f32_in && b.dtype == DType::F32 && b.col_stride_expr.is_const(1);
    let slots = mm.cols.len();
    let tile = MM_MC * MM_NC;
    emit!(s, "    {}", declare_sizes(&mm.sizes()));
    emit!(
        s,
        "    const int64_t TM = (M + {MM_MC} - 1) / {MM_MC}, TN = (N + {MM_NC} - 1) / {MM_NC};"
    );
    emit!(
        s,
        "    const int64_t kiln_cols[{slots}] = {{{}}};",
        mm.cols.join(", ")
    );
    if packed.is_some() {
        // The launch's packing state first (zeroed by the device at every launch), then the
        // tiles, the packed rows of A and the widened bf16 strip.
        emit!(
            s,
            "    float *kiln_tiles = (float *)((char *)kiln_scratch + {SCRATCH_HEADER});"
        );
        emit!(
            s,
            "    char *kiln_rest = (char *)kiln_tiles + {};",
            slots as i64 * tile * 4 + 64
        );
        emit!(s, "    kiln_gemm_ctx kiln_ctx = {{ (float *)kiln_rest, (float *)(kiln_rest + ((K * {MM_MC} * 4 + 63) / 64) * 64), (kiln_gemm_state *)kiln_scratch }};");
    } else {
        emit!(s, "    float *kiln_tiles = (float *)kiln_scratch;");
    }
    // An epilogue over several column ranges of a packed weight (SiLU(gate) * up: the gate's
    // and the up's rows of one weight), in a launch of one row block (decode): the chunk's
    // units are computed slot by slot into one tile row block each, then stored through the
    // epilogue unit by unit. Unit by unit, the weight's ranges alternated every MM_NC columns
    // (two streams restarting every 70 KB of Q8_0 panels: 0.89 of a streaming read in
    // scripts/bench-qgemv.sh with -DSLOTS=2, 0.92-0.95 slot by slot). The same tile calls with
    // the same arguments, in another order: the same bits.
    let by_slot = slots > 1 && packed.is_some() && mm.batch.iter().all(|d| d.is_const(1));
    if let (true, Some(f)) = (by_slot, packed) {
        emit!(
            s,
            "    const int kiln_by_slot = TM == 1 && (kiln_hi - kiln_lo) * M <= {MM_MC};"
        );
        emit!(s, "    if (kiln_by_slot) {{");
        s.lines("        ", [slice_pointer("pa", a), slice_pointer("pb", b)]);
        emit!(
            s,
            "        for (int kiln_j = 0; kiln_j < {slots}; ++kiln_j)\n            for (int64_t kiln_t = kiln_lo; kiln_t < kiln_hi; ++kiln_t) {{"
        );
        emit!(
            s,
            "                const int64_t n0 = kiln_t * {MM_NC}, tn = kiln_min(N - n0, {MM_NC});"
        );
        emit!(
            s,
            "                {f}(&kiln_ctx, pa, {}, pb, K, 0, M, n0 + kiln_cols[kiln_j], tn, kiln_tiles + kiln_j * {tile} + (kiln_t - kiln_lo) * M * {MM_NC}, {MM_NC});\n            }}\n    }}",
            a.row_stride
        );
    }
    emit!(
        s,
        "    for (int64_t kiln_t = kiln_lo; kiln_t < kiln_hi; ++kiln_t) {{"
    );
    emit!(
        s,
        "        const int64_t kiln_b = kiln_t / (TM * TN), kiln_r = kiln_t % (TM * TN);"
    );
    s.lines("        ", p.unflatten(&mm.batch, "kiln_b", None));
    emit!(
        s,
        "        const int64_t m0 = (kiln_r / TN) * {MM_MC}, n0 = (kiln_r % TN) * {MM_NC};"
    );
    emit!(
        s,
        "        const int64_t tm = kiln_min(M - m0, {MM_MC}), tn = kiln_min(N - n0, {MM_NC});"
    );
    s.lines("        ", [slice_pointer("pa", a), slice_pointer("pb", b)]);
    let (sam, sak, sbk, sbn) = (&a.row_stride, &a.col_stride, &b.row_stride, &b.col_stride);
    // Where the chunk's products were computed slot by slot: this unit's rows in each tile.
    let tile_at = if by_slot {
        emit!(
            s,
            "        const int64_t kiln_u = kiln_by_slot ? (kiln_t - kiln_lo) * M * {MM_NC} : 0;"
        );
        emit!(
            s,
            "        for (int kiln_j = 0; kiln_j < {slots} * !kiln_by_slot; ++kiln_j) {{"
        );
        "kiln_u + "
    } else {
        emit!(
            s,
            "        for (int kiln_j = 0; kiln_j < {slots}; ++kiln_j) {{"
        );
        ""
    };
    emit!(
        s,
        "            float *pc = kiln_tiles + kiln_j * {tile};\n            const int64_t c0 = n0 + kiln_cols[kiln_j];"
    );
    if let Some(f) = packed {
        emit!(
            s,
            "            {f}(&kiln_ctx, pa + m0 * {sam}, {sam}, pb, K, m0, tm, c0, tn, pc, {MM_NC});"
        );
    } else if let Some(f) = nt {
        emit!(
            s,
            "            {f}(pa + m0 * {sam}, {sam}, pb + c0 * {sbn}, {sbn}, pc, {MM_NC}, tm, tn, K);"
        );
    } else if nn {
        emit!(
            s,
            "            kiln_mm_nn(pa + m0 * {sam}, {sam}, {sak}, pb + c0, {sbk}, pc, {MM_NC}, tm, tn, K);"
        );
    } else {
        let la = a.at(d, "pa", "(m0 + i)", "kk");
        let lb = b.at(d, "pb", "kk", "(c0 + j)");
        emit!(s, "            for (int64_t i = 0; i < tm; ++i)\n                for (int64_t j = 0; j < tn; ++j) {{");
        emit!(s, "                    float acc = 0.0f;\n                    for (int64_t kk = 0; kk < K; ++kk) acc += {la} * {lb};");
        emit!(
            s,
            "                    pc[i * {MM_NC} + j] = acc;\n                }}"
        );
    }
    emit!(s, "        }}");
    // The epilogue: every element of the block from its products.
    let (vm, vn) = mm.row_col_vars(d);
    emit!(
        s,
        "        {} *pc = {OUT} + kiln_b * M * N + m0 * N + n0;",
        d.storage_type(mm.out)
    );
    emit!(
        s,
        "        for (int64_t i = 0; i < tm; ++i)\n            for (int64_t j = 0; j < tn; ++j) {{"
    );
    emit!(
        s,
        "                const int64_t {vm} = m0 + i, {vn} = n0 + j; (void){vm}; (void){vn};"
    );
    let prod = k_product_dtype(k);
    for slot in 0..slots {
        emit!(
            s,
            "                const float {} = {};",
            acc_name(slot),
            d.round(
                prod,
                &format!(
                    "kiln_tiles[{} + {tile_at}i * {MM_NC} + j]",
                    slot as i64 * tile
                )
            )
        );
    }
    emit!(
        s,
        "                {}\n            }}",
        mm.store(d, "pc", &mm.value(), "i * N + j")
    );
    emit!(s, "    }}");
}

/// Work unit = ATT_ROWS rows of one batch; keys in blocks of ATT_KEYS. Per key block: the
/// rows' scores, each row's block max, then the online softmax update of the row's running
/// max, sum and unnormalised output; f32 operands contiguous along the head dimension (every
/// model's attention) take the blocked path ([`attention_block`]), anything else goes row by
/// row ([`attention_rows`]). Rows and keys run in a fixed order: the same bits on any number
/// of threads.
fn attention(p: &Printer, k: &Kernel, s: &mut String) {
    let d = p.d;
    let a = AttentionParts::of(p, k);
    let contiguous = attention_is_blocked(&a);
    emit!(s, "    {}", declare_sizes(&a.sizes()));
    emit!(
        s,
        "    const int64_t TM = (M + {ATT_ROWS} - 1) / {ATT_ROWS};"
    );
    emit!(s, "    float *kiln_o = (float *)kiln_scratch;\n    float *kiln_s = kiln_o + (({ATT_ROWS} * DV + 15) / 16) * 16;\n    float *kiln_bias = kiln_s + {};\n    (void)kiln_bias;", ATT_ROWS * ATT_KEYS);
    emit!(
        s,
        "    for (int64_t kiln_t = kiln_lo; kiln_t < kiln_hi; ++kiln_t) {{"
    );
    emit!(s, "        const int64_t kiln_b = kiln_t / TM, i0 = (kiln_t % TM) * {ATT_ROWS}, bi = kiln_min(M - i0, {ATT_ROWS});");
    s.lines("        ", attention_slices(p, &a));
    emit!(s, "        float mx[{ATT_ROWS}], sum[{ATT_ROWS}];");
    // The rows' running max, sum and output start in the runtime object (`kiln_att_start`),
    // as the block path's rescaling does (`kiln_att_rescale`): as loops of the kernel they
    // were ~20 ms of its unit's gcc, the longest unit of a model (issue 27).
    emit!(s, "        kiln_att_start(kiln_o, mx, sum, bi, DV);");
    emit!(
        s,
        "        for (int64_t j0 = 0; j0 < T; j0 += {ATT_KEYS}) {{"
    );
    emit!(
        s,
        "            const int64_t bj = kiln_min(T - j0, {ATT_KEYS});"
    );
    if contiguous {
        attention_block(&a, s);
    } else {
        attention_rows(p, &a, s);
    }
    // No keys: the product over zero keys is 0, as unfused; a row whose keys are all masked
    // stays 0/0 = NaN, as the unfused softmax gives.
    let value = d.round(
        k.out_dtype,
        "(T > 0 ? kiln_o[ii * DV + c] / sum[ii] : 0.0f)",
    );
    let out = d.storage_type(k.out_dtype);
    match &a.out_rows {
        None => {
            emit!(s, "        {out} *pc = {OUT} + kiln_b * M * DV + i0 * DV;");
            emit!(
                s,
                "        for (int64_t ii = 0; ii < bi; ++ii) for (int64_t c = 0; c < DV; ++c) {}\n    }}",
                d.store(k.out_dtype, "pc", "ii * DV + c", &value)
            );
        }
        // Each row where the output view puts it (`out_rows`), its values contiguous.
        Some(rows) => {
            let i = &a.row_var;
            emit!(s, "        for (int64_t ii = 0; ii < bi; ++ii) {{\n            const int64_t {i} = i0 + ii; (void){i};\n            {out} *pc = {OUT} + {rows};");
            emit!(
                s,
                "            for (int64_t c = 0; c < DV; ++c) {}\n        }}\n    }}",
                d.store(k.out_dtype, "pc", "c", &value)
            );
        }
    }
}

/// A 16-bit float (a 16-bit KV cache's keys and values).
fn is_half(t: DType) -> bool {
    matches!(t, DType::F16 | DType::BF16)
}

/// Whether an attention kernel takes the blocked path ([`attention_block`]): f32 queries, f32
/// or 16-bit keys and values (a 16-bit KV cache), contiguous along the head dimension.
fn attention_is_blocked(a: &AttentionParts) -> bool {
    let (q, kt, v) = (&a.q, &a.kt, &a.v);
    let float = |t: DType| t == DType::F32 || is_half(t);
    q.dtype == DType::F32
        && float(kt.dtype)
        && float(v.dtype)
        && q.col_stride_expr.is_const(1)
        && kt.row_stride_expr.is_const(1)
        && v.col_stride_expr.is_const(1)
}

/// One key block of f32 operands, contiguous along the head dimension, as small matrix
/// steps: every (row, key) bias first (a block masked for all its rows is skipped), the
/// block's products as one `NT` product (`kiln_mm_nt`: tiles of 4 rows x 4 keys with AVX-512,
/// 2 x 4 with AVX2, whose sums are reduced together, `kiln_hsum_tile`), the scores in place
/// (a loop vectorised for whole key blocks, [`ATTENTION_BLOCK_OPTIMIZE`]) and their maximum (`kiln_maxv`), the online softmax weights a vector
/// at a time (`kiln_softmax_weights`), then `O += P V` over the block (`kiln_att_pv`: each
/// value load shared by four rows with AVX-512, two with AVX2); keys and values of a 16-bit KV
/// cache widened in registers by the `_f16` and `_bf16` versions of both. Every score, weight sum and
/// output element is summed in one order whatever the tile or the row count (a decode row
/// gets the bits a prefill row gets). The products of masked keys in a block that has
/// unmasked ones are computed and discarded: their score is -inf whatever the product, the
/// same result as [`attention_rows`] skipping them.
fn attention_block(a: &AttentionParts, s: &mut String) {
    let (q, kt, v) = (&a.q, &a.kt, &a.v);
    let (i, j) = (&a.row_var, &a.key_var);
    let score = match &a.biased {
        Some((bias, rest)) => {
            emit!(s, "            int kiln_live = 0;");
            let bias_loop = |keys: &str| {
                format!("            for (int64_t ii = 0; ii < bi; ++ii) for (int64_t jj = 0; jj < {keys}; ++jj) {{\n                const int64_t {i} = i0 + ii, {j} = j0 + jj; (void){i}; (void){j};\n                const float b = {bias};\n                kiln_bias[ii * {ATT_KEYS} + jj] = b;\n                kiln_live |= b != -INFINITY;\n            }}")
            };
            whole_or_last_key_block("            ", bias_loop, s);
            emit!(
                s,
                "            if (!kiln_live) continue; /* every key of the block masked for every row */"
            );
            // The score computed for every key and then selected (not a branch): a masked
            // key's product was computed anyway.
            format!(
                "{{ const float {} = kiln_bias[ii * {ATT_KEYS} + jj]; const float kiln_sc = {rest}; *sp = {} == -INFINITY ? -INFINITY : kiln_sc; }}",
                acc_name(1),
                acc_name(1)
            )
        }
        None => format!("*sp = {};", a.score),
    };
    // Keys and values from a 16-bit cache widened in registers (`kiln_mm_nt_bf16`,
    // `kiln_mm_nt_f16`, `kiln_att_pv_bf16`, `kiln_att_pv_f16`): exact, so every product is
    // the f32 path's FMA chain over the same values. Widened a block at a time into scratch
    // instead, each key and value block was converted once per query block and stored and
    // read back (a 1536-token prompt's f16 cache cost 10-25% of its prefill on a Zen 4).
    emit!(
        s,
        "            {}(pq + i0 * {}, {}, pk + j0 * {}, {}, kiln_s, {ATT_KEYS}, bi, bj, KD);",
        nt_fn(kt.dtype),
        q.row_stride,
        q.row_stride,
        kt.col_stride,
        kt.col_stride
    );
    emit!(s, "            for (int64_t ii = 0; ii < bi; ++ii) {{");
    emit!(s, "                const int64_t {i} = i0 + ii; (void){i};");
    emit!(s, "                float *srow = kiln_s + ii * {ATT_KEYS};");
    // The scores in place, then their maximum.
    let score_loop = |keys: &str| {
        format!("                for (int64_t jj = 0; jj < {keys}; ++jj) {{\n                    const int64_t {j} = j0 + jj; (void){j};\n                    float *sp = srow + jj;\n                    const float {} = *sp;\n                    {score}\n                }}", acc_name(0))
    };
    whole_or_last_key_block("                ", score_loop, s);
    emit!(s, "                const float bmax = kiln_maxv(srow, bj);");
    emit!(
        s,
        "                const float mnew = mx[ii] > bmax ? mx[ii] : bmax;"
    );
    emit!(s, "                const float corr = mx[ii] == -INFINITY ? 0.0f : exp2f((mx[ii] - mnew) * 1.44269504088896340736f);");
    emit!(s, "                sum[ii] = sum[ii] * corr + kiln_softmax_weights(srow, bj, mnew);\n                mx[ii] = mnew;");
    emit!(s, "                if (corr != 1.0f) kiln_att_rescale(kiln_o + ii * DV, DV, corr);\n            }}");
    emit!(
        s,
        "            {}(kiln_o, DV, kiln_s, {ATT_KEYS}, pv + j0 * {}, {}, bi, bj, DV);\n        }}",
        pv_fn(v.dtype),
        v.row_stride,
        v.row_stride
    );
}

/// The NT product (`Q K^T`) of f32 rows by keys of dtype `t` (f32, or widened in registers).
fn nt_fn(t: DType) -> &'static str {
    match t {
        DType::BF16 => "kiln_mm_nt_bf16",
        DType::F16 => "kiln_mm_nt_f16",
        _ => "kiln_mm_nt",
    }
}

/// The `O += P V` product of value rows of dtype `t` (f32, or widened in registers).
fn pv_fn(t: DType) -> &'static str {
    match t {
        DType::BF16 => "kiln_att_pv_bf16",
        DType::F16 => "kiln_att_pv_f16",
        _ => "kiln_att_pv",
    }
}

/// A loop over a key block's keys (`loop_` of the bound), twice: with the constant bound
/// `ATT_KEYS` for a whole block, which the very cheap cost model vectorises
/// ([`ATTENTION_BLOCK_OPTIMIZE`]), and with `bj` for the last, partial one. Written once, as
/// a one-line macro: the kernel's source, which the schedule takes as its compile cost
/// estimate, grows by one line, not by a second copy of the loop.
fn whole_or_last_key_block(indent: &str, loop_: impl Fn(&str) -> String, s: &mut String) {
    let text = loop_("(KEYS)");
    let one_line: Vec<&str> = str::lines(&text).map(str::trim).collect();
    emit!(
        s,
        "{indent}#define KILN_KEY_LOOP(KEYS) {}",
        one_line.join(" ")
    );
    emit!(
        s,
        "{indent}if (bj == {ATT_KEYS}) KILN_KEY_LOOP({ATT_KEYS}) else KILN_KEY_LOOP(bj)"
    );
    emit!(s, "{indent}#undef KILN_KEY_LOOP");
}

/// One key block, row by row, for any operand dtypes and strides: each row's scores (the
/// product only where the bias, if any, is not -inf), then the online softmax update of the
/// row's running max, sum and unnormalised output, one value row at a time.
fn attention_rows(p: &Printer, a: &AttentionParts, s: &mut String) {
    let d = p.d;
    let (q, kt, v) = (&a.q, &a.kt, &a.v);
    let (i, j) = (&a.row_var, &a.key_var);
    emit!(s, "            for (int64_t ii = 0; ii < bi; ++ii) {{");
    emit!(s, "                const int64_t {i} = i0 + ii; (void){i};");
    emit!(s, "                float *srow = kiln_s + ii * {ATT_KEYS};\n                float bmax = -INFINITY;\n                int masked = 1;");
    emit!(s, "                for (int64_t jj = 0; jj < bj; ++jj) {{");
    emit!(
        s,
        "                    const int64_t {j} = j0 + jj; (void){j};"
    );
    let product = format!(
        "({{ float kiln_p = 0.0f; for (int64_t kk = 0; kk < KD; ++kk) kiln_p += {} * {}; kiln_p; }})",
        q.at(d, "pq", i, "kk"),
        kt.at(d, "pk", "kk", j)
    );
    match &a.biased {
        Some((bias, rest)) => {
            emit!(
                s,
                "                    const float {} = {bias};",
                acc_name(1)
            );
            emit!(s, "                    float sc = -INFINITY;");
            emit!(
                s,
                "                    if ({} != -INFINITY) {{ const float {} = {product}; sc = {rest}; }}",
                acc_name(1),
                acc_name(0)
            );
        }
        None => {
            emit!(
                s,
                "                    const float {} = {product};\n                    const float sc = {};",
                acc_name(0),
                a.score
            );
        }
    }
    emit!(s, "                    srow[jj] = sc;\n                    if (sc > bmax) bmax = sc;\n                    masked &= sc == -INFINITY;\n                }}");
    emit!(
        s,
        "                if (masked) continue; /* every key of the block masked (a NaN score is not) */"
    );
    emit!(
        s,
        "                const float mnew = mx[ii] > bmax ? mx[ii] : bmax;"
    );
    emit!(s, "                const float corr = mx[ii] == -INFINITY ? 0.0f : exp2f((mx[ii] - mnew) * 1.44269504088896340736f);");
    emit!(s, "                float *orow = kiln_o + ii * DV;\n                float l = sum[ii] * corr;");
    emit!(s, "                int first = 1;");
    emit!(s, "                for (int64_t jj = 0; jj < bj; ++jj) {{");
    emit!(
        s,
        "                    const float pj = exp2f((srow[jj] - mnew) * 1.44269504088896340736f);"
    );
    emit!(
        s,
        "                    if (pj == 0.0f && srow[jj] == -INFINITY) continue;"
    );
    emit!(
        s,
        "                    l += pj;\n                    const int64_t {j} = j0 + jj;"
    );
    emit!(
        s,
        "                    for (int64_t c = 0; c < DV; ++c) orow[c] = orow[c] * (first ? corr : 1.0f) + pj * {};",
        v.at(d, "pv", j, "c")
    );
    emit!(s, "                    first = 0;\n                }}");
    emit!(
        s,
        "                if (first) for (int64_t c = 0; c < DV; ++c) orow[c] *= corr;"
    );
    emit!(
        s,
        "                sum[ii] = l; mx[ii] = mnew;\n            }}\n        }}"
    );
}

/// The dtype of a matmul's products (what the unfused graph stores them in): its A operand's.
fn k_product_dtype(k: &Kernel) -> DType {
    match &k.kind {
        KernelKind::MatMul { a, .. } => a.dtype,
        _ => k.out_dtype,
    }
}

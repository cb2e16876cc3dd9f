//! C source for one kernel. Canonical: the text depends only on the kernel's structure.
//!
//! Every kernel has the signature
//! `void NAME(void *const *buf, const int64_t *sym, int64_t lo, int64_t hi)`:
//! `buf[0]` is the output, `buf[1 + i]` input `i`; `sym` holds the kernel's symbols in sorted
//! order; `[lo, hi)` is the range of parallel work units this call computes (rows for
//! elementwise kernels, output elements for reductions, tiles for matmuls).

use kiln_compile::clike::{
    c, compute_type, literal, load, operand_base, reduce_combine, round, scalar, storage_type,
    store, sym_name, unflatten, var_name,
};
use kiln_compile::{Kernel, KernelKind, Operand, NAME_PLACEHOLDER};
use kiln_ir::{numel, DType, Expr};
use std::fmt::Write;

/// Matmul tile: rows x columns of the output per work unit.
pub const MM_TILE_M: i64 = 64;
pub const MM_TILE_N: i64 = 16;

/// Declarations of symbols, output and inputs at the top of every kernel.
fn header(k: &Kernel, out: &mut String) {
    writeln!(out, "void {NAME_PLACEHOLDER}(void *const *restrict kiln_buf, const int64_t *restrict kiln_sym, int64_t kiln_lo, int64_t kiln_hi) {{").unwrap();
    for (i, s) in k.symbols().iter().enumerate() {
        writeln!(out, "    const int64_t {} = kiln_sym[{i}];", sym_name(s)).unwrap();
    }
    writeln!(
        out,
        "    {0} *restrict out = ({0} *)kiln_buf[0];",
        storage_type(k.out_dtype)
    )
    .unwrap();
    for (i, d) in k.inputs.iter().enumerate() {
        writeln!(
            out,
            "    const {0} *restrict in{i} = (const {0} *)kiln_buf[{1}];",
            storage_type(*d),
            i + 1
        )
        .unwrap();
    }
}

/// Units of parallel work for a kernel and the work (in element operations) of each unit.
pub fn work_units(k: &Kernel) -> (Expr, Expr) {
    let ops = k.op_count() as i64;
    match &k.kind {
        KernelKind::Elementwise { .. } => match k.out_shape.split_last() {
            None => (Expr::Const(1), Expr::Const(ops)),
            Some((last, outer)) => (numel(outer), last.clone().mul(ops)),
        },
        KernelKind::Reduce { len, .. } => (numel(&k.out_shape), len.clone().mul(ops)),
        KernelKind::MatMul {
            batch, m, n, k: kk, ..
        } => {
            let tiles_m = m.clone().add(MM_TILE_M - 1).div(MM_TILE_M);
            let tiles_n = n.clone().add(MM_TILE_N - 1).div(MM_TILE_N);
            (
                numel(batch).mul(tiles_m).mul(tiles_n),
                kk.clone().mul(MM_TILE_M * MM_TILE_N * 2),
            )
        }
    }
}

pub fn kernel_source(k: &Kernel) -> String {
    let mut s = String::new();
    header(k, &mut s);
    match &k.kind {
        KernelKind::Elementwise { lets, body } => {
            let rank = k.out_shape.len();
            if rank == 0 {
                writeln!(s, "    (void)kiln_lo; (void)kiln_hi;").unwrap();
                writeln!(s, "    out[0] = {};", store(k.out_dtype, scalar(body))).unwrap();
            } else {
                let last = rank - 1;
                let len = c(&k.out_shape[last]);
                writeln!(
                    s,
                    "    for (int64_t kiln_row = kiln_lo; kiln_row < kiln_hi; ++kiln_row) {{"
                )
                .unwrap();
                unflatten(&k.out_shape[..last], "kiln_row", None, "        ", &mut s);
                writeln!(
                    s,
                    "        {0} *restrict o = out + kiln_row * {len};",
                    storage_type(k.out_dtype)
                )
                .unwrap();
                writeln!(
                    s,
                    "        for (int64_t {} = 0; {0} < {len}; ++{0}) {{",
                    var_name(last as u32)
                )
                .unwrap();
                for l in lets {
                    writeln!(
                        s,
                        "            const int64_t {} = kiln_clamp((int64_t)({}), 0, {} - 1);",
                        var_name(l.var),
                        scalar(&l.value),
                        c(&l.rows)
                    )
                    .unwrap();
                }
                writeln!(
                    s,
                    "            o[{}] = {};",
                    var_name(last as u32),
                    store(k.out_dtype, scalar(body))
                )
                .unwrap();
                writeln!(s, "        }}\n    }}").unwrap();
            }
        }
        KernelKind::Reduce {
            op,
            axis,
            len,
            body,
        } => {
            let acc_t = compute_type(k.out_dtype);
            let init = literal(
                kiln_compile::kernel::reduce_identity(*op, k.out_dtype).to_bits(),
                k.out_dtype,
            );
            let e = scalar(body);
            let combine = reduce_combine(*op, k.out_dtype, "acc", &e);
            writeln!(
                s,
                "    for (int64_t kiln_o = kiln_lo; kiln_o < kiln_hi; ++kiln_o) {{"
            )
            .unwrap();
            unflatten(&k.out_shape, "kiln_o", Some(*axis), "        ", &mut s);
            writeln!(s, "        {acc_t} acc = {init};").unwrap();
            writeln!(
                s,
                "        for (int64_t {0} = 0; {0} < {1}; ++{0}) acc = {combine};",
                var_name(*axis as u32),
                c(len)
            )
            .unwrap();
            writeln!(
                s,
                "        out[kiln_o] = {};\n    }}",
                store(k.out_dtype, round(k.out_dtype, "acc".into()))
            )
            .unwrap();
        }
        KernelKind::MatMul {
            batch,
            m,
            n,
            k: kk,
            a,
            b,
        } => matmul(k, batch, m, n, kk, a, b, &mut s),
    }
    s.push_str("}\n");
    s
}

#[allow(clippy::too_many_arguments)]
fn matmul(
    k: &Kernel,
    batch: &[Expr],
    m: &Expr,
    n: &Expr,
    kk: &Expr,
    a: &Operand,
    b: &Operand,
    s: &mut String,
) {
    let f32_out = a.dtype == DType::F32 && k.out_dtype == DType::F32;
    let all_f32 = f32_out && b.dtype == DType::F32;
    // x @ W^T with f32 or bf16 weights: the register-blocked NT kernel.
    let nt = match b.dtype {
        DType::F32 => Some("kiln_mm_nt"),
        DType::BF16 => Some("kiln_mm_nt_bf16"),
        _ => None,
    }
    .filter(|_| f32_out && a.col_stride.is_const(1) && b.row_stride.is_const(1));
    writeln!(
        s,
        "    const int64_t M = {}, N = {}, K = {};",
        c(m),
        c(n),
        c(kk)
    )
    .unwrap();
    writeln!(s, "    const int64_t TM = (M + {MM_TILE_M} - 1) / {MM_TILE_M}, TN = (N + {MM_TILE_N} - 1) / {MM_TILE_N};").unwrap();
    writeln!(
        s,
        "    for (int64_t kiln_t = kiln_lo; kiln_t < kiln_hi; ++kiln_t) {{"
    )
    .unwrap();
    writeln!(
        s,
        "        const int64_t kiln_b = kiln_t / (TM * TN), kiln_r = kiln_t % (TM * TN);"
    )
    .unwrap();
    unflatten(batch, "kiln_b", None, "        ", s);
    writeln!(
        s,
        "        const int64_t m0 = (kiln_r / TN) * {MM_TILE_M}, n0 = (kiln_r % TN) * {MM_TILE_N};"
    )
    .unwrap();
    writeln!(s, "        const int64_t tm = kiln_min(M - m0, {MM_TILE_M}), tn = kiln_min(N - n0, {MM_TILE_N});").unwrap();
    let (ab, bb) = (operand_base(a, batch), operand_base(b, batch));
    writeln!(
        s,
        "        const {0} *pa = {ab};\n        const {1} *pb = {bb};",
        storage_type(a.dtype),
        storage_type(b.dtype)
    )
    .unwrap();
    writeln!(
        s,
        "        {} *pc = out + kiln_b * M * N + m0 * N + n0;",
        storage_type(k.out_dtype)
    )
    .unwrap();
    let (sam, sak, sbk, sbn) = (
        c(&a.row_stride),
        c(&a.col_stride),
        c(&b.row_stride),
        c(&b.col_stride),
    );
    if let Some(f) = nt {
        writeln!(
            s,
            "        {f}(pa + m0 * {sam}, {sam}, pb + n0 * {sbn}, {sbn}, pc, N, tm, tn, K);"
        )
        .unwrap();
    } else if all_f32 && b.col_stride.is_const(1) {
        writeln!(
            s,
            "        kiln_mm_nn(pa + m0 * {sam}, {sam}, {sak}, pb + n0, {sbk}, pc, N, tm, tn, K);"
        )
        .unwrap();
    } else {
        // Any layout and dtype: a plain triple loop, accumulating in float.
        let la = load(a.dtype, format!("pa[(m0 + i) * {sam} + kk * {sak}]"));
        let lb = load(b.dtype, format!("pb[kk * {sbk} + (n0 + j) * {sbn}]"));
        writeln!(s, "        for (int64_t i = 0; i < tm; ++i)\n            for (int64_t j = 0; j < tn; ++j) {{").unwrap();
        writeln!(s, "                float acc = 0.0f;\n                for (int64_t kk = 0; kk < K; ++kk) acc += {la} * {lb};").unwrap();
        writeln!(
            s,
            "                pc[i * N + j] = {};\n            }}",
            store(k.out_dtype, round(k.out_dtype, "acc".into()))
        )
        .unwrap();
    }
    writeln!(s, "    }}").unwrap();
}

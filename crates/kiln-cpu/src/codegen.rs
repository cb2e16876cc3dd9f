//! C source for one kernel: the C-family dialect ([`kiln_render::cstyle::CStyle`]) and the
//! shared kernel pieces, laid out as loops over a range of work units. Canonical: the text
//! depends only on the kernel's structure.
//!
//! Every kernel has the signature
//! `void NAME(void *const *buf, const int64_t *sym, int64_t lo, int64_t hi)`:
//! `buf[0]` is the output, `buf[1 + i]` input `i`; `sym` holds the kernel's symbols in sorted
//! order; `[lo, hi)` is the range of parallel work units this call computes (rows for
//! elementwise kernels, output elements for reductions, tiles for matmuls).

use kiln_compile::{Kernel, KernelKind, NAME_PLACEHOLDER};
use kiln_ir::{numel, DType, Expr};
use kiln_render::cstyle::CStyle;
use kiln_render::parts::{element, push_lines, written_element, MatMul, Params, Reduction, OUT};
use kiln_render::printer::input_name;
use kiln_render::{Dialect, Printer};
use std::fmt::Write;

/// Matmul tile: rows x columns of the output per work unit.
pub const MM_TILE_M: i64 = 64;
pub const MM_TILE_N: i64 = 16;

/// Units of parallel work for a kernel and the work (in element operations) of each unit.
pub fn work_units(k: &Kernel) -> (Expr, Expr) {
    let ops = k.op_count() as i64;
    match &k.kind {
        KernelKind::Elementwise { .. } => match k.out_shape.split_last() {
            None => (Expr::Const(1), Expr::Const(ops)),
            Some((last, outer)) => (numel(outer), last.clone().mul(ops)),
        },
        KernelKind::Reduce { len, .. } => (numel(&k.out_shape), len.clone().mul(ops)),
        KernelKind::Write { shape, .. } => match shape.split_last() {
            None => (Expr::Const(1), Expr::Const(ops)),
            Some((last, outer)) => (numel(outer), last.clone().mul(ops)),
        },
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

/// The function header and the declarations of symbols, output and inputs.
fn header(d: &dyn Dialect, params: &Params, out: &mut String) {
    writeln!(out, "void {NAME_PLACEHOLDER}(void *const *restrict kiln_buf, const int64_t *restrict kiln_sym, int64_t kiln_lo, int64_t kiln_hi) {{").unwrap();
    for (i, s) in params.symbols.iter().enumerate() {
        writeln!(out, "    const int64_t {} = kiln_sym[{i}];", d.sym_name(s)).unwrap();
    }
    writeln!(
        out,
        "    {0} *restrict {OUT} = ({0} *)kiln_buf[0];",
        d.storage_type(params.out)
    )
    .unwrap();
    for (i, t) in params.inputs.iter().enumerate() {
        writeln!(
            out,
            "    const {0} *restrict {1} = (const {0} *)kiln_buf[{2}];",
            d.storage_type(*t),
            input_name(i),
            i + 1
        )
        .unwrap();
    }
}

/// The kernel's C source, with [`NAME_PLACEHOLDER`] where its name goes.
pub fn kernel_source(k: &Kernel) -> String {
    let d: &dyn Dialect = &CStyle;
    let p = Printer::new(d);
    let mut s = String::new();
    header(d, &Params::of(k), &mut s);
    match &k.kind {
        KernelKind::Elementwise { .. } => elementwise(&p, k, &mut s),
        KernelKind::Reduce { .. } => reduce(&p, k, &mut s),
        KernelKind::Write { .. } => write(&p, k, &mut s),
        KernelKind::MatMul { .. } => matmul(&p, k, &mut s),
    }
    s.push_str("}\n");
    s
}

/// Work unit = one row (all but the last axis); the last axis is the inner loop, which the C
/// compiler vectorises.
fn elementwise(p: &Printer, k: &Kernel, s: &mut String) {
    let rank = k.out_shape.len();
    if rank == 0 {
        writeln!(s, "    (void)kiln_lo; (void)kiln_hi;").unwrap();
        push_lines(s, "    ", element(p, k, "0"));
        return;
    }
    let last = rank - 1;
    let len = p.index(&k.out_shape[last]);
    let v = p.d.var_name(last as u32);
    writeln!(
        s,
        "    for (int64_t kiln_row = kiln_lo; kiln_row < kiln_hi; ++kiln_row) {{"
    )
    .unwrap();
    push_lines(
        s,
        "        ",
        p.unflatten(&k.out_shape[..last], "kiln_row", None),
    );
    writeln!(s, "        for (int64_t {v} = 0; {v} < {len}; ++{v}) {{").unwrap();
    push_lines(
        s,
        "            ",
        element(p, k, &format!("kiln_row * {len} + {v}")),
    );
    writeln!(s, "        }}\n    }}").unwrap();
}

/// Work unit = one row of the written part (all but its last axis); the last axis is the
/// inner loop.
fn write(p: &Printer, k: &Kernel, s: &mut String) {
    let KernelKind::Write { shape, .. } = &k.kind else {
        unreachable!("a write kernel")
    };
    let Some((last_dim, outer)) = shape.split_last() else {
        writeln!(s, "    (void)kiln_lo; (void)kiln_hi;").unwrap();
        push_lines(s, "    ", written_element(p, k));
        return;
    };
    let v = p.d.var_name(outer.len() as u32);
    writeln!(
        s,
        "    for (int64_t kiln_row = kiln_lo; kiln_row < kiln_hi; ++kiln_row) {{"
    )
    .unwrap();
    push_lines(s, "        ", p.unflatten(outer, "kiln_row", None));
    writeln!(
        s,
        "        for (int64_t {v} = 0; {v} < {}; ++{v}) {{",
        p.index(last_dim)
    )
    .unwrap();
    push_lines(s, "            ", written_element(p, k));
    writeln!(s, "        }}\n    }}").unwrap();
}

/// Work unit = one output element; the reduced axis is a sequential loop.
fn reduce(p: &Printer, k: &Kernel, s: &mut String) {
    let r = Reduction::of(p, k);
    writeln!(
        s,
        "    for (int64_t kiln_o = kiln_lo; kiln_o < kiln_hi; ++kiln_o) {{"
    )
    .unwrap();
    push_lines(
        s,
        "        ",
        p.unflatten(&k.out_shape, "kiln_o", Some(r.axis)),
    );
    writeln!(s, "        {} acc = {};", r.acc_type, r.init).unwrap();
    writeln!(
        s,
        "        for (int64_t {0} = 0; {0} < {1}; ++{0}) acc = {2};",
        r.var,
        r.len,
        r.combine(p.d, "acc", &r.element)
    )
    .unwrap();
    writeln!(s, "        {}\n    }}", r.store(p.d, "acc", "kiln_o")).unwrap();
}

/// Work unit = one MM_TILE_M x MM_TILE_N output tile of one batch. `x @ W^T` with f32 or
/// bf16 weights goes to the register-blocked NT kernels of the prelude, `P @ V` (B contiguous
/// along n) to the NN kernel, anything else to a plain triple loop.
fn matmul(p: &Printer, k: &Kernel, s: &mut String) {
    let d = p.d;
    let mm = MatMul::of(p, k);
    let (a, b) = (&mm.a, &mm.b);
    let f32_out = a.dtype == DType::F32 && mm.out == DType::F32;
    let nt = match b.dtype {
        DType::F32 => Some("kiln_mm_nt"),
        DType::BF16 => Some("kiln_mm_nt_bf16"),
        _ => None,
    }
    .filter(|_| f32_out && a.col_stride_expr.is_const(1) && b.row_stride_expr.is_const(1));
    let nn = f32_out && b.dtype == DType::F32 && b.col_stride_expr.is_const(1);
    writeln!(
        s,
        "    const int64_t M = {}, N = {}, K = {};",
        mm.m, mm.n, mm.k
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
    push_lines(s, "        ", p.unflatten(&mm.batch, "kiln_b", None));
    writeln!(
        s,
        "        const int64_t m0 = (kiln_r / TN) * {MM_TILE_M}, n0 = (kiln_r % TN) * {MM_TILE_N};"
    )
    .unwrap();
    writeln!(s, "        const int64_t tm = kiln_min(M - m0, {MM_TILE_M}), tn = kiln_min(N - n0, {MM_TILE_N});").unwrap();
    writeln!(
        s,
        "        const {} *pa = {} + {};\n        const {} *pb = {} + {};",
        d.storage_type(a.dtype),
        a.buf,
        a.base,
        d.storage_type(b.dtype),
        b.buf,
        b.base
    )
    .unwrap();
    writeln!(
        s,
        "        {} *pc = {OUT} + kiln_b * M * N + m0 * N + n0;",
        d.storage_type(mm.out)
    )
    .unwrap();
    let (sam, sak, sbk, sbn) = (&a.row_stride, &a.col_stride, &b.row_stride, &b.col_stride);
    if let Some(f) = nt {
        writeln!(
            s,
            "        {f}(pa + m0 * {sam}, {sam}, pb + n0 * {sbn}, {sbn}, pc, N, tm, tn, K);"
        )
        .unwrap();
    } else if nn {
        writeln!(
            s,
            "        kiln_mm_nn(pa + m0 * {sam}, {sam}, {sak}, pb + n0, {sbk}, pc, N, tm, tn, K);"
        )
        .unwrap();
    } else {
        // Any layout and dtype: a plain triple loop, accumulating in float.
        let la = a.at(d, "pa", "(m0 + i)", "kk");
        let lb = b.at(d, "pb", "kk", "(n0 + j)");
        writeln!(s, "        for (int64_t i = 0; i < tm; ++i)\n            for (int64_t j = 0; j < tn; ++j) {{").unwrap();
        writeln!(s, "                float acc = 0.0f;\n                for (int64_t kk = 0; kk < K; ++kk) acc += {la} * {lb};").unwrap();
        writeln!(
            s,
            "                {}\n            }}",
            mm.store(d, "pc", "acc", "i * N + j")
        )
        .unwrap();
    }
    writeln!(s, "    }}").unwrap();
}

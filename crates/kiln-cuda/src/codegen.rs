//! CUDA C for one kernel, canonical like the CPU backend's: the text depends only on the
//! kernel's structure. The C-family dialect ([`kiln_render::cstyle::CStyle`]) and the shared
//! kernel pieces, laid out as threads, warps and tiles.
//!
//! Signature: `extern "C" __global__ void NAME(OUT *out, const IN0 *in0, ..., int64_t sym..., int64_t kiln_units)`
//! with symbols in sorted order. Launch geometry per kind is in [`launch_shape`].

use kiln_compile::{Kernel, KernelKind, NAME_PLACEHOLDER};
use kiln_ir::{numel, Bindings, Expr};
use kiln_render::cstyle::CStyle;
use kiln_render::parts::{element, push_lines, written_element, MatMul, Params, Reduction, OUT};
use kiln_render::printer::input_name;
use kiln_render::{Dialect, Printer};
use kiln_runtime::RunError;
use std::fmt::Write;

pub const BLOCK: u32 = 256;
pub const TILE: u32 = 16;

/// How a kernel is launched: `threads` total threads of 1-D blocks of [`BLOCK`], or a
/// matmul grid of TILE x TILE blocks over (n, m, batch).
pub enum LaunchShape {
    Threads(Expr),
    MatMulGrid { n: Expr, m: Expr, batch: Expr },
}

/// The work-unit count passed as `kiln_units` and the launch geometry.
pub fn launch_shape(k: &Kernel) -> (Expr, LaunchShape) {
    match &k.kind {
        KernelKind::Elementwise { .. } => {
            let n = numel(&k.out_shape);
            (n.clone(), LaunchShape::Threads(n))
        }
        KernelKind::Reduce { .. } => {
            let n = numel(&k.out_shape);
            (n.clone(), LaunchShape::Threads(n.mul(32)))
        }
        KernelKind::Write { shape, .. } => {
            let n = numel(shape);
            (n.clone(), LaunchShape::Threads(n))
        }
        KernelKind::MatMul { batch, m, n, .. } => (
            numel(batch),
            LaunchShape::MatMulGrid {
                n: n.clone(),
                m: m.clone(),
                batch: numel(batch),
            },
        ),
    }
}

/// How to launch one kernel, for any binding of its symbols.
pub struct LaunchPlan {
    units: Expr,
    shape: LaunchShape,
    symbols: Vec<String>,
}

/// One launch for a binding. The kernel's arguments are, in this order: the output buffer, the
/// input buffers (in the step's order), `symbols`, then `units`.
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub symbols: Vec<i64>,
    pub units: i64,
}

impl LaunchPlan {
    pub fn new(k: &Kernel) -> LaunchPlan {
        let (units, shape) = launch_shape(k);
        LaunchPlan {
            units,
            shape,
            symbols: k.symbols(),
        }
    }

    /// The launch for bindings `b`; None when there is no work (an empty tensor).
    pub fn resolve(&self, b: &Bindings) -> Result<Option<Launch>, RunError> {
        let units = self.units.eval(b)?;
        let (grid, block) = match &self.shape {
            LaunchShape::Threads(n) => {
                let n = n.eval(b)?;
                let blk = BLOCK as i64;
                ([(n + blk - 1) / blk, 1, 1], [BLOCK, 1, 1])
            }
            LaunchShape::MatMulGrid { n, m, batch } => {
                let (n, m, batch) = (n.eval(b)?, m.eval(b)?, batch.eval(b)?);
                let t = TILE as i64;
                ([(n + t - 1) / t, (m + t - 1) / t, batch], [TILE, TILE, 1])
            }
        };
        if units <= 0 || grid.iter().any(|&g| g <= 0) {
            return Ok(None);
        }
        // CUDA's grid limits: x < 2^31, y and z < 2^16.
        if grid[0] >= 1 << 31 || grid[1] >= 1 << 16 || grid[2] >= 1 << 16 {
            return Err(RunError::Unsupported(format!(
                "CUDA grid {grid:?} exceeds the device limits (2^31-1, 65535, 65535)"
            )));
        }
        let symbols = self
            .symbols
            .iter()
            .map(|s| Expr::sym(s).eval(b))
            .collect::<Result<_, _>>()?;
        Ok(Some(Launch {
            grid: grid.map(|g| g as u32),
            block,
            symbols,
            units,
        }))
    }
}

fn header(d: &dyn Dialect, params: &Params, s: &mut String) {
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
    writeln!(
        s,
        "extern \"C\" __global__ void {NAME_PLACEHOLDER}({}) {{",
        ps.join(", ")
    )
    .unwrap();
}

/// The kernel's CUDA C source, with [`NAME_PLACEHOLDER`] where its name goes.
pub fn kernel_source(k: &Kernel) -> String {
    let d: &dyn Dialect = &CStyle;
    let p = Printer::new(d);
    let mut s = String::new();
    header(d, &Params::of(k), &mut s);
    match &k.kind {
        KernelKind::Elementwise { .. } => {
            // One thread per output element.
            writeln!(s, "    const int64_t kiln_i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;\n    if (kiln_i >= kiln_units) return;").unwrap();
            push_lines(&mut s, "    ", p.unflatten(&k.out_shape, "kiln_i", None));
            push_lines(&mut s, "    ", element(&p, k, "kiln_i"));
        }
        KernelKind::Reduce { .. } => {
            // One warp per output element: lanes stride the axis, then a shuffle tree.
            let r = Reduction::of(&p, k);
            writeln!(
                s,
                "    const int64_t kiln_w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;"
            )
            .unwrap();
            writeln!(s, "    const int kiln_lane = threadIdx.x & 31;\n    if (kiln_w >= kiln_units) return;").unwrap();
            push_lines(
                &mut s,
                "    ",
                p.unflatten(&k.out_shape, "kiln_w", Some(r.axis)),
            );
            writeln!(s, "    {} acc = {};", r.acc_type, r.init).unwrap();
            let v = &r.var;
            writeln!(
                s,
                "    for (int64_t {v} = kiln_lane; {v} < {}; {v} += 32) acc = {};",
                r.len,
                r.combine(d, "acc", &r.element)
            )
            .unwrap();
            writeln!(s, "    for (int kiln_o = 16; kiln_o > 0; kiln_o >>= 1) {{").unwrap();
            writeln!(s, "        {} kiln_x = __shfl_down_sync(0xffffffffu, acc, kiln_o);\n        acc = {};\n    }}", r.acc_type, r.combine(d, "acc", "kiln_x")).unwrap();
            writeln!(s, "    if (kiln_lane == 0) {}", r.store(d, "acc", "kiln_w")).unwrap();
        }
        KernelKind::Write { shape, .. } => {
            // One thread per element of the written part.
            writeln!(s, "    const int64_t kiln_i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;\n    if (kiln_i >= kiln_units) return;").unwrap();
            push_lines(&mut s, "    ", p.unflatten(shape, "kiln_i", None));
            push_lines(&mut s, "    ", written_element(&p, k));
        }
        KernelKind::MatMul { .. } => matmul(&p, k, &mut s),
    }
    s.push_str("}\n");
    s
}

/// Matmul, one TILE x TILE block per output tile and one batch per grid z. Two paths in one
/// kernel, because the row count is symbolic (the same kernel serves prefill and decode):
/// - `M == 1` (decode): a GEMV. Each block row (`ty`) owns one output column, its 16 `tx`
///   lanes stride K and sum with shuffles: every thread works and, for weights stored
///   `[N, K]`, consecutive lanes read consecutive addresses.
/// - otherwise a shared-memory tiled product; the B tile is read along k by consecutive
///   threads when k is B's contiguous axis (weights `[N, K]` seen transposed), so loads coalesce.
///
/// Plain FMA in f32, no tensor cores; not tuned for Hopper beyond that.
fn matmul(p: &Printer, k: &Kernel, s: &mut String) {
    let d = p.d;
    let t = TILE;
    let mm = MatMul::of(p, k);
    let (a, b) = (&mm.a, &mm.b);
    writeln!(
        s,
        "    const int64_t M = {}, N = {}, K = {};",
        mm.m, mm.n, mm.k
    )
    .unwrap();
    writeln!(
        s,
        "    const int64_t kiln_b = blockIdx.z;\n    if (kiln_b >= kiln_units) return;"
    )
    .unwrap();
    push_lines(s, "    ", p.unflatten(&mm.batch, "kiln_b", None));
    writeln!(
        s,
        "    const {} *pa = {} + {};\n    const {} *pb = {} + {};",
        d.storage_type(a.dtype),
        a.buf,
        a.base,
        d.storage_type(b.dtype),
        b.buf,
        b.base
    )
    .unwrap();
    writeln!(s, "    const int tx = threadIdx.x, ty = threadIdx.y;").unwrap();
    let store_acc = |index: &str| mm.store(d, OUT, "acc", index);

    // Decode: one row.
    writeln!(s, "    if (M == 1) {{").unwrap();
    writeln!(
        s,
        "        const int64_t col = (int64_t)blockIdx.x * {t} + ty;"
    )
    .unwrap();
    writeln!(s, "        float acc = 0.0f;").unwrap();
    writeln!(
        s,
        "        if (col < N) for (int64_t kx = tx; kx < K; kx += {t}) acc += (float)({}) * (float)({});",
        a.at(d, "pa", "0", "kx"),
        b.at(d, "pb", "kx", "col")
    )
    .unwrap();
    writeln!(
        s,
        "        for (int kiln_o = {}; kiln_o > 0; kiln_o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, kiln_o);",
        t / 2
    )
    .unwrap();
    writeln!(
        s,
        "        if (tx == 0 && col < N) {}\n        return;\n    }}",
        store_acc("kiln_b * N + col")
    )
    .unwrap();

    // Tiled.
    writeln!(
        s,
        "    __shared__ float As[{t}][{}], Bs[{t}][{}];",
        t + 1,
        t + 1
    )
    .unwrap();
    writeln!(s, "    const int64_t row = (int64_t)blockIdx.y * {t} + ty, col = (int64_t)blockIdx.x * {t} + tx;").unwrap();
    writeln!(
        s,
        "    float acc = 0.0f;\n    for (int64_t k0 = 0; k0 < K; k0 += {t}) {{"
    )
    .unwrap();
    writeln!(
        s,
        "        As[ty][tx] = (row < M && k0 + tx < K) ? (float)({}) : 0.0f;",
        a.at(d, "pa", "row", "(k0 + tx)")
    )
    .unwrap();
    if b.row_stride_expr.is_const(1) && !b.col_stride_expr.is_const(1) {
        // k is B's contiguous axis: lanes (tx) walk k, rows of the block (ty) walk columns.
        writeln!(
            s,
            "        const int64_t bcol = (int64_t)blockIdx.x * {t} + ty;"
        )
        .unwrap();
        writeln!(
            s,
            "        Bs[tx][ty] = (k0 + tx < K && bcol < N) ? (float)({}) : 0.0f;",
            b.at(d, "pb", "(k0 + tx)", "bcol")
        )
        .unwrap();
    } else {
        writeln!(
            s,
            "        Bs[ty][tx] = (k0 + ty < K && col < N) ? (float)({}) : 0.0f;",
            b.at(d, "pb", "(k0 + ty)", "col")
        )
        .unwrap();
    }
    writeln!(s, "        __syncthreads();\n        #pragma unroll\n        for (int q = 0; q < {t}; ++q) acc += As[ty][q] * Bs[q][tx];\n        __syncthreads();\n    }}").unwrap();
    writeln!(
        s,
        "    if (row < M && col < N) {}",
        store_acc("kiln_b * M * N + row * N + col")
    )
    .unwrap();
}

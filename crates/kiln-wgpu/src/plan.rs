//! What a kernel computes in `i32`, derived from the canonical [`Kernel`] alone (so codegen
//! and the device agree without passing anything around), and how a kernel's launch spec
//! (from [`crate::codegen::launch`]) becomes a launch on a device.
//!
//! WGSL has no 64-bit integers, so every index a kernel evaluates must fit in `i32`. The plan
//! lists the index expressions a kernel's text evaluates (loads, unflattening, lets, matmul
//! operand offsets) and the ranges of its loop variables; interval arithmetic then bounds every
//! subexpression:
//! - when the kernel is generated, with constants only: a kernel whose constant sizes cannot
//!   fit is rejected at compile time ([`KernelPlan::static_overflow`]);
//! - at each launch, with the symbols bound: the same check for symbolic sizes, and the bytes
//!   each buffer is accessed at, so a binding never silently truncates a buffer
//!   ([`KernelPlan::launch`]).
//!
//! The plan also fixes how many bindings a large input spans: an input whose constant extent
//! exceeds [`SLICE_BYTES`] (the 311 MB embedding and LM head of Qwen) is bound as several
//! slices of one buffer.

use kiln_ir::{contiguous_strides, numel, Bindings, DType, Expr};
use kiln_program::launch::ceil_div;
use kiln_program::{Kernel, KernelKind, LaunchSpec, ScalarExpr};
use std::collections::BTreeMap;

/// Invocations per workgroup of elementwise kernels (one output element each).
pub const ELEMENTWISE_WG: u32 = 256;
/// Invocations per workgroup of reductions (one workgroup per output element).
pub const REDUCE_WG: u32 = 64;
/// Matmul tile edge: TILE x TILE invocations, one output tile per workgroup.
pub const TILE: u32 = 16;
/// Bytes of one binding of a sliced input: 128 MiB, the storage binding size every WebGPU
/// adapter supports (the default `max_storage_buffer_binding_size`), so the generated text does
/// not depend on the adapter. A power of two: slice index and offset are a shift and a mask.
pub const SLICE_BYTES: u64 = 1 << 27;
/// log2 of the 32-bit words in a slice.
pub const SLICE_WORDS_LOG2: u32 = 25;
/// The largest magnitude index arithmetic may reach: `i32::MAX` less headroom for the
/// templates' own arithmetic around it (a tile offset plus a lane, `k0 + tx`).
pub const INDEX_LIMIT: i64 = i32::MAX as i64 - 1024;

/// Loop variables the matmul template adds to the kernel's batch variables.
const VAR_BATCH: u32 = 1000;
const VAR_ROW: u32 = 1001;
const VAR_COL: u32 = 1002;
const VAR_K: u32 = 1003;

/// One launch, for one binding of the symbols.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The `Params` words: the kernel's symbols in sorted order, the unit count, and for a
    /// matmul the GEMV row threshold.
    pub params: Vec<i32>,
    pub grid: [u32; 3],
    /// Bytes of each buffer (output first, then inputs) the kernel may access.
    pub extents: Vec<u64>,
}

/// What a kernel's text indexes and binds (its launch geometry is its launch spec).
#[derive(Clone, Debug)]
pub struct KernelPlan {
    pub label: String,
    /// Symbols in `Params` order.
    pub symbols: Vec<String>,
    /// A matmul: its `Params` end with the device's [`GemvPlan`], which also shapes its grid.
    pub matmul: bool,
    /// The dtype of each buffer: output, then inputs.
    pub dtypes: Vec<DType>,
    /// Bindings each buffer spans (1, or several slices of [`SLICE_BYTES`] for an input whose
    /// constant extent is larger).
    pub slices: Vec<u32>,
    /// Exclusive upper bound of each loop variable.
    vars: BTreeMap<u32, Expr>,
    /// Index arithmetic the kernel evaluates in i32.
    exprs: Vec<Expr>,
    /// Element offsets each buffer is accessed at (output first, then inputs).
    accesses: Vec<Vec<Expr>>,
}

/// A closed interval of values an expression takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Interval {
    lo: i128,
    hi: i128,
}

/// An expression whose value leaves the i32 range.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow {
    pub expr: String,
    pub lo: i128,
    pub hi: i128,
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "index arithmetic `{}` takes values in [{}, {}], beyond the i32 range WGSL indexes with (|x| <= {INDEX_LIMIT})",
            self.expr, self.lo, self.hi
        )
    }
}

impl KernelPlan {
    pub fn of(k: &Kernel) -> KernelPlan {
        let mut vars = BTreeMap::new();
        let mut exprs = Vec::new();
        let mut accesses = vec![Vec::new(); 1 + k.inputs.len()];
        let out_numel = numel(&k.out_shape);
        exprs.push(out_numel.clone());
        match &k.kind {
            KernelKind::Elementwise { lets, body } => {
                for (i, d) in k.out_shape.iter().enumerate() {
                    vars.insert(i as u32, d.clone());
                }
                exprs.extend(contiguous_strides(&k.out_shape));
                exprs.extend(k.out_shape.iter().cloned());
                for l in lets {
                    vars.insert(l.var, l.rows.clone());
                    exprs.push(l.rows.clone());
                    scalar_indices(&l.value, &mut exprs, &mut accesses);
                }
                scalar_indices(body, &mut exprs, &mut accesses);
                accesses[0].push(out_numel.clone().sub(1));
            }
            KernelKind::Write {
                shape,
                axis,
                start,
                body,
            } => {
                // One invocation per element of the written part, stored at its place in the
                // (larger) output, as `kiln_render::parts::written_element` computes it.
                for (i, d) in shape.iter().enumerate() {
                    vars.insert(i as u32, d.clone());
                }
                let written = numel(shape);
                exprs.push(written.clone());
                exprs.extend(contiguous_strides(shape));
                exprs.extend(shape.iter().cloned());
                exprs.push(start.clone());
                let strides = contiguous_strides(&k.out_shape);
                let mut at = Expr::Const(0);
                for (i, st) in strides.iter().enumerate().take(shape.len()) {
                    let mut v = Expr::Var(i as u32);
                    if i == *axis {
                        v = v.add(start.clone());
                    }
                    at = at.add(v.mul(st.clone()));
                }
                exprs.push(at.clone());
                accesses[0].push(at);
                scalar_indices(body, &mut exprs, &mut accesses);
            }
            KernelKind::Reduce {
                axis, len, body, ..
            } => {
                for (i, d) in k.out_shape.iter().enumerate() {
                    vars.insert(i as u32, if i == *axis { len.clone() } else { d.clone() });
                }
                exprs.extend(contiguous_strides(&k.out_shape));
                exprs.extend(k.out_shape.iter().cloned());
                exprs.push(len.clone());
                scalar_indices(body, &mut exprs, &mut accesses);
                accesses[0].push(out_numel.clone().sub(1));
            }
            // Never compiled for this backend (`supports_fusion` is false; `kernel_source`
            // rejects them): a plan that checks only the output's extent.
            KernelKind::ReduceMap { .. } | KernelKind::Attention { .. } => {
                accesses[0].push(out_numel.clone().sub(1));
            }
            KernelKind::MatMul {
                batch,
                m,
                n,
                k: kk,
                a,
                b,
                ..
            } => {
                let batches = numel(batch);
                for (i, d) in batch.iter().enumerate() {
                    vars.insert(i as u32, d.clone());
                }
                vars.insert(VAR_BATCH, batches.clone());
                vars.insert(VAR_ROW, m.clone());
                vars.insert(VAR_COL, n.clone());
                vars.insert(VAR_K, kk.clone());
                exprs.extend([m.clone(), n.clone(), kk.clone(), batches.clone()]);
                exprs.extend(contiguous_strides(batch));
                exprs.extend(batch.iter().cloned());
                for (o, row, col) in [(a, VAR_ROW, VAR_K), (b, VAR_K, VAR_COL)] {
                    let mut base = o.offset.clone();
                    for (i, st) in o.batch_strides.iter().enumerate() {
                        if !batch[i].is_const(1) {
                            base = base.add(Expr::Var(i as u32).mul(st.clone()));
                        }
                    }
                    let r = Expr::Var(row).mul(o.row_stride.clone());
                    let c = Expr::Var(col).mul(o.col_stride.clone());
                    let at = base.clone().add(r.clone().add(c.clone()));
                    exprs.extend([base, r, c, at.clone()]);
                    accesses[1 + o.input].push(at);
                }
                // The output element (b, row, col) is at (b * M + row) * N + col.
                let out_at = Expr::Var(VAR_BATCH)
                    .mul(m.clone())
                    .add(Expr::Var(VAR_ROW))
                    .mul(n.clone())
                    .add(Expr::Var(VAR_COL));
                exprs.push(out_at.clone());
                accesses[0].push(out_at);
            }
        }
        let dtypes: Vec<DType> = std::iter::once(k.out_dtype)
            .chain(k.inputs.iter().copied())
            .collect();
        let mut plan = KernelPlan {
            label: k.label(),
            symbols: k.symbols(),
            matmul: matches!(k.kind, KernelKind::MatMul { .. }),
            slices: vec![1; dtypes.len()],
            dtypes,
            vars,
            exprs,
            accesses,
        };
        // Inputs whose extent is known now and larger than one slice span several bindings.
        // Outputs never do (a kernel output that large is reported at launch instead).
        let no_symbols = Bindings::new();
        for i in 1..plan.dtypes.len() {
            if let Some(bytes) = plan.extent(i, &no_symbols) {
                plan.slices[i] = bytes.div_ceil(SLICE_BYTES).max(1) as u32;
            }
        }
        plan
    }

    /// The largest byte offset + 1 the kernel may touch in buffer `i` (0: output), rounded up
    /// to whole 32-bit words; None when it depends on symbols `b` does not bind.
    fn extent(&self, i: usize, b: &Bindings) -> Option<u64> {
        let vars = self.var_ranges(b);
        let mut hi: i128 = -1;
        for e in &self.accesses[i] {
            hi = hi.max(interval(e, b, &vars)?.hi);
        }
        let elems = (hi + 1).max(0) as u64;
        Some((self.dtypes[i].storage_bytes(elems as usize) as u64).next_multiple_of(4))
    }

    fn var_ranges(&self, b: &Bindings) -> BTreeMap<u32, Option<Interval>> {
        let none = BTreeMap::new();
        self.vars
            .iter()
            .map(|(&v, upper)| {
                let r = interval(upper, b, &none).map(|u| Interval {
                    lo: 0,
                    hi: (u.hi - 1).max(0),
                });
                (v, r)
            })
            .collect()
    }

    /// Checks every index expression whose range `b` determines.
    fn check(&self, b: &Bindings) -> Result<(), Overflow> {
        let vars = self.var_ranges(b);
        let upper: Vec<Expr> = self.vars.values().cloned().collect();
        for e in self.exprs.iter().chain(&upper) {
            check_all(e, b, &vars)?;
        }
        Ok(())
    }

    /// Index arithmetic that overflows i32 whatever the symbols are bound to (constant sizes
    /// too large for WGSL's indices); the kernel cannot be compiled.
    pub fn static_overflow(&self) -> Option<Overflow> {
        self.check(&Bindings::new()).err()
    }

    /// Words of the kernel's `Params`: its symbols, the unit count, and for a matmul the
    /// device's [`GemvPlan`].
    pub fn params_words(&self) -> usize {
        self.symbols.len() + 1 + 2 * self.matmul as usize
    }

    /// The launch of `spec` (the kernel's launch spec) for bindings `b`: its params and grid,
    /// after checking that every index fits in i32. None when there is no work. A flat grid
    /// wider than `max_per_dim` is spread over y; matmuls follow the device's `gemv`.
    pub fn launch(
        &self,
        spec: &LaunchSpec,
        b: &Bindings,
        max_per_dim: u32,
        gemv: GemvPlan,
    ) -> Result<Option<Launch>, LaunchError> {
        let units = spec.units.eval(b)?;
        if units <= 0 {
            return Ok(None);
        }
        let mut params = Vec::with_capacity(spec.symbols.len() + 1);
        for (s, v) in spec.symbols.iter().zip(spec.symbol_values(b)?) {
            params.push(i32::try_from(v).map_err(|_| LaunchError::Symbol {
                symbol: s.clone(),
                value: v,
            })?);
        }
        self.check(b).map_err(LaunchError::Overflow)?;
        params.push(units as i32);
        let grid = if self.matmul {
            params.extend([gemv.rows, gemv.columns as i32]);
            match matmul_grid(spec, b, gemv)? {
                None => return Ok(None),
                Some(g) if g.iter().any(|&g| g > max_per_dim as i64) => {
                    return Err(LaunchError::Grid {
                        grid: g,
                        max: max_per_dim,
                    })
                }
                Some(g) => g.map(|g| g as u32),
            }
        } else {
            split(spec.groups(b)?[0], max_per_dim)?
        };
        let extents = (0..self.dtypes.len())
            .map(|i| self.extent(i, b).expect("every symbol is bound"))
            .collect();
        Ok(Some(Launch {
            params,
            grid,
            extents,
        }))
    }
}

/// A matmul's workgroups `[columns, rows, batch]` under `gemv`; None when one is empty. The
/// spec's global size is the output `[n, m, batch]` and its local size a tile: tiles, or with
/// at most `gemv.rows` rows one workgroup per row (of `GEMV_COLS` columns per invocation
/// where `gemv.columns`).
fn matmul_grid(
    spec: &LaunchSpec,
    b: &Bindings,
    gemv: GemvPlan,
) -> Result<Option<[i64; 3]>, LaunchError> {
    let (n, m, batch) = (
        spec.global[0].eval(b)?,
        spec.global[1].eval(b)?,
        spec.global[2].eval(b)?,
    );
    let [tile_n, tile_m, _] = spec.local.map(i64::from);
    let per_row = m <= gemv.rows as i64;
    let rows = if per_row { m } else { ceil_div(m, tile_m) };
    let cols = if per_row && gemv.columns {
        (crate::codegen::GEMV_COLS * crate::codegen::GEMV_INVOCATIONS) as i64
    } else {
        tile_n
    };
    let grid = [ceil_div(n, cols), rows, batch];
    Ok((!grid.iter().any(|&g| g <= 0)).then_some(grid))
}

/// How a device runs matmuls with few rows (the kernel text has every path; the params pick).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvPlan {
    /// Matmuls with at most this many rows run one GEMV per row (grid y = the row) instead of
    /// TILE x TILE tiles.
    pub rows: i32,
    /// GEMV CPU-style (each invocation whole columns, no barrier) instead of GPU-style (TILE
    /// lanes per column, a reduction in workgroup memory).
    pub columns: bool,
}

impl GemvPlan {
    /// GPU-style for decode only on a GPU, where tiles read a weight once per 16 rows from
    /// fast workgroup memory. On a CPU adapter (lavapipe) a barrier switches all of the
    /// workgroup's SIMD fibers and workgroup memory costs as much per access as storage, so
    /// re-reading the weight once per row, CPU-style, beats tiles up to 64 rows.
    pub fn for_adapter(device_type: wgpu::DeviceType) -> GemvPlan {
        match device_type {
            wgpu::DeviceType::Cpu => GemvPlan {
                rows: 64,
                columns: true,
            },
            _ => GemvPlan {
                rows: 1,
                columns: false,
            },
        }
    }
}

/// Why a kernel cannot be launched with some binding of its symbols.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Graph(#[from] kiln_ir::IrError),
    #[error("symbol {symbol} = {value} does not fit WGSL's i32")]
    Symbol { symbol: String, value: i64 },
    #[error("{0}")]
    Overflow(Overflow),
    #[error("{grid:?} workgroups exceed this device's {max} per dimension")]
    Grid { grid: [i64; 3], max: u32 },
}

/// A flat workgroup count as a grid: x up to the per-dimension limit, the rest in y. The
/// kernels rebuild the flat id as `wg.y * nwg.x + wg.x` and skip ids past the end.
fn split(n: i64, max: u32) -> Result<[u32; 3], LaunchError> {
    let max64 = max as i64;
    if n <= max64 {
        return Ok([n as u32, 1, 1]);
    }
    let y = (n + max64 - 1) / max64;
    if y > max64 {
        return Err(LaunchError::Grid {
            grid: [max64, y, 1],
            max,
        });
    }
    Ok([max, y as u32, 1])
}

/// Collects the index expressions of a scalar expression and the offsets of its loads.
fn scalar_indices(e: &ScalarExpr, exprs: &mut Vec<Expr>, accesses: &mut [Vec<Expr>]) {
    match e {
        ScalarExpr::Load { input, offset, .. } => {
            exprs.push(offset.clone());
            accesses[1 + input].push(offset.clone());
        }
        ScalarExpr::Const { .. } | ScalarExpr::Acc { .. } => {}
        ScalarExpr::Index { expr, .. } => exprs.push(expr.clone()),
        ScalarExpr::Unary { x, .. } => scalar_indices(x, exprs, accesses),
        ScalarExpr::Binary { a, b, .. } => {
            scalar_indices(a, exprs, accesses);
            scalar_indices(b, exprs, accesses);
        }
        ScalarExpr::Where { cond, a, b, .. } => {
            scalar_indices(cond, exprs, accesses);
            scalar_indices(a, exprs, accesses);
            scalar_indices(b, exprs, accesses);
        }
        ScalarExpr::Select {
            lhs,
            rhs,
            then,
            otherwise,
            ..
        } => {
            exprs.extend([lhs.clone(), rhs.clone()]);
            scalar_indices(then, exprs, accesses);
            scalar_indices(otherwise, exprs, accesses);
        }
    }
}

/// The values `e` takes with symbols from `b` and loop variables in `vars`; None when it
/// depends on something unknown.
fn interval(e: &Expr, b: &Bindings, vars: &BTreeMap<u32, Option<Interval>>) -> Option<Interval> {
    let iv = |lo: i128, hi: i128| Some(Interval { lo, hi });
    match e {
        Expr::Const(c) => iv(*c as i128, *c as i128),
        Expr::Sym(s) => b.get(&**s).and_then(|&v| iv(v as i128, v as i128)),
        Expr::Var(v) => *vars.get(v)?,
        Expr::Add(x, y) | Expr::Sub(x, y) | Expr::Mul(x, y) => {
            let (a, c) = (interval(x, b, vars)?, interval(y, b, vars)?);
            match e {
                Expr::Add(..) => iv(a.lo + c.lo, a.hi + c.hi),
                Expr::Sub(..) => iv(a.lo - c.hi, a.hi - c.lo),
                _ => {
                    let p = [a.lo * c.lo, a.lo * c.hi, a.hi * c.lo, a.hi * c.hi];
                    iv(*p.iter().min()?, *p.iter().max()?)
                }
            }
        }
        Expr::Div(x, y) => {
            let (a, d) = (interval(x, b, vars)?, interval(y, b, vars)?);
            if d.lo <= 0 && d.hi >= 0 {
                // A zero divisor gives the dividend in WGSL; |a / d| <= |a| otherwise.
                let m = a.lo.abs().max(a.hi.abs());
                return iv(-m, m);
            }
            // Truncating division is monotone in each operand on a sign-constant divisor.
            let q = [a.lo / d.lo, a.lo / d.hi, a.hi / d.lo, a.hi / d.hi];
            iv(*q.iter().min()?, *q.iter().max()?)
        }
        Expr::Mod(x, y) => {
            let (a, d) = (interval(x, b, vars)?, interval(y, b, vars)?);
            // |a % d| < |d| and |a % d| <= |a|, with the sign of a.
            let m = d.lo.abs().max(d.hi.abs()).saturating_sub(1).max(0);
            iv(a.lo.max(-m).min(0), a.hi.min(m).max(0))
        }
        Expr::Min(x, y) => {
            let (a, c) = (interval(x, b, vars)?, interval(y, b, vars)?);
            iv(a.lo.min(c.lo), a.hi.min(c.hi))
        }
        Expr::Max(x, y) => {
            let (a, c) = (interval(x, b, vars)?, interval(y, b, vars)?);
            iv(a.lo.max(c.lo), a.hi.max(c.hi))
        }
    }
}

/// Checks `e` and each of its subexpressions whose range is known against [`INDEX_LIMIT`].
fn check_all(
    e: &Expr,
    b: &Bindings,
    vars: &BTreeMap<u32, Option<Interval>>,
) -> Result<(), Overflow> {
    if let Expr::Add(x, y)
    | Expr::Sub(x, y)
    | Expr::Mul(x, y)
    | Expr::Div(x, y)
    | Expr::Mod(x, y)
    | Expr::Min(x, y)
    | Expr::Max(x, y) = e
    {
        check_all(x, b, vars)?;
        check_all(y, b, vars)?;
    }
    if let Some(r) = interval(e, b, vars) {
        let limit = INDEX_LIMIT as i128;
        if r.hi > limit || r.lo < -limit {
            return Err(Overflow {
                expr: e.to_string(),
                lo: r.lo,
                hi: r.hi,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(v: &[(u32, i128)]) -> BTreeMap<u32, Option<Interval>> {
        v.iter()
            .map(|&(k, hi)| (k, Some(Interval { lo: 0, hi })))
            .collect()
    }

    #[test]
    fn intervals_bound_index_arithmetic() {
        let b: Bindings = [("s".to_string(), 10)].into();
        let vars = ranges(&[(0, 9), (1, 1023)]);
        let e = Expr::Var(0).mul(1024).add(Expr::Var(1));
        assert_eq!(interval(&e, &b, &vars), Some(Interval { lo: 0, hi: 10239 }));
        let e = Expr::Var(1).sub(Expr::sym("s")).rem(7);
        assert_eq!(interval(&e, &b, &vars), Some(Interval { lo: -6, hi: 6 }));
        let e = Expr::Var(1).div(Expr::sym("s"));
        assert_eq!(interval(&e, &b, &vars), Some(Interval { lo: 0, hi: 102 }));
        assert_eq!(
            interval(&Expr::sym("t"), &b, &vars),
            None,
            "unbound symbols are unknown"
        );
    }

    #[test]
    fn overflow_names_the_expression() {
        let b = Bindings::new();
        let vars = ranges(&[(0, 1 << 20), (1, 4095)]);
        let e = Expr::Var(0).mul(4096).add(Expr::Var(1));
        let err = check_all(&e, &b, &vars).unwrap_err();
        assert_eq!(err.expr, "(v0 * 4096)");
        assert_eq!(err.hi, (1i128 << 20) * 4096);
        let ok = Expr::Var(1).mul(4096);
        assert!(check_all(&ok, &b, &vars).is_ok());
    }

    #[test]
    fn big_flat_grids_are_split() {
        assert_eq!(split(100, 65535).unwrap(), [100, 1, 1]);
        assert_eq!(split(70000, 65535).unwrap(), [65535, 2, 1]);
        assert!(split(65535 * 65536, 65535).is_err());
    }
}

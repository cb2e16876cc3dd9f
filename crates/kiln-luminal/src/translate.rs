//! luminal 0.2 primitive graph -> kiln IR.
//!
//! luminal's execution model (see `luminal/src/core/op.rs` and `graph.rs`): every node produces a
//! flat `Vec<f32>` ("physical buffer"); every data edge carries a `ShapeTracker` that says how the
//! consumer *views* that buffer (permute, fake/expanded dims, padding with zeros, slices).
//!
//! The translation keeps that split:
//! - each luminal node becomes one kiln node holding its physical buffer in a *natural* shape
//!   (the shape the producer wrote it in: the view's logical shape for binary ops, reductions and
//!   `Contiguous`; the source's shape for unary ops, which luminal applies to the raw buffer);
//! - each data edge becomes a chain of kiln views (reshape to the tracker's physical dims, padding
//!   as a concat with constant-filled parts, slices, size-1 axes for fake dims, permute, expand).

use kiln_ir::graph::dims_equal;
use kiln_ir::{DType, Expr, Graph as KGraph, NodeId};
use luminal::op;
use luminal::prelude::{NodeIndex, ShapeTracker};
use luminal::shape::symbolic::Term;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

/// A translation problem with one node (op name and reason are filled in by the caller).
pub(crate) type TResult<T> = Result<T, String>;

/// The kiln symbol for a luminal dynamic dimension: 'a'..'z' keep their name, 'A'..'Z' become
/// `upper_a`..`upper_z` (kiln symbols must match `[a-z_][a-z0-9_]*`).
pub fn sym_name(c: char) -> TResult<String> {
    if c.is_ascii_lowercase() {
        Ok(c.to_string())
    } else if c.is_ascii_uppercase() {
        Ok(format!("upper_{}", c.to_ascii_lowercase()))
    } else if c == '-' {
        Err("a dimension is '-' (unknown to luminal itself); give it a size or a named Dyn<'x'> dimension".into())
    } else {
        Err(format!(
            "dynamic dimension {c:?} has no kiln symbol (only ASCII letters are mapped)"
        ))
    }
}

/// Converts a luminal symbolic expression (reverse Polish `Term`s; see
/// `luminal/src/core/shape/symbolic.rs`) into a kiln `Expr`, recording the symbols it uses.
pub fn to_expr(
    terms: impl IntoIterator<Item = Term>,
    syms: &mut BTreeMap<String, char>,
) -> TResult<Expr> {
    let mut st: Vec<Expr> = Vec::new();
    for t in terms {
        match t {
            Term::Num(n) => st.push(Expr::Const(n as i64)),
            Term::Var(c) => {
                let name = sym_name(c)?;
                syms.insert(name.clone(), c);
                st.push(Expr::sym(&name));
            }
            op => {
                // luminal pops `a` (pushed last) then `b` and computes op(a, b).
                let (a, b) = match (st.pop(), st.pop()) {
                    (Some(a), Some(b)) => (a, b),
                    _ => return Err("malformed symbolic expression".into()),
                };
                st.push(match op {
                    Term::Add => a.add(b),
                    Term::Sub => a.sub(b),
                    Term::Mul => a.mul(b),
                    Term::Div => a.div(b),
                    Term::Mod => a.rem(b),
                    Term::Min => a.min(b),
                    Term::Max => a.max(b),
                    other => {
                        return Err(format!(
                            "symbolic operator {other:?} has no kiln equivalent in a dimension"
                        ))
                    }
                });
            }
        }
    }
    match (st.pop(), st.is_empty()) {
        (Some(e), true) => Ok(e),
        _ => Err("malformed symbolic expression".into()),
    }
}

/// luminal marks an unset slice end with i32::MAX.
fn is_unbounded(e: &luminal::shape::symbolic::Expression) -> bool {
    e.to_usize() == Some(i32::MAX as usize)
}

fn is_zero(e: &Expr) -> bool {
    e.is_const(0)
}

/// One physical dimension of a tracker, in kiln terms.
struct DimView {
    size: Expr,
    fake: bool,
    pad: (Expr, Expr),
    start: Expr,
    end: Option<Expr>,
}

impl DimView {
    /// Elements along this dim as luminal's index expression and `n_elements` see them:
    /// min(size + pads, end) - start.
    fn logical(&self) -> Expr {
        let p = self.padded();
        let e = match &self.end {
            Some(end) => p.min(end.clone()),
            None => p,
        };
        e.sub(self.start.clone())
    }
    fn padded(&self) -> Expr {
        self.size
            .clone()
            .add(self.pad.0.clone())
            .add(self.pad.1.clone())
    }
    /// What `ShapeTracker::shape()` reports: min(size + pad0 - start + pad1, end).
    fn reported(&self) -> Expr {
        let e = self
            .size
            .clone()
            .add(self.pad.0.clone())
            .sub(self.start.clone())
            .add(self.pad.1.clone());
        match &self.end {
            Some(end) => e.min(end.clone()),
            None => e,
        }
    }
}

fn dim_views(st: &ShapeTracker, syms: &mut BTreeMap<String, char>) -> TResult<Vec<DimView>> {
    (0..st.dims.len())
        .map(|i| {
            Ok(DimView {
                size: to_expr(st.dims[i].terms, syms)?,
                fake: st.fake[i],
                pad: (
                    to_expr(st.padding[i].0.terms, syms)?,
                    to_expr(st.padding[i].1.terms, syms)?,
                ),
                start: to_expr(st.slices[i].0.terms, syms)?,
                end: if is_unbounded(&st.slices[i].1) {
                    None
                } else {
                    Some(to_expr(st.slices[i].1.terms, syms)?)
                },
            })
        })
        .collect()
}

/// Checks that kiln can reproduce what luminal computes through this tracker. Pure: used to
/// classify nodes before anything is built.
pub fn check_tracker(st: &ShapeTracker) -> TResult<()> {
    let mut syms = BTreeMap::new();
    let dims = dim_views(st, &mut syms)?;
    for (i, d) in dims.iter().enumerate() {
        let padded = !is_zero(&d.pad.0) || !is_zero(&d.pad.1);
        if padded && !d.fake && !is_zero(&d.start) {
            // luminal's index and valid expressions disagree with each other here
            // (tracker.rs: `- min(padding.0, slice.0)`), so there is no consistent meaning to copy.
            return Err(format!(
                "view pads and slices from a nonzero start on the same dimension {i} (luminal 0.2 \
                 itself indexes this inconsistently)"
            ));
        }
        if !dims_equal(&d.logical(), &d.reported()) {
            return Err(format!(
                "view dimension {i}: luminal's ShapeTracker::shape() gives {} but its index \
                 expression iterates {} elements (a slice with both a nonzero start and an end); \
                 luminal 0.2 reductions and elementwise ops disagree on such a view",
                d.reported(),
                d.logical()
            ));
        }
    }
    if st.indexes.len() != st.dims.len() {
        return Err("malformed ShapeTracker (indexes and dims differ in length)".into());
    }
    Ok(())
}

/// The logical shape luminal iterates for a view.
pub fn logical_shape(st: &ShapeTracker, syms: &mut BTreeMap<String, char>) -> TResult<Vec<Expr>> {
    let dims = dim_views(st, syms)?;
    Ok(st.indexes.iter().map(|&i| dims[i].logical()).collect())
}

/// The physical (non-fake) dims a tracker reads its buffer as, in memory order.
pub fn physical_shape(st: &ShapeTracker, syms: &mut BTreeMap<String, char>) -> TResult<Vec<Expr>> {
    let dims = dim_views(st, syms)?;
    Ok(dims
        .into_iter()
        .filter(|d| !d.fake)
        .map(|d| d.size)
        .collect())
}

fn shapes_equal(a: &[Expr], b: &[Expr]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| dims_equal(x, y))
}

/// A luminal tensor that a kiln segment reads from outside (a `Function` input, or in fallback
/// mode an op luminal keeps or an earlier segment's output).
#[derive(Clone, Debug)]
pub struct ExternalInput {
    pub src: NodeIndex,
    pub out: u8,
    pub name: String,
    pub shape: Vec<Expr>,
}

/// Builds one kiln graph for a set of luminal nodes.
pub struct Translator {
    /// Turn luminal's matmul pattern (expand, Mul, SumReduce over the last axis) into kiln's
    /// `matmul` (tiled kernels) instead of a reduction over a broadcast product.
    pub matmul: bool,
    pub g: KGraph,
    natural: FxHashMap<NodeIndex, NodeId>,
    pub externals: Vec<ExternalInput>,
    ext_map: FxHashMap<(NodeIndex, u8), NodeId>,
    pub syms: BTreeMap<String, char>,
}

fn ir<T>(r: kiln_ir::Result<T>) -> TResult<T> {
    r.map_err(|e| format!("kiln IR: {e}"))
}

impl Default for Translator {
    fn default() -> Self {
        Self::new()
    }
}

impl Translator {
    pub fn new() -> Translator {
        Translator {
            matmul: true,
            g: KGraph::new(),
            natural: FxHashMap::default(),
            externals: Vec::new(),
            ext_map: FxHashMap::default(),
            syms: BTreeMap::new(),
        }
    }

    pub fn natural(&self, n: NodeIndex) -> Option<NodeId> {
        self.natural.get(&n).copied()
    }

    /// The physical buffer of a source: translated already (same segment), else an external
    /// input declared with the physical dims of the first edge that reads it.
    fn source(&mut self, src: NodeIndex, out: u8, st: &ShapeTracker) -> TResult<NodeId> {
        if let Some(&id) = self.natural.get(&src) {
            if out != 0 {
                return Err(format!("reads output {out} of node {}", src.index()));
            }
            return Ok(id);
        }
        if let Some(&id) = self.ext_map.get(&(src, out)) {
            return Ok(id);
        }
        let shape = physical_shape(st, &mut self.syms)?;
        let name = format!("in{}_{}", src.index(), out);
        let id = ir(self.g.input(&name, DType::F32, &shape))?;
        self.externals.push(ExternalInput {
            src,
            out,
            name,
            shape,
        });
        self.ext_map.insert((src, out), id);
        Ok(id)
    }

    /// `x` (a physical buffer) seen through tracker `st`; padded elements read `fill`.
    fn view(&mut self, x: NodeId, st: &ShapeTracker, fill: f64) -> TResult<NodeId> {
        let dims = dim_views(st, &mut self.syms)?;
        let phys: Vec<Expr> = dims
            .iter()
            .filter(|d| !d.fake)
            .map(|d| d.size.clone())
            .collect();
        let g = &mut self.g;
        let have = kiln_ir::numel(g.shape(x));
        let want = kiln_ir::numel(&phys);
        let mut x = if shapes_equal(g.shape(x), &phys) {
            x
        } else if dims_equal(&have, &want) {
            ir(g.reshape(x, &phys))?
        } else if want.clone().sub(have.clone()).provably_nonneg() {
            // An over-sized view of a smaller buffer (luminal's pool_last_dim reads a buffer of
            // n*(2n-1) values as [n, 2n] and slices so that only real values are read): pad the
            // flat buffer to the view's size, then reshape.
            let flat = ir(g.reshape(x, std::slice::from_ref(&have)))?;
            let c = g.scalar(fill, DType::F32);
            let extra = ir(g.broadcast_to(c, &[want.clone().sub(have)]))?;
            let padded = ir(g.concat(&[flat, extra], 0))?;
            ir(g.reshape(padded, &phys))?
        } else {
            return Err(format!(
                "view reads {} values from a buffer of {}",
                want, have
            ));
        };
        // Physical order: pad/slice real dims, size-1 axes for fake ones.
        for (axis, d) in dims.iter().enumerate() {
            if d.fake {
                x = ir(g.unsqueeze(x, axis))?;
                continue;
            }
            let (p0, p1) = (&d.pad.0, &d.pad.1);
            if !is_zero(p0) || !is_zero(p1) {
                let shape = g.shape(x).to_vec();
                let mut parts = Vec::new();
                for (p, before) in [(p0, true), (p1, false)] {
                    if !before {
                        parts.push(x);
                    }
                    if !is_zero(p) {
                        let mut s = shape.clone();
                        s[axis] = p.clone();
                        let c = g.scalar(fill, DType::F32);
                        parts.push(ir(g.broadcast_to(c, &s))?);
                    }
                }
                x = ir(g.concat(&parts, axis))?;
            }
            let padded = d.padded();
            let end = match &d.end {
                Some(e) => padded.clone().min(e.clone()),
                None => padded.clone(),
            };
            if !is_zero(&d.start) || !dims_equal(&end, &padded) {
                x = ir(g.slice(x, axis, d.start.clone(), end))?;
            }
        }
        let perm: Vec<usize> = st.indexes.iter().copied().collect();
        x = ir(g.permute(x, &perm))?;
        let target: Vec<Expr> = perm.iter().map(|&i| dims[i].logical()).collect();
        if !shapes_equal(g.shape(x), &target) {
            x = ir(g.expand(x, &target))?;
        }
        Ok(x)
    }

    /// Translates one luminal node; its sources must be translated (or external) already.
    pub fn node(
        &mut self,
        cx: &luminal::prelude::Graph,
        n: NodeIndex,
        o: &dyn luminal::op::Operator,
        srcs: &[(NodeIndex, u8, ShapeTracker)],
    ) -> TResult<NodeId> {
        let a = o.as_any();
        if self.matmul {
            if let Some(id) = self.try_matmul(cx, o, srcs)? {
                self.natural.insert(n, id);
                return Ok(id);
            }
        }
        let want = |k: usize| -> TResult<()> {
            if srcs.len() == k {
                Ok(())
            } else {
                Err(format!("expected {k} inputs, found {}", srcs.len()))
            }
        };
        let id = if let Some(c) = a.downcast_ref::<op::Constant>() {
            want(0)?;
            match &c.0 {
                op::ConstantValue::Float(f) => self.g.scalar(*f as f64, DType::F32),
                op::ConstantValue::Expression(e) => {
                    let e = to_expr(e.terms.clone(), &mut self.syms)?;
                    match e.as_const() {
                        Some(v) => self.g.scalar(v as f64, DType::F32),
                        None => {
                            // The value of a symbolic expression: iota over e+1 elements, element e.
                            let g = &mut self.g;
                            let it = ir(g.iota(DType::I32, &[e.clone().add(1)], 0))?;
                            let one = ir(g.slice(it, 0, e.clone(), e.clone().add(1)))?;
                            let s = ir(g.reshape(one, &[]))?;
                            g.cast(s, DType::F32)
                        }
                    }
                }
            }
        } else if a.is::<op::Log2>()
            || a.is::<op::Exp2>()
            || a.is::<op::Sin>()
            || a.is::<op::Recip>()
            || a.is::<op::Sqrt>()
        {
            // luminal applies unary ops to the raw buffer, ignoring the edge's view.
            want(1)?;
            let x = self.source(srcs[0].0, srcs[0].1, &srcs[0].2)?;
            let g = &mut self.g;
            ir(if a.is::<op::Log2>() {
                g.log2(x)
            } else if a.is::<op::Exp2>() {
                g.exp2(x)
            } else if a.is::<op::Sin>() {
                g.sin(x)
            } else if a.is::<op::Recip>() {
                g.recip(x)
            } else {
                g.sqrt(x)
            })?
        } else if a.is::<op::Add>()
            || a.is::<op::Mul>()
            || a.is::<op::Mod>()
            || a.is::<op::LessThan>()
        {
            want(2)?;
            let x = self.source(srcs[0].0, srcs[0].1, &srcs[0].2)?;
            let x = self.view(x, &srcs[0].2, 0.0)?;
            let y = self.source(srcs[1].0, srcs[1].1, &srcs[1].2)?;
            let y = self.view(y, &srcs[1].2, 0.0)?;
            let g = &mut self.g;
            if !shapes_equal(g.shape(x), g.shape(y)) {
                return Err(format!(
                    "operand views have different shapes {} and {}",
                    kiln_ir::shape_str(g.shape(x)),
                    kiln_ir::shape_str(g.shape(y))
                ));
            }
            if a.is::<op::Add>() {
                ir(g.add(x, y))?
            } else if a.is::<op::Mul>() {
                ir(g.mul(x, y))?
            } else if a.is::<op::Mod>() {
                ir(g.rem(x, y))?
            } else {
                let l = ir(g.lt(x, y))?;
                g.cast(l, DType::F32)
            }
        } else if a.is::<op::SumReduce>() || a.is::<op::MaxReduce>() {
            want(1)?;
            let (axis, is_sum) = match a.downcast_ref::<op::SumReduce>() {
                Some(r) => (r.0, true),
                None => (a.downcast_ref::<op::MaxReduce>().unwrap().0, false),
            };
            // luminal's MaxReduce skips padded elements; a -inf fill does the same.
            let fill = if is_sum { 0.0 } else { f64::NEG_INFINITY };
            let x = self.source(srcs[0].0, srcs[0].1, &srcs[0].2)?;
            let x = self.view(x, &srcs[0].2, fill)?;
            let g = &mut self.g;
            let mut shape = g.shape(x).to_vec();
            if axis >= shape.len() {
                return Err(format!(
                    "reduces axis {axis} of a {}-dimensional view",
                    shape.len()
                ));
            }
            let r = ir(if is_sum {
                g.sum(x, axis)
            } else {
                g.max(x, axis)
            })?;
            shape.remove(axis);
            ir(g.reshape(r, &shape))?
        } else if a.is::<op::Contiguous>() {
            want(1)?;
            let x = self.source(srcs[0].0, srcs[0].1, &srcs[0].2)?;
            self.view(x, &srcs[0].2, 0.0)?
        } else {
            return Err("kiln has no translation for this op".into());
        };
        self.natural.insert(n, id);
        Ok(id)
    }
}

impl Translator {
    /// luminal writes `a.matmul(b)` as `SumReduce(last)(Mul(a.expand(N), b^T.expand(M)))`
    /// (`luminal/src/hl_ops/matmul.rs`): over logical [.., M, N, K], `a`'s view has a fake N
    /// axis and `b`'s a fake M axis. Recognised here and built as kiln `matmul` of the two views
    /// without those axes ([.., M, K] x [.., K, N]). The Mul's own kiln node is left unused
    /// (kiln drops it) unless something else reads it.
    fn try_matmul(
        &mut self,
        cx: &luminal::prelude::Graph,
        o: &dyn luminal::op::Operator,
        srcs: &[(NodeIndex, u8, ShapeTracker)],
    ) -> TResult<Option<NodeId>> {
        let Some(red) = o.as_any().downcast_ref::<op::SumReduce>() else {
            return Ok(None);
        };
        let [(mul, 0, st)] = srcs else {
            return Ok(None);
        };
        let r = st.len();
        let plain = st.is_contiguous() && !st.is_padded() && !st.is_sliced();
        if r < 3 || red.0 != r - 1 || !plain || !self.natural.contains_key(mul) {
            return Ok(None);
        }
        let Some(mul_op) = cx.graph.node_weight(*mul) else {
            return Ok(None);
        };
        if !mul_op.as_any().is::<op::Mul>() {
            return Ok(None);
        }
        let ms = cx.get_sources(*mul);
        let [(sa, 0, ta), (sb, 0, tb)] = ms.as_slice() else {
            return Ok(None);
        };
        let fake = |t: &ShapeTracker, axis: usize| t.fake[t.indexes[axis]];
        let clean = |t: &ShapeTracker, axis: usize| {
            let i = t.indexes[axis];
            t.padding[i].0.to_usize() == Some(0)
                && t.padding[i].1.to_usize() == Some(0)
                && t.slices[i].0.to_usize() == Some(0)
                && is_unbounded(&t.slices[i].1)
        };
        let (m_ax, n_ax, k_ax) = (r - 3, r - 2, r - 1);
        if ta.len() != r
            || tb.len() != r
            || !fake(ta, n_ax)
            || fake(ta, m_ax)
            || !fake(tb, m_ax)
            || fake(tb, n_ax)
            || fake(ta, k_ax)
            || fake(tb, k_ax)
            || !clean(ta, n_ax)
            || !clean(tb, m_ax)
        {
            return Ok(None);
        }
        let (mut va, mut vb) = (*ta, *tb);
        va.remove_dim(n_ax); // [.., M, K]
        vb.remove_dim(m_ax); // [.., N, K]
        let x = self.source(*sa, 0, ta)?;
        let x = self.view(x, &va, 0.0)?;
        let y = self.source(*sb, 0, tb)?;
        let y = self.view(y, &vb, 0.0)?;
        let g = &mut self.g;
        let rb = g.shape(y).len();
        let y = ir(g.transpose(y, rb - 2, rb - 1))?; // [.., K, N]
        let out = ir(g.matmul(x, y))?;
        // The reduction's own view of the Mul must agree with the matmul's shape.
        let want = logical_shape(st, &mut self.syms)?;
        let g = &mut self.g;
        if !shapes_equal(g.shape(out), &want[..r - 1]) {
            return Err(format!(
                "matmul pattern: result {} does not match the reduction's {}",
                kiln_ir::shape_str(g.shape(out)),
                kiln_ir::shape_str(&want[..r - 1])
            ));
        }
        Ok(Some(out))
    }
}

/// Whether the op type is one the translation handles (before looking at its views).
pub fn is_supported_op(o: &dyn luminal::op::Operator) -> bool {
    let a = o.as_any();
    a.is::<op::Constant>()
        || a.is::<op::Log2>()
        || a.is::<op::Exp2>()
        || a.is::<op::Sin>()
        || a.is::<op::Recip>()
        || a.is::<op::Sqrt>()
        || a.is::<op::Add>()
        || a.is::<op::Mul>()
        || a.is::<op::Mod>()
        || a.is::<op::LessThan>()
        || a.is::<op::SumReduce>()
        || a.is::<op::MaxReduce>()
        || a.is::<op::Contiguous>()
}

/// Checks a Constant's expression can be built (pure).
pub fn check_constant(o: &dyn luminal::op::Operator) -> TResult<()> {
    if let Some(c) = o.as_any().downcast_ref::<op::Constant>() {
        if let op::ConstantValue::Expression(e) = &c.0 {
            to_expr(e.terms.clone(), &mut BTreeMap::new())?;
        }
    }
    Ok(())
}

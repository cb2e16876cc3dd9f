//! Symbolic integer expressions: tensor dimensions (`s`, `p + s`, `32`), strides, and — inside
//! kernels — index arithmetic over loop variables.
//!
//! Named symbols (`Sym`) are bound at run time (sequence length, cache position); loop variables
//! (`Var`) exist only inside a kernel. Division and remainder follow C (truncating), which is
//! floor division for the non-negative values dimensions and indices take.

mod normal;

use crate::IrError;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Values of the named symbols for one run.
pub type Bindings = BTreeMap<String, i64>;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Expr {
    Const(i64),
    Sym(Arc<str>),
    /// A kernel loop variable (index of an output or reduction axis).
    Var(u32),
    Add(Box<Expr>, Box<Expr>),
    Sub(Box<Expr>, Box<Expr>),
    Mul(Box<Expr>, Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Mod(Box<Expr>, Box<Expr>),
    Min(Box<Expr>, Box<Expr>),
    Max(Box<Expr>, Box<Expr>),
}

/// Anything that converts into an expression: integers and symbol names.
impl From<i64> for Expr {
    fn from(v: i64) -> Self {
        Expr::Const(v)
    }
}
impl From<usize> for Expr {
    fn from(v: usize) -> Self {
        Expr::Const(v as i64)
    }
}
impl From<i32> for Expr {
    fn from(v: i32) -> Self {
        Expr::Const(v as i64)
    }
}
impl From<&str> for Expr {
    fn from(name: &str) -> Self {
        Expr::sym(name)
    }
}
impl From<&Expr> for Expr {
    fn from(e: &Expr) -> Self {
        e.clone()
    }
}

// The arithmetic methods take anything `Into<Expr>` (integers, symbol names) and simplify as
// they build, which the std::ops traits cannot express as conveniently.
#[allow(clippy::should_implement_trait)]
impl Expr {
    /// A named symbol. Names are identifiers (`[a-z_][a-z0-9_]*`) so they can appear in kernel source.
    pub fn sym(name: &str) -> Expr {
        assert!(
            is_identifier(name),
            "symbol name {name:?} must match [a-z_][a-z0-9_]*"
        );
        Expr::Sym(Arc::from(name))
    }

    pub fn as_const(&self) -> Option<i64> {
        match self {
            Expr::Const(c) => Some(*c),
            _ => None,
        }
    }

    pub fn is_const(&self, v: i64) -> bool {
        self.as_const() == Some(v)
    }

    pub fn add(self, o: impl Into<Expr>) -> Expr {
        simplify_bin(Op2::Add, self, o.into())
    }
    pub fn sub(self, o: impl Into<Expr>) -> Expr {
        simplify_bin(Op2::Sub, self, o.into())
    }
    pub fn mul(self, o: impl Into<Expr>) -> Expr {
        simplify_bin(Op2::Mul, self, o.into())
    }
    pub fn div(self, o: impl Into<Expr>) -> Expr {
        simplify_bin(Op2::Div, self, o.into())
    }
    pub fn rem(self, o: impl Into<Expr>) -> Expr {
        simplify_bin(Op2::Mod, self, o.into())
    }
    pub fn min(self, o: impl Into<Expr>) -> Expr {
        simplify_bin(Op2::Min, self, o.into())
    }
    pub fn max(self, o: impl Into<Expr>) -> Expr {
        simplify_bin(Op2::Max, self, o.into())
    }

    /// The canonical normal form: a polynomial with integer coefficients over atoms (symbols,
    /// loop variables, and `/`, `%`, `min`, `max` of normalised operands), expanded, with like
    /// terms combined and terms in a fixed order. Expressions equal as polynomials normalise to
    /// the same `Expr`: `(p + s) * 32 - 32 * s` and `p * 32` both give `(p * 32)`, and
    /// `(s + p) * 2 * 16` gives `((p * 32) + (s * 32))`, as does `32 * s + p * 32`. It also applies rewrites of `/`, `%`, `min` and `max` that hold for every
    /// binding of non-negative symbols and loop variables (the rules and their preconditions are
    /// listed in `expr/normal.rs`). The result evaluates to the same value as `self` wherever
    /// `self` evaluates without overflow.
    pub fn normalize(&self) -> Expr {
        normal::poly(self).to_expr()
    }

    /// True when `self` and `other` are equal for every binding of non-negative symbols and loop
    /// variables (where both are defined and nothing overflows): `normalize(self - other)` is
    /// `0`. It never samples bindings; false means "not proven" (`(s + 1) / 2 * 2` and
    /// `s + s % 2` are equal, but no rule here shows it).
    pub fn provably_equal(&self, other: &Expr) -> bool {
        self == other
            || normal::poly(self)
                .sub(&normal::poly(other))
                .is_some_and(|d| d.is_zero())
    }

    /// True when `self >= 0` for every binding of non-negative symbols and loop variables:
    /// its normal form has non-negative coefficients over provably non-negative atoms.
    pub fn provably_nonneg(&self) -> bool {
        normal::poly(self).nonneg()
    }

    /// Evaluates under `b`; loop variables are an error here.
    pub fn eval(&self, b: &Bindings) -> Result<i64, IrError> {
        self.eval_with(b, &[])
    }

    /// Evaluates with loop variable `i` bound to `vars[i]`.
    pub fn eval_with(&self, b: &Bindings, vars: &[i64]) -> Result<i64, IrError> {
        Ok(match self {
            Expr::Const(c) => *c,
            Expr::Sym(s) => *b.get(&**s).ok_or_else(|| IrError::UnboundSymbol {
                symbol: s.to_string(),
                bound: b.keys().cloned().collect(),
            })?,
            Expr::Var(v) => *vars.get(*v as usize).ok_or_else(|| IrError::Invalid {
                what: format!("loop variable v{v} has no value"),
            })?,
            Expr::Add(a, c) => a.eval_with(b, vars)?.wrapping_add(c.eval_with(b, vars)?),
            Expr::Sub(a, c) => a.eval_with(b, vars)?.wrapping_sub(c.eval_with(b, vars)?),
            Expr::Mul(a, c) => a.eval_with(b, vars)?.wrapping_mul(c.eval_with(b, vars)?),
            Expr::Div(a, c) | Expr::Mod(a, c) => {
                let (x, y) = (a.eval_with(b, vars)?, c.eval_with(b, vars)?);
                if y == 0 {
                    return Err(IrError::Invalid {
                        what: format!("division by zero in {self}"),
                    });
                }
                if matches!(self, Expr::Div(..)) {
                    x.wrapping_div(y)
                } else {
                    x.wrapping_rem(y)
                }
            }
            Expr::Min(a, c) => a.eval_with(b, vars)?.min(c.eval_with(b, vars)?),
            Expr::Max(a, c) => a.eval_with(b, vars)?.max(c.eval_with(b, vars)?),
        })
    }

    /// Named symbols this expression mentions, sorted.
    pub fn symbols(&self, out: &mut std::collections::BTreeSet<String>) {
        self.visit(&mut |e| {
            if let Expr::Sym(s) = e {
                out.insert(s.to_string());
            }
        });
    }

    /// The same expression with every named symbol renamed by `name` (the structure is kept
    /// as it is: nothing is simplified again).
    pub fn rename_symbols(&self, name: &impl Fn(&str) -> String) -> Expr {
        let two = |a: &Expr, b: &Expr| {
            (
                Box::new(a.rename_symbols(name)),
                Box::new(b.rename_symbols(name)),
            )
        };
        match self {
            Expr::Const(_) | Expr::Var(_) => self.clone(),
            Expr::Sym(s) => Expr::Sym(name(s).into()),
            Expr::Add(a, b) => {
                let (a, b) = two(a, b);
                Expr::Add(a, b)
            }
            Expr::Sub(a, b) => {
                let (a, b) = two(a, b);
                Expr::Sub(a, b)
            }
            Expr::Mul(a, b) => {
                let (a, b) = two(a, b);
                Expr::Mul(a, b)
            }
            Expr::Div(a, b) => {
                let (a, b) = two(a, b);
                Expr::Div(a, b)
            }
            Expr::Mod(a, b) => {
                let (a, b) = two(a, b);
                Expr::Mod(a, b)
            }
            Expr::Min(a, b) => {
                let (a, b) = two(a, b);
                Expr::Min(a, b)
            }
            Expr::Max(a, b) => {
                let (a, b) = two(a, b);
                Expr::Max(a, b)
            }
        }
    }

    pub fn has_vars(&self) -> bool {
        let mut found = false;
        self.visit(&mut |e| found |= matches!(e, Expr::Var(_)));
        found
    }

    /// Calls `f` on this node and every node below it, parents first.
    pub fn visit(&self, f: &mut impl FnMut(&Expr)) {
        f(self);
        if let Some((a, b)) = self.operands() {
            a.visit(f);
            b.visit(f);
        }
    }

    fn operands(&self) -> Option<(&Expr, &Expr)> {
        match self {
            Expr::Add(a, b)
            | Expr::Sub(a, b)
            | Expr::Mul(a, b)
            | Expr::Div(a, b)
            | Expr::Mod(a, b)
            | Expr::Min(a, b)
            | Expr::Max(a, b) => Some((a, b)),
            _ => None,
        }
    }

    /// The operation of a binary node.
    fn op2(&self) -> Op2 {
        match self {
            Expr::Add(..) => Op2::Add,
            Expr::Sub(..) => Op2::Sub,
            Expr::Mul(..) => Op2::Mul,
            Expr::Div(..) => Op2::Div,
            Expr::Mod(..) => Op2::Mod,
            Expr::Min(..) => Op2::Min,
            Expr::Max(..) => Op2::Max,
            _ => unreachable!("leaf"),
        }
    }

    /// Rewrites `(a * d + v) / d` to `a` and `(a * d + v) % d` to `v` wherever `v` is a loop
    /// variable whose extent `bounds[v]` is provably `d` (so `0 <= v < d`) and `a` is provably
    /// non-negative: the unflattening of an index that was just flattened (a causal mask read
    /// inside attention indexes `[row, key]` this way). Each such `/` or `%` costs a 64-bit
    /// division per element on a CPU. The result equals `self` for every binding where the
    /// loop variables stay within their extents.
    pub fn simplify_within(&self, bounds: &BTreeMap<u32, Expr>) -> Expr {
        let Some((a, b)) = self.operands() else {
            return self.clone();
        };
        let (a, b) = (a.simplify_within(bounds), b.simplify_within(bounds));
        let op = self.op2();
        if matches!(op, Op2::Div | Op2::Mod) {
            if let Some((q, v)) = split_multiple(&a, &b, bounds) {
                return if op == Op2::Div { q } else { v };
            }
        }
        match op {
            Op2::Add => Expr::Add(Box::new(a), Box::new(b)),
            Op2::Sub => Expr::Sub(Box::new(a), Box::new(b)),
            Op2::Mul => Expr::Mul(Box::new(a), Box::new(b)),
            Op2::Div => Expr::Div(Box::new(a), Box::new(b)),
            Op2::Mod => Expr::Mod(Box::new(a), Box::new(b)),
            Op2::Min => Expr::Min(Box::new(a), Box::new(b)),
            Op2::Max => Expr::Max(Box::new(a), Box::new(b)),
        }
    }

    /// [`Expr::normalize`], then the `/` and `%` that the loop variables' extents `bounds`
    /// decide: `(c x + v) / (c y)` becomes `x / y` and `(c x + v) % (c y)` becomes
    /// `(x % y) c + v` wherever `v` is a loop variable of constant extent `c` (`0 <= v < c`)
    /// and `x >= 0` provably. An index unflattened
    /// through a reshape (`(h * s * 128 + i * 128 + j) / (s * 128)` with `j < 128`) loses its
    /// divisions by run-time symbols, which cost a 64-bit division per element on a CPU. The
    /// result equals `self` wherever the loop variables stay within their extents.
    pub fn simplify_in_bounds(&self, bounds: &BTreeMap<u32, Expr>) -> Expr {
        // A rewrite can expose another (`(v0 * 8 + v1) / 8` after a first one): a few rounds.
        let mut e = self.normalize();
        for _ in 0..4 {
            let next = in_bounds(&e, bounds).normalize();
            if next == e {
                break;
            }
            e = next;
        }
        e
    }

    /// If this expression is affine in loop variables `0..nvars`, returns the coefficient of each
    /// variable and the variable-free remainder (e.g. strides and offset of a strided load).
    pub fn affine(&self, nvars: usize) -> Option<(Vec<Expr>, Expr)> {
        let zero = || vec![Expr::Const(0); nvars];
        if !self.has_vars() {
            return Some((zero(), self.clone()));
        }
        match self {
            Expr::Var(v) => {
                let mut c = zero();
                *c.get_mut(*v as usize)? = Expr::Const(1);
                Some((c, Expr::Const(0)))
            }
            Expr::Add(a, b) | Expr::Sub(a, b) => {
                let (ca, ka) = a.affine(nvars)?;
                let (cb, kb) = b.affine(nvars)?;
                let sub = matches!(self, Expr::Sub(..));
                let comb = |x: Expr, y: Expr| if sub { x.sub(y) } else { x.add(y) };
                let coeffs = ca.into_iter().zip(cb).map(|(x, y)| comb(x, y)).collect();
                Some((coeffs, comb(ka, kb)))
            }
            Expr::Mul(a, b) => {
                let (scale, other) = if !a.has_vars() {
                    (a, b)
                } else if !b.has_vars() {
                    (b, a)
                } else {
                    return None;
                };
                let (c, k) = other.affine(nvars)?;
                let s = (**scale).clone();
                Some((c.into_iter().map(|x| x.mul(s.clone())).collect(), k.mul(s)))
            }
            _ => None,
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op2 {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Min,
    Max,
}

impl Op2 {
    /// The node `a op b`, as built, without folding.
    fn node(self, a: Expr, b: Expr) -> Expr {
        let (a, b) = (Box::new(a), Box::new(b));
        match self {
            Op2::Add => Expr::Add(a, b),
            Op2::Sub => Expr::Sub(a, b),
            Op2::Mul => Expr::Mul(a, b),
            Op2::Div => Expr::Div(a, b),
            Op2::Mod => Expr::Mod(a, b),
            Op2::Min => Expr::Min(a, b),
            Op2::Max => Expr::Max(a, b),
        }
    }
}

/// [`Expr::simplify_in_bounds`] on a normalised expression, innermost `/` and `%` first.
fn in_bounds(e: &Expr, bounds: &BTreeMap<u32, Expr>) -> Expr {
    let Some((a, b)) = e.operands() else {
        return e.clone();
    };
    let (a, b) = (in_bounds(a, bounds), in_bounds(b, bounds));
    let op = e.op2();
    if matches!(op, Op2::Div | Op2::Mod) {
        if let Some((x, v, c, y)) = split_bounded(&a, &b, bounds) {
            let q = Expr::Div(Box::new(x.clone()), Box::new(y.clone()));
            return if op == Op2::Div {
                q.normalize()
            } else {
                let r = Expr::Mod(Box::new(x), Box::new(y));
                Expr::Add(Box::new(Expr::Mul(Box::new(r), Box::new(c))), Box::new(v)).normalize()
            };
        }
    }
    op.node(a, b)
}

/// `a = c x + v` and `b = c y` with `v` a loop variable of constant extent `c = bounds[v]`,
/// `x >= 0` and `y` a non-zero multiple: returns `(x, v, c, y)`. The candidates
/// for `v` are the variables among `a`'s terms (a sum of non-negative terms only).
fn split_bounded(
    a: &Expr,
    b: &Expr,
    bounds: &BTreeMap<u32, Expr>,
) -> Option<(Expr, Expr, Expr, Expr)> {
    fn terms<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) -> bool {
        match e {
            Expr::Add(l, r) => terms(l, out) && terms(r, out),
            Expr::Sub(..) => false,
            _ => {
                out.push(e);
                true
            }
        }
    }
    let mut ts = Vec::new();
    if !terms(a, &mut ts) || !a.provably_nonneg() {
        return None;
    }
    for (i, t) in ts.iter().enumerate() {
        let Expr::Var(k) = t else { continue };
        let Some(c) = bounds.get(k) else { continue };
        // The rest of the sum, and the divisor, as multiples of the extent.
        let rest = ts
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .fold(Expr::Const(0), |acc, (_, t)| acc.add((*t).clone()));
        let x = Expr::Div(Box::new(rest.clone()), Box::new(c.clone())).normalize();
        let y = Expr::Div(Box::new(b.clone()), Box::new(c.clone())).normalize();
        let exact = |q: &Expr, whole: &Expr| q.clone().mul(c.clone()).provably_equal(whole);
        if c.as_const().is_some_and(|c| c > 0)
            && exact(&x, &rest)
            && exact(&y, b)
            && !y.is_const(0)
            && x.provably_nonneg()
            && y.provably_nonneg()
        {
            return Some((x, (*t).clone(), c.clone(), y));
        }
    }
    None
}

/// `x` as `q * d + v` with `v` a loop variable of extent `d` and `q >= 0` (see
/// [`Expr::simplify_within`]): returns `(q, v)`.
fn split_multiple(x: &Expr, d: &Expr, bounds: &BTreeMap<u32, Expr>) -> Option<(Expr, Expr)> {
    let Expr::Add(l, r) = x else {
        return None;
    };
    for (m, v) in [(l, r), (r, l)] {
        let Expr::Var(k) = **v else {
            continue;
        };
        if !bounds.get(&k).is_some_and(|e| e.provably_equal(d)) {
            continue;
        }
        let Expr::Mul(f, g) = &**m else {
            continue;
        };
        for (q, dd) in [(f, g), (g, f)] {
            if dd.provably_equal(d) && q.provably_nonneg() {
                return Some(((**q).clone(), (**v).clone()));
            }
        }
    }
    None
}

/// Builds `a op b`, folding constants and the obvious identities (x+0, x*1, x*0, x/1, x%1, ...).
fn simplify_bin(op: Op2, a: Expr, b: Expr) -> Expr {
    use Expr::Const as C;
    if let (C(x), C(y)) = (&a, &b) {
        let (x, y) = (*x, *y);
        let folded = match op {
            Op2::Add => Some(x.wrapping_add(y)),
            Op2::Sub => Some(x.wrapping_sub(y)),
            Op2::Mul => Some(x.wrapping_mul(y)),
            Op2::Div if y != 0 => Some(x.wrapping_div(y)),
            Op2::Mod if y != 0 => Some(x.wrapping_rem(y)),
            Op2::Min => Some(x.min(y)),
            Op2::Max => Some(x.max(y)),
            _ => None,
        };
        if let Some(v) = folded {
            return C(v);
        }
    }
    match op {
        Op2::Add => {
            if a.is_const(0) {
                return b;
            }
            if b.is_const(0) {
                return a;
            }
            // Keep constants on the right and merge them: (x + 2) + 3 -> x + 5.
            if let C(_) = a {
                return simplify_bin(Op2::Add, b, a);
            }
            if let (Expr::Add(x, y), C(c2)) = (&a, &b) {
                if let C(c1) = **y {
                    return simplify_bin(Op2::Add, (**x).clone(), C(c1 + c2));
                }
            }
            Expr::Add(Box::new(a), Box::new(b))
        }
        Op2::Sub => {
            if b.is_const(0) {
                return a;
            }
            if a == b {
                return C(0);
            }
            // (x + y) - y -> x, (x + y) - x -> y
            if let Expr::Add(x, y) = &a {
                if **y == b {
                    return (**x).clone();
                }
                if **x == b {
                    return (**y).clone();
                }
            }
            // x - (x - y) -> y
            if let Expr::Sub(x, y) = &b {
                if **x == a {
                    return (**y).clone();
                }
            }
            Expr::Sub(Box::new(a), Box::new(b))
        }
        Op2::Mul => {
            if a.is_const(0) || b.is_const(0) {
                return C(0);
            }
            if a.is_const(1) {
                return b;
            }
            if b.is_const(1) {
                return a;
            }
            if let C(_) = a {
                return simplify_bin(Op2::Mul, b, a);
            }
            if let (Expr::Mul(x, y), C(c2)) = (&a, &b) {
                if let C(c1) = **y {
                    return simplify_bin(Op2::Mul, (**x).clone(), C(c1 * c2));
                }
            }
            Expr::Mul(Box::new(a), Box::new(b))
        }
        Op2::Div => {
            if b.is_const(1) {
                return a;
            }
            if a.is_const(0) {
                return C(0);
            }
            if a == b {
                return C(1);
            }
            // (x * c) / c -> x
            if let Expr::Mul(x, y) = &a {
                if **y == b && !b.is_const(0) {
                    return (**x).clone();
                }
            }
            Expr::Div(Box::new(a), Box::new(b))
        }
        Op2::Mod => {
            if b.is_const(1) || a.is_const(0) || a == b {
                return C(0);
            }
            if let Expr::Mul(_, y) = &a {
                if **y == b {
                    return C(0);
                }
            }
            Expr::Mod(Box::new(a), Box::new(b))
        }
        Op2::Min => {
            if a == b {
                return a;
            }
            Expr::Min(Box::new(a), Box::new(b))
        }
        Op2::Max => {
            if a == b {
                return a;
            }
            Expr::Max(Box::new(a), Box::new(b))
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Const(c) => write!(f, "{c}"),
            Expr::Sym(s) => write!(f, "{s}"),
            Expr::Var(v) => write!(f, "v{v}"),
            Expr::Min(a, b) => write!(f, "min({a}, {b})"),
            Expr::Max(a, b) => write!(f, "max({a}, {b})"),
            _ => {
                let (a, b) = self.operands().expect("binary");
                let op = match self {
                    Expr::Add(..) => "+",
                    Expr::Sub(..) => "-",
                    Expr::Mul(..) => "*",
                    Expr::Div(..) => "/",
                    _ => "%",
                };
                write!(f, "({a} {op} {b})")
            }
        }
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Formats a shape as `[s, 16, 128]`.
pub fn shape_str(shape: &[Expr]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// Product of the dimensions (number of elements).
pub fn numel(shape: &[Expr]) -> Expr {
    shape
        .iter()
        .fold(Expr::Const(1), |acc, d| acc.mul(d.clone()))
}

/// Row-major (contiguous) strides of a shape.
pub fn contiguous_strides(shape: &[Expr]) -> Vec<Expr> {
    let mut strides = vec![Expr::Const(1); shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].clone().mul(shape[i + 1].clone());
    }
    strides
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_and_identities() {
        let s = Expr::sym("s");
        assert_eq!(Expr::from(2).add(3), Expr::Const(5));
        assert_eq!(s.clone().add(0), s);
        assert_eq!(s.clone().mul(1), s);
        assert_eq!(s.clone().mul(0), Expr::Const(0));
        assert_eq!(s.clone().add(2).add(3), s.clone().add(5));
        assert_eq!(s.clone().mul(4).div(4), s);
        assert_eq!(s.clone().sub(s.clone()), Expr::Const(0));
        assert_eq!(s.clone().rem(1), Expr::Const(0));
        assert_eq!(Expr::from(7).min(3), Expr::Const(3));
        assert_eq!(s.clone().add(4).sub(4), s);
        assert_eq!(s.clone().sub(s.clone().sub(1)), Expr::Const(1));
    }

    #[test]
    fn evaluates_and_reports_unbound_symbols() {
        let e = Expr::sym("p").add(Expr::sym("s")).mul(3).rem(5).max(1);
        let mut b = Bindings::new();
        b.insert("p".into(), 4);
        let err = e.eval(&b).unwrap_err().to_string();
        assert!(err.contains("'s'"), "{err}");
        b.insert("s".into(), 2);
        assert_eq!(e.eval(&b).unwrap(), 3);
        let err = Expr::sym("s").div(0).eval(&b).unwrap_err().to_string();
        assert!(err.contains("division by zero"), "{err}");
    }

    #[test]
    fn affine_extracts_strides() {
        let s = Expr::sym("s");
        let e = Expr::Var(0)
            .mul(s.clone().mul(32))
            .add(Expr::Var(1).mul(32))
            .add(Expr::Var(2))
            .add(7);
        let (c, k) = e.affine(3).unwrap();
        assert_eq!(c, vec![s.mul(32), Expr::Const(32), Expr::Const(1)]);
        assert_eq!(k, Expr::Const(7));
        assert!(Expr::Var(0).div(4).affine(1).is_none());
        assert!(Expr::Var(0).mul(Expr::Var(1)).affine(2).is_none());
    }

    fn sym(n: &str) -> Expr {
        Expr::sym(n)
    }

    /// `a op b` without the builder's folding, to feed the normaliser unsimplified trees.
    fn raw(op: Op2, a: impl Into<Expr>, b: impl Into<Expr>) -> Expr {
        op.node(a.into(), b.into())
    }

    fn norm(e: &Expr) -> String {
        e.normalize().to_string()
    }

    /// `x % 0` is undefined and stays, whatever it is added to: once dropped by the
    /// `(x % c) + c * (x / c) = x` recombination when a quotient was beside it, so normalising
    /// `(p / 2) + (0 % 0)` twice gave two different forms (the property test found it).
    #[test]
    fn normalize_keeps_a_remainder_by_zero() {
        let p = sym("p");
        let e = raw(Op2::Add, raw(Op2::Div, &p, 2), raw(Op2::Mod, 0, 0));
        let n = e.normalize();
        assert_eq!(n.normalize(), n, "{e} -> {n}");
        assert!(n.to_string().contains("0 % 0"), "{e} -> {n}");
    }

    #[test]
    fn normalizes_polynomials() {
        let (p, s, t) = (sym("p"), sym("s"), sym("t"));
        // Different spellings of the same dimension.
        let a = raw(
            Op2::Sub,
            raw(Op2::Mul, raw(Op2::Add, &p, &s), 32),
            raw(Op2::Mul, 32, &s),
        );
        let b = raw(Op2::Mul, &p, 32);
        assert_eq!(norm(&a), "(p * 32)");
        assert_eq!(a.normalize(), b.normalize());
        let c = raw(Op2::Mul, raw(Op2::Mul, raw(Op2::Add, &s, &p), 2), 16);
        let d = raw(Op2::Add, raw(Op2::Mul, 32, &s), raw(Op2::Mul, &p, 32));
        assert_eq!(norm(&c), "((p * 32) + (s * 32))");
        assert_eq!(c.normalize(), d.normalize());
        assert_ne!(c.normalize(), b.normalize());
        // Commutativity and associativity.
        let abc = raw(Op2::Add, raw(Op2::Add, &p, &s), &t);
        let cba = raw(Op2::Add, &t, raw(Op2::Add, &s, &p));
        assert_eq!(abc.normalize(), cba.normalize());
        assert_eq!(norm(&abc), "((p + s) + t)");
        let m1 = raw(Op2::Mul, raw(Op2::Mul, &t, &s), &p);
        let m2 = raw(Op2::Mul, &p, raw(Op2::Mul, &s, &t));
        assert_eq!(m1.normalize(), m2.normalize());
        assert_eq!(norm(&m1), "((p * s) * t)");
        // Distribution, like terms, powers; higher degree first, constant last.
        let sq = raw(Op2::Mul, raw(Op2::Add, &s, 1), raw(Op2::Add, &s, 1));
        assert_eq!(norm(&sq), "(((s * s) + (s * 2)) + 1)");
        let like = raw(
            Op2::Add,
            raw(Op2::Mul, &s, 3),
            raw(Op2::Sub, &s, raw(Op2::Mul, 4, &s)),
        );
        assert_eq!(norm(&like), "0");
        // Differences read as differences.
        assert_eq!(norm(&raw(Op2::Sub, &s, &p)), "(s - p)");
        assert_eq!(norm(&raw(Op2::Sub, 1, &s)), "(1 - s)");
        assert_eq!(
            norm(&raw(Op2::Sub, raw(Op2::Mul, &s, 2), 3)),
            "((s * 2) - 3)"
        );
        assert_eq!(
            norm(&raw(Op2::Sub, 0, raw(Op2::Add, &s, 1))),
            "((s * -1) - 1)"
        );
        assert_eq!(norm(&raw(Op2::Sub, raw(Op2::Add, &p, &s), 0)), "(p + s)");
        assert_eq!(norm(&Expr::Var(1).add(Expr::Var(0))), "(v0 + v1)");
        assert_eq!(norm(&Expr::Const(7)), "7");
    }

    #[test]
    fn normalizes_div_mod_min_max() {
        let (p, s, t) = (sym("p"), sym("s"), sym("t"));
        // Operands of atoms are normalised, so atoms compare by value of their operands.
        let d1 = raw(Op2::Div, raw(Op2::Add, &s, &p), 2);
        let d2 = raw(Op2::Div, raw(Op2::Add, &p, &s), 2);
        assert_eq!(d1.normalize(), d2.normalize());
        assert_eq!(norm(&d1), "((p + s) / 2)");
        let mm1 = raw(Op2::Min, raw(Op2::Max, &s, raw(Op2::Mul, 2, &t)), &p);
        let mm2 = raw(Op2::Min, &p, raw(Op2::Max, raw(Op2::Add, &t, &t), &s));
        assert_eq!(mm1.normalize(), mm2.normalize());
        // Nested min/max flatten and sort; constants fold.
        let nested = raw(
            Op2::Min,
            raw(Op2::Min, &t, 5),
            raw(Op2::Min, &s, raw(Op2::Min, 3, &p)),
        );
        assert_eq!(norm(&nested), "min(min(min(3, p), s), t)");
        // Dominated operands (for non-negative symbols) go.
        assert_eq!(norm(&raw(Op2::Min, &s, raw(Op2::Add, &s, &p))), "s");
        assert_eq!(norm(&raw(Op2::Max, &s, raw(Op2::Add, &s, 1))), "(s + 1)");
        assert_eq!(norm(&raw(Op2::Max, &s, 0)), "s");
        assert_eq!(norm(&raw(Op2::Min, &s, 0)), "0");
        assert_eq!(norm(&raw(Op2::Min, &s, raw(Op2::Sub, &s, 1))), "(s - 1)");
        // ... but not when they are not comparable.
        assert_eq!(
            norm(&raw(Op2::Max, raw(Op2::Sub, &s, 1), 0)),
            "max(0, (s - 1))"
        );
        assert_eq!(norm(&raw(Op2::Min, &p, &s)), "min(p, s)");
        // An atom inside a polynomial combines like any other.
        let half = raw(Op2::Div, &s, 2);
        let e = raw(
            Op2::Add,
            raw(Op2::Sub, &s, &half),
            raw(Op2::Div, raw(Op2::Mul, &s, 1), 2),
        );
        assert_eq!(norm(&e), "s");
        // Dimensions sizes.
        assert_eq!(
            norm(&raw(Op2::Mul, raw(Op2::Div, &s, 2), raw(Op2::Div, &s, 2))),
            "((s / 2) * (s / 2))"
        );
    }

    #[test]
    fn division_rules_and_their_preconditions() {
        let (p, s, t) = (sym("p"), sym("s"), sym("t"));
        // Exact quotients hold for every integer.
        assert_eq!(norm(&raw(Op2::Div, raw(Op2::Mul, &s, 32), 32)), "s");
        assert_eq!(norm(&raw(Op2::Div, raw(Op2::Mul, &s, &t), &t)), "s");
        assert_eq!(
            norm(&raw(Op2::Div, raw(Op2::Add, raw(Op2::Mul, &s, 4), 8), 4)),
            "(s + 2)"
        );
        assert_eq!(
            norm(&raw(Op2::Div, raw(Op2::Sub, raw(Op2::Mul, &s, 4), 8), 4)),
            "(s - 2)"
        );
        assert_eq!(
            norm(&raw(
                Op2::Div,
                raw(Op2::Add, raw(Op2::Mul, &p, 2), raw(Op2::Mul, &s, 2)),
                raw(Op2::Add, &s, &p)
            )),
            "2"
        );
        assert_eq!(norm(&raw(Op2::Mod, raw(Op2::Mul, &s, 32), 32)), "0");
        assert_eq!(norm(&raw(Op2::Mod, raw(Op2::Mul, &s, &t), &t)), "0");
        // (a c + b) / c = a + b / c needs b >= 0 and a c + b >= 0.
        let e = raw(Op2::Div, raw(Op2::Add, raw(Op2::Mul, &s, 32), 5), 32);
        assert_eq!(norm(&e), "s");
        let e = raw(Op2::Div, raw(Op2::Add, raw(Op2::Mul, &s, 32), &p), 32);
        assert_eq!(norm(&e), "(s + (p / 32))");
        assert_eq!(
            norm(&raw(Op2::Mod, raw(Op2::Add, raw(Op2::Mul, &s, 32), &p), 32)),
            "(p % 32)"
        );
        // s = 0: (0 - 1) / 32 = 0 with truncation, not s - 1 = -1. Not rewritten.
        let e = raw(Op2::Div, raw(Op2::Sub, raw(Op2::Mul, &s, 32), 1), 32);
        assert_eq!(norm(&e), "(((s * 32) - 1) / 32)");
        // The ceil-division idiom stays as it is.
        assert_eq!(
            norm(&raw(Op2::Div, raw(Op2::Add, &s, 31), 32)),
            "((s + 31) / 32)"
        );
        // Common factors cancel: floor and truncation depend only on the rational value.
        assert_eq!(
            norm(&raw(Op2::Div, raw(Op2::Add, raw(Op2::Mul, &s, 4), 6), 8)),
            "(((s * 2) + 3) / 4)"
        );
        assert_eq!(
            norm(&raw(Op2::Mod, raw(Op2::Add, raw(Op2::Mul, &s, 4), 6), 8)),
            "((((s * 2) + 3) % 4) * 2)"
        );
        // Signs move out: truncation is odd in both operands.
        assert_eq!(
            raw(Op2::Div, &s, -2).normalize(),
            raw(Op2::Mul, raw(Op2::Div, &s, 2), -1).normalize()
        );
        assert_eq!(
            raw(Op2::Mod, &s, -2).normalize(),
            raw(Op2::Mod, &s, 2).normalize()
        );
        let neg = raw(Op2::Sub, 0, &s);
        assert_eq!(norm(&raw(Op2::Div, &neg, 2)), "((s / 2) * -1)");
        assert_eq!(norm(&raw(Op2::Mod, &neg, 2)), "((s % 2) * -1)");
        // Nesting with constants.
        assert_eq!(norm(&raw(Op2::Div, raw(Op2::Div, &s, 4), 8)), "(s / 32)");
        assert_eq!(norm(&raw(Op2::Div, raw(Op2::Mod, &s, 4), 8)), "0");
        assert_eq!(norm(&raw(Op2::Mod, raw(Op2::Mod, &s, 32), 8)), "(s % 8)");
        assert_eq!(norm(&raw(Op2::Mod, raw(Op2::Mod, &s, 8), 32)), "(s % 8)");
        assert_eq!(
            norm(&raw(Op2::Mod, raw(Op2::Mod, &s, 12), 8)),
            "((s % 12) % 8)"
        );
        // x = c (x / c) + x % c, also under a common factor.
        let v = Expr::Var(0);
        let e = raw(
            Op2::Add,
            raw(Op2::Mul, raw(Op2::Div, &v, 4), 4),
            raw(Op2::Mod, &v, 4),
        );
        assert_eq!(norm(&e), "v0");
        let e = raw(
            Op2::Add,
            raw(Op2::Mul, raw(Op2::Mul, raw(Op2::Div, &s, &t), &t), &p),
            raw(Op2::Mul, &p, raw(Op2::Mod, &s, &t)),
        );
        assert_eq!(norm(&e), "(p * s)");
        // Identities; division by zero is left for evaluation to report.
        assert_eq!(norm(&raw(Op2::Div, 0, &s)), "0");
        assert_eq!(
            norm(&raw(Op2::Div, raw(Op2::Add, &s, &p), raw(Op2::Add, &p, &s))),
            "1"
        );
        assert_eq!(norm(&raw(Op2::Div, &s, 0)), "(s / 0)");
        assert_eq!(norm(&raw(Op2::Div, 7, 0)), "(7 / 0)");
        assert_eq!(norm(&raw(Op2::Div, -7, 2)), "-3");
        assert_eq!(norm(&raw(Op2::Mod, -7, 2)), "-1");
    }

    #[test]
    fn provably_equal_true_and_false() {
        let (p, s) = (sym("p"), sym("s"));
        let yes = [
            (
                raw(Op2::Mul, raw(Op2::Add, &p, &s), 32),
                raw(Op2::Add, raw(Op2::Mul, 32, &s), raw(Op2::Mul, &p, 32)),
            ),
            (
                raw(Op2::Sub, raw(Op2::Add, &p, &s), 0),
                raw(Op2::Add, &s, &p),
            ),
            (raw(Op2::Sub, &s, raw(Op2::Sub, &s, 1)), Expr::Const(1)),
            (
                raw(Op2::Mul, raw(Op2::Mul, 2, &s), 7),
                raw(Op2::Mul, 14, &s),
            ),
            (
                raw(Op2::Div, raw(Op2::Mul, &s, 128), 2),
                raw(Op2::Mul, &s, 64),
            ),
            (raw(Op2::Min, &s, raw(Op2::Add, &p, &s)), s.clone()),
        ];
        for (a, b) in &yes {
            assert!(a.provably_equal(b), "{a} = {b}");
            assert!(b.provably_equal(a), "{b} = {a}");
        }
        let no = [
            (s.clone(), p.clone()),
            (raw(Op2::Add, &p, 1), s.clone()),
            (raw(Op2::Mul, raw(Op2::Div, &s, 2), 2), s.clone()), // odd s
            (
                raw(Op2::Div, raw(Op2::Sub, raw(Op2::Mul, &s, 32), 1), 32),
                raw(Op2::Sub, &s, 1),
            ), // s = 0
            (raw(Op2::Min, &s, &p), s.clone()),
        ];
        for (a, b) in &no {
            assert!(!a.provably_equal(b), "{a} = {b}");
            assert!(!b.provably_equal(a), "{b} = {a}");
        }
        // s / s is 1 wherever it is defined (s != 0), which is what "equal" means here.
        assert!(raw(Op2::Div, &s, &s).provably_equal(&Expr::Const(1)));
        // Equal, but beyond these rules: false only means "not proven".
        let a = raw(Op2::Mul, raw(Op2::Div, raw(Op2::Add, &s, 1), 2), 2);
        assert!(!a.provably_equal(&raw(Op2::Add, &s, raw(Op2::Mod, &s, 2))));
    }

    #[test]
    fn provably_nonneg() {
        let (p, s) = (sym("p"), sym("s"));
        assert!(raw(Op2::Add, &p, raw(Op2::Div, &s, 2)).provably_nonneg());
        assert!(raw(Op2::Max, raw(Op2::Sub, &s, 1), 0).provably_nonneg());
        assert!(raw(Op2::Sub, raw(Op2::Add, &s, 1), &s).provably_nonneg());
        // An even power of an atom of any sign is non-negative ...
        let d = raw(Op2::Div, raw(Op2::Sub, &s, &p), 2);
        assert!(raw(Op2::Mul, &d, &d).provably_nonneg());
        // ... but (s - p)^2 expands to s^2 - 2ps + p^2, which the coefficient test cannot see.
        assert!(!raw(Op2::Mul, raw(Op2::Sub, &s, &p), raw(Op2::Sub, &s, &p)).provably_nonneg());
        assert!(!raw(Op2::Sub, &s, 1).provably_nonneg());
        assert!(!raw(Op2::Div, &s, raw(Op2::Sub, &p, 1)).provably_nonneg());
    }

    /// The check `graph::dims_equal` used before: equal under six sample bindings.
    fn sampled_equal(a: &Expr, b: &Expr) -> bool {
        let mut syms = std::collections::BTreeSet::new();
        a.symbols(&mut syms);
        b.symbols(&mut syms);
        [1i64, 2, 3, 7, 13, 64].iter().all(|&v| {
            let bind: Bindings = syms
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), v + i as i64))
                .collect();
            matches!((a.eval(&bind), b.eval(&bind)), (Ok(x), Ok(y)) if x == y)
        })
    }

    #[test]
    fn sampling_was_fooled_where_the_normal_form_is_not() {
        let (p, s) = (sym("p"), sym("s"));
        // The sampler bound p = v and s = v + 1, so it took p + 1 for s.
        let a = p.clone().add(1);
        assert!(sampled_equal(&a, &s));
        assert!(!a.provably_equal(&s));
        // A polynomial vanishing at every sample value: s (s-1) (s-2) (s-3) (s-7) (s-13) (s-64).
        let vanish = [1, 2, 3, 7, 13, 64]
            .iter()
            .fold(s.clone(), |acc, &r| acc.mul(s.clone().sub(r)));
        let b = s.clone().add(vanish.clone());
        assert!(sampled_equal(&b, &s));
        assert!(!b.provably_equal(&s));
        let mut bind = Bindings::new();
        bind.insert("s".into(), 4);
        assert_ne!(b.eval(&bind).unwrap(), s.eval(&bind).unwrap());
        assert!(!vanish.provably_equal(&Expr::Const(0)));
    }

    /// Evaluation that reports overflow and division by zero apart, over symbols `p`, `s`, `t`
    /// and two loop variables.
    #[derive(Debug, PartialEq)]
    enum Fail {
        Overflow,
        DivZero,
    }
    fn eval_checked(e: &Expr, syms: &[i64; 3], vars: &[i64; 2]) -> Result<i64, Fail> {
        let ev = |x: &Expr| eval_checked(x, syms, vars);
        let of = |v: Option<i64>| v.ok_or(Fail::Overflow);
        match e {
            Expr::Const(c) => Ok(*c),
            Expr::Sym(n) => Ok(syms[match &**n {
                "p" => 0,
                "s" => 1,
                _ => 2,
            }]),
            Expr::Var(i) => Ok(vars[*i as usize]),
            Expr::Add(a, b) => of(ev(a)?.checked_add(ev(b)?)),
            Expr::Sub(a, b) => of(ev(a)?.checked_sub(ev(b)?)),
            Expr::Mul(a, b) => of(ev(a)?.checked_mul(ev(b)?)),
            Expr::Div(a, b) | Expr::Mod(a, b) => {
                let (x, y) = (ev(a)?, ev(b)?);
                if y == 0 {
                    return Err(Fail::DivZero);
                }
                of(if matches!(e, Expr::Div(..)) {
                    x.checked_div(y)
                } else {
                    x.checked_rem(y)
                })
            }
            Expr::Min(a, b) => Ok(ev(a)?.min(ev(b)?)),
            Expr::Max(a, b) => Ok(ev(a)?.max(ev(b)?)),
        }
    }

    /// Random trees over `p`, `s`, `t`, `v0`, `v1` and constants in `-small..=small` (and, with
    /// `big`, a few dimension-like ones), built without the builder's folding.
    fn arb_expr(small: i64, big: bool) -> impl Strategy<Value = Expr> {
        let bigs = if big {
            vec![32i64, 64, -16, 128]
        } else {
            vec![small]
        };
        let leaf = prop_oneof![
            4 => (-small..=small).prop_map(Expr::Const),
            1 => prop::sample::select(bigs).prop_map(Expr::Const),
            6 => prop_oneof![Just("p"), Just("s"), Just("t")].prop_map(Expr::sym),
            2 => (0u32..2).prop_map(Expr::Var),
        ];
        leaf.prop_recursive(5, 48, 2, |inner| {
            (0u8..7, inner.clone(), inner).prop_map(|(op, a, b)| {
                let ops = [
                    Op2::Add,
                    Op2::Sub,
                    Op2::Mul,
                    Op2::Div,
                    Op2::Mod,
                    Op2::Min,
                    Op2::Max,
                ];
                raw(ops[op as usize], a, b)
            })
        })
    }

    /// A symbol's or loop variable's value: mostly small, sometimes past the constants.
    fn val() -> impl Strategy<Value = i64> {
        prop_oneof![3 => 0i64..=12, 1 => 0i64..=300]
    }

    /// A ring-equal rewrite of `e`: operands of `+`, `*`, `min`, `max` swapped, `a - b` as
    /// `a + b * -1`, products distributed over sums, chosen by `seed`.
    fn shuffle(e: &Expr, seed: &mut u64) -> Expr {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let bits = *seed >> 60;
        let swap = bits & 1 == 1;
        match e {
            Expr::Const(_) | Expr::Sym(_) | Expr::Var(_) => e.clone(),
            _ => {
                let (a, b) = e.operands().expect("binary");
                let (a, b) = (shuffle(a, seed), shuffle(b, seed));
                match e.op2() {
                    Op2::Sub if bits & 2 == 2 => raw(Op2::Add, a, raw(Op2::Mul, b, -1)),
                    Op2::Mul if bits & 4 == 4 => match b {
                        Expr::Add(x, y) => {
                            raw(Op2::Add, raw(Op2::Mul, &a, *x), raw(Op2::Mul, &a, *y))
                        }
                        Expr::Sub(x, y) => {
                            raw(Op2::Sub, raw(Op2::Mul, &a, *x), raw(Op2::Mul, &a, *y))
                        }
                        b => raw(Op2::Mul, b, a),
                    },
                    op @ (Op2::Add | Op2::Mul | Op2::Min | Op2::Max) if swap => raw(op, b, a),
                    op => raw(op, a, b),
                }
            }
        }
    }

    use proptest::prelude::*;

    proptest! {
        // No failure file: a test never writes into the repository (a failure prints the
        // shrunk case to copy into a test, as `normalize_keeps_a_remainder_by_zero` was).
        #![proptest_config(ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn normalize_preserves_value(
            e in arb_expr(6, true),
            binds in prop::collection::vec((val(), val(), val(), val(), val()), 4),
        ) {
            let n = e.normalize();
            prop_assert_eq!(n.normalize(), n.clone(), "not idempotent: {} -> {}", e, n);
            prop_assert!(e.provably_equal(&n));
            for (p, s, t, v0, v1) in binds {
                let (syms, vars) = ([p, s, t], [v0, v1]);
                let Ok(want) = eval_checked(&e, &syms, &vars) else { continue };
                match eval_checked(&n, &syms, &vars) {
                    Ok(got) => prop_assert_eq!(got, want, "{} -> {} at p={} s={} t={} v={:?}", e, n, p, s, t, vars),
                    Err(Fail::Overflow) => {} // the expanded form can overflow where the factored one did not
                    Err(Fail::DivZero) => prop_assert!(false, "{} -> {} divides by zero at {:?} {:?}", e, n, syms, vars),
                }
                // The library's evaluator agrees where nothing overflows.
                let mut b = Bindings::new();
                b.extend([("p".to_string(), p), ("s".to_string(), s), ("t".to_string(), t)]);
                prop_assert_eq!(e.eval_with(&b, &vars).unwrap(), want);
            }
        }

        #[test]
        fn provably_equal_implies_equal_values(
            a in arb_expr(6, true),
            other in arb_expr(6, true),
            seed in any::<u64>(),
            k in -2i64..=2,
            binds in prop::collection::vec((val(), val(), val(), val(), val()), 6),
        ) {
            let mut seed = seed;
            let shuffled = shuffle(&a, &mut seed);
            let candidates = [
                other.clone(),
                shuffled.clone(),
                raw(Op2::Add, shuffled.clone(), k),
                raw(Op2::Add, &a, raw(Op2::Mul, &other, k)),
                raw(Op2::Div, raw(Op2::Mul, &a, 4), 4),
                raw(Op2::Div, raw(Op2::Add, raw(Op2::Mul, &a, 4), k.abs()), 4),
                raw(Op2::Min, &a, raw(Op2::Add, &a, &other)),
            ];
            for b in &candidates {
                if !a.provably_equal(b) {
                    continue;
                }
                for &(p, s, t, v0, v1) in &binds {
                    let (syms, vars) = ([p, s, t], [v0, v1]);
                    if let (Ok(x), Ok(y)) = (eval_checked(&a, &syms, &vars), eval_checked(b, &syms, &vars)) {
                        prop_assert_eq!(x, y, "{} = {} claimed, differ at {:?} {:?}", a, b, syms, vars);
                    }
                }
            }
        }

        /// The division rules, hit on purpose: nested `/` and `%` by constants, `(x c + y) / c`,
        /// and `c (x / c) + x % c` with perturbations.
        #[test]
        fn division_rules_preserve_value(
            x in arb_expr(4, false),
            y in arb_expr(4, false),
            c1 in -9i64..=9,
            c2 in -9i64..=9,
            shape in 0u8..6,
            binds in prop::collection::vec((val(), val(), val(), val(), val()), 6),
        ) {
            let dm = |i: u8| if i.is_multiple_of(2) { Op2::Div } else { Op2::Mod };
            let e = match shape {
                0..=3 => raw(dm(shape / 2), raw(dm(shape), &x, c1), c2),
                4 => raw(dm(c2 as u8), raw(Op2::Add, raw(Op2::Mul, &x, c1), &y), c1),
                _ => raw(
                    Op2::Add,
                    raw(Op2::Mul, raw(Op2::Mul, raw(Op2::Div, &x, c1), c1), &y),
                    raw(Op2::Mul, raw(Op2::Mod, &x, c1), raw(Op2::Add, &y, c2 % 2)),
                ),
            };
            let n = e.normalize();
            prop_assert_eq!(n.normalize(), n.clone());
            for (p, s, t, v0, v1) in binds {
                let (syms, vars) = ([p, s, t], [v0, v1]);
                let Ok(want) = eval_checked(&e, &syms, &vars) else { continue };
                match eval_checked(&n, &syms, &vars) {
                    Ok(got) => prop_assert_eq!(got, want, "{} -> {} at {:?} {:?}", e, n, syms, vars),
                    Err(Fail::Overflow) => {}
                    Err(Fail::DivZero) => prop_assert!(false, "{} -> {} divides by zero", e, n),
                }
            }
        }

        /// Rewrites that only use the ring laws are always proven (with small constants, so no
        /// coefficient overflows and the form stays complete).
        #[test]
        fn ring_rewrites_are_proven(a in arb_expr(3, false), seed in any::<u64>()) {
            let mut seed = seed;
            let b = shuffle(&a, &mut seed);
            prop_assert!(a.provably_equal(&b), "{} = {}: {} vs {}", a, b, a.normalize(), b.normalize());
        }
    }
}

#[cfg(test)]
mod within_tests {
    use super::*;

    #[test]
    fn a_reshaped_index_loses_its_divisions_by_symbols() {
        // Element (v0, v1, v2) of [8, 2s, 128] read as [16, s, 128]: head, row, column.
        let s = Expr::sym("s");
        let v = |i| Expr::Var(i);
        let flat = v(0).mul(s.clone().mul(256)).add(v(1).mul(128)).add(v(2));
        let bounds: BTreeMap<u32, Expr> = [
            (0, Expr::Const(8)),
            (1, s.clone().mul(2)),
            (2, Expr::Const(128)),
        ]
        .into();
        let head = flat.clone().div(s.clone().mul(128));
        let row = flat.clone().div(128).rem(s.clone());
        let col = flat.clone().rem(128);
        assert_eq!(
            head.simplify_in_bounds(&bounds),
            v(0).mul(2).add(v(1).div(s.clone())).normalize()
        );
        assert_eq!(
            row.simplify_in_bounds(&bounds),
            v(0).mul(s.clone().mul(2))
                .add(v(1))
                .rem(s.clone())
                .normalize()
        );
        assert_eq!(col.simplify_in_bounds(&bounds), v(2));
        // The same values wherever the variables stay within their extents.
        let b: crate::Bindings = [("s".to_string(), 3)].into();
        for i in 0..8 {
            for j in 0..6 {
                for k in [0, 1, 63, 127] {
                    for e in [&head, &row, &col] {
                        assert_eq!(
                            e.eval_with(&b, &[i, j, k]).unwrap(),
                            e.simplify_in_bounds(&bounds)
                                .eval_with(&b, &[i, j, k])
                                .unwrap()
                        );
                    }
                }
            }
        }
        // A variable whose extent exceeds the divisor's factor: unchanged.
        let wide: BTreeMap<u32, Expr> = [(2, Expr::Const(256))].into();
        assert_eq!(col.simplify_in_bounds(&wide), col.normalize());
    }

    #[test]
    fn unflattening_a_flattened_row_and_key_is_the_identity() {
        let (s, p) = (Expr::sym("s"), Expr::sym("p"));
        let t = p.clone().add(s.clone());
        let row = Expr::Mod(
            Box::new(Expr::Add(
                Box::new(Expr::Mul(
                    Box::new(Expr::Var(0)),
                    Box::new(Expr::Mul(Box::new(s.clone()), Box::new(Expr::Const(2)))),
                )),
                Box::new(Expr::Var(1)),
            )),
            Box::new(s.clone()),
        );
        let flat = Expr::Add(
            Box::new(Expr::Mul(Box::new(row.clone()), Box::new(t.clone()))),
            Box::new(Expr::Var(2)),
        );
        let bounds: BTreeMap<u32, Expr> = [(2, s.clone().add(p.clone()))].into();
        let div = Expr::Div(Box::new(flat.clone()), Box::new(t.clone()));
        let rem = Expr::Mod(Box::new(flat.clone()), Box::new(t.clone()));
        assert_eq!(div.simplify_within(&bounds), row);
        assert_eq!(rem.simplify_within(&bounds), Expr::Var(2));
        // Without the key's extent nothing is known: unchanged.
        assert_eq!(div.simplify_within(&BTreeMap::new()), div);
        // A variable whose extent is not the divisor: unchanged.
        let other: BTreeMap<u32, Expr> = [(2, s.clone())].into();
        assert_eq!(rem.simplify_within(&other), rem);
    }
}

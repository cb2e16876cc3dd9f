//! Symbolic integer expressions: tensor dimensions (`s`, `p + s`, `32`), strides, and — inside
//! kernels — index arithmetic over loop variables.
//!
//! Named symbols (`Sym`) are bound at run time (sequence length, cache position); loop variables
//! (`Var`) exist only inside a kernel. Division and remainder follow C (truncating), which is
//! floor division for the non-negative values dimensions and indices take.

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

    pub fn has_vars(&self) -> bool {
        let mut found = false;
        self.visit(&mut |e| found |= matches!(e, Expr::Var(_)));
        found
    }

    fn visit(&self, f: &mut impl FnMut(&Expr)) {
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

#[derive(Clone, Copy)]
enum Op2 {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Min,
    Max,
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
}

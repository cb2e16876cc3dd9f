//! A canonical normal form for [`Expr`]: a polynomial with integer coefficients over *atoms*.
//!
//! Atoms are symbols, loop variables and the nodes that are not polynomial (`/`, `%`, `min`,
//! `max`) with normalised operands. A monomial is a product of atoms with positive powers; a
//! polynomial maps monomials to non-zero coefficients. Both are kept sorted (monomials by
//! descending degree, then by their atoms in `Expr`'s derived order), so two expressions that are
//! equal as polynomials — whatever their association, commutation or distribution — convert back
//! to the same `Expr`.
//!
//! # Domain and soundness
//!
//! Every rewrite below holds for all bindings in kiln's domain: symbols and loop variables are
//! non-negative integers, and evaluation neither overflows `i64` nor divides by zero (a rewrite may
//! make an expression that divides by zero defined, e.g. `(s * t) / t -> s`, never the reverse).
//! Polynomial arithmetic is checked: a sum or product whose coefficients would overflow (or whose
//! expansion would exceed [`MAX_TERMS`] terms) is kept as an opaque atom instead, so nothing here
//! relies on wrapping arithmetic.
//!
//! Rules for the non-polynomial nodes, with their preconditions (`/` and `%` truncate, as in C):
//!
//! | rule | precondition |
//! |---|---|
//! | constant folding | divisor non-zero, no overflow |
//! | `0 / b -> 0`, `0 % b -> 0`, `a / a -> 1`, `a % a -> 0` | none (where defined) |
//! | `a / -b -> -(a / b)`, `a % -b -> a % b` (divisor's leading coefficient made positive) | none |
//! | `-a / b -> -(a / b)`, `-a % b -> -(a % b)` (dividend's leading coefficient made positive) | none |
//! | `(g a) / (g b) -> a / b`, `(g a) % (g b) -> g (a % b)` for the gcd `g` of all coefficients | none |
//! | `(b q) / b -> q`, `(b q) % b -> 0` for a single-term `b = k m` dividing every term | none |
//! | `(q b) / b -> q`, `(q b) % b -> 0` for a constant `q` | none |
//! | `(b q + r) / b -> q + r / b`, `(b q + r) % b -> r % b` for a single-term `b` | `b >= 0`, `r >= 0`, `b q + r >= 0` provably |
//! | `(x / c1) / c2 -> x / (c1 c2)` | constants `c1, c2 > 0` |
//! | `(x % c1) / c2 -> 0` | constants `0 < c1 <= c2` |
//! | `(x % c1) % c2 -> x % c2` | constants `c1, c2 > 0`, `c2` divides `c1` |
//! | `(x % c1) % c2 -> x % c1` | constants `0 < c1 <= c2` |
//! | `c (x / c) + x % c -> x` (inside any sum, times any monomial) | none (where defined) |
//! | `min`/`max` flattened, deduplicated, sorted; constants folded | none |
//! | `min(a, b) -> b`, `max(a, b) -> a` | `a - b >= 0` provably |
//!
//! "Provably `>= 0`" is [`Poly::nonneg`]: every coefficient is non-negative and every atom raised
//! to an odd power is non-negative by [`expr_nonneg`] (symbols, variables, and `/`, `%`, `min`,
//! `max` of non-negative operands).

use super::{Expr, Op2};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Products with more terms than this are not expanded (they become opaque atoms).
const MAX_TERMS: usize = 256;

/// A product of atoms with positive powers, sorted by atom.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Mono(Vec<(Expr, u32)>);

impl Mono {
    fn one() -> Mono {
        Mono(Vec::new())
    }

    fn is_one(&self) -> bool {
        self.0.is_empty()
    }

    fn degree(&self) -> u64 {
        self.0.iter().map(|(_, p)| u64::from(*p)).sum()
    }

    fn mul(&self, o: &Mono) -> Option<Mono> {
        let mut out: Vec<(Expr, u32)> = Vec::with_capacity(self.0.len() + o.0.len());
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() || j < o.0.len() {
            let ord = match (self.0.get(i), o.0.get(j)) {
                (Some(a), Some(b)) => a.0.cmp(&b.0),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match ord {
                Ordering::Less => {
                    out.push(self.0[i].clone());
                    i += 1;
                }
                Ordering::Greater => {
                    out.push(o.0[j].clone());
                    j += 1;
                }
                Ordering::Equal => {
                    out.push((self.0[i].0.clone(), self.0[i].1.checked_add(o.0[j].1)?));
                    i += 1;
                    j += 1;
                }
            }
        }
        Some(Mono(out))
    }

    /// `self / o` if `o` divides `self`.
    fn div(&self, o: &Mono) -> Option<Mono> {
        let mut out = self.0.clone();
        for (atom, p) in &o.0 {
            let i = out.binary_search_by(|(a, _)| a.cmp(atom)).ok()?;
            match out[i].1.cmp(p) {
                Ordering::Less => return None,
                Ordering::Equal => {
                    out.remove(i);
                }
                Ordering::Greater => out[i].1 -= p,
            }
        }
        Some(Mono(out))
    }

    /// Provably non-negative: every atom with an odd power is.
    fn nonneg(&self) -> bool {
        self.0.iter().all(|(a, p)| p % 2 == 0 || expr_nonneg(a))
    }

    fn to_expr(&self) -> Expr {
        let mut factors = self
            .0
            .iter()
            .flat_map(|(a, p)| std::iter::repeat_n(a, *p as usize));
        let first = factors.next().cloned().unwrap_or(Expr::Const(1));
        factors.fold(first, |acc, a| {
            Expr::Mul(Box::new(acc), Box::new(a.clone()))
        })
    }
}

/// Higher degree first, then by atoms: a total order, consistent with `Eq`.
impl Ord for Mono {
    fn cmp(&self, o: &Mono) -> Ordering {
        o.degree()
            .cmp(&self.degree())
            .then_with(|| self.0.cmp(&o.0))
    }
}
impl PartialOrd for Mono {
    fn partial_cmp(&self, o: &Mono) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// A polynomial: monomial -> non-zero coefficient.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub(super) struct Poly(BTreeMap<Mono, i64>);

impl Poly {
    fn constant(c: i64) -> Poly {
        Poly::term(Mono::one(), c)
    }

    fn term(m: Mono, k: i64) -> Poly {
        let mut p = BTreeMap::new();
        if k != 0 {
            p.insert(m, k);
        }
        Poly(p)
    }

    fn atom(e: Expr) -> Poly {
        Poly::term(Mono(vec![(e, 1)]), 1)
    }

    pub(super) fn is_zero(&self) -> bool {
        self.0.is_empty()
    }

    fn as_const(&self) -> Option<i64> {
        match self.0.len() {
            0 => Some(0),
            1 => self.0.get(&Mono::one()).copied(),
            _ => None,
        }
    }

    /// The only term, if there is exactly one.
    fn single_term(&self) -> Option<(&Mono, i64)> {
        match self.0.len() {
            1 => self.0.iter().next().map(|(m, k)| (m, *k)),
            _ => None,
        }
    }

    /// The atom, if this is exactly `1 * atom`.
    fn single_atom(&self) -> Option<&Expr> {
        match self.single_term()? {
            (Mono(m), 1) if m.len() == 1 && m[0].1 == 1 => Some(&m[0].0),
            _ => None,
        }
    }

    /// Coefficient of the first (highest) monomial; 0 for the zero polynomial.
    fn leading(&self) -> i64 {
        self.0.values().next().copied().unwrap_or(0)
    }

    /// gcd of the coefficients' magnitudes (0 for the zero polynomial).
    fn content(&self) -> u64 {
        self.0.values().fold(0, |g, k| gcd(g, k.unsigned_abs()))
    }

    fn add(&self, o: &Poly) -> Option<Poly> {
        let mut out = self.0.clone();
        for (m, k) in &o.0 {
            let e = out.entry(m.clone()).or_insert(0);
            *e = e.checked_add(*k)?;
            if *e == 0 {
                out.remove(m);
            }
        }
        Some(Poly(out))
    }

    fn neg(&self) -> Option<Poly> {
        self.scale(-1)
    }

    pub(super) fn sub(&self, o: &Poly) -> Option<Poly> {
        self.add(&o.neg()?)
    }

    fn scale(&self, c: i64) -> Option<Poly> {
        if c == 0 {
            return Some(Poly::default());
        }
        let mut out = BTreeMap::new();
        for (m, k) in &self.0 {
            out.insert(m.clone(), k.checked_mul(c)?);
        }
        Some(Poly(out))
    }

    fn mul(&self, o: &Poly) -> Option<Poly> {
        if self.0.len().saturating_mul(o.0.len()) > MAX_TERMS * 16 {
            return None;
        }
        let mut out = Poly::default();
        for (ma, ka) in &self.0 {
            for (mb, kb) in &o.0 {
                out = out.add(&Poly::term(ma.mul(mb)?, ka.checked_mul(*kb)?))?;
            }
        }
        (out.0.len() <= MAX_TERMS).then_some(out)
    }

    /// Every coefficient divided by `g`, which must divide them all.
    fn div_exact(&self, g: u64) -> Option<Poly> {
        let g = i64::try_from(g).ok()?;
        let mut out = BTreeMap::new();
        for (m, k) in &self.0 {
            out.insert(m.clone(), k.checked_div(g)?);
        }
        Some(Poly(out))
    }

    /// Splits `self = (k m) q + r`: each term divisible by `m` gives `floor(coef / k)` to `q` and
    /// the rest (in `0..k`) to `r`; other terms go to `r`. Needs `k > 0`.
    fn split_by(&self, m: &Mono, k: i64) -> Option<(Poly, Poly)> {
        let (mut q, mut r) = (Poly::default(), Poly::default());
        for (tm, tk) in &self.0 {
            match tm.div(m) {
                Some(qm) => {
                    let (qk, rk) = (tk.div_euclid(k), tk.rem_euclid(k));
                    q = q.add(&Poly::term(qm, qk))?;
                    r = r.add(&Poly::term(tm.clone(), rk))?;
                }
                None => r = r.add(&Poly::term(tm.clone(), *tk))?,
            }
        }
        Some((q, r))
    }

    /// `Some(q)` if `self == q * o` for an integer constant `q` (`o` non-zero).
    fn const_multiple_of(&self, o: &Poly) -> Option<i64> {
        let (m, ko) = o.0.iter().next()?;
        let ks = self.0.get(m)?;
        if ks % ko != 0 {
            return None;
        }
        let q = ks / ko;
        (o.scale(q)? == *self).then_some(q)
    }

    /// Provably non-negative for every binding of the domain (see the module docs).
    pub(super) fn nonneg(&self) -> bool {
        self.0.iter().all(|(m, k)| *k >= 0 && m.nonneg())
    }

    /// The canonical `Expr`: positive terms, then negative ones, then the constant, e.g.
    /// `((s * 32) - p) + 3`. Coefficients are written on the right (`s * 32`), as the builder does.
    pub(super) fn to_expr(&self) -> Expr {
        let term = |m: &Mono, k: i64| {
            if m.is_one() {
                Expr::Const(k)
            } else if k == 1 {
                m.to_expr()
            } else {
                Expr::Mul(Box::new(m.to_expr()), Box::new(Expr::Const(k)))
            }
        };
        let bin =
            |f: fn(Box<Expr>, Box<Expr>) -> Expr, a: Expr, b: Expr| f(Box::new(a), Box::new(b));
        let constant = self.0.get(&Mono::one()).copied().unwrap_or(0);
        let vars = self.0.iter().filter(|(m, _)| !m.is_one());
        let (pos, neg): (Vec<_>, Vec<_>) = vars.partition(|(_, k)| **k > 0);
        let mut acc: Option<Expr> = None;
        for (m, k) in pos {
            let t = term(m, *k);
            acc = Some(match acc {
                None => t,
                Some(a) => bin(Expr::Add, a, t),
            });
        }
        let mut constant_done = false;
        if acc.is_none() && constant > 0 && !neg.is_empty() {
            // `1 - s` rather than `(s * -1) + 1`.
            acc = Some(Expr::Const(constant));
            constant_done = true;
        }
        for (m, k) in neg {
            acc = Some(match (acc, k.checked_neg()) {
                (None, _) => term(m, *k),
                (Some(a), Some(nk)) => bin(Expr::Sub, a, term(m, nk)),
                (Some(a), None) => bin(Expr::Add, a, term(m, *k)),
            });
        }
        match acc {
            None => Expr::Const(constant),
            Some(a) if constant_done || constant == 0 => a,
            Some(a) => match constant.checked_neg() {
                Some(nc) if constant < 0 => bin(Expr::Sub, a, Expr::Const(nc)),
                _ => bin(Expr::Add, a, Expr::Const(constant)),
            },
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A conservative, structural check that `e` is non-negative for every binding of the domain
/// (symbols and variables are; sums, products, quotients, remainders, minima and maxima of
/// non-negative operands are; a square is). `false` means "not proven", not "negative".
pub(super) fn expr_nonneg(e: &Expr) -> bool {
    match e {
        Expr::Const(c) => *c >= 0,
        Expr::Sym(_) | Expr::Var(_) => true,
        Expr::Add(a, b) | Expr::Div(a, b) | Expr::Min(a, b) => expr_nonneg(a) && expr_nonneg(b),
        Expr::Mul(a, b) => a == b || (expr_nonneg(a) && expr_nonneg(b)),
        Expr::Mod(a, _) => expr_nonneg(a),
        Expr::Max(a, b) => expr_nonneg(a) || expr_nonneg(b),
        Expr::Sub(..) => false,
    }
}

/// The normal form of `e` as a polynomial.
pub(super) fn poly(e: &Expr) -> Poly {
    match e {
        Expr::Const(c) => Poly::constant(*c),
        Expr::Sym(_) | Expr::Var(_) => Poly::atom(e.clone()),
        Expr::Add(a, b) | Expr::Sub(a, b) | Expr::Mul(a, b) => {
            let (pa, pb) = (poly(a), poly(b));
            let r = match e {
                Expr::Add(..) => pa.add(&pb),
                Expr::Sub(..) => pa.sub(&pb),
                _ => pa.mul(&pb),
            };
            match r {
                Some(p) => recombine(p),
                // Overflow or an oversized expansion: keep the node, with normalised operands.
                None => Poly::atom(node(e.op2(), &pa, &pb)),
            }
        }
        Expr::Div(a, b) => div(poly(a), poly(b)),
        Expr::Mod(a, b) => rem(poly(a), poly(b)),
        Expr::Min(a, b) | Expr::Max(a, b) => min_max(matches!(e, Expr::Min(..)), poly(a), poly(b)),
    }
}

/// The node `a op b` (operands normalised).
fn node(op: Op2, a: &Poly, b: &Poly) -> Expr {
    op.node(a.to_expr(), b.to_expr())
}

/// Normal form of `a / b` (truncating).
fn div(a: Poly, b: Poly) -> Poly {
    try_div(&a, &b).unwrap_or_else(|| Poly::atom(node(Op2::Div, &a, &b)))
}

/// Normal form of `a % b` (C remainder: the sign of the dividend).
fn rem(a: Poly, b: Poly) -> Poly {
    try_rem(&a, &b).unwrap_or_else(|| Poly::atom(node(Op2::Mod, &a, &b)))
}

/// A positive constant, if `p` is one.
fn pos_const(p: &Poly) -> Option<i64> {
    p.as_const().filter(|c| *c > 0)
}

/// `(x, c)` if `p` is exactly the atom `x op c` (`op` is `/` or `%`) for a constant `c > 0`.
fn atom_by_const(p: &Poly, op: Op2) -> Option<(Expr, i64)> {
    let (x, c) = match (p.single_atom()?, op) {
        (Expr::Div(x, c), Op2::Div) | (Expr::Mod(x, c), Op2::Mod) => (x, c),
        _ => return None,
    };
    Some(((**x).clone(), c.as_const().filter(|c| *c > 0)?))
}

/// The rules for `a / b`; `None` keeps `a / b` as an atom. See the table in the module docs.
fn try_div(a: &Poly, b: &Poly) -> Option<Poly> {
    if b.is_zero() {
        return None; // undefined: leave it for evaluation to report
    }
    if let (Some(x), Some(y)) = (a.as_const(), b.as_const()) {
        return x.checked_div(y).map(Poly::constant);
    }
    if a.is_zero() {
        return Some(Poly::default());
    }
    if a == b {
        return Some(Poly::constant(1));
    }
    // Truncation is odd in both operands: a / -b = -a / b = -(a / b).
    if b.leading() < 0 {
        return div(a.clone(), b.neg()?).neg();
    }
    if a.leading() < 0 {
        return div(a.neg()?, b.clone()).neg();
    }
    // The quotient depends only on the rational a / b.
    let g = gcd(a.content(), b.content());
    if g > 1 {
        return Some(div(a.div_exact(g)?, b.div_exact(g)?));
    }
    let Some((m, k)) = b.single_term() else {
        return a.const_multiple_of(b).map(Poly::constant);
    };
    let (q, r) = a.split_by(m, k)?;
    if r.is_zero() {
        return Some(q); // exact: a = b q
    }
    // For b > 0, r >= 0 and a >= 0 truncation is floor, and floor((b q + r) / b) = q + floor(r / b).
    if !q.is_zero() && r.nonneg() && a.nonneg() && b.nonneg() {
        return q.add(&div(r, b.clone()));
    }
    let c2 = pos_const(b)?;
    // (x / c1) / c2 = x / (c1 c2) for positive constants (truncation nests).
    if let Some((x, c1)) = atom_by_const(a, Op2::Div) {
        return Some(div(poly(&x), Poly::constant(c1.checked_mul(c2)?)));
    }
    // |x % c1| < c1 <= c2, so the quotient is 0.
    if let Some((_, c1)) = atom_by_const(a, Op2::Mod) {
        if c1 <= c2 {
            return Some(Poly::default());
        }
    }
    None
}

/// The rules for `a % b`; `None` keeps `a % b` as an atom. See the table in the module docs.
fn try_rem(a: &Poly, b: &Poly) -> Option<Poly> {
    if b.is_zero() {
        return None;
    }
    if let (Some(x), Some(y)) = (a.as_const(), b.as_const()) {
        return x.checked_rem(y).map(Poly::constant);
    }
    if a.is_zero() || a == b {
        return Some(Poly::default());
    }
    // The remainder takes the dividend's sign and ignores the divisor's.
    if b.leading() < 0 {
        return Some(rem(a.clone(), b.neg()?));
    }
    if a.leading() < 0 {
        return rem(a.neg()?, b.clone()).neg();
    }
    // a % b = a - b trunc(a / b), and trunc(a / b) depends only on the rational a / b.
    let g = gcd(a.content(), b.content());
    if g > 1 {
        return rem(a.div_exact(g)?, b.div_exact(g)?).scale(i64::try_from(g).ok()?);
    }
    let Some((m, k)) = b.single_term() else {
        return a.const_multiple_of(b).map(|_| Poly::default());
    };
    let (q, r) = a.split_by(m, k)?;
    if r.is_zero() {
        return Some(Poly::default());
    }
    // As for division: for b > 0, r >= 0, a >= 0, (b q + r) % b = r % b.
    if !q.is_zero() && r.nonneg() && a.nonneg() && b.nonneg() {
        return Some(rem(r, b.clone()));
    }
    let c2 = pos_const(b)?;
    if let Some((x, c1)) = atom_by_const(a, Op2::Mod) {
        if c1 % c2 == 0 {
            return Some(rem(poly(&x), b.clone())); // (x % c1) % c2 = x % c2 when c2 | c1
        }
        if c1 <= c2 {
            return Some(a.clone()); // |x % c1| < c1 <= c2
        }
    }
    None
}

/// Normal form of `min(a, b)` or `max(a, b)`: nested ones of the same kind are flattened,
/// constants folded, duplicates and provably dominated operands dropped, and the rest sorted and
/// chained left to right.
fn min_max(is_min: bool, a: Poly, b: Poly) -> Poly {
    let mut ops = Vec::new();
    flatten(is_min, a, &mut ops);
    flatten(is_min, b, &mut ops);
    // Constants fold into one.
    let (consts, mut ops): (Vec<_>, Vec<_>) = ops.into_iter().partition(|p| p.as_const().is_some());
    let folded = consts.iter().filter_map(Poly::as_const);
    let folded = if is_min { folded.min() } else { folded.max() };
    ops.extend(folded.map(Poly::constant));
    // Drop an operand when another one is provably no greater (min) / no less (max) than it.
    let dominated = |x: &Poly, y: &Poly| {
        let d = if is_min { x.sub(y) } else { y.sub(x) };
        d.is_some_and(|d| d.nonneg())
    };
    let mut kept: Vec<(Expr, Poly)> = Vec::new();
    for (i, x) in ops.iter().enumerate() {
        let beaten = ops
            .iter()
            .enumerate()
            .any(|(j, y)| j != i && x != y && dominated(x, y));
        // Of equal operands keep the first.
        let dup = ops[..i].contains(x);
        if !beaten && !dup {
            kept.push((x.to_expr(), x.clone()));
        }
    }
    if kept.is_empty() {
        // Cannot happen (provable dominance has no cycles among distinct polynomials), but
        // keeping an operand is always sound.
        kept.push((ops[0].to_expr(), ops[0].clone()));
    }
    kept.sort_by(|x, y| x.0.cmp(&y.0));
    if kept.len() == 1 {
        return kept.pop().expect("one operand").1;
    }
    let mut it = kept.into_iter().map(|(e, _)| e);
    let first = it.next().expect("operands");
    Poly::atom(it.fold(first, |acc, e| {
        if is_min {
            Expr::Min(Box::new(acc), Box::new(e))
        } else {
            Expr::Max(Box::new(acc), Box::new(e))
        }
    }))
}

/// Operands of `p`, looking through nested `min`s (`is_min`) or `max`es.
fn flatten(is_min: bool, p: Poly, out: &mut Vec<Poly>) {
    match p.single_atom() {
        Some(Expr::Min(x, y)) if is_min => {
            let (x, y) = (poly(x), poly(y));
            flatten(is_min, x, out);
            flatten(is_min, y, out);
        }
        Some(Expr::Max(x, y)) if !is_min => {
            let (x, y) = (poly(x), poly(y));
            flatten(is_min, x, out);
            flatten(is_min, y, out);
        }
        _ => out.push(p),
    }
}

/// Applies `c (x / c) + x % c -> x` (times any monomial, inside a sum) while it shrinks `p`.
/// Holds wherever `c != 0`, for any integer `x`.
fn recombine(mut p: Poly) -> Poly {
    let has = |p: &Poly, f: fn(&Expr) -> bool| p.0.keys().any(|m| m.0.iter().any(|(a, _)| f(a)));
    if !has(&p, |a| matches!(a, Expr::Mod(..))) || !has(&p, |a| matches!(a, Expr::Div(..))) {
        return p;
    }
    'again: loop {
        for (m, k) in &p.0 {
            for (atom, pow) in &m.0 {
                let Expr::Mod(x, c) = atom else { continue };
                if *pow != 1 {
                    continue;
                }
                let Some(rest) = m.div(&Mono(vec![(atom.clone(), 1)])) else {
                    continue;
                };
                let (xp, cp) = (poly(x), poly(c));
                if cp.is_zero() {
                    // `x % 0` is undefined: it stays for evaluation to report, as `rem` keeps it
                    // (the identity below would silently drop it).
                    continue;
                }
                let coef = Poly::term(rest, *k);
                // coef * (x % c) + coef * c * (x / c) -> coef * x
                let new = (|| {
                    let quotient = coef.mul(&div(xp.clone(), cp.clone()))?.mul(&cp)?;
                    p.sub(&coef.mul(&Poly::atom(atom.clone()))?)?
                        .sub(&quotient)?
                        .add(&coef.mul(&xp)?)
                })();
                if let Some(new) = new.filter(|n| n.0.len() < p.0.len()) {
                    p = new;
                    continue 'again;
                }
            }
        }
        return p;
    }
}

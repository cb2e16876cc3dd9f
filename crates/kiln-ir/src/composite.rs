//! Composite ops built only from primitives. Backends never see these: they see the primitives,
//! and the compiler fuses them back into a few kernels.

use crate::{DType, Expr, Graph, NodeId, Result};
use std::f64::consts::{FRAC_PI_2, LOG2_E};

impl Graph {
    /// e^x = 2^(x * log2 e)
    pub fn exp(&mut self, x: NodeId) -> Result<NodeId> {
        let c = self.scalar(LOG2_E, self.dtype(x));
        let y = self.mul(x, c)?;
        self.exp2(y)
    }

    /// cos x = sin(x + pi/2)
    pub fn cos(&mut self, x: NodeId) -> Result<NodeId> {
        let c = self.scalar(FRAC_PI_2, self.dtype(x));
        let y = self.add(x, c)?;
        self.sin(y)
    }

    pub fn mul_scalar(&mut self, x: NodeId, v: f64) -> Result<NodeId> {
        let c = self.scalar(v, self.dtype(x));
        self.mul(x, c)
    }

    pub fn add_scalar(&mut self, x: NodeId, v: f64) -> Result<NodeId> {
        let c = self.scalar(v, self.dtype(x));
        self.add(x, c)
    }

    /// Mean over `axis` (kept as size 1). The axis length may be symbolic.
    pub fn mean(&mut self, x: NodeId, axis: usize) -> Result<NodeId> {
        let n = self.shape(x)[axis].clone();
        let s = self.sum(x, axis)?;
        match n.as_const() {
            Some(n) => self.mul_scalar(s, 1.0 / n as f64),
            None => {
                let one = self.scalar(1.0, self.dtype(x));
                let ones = self.broadcast_to(one, &[n])?;
                let count = self.sum(ones, 0)?;
                self.div(s, count)
            }
        }
    }

    /// Numerically stable softmax over `axis`.
    pub fn softmax(&mut self, x: NodeId, axis: usize) -> Result<NodeId> {
        let m = self.max(x, axis)?;
        let shifted = self.sub(x, m)?;
        let e = self.exp(shifted)?;
        let s = self.sum(e, axis)?;
        self.div(e, s)
    }

    /// x * sigmoid(x) = x / (1 + e^-x)
    pub fn silu(&mut self, x: NodeId) -> Result<NodeId> {
        let nx = self.neg(x)?;
        let e = self.exp(nx)?;
        let d = self.add_scalar(e, 1.0)?;
        self.div(x, d)
    }

    /// RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight.
    pub fn rms_norm(&mut self, x: NodeId, weight: NodeId, eps: f64) -> Result<NodeId> {
        let last = self.shape(x).len() - 1;
        let sq = self.mul(x, x)?;
        let ms = self.mean(sq, last)?;
        let ms = self.add_scalar(ms, eps)?;
        let r = self.sqrt(ms)?;
        let r = self.recip(r)?;
        let y = self.mul(x, r)?;
        self.mul(y, weight)
    }

    /// Rotary position embedding, "rotate half" form (dim i pairs with i + d/2), on the last axis
    /// of `x` ([.., seq, d]); `cos`/`sin` are [seq, d] and broadcast.
    pub fn rope(&mut self, x: NodeId, cos: NodeId, sin: NodeId) -> Result<NodeId> {
        let shape = self.shape(x).to_vec();
        let last = shape.len() - 1;
        let d = shape[last].clone();
        let half = d.clone().div(2);
        let x1 = self.slice(x, last, 0, half.clone())?;
        let x2 = self.slice(x, last, half, d)?;
        let nx2 = self.neg(x2)?;
        let rotated = self.concat(&[nx2, x1], last)?;
        let a = self.mul(x, cos)?;
        let b = self.mul(rotated, sin)?;
        self.add(a, b)
    }

    /// cos and sin tables [seq, head_dim] for positions `start + 0..seq`, with
    /// inv_freq_i = theta^(-2i/head_dim), duplicated over both halves.
    pub fn rope_tables(
        &mut self,
        start: Expr,
        seq: Expr,
        head_dim: usize,
        theta: f64,
    ) -> Result<(NodeId, NodeId)> {
        let half = head_dim / 2;
        let pos = self.iota(DType::I32, &[seq.clone(), Expr::Const(1)], 0)?;
        let start = self.iota_offset(start)?;
        let pos = self.add(pos, start)?;
        let pos = self.cast(pos, DType::F32);
        // inv_freq = 2^(-(2i/d) * log2(theta))
        let i = self.iota(DType::I32, &[Expr::Const(1), Expr::Const(half as i64)], 1)?;
        let i = self.cast(i, DType::F32);
        let e = self.mul_scalar(i, -2.0 / head_dim as f64 * theta.log2())?;
        let inv_freq = self.exp2(e)?;
        let freqs = self.mul(pos, inv_freq)?; // [seq, half]
        let freqs = self.concat(&[freqs, freqs], 1)?; // [seq, d]
        Ok((self.cos(freqs)?, self.sin(freqs)?))
    }

    /// A scalar i32 node whose value is the expression `e` (e.g. the cache position `p`).
    fn iota_offset(&mut self, e: Expr) -> Result<NodeId> {
        // iota over an axis of length e+1 sliced to its last element gives the value e.
        let len = e.clone().add(1);
        let it = self.iota(DType::I32, &[len], 0)?;
        let last = self.slice(it, 0, e.clone(), e.add(1))?;
        self.reshape(last, &[Expr::Const(1), Expr::Const(1)])
    }

    /// Additive causal mask [q, k] for `q` new queries after `past` cached keys:
    /// 0 where key j <= past + i, -inf elsewhere.
    pub fn causal_mask(&mut self, past: Expr, q: Expr) -> Result<NodeId> {
        let k = past.clone().add(q.clone());
        let qi = self.iota(DType::I32, &[q.clone(), Expr::Const(1)], 0)?;
        let off = self.iota_offset(past)?;
        let qi = self.add(qi, off)?;
        let kj = self.iota(DType::I32, &[Expr::Const(1), k], 1)?;
        let future = self.lt(qi, kj)?; // past + i < j
        let ninf = self.scalar(f64::NEG_INFINITY, DType::F32);
        let zero = self.scalar(0.0, DType::F32);
        self.where_(future, ninf, zero)
    }
}

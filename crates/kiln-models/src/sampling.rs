//! Choosing the next token: greedy, or temperature with top-k and top-p, from a seeded RNG.

#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = no limit.
    pub top_k: usize,
    /// 1.0 = no limit.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Lanes of the scans over logits: one AVX-512 vector of f32 (two AVX2 ones). A decode step
/// scans a whole vocabulary (151,936 logits for Qwen) on the host between two steps; a scan
/// that carries one value from element to element runs at a cycle or more per element.
const LANES: usize = 16;

/// The index of the largest logit: the first one on ties, and as a scan keeping the first
/// strictly larger value would pick it when some are NaN (index 0 if the first is NaN, else
/// never a NaN). The largest value is found in [`LANES`] independent lanes, then the first
/// block of lanes holding it, then its place there.
pub fn argmax(logits: &[f32]) -> u32 {
    match logits.first() {
        None => return 0,
        Some(x) if x.is_nan() => return 0,
        Some(_) => {}
    }
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let blocks = logits.chunks_exact(LANES);
    let mut max = f32::NEG_INFINITY;
    for &v in blocks.remainder() {
        if v > max {
            max = v;
        }
    }
    for block in blocks {
        for (m, &v) in lanes.iter_mut().zip(block) {
            if v > *m {
                *m = v;
            }
        }
    }
    for m in lanes {
        if m > max {
            max = m;
        }
    }
    let block = logits
        .chunks(LANES)
        .position(|b| b.iter().fold(false, |hit, &v| hit | (v == max)))
        .unwrap_or(0);
    let within = logits[block * LANES..]
        .iter()
        .position(|&v| v == max)
        .unwrap_or(0);
    (block * LANES + within) as u32
}

/// Whether every value is finite (neither NaN nor infinite): an exponent of all ones, tested in
/// [`LANES`] lanes without an early exit, so that it is vectorised.
pub fn all_finite(values: &[f32]) -> bool {
    const EXPONENT: u32 = 0x7f80_0000;
    let mut bad = [false; LANES];
    let blocks = values.chunks_exact(LANES);
    let tail = blocks.remainder().iter().any(|v| !v.is_finite());
    for block in blocks {
        for (b, v) in bad.iter_mut().zip(block) {
            *b |= v.to_bits() & EXPONENT == EXPONENT;
        }
    }
    !tail && !bad.contains(&true)
}

pub struct Sampler {
    cfg: Sampling,
    state: u64,
}

impl Sampler {
    pub fn new(cfg: Sampling) -> Sampler {
        let state = cfg.seed ^ 0x853C_49E6_748F_EA9B;
        Sampler { cfg, state }
    }

    fn uniform(&mut self) -> f64 {
        // PCG-style LCG step, then the top 53 bits.
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let x = self.state ^ (self.state >> 29);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature <= 0.0 {
            return argmax(logits);
        }
        let t = self.cfg.temperature as f64;
        let mut cand: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32, v as f64 / t))
            .collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.cfg.top_k > 0 {
            cand.truncate(self.cfg.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs.iter().position(|p| {
                acc += p;
                acc >= self.cfg.top_p as f64
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let mut r = self.uniform();
        for (i, p) in probs.iter().enumerate() {
            if r < *p {
                return cand[i].0;
            }
            r -= p;
        }
        cand[probs.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan every greedy step used before the lanes: the first strictly larger value.
    fn argmax_by_scan(logits: &[f32]) -> u32 {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        best as u32
    }

    /// The lanes pick what the scan picks: ties (the first), the maximum in the tail or in
    /// the first or last lane, signed zeros, NaN and infinities, lengths around the lanes.
    #[test]
    fn argmax_in_lanes_is_the_scan() {
        let mut cases: Vec<Vec<f32>> = vec![vec![], vec![1.0], vec![f32::NAN, 5.0]];
        for n in [1, 15, 16, 17, 31, 32, 33, 100, 151_936] {
            let base: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1013) as f32 / 97.0).collect();
            cases.push(base.clone());
            for at in [0, n / 2, n - 1] {
                let mut tie = base.clone();
                tie[at] = 11.0;
                tie[n - 1 - at / 2] = 11.0;
                cases.push(tie.clone());
                tie[at] = f32::NAN;
                cases.push(tie.clone());
                tie[at] = f32::INFINITY;
                cases.push(tie);
            }
            cases.push(vec![f32::NEG_INFINITY; n]);
            let mut zeros = vec![-1.0; n];
            zeros[n / 3] = -0.0;
            zeros[n - 1] = 0.0;
            cases.push(zeros);
        }
        for c in &cases {
            assert_eq!(argmax(c), argmax_by_scan(c), "{:?}", &c[..c.len().min(40)]);
            assert_eq!(all_finite(c), c.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn greedy_and_seeded_sampling() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        assert_eq!(argmax(&logits), 1);
        let cfg = Sampling {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 7,
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg.clone());
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(cfg);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b, "same seed, same tokens");
        assert!(
            a.iter().all(|&t| t == 1 || t == 2),
            "top-k 2 keeps the two best"
        );
        assert!(a.contains(&1) && a.contains(&2));
        let mut s = Sampler::new(Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.01,
            seed: 1,
        });
        assert!(
            (0..20).all(|_| s.sample(&logits) == 1),
            "tiny top-p keeps only the best"
        );
    }
}

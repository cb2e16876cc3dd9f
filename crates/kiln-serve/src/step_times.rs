//! How long a step takes as a function of the rows it runs (decodes plus prompt tokens),
//! learned from the engine's own recent steps. The scheduler asks it how many prompt tokens
//! fit beside the decodes of a step without stretching that step past its target
//! ([`crate::scheduler`], step 4).
//!
//! The curve is piecewise linear through one point per power-of-two range of rows (1, 2–3,
//! 4–7, .., 1024–2047, ..): each point is a moving average of the steps observed in its range
//! (their rows and their seconds), so it follows the machine's load and forgets old steps.
//! Piecewise rather than one straight line because a step's cost is not linear in its rows:
//! on a CPU a few decode rows share each weight read (the GEMV passes) while a larger batch of
//! rows is a GEMM bound by its multiply-adds; on a GPU rows are nearly free up to hundreds.
//!
//! The estimate is deliberately cautious where nothing was observed: below the smallest
//! observed rows it is that point's time; beyond the largest it grows in proportion to the
//! rows (as if the fixed cost of a step grew with them too). With fewer than two points
//! there is no estimate.
//!
//! Pure and deterministic: the driver times the steps, tests feed chosen times.

/// Weight of a new step in its range's moving average: a point follows a change in the
/// machine's speed within a few steps of that size, and one outlier moves it a quarter.
const NEW_STEP_WEIGHT: f64 = 0.25;
/// Power-of-two ranges of rows; the last takes every larger step.
const RANGES: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Point {
    rows: f64,
    secs: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepTimes {
    points: [Option<Point>; RANGES],
}

fn range_of(rows: usize) -> usize {
    (rows.max(1).ilog2() as usize).min(RANGES - 1)
}

impl StepTimes {
    pub fn new() -> StepTimes {
        StepTimes::default()
    }

    /// A step of `rows` rows took `secs` seconds. Steps without rows, and times that are not
    /// a finite number of seconds, are ignored.
    pub fn observe(&mut self, rows: usize, secs: f64) {
        if rows == 0 || !secs.is_finite() || secs < 0.0 {
            return;
        }
        let new = Point {
            rows: rows as f64,
            secs,
        };
        let p = &mut self.points[range_of(rows)];
        *p = Some(match *p {
            None => new,
            Some(old) => Point {
                rows: old.rows + NEW_STEP_WEIGHT * (new.rows - old.rows),
                secs: old.secs + NEW_STEP_WEIGHT * (new.secs - old.secs),
            },
        });
    }

    /// The seconds a step of `rows` rows is expected to take (None: fewer than two ranges
    /// of rows observed yet). Never decreases as `rows` grows.
    pub fn estimate(&self, rows: usize) -> Option<f64> {
        // The points in order of rows (the ranges are disjoint and in order), their times
        // made non-decreasing: noise never makes more rows look cheaper.
        let mut curve: Vec<Point> = Vec::with_capacity(RANGES);
        for p in self.points.iter().flatten() {
            let secs = curve.last().map_or(p.secs, |q| q.secs.max(p.secs));
            curve.push(Point { rows: p.rows, secs });
        }
        if curve.len() < 2 {
            return None;
        }
        let x = rows as f64;
        let (first, last) = (curve[0], curve[curve.len() - 1]);
        if x <= first.rows {
            return Some(first.secs);
        }
        if x >= last.rows {
            return Some(last.secs * x / last.rows);
        }
        let i = curve
            .iter()
            .position(|p| p.rows >= x)
            .expect("x < last.rows");
        let (a, b) = (curve[i - 1], curve[i]);
        Some(a.secs + (b.secs - a.secs) * (x - a.rows) / (b.rows - a.rows))
    }

    /// The most rows, at least `base` and at most `base + room`, a step may run while its
    /// expected time stays within `limit` seconds (binary search: the estimate never
    /// decreases). None without an estimate.
    pub fn rows_within(&self, base: usize, room: usize, limit: f64) -> Option<usize> {
        self.estimate(base)?;
        let fits = |rows: usize| self.estimate(rows).is_some_and(|t| t <= limit);
        let (mut lo, mut hi) = (base, base + room);
        if fits(hi) {
            return Some(hi);
        }
        // fits(lo) may be false (the limit is below the base's own time): then `base`.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine whose step costs 30 ms plus 5 ms a row.
    fn linear() -> StepTimes {
        let mut t = StepTimes::new();
        for rows in [1, 8, 128] {
            t.observe(rows, 0.030 + 0.005 * rows as f64);
        }
        t
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn no_estimate_before_two_sizes_of_step() {
        let mut t = StepTimes::new();
        assert_eq!(t.estimate(4), None);
        t.observe(8, 0.1);
        t.observe(9, 0.1); // the same range as 8
        assert_eq!(t.estimate(8), None);
        assert_eq!(t.rows_within(8, 100, 1.0), None);
        t.observe(64, 0.5);
        assert!(t.estimate(8).is_some());
        t.observe(0, 9.0); // ignored
        t.observe(3, f64::NAN); // ignored
        assert!(close(t.estimate(2), t.estimate(1).unwrap()));
    }

    #[test]
    fn between_points_the_estimate_is_linear() {
        let t = linear();
        for rows in [1, 4, 8, 50, 128] {
            assert!(
                close(t.estimate(rows), 0.030 + 0.005 * rows as f64),
                "{rows}"
            );
        }
    }

    #[test]
    fn outside_the_points_the_estimate_is_cautious() {
        let t = linear();
        // Beyond the largest step seen: in proportion to the rows (above the true 30 + 5 x).
        assert!(close(t.estimate(256), 0.670 * 2.0));
        // Below the smallest: that step's time.
        let mut u = StepTimes::new();
        u.observe(8, 0.070);
        u.observe(128, 0.670);
        assert!(close(u.estimate(1), 0.070));
    }

    #[test]
    fn a_point_is_a_moving_average_of_its_range() {
        let mut t = linear();
        // The machine gets twice as slow for 8-row steps: the point moves a quarter a step.
        t.observe(8, 0.140);
        assert!(close(t.estimate(8), 0.070 + 0.25 * 0.070));
        for _ in 0..40 {
            t.observe(8, 0.140);
        }
        assert!((t.estimate(8).unwrap() - 0.140).abs() < 1e-4);
    }

    #[test]
    fn noise_never_makes_more_rows_cheaper() {
        let mut t = StepTimes::new();
        t.observe(4, 0.100);
        t.observe(16, 0.080); // a lucky step
        t.observe(64, 0.400);
        let est: Vec<f64> = (1..100).map(|r| t.estimate(r).unwrap()).collect();
        assert!(est.windows(2).all(|w| w[0] <= w[1]), "{est:?}");
        assert!(close(t.estimate(16), 0.100));
    }

    #[test]
    fn rows_within_finds_the_largest_step_under_the_limit() {
        let t = linear();
        // 8 decodes take 70 ms; twice that allows 8 + 14 rows (30 + 5 * 22 = 140 ms).
        assert_eq!(t.rows_within(8, 1000, 0.1405), Some(22));
        assert_eq!(t.rows_within(8, 1000, 0.1395), Some(21));
        assert_eq!(t.rows_within(8, 5, 0.1405), Some(13), "capped by the room");
        assert_eq!(
            t.rows_within(8, 100, 0.010),
            Some(8),
            "never below the base"
        );
    }
}

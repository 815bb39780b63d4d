//! `--draft-len auto`: the draft length that maximises expected tokens per second, from the
//! acceptance rate and the step times observed so far.
//!
//! With a per-token acceptance rate `α` (draft tokens accepted independently), a step with
//! `k` draft tokens commits `E(k) = (1 − α^(k+1)) / (1 − α)` tokens per sequence in
//! expectation (Leviathan et al. 2023, eq. 1). A step's wall time `S(k)` (drafting plus
//! verification, so it includes whatever the draft and the `k + 1`-token verification cost on
//! this machine, overlap included) is fitted as `a + b·k` by weighted least squares over the
//! step lengths tried. The schedule then takes `argmax E(k) / S(k)` over `1..=max`, and every
//! [`EXPLORE_EVERY`]-th step tries a neighbour of it so that the fit keeps two points.
//! Both statistics decay by [`DECAY`] per step, so they follow a change of text.
//!
//! `k = 0` is a candidate too: a plain decode step, committing one token per sequence. Where
//! verification costs more than the drafts it commits (on a CPU with the weights in cache,
//! batches of several sequences already amortise each weight read), the schedule turns
//! speculation off and still tries `k = 1` every [`EXPLORE_EVERY`] steps.

/// Weight kept by older observations per step.
pub const DECAY: f64 = 0.97;

/// Every this many steps, a neighbour of the best `k` is tried (exploration).
pub const EXPLORE_EVERY: usize = 8;

/// Steps whose times are not fitted (one-time costs of the first steps).
const WARMUP_STEPS: usize = 2;

/// Acceptance rate assumed before any step, worth [`PRIOR_TRIALS`] observed trials (so that
/// one lucky first step does not send `k` to its maximum).
const PRIOR_ALPHA: f64 = 0.6;
/// Weight of [`PRIOR_ALPHA`] in trials.
const PRIOR_TRIALS: f64 = 8.0;

/// Slope of the step time per draft token, relative to a step without drafts, assumed while
/// only one draft length has been measured.
const PRIOR_SLOPE: f64 = 0.2;

/// Expected tokens committed per sequence by a step of `k` draft tokens at per-token
/// acceptance rate `alpha` (`k + 1` when every draft is accepted).
pub fn expected_tokens(alpha: f64, k: usize) -> f64 {
    let a = alpha.clamp(0.0, 1.0);
    if a >= 1.0 - 1e-9 {
        return (k + 1) as f64;
    }
    (1.0 - a.powi(k as i32 + 1)) / (1.0 - a)
}

/// `argmax_k expected_tokens(alpha, k) / cost(k)` over `0..=max` (the smaller `k` on ties;
/// `k = 0` is a plain decode step: speculation off).
pub fn best_k(alpha: f64, cost: impl Fn(usize) -> f64, max: usize) -> usize {
    let mut best = (0, f64::MIN);
    for k in 0..=max {
        let rate = expected_tokens(alpha, k) / cost(k).max(1e-12);
        if rate > best.1 * (1.0 + 1e-9) {
            best = (k, rate);
        }
    }
    best.0
}

/// The adaptive draft length of one generation.
#[derive(Clone, Debug)]
pub struct AutoDraftLen {
    max: usize,
    k: usize,
    best: usize,
    accepted: f64,
    trials: f64,
    /// Per draft length `k` (index): decayed sum of step seconds and decayed count.
    steps: Vec<(f64, f64)>,
    n: usize,
}

impl AutoDraftLen {
    /// Starts at `start` (clamped to `1..=max`).
    pub fn new(start: usize, max: usize) -> Self {
        let max = max.max(1);
        let k = start.clamp(1, max);
        AutoDraftLen {
            max,
            k,
            best: k,
            accepted: PRIOR_ALPHA * PRIOR_TRIALS,
            trials: PRIOR_TRIALS,
            steps: vec![(0.0, 0.0); max + 1],
            n: 0,
        }
    }

    /// The draft length of the next step.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The observed per-token acceptance rate (decayed, starting from a prior of 0.6).
    pub fn alpha(&self) -> f64 {
        self.accepted / self.trials
    }

    /// The fitted step time `a + b·k` in seconds (`None` before any step).
    pub fn step_seconds(&self, k: usize) -> Option<f64> {
        let pts: Vec<(f64, f64, f64)> = self
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.1 > 1e-9)
            .map(|(k, s)| (k as f64, s.0 / s.1, s.1))
            .collect();
        let (x0, y0, _) = *pts.first()?;
        let (a, b) = if pts.len() == 1 {
            let a = y0 / (1.0 + PRIOR_SLOPE * x0);
            (a, PRIOR_SLOPE * a)
        } else {
            let w: f64 = pts.iter().map(|p| p.2).sum();
            let mx = pts.iter().map(|p| p.0 * p.2).sum::<f64>() / w;
            let my = pts.iter().map(|p| p.1 * p.2).sum::<f64>() / w;
            let sxx: f64 = pts.iter().map(|p| p.2 * (p.0 - mx).powi(2)).sum();
            let sxy: f64 = pts.iter().map(|p| p.2 * (p.0 - mx) * (p.1 - my)).sum();
            let b = sxy / sxx;
            let a = my - b * mx;
            // A step costs more with more draft tokens: keep the slope positive.
            let b = b.max(0.02 * my);
            (a.max(0.1 * my), b)
        };
        Some(a + b * k as f64)
    }

    /// Records a step run with draft length `k`: `accepted` of `trials` tested draft tokens
    /// (all sequences; a sequence's drafts up to and including its first rejection are
    /// tested, those after it are not) were accepted and the step took `seconds` (`None`:
    /// a step whose time says nothing about `k`, such as one whose block was drafted
    /// serially under a cap, [`super::serial_draft_len`]); picks the next step's `k`.
    pub fn observe(&mut self, k: usize, accepted: usize, trials: usize, seconds: Option<f64>) {
        self.accepted = self.accepted * DECAY + accepted as f64;
        self.trials = self.trials * DECAY + trials as f64;
        for s in self.steps.iter_mut() {
            s.0 *= DECAY;
            s.1 *= DECAY;
        }
        // The first steps pay one-time costs (caches, KV growth): their times are not fitted.
        if let (true, Some(sec)) = (self.n >= WARMUP_STEPS, seconds) {
            let s = &mut self.steps[k.min(self.max)];
            s.0 += sec;
            s.1 += 1.0;
        }
        self.n += 1;
        let alpha = self.alpha();
        self.best = best_k(
            alpha,
            |k| self.step_seconds(k).unwrap_or(1.0 + PRIOR_SLOPE * k as f64),
            self.max,
        );
        self.k = if self.n % EXPLORE_EVERY == EXPLORE_EVERY - 1 {
            // Alternate between the neighbours above and below.
            let up = (self.n / EXPLORE_EVERY).is_multiple_of(2);
            if (up && self.best < self.max) || self.best == 0 {
                (self.best + 1).min(self.max)
            } else {
                self.best - 1
            }
        } else {
            self.best
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_tokens_follows_the_geometric_series() {
        assert_eq!(expected_tokens(1.0, 3), 4.0);
        assert_eq!(expected_tokens(0.0, 3), 1.0);
        let e = expected_tokens(0.8, 3);
        assert!((e - (1.0 + 0.8 + 0.64 + 0.512)).abs() < 1e-12, "{e}");
    }

    #[test]
    fn best_k_grows_with_acceptance_and_shrinks_with_cost() {
        let cost = |k: usize| 1.0 + 0.25 * k as f64;
        // E(1) = 1.2 tokens for 1.25× the time of a plain step: speculation off.
        assert_eq!(best_k(0.2, cost, 8), 0);
        assert_eq!(best_k(0.4, cost, 8), 1);
        let mid = best_k(0.8, cost, 8);
        let high = best_k(0.95, cost, 8);
        assert!(mid >= 2 && high > mid, "{mid} {high}");
        // Expensive drafts: shorter blocks.
        assert!(best_k(0.95, |k| 1.0 + k as f64, 8) < high);
    }

    #[test]
    fn schedule_settles_on_the_best_length_of_a_known_machine() {
        // A machine whose step costs 1 + 0.3 k and a draft accepted at 0.85: the best fixed
        // length is argmax E(k) / (1 + 0.3 k).
        let alpha = 0.85;
        let want = best_k(alpha, |k| 1.0 + 0.3 * k as f64, 8);
        let mut s = AutoDraftLen::new(4, 8);
        let mut ks = Vec::new();
        for step in 0..200 {
            let k = s.k();
            ks.push(k);
            // Acceptance exactly at the rate, on average over 20 trials per step.
            let _ = step;
            s.observe(k, 17, 20, Some(1e-3 * (1.0 + 0.3 * k as f64)));
        }
        let tail = &ks[100..];
        let at_best = tail.iter().filter(|&&k| k == want).count();
        assert!(
            at_best * 10 >= tail.len() * 8,
            "best {want}, chosen {tail:?}"
        );
        let fit = s.step_seconds(want).unwrap();
        assert!(
            (fit - 1e-3 * (1.0 + 0.3 * want as f64)).abs() < 1e-6,
            "{fit}"
        );
    }

    #[test]
    fn expensive_verification_turns_speculation_off() {
        // Each draft token costs as much as a whole plain step and acceptance is 0.5: a
        // plain step (k = 0) commits the most tokens per second.
        let mut s = AutoDraftLen::new(3, 8);
        let mut ks = Vec::new();
        for _ in 0..120 {
            let k = s.k();
            ks.push(k);
            s.observe(k, k / 2, k, Some(1e-3 * (1.0 + k as f64)));
        }
        let off = ks[60..].iter().filter(|&&k| k == 0).count();
        assert!(off * 10 >= 60 * 8, "{ks:?}");
    }

    #[test]
    fn zero_acceptance_turns_speculation_off_even_when_drafts_look_free() {
        // Noisy times with no visible cost per draft token (the fit's slope is then the
        // floor of 2 % of a step) and nothing ever accepted: once the acceptance prior has
        // decayed, plain steps win, with an exploration of k = 1 every 8th step.
        let mut s = AutoDraftLen::new(3, 8);
        let mut ks = Vec::new();
        for step in 0..300 {
            let k = s.k();
            ks.push(k);
            let noise = [1.0, 0.9, 1.1, 0.95][step % 4];
            s.observe(k, 0, usize::from(k > 0), Some(1e-3 * noise));
        }
        let tail = &ks[200..];
        let off = tail.iter().filter(|&&k| k == 0).count();
        assert!(off * 10 >= tail.len() * 8, "{tail:?}");
    }

    #[test]
    fn low_acceptance_falls_back_to_one_token() {
        let mut s = AutoDraftLen::new(4, 8);
        for _ in 0..60 {
            let k = s.k();
            s.observe(k, 0, k, Some(1e-3 * (1.0 + 0.3 * k as f64)));
        }
        assert!(s.k() <= 2, "{}", s.k());
    }
}

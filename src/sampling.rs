//! Token selection: greedy (argmax, ties to the lowest id as torch) or sampling with
//! temperature → top-k → top-p, applied in that order as transformers' logits warpers do,
//! from a seeded RNG so runs are reproducible.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use specmoe_cpu_kernels::select::{argmax, softmax_inplace};

/// Sampling settings of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (`0` = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose mass reaches `top_p` (`1` = all).
    pub top_p: f32,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Whether this is greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// The distribution sampled from: softmax(logits / T) restricted to top-k and top-p and
    /// renormalised. For greedy settings, a one-hot at the argmax.
    pub fn probs(&self, logits: &[f32]) -> Vec<f32> {
        let mut p = vec![0.0f32; logits.len()];
        if self.is_greedy() {
            p[argmax(logits)] = 1.0;
            return p;
        }
        p.iter_mut()
            .zip(logits)
            .for_each(|(o, l)| *o = l / self.temperature);
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let mut keep = order.len();
        if self.top_k > 0 {
            keep = keep.min(self.top_k);
        }
        softmax_inplace(&mut p);
        if self.top_p < 1.0 {
            // Mass over the top-k survivors, renormalised as the top-p warper sees it.
            let mass: f32 = order[..keep].iter().map(|&i| p[i]).sum();
            let mut cum = 0.0f32;
            for (n, &i) in order[..keep].iter().enumerate() {
                cum += p[i] / mass;
                if cum >= self.top_p {
                    keep = n + 1;
                    break;
                }
            }
        }
        let mut q = vec![0.0f32; p.len()];
        let mut s = 0.0f32;
        for &i in &order[..keep] {
            q[i] = p[i];
            s += p[i];
        }
        q.iter_mut().for_each(|v| *v /= s);
        q
    }
}

/// Draws tokens for one sequence.
pub struct Sampler {
    /// Settings.
    pub params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler seeded with `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    /// Picks the next token from `logits` `[vocab]`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(logits) as u32;
        }
        let p = self.params.probs(logits);
        self.draw(&p)
    }

    /// Draws an index from the distribution `p` (non-negative, summing to ~1).
    pub fn draw(&mut self, p: &[f32]) -> u32 {
        let u: f32 = self.rng.random::<f32>();
        let mut cum = 0.0f32;
        let mut last = 0;
        for (i, &pi) in p.iter().enumerate() {
            if pi > 0.0 {
                cum += pi;
                last = i;
                if u < cum {
                    return i as u32;
                }
            }
        }
        last as u32
    }

    /// A uniform number in `[0, 1)` from this sampler's stream.
    pub fn uniform(&mut self) -> f32 {
        self.rng.random::<f32>()
    }
}

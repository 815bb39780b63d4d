//! Sampling: greedy ties, temperature / top-k / top-p masks, seeded reproducibility.

use specmoe::sampling::{Sampler, SamplingParams};

#[test]
fn greedy_breaks_ties_toward_lowest_id() {
    let mut s = Sampler::new(SamplingParams::default());
    assert_eq!(s.sample(&[0.0, 3.0, 1.0, 3.0]), 1);
}

#[test]
fn top_k_and_top_p_restrict_support() {
    let logits = [2.0f32, 1.0, 0.5, 0.0, -1.0];
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 2,
        top_p: 1.0,
        seed: 0,
    }
    .probs(&logits);
    assert_eq!(p.iter().filter(|&&x| x > 0.0).count(), 2);
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    // softmax([2,1,.5,0,-1]) ≈ [.53,.20,.12,.07,.03]: top-p 0.6 keeps the first two.
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 0.6,
        seed: 0,
    }
    .probs(&logits);
    assert_eq!(p.iter().filter(|&&x| x > 0.0).count(), 2);
    assert!(p[0] > p[1] && p[2] == 0.0);
}

#[test]
fn temperature_sharpens_and_seed_reproduces() {
    let logits = [1.0f32, 0.0, -1.0];
    let hot = SamplingParams {
        temperature: 2.0,
        ..Default::default()
    }
    .probs(&logits);
    let cold = SamplingParams {
        temperature: 0.5,
        ..Default::default()
    }
    .probs(&logits);
    assert!(cold[0] > hot[0]);
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 42,
    };
    let draw = |p: SamplingParams| {
        let mut s = Sampler::new(p);
        (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
    };
    assert_eq!(draw(params.clone()), draw(params.clone()));
    assert_ne!(
        draw(params.clone()),
        draw(SamplingParams { seed: 43, ..params })
    );
}

#[test]
fn sampled_frequencies_follow_the_distribution() {
    let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln()];
    let mut s = Sampler::new(SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 1,
    });
    let mut c = [0usize; 3];
    let n = 60_000;
    for _ in 0..n {
        c[s.sample(&logits) as usize] += 1;
    }
    // Expected 1/6, 2/6, 3/6; 5 sigma of a binomial at n = 60k is < 0.01.
    for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
        let got = c[i] as f64 / n as f64;
        assert!((got - want).abs() < 0.01, "token {i}: {got} vs {want}");
    }
}

//! Activations of the gated MLP: `SiLU(gate) · up` (Shazeer 2020, SwiGLU).

use crate::dispatch::{active, usable, Isa};
use crate::simd::{isa_entry, Simd};

/// `silu(x) = x · sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate[i] = silu(gate[i]) * up[i]` in place, on the active path.
///
/// Panics if lengths differ.
pub fn silu_mul_inplace(gate: &mut [f32], up: &[f32]) {
    silu_mul_inplace_with(active(), gate, up)
}

/// [`silu_mul_inplace`] on an explicit path. The vector paths use a polynomial `exp`
/// (≤ 2 ulp), so results agree with the scalar path to a few ulp.
///
/// Panics if lengths differ.
pub fn silu_mul_inplace_with(isa: Isa, gate: &mut [f32], up: &[f32]) {
    assert_eq!(
        gate.len(),
        up.len(),
        "silu_mul: gate and up differ in length"
    );
    match usable(isa) {
        Isa::Scalar => {
            for (g, u) in gate.iter_mut().zip(up) {
                *g = silu(*g) * u;
            }
        }
        // SAFETY: both pointers cover `gate.len()` f32.
        isa => unsafe { silu_mul_run(isa, gate.as_mut_ptr(), up.as_ptr(), gate.len()) },
    }
}

#[inline(always)]
unsafe fn silu_mul_generic<S: Simd>(g: *mut f32, u: *const f32, n: usize) {
    let mut i = 0;
    while i + S::L <= n {
        S::store(
            g.add(i),
            silu_mul_v::<S>(S::load(g.add(i)), S::load(u.add(i))),
        );
        i += S::L;
    }
    if i < n {
        let v = silu_mul_v::<S>(
            S::load_partial(g.add(i), n - i),
            S::load_partial(u.add(i), n - i),
        );
        S::store_partial(g.add(i), v, n - i);
    }
}

/// `x / (1 + e^{−x}) · up` per lane (the scalar formula's order of operations).
#[inline(always)]
unsafe fn silu_mul_v<S: Simd>(x: S::V, up: S::V) -> S::V {
    let e = S::exp(S::sub(S::zero(), x));
    S::mul(S::div(x, S::add(S::splat(1.0), e)), up)
}

isa_entry!(fn silu_mul_run => silu_mul_generic(g: *mut f32, u: *const f32, n: usize));

/// Logistic sigmoid.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

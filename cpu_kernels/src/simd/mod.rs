//! A small vector abstraction over the instruction-set paths.
//!
//! Kernels are written once, generic over [`Simd`], and instantiated per path inside a
//! `#[target_feature(enable = ...)]` entry function (see [`isa_entry!`]). Every method is
//! `#[inline(always)]` so that, once inlined into such an entry function, the intrinsics are
//! compiled with the path's features; nothing here may be called outside one. Pointers are
//! never required to be aligned.
//!
//! Safety contract shared by all methods: the caller guarantees that the CPU supports the
//! implementing path (checked by [`crate::dispatch::Isa::is_supported`] before any entry
//! function is called) and that every pointer is valid for the bytes it reads or writes
//! (`L` elements unless stated otherwise).

#![allow(clippy::missing_safety_doc)]

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
pub(crate) mod portable;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

/// Cephes `expf` constants.
const EXP_HI: f32 = 88.0;
const EXP_LO: f32 = -87.336_55;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// One SIMD path: a vector of `L` f32 lanes and the operations the kernels need.
pub(crate) trait Simd: Copy {
    /// The vector type.
    type V: Copy;
    /// f32 lanes per vector.
    const L: usize;

    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    /// Loads `L` f32 from a possibly unaligned address.
    unsafe fn load(p: *const f32) -> Self::V;
    /// Stores `L` f32 to a possibly unaligned address.
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c` with one rounding.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Sum of the lanes.
    unsafe fn hsum(v: Self::V) -> f32;
    /// Maximum of the lanes.
    unsafe fn hmax(v: Self::V) -> f32;
    /// Loads `2L` bf16 and returns `(even elements, odd elements)` as f32 — two bit
    /// operations per `2L` elements instead of a widening shuffle per `L`.
    unsafe fn bf16x2(p: *const u8) -> (Self::V, Self::V);
    /// Loads `L` bf16 in order as f32.
    unsafe fn bf16(p: *const u8) -> Self::V;
    /// Loads `L` IEEE f16 in order as f32.
    unsafe fn f16(p: *const u8) -> Self::V;
    /// Rounds to the nearest integer (ties to even).
    unsafe fn round(v: Self::V) -> Self::V;
    /// `2^n` for lanes holding integers in `[-126, 127]`.
    unsafe fn pow2i(n: Self::V) -> Self::V;
    /// `if a >= b { t } else { f }` per lane.
    unsafe fn select_ge(a: Self::V, b: Self::V, t: Self::V, f: Self::V) -> Self::V;

    /// Sums of the lanes of each vector of `v`, stored to `out[0..v.len()]`.
    ///
    /// Every lane sum follows one fixed tree per path, whatever `v.len()` and whichever vectors
    /// are reduced together (so an output never depends on its neighbours); paths may
    /// override it with a transposing reduction that shares shuffles between vectors.
    #[inline(always)]
    unsafe fn hsums(v: &[Self::V], out: *mut f32) {
        for (i, &x) in v.iter().enumerate() {
            *out.add(i) = Self::hsum(x);
        }
    }

    /// `a + w · load(p + T·L)` (one rounding), where the path can force it with the load as
    /// the FMA's memory operand at a constant displacement from `p`: the loaded vector then
    /// takes no register, equal loads are not merged, and the `TB` tokens of a step-major
    /// packed `x` (token `T` at `T·L` f32 from the step's start) share one pointer, so a
    /// register tile reads its other operand straight from L1 (the matmul's 7–8-token
    /// tiles). Bitwise equal to `fma(w, load(p.add(T * L)), a)`.
    #[inline(always)]
    unsafe fn fma_mem_at<const T: usize>(w: Self::V, p: *const f32, a: Self::V) -> Self::V {
        Self::fma(w, Self::load(p.add(T * Self::L)), a)
    }

    /// [`Simd::fma_mem_at`] for pairs: `w0` at `p + 2T·L`, then `w1` at `p + 2T·L + L` (a
    /// bf16 step's even and odd halves of token `T`, tokens `2L` f32 apart).
    #[inline(always)]
    unsafe fn fma2_mem_at<const T: usize>(
        w0: Self::V,
        w1: Self::V,
        p: *const f32,
        a: Self::V,
    ) -> Self::V {
        let q = p.add(2 * T * Self::L);
        let a = Self::fma(w0, Self::load(q), a);
        Self::fma(w1, Self::load(q.add(Self::L)), a)
    }

    /// Hints that the cache line at `p` will be read later: fetch it into L2 (never faults).
    #[inline(always)]
    unsafe fn prefetch_l2(_p: *const u8) {}

    /// Loads the first `n < L` f32 at `p`, zero-filling the other lanes.
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> Self::V {
        let mut buf = [0.0f32; 16];
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n.min(Self::L));
        Self::load(buf.as_ptr())
    }

    /// Transposes one `L × L` block of f32: `dst[c · ds + r] = src[r · ss + c]` for
    /// `r, c < L` (strides in elements; the blocks must not overlap).
    #[inline(always)]
    unsafe fn transpose(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        for r in 0..Self::L {
            for c in 0..Self::L {
                *dst.add(c * ds + r) = *src.add(r * ss + c);
            }
        }
    }

    /// Splits the `2L` f32 at `src` into their `L` even-indexed elements at `even` and
    /// their `L` odd-indexed ones at `odd` (the packed activation layout of the bf16
    /// matmul).
    #[inline(always)]
    unsafe fn deinterleave(src: *const f32, even: *mut f32, odd: *mut f32) {
        for j in 0..Self::L {
            *even.add(j) = *src.add(2 * j);
            *odd.add(j) = *src.add(2 * j + 1);
        }
    }

    /// Stores the first `n < L` lanes of `v` at `p`.
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, v: Self::V, n: usize) {
        let mut buf = [0.0f32; 16];
        Self::store(buf.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n.min(Self::L));
    }

    /// `e^x` per lane (Cephes `expf` polynomial, ≤ 2 ulp on the finite range); 0 below
    /// ≈ −87.3 (including −∞), +∞ above 88.
    #[inline(always)]
    unsafe fn exp(x: Self::V) -> Self::V {
        let xc = Self::min(Self::max(x, Self::splat(EXP_LO)), Self::splat(EXP_HI));
        let n = Self::round(Self::mul(xc, Self::splat(LOG2E)));
        let r = Self::fma(n, Self::splat(-LN2_HI), xc);
        let r = Self::fma(n, Self::splat(-LN2_LO), r);
        let mut p = Self::splat(EXP_P[0]);
        p = Self::fma(p, r, Self::splat(EXP_P[1]));
        p = Self::fma(p, r, Self::splat(EXP_P[2]));
        p = Self::fma(p, r, Self::splat(EXP_P[3]));
        p = Self::fma(p, r, Self::splat(EXP_P[4]));
        p = Self::fma(p, r, Self::splat(EXP_P[5]));
        let r2 = Self::mul(r, r);
        let y = Self::add(Self::fma(p, r2, r), Self::splat(1.0));
        let y = Self::mul(y, Self::pow2i(n));
        let y = Self::select_ge(x, Self::splat(EXP_LO), y, Self::zero());
        Self::select_ge(Self::splat(EXP_HI), x, y, Self::splat(f32::INFINITY))
    }
}

/// 64 bytes of f32, 64-byte aligned: the unit of the kernels' aligned scratch buffers.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct Line(pub(crate) [f32; 16]);

/// Grows `buf` to hold at least `n` f32 and returns its start (64-byte aligned).
pub(crate) fn aligned_f32(buf: &mut Vec<Line>, n: usize) -> *mut f32 {
    let lines = n.div_ceil(16);
    if buf.len() < lines {
        buf.resize(lines, Line([0.0; 16]));
    }
    buf.as_mut_ptr() as *mut f32
}

/// Lanes of the f32 vector of `isa`'s path (the portable path uses 8).
pub(crate) fn lanes(isa: crate::Isa) -> usize {
    match isa {
        crate::Isa::Avx512 => 16,
        crate::Isa::Avx2 => 8,
        crate::Isa::Neon => 4,
        crate::Isa::Scalar => portable::Portable::L,
    }
}

/// Generates, for a generic function `$generic::<S: Simd>(args) -> ret` of the calling
/// module, one `#[target_feature]` entry per path and a dispatcher `$name(isa, args)`.
///
/// The dispatcher runs the path only if the CPU supports it (else the portable path), so
/// an unsupported instruction is never executed. It is `unsafe` because the generic bodies
/// take raw pointers: the caller guarantees they are valid for what the body reads/writes.
macro_rules! isa_entry {
    ($(#[$m:meta])* $vis:vis fn $name:ident => $generic:ident ( $($a:ident : $t:ty),* $(,)? ) $(-> $ret:ty)?) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name(isa: $crate::dispatch::Isa, $($a: $t),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($a: $t),*) $(-> $ret)? {
                $generic::<$crate::simd::x86::Avx512>($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($a: $t),*) $(-> $ret)? {
                $generic::<$crate::simd::x86::Avx2>($($a),*)
            }
            #[cfg(target_arch = "aarch64")]
            #[target_feature(enable = "neon")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn neon($($a: $t),*) $(-> $ret)? {
                $generic::<$crate::simd::neon::Neon>($($a),*)
            }
            #[allow(clippy::too_many_arguments)]
            unsafe fn portable($($a: $t),*) $(-> $ret)? {
                $generic::<$crate::simd::portable::Portable>($($a),*)
            }
            // SAFETY: each target-feature entry runs only when `is_supported` confirmed the
            // CPU has the features it enables; the generic body's own pointer contract is
            // the caller's (documented at each call site).
            unsafe {
                match $crate::dispatch::usable(isa) {
                    #[cfg(target_arch = "x86_64")]
                    $crate::dispatch::Isa::Avx512 => avx512($($a),*),
                    #[cfg(target_arch = "x86_64")]
                    $crate::dispatch::Isa::Avx2 => avx2($($a),*),
                    #[cfg(target_arch = "aarch64")]
                    $crate::dispatch::Isa::Neon => neon($($a),*),
                    _ => portable($($a),*),
                }
            }
        }
    };
}
pub(crate) use isa_entry;

#[cfg(test)]
mod tests {
    use super::*;

    /// `S::transpose` against its definition at several strides, nothing written outside
    /// the `L × L` block.
    fn transpose_is_exact<S: Simd>(name: &str) {
        let l = S::L;
        for (ss, ds) in [(l, l), (l + 3, 2 * l + 1), (4 * l, 33)] {
            let src: Vec<f32> = (0..l * ss).map(|i| i as f32 * 0.5 - 7.0).collect();
            let mut dst = vec![f32::NAN; l * ds];
            // SAFETY: both buffers hold `L` rows of their stride, `ss, ds ≥ L`.
            unsafe { S::transpose(src.as_ptr(), ss, dst.as_mut_ptr(), ds) };
            for c in 0..l {
                for r in 0..ds {
                    let got = dst[c * ds + r];
                    if r < l {
                        assert_eq!(
                            got,
                            src[r * ss + c],
                            "{name}: ({r}, {c}), strides {ss}/{ds}"
                        );
                    } else {
                        assert!(got.is_nan(), "{name}: wrote past the block at ({r}, {c})");
                    }
                }
            }
        }
    }

    #[test]
    fn transpose_on_every_path_this_cpu_runs() {
        transpose_is_exact::<portable::Portable>("portable");
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                transpose_is_exact::<x86::Avx512>("avx512");
            } else {
                eprintln!("skipped the AVX-512 transpose: this CPU lacks AVX-512F");
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                transpose_is_exact::<x86::Avx2>("avx2");
            } else {
                eprintln!("skipped the AVX2 transpose: this CPU lacks AVX2 + FMA");
            }
        }
        #[cfg(target_arch = "aarch64")]
        transpose_is_exact::<neon::Neon>("neon");
    }
}

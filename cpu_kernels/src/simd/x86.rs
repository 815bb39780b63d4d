//! x86-64 paths: AVX-512F (16 lanes) and AVX2 + FMA + F16C (8 lanes).

use super::Simd;
use core::arch::x86_64::*;

/// AVX-512F path (with AVX2, FMA, F16C).
#[derive(Clone, Copy)]
pub(crate) struct Avx512;

impl Simd for Avx512 {
    type V = __m512;
    const L: usize = 16;

    #[inline(always)]
    unsafe fn deinterleave(src: *const f32, even: *mut f32, odd: *mut f32) {
        let (a, b) = (_mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16)));
        let ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        _mm512_storeu_ps(even, _mm512_permutex2var_ps(a, ie, b));
        _mm512_storeu_ps(odd, _mm512_permutex2var_ps(a, io, b));
    }

    #[inline(always)]
    unsafe fn transpose(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        // 64 shuffles: ps pairs, pd pairs, then two rounds of 128-bit block selects. After
        // the first two rounds `u[4g + c]` holds, in 128-bit block `k`, rows `4g..4g+4` of
        // column `4k + c`.
        let mut r = [_mm512_setzero_ps(); 16];
        for (i, x) in r.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(src.add(i * ss));
        }
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let (a, b) = (_mm512_castps_pd(t[4 * g]), _mm512_castps_pd(t[4 * g + 2]));
            let (c, d) = (
                _mm512_castps_pd(t[4 * g + 1]),
                _mm512_castps_pd(t[4 * g + 3]),
            );
            u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
            u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
            u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
        }
        for c in 0..4 {
            let v0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
            let v1 = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
            let w0 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
            let w1 = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
            _mm512_storeu_ps(dst.add(c * ds), _mm512_shuffle_f32x4::<0x88>(v0, w0));
            _mm512_storeu_ps(dst.add((8 + c) * ds), _mm512_shuffle_f32x4::<0xDD>(v0, w0));
            _mm512_storeu_ps(dst.add((4 + c) * ds), _mm512_shuffle_f32x4::<0x88>(v1, w1));
            _mm512_storeu_ps(dst.add((12 + c) * ds), _mm512_shuffle_f32x4::<0xDD>(v1, w1));
        }
    }

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(a: __m512, b: __m512) -> __m512 {
        _mm512_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        _mm512_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn min(a: __m512, b: __m512) -> __m512 {
        _mm512_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn hsum(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }
    #[inline(always)]
    unsafe fn hmax(v: __m512) -> f32 {
        _mm512_reduce_max_ps(v)
    }
    #[inline(always)]
    unsafe fn bf16x2(p: *const u8) -> (__m512, __m512) {
        let v = _mm512_loadu_si512(p as *const _);
        let even = _mm512_slli_epi32::<16>(v);
        let odd = _mm512_and_si512(v, _mm512_set1_epi32(0xFFFF_0000u32 as i32));
        (_mm512_castsi512_ps(even), _mm512_castsi512_ps(odd))
    }
    #[inline(always)]
    unsafe fn bf16(p: *const u8) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    unsafe fn f16(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn round(v: __m512) -> __m512 {
        _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
    }
    #[inline(always)]
    unsafe fn pow2i(n: __m512) -> __m512 {
        let i = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
        _mm512_castsi512_ps(_mm512_slli_epi32::<23>(i))
    }
    #[inline(always)]
    unsafe fn select_ge(a: __m512, b: __m512, t: __m512, f: __m512) -> __m512 {
        let m = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(a, b);
        _mm512_mask_blend_ps(m, f, t)
    }
    #[inline(always)]
    unsafe fn prefetch_l2(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T1>(p as *const i8)
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> __m512 {
        _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p)
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, v: __m512, n: usize) {
        _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, v)
    }

    #[inline(always)]
    unsafe fn fma_mem_at<const T: usize>(w: __m512, p: *const f32, a: __m512) -> __m512 {
        fma_mem_512::<T>(w, p, a)
    }
    #[inline(always)]
    unsafe fn fma2_mem_at<const T: usize>(
        w0: __m512,
        w1: __m512,
        p: *const f32,
        a: __m512,
    ) -> __m512 {
        fma2_mem_512::<T>(w0, w1, p, a)
    }

    #[inline(always)]
    unsafe fn hsums(v: &[__m512], out: *mut f32) {
        // Groups of 16 vectors; slot `s` of a group holds vector `4 (s % 4) + s / 4` (zero
        // past the end) so that lane `e` of the transposed result is the sum of vector `e`.
        // Every lane sum is `((v[i] + v[i+8]) + (… i+4)) + (… i+2)) + (… i+1)`.
        let n_all = v.len();
        let mut g = 0;
        while g < n_all {
            let mut u = [_mm512_setzero_ps(); 16];
            for (s, slot) in u.iter_mut().enumerate() {
                let i = g + 4 * (s % 4) + s / 4;
                if i < n_all {
                    *slot = v[i];
                }
            }
            let mut c = [_mm512_setzero_ps(); 8];
            for (k, ck) in c.iter_mut().enumerate() {
                *ck = sum_halves_512(u[2 * k], u[2 * k + 1]);
            }
            let mut e = [_mm512_setzero_ps(); 4];
            for (m, em) in e.iter_mut().enumerate() {
                *em = sum_quarters_512(c[2 * m], c[2 * m + 1]);
            }
            let f0 = sum_pairs_ps::<0x44, 0xEE>(e[0], e[1]);
            let f1 = sum_pairs_ps::<0x44, 0xEE>(e[2], e[3]);
            let h = sum_pairs_ps::<0x88, 0xDD>(f0, f1);
            let n = n_all - g;
            if n >= 16 {
                _mm512_storeu_ps(out.add(g), h);
            } else {
                _mm512_mask_storeu_ps(out.add(g), ((1u32 << n) - 1) as __mmask16, h);
            }
            g += 16;
        }
    }
}

/// `a + w · [p + 64·T]` as one `vfmadd231ps` with a memory operand (an intrinsic load
/// would be hoisted into a register and shared between the rows of a tile). The address is
/// a plain register + constant displacement: an indexed one would un-laminate the FMA into
/// two fused-domain uops, and one register per token ran out of registers (spilled offsets
/// reloaded every step). Inlined into its AVX-512 callers (a target-feature function
/// cannot be `inline(always)`).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn fma_mem_512<const T: usize>(w: __m512, p: *const f32, mut a: __m512) -> __m512 {
    core::arch::asm!(
        "vfmadd231ps {a}, {w}, zmmword ptr [{p} + {o}]",
        a = inout(zmm_reg) a,
        w = in(zmm_reg) w,
        p = in(reg) p,
        o = const 64 * T,
        options(pure, readonly, nostack, preserves_flags),
    );
    a
}

/// `a + w0 · [p + 128·T] + w1 · [p + 128·T + 64]` as two [`fma_mem_512`]s (token `T`'s
/// even and odd halves of a bf16 step).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn fma2_mem_512<const T: usize>(
    w0: __m512,
    w1: __m512,
    p: *const f32,
    mut a: __m512,
) -> __m512 {
    core::arch::asm!(
        "vfmadd231ps {a}, {w0}, zmmword ptr [{p} + {o0}]",
        "vfmadd231ps {a}, {w1}, zmmword ptr [{p} + {o1}]",
        a = inout(zmm_reg) a,
        w0 = in(zmm_reg) w0,
        w1 = in(zmm_reg) w1,
        p = in(reg) p,
        o0 = const 128 * T,
        o1 = const 128 * T + 64,
        options(pure, readonly, nostack, preserves_flags),
    );
    a
}

/// `[a lanes i + (i+8) for i < 8 | b likewise]`.
#[inline(always)]
unsafe fn sum_halves_512(a: __m512, b: __m512) -> __m512 {
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x44>(a, b),
        _mm512_shuffle_f32x4::<0xEE>(a, b),
    )
}

/// For `a = [a0 | a1]`, `b = [b0 | b1]` (8-lane halves): 128-bit blocks
/// `[a0.lo + a0.hi, a1.lo + a1.hi, b0.lo + b0.hi, b1.lo + b1.hi]`.
#[inline(always)]
unsafe fn sum_quarters_512(a: __m512, b: __m512) -> __m512 {
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x88>(a, b),
        _mm512_shuffle_f32x4::<0xDD>(a, b),
    )
}

/// Within each 128-bit block: `shuffle_ps::<LO>(a, b) + shuffle_ps::<HI>(a, b)`.
#[inline(always)]
unsafe fn sum_pairs_ps<const LO: i32, const HI: i32>(a: __m512, b: __m512) -> __m512 {
    _mm512_add_ps(_mm512_shuffle_ps::<LO>(a, b), _mm512_shuffle_ps::<HI>(a, b))
}

/// AVX2 + FMA + F16C path.
#[derive(Clone, Copy)]
pub(crate) struct Avx2;

impl Simd for Avx2 {
    type V = __m256;
    const L: usize = 8;

    #[inline(always)]
    unsafe fn deinterleave(src: *const f32, even: *mut f32, odd: *mut f32) {
        let (a, b) = (_mm256_loadu_ps(src), _mm256_loadu_ps(src.add(8)));
        // Per 128-bit half: [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit quarters reordered.
        let e = _mm256_shuffle_ps::<0x88>(a, b);
        let o = _mm256_shuffle_ps::<0xDD>(a, b);
        let fix = |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(v)));
        _mm256_storeu_ps(even, fix(e));
        _mm256_storeu_ps(odd, fix(o));
    }

    #[inline(always)]
    unsafe fn transpose(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        // 24 shuffles: ps pairs, pd pairs, 128-bit halves.
        let mut r = [_mm256_setzero_ps(); 8];
        for (i, x) in r.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(src.add(i * ss));
        }
        let mut t = [_mm256_setzero_ps(); 8];
        for i in 0..4 {
            t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [_mm256_setzero_ps(); 8];
        for g in 0..2 {
            let (a, b) = (_mm256_castps_pd(t[4 * g]), _mm256_castps_pd(t[4 * g + 2]));
            let (c, d) = (
                _mm256_castps_pd(t[4 * g + 1]),
                _mm256_castps_pd(t[4 * g + 3]),
            );
            u[4 * g] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, b));
            u[4 * g + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, b));
            u[4 * g + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(c, d));
            u[4 * g + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(c, d));
        }
        for c in 0..4 {
            _mm256_storeu_ps(
                dst.add(c * ds),
                _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]),
            );
            _mm256_storeu_ps(
                dst.add((4 + c) * ds),
                _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]),
            );
        }
    }

    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn div(a: __m256, b: __m256) -> __m256 {
        _mm256_div_ps(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: __m256, b: __m256) -> __m256 {
        _mm256_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn min(a: __m256, b: __m256) -> __m256 {
        _mm256_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
    #[inline(always)]
    unsafe fn hmax(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_max_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
    #[inline(always)]
    unsafe fn bf16x2(p: *const u8) -> (__m256, __m256) {
        let v = _mm256_loadu_si256(p as *const __m256i);
        let even = _mm256_slli_epi32::<16>(v);
        let odd = _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF_0000u32 as i32));
        (_mm256_castsi256_ps(even), _mm256_castsi256_ps(odd))
    }
    #[inline(always)]
    unsafe fn bf16(p: *const u8) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    unsafe fn f16(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn round(v: __m256) -> __m256 {
        _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v)
    }
    #[inline(always)]
    unsafe fn pow2i(n: __m256) -> __m256 {
        let i = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(i))
    }
    #[inline(always)]
    unsafe fn select_ge(a: __m256, b: __m256, t: __m256, f: __m256) -> __m256 {
        _mm256_blendv_ps(f, t, _mm256_cmp_ps::<_CMP_GE_OQ>(a, b))
    }
    #[inline(always)]
    unsafe fn prefetch_l2(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T1>(p as *const i8)
    }
    #[inline(always)]
    unsafe fn hsums(v: &[__m256], out: *mut f32) {
        // Groups of 8; slot `s` holds vector `4 (s % 2) + s / 2` so that lane `e` of the
        // result is the sum of vector `e`; the same tree per lane as `hsum`.
        let n_all = v.len();
        let mut g = 0;
        while g < n_all {
            let mut u = [_mm256_setzero_ps(); 8];
            for (s, slot) in u.iter_mut().enumerate() {
                let i = g + 4 * (s % 2) + s / 2;
                if i < n_all {
                    *slot = v[i];
                }
            }
            let mut c = [_mm256_setzero_ps(); 4];
            for (k, ck) in c.iter_mut().enumerate() {
                let (a, b) = (u[2 * k], u[2 * k + 1]);
                *ck = _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(a, b),
                    _mm256_permute2f128_ps::<0x31>(a, b),
                );
            }
            let mut e = [_mm256_setzero_ps(); 2];
            for (m, em) in e.iter_mut().enumerate() {
                let (a, b) = (c[2 * m], c[2 * m + 1]);
                *em = _mm256_add_ps(
                    _mm256_shuffle_ps::<0x44>(a, b),
                    _mm256_shuffle_ps::<0xEE>(a, b),
                );
            }
            let h = _mm256_add_ps(
                _mm256_shuffle_ps::<0x88>(e[0], e[1]),
                _mm256_shuffle_ps::<0xDD>(e[0], e[1]),
            );
            let n = n_all - g;
            if n >= 8 {
                _mm256_storeu_ps(out.add(g), h);
            } else {
                let mut buf = [0.0f32; 8];
                _mm256_storeu_ps(buf.as_mut_ptr(), h);
                core::ptr::copy_nonoverlapping(buf.as_ptr(), out.add(g), n);
            }
            g += 8;
        }
    }
}

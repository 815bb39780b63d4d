//! aarch64 Advanced SIMD path (4 lanes). f16 → f32 uses `FCVTL` (base ARMv8 AdvSIMD) via
//! inline assembly because the `float16x4_t` intrinsics are not stable in Rust.

use super::Simd;
use core::arch::aarch64::*;

/// NEON path.
#[derive(Clone, Copy)]
pub(crate) struct Neon;

impl Simd for Neon {
    type V = float32x4_t;
    const L: usize = 4;

    #[inline(always)]
    unsafe fn deinterleave(src: *const f32, even: *mut f32, odd: *mut f32) {
        let (a, b) = (vld1q_f32(src), vld1q_f32(src.add(4)));
        vst1q_f32(even, vuzp1q_f32(a, b));
        vst1q_f32(odd, vuzp2q_f32(a, b));
    }

    #[inline(always)]
    unsafe fn zero() -> float32x4_t {
        vdupq_n_f32(0.0)
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> float32x4_t {
        vdupq_n_f32(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> float32x4_t {
        vreinterpretq_f32_u8(vld1q_u8(p as *const u8))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: float32x4_t) {
        vst1q_u8(p as *mut u8, vreinterpretq_u8_f32(v))
    }
    #[inline(always)]
    unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vaddq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vsubq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vmulq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn div(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vdivq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn max(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vmaxq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn min(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        vminq_f32(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        vfmaq_f32(c, a, b)
    }
    #[inline(always)]
    unsafe fn hsum(v: float32x4_t) -> f32 {
        vaddvq_f32(v)
    }
    #[inline(always)]
    unsafe fn hmax(v: float32x4_t) -> f32 {
        vmaxvq_f32(v)
    }
    #[inline(always)]
    unsafe fn bf16x2(p: *const u8) -> (float32x4_t, float32x4_t) {
        let v = vreinterpretq_u32_u8(vld1q_u8(p));
        let even = vshlq_n_u32::<16>(v);
        let odd = vandq_u32(v, vdupq_n_u32(0xFFFF_0000));
        (vreinterpretq_f32_u32(even), vreinterpretq_f32_u32(odd))
    }
    #[inline(always)]
    unsafe fn bf16(p: *const u8) -> float32x4_t {
        let h = vreinterpret_u16_u8(vld1_u8(p));
        vreinterpretq_f32_u32(vshll_n_u16::<16>(h))
    }
    #[inline(always)]
    unsafe fn f16(p: *const u8) -> float32x4_t {
        let h = vreinterpret_u16_u8(vld1_u8(p));
        let r: float32x4_t;
        core::arch::asm!(
            "fcvtl {r:v}.4s, {h:v}.4h",
            r = lateout(vreg) r,
            h = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags)
        );
        r
    }
    #[inline(always)]
    unsafe fn round(v: float32x4_t) -> float32x4_t {
        vrndnq_f32(v)
    }
    #[inline(always)]
    unsafe fn pow2i(n: float32x4_t) -> float32x4_t {
        let i = vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127));
        vreinterpretq_f32_s32(vshlq_n_s32::<23>(i))
    }
    #[inline(always)]
    unsafe fn select_ge(
        a: float32x4_t,
        b: float32x4_t,
        t: float32x4_t,
        f: float32x4_t,
    ) -> float32x4_t {
        vbslq_f32(vcgeq_f32(a, b), t, f)
    }
    #[inline(always)]
    unsafe fn prefetch_l2(p: *const u8) {
        core::arch::asm!("prfm pldl2keep, [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly));
    }
    #[inline(always)]
    unsafe fn hsums(v: &[float32x4_t], out: *mut f32) {
        // Groups of 4: two pairwise adds give `(v0 + v1) + (v2 + v3)` per vector, the tree
        // of `vaddvq_f32`.
        let n_all = v.len();
        let mut g = 0;
        while g < n_all {
            let mut u = [vdupq_n_f32(0.0); 4];
            for (i, slot) in u.iter_mut().enumerate() {
                if g + i < n_all {
                    *slot = v[g + i];
                }
            }
            let h = vpaddq_f32(vpaddq_f32(u[0], u[1]), vpaddq_f32(u[2], u[3]));
            let n = n_all - g;
            if n >= 4 {
                vst1q_f32(out.add(g), h);
            } else {
                let mut buf = [0.0f32; 4];
                vst1q_f32(buf.as_mut_ptr(), h);
                core::ptr::copy_nonoverlapping(buf.as_ptr(), out.add(g), n);
            }
            g += 4;
        }
    }
}

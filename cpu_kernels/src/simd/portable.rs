//! Portable path: 8-lane arrays in plain Rust (the compiler may auto-vectorise them with
//! the baseline target features). Used for `Isa::Scalar` and as the safe fallback.

use super::Simd;
use half::f16;

/// Portable 8-lane path.
#[derive(Clone, Copy)]
pub(crate) struct Portable;

type V8 = [f32; 8];

#[inline(always)]
fn map2(a: V8, b: V8, f: impl Fn(f32, f32) -> f32) -> V8 {
    let mut r = [0.0; 8];
    for i in 0..8 {
        r[i] = f(a[i], b[i]);
    }
    r
}

impl Simd for Portable {
    type V = V8;
    const L: usize = 8;

    #[inline(always)]
    unsafe fn zero() -> V8 {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> V8 {
        [x; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> V8 {
        std::ptr::read_unaligned(p as *const V8)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: V8) {
        std::ptr::write_unaligned(p as *mut V8, v)
    }
    #[inline(always)]
    unsafe fn add(a: V8, b: V8) -> V8 {
        map2(a, b, |x, y| x + y)
    }
    #[inline(always)]
    unsafe fn sub(a: V8, b: V8) -> V8 {
        map2(a, b, |x, y| x - y)
    }
    #[inline(always)]
    unsafe fn mul(a: V8, b: V8) -> V8 {
        map2(a, b, |x, y| x * y)
    }
    #[inline(always)]
    unsafe fn div(a: V8, b: V8) -> V8 {
        map2(a, b, |x, y| x / y)
    }
    #[inline(always)]
    unsafe fn max(a: V8, b: V8) -> V8 {
        map2(a, b, f32::max)
    }
    #[inline(always)]
    unsafe fn min(a: V8, b: V8) -> V8 {
        map2(a, b, f32::min)
    }
    #[inline(always)]
    unsafe fn fma(a: V8, b: V8, c: V8) -> V8 {
        // Separate multiply and add: fast on every target (f32::mul_add may be a libm call
        // where FMA is not a baseline feature); the error bound is the same order.
        let mut r = [0.0; 8];
        for i in 0..8 {
            r[i] = a[i] * b[i] + c[i];
        }
        r
    }
    #[inline(always)]
    unsafe fn hsum(v: V8) -> f32 {
        ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
    }
    #[inline(always)]
    unsafe fn hmax(v: V8) -> f32 {
        v.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }
    #[inline(always)]
    unsafe fn bf16x2(p: *const u8) -> (V8, V8) {
        let raw = std::ptr::read_unaligned(p as *const [u32; 8]);
        let mut e = [0.0; 8];
        let mut o = [0.0; 8];
        for i in 0..8 {
            let u = u32::from_le(raw[i]);
            e[i] = f32::from_bits(u << 16);
            o[i] = f32::from_bits(u & 0xFFFF_0000);
        }
        (e, o)
    }
    #[inline(always)]
    unsafe fn bf16(p: *const u8) -> V8 {
        let raw = std::ptr::read_unaligned(p as *const [u16; 8]);
        let mut r = [0.0; 8];
        for i in 0..8 {
            r[i] = f32::from_bits((u16::from_le(raw[i]) as u32) << 16);
        }
        r
    }
    #[inline(always)]
    unsafe fn f16(p: *const u8) -> V8 {
        let raw = std::ptr::read_unaligned(p as *const [u16; 8]);
        let mut r = [0.0; 8];
        for i in 0..8 {
            r[i] = f16::from_bits(u16::from_le(raw[i])).to_f32();
        }
        r
    }
    #[inline(always)]
    unsafe fn round(v: V8) -> V8 {
        v.map(f32::round_ties_even)
    }
    #[inline(always)]
    unsafe fn pow2i(n: V8) -> V8 {
        n.map(|x| f32::from_bits(((x as i32 + 127) as u32) << 23))
    }
    #[inline(always)]
    unsafe fn select_ge(a: V8, b: V8, t: V8, f: V8) -> V8 {
        let mut r = [0.0; 8];
        for i in 0..8 {
            r[i] = if a[i] >= b[i] { t[i] } else { f[i] };
        }
        r
    }
    #[inline(always)]
    unsafe fn exp(x: V8) -> V8 {
        x.map(f32::exp)
    }
}

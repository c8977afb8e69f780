// Vectorizable float32 math for the CPU kernels: a thin SIMD layer (GCC vector extensions,
// kLanes float32 lanes: 16 with AVX-512, 8 with AVX2, 4 otherwise), -2 ln u and sin / cos of
// 2 pi u on vectors, a scalar exp written so that gcc vectorizes loops of it, and half /
// bfloat16 <-> float conversions for one value or one vector.
//
// Included only from csrc/cpu/*.cpp, which CMake compiles once per ISA with -DVK_CPU_ISA=<name>.
// Everything here lives in vaekernels::cpu::<ISA>::(anonymous): internal linkage, so the linker
// can never merge an AVX-512 copy of a function with the generic copy of the same name.
//
// Accuracy (float32, round-to-nearest, no fast-math; NaN propagates, inf where the math says),
// measured against float64 on 4.3M arguments spread over the whole range:
//   neg2log    -2 ln u for normal u > 0: max 1.07 ulp;
//   sincos2pi  sin and cos of 2 pi u, u reduced in turns exactly: max 0.99 ulp;
//   exp_f32, vexp  exp(x): max 0.96 ulp for normal results;
//   half / bf16 conversions: exact, and round to nearest even (checked exhaustively).
#pragma once

#include <stdint.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#ifndef VK_CPU_ISA
#error "vecmath.h belongs to csrc/cpu/*.cpp, compiled once per ISA with -DVK_CPU_ISA=<name>"
#endif

#define VK_INLINE inline __attribute__((always_inline))

// Vector types wider than the ISA's registers (e.g. 4 doubles in the SSE2 build) make gcc warn
// that passing them by value has no fixed ABI.  All such functions here and in the kernels have
// internal linkage and are inlined, so no vector ever crosses a call boundary.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace vaekernels {
namespace cpu {
namespace VK_CPU_ISA {
namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX2__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif

typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef int32_t vi __attribute__((vector_size(4 * kLanes)));
typedef uint32_t vu __attribute__((vector_size(4 * kLanes)));
typedef uint64_t vq __attribute__((vector_size(4 * kLanes)));  // kLanes / 2 lanes of 64 bits

// The integer lanes of a float (F = float: exact-width scalars) or of a vector (F = vf), for the
// float math written once for both (exp_t here, exp_reduce in kl_math.h).
template <class F>
struct Lanes {
  using I = int32_t;
  using U = uint32_t;
};
template <>
struct Lanes<vf> {
  using I = vi;
  using U = vu;
};

template <class To, class From>
VK_INLINE To bit_cast(From x) {
  return __builtin_bit_cast(To, x);
}

VK_INLINE vf splat(float x) { return (vf){} + x; }

// ------------------------------------------------------------------ ISA layer
VK_INLINE vf vsqrt(vf x) {  // correctly rounded
#if defined(__AVX512F__)
  return (vf)_mm512_sqrt_ps((__m512)x);
#elif defined(__AVX2__)
  return (vf)_mm256_sqrt_ps((__m256)x);
#elif defined(__SSE2__)
  return (vf)_mm_sqrt_ps((__m128)x);
#else
  for (int l = 0; l < kLanes; ++l) x[l] = __builtin_sqrtf(x[l]);
  return x;
#endif
}

VK_INLINE vf vfma(vf a, vf b, vf c) {  // a*b + c, fused where the ISA has FMA
#if defined(__AVX512F__)
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__AVX2__) && defined(__FMA__)
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}

// a > b ? a : b lane by lane, and b where either is NaN (x86's maxps; one instruction where a
// compare and a blend would be two).
VK_INLINE vf vmax(vf a, vf b) {
#if defined(__AVX512F__)
  return (vf)_mm512_max_ps((__m512)a, (__m512)b);
#elif defined(__AVX2__)
  return (vf)_mm256_max_ps((__m256)a, (__m256)b);
#elif defined(__SSE2__)
  return (vf)_mm_max_ps((__m128)a, (__m128)b);
#else
  return a > b ? a : b;
#endif
}

// Full 64-bit products of the low 32-bit halves of each 64-bit lane (the upper halves are ignored).
VK_INLINE vq mul_lo32(vq a, vq b) {
#if defined(__AVX512F__)
  return (vq)_mm512_mul_epu32((__m512i)a, (__m512i)b);
#elif defined(__AVX2__)
  return (vq)_mm256_mul_epu32((__m256i)a, (__m256i)b);
#elif defined(__SSE2__)
  return (vq)_mm_mul_epu32((__m128i)a, (__m128i)b);
#else
  return (a & 0xffffffffu) * (b & 0xffffffffu);
#endif
}

// The low 32-bit halves of the 64-bit lanes of a and b as one vu.  Within each 128-bit block q:
// (a[2q], a[2q+1], b[2q], b[2q+1]), i.e. 64-bit lane p of input h (a: 0, b: 1) lands in float lane
// pack_lane(h, p).  (One in-lane shuffle; the callers choose counters so the order is irrelevant.)
constexpr int pack_lane(int h, int p) { return 4 * (p / 2) + 2 * h + p % 2; }

VK_INLINE vu pack_lo32(vq a, vq b) {
#if defined(__AVX512F__)
  return (vu)_mm512_shuffle_ps((__m512)a, (__m512)b, _MM_SHUFFLE(2, 0, 2, 0));
#elif defined(__AVX2__)
  return (vu)_mm256_shuffle_ps((__m256)a, (__m256)b, _MM_SHUFFLE(2, 0, 2, 0));
#elif defined(__SSE2__)
  return (vu)_mm_shuffle_ps((__m128)a, (__m128)b, _MM_SHUFFLE(2, 0, 2, 0));
#else
  vu r;
  for (int p = 0; p < kLanes / 2; ++p) {
    r[pack_lane(0, p)] = static_cast<uint32_t>(a[p]);
    r[pack_lane(1, p)] = static_cast<uint32_t>(b[p]);
  }
  return r;
#endif
}

// 4x4 transposes inside each 128-bit block: out[m] block q = (x0[4q+m], x1[4q+m], x2[4q+m], x3[4q+m]).
VK_INLINE void transpose4(vf x0, vf x1, vf x2, vf x3, vf out[4]) {
#if defined(__AVX512F__)
  const __m512 a = _mm512_unpacklo_ps((__m512)x0, (__m512)x1), b = _mm512_unpackhi_ps((__m512)x0, (__m512)x1);
  const __m512 c = _mm512_unpacklo_ps((__m512)x2, (__m512)x3), d = _mm512_unpackhi_ps((__m512)x2, (__m512)x3);
  out[0] = (vf)_mm512_unpacklo_pd((__m512d)a, (__m512d)c);
  out[1] = (vf)_mm512_unpackhi_pd((__m512d)a, (__m512d)c);
  out[2] = (vf)_mm512_unpacklo_pd((__m512d)b, (__m512d)d);
  out[3] = (vf)_mm512_unpackhi_pd((__m512d)b, (__m512d)d);
#elif defined(__AVX2__)
  const __m256 a = _mm256_unpacklo_ps((__m256)x0, (__m256)x1), b = _mm256_unpackhi_ps((__m256)x0, (__m256)x1);
  const __m256 c = _mm256_unpacklo_ps((__m256)x2, (__m256)x3), d = _mm256_unpackhi_ps((__m256)x2, (__m256)x3);
  out[0] = (vf)_mm256_unpacklo_pd((__m256d)a, (__m256d)c);
  out[1] = (vf)_mm256_unpackhi_pd((__m256d)a, (__m256d)c);
  out[2] = (vf)_mm256_unpacklo_pd((__m256d)b, (__m256d)d);
  out[3] = (vf)_mm256_unpackhi_pd((__m256d)b, (__m256d)d);
#elif defined(__SSE2__)
  const __m128 a = _mm_unpacklo_ps((__m128)x0, (__m128)x1), b = _mm_unpackhi_ps((__m128)x0, (__m128)x1);
  const __m128 c = _mm_unpacklo_ps((__m128)x2, (__m128)x3), d = _mm_unpackhi_ps((__m128)x2, (__m128)x3);
  out[0] = (vf)_mm_unpacklo_pd((__m128d)a, (__m128d)c);
  out[1] = (vf)_mm_unpackhi_pd((__m128d)a, (__m128d)c);
  out[2] = (vf)_mm_unpacklo_pd((__m128d)b, (__m128d)d);
  out[3] = (vf)_mm_unpackhi_pd((__m128d)b, (__m128d)d);
#else
  for (int q = 0; q < kLanes / 4; ++q)
    for (int m = 0; m < 4; ++m) {
      out[m][4 * q + 0] = x0[4 * q + m];
      out[m][4 * q + 1] = x1[4 * q + m];
      out[m][4 * q + 2] = x2[4 * q + m];
      out[m][4 * q + 3] = x3[4 * q + m];
    }
#endif
}

// ------------------------------------------------------------------ Box-Muller math
// -2 ln u for normal, positive, finite u (here u in [2^-33, 1]).
// u = 2^e m with m in [sqrt(1/2), sqrt(2)), found by integer arithmetic on the bits; f = m - 1 is
// exact (Sterbenz).  -2 ln u = (e (-2 ln2) - 2f) + f^2 (1 + f P(f)): the leading part is rounded
// once (one fma); P is a degree-7 minimax fit of -2 (log1p(f) - f + f^2/2) / f^3 on
// [sqrt(1/2)-1, sqrt(2)-1] (relative error 6e-9), the factor -2 folded into its coefficients
// (exact); float(-2 ln2) is within 3e-9 relative.  ln 1 = 0 exactly (e = 0, f = 0).
VK_INLINE vf neg2log(vf u) {
  const vi bits = (vi)u;
  const vi e = (bits - 0x3f3504f3) >> 23;  // 0x3f3504f3 = sqrt(1/2): floor(log2(u / sqrt(1/2)))
  const vf f = (vf)((vu)bits - ((vu)e << 23)) - 1.0f;
  vf p = vfma(f, splat(0x1.38b66ep-3f), splat(-0x1.055c10p-2f));
  p = vfma(p, f, splat(0x1.0d8564p-2f));
  p = vfma(p, f, splat(-0x1.22da0ap-2f));
  p = vfma(p, f, splat(0x1.547240p-2f));
  p = vfma(p, f, splat(-0x1.99a008p-2f));
  p = vfma(p, f, splat(0x1.000228p-1f));
  p = vfma(p, f, splat(-0x1.555554p-1f));
  p = vfma(p, f, splat(1.0f));
  const vf lead = vfma(__builtin_convertvector(e, vf), splat(-0x1.62e430p+0f), f * -2.0f);
  return vfma(f * f, p, lead);
}

// sin(2 pi u) and cos(2 pi u) for u in [0, 1] (turns).
// Reduction, exact in float32: q = nearest integer to 4u (quarter turns) via the 1.5*2^23 trick
// (its low mantissa bits are q), r = u - q/4 in [-1/8, 1/8] turns.  Then minimax fits on
// |r| <= 0.12502 (relative errors 3.8e-9 and 6.4e-11):
//   sin(2 pi r) = 2pi_hi r + r (2pi_lo + S3 r^2 + S5 r^4 + S7 r^6)   (2 pi as hi + lo: a float 2 pi
//                 alone would be off by 2.8e-8 relative, half an ulp, for small r),
//   cos(2 pi r) = 1 + C2 r^2 + C4 r^4 + C6 r^6 + C8 r^8,
// and the quadrant q mod 4 swaps / negates them.  No 2*pi*u product is ever rounded.
VK_INLINE void sincos2pi(vf u, vf* sin_out, vf* cos_out) {
  const vf t = u * 4.0f + 0x1.8p23f;     // 4u is exact; the sum rounds 4u to an integer (ties even)
  const vu q = (vu)t;                    // low two bits: q mod 4
  const vf r = u - (t - 0x1.8p23f) * 0.25f;  // exact: q/4 and the difference are representable
  const vf r2 = r * r;
  vf s = vfma(r2, splat(-0x1.2dc7e2p+6f), splat(0x1.466002p+6f));
  s = vfma(s, r2, splat(-0x1.4abbbep+5f));
  s = vfma(s, r2, splat(-0x1.777a5cp-23f));
  s = vfma(r, splat(0x1.921fb6p+2f), s * r);
  vf c = vfma(r2, splat(0x1.d9d4d2p+5f), splat(-0x1.55c5dep+6f));
  c = vfma(c, r2, splat(0x1.03c1dep+6f));
  c = vfma(c, r2, splat(-0x1.3bd3ccp+4f));
  c = vfma(c, r2, splat(1.0f));
  // sin(a + q pi/2): q odd swaps sin and cos; sin is negated for q = 2, 3 and cos for q = 1, 2
  // (the sign bits: bit 1 of q and of q + 1, moved to bit 31).
  const vi odd = (q & 1) != 0;
  const vf sw = odd ? c : s, cw = odd ? s : c;
  *sin_out = (vf)((vu)sw ^ ((q << 30) & 0x80000000u));
  *cos_out = (vf)((vu)cw ^ (((q + 1) << 30) & 0x80000000u));
}

// ------------------------------------------------------------------ scalar, auto-vectorizable
// exp(x) in float32, about 1 ulp.  k = rint(x / ln2) by the 1.5*2^23 trick (no float->int
// conversion), r = x - k ln2 with ln2 split Cody-Waite style (k ln2_hi exact), exp(r) =
// 1 + r + r^2 P(r) (P: degree-4 minimax, relative error 3e-9 on |r| <= ln2/2), times 2^k applied
// as two factors 2^(k/2) 2^(k - k/2), so that k in [-150, 128] stays in the exponent range.
// Out of range the arithmetic yields garbage that the two final selects replace:
// exp(x > 88.7228) = inf, exp(x < -103.972) = 0; NaN fails both compares and stays NaN.
// (Clamping x first instead makes gcc split the vector loop by ranges: 1.5x slower.)
// One template for a float (F = float, its integer lanes uint32_t / int32_t: exp_f32, written so
// that gcc vectorizes loops of it) and a vector (vf, vu, vi: vexp, for kernels that hold
// vectors): the same operations, so vexp is exp_f32 lane by lane, bitwise.
VK_INLINE float madd(float a, float b, float c) {  // a*b + c, fused where the ISA has FMA
#if defined(__FMA__)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}
VK_INLINE vf madd(vf a, vf b, vf c) { return vfma(a, b, c); }

template <class F>
VK_INLINE F exp_t(F x) {
  using U = typename Lanes<F>::U;
  using I = typename Lanes<F>::I;
  const F zero{};  // scalar constants below are splat onto vectors as zero + c (exact)
  const F t = x * 0x1.715476p+0f + 0x1.8p23f;
  const F kf = t - 0x1.8p23f;
  const U k = bit_cast<U>(t) - 0x4b400000u;  // two's complement k
  F r = madd(kf, zero - 0x1.63p-1f, x);
  r = madd(kf, zero + 0x1.bd0106p-13f, r);
  F p = madd(r, zero + 0x1.6a243ap-10f, zero + 0x1.1239e0p-7f);
  p = madd(p, r, zero + 0x1.5558f2p-5f);
  p = madd(p, r, zero + 0x1.555492p-3f);
  p = madd(p, r, zero + 0x1.fffffcp-2f);
  p = madd(p * r, r, r) + 1.0f;
  const U k1 = (U)((I)k >> 1), k2 = k - k1;
  F y = p * bit_cast<F>((k1 + 127u) << 23) * bit_cast<F>((k2 + 127u) << 23);
  y = x > 0x1.62e42ep+6f ? zero + __builtin_inff() : y;
  return x < -0x1.9fe368p+6f ? zero : y;
}
VK_INLINE float exp_f32(float x) { return exp_t(x); }
VK_INLINE vf vexp(vf x) { return exp_t(x); }

// ------------------------------------------------------------------ storage conversions
// Templates over one value (U = uint32_t, F = float) or one vector (U = vu, F = vf): the 16-bit
// values sit in the low half of each 32-bit lane.  Branch-free (selects), so loops vectorize.

// IEEE binary16 -> float32, exact (subnormals renormalized by one exact float subtraction).
template <class F, class U>
VK_INLINE F half_to_float(U h) {
  const U shifted = (h & 0x7fffu) << 13;  // exponent + mantissa
  const U exp = shifted & 0x0f800000u;
  U o = shifted + ((127u - 15u) << 23);
  o = exp == 0x0f800000u ? o + ((128u - 16u) << 23) : o;  // inf / NaN: exponent all ones
  const F sub = bit_cast<F>(o + (1u << 23)) - 0x1p-14f;     // zero / subnormal
  o = exp == 0u ? bit_cast<U>(sub) : o;
  return bit_cast<F>(o | ((h & 0x8000u) << 16));
}

// float32 -> IEEE binary16, round to nearest even; overflow -> inf; NaN -> quiet NaN (sign kept).
template <class U, class F>
VK_INLINE U float_to_half(F x) {
  U f = bit_cast<U>(x);
  const U sign = (f >> 16) & 0x8000u;
  f &= 0x7fffffffu;
  // |x| < 2^-14: the result is subnormal or zero.  Adding 0.5 aligns the 10 mantissa bits at the
  // bottom of the float and the float addition rounds them to nearest even.
  const U sub = bit_cast<U>(bit_cast<F>(f) + 0.5f) - 0x3f000000u;
  // Normal: rebias the exponent, round to nearest even on the 13 dropped bits (a carry may
  // overflow into the exponent, which is right, up to inf).
  const U nrm = (f + ((15u - 127u) << 23) + 0xfffu + ((f >> 13) & 1u)) >> 13;
  U o = f < (113u << 23) ? sub : nrm;
  o = f >= (143u << 23) ? (U{} + 0x7c00u) : o;  // |x| >= 2^16: inf
  o = f > 0x7f800000u ? (U{} + 0x7e00u) : o;    // NaN
  return o | sign;
}

template <class F, class U>
VK_INLINE F bf16_to_float(U b) {
  return bit_cast<F>(b << 16);
}

// float32 -> bfloat16, round to nearest even; NaN keeps its sign and top payload and is made quiet.
template <class U, class F>
VK_INLINE U float_to_bf16(F x) {
  const U u = bit_cast<U>(x);
  const U rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (u & 0x7fffffffu) > 0x7f800000u ? ((u >> 16) | 0x40u) : rounded;
}

}  // namespace
}  // namespace VK_CPU_ISA
}  // namespace cpu
}  // namespace vaekernels

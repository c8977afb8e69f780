// Gaussian-KL arithmetic for the CPU kernels (csrc/cpu/gaussian_kl.cpp), written as scalar
// functions that gcc inlines and auto-vectorizes (no libm calls in the float32 path).
//
// With delta = logvar - prior_logvar, Delta = mu - prior_mu and s = e^(-prior_logvar / 2):
//   KL         = 0.5 * phi(delta) + 0.5 * (Delta s)^2,     phi(x) = e^x - 1 - x >= 0
//   dKL/dmu    = Delta s^2              dKL/dlogvar       = 0.5 expm1(delta)
//   dKL/dpm    = -Delta s^2             dKL/dprior_logvar = -0.5 expm1(delta) - 0.5 (Delta s)^2
//
// Why this form and not the textbook -0.5 (1 + logvar - mu^2 - e^logvar): its terms are of order
// max(e^logvar, 1, |logvar|) while the KL is ~delta^2 / 4 when the posterior has collapsed onto
// the prior, so float32 loses ~|log10(delta^2)| digits (delta ~ 1e-3: nearly all).  phi is
// computed without that cancellation (expm1_parts) and the Delta term is a square of a product,
// so every float32 result is within a few ulp of the exact one (tests/test_gaussian_kl.py).
#pragma once

#include "cpu/common.h"

namespace vaekernels {
namespace cpu {
namespace VK_CPU_ISA {
namespace {

// a*b + c in the compute type, fused where the ISA has FMA (never a libm fma call, which would
// stop the loops from vectorizing).
VK_INLINE float madd_c(float a, float b, float c) { return madd(a, b, c); }
VK_INLINE uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }
VK_INLINE double madd_c(double a, double b, double c) {
#if defined(__FMA__)
  return __builtin_fma(a, b, c);
#else
  return a * b + c;
#endif
}

// phi = e^x - 1 - x (kl_phi, the forward) and em1 = e^x - 1 (kl_em1, the backward) in float32,
// each to a few ulp for every x, also x -> 0 where e^x - 1 - x would lose every digit (max
// relative error, measured against float64 on 2.4e5 points of [-30, 30] and +-[1e-8, 2]: phi
// 6.4e-7, em1 1.5e-7; on 1e5 points of [-87.5, 88.3]: phi 5.2e-7, em1 3.0e-7).
//
// e^x = 2^k e^r with k = rint(x / ln2) (the 1.5*2^23 trick: no float -> int conversion) and
// r = x - k ln2 in [-ln2/2, ln2/2], one fma with ln2 rounded to float32 (below).  On that range
// e^r - 1 - r = r^2 S(r), S by a degree-4 polynomial to 1.3e-7 relative (S >= 0.447).  Then
//   em1 = 2^k (e^r - 1) + (2^k - 1)          one fused rounding; 2^k - 1 is exact for |k| <= 24
//   phi = 2^k r^2 S(r) + (2^k r + (2^k - 1 - x))  no select (kl_phi): for k = 0
//         (|x| <= ln2/2) r = x exactly, the bracket is exactly 0 and phi = r^2 S(r), no cancellation
//         at all; for k != 0 the terms cancel by at most (|2^k e^r| + |1 + x|) / phi <= 12 (at
//         |x| = ln2/2), like em1 - x (measured: 6.4e-7, above)
// x below -87 is taken as -87 (e^x < 2^-125: em1 = -1 in float32 either way, phi = -1 - x, also
// for x = -inf), which keeps k >= -126; k is clamped above at 127 (2^k a normal float): x > 88.38
// then has r up to 0.69 (the polynomial, used beyond its range there, is off by up to 4e-5
// relative; e^x overflows at 88.72 as it must).  NaN propagates; x = +inf gives em1 = inf,
// phi = NaN (inf - inf), like the textbook formula.  All branch-free (selects), so loops of it
// vectorize.  Both kernels are bound by the fma pipes (multiplies and fmas: Zen 4 issues one
// 512-bit one per cycle), 10 (forward) and 11 (backward) per 16 elements (the adds, integer ops
// and loads go to other pipes), so each one saved here is up to ~8% of a kernel.  Zen 5 issues
// two, and there the hot loops (no prior, float32 compute: kl_twice_row, kl_grads_row) run on
// explicit vectors, software-pipelined, with the same operations lane by lane.

// exp_parts in two stages, so that a loop over vectors can reduce the next vector (exp_reduce) while
// it evaluates the polynomial of this one (exp_poly; kl_twice_row).  F: float or vf, the same
// operations either way (a vector is the float function lane by lane, bitwise).
template <class F>
struct ExpParts {
  F r;      // x - k ln2
  F two_k;  // 2^k
  F s;      // S(r) = (e^r - 1 - r) / r^2 (exp_poly)
};

// x: already clamped to >= -87 (or NaN).  Sets r and two_k.
template <class F>
VK_INLINE ExpParts<F> exp_reduce(F x) {
  using I = typename Lanes<F>::I;
  using U = typename Lanes<F>::U;
  const F zero{};  // scalar constants are splat onto vectors as zero + c (exact)
  // The magic constant carries the exponent bias: the bits of x / ln2 + (1.5*2^23 + 127) are
  // kBias + k, whose low 9 bits shifted up by 23 are the exponent field k + 127 of 2^k (one shift,
  // no add).  k >= -126 needs no lower clamp (x >= -87); the upper one is an integer min (gcc
  // makes int min / max of it; float selects here made it split the vector loop by ranges).
  constexpr float kMagic = 0x1.8p23f + 127.0f;  // exact: < 2^24
  constexpr int32_t kBias = 0x4b400000 + 127;   // the bits of kMagic
  I kb = bit_cast<I>(madd(x, zero + 0x1.715476p+0f, zero + kMagic));
  const I hi = I{} + (kBias + 127);
  kb = kb > hi ? hi : kb;
  const F kf = bit_cast<F>(kb) - kMagic;  // k, exactly
  ExpParts<F> e;
  // r in one fma with ln2 rounded to float32 (off by 1.9e-9), not Cody-Waite's two (ln2 in two
  // parts, k ln2_hi exact): r is then off by |k| 1.9e-9, and so is e^x relatively -- < 0.5 ulp
  // for |x| < 20, 2 ulp at x = 88 (em1's max error on [-87.5, 88.3]: 1.1e-7 -> 3.0e-7), exact
  // for k = 0.  Both kernels are fma-pipe bound; the fma saved was 1 of the forward's 13 and the
  // backward's 12 per vector (kernels alone at (4096, 256), 2 threads, medians of 25 interleaved:
  // forward 154 -> 145 us, backward 170 -> 161).
  e.r = madd(kf, zero - 0x1.62e430p-1f, x);
  e.two_k = bit_cast<F>(bit_cast<U>(kb) << 23);  // unsigned: the high bits shift out
  return e;
}

// S(r) = (e^r - 1 - r) / r^2 by a degree-4 polynomial fitted for least max relative error on
// |r| <= ln2/2 (float32 coefficients: 1.3e-7, about 2 ulp of S): two fmas fewer than the
// degree-6 Taylor series it replaces (1.8e-9), 10% off the whole forward and backward.
template <class F>
VK_INLINE F exp_poly(F r) {
  const F zero{};
  F s = madd(r, zero + 0x1.6c69e2p-10f, zero + 0x1.120b1ep-7f);
  s = madd(s, r, zero + 0x1.5555bap-5f);
  s = madd(s, r, zero + 0x1.5554dep-3f);
  return madd(s, r, zero + 0.5f);
}

template <class F>
VK_INLINE ExpParts<F> exp_parts(F x) {
  ExpParts<F> e = exp_reduce(x);
  e.s = exp_poly(e.r);
  return e;
}

// em1 from the parts of e^xc, xc = max(x, -87): e^r - 1 = r + r^2 S(r) in one fma (r dominates),
// then em1 in one more.
template <class F>
VK_INLINE F em1_of(const ExpParts<F>& e) {
  return madd(e.two_k, madd(e.r * e.r, e.s, e.r), e.two_k - 1.0f);
}

VK_INLINE float kl_em1(float x) {
  const float xc = x < -87.0f ? -87.0f : x;  // a select: NaN fails the compare and stays NaN
  return em1_of(exp_parts(xc));
}

// max(x, -87), the clamp of kl_phi's argument (e^x < 2^-125 below: phi = -1 - x either way, and -inf
// becomes finite), as one unsigned min of the bits (the bits of every x < -87, -inf included, are
// above those of -87; of every other x, below) instead of a compare and a blend.  It also clamps a
// NaN whose sign bit is set, but phi's term 2^k - 1 - x still carries that NaN.
VK_INLINE float phi_clamp(float x) { return bit_cast<float>(min_u32(bit_cast<uint32_t>(x), 0xc2ae0000u)); }

// max(x, -87) lane by lane, NaN kept: the vector clamp of both kl_phi's and kl_em1's argument (the
// same value as either float clamp for every non-NaN x), one maxps.  (The integer min of the bits
// feeds the float fma that follows through a domain crossing: in kl_twice_row the maxps made the
// loop 11% faster.)
VK_INLINE vf exp_arg_clamp(vf x) { return vmax(splat(-87.0f), x); }

// phi from the parts of e^xc, xc = phi_clamp(x) (exp_arg_clamp(x) for a vector):
// phi = 2^k r^2 S(r) + (2^k r + (2^k - 1 - x)) with u = 2^k r exact (a power-of-2 scaling; only for
// k <= -125, x < -86, where the ~86 of -1 - x swamps it, can it round) and u r = 2^k r^2 rounded
// once: three multiplies / fmas, one fewer than 2^k (r^2 S) + fma(2^k, r, ...), and one rounding
// fewer.  The forward's loop is 10 fma-pipe operations per vector (forward alone at (4096, 256),
// 2 threads, 40 - 60 interleaved: median 155 -> 154 and 163 -> 158 us, min 131 -> 126 and 153 ->
// 147: near the bound of this arithmetic, ~12 cycles per vector).  For k = 0, r = x exactly, the
// sum in brackets is exactly 0 and phi = r^2 S(r): no cancellation at all; otherwise as accurate
// as em1 - x (x < -87: e^xc ~ 0, phi = -1 - x).
template <class F>
VK_INLINE F phi_of(const ExpParts<F>& e, F x) {
  const F u = e.two_k * e.r;
  return madd(u * e.r, e.s, u + ((e.two_k - 1.0f) - x));
}

VK_INLINE float kl_phi(float x) { return phi_of(exp_parts(phi_clamp(x)), x); }

// float64: the same idea with libm -- expm1 (< 1 ulp) beyond |x| = 0.5, and below the Taylor
// series of e^x - 1 - x to x^15/15!: remainder <= 0.5^16/16! / (1 - 0.5/17) / 0.1065 = 2.7e-17
// relative (0.1065 = phi(-0.5), the least phi on |x| = 0.5), below 2^-53; expm1(x) - x at
// |x| > 0.5 magnifies expm1's error by at most (|expm1 x| + |x|) / phi(x) <= 8.
constexpr double kSeriesMaxD = 0.5;

VK_INLINE void expm1_parts(double x, double* phi, double* em1) {
  constexpr double c[] = {1.0 / 2,           1.0 / 6,           1.0 / 24,           1.0 / 120,
                          1.0 / 720,         1.0 / 5040,        1.0 / 40320,        1.0 / 362880,
                          1.0 / 3628800,     1.0 / 39916800,    1.0 / 479001600,    1.0 / 6227020800,
                          1.0 / 87178291200, 1.0 / 1307674368000};
  double s = c[13];
  for (int i = 12; i >= 0; --i) s = s * x + c[i];
  s *= x * x;
  const double e = __builtin_expm1(x);
  const bool small = __builtin_fabs(x) <= kSeriesMaxD;
  *phi = small ? s : e - x;
  *em1 = small ? x + s : e;
}
VK_INLINE double kl_phi(double x) {
  double phi, em1;
  expm1_parts(x, &phi, &em1);
  return phi;
}
VK_INLINE double kl_em1(double x) {
  double phi, em1;
  expm1_parts(x, &phi, &em1);
  return em1;
}

// s = e^(-plv/2), the prior's inverse standard deviation: -plv/2 is exact, and the Delta term
// below is (Delta s)^2 rather than Delta^2 e^-plv, so neither Delta^2 nor e^-plv overflows alone.
template <class C>
VK_INLINE C prior_scale(C plv) {
  return exp_c(static_cast<C>(-0.5) * plv);
}

// Twice the KL of one element, phi(delta) + (Delta s)^2; pm, plv: the prior (0 when absent:
// kPm / kPlv false, and s = 1).  The row sums add these and halve the sum (exact but for a
// subnormal sum): one multiply per row instead of one per element.  The forward is fma-pipe
// bound, and that multiply (fused into the sum's fma) was 1 of its 12 fma-pipe operations per
// vector (forward alone at (4096, 256), 2 threads, medians of 40 interleaved: 168 -> 164 and
// 168 -> 166 us).  A sum past the float max / 2 overflows where half of it would not; so did
// each term already, (Delta s)^2 past it.
template <bool kPm, bool kPlv, class C>
VK_INLINE C kl_twice(C mu, C logvar, C pm, C plv, C s) {
  const C delta = kPlv ? logvar - plv : logvar;
  C q = kPm ? mu - pm : mu;
  if (kPlv) q *= s;
  const C phi = kl_phi(delta);
  // Two non-negative terms: no cancellation, the sum is as accurate as they are.
  return madd_c(q, q, phi);
}

// finish(v, j, reduce(v)) for v = 0 .. nv - 1 (nv > 0, a multiple of J; j = v % J, a constant in
// each unrolled step), software-pipelined: reduce(v + P) is issued beside finish(v).  For a loop
// whose every step is one long dependency chain (the exponentials here: ~50 cycles), the first
// stage of a later vector then runs in the shadow of this one's tail, instead of the whole chain
// of several vectors waiting in the scheduler at once.  J: a multiple of P.
template <int J, int P, class Reduce, class Finish>
VK_INLINE void pipelined(int64_t nv, const Reduce& reduce, const Finish& finish) {
  static_assert(J % P == 0, "the ring slot of vector v0 + j is j % P");
  using R = decltype(reduce(int64_t{0}));
  R ring[P];  // vector v's first stage in slot v % P
  for (int q = 0; q < P; ++q) ring[q] = reduce(q);
  const auto block = [&](int64_t v0, auto last) {
    for (int j = 0; j < J; ++j) {
      const int q = j % P;
      if (last.value && j + P >= J) {  // the last P vectors: nothing left to reduce
        finish(v0 + j, j, ring[q]);
      } else {
        const R next = reduce(v0 + j + P);
        finish(v0 + j, j, ring[q]);
        ring[q] = next;
      }
    }
  };
  int64_t v0 = 0;
  for (; v0 + J < nv; v0 += J) block(v0, std::false_type{});
  block(v0, std::true_type{});
}

// row_sum of kl_twice over one row of n elements, for the float32 compute type (D = F32, F16,
// BF16): the same lanes and the same operations, so bitwise the same sum, as explicit vectors,
// pipelined: the exponent's reduction (load, clamp, k, r, 2^k) of vector v + 2 beside the
// polynomial and sum of vector v, and the row's fold on the registers.  pm, plv: the prior's
// elements for this row (kPm, kPlv), s: their e^(-plv/2), computed once (with_prior_scales).  The
// auto-vectorized row_sum ran at ~7 cycles a vector where its 10 fma-pipe operations take 5 (Zen
// 5: the integer-min clamp's domain crossing and ~50-cycle chains; the reduction 1 vector ahead
// gained a third as much, 4 ahead spilled on AVX2).  Forward kernel, Zen 5, one thread, old -> new
// (medians of 60 interleaved): AVX-512 (4096, 256) 135 -> 117 us, (1024, 64) 19.5 -> 10.6 us, with
// a [D] prior 20.1 -> 13.7 us; 2 threads (4096, 256) 74 -> 63 us, with a [D] prior 81 -> 73 us;
// AVX2 (4096, 256) 274 -> 225 us; generic (1024, 256) 253 -> 200 us.
template <class D, bool kPm, bool kPlv>
VK_INLINE float kl_twice_row(const typename D::S* mu, const typename D::S* lv, const typename D::S* pm,
                             const typename D::S* plv, const float* s, int64_t n) {
  constexpr int W = kSumLanes<float>, J = W / kLanes;  // row_sum's lanes: J vectors a block
  const int64_t nv = n / W * J;                        // vectors in whole blocks
  vf acc[J] = {};                                      // vector v goes to acc[v % J]
  struct Arg {
    vf delta;  // logvar - prior logvar
    ExpParts<vf> e;
  };
  if (nv > 0) {
    pipelined<J, 2>(
        nv,
        [&](int64_t v) {
          Arg a;
          a.delta = D::vload(lv + v * kLanes);
          if constexpr (kPlv) a.delta -= D::vload(plv + v * kLanes);
          a.e = exp_reduce(exp_arg_clamp(a.delta));
          return a;
        },
        [&](int64_t v, int j, Arg a) {
          a.e.s = exp_poly(a.e.r);
          vf q = D::vload(mu + v * kLanes);
          if constexpr (kPm) q -= D::vload(pm + v * kLanes);
          if constexpr (kPlv) q *= loadu<vf>(s + v * kLanes);
          acc[j] += madd(q, q, phi_of(a.e, a.delta));
        });
  }
  const int64_t i = nv * kLanes;
  if (i < n) {  // the tail as row_sum takes it: a buffer padded with -0, added to the lanes
    alignas(64) float t[W];
    for (int l = 0; l < W; ++l) t[l] = -0.0f;
    for (int l = 0; i + l < n; ++l) {
      const float pml = kPm ? D::load(pm[i + l]) : 0.0f, plvl = kPlv ? D::load(plv[i + l]) : 0.0f;
      const float sl = kPlv ? s[i + l] : 1.0f;
      t[l] = kl_twice<kPm, kPlv>(D::load(mu[i + l]), D::load(lv[i + l]), pml, plvl, sl);
    }
    for (int j = 0; j < J; ++j) acc[j] += loadu<vf>(t + j * kLanes);
  }
  // fold_lanes<W>'s tree on the registers (its steps wider than one register pair lane l of
  // acc[j] with lane l of acc[j + h]): through a stack array, the row's fold reloaded halves of
  // just-stored vectors, and the loop was slower than row_sum's in the kernel.
  for (int h = J / 2; h >= 1; h /= 2)
    for (int j = 0; j < h; ++j) acc[j] += acc[j + h];
  return fold_vector<kLanes>(acc[0], [](const auto& p, const auto& q) { return p + q; });
}

// The gradients of g * KL for one element, g the upstream gradient (already 0 for a dimension
// that free bits clamp); pm, plv, s as for kl_twice.
template <bool kPm, bool kPlv, class C>
VK_INLINE void kl_grads(C g, C mu, C logvar, C pm, C plv, C s, C* gmu, C* glv, C* gpm, C* gplv) {
  const C delta = kPlv ? logvar - plv : logvar;
  C q = kPm ? mu - pm : mu;
  if (!kPlv) s = 1;
  q *= s;
  const C em1 = kl_em1(delta);  // expm1(delta) to a few ulp, also for delta -> 0
  const C half_g = static_cast<C>(0.5) * g;
  *gmu = g * (q * s);  // Delta e^-plv as (Delta s) s: no overflow of e^-plv alone
  *glv = half_g * em1;
  *gpm = -*gmu;
  // -0.5 g (expm1(delta) + (Delta s)^2), the sum in one rounding.  Its two terms may cancel
  // (delta < 0): then the result is accurate relative to their size, not to itself.
  *gplv = -half_g * madd_c(q, q, em1);
}

// kl_grads over n elements of one row with no prior and one upstream value g, for the float32
// compute type (D = F32, F16, BF16): gmu = g mu, glv = (g / 2) expm1(lv), bitwise what kl_grads
// gives, as explicit vectors pipelined like kl_twice_row (lv clamped at -87 by exp_arg_clamp, NaN
// kept).  Backward kernel, Zen 5, one thread, old -> new: AVX-512 (1024, 64) 12.2 -> 10.6 us,
// (4096, 256) the same (~156 us: bound by the 24 MB it moves through L3), AVX2 (256, 256) 15.7 ->
// 14.4 us, (4096, 256) 252 -> 227 us, generic (1024, 256) 220 -> 164 us.
template <class D>
VK_INLINE void kl_grads_row(float g, const typename D::S* mu, const typename D::S* lv, typename D::S* gmu,
                            typename D::S* glv, int64_t n) {
  constexpr int P = 2;
  const int64_t nv = n / (P * kLanes) * P;  // vectors in whole steps
  if (nv > 0) {
    const vf gv = splat(g), half_g = splat(0.5f * g);
    pipelined<P, P>(
        nv, [&](int64_t v) { return exp_reduce(exp_arg_clamp(D::vload(lv + v * kLanes))); },
        [&](int64_t v, int, ExpParts<vf> e) {
          e.s = exp_poly(e.r);
          D::vstore(gmu + v * kLanes, gv * D::vload(mu + v * kLanes));
          D::vstore(glv + v * kLanes, half_g * em1_of(e));
        });
  }
  for (int64_t t = nv * kLanes; t < n; ++t) {
    float a, b, unused_pm, unused_plv;
    kl_grads<false, false>(g, D::load(mu[t]), D::load(lv[t]), 0.0f, 0.0f, 1.0f, &a, &b, &unused_pm, &unused_plv);
    gmu[t] = D::store(a);
    glv[t] = D::store(b);
  }
}

}  // namespace
}  // namespace VK_CPU_ISA
}  // namespace cpu
}  // namespace vaekernels

// Online (streaming-max) log-sum-exp: the one set of rules that every C++ and CUDA kernel of
// vaekernels follows when it reduces log-values (log_mean_exp, iwae_bound).  One header for host
// and device code; the exp/log functions are the caller's (vectorizable exp_f32 on the CPU,
// accurate expf/logf on CUDA), so the rules and the arithmetic stay apart.
//
// A state (m, s) stands for sum_i exp(x_i) = s * exp(m): m is the largest x_i seen, s >= 1 once
// anything was pushed (the largest term counts exactly 1).  Empty: (-inf, 0).
//
// Numerics, case by case (no branch: each rule is a select, so loops over states vectorize):
//  * exp(m - m_new) is never formed when m == m_new: that scale is 1.  So no inf - inf appears
//    when both are -inf (all terms so far are exp(-inf) = 0) or both +inf.
//  * all x_i = -inf: m = -inf and s counts them; the value m + log s = -inf, as it must be.
//    A finite x later rescales that count by exp(-inf - x) = 0: the -inf terms vanish exactly.
//  * some x_i = +inf: m = +inf and the value is +inf (torch.logsumexp agrees).
//  * NaN: m becomes NaN and stays NaN (nan_max), s becomes NaN: the value is NaN.
//  * The normalized weight of a term, exp(x_i - value), is defined as 0 when value = -inf
//    (every term is exp(-inf) = 0, none carries weight), not the NaN of exp(-inf + inf).
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define VK_LSE_INLINE __host__ __device__ __forceinline__
#else
#define VK_LSE_INLINE inline
#endif

namespace vaekernels {
// Internal linkage: csrc/cpu/*.cpp are compiled once per ISA into one module, and an inline
// function with external linkage would be merged across the ISA objects by the linker.
namespace {

// max(a, b) that propagates NaN from either side (fmax would drop it).
template <class T>
VK_LSE_INLINE T nan_max(T a, T b) {
  return (b > a || b != b) ? b : a;
}

// (m, s) <- (m, s) merged with (m2, s2).  Pushing one term x is merging (x, 1).
template <class T, class Exp>
VK_LSE_INLINE void lse_merge(T& m, T& s, T m2, T s2, Exp exp_fn) {
  const T mn = nan_max(m, m2);
  const T a = m == mn ? T(1) : exp_fn(m - mn);
  const T b = m2 == mn ? T(1) : exp_fn(m2 - mn);
  s = s * a + s2 * b;
  m = mn;
}

// log sum_i exp(x_i) of a state: -inf when empty or when every term is -inf.
template <class T, class Log>
VK_LSE_INLINE T lse_value(T m, T s, Log log_fn) {
  return m + log_fn(s);
}

// exp(x - value): the softmax weight of term x in a sum whose log is `value`; 0 when value = -inf.
template <class T, class Exp>
VK_LSE_INLINE T lse_weight(T x, T value, Exp exp_fn) {
  return value == -T(__builtin_huge_val()) ? T(0) : exp_fn(x - value);
}

// ---------------------------------------------------------------- the Renyi / IWAE bound
// Per example, from the log-weights lw_k (k < K) and alpha (Li & Turner 2016):
//   alpha != 1: r_k = (1 - alpha) lw_k,  L = logsumexp_k r_k (a state above),
//               bound = (L - log K) / (1 - alpha),   weight_k = exp(r_k - L)
//   alpha == 1: bound = mean_k lw_k (the limit, the ELBO),  weight_k = 1 / K
// An example whose bound is -inf gets weight 0 everywhere (so its gradients are 0, not NaN).
struct RenyiBound {
  bool elbo;         // alpha == 1
  double one_minus;  // 1 - alpha
  double log_k;      // log K
  double inv_k;      // 1 / K
};

inline RenyiBound make_renyi(double alpha, int64_t k) {
  return RenyiBound{alpha == 1.0, 1.0 - alpha, log(static_cast<double>(k)), 1.0 / static_cast<double>(k)};
}

template <class T>
VK_LSE_INLINE T renyi_value(const RenyiBound& rb, T lse_or_sum) {
  // elbo: lse_or_sum is sum_k lw_k; otherwise the logsumexp L of r_k.
  return rb.elbo ? lse_or_sum * T(rb.inv_k) : (lse_or_sum - T(rb.log_k)) / T(rb.one_minus);
}

// weight_k given r_k, the example's bound and L (r and L unused for alpha == 1).  r must be the
// very value (1 - alpha) lw_k rounded once that went into L, kept in memory or a variable:
// forming (1 - alpha) lw_k - L here let compilers contract it into one fma with the unrounded
// product (gcc on the CPU, nvcc by default), off from L's r by up to half an ulp of r (512 at
// |r| = 1e10), which un-normalized the weights (K = 1: e^512 = inf instead of 1).  Selects, not
// branches, so that a loop over weights vectorizes.
template <class T, class Exp>
VK_LSE_INLINE T renyi_weight(const RenyiBound& rb, T r, T bound, T lse, Exp exp_fn) {
  const T w = rb.elbo ? T(rb.inv_k) : exp_fn(r - lse);
  return bound == -T(__builtin_huge_val()) ? T(0) : w;
}

}  // namespace
}  // namespace vaekernels

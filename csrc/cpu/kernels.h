// The CPU kernels of vaekernels._C.  Every csrc/cpu/*.cpp is compiled once per instruction set,
// with -DVK_CPU_ISA=<name>, into namespace vaekernels::cpu::<name>; python/bind_cpu.cpp picks one
// set at import (the widest the CPU runs, or VAEKERNELS_CPU_ISA).  Pointers are raw host pointers
// to contiguous arrays; all argument checks happen before the call (Python, then the binding).
#pragma once

#include <stdint.h>

// clang-format off
#define VK_CPU_KERNEL_DECLS                                                                      \
  /* out[i] = Philox4x32-10(counters[i], keys[i]); counters, out: uint32[n][4], keys: uint32[n][2] */ \
  void philox(const uint32_t* counters, const uint32_t* keys, uint32_t* out, int64_t n);         \
  /* out[i] = the four words of group first_group + i of the stream keyed by seed: uint32[n][4] */ \
  void philox_fill(uint64_t seed, uint64_t first_group, uint32_t* out, int64_t n_groups);        \
  /* z[j, i] = mu[i] + exp(logvar[i] / 2) * eps(seed, j*n + i); mu, logvar: [n], z: [k, n],      \
     all of dtype (vaekernels/dtype.h); num_threads <= 0: the OpenMP default */                 \
  void reparameterize_fwd(const void* mu, const void* logvar, uint64_t seed, void* z, int64_t n, \
                          int64_t k, int dtype, int num_threads);                                \
  /* grad_mu[i] = sum_j grad_z[j, i];                                                            \
     grad_logvar[i] = exp(logvar[i] / 2) / 2 * sum_j grad_z[j, i] * eps(seed, j*n + i);          \
     z, mu: null, or the forward's z [k, n] and mu [n]: eps is then read back from z where that   \
     is exact enough (reparameterize.cpp, kZBlock; float32 / float64) */                          \
  void reparameterize_bwd(const void* grad_z, const void* logvar, const void* z, const void* mu, \
                          uint64_t seed, void* grad_mu, void* grad_logvar, int64_t n, int64_t k, \
                          int dtype, int num_threads);                                           \
  /* Gaussian KL (gaussian_kl.cpp).  mu, logvar: [n, d]; prior_mu, prior_logvar: [p, d] or null   \
     (0), row r uses prior row r % p; all of dtype.  out, col, grad: the compute type (float32,    \
     float64 for float64).  reduction 0: out [n, d] = KL; 1: out [n] = sum over d; 2: out [] =    \
     sum; 3: out [] = sum / n.  free_bits > 0: col [d] gets the column means of KL and a column    \
     whose mean is below free_bits is that constant (no gradient). */                            \
  void gaussian_kl_fwd(const void* mu, const void* logvar, const void* prior_mu,                  \
                       const void* prior_logvar, void* out, void* col, int64_t n, int64_t d,      \
                       int64_t p, int reduction, double free_bits, int dtype, int num_threads);   \
  /* grad: shaped as the forward's out; grad_mu, grad_logvar: [n, d]; grad_prior_*: [p, d], null  \
     when that prior is; col: the forward's column means (read when free_bits > 0) */            \
  void gaussian_kl_bwd(const void* grad, const void* mu, const void* logvar, const void* prior_mu, \
                       const void* prior_logvar, const void* col, void* grad_mu, void* grad_logvar, \
                       void* grad_prior_mu, void* grad_prior_logvar, int64_t n, int64_t d,        \
                       int64_t p, int reduction, double free_bits, int dtype, int num_threads);  \
  /* IWAE / Renyi bound (iwae_bound.cpp).  z: [k, b, d]; mu, logvar: [b, d]; prior_mu,            \
     prior_logvar: null (0) or rows of d with row stride 0 ([d]) or d ([b, d]); all of dtype.      \
     log_px_z, weights: [k, b] and bound: [b] in the compute type (float32, float64 for float64).  \
     bound = 1/(1-alpha) (logsumexp_k (1-alpha) log w_k - log k) (alpha == 1: mean_k log w_k);     \
     weights = the bound's derivatives by log w_k (0 for an example whose bound is -inf) */        \
  void iwae_bound_fwd(const void* log_px_z, const void* z, const void* mu, const void* logvar,    \
                      const void* prior_mu, int64_t prior_mu_stride, const void* prior_logvar,     \
                      int64_t prior_logvar_stride, void* bound, void* weights, int64_t k,          \
                      int64_t b, int64_t d, double alpha, int dtype, int num_threads);             \
  /* d >= 1.  grad: [b], grad_log_px_z: [k, b] in the compute type; grad_z: [k, b, d]; grad_mu,  \
     grad_logvar: [b, d] or null (not computed: STL); grad_prior_*: the prior's shape, or null */  \
  void iwae_bound_bwd(const void* grad, const void* weights, const void* z, const void* mu,       \
                      const void* logvar, const void* prior_mu, int64_t prior_mu_stride,           \
                      const void* prior_logvar, int64_t prior_logvar_stride, void* grad_log_px_z,  \
                      void* grad_z, void* grad_mu, void* grad_logvar, void* grad_prior_mu,         \
                      void* grad_prior_logvar, int64_t k, int64_t b, int64_t d, int dtype,         \
                      int num_threads);                                                            \
  /* Diagonal Gaussian log-density (gaussian_log_prob.cpp): z: [s, n, d], mu, logvar: [n, d] of    \
     dtype; out: [s, n] in the compute type, -1/2 sum_d (log 2pi + logvar + (z-mu)^2 e^-logvar) */ \
  void gaussian_log_prob_fwd(const void* z, const void* mu, const void* logvar, void* out,        \
                             int64_t s, int64_t n, int64_t d, int dtype, int num_threads);         \
  /* grad: [s, n] in the compute type -> grad_z: [s, n, d], grad_mu, grad_logvar: [n, d] */       \
  void gaussian_log_prob_bwd(const void* grad, const void* z, const void* mu, const void* logvar, \
                             void* grad_z, void* grad_mu, void* grad_logvar, int64_t s, int64_t n, \
                             int64_t d, int dtype, int num_threads);                               \
  /* log-mean-exp (log_mean_exp.cpp): x: [outer, n, inner] of dtype -> out: [outer, inner] in the \
     compute type, log (1/n) sum_j exp(x[o, j, i]) */                                              \
  void log_mean_exp_fwd(const void* x, void* out, int64_t outer, int64_t n, int64_t inner,        \
                        int dtype, int num_threads);                                               \
  /* grad, out: [outer, inner] (compute type) -> grad_x = grad * exp(x - out - log n), 0 where     \
     out = -inf */                                                                                 \
  void log_mean_exp_bwd(const void* grad, const void* x, const void* out, void* grad_x,           \
                        int64_t outer, int64_t n, int64_t inner, int dtype, int num_threads);
// clang-format on

namespace vaekernels {
namespace cpu {
// Outputs of at least this many bytes in all are written with non-temporal stores (common.h,
// streams()): reparameterize's z, the grad_z of gaussian_log_prob and iwae_bound.  build_info()
// reports it, so the tests can reach those paths.
constexpr int64_t kStreamMinBytes = int64_t{32} << 20;
namespace generic {
VK_CPU_KERNEL_DECLS
}
#if defined(__x86_64__)
namespace avx2 {
VK_CPU_KERNEL_DECLS
}
namespace avx512 {
VK_CPU_KERNEL_DECLS
}
#endif
}  // namespace cpu
}  // namespace vaekernels

#undef VK_CPU_KERNEL_DECLS

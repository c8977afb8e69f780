// Host-side launchers of the vaekernels CUDA kernels (csrc/cuda/*.cu).
//
// Plain C++: no CUDA types, so python/bind_cuda.cpp is compiled by the host compiler alone.
// Pointers are device pointers; `stream` is a cudaStream_t passed as void* (0 = the legacy
// default stream, as torch.cuda.current_stream().cuda_stream gives); `device` is the CUDA
// device index the pointers and the stream belong to.  The launchers make `device` current for
// the call and restore the caller's device.  Errors (no device, no driver, a bad launch, an
// earlier sticky error) throw std::runtime_error with the CUDA error string; an unsupported
// dtype code throws std::invalid_argument.  Inputs are not validated beyond that: the Python
// layer checks shapes, dtypes, devices and contiguity before calling.
#pragma once

#include <stdint.h>

namespace vaekernels {

// out[i] = philox4x32_10(counter = counters[i][0..3], key = keys[i][0..1]) for i < n.
// counters: uint32[n][4], keys: uint32[n][2], out: uint32[n][4].  For known-answer tests.
void philox_cuda(const uint32_t* counters, const uint32_t* keys, uint32_t* out, int64_t n,
                 void* stream, int device);

// out[i] = philox_group(seed, first_group + i) for i < n_groups; out: uint32[n_groups][4].
void philox_fill_cuda(uint64_t seed, uint64_t first_group, uint32_t* out, int64_t n_groups,
                      void* stream, int device);

// z[j, i] = mu[i] + exp(0.5 logvar[i]) * eps(seed, e = j*n + i),  j < k, i < n (float32 math).
// mu, logvar: [n] contiguous; z: [k, n] contiguous; all of `dtype` (0 f32, 1 f16, 2 bf16).
// seed: device address of one int64 (the Philox key), read by the kernel.
// Launches nothing when k*n == 0.
void reparameterize_fwd_cuda(const void* mu, const void* logvar, const int64_t* seed, void* z,
                             int64_t n, int64_t k, int dtype, void* stream, int device);

// grad_mu[i]     = sum_j grad_z[j, i]
// grad_logvar[i] = 0.5 exp(0.5 logvar[i]) * sum_j grad_z[j, i] * eps(seed, j*n + i)
// eps is regenerated from the seed; sums in float32 in a fixed order (run-to-run deterministic,
// and independent of the GPU model).  grad_z: [k, n]; logvar, grad_mu, grad_logvar: [n].
// n == 0 does nothing; k == 0 writes zeros (a memset, no kernel).
void reparameterize_bwd_cuda(const void* grad_z, const void* logvar, const int64_t* seed,
                             void* grad_mu, void* grad_logvar, int64_t n, int64_t k, int dtype,
                             void* stream, int device);

// IWAE / Renyi bound (iwae_bound.cu).  z: [k, b, d]; mu, logvar: [b, d]; prior_mu, prior_logvar:
// null (0) or rows of d with row stride 0 ([d]) or d ([b, d]); all of `dtype`.  log_px_z, weights:
// [k, b] and bound: [b] float32.  bound = 1/(1-alpha) (logsumexp_k (1-alpha) log w_k - log k)
// (alpha == 1: mean_k log w_k); weights = its derivatives by log w_k (0 where the bound is -inf).
void iwae_bound_fwd_cuda(const float* log_px_z, const void* z, const void* mu, const void* logvar,
                         const void* prior_mu, int64_t prior_mu_stride, const void* prior_logvar,
                         int64_t prior_logvar_stride, float* bound, float* weights, int64_t k, int64_t b,
                         int64_t d, double alpha, int dtype, void* stream, int device);

// Its gradients from grad [b] (float32): grad_log_px_z [k, b] float32, grad_z [k, b, d]; grad_mu,
// grad_logvar [b, d] or null (not computed: STL); grad_prior_* the prior's shape, or null.  d == 0
// does nothing (the caller writes grad_log_px_z = grad * weights).
void iwae_bound_bwd_cuda(const float* grad, const float* weights, const void* z, const void* mu,
                         const void* logvar, const void* prior_mu, int64_t prior_mu_stride,
                         const void* prior_logvar, int64_t prior_logvar_stride, float* grad_log_px_z,
                         void* grad_z, void* grad_mu, void* grad_logvar, void* grad_prior_mu,
                         void* grad_prior_logvar, int64_t k, int64_t b, int64_t d, int dtype, void* stream,
                         int device);

// Diagonal Gaussian log-density (gaussian_log_prob.cu): z [s, n, d], mu, logvar [n, d] of `dtype`
// -> out [s, n] float32 = -1/2 sum_d (log 2pi + logvar + (z - mu)^2 e^-logvar).
void gaussian_log_prob_fwd_cuda(const void* z, const void* mu, const void* logvar, float* out, int64_t s,
                                int64_t n, int64_t d, int dtype, void* stream, int device);

// Its gradients from grad [s, n] (float32): grad_z [s, n, d], grad_mu, grad_logvar [n, d].  Empty
// sizes do nothing (the caller writes the zero gradients).
void gaussian_log_prob_bwd_cuda(const float* grad, const void* z, const void* mu, const void* logvar,
                                void* grad_z, void* grad_mu, void* grad_logvar, int64_t s, int64_t n, int64_t d,
                                int dtype, void* stream, int device);

// log-mean-exp (log_mean_exp.cu): x [outer, n, inner] of `dtype` -> out [outer, inner] float32 =
// log (1/n) sum_j exp(x[o, j, i]).
void log_mean_exp_fwd_cuda(const void* x, float* out, int64_t outer, int64_t n, int64_t inner, int dtype,
                           void* stream, int device);

// grad_x = grad * exp(x - out - log n) (0 where out = -inf); grad, out: [outer, inner] float32.
void log_mean_exp_bwd_cuda(const float* grad, const void* x, const float* out, void* grad_x, int64_t outer,
                           int64_t n, int64_t inner, int dtype, void* stream, int device);

// Gaussian KL (gaussian_kl.cu).  mu, logvar: [n, d]; prior_mu, prior_logvar: [p, d] or null (0),
// example r uses prior row r % p; all of `dtype`.  KL[r, c] = 0.5 (e^delta - 1 - delta)
// + 0.5 (mu - pm)^2 e^-plv with delta = logvar - plv, in float32.  reduction 0: out [n, d] = KL;
// 1: out [n] = row sums; 2: out [] = total; 3: out [] = total / n.  free_bits > 0: col [d] gets the
// column means of KL and a column whose mean is below free_bits is that constant (else col is
// unused).  Deterministic (fixed summation orders); scratch from cudaMallocAsync on the stream.
void gaussian_kl_fwd_cuda(const void* mu, const void* logvar, const void* prior_mu, const void* prior_logvar,
                          float* out, float* col, int64_t n, int64_t d, int64_t p, int reduction, double free_bits,
                          int dtype, void* stream, int device);

// Its gradients: grad (float32, shaped as out) -> grad_mu, grad_logvar [n, d] and grad_prior_mu,
// grad_prior_logvar [p, d] (null when that prior is), all of `dtype`; col: the forward's column
// means (read when free_bits > 0; a clamped column passes no gradient).
void gaussian_kl_bwd_cuda(const float* grad, const void* mu, const void* logvar, const void* prior_mu,
                          const void* prior_logvar, const float* col, void* grad_mu, void* grad_logvar,
                          void* grad_prior_mu, void* grad_prior_logvar, int64_t n, int64_t d, int64_t p, int reduction,
                          double free_bits, int dtype, void* stream, int device);

// cudaGetDeviceCount, or 0 (no exception) when there is no device or no usable driver.
int cuda_device_count();

// CUDART_VERSION of the toolkit the kernels were compiled with (e.g. 13000).
int cuda_compiled_version();

}  // namespace vaekernels

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

// cudaGetDeviceCount, or 0 (no exception) when there is no device or no usable driver.
int cuda_device_count();

// CUDART_VERSION of the toolkit the kernels were compiled with (e.g. 13000).
int cuda_compiled_version();

}  // namespace vaekernels

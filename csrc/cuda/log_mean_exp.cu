// log-mean-exp on CUDA: out[o, i] = log (1/n) sum_j exp(x[o, j, i]), and its gradient.
//
//   x: [O, n, I]; out, grad: [O, I] float32.
//   forward   online max-shifted logsumexp (vaekernels/logsumexp.h), minus log n
//   backward  grad_x[o, j, i] = grad[o, i] exp(x[o, j, i] - out[o, i] - log n)   (0 where out = -inf)
//
// Forward, I = 1 (rows contiguous): a warp per row, lane l pushes j = l, l + 32, ... into its state
// and a butterfly warp_lse merges the 32 states.  I > 1: a thread per column (o, i), walking j
// (coalesced across i).  Both orders depend on the shapes only.  Reads x once, writes O I floats.
// Backward: elementwise, grid-stride.  Reads x, writes grad_x (the [O, I] reads hit cache).
// Not split over n: few rows (or columns) with a long n under-fill the GPU.
#include <algorithm>
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/reduce.cuh"

namespace vaekernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
log_mean_exp_rows_kernel(const T* __restrict__ x, float* __restrict__ out, int64_t rows, int64_t n, float log_n) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  for (int64_t o = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5); o < rows; o += warps) {
    const T* row = x + o * n;
    float m = -INFINITY, s = 0.0f;
    for (int64_t j = lane; j < n; j += 32) lse_merge(m, s, load_scalar(row + j), 1.0f, ExpF{});
    warp_lse(m, s);
    if (lane == 0) out[o] = lse_value(m, s, LogF{}) - log_n;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
log_mean_exp_cols_kernel(const T* __restrict__ x, float* __restrict__ out, int64_t outer, int64_t n, int64_t inner,
                         float log_n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < outer * inner; t += stride) {
    const int64_t o = t / inner, i = t % inner;
    const T* col = x + o * n * inner + i;
    float m = -INFINITY, s = 0.0f;
    for (int64_t j = 0; j < n; ++j) lse_merge(m, s, load_scalar(col + j * inner), 1.0f, ExpF{});
    out[t] = lse_value(m, s, LogF{}) - log_n;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
log_mean_exp_bwd_kernel(const float* __restrict__ grad, const T* __restrict__ x, const float* __restrict__ out,
                        T* __restrict__ grad_x, int64_t total, int64_t n, int64_t inner, float log_n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total; e += stride) {
    const int64_t oi = (e / (n * inner)) * inner + e % inner;  // (o, i) of element e
    store_scalar(grad_x + e, grad[oi] * lse_weight(load_scalar(x + e), out[oi] + log_n, ExpF{}));
  }
}

unsigned blocks_for(int64_t threads, int device) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>(ceil_div64(threads, kThreads), static_cast<int64_t>(sm_count(device)) * 16)));
}

}  // namespace
}  // namespace cuda

void log_mean_exp_fwd_cuda(const void* x, float* out, int64_t outer, int64_t n, int64_t inner, int dtype, void* stream,
                           int device) {
  cuda::dispatch_dtype("log_mean_exp_fwd", dtype, [&](auto tag) {
    using T = decltype(tag);
    if (outer <= 0 || n <= 0 || inner <= 0) return;
    cuda::DeviceGuard guard(device);
    (void)cudaGetLastError();
    const T* xt = static_cast<const T*>(x);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    const float log_n = static_cast<float>(std::log(static_cast<double>(n)));
    if (inner == 1) {
      cuda::log_mean_exp_rows_kernel<T><<<cuda::blocks_for(outer * 32, device), cuda::kThreads, 0, s>>>(xt, out, outer,
                                                                                                      n, log_n);
      VK_CUDA_CHECK_LAUNCH("log_mean_exp_rows_kernel");
    } else {
      cuda::log_mean_exp_cols_kernel<T><<<cuda::blocks_for(outer * inner, device), cuda::kThreads, 0, s>>>(
          xt, out, outer, n, inner, log_n);
      VK_CUDA_CHECK_LAUNCH("log_mean_exp_cols_kernel");
    }
  });
}

void log_mean_exp_bwd_cuda(const float* grad, const void* x, const float* out, void* grad_x, int64_t outer, int64_t n,
                           int64_t inner, int dtype, void* stream, int device) {
  cuda::dispatch_dtype("log_mean_exp_bwd", dtype, [&](auto tag) {
    using T = decltype(tag);
    if (outer <= 0 || n <= 0 || inner <= 0) return;
    cuda::DeviceGuard guard(device);
    (void)cudaGetLastError();
    const int64_t total = outer * n * inner;
    const float log_n = static_cast<float>(std::log(static_cast<double>(n)));
    cuda::log_mean_exp_bwd_kernel<T><<<cuda::blocks_for(total, device), cuda::kThreads, 0,
                                       static_cast<cudaStream_t>(stream)>>>(grad, static_cast<const T*>(x), out,
                                                                            static_cast<T*>(grad_x), total, n, inner,
                                                                            log_n);
    VK_CUDA_CHECK_LAUNCH("log_mean_exp_bwd_kernel");
  });
}

}  // namespace vaekernels

// The diagonal Gaussian log-density on CUDA, summed over the last dimension, and its gradient.
//
//   out[s, n]      = -1/2 sum_d (log 2 pi + lv[n, d] + (z[s, n, d] - mu[n, d])^2 e^-lv[n, d])
//   grad_z[s, n]   = -c u iv               (c = grad[s, n], u = z - mu, iv = e^-lv)
//   grad_mu[n]     = iv sum_s c u           grad_logvar[n] = -1/2 (sum_s c - iv sum_s c u^2)
//   z: [S, N, D]; mu, logvar: [N, D] (broadcast over S); out, grad: [S, N] float32.
//
// Forward: block (n, y) takes example n and the y-th chunk of the samples; it stages mu and e^-lv
// of example n in shared memory (D <= kMaxStagedD; else reads global memory and recomputes the
// exp), then warp w takes rows s = w, w + 8, ... of its chunk: 16-byte loads, a butterfly
// warp_sum.  Reads S N D elements of z once; writes S N floats.
// Backward: a thread per (example, 16-byte chunk of D) and chunk y of the samples, looping over
// its samples in order; with more than one sample chunk, float32 partials [Y, N, D] are summed
// over y by sum_rows_kernel.  The chunking depends on (S, N, D) only: bitwise reproducible.
// Reads z and writes dz (2 S N D elements) plus the [N, D] arrays.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/reduce.cuh"

namespace vaekernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxStageBytes = 48 * 1024;
constexpr float kLog2Pi = 1.8378770664093453f;
constexpr int64_t kTargetBlocks = 2048;    // forward: blocks to aim for (about 8 per SM on an H100)
constexpr int64_t kTargetThreads = 1 << 18;  // backward: threads to aim for (about one H100 wave)
constexpr int64_t kMinRowsPerChunk = 8;    // fewer samples per chunk cost more than they save

template <typename T, int VEC, bool kStaged>
__global__ void __launch_bounds__(kThreads)
gaussian_log_prob_fwd_kernel(const T* __restrict__ z, const T* __restrict__ mu, const T* __restrict__ logvar,
                             float* __restrict__ out, int64_t S, int64_t N, int64_t D, int64_t chunk) {
  extern __shared__ float staged[];  // kStaged: mu [D], iv [D]
  __shared__ float scratch[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t s0 = static_cast<int64_t>(blockIdx.y) * chunk, s1 = s0 + chunk < S ? s0 + chunk : S;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const T* mu_n = mu + n * D;
    const T* lv_n = logvar + n * D;
    float part = 0.0f;  // sum_d (log 2 pi + lv)
    for (int64_t d = threadIdx.x; d < D; d += kThreads) {
      const float lv = load_scalar(lv_n + d);
      part += kLog2Pi + lv;
      if constexpr (kStaged) {
        staged[d] = load_scalar(mu_n + d);
        staged[D + d] = expf(-lv);  // e^-lv once per example and chunk, not per sample
      }
    }
    const float half_c = 0.5f * block_sum(part, scratch);  // its barriers also publish `staged`
    for (int64_t s = s0 + warp; s < s1; s += kWarps) {
      const int64_t row = s * N + n;
      const T* zr = z + row * D;
      float acc = 0.0f;
      for (int64_t d0 = static_cast<int64_t>(lane) * VEC; d0 < D; d0 += 32 * VEC) {
        float x[VEC];
        load_n<T, VEC>(zr + d0, x);
#pragma unroll
        for (int q = 0; q < VEC; ++q) {
          const int64_t d = d0 + q;
          const float m = kStaged ? staged[d] : load_scalar(mu_n + d);
          const float iv = kStaged ? staged[D + d] : expf(-load_scalar(lv_n + d));
          const float u = x[q] - m;
          acc += u * u * iv;
        }
      }
      acc = warp_sum(acc);
      if (lane == 0) out[row] = -half_c - 0.5f * acc;
    }
    __syncthreads();  // staged is reused by the next example
  }
}

// part_mu / part_lv: null when there is one sample chunk (the gradients are written directly),
// else float32 [gridDim.y, N, D] partial sums of this chunk's samples.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
gaussian_log_prob_bwd_kernel(const float* __restrict__ grad, const T* __restrict__ z, const T* __restrict__ mu,
                             const T* __restrict__ logvar, T* __restrict__ grad_z, T* __restrict__ grad_mu,
                             T* __restrict__ grad_logvar, float* __restrict__ part_mu, float* __restrict__ part_lv,
                             int64_t S, int64_t N, int64_t D, int64_t chunk, int tpe) {
  const int64_t chunks = D / VEC;
  const int epb = kThreads / tpe;
  const int c0 = static_cast<int>(threadIdx.x) % tpe;
  const int64_t s0 = static_cast<int64_t>(blockIdx.y) * chunk, s1 = s0 + chunk < S ? s0 + chunk : S;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * epb + threadIdx.x / tpe; n < N;
       n += static_cast<int64_t>(gridDim.x) * epb) {
    for (int64_t c = c0; c < chunks; c += tpe) {
      const int64_t e = n * D + c * VEC;
      float m[VEC], iv[VEC];
      load_n<T, VEC>(mu + e, m);
      load_n<T, VEC>(logvar + e, iv);
#pragma unroll
      for (int q = 0; q < VEC; ++q) iv[q] = expf(-iv[q]);
      float a1[VEC] = {}, a2[VEC] = {};  // sums over the chunk's samples of c u, c u^2
      float csum = 0.0f;
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t row = s * N + n;
        float x[VEC], dz[VEC];
        load_n<T, VEC>(z + row * D + c * VEC, x);
        const float cc = grad[row];
        csum += cc;
#pragma unroll
        for (int q = 0; q < VEC; ++q) {
          const float u = x[q] - m[q], cu = cc * u;
          dz[q] = -cu * iv[q];
          a1[q] += cu;
          a2[q] += cu * u;
        }
        store_n<T, VEC>(grad_z + row * D + c * VEC, dz);
      }
      float gm[VEC], gl[VEC];
#pragma unroll
      for (int q = 0; q < VEC; ++q) gm[q] = iv[q] * a1[q], gl[q] = -0.5f * (csum - iv[q] * a2[q]);
      if (part_mu != nullptr) {
        const int64_t p = static_cast<int64_t>(blockIdx.y) * N * D + e;
        store_n<float, VEC>(part_mu + p, gm);
        store_n<float, VEC>(part_lv + p, gl);
      } else {
        store_n<T, VEC>(grad_mu + e, gm);
        store_n<T, VEC>(grad_logvar + e, gl);
      }
    }
  }
}

// Sample chunks: split S until there are about `target` work items of `per_chunk` each, keeping at
// least kMinRowsPerChunk samples per chunk and at most 65535 chunks (gridDim.y).  A function of the
// shapes only.
int64_t sample_chunk(int64_t S, int64_t per_chunk, int64_t target) {
  const int64_t want = std::clamp<int64_t>(ceil_div64(target, std::max<int64_t>(per_chunk, 1)), 1, 65535);
  const int64_t chunks = std::max<int64_t>(1, std::min(want, ceil_div64(S, kMinRowsPerChunk)));
  return ceil_div64(S, chunks);
}

int64_t capped(int64_t items, int device) {
  return std::max<int64_t>(1, std::min<int64_t>(items, static_cast<int64_t>(sm_count(device)) * 32));
}

template <typename T, int VEC>
void launch_fwd(const T* z, const T* mu, const T* logvar, float* out, int64_t S, int64_t N, int64_t D,
                cudaStream_t stream, int device) {
  const int64_t chunk = sample_chunk(S, N, kTargetBlocks);
  const dim3 grid(static_cast<unsigned>(capped(N, device)), static_cast<unsigned>(ceil_div64(S, chunk)));
  const int64_t staged_bytes = 2 * D * static_cast<int64_t>(sizeof(float));
  if (staged_bytes <= kMaxStageBytes)
    gaussian_log_prob_fwd_kernel<T, VEC, true><<<grid, kThreads, static_cast<size_t>(staged_bytes), stream>>>(
        z, mu, logvar, out, S, N, D, chunk);
  else
    gaussian_log_prob_fwd_kernel<T, VEC, false><<<grid, kThreads, 0, stream>>>(z, mu, logvar, out, S, N, D, chunk);
  VK_CUDA_CHECK_LAUNCH("gaussian_log_prob_fwd_kernel");
}

template <typename T, int VEC>
void launch_bwd(const float* grad, const T* z, const T* mu, const T* logvar, T* grad_z, T* grad_mu, T* grad_logvar,
                int64_t S, int64_t N, int64_t D, cudaStream_t stream, int device) {
  const int64_t chunks = D / VEC;
  int tpe = 1;  // threads per example: a power of two >= chunks, at most kThreads
  while (tpe < chunks && tpe < kThreads) tpe *= 2;
  const int64_t chunk = sample_chunk(S, N * tpe, kTargetThreads);
  const int64_t ysplit = ceil_div64(S, chunk);
  const size_t part_bytes = ysplit > 1 ? static_cast<size_t>(ysplit * N * D) * sizeof(float) : 0;
  StreamBuffer part_mu(part_bytes, stream), part_lv(part_bytes, stream);
  const dim3 grid(static_cast<unsigned>(capped(ceil_div64(N, kThreads / tpe), device)), static_cast<unsigned>(ysplit));
  gaussian_log_prob_bwd_kernel<T, VEC><<<grid, kThreads, 0, stream>>>(grad, z, mu, logvar, grad_z, grad_mu,
                                                                     grad_logvar, part_mu.get(), part_lv.get(), S, N,
                                                                     D, chunk, tpe);
  VK_CUDA_CHECK_LAUNCH("gaussian_log_prob_bwd_kernel");
  if (ysplit > 1) {
    launch_sum_rows(part_mu.get(), ysplit, N * D, grad_mu, stream);
    launch_sum_rows(part_lv.get(), ysplit, N * D, grad_logvar, stream);
  }
}

}  // namespace
}  // namespace cuda

void gaussian_log_prob_fwd_cuda(const void* z, const void* mu, const void* logvar, float* out, int64_t s, int64_t n,
                                int64_t d, int dtype, void* stream, int device) {
  cuda::dispatch_dtype("gaussian_log_prob_fwd", dtype, [&](auto tag) {
    using T = decltype(tag);
    if (s <= 0 || n <= 0 || d < 0) return;
    cuda::DeviceGuard guard(device);
    (void)cudaGetLastError();
    const T* zt = static_cast<const T*>(z);
    const T* mt = static_cast<const T*>(mu);
    const T* lt = static_cast<const T*>(logvar);
    const cudaStream_t st = static_cast<cudaStream_t>(stream);
    if (cuda::vec_width<T>(d, {z}) > 1) cuda::launch_fwd<T, 16 / sizeof(T)>(zt, mt, lt, out, s, n, d, st, device);
    else cuda::launch_fwd<T, 1>(zt, mt, lt, out, s, n, d, st, device);
  });
}

void gaussian_log_prob_bwd_cuda(const float* grad, const void* z, const void* mu, const void* logvar, void* grad_z,
                                void* grad_mu, void* grad_logvar, int64_t s, int64_t n, int64_t d, int dtype,
                                void* stream, int device) {
  cuda::dispatch_dtype("gaussian_log_prob_bwd", dtype, [&](auto tag) {
    using T = decltype(tag);
    if (s <= 0 || n <= 0 || d <= 0) return;  // empty: the caller writes the zero gradients
    cuda::DeviceGuard guard(device);
    (void)cudaGetLastError();
    const T* zt = static_cast<const T*>(z);
    const T* mt = static_cast<const T*>(mu);
    const T* lt = static_cast<const T*>(logvar);
    T* gz = static_cast<T*>(grad_z);
    T* gm = static_cast<T*>(grad_mu);
    T* gl = static_cast<T*>(grad_logvar);
    const cudaStream_t st = static_cast<cudaStream_t>(stream);
    if (cuda::vec_width<T>(d, {z, mu, logvar, grad_z, grad_mu, grad_logvar}) > 1)
      cuda::launch_bwd<T, 16 / sizeof(T)>(grad, zt, mt, lt, gz, gm, gl, s, n, d, st, device);
    else
      cuda::launch_bwd<T, 1>(grad, zt, mt, lt, gz, gm, gl, s, n, d, st, device);
  });
}

}  // namespace vaekernels

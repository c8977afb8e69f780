// The IWAE / Renyi bound on CUDA: forward and backward, each one pass over z.
//
//   iwae_bound_fwd_cuda  lpx [K, B] (f32), z [K, B, D], mu, logvar [B, D], priors -> bound [B], weights [K, B] (f32)
//   iwae_bound_bwd_cuda  grad [B], weights [K, B] (f32) -> grad_lpx [K, B] (f32), grad_z, grad_mu, ...
//
// Per example b, with u = z - mu, v = z - pm, iq = e^-lv, ip = e^-plv (an absent prior is 0):
//   lw[k]     = lpx[k, b] - 1/2 sum_d (plv - lv) - 1/2 sum_d (v^2 ip - u^2 iq)    (log 2 pi cancels)
//   bound[b]  = (logsumexp_k (1 - alpha) lw[k] - log K) / (1 - alpha)   (alpha = 1: mean_k lw[k])
//   weight[k] = exp(r[k] - L), r[k] = (1 - alpha) lw[k] as rounded for L   (alpha = 1: 1/K; a -inf
//               bound: 0)   -- vaekernels/logsumexp.h
// Backward, c_k = grad[b] weight[k]: grad_lpx = c_k, grad_z = c_k (u iq - v ip),
//   grad_mu = -iq sum_k c_k u, grad_logvar = 1/2 (sum_k c_k - iq sum_k c_k u^2),
//   grad_pm = ip sum_k c_k v, grad_plv = -1/2 (sum_k c_k - ip sum_k c_k v^2).
//
// Forward: a block per example (grid-stride over examples).  The block stages mu, e^-lv (and pm,
// e^-plv) of its example in shared memory once (D <= kMaxStagedD; above that every access reads
// global memory and recomputes the exp), then warp w takes rows k = w, w + 8, ...: lanes read
// 16-byte vectors of the row, a butterfly warp_sum gives lw[k], and each warp keeps an online
// log-sum-exp state; the 8 warp states are merged in warp order.  A second pass over the K
// values (not over z) normalizes the weights.  Traffic: reads K B D elements of z once, writes
// B + 2 K B floats (the weights written, re-read and rewritten; the re-read hits L2).
//
// Backward: a thread per (example, 16-byte chunk of D), looping over all k in order: a chunk's
// sums over k live in its registers, so there is no cross-thread reduction at all.  A [D] prior's
// gradient goes through float32 partials [B, D] summed over b by sum_rows_kernel.  Traffic:
// reads z and writes dz (2 K B D elements), the weights (K B floats, one load per example and
// chunk, a broadcast within the warp), and the [B, D] arrays.
//
// Everything is int64-indexed and every sum has a fixed order: results are bitwise reproducible.
// Not tuned on a GPU yet: no split over K (B smaller than the SM count under-fills the GPU), and
// for D < 32 x (16 bytes / element) lanes of the forward's warps idle.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/reduce.cuh"

namespace vaekernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxStageBytes = 48 * 1024;  // the default dynamic shared memory limit

struct IwaeDims {
  int64_t K, B, D, pm_stride, plv_stride;
};

// The per-dim parameters of one example as float32: from the shared-memory copy when kStaged
// (rows mu, iq, pm, ip of D floats each), else read from global memory with the exp recomputed.
template <typename T, bool kStaged>
struct ExampleParams {
  const float* sh;
  int64_t D;
  const T* mu;
  const T* lv;
  const T* pm;   // null: 0
  const T* plv;  // null: 0
  __device__ __forceinline__ float m(int64_t d) const {
    if constexpr (kStaged) return sh[d];
    else return load_scalar(mu + d);
  }
  __device__ __forceinline__ float iq(int64_t d) const {
    if constexpr (kStaged) return sh[D + d];
    else return expf(-load_scalar(lv + d));
  }
  __device__ __forceinline__ float pmu(int64_t d) const {
    if constexpr (kStaged) return sh[2 * D + d];
    else return pm != nullptr ? load_scalar(pm + d) : 0.0f;
  }
  __device__ __forceinline__ float ip(int64_t d) const {
    if constexpr (kStaged) return sh[3 * D + d];
    else return plv != nullptr ? expf(-load_scalar(plv + d)) : 1.0f;
  }
};

template <typename T, int VEC, bool kPrior, bool kStaged>
__global__ void __launch_bounds__(kThreads)
iwae_bound_fwd_kernel(const float* __restrict__ lpx, const T* __restrict__ z, const T* __restrict__ mu,
                      const T* __restrict__ logvar, const T* __restrict__ pm, const T* __restrict__ plv,
                      float* __restrict__ bound, float* __restrict__ weights, IwaeDims dims, RenyiBound rb) {
  extern __shared__ float staged[];  // kStaged: (kPrior ? 4 : 2) * D floats
  __shared__ float scratch[32];
  __shared__ float warp_m[kWarps], warp_s[kWarps], result[2];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t K = dims.K, B = dims.B, D = dims.D;
  const float one_minus = static_cast<float>(rb.one_minus);

  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const ExampleParams<T, kStaged> p{staged, D, mu + b * D, logvar + b * D,
                                      pm != nullptr ? pm + b * dims.pm_stride : nullptr,
                                      plv != nullptr ? plv + b * dims.plv_stride : nullptr};
    float part = 0.0f;  // sum_d (plv - lv)
    for (int64_t d = threadIdx.x; d < D; d += kThreads) {
      const float lv = load_scalar(p.lv + d);
      const float pl = p.plv != nullptr ? load_scalar(p.plv + d) : 0.0f;
      part += pl - lv;
      if constexpr (kStaged) {
        staged[d] = load_scalar(p.mu + d);
        staged[D + d] = expf(-lv);  // e^-lv once per example, not per sample
        if constexpr (kPrior) {
          staged[2 * D + d] = p.pm != nullptr ? load_scalar(p.pm + d) : 0.0f;
          staged[3 * D + d] = p.plv != nullptr ? expf(-pl) : 1.0f;
        }
      }
    }
    const float half_dlv = 0.5f * block_sum(part, scratch);  // its barriers also publish `staged`

    float m = -INFINITY, s = 0.0f;  // this warp's online state (ELBO: s = sum of lw)
    for (int64_t k = warp; k < K; k += kWarps) {
      const int64_t row = k * B + b;
      const T* zr = z + row * D;
      float acc = 0.0f;  // sum_d (v^2 ip - u^2 iq), float32, lanes then a butterfly: fixed order
      for (int64_t d0 = static_cast<int64_t>(lane) * VEC; d0 < D; d0 += 32 * VEC) {
        float x[VEC];
        load_n<T, VEC>(zr + d0, x);
#pragma unroll
        for (int q = 0; q < VEC; ++q) {
          const float u = x[q] - p.m(d0 + q);
          if constexpr (kPrior) {
            const float v = x[q] - p.pmu(d0 + q);
            acc += v * v * p.ip(d0 + q) - u * u * p.iq(d0 + q);
          } else {
            acc += x[q] * x[q] - u * u * p.iq(d0 + q);
          }
        }
      }
      const float lw = lpx[row] - half_dlv - 0.5f * warp_sum(acc);
      // r = (1 - alpha) lw rounded once: __fmul_rn is never contracted into an fma, so the
      // log-sum-exp and the weight exp(r - L) below see the same r.  (nvcc contracts by default:
      // exp((1 - alpha) lw - L) as one fma uses the unrounded product, off from the r that L saw
      // by up to half an ulp of r -- 512 at |r| = 1e10 -- and un-normalizes the weights.)
      const float r = rb.elbo ? lw : __fmul_rn(one_minus, lw);
      if (lane == 0) weights[row] = r;  // r (the ELBO: log w) for now; normalized below
      if (rb.elbo) s += lw;
      else lse_merge(m, s, r, 1.0f, ExpF{});
    }
    if (lane == 0) warp_m[warp] = m, warp_s[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
      float M = warp_m[0], S = warp_s[0];
      for (int w = 1; w < kWarps; ++w) {  // warp order
        if (rb.elbo) S += warp_s[w];
        else lse_merge(M, S, warp_m[w], warp_s[w], ExpF{});
      }
      const float lse = rb.elbo ? S : lse_value(M, S, LogF{});
      const float y = renyi_value(rb, lse);
      bound[b] = y;
      result[0] = y, result[1] = lse;
    }
    __syncthreads();  // also publishes the log w written above to every thread of the block
    const float y = result[0], lse = result[1];
    for (int64_t k = threadIdx.x; k < K; k += kThreads) {
      const int64_t row = k * B + b;
      weights[row] = renyi_weight(rb, weights[row], y, lse, ExpF{});  // exp(r - L) of the stored r
    }
    __syncthreads();  // staged / result are reused by the next example
  }
}

// The gradient outputs; null: not computed (q's with STL, an absent or unwanted prior's).  A
// prior's gradient goes to `*_part` (float32 [B, D], summed over b afterwards) when it is [D],
// else straight to the [B, D] gradient.
template <typename T>
struct IwaeGrads {
  float* lpx;
  T* z;
  T* mu;
  T* logvar;
  T* pm;
  T* plv;
  float* pm_part;
  float* plv_part;
};

template <typename T, int VEC, bool kPrior>
__global__ void __launch_bounds__(kThreads)
iwae_bound_bwd_kernel(const float* __restrict__ grad, const float* __restrict__ weights, const T* __restrict__ z,
                      const T* __restrict__ mu, const T* __restrict__ logvar, const T* __restrict__ pm,
                      const T* __restrict__ plv, IwaeGrads<T> g, IwaeDims dims, int tpe) {
  const int64_t K = dims.K, B = dims.B, D = dims.D;
  const int64_t chunks = D / VEC;  // VEC divides D (VEC = 1 otherwise)
  const int epb = kThreads / tpe;  // examples per block, tpe threads each
  const int c0 = static_cast<int>(threadIdx.x) % tpe;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * epb + threadIdx.x / tpe; b < B;
       b += static_cast<int64_t>(gridDim.x) * epb) {
    const float gb = grad[b];
    for (int64_t c = c0; c < chunks; c += tpe) {
      const int64_t d0 = c * VEC;
      float m[VEC], iq[VEC], pmu[VEC], ip[VEC];
      load_n<T, VEC>(mu + b * D + d0, m);
      load_n<T, VEC>(logvar + b * D + d0, iq);
#pragma unroll
      for (int q = 0; q < VEC; ++q) iq[q] = expf(-iq[q]), pmu[q] = 0.0f, ip[q] = 1.0f;
      if constexpr (kPrior) {
        if (pm != nullptr) load_n<T, VEC>(pm + b * dims.pm_stride + d0, pmu);
        if (plv != nullptr) {
          load_n<T, VEC>(plv + b * dims.plv_stride + d0, ip);
#pragma unroll
          for (int q = 0; q < VEC; ++q) ip[q] = expf(-ip[q]);
        }
      }
      float a1[VEC] = {}, a2[VEC] = {}, p1[VEC] = {}, p2[VEC] = {};  // sums over k of c u, c u^2, c v, c v^2
      float csum = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t row = k * B + b;
        float x[VEC];
        load_n<T, VEC>(z + row * D + d0, x);  // issued with the weight load, before the branch
        const float cc = gb * weights[row];
        if (c == 0) g.lpx[row] = cc;
        float dz[VEC];
        if (cc == 0.0f) {  // zero weight (lw = -inf, or a -inf bound): exact zeros, no 0 * inf
#pragma unroll
          for (int q = 0; q < VEC; ++q) dz[q] = 0.0f;
        } else {
          csum += cc;
#pragma unroll
          for (int q = 0; q < VEC; ++q) {
            const float u = x[q] - m[q], v = x[q] - pmu[q];
            const float cu = cc * u, cv = cc * v;
            dz[q] = cu * iq[q] - cv * ip[q];
            a1[q] += cu;
            a2[q] += cu * u;
            if constexpr (kPrior) {
              p1[q] += cv;
              p2[q] += cv * v;
            }
          }
        }
        store_n<T, VEC>(g.z + row * D + d0, dz);
      }
      float out[VEC];
      if (g.mu != nullptr) {
#pragma unroll
        for (int q = 0; q < VEC; ++q) out[q] = -iq[q] * a1[q];
        store_n<T, VEC>(g.mu + b * D + d0, out);
#pragma unroll
        for (int q = 0; q < VEC; ++q) out[q] = 0.5f * (csum - iq[q] * a2[q]);
        store_n<T, VEC>(g.logvar + b * D + d0, out);
      }
      if constexpr (kPrior) {
#pragma unroll
        for (int q = 0; q < VEC; ++q) out[q] = ip[q] * p1[q];
        if (g.pm_part != nullptr) store_n<float, VEC>(g.pm_part + b * D + d0, out);
        else if (g.pm != nullptr) store_n<T, VEC>(g.pm + b * D + d0, out);
#pragma unroll
        for (int q = 0; q < VEC; ++q) out[q] = -0.5f * (csum - ip[q] * p2[q]);
        if (g.plv_part != nullptr) store_n<float, VEC>(g.plv_part + b * D + d0, out);
        else if (g.plv != nullptr) store_n<T, VEC>(g.plv + b * D + d0, out);
      }
    }
  }
}

int64_t grid_blocks(int64_t items, int device) {
  return std::max<int64_t>(1, std::min<int64_t>(items, static_cast<int64_t>(sm_count(device)) * 32));
}

template <typename T, int VEC, bool kPrior>
void launch_fwd(const float* lpx, const T* z, const T* mu, const T* logvar, const T* pm, const T* plv,
                float* bound, float* weights, const IwaeDims& dims, const RenyiBound& rb, cudaStream_t stream,
                int device) {
  const int64_t staged_bytes = (kPrior ? 4 : 2) * dims.D * static_cast<int64_t>(sizeof(float));
  const unsigned blocks = static_cast<unsigned>(grid_blocks(dims.B, device));
  if (staged_bytes <= kMaxStageBytes) {
    iwae_bound_fwd_kernel<T, VEC, kPrior, true><<<blocks, kThreads, static_cast<size_t>(staged_bytes), stream>>>(
        lpx, z, mu, logvar, pm, plv, bound, weights, dims, rb);
  } else {
    iwae_bound_fwd_kernel<T, VEC, kPrior, false><<<blocks, kThreads, 0, stream>>>(lpx, z, mu, logvar, pm, plv,
                                                                                 bound, weights, dims, rb);
  }
  VK_CUDA_CHECK_LAUNCH("iwae_bound_fwd_kernel");
}

template <typename T, int VEC, bool kPrior>
void launch_bwd(const float* grad, const float* weights, const T* z, const T* mu, const T* logvar, const T* pm,
                const T* plv, IwaeGrads<T> g, const IwaeDims& dims, cudaStream_t stream, int device) {
  // A [D] prior's gradient: float32 partials [B, D], then a column sum over b in a fixed order.
  const bool pm_shared = g.pm != nullptr && dims.pm_stride == 0;
  const bool plv_shared = g.plv != nullptr && dims.plv_stride == 0;
  const size_t part_bytes = static_cast<size_t>(dims.B * dims.D) * sizeof(float);
  StreamBuffer pm_part(pm_shared ? part_bytes : 0, stream), plv_part(plv_shared ? part_bytes : 0, stream);
  g.pm_part = pm_part.get();
  g.plv_part = plv_part.get();
  const int64_t chunks = dims.D / VEC;
  int tpe = 1;  // threads per example: a power of two >= chunks, at most kThreads
  while (tpe < chunks && tpe < kThreads) tpe *= 2;
  const int64_t groups = ceil_div64(dims.B, kThreads / tpe);
  iwae_bound_bwd_kernel<T, VEC, kPrior><<<static_cast<unsigned>(grid_blocks(groups, device)), kThreads, 0, stream>>>(
      grad, weights, z, mu, logvar, pm, plv, g, dims, tpe);
  VK_CUDA_CHECK_LAUNCH("iwae_bound_bwd_kernel");
  if (pm_shared) launch_sum_rows(pm_part.get(), dims.B, dims.D, g.pm, stream);
  if (plv_shared) launch_sum_rows(plv_part.get(), dims.B, dims.D, g.plv, stream);
}

}  // namespace
}  // namespace cuda

void iwae_bound_fwd_cuda(const float* log_px_z, const void* z, const void* mu, const void* logvar,
                         const void* prior_mu, int64_t prior_mu_stride, const void* prior_logvar,
                         int64_t prior_logvar_stride, float* bound, float* weights, int64_t k, int64_t b, int64_t d,
                         double alpha, int dtype, void* stream, int device) {
  cuda::dispatch_dtype("iwae_bound_fwd", dtype, [&](auto tag) {
    using T = decltype(tag);
    if (k <= 0 || b <= 0 || d < 0) return;
    cuda::DeviceGuard guard(device);
    (void)cudaGetLastError();
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    const cuda::IwaeDims dims{k, b, d, prior_mu_stride, prior_logvar_stride};
    const RenyiBound rb = make_renyi(alpha, k);
    const T* zt = static_cast<const T*>(z);
    const T* mt = static_cast<const T*>(mu);
    const T* lt = static_cast<const T*>(logvar);
    const T* pmt = static_cast<const T*>(prior_mu);
    const T* plt = static_cast<const T*>(prior_logvar);
    const bool prior = pmt != nullptr || plt != nullptr;
    const bool vec = cuda::vec_width<T>(d, {z}) > 1;
    constexpr int V = 16 / sizeof(T);
    if (prior) {
      if (vec) cuda::launch_fwd<T, V, true>(log_px_z, zt, mt, lt, pmt, plt, bound, weights, dims, rb, s, device);
      else cuda::launch_fwd<T, 1, true>(log_px_z, zt, mt, lt, pmt, plt, bound, weights, dims, rb, s, device);
    } else {
      if (vec) cuda::launch_fwd<T, V, false>(log_px_z, zt, mt, lt, pmt, plt, bound, weights, dims, rb, s, device);
      else cuda::launch_fwd<T, 1, false>(log_px_z, zt, mt, lt, pmt, plt, bound, weights, dims, rb, s, device);
    }
  });
}

void iwae_bound_bwd_cuda(const float* grad, const float* weights, const void* z, const void* mu, const void* logvar,
                         const void* prior_mu, int64_t prior_mu_stride, const void* prior_logvar,
                         int64_t prior_logvar_stride, float* grad_log_px_z, void* grad_z, void* grad_mu,
                         void* grad_logvar, void* grad_prior_mu, void* grad_prior_logvar, int64_t k, int64_t b,
                         int64_t d, int dtype, void* stream, int device) {
  cuda::dispatch_dtype("iwae_bound_bwd", dtype, [&](auto tag) {
    using T = decltype(tag);
    if (k <= 0 || b <= 0 || d <= 0) return;  // D = 0: the caller writes grad_lpx = grad * weights
    cuda::DeviceGuard guard(device);
    (void)cudaGetLastError();
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    const cuda::IwaeDims dims{k, b, d, prior_mu_stride, prior_logvar_stride};
    const T* zt = static_cast<const T*>(z);
    const T* pmt = static_cast<const T*>(prior_mu);
    const T* plt = static_cast<const T*>(prior_logvar);
    const cuda::IwaeGrads<T> g{grad_log_px_z,
                               static_cast<T*>(grad_z),
                               static_cast<T*>(grad_mu),
                               static_cast<T*>(grad_logvar),
                               static_cast<T*>(grad_prior_mu),
                               static_cast<T*>(grad_prior_logvar),
                               nullptr,
                               nullptr};
    const bool prior = pmt != nullptr || plt != nullptr;
    const bool vec = cuda::vec_width<T>(d, {z, mu, logvar, prior_mu, prior_logvar, grad_z, grad_mu, grad_logvar,
                                            grad_prior_mu, grad_prior_logvar}) > 1;
    constexpr int V = 16 / sizeof(T);
    const T* mt = static_cast<const T*>(mu);
    const T* lt = static_cast<const T*>(logvar);
    if (prior) {
      if (vec) cuda::launch_bwd<T, V, true>(grad, weights, zt, mt, lt, pmt, plt, g, dims, s, device);
      else cuda::launch_bwd<T, 1, true>(grad, weights, zt, mt, lt, pmt, plt, g, dims, s, device);
    } else {
      if (vec) cuda::launch_bwd<T, V, false>(grad, weights, zt, mt, lt, pmt, plt, g, dims, s, device);
      else cuda::launch_bwd<T, 1, false>(grad, weights, zt, mt, lt, pmt, plt, g, dims, s, device);
    }
  });
}

}  // namespace vaekernels

// Gaussian KL on CUDA: the elementwise KL reduced over the latent dimension in the same pass, and
// its backward.  With delta = lv - plv, Delta = mu - pm, s = e^(-plv/2) (an absent prior is 0):
//
//   KL[r, c]  = 0.5 phi(delta) + 0.5 (Delta s)^2,   phi(x) = e^x - 1 - x
//   forward   out = KL [n, d] | row sums [n] | their total [] | total / n []
//   backward  grad_mu = g Delta s^2    grad_logvar = 0.5 g expm1(delta)
//             grad_pm = -grad_mu       grad_plv    = -0.5 g (expm1(delta) + (Delta s)^2)
//   mu, logvar: [n, d]; a prior: [p, d], example r uses prior row r % p.
//
// Kernels (all reductions in a fixed order that depends on n, d, p and the vector width only --
// never on the GPU -- so results are bitwise reproducible; no atomics):
//   gaussian_kl_fwd_kernel     groups of tpr lanes per row (tpr = the row's 16-byte vectors, up to
//                              32), rows of a block = 256 / tpr; each lane walks its row in steps of
//                              tpr vectors (D = 16384: 128 steps of 16 bytes), fp32 sums, a butterfly
//                              within the group; the 0-d reductions add the block's rows (block_sum)
//                              into one float per block, and sum_total_kernel adds those in float64.
//   gaussian_kl_colsum_kernel  free bits, pass 1: per row block, column sums / n (float partials),
//                              then sum_rows_kernel (reduce.cuh) adds the blocks in order.
//   gaussian_kl_bwd_kernel     the [K, M] = [n / p, p d] view: thread = one 16-byte column vector x
//                              a strided set of rows of one row block; prior gradients (p < n) are
//                              column sums: the block's row lanes added in lane order through
//                              shared memory, then the row blocks by sum_rows_kernel.
// Memory traffic is the floor: each input read once (twice with free bits), each output written
// once, plus float partials of at most 256 row blocks.  Offsets are int64 throughout.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "cuda/reduce.cuh"

namespace vaekernels {
namespace cuda {
namespace {

constexpr int kBlock = 256;          // threads per block, every kernel here
constexpr int64_t kMaxBlocks = 256;  // most row blocks whose partial column sums are kept

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ------------------------------------------------------------------ arithmetic (float32)

// phi = e^x - 1 - x and em1 = e^x - 1, each to a few ulp also for x -> 0, where e^x - 1 - x
// loses every digit.  |x| <= 0.5: the Taylor series x^2/2! + ... + x^9/9!, whose remainder is at
// most |x|^10/10! / (1 - |x|/11) <= 2.9e-10, i.e. <= 2.7e-9 (0.05 ulp) relative to phi >= 0.1065
// (its least value on |x| = 0.5); beyond, expm1f (<= 1 ulp), whose subtraction of x magnifies that
// error by at most (|e^x - 1| + |x|) / phi(x) <= 8 (at x = 0.5; a switch at 0.25 would allow 16).
// The branch diverges only between lanes on either side of 0.5.
__device__ __forceinline__ void expm1_parts(float x, float* phi, float* em1) {
  if (fabsf(x) <= 0.5f) {
    float s = fmaf(x, 1.0f / 362880.0f, 1.0f / 40320.0f);
    s = fmaf(s, x, 1.0f / 5040.0f);
    s = fmaf(s, x, 1.0f / 720.0f);
    s = fmaf(s, x, 1.0f / 120.0f);
    s = fmaf(s, x, 1.0f / 24.0f);
    s = fmaf(s, x, 1.0f / 6.0f);
    s = fmaf(s, x, 0.5f);
    s *= x * x;
    *phi = s;
    *em1 = x + s;  // x dominates: no cancellation
  } else {
    const float e = expm1f(x);
    *phi = e - x;
    *em1 = e;
  }
}

// The KL of one element (an absent prior parameter is loaded as 0: its subtraction is exact).
__device__ __forceinline__ float kl_value(float mu, float lv, float pm, float plv, bool has_plv) {
  float q = mu - pm;
  // (Delta e^(-plv/2))^2 rather than Delta^2 e^-plv: neither factor alone overflows.
  if (has_plv) q *= expf(-0.5f * plv);
  float phi, em1;
  expm1_parts(lv - plv, &phi, &em1);
  return 0.5f * fmaf(q, q, phi);  // two non-negative terms: no cancellation
}

// ------------------------------------------------------------------ arguments

template <typename T>
struct Inputs {
  const T* mu;
  const T* lv;
  const T* pm;   // null: 0
  const T* plv;  // null: 0
  int64_t n, d, p;
};

template <typename T, int V>
__device__ __forceinline__ void load_prior(const T* ptr, int64_t off, float* out) {
  if (ptr != nullptr) {
    load_n<T, V>(ptr + off, out);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = 0.0f;
  }
}

// V float32 values as 16-byte accesses (V % 4 == 0; 16-byte aligned) or V scalar ones.
template <int V>
__device__ __forceinline__ void load_f32(const float* p, float* out) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4) Vec<float, 4>::load(p + i, out + i);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = __ldg(p + i);
  }
}
template <int V>
__device__ __forceinline__ void store_f32(float* p, const float* in) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4) Vec<float, 4>::store(p + i, in + i);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = in[i];
  }
}

// KL of the V elements at mu/lv offset `off`, prior offset `poff`.
template <typename T, int V>
__device__ __forceinline__ void kl_vec(const Inputs<T>& in, int64_t off, int64_t poff, float* kl) {
  float mu[V], lv[V], pm[V], plv[V];
  load_n<T, V>(in.mu + off, mu);
  load_n<T, V>(in.lv + off, lv);
  load_prior<T, V>(in.pm, poff, pm);
  load_prior<T, V>(in.plv, poff, plv);
#pragma unroll
  for (int i = 0; i < V; ++i) kl[i] = kl_value(mu[i], lv[i], pm[i], plv[i], in.plv != nullptr);
}

// ------------------------------------------------------------------ forward

// Rows blockIdx.x * (256 / tpr) ...: out = KL [n, d] (reduction 0), row sums [n] (1), or for the
// 0-d reductions (2, 3) the block's total at block_total[blockIdx.x].  col (free bits): the column
// means; a column whose mean is below lam is the constant lam (a NaN mean fails the compare).
template <typename T, int V>
__global__ void __launch_bounds__(kBlock)
gaussian_kl_fwd_kernel(const Inputs<T> in, const float* __restrict__ col, float lam, int reduction, int tpr,
                       float* __restrict__ out, float* __restrict__ block_total) {
  __shared__ float scratch[32];
  const int rows_per_block = kBlock / tpr, lane = threadIdx.x % tpr;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * rows_per_block + threadIdx.x / tpr;
  const int64_t d = in.d;
  float sum = 0.0f;
  if (r < in.n) {
    const int64_t off = r * d, poff = (r % in.p) * d;
    for (int64_t c = static_cast<int64_t>(lane) * V; c < d; c += static_cast<int64_t>(tpr) * V) {
      float kl[V];
      kl_vec<T, V>(in, off + c, poff + c, kl);
      if (col != nullptr) {
        float cm[V];
        load_f32<V>(col + c, cm);
#pragma unroll
        for (int i = 0; i < V; ++i) kl[i] = cm[i] < lam ? lam : kl[i];
      }
      if (reduction == 0) {
        store_f32<V>(out + off + c, kl);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) sum += kl[i];
      }
    }
  }
  if (reduction == 0) return;
  // Butterfly within the group of tpr lanes (aligned within the warp): every lane gets the row sum.
  for (int o = tpr / 2; o >= 1; o >>= 1) sum += __shfl_xor_sync(kFullMask, sum, o);
  if (reduction == 1) {
    if (lane == 0 && r < in.n) out[r] = sum;
    return;
  }
  const float total = block_sum(lane == 0 ? sum : 0.0f, scratch);  // rows past n add 0
  if (threadIdx.x == 0) block_total[blockIdx.x] = total;
}

// out[0] = (sum of part[0 .. R)) / divisor, the sum in float64: thread t adds t, t + 256, ... in
// order, thread 0 adds the 256 thread sums in order.  One block.
__global__ void __launch_bounds__(kBlock)
sum_total_kernel(const float* __restrict__ part, int64_t R, double divisor, float* __restrict__ out) {
  __shared__ double sh[kBlock];
  double s = 0.0;
  for (int64_t r = threadIdx.x; r < R; r += kBlock) s += part[r];
  sh[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int t = 1; t < kBlock; ++t) s += sh[t];
  *out = static_cast<float>(s / divisor);
}

// A block of `lanes` column vectors (of V elements) x kBlock / lanes row lanes.
struct ColLayout {
  int lanes, row_lanes;
  int64_t col_blocks;
};

ColLayout col_layout(int64_t cols, int V) {
  const int64_t vecs = ceil_div64(cols, V);
  int lanes = 1;
  while (lanes < kBlock && lanes < vecs) lanes *= 2;
  return {lanes, kBlock / lanes, ceil_div64(vecs, lanes)};
}

// Row blocks of a column sum over `rows` rows: at least min_rows rows each, at most kMaxBlocks.
int64_t row_blocks(int64_t rows, int64_t min_rows, int64_t max_blocks) {
  return std::max<int64_t>(1, std::min<int64_t>({ceil_div64(rows, min_rows), max_blocks, kMaxBlocks}));
}

// Free bits, pass 1: part[b, c] = (sum over the rows of block b of KL[r, c]) / n, float32, for
// the V columns of this thread; row lane q adds rows b*rows_per_block + q, + row_lanes, ... in
// order, then lane 0 adds the row lanes in order.
template <typename T, int V>
__global__ void __launch_bounds__(kBlock)
gaussian_kl_colsum_kernel(const Inputs<T> in, int lanes, int64_t rows_per_block, float* __restrict__ part) {
  __shared__ float sh[kBlock * V];
  const int row_lanes = kBlock / lanes, lane = threadIdx.x % lanes, q = threadIdx.x / lanes;
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * lanes + lane) * V, b = blockIdx.y, d = in.d;
  float acc[V] = {};
  if (c < d) {
    const int64_t r_end = min64(in.n, (b + 1) * rows_per_block);
    for (int64_t r = b * rows_per_block + q; r < r_end; r += row_lanes) {
      float kl[V];
      kl_vec<T, V>(in, r * d + c, (r % in.p) * d + c, kl);
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] += kl[i];
    }
  }
#pragma unroll
  for (int i = 0; i < V; ++i) sh[threadIdx.x * V + i] = acc[i];
  __syncthreads();
  if (q != 0 || c >= d) return;
  for (int w = 1; w < row_lanes; ++w)
#pragma unroll
    for (int i = 0; i < V; ++i) acc[i] += sh[(w * lanes + lane) * V + i];
  const float n = static_cast<float>(in.n);
#pragma unroll
  for (int i = 0; i < V; ++i) part[b * d + c + i] = acc[i] / n;
}

template <typename T, int V>
void launch_fwd(const Inputs<T>& in, float lam, int reduction, float* out, float* col, cudaStream_t stream) {
  const int64_t n = in.n, d = in.d;
  if (col != nullptr) {
    const ColLayout lay = col_layout(d, V);
    const int64_t nb = row_blocks(n, 32, kMaxBlocks), rows_per_block = ceil_div64(n, nb);
    const int64_t blocks = ceil_div64(n, rows_per_block);
    StreamBuffer part(static_cast<size_t>(blocks * d) * sizeof(float), stream);
    gaussian_kl_colsum_kernel<T, V><<<dim3(static_cast<unsigned>(lay.col_blocks), static_cast<unsigned>(blocks)),
                                      kBlock, 0, stream>>>(in, lay.lanes, rows_per_block, part.get());
    VK_CUDA_CHECK_LAUNCH("gaussian_kl_colsum_kernel");
    launch_sum_rows<float>(part.get(), blocks, d, col, stream);
  }
  int tpr = 1;
  while (tpr < 32 && tpr * V < d) tpr *= 2;
  const int64_t blocks = ceil_div64(n, kBlock / tpr);
  StreamBuffer totals(reduction >= 2 ? static_cast<size_t>(blocks) * sizeof(float) : 0, stream);
  gaussian_kl_fwd_kernel<T, V><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(
      in, col, lam, reduction, tpr, reduction >= 2 ? nullptr : out, totals.get());
  VK_CUDA_CHECK_LAUNCH("gaussian_kl_fwd_kernel");
  if (reduction >= 2) {
    sum_total_kernel<<<1, kBlock, 0, stream>>>(totals.get(), blocks, reduction == 3 ? static_cast<double>(n) : 1.0,
                                               out);
    VK_CUDA_CHECK_LAUNCH("sum_total_kernel");
  }
}

// ------------------------------------------------------------------ backward

template <typename T>
struct Grads {
  const float* grad;  // [n, d] / [n] / [] by reduction
  const float* col;   // column means (free bits) or null
  float lam, g_divisor;
  int reduction;
  T* gmu;
  T* glv;
  T* gpm;   // null when prior_mu is absent
  T* gplv;  // null when prior_logvar is absent
};

// Over the [K, M] view (M = p d, K = n / p; column j's prior element is j): thread = the V columns
// from j = (blockIdx.x * lanes + lane) * V, rows b*rows_per_block + q, + row_lanes, ... of row
// block b = blockIdx.y.  K == 1: every gradient is stored.  K > 1: the prior gradients are summed
// over the block's rows (row lanes added in lane order) into part_pm / part_plv [blocks, M], or
// stored when there is one block.
template <typename T, int V>
__global__ void __launch_bounds__(kBlock)
gaussian_kl_bwd_kernel(const Inputs<T> in, const Grads<T> out, int lanes, int64_t k_rows, int64_t rows_per_block,
                       bool one_block, float* __restrict__ part_pm, float* __restrict__ part_plv) {
  __shared__ float sh[2][kBlock * V];
  const int row_lanes = kBlock / lanes, lane = threadIdx.x % lanes, q = threadIdx.x / lanes;
  const int64_t m = in.p * in.d, j = (static_cast<int64_t>(blockIdx.x) * lanes + lane) * V, b = blockIdx.y;
  const bool reduce_prior = k_rows > 1 && (in.pm != nullptr || in.plv != nullptr);
  float acc_pm[V] = {}, acc_plv[V] = {};
  if (j < m) {
    // Per column, once: the prior, s = e^(-plv/2), and whether free bits let the gradient through.
    float pm[V], plv[V], s[V], gate[V];
    load_prior<T, V>(in.pm, j, pm);
    load_prior<T, V>(in.plv, j, plv);
    const int64_t c = j % in.d, rj = j / in.d;  // V | d: the V columns share one example row
    float cm[V] = {};
    if (out.col != nullptr) load_f32<V>(out.col + c, cm);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      s[i] = in.plv != nullptr ? expf(-0.5f * plv[i]) : 1.0f;
      gate[i] = out.col != nullptr && cm[i] < out.lam ? 0.0f : 1.0f;
    }
    const float g0 = out.reduction >= 2 ? __ldg(out.grad) / out.g_divisor : 0.0f;
    const int64_t k_end = min64(k_rows, (b + 1) * rows_per_block);
    for (int64_t k = b * rows_per_block + q; k < k_end; k += row_lanes) {
      const int64_t e = k * m + j;
      float g[V], mu[V], lv[V], gmu[V], glv[V], gpm[V], gplv[V];
      if (out.reduction == 0) {
        load_f32<V>(out.grad + e, g);
      } else {
        const float gr = out.reduction == 1 ? __ldg(out.grad + k * in.p + rj) : g0;
#pragma unroll
        for (int i = 0; i < V; ++i) g[i] = gr;
      }
      load_n<T, V>(in.mu + e, mu);
      load_n<T, V>(in.lv + e, lv);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float gi = gate[i] != 0.0f ? g[i] : 0.0f;  // a select: 0 * inf would be NaN
        const float qi = (mu[i] - pm[i]) * s[i];
        float phi, em1;
        expm1_parts(lv[i] - plv[i], &phi, &em1);
        gmu[i] = gi * (qi * s[i]);  // Delta e^-plv as (Delta s) s: no overflow of e^-plv alone
        glv[i] = 0.5f * gi * em1;
        gpm[i] = -gmu[i];
        // -0.5 g (expm1(delta) + (Delta s)^2), the sum in one rounding (its terms may cancel).
        gplv[i] = -0.5f * gi * fmaf(qi, qi, em1);
      }
      store_n<T, V>(out.gmu + e, gmu);
      store_n<T, V>(out.glv + e, glv);
      if (reduce_prior) {
#pragma unroll
        for (int i = 0; i < V; ++i) acc_pm[i] += gpm[i], acc_plv[i] += gplv[i];
      } else {
        if (out.gpm != nullptr) store_n<T, V>(out.gpm + e, gpm);
        if (out.gplv != nullptr) store_n<T, V>(out.gplv + e, gplv);
      }
    }
  }
  if (!reduce_prior) return;  // uniform over the grid: the barrier below is reached by all or none
#pragma unroll
  for (int i = 0; i < V; ++i) sh[0][threadIdx.x * V + i] = acc_pm[i], sh[1][threadIdx.x * V + i] = acc_plv[i];
  __syncthreads();
  if (q != 0 || j >= m) return;
  for (int w = 1; w < row_lanes; ++w)
#pragma unroll
    for (int i = 0; i < V; ++i) {
      acc_pm[i] += sh[0][(w * lanes + lane) * V + i];
      acc_plv[i] += sh[1][(w * lanes + lane) * V + i];
    }
  if (one_block) {
    if (out.gpm != nullptr) store_n<T, V>(out.gpm + j, acc_pm);
    if (out.gplv != nullptr) store_n<T, V>(out.gplv + j, acc_plv);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      if (part_pm != nullptr) part_pm[b * m + j + i] = acc_pm[i];
      if (part_plv != nullptr) part_plv[b * m + j + i] = acc_plv[i];
    }
  }
}

template <typename T, int V>
void launch_bwd(const Inputs<T>& in, const Grads<T>& out, cudaStream_t stream) {
  const bool has_prior = in.pm != nullptr || in.plv != nullptr;
  Inputs<T> view = in;
  if (!has_prior) view.p = in.n;  // no prior: one [1, n d] row, purely elementwise
  const int64_t k_rows = view.n / view.p, m = view.p * view.d;
  const ColLayout lay = col_layout(m, V);
  // Row blocks: >= 16 rows each, and no more than needed for ~2^18 threads in all (depends on the
  // sizes only, so the summation order is the same on every GPU).
  const int64_t nb = k_rows == 1 ? 1 : row_blocks(k_rows, 16, ceil_div64(int64_t{1} << 18, m));
  const int64_t rows_per_block = ceil_div64(k_rows, nb), blocks = ceil_div64(k_rows, rows_per_block);
  const bool partials = has_prior && k_rows > 1 && blocks > 1;
  const size_t part_bytes = partials ? static_cast<size_t>(blocks * m) * sizeof(float) : 0;
  StreamBuffer part_pm(in.pm != nullptr ? part_bytes : 0, stream), part_plv(in.plv != nullptr ? part_bytes : 0, stream);
  gaussian_kl_bwd_kernel<T, V><<<dim3(static_cast<unsigned>(lay.col_blocks), static_cast<unsigned>(blocks)), kBlock,
                                 0, stream>>>(view, out, lay.lanes, k_rows, rows_per_block, blocks == 1, part_pm.get(),
                                              part_plv.get());
  VK_CUDA_CHECK_LAUNCH("gaussian_kl_bwd_kernel");
  if (!partials) return;
  if (in.pm != nullptr) launch_sum_rows<T>(part_pm.get(), blocks, m, out.gpm, stream);
  if (in.plv != nullptr) launch_sum_rows<T>(part_plv.get(), blocks, m, out.gplv, stream);
}

}  // namespace
}  // namespace cuda

// ============================================================================ public API

void gaussian_kl_fwd_cuda(const void* mu, const void* logvar, const void* prior_mu, const void* prior_logvar,
                          float* out, float* col, int64_t n, int64_t d, int64_t p, int reduction, double free_bits,
                          int dtype, void* stream, int device) {
  using namespace cuda;
  dispatch_dtype("gaussian_kl_fwd", dtype, [&](auto tag) {
    using T = decltype(tag);
    if (n <= 0 || d <= 0) return;
    DeviceGuard guard(device);
    (void)cudaGetLastError();
    const Inputs<T> in{static_cast<const T*>(mu), static_cast<const T*>(logvar), static_cast<const T*>(prior_mu),
                       static_cast<const T*>(prior_logvar), n, d, p};
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    float* c = free_bits > 0 ? col : nullptr;
    const float lam = static_cast<float>(free_bits);
    if (vec_width<T>(d, {mu, logvar, prior_mu, prior_logvar, reduction == 0 ? out : nullptr}) > 1)
      launch_fwd<T, 16 / sizeof(T)>(in, lam, reduction, out, c, s);
    else
      launch_fwd<T, 1>(in, lam, reduction, out, c, s);
  });
}

void gaussian_kl_bwd_cuda(const float* grad, const void* mu, const void* logvar, const void* prior_mu,
                          const void* prior_logvar, const float* col, void* grad_mu, void* grad_logvar,
                          void* grad_prior_mu, void* grad_prior_logvar, int64_t n, int64_t d, int64_t p, int reduction,
                          double free_bits, int dtype, void* stream, int device) {
  using namespace cuda;
  dispatch_dtype("gaussian_kl_bwd", dtype, [&](auto tag) {
    using T = decltype(tag);
    if (n <= 0 || d <= 0) return;
    DeviceGuard guard(device);
    (void)cudaGetLastError();
    const Inputs<T> in{static_cast<const T*>(mu), static_cast<const T*>(logvar), static_cast<const T*>(prior_mu),
                       static_cast<const T*>(prior_logvar), n, d, p};
    const Grads<T> out{grad,
                       free_bits > 0 ? col : nullptr,
                       static_cast<float>(free_bits),
                       reduction == 3 ? static_cast<float>(n) : 1.0f,
                       reduction,
                       static_cast<T*>(grad_mu),
                       static_cast<T*>(grad_logvar),
                       prior_mu != nullptr ? static_cast<T*>(grad_prior_mu) : nullptr,
                       prior_logvar != nullptr ? static_cast<T*>(grad_prior_logvar) : nullptr};
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (vec_width<T>(d, {mu, logvar, prior_mu, prior_logvar, grad_mu, grad_logvar, out.gpm, out.gplv,
                         reduction == 0 ? grad : nullptr}) > 1)
      launch_bwd<T, 16 / sizeof(T)>(in, out, s);
    else
      launch_bwd<T, 1>(in, out, s);
  });
}

}  // namespace vaekernels

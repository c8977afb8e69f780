// Reparameterized sampling on CUDA: z = mu + exp(0.5 logvar) * eps, eps from the vaekernels
// Philox stream (docs/random.md), generated in registers and never stored.
//
//   reparameterize_fwd_cuda   mu, logvar: [n] -> z: [k, n]
//   reparameterize_bwd_cuda   grad_z: [k, n], logvar: [n] -> grad_mu, grad_logvar: [n]
//   philox_cuda, philox_fill_cuda   the raw generator, for known-answer / cross-backend tests
//
// Performance model (DESIGN.md): the floor is the bytes moved.  Per element of z the forward
// writes sizeof(T) bytes and reads 2*sizeof(T)/k (mu and logvar are read once per column a
// thread owns and kept in registers); the backward reads sizeof(T) bytes of grad_z and
// 3*sizeof(T)/k more (logvar, grad_mu, grad_logvar).  But the noise is not free: one group of
// four normals is one Philox4x32-10 (20 IMAD.WIDE + 20 LOP3 + key schedule) and one Box-Muller
// step with accurate functions (2 logf, 2 sqrtf, 2 sincospif): the sm_90 SASS of the forward's
// loop is 227 instructions per four outputs (the backward's 248), ~57 per element.  At an H100's
// issue rate (132 SMs x 4 warp-instructions/clock x 32 lanes x ~1.75 GHz ~ 3.0e13/s) that caps
// the forward at ~5.2e11 elements/s: ~2.1 TB/s of float32 output (~70% of H100 copy bandwidth)
// and ~1.0 TB/s of float16/bfloat16 (~35%); on an H200 (same SMs, more bandwidth) the fractions
// are lower.  So for k >> 1 these kernels are issue bound, not memory bound: everything that is
// not noise (index math, loads of mu/logvar, exp) is kept out of the per-element loop.
//
// Indexing is int64 throughout.  Forward grids are capped at one resident wave and threads loop
// (grid-stride); the backward's grid is (column blocks, row blocks <= 1024) and threads loop
// over rows.  So k*n > 2^31 needs no grid dimension >= 2^31.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace vaekernels {
namespace cuda {
namespace {

constexpr int kBlock = 256;  // threads per block, every kernel here

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ============================================================================ Philox (tests)

// out[i] = philox4x32_10(counters[i], keys[i]).  Reads 24 B and writes 16 B per i.
__global__ void __launch_bounds__(kBlock)
philox_kernel(const uint32_t* __restrict__ counters, const uint32_t* __restrict__ keys,
              uint32_t* __restrict__ out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint32_t* c = counters + 4 * i;
    const uint32_t* k = keys + 2 * i;
    const Philox4 r = philox4x32_10(c[0], c[1], c[2], c[3], k[0], k[1]);
#pragma unroll
    for (int m = 0; m < 4; ++m) out[4 * i + m] = r.w[m];
  }
}

// out[i] = philox_group(seed, first_group + i): the words behind elements 4(first_group+i)..+3
// of the normal stream.  Writes 16 B per i.
__global__ void __launch_bounds__(kBlock)
philox_fill_kernel(uint64_t seed, uint64_t first_group, uint32_t* __restrict__ out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const Philox4 r = philox_group(seed, first_group + static_cast<uint64_t>(i));
#pragma unroll
    for (int m = 0; m < 4; ++m) out[4 * i + m] = r.w[m];
  }
}

// ============================================================================ forward

// Vector path: n % W == 0 and mu, logvar, z aligned to W*sizeof(T) (W = 4G = 4 or 8 elements,
// one 8- or 16-byte access).  The output viewed as [k, C] items of W elements, C = n / W:
//   item it = j*C + c  covers  z[j, c*W .. c*W+W-1] = elements e = it*W .. it*W+W-1,
//   i.e. Philox groups it*G .. it*G+G-1 (one Philox call per four outputs).
//   z[j, i] = fma(exp(0.5 logvar[i]), eps(seed, j*n + i), mu[i])    (float32)
// Thread t handles items t, t+T, t+2T, ...; its column c advances by T mod C per step.  The host
// picks T as a multiple of C whenever C fits in one wave, so the column never changes: mu and
// sigma = exp(0.5 logvar) are loaded/computed once per thread and reused for every row.
// Traffic per element: writes sizeof(T); reads 2*sizeof(T) per (thread, column), ~0 for k >> 1.
template <typename T, int G>
__global__ void __launch_bounds__(kBlock)
reparameterize_fwd_vec_kernel(const T* __restrict__ mu, const T* __restrict__ logvar,
                              const int64_t* __restrict__ seed_ptr, T* __restrict__ z,
                              int64_t C, int64_t items, int64_t nthreads, int64_t step_c) {
  constexpr int W = 4 * G;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= nthreads) return;
  const uint64_t seed = load_seed(seed_ptr);

  int64_t c = t % C;  // the one 64-bit division of the thread
  float m[W], s[W];
  Vec<T, W>::load(mu + c * W, m);
  Vec<T, W>::load(logvar + c * W, s);
#pragma unroll
  for (int q = 0; q < W; ++q) s[q] = expf(0.5f * s[q]);  // sigma in float32; NaN stays NaN

  for (int64_t it = t;;) {
    float eps[W];
    normals<G>(seed, static_cast<uint64_t>(it) * G, eps);
    float out[W];
#pragma unroll
    for (int q = 0; q < W; ++q) out[q] = fmaf(s[q], eps[q], m[q]);
    Vec<T, W>::store(z + it * W, out);

    it += nthreads;
    if (it >= items) break;
    if (step_c != 0) {  // uniform branch: only when C does not divide the thread count
      c += step_c;
      if (c >= C) c -= C;
      Vec<T, W>::load(mu + c * W, m);
      Vec<T, W>::load(logvar + c * W, s);
#pragma unroll
      for (int q = 0; q < W; ++q) s[q] = expf(0.5f * s[q]);
    }
  }
}

// General path (any n, any alignment): thread per Philox group g, elements e = 4g..4g+3 of the
// flat [k*n] output, which may span a row boundary (i = e mod n wraps, several times for n < 4).
// i of the first element is carried from step to step (no division in the loop).  mu/logvar
// are scalar loads (L1/L2 hits for k > 1); z is one 4-element vector store when z is aligned to
// 4*sizeof(T) and the group is complete, else scalar stores.
// Traffic per element: writes sizeof(T); reads 2*sizeof(T) from cache (DRAM: 2*sizeof(T)/k).
template <typename T>
__global__ void __launch_bounds__(kBlock)
reparameterize_fwd_generic_kernel(const T* __restrict__ mu, const T* __restrict__ logvar,
                                  const int64_t* __restrict__ seed_ptr, T* __restrict__ z,
                                  int64_t n, int64_t numel, int64_t groups, int64_t nthreads,
                                  int64_t step_i, bool z_vec) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= nthreads) return;
  const uint64_t seed = load_seed(seed_ptr);
  int64_t i0 = (4 * t) % n;

  for (int64_t g = t; g < groups; g += nthreads) {
    const int64_t e0 = 4 * g;
    float eps[4];
    normals<1>(seed, static_cast<uint64_t>(g), eps);
    float out[4];
    int64_t i = i0;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      // For the elements past numel in the last group, i is still a valid column: the loads
      // stay in bounds and the value is simply not stored.
      out[q] = fmaf(expf(0.5f * load_scalar(logvar + i)), eps[q], load_scalar(mu + i));
      if (++i == n) i = 0;
    }
    if (z_vec && e0 + 4 <= numel) {
      Vec<T, 4>::store(z + e0, out);
    } else {
#pragma unroll
      for (int q = 0; q < 4; ++q)
        if (e0 + q < numel) store_scalar(z + e0 + q, out[q]);
    }
    i0 += step_i;
    if (i0 >= n) i0 -= n;
  }
}

// ============================================================================ backward

// Block layout shared by the backward kernels: kBlock threads = L column chunks x R row lanes
// (thread = r*L + l), the block grid = col_blocks x row_blocks.  Chunk c = blockIdx.x*L + l owns
// the W consecutive columns c*W .. c*W+W-1; row lane rho = blockIdx.y*R + r of the
// row_blocks*R lanes visits rows j = rho, rho + lanes, rho + 2*lanes, ... (a block reads R
// consecutive rows, contiguous memory).  Each thread sums its rows in row order; the block then
// sums its R lanes with a fixed binary tree in shared memory; with row_blocks > 1 each block
// writes one partial row and reparameterize_bwd_finish_kernel sums the partials in a fixed
// order.  L, R and row_blocks depend on (n, k) only: results are bitwise reproducible from run
// to run and from one GPU model to another.
struct BwdLayout {
  int64_t C;           // column chunks: ceil(n / W)
  int L, R;            // chunks x lanes per block (L*R <= kBlock)
  int64_t col_blocks;  // ceil(C / L)
  int64_t row_blocks;  // blocks along the rows (partials when > 1)
};

// Tree-sum acc[0..2W) over the R lanes of each chunk of the block (fixed shape: deterministic).
// On return lane r == 0 holds the block's sums.  Every thread of the block must call it.
template <int W2>
__device__ __forceinline__ void block_sum_lanes(float (&acc)[W2], float (*sh)[kBlock], int R, int L,
                                                int r) {
  if (R == 1) return;  // uniform
  const int tid = threadIdx.x;
#pragma unroll
  for (int q = 0; q < W2; ++q) sh[q][tid] = acc[q];
  int p = 1;
  while (p < R) p <<= 1;
  for (int stride = p >> 1; stride >= 1; stride >>= 1) {
    __syncthreads();
    if (r < stride && r + stride < R) {
#pragma unroll
      for (int q = 0; q < W2; ++q) sh[q][tid] += sh[q][tid + stride * L];
    }
  }
  __syncthreads();
  if (r == 0) {
#pragma unroll
    for (int q = 0; q < W2; ++q) acc[q] = sh[q][tid];
  }
}

// grad_z: [k, n] -> grad_mu, grad_logvar: [n] (or float32 partials [row_blocks][2][n]).
//   sum[i]  = sum_j grad_z[j, i]            grad_mu[i]     = sum[i]
//   sume[i] = sum_j grad_z[j, i] * eps_ji    grad_logvar[i] = 0.5 exp(0.5 logvar[i]) * sume[i]
// VEC (n % W == 0, grad_z/logvar/outputs aligned to W*sizeof(T)): a chunk is G whole Philox
// groups per row and one W-element vector load.  Otherwise (W = 4, G = 1): the chunk's four
// elements j*n + 4c .. +3 start at offset (j*n) mod 4 inside a group, so a row may need the
// next group too (two Philox calls for rows with a nonzero offset), scalar loads, and the last
// chunk may be partial.  The next row's grad_z is loaded before this row's normals are computed
// (one load in flight per thread while it does the arithmetic).
// Traffic per element: reads sizeof(T) of grad_z; per column 3*sizeof(T) more (logvar, outputs)
// plus 16 B of partials per row block when row_blocks > 1.
template <typename T, int G, bool VEC>
__global__ void __launch_bounds__(kBlock)
reparameterize_bwd_kernel(const T* __restrict__ grad_z, const T* __restrict__ logvar,
                          const int64_t* __restrict__ seed_ptr, T* __restrict__ grad_mu,
                          T* __restrict__ grad_logvar, float* __restrict__ partial, int64_t n,
                          int64_t k, BwdLayout lay) {
  constexpr int W = 4 * G;
  __shared__ float sh[2 * W][kBlock];

  const int l = static_cast<int>(threadIdx.x) % lay.L;
  const int r = static_cast<int>(threadIdx.x) / lay.L;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * lay.L + l;
  const bool active = r < lay.R && c < lay.C;
  const int64_t lanes = lay.row_blocks * lay.R;
  const int64_t rho = static_cast<int64_t>(blockIdx.y) * lay.R + r;
  const uint64_t seed = load_seed(seed_ptr);
  const int64_t col0 = c * W;
  const int ncols = VEC ? W : (n - col0 < W ? static_cast<int>(n - col0) : W);  // generic: last chunk

  float acc[2 * W];  // [0, W): sum grad_z, [W, 2W): sum grad_z * eps
#pragma unroll
  for (int q = 0; q < 2 * W; ++q) acc[q] = 0.0f;

  if (active && rho < k) {
    const int64_t row_step = lanes * n;  // elements between two rows of this lane
    int64_t e = rho * n + col0;          // first element of the chunk in row j
    float x[W];
    auto load_row = [&](int64_t e_row, float* dst) {
      if constexpr (VEC) {
        Vec<T, W>::load(grad_z + e_row, dst);
      } else {
#pragma unroll
        for (int q = 0; q < W; ++q) dst[q] = q < ncols ? load_scalar(grad_z + e_row + q) : 0.0f;
      }
    };
    load_row(e, x);
    for (int64_t j = rho; j < k; j += lanes) {
      float xn[W];
      const bool more = j + lanes < k;
      if (more) load_row(e + row_step, xn);

      float eps[W];
      if constexpr (VEC) {
        normals<G>(seed, static_cast<uint64_t>(e) >> 2, eps);
      } else {
        const uint64_t g0 = static_cast<uint64_t>(e) >> 2;
        const int off = static_cast<int>(e & 3);
        float a[8];
        normals<1>(seed, g0, a);
        if (off + ncols > 4) {
          normals<1>(seed, g0 + 1, a + 4);
        } else {
#pragma unroll
          for (int q = 4; q < 8; ++q) a[q] = 0.0f;
        }
        // eps[q] = a[off + q] with constant register indices (no local-memory array).
#pragma unroll
        for (int q = 0; q < 4; ++q)
          eps[q] = off == 0 ? a[q] : off == 1 ? a[q + 1] : off == 2 ? a[q + 2] : a[q + 3];
      }
#pragma unroll
      for (int q = 0; q < W; ++q) {
        acc[q] += x[q];
        acc[W + q] = fmaf(x[q], eps[q], acc[W + q]);
      }
      if (!more) break;
#pragma unroll
      for (int q = 0; q < W; ++q) x[q] = xn[q];
      e += row_step;
    }
  }

  block_sum_lanes<2 * W>(acc, sh, lay.R, lay.L, r);
  if (!active || r != 0) return;

  if (partial == nullptr) {  // one row block: finish here
    float lv[W], gm[W], gl[W];
    if constexpr (VEC) {
      Vec<T, W>::load(logvar + col0, lv);
    } else {
#pragma unroll
      for (int q = 0; q < W; ++q) lv[q] = q < ncols ? load_scalar(logvar + col0 + q) : 0.0f;
    }
#pragma unroll
    for (int q = 0; q < W; ++q) {
      gm[q] = acc[q];
      gl[q] = 0.5f * expf(0.5f * lv[q]) * acc[W + q];
    }
    if constexpr (VEC) {
      Vec<T, W>::store(grad_mu + col0, gm);
      Vec<T, W>::store(grad_logvar + col0, gl);
    } else {
#pragma unroll
      for (int q = 0; q < W; ++q) {
        if (q < ncols) {
          store_scalar(grad_mu + col0 + q, gm[q]);
          store_scalar(grad_logvar + col0 + q, gl[q]);
        }
      }
    }
  } else {  // partial[b][0][i] = sum, partial[b][1][i] = sume  (float32)
    float* p0 = partial + static_cast<int64_t>(blockIdx.y) * 2 * n + col0;
    float* p1 = p0 + n;
    if constexpr (VEC) {  // n % W == 0 and the buffer is 256-B aligned: 16-B stores
#pragma unroll
      for (int q = 0; q < G; ++q) {
        Vec<float, 4>::store(p0 + 4 * q, acc + 4 * q);
        Vec<float, 4>::store(p1 + 4 * q, acc + W + 4 * q);
      }
    } else {
#pragma unroll
      for (int q = 0; q < W; ++q) {
        if (q < ncols) {
          p0[q] = acc[q];
          p1[q] = acc[W + q];
        }
      }
    }
  }
}

// Sums the row_blocks partials of each column in a fixed order and writes the gradients.
// Block = 32 columns x 8 lanes; lane w sums partial rows w, w+8, ... in order, then lane 0 adds
// the 8 lane sums in order.  Reads 8*row_blocks + sizeof(T) bytes and writes 2*sizeof(T) per column.
template <typename T>
__global__ void __launch_bounds__(kBlock)
reparameterize_bwd_finish_kernel(const float* __restrict__ partial, const T* __restrict__ logvar,
                                 T* __restrict__ grad_mu, T* __restrict__ grad_logvar, int64_t n,
                                 int64_t row_blocks) {
  constexpr int kCols = 32, kLanes = kBlock / kCols;
  __shared__ float sh[2][kLanes][kCols];
  const int col = threadIdx.x % kCols, lane = threadIdx.x / kCols;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kCols + col;
  float s0 = 0.0f, s1 = 0.0f;
  if (i < n) {
    for (int64_t b = lane; b < row_blocks; b += kLanes) {
      s0 += partial[b * 2 * n + i];
      s1 += partial[b * 2 * n + n + i];
    }
  }
  sh[0][lane][col] = s0;
  sh[1][lane][col] = s1;
  __syncthreads();
  if (lane != 0 || i >= n) return;
#pragma unroll
  for (int w = 1; w < kLanes; ++w) {
    s0 += sh[0][w][col];
    s1 += sh[1][w][col];
  }
  store_scalar(grad_mu + i, s0);
  store_scalar(grad_logvar + i, 0.5f * expf(0.5f * load_scalar(logvar + i)) * s1);
}

// ============================================================================ launchers

// Threads of one resident wave of `Kernel` on `device` (the grid-stride kernels' cap); the
// occupancy query is cached per (kernel, device).
template <auto Kernel>
int64_t wave_threads(int device) {
  struct Tag {};
  return static_cast<int64_t>(sm_count(device)) *
         blocks_per_sm<Tag>(reinterpret_cast<const void*>(Kernel), kBlock, device) * kBlock;
}

template <typename T, int G>
void launch_fwd_vec(const T* mu, const T* logvar, const int64_t* seed, T* z, int64_t n, int64_t k,
                    cudaStream_t stream, int device) {
  constexpr int W = 4 * G;
  constexpr auto kernel = reparameterize_fwd_vec_kernel<T, G>;
  const int64_t C = n / W, items = k * C;
  const int64_t wave = wave_threads<kernel>(device);
  int64_t nthreads;
  if (items <= wave) nthreads = items;        // one item per thread
  else if (C <= wave) nthreads = (wave / C) * C;  // fixed column per thread (>= half a wave)
  else nthreads = wave;                       // huge rows: column changes every step
  const int64_t step_c = nthreads % C;
  const int64_t blocks = ceil_div(nthreads, kBlock);
  kernel<<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(mu, logvar, seed, z, C, items, nthreads,
                                                               step_c);
  VK_CUDA_CHECK_LAUNCH("reparameterize_fwd_vec_kernel");
}

template <typename T>
void launch_fwd_generic(const T* mu, const T* logvar, const int64_t* seed, T* z, int64_t n, int64_t k,
                        cudaStream_t stream, int device) {
  constexpr auto kernel = reparameterize_fwd_generic_kernel<T>;
  const int64_t numel = k * n, groups = ceil_div(numel, 4);
  const int64_t nthreads = std::min(groups, wave_threads<kernel>(device));
  const int64_t step_i = (4 * nthreads) % n;
  const bool z_vec = is_aligned(z, 4 * sizeof(T));
  const int64_t blocks = ceil_div(nthreads, kBlock);
  kernel<<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(mu, logvar, seed, z, n, numel, groups,
                                                               nthreads, step_i, z_vec);
  VK_CUDA_CHECK_LAUNCH("reparameterize_fwd_generic_kernel");
}

template <typename T>
void fwd_dispatch(const void* mu_, const void* logvar_, const int64_t* seed, void* z_, int64_t n, int64_t k,
                  cudaStream_t stream, int device) {
  const T* mu = static_cast<const T*>(mu_);
  const T* logvar = static_cast<const T*>(logvar_);
  T* z = static_cast<T*>(z_);
  auto vec_ok = [&](int W) {
    const size_t bytes = W * sizeof(T);
    return n % W == 0 && is_aligned(mu, bytes) && is_aligned(logvar, bytes) && is_aligned(z, bytes);
  };
  if constexpr (sizeof(T) == 4) {
    if (vec_ok(4)) return launch_fwd_vec<T, 1>(mu, logvar, seed, z, n, k, stream, device);
  } else {
    if (vec_ok(8)) return launch_fwd_vec<T, 2>(mu, logvar, seed, z, n, k, stream, device);
    if (vec_ok(4)) return launch_fwd_vec<T, 1>(mu, logvar, seed, z, n, k, stream, device);
  }
  launch_fwd_generic<T>(mu, logvar, seed, z, n, k, stream, device);
}

// Backward work split (depends on n, k only -- never on the GPU -- so the summation order and
// hence the bits of the result are the same on every device).
constexpr int64_t kBwdTargetThreads = int64_t{1} << 18;  // ~ one wave of an H100 (132 x 2048)
constexpr int64_t kBwdMinRowsPerThread = 8;              // below this a split costs more than it saves

BwdLayout bwd_layout(int64_t n, int64_t k, int W, bool can_split) {
  BwdLayout lay;
  lay.C = ceil_div(n, W);
  lay.L = static_cast<int>(std::min<int64_t>(lay.C, kBlock));
  lay.R = kBlock / lay.L;
  lay.R = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(lay.R, ceil_div(k, kBwdMinRowsPerThread))));
  lay.col_blocks = ceil_div(lay.C, lay.L);
  lay.row_blocks = 1;
  if (can_split) {
    const int64_t want = ceil_div(kBwdTargetThreads / kBlock, lay.col_blocks);
    const int64_t useful = ceil_div(k, static_cast<int64_t>(lay.R) * kBwdMinRowsPerThread);
    lay.row_blocks = std::max<int64_t>(1, std::min(want, useful));
  }
  return lay;
}

bool memory_pools_supported(int device) {
  static std::atomic<int> cache[kMaxCachedDevices];  // 1 + attribute, so 0 means "not queried"
  if (device >= 0 && device < kMaxCachedDevices) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v > 1;
  }
  int v = 0;
  VK_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMemoryPoolsSupported, device));
  if (device >= 0 && device < kMaxCachedDevices) cache[device].store(1 + (v != 0), std::memory_order_relaxed);
  return v != 0;
}

template <typename T, int G, bool VEC>
void launch_bwd(const T* grad_z, const T* logvar, const int64_t* seed, T* grad_mu, T* grad_logvar, int64_t n,
                int64_t k, cudaStream_t stream, int device) {
  constexpr int W = 4 * G;
  // Partials need a scratch buffer: stream-ordered (cudaMallocAsync / cudaFreeAsync), which is
  // also legal inside CUDA graph capture.  Without memory pools the backward runs unsplit.
  const BwdLayout lay = bwd_layout(n, k, W, memory_pools_supported(device));
  float* partial = nullptr;
  if (lay.row_blocks > 1) {
    const size_t bytes = static_cast<size_t>(lay.row_blocks) * 2 * static_cast<size_t>(n) * sizeof(float);
    VK_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partial), bytes, stream));
  }
  const dim3 grid(static_cast<unsigned>(lay.col_blocks), static_cast<unsigned>(lay.row_blocks));
  reparameterize_bwd_kernel<T, G, VEC><<<grid, kBlock, 0, stream>>>(grad_z, logvar, seed, grad_mu,
                                                                   grad_logvar, partial, n, k, lay);
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess && partial != nullptr) {
    reparameterize_bwd_finish_kernel<T><<<static_cast<unsigned>(ceil_div(n, 32)), kBlock, 0, stream>>>(
        partial, logvar, grad_mu, grad_logvar, n, lay.row_blocks);
    err = cudaGetLastError();
  }
  if (partial != nullptr) {
    const cudaError_t free_err = cudaFreeAsync(partial, stream);
    if (err == cudaSuccess) err = free_err;
  }
  if (err != cudaSuccess) throw_cuda_error(err, "reparameterize_bwd launch", __FILE__, __LINE__);
}

template <typename T>
void bwd_dispatch(const void* gz_, const void* logvar_, const int64_t* seed, void* gmu_, void* glv_, int64_t n,
                  int64_t k, cudaStream_t stream, int device) {
  const T* gz = static_cast<const T*>(gz_);
  const T* logvar = static_cast<const T*>(logvar_);
  T* gmu = static_cast<T*>(gmu_);
  T* glv = static_cast<T*>(glv_);
  auto vec_ok = [&](int W) {
    const size_t bytes = W * sizeof(T);
    return n % W == 0 && is_aligned(gz, bytes) && is_aligned(logvar, bytes) && is_aligned(gmu, bytes) &&
           is_aligned(glv, bytes);
  };
  if constexpr (sizeof(T) == 4) {
    if (vec_ok(4)) return launch_bwd<T, 1, true>(gz, logvar, seed, gmu, glv, n, k, stream, device);
  } else {
    if (vec_ok(8)) return launch_bwd<T, 2, true>(gz, logvar, seed, gmu, glv, n, k, stream, device);
    if (vec_ok(4)) return launch_bwd<T, 1, true>(gz, logvar, seed, gmu, glv, n, k, stream, device);
  }
  launch_bwd<T, 1, false>(gz, logvar, seed, gmu, glv, n, k, stream, device);
}

[[noreturn]] void bad_dtype(const char* fn, int dtype) {
  throw std::invalid_argument(std::string(fn) + ": dtype code " + std::to_string(dtype) +
                              " is not supported by the CUDA backend (0 float32, 1 float16, 2 bfloat16)");
}

int64_t grid_for(int64_t n, int device) {
  return std::max<int64_t>(1, std::min(ceil_div(n, kBlock), static_cast<int64_t>(sm_count(device)) * 8));
}

}  // namespace
}  // namespace cuda

// ============================================================================ public API

using cuda::DeviceGuard;

void philox_cuda(const uint32_t* counters, const uint32_t* keys, uint32_t* out, int64_t n, void* stream,
                 int device) {
  if (n <= 0) return;
  DeviceGuard guard(device);
  (void)cudaGetLastError();
  cuda::philox_kernel<<<static_cast<unsigned>(cuda::grid_for(n, device)), cuda::kBlock, 0,
                        static_cast<cudaStream_t>(stream)>>>(counters, keys, out, n);
  VK_CUDA_CHECK_LAUNCH("philox_kernel");
}

void philox_fill_cuda(uint64_t seed, uint64_t first_group, uint32_t* out, int64_t n_groups, void* stream,
                      int device) {
  if (n_groups <= 0) return;
  DeviceGuard guard(device);
  (void)cudaGetLastError();
  cuda::philox_fill_kernel<<<static_cast<unsigned>(cuda::grid_for(n_groups, device)), cuda::kBlock, 0,
                             static_cast<cudaStream_t>(stream)>>>(seed, first_group, out, n_groups);
  VK_CUDA_CHECK_LAUNCH("philox_fill_kernel");
}

void reparameterize_fwd_cuda(const void* mu, const void* logvar, const int64_t* seed, void* z, int64_t n,
                             int64_t k, int dtype, void* stream, int device) {
  if (dtype != kFloat32 && dtype != kFloat16 && dtype != kBFloat16) cuda::bad_dtype("reparameterize_fwd", dtype);
  if (n <= 0 || k <= 0) return;
  DeviceGuard guard(device);
  (void)cudaGetLastError();
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32: return cuda::fwd_dispatch<float>(mu, logvar, seed, z, n, k, s, device);
    case kFloat16: return cuda::fwd_dispatch<__half>(mu, logvar, seed, z, n, k, s, device);
    default: return cuda::fwd_dispatch<__nv_bfloat16>(mu, logvar, seed, z, n, k, s, device);
  }
}

void reparameterize_bwd_cuda(const void* grad_z, const void* logvar, const int64_t* seed, void* grad_mu,
                             void* grad_logvar, int64_t n, int64_t k, int dtype, void* stream, int device) {
  if (dtype != kFloat32 && dtype != kFloat16 && dtype != kBFloat16) cuda::bad_dtype("reparameterize_bwd", dtype);
  if (n <= 0) return;
  DeviceGuard guard(device);
  (void)cudaGetLastError();
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (k <= 0) {  // empty sums: both gradients are 0 (all-zero bits are +0 in every dtype)
    const size_t bytes = static_cast<size_t>(n) * (dtype == kFloat32 ? 4 : 2);
    VK_CUDA_CHECK(cudaMemsetAsync(grad_mu, 0, bytes, s));
    VK_CUDA_CHECK(cudaMemsetAsync(grad_logvar, 0, bytes, s));
    return;
  }
  switch (dtype) {
    case kFloat32: return cuda::bwd_dispatch<float>(grad_z, logvar, seed, grad_mu, grad_logvar, n, k, s, device);
    case kFloat16: return cuda::bwd_dispatch<__half>(grad_z, logvar, seed, grad_mu, grad_logvar, n, k, s, device);
    default: return cuda::bwd_dispatch<__nv_bfloat16>(grad_z, logvar, seed, grad_mu, grad_logvar, n, k, s, device);
  }
}

int cuda_device_count() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // no driver / no device: not an error for the caller
    return 0;
  }
  return count;
}

int cuda_compiled_version() { return CUDART_VERSION; }

}  // namespace vaekernels

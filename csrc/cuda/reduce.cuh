// Reductions in a fixed order for the CUDA kernels of iwae_bound, gaussian_log_prob and
// log_mean_exp (csrc/cuda/*.cu only), so that every result is bitwise reproducible from run to
// run and independent of the GPU model:
//
//   warp_sum(x)               butterfly over the 32 lanes (xor 16, 8, 4, 2, 1): every lane gets the sum
//   warp_lse(m, s)            the same butterfly for online log-sum-exp states (vaekernels/logsumexp.h)
//   block_sum(x, scratch)     warp sums, then warp 0 adds the warp results in warp order
//   sum_rows_kernel           out[j] = sum_r part[r, j] over float32 partials, rows in a fixed order
//   dispatch_dtype(code, fn)  fn(float{}), fn(__half{}), fn(__nv_bfloat16{}) for a dtype code
//   exp_f / log_f             the accurate expf / logf (no --use_fast_math: see common.cuh) as functors
#pragma once

#include <initializer_list>
#include <stdexcept>
#include <string>

#include "cuda/common.cuh"
#include "vaekernels/logsumexp.h"

namespace vaekernels {
namespace cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

struct ExpF {
  __device__ __forceinline__ float operator()(float x) const { return expf(x); }
};
struct LogF {
  __device__ __forceinline__ float operator()(float x) const { return logf(x); }
};

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o >= 1; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

__device__ __forceinline__ void warp_lse(float& m, float& s) {
#pragma unroll
  for (int o = 16; o >= 1; o >>= 1) {
    const float m2 = __shfl_xor_sync(kFullMask, m, o), s2 = __shfl_xor_sync(kFullMask, s, o);
    // Lane pairs merge in opposite orders (a+b vs b+a); lse_merge is symmetric up to the order of
    // the final addition, so keep one order: the lower lane's state first.
    if (threadIdx.x & o) {
      float mm = m2, ss = s2;
      lse_merge(mm, ss, m, s, ExpF{});
      m = mm, s = ss;
    } else {
      lse_merge(m, s, m2, s2, ExpF{});
    }
  }
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); scratch: 32 floats of shared
// memory.  Every thread must call it; every thread gets the result.
__device__ __forceinline__ float block_sum(float x, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  x = warp_sum(x);
  __syncthreads();  // scratch may still be read by an earlier call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < warps; ++w) total += scratch[w];  // warp order, the same in every thread
  return total;
}

// out[j] = sum_{r < R} part[r * C + j] for j < C (float32 partials), written as T.
// Block = 32 columns x 8 lanes: lane w sums rows w, w + 8, ... in order, then lane 0 adds the 8
// lane sums in lane order.  Reads 4 R bytes and writes sizeof(T) per column.
template <typename T>
__global__ void __launch_bounds__(256)
sum_rows_kernel(const float* __restrict__ part, int64_t R, int64_t C, T* __restrict__ out) {
  constexpr int kCols = 32, kRowLanes = 8;
  __shared__ float sh[kRowLanes][kCols];
  const int col = threadIdx.x % kCols, lane = threadIdx.x / kCols;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kCols + col;
  float acc = 0.0f;
  if (j < C)
    for (int64_t r = lane; r < R; r += kRowLanes) acc += part[r * C + j];
  sh[lane][col] = acc;
  __syncthreads();
  if (lane != 0 || j >= C) return;
#pragma unroll
  for (int w = 1; w < kRowLanes; ++w) acc += sh[w][col];
  store_scalar(out + j, acc);
}

template <typename T>
void launch_sum_rows(const float* part, int64_t R, int64_t C, T* out, cudaStream_t stream) {
  const int64_t blocks = (C + 31) / 32;
  sum_rows_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(part, R, C, out);
  VK_CUDA_CHECK_LAUNCH("sum_rows_kernel");
}

// A float32 scratch buffer ordered on `stream` (cudaMallocAsync / cudaFreeAsync: legal inside CUDA
// graph capture), freed when it goes out of scope.  bytes == 0: no buffer.
class StreamBuffer {
 public:
  StreamBuffer(size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes > 0) VK_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&ptr_), bytes, stream));
  }
  ~StreamBuffer() {
    if (ptr_ != nullptr) (void)cudaFreeAsync(ptr_, stream_);
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  float* get() const { return ptr_; }

 private:
  float* ptr_ = nullptr;
  cudaStream_t stream_;
};

[[noreturn]] inline void bad_dtype_code(const char* fn, int dtype) {
  throw std::invalid_argument(std::string(fn) + ": dtype code " + std::to_string(dtype) +
                              " is not supported by the CUDA backend (0 float32, 1 float16, 2 bfloat16)");
}

template <class Fn>
void dispatch_dtype(const char* fn_name, int dtype, Fn&& fn) {
  switch (dtype) {
    case kFloat32: return fn(float{});
    case kFloat16: return fn(__half{});
    case kBFloat16: return fn(__nv_bfloat16{});
    default: bad_dtype_code(fn_name, dtype);
  }
}

inline int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Elements per 16-byte access of T, or 1 when the arrays are not all aligned to 16 bytes or the
// rows (of `row` elements) do not keep that alignment.
template <typename T>
int vec_width(int64_t row, std::initializer_list<const void*> ptrs) {
  constexpr int kVec = 16 / sizeof(T);
  if (row % kVec != 0) return 1;
  for (const void* p : ptrs)
    if (p != nullptr && !is_aligned(p, 16)) return 1;
  return kVec;
}

// Load / store N consecutive elements as float32: 16-byte accesses when N > 1 (p aligned to 16
// bytes by the caller's choice of N; N * sizeof(T) > 16 takes several), else a scalar one.
template <typename T, int N>
__device__ __forceinline__ void load_n(const T* p, float* out) {
  constexpr int kPer = 16 / sizeof(T) < N ? 16 / sizeof(T) : N;
  if constexpr (N == 1) {
    out[0] = load_scalar(p);
  } else {
#pragma unroll
    for (int i = 0; i < N; i += kPer) Vec<T, kPer>::load(p + i, out + i);
  }
}
template <typename T, int N>
__device__ __forceinline__ void store_n(T* p, const float* in) {
  constexpr int kPer = 16 / sizeof(T) < N ? 16 / sizeof(T) : N;
  if constexpr (N == 1) {
    store_scalar(p, in[0]);
  } else {
#pragma unroll
    for (int i = 0; i < N; i += kPer) Vec<T, kPer>::store(p + i, in + i);
  }
}

}  // namespace
}  // namespace cuda
}  // namespace vaekernels

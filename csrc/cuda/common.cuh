// Shared device/host helpers for the vaekernels CUDA kernels (csrc/cuda/*.cu only; never
// included from a .cpp compiled by the host compiler -- see kernels.h for that side).
//
//   VK_CUDA_CHECK(expr)       throw std::runtime_error with the CUDA error name/string
//   DeviceGuard               save the current device, switch to `device`, restore on scope exit
//   sm_count(device)          multiprocessor count, cached per device
//   Load/store of float32 / float16 / bfloat16 as float32, scalar and 4/8/16-byte vectors
//   box_muller4(words, eps)   the four N(0,1) values of one Philox group (docs/random.md)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <atomic>
#include <stdexcept>
#include <string>

#include "vaekernels/dtype.h"
#include "vaekernels/philox.h"

// The normal stream must match the CPU/Triton/reference backends to a few ulp: --use_fast_math
// would turn logf/sincospif into the approximate __logf/__sinf family and flush denormals.
#if defined(__USE_FAST_MATH__)
#error "vaekernels CUDA kernels must be compiled without --use_fast_math"
#endif

namespace vaekernels {
namespace cuda {

// ------------------------------------------------------------------ errors

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  // Reset the runtime's "last error" so a failure here is not reported again by the launch
  // check of the next, unrelated call (sticky errors such as an illegal address persist in
  // the context regardless and will be reported by every later call, as they must).
  (void)cudaGetLastError();
  throw std::runtime_error(std::string("vaekernels CUDA error: ") + cudaGetErrorName(err) + ": " +
                           cudaGetErrorString(err) + " (" + what + " at " + file + ":" +
                           std::to_string(line) + ")");
}

#define VK_CUDA_CHECK(expr)                                                          \
  do {                                                                               \
    const cudaError_t vk_err_ = (expr);                                              \
    if (vk_err_ != cudaSuccess) ::vaekernels::cuda::throw_cuda_error(vk_err_, #expr, \
                                                                     __FILE__, __LINE__); \
  } while (0)

// After a <<<>>> launch: configuration errors (and sticky errors from earlier work).
#define VK_CUDA_CHECK_LAUNCH(name)                                                   \
  do {                                                                               \
    const cudaError_t vk_err_ = cudaGetLastError();                                  \
    if (vk_err_ != cudaSuccess) ::vaekernels::cuda::throw_cuda_error(vk_err_, "launch of " name, \
                                                                     __FILE__, __LINE__); \
  } while (0)

// ------------------------------------------------------------------ device guard

// Makes `device` current for the scope and restores the caller's device afterwards, so that
// torch's notion of the current device is left as it was.  The runtime's current device is the
// thread's current driver context, shared with torch's own (dynamically linked) runtime.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    VK_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) {
      VK_CUDA_CHECK(cudaSetDevice(device));
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) (void)cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool switched_ = false;
};

constexpr int kMaxCachedDevices = 64;

// A per-device integer attribute, queried once (the device must be current or valid).
inline int cached_device_attribute(std::atomic<int>* cache, cudaDeviceAttr attr, int device) {
  if (device >= 0 && device < kMaxCachedDevices) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  VK_CUDA_CHECK(cudaDeviceGetAttribute(&v, attr, device));
  if (v <= 0) v = 1;
  if (device >= 0 && device < kMaxCachedDevices) cache[device].store(v, std::memory_order_relaxed);
  return v;
}

inline int sm_count(int device) {
  static std::atomic<int> cache[kMaxCachedDevices];
  return cached_device_attribute(cache, cudaDevAttrMultiProcessorCount, device);
}

// Resident blocks of `kernel` per SM at `block` threads, cached per (kernel instantiation, device):
// call it from a function template instantiated once per kernel (Tag makes the cache distinct).
template <typename Tag>
inline int blocks_per_sm(const void* kernel, int block, int device) {
  static std::atomic<int> cache[kMaxCachedDevices];
  if (device >= 0 && device < kMaxCachedDevices) {
    const int v = cache[device].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  VK_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, kernel, block, 0));
  if (v <= 0) v = 1;
  if (device >= 0 && device < kMaxCachedDevices) cache[device].store(v, std::memory_order_relaxed);
  return v;
}

inline bool is_aligned(const void* p, size_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) % bytes) == 0;
}

// ------------------------------------------------------------------ dtype load/store

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Read-only scalar load through the non-coherent (texture) path.
template <typename T>
__device__ __forceinline__ float load_scalar(const T* p) {
  return to_float(__ldg(p));
}
template <typename T>
__device__ __forceinline__ void store_scalar(T* p, float x) {
  *p = from_float<T>(x);
}

// The raw vector type that moves B bytes in one instruction (LDG/STG .32/.64/.128).
template <int B>
struct RawVec;
template <>
struct RawVec<4> {
  using type = uint32_t;
};
template <>
struct RawVec<8> {
  using type = uint2;
};
template <>
struct RawVec<16> {
  using type = uint4;
};

// N consecutive elements of T as one vector access; p must be aligned to N*sizeof(T).
template <typename T, int N>
struct Vec {
  static constexpr int kBytes = N * static_cast<int>(sizeof(T));
  using Raw = typename RawVec<kBytes>::type;
  union U {
    Raw raw;
    T v[N];
  };

  __device__ __forceinline__ static void load(const T* p, float* out) {
    U u;
    u.raw = __ldg(reinterpret_cast<const Raw*>(p));
#pragma unroll
    for (int m = 0; m < N; ++m) out[m] = to_float(u.v[m]);
  }
  __device__ __forceinline__ static void store(T* p, const float* in) {
    U u;
#pragma unroll
    for (int m = 0; m < N; ++m) u.v[m] = from_float<T>(in[m]);
    *reinterpret_cast<Raw*>(p) = u.raw;
  }
};

// ------------------------------------------------------------------ the normal stream

// The four normals of one Philox group (docs/random.md):
//   u(w) = fma(float(w), 2^-32, 2^-33) in (0, 1];  r01 = sqrt(-2 ln u(w0)), r23 = sqrt(-2 ln u(w2))
//   eps = (r01 cos 2pi u(w1), r01 sin 2pi u(w1), r23 cos 2pi u(w3), r23 sin 2pi u(w3))
// Accurate functions only (the build has no --use_fast_math): logf (__logf has an absolute,
// not relative, error bound, so it is poor exactly where ln u -> 0, u -> 1), IEEE sqrtf, and
// sincospif(2u): 2u is exact, which avoids rounding 2*pi*u before the argument reduction.
__device__ __forceinline__ void box_muller4(const Philox4& w, float eps[4]) {
  const float u0 = philox_uniform(w.w[0]);
  const float u1 = philox_uniform(w.w[1]);
  const float u2 = philox_uniform(w.w[2]);
  const float u3 = philox_uniform(w.w[3]);
  const float r01 = sqrtf(-2.0f * logf(u0));
  const float r23 = sqrtf(-2.0f * logf(u2));
  float s1, c1, s3, c3;
  sincospif(2.0f * u1, &s1, &c1);
  sincospif(2.0f * u3, &s3, &c3);
  eps[0] = r01 * c1;
  eps[1] = r01 * s1;
  eps[2] = r23 * c3;
  eps[3] = r23 * s3;
}

// The 4*G normals of groups g, g+1, ..., g+G-1.
template <int G>
__device__ __forceinline__ void normals(uint64_t seed, uint64_t g, float* eps) {
#pragma unroll
  for (int q = 0; q < G; ++q) box_muller4(philox_group(seed, g + q), eps + 4 * q);
}

__device__ __forceinline__ uint64_t load_seed(const int64_t* seed) {
  return static_cast<uint64_t>(__ldg(seed));
}

}  // namespace cuda
}  // namespace vaekernels

// Helpers shared by the CPU kernel files (csrc/cpu/*.cpp): storage types and the type the
// arithmetic runs in, dtype dispatch, row loops that gcc vectorizes, and an OpenMP split whose
// results never depend on the thread count.
//
// Included only from csrc/cpu/*.cpp, compiled once per ISA with -DVK_CPU_ISA=<name>; everything
// lives in vaekernels::cpu::<ISA>::(anonymous), like vecmath.h, so copies for different ISAs
// never merge at link time.
#pragma once

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <new>

#include <type_traits>
#include <utility>

#include "cpu/kernels.h"
#include "cpu/vecmath.h"
#include "vaekernels/dtype.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace vaekernels {
namespace cpu {
namespace VK_CPU_ISA {
namespace {

// A zero-filled heap array for kernel scratch space.  Not std::vector: its out-of-line template
// code (weak symbols in namespace std) is emitted by every ISA's objects alike, and the linker
// keeps one copy for all of them -- the generic path could end up running AVX-512 code.  This
// type lives in the ISA namespace, so each ISA gets its own.
template <typename T>
class Buffer {
 public:
  explicit Buffer(int64_t n = 0)
      : data_(n > 0 ? static_cast<T*>(calloc(static_cast<size_t>(n), sizeof(T))) : nullptr), size_(n > 0 ? n : 0) {
    if (n > 0 && data_ == nullptr) throw std::bad_alloc();
  }
  ~Buffer() { free(data_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T* data() { return data_; }
  const T* data() const { return data_; }
  bool empty() const { return size_ == 0; }
  int64_t size() const { return size_; }
  T* begin() { return data_; }
  T* end() { return data_ + size_; }
  T& operator[](int64_t i) { return data_[i]; }
  const T& operator[](int64_t i) const { return data_[i]; }

 private:
  T* data_;
  int64_t size_;
};

// Unaligned vector loads and stores.
template <class V, class T>
VK_INLINE V loadu(const T* p) {
  V v;
  memcpy(&v, p, sizeof v);
  return v;
}
template <class V, class T>
VK_INLINE void storeu(T* p, const V& v) {
  memcpy(p, &v, sizeof v);
}

// Non-temporal (streaming) stores: the line goes to memory without first being read into the
// cache, and the cache keeps what it holds.  kStreamV: the widest such store of the ISA (bytes).
#if defined(__AVX512F__)
constexpr int64_t kStreamV = 64;
#elif defined(__AVX__)
constexpr int64_t kStreamV = 32;
#elif defined(__SSE2__)
constexpr int64_t kStreamV = 16;
#else
constexpr int64_t kStreamV = 1;  // none: plain stores
#endif

// One streaming store of kBytes (16, 32 or 64 up to kStreamV) at p, aligned to kBytes.
template <int64_t kBytes>
VK_INLINE void stream_store(char* p, const char* from) {
  static_assert(kBytes <= kStreamV && (kBytes == 16 || kBytes == 32 || kBytes == 64), "no such streaming store");
#if defined(__AVX512F__)
  if constexpr (kBytes == 64) return _mm512_stream_si512(reinterpret_cast<__m512i*>(p), _mm512_loadu_si512(from));
#endif
#if defined(__AVX__)
  if constexpr (kBytes == 32) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from));
    return _mm256_stream_si256(reinterpret_cast<__m256i*>(p), x);
  }
#endif
#if defined(__SSE2__)
  if constexpr (kBytes == 16) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(from));
    return _mm_stream_si128(reinterpret_cast<__m128i*>(p), x);
  }
#endif
}

// The vector v at p by streaming stores of min(sizeof v, kStreamV) bytes where p is aligned to
// that; else (and without streaming stores, or for vectors under 16 bytes) a plain store.
template <class V, class T>
VK_INLINE void storeu_stream(T* p, const V& v) {
  constexpr int64_t chunk = static_cast<int64_t>(sizeof v) < kStreamV ? static_cast<int64_t>(sizeof v) : kStreamV;
  if constexpr (chunk < 16) {
    storeu(p, v);
  } else {
    if (reinterpret_cast<uintptr_t>(p) % chunk != 0) return storeu(p, v);
    for (int64_t o = 0; o < static_cast<int64_t>(sizeof v); o += chunk)
      stream_store<chunk>(reinterpret_cast<char*>(p) + o, reinterpret_cast<const char*>(&v) + o);
  }
}

typedef uint16_t vh __attribute__((vector_size(2 * kLanes)));  // kLanes 16-bit values
typedef double vd __attribute__((vector_size(8 * kLanes)));    // kLanes doubles

// Storage type S and compute type C: float32 arithmetic for the 16-bit types (converted with
// round to nearest even on the way out), float64 for float64 (float32 values promoted).
// load / store: one element; vload / vstore: kLanes elements as CV (kLanes C), vstream: vstore by
// streaming stores (storeu_stream).
struct F32 {
  using S = float;
  using C = float;
  using CV = vf;
  static VK_INLINE C load(S x) { return x; }
  static VK_INLINE S store(C x) { return x; }
  static VK_INLINE CV vload(const S* p) { return loadu<vf>(p); }
  static VK_INLINE void vstore(S* p, const CV& x) { storeu(p, x); }
  static VK_INLINE void vstream(S* p, const CV& x) { storeu_stream(p, x); }
};
struct F16 {
  using S = uint16_t;
  using C = float;
  using CV = vf;
  static VK_INLINE C load(S x) { return half_to_float<float>(uint32_t{x}); }
  static VK_INLINE S store(C x) { return static_cast<S>(float_to_half<uint32_t>(x)); }
  static VK_INLINE CV vload(const S* p) { return half_to_float<vf>(__builtin_convertvector(loadu<vh>(p), vu)); }
  static VK_INLINE void vstore(S* p, const CV& x) { storeu(p, __builtin_convertvector(float_to_half<vu>(x), vh)); }
  static VK_INLINE void vstream(S* p, const CV& x) {
    storeu_stream(p, __builtin_convertvector(float_to_half<vu>(x), vh));
  }
};
struct BF16 {
  using S = uint16_t;
  using C = float;
  using CV = vf;
  static VK_INLINE C load(S x) { return bf16_to_float<float>(uint32_t{x}); }
  static VK_INLINE S store(C x) { return static_cast<S>(float_to_bf16<uint32_t>(x)); }
  static VK_INLINE CV vload(const S* p) { return bf16_to_float<vf>(__builtin_convertvector(loadu<vh>(p), vu)); }
  static VK_INLINE void vstore(S* p, const CV& x) { storeu(p, __builtin_convertvector(float_to_bf16<vu>(x), vh)); }
  static VK_INLINE void vstream(S* p, const CV& x) {
    storeu_stream(p, __builtin_convertvector(float_to_bf16<vu>(x), vh));
  }
};
struct F64 {
  using S = double;
  using C = double;
  using CV = vd;
  static VK_INLINE C load(S x) { return x; }
  static VK_INLINE S store(C x) { return x; }
  static VK_INLINE CV vload(const S* p) { return loadu<vd>(p); }
  static VK_INLINE void vstore(S* p, const CV& x) { storeu(p, x); }
  static VK_INLINE void vstream(S* p, const CV& x) { storeu_stream(p, x); }
};

// fn(F32{}) / fn(F16{}) / ... for a dtype code of vaekernels/dtype.h (unknown codes: nothing;
// the binding rejects them before the call).
template <class Fn>
void dispatch_dtype(int dtype, Fn&& fn) {
  switch (dtype) {
    case kFloat32: return fn(F32{});
    case kFloat16: return fn(F16{});
    case kBFloat16: return fn(BF16{});
    case kFloat64: return fn(F64{});
  }
}

VK_INLINE float exp_c(float x) { return exp_f32(x); }  // ~1 ulp, vectorizable (vecmath.h)
VK_INLINE double exp_c(double x) { return __builtin_exp(x); }
VK_INLINE float log_c(float x) { return __builtin_logf(x); }
VK_INLINE double log_c(double x) { return __builtin_log(x); }

// Functors for vaekernels/logsumexp.h.
struct ExpC {
  template <class T>
  VK_INLINE T operator()(T x) const { return exp_c(x); }
};
struct LogC {
  template <class T>
  VK_INLINE T operator()(T x) const { return log_c(x); }
};

VK_INLINE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
VK_INLINE int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
VK_INLINE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// sum_{i < n} f(i) in type C, as kSumLanes interleaved partial sums (lane l takes i = l mod
// kSumLanes; gcc turns the lane loop into two SIMD registers of accumulators) folded by a fixed
// pairwise tree (fold_lanes, in registers: a scalar fold would cost as much as the sum).
// The order depends on n only: deterministic, and closer to the exact sum than one running sum
// (error ~ (n / kSumLanes + log2 kSumLanes) ulp of the terms' sum instead of n ulp).
template <class C>
constexpr int kSumLanes = 128 / sizeof(C);

// The W lanes of a (W a power of two) reduced by the pairwise tree "lane l op= lane l + W/2,
// then lane l + W/4, ..., 1; take lane 0": each step combines the high half of the lanes with the
// low half and halves the width.  (Bitwise the same lane 0 as full-width rotations, which for a
// 32-float vector cost AVX-512 two cross-register permutes per step: per-row folds took 13% of
// gaussian_kl's forward with them.)  The steps wider than one SIMD register run as fixed-size
// loops over the array (whole-register ops), the rest on one register by shuffles: a GCC vector
// wider than a register has its shuffles lowered element by element through memory (~60
// instructions per fold of 32 floats, 10% of gaussian_kl's forward).
template <class C>
constexpr int kRegisterLanes = 4 * kLanes / static_cast<int>(sizeof(C));  // vecmath.h's kLanes floats

template <class V, size_t... Lo>
VK_INLINE auto half_lo(const V& v, std::index_sequence<Lo...>) {
  return __builtin_shufflevector(v, v, Lo...);
}
template <class V, size_t... Lo>
VK_INLINE auto half_hi(const V& v, std::index_sequence<Lo...>) {
  return __builtin_shufflevector(v, v, (Lo + sizeof...(Lo))...);
}

template <int W, class V, class Op>
VK_INLINE auto fold_vector(const V& v, const Op& op) {
  if constexpr (W == 1) {
    return v[0];
  } else {
    using Idx = std::make_index_sequence<W / 2>;
    return fold_vector<W / 2>(op(half_lo(v, Idx{}), half_hi(v, Idx{})), op);
  }
}

template <int W, class C, class Op>
VK_INLINE C fold_lanes(C* a, const Op& op) {
  constexpr int R = W < kRegisterLanes<C> ? W : kRegisterLanes<C>;
  for (int w = W / 2; w >= R; w /= 2)
    for (int l = 0; l < w; ++l) a[l] = op(a[l], a[l + w]);
  typedef C V __attribute__((vector_size(R * sizeof(C))));
  V v;
  memcpy(&v, a, sizeof v);
  return fold_vector<R>(v, op);
}

// f(std::integral_constant<int, R>{}) for R = n, 1 <= n <= 4: a runtime count of rows (a step's
// samples, its last step shorter) turned into the compile-time R of row_sums / bwd_rows / from_z.
template <class F>
VK_INLINE void with_rows(int64_t n, const F& f) {
  switch (n) {
    case 4: return f(std::integral_constant<int, 4>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 2: return f(std::integral_constant<int, 2>{});
    default: return f(std::integral_constant<int, 1>{});
  }
}

// sums[r] = row_sum of f(r, .) for r < R: R rows in one pass over i, each with its own lanes,
// bitwise what R calls of row_sum give (a forward over samples reads each example's parameters
// once for R samples).
template <class C, int R, class F>
VK_INLINE void row_sums(int64_t n, const F& f, C sums[R]) {
  constexpr int W = kSumLanes<C>;
  C acc[R][W] = {};
  int64_t i = 0;
  for (; i + W <= n; i += W)
    for (int r = 0; r < R; ++r)
      for (int l = 0; l < W; ++l) acc[r][l] += f(r, i + l);
  if (i < n) {
    // The tail goes through its own buffer, padded with -0 (the identity of IEEE addition, also
    // for -0 lanes), and joins acc in one vector add: a scalar loop over acc itself kept acc in
    // memory, lane by lane, whether or not there was a tail.
    for (int r = 0; r < R; ++r) {
      C t[W];
      for (int l = 0; l < W; ++l) t[l] = -C(0);
      for (int l = 0; i + l < n; ++l) t[l] = f(r, i + l);
      for (int l = 0; l < W; ++l) acc[r][l] += t[l];
    }
  }
  for (int r = 0; r < R; ++r) sums[r] = fold_lanes<W>(acc[r], [](const auto& x, const auto& y) { return x + y; });
}

template <class C, class F>
VK_INLINE C row_sum(int64_t n, const F& f) {
  C sum[1];
  row_sums<C, 1>(n, [&](int, int64_t i) { return f(i); }, sum);
  return sum[0];
}

template <class V>  // a scalar or a vector; | not ||: no branch
VK_INLINE V nan_max_v(const V& a, const V& b) {
  return ((b > a) | (b != b)) ? b : a;
}

// The largest f(i), NaN if any is NaN, -inf for n = 0: kSumLanes lane maxima folded like row_sum's
// (exact: no order changes a max).  The NaN test is a select, so the lane loop vectorizes (fmax
// would drop the NaN); the fold runs on whole registers (a scalar fold of the 32 lanes cost more
// than the max itself: log_mean_exp over 2^20 rows of 64, 2 threads, 50 ms -> 32 ms).
template <class C, class F>
VK_INLINE C row_max(int64_t n, const F& f) {
  constexpr int W = kSumLanes<C>;
  C acc[W];
  for (int l = 0; l < W; ++l) acc[l] = -C(__builtin_huge_val());
  int64_t i = 0;
  for (; i + W <= n; i += W)
    for (int l = 0; l < W; ++l) acc[l] = nan_max_v(acc[l], f(i + l));
  if (i < n) {  // as in row_sum; -inf is the identity of nan_max
    C t[W];
    for (int l = 0; l < W; ++l) t[l] = -C(__builtin_huge_val());
    for (int l = 0; i + l < n; ++l) t[l] = f(i + l);
    for (int l = 0; l < W; ++l) acc[l] = nan_max_v(acc[l], t[l]);
  }
  return fold_lanes<W>(acc, [](const auto& x, const auto& y) { return nan_max_v(x, y); });
}

// Prefetches `bytes` from p, for reading: into L1 (kLocality 3) or L2 (1).  The backwards over
// samples (kBwdSamples below) walk a block of rows per step of samples, then jump B rows ahead to
// the next step: a stride the hardware prefetchers do not follow, so the rows of the step after
// next are prefetched into L1 while this one is computed (iwae_bound's backward at (4096, 256, 64),
// 2 threads, medians of 25 - 31 interleaved, Zen 5: into L2 14.1 / 15.0 / 14.3 ms, into L1 12.5 /
// 13.4 / 13.2; on the Zen 4 machine of the early sessions prefetching into L1 evicted what the
// forward was reading: 31 ms instead of 21, 1 thread).  log_mean_exp prefetches columns into L2.
template <int kLocality>
VK_INLINE void prefetch_bytes(const void* p, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(static_cast<const char*>(p) + o, 0, kLocality);
}

// Samples a forward over [S, B, D] walks side by side (iwae_bound, gaussian_log_prob): row j of
// samples s ... s + 3 together, so that 4 stretches of z (B rows apart) stream at once -- the
// hardware prefetchers follow each -- while the same rows of the next 4 samples are prefetched
// where that measured faster (fwd_prefetches).
// Any order over the samples gives the same rows' results; sums over samples still run in order.
// iwae_bound's forward at (4096, 256, 64), 2 threads, kernel alone, median of 15 interleaved:
// 12.4 -> 10.8 and 13.5 -> 12.1 ms (a dot product over z: 8.0 - 8.6); gaussian_log_prob's at
// (64, 4096, 256): 12.1 -> 11.3 and 12.4 -> 11.9 ms (dot: 8.9 - 9.4).  The samples' row sums then
// went into one pass over the dims (row_sums: each example's parameters loaded once per step, not
// per sample): iwae_bound 14.1 -> 13.4, 12.7 -> 11.8 ms; gaussian_log_prob 9.6 -> 8.8, 9.9 -> 8.8
// (dot 7.6 - 10.2; bitwise the same results).
// The backwards walked that way, a row of each sample in turn, were no faster (iwae_bound:
// 24.9 -> 26.5, 31.1 -> 30.5 ms): they take kBwdSamples below.
constexpr int64_t kSamplesAtOnce = 4;

// Whether such a forward prefetches the next step's rows (prefetch_bytes<1>): only where it
// measured faster, z past the last-level cache (streams) in rows under 1 KB.  A block's stretch of
// z per sample is then under 32 KB, too short for the hardware prefetchers to get ahead; with 1 KB
// rows (32 KB stretches) they keep up, and in cache there is nothing to wait for.  iwae_bound's
// forward, 2 threads, Zen 5, medians of 61 interleaved, with -> without the prefetch: (4096, 16,
// 64) 1.58 -> 2.15, (4096, 64, 64) 1.74 -> 2.37 ms; but (1024, 64, 8) 45 -> 41 us, (256, 256, 8)
// 33 -> 29 us, and (4096, 256, 64) 8.83 / 8.14 / 8.38 -> 8.22 / 7.68 / 7.83 ms (three runs; with
// the backward's prefetch into L1, so the pair runs after it; a read of z in this order without
// any arithmetic ran 8.7 ms with the prefetch, 6.7 without, a linear read 6.9).
VK_INLINE bool fwd_prefetches(int64_t row_bytes, int64_t z_bytes) {
  return row_bytes < 1024 && z_bytes >= kStreamMinBytes;
}

// Samples a backward over [S, B, D] walks side by side (iwae_bound, gaussian_log_prob): row j of
// samples s ... s + 3 in one pass over the dims, so the example's parameters and its running sums
// over samples (in L2: 32 examples x D x 2 - 4 arrays, 64 - 128 KB at D = 256) are loaded and
// stored once per step instead of once per row, and the rows of grad_z go from registers to memory
// (streaming stores past the last-level cache) instead of through a staging row.  The sums still
// add the samples in order: results are bitwise those of a one-row walk.  The rows of the step
// after next are prefetched (into L1: prefetch_bytes).  iwae_bound's backward alone at (4096,
// 256, 64), 2 threads, median of 11 interleaved, three runs: one row a step 24.7 / 34.7 / 29.8
// ms -> 16.9 / 21.9 / 18.2 (copying z into grad_z: 18.5 / 22.1 / 20.4); with plain stores 20.4 /
// 26.2 / 23.3; 2 or 8 samples a step no better than 4, nor 64 or 128 examples a task; without the
// software prefetch slower.
constexpr int kBwdSamples = 4;

// Whether an output of `bytes` in all is written with non-temporal stores (storeu_stream,
// D::vstream): only one past the last-level cache (kStreamMinBytes, kernels.h: 32 MiB, this
// machine's L3).  For an output written once and read only much later (a gradient of z's size)
// they skip the read-for-ownership of every line: a third of the memory traffic of a pass that
// reads z and writes grad_z.  Callers end their work with stream_fence().  A smaller one stays in cache for its reader, and streaming it out to DRAM made
// the pass depend on DRAM: gaussian_log_prob's backward at (8, 1024, 64), 2 MB of grad_z, ran
// 620-650 us (median) with them, 250-310 us without.
VK_INLINE bool streams(int64_t bytes) { return bytes >= kStreamMinBytes; }

// Orders this thread's non-temporal stores before whatever follows (they are weakly ordered).
VK_INLINE void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Threads for a call that touches `work` elements: 1 (no OpenMP fork, which costs several
// microseconds) below kSerialBelow; else num_threads (<= 0: the OpenMP default).
constexpr int64_t kSerialBelow = 32768;

inline int threads_for(int64_t work, int num_threads) {
#ifdef _OPENMP
  if (work >= kSerialBelow) return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  (void)num_threads;
#endif
  (void)work;
  return 1;
}

// body(begin, end) over a static split of [0, items) into one contiguous range per thread, so
// that each thread sets up its scratch once.  Callers make every item's result independent of
// which thread runs it (and combine items in item order), so results never depend on threads.
template <class Body>
void parallel_ranges(int64_t items, int threads, const Body& body) {
  if (threads <= 1 || items <= 1) {
    if (items > 0) body(int64_t{0}, items);
    return;
  }
  const int t = static_cast<int>(min64(threads, items));
#pragma omp parallel num_threads(t)
  {
#ifdef _OPENMP
    const int64_t id = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int64_t id = 0, nt = 1;
#endif
    const int64_t begin = items * id / nt, end = items * (id + 1) / nt;
    if (begin < end) body(begin, end);
  }
}

// out[j] = sum_{r < rows} part[r * cols + j] in row order r = 0, 1, ... (deterministic), for a
// column sum of per-block partials; parallel over columns.
template <class C, class Out>
void sum_rows(const C* part, int64_t rows, int64_t cols, int threads, const Out& out) {
  parallel_ranges(ceil_div(cols, 64), threads_for(rows * cols, threads), [&](int64_t c0, int64_t c1) {
    for (int64_t j0 = 64 * c0; j0 < min64(cols, 64 * c1); j0 += 64) {
      const int64_t nj = min64(64, cols - j0);
      C acc[64] = {};
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < nj; ++j) acc[j] += part[r * cols + j0 + j];
      for (int64_t j = 0; j < nj; ++j) out(j0 + j, acc[j]);
    }
  });
}

}  // namespace
}  // namespace VK_CPU_ISA
}  // namespace cpu
}  // namespace vaekernels

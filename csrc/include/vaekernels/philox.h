// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11;
// the Random123 generator, the same as Triton's tl.philox / tl.randint4x) and the
// vaekernels normal stream built on it.  One header for host (C++) and device (CUDA) code.
//
// The stream (docs/random.md): element e of an output viewed as a row-major [K, N] array
//   g = e >> 2;  (w0, w1, w2, w3) = philox4x32_10(counter = (lo32(g), hi32(g), 0, 0),
//                                                 key     = (lo32(seed), hi32(seed)))
//   u(w) = fma(float(w), 2^-32, 2^-33)        in float32: in (0, 1], never 0
//   r01 = sqrt(-2 ln u(w0)), r23 = sqrt(-2 ln u(w2))
//   e%4 == 0: r01 cos(2 pi u(w1))   1: r01 sin(2 pi u(w1))
//          2: r23 cos(2 pi u(w3))   3: r23 sin(2 pi u(w3))
#pragma once
#include <stdint.h>

// Host code: `static inline`, i.e. internal linkage.  csrc/cpu/*.cpp are compiled once per ISA
// (generic, avx2, avx512) into one module; with plain `inline` an out-of-line copy of, say,
// philox4x32_10 would have the same mangled name in every ISA object and the linker would keep
// just one of them, so the generic path could end up running AVX-512 code.
#if defined(__CUDACC__)
#define VK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define VK_HOST_DEVICE static inline
#endif

namespace vaekernels {

// Round multipliers and Weyl key increments of Philox4x32 (Random123 philox.h).
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct Philox4 {
  uint32_t w[4];
};

VK_HOST_DEVICE void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
#if defined(__CUDA_ARCH__)
  *lo = a * b;
  *hi = __umulhi(a, b);
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *lo = static_cast<uint32_t>(p);
  *hi = static_cast<uint32_t>(p >> 32);
#endif
}

// Philox4x32 with 10 rounds: counter (c0, c1, c2, c3), key (k0, k1).
VK_HOST_DEVICE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                     uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kPhiloxM0, c0, &hi0, &lo0);
    mulhilo32(kPhiloxM1, c2, &hi1, &lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  Philox4 r;
  r.w[0] = c0;
  r.w[1] = c1;
  r.w[2] = c2;
  r.w[3] = c3;
  return r;
}

// The four words of group g of the stream with 64-bit key `seed`.
VK_HOST_DEVICE Philox4 philox_group(uint64_t seed, uint64_t g) {
  return philox4x32_10(static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), 0u, 0u,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// u(w) = fma(float(w), 2^-32, 2^-33): the +2^-33 keeps u away from 0 so ln(u) is finite
// (|normal| <= sqrt(-2 ln 2^-33) ~ 6.8); float(w) may round up to 2^32, so u <= 1.
VK_HOST_DEVICE float philox_uniform(uint32_t w) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(static_cast<float>(w), 2.3283064365386963e-10f, 1.1641532182693481e-10f);
#else
  return __builtin_fmaf(static_cast<float>(w), 2.3283064365386963e-10f, 1.1641532182693481e-10f);
#endif
}

}  // namespace vaekernels

// Reparameterized sampling on the CPU, and the Philox helpers the stream tests call.
//
//   forward   z[j, i]        = mu[i] + sigma[i] * eps(seed, j*n + i),   sigma = exp(logvar / 2)
//   backward  grad_mu[i]     = sum_j grad_z[j, i]
//             grad_logvar[i] = sigma[i] / 2 * sum_j grad_z[j, i] * eps(seed, j*n + i)
//                            = 1 / 2 * sum_j grad_z[j, i] * (z[j, i] - mu[i])   (eps read back from z)
//   mu, logvar, grad_mu, grad_logvar: [n];  z, grad_z: [k, n] (row-major, contiguous).
//
// eps is the vaekernels normal stream (philox.h, docs/random.md): Philox4x32-10 of group
// g = e >> 2, Box-Muller on its four words.  It is generated in blocks of kLanes groups
// (4*kLanes normals) with SIMD Philox and SIMD log / sqrt / sincos (vecmath.h) and goes from
// registers straight into the forward's z or the backward's sums; it is never stored.
//
// The backward takes eps from z where the caller hands z (and mu) over and z holds it well: see
// kZBlock.  Elsewhere it regenerates eps.
//
// Work split: tiles of columns i (at most kCap wide) x rows j.  Each tile converts mu and
// computes sigma for its columns once, then walks its rows.  The backward splits over columns
// only and adds over j in order, so its results do not depend on the number of threads (nor do
// the forward's).
#include <string.h>

#include <memory>

#include "cpu/common.h"
#include "cpu/kernels.h"
#include "vaekernels/philox.h"

namespace vaekernels {
namespace cpu {
namespace VK_CPU_ISA {
namespace {

constexpr int kBlock = 4 * kLanes;       // normals per generated block (kLanes Philox groups)
// Blocks generated per step.  for_normals software-pipelines the steps (the next step's Philox
// beside this step's Box-Muller) and CMake compiles this file with gcc's register-pressure-aware
// pre-allocation scheduler (-fschedule-insns -fsched-pressure), which interleaves the two; 2
// blocks a step is then best.  Zen 4, 1 thread, ns per normal, best of 15 (before: 4 blocks a
// step, generated then transformed, default scheduling): generation alone AVX-512 0.65 -> 0.59,
// AVX2 1.05 -> 0.93; forward with z AVX-512 0.72 -> 0.69, AVX2 1.12 -> 1.05; backward AVX-512
// 0.74 -> 0.71, AVX2 1.16 -> 1.07.
constexpr int kBlocksPerStep = 2;
constexpr int64_t kCap = 2048;           // most columns per tile, most normals per step
constexpr int64_t kMinChunk = 256;       // fewest columns per tile when tiles are split for threads
// The forward writes a z past the last-level cache (common.h, streams()) with streaming stores:
// so large a z cannot stay in the cache for its reader anyway, and they save the read of each
// line before its write.  (4096, 256, 64) float32, 2 threads, median of 15 interleaved:
// 27.7 -> 25.9 ms (generation alone: 23.6); the write prefetch of the next row is off there.

// The backward reads eps back from z, as (z - mu) / sigma, for each block of kZBlock columns
// (counted from column 0, so the choice does not depend on the tiling or the thread count) whose
// columns all have |mu| <= kZRatio * sigma and sigma <= kZMaxSigma.  There the error is bounded:
// z = mu + sigma * eps rounded once and z - mu rounded once give (z - mu) / sigma = eps + d with
// |d| <= u (|mu| / sigma + 2 |eps|) <= u (kZRatio + 2 |eps|), u the unit roundoff of z's type --
// ~4 bits of eps lost in float32 (18 u at |eps| = 1), none that matter in float64 (16-bit z:
// never read; its unit roundoff would lose every digit).  Where sigma << |mu| the quotient would
// lose every digit, so those blocks regenerate eps (exact), as do NaN / inf columns (the test
// fails).
// Why read z at all: the backward then streams grad_z and z from memory (both ~268 MB at
// (4096, 256, 64): 17-19 ms on 2 threads here) instead of running the generator again
// (24-29 ms) -- when the reads stream well: kZRows rows a step in column tiles of kBwdCap (128 KB
// segments of each row; one row a step in tiles of 2048 columns was no faster than the
// generator, and software prefetching, or mixing regenerated and read-back rows to overlap the
// generator with the loads, measured slower or within the noise).
constexpr int64_t kZBlock = 64;
// Most columns per backward tile (a multiple of kZBlock), and rows a step where eps comes from z.
// The read-back loop alone at (4096, 256, 64), 2 threads, median of 11 interleaved (a dot product
// of the same two arrays: 17.1 ms): 2 rows x 8192 columns 19.3 ms, 4 x 8192 18.4, 4 x 32768
// 17.3-19.2, 8 rows 21.6-21.9 (8 x 2 streams are too many for the prefetchers).
constexpr int64_t kBwdCap = 32768;
constexpr int kZRows = 4;
// kZRatio: on the benchmark's inputs (mu ~ N(0, 1), logvar ~ N(0, 1) clamped to [-5, 3]) 96.5%
// of the blocks qualify at 8, 99.93% at 16, and the backward at (4096, 256, 64) took 19.6 ms with
// 3.5% of its blocks regenerated, 18.1 with none.  16 costs one bit of eps more than 8 (of the 24
// of a float32 -- far below the Monte Carlo noise of the gradient it feeds).
constexpr double kZRatio = 16;
constexpr double kZMaxSigma = 0x1p64;  // so that z = mu + sigma * eps stays finite

// Float lane l of a block carries group lane_group(l) of the block: then transpose4 of the four
// Box-Muller outputs leaves the normals in stream order (output vector m: groups m*kLanes/4 ...).
constexpr int lane_group(int l) { return (l % 4) * (kLanes / 4) + l / 4; }

// Philox state lives in 64-bit lanes: mul_lo32 reads only the low halves, so the upper halves
// may hold garbage and no masking is ever needed; pack_lo32 collects the low halves at the end.
struct StreamKey {
  vq k0[10], k1[10];       // round keys (k + r * Weyl increment), broadcast
  uint32_t s0[10], s1[10];  // the same, scalar
  vq offset[2];            // group offset within a block of each 64-bit lane of the two halves

  explicit StreamKey(uint64_t seed) {
    uint32_t a = static_cast<uint32_t>(seed), b = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r, a += kPhiloxW0, b += kPhiloxW1) {
      s0[r] = a;
      s1[r] = b;
      k0[r] = (vq){} + a;
      k1[r] = (vq){} + b;
    }
    for (int h = 0; h < 2; ++h)
      for (int p = 0; p < kLanes / 2; ++p) offset[h][p] = lane_group(pack_lane(h, p));
  }
};

// Philox4x32-10 of counter (lo32(g), hi32(g), 0, 0) for nb consecutive blocks: block b, float
// lane l gets g = gbase + b*kLanes + lane_group(l), words w[b][0..3][l].  Several blocks at once
// give the out-of-order core independent multiply chains: kBlocksPerStep.
//
// Rounds 0 and 1 take what the counter's zeros and shared high word give away.  Round 0: the
// counter's words 2 and 3 are 0, so the M1 product vanishes and the state becomes
// (hi32(g) ^ k0, 0, hi(M0 lo32(g)) ^ k1, lo(M0 lo32(g))).  Its word 0 is the same in every lane
// whenever hi32(g) is (kUniformHigh: every group of the call below the same multiple of 2^32, i.e.
// always but across a 2^32 boundary, 16 G elements into a stream): then round 1's M0 product is
// one scalar product, its word 1 (0) drops out of the xor and its word 3 is that product's low
// half -- 7 vector operations for rounds 0 and 1 instead of 11, of about 60 per 4 x kLanes/2 words.
template <int nb, bool kUniformHigh>
VK_INLINE void philox_blocks(const StreamKey& key, uint64_t gbase, vu w[nb][4]) {
  constexpr int kHalves = 2 * nb;
  const vq m0 = (vq){} + kPhiloxM0, m1 = (vq){} + kPhiloxM1;
  vq c0[kHalves], c1[kHalves], c2[kHalves], c3[kHalves];
  int r0;  // the first generic round
  if (kUniformHigh) {
    const uint64_t p = static_cast<uint64_t>(static_cast<uint32_t>(gbase >> 32) ^ key.s0[0]) * kPhiloxM0;
    const vq x2 = (vq){} + ((p >> 32) ^ key.s1[1]);  // round 1: hi(M0 c0) ^ k1, xored into c3
    const vq x3 = (vq){} + (p & 0xffffffffu);       // round 1: lo(M0 c0)
    for (int h = 0; h < kHalves; ++h) {
      const vq g = gbase + static_cast<uint64_t>(h / 2 * kLanes) + key.offset[h % 2];
      const vq p0 = mul_lo32(g, m0);                     // round 0
      const vq p1 = mul_lo32((p0 >> 32) ^ key.k1[0], m1);  // round 1: M1 (round 0's c2)
      c0[h] = (p1 >> 32) ^ key.k0[1];
      c1[h] = p1;
      c2[h] = p0 ^ x2;
      c3[h] = x3;
    }
    r0 = 2;
  } else {
    for (int h = 0; h < kHalves; ++h) {
      const vq g = gbase + static_cast<uint64_t>(h / 2 * kLanes) + key.offset[h % 2];
      const vq p0 = mul_lo32(g, m0);
      c0[h] = (g >> 32) ^ key.k0[0];
      c1[h] = (vq){};
      c2[h] = (p0 >> 32) ^ key.k1[0];
      c3[h] = p0;
    }
    r0 = 1;
  }
#pragma GCC unroll 9
  for (int r = r0; r < 10; ++r)
    for (int h = 0; h < kHalves; ++h) {
      const vq p0 = mul_lo32(c0[h], m0), p1 = mul_lo32(c2[h], m1);
      c0[h] = (p1 >> 32) ^ c1[h] ^ key.k0[r];
      c1[h] = p1;
      c2[h] = (p0 >> 32) ^ c3[h] ^ key.k1[r];
      c3[h] = p0;
    }
  for (int b = 0; b < nb; ++b) {
    w[b][0] = pack_lo32(c0[2 * b], c0[2 * b + 1]);
    w[b][1] = pack_lo32(c1[2 * b], c1[2 * b + 1]);
    w[b][2] = pack_lo32(c2[2 * b], c2[2 * b + 1]);
    w[b][3] = pack_lo32(c3[2 * b], c3[2 * b + 1]);
  }
}

// Whether groups gbase ... gbase + count - 1 share hi32(g).
VK_INLINE bool same_high(uint64_t gbase, uint64_t count) { return (gbase >> 32) == ((gbase + count - 1) >> 32); }

template <int nb>
VK_INLINE void philox_blocks(const StreamKey& key, uint64_t gbase, vu w[nb][4]) {
  if (same_high(gbase, static_cast<uint64_t>(nb) * kLanes))
    philox_blocks<nb, true>(key, gbase, w);
  else
    philox_blocks<nb, false>(key, gbase, w);
}

// u(w) = fma(float(w), 2^-32, 2^-33): float(w) rounds to nearest; the product is exact, so the
// unfused multiply-add is the same single rounding.
VK_INLINE vf uniform(vu w) { return __builtin_convertvector(w, vf) * 0x1p-32f + 0x1p-33f; }

// Box-Muller on the words w of nb blocks: the normals eps(e), e = 4*gbase ... 4*gbase + nb*kBlock - 1
// (w from philox_blocks(gbase)), handed to the sink one vector of kLanes consecutive normals at a
// time: sink.vec(t0 + e - 4*gbase, v), in stream order.
template <int nb, class Sink>
VK_INLINE void box_muller_blocks(const vu w[nb][4], int64_t t0, Sink& sink) {
  for (int b = 0; b < nb; ++b) {
    const vf r01 = vsqrt(neg2log(uniform(w[b][0]))), r23 = vsqrt(neg2log(uniform(w[b][2])));
    vf s1, c1, s3, c3;
    sincos2pi(uniform(w[b][1]), &s1, &c1);
    sincos2pi(uniform(w[b][3]), &s3, &c3);
    vf o[4];
    transpose4(r01 * c1, r01 * s1, r23 * c3, r23 * s3, o);
    for (int m = 0; m < 4; ++m) sink.vec(t0 + b * kBlock + m * kLanes, o[m]);
  }
}

template <int nb, bool kUniformHigh, class Sink>
VK_INLINE void normals_blocks(const StreamKey& key, uint64_t gbase, int64_t t0, Sink& sink) {
  vu w[nb][4];
  philox_blocks<nb, kUniformHigh>(key, gbase, w);
  box_muller_blocks<nb>(w, t0, sink);
}

// Sinks take eps(e0 + t): vec(t, v) a whole vector v = eps(e0 + t ... e0 + t + kLanes - 1),
// one(t, x) a single normal.  This one stores them to out[t].
struct BufferSink {
  float* out;
  VK_INLINE void vec(int64_t t, vf v) { memcpy(out + t, &v, sizeof v); }
  VK_INLINE void one(int64_t t, float x) { out[t] = x; }
};

// eps(e0 + t) for t in [0, count), handed to sink in increasing t.  Blocks start at stream
// elements 4g, so when e0 % 4 != 0 the first block, and the last one when it sticks out, go
// through a scratch buffer to sink.one; every other vector goes from registers to sink.vec.
// Meanwhile it prefetches the next_bytes at `next` (memory the caller touches in its next step;
// kWrite: for writing), spread evenly over the blocks: the generator itself touches no memory,
// so those cache misses overlap its arithmetic.
template <bool kWrite, bool kUniformHigh, class Sink>
void for_normals_impl(const StreamKey& key, uint64_t e0, int64_t count, Sink& sink, const void* next,
                      int64_t next_bytes) {
  uint64_t g = e0 >> 2;
  int64_t t = -static_cast<int64_t>(e0 & 3);  // offset of the first element of block g
  const auto ragged_block = [&] {
    alignas(64) float scratch[kBlock];
    BufferSink to_scratch{scratch};
    normals_blocks<1, kUniformHigh>(key, g, 0, to_scratch);
    for (int64_t l = max64(0, -t); l < kBlock && t + l < count; ++l) sink.one(t + l, scratch[l]);
    t += kBlock;
    g += kLanes;
  };
  if (t < 0) ragged_block();
  const char* pf = static_cast<const char*>(next);
  const int64_t lines = (next_bytes + 63) / 64;
  const int64_t per_step = ceil_div(lines, max64(1, (count - t) / (kBlocksPerStep * kBlock)));
  int64_t line = 0;
  const auto prefetch_step = [&] {
    for (int64_t l = 0; l < per_step && line < lines; ++l, ++line) __builtin_prefetch(pf + 64 * line, kWrite, 3);
  };
  // Software-pipelined: each step computes the Philox words of the next step before the
  // Box-Muller of its own, in one branch-free stretch, so the core overlaps the integer multiply
  // chains with the float polynomials (apart they queue on different units and leave the others
  // idle).
  constexpr int64_t kStep = kBlocksPerStep * kBlock;
  if (t + kStep <= count) {
    vu w[kBlocksPerStep][4];
    philox_blocks<kBlocksPerStep, kUniformHigh>(key, g, w);
    for (; t + 2 * kStep <= count; t += kStep, g += kBlocksPerStep * kLanes) {
      vu wn[kBlocksPerStep][4];
      philox_blocks<kBlocksPerStep, kUniformHigh>(key, g + kBlocksPerStep * kLanes, wn);
      box_muller_blocks<kBlocksPerStep>(w, t, sink);
      prefetch_step();
      memcpy(w, wn, sizeof w);
    }
    box_muller_blocks<kBlocksPerStep>(w, t, sink);
    prefetch_step();
    t += kStep;
    g += kBlocksPerStep * kLanes;
  }
  while (t + kBlock <= count) {
    normals_blocks<1, kUniformHigh>(key, g, t, sink);
    t += kBlock;
    g += kLanes;
  }
  if (t < count) ragged_block();
}

template <bool kWrite, class Sink>
void for_normals(const StreamKey& key, uint64_t e0, int64_t count, Sink& sink, const void* next,
                 int64_t next_bytes) {
  // Every block the call generates: groups e0 / 4 ... (e0 + count + kBlock) / 4 at most.
  if (same_high(e0 >> 2, static_cast<uint64_t>(count) / 4 + 2 * kLanes))
    for_normals_impl<kWrite, true>(key, e0, count, sink, next, next_bytes);
  else
    for_normals_impl<kWrite, false>(key, e0, count, sink, next, next_bytes);
}

VK_INLINE float sigma_of(float logvar) { return exp_f32(0.5f * logvar); }
VK_INLINE double sigma_of(double logvar) { return __builtin_exp(0.5 * logvar); }

// z[t] = mu[t] + sigma[t] * eps(e0 + t): one row segment of the forward (mu, sigma: its columns,
// in the compute type).  The product and sum fuse to one fma where the ISA has FMA, in vec and
// one alike.  kStream: whole vectors go to z with streaming stores (streams()).
template <class D, bool kStream>
struct FwdSink {
  using S = typename D::S;
  using C = typename D::C;
  using CV = typename D::CV;
  S* z;
  const C* mu;
  const C* sigma;
  VK_INLINE void one(int64_t t, float e) { z[t] = D::store(mu[t] + sigma[t] * static_cast<C>(e)); }
  VK_INLINE void vec(int64_t t, vf e) {
    const CV x = loadu<CV>(mu + t) + loadu<CV>(sigma + t) * __builtin_convertvector(e, CV);
    if (kStream)
      D::vstream(z + t, x);
    else
      D::vstore(z + t, x);
  }
};

// sum_g[t] += grad_z[t];  sum_ge[t] += grad_z[t] * eps(e0 + t): one row segment of the backward.
template <class D>
struct BwdSink {
  using S = typename D::S;
  using C = typename D::C;
  using CV = typename D::CV;
  const S* grad_z;
  C* sum_g;
  C* sum_ge;
  VK_INLINE void one(int64_t t, float e) {
    const C g = D::load(grad_z[t]);
    sum_g[t] += g;
    sum_ge[t] += g * static_cast<C>(e);
  }
  VK_INLINE void vec(int64_t t, vf e) {
    const CV g = D::vload(grad_z + t);
    storeu(sum_g + t, loadu<CV>(sum_g + t) + g);
    storeu(sum_ge + t, loadu<CV>(sum_ge + t) + g * __builtin_convertvector(e, CV));
  }
};

// Hands eps[0 .. count) (a buffer) to sink: whole vectors, then single normals.
template <class Sink>
VK_INLINE void feed(Sink& sink, const float* eps, int64_t count) {
  int64_t t = 0;
  for (; t + kLanes <= count; t += kLanes) sink.vec(t, loadu<vf>(eps + t));
  for (; t < count; ++t) sink.one(t, eps[t]);
}

// Tiles: columns [c*chunk, min(n, (c+1)*chunk)) for c < nchunks.  A tile that holds whole rows
// (chunk == n) generates rows_per_step rows at a time, so small n still fills the buffer.
struct Plan {
  int64_t chunk, nchunks, rows_per_step;
  int threads;
};

Plan make_plan(int64_t n, int64_t k, int num_threads, int64_t cap) {
  Plan p;
  p.threads = threads_for(n * k, num_threads);
  // Column tiles of at most cap columns, their count rounded up to a multiple of the thread
  // count (the backward cannot split rows; static schedule) as far as kMinChunk columns allow.
  const int64_t fewest = ceil_div(n, cap);
  const int64_t nchunks = max64(fewest, min64(ceil_div(fewest, p.threads) * p.threads, n / kMinChunk));
  // Multiples of 64 columns: tiles start group-aligned whenever n % 4 == 0.
  p.chunk = nchunks == 1 ? n : ceil_div(ceil_div(n, nchunks), 64) * 64;
  p.nchunks = ceil_div(n, p.chunk);
  p.rows_per_step = p.chunk == n ? max64(1, min64(k, cap / n)) : 1;
  return p;
}

// tile(item) for item in [0, items), on up to `threads` OpenMP threads (static schedule).
template <class Tile>
void run_tiles(int64_t items, int threads, const Tile& tile) {
  if (threads <= 1 || items <= 1) {
    for (int64_t it = 0; it < items; ++it) tile(it);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(static_cast<int>(min64(threads, items)))
  for (int64_t it = 0; it < items; ++it) tile(it);
}

template <class D>
void fwd(const typename D::S* mu, const typename D::S* logvar, uint64_t seed, typename D::S* z,
         int64_t n, int64_t k, int num_threads) {
  using S = typename D::S;
  using C = typename D::C;
  const Plan plan = make_plan(n, k, num_threads, kCap);
  const StreamKey key(seed);
  // With threads, rows are split too when there are few column tiles (about 4 tiles per thread
  // for balance; each row block recomputes the sigma of its columns).
  const int64_t jblocks = plan.threads == 1 ? 1 : min64(k, max64(1, ceil_div(4 * plan.threads, plan.nchunks)));
  const int64_t jblock = ceil_div(k, jblocks);
  const bool stream = streams(n * k * static_cast<int64_t>(sizeof(S)));
  run_tiles(plan.nchunks * jblocks, plan.threads, [&](int64_t item) {
    const int64_t i0 = (item % plan.nchunks) * plan.chunk, cols = min64(plan.chunk, n - i0);
    const int64_t j0 = (item / plan.nchunks) * jblock, j1 = min64(k, j0 + jblock);
    alignas(64) C mu_c[kCap], sigma[kCap];
    alignas(64) float buf[kCap];
    for (int64_t t = 0; t < cols; ++t) {
      mu_c[t] = D::load(mu[i0 + t]);
      sigma[t] = sigma_of(D::load(logvar[i0 + t]));
    }
    for (int64_t j = j0; j < j1; j += plan.rows_per_step) {
      const int64_t rows = min64(plan.rows_per_step, j1 - j), jn = j + rows;
      const uint64_t e0 = static_cast<uint64_t>(j * n + i0);
      S* const next = jn < j1 ? z + jn * n + i0 : nullptr;  // the next step's stretch of z
      const int64_t next_bytes = next ? ((min64(plan.rows_per_step, j1 - jn) - 1) * n + cols) * sizeof(S) : 0;
      if (rows == 1 && stream) {  // fused: straight from registers into memory
        FwdSink<D, true> sink{z + j * n + i0, mu_c, sigma};
        for_normals<true>(key, e0, cols, sink, nullptr, 0);
      } else if (rows == 1) {  // fused: straight from registers into z
        FwdSink<D, false> sink{z + j * n + i0, mu_c, sigma};
        for_normals<true>(key, e0, cols, sink, next, next_bytes);
      } else {  // several whole (short) rows: one stretch of the stream, then row by row
        BufferSink sink{buf};
        for_normals<true>(key, e0, rows * n, sink, next, next_bytes);
        for (int64_t r = 0; r < rows; ++r) {
          FwdSink<D, false> row{z + (j + r) * n, mu_c, sigma};
          feed(row, buf + r * n, n);
        }
      }
    }
    if (stream) stream_fence();  // the streaming stores visible before the threads join
  });
}

// A T of the calling thread, kept from call to call (contents undefined): for arrays too big for
// some threads' stacks, and a fresh allocation per call can be fresh pages from the kernel (~10 us
// at small sizes).
template <class T>
T& thread_scratch() {
  static thread_local std::unique_ptr<T> scratch(new T);
  return *scratch;
}

// The arrays of a backward tile (C: the compute type): sums over j (in order j = 0, 1, ...), the
// tile's sigma and mu, and the stretch of normals of the short-row path.
template <class C>
struct BwdScratch {
  alignas(64) C sum_g[kBwdCap];
  alignas(64) C acc[kBwdCap];
  alignas(64) C sigma[kBwdCap];
  alignas(64) C mu[kBwdCap];
  alignas(64) float normals[kBwdCap];
};

// sum_g[t] += grad_z[r][t];  acc[t] += grad_z[r][t] * (z[r][t] - mu[t]) for t < len, for rows
// r = 0 ... R-1 in order (rows of grad_z and z `stride` apart): one segment of R rows of the
// backward where eps is read back from z (kZBlock).  R rows at a time cut the traffic of the sums
// R-fold and keep 2R streams in flight (same sums, bitwise).
template <class D, int R>
VK_INLINE void from_z(const typename D::S* grad_z, const typename D::S* z, int64_t stride, const typename D::C* mu,
                      typename D::C* sum_g, typename D::C* acc, int64_t len) {
  using C = typename D::C;
  using CV = typename D::CV;
  int64_t t = 0;
  for (; t + kLanes <= len; t += kLanes) {
    CV sg = loadu<CV>(sum_g + t), sa = loadu<CV>(acc + t);
    const CV m = loadu<CV>(mu + t);
    for (int r = 0; r < R; ++r) {
      const CV g = D::vload(grad_z + r * stride + t);
      sg += g;
      sa += g * (D::vload(z + r * stride + t) - m);
    }
    storeu(sum_g + t, sg);
    storeu(acc + t, sa);
  }
  for (; t < len; ++t)
    for (int r = 0; r < R; ++r) {
      const C g = D::load(grad_z[r * stride + t]);
      sum_g[t] += g;
      acc[t] += g * (D::load(z[r * stride + t]) - mu[t]);
    }
}

// z, mu: null, or the forward's output and input (then eps is read back from z where kZBlock
// allows; float32 / float64 only, the caller's choice).  Per column the sums run over j in order
// whichever way eps comes, so the results do not depend on the number of threads.
template <class D>
void bwd(const typename D::S* grad_z, const typename D::S* logvar, const typename D::S* z,
         const typename D::S* mu, uint64_t seed, typename D::S* grad_mu, typename D::S* grad_logvar, int64_t n,
         int64_t k, int num_threads) {
  using S = typename D::S;
  using C = typename D::C;
  const Plan plan = make_plan(n, k, num_threads, kBwdCap);
  const StreamKey key(seed);
  run_tiles(plan.nchunks, plan.threads, [&](int64_t item) {
    const int64_t i0 = item * plan.chunk, cols = min64(plan.chunk, n - i0);
    BwdScratch<C>& scratch = thread_scratch<BwdScratch<C>>();  // 640 KB (float32), 1.1 MB (float64)
    C* const sum_g = scratch.sum_g;
    C* const acc = scratch.acc;
    C* const sigma = scratch.sigma;
    C* const mu_c = scratch.mu;
    bool use_z[kBwdCap / kZBlock];  // per block of the tile (tiles start at multiples of kZBlock)
    const int64_t nblocks = ceil_div(cols, kZBlock);
    // Separate, branch-free loops, so that they vectorize.
    for (int64_t t = 0; t < cols; ++t) sigma[t] = sigma_of(D::load(logvar[i0 + t]));
    if (z != nullptr)
      for (int64_t t = 0; t < cols; ++t) mu_c[t] = D::load(mu[i0 + t]);
    bool any_z = false;
    for (int64_t b = 0; b < nblocks; ++b) {
      bool ok = z != nullptr;
      if (ok)
        for (int64_t t = b * kZBlock; t < min64(cols, (b + 1) * kZBlock); ++t)  // NaN fails it
          ok &= (__builtin_fabs(mu_c[t]) <= static_cast<C>(kZRatio) * sigma[t]) &
                (sigma[t] <= static_cast<C>(kZMaxSigma));
      use_z[b] = ok;
      any_z |= ok;
    }
    // -0 is the exact identity of IEEE addition (+0 would turn a sum of -0 terms into +0).
    for (int64_t t = 0; t < cols; ++t) sum_g[t] = acc[t] = -0.0;
    if (plan.rows_per_step == 1 || any_z) {
      // kZRows rows a step (fewer at the end); each in runs of blocks that take eps the same way.
      for (int64_t j = 0; j < k; j += kZRows) {
        const int64_t rows = min64(kZRows, k - j);
        for (int64_t b = 0; b < nblocks;) {
          int64_t b1 = b + 1;
          while (b1 < nblocks && use_z[b1] == use_z[b]) ++b1;
          const int64_t t0 = b * kZBlock, len = min64(cols, b1 * kZBlock) - t0;
          const int64_t at = j * n + i0 + t0;  // element (j, i0 + t0)
          if (use_z[b]) {
            static_assert(kZRows <= 4, "with_rows takes 1 ... 4 rows");
            with_rows(rows, [&](auto r) { from_z<D, r>(grad_z + at, z + at, n, mu_c + t0, sum_g + t0, acc + t0, len); });
          } else {
            for (int64_t r = 0; r < rows; ++r) {  // fused: from registers into the sums
              BwdSink<D> sink{grad_z + at + r * n, sum_g + t0, acc + t0};
              // Meanwhile the next row's grad_z (of this run).
              const S* const next = j + r + 1 < k ? grad_z + at + (r + 1) * n : nullptr;
              for_normals<false>(key, static_cast<uint64_t>(at + r * n), len, sink, next,
                                 next ? len * static_cast<int64_t>(sizeof(S)) : 0);
            }
          }
          b = b1;
        }
      }
    } else {  // several whole (short) rows a step: one stretch of the stream, then row by row
      float* const buf = scratch.normals;
      for (int64_t j = 0; j < k; j += plan.rows_per_step) {
        const int64_t rows = min64(plan.rows_per_step, k - j), jn = j + rows;
        const S* const next = jn < k ? grad_z + jn * n + i0 : nullptr;  // the next step's grad_z
        const int64_t next_bytes = next ? ((min64(plan.rows_per_step, k - jn) - 1) * n + cols) * sizeof(S) : 0;
        BufferSink sink{buf};
        for_normals<false>(key, static_cast<uint64_t>(j * n + i0), rows * n, sink, next, next_bytes);
        for (int64_t r = 0; r < rows; ++r) {
          BwdSink<D> row{grad_z + (j + r) * n, sum_g, acc};
          feed(row, buf + r * n, n);
        }
      }
    }
    for (int64_t t = 0; t < cols; ++t) grad_mu[i0 + t] = D::store(sum_g[t]);
    if (any_z) {
      for (int64_t t = 0; t < cols; ++t) {
        // acc: sum grad_z * (z - mu) = sigma * sum grad_z * eps where eps came from z.
        const C scale = use_z[t / kZBlock] ? static_cast<C>(0.5) : static_cast<C>(0.5) * sigma[t];
        grad_logvar[i0 + t] = D::store(scale * acc[t]);
      }
    } else {  // the same, in a loop that vectorizes
      for (int64_t t = 0; t < cols; ++t) grad_logvar[i0 + t] = D::store(static_cast<C>(0.5) * sigma[t] * acc[t]);
    }
  });
}

}  // namespace

void philox(const uint32_t* counters, const uint32_t* keys, uint32_t* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t* c = counters + 4 * i;
    const Philox4 r = philox4x32_10(c[0], c[1], c[2], c[3], keys[2 * i], keys[2 * i + 1]);
    memcpy(out + 4 * i, r.w, sizeof r.w);
  }
}

// Runs the same SIMD Philox as the kernels, so the tests check its lane bookkeeping too.
void philox_fill(uint64_t seed, uint64_t first_group, uint32_t* out, int64_t n_groups) {
  const StreamKey key(seed);
  for (int64_t b = 0; b < n_groups; b += kLanes) {
    vu w[1][4];
    philox_blocks<1>(key, first_group + static_cast<uint64_t>(b), w);
    for (int l = 0; l < kLanes; ++l) {
      const int64_t g = b + lane_group(l);
      if (g < n_groups)
        for (int m = 0; m < 4; ++m) out[4 * g + m] = w[0][m][l];
    }
  }
}

void reparameterize_fwd(const void* mu, const void* logvar, uint64_t seed, void* z, int64_t n,
                        int64_t k, int dtype, int num_threads) {
  if (n <= 0 || k <= 0) return;
  switch (dtype) {
    case kFloat32:
      return fwd<F32>(static_cast<const float*>(mu), static_cast<const float*>(logvar), seed,
                      static_cast<float*>(z), n, k, num_threads);
    case kFloat16:
      return fwd<F16>(static_cast<const uint16_t*>(mu), static_cast<const uint16_t*>(logvar), seed,
                      static_cast<uint16_t*>(z), n, k, num_threads);
    case kBFloat16:
      return fwd<BF16>(static_cast<const uint16_t*>(mu), static_cast<const uint16_t*>(logvar), seed,
                       static_cast<uint16_t*>(z), n, k, num_threads);
    case kFloat64:
      return fwd<F64>(static_cast<const double*>(mu), static_cast<const double*>(logvar), seed,
                      static_cast<double*>(z), n, k, num_threads);
  }
}

// k == 0 writes the empty sums: grad_mu = -0, grad_logvar = sigma / 2 * -0 (or 1/2 * -0).
// z, mu: null, or read back eps from z where that is exact enough (kZBlock); 16-bit types never do.
void reparameterize_bwd(const void* grad_z, const void* logvar, const void* z, const void* mu, uint64_t seed,
                        void* grad_mu, void* grad_logvar, int64_t n, int64_t k, int dtype, int num_threads) {
  if (n <= 0 || k < 0) return;
  if (z == nullptr || mu == nullptr) z = mu = nullptr;
  switch (dtype) {
    case kFloat32:
      return bwd<F32>(static_cast<const float*>(grad_z), static_cast<const float*>(logvar),
                      static_cast<const float*>(z), static_cast<const float*>(mu), seed,
                      static_cast<float*>(grad_mu), static_cast<float*>(grad_logvar), n, k, num_threads);
    case kFloat16:
      return bwd<F16>(static_cast<const uint16_t*>(grad_z), static_cast<const uint16_t*>(logvar), nullptr, nullptr,
                      seed, static_cast<uint16_t*>(grad_mu), static_cast<uint16_t*>(grad_logvar), n, k, num_threads);
    case kBFloat16:
      return bwd<BF16>(static_cast<const uint16_t*>(grad_z), static_cast<const uint16_t*>(logvar), nullptr, nullptr,
                       seed, static_cast<uint16_t*>(grad_mu), static_cast<uint16_t*>(grad_logvar), n, k, num_threads);
    case kFloat64:
      return bwd<F64>(static_cast<const double*>(grad_z), static_cast<const double*>(logvar),
                      static_cast<const double*>(z), static_cast<const double*>(mu), seed,
                      static_cast<double*>(grad_mu), static_cast<double*>(grad_logvar), n, k, num_threads);
  }
}

}  // namespace VK_CPU_ISA
}  // namespace cpu
}  // namespace vaekernels

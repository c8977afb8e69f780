// log-mean-exp on the CPU: out = log (1/n) sum_j exp(x[o, j, i]), and its gradient.
//
//   x: [O, n, I] (the reduced dim in the middle; O = product of the dims before it, I = after);
//   out, grad: [O, I] in the compute type C (float32, or float64 for float64 x).
//   forward   out[o, i] = logsumexp_j x[o, j, i] - log n       (online, vaekernels/logsumexp.h)
//   backward  grad_x[o, j, i] = grad[o, i] * exp(x[o, j, i] - out[o, i] - log n)
//             = grad times the softmax weight of x[o, j, i]; 0 where out = -inf (all x = -inf),
//             where torch.logsumexp's gradient is NaN.  +inf and NaN propagate.
//
// Vectorization: kLane states (m, s) in arrays whose lane loops gcc vectorizes, filled chunk by
// chunk in two passes (lane_states: the max, then sum exp(x - max), one exp per element).  With
// I >= 2 a lane is a column i (a block of up to kLane columns walking j); with I = 1 and rows
// shorter than kLongRow a lane is a whole row; float32 rows of kLongRow to kBlockRowMax go
// kLanes rows at a time through row_block (SIMD lanes along the rows, reduced across by one
// shuffle tree for all the rows); longer contiguous rows (and the rows left over) are taken in
// chunks of kRowChunk, each summed across row_sum's lanes.  (An online merge per element, or kLane online
// states merged per row, made n = 64 rows 3x slower than torch.compile.)  The order depends on
// (n, I) only: deterministic, whatever the thread count.
#include "cpu/common.h"
#include "cpu/kernels.h"
#include "vaekernels/logsumexp.h"

#include <type_traits>

namespace vaekernels {
namespace cpu {
namespace VK_CPU_ISA {
namespace {

constexpr int64_t kLane = 32;
constexpr int64_t kRowChunk = 2048;  // elements of a contiguous row per chunk (8 KiB of float32: L1)
constexpr int64_t kJChunk = 128;     // steps j per chunk of kLane lanes (16 KiB of float32: L1)
constexpr int64_t kLongRow = 32;     // I = 1: rows at least this long are split into lanes
constexpr int64_t kPrefetchItems = 2;  // I > 1: items ahead whose columns are prefetched (1-8: +-5%)

// A chunk's state, given its max `top` and sum exp(x - top) over its terms: for top = +-inf or
// NaN, x - top would be inf - inf, and (top, 1) is the state by the logsumexp.h rules (-inf: every
// term 0; +inf: the value +inf; NaN stays NaN).
template <class C>
VK_INLINE bool finite_top(C top) {
  return top > -C(__builtin_huge_val()) && top < C(__builtin_huge_val());
}

// The states (m[l], s[l]) of sum_j exp(at(l, j)) for lanes l < nl, j < n, in chunks of kJChunk
// steps: per chunk two passes over L1-resident data, the lane maxima and then sum exp(x - max)
// (one exp per element; an online merge per element costs two), the chunk states merged in order.
// fresh: m, s hold the empty states (-inf, 0); then the first chunk's states are taken as they
// are -- exactly what merging them into the empty ones gives, without that merge's two exps a lane.
template <class C, class At>
VK_INLINE void lane_states(int64_t nl, int64_t n, const At& at, C* m, C* s, bool fresh) {
  for (int64_t j0 = 0; j0 < n; j0 += kJChunk) {
    const int64_t j1 = min64(n, j0 + kJChunk);
    C mx[kLane], sum[kLane] = {};
    for (int64_t l = 0; l < kLane; ++l) mx[l] = -C(__builtin_huge_val());
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t l = 0; l < nl; ++l) mx[l] = nan_max(mx[l], at(l, j));
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t l = 0; l < nl; ++l) sum[l] += finite_top(mx[l]) ? exp_c(at(l, j) - mx[l]) : C(0);
    if (fresh && j0 == 0) {
      for (int64_t l = 0; l < nl; ++l) m[l] = mx[l], s[l] = finite_top(mx[l]) ? sum[l] : C(1);
    } else {
      for (int64_t l = 0; l < nl; ++l) lse_merge(m[l], s[l], mx[l], finite_top(mx[l]) ? sum[l] : C(1), ExpC{});
    }
  }
}

// out[l] = m[l] + log s[l] - log n for first <= l < nl: the values of kLane states.  In float32 the logs
// go kLanes at a time through vecmath's neg2log (about 1 ulp; ln s = -neg2log(s) / 2 exactly): a
// scalar logf per row took 30% of the forward over rows of 64, and half of it over columns of 8
// ((8, 65536) over dim 0, 2 threads: 0.36 -> 0.19 ms).  s is >= 1 (the top term is 1) and
// finite, as neg2log needs; where s is NaN, m is NaN too and so is the value.  Lanes past nl (s =
// 0) compute garbage that is dropped.
VK_INLINE void lane_values(const float* m, const float* s, int64_t first, int64_t nl, float log_n, float* out) {
  alignas(64) float v[kLane];
  for (int64_t l = 0; l < kLane; l += kLanes) {
    vf sv, mv;
    memcpy(&sv, s + l, sizeof sv);
    memcpy(&mv, m + l, sizeof mv);
    const vf value = (mv + neg2log(sv) * -0.5f) - log_n;
    memcpy(v + l, &value, sizeof value);
  }
  for (int64_t l = first; l < nl; ++l) out[l] = v[l];
}
VK_INLINE void lane_values(const double* m, const double* s, int64_t first, int64_t nl, double log_n, double* out) {
  for (int64_t l = first; l < nl; ++l) out[l] = lse_value(m[l], s[l], LogC{}) - log_n;
}

// ---- Rows of kLongRow .. kBlockRowMax floats (I = 1, float32): kLanes rows at a time.
// Per row one vector of lane maxima (then of lane sums of exp(x - max)) over its vectors; then
// transpose_reduce turns the kLanes per-row vectors into one vector of the rows' values (lane r:
// row r) in log2(kLanes) shuffle steps, so the per-row horizontal folds, their latency chains
// and the per-row scalar work all go.  2 threads, AVX-512, against the per-row path (row_max,
// row_sum), medians of 9 interleaved runs: 8192 rows of 64 (in cache) 0.22 -> 0.17 ms, 16384 rows
// of 40 0.80 -> 0.55 ms; 2^20 rows of 64 (268 MB, bound by this machine's memory) 31-34 -> 24-32 ms.
constexpr int64_t kBlockRowMax = 256;  // kLanes rows of this many floats: 16 KiB, in L1 for pass 2

// Level s of transpose_reduce on x, y whose lanes form segments of s lanes (one row each):
// op of each segment's two halves, x's and y's segments interleaved (segments of s / 2).
template <int s>
constexpr int tr_lo(int i) {
  return (i / (s / 2) % 2 ? kLanes : 0) + i / (s / 2) / 2 * s + i % (s / 2);
}
template <int s, class Op, size_t... I>
VK_INLINE vf tr_step(vf x, vf y, const Op& op, std::index_sequence<I...>) {
  return op(__builtin_shufflevector(x, y, tr_lo<s>(I)...), __builtin_shufflevector(x, y, (tr_lo<s>(I) + s / 2)...));
}
// v[r], r < kLanes -> a vector whose lane r is op over the lanes of v[r] (a fixed tree: lanes l
// and l + s/2 first, s = kLanes, kLanes / 2, ...).  v is overwritten.
template <int s = kLanes, class Op>
VK_INLINE vf transpose_reduce(vf* v, const Op& op) {
  if constexpr (s == 1) {
    return v[0];
  } else {
    constexpr int pairs = s / 2;  // vectors left: s, each holding kLanes / s rows' segments
    for (int r = 0; r < pairs; ++r) v[r] = tr_step<s>(v[r], v[r + pairs], op, std::make_index_sequence<kLanes>{});
    return transpose_reduce<s / 2>(v, op);
  }
}

// out[r] = log mean exp of row r of x (kLanes rows of n floats, n in [kLongRow, kBlockRowMax]).
// A row's lane l takes elements l, l + kLanes, ...; a ragged tail is padded with -inf (no term).
VK_INLINE void row_block(const float* x, int64_t n, float log_n, float* out) {
  const float inf = __builtin_inff();
  const int64_t nv = n / kLanes, tail = n % kLanes;
  const auto at = [&](int64_t r, int64_t v) {
    vf e;
    memcpy(&e, x + r * n + v * kLanes, sizeof e);
    return e;
  };
  const auto tail_of = [&](int64_t r) {
    vf e = splat(-inf);
    memcpy(&e, x + r * n + nv * kLanes, tail * sizeof(float));
    return e;
  };
  vf acc[kLanes];
  for (int r = 0; r < kLanes; ++r) {
    vf m = tail ? tail_of(r) : splat(-inf);
    for (int64_t v = 0; v < nv; ++v) m = nan_max_v(m, at(r, v));
    acc[r] = m;
  }
  alignas(64) float top[kLanes];
  const vf topv = transpose_reduce(acc, [](vf a, vf b) { return nan_max_v(a, b); });
  memcpy(top, &topv, sizeof top);
  for (int r = 0; r < kLanes; ++r) {
    // Where the row's top is +-inf or NaN the sum is garbage, replaced below (finite_top).
    const vf t = splat(top[r]);
    vf sum = tail ? vexp(tail_of(r) - t) : splat(0.0f);
    for (int64_t v = 0; v < nv; ++v) sum += vexp(at(r, v) - t);
    acc[r] = sum;
  }
  const vf sum = transpose_reduce(acc, [](vf a, vf b) { return a + b; });
  // sum >= 1 (the top term is exp(0)) and finite where the top is: neg2log's domain.
  const vf s = (topv > -inf) & (topv < inf) ? sum : splat(1.0f);
  const vf value = (topv + neg2log(s) * -0.5f) - log_n;
  memcpy(out, &value, sizeof value);
}

template <class D>
void fwd(const typename D::S* x, typename D::C* out, int64_t outer, int64_t n, int64_t inner, int num_threads) {
  using C = typename D::C;
  using S = typename D::S;
  const C inf = __builtin_huge_val();
  const C log_n = static_cast<C>(__builtin_log(static_cast<double>(n)));
  // Three layouts of lanes, chosen by shape only: columns i (I > 1); lanes across a long row
  // (I = 1, n >= kLongRow); rows as lanes (I = 1, shorter rows: a lane walks its own row).
  const bool split_rows = inner == 1 && n >= kLongRow;
  const int64_t items = inner == 1 ? ceil_div(outer, kLane) : outer * ceil_div(inner, kLane);
  parallel_ranges(items, threads_for(outer * n * inner, num_threads), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      C m[kLane], s[kLane];
      for (int64_t l = 0; l < kLane; ++l) m[l] = -inf, s[l] = 0;
      if (split_rows) {  // rows o0 + l: chunks of each, in two passes: max, sum exp(x - max)
        const int64_t o0 = t * kLane, nl = min64(kLane, outer - o0);
        int64_t first = 0;
        if constexpr (std::is_same<S, float>::value)
          if (n <= kBlockRowMax)  // whole blocks of kLanes rows together; the rows left below
            for (; first + kLanes <= nl; first += kLanes) row_block(x + (o0 + first) * n, n, log_n, out + o0 + first);
        for (int64_t l = first; l < nl; ++l) {
          const S* row = x + (o0 + l) * n;
          for (int64_t c0 = 0; c0 < n; c0 += kRowChunk) {
            const S* seg = row + c0;
            const int64_t len = min64(kRowChunk, n - c0);
            const C top = row_max<C>(len, [&](int64_t i) { return D::load(seg[i]); });
            const C sum = finite_top(top) ? row_sum<C>(len, [&](int64_t i) { return exp_c(D::load(seg[i]) - top); }) : C(1);
            if (len == n) {  // one chunk (the common case): its state is the row's
              m[l] = top, s[l] = sum;
              break;
            }
            lse_merge(m[l], s[l], top, sum, ExpC{});  // chunks in order
          }
        }
        if (first < nl) lane_values(m, s, first, nl, log_n, out + o0);
      } else if (inner == 1) {  // lane l takes row o0 + l, transposed chunk by chunk into L1
        const int64_t o0 = t * kLane, nl = min64(kLane, outer - o0);
        alignas(64) C buf[kJChunk * kLane];  // buf[j * kLane + l]
        for (int64_t j0 = 0; j0 < n; j0 += kJChunk) {
          const int64_t len = min64(kJChunk, n - j0);
          if (nl < kLane)  // the last tile: its unused lanes get 0, not stack garbage (results dropped)
            for (int64_t j = 0; j < len; ++j)
              for (int64_t l = nl; l < kLane; ++l) buf[j * kLane + l] = 0;
          for (int64_t l = 0; l < nl; ++l) {
            const S* row = x + (o0 + l) * n + j0;
            for (int64_t j = 0; j < len; ++j) buf[j * kLane + l] = D::load(row[j]);
          }
          lane_states(kLane, len, [&](int64_t l, int64_t j) { return buf[j * kLane + l]; }, m, s, j0 == 0);
        }
        lane_values(m, s, 0, nl, log_n, out + o0);
      } else {  // lane l walks column i0 + l of slab o
        const int64_t cblocks = ceil_div(inner, kLane);
        const int64_t o = t / cblocks, i0 = (t % cblocks) * kLane, nl = min64(kLane, inner - i0);
        const S* base = x + o * n * inner + i0;
        if (t + kPrefetchItems < t1) {
          // A later item's columns, one short run per j at a stride of I elements: no hardware
          // prefetcher follows that many streams (2^20 columns of 64, 2 threads: 43 ms -> 33 ms).
          const int64_t tn = t + kPrefetchItems, on = tn / cblocks, in0 = (tn % cblocks) * kLane;
          const S* next = x + on * n * inner + in0;
          const int64_t bytes = min64(kLane, inner - in0) * static_cast<int64_t>(sizeof(S));
          for (int64_t j = 0; j < n; ++j) prefetch_bytes<1>(next + j * inner, bytes);
        }
        const auto at = [&](int64_t l, int64_t j) { return D::load(base[j * inner + l]); };
        // A constant lane count keeps the lane states in registers (a run-time one kept them on
        // the stack, a store-to-load chain per step j: 2^20 columns of 64, 33 ms -> 27 ms; 65536
        // columns of 8, 1 thread: 0.62 -> 0.52 ms).
        if (nl == kLane)
          lane_states(kLane, n, at, m, s, true);
        else
          lane_states(nl, n, at, m, s, true);
        lane_values(m, s, 0, nl, log_n, out + o * inner + i0);
      }
    }
  });
}

template <class D>
void bwd(const typename D::C* grad, const typename D::S* x, const typename D::C* out, typename D::S* grad_x,
         int64_t outer, int64_t n, int64_t inner, int num_threads) {
  using C = typename D::C;
  const C log_n = static_cast<C>(__builtin_log(static_cast<double>(n)));
  if (inner == 1 && n < kLongRow) {
    // Short contiguous rows: blocks of whole rows (at most kRowChunk elements), the rows' grad
    // and lse spread over per-element buffers, then one vectorized loop over the block (a loop
    // along each short row alone stays scalar: 30 us for 4096 rows of 1).
    const int64_t rows = kRowChunk / n;
    parallel_ranges(ceil_div(outer, rows), threads_for(outer * n, num_threads), [&](int64_t t0, int64_t t1) {
      // A row's grad and lse go out kFill copies at a time (whole vector stores; element by element
      // the spreading cost a quarter of the backward: 65536 rows of 8, 2 threads, 0.22 -> 0.16 ms).  A store
      // may run past its row into the next one's, which that row then overwrites; kFill spare.
      constexpr int64_t kFill = 16;
      alignas(64) C gb[kRowChunk + kFill], lb[kRowChunk + kFill];
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t o0 = t * rows, o1 = min64(outer, o0 + rows), e0 = o0 * n, count = (o1 - o0) * n;
        for (int64_t o = o0; o < o1; ++o) {
          const C gv = grad[o], lv = out[o] + log_n;
          C* gp = gb + (o - o0) * n;
          C* lp = lb + (o - o0) * n;
          for (int64_t j = 0; j < n; j += kFill)
            for (int64_t l = 0; l < kFill; ++l) gp[j + l] = gv, lp[j + l] = lv;
        }
        for (int64_t e = 0; e < count; ++e)
          grad_x[e0 + e] = D::store(gb[e] * lse_weight(D::load(x[e0 + e]), lb[e], ExpC{}));
      }
    });
    return;
  }
  // Rows (o, j) of I elements; with I = 1, blocks of kLane * 64 consecutive j of one o.
  const int64_t per_o = inner == 1 ? ceil_div(n, kLane * 64) : n;
  parallel_ranges(outer * per_o, threads_for(outer * n * inner, num_threads), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t o = t / per_o;
      if (inner == 1) {
        const int64_t j0 = (t % per_o) * kLane * 64, j1 = min64(n, j0 + kLane * 64);
        const C g = grad[o], lse = out[o] + log_n;
        for (int64_t j = j0; j < j1; ++j)
          grad_x[o * n + j] = D::store(g * lse_weight(D::load(x[o * n + j]), lse, ExpC{}));
      } else {
        const int64_t e = t * inner;  // row (o, j), j = t % n
        for (int64_t i = 0; i < inner; ++i) {
          const C lse = out[o * inner + i] + log_n;
          grad_x[e + i] = D::store(grad[o * inner + i] * lse_weight(D::load(x[e + i]), lse, ExpC{}));
        }
      }
    }
  });
}

}  // namespace

void log_mean_exp_fwd(const void* x, void* out, int64_t outer, int64_t n, int64_t inner, int dtype,
                      int num_threads) {
  if (outer <= 0 || n <= 0 || inner <= 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using D = decltype(tag);
    if (n == 1) {  // the mean of one term: x itself, exactly (also +-inf and NaN)
      const auto* xs = static_cast<const typename D::S*>(x);
      auto* o = static_cast<typename D::C*>(out);
      for (int64_t t = 0; t < outer * inner; ++t) o[t] = D::load(xs[t]);
      return;
    }
    fwd<D>(static_cast<const typename D::S*>(x), static_cast<typename D::C*>(out), outer, n, inner, num_threads);
  });
}

void log_mean_exp_bwd(const void* grad, const void* x, const void* out, void* grad_x, int64_t outer, int64_t n,
                      int64_t inner, int dtype, int num_threads) {
  if (outer <= 0 || n <= 0 || inner <= 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using D = decltype(tag);
    using C = typename D::C;
    bwd<D>(static_cast<const C*>(grad), static_cast<const typename D::S*>(x), static_cast<const C*>(out),
           static_cast<typename D::S*>(grad_x), outer, n, inner, num_threads);
  });
}

}  // namespace VK_CPU_ISA
}  // namespace cpu
}  // namespace vaekernels

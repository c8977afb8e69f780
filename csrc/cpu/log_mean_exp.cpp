// log-mean-exp on the CPU: out = log (1/n) sum_j exp(x[o, j, i]), and its gradient.
//
//   x: [O, n, I] (the reduced dim in the middle; O = product of the dims before it, I = after);
//   out, grad: [O, I] in the compute type C (float32, or float64 for float64 x).
//   forward   out[o, i] = logsumexp_j x[o, j, i] - log n       (online, vaekernels/logsumexp.h)
//   backward  grad_x[o, j, i] = grad[o, i] * exp(x[o, j, i] - out[o, i] - log n)
//             = grad times the softmax weight of x[o, j, i]; 0 where out = -inf (all x = -inf),
//             where torch.logsumexp's gradient is NaN.  +inf and NaN propagate.
//
// Vectorization: the online states run in kLane-wide arrays whose lane loop gcc vectorizes.  With
// I >= 2 a lane is a column i (lanes = a block of up to kLane columns, walking j).  With I = 1 and
// n >= kLane the row is contiguous: lane l takes j = l mod kLane, and the kLane states are merged
// in lane order at the end; with shorter rows a lane is a whole row.  The order depends on
// (n, I) only: deterministic, whatever the thread count.
#include "cpu/common.h"
#include "cpu/kernels.h"
#include "vaekernels/logsumexp.h"

namespace vaekernels {
namespace cpu {
namespace VK_CPU_ISA {
namespace {

constexpr int64_t kLane = 32;

template <class D>
void fwd(const typename D::S* x, typename D::C* out, int64_t outer, int64_t n, int64_t inner, int num_threads) {
  using C = typename D::C;
  using S = typename D::S;
  const C inf = __builtin_huge_val();
  const C log_n = static_cast<C>(__builtin_log(static_cast<double>(n)));
  // Three layouts of lanes, chosen by shape only: columns i (I > 1); lanes across a long row
  // (I = 1, n >= kLane); rows as lanes (I = 1, short rows: a lane walks its own row).
  const bool split_rows = inner == 1 && n >= kLane;
  const int64_t items = split_rows ? outer : inner == 1 ? ceil_div(outer, kLane) : outer * ceil_div(inner, kLane);
  parallel_ranges(items, threads_for(outer * n * inner, num_threads), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      C m[kLane], s[kLane];
      for (int64_t l = 0; l < kLane; ++l) m[l] = -inf, s[l] = 0;
      if (split_rows) {  // lane l takes j = l mod kLane of row t; the lanes merge in lane order
        const S* row = x + t * n;
        int64_t j = 0;
        for (; j + kLane <= n; j += kLane)
          for (int64_t l = 0; l < kLane; ++l) lse_merge(m[l], s[l], D::load(row[j + l]), C(1), ExpC{});
        for (int64_t l = 0; j + l < n; ++l) lse_merge(m[l], s[l], D::load(row[j + l]), C(1), ExpC{});
        for (int64_t l = 1; l < kLane; ++l) lse_merge(m[0], s[0], m[l], s[l], ExpC{});
        out[t] = lse_value(m[0], s[0], LogC{}) - log_n;
      } else if (inner == 1) {  // lane l walks row o0 + l (stride n)
        const int64_t o0 = t * kLane, nl = min64(kLane, outer - o0);
        for (int64_t j = 0; j < n; ++j)
          for (int64_t l = 0; l < nl; ++l) lse_merge(m[l], s[l], D::load(x[(o0 + l) * n + j]), C(1), ExpC{});
        for (int64_t l = 0; l < nl; ++l) out[o0 + l] = lse_value(m[l], s[l], LogC{}) - log_n;
      } else {  // lane l walks column i0 + l of slab o
        const int64_t cblocks = ceil_div(inner, kLane);
        const int64_t o = t / cblocks, i0 = (t % cblocks) * kLane, nl = min64(kLane, inner - i0);
        for (int64_t j = 0; j < n; ++j) {
          const S* row = x + (o * n + j) * inner + i0;
          for (int64_t l = 0; l < nl; ++l) lse_merge(m[l], s[l], D::load(row[l]), C(1), ExpC{});
        }
        for (int64_t l = 0; l < nl; ++l) out[o * inner + i0 + l] = lse_value(m[l], s[l], LogC{}) - log_n;
      }
    }
  });
}

template <class D>
void bwd(const typename D::C* grad, const typename D::S* x, const typename D::C* out, typename D::S* grad_x,
         int64_t outer, int64_t n, int64_t inner, int num_threads) {
  using C = typename D::C;
  const C log_n = static_cast<C>(__builtin_log(static_cast<double>(n)));
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

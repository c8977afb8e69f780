// Gaussian KL on the CPU: the elementwise KL reduced over the latent dimension in the same pass,
// and its backward.
//
//   KL[r, c]      = 0.5 phi(lv - plv) + 0.5 ((mu - pm) e^(-plv/2))^2     (kl_math.h)
//   forward       out = KL ([n, d]), its row sums ([n]), their total or total / n ([])
//   backward      grad_mu, grad_logvar: [n, d]; grad_prior_mu, grad_prior_logvar: [p, d]
//   mu, logvar: [n, d] row-major; prior_mu, prior_logvar: [p, d] or null (0), row r uses prior row
//   r % p (p = 1: one prior for every example; p = n: one per example).
//
// Free bits (lambda > 0): a first pass takes the column means col[c] = mean_r KL[r, c]; wherever
// col[c] < lambda, KL[:, c] is replaced by lambda before any reduction, and in the backward the
// upstream gradient of column c is 0.  Memory traffic: the inputs are read twice in the forward.
//
// Determinism: every sum is taken over fixed blocks whose partial sums are added in a fixed order,
// and the blocks depend on n, d, p only -- never on the number of threads.  Row sums: row_sum
// (common.h, the same lanes on every ISA) per chunk of kChunk, the chunks in order.  Accumulation
// is in the compute type (float32 for the 16- and 32-bit types, float64 for float64), except the
// 0-d total over rows, in float64 for every type.
//
// Work split: the forward owns rows (tiles of whole rows, each row walked in chunks of kChunk);
// the backward sees the arrays as [K, M] with M = p*d and K = n / p, so that a prior gradient is
// the column sum of a [K, M] array: tiles of KB rows x kChunk columns, one partial sum per row block.
// Without a prior, or with p = n, K = 1: the backward is elementwise and writes everything directly.
#include <stdint.h>

#include <type_traits>

#include "cpu/common.h"
#include "cpu/kernels.h"
#include "cpu/kl_math.h"

namespace vaekernels {
namespace cpu {
namespace VK_CPU_ISA {
namespace {

constexpr int64_t kChunk = 512;       // elements of a row per step (stack buffers)
constexpr int64_t kTileElems = 8192;  // elements per work item: ~32 KiB of float32 per array
constexpr int64_t kMaxBlocks = 256;   // most row blocks a column sum keeps partials of

enum Reduction : int { kNone = 0, kPerExample = 1, kSum = 2, kBatchMean = 3 };

// item(i) for i in [0, items), split over threads (parallel_ranges, common.h).
template <class Item>
void for_items(int64_t items, int threads, const Item& item) {
  parallel_ranges(items, threads, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) item(i);
  });
}

// Pointers of one kernel call, typed.  pm / plv are null when that prior is absent; s, when not
// null, holds e^(-plv/2) of every prior element (computed once for a prior shared by many rows).
template <class D>
struct Inputs {
  using S = typename D::S;
  using C = typename D::C;
  const S* mu;
  const S* lv;
  const S* pm;
  const S* plv;
  const C* s;
};

template <class T>
VK_INLINE T* at(T* p, int64_t off) {
  return p == nullptr ? p : p + off;
}

// The prior elements from `poff` on: pm, plv and s = e^(-plv/2), read (kPre) or computed.
template <class D, bool kPm, bool kPlv, bool kPre>
struct PriorAt {
  using S = typename D::S;
  using C = typename D::C;
  const S* pm;
  const S* plv;
  const C* s;
  PriorAt(const Inputs<D>& in, int64_t poff) : pm(at(in.pm, poff)), plv(at(in.plv, poff)), s(at(in.s, poff)) {}
  VK_INLINE void operator()(int64_t t, C* pmv, C* plvv, C* sv) const {
    *pmv = 0, *plvv = 0, *sv = 1;
    if constexpr (kPm) *pmv = D::load(pm[t]);
    if constexpr (kPlv) {
      *plvv = D::load(plv[t]);
      *sv = kPre ? s[t] : prior_scale(*plvv);
    }
  }
};

// The KL of element t of a row segment: mu / logvar from `off`, the prior from `poff`.
template <class D, bool kPm, bool kPlv, bool kPre>
struct KlAt {
  using S = typename D::S;
  using C = typename D::C;
  const S* mu;
  const S* lv;
  PriorAt<D, kPm, kPlv, kPre> prior;
  KlAt(const Inputs<D>& in, int64_t off, int64_t poff) : mu(in.mu + off), lv(in.lv + off), prior(in, poff) {}
  VK_INLINE C twice(int64_t t) const {  // 2 KL: the row sums halve once per row (kl_math.h)
    C pmv, plvv, sv;
    prior(t, &pmv, &plvv, &sv);
    return kl_twice<kPm, kPlv>(D::load(mu[t]), D::load(lv[t]), pmv, plvv, sv);
  }
  VK_INLINE C operator()(int64_t t) const { return static_cast<C>(0.5) * twice(t); }  // KL (exact halving)
};

// fn(std::bool_constant<kPre>{}) with in.s = e^(-plv/2) of the m prior elements computed once
// (kPre) when several rows share a logvar prior -- an exp per prior element instead of one per
// element of mu -- else with in.s unset.
template <bool kPlv, class D, class Fn>
void with_prior_scales(Inputs<D>& in, int64_t m, bool shared, int threads, Fn&& fn) {
  if constexpr (kPlv) {
    if (shared) {
      Buffer<typename D::C> s(m);
      for_items(ceil_div(m, kChunk), threads, [&](int64_t c) {
        for (int64_t j = c * kChunk; j < min64(m, (c + 1) * kChunk); ++j) s[j] = prior_scale(D::load(in.plv[j]));
      });
      in.s = s.data();
      return fn(std::true_type{});
    }
  }
  fn(std::false_type{});
}

// Free bits: a column whose mean KL is below lambda is the constant lambda.  A NaN mean fails the
// compare and leaves the column as it is (NaN propagates).
template <class C>
VK_INLINE C clamp_col(C kl, C col, C lambda) {
  return col < lambda ? lambda : kl;
}

// ------------------------------------------------------------------------------------ forward

template <class D, bool kPm, bool kPlv, bool kPre>
void fwd(const Inputs<D>& in, int64_t n, int64_t d, int64_t p, int reduction, double lambda_d,
         typename D::C* out, typename D::C* col, int threads) {
  using C = typename D::C;
  using Kl = KlAt<D, kPm, kPlv, kPre>;
  const C lambda = static_cast<C>(lambda_d);
  const int64_t nchunks = ceil_div(d, kChunk);

  if (col != nullptr) {
    // Pass 1: column sums over fixed row blocks (at most kMaxBlocks of them), added in block order.
    const int64_t rb = max64(max64(1, kTileElems / d), ceil_div(n, kMaxBlocks));
    const int64_t nrb = ceil_div(n, rb);
    Buffer<C> partial(nrb * d);
    for_items(nrb * nchunks, threads, [&](int64_t item) {
      const int64_t b = item / nchunks, c0 = (item % nchunks) * kChunk, len = min64(kChunk, d - c0);
      alignas(64) C acc[kChunk] = {};
      for (int64_t r = b * rb; r < min64(n, (b + 1) * rb); ++r) {
        const Kl kl(in, r * d + c0, (r % p) * d + c0);
#pragma GCC ivdep  // acc is a stack buffer: it aliases no input
        for (int64_t t = 0; t < len; ++t) acc[t] += kl(t);
      }
      for (int64_t t = 0; t < len; ++t) partial[b * d + c0 + t] = acc[t];
    });
    sum_rows(partial.data(), nrb, d, threads, [&](int64_t c, C sum) { col[c] = sum / static_cast<C>(n); });
  }

  // Pass 2: tiles of whole rows; each row in chunks of kChunk, each chunk summed in lanes
  // (row_sum) straight from the arithmetic, then the chunks in order.
  const int64_t rows = max64(1, kTileElems / d), ntiles = ceil_div(n, rows);
  Buffer<double> tile_total(reduction >= kSum ? ntiles : 0);
  for_items(ntiles, threads, [&](int64_t tile) {
    double total = 0;  // float64 over rows: the 0-d sum stays accurate for any n
    for (int64_t r = tile * rows; r < min64(n, (tile + 1) * rows); ++r) {
      C row = 0;
      for (int64_t c0 = 0; c0 < d; c0 += kChunk) {
        const int64_t len = min64(kChunk, d - c0);
        const Kl kl(in, r * d + c0, (r % p) * d + c0);
        const C* cc = at(col, c0);
        if (reduction == kNone) {
          C* x = out + r * d + c0;
          if (col == nullptr) {
#pragma GCC ivdep  // out is a fresh tensor: it aliases no input
            for (int64_t t = 0; t < len; ++t) x[t] = kl(t);
          } else {
#pragma GCC ivdep
            for (int64_t t = 0; t < len; ++t) x[t] = clamp_col(kl(t), cc[t], lambda);
          }
        } else if (col == nullptr) {
          // The pipelined row (kl_math.h).  With a prior: only where 32 vector registers hold its
          // extra operands (AVX2's 16: 337 -> 875 us at (4096, 256), one thread, with a [D]
          // prior), and with e^(-plv/2) computed once per prior element (kPre; one per element of
          // mu, a [B, D] prior, gained nothing).
          if constexpr (std::is_same_v<C, float> && (!(kPm || kPlv) || (kLanes == 16 && (kPre || !kPlv)))) {
            const int64_t poff = (r % p) * d + c0;
            row += 0.5f * kl_twice_row<D, kPm, kPlv>(in.mu + r * d + c0, in.lv + r * d + c0, at(in.pm, poff),
                                                     at(in.plv, poff), at(in.s, poff), len);
          } else {
            row += static_cast<C>(0.5) * row_sum<C>(len, [&](int64_t t) { return kl.twice(t); });
          }
        } else {
          row += row_sum<C>(len, [&](int64_t t) { return clamp_col(kl(t), cc[t], lambda); });
        }
      }
      if (reduction == kPerExample) out[r] = row;
      total += row;
    }
    if (reduction >= kSum) tile_total[tile] = total;
  });
  if (reduction >= kSum) {
    double total = 0;
    for (int64_t t = 0; t < ntiles; ++t) total += tile_total[t];
    out[0] = static_cast<C>(reduction == kBatchMean ? total / static_cast<double>(n) : total);
  }
}

// ------------------------------------------------------------------------------------ backward

// Upstream gradients and outputs of one backward call.
template <class D>
struct Grads {
  using S = typename D::S;
  using C = typename D::C;
  const C* grad;  // [n, d], [n] or [] by reduction
  const C* col;   // [d] column means (free bits) or null
  S* gmu;
  S* glv;
  S* gpm;  // null when prior_mu is absent
  S* gplv;
};

// The gradients of one segment: elements e .. e + len of row r of [n, d] (one row, columns
// c .. c + len), prior elements j .. j + len.  The upstream gradient of element t is g[t], or the
// one value g0 (kScalarG).  kDirect: the prior gradients are stored (p = n); else added into
// acc_pm / acc_plv.
template <class D, bool kPm, bool kPlv, bool kPre, bool kDirect, bool kScalarG>
VK_INLINE void grad_segment(const Inputs<D>& in, const Grads<D>& out, const typename D::C* g,
                            typename D::C g0, int64_t e, int64_t j, int64_t len, typename D::C* acc_pm,
                            typename D::C* acc_plv) {
  using C = typename D::C;
  if constexpr (!kPm && !kPlv && kDirect && kScalarG && std::is_same_v<C, float>) {
    return kl_grads_row<D>(g0, in.mu + e, in.lv + e, out.gmu + e, out.glv + e, len);
  }
  const auto* mu = in.mu + e;
  const auto* lv = in.lv + e;
  const PriorAt<D, kPm, kPlv, kPre> prior(in, j);
  auto* gmu = out.gmu + e;
  auto* glv = out.glv + e;
  auto* gpm = at(out.gpm, j);
  auto* gplv = at(out.gplv, j);
  // No output aliases an input (fresh tensors, stack buffers): without this gcc gives up on the
  // run-time alias checks of up to 9 pointers and leaves the loop scalar.
#pragma GCC ivdep
  for (int64_t t = 0; t < len; ++t) {
    C pmv, plvv, sv, a, b, c, q;
    prior(t, &pmv, &plvv, &sv);
    kl_grads<kPm, kPlv>(kScalarG ? g0 : g[t], D::load(mu[t]), D::load(lv[t]), pmv, plvv, sv, &a, &b, &c, &q);
    gmu[t] = D::store(a);
    glv[t] = D::store(b);
    if constexpr (kDirect) {
      if constexpr (kPm) gpm[t] = D::store(c);
      if constexpr (kPlv) gplv[t] = D::store(q);
    } else {
      if constexpr (kPm) acc_pm[t] += c;
      if constexpr (kPlv) acc_plv[t] += q;
    }
  }
}

template <class D, bool kPm, bool kPlv, bool kPre>
void bwd(const Inputs<D>& in, const Grads<D>& out, int64_t n, int64_t d, int64_t p, int reduction, double lambda_d,
         int threads) {
  using C = typename D::C;
  constexpr bool kPrior = kPm || kPlv;
  const C lambda = static_cast<C>(lambda_d);
  const int64_t k_rows = n / p, m = p * d;  // the [K, M] view
  const int64_t ncc = ceil_div(m, kChunk);
  const int64_t kb = k_rows == 1 ? 1 : max64(max64(1, kTileElems / min64(m, kChunk)), ceil_div(k_rows, kMaxBlocks));
  const int64_t nkb = ceil_div(k_rows, kb);
  // Prior gradients for p < n: [nkb, 2m] partial column sums of each row block (prior_mu's in
  // the first m columns, prior_logvar's in the next m), added in block order below.
  Buffer<C> partial(kPrior && k_rows > 1 ? nkb * 2 * m : 0);
  // The 0-d reductions pass one upstream value; batchmean's is divided by n.
  const C g0 = reduction >= kSum ? (reduction == kBatchMean ? out.grad[0] / static_cast<C>(n) : out.grad[0]) : 0;

  for_items(nkb * ncc, threads, [&](int64_t item) {
    const int64_t b = item / ncc, j0 = (item % ncc) * kChunk, width = min64(kChunk, m - j0);
    alignas(64) C gbuf[kChunk], acc_pm[kChunk], acc_plv[kChunk];
    if (!partial.empty()) {  // only the column sums (a prior, p < n) read them: no 2 x 2 KB zeroed
      for (int64_t t = 0; t < width; ++t) acc_pm[t] = acc_plv[t] = 0;  // per item otherwise
    }
    for (int64_t k = b * kb; k < min64(k_rows, (b + 1) * kb); ++k) {
      // Split the chunk at row ends of [n, d]: a segment has one example r and columns c ...
      for (int64_t j = j0; j < j0 + width;) {
        const int64_t c = j % d, len = min64(d - c, j0 + width - j);
        const int64_t r = k * p + j / d, e = k * m + j;
        const C gr = reduction == kNone ? 0 : reduction == kPerExample ? out.grad[r] : g0;
        const C* g = out.grad + e;  // reduction none: one upstream value per element
        if (out.col != nullptr) {   // free bits: a clamped column is a constant, no gradient
          for (int64_t t = 0; t < len; ++t) gbuf[t] = out.col[c + t] < lambda ? C(0) : reduction == kNone ? g[t] : gr;
          g = gbuf;
        }
        C* apm = acc_pm + (j - j0);
        C* aplv = acc_plv + (j - j0);
        const bool scalar = reduction != kNone && out.col == nullptr;
        if (k_rows == 1 && scalar) grad_segment<D, kPm, kPlv, kPre, true, true>(in, out, g, gr, e, j, len, apm, aplv);
        if (k_rows == 1 && !scalar) grad_segment<D, kPm, kPlv, kPre, true, false>(in, out, g, gr, e, j, len, apm, aplv);
        if (k_rows > 1 && scalar) grad_segment<D, kPm, kPlv, kPre, false, true>(in, out, g, gr, e, j, len, apm, aplv);
        if (k_rows > 1 && !scalar) grad_segment<D, kPm, kPlv, kPre, false, false>(in, out, g, gr, e, j, len, apm, aplv);
        j += len;
      }
    }
    if (partial.empty()) return;
    for (int64_t t = 0; t < width; ++t) {
      partial[b * 2 * m + j0 + t] = acc_pm[t];
      partial[b * 2 * m + m + j0 + t] = acc_plv[t];
    }
  });
  if (partial.empty()) return;
  sum_rows(partial.data(), nkb, 2 * m, threads, [&](int64_t j, C sum) {
    if (j < m) {
      if (kPm) out.gpm[j] = D::store(sum);
    } else if (kPlv) {
      out.gplv[j - m] = D::store(sum);
    }
  });
}

// ------------------------------------------------------------------------------------ dispatch

template <class D>
Inputs<D> inputs(const void* mu, const void* lv, const void* pm, const void* plv) {
  using S = typename D::S;
  return {static_cast<const S*>(mu), static_cast<const S*>(lv), static_cast<const S*>(pm), static_cast<const S*>(plv),
          nullptr};
}

// fn(std::bool_constant<kPm>, std::bool_constant<kPlv>) for the priors that are given.
template <class Fn>
void dispatch_prior(const void* pm, const void* plv, Fn&& fn) {
  if (pm != nullptr && plv != nullptr) return fn(std::true_type{}, std::true_type{});
  if (pm != nullptr) return fn(std::true_type{}, std::false_type{});
  if (plv != nullptr) return fn(std::false_type{}, std::true_type{});
  fn(std::false_type{}, std::false_type{});
}

}  // namespace

void gaussian_kl_fwd(const void* mu, const void* logvar, const void* prior_mu, const void* prior_logvar, void* out,
                     void* col, int64_t n, int64_t d, int64_t p, int reduction, double free_bits, int dtype,
                     int num_threads) {
  if (n <= 0 || d <= 0) return;
  dispatch_dtype(dtype, [&](auto dt) {
    using D = decltype(dt);
    using C = typename D::C;
    Inputs<D> in = inputs<D>(mu, logvar, prior_mu, prior_logvar);
    C* c = free_bits > 0 ? static_cast<C*>(col) : nullptr;
    const int threads = threads_for(n * d, num_threads);
    dispatch_prior(prior_mu, prior_logvar, [&](auto has_pm, auto has_plv) {
      with_prior_scales<has_plv.value>(in, p * d, p < n, threads, [&](auto pre) {
        fwd<D, has_pm.value, has_plv.value, pre.value>(in, n, d, p, reduction, free_bits, static_cast<C*>(out), c,
                                                       threads);
      });
    });
  });
}

void gaussian_kl_bwd(const void* grad, const void* mu, const void* logvar, const void* prior_mu,
                     const void* prior_logvar, const void* col, void* grad_mu, void* grad_logvar, void* grad_prior_mu,
                     void* grad_prior_logvar, int64_t n, int64_t d, int64_t p, int reduction, double free_bits,
                     int dtype, int num_threads) {
  if (n <= 0 || d <= 0) return;
  dispatch_dtype(dtype, [&](auto dt) {
    using D = decltype(dt);
    using S = typename D::S;
    using C = typename D::C;
    Inputs<D> in = inputs<D>(mu, logvar, prior_mu, prior_logvar);
    const Grads<D> out{static_cast<const C*>(grad), free_bits > 0 ? static_cast<const C*>(col) : nullptr,
                       static_cast<S*>(grad_mu), static_cast<S*>(grad_logvar), static_cast<S*>(grad_prior_mu),
                       static_cast<S*>(grad_prior_logvar)};
    const int threads = threads_for(n * d, num_threads);
    dispatch_prior(prior_mu, prior_logvar, [&](auto has_pm, auto has_plv) {
      // Without a prior the backward is elementwise: one [1, n d] row (p = n).
      const int64_t pp = has_pm.value || has_plv.value ? p : n;
      with_prior_scales<has_plv.value>(in, pp * d, pp < n, threads, [&](auto pre) {
        bwd<D, has_pm.value, has_plv.value, pre.value>(in, out, n, d, pp, reduction, free_bits, threads);
      });
    });
  });
}

}  // namespace VK_CPU_ISA
}  // namespace cpu
}  // namespace vaekernels

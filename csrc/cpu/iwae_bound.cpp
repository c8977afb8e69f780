// The IWAE / Renyi bound on the CPU: forward and backward, each one pass over z.
//
//   log w[k, b] = lpx[k, b] + log N(z[k, b]; pm_b, e^plv_b) - log N(z[k, b]; mu_b, e^lv_b)
//               = lpx[k, b] - 1/2 sum_d (plv - lv) - 1/2 sum_d ((z - pm)^2 e^-plv - (z - mu)^2 e^-lv)
//     (the log 2 pi terms cancel; the difference is summed term by term, so a prior equal to q
//     gives exactly 0, and e^-lv, e^-plv are computed once per example, not per sample)
//   bound[b] = 1/(1 - alpha) (logsumexp_k (1 - alpha) log w[k, b] - log K)   (alpha = 1: mean_k)
//   weight[k, b] = exp(r[k, b] - L_b), r = (1 - alpha) log w as rounded for L_b   (alpha = 1: 1/K;
//                  bound -inf: 0)
//   lpx, bound, weight: compute type C (float32, or float64 for float64 z); z: [K, B, D],
//   mu, logvar: [B, D]; pm, plv: [B, D] (row stride D), [D] (row stride 0) or absent (0).
//   The -inf / +inf / NaN rules are those of vaekernels/logsumexp.h.
//
// Backward, with c[k, b] = grad[b] * weight[k, b] (the bound's derivative by log w[k, b]),
// u = z - mu, v = z - pm, iq = e^-lv, ip = e^-plv:
//   grad_lpx[k, b] = c
//   grad_z[k, b]   = c (u iq - v ip)
//   grad_mu[b]     = -iq sum_k c u           grad_logvar[b] = 1/2 (sum_k c - iq sum_k c u^2)
//   grad_pm[b]     =  ip sum_k c v           grad_plv[b]    = -1/2 (sum_k c - ip sum_k c v^2)
//   (grad_mu, grad_logvar: the density of q's own parameters; absent with STL.  A [D] prior's
//   gradients are summed over b.)  A sample with c = 0 is skipped: its rows are exact zeros
//   even where its log w is -inf (0 * inf would be NaN).
//
// Work split: blocks of kBlockB consecutive examples (B order), each a task that walks k and, for
// each k, the block's rows z[k, b0 .. b0 + nb) -- one contiguous stretch of memory -- while
// prefetching the same rows of a later sample (B rows apart per sample: too far for the hardware
// prefetcher; the forward only where that measured faster, fwd_prefetches); the forward takes
// kSamplesAtOnce samples a step (common.h), the backward kBwdSamples.  Every example's
// arithmetic is the same whichever thread runs it, and a [D] prior's gradient is summed per
// block, then over blocks in block order: results do not depend on the thread count.
#include <string.h>


#include "cpu/common.h"
#include "cpu/kernels.h"
#include "vaekernels/logsumexp.h"

namespace vaekernels {
namespace cpu {
namespace VK_CPU_ISA {
namespace {

constexpr int64_t kBlockB = 32;  // examples per task (their rows of one sample: 32 KB of z at D = 256)

template <class D>
struct IwaeArgs {
  using S = typename D::S;
  const S* z;
  const S* mu;
  const S* logvar;
  const S* pm;  // null: 0
  const S* plv;  // null: 0
  int64_t pm_stride, plv_stride;  // 0 ([D]) or d ([B, D])
  int64_t k, b, d;
};

// Per-example parameters in the compute type, for the nb examples of a block: row j of each
// array holds example b0 + j.  q: mu and iq = e^-lv; prior (kPrior): pm and ip = e^-plv, plus
// half_dlv = 1/2 sum_d (plv - lv).  Without a prior (kPrior false) pm = 0 and ip = 1 implicitly.
template <class D, bool kPrior>
struct Staged {
  using C = typename D::C;
  Buffer<C> m, iq, pm, ip;
  C half_dlv[kBlockB];

  explicit Staged(int64_t d)
      : m(kBlockB * d), iq(kBlockB * d), pm(kPrior ? kBlockB * d : 0), ip(kPrior ? kBlockB * d : 0) {}

  void load(const IwaeArgs<D>& a, int64_t b0, int64_t nb) {
    const int64_t d = a.d;
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t b = b0 + j;
      C* mj = m.data() + j * d;
      C* iqj = iq.data() + j * d;
      const typename D::S* mu = a.mu + b * d;
      const typename D::S* lv = a.logvar + b * d;
      for (int64_t i = 0; i < d; ++i) {
        mj[i] = D::load(mu[i]);
        iqj[i] = exp_c(-D::load(lv[i]));  // e^-lv: inf for lv < -88 (float32), as the formula says
      }
      C* pmj = kPrior ? pm.data() + j * d : nullptr;
      C* ipj = kPrior ? ip.data() + j * d : nullptr;
      if (kPrior) {
        const typename D::S* p = a.pm ? a.pm + b * a.pm_stride : nullptr;
        const typename D::S* pl = a.plv ? a.plv + b * a.plv_stride : nullptr;
        for (int64_t i = 0; i < d; ++i) {
          pmj[i] = p ? D::load(p[i]) : C(0);
          ipj[i] = pl ? exp_c(-D::load(pl[i])) : C(1);
        }
      }
      half_dlv[j] = C(0.5) * row_sum<C>(d, [&](int64_t i) {
        const C plv_i = kPrior && a.plv ? D::load(a.plv[b * a.plv_stride + i]) : C(0);
        return plv_i - D::load(lv[i]);
      });
    }
  }
};

template <class D, bool kPrior>
void fwd(const IwaeArgs<D>& a, const typename D::C* lpx, const RenyiBound& rb, typename D::C* bound,
         typename D::C* weight, int num_threads) {
  using C = typename D::C;
  const int64_t d = a.d, B = a.b, K = a.k;
  const C one_minus = static_cast<C>(rb.one_minus);
  const C inf = __builtin_huge_val();
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(typename D::S));
  const bool prefetch = fwd_prefetches(row_bytes, K * B * row_bytes);
  parallel_ranges(ceil_div(B, kBlockB), threads_for(K * B * max64(d, 1), num_threads), [&](int64_t t0, int64_t t1) {
    Staged<D, kPrior> st(d);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b0 = t * kBlockB, nb = min64(kBlockB, B - b0);
      st.load(a, b0, nb);
      // Online state per example: (m, s) of logsumexp_k r_k, or s = sum_k lw_k for alpha = 1.
      C m[kBlockB], s[kBlockB], lse[kBlockB], y[kBlockB];
      for (int64_t j = 0; j < kBlockB; ++j) m[j] = -inf, s[j] = 0;
      for (int64_t k0 = 0; k0 < K; k0 += kSamplesAtOnce) {
        const int64_t k1 = min64(K, k0 + kSamplesAtOnce);
        for (int64_t j = 0; j < nb; ++j) {
          const C* mj = st.m.data() + j * d;
          const C* iqj = st.iq.data() + j * d;
          const C* pmj = st.pm.data() + j * d;
          const C* ipj = st.ip.data() + j * d;
          const typename D::S* zr[kSamplesAtOnce];
          for (int64_t k = k0; k < k1; ++k) {
            zr[k - k0] = a.z + (k * B + b0 + j) * d;
            if (prefetch && k + kSamplesAtOnce < K) prefetch_bytes<1>(zr[k - k0] + kSamplesAtOnce * B * d, row_bytes);
          }
          // sum_d (z - pm)^2 ip - (z - mu)^2 iq per sample, float32 (float64) lanes, fixed order.
          const auto term = [&](int r, int64_t i) {
            const C x = D::load(zr[r][i]);
            const C u = x - mj[i];
            const C v = kPrior ? x - pmj[i] : x;
            return kPrior ? v * v * ipj[i] - u * u * iqj[i] : v * v - u * u * iqj[i];
          };
          C quad[kSamplesAtOnce];
          static_assert(kSamplesAtOnce <= 4, "with_rows takes 1 ... 4 rows");
          with_rows(k1 - k0, [&](auto rows) { row_sums<C, rows>(d, term, quad); });
          for (int64_t k = k0; k < k1; ++k) {  // log w first; normalized below
            const int64_t row = k * B + b0 + j;
            weight[row] = lpx[row] - st.half_dlv[j] - C(0.5) * quad[k - k0];
          }
        }
        for (int64_t k = k0; k < k1; ++k) {  // the online sums, in k order
          C* wk = weight + k * B + b0;
          if (rb.elbo) {
            for (int64_t j = 0; j < nb; ++j) s[j] += wk[j];
          } else {
            // wk keeps r = (1 - alpha) log w as rounded here, and the weights below are exp(r - L)
            // of that very r (renyi_weight): forming (1 - alpha) log w - L again let gcc fuse it
            // into one fma with the unrounded product, which un-normalized the weights (K = 1,
            // alpha = 0.3, log w = -1e10: weight inf).
            for (int64_t j = 0; j < nb; ++j) {
              const C r = one_minus * wk[j];
              wk[j] = r;
              lse_merge(m[j], s[j], r, C(1), ExpC{});
            }
          }
        }
      }
      for (int64_t j = 0; j < nb; ++j) {
        lse[j] = lse_value(m[j], s[j], LogC{});
        y[j] = renyi_value(rb, rb.elbo ? s[j] : lse[j]);
        bound[b0 + j] = y[j];
      }
      // wk holds r (the ELBO: log w, unused): exp(r - L), 1/K for the ELBO, 0 for a -inf bound.
      // Called with elbo a constant: with rb.elbo read inside, gcc left these loops scalar (a
      // conditional load of wk under a loop-invariant test), one libm-free exp at a time.
      const auto normalize = [&](bool elbo) {
        RenyiBound r = rb;
        r.elbo = elbo;
        for (int64_t k = 0; k < K; ++k) {
          C* wk = weight + k * B + b0;
          for (int64_t j = 0; j < nb; ++j) wk[j] = renyi_weight(r, wk[j], y[j], lse[j], ExpC{});
        }
      };
      if (rb.elbo)
        normalize(true);
      else
        normalize(false);
    }
  });
}

// Gradient outputs; a null pointer is a gradient nobody asked for (not computed).
template <class D>
struct IwaeGrads {
  typename D::C* lpx;  // [K, B]
  typename D::S* z;    // [K, B, D]
  typename D::S* mu;   // [B, D]  (null with STL)
  typename D::S* logvar;
  typename D::S* pm;   // the prior's shape
  typename D::S* plv;
};

// One example's rows of R samples, all with c != 0, in sample order: grad_z rows out[r], the sums
// over k a1 = sum c u, a2 = sum c u^2 (and p1 = sum c v, p2 = sum c v^2 with a prior) updated.
// Per element: u = z - mu, v = z - pm (z without a prior), grad_z = c (u iq - v ip).
template <class D, bool kPrior, bool kStream, int R>
VK_INLINE void bwd_rows(const typename D::S* const zr[R], typename D::S* const out[R], const typename D::C c[R],
                        const typename D::C* mj, const typename D::C* iqj, const typename D::C* pmj,
                        const typename D::C* ipj, typename D::C* a1, typename D::C* a2, typename D::C* p1,
                        typename D::C* p2, int64_t d) {
  using C = typename D::C;
  using CV = typename D::CV;
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes) {
    const CV m = loadu<CV>(mj + i), iq = loadu<CV>(iqj + i);
    CV s1 = loadu<CV>(a1 + i), s2 = loadu<CV>(a2 + i), pmv{}, ipv{}, q1{}, q2{};
    if (kPrior) {
      pmv = loadu<CV>(pmj + i), ipv = loadu<CV>(ipj + i);
      q1 = loadu<CV>(p1 + i), q2 = loadu<CV>(p2 + i);
    }
    for (int r = 0; r < R; ++r) {
      const CV x = D::vload(zr[r] + i);
      const CV u = x - m;
      const CV v = kPrior ? x - pmv : x;
      const CV cu = c[r] * u, cv = c[r] * v;
      const CV o = cu * iq - (kPrior ? cv * ipv : cv);
      if (kStream)
        D::vstream(out[r] + i, o);
      else
        D::vstore(out[r] + i, o);
      s1 += cu;
      s2 += cu * u;
      if (kPrior) {
        q1 += cv;
        q2 += cv * v;
      }
    }
    storeu(a1 + i, s1);
    storeu(a2 + i, s2);
    if (kPrior) {
      storeu(p1 + i, q1);
      storeu(p2 + i, q2);
    }
  }
  for (; i < d; ++i)
    for (int r = 0; r < R; ++r) {
      const C x = D::load(zr[r][i]);
      const C u = x - mj[i];
      const C v = kPrior ? x - pmj[i] : x;
      const C cu = c[r] * u, cv = c[r] * v;
      out[r][i] = D::store(cu * iqj[i] - (kPrior ? cv * ipj[i] : cv));
      a1[i] += cu;
      a2[i] += cu * u;
      if (kPrior) {
        p1[i] += cv;
        p2[i] += cv * v;
      }
    }
}

// A row of d zeros (streaming stores with kStream).
template <class D, bool kStream>
VK_INLINE void zero_row(typename D::S* out, int64_t d) {
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes)
    if (kStream)
      D::vstream(out + i, typename D::CV{});
    else
      D::vstore(out + i, typename D::CV{});
  memset(out + i, 0, (d - i) * sizeof(*out));
}

template <class D, bool kPrior, bool kStream>
void bwd(const IwaeArgs<D>& a, const typename D::C* grad, const typename D::C* weight, const IwaeGrads<D>& g,
         int num_threads) {
  using C = typename D::C;
  using S = typename D::S;
  const int64_t d = a.d, B = a.b, K = a.k;
  const int64_t tasks = ceil_div(B, kBlockB);
  const bool q_grad = g.mu != nullptr || g.logvar != nullptr;
  // A [D] prior's gradient: one partial row per task, summed over tasks afterwards in order.
  const bool pm_shared = kPrior && g.pm && a.pm_stride == 0, plv_shared = kPrior && g.plv && a.plv_stride == 0;
  Buffer<C> pm_part(pm_shared ? tasks * d : 0), plv_part(plv_shared ? tasks * d : 0);
  const int threads = threads_for(K * B * max64(d, 1), num_threads);
  parallel_ranges(tasks, threads, [&](int64_t t0, int64_t t1) {
    Staged<D, kPrior> st(d);
    // Sums over k per example and latent dim: A1 = sum c u, A2 = sum c u^2, P1 = sum c v, P2 = sum c v^2.
    Buffer<C> acc((kPrior ? 4 : 2) * kBlockB * d);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b0 = t * kBlockB, nb = min64(kBlockB, B - b0);
      st.load(a, b0, nb);
      memset(acc.data(), 0, acc.size() * sizeof(C));
      C csum[kBlockB] = {};  // sum_k c (= grad[b] unless the bound is -inf)
      for (int64_t k0 = 0; k0 < K; k0 += kBwdSamples) {
        const int nk = static_cast<int>(min64(kBwdSamples, K - k0));
        for (int64_t j = 0; j < nb; ++j) {
          const C* mj = st.m.data() + j * d;
          const C* iqj = st.iq.data() + j * d;
          const C* pmj = st.pm.data() + j * d;
          const C* ipj = st.ip.data() + j * d;
          C* a1 = acc.data() + (0 * kBlockB + j) * d;
          C* a2 = acc.data() + (1 * kBlockB + j) * d;
          C* p1 = kPrior ? acc.data() + (2 * kBlockB + j) * d : nullptr;
          C* p2 = kPrior ? acc.data() + (3 * kBlockB + j) * d : nullptr;
          // The step's rows with c != 0, in k order, go through bwd_rows together; a row with c = 0
          // (zero weight: log w = -inf, or a -inf bound) is exact zeros, and its z is not read
          // (0 * inf would be NaN).  Left out, not a reason to take the step a row at a time: with
          // the benchmark's log p(x|z) (10 N(0, 1) - 100) 16% of the weights are 0 and only 54% of
          // the steps have none; one row a step wherever a step had one: 21.4 - 24.9 ms against
          // 16.9 - 21.9 (kBwdSamples, common.h).
          C c[kBwdSamples];
          const S* zr[kBwdSamples];
          S* out[kBwdSamples];
          int n = 0;
          for (int r = 0; r < nk; ++r) {
            const int64_t row = (k0 + r) * B + b0 + j;
            const C cr = grad[b0 + j] * weight[row];
            g.lpx[row] = cr;
            // The same row of the step after next (2 kBwdSamples B rows further: too far for the
            // hardware prefetchers), unless it will not be read.
            const int64_t ahead = row + 2 * kBwdSamples * B;
            if (k0 + r + 2 * kBwdSamples < K && grad[b0 + j] * weight[ahead] != C(0))
              prefetch_bytes<3>(a.z + ahead * d, d * sizeof(S));
            if (cr == C(0)) {
              zero_row<D, kStream>(g.z + row * d, d);
              continue;
            }
            csum[j] += cr;
            c[n] = cr, zr[n] = a.z + row * d, out[n] = g.z + row * d;
            ++n;
          }
          static_assert(kBwdSamples <= 4, "with_rows takes 1 ... 4 rows");
          if (n > 0)  // every row of the step may have zero weight
            with_rows(n, [&](auto rows) {
              bwd_rows<D, kPrior, kStream, rows>(zr, out, c, mj, iqj, pmj, ipj, a1, a2, p1, p2, d);
            });
        }
      }
      for (int64_t j = 0; j < nb; ++j) {
        const int64_t b = b0 + j;
        const C* iqj = st.iq.data() + j * d;
        const C* a1 = acc.data() + (0 * kBlockB + j) * d;
        const C* a2 = acc.data() + (1 * kBlockB + j) * d;
        if (q_grad) {
          for (int64_t i = 0; i < d; ++i) {
            if (g.mu) g.mu[b * d + i] = D::store(-iqj[i] * a1[i]);
            if (g.logvar) g.logvar[b * d + i] = D::store(C(0.5) * (csum[j] - iqj[i] * a2[i]));
          }
        }
        if (kPrior) {
          const C* ipj = st.ip.data() + j * d;
          const C* p1 = acc.data() + (2 * kBlockB + j) * d;
          const C* p2 = acc.data() + (3 * kBlockB + j) * d;
          C* pmp = pm_shared ? pm_part.data() + t * d : nullptr;
          C* plvp = plv_shared ? plv_part.data() + t * d : nullptr;
          for (int64_t i = 0; i < d; ++i) {
            const C gpm = ipj[i] * p1[i];
            const C gplv = C(-0.5) * (csum[j] - ipj[i] * p2[i]);
            if (pmp) pmp[i] = j == 0 ? gpm : pmp[i] + gpm;
            else if (g.pm) g.pm[b * d + i] = D::store(gpm);
            if (plvp) plvp[i] = j == 0 ? gplv : plvp[i] + gplv;
            else if (g.plv) g.plv[b * d + i] = D::store(gplv);
          }
        }
      }
    }
    if (kStream) stream_fence();
  });
  if (pm_shared) sum_rows(pm_part.data(), tasks, d, num_threads, [&](int64_t i, C v) { g.pm[i] = D::store(v); });
  if (plv_shared) sum_rows(plv_part.data(), tasks, d, num_threads, [&](int64_t i, C v) { g.plv[i] = D::store(v); });
}

template <class D>
IwaeArgs<D> make_args(const void* z, const void* mu, const void* logvar, const void* pm, int64_t pm_stride,
                      const void* plv, int64_t plv_stride, int64_t k, int64_t b, int64_t d) {
  using S = typename D::S;
  return IwaeArgs<D>{static_cast<const S*>(z), static_cast<const S*>(mu), static_cast<const S*>(logvar),
                     static_cast<const S*>(pm), static_cast<const S*>(plv), pm_stride, plv_stride, k, b, d};
}

}  // namespace

void iwae_bound_fwd(const void* log_px_z, const void* z, const void* mu, const void* logvar, const void* prior_mu,
                    int64_t prior_mu_stride, const void* prior_logvar, int64_t prior_logvar_stride, void* bound,
                    void* weights, int64_t k, int64_t b, int64_t d, double alpha, int dtype, int num_threads) {
  if (k <= 0 || b <= 0 || d < 0) return;
  const RenyiBound rb = make_renyi(alpha, k);
  dispatch_dtype(dtype, [&](auto tag) {
    using D = decltype(tag);
    using C = typename D::C;
    const auto a = make_args<D>(z, mu, logvar, prior_mu, prior_mu_stride, prior_logvar, prior_logvar_stride, k, b, d);
    const C* lpx = static_cast<const C*>(log_px_z);
    if (prior_mu || prior_logvar)
      fwd<D, true>(a, lpx, rb, static_cast<C*>(bound), static_cast<C*>(weights), num_threads);
    else
      fwd<D, false>(a, lpx, rb, static_cast<C*>(bound), static_cast<C*>(weights), num_threads);
  });
}

void iwae_bound_bwd(const void* grad, const void* weights, const void* z, const void* mu, const void* logvar,
                    const void* prior_mu, int64_t prior_mu_stride, const void* prior_logvar,
                    int64_t prior_logvar_stride, void* grad_log_px_z, void* grad_z, void* grad_mu,
                    void* grad_logvar, void* grad_prior_mu, void* grad_prior_logvar, int64_t k, int64_t b, int64_t d,
                    int dtype, int num_threads) {
  if (k <= 0 || b <= 0 || d <= 0) return;  // D = 0: the caller writes grad_log_px_z = grad * weights
  dispatch_dtype(dtype, [&](auto tag) {
    using D = decltype(tag);
    using C = typename D::C;
    using S = typename D::S;
    const auto a = make_args<D>(z, mu, logvar, prior_mu, prior_mu_stride, prior_logvar, prior_logvar_stride, k, b, d);
    const IwaeGrads<D> g{static_cast<C*>(grad_log_px_z), static_cast<S*>(grad_z),      static_cast<S*>(grad_mu),
                         static_cast<S*>(grad_logvar),   static_cast<S*>(grad_prior_mu), static_cast<S*>(grad_prior_logvar)};
    const C* gr = static_cast<const C*>(grad);
    const C* w = static_cast<const C*>(weights);
    // grad_z past the last-level cache goes out by streaming stores (streams()).
    const bool nt = streams(k * b * d * static_cast<int64_t>(sizeof(S)));
    const bool prior = prior_mu || prior_logvar;
    if (prior && nt)
      bwd<D, true, true>(a, gr, w, g, num_threads);
    else if (prior)
      bwd<D, true, false>(a, gr, w, g, num_threads);
    else if (nt)
      bwd<D, false, true>(a, gr, w, g, num_threads);
    else
      bwd<D, false, false>(a, gr, w, g, num_threads);
  });
}

}  // namespace VK_CPU_ISA
}  // namespace cpu
}  // namespace vaekernels

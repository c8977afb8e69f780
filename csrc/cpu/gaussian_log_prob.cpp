// The diagonal Gaussian log-density on the CPU, summed over the last dimension: one pass over z.
//
//   out[s, n] = -1/2 sum_d (log 2 pi + lv[n, d] + (z[s, n, d] - mu[n, d])^2 e^-lv[n, d])
//   z: [S, N, D]; mu, logvar: [N, D] (broadcast over the S leading samples); out: [S, N] in the
//   compute type C (float32, or float64 for float64 inputs).
//
// Backward, with c = grad[s, n], u = z - mu, iv = e^-lv:
//   grad_z[s, n]   = -c u iv
//   grad_mu[n]     = iv sum_s c u          grad_logvar[n] = -1/2 (sum_s c - iv sum_s c u^2)
//
// Work split: tasks of (kBlockN examples) x (a chunk of the S samples); e^-lv is computed once
// per task and example, never per sample.  The forward takes kSamplesAtOnce samples a step and
// prefetches the next step's rows (where that measured faster: fwd_prefetches); the backward
// takes kBwdSamples samples a step in one pass over the dims (common.h) and prefetches the rows
// of the step after next (too far ahead for the hardware prefetcher).  The chunking depends on
// (S, N, D) only, and the backward's per-chunk partial sums are added in chunk order: results do
// not depend on the thread count.

#include "cpu/common.h"
#include "cpu/kernels.h"

namespace vaekernels {
namespace cpu {
namespace VK_CPU_ISA {
namespace {

constexpr int64_t kBlockN = 32;     // examples per task
// Split the samples until there are this many tasks (if S allows).  A split costs the partial
// sums' buffers (and their page faults under the default allocator) and a pass to add them: at
// (8, 1024, 64), 32 blocks of examples, 64 split the samples in two and the backward ran 350 us
// (steady allocator) / 580-950 us (default) instead of 160-180 us unsplit (2 threads).
constexpr int64_t kMinTasks = 32;
constexpr double kLog2Pi = 1.83787706640934548356;

struct Split {
  int64_t nblocks, schunks, chunk;  // tasks = nblocks x schunks; a chunk is `chunk` samples
};

Split make_split(int64_t s, int64_t n) {
  Split p;
  p.nblocks = ceil_div(n, kBlockN);
  p.schunks = max64(1, min64(s, ceil_div(kMinTasks, p.nblocks)));
  p.chunk = ceil_div(s, p.schunks);
  p.schunks = ceil_div(s, p.chunk);
  return p;
}

// mu (m) and e^-lv (iv) of examples n0 .. n0 + nb in the compute type, and per example
// half_c = 1/2 sum_d (log 2 pi + lv).
template <class D>
struct Staged {
  using C = typename D::C;
  Buffer<C> m, iv;
  C half_c[kBlockN];

  explicit Staged(int64_t d) : m(kBlockN * d), iv(kBlockN * d) {}

  void load(const typename D::S* mu, const typename D::S* logvar, int64_t n0, int64_t nb, int64_t d) {
    for (int64_t j = 0; j < nb; ++j) {
      const typename D::S* mr = mu + (n0 + j) * d;
      const typename D::S* lr = logvar + (n0 + j) * d;
      for (int64_t i = 0; i < d; ++i) {
        m[j * d + i] = D::load(mr[i]);
        iv[j * d + i] = exp_c(-D::load(lr[i]));
      }
      half_c[j] = C(0.5) * row_sum<C>(d, [&](int64_t i) { return C(kLog2Pi) + D::load(lr[i]); });
    }
  }
};

template <class D>
void fwd(const typename D::S* z, const typename D::S* mu, const typename D::S* logvar, typename D::C* out, int64_t s,
         int64_t n, int64_t d, int num_threads) {
  using C = typename D::C;
  const Split p = make_split(s, n);
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(typename D::S));
  const bool prefetch = fwd_prefetches(row_bytes, s * n * row_bytes);
  parallel_ranges(p.nblocks * p.schunks, threads_for(s * n * max64(d, 1), num_threads), [&](int64_t t0, int64_t t1) {
    Staged<D> st(d);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t nblk = t % p.nblocks, sc = t / p.nblocks;
      const int64_t n0 = nblk * kBlockN, nb = min64(kBlockN, n - n0);
      const int64_t s0 = sc * p.chunk, s1 = min64(s, s0 + p.chunk);
      st.load(mu, logvar, n0, nb, d);
      for (int64_t sa = s0; sa < s1; sa += kSamplesAtOnce)  // kSamplesAtOnce samples a step (common.h)
        for (int64_t j = 0; j < nb; ++j) {
          const C* mj = st.m.data() + j * d;
          const C* ivj = st.iv.data() + j * d;
          const int64_t sb = min64(s1, sa + kSamplesAtOnce);
          const typename D::S* zr[kSamplesAtOnce];
          for (int64_t si = sa; si < sb; ++si) {
            zr[si - sa] = z + (si * n + n0 + j) * d;
            if (prefetch && si + kSamplesAtOnce < s1) prefetch_bytes<1>(zr[si - sa] + kSamplesAtOnce * n * d, row_bytes);
          }
          const auto term = [&](int r, int64_t i) {
            const C u = D::load(zr[r][i]) - mj[i];
            return u * u * ivj[i];
          };
          C quad[kSamplesAtOnce];
          static_assert(kSamplesAtOnce <= 4, "with_rows takes 1 ... 4 rows");
          // the samples' sums in one pass over the dims
          with_rows(sb - sa, [&](auto rows) { row_sums<C, rows>(d, term, quad); });
          for (int64_t si = sa; si < sb; ++si) out[si * n + n0 + j] = -st.half_c[j] - C(0.5) * quad[si - sa];
        }
    }
  });
}

// One example's rows of R samples (kBwdSamples a step, common.h), in sample order: grad_z rows
// out[r] = -c u iv, and the sums over samples a1 += c u, a2 += c u^2 (u = z - mu).
template <class D, bool kStream, int R>
VK_INLINE void bwd_rows(const typename D::S* const zr[R], typename D::S* const out[R], const typename D::C c[R],
                        const typename D::C* mj, const typename D::C* ivj, typename D::C* a1, typename D::C* a2,
                        int64_t d) {
  using C = typename D::C;
  using CV = typename D::CV;
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes) {
    const CV m = loadu<CV>(mj + i), iv = loadu<CV>(ivj + i);
    CV s1 = loadu<CV>(a1 + i), s2 = loadu<CV>(a2 + i);
    for (int r = 0; r < R; ++r) {
      const CV u = D::vload(zr[r] + i) - m;
      const CV cu = c[r] * u;
      if (kStream)
        D::vstream(out[r] + i, -cu * iv);
      else
        D::vstore(out[r] + i, -cu * iv);
      s1 += cu;
      s2 += cu * u;
    }
    storeu(a1 + i, s1);
    storeu(a2 + i, s2);
  }
  for (; i < d; ++i)
    for (int r = 0; r < R; ++r) {
      const C u = D::load(zr[r][i]) - mj[i];
      const C cu = c[r] * u;
      out[r][i] = D::store(-cu * ivj[i]);
      a1[i] += cu;
      a2[i] += cu * u;
    }
}

template <class D, bool kStream>
void bwd(const typename D::C* grad, const typename D::S* z, const typename D::S* mu, const typename D::S* logvar,
         typename D::S* grad_z, typename D::S* grad_mu, typename D::S* grad_logvar, int64_t s, int64_t n, int64_t d,
         int num_threads) {
  using C = typename D::C;
  using S = typename D::S;
  const Split p = make_split(s, n);
  const int threads = threads_for(s * n * max64(d, 1), num_threads);
  // Per sample chunk: partial sums over its samples of c u iv and c (1 - u^2 iv) -- written
  // straight to the gradients when there is one chunk, else summed over chunks in order.
  const bool split = p.schunks > 1;
  Buffer<C> part_mu(split ? p.schunks * n * d : 0), part_lv(split ? p.schunks * n * d : 0);
  parallel_ranges(p.nblocks * p.schunks, threads, [&](int64_t t0, int64_t t1) {
    Staged<D> st(d);
    Buffer<C> acc(2 * kBlockN * d);  // [0]: sum c u, [1]: sum c u^2, per example of the block
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t nblk = t % p.nblocks, sc = t / p.nblocks;
      const int64_t n0 = nblk * kBlockN, nb = min64(kBlockN, n - n0);
      const int64_t s0 = sc * p.chunk, s1 = min64(s, s0 + p.chunk);
      st.load(mu, logvar, n0, nb, d);
      for (C& v : acc) v = 0;
      C csum[kBlockN] = {};
      for (int64_t sa = s0; sa < s1; sa += kBwdSamples) {  // kBwdSamples samples a step (common.h)
        const int nk = static_cast<int>(min64(kBwdSamples, s1 - sa));
        for (int64_t j = 0; j < nb; ++j) {
          C c[kBwdSamples];
          const S* zr[kBwdSamples];
          S* out[kBwdSamples];
          for (int r = 0; r < nk; ++r) {
            const int64_t row = (sa + r) * n + n0 + j;
            c[r] = grad[row];
            csum[j] += c[r];
            zr[r] = z + row * d, out[r] = grad_z + row * d;
            // the same row of the step after next: too far ahead for the hardware prefetchers
            if (sa + r + 2 * kBwdSamples < s1) prefetch_bytes<3>(zr[r] + 2 * kBwdSamples * n * d, d * sizeof(S));
          }
          const C* mj = st.m.data() + j * d;
          const C* ivj = st.iv.data() + j * d;
          C* a1 = acc.data() + j * d;
          C* a2 = acc.data() + (kBlockN + j) * d;
          static_assert(kBwdSamples <= 4, "with_rows takes 1 ... 4 rows");
          with_rows(nk, [&](auto rows) { bwd_rows<D, kStream, rows>(zr, out, c, mj, ivj, a1, a2, d); });
        }
      }
      for (int64_t j = 0; j < nb; ++j) {
        const int64_t e = (n0 + j) * d;
        const C* ivj = st.iv.data() + j * d;
        const C* a1 = acc.data() + j * d;
        const C* a2 = acc.data() + (kBlockN + j) * d;
        // Two loops, not a branch per element: each vectorizes (the outputs alias no input).
        const C cs = csum[j];
        if (split) {
          C* pm = part_mu.data() + sc * n * d + e;
          C* pl = part_lv.data() + sc * n * d + e;
#pragma GCC ivdep
          for (int64_t i = 0; i < d; ++i) pm[i] = ivj[i] * a1[i], pl[i] = C(-0.5) * (cs - ivj[i] * a2[i]);
        } else {
#pragma GCC ivdep
          for (int64_t i = 0; i < d; ++i)
            grad_mu[e + i] = D::store(ivj[i] * a1[i]), grad_logvar[e + i] = D::store(C(-0.5) * (cs - ivj[i] * a2[i]));
        }
      }
    }
    if (kStream) stream_fence();
  });
  if (split) {
    sum_rows(part_mu.data(), p.schunks, n * d, num_threads, [&](int64_t i, C v) { grad_mu[i] = D::store(v); });
    sum_rows(part_lv.data(), p.schunks, n * d, num_threads, [&](int64_t i, C v) { grad_logvar[i] = D::store(v); });
  }
}

}  // namespace

void gaussian_log_prob_fwd(const void* z, const void* mu, const void* logvar, void* out, int64_t s, int64_t n,
                           int64_t d, int dtype, int num_threads) {
  if (s <= 0 || n <= 0 || d < 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using D = decltype(tag);
    using S = typename D::S;
    fwd<D>(static_cast<const S*>(z), static_cast<const S*>(mu), static_cast<const S*>(logvar),
           static_cast<typename D::C*>(out), s, n, d, num_threads);
  });
}

void gaussian_log_prob_bwd(const void* grad, const void* z, const void* mu, const void* logvar, void* grad_z,
                           void* grad_mu, void* grad_logvar, int64_t s, int64_t n, int64_t d, int dtype,
                           int num_threads) {
  if (s <= 0 || n <= 0 || d <= 0) return;  // empty: the caller writes the zero gradients
  dispatch_dtype(dtype, [&](auto tag) {
    using D = decltype(tag);
    using S = typename D::S;
    // grad_z past the last-level cache goes out by streaming stores (streams()).
    const auto run = streams(s * n * d * static_cast<int64_t>(sizeof(S))) ? bwd<D, true> : bwd<D, false>;
    run(static_cast<const typename D::C*>(grad), static_cast<const S*>(z), static_cast<const S*>(mu),
        static_cast<const S*>(logvar), static_cast<S*>(grad_z), static_cast<S*>(grad_mu), static_cast<S*>(grad_logvar),
        s, n, d, num_threads);
  });
}

}  // namespace VK_CPU_ISA
}  // namespace cpu
}  // namespace vaekernels

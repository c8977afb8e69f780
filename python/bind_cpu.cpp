// vaekernels._C: the pybind11 binding of the CPU kernels (csrc/cpu).  No torch headers: Python
// passes tensor.data_ptr() as ints, sizes and a dtype code (vaekernels/dtype.h), after checking
// shapes, dtypes and contiguity itself.  The binding re-checks only what is cheap (sizes >= 0,
// a known dtype, non-null pointers) and raises a Python exception rather than crash.
//
// The kernels are compiled once per ISA; at import the module picks the widest set this CPU
// runs (avx512 > avx2 > generic), or the one named by VAEKERNELS_CPU_ISA=generic|avx2|avx512
// (an ImportError when this build or CPU lacks it).
#include <pybind11/pybind11.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <string>

#include "cpu/kernels.h"
#include "vaekernels/dtype.h"

#if defined(VK_OPENMP) && VK_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
namespace cpu = vaekernels::cpu;

namespace {

struct IsaKernels {
  const char* name;
  decltype(&cpu::generic::philox) philox;
  decltype(&cpu::generic::philox_fill) philox_fill;
  decltype(&cpu::generic::reparameterize_fwd) reparameterize_fwd;
  decltype(&cpu::generic::reparameterize_bwd) reparameterize_bwd;
  decltype(&cpu::generic::gaussian_kl_fwd) gaussian_kl_fwd;
  decltype(&cpu::generic::gaussian_kl_bwd) gaussian_kl_bwd;
  decltype(&cpu::generic::iwae_bound_fwd) iwae_bound_fwd;
  decltype(&cpu::generic::iwae_bound_bwd) iwae_bound_bwd;
  decltype(&cpu::generic::gaussian_log_prob_fwd) gaussian_log_prob_fwd;
  decltype(&cpu::generic::gaussian_log_prob_bwd) gaussian_log_prob_bwd;
  decltype(&cpu::generic::log_mean_exp_fwd) log_mean_exp_fwd;
  decltype(&cpu::generic::log_mean_exp_bwd) log_mean_exp_bwd;
};

#define VK_ISA_ENTRY(isa) \
  IsaKernels { #isa, &cpu::isa::philox, &cpu::isa::philox_fill, &cpu::isa::reparameterize_fwd, &cpu::isa::reparameterize_bwd, \
      &cpu::isa::gaussian_kl_fwd, &cpu::isa::gaussian_kl_bwd, &cpu::isa::iwae_bound_fwd, &cpu::isa::iwae_bound_bwd, \
      &cpu::isa::gaussian_log_prob_fwd, &cpu::isa::gaussian_log_prob_bwd, &cpu::isa::log_mean_exp_fwd,          \
      &cpu::isa::log_mean_exp_bwd }

// Widest first.
const IsaKernels kIsas[] = {
#if defined(__x86_64__)
    VK_ISA_ENTRY(avx512),
    VK_ISA_ENTRY(avx2),
#endif
    VK_ISA_ENTRY(generic),
};

// Everything -march=skylake-avx512 / -march=haswell let the compiler use in vector code.
bool cpu_runs(const std::string& isa) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  if (isa == "avx512")
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512cd");
  if (isa == "avx2") return avx2;
#endif
  return isa == "generic";
}

const IsaKernels& select_isa() {
  const char* forced = getenv("VAEKERNELS_CPU_ISA");
  if (forced != nullptr && *forced != '\0') {
    for (const IsaKernels& k : kIsas)
      if (k.name == std::string(forced)) {
        if (!cpu_runs(k.name))
          throw std::runtime_error(std::string("VAEKERNELS_CPU_ISA=") + forced +
                                   ": this CPU does not support that instruction set");
        return k;
      }
    throw std::runtime_error(std::string("VAEKERNELS_CPU_ISA=") + forced +
                             ": not one of the instruction sets this build has (" VK_CPU_ISAS ")");
  }
  for (const IsaKernels& k : kIsas)
    if (cpu_runs(k.name)) return k;
  return kIsas[sizeof kIsas / sizeof kIsas[0] - 1];
}

const IsaKernels* g_isa = nullptr;

void check_size(const char* what, int64_t v) {
  if (v < 0) throw py::value_error(std::string(what) + " must be >= 0, got " + std::to_string(v));
}

void check_ptr(const char* what, uintptr_t p) {
  if (p == 0) throw py::value_error(std::string(what) + " is a null pointer");
}

void check_dtype(int dtype) {
  if (dtype != vaekernels::kFloat32 && dtype != vaekernels::kFloat16 && dtype != vaekernels::kBFloat16 &&
      dtype != vaekernels::kFloat64)
    throw py::value_error("unknown dtype code " + std::to_string(dtype) +
                          " (0 float32, 1 float16, 2 bfloat16, 3 float64)");
}

// gaussian_kl: p divides n (a prior row per example, per row of a [..., p, d] batch, or one for
// all), a known reduction code, a finite free_bits >= 0.
void check_kl_args(int64_t n, int64_t p, int reduction, double free_bits) {
  if (p < 1 || (n > 0 && n % p != 0))
    throw py::value_error("p must be >= 1 and divide n = " + std::to_string(n) + ", got " + std::to_string(p));
  if (reduction < 0 || reduction > 3)
    throw py::value_error("unknown reduction code " + std::to_string(reduction) +
                          " (0 none, 1 per example, 2 sum, 3 batchmean)");
  if (!(free_bits >= 0 && free_bits <= 1.7976931348623157e308))
    throw py::value_error("free_bits must be a finite number >= 0, got " + std::to_string(free_bits));
}

// iwae_bound: a prior's row stride is 0 (one [d] row for every example) or d ([b, d]).
void check_prior_stride(const char* what, int64_t stride, int64_t d) {
  if (stride != 0 && stride != d)
    throw py::value_error(std::string(what) + " must be 0 or d = " + std::to_string(d) + ", got " +
                          std::to_string(stride));
}

template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

uint64_t read_seed(uintptr_t seed) {
  uint64_t s;
  memcpy(&s, ptr<const void>(seed), sizeof s);
  return s;
}

py::list split_isas(const char* csv) {
  py::list out;
  std::string s(csv);
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = s.find(',', start);
    out.append(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  g_isa = &select_isa();
  m.doc() = "vaekernels CPU kernels (raw-pointer API; see vaekernels/ops for the torch ops)";

  m.def(
      "philox",
      [](uintptr_t counters, uintptr_t keys, uintptr_t out, int64_t n) {
        check_size("n", n);
        if (n == 0) return;
        check_ptr("counters", counters);
        check_ptr("keys", keys);
        check_ptr("out", out);
        py::gil_scoped_release nogil;
        g_isa->philox(ptr<const uint32_t>(counters), ptr<const uint32_t>(keys), ptr<uint32_t>(out), n);
      },
      py::arg("counters"), py::arg("keys"), py::arg("out"), py::arg("n"),
      "out[i] = philox4x32_10(counters[i], keys[i]); counters, out: uint32[n][4], keys: uint32[n][2] (addresses)");

  m.def(
      "philox_fill",
      [](uint64_t seed, uint64_t first_group, uintptr_t out, int64_t n_groups) {
        check_size("n_groups", n_groups);
        if (n_groups == 0) return;
        check_ptr("out", out);
        py::gil_scoped_release nogil;
        g_isa->philox_fill(seed, first_group, ptr<uint32_t>(out), n_groups);
      },
      py::arg("seed"), py::arg("first_group"), py::arg("out"), py::arg("n_groups"),
      "out[i] = the words of group first_group + i of the stream keyed by seed; out: uint32[n_groups][4]");

  m.def(
      "reparameterize_fwd",
      [](uintptr_t mu, uintptr_t logvar, uintptr_t seed, uintptr_t z, int64_t n, int64_t k, int dtype,
         int num_threads) {
        check_size("n", n);
        check_size("k", k);
        check_dtype(dtype);
        if (n == 0 || k == 0) return;
        check_ptr("mu", mu);
        check_ptr("logvar", logvar);
        check_ptr("seed", seed);
        check_ptr("z", z);
        const uint64_t s = read_seed(seed);
        py::gil_scoped_release nogil;
        g_isa->reparameterize_fwd(ptr<const void>(mu), ptr<const void>(logvar), s, ptr<void>(z), n, k, dtype,
                                  num_threads);
      },
      py::arg("mu"), py::arg("logvar"), py::arg("seed"), py::arg("z"), py::arg("n"), py::arg("k"),
      py::arg("dtype"), py::arg("num_threads"),
      "z[j, i] = mu[i] + exp(logvar[i] / 2) * eps(seed, j*n + i); mu, logvar: [n], z: [k, n]; seed: address "
      "of the int64 key");

  m.def(
      "reparameterize_bwd",
      [](uintptr_t grad_z, uintptr_t logvar, uintptr_t z, uintptr_t mu, uintptr_t seed, uintptr_t grad_mu,
         uintptr_t grad_logvar, int64_t n, int64_t k, int dtype, int num_threads) {
        check_size("n", n);
        check_size("k", k);
        check_dtype(dtype);
        if (n == 0) return;
        if (k > 0) check_ptr("grad_z", grad_z);  // k == 0: grad_z is empty, the sums are -0
        check_ptr("logvar", logvar);
        if (z != 0 || mu != 0) {  // both or neither
          check_ptr("z", z);
          check_ptr("mu", mu);
        }
        check_ptr("seed", seed);
        check_ptr("grad_mu", grad_mu);
        check_ptr("grad_logvar", grad_logvar);
        const uint64_t s = read_seed(seed);
        py::gil_scoped_release nogil;
        g_isa->reparameterize_bwd(ptr<const void>(grad_z), ptr<const void>(logvar), ptr<const void>(z),
                                  ptr<const void>(mu), s, ptr<void>(grad_mu), ptr<void>(grad_logvar), n, k, dtype,
                                  num_threads);
      },
      py::arg("grad_z"), py::arg("logvar"), py::arg("z"), py::arg("mu"), py::arg("seed"), py::arg("grad_mu"),
      py::arg("grad_logvar"), py::arg("n"), py::arg("k"), py::arg("dtype"), py::arg("num_threads"),
      "grad_mu[i] = sum_j grad_z[j, i]; grad_logvar[i] = exp(logvar[i] / 2) / 2 * sum_j grad_z[j, i] * "
      "eps(seed, j*n + i); z, mu: 0, or the forward's z [k, n] and mu [n], from which eps is then read back "
      "where that is exact enough (float32 / float64)");

  m.def(
      "gaussian_kl_fwd",
      [](uintptr_t mu, uintptr_t logvar, uintptr_t prior_mu, uintptr_t prior_logvar, uintptr_t out, uintptr_t col,
         int64_t n, int64_t d, int64_t p, int reduction, double free_bits, int dtype, int num_threads) {
        check_size("n", n), check_size("d", d), check_dtype(dtype), check_kl_args(n, p, reduction, free_bits);
        if (n == 0 || d == 0) return;
        check_ptr("mu", mu), check_ptr("logvar", logvar), check_ptr("out", out);
        if (free_bits > 0) check_ptr("col", col);
        py::gil_scoped_release nogil;
        g_isa->gaussian_kl_fwd(ptr<const void>(mu), ptr<const void>(logvar), ptr<const void>(prior_mu),
                               ptr<const void>(prior_logvar), ptr<void>(out), ptr<void>(col), n, d, p, reduction,
                               free_bits, dtype, num_threads);
      },
      py::arg("mu"), py::arg("logvar"), py::arg("prior_mu"), py::arg("prior_logvar"), py::arg("out"), py::arg("col"),
      py::arg("n"), py::arg("d"), py::arg("p"), py::arg("reduction"), py::arg("free_bits"), py::arg("dtype"),
      py::arg("num_threads"),
      "KL[r, c] = 0.5 (e^delta - 1 - delta) + 0.5 (mu - pm)^2 e^-plv, delta = logvar - plv; mu, logvar [n, d], "
      "priors [p, d] or 0 (null), row r uses prior row r % p; reduction 0 none [n, d], 1 per example [n], 2 sum [], "
      "3 batchmean []; free_bits > 0: col [d] = column means, columns below free_bits clamped (addresses)");

  m.def(
      "gaussian_kl_bwd",
      [](uintptr_t grad, uintptr_t mu, uintptr_t logvar, uintptr_t prior_mu, uintptr_t prior_logvar, uintptr_t col,
         uintptr_t grad_mu, uintptr_t grad_logvar, uintptr_t grad_prior_mu, uintptr_t grad_prior_logvar, int64_t n,
         int64_t d, int64_t p, int reduction, double free_bits, int dtype, int num_threads) {
        check_size("n", n), check_size("d", d), check_dtype(dtype), check_kl_args(n, p, reduction, free_bits);
        if (n == 0 || d == 0) return;
        check_ptr("grad", grad), check_ptr("mu", mu), check_ptr("logvar", logvar), check_ptr("grad_mu", grad_mu),
            check_ptr("grad_logvar", grad_logvar);
        if (prior_mu != 0) check_ptr("grad_prior_mu", grad_prior_mu);
        if (prior_logvar != 0) check_ptr("grad_prior_logvar", grad_prior_logvar);
        if (free_bits > 0) check_ptr("col", col);
        py::gil_scoped_release nogil;
        g_isa->gaussian_kl_bwd(ptr<const void>(grad), ptr<const void>(mu), ptr<const void>(logvar),
                               ptr<const void>(prior_mu), ptr<const void>(prior_logvar), ptr<const void>(col),
                               ptr<void>(grad_mu), ptr<void>(grad_logvar), ptr<void>(grad_prior_mu),
                               ptr<void>(grad_prior_logvar), n, d, p, reduction, free_bits, dtype, num_threads);
      },
      py::arg("grad"), py::arg("mu"), py::arg("logvar"), py::arg("prior_mu"), py::arg("prior_logvar"), py::arg("col"),
      py::arg("grad_mu"), py::arg("grad_logvar"), py::arg("grad_prior_mu"), py::arg("grad_prior_logvar"), py::arg("n"),
      py::arg("d"), py::arg("p"), py::arg("reduction"), py::arg("free_bits"), py::arg("dtype"), py::arg("num_threads"),
      "gradients of gaussian_kl_fwd: grad shaped as its out; grad_mu, grad_logvar [n, d]; grad_prior_* [p, d] "
      "(null with the prior) (addresses)");

  m.def(
      "iwae_bound_fwd",
      [](uintptr_t log_px_z, uintptr_t z, uintptr_t mu, uintptr_t logvar, uintptr_t prior_mu, int64_t prior_mu_stride,
         uintptr_t prior_logvar, int64_t prior_logvar_stride, uintptr_t bound, uintptr_t weights, int64_t k, int64_t b,
         int64_t d, double alpha, int dtype, int num_threads) {
        check_size("k", k), check_size("b", b), check_size("d", d), check_dtype(dtype);
        check_prior_stride("prior_mu_stride", prior_mu_stride, d), check_prior_stride("prior_logvar_stride", prior_logvar_stride, d);
        if (k == 0 || b == 0) return;
        check_ptr("log_px_z", log_px_z), check_ptr("bound", bound), check_ptr("weights", weights);
        if (d > 0) check_ptr("z", z), check_ptr("mu", mu), check_ptr("logvar", logvar);
        py::gil_scoped_release nogil;
        g_isa->iwae_bound_fwd(ptr<const void>(log_px_z), ptr<const void>(z), ptr<const void>(mu), ptr<const void>(logvar),
                              ptr<const void>(prior_mu), prior_mu_stride, ptr<const void>(prior_logvar),
                              prior_logvar_stride, ptr<void>(bound), ptr<void>(weights), k, b, d, alpha, dtype,
                              num_threads);
      },
      py::arg("log_px_z"), py::arg("z"), py::arg("mu"), py::arg("logvar"), py::arg("prior_mu"),
      py::arg("prior_mu_stride"), py::arg("prior_logvar"), py::arg("prior_logvar_stride"), py::arg("bound"),
      py::arg("weights"), py::arg("k"), py::arg("b"), py::arg("d"), py::arg("alpha"), py::arg("dtype"),
      py::arg("num_threads"),
      "bound[b] = 1/(1-alpha) (logsumexp_k (1-alpha) log w[k, b] - log k), log w = log_px_z + log N(z; prior) - "
      "log N(z; mu, e^logvar); weights [k, b] = its derivatives by log w; z [k, b, d], mu, logvar [b, d], priors "
      "rows of d with stride 0 or d, or 0 (null) (addresses)");

  m.def(
      "iwae_bound_bwd",
      [](uintptr_t grad, uintptr_t weights, uintptr_t z, uintptr_t mu, uintptr_t logvar, uintptr_t prior_mu,
         int64_t prior_mu_stride, uintptr_t prior_logvar, int64_t prior_logvar_stride, uintptr_t grad_log_px_z,
         uintptr_t grad_z, uintptr_t grad_mu, uintptr_t grad_logvar, uintptr_t grad_prior_mu,
         uintptr_t grad_prior_logvar, int64_t k, int64_t b, int64_t d, int dtype, int num_threads) {
        check_size("k", k), check_size("b", b), check_size("d", d), check_dtype(dtype);
        check_prior_stride("prior_mu_stride", prior_mu_stride, d), check_prior_stride("prior_logvar_stride", prior_logvar_stride, d);
        if (k == 0 || b == 0 || d == 0) return;
        check_ptr("grad", grad), check_ptr("weights", weights), check_ptr("grad_log_px_z", grad_log_px_z),
            check_ptr("z", z), check_ptr("mu", mu), check_ptr("logvar", logvar), check_ptr("grad_z", grad_z);
        if (grad_prior_mu != 0) check_ptr("prior_mu", prior_mu);
        if (grad_prior_logvar != 0) check_ptr("prior_logvar", prior_logvar);
        py::gil_scoped_release nogil;
        g_isa->iwae_bound_bwd(ptr<const void>(grad), ptr<const void>(weights), ptr<const void>(z), ptr<const void>(mu),
                              ptr<const void>(logvar), ptr<const void>(prior_mu), prior_mu_stride,
                              ptr<const void>(prior_logvar), prior_logvar_stride, ptr<void>(grad_log_px_z),
                              ptr<void>(grad_z), ptr<void>(grad_mu), ptr<void>(grad_logvar), ptr<void>(grad_prior_mu),
                              ptr<void>(grad_prior_logvar), k, b, d, dtype, num_threads);
      },
      py::arg("grad"), py::arg("weights"), py::arg("z"), py::arg("mu"), py::arg("logvar"), py::arg("prior_mu"),
      py::arg("prior_mu_stride"), py::arg("prior_logvar"), py::arg("prior_logvar_stride"), py::arg("grad_log_px_z"),
      py::arg("grad_z"), py::arg("grad_mu"), py::arg("grad_logvar"), py::arg("grad_prior_mu"),
      py::arg("grad_prior_logvar"), py::arg("k"), py::arg("b"), py::arg("d"), py::arg("dtype"), py::arg("num_threads"),
      "gradients of iwae_bound_fwd from grad [b] and its weights [k, b] (d >= 1); a null gradient address is not "
      "computed (addresses)");

  m.def(
      "gaussian_log_prob_fwd",
      [](uintptr_t z, uintptr_t mu, uintptr_t logvar, uintptr_t out, int64_t s, int64_t n, int64_t d, int dtype,
         int num_threads) {
        check_size("s", s), check_size("n", n), check_size("d", d), check_dtype(dtype);
        if (s == 0 || n == 0) return;
        check_ptr("out", out);
        if (d > 0) check_ptr("z", z), check_ptr("mu", mu), check_ptr("logvar", logvar);
        py::gil_scoped_release nogil;
        g_isa->gaussian_log_prob_fwd(ptr<const void>(z), ptr<const void>(mu), ptr<const void>(logvar), ptr<void>(out),
                                     s, n, d, dtype, num_threads);
      },
      py::arg("z"), py::arg("mu"), py::arg("logvar"), py::arg("out"), py::arg("s"), py::arg("n"), py::arg("d"),
      py::arg("dtype"), py::arg("num_threads"),
      "out[s, n] = -1/2 sum_d (log 2pi + logvar + (z - mu)^2 e^-logvar); z [s, n, d], mu, logvar [n, d] (addresses)");

  m.def(
      "gaussian_log_prob_bwd",
      [](uintptr_t grad, uintptr_t z, uintptr_t mu, uintptr_t logvar, uintptr_t grad_z, uintptr_t grad_mu,
         uintptr_t grad_logvar, int64_t s, int64_t n, int64_t d, int dtype, int num_threads) {
        check_size("s", s), check_size("n", n), check_size("d", d), check_dtype(dtype);
        if (s == 0 || n == 0 || d == 0) return;
        check_ptr("grad", grad), check_ptr("z", z), check_ptr("mu", mu), check_ptr("logvar", logvar),
            check_ptr("grad_z", grad_z), check_ptr("grad_mu", grad_mu), check_ptr("grad_logvar", grad_logvar);
        py::gil_scoped_release nogil;
        g_isa->gaussian_log_prob_bwd(ptr<const void>(grad), ptr<const void>(z), ptr<const void>(mu),
                                     ptr<const void>(logvar), ptr<void>(grad_z), ptr<void>(grad_mu),
                                     ptr<void>(grad_logvar), s, n, d, dtype, num_threads);
      },
      py::arg("grad"), py::arg("z"), py::arg("mu"), py::arg("logvar"), py::arg("grad_z"), py::arg("grad_mu"),
      py::arg("grad_logvar"), py::arg("s"), py::arg("n"), py::arg("d"), py::arg("dtype"), py::arg("num_threads"),
      "gradients of gaussian_log_prob_fwd from grad [s, n] (addresses)");

  m.def(
      "log_mean_exp_fwd",
      [](uintptr_t x, uintptr_t out, int64_t outer, int64_t n, int64_t inner, int dtype, int num_threads) {
        check_size("outer", outer), check_size("n", n), check_size("inner", inner), check_dtype(dtype);
        if (outer == 0 || n == 0 || inner == 0) return;
        check_ptr("x", x), check_ptr("out", out);
        py::gil_scoped_release nogil;
        g_isa->log_mean_exp_fwd(ptr<const void>(x), ptr<void>(out), outer, n, inner, dtype, num_threads);
      },
      py::arg("x"), py::arg("out"), py::arg("outer"), py::arg("n"), py::arg("inner"), py::arg("dtype"),
      py::arg("num_threads"), "out[o, i] = log (1/n) sum_j exp(x[o, j, i]); x [outer, n, inner] (addresses)");

  m.def(
      "log_mean_exp_bwd",
      [](uintptr_t grad, uintptr_t x, uintptr_t out, uintptr_t grad_x, int64_t outer, int64_t n, int64_t inner,
         int dtype, int num_threads) {
        check_size("outer", outer), check_size("n", n), check_size("inner", inner), check_dtype(dtype);
        if (outer == 0 || n == 0 || inner == 0) return;
        check_ptr("grad", grad), check_ptr("x", x), check_ptr("out", out), check_ptr("grad_x", grad_x);
        py::gil_scoped_release nogil;
        g_isa->log_mean_exp_bwd(ptr<const void>(grad), ptr<const void>(x), ptr<const void>(out), ptr<void>(grad_x),
                                outer, n, inner, dtype, num_threads);
      },
      py::arg("grad"), py::arg("x"), py::arg("out"), py::arg("grad_x"), py::arg("outer"), py::arg("n"),
      py::arg("inner"), py::arg("dtype"), py::arg("num_threads"),
      "grad_x[o, j, i] = grad[o, i] exp(x[o, j, i] - out[o, i] - log n), 0 where out = -inf (addresses)");

  m.def("build_info", []() {
    py::dict info;
    info["version"] = VK_VERSION;
    info["compiler"] = VK_COMPILER;
    info["build_type"] = VK_BUILD_TYPE;
    info["isas_compiled"] = split_isas(VK_CPU_ISAS);
    info["isa"] = g_isa->name;
#if defined(VK_OPENMP) && VK_OPENMP
    info["openmp"] = true;
    info["max_threads"] = omp_get_max_threads();
#else
    info["openmp"] = false;
    info["max_threads"] = 1;
#endif
    info["sanitize"] = static_cast<bool>(VK_SANITIZE);
    info["stream_min_bytes"] = cpu::kStreamMinBytes;
    return info;
  });
}

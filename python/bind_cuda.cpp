// vaekernels._C_cuda: pybind11 bindings of the CUDA kernels (csrc/cuda).
//
// Compiled by the host C++ compiler: no CUDA and no torch headers.  Every tensor argument is a
// device address (tensor.data_ptr()), `stream` is torch.cuda.current_stream(dev).cuda_stream
// and `device` the device index; the Python layer (vaekernels/ops) checks shapes, dtypes,
// devices and contiguity before calling.  CUDA errors (no device, no driver, a failed launch)
// raise RuntimeError with the CUDA error string; an unsupported dtype code raises ValueError.
// Import needs no GPU and no driver: the CUDA runtime is linked statically and loads the
// driver lazily, on the first call that needs the device.
#include <pybind11/pybind11.h>
#include <stdint.h>

#include "cuda/kernels.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

void* stream_ptr(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "vaekernels CUDA kernels (raw device pointers; see vaekernels/ops for the torch ops)";

  m.def(
      "philox",
      [](uintptr_t counters, uintptr_t keys, uintptr_t out, int64_t n, uintptr_t stream, int device) {
        vaekernels::philox_cuda(ptr<const uint32_t>(counters), ptr<const uint32_t>(keys), ptr<uint32_t>(out), n,
                                stream_ptr(stream), device);
      },
      py::arg("counters"), py::arg("keys"), py::arg("out"), py::arg("n"), py::arg("stream"), py::arg("device"),
      "out[i] = philox4x32_10(counters[i], keys[i]); counters uint32[n][4], keys uint32[n][2], out uint32[n][4].");

  m.def(
      "philox_fill",
      [](uint64_t seed, uint64_t first_group, uintptr_t out, int64_t n_groups, uintptr_t stream, int device) {
        vaekernels::philox_fill_cuda(seed, first_group, ptr<uint32_t>(out), n_groups, stream_ptr(stream), device);
      },
      py::arg("seed"), py::arg("first_group"), py::arg("out"), py::arg("n_groups"), py::arg("stream"),
      py::arg("device"), "out[i] = philox_group(seed, first_group + i); out uint32[n_groups][4].");

  m.def(
      "reparameterize_fwd",
      [](uintptr_t mu, uintptr_t logvar, uintptr_t seed, uintptr_t z, int64_t n, int64_t k, int dtype,
         uintptr_t stream, int device) {
        vaekernels::reparameterize_fwd_cuda(ptr<const void>(mu), ptr<const void>(logvar), ptr<const int64_t>(seed),
                                            ptr<void>(z), n, k, dtype, stream_ptr(stream), device);
      },
      py::arg("mu"), py::arg("logvar"), py::arg("seed"), py::arg("z"), py::arg("n"), py::arg("k"), py::arg("dtype"),
      py::arg("stream"), py::arg("device"),
      "z[j, i] = mu[i] + exp(0.5 logvar[i]) * eps(seed, j*n + i); mu, logvar [n], z [k, n]; seed: device int64*.");

  m.def(
      "reparameterize_bwd",
      [](uintptr_t grad_z, uintptr_t logvar, uintptr_t seed, uintptr_t grad_mu, uintptr_t grad_logvar, int64_t n,
         int64_t k, int dtype, uintptr_t stream, int device) {
        vaekernels::reparameterize_bwd_cuda(ptr<const void>(grad_z), ptr<const void>(logvar),
                                            ptr<const int64_t>(seed), ptr<void>(grad_mu), ptr<void>(grad_logvar), n,
                                            k, dtype, stream_ptr(stream), device);
      },
      py::arg("grad_z"), py::arg("logvar"), py::arg("seed"), py::arg("grad_mu"), py::arg("grad_logvar"), py::arg("n"),
      py::arg("k"), py::arg("dtype"), py::arg("stream"), py::arg("device"),
      "grad_mu[i] = sum_j grad_z[j, i]; grad_logvar[i] = 0.5 exp(0.5 logvar[i]) sum_j grad_z[j, i] eps(seed, j*n+i).");

  m.def(
      "iwae_bound_fwd",
      [](uintptr_t log_px_z, uintptr_t z, uintptr_t mu, uintptr_t logvar, uintptr_t prior_mu, int64_t prior_mu_stride,
         uintptr_t prior_logvar, int64_t prior_logvar_stride, uintptr_t bound, uintptr_t weights, int64_t k, int64_t b,
         int64_t d, double alpha, int dtype, uintptr_t stream, int device) {
        vaekernels::iwae_bound_fwd_cuda(ptr<const float>(log_px_z), ptr<const void>(z), ptr<const void>(mu),
                                        ptr<const void>(logvar), ptr<const void>(prior_mu), prior_mu_stride,
                                        ptr<const void>(prior_logvar), prior_logvar_stride, ptr<float>(bound),
                                        ptr<float>(weights), k, b, d, alpha, dtype, stream_ptr(stream), device);
      },
      py::arg("log_px_z"), py::arg("z"), py::arg("mu"), py::arg("logvar"), py::arg("prior_mu"),
      py::arg("prior_mu_stride"), py::arg("prior_logvar"), py::arg("prior_logvar_stride"), py::arg("bound"),
      py::arg("weights"), py::arg("k"), py::arg("b"), py::arg("d"), py::arg("alpha"), py::arg("dtype"),
      py::arg("stream"), py::arg("device"),
      "bound[b] = 1/(1-alpha) (logsumexp_k (1-alpha) log w[k, b] - log k); weights [k, b] = its derivatives by "
      "log w; z [k, b, d], mu, logvar [b, d], priors rows of d with stride 0 or d, or 0 (null); f32 lpx/bound/weights.");

  m.def(
      "iwae_bound_bwd",
      [](uintptr_t grad, uintptr_t weights, uintptr_t z, uintptr_t mu, uintptr_t logvar, uintptr_t prior_mu,
         int64_t prior_mu_stride, uintptr_t prior_logvar, int64_t prior_logvar_stride, uintptr_t grad_log_px_z,
         uintptr_t grad_z, uintptr_t grad_mu, uintptr_t grad_logvar, uintptr_t grad_prior_mu,
         uintptr_t grad_prior_logvar, int64_t k, int64_t b, int64_t d, int dtype, uintptr_t stream, int device) {
        vaekernels::iwae_bound_bwd_cuda(ptr<const float>(grad), ptr<const float>(weights), ptr<const void>(z),
                                        ptr<const void>(mu), ptr<const void>(logvar), ptr<const void>(prior_mu),
                                        prior_mu_stride, ptr<const void>(prior_logvar), prior_logvar_stride,
                                        ptr<float>(grad_log_px_z), ptr<void>(grad_z), ptr<void>(grad_mu),
                                        ptr<void>(grad_logvar), ptr<void>(grad_prior_mu), ptr<void>(grad_prior_logvar),
                                        k, b, d, dtype, stream_ptr(stream), device);
      },
      py::arg("grad"), py::arg("weights"), py::arg("z"), py::arg("mu"), py::arg("logvar"), py::arg("prior_mu"),
      py::arg("prior_mu_stride"), py::arg("prior_logvar"), py::arg("prior_logvar_stride"), py::arg("grad_log_px_z"),
      py::arg("grad_z"), py::arg("grad_mu"), py::arg("grad_logvar"), py::arg("grad_prior_mu"),
      py::arg("grad_prior_logvar"), py::arg("k"), py::arg("b"), py::arg("d"), py::arg("dtype"), py::arg("stream"),
      py::arg("device"), "Gradients of iwae_bound_fwd from grad [b] and weights [k, b]; a null gradient is not computed.");

  m.def(
      "gaussian_log_prob_fwd",
      [](uintptr_t z, uintptr_t mu, uintptr_t logvar, uintptr_t out, int64_t s, int64_t n, int64_t d, int dtype,
         uintptr_t stream, int device) {
        vaekernels::gaussian_log_prob_fwd_cuda(ptr<const void>(z), ptr<const void>(mu), ptr<const void>(logvar),
                                               ptr<float>(out), s, n, d, dtype, stream_ptr(stream), device);
      },
      py::arg("z"), py::arg("mu"), py::arg("logvar"), py::arg("out"), py::arg("s"), py::arg("n"), py::arg("d"),
      py::arg("dtype"), py::arg("stream"), py::arg("device"),
      "out[s, n] = -1/2 sum_d (log 2pi + logvar + (z - mu)^2 e^-logvar); z [s, n, d], mu, logvar [n, d]; out f32.");

  m.def(
      "gaussian_log_prob_bwd",
      [](uintptr_t grad, uintptr_t z, uintptr_t mu, uintptr_t logvar, uintptr_t grad_z, uintptr_t grad_mu,
         uintptr_t grad_logvar, int64_t s, int64_t n, int64_t d, int dtype, uintptr_t stream, int device) {
        vaekernels::gaussian_log_prob_bwd_cuda(ptr<const float>(grad), ptr<const void>(z), ptr<const void>(mu),
                                               ptr<const void>(logvar), ptr<void>(grad_z), ptr<void>(grad_mu),
                                               ptr<void>(grad_logvar), s, n, d, dtype, stream_ptr(stream), device);
      },
      py::arg("grad"), py::arg("z"), py::arg("mu"), py::arg("logvar"), py::arg("grad_z"), py::arg("grad_mu"),
      py::arg("grad_logvar"), py::arg("s"), py::arg("n"), py::arg("d"), py::arg("dtype"), py::arg("stream"),
      py::arg("device"), "Gradients of gaussian_log_prob_fwd from grad [s, n] (f32).");

  m.def(
      "log_mean_exp_fwd",
      [](uintptr_t x, uintptr_t out, int64_t outer, int64_t n, int64_t inner, int dtype, uintptr_t stream, int device) {
        vaekernels::log_mean_exp_fwd_cuda(ptr<const void>(x), ptr<float>(out), outer, n, inner, dtype,
                                          stream_ptr(stream), device);
      },
      py::arg("x"), py::arg("out"), py::arg("outer"), py::arg("n"), py::arg("inner"), py::arg("dtype"),
      py::arg("stream"), py::arg("device"), "out[o, i] = log (1/n) sum_j exp(x[o, j, i]); x [outer, n, inner]; out f32.");

  m.def(
      "log_mean_exp_bwd",
      [](uintptr_t grad, uintptr_t x, uintptr_t out, uintptr_t grad_x, int64_t outer, int64_t n, int64_t inner,
         int dtype, uintptr_t stream, int device) {
        vaekernels::log_mean_exp_bwd_cuda(ptr<const float>(grad), ptr<const void>(x), ptr<const float>(out),
                                          ptr<void>(grad_x), outer, n, inner, dtype, stream_ptr(stream), device);
      },
      py::arg("grad"), py::arg("x"), py::arg("out"), py::arg("grad_x"), py::arg("outer"), py::arg("n"),
      py::arg("inner"), py::arg("dtype"), py::arg("stream"), py::arg("device"),
      "grad_x[o, j, i] = grad[o, i] exp(x[o, j, i] - out[o, i] - log n), 0 where out = -inf.");

  m.def(
      "gaussian_kl_fwd",
      [](uintptr_t mu, uintptr_t logvar, uintptr_t prior_mu, uintptr_t prior_logvar, uintptr_t out, uintptr_t col,
         int64_t n, int64_t d, int64_t p, int reduction, double free_bits, int dtype, uintptr_t stream, int device) {
        vaekernels::gaussian_kl_fwd_cuda(ptr<const void>(mu), ptr<const void>(logvar), ptr<const void>(prior_mu),
                                         ptr<const void>(prior_logvar), ptr<float>(out), ptr<float>(col), n, d, p,
                                         reduction, free_bits, dtype, stream_ptr(stream), device);
      },
      py::arg("mu"), py::arg("logvar"), py::arg("prior_mu"), py::arg("prior_logvar"), py::arg("out"), py::arg("col"),
      py::arg("n"), py::arg("d"), py::arg("p"), py::arg("reduction"), py::arg("free_bits"), py::arg("dtype"),
      py::arg("stream"), py::arg("device"),
      "KL[r, c] = 0.5 (e^delta - 1 - delta) + 0.5 (mu - pm)^2 e^-plv; mu, logvar [n, d], priors [p, d] or 0; "
      "reduction 0 none, 1 per example, 2 sum, 3 batchmean; free_bits > 0: col [d] = column means, clamped.");

  m.def(
      "gaussian_kl_bwd",
      [](uintptr_t grad, uintptr_t mu, uintptr_t logvar, uintptr_t prior_mu, uintptr_t prior_logvar, uintptr_t col,
         uintptr_t grad_mu, uintptr_t grad_logvar, uintptr_t grad_prior_mu, uintptr_t grad_prior_logvar, int64_t n,
         int64_t d, int64_t p, int reduction, double free_bits, int dtype, uintptr_t stream, int device) {
        vaekernels::gaussian_kl_bwd_cuda(ptr<const float>(grad), ptr<const void>(mu), ptr<const void>(logvar),
                                         ptr<const void>(prior_mu), ptr<const void>(prior_logvar),
                                         ptr<const float>(col), ptr<void>(grad_mu), ptr<void>(grad_logvar),
                                         ptr<void>(grad_prior_mu), ptr<void>(grad_prior_logvar), n, d, p, reduction,
                                         free_bits, dtype, stream_ptr(stream), device);
      },
      py::arg("grad"), py::arg("mu"), py::arg("logvar"), py::arg("prior_mu"), py::arg("prior_logvar"), py::arg("col"),
      py::arg("grad_mu"), py::arg("grad_logvar"), py::arg("grad_prior_mu"), py::arg("grad_prior_logvar"), py::arg("n"),
      py::arg("d"), py::arg("p"), py::arg("reduction"), py::arg("free_bits"), py::arg("dtype"), py::arg("stream"),
      py::arg("device"), "Gradients of gaussian_kl_fwd: grad float32 shaped as its out -> grad_mu, grad_logvar, "
      "grad_prior_* (null without that prior).");

  m.def(
      "build_info",
      []() {
        py::dict info;
        info["version"] = VK_VERSION;
        info["cuda_compiled"] = vaekernels::cuda_compiled_version();
        info["archs"] = VK_CUDA_ARCHS;
        info["compiler"] = VK_CUDA_COMPILER;
        info["host_compiler"] = VK_COMPILER;
        return info;
      },
      "How this module was built: version, cuda_compiled (CUDART_VERSION), archs, compiler (nvcc), host_compiler.");

  m.def("device_count", &vaekernels::cuda_device_count,
        "cudaGetDeviceCount; 0 (no exception) when there is no device or no driver.");
}

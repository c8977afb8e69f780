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

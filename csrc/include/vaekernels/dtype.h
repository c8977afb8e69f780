// The dtype codes that Python passes to the compiled kernels (vaekernels/backends.py: DTYPE_CODES).
#pragma once

namespace vaekernels {

enum DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kFloat64 = 3,
};

}  // namespace vaekernels

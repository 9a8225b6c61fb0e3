// Argument checks shared by the kernels: every message says what was expected and what was got.
#pragma once
#include <ATen/ATen.h>

namespace te {

inline void check_rows_float(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 2, op, ": expected a 2-D tensor of rows [N, D], got ", x.dim(), "-D with shape ",
              x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              op, ": expected float32, float16 or bfloat16 rows, got ", x.scalar_type());
}

}  // namespace te

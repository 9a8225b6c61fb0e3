#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "checks.h"

namespace te {
namespace {

// One row at a time: rows are independent, so threads split the rows (at::parallel_for uses the same
// OpenMP pool as the rest of PyTorch). Inner loops are plain so the compiler vectorizes them; no
// -ffast-math, because the rounding must match the reference bit for bit.
std::tuple<at::Tensor, at::Tensor> quantize_rows_int8_cpu(const at::Tensor& x_in) {
  check_rows_float(x_in, "quantize_rows_int8");
  TORCH_CHECK(x_in.device().is_cpu(), "quantize_rows_int8: CPU kernel got a tensor on ", x_in.device());
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t n = x.size(0), d = x.size(1);
  at::Tensor q = at::empty({n, d}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({n}, x.options());
  const float* src = x.data_ptr<float>();
  int8_t* dst = q.data_ptr<int8_t>();
  float* sc = scale.data_ptr<float>();
  at::parallel_for(0, n, /*grain_size=*/std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = src + r * d;
      int8_t* out = dst + r * d;
      float amax = 0.f;
      bool finite = true;
      for (int64_t j = 0; j < d; ++j) {
        amax = std::max(amax, std::fabs(row[j]));
        finite &= std::isfinite(row[j]);
      }
      TORCH_CHECK(finite, "quantize_rows_int8: row ", r, " holds NaN or inf");
      if (amax == 0.f) {
        sc[r] = 0.f;
        for (int64_t j = 0; j < d; ++j) out[j] = 0;
        continue;
      }
      sc[r] = amax / 127.f;
      const float inv = 127.f / amax;
      for (int64_t j = 0; j < d; ++j) {
        float v = std::nearbyint(row[j] * inv);
        v = std::min(127.f, std::max(-127.f, v));
        out[j] = static_cast<int8_t>(v);
      }
    }
  });
  return {q, scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(te, CPU, m) {
  m.impl("quantize_rows_int8", &quantize_rows_int8_cpu);
}

}  // namespace te

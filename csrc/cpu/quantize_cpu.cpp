#include "cpu/quantize_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>

#include "checks.h"
#include "cpu/multiversion.h"

namespace te {
namespace {

// One row: returns false (and writes nothing) when the row holds NaN or inf. Plain loops so the
// compiler vectorizes them; no -ffast-math, because the rounding must match the reference bit for bit.
TE_MULTIVERSION bool quantize_row_int8(const float* __restrict__ row, int64_t d, int8_t* __restrict__ codes,
                                       float* scale) {
  float amax = 0.f;
  bool finite = true;
  for (int64_t j = 0; j < d; ++j) {
    amax = std::max(amax, std::fabs(row[j]));
    finite &= std::isfinite(row[j]);
  }
  if (!finite) return false;
  if (amax == 0.f) {
    *scale = 0.f;
    for (int64_t j = 0; j < d; ++j) codes[j] = 0;
    return true;
  }
  *scale = amax / 127.f;
  const float inv = 127.f / amax;
  for (int64_t j = 0; j < d; ++j) {
    float v = std::nearbyint(row[j] * inv);
    v = std::min(127.f, std::max(-127.f, v));
    codes[j] = static_cast<int8_t>(v);
  }
  return true;
}

std::tuple<at::Tensor, at::Tensor> quantize_rows_int8_cpu(const at::Tensor& x_in) {
  check_rows_float(x_in, "quantize_rows_int8");
  TORCH_CHECK(x_in.device().is_cpu(), "quantize_rows_int8: CPU kernel got a tensor on ", x_in.device());
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t n = x.size(0), d = x.size(1);
  at::Tensor q = at::empty({n, d}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({n}, x.options());
  quantize_rows_int8_into(x.data_ptr<float>(), n, d, q.data_ptr<int8_t>(), d,
                          reinterpret_cast<uint8_t*>(scale.data_ptr<float>()), sizeof(float));
  return {q, scale};
}

}  // namespace

// Rows are independent, so threads split the rows (at::parallel_for uses the same OpenMP pool as the
// rest of PyTorch).
void quantize_rows_int8_into(const float* x, int64_t n, int64_t d, int8_t* codes, int64_t code_stride,
                             uint8_t* scale_bytes, int64_t scale_stride) {
  at::parallel_for(0, n, /*grain_size=*/std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float scale = 0.f;
      TORCH_CHECK(quantize_row_int8(x + r * d, d, codes + r * code_stride, &scale), "quantize_rows_int8: row ", r,
                  " holds NaN or inf");
      std::memcpy(scale_bytes + r * scale_stride, &scale, sizeof(float));
    }
  });
}

TORCH_LIBRARY_IMPL(te, CPU, m) {
  m.impl("quantize_rows_int8", &quantize_rows_int8_cpu);
}

}  // namespace te

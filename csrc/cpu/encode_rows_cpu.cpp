#include <ATen/ATen.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/quantize_cpu.h"
#include "stored_rows.h"

namespace te {
namespace {

at::Tensor encode_rows_cpu(const at::Tensor& x_in, int64_t stored_code) {
  check_rows_float(x_in, "encode_rows");
  TORCH_CHECK(x_in.device().is_cpu(), "encode_rows: CPU kernel got a tensor on ", x_in.device());
  const StoredDtype stored = stored_dtype_from_code(stored_code, "encode_rows");
  if (stored != StoredDtype::kInt8) return encode_float_rows(x_in, stored);
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t n = x.size(0), d = x.size(1), width = row_bytes(d, stored);
  at::Tensor rows = at::empty({n, width}, x.options().dtype(at::kByte));
  uint8_t* base = rows.data_ptr<uint8_t>();
  // Codes and scale share the row: codes at byte 0, the scale right after them at byte d.
  quantize_rows_int8_into(x.data_ptr<float>(), n, d, reinterpret_cast<int8_t*>(base), width, base + d, width);
  return rows;
}

}  // namespace

TORCH_LIBRARY_IMPL(te, CPU, m) {
  m.impl("encode_rows", &encode_rows_cpu);
}

}  // namespace te

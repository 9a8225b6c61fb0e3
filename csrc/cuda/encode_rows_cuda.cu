#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/quantize_cuda.h"
#include "stored_rows.h"

namespace te {
namespace {

// The rows are encoded where they are, so a caller copies only the stored bytes to the host:
// D + 4 bytes per int8 row instead of 4 * D.
at::Tensor encode_rows_cuda(const at::Tensor& x_in, int64_t stored_code) {
  check_rows_float(x_in, "encode_rows");
  TORCH_CHECK(x_in.is_cuda(), "encode_rows: CUDA kernel got a tensor on ", x_in.device());
  const StoredDtype stored = stored_dtype_from_code(stored_code, "encode_rows");
  const c10::cuda::CUDAGuard guard(x_in.device());
  if (stored != StoredDtype::kInt8) return encode_float_rows(x_in, stored);
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t n = x.size(0), d = x.size(1), width = row_bytes(d, stored);
  at::Tensor rows = at::empty({n, width}, x.options().dtype(at::kByte));
  if (n == 0) return rows;
  check_rows_finite_cuda(x);
  uint8_t* base = rows.data_ptr<uint8_t>();
  // Codes and scale share the row: codes at byte 0, the scale right after them at byte d.
  launch_quantize_rows_int8(x.data_ptr<float>(), n, d, reinterpret_cast<int8_t*>(base), width, base + d, width,
                            c10::cuda::getCurrentCUDAStream());
  return rows;
}

}  // namespace

TORCH_LIBRARY_IMPL(te, CUDA, m) {
  m.impl("encode_rows", &encode_rows_cuda);
}

}  // namespace te

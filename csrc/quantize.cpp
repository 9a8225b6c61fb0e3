// quantize_rows_int8: symmetric int8 quantization with one float32 scale per row.
//
//   amax[r]  = max_j |x[r, j]|
//   scale[r] = amax[r] / 127            (0 for an all-zero row)
//   q[r, j]  = round_half_even(x[r, j] * (127 / amax[r]))   in [-127, 127]
//
// Dequantization is q * scale. -128 is never produced, so the code book is symmetric. The exact order
// of float operations above is shared by the CPU kernel, the CUDA kernel and the Python reference
// (transfer_engine/ops/reference.py), which is what lets the tests demand bit-identical results.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(te, m) {
  m.def("quantize_rows_int8(Tensor x) -> (Tensor q, Tensor scale)");
}

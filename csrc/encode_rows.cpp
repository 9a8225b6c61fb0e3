// encode_rows: float rows [N, D] -> their stored bytes [N, row_bytes(D, stored)] (uint8), the layout of
// csrc/stored_rows.h. int8 rows are quantize_rows_int8 (csrc/quantize.cpp) with the scale written after
// the codes of the same row, so one contiguous write stores a whole row. On CUDA the quantization runs
// on the GPU and only the compressed bytes need to cross to the host.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(te, m) {
  m.def("encode_rows(Tensor x, int stored_code) -> Tensor");
}

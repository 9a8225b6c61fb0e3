// The int8 row quantizer of quantize_rows_int8 on the GPU (csrc/quantize.cpp has the formula), shared
// with encode_rows, which writes the codes and the scale of a row next to each other.
#pragma once
#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace te {

// Raises "quantize_rows_int8: row R holds NaN or inf" for the first such row of the float32 rows x,
// the CPU kernel's wording (costs one reduction and one synchronization).
void check_rows_finite_cuda(const at::Tensor& x);

// Quantizes n contiguous float32 rows of d features on `stream`. Row r's codes go to
// codes + r * code_stride and the 4 bytes of its float32 scale to scale_bytes + r * scale_stride (byte
// writes, so an unaligned address is fine).
void launch_quantize_rows_int8(const float* x, int64_t n, int64_t d, int8_t* codes, int64_t code_stride,
                               uint8_t* scale_bytes, int64_t scale_stride, cudaStream_t stream);

}  // namespace te

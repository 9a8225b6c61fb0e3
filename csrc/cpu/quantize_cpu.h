// The int8 row quantizer of quantize_rows_int8 (csrc/quantize.cpp has the formula), shared with
// encode_rows, which writes the codes and the scale of a row next to each other.
#pragma once
#include <cstdint>

namespace te {

// Quantizes n contiguous float32 rows of d features, in parallel. Row r's codes go to
// codes + r * code_stride and the 4 bytes of its float32 scale to scale_bytes + r * scale_stride
// (written with memcpy, so an unaligned address is fine). Raises when a row holds NaN or inf.
void quantize_rows_int8_into(const float* x, int64_t n, int64_t d, int8_t* codes, int64_t code_stride,
                             uint8_t* scale_bytes, int64_t scale_stride);

}  // namespace te

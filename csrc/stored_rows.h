// The stored row layout shared by encode_rows and gather_rows, and the argument checks their CPU and
// CUDA kernels have in common. transfer_engine/ops/reference.py is the definition of the layout:
//
//   fp32: D little-endian float32           (4 * D bytes)
//   fp16: D IEEE float16                    (2 * D bytes)
//   int8: D int8 codes, then the row's float32 scale (D + 4 bytes; the scale is unaligned in general)
//
// A stored dtype crosses the op boundary as an integer code, its position in the Python tuple
// transfer_engine.ops.STORED_DTYPES.
#pragma once
#include <ATen/ATen.h>
#include <algorithm>
#include <cstdint>
#include <optional>

namespace te {

enum class StoredDtype : int64_t { kFp32 = 0, kFp16 = 1, kInt8 = 2 };

inline StoredDtype stored_dtype_from_code(int64_t code, const char* op) {
  TORCH_CHECK(code >= 0 && code <= 2, op, ": expected stored_code 0 (fp32), 1 (fp16) or 2 (int8), got ", code);
  return static_cast<StoredDtype>(code);
}

inline int64_t row_bytes(int64_t dim, StoredDtype stored) {
  switch (stored) {
    case StoredDtype::kFp32: return 4 * dim;
    case StoredDtype::kFp16: return 2 * dim;
    case StoredDtype::kInt8: return dim + 4;
  }
  TORCH_CHECK(false, "row_bytes: unknown stored dtype");
}

// fp32 and fp16 rows are a dtype conversion followed by a byte view; ATen does that on any device with
// the same rounding as the reference, so only int8 needs a kernel of ours.
inline at::Tensor encode_float_rows(const at::Tensor& x, StoredDtype stored) {
  const at::ScalarType target = stored == StoredDtype::kFp32 ? at::kFloat : at::kHalf;
  return x.to(target).contiguous().view(at::kByte).reshape({x.size(0), row_bytes(x.size(1), stored)});
}

// What every gather kernel needs once the arguments are known to be sound.
struct GatherRowsPlan {
  StoredDtype stored;
  int64_t width;   // bytes per stored row
  int64_t n_rows;  // whole rows in data; a trailing partial row is never read
};

// Shapes, dtypes and devices; the values inside index and out_index are checked by each kernel on
// the device where they live, before any row is read.
inline GatherRowsPlan check_gather_rows_args(const at::Tensor& data, const at::Tensor& index, int64_t dim,
                                             int64_t stored_code, const at::Tensor& out,
                                             const std::optional<at::Tensor>& out_index) {
  const StoredDtype stored = stored_dtype_from_code(stored_code, "gather_rows");
  TORCH_CHECK(dim >= 1, "gather_rows: expected dim >= 1, got ", dim);
  TORCH_CHECK(data.dim() == 1 && data.scalar_type() == at::kByte,
              "gather_rows: expected flat uint8 shard bytes, got ", data.scalar_type(), " with shape ", data.sizes());
  TORCH_CHECK(data.numel() <= 1 || data.stride(0) == 1,
              "gather_rows: expected contiguous shard bytes, got stride ", data.stride(0));
  TORCH_CHECK(index.dim() == 1 && at::isIntegralType(index.scalar_type(), /*includeBool=*/false),
              "gather_rows: expected a 1-D integer index, got ", index.scalar_type(), " with shape ", index.sizes());
  TORCH_CHECK(out.dim() == 2 && out.scalar_type() == at::kFloat && out.size(1) == dim,
              "gather_rows: expected out to be float32 [M, ", dim, "], got ", out.scalar_type(), " with shape ",
              out.sizes());
  TORCH_CHECK(out.size(1) <= 1 || out.stride(1) == 1,
              "gather_rows: expected out rows with unit stride, got strides ", out.strides());
  TORCH_CHECK(out.device() == data.device(), "gather_rows: expected out on the device of data (", data.device(),
              "), got ", out.device());
  if (out_index.has_value()) {
    const at::Tensor& where = *out_index;
    TORCH_CHECK(where.dim() == 1 && at::isIntegralType(where.scalar_type(), /*includeBool=*/false),
                "gather_rows: expected a 1-D integer out_index, got ", where.scalar_type(), " with shape ",
                where.sizes());
    TORCH_CHECK(where.numel() == index.numel(), "gather_rows: expected out_index with one entry per index (",
                index.numel(), "), got ", where.numel());
  } else {
    TORCH_CHECK(out.size(0) >= index.numel(), "gather_rows: out has ", out.size(0), " rows, fewer than the ",
                index.numel(), " rows gathered; pass out_index to place them");
  }
  const int64_t width = row_bytes(dim, stored);
  return {stored, width, data.numel() / width};
}

// One gather as plain pointers, host or device: row index[i] of data (at data + index[i] * width) is
// decoded into out row out_index[i] (row i when out_index is null). The CUDA kernel takes it by value.
struct GatherJob {
  const uint8_t* data;
  int64_t width;
  int64_t dim;
  const int64_t* index;
  const int64_t* out_index;
  float* out;
  int64_t out_row_stride;
  int64_t count;
};

// index and out_index (undefined when absent) are contiguous int64 tensors already range-checked.
inline GatherJob make_gather_job(const at::Tensor& data, const GatherRowsPlan& plan, int64_t dim,
                                 const at::Tensor& index, const at::Tensor& out_index, at::Tensor& out) {
  return {data.const_data_ptr<uint8_t>(),
          plan.width,
          dim,
          index.const_data_ptr<int64_t>(),
          out_index.defined() ? out_index.const_data_ptr<int64_t>() : nullptr,
          out.data_ptr<float>(),
          out.stride(0),
          index.numel()};
}

// The first of the int64 values outside [0, limit), or nullopt. On the CPU one branch-free pass says
// whether there is one (the common case costs a vectorized sweep) and only a failure pays for the
// search; on a GPU it costs one reduction and one synchronization.
inline std::optional<int64_t> first_out_of_range(const at::Tensor& values, int64_t limit) {
  if (values.numel() == 0) return std::nullopt;
  if (values.device().is_cpu()) {
    const int64_t* begin = values.const_data_ptr<int64_t>();
    const int64_t* end = begin + values.numel();
    bool any_bad = false;
    for (const int64_t* v = begin; v != end; ++v) any_bad |= static_cast<uint64_t>(*v) >= static_cast<uint64_t>(limit);
    if (!any_bad) return std::nullopt;
    return *std::find_if(begin, end, [&](int64_t v) { return v < 0 || v >= limit; });
  }
  const at::Tensor bad = values.lt(0).logical_or_(values.ge(limit));
  if (!bad.any().item<bool>()) return std::nullopt;
  return values.masked_select(bad)[0].item<int64_t>();
}

// One wording for a bad index on every device (the reference raises the same sentence).
[[noreturn]] inline void fail_row_out_of_range(int64_t row, int64_t n_rows) {
  TORCH_CHECK(false, "gather_rows: row ", row, " is out of range for a shard of ", n_rows, " rows");
}

[[noreturn]] inline void fail_out_index_out_of_range(int64_t position, int64_t out_rows) {
  TORCH_CHECK(false, "gather_rows: out_index ", position, " is out of range for out with ", out_rows, " rows");
}

}  // namespace te

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "cpu/multiversion.h"
#include "stored_rows.h"

namespace te {
namespace {

inline float* out_row(const GatherJob& job, int64_t i) {
  return job.out + (job.out_index != nullptr ? job.out_index[i] : i) * job.out_row_stride;
}

// Rows are scattered over the shard, so the hardware prefetcher, which follows a stream within a page,
// cannot see the next row coming. Asking for the row two ahead into L2 (a row of 2 KB is 33 lines)
// keeps enough loads in flight: on the 2-core Zen 4 of benchmarks/bench_cache_gather.py it cut a
// single-threaded gather of 4096 int8 rows (D=2048) from ~3.3 ms to ~2.5 ms.
constexpr int64_t kPrefetchRowsAhead = 2;

// GCC 12 at -O3 deletes a loop of __builtin_prefetch calls here as dead code (the prefetches vanish
// from the object file), so on x86 the prefetch is an asm statement the compiler must keep.
inline void prefetch_line_to_l2(const uint8_t* address) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  asm volatile("prefetcht1 %0" : : "m"(*address));
#else
  __builtin_prefetch(address, /*rw=*/0, /*locality=*/2);
#endif
}

inline void prefetch_row(const GatherJob& job, int64_t i, int64_t end) {
  if (i + kPrefetchRowsAhead >= end) return;
  const uint8_t* row = job.data + job.index[i + kPrefetchRowsAhead] * job.width;
  for (int64_t offset = 0; offset < job.width; offset += 64) prefetch_line_to_l2(row + offset);
  prefetch_line_to_l2(row + job.width - 1);  // the last line, when the row does not start on one
}

// The decoders take __restrict__ arguments so the compiler knows the mapped rows and out never
// overlap, and vectorizes without runtime alias checks. memcpy loads keep unaligned rows legal
// (an int8 row is D + 4 bytes wide, so its neighbours start at any address).
inline void decode_int8(const uint8_t* __restrict__ src, int64_t dim, float* __restrict__ dst) {
  float scale;
  std::memcpy(&scale, src + dim, sizeof(scale));
  const int8_t* __restrict__ codes = reinterpret_cast<const int8_t*>(src);
  for (int64_t j = 0; j < dim; ++j) dst[j] = static_cast<float>(codes[j]) * scale;
}

inline void decode_fp16(const uint8_t* __restrict__ src, int64_t dim, float* __restrict__ dst) {
  for (int64_t j = 0; j < dim; ++j) {
    uint16_t bits;
    std::memcpy(&bits, src + 2 * j, sizeof(bits));
    // The branch-free bit recipe of c10::Half (exact for every finite value, inf and NaN), which the
    // compiler vectorizes; _cvtsh_ss would need -mf16c at build time.
    dst[j] = c10::detail::fp16_ieee_to_fp32_value(bits);
  }
}

TE_MULTIVERSION void gather_int8_rows(const GatherJob& job, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    prefetch_row(job, i, end);
    decode_int8(job.data + job.index[i] * job.width, job.dim, out_row(job, i));
  }
}

TE_MULTIVERSION void gather_fp16_rows(const GatherJob& job, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    prefetch_row(job, i, end);
    decode_fp16(job.data + job.index[i] * job.width, job.dim, out_row(job, i));
  }
}

void gather_fp32_rows(const GatherJob& job, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    prefetch_row(job, i, end);
    std::memcpy(out_row(job, i), job.data + job.index[i] * job.width, job.width);
  }
}

at::Tensor& gather_rows_cpu(const at::Tensor& data, const at::Tensor& index_in, int64_t dim, int64_t stored_code,
                            at::Tensor& out, const std::optional<at::Tensor>& out_index_in) {
  const GatherRowsPlan plan = check_gather_rows_args(data, index_in, dim, stored_code, out, out_index_in);
  TORCH_CHECK(data.device().is_cpu(), "gather_rows: CPU kernel got data on ", data.device());
  const at::Tensor index = index_in.to(at::kLong).contiguous();
  const int64_t count = index.numel();
  if (count == 0) return out;
  // Every index is checked before the first row is read: a bad one is an error, never a read past the map.
  if (auto bad = first_out_of_range(index, plan.n_rows)) {
    fail_row_out_of_range(*bad, plan.n_rows);
  }
  at::Tensor out_index;
  if (out_index_in.has_value()) {
    out_index = out_index_in->to(at::kLong).contiguous();
    if (auto bad = first_out_of_range(out_index, out.size(0))) {
      fail_out_index_out_of_range(*bad, out.size(0));
    }
  }
  const GatherJob job = make_gather_job(data, plan, dim, index, out_index, out);
  auto* gather = plan.stored == StoredDtype::kInt8   ? &gather_int8_rows
                 : plan.stored == StoredDtype::kFp16 ? &gather_fp16_rows
                                                     : &gather_fp32_rows;
  // At least ~32K floats per task, so a small gather stays on the calling thread.
  const int64_t grain = std::max<int64_t>(1, 32768 / dim);
  at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) { gather(job, begin, end); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(te, CPU, m) {
  m.impl("gather_rows", &gather_rows_cpu);
}

}  // namespace te

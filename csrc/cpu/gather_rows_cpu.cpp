#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "cpu/multiversion.h"
#include "stored_rows.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define TE_STREAMING_STORES 1
#endif

namespace te {
namespace {

inline float* out_row(const GatherJob& job, int64_t i) {
  return job.out + (job.out_index != nullptr ? job.out_index[i] : i) * job.out_row_stride;
}

// Rows are scattered over the shard, so the hardware prefetcher, which follows a stream within a page,
// cannot see the next row coming. Asking for the rows about 8 KB ahead (4 int8 rows of D=2048, at
// least 2 rows) into L2 keeps enough loads in flight; 2 rows ahead or into L1 was slower, and sorting the
// indices first gained nothing once the prefetch was in (benchmarks/bench_cache_gather.py; the figures:
// docs/cache.md, "Gathering rows").
constexpr int64_t kPrefetchBytesAhead = 8192;

inline int64_t prefetch_rows_ahead(int64_t width) {
  return std::max<int64_t>(2, (kPrefetchBytesAhead + width - 1) / width);
}

// GCC 12 at -O3 deletes a loop of __builtin_prefetch calls here as dead code (the prefetches vanish
// from the object file), so on x86 the prefetch is an asm statement the compiler must keep.
inline void prefetch_line_to_l2(const uint8_t* address) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  asm volatile("prefetcht1 %0" : : "m"(*address));
#else
  __builtin_prefetch(address, /*rw=*/0, /*locality=*/2);
#endif
}

inline void prefetch_row(const GatherJob& job, int64_t ahead, int64_t i, int64_t end) {
  if (i + ahead >= end) return;
  const uint8_t* row = job.data + job.index[i + ahead] * job.width;
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
    // The branch-free bit recipe of c10::Half (exact for every finite value, inf and NaN); _cvtsh_ss
    // would need -mf16c at build time. GCC 12 vectorizes this loop in the AVX-512 clone only; the
    // AVX2 and baseline clones stay scalar (exact, slower).
    dst[j] = c10::detail::fp16_ieee_to_fp32_value(bits);
  }
}

TE_MULTIVERSION void gather_int8_rows(const GatherJob& job, int64_t begin, int64_t end) {
  const int64_t ahead = prefetch_rows_ahead(job.width);
  for (int64_t i = begin; i < end; ++i) {
    prefetch_row(job, ahead, i, end);
    decode_int8(job.data + job.index[i] * job.width, job.dim, out_row(job, i));
  }
}

TE_MULTIVERSION void gather_fp16_rows(const GatherJob& job, int64_t begin, int64_t end) {
  const int64_t ahead = prefetch_rows_ahead(job.width);
  for (int64_t i = begin; i < end; ++i) {
    prefetch_row(job, ahead, i, end);
    decode_fp16(job.data + job.index[i] * job.width, job.dim, out_row(job, i));
  }
}

void gather_fp32_rows(const GatherJob& job, int64_t begin, int64_t end) {
  const int64_t ahead = prefetch_rows_ahead(job.width);
  for (int64_t i = begin; i < end; ++i) {
    prefetch_row(job, ahead, i, end);
    std::memcpy(out_row(job, i), job.data + job.index[i] * job.width, job.width);
  }
}

#ifdef TE_STREAMING_STORES
// A gather whose output is much larger than the caches loses twice by storing through them: every
// output line is first read from memory (write-allocate) and the rows still to be read are evicted.
// Non-temporal stores skip both. There is no portable way to ask the compiler for them, so this int8
// decoder is written with AVX-512 intrinsics and chosen at run time (the CPU must support AVX-512F);
// it computes exactly what decode_int8 computes (int8 -> int32 -> float32, one IEEE multiply).
// It pays on the benchmark's gather with the output cold in cache (docs/cache.md, "Gathering rows").
constexpr int64_t kStreamingOutputBytes = int64_t{8} << 20;

bool streaming_stores_supported() {
  static const bool supported = __builtin_cpu_supports("avx512f");
  return supported;
}

// GCC 12 warns that _mm512_undefined_*() inside its own intrinsics "may be used uninitialized"
// (GCC bug 105593, a false positive); silence exactly that, here only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
__attribute__((target("avx512f"))) void gather_int8_rows_streaming(const GatherJob& job, int64_t begin,
                                                                   int64_t end) {
  const int64_t ahead = prefetch_rows_ahead(job.width);
  for (int64_t i = begin; i < end; ++i) {
    prefetch_row(job, ahead, i, end);
    const uint8_t* src = job.data + job.index[i] * job.width;
    const int8_t* codes = reinterpret_cast<const int8_t*>(src);
    float* dst = out_row(job, i);
    float scale;
    std::memcpy(&scale, src + job.dim, sizeof(scale));
    int64_t j = 0;
    for (; j < job.dim && reinterpret_cast<uintptr_t>(dst + j) % 64 != 0; ++j) {
      dst[j] = static_cast<float>(codes[j]) * scale;  // up to the first 64-byte boundary of the row
    }
    const __m512 scales = _mm512_set1_ps(scale);
    for (; j + 16 <= job.dim; j += 16) {
      const __m128i sixteen_codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + j));
      _mm512_stream_ps(dst + j, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sixteen_codes)), scales));
    }
    for (; j < job.dim; ++j) dst[j] = static_cast<float>(codes[j]) * scale;
  }
  _mm_sfence();  // streaming stores are weakly ordered: make them visible before the task returns
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // TE_STREAMING_STORES

using GatherFn = void (*)(const GatherJob&, int64_t, int64_t);

GatherFn pick_gather(StoredDtype stored, int64_t output_bytes) {
  switch (stored) {
    case StoredDtype::kInt8:
#ifdef TE_STREAMING_STORES
      if (output_bytes >= kStreamingOutputBytes && streaming_stores_supported()) return &gather_int8_rows_streaming;
#endif
      return &gather_int8_rows;
    case StoredDtype::kFp16: return &gather_fp16_rows;
    case StoredDtype::kFp32: return &gather_fp32_rows;
  }
  TORCH_CHECK(false, "gather_rows: unknown stored dtype");
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
  const GatherFn gather = pick_gather(plan.stored, count * dim * static_cast<int64_t>(sizeof(float)));
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

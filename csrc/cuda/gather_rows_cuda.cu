#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>

#include "stored_rows.h"

namespace te {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

// Little-endian loads from any byte address: an int8 row is D + 4 bytes wide, so its scale (and, in a
// shard sliced at an odd offset, any element) may be unaligned.
__device__ __forceinline__ uint32_t load_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}

__device__ __forceinline__ uint16_t load_u16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | p[1] << 8);
}

// A block per gathered row (grid-stride over rows), its threads over the features: consecutive
// threads read consecutive bytes and write consecutive floats, so both sides coalesce. kAligned is
// known on the host: when every element is naturally aligned, fp16 / fp32 elements load whole.
template <StoredDtype kStored, bool kAligned>
__global__ void gather_rows_kernel(const GatherJob job) {
  for (int64_t i = blockIdx.x; i < job.count; i += gridDim.x) {
    const uint8_t* __restrict__ src = job.data + job.index[i] * job.width;
    float* __restrict__ dst = job.out + (job.out_index != nullptr ? job.out_index[i] : i) * job.out_row_stride;
    if constexpr (kStored == StoredDtype::kInt8) {
      const float scale = __uint_as_float(load_u32(src + job.dim));
      const int8_t* codes = reinterpret_cast<const int8_t*>(src);
      // __fmul_rn: exactly code * scale even under --use_fast_math, as the CPU kernel and the reference.
      for (int64_t j = threadIdx.x; j < job.dim; j += blockDim.x) {
        dst[j] = __fmul_rn(static_cast<float>(codes[j]), scale);
      }
    } else if constexpr (kStored == StoredDtype::kFp16) {
      for (int64_t j = threadIdx.x; j < job.dim; j += blockDim.x) {
        const uint16_t bits = kAligned ? reinterpret_cast<const uint16_t*>(src)[j] : load_u16(src + 2 * j);
        dst[j] = __half2float(__ushort_as_half(bits));
      }
    } else {
      for (int64_t j = threadIdx.x; j < job.dim; j += blockDim.x) {
        dst[j] = kAligned ? reinterpret_cast<const float*>(src)[j] : __uint_as_float(load_u32(src + 4 * j));
      }
    }
  }
}

template <StoredDtype kStored>
void launch(const GatherJob& job, bool aligned, cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>(std::min(job.count, kMaxBlocks));
  if (aligned) {
    gather_rows_kernel<kStored, true><<<blocks, kThreads, 0, stream>>>(job);
  } else {
    gather_rows_kernel<kStored, false><<<blocks, kThreads, 0, stream>>>(job);
  }
}

// Index tensors may come from the host (a loader's random permutation): they are checked there, with
// no GPU synchronization, then copied; indices already on the GPU are checked with a reduction.
at::Tensor checked_index(const at::Tensor& values, int64_t limit, const at::Device& device, bool is_out_index) {
  at::Tensor index = values.to(at::kLong).contiguous();
  if (auto bad = first_out_of_range(index, limit)) {
    if (is_out_index) fail_out_index_out_of_range(*bad, limit);
    fail_row_out_of_range(*bad, limit);
  }
  return index.to(device);
}

at::Tensor& gather_rows_cuda(const at::Tensor& data, const at::Tensor& index_in, int64_t dim, int64_t stored_code,
                             at::Tensor& out, const std::optional<at::Tensor>& out_index_in) {
  const GatherRowsPlan plan = check_gather_rows_args(data, index_in, dim, stored_code, out, out_index_in);
  TORCH_CHECK(data.is_cuda(), "gather_rows: expected data on a CUDA device (the index is on one), got data on ",
              data.device());
  const c10::cuda::CUDAGuard guard(data.device());
  const int64_t count = index_in.numel();
  if (count == 0) return out;
  // Every index is checked before the kernel reads a row: a bad one is an error, never a stray read.
  const at::Tensor index = checked_index(index_in, plan.n_rows, data.device(), /*is_out_index=*/false);
  at::Tensor out_index;
  if (out_index_in.has_value()) {
    out_index = checked_index(*out_index_in, out.size(0), data.device(), /*is_out_index=*/true);
  }
  const GatherJob job = make_gather_job(data, plan, dim, index, out_index, out);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto address = reinterpret_cast<uintptr_t>(job.data);
  switch (plan.stored) {
    case StoredDtype::kInt8: launch<StoredDtype::kInt8>(job, /*aligned=*/false, stream); break;
    case StoredDtype::kFp16: launch<StoredDtype::kFp16>(job, address % 2 == 0, stream); break;
    case StoredDtype::kFp32: launch<StoredDtype::kFp32>(job, address % 4 == 0, stream); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(te, CUDA, m) {
  m.impl("gather_rows", &gather_rows_cuda);
}

}  // namespace te

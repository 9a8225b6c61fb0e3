#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "checks.h"

namespace te {
namespace {

constexpr int kThreads = 256;

// One block per row: the block reduces |x| to amax (warp shuffles, then shared memory), then every
// thread writes its share of the row. Quantizing on the GPU means only int8 bytes (4x fewer) cross
// PCIe on the way to the cache.
__global__ void quantize_rows_int8_kernel(const float* __restrict__ x, int8_t* __restrict__ q,
                                          float* __restrict__ scale, int64_t d) {
  const int64_t r = blockIdx.x;
  const float* row = x + r * d;
  int8_t* out = q + r * d;
  float amax = 0.f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) amax = fmaxf(amax, fabsf(row[j]));
  for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_down_sync(0xffffffff, amax, off));
  __shared__ float warp_max[kThreads / 32];
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = amax;
  __syncthreads();
  if (threadIdx.x < 32) {
    amax = threadIdx.x < (blockDim.x >> 5) ? warp_max[threadIdx.x] : 0.f;
    for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_down_sync(0xffffffff, amax, off));
    if (threadIdx.x == 0) warp_max[0] = amax;
  }
  __syncthreads();
  amax = warp_max[0];
  if (amax == 0.f) {
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) out[j] = 0;
    if (threadIdx.x == 0) scale[r] = 0.f;
    return;
  }
  // __fdiv_rn / __fmul_rn: IEEE round-to-nearest even under --use_fast_math, matching the CPU kernel.
  const float inv = __fdiv_rn(127.f, amax);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float v = nearbyintf(__fmul_rn(row[j], inv));
    out[j] = static_cast<int8_t>(fminf(127.f, fmaxf(-127.f, v)));
  }
  if (threadIdx.x == 0) scale[r] = __fdiv_rn(amax, 127.f);
}

std::tuple<at::Tensor, at::Tensor> quantize_rows_int8_cuda(const at::Tensor& x_in) {
  check_rows_float(x_in, "quantize_rows_int8");
  TORCH_CHECK(x_in.is_cuda(), "quantize_rows_int8: CUDA kernel got a tensor on ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const int64_t n = x.size(0), d = x.size(1);
  at::Tensor q = at::empty({n, d}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({n}, x.options());
  if (n == 0) return {q, scale};
  TORCH_CHECK(x.isfinite().all().item<bool>(), "quantize_rows_int8: rows hold NaN or inf");
  quantize_rows_int8_kernel<<<n, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), q.data_ptr<int8_t>(), scale.data_ptr<float>(), d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {q, scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(te, CUDA, m) {
  m.impl("quantize_rows_int8", &quantize_rows_int8_cuda);
}

}  // namespace te

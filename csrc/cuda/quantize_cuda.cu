#include "cuda/quantize_cuda.h"

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
__global__ void quantize_rows_int8_kernel(const float* __restrict__ x, int64_t d, int8_t* __restrict__ codes,
                                          int64_t code_stride, uint8_t* __restrict__ scale_bytes,
                                          int64_t scale_stride) {
  const int64_t r = blockIdx.x;
  const float* row = x + r * d;
  int8_t* out = codes + r * code_stride;
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
  float scale = 0.f;
  if (amax == 0.f) {
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) out[j] = 0;
  } else {
    // __fdiv_rn / __fmul_rn: IEEE round-to-nearest even under --use_fast_math, matching the CPU kernel.
    const float inv = __fdiv_rn(127.f, amax);
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      float v = nearbyintf(__fmul_rn(row[j], inv));
      out[j] = static_cast<int8_t>(fminf(127.f, fmaxf(-127.f, v)));
    }
    scale = __fdiv_rn(amax, 127.f);
  }
  if (threadIdx.x == 0) memcpy(scale_bytes + r * scale_stride, &scale, sizeof(scale));
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
  check_rows_finite_cuda(x);
  launch_quantize_rows_int8(x.data_ptr<float>(), n, d, q.data_ptr<int8_t>(), d,
                            reinterpret_cast<uint8_t*>(scale.data_ptr<float>()), sizeof(float),
                            c10::cuda::getCurrentCUDAStream());
  return {q, scale};
}

}  // namespace

void check_rows_finite_cuda(const at::Tensor& x) {
  const at::Tensor finite_rows = x.isfinite().all(/*dim=*/1);
  if (finite_rows.all().item<bool>()) return;
  const int64_t row = finite_rows.logical_not().nonzero()[0][0].item<int64_t>();
  TORCH_CHECK(false, "quantize_rows_int8: row ", row, " holds NaN or inf");
}

void launch_quantize_rows_int8(const float* x, int64_t n, int64_t d, int8_t* codes, int64_t code_stride,
                               uint8_t* scale_bytes, int64_t scale_stride, cudaStream_t stream) {
  if (n == 0) return;
  TORCH_CHECK(n <= INT32_MAX, "quantize_rows_int8: at most ", INT32_MAX, " rows per call, got ", n);
  quantize_rows_int8_kernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(x, d, codes, code_stride,
                                                                              scale_bytes, scale_stride);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

TORCH_LIBRARY_IMPL(te, CUDA, m) {
  m.impl("quantize_rows_int8", &quantize_rows_int8_cuda);
}

}  // namespace te

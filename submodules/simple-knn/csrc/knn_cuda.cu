// Exact 3-NN on the GPU by brute force in shared-memory tiles: O(N^2) work but fully parallel and simple;
// it runs once per model, at initialisation (35k points: ~1.2e9 distance evaluations).
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/zeros.h>
#include <cfloat>

#include "knn.h"

namespace gt_knn {
namespace {

constexpr int kBlock = 256;

__global__ void knn3_kernel(const float* __restrict__ p, int64_t N, int k, float* __restrict__ out) {
  __shared__ float tile[kBlock * 3];
  const int64_t i = (int64_t)blockIdx.x * kBlock + threadIdx.x;
  float q[3] = {0.f, 0.f, 0.f};
  if (i < N) {
    q[0] = p[3 * i];
    q[1] = p[3 * i + 1];
    q[2] = p[3 * i + 2];
  }
  float best[3] = {FLT_MAX, FLT_MAX, FLT_MAX};
  for (int64_t base = 0; base < N; base += kBlock) {
    const int64_t j = base + threadIdx.x;
    if (j < N) {
      tile[3 * threadIdx.x] = p[3 * j];
      tile[3 * threadIdx.x + 1] = p[3 * j + 1];
      tile[3 * threadIdx.x + 2] = p[3 * j + 2];
    }
    __syncthreads();
    const int n = (int)min((int64_t)kBlock, N - base);
    if (i < N) {
      for (int t = 0; t < n; ++t) {
        if (base + t == i) continue;
        const float dx = tile[3 * t] - q[0], dy = tile[3 * t + 1] - q[1], dz = tile[3 * t + 2] - q[2];
        push_best(best, k, dx * dx + dy * dy + dz * dz);
      }
    }
    __syncthreads();
  }
  if (i < N) {
    float s = 0.f;
    for (int t = 0; t < k; ++t) s += best[t];
    out[i] = s / k;
  }
}

}  // namespace

at::Tensor mean_sq_dist3_cuda(const at::Tensor& points) {
  const int64_t N = points.size(0);
  at::Tensor out = at::zeros({N}, points.options());
  const int k = (int)std::min<int64_t>(3, N - 1);
  if (k <= 0) return out;
  const int blocks = (int)((N + kBlock - 1) / kBlock);
  knn3_kernel<<<blocks, kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(points.data_ptr<float>(), N, k,
                                                                        out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace gt_knn

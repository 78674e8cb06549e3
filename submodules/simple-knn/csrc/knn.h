// simple-knn: mean squared distance of each point to its 3 nearest other points.
#pragma once

#include <ATen/core/Tensor.h>

namespace gt_knn {

// Both backends: points [N, 3] float32 contiguous -> [N] float32. For N < 4 the mean is over the N - 1
// other points; a single point gets 0. Duplicates are distinct points at distance 0.
at::Tensor mean_sq_dist3_cpu(const at::Tensor& points);
#ifdef WITH_CUDA
at::Tensor mean_sq_dist3_cuda(const at::Tensor& points);
#endif

// Insert d into the ascending list best[0..k).
#if defined(__CUDACC__)
__host__ __device__
#endif
inline void push_best(float best[3], int k, float d) {
  if (d >= best[k - 1]) return;
  int j = k - 1;
  while (j > 0 && best[j - 1] > d) {
    best[j] = best[j - 1];
    --j;
  }
  best[j] = d;
}

}  // namespace gt_knn

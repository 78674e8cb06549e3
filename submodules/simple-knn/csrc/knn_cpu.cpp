// Exact 3-NN on the CPU with a uniform grid: points are bucketed into cells, and each query scans rings
// of cells around its own until no unscanned cell can hold a closer point.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

#include <ATen/ops/zeros.h>

#include "knn.h"

namespace gt_knn {

at::Tensor mean_sq_dist3_cpu(const at::Tensor& points) {
  const int64_t N = points.size(0);
  at::Tensor out = at::zeros({N}, points.options());
  const int k = (int)std::min<int64_t>(3, N - 1);
  if (k <= 0) return out;
  const float* p = points.data_ptr<float>();
  float* o = out.data_ptr<float>();

  float lo[3] = {FLT_MAX, FLT_MAX, FLT_MAX}, hi[3] = {-FLT_MAX, -FLT_MAX, -FLT_MAX};
  for (int64_t i = 0; i < N; ++i)
    for (int a = 0; a < 3; ++a) {
      lo[a] = std::min(lo[a], p[3 * i + a]);
      hi[a] = std::max(hi[a], p[3 * i + a]);
    }
  const float extent = std::max({hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]});
  const int per_axis = std::max(1, (int)std::cbrt((double)N));
  const float h = extent > 0.f ? extent / per_axis : 1.f;
  int dim[3];
  for (int a = 0; a < 3; ++a) dim[a] = std::max(1, (int)std::floor((hi[a] - lo[a]) / h) + 1);
  auto cell_of = [&](int64_t i, int c[3]) {
    for (int a = 0; a < 3; ++a) c[a] = std::min(dim[a] - 1, std::max(0, (int)((p[3 * i + a] - lo[a]) / h)));
  };
  const int64_t ncell = (int64_t)dim[0] * dim[1] * dim[2];
  std::vector<int64_t> start(ncell + 1, 0);
  std::vector<int64_t> cell(N);
  for (int64_t i = 0; i < N; ++i) {
    int c[3];
    cell_of(i, c);
    cell[i] = ((int64_t)c[2] * dim[1] + c[1]) * dim[0] + c[0];
    ++start[cell[i] + 1];
  }
  for (int64_t c = 0; c < ncell; ++c) start[c + 1] += start[c];
  std::vector<int64_t> fill(start.begin(), start.end() - 1), sorted(N);
  for (int64_t i = 0; i < N; ++i) sorted[fill[cell[i]]++] = i;
  const int max_ring = std::max({dim[0], dim[1], dim[2]});

#pragma omp parallel for schedule(dynamic, 256)
  for (int64_t i = 0; i < N; ++i) {
    float best[3] = {FLT_MAX, FLT_MAX, FLT_MAX};
    int c[3];
    cell_of(i, c);
    const float q[3] = {p[3 * i], p[3 * i + 1], p[3 * i + 2]};
    for (int r = 0; r <= max_ring; ++r) {
      for (int z = std::max(0, c[2] - r); z <= std::min(dim[2] - 1, c[2] + r); ++z)
        for (int y = std::max(0, c[1] - r); y <= std::min(dim[1] - 1, c[1] + r); ++y)
          for (int x = std::max(0, c[0] - r); x <= std::min(dim[0] - 1, c[0] + r); ++x) {
            if (std::max({std::abs(x - c[0]), std::abs(y - c[1]), std::abs(z - c[2])}) != r) continue;
            const int64_t id = ((int64_t)z * dim[1] + y) * dim[0] + x;
            for (int64_t s = start[id]; s < start[id + 1]; ++s) {
              const int64_t j = sorted[s];
              if (j == i) continue;
              const float dx = p[3 * j] - q[0], dy = p[3 * j + 1] - q[1], dz = p[3 * j + 2] - q[2];
              push_best(best, k, dx * dx + dy * dy + dz * dz);
            }
          }
      // Every point outside rings 0..r is at least r*h away from q.
      const float reach = r * h;
      if (best[k - 1] <= reach * reach) break;
    }
    float s = 0.f;
    for (int j = 0; j < k; ++j) s += best[j];
    o[i] = s / k;
  }
  return out;
}

}  // namespace gt_knn

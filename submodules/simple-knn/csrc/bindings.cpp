#include <torch/extension.h>

#include <string>

#include "knn.h"
#ifdef WITH_CUDA
#include <c10/cuda/CUDAGuard.h>

#include "gt_build_config.h"
#endif

namespace {

torch::Tensor dist_cuda2(const torch::Tensor& points) {
  TORCH_CHECK_VALUE(points.dim() == 2 && points.size(1) == 3, "points must have shape [N, 3], got ",
                    points.sizes());
  TORCH_CHECK_VALUE(points.scalar_type() == torch::kFloat32, "points must be float32, got ", points.scalar_type());
  TORCH_CHECK_VALUE(points.is_cpu() || points.is_cuda(), "points must be on the CPU or a CUDA device, got ",
                    points.device());
  auto pts = points.contiguous();  // views (slices, transposes) are accepted
  if (pts.is_cuda()) {
#ifdef WITH_CUDA
    const c10::cuda::CUDAGuard guard(pts.device());  // launch on the points' GPU, not the current one
    return gt_knn::mean_sq_dist3_cuda(pts);
#else
    TORCH_CHECK(false, "simple_knn was built without CUDA; move the points to the CPU or rebuild with nvcc");
#endif
  }
  return gt_knn::mean_sq_dist3_cpu(pts);
}

pybind11::dict build_info() {
  pybind11::dict d;
  d["cpu"] = true;
#ifdef WITH_CUDA
  d["cuda"] = true;
  d["cuda_arch_list"] = std::string(GT_CUDA_ARCH_LIST);
#else
  d["cuda"] = false;
  d["cuda_arch_list"] = std::string();
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "exact 3-nearest-neighbour mean squared distance (CPU + CUDA)";
  m.def("distCUDA2", &dist_cuda2, "mean squared distance to the 3 nearest neighbours, [N,3] -> [N]");
  m.def("build_info", &build_info, "which backends were compiled");
}

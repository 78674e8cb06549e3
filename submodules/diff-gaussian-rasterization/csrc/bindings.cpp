// Python bindings: argument checking, allocation and dispatch to the CPU or CUDA launcher.
#include <torch/extension.h>

#include <optional>
#include <string>
#include <vector>

#include "rasterize_launch.h"
#ifdef WITH_CUDA
#include <c10/cuda/CUDAGuard.h>

#include "gt_build_config.h"
#endif

namespace gt {
namespace {

#define GT_CHECK_INPUT(x, dev)                                                                       \
  TORCH_CHECK((x).scalar_type() == torch::kFloat32, #x " must be float32, got ", (x).scalar_type()); \
  TORCH_CHECK((x).is_contiguous(), #x " must be contiguous");                                        \
  TORCH_CHECK((x).device() == (dev), #x " is on ", (x).device(), " but means3D is on ", (dev))

// An optional input is an empty tensor when absent.
bool present(const torch::Tensor& t) { return t.defined() && t.numel() > 0; }

void check_shape(const torch::Tensor& t, std::vector<int64_t> shape, const char* name) {
  TORCH_CHECK(t.sizes().vec() == shape, name, " must have shape ", c10::IntArrayRef(shape), ", got ", t.sizes());
}

struct Args {
  RasterInputs in;
  torch::Device device = torch::kCPU;
};

Args make_inputs(const torch::Tensor& means3d, const torch::Tensor& shs, const torch::Tensor& colors,
                 const torch::Tensor& opacities, const torch::Tensor& scales, const torch::Tensor& rotations,
                 const torch::Tensor& cov3d, const torch::Tensor& bg, const torch::Tensor& cams, int64_t H,
                 int64_t W, int64_t sh_degree, double scale_modifier, bool prefiltered) {
  TORCH_CHECK(means3d.dim() == 3 && means3d.size(2) == 3, "means3D must have shape [B, N, 3], got ",
              means3d.sizes());
  const auto dev = means3d.device();
  const int64_t B = means3d.size(0), N = means3d.size(1);
  TORCH_CHECK(H > 0 && W > 0, "image size must be positive, got ", H, "x", W);
  GT_CHECK_INPUT(means3d, dev);
  GT_CHECK_INPUT(opacities, dev);
  check_shape(opacities, {B, N, 1}, "opacities");
  GT_CHECK_INPUT(bg, dev);
  check_shape(bg, {B, 3, H, W}, "bg");
  GT_CHECK_INPUT(cams, dev);
  check_shape(cams, {B, kCamStride}, "cams");
  Args a;
  a.device = dev;

  RasterInputs& in = a.in;
  in.B = (int)B;
  in.N = (int)N;
  in.H = (int)H;
  in.W = (int)W;
  in.scale_modifier = (float)scale_modifier;
  in.prefiltered = prefiltered;
  in.means3d = means3d.data_ptr<float>();
  in.opacities = opacities.data_ptr<float>();
  in.bg = bg.data_ptr<float>();
  in.cams = cams.data_ptr<float>();
  if (present(colors)) {
    GT_CHECK_INPUT(colors, dev);
    check_shape(colors, {B, N, 3}, "colors_precomp");
    in.colors = colors.data_ptr<float>();
  } else {
    TORCH_CHECK(present(shs) || N == 0, "either shs or colors_precomp must be given");
    if (present(shs)) {
      GT_CHECK_INPUT(shs, dev);
      TORCH_CHECK(shs.dim() == 4 && shs.size(0) == B && shs.size(1) == N && shs.size(3) == 3,
                  "shs must have shape [B, N, K, 3], got ", shs.sizes());
      TORCH_CHECK(sh_degree >= 0 && sh_degree <= 3, "sh_degree must be in 0..3, got ", sh_degree);
      TORCH_CHECK(shs.size(2) >= (sh_degree + 1) * (sh_degree + 1), "shs has ", shs.size(2),
                  " coefficients, sh_degree ", sh_degree, " needs ", (sh_degree + 1) * (sh_degree + 1));
      in.shs = shs.data_ptr<float>();
      in.sh_coeffs = (int)shs.size(2);
      in.sh_degree = (int)sh_degree;
    }
  }
  if (present(cov3d)) {
    GT_CHECK_INPUT(cov3d, dev);
    check_shape(cov3d, {B, N, 6}, "cov3D_precomp");
    in.cov3d = cov3d.data_ptr<float>();
  } else {
    TORCH_CHECK((present(scales) && present(rotations)) || N == 0,
                "either cov3D_precomp or scales and rotations must be given");
    if (N > 0) {
      GT_CHECK_INPUT(scales, dev);
      GT_CHECK_INPUT(rotations, dev);
      check_shape(scales, {B, N, 3}, "scales");
      check_shape(rotations, {B, N, 4}, "rotations");
      in.scales = scales.data_ptr<float>();
      in.rotations = rotations.data_ptr<float>();
    }
  }
  return a;
}

// The backward state is an opaque list of tensors; this is the one place that knows its layout.
enum StateIndex { kMeans2d, kConicOpacity, kRgb, kClamped, kDepths, kCov3d, kPointList, kRanges, kFinalT, kNContrib,
                  kStateSize };
void unpack_state(const torch::Tensor& radii, const std::vector<torch::Tensor>& state, GeomState* st, PixelState* ps) {
  TORCH_CHECK(state.size() == kStateSize, "corrupt rasterizer state");
  st->radii = radii.data_ptr<int>();
  st->means2d = state[kMeans2d].data_ptr<float>();
  st->conic_opacity = state[kConicOpacity].data_ptr<float>();
  st->rgb = state[kRgb].data_ptr<float>();
  st->clamped = state[kClamped].data_ptr<uint8_t>();
  st->depths = state[kDepths].data_ptr<float>();
  st->cov3d = state[kCov3d].data_ptr<float>();
  ps->final_T = state[kFinalT].data_ptr<float>();
  ps->n_contrib = state[kNContrib].data_ptr<int>();
}

// Forward. Returns color [B,3,H,W], depth [B,1,H,W], alpha [B,1,H,W], radii [B,N] and the state needed
// by the backward pass (an opaque list of tensors).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, std::vector<torch::Tensor>> rasterize_fwd(
    const torch::Tensor& means3d, const torch::Tensor& shs, const torch::Tensor& colors,
    const torch::Tensor& opacities, const torch::Tensor& scales, const torch::Tensor& rotations,
    const torch::Tensor& cov3d, const torch::Tensor& bg, const torch::Tensor& cams, int64_t H, int64_t W,
    int64_t sh_degree, double scale_modifier, bool prefiltered) {
#ifdef WITH_CUDA
  std::optional<c10::cuda::CUDAGuard> guard;  // kernels run on the inputs' GPU
  if (means3d.is_cuda()) guard.emplace(means3d.device());
#endif
  Args a = make_inputs(means3d, shs, colors, opacities, scales, rotations, cov3d, bg, cams, H, W, sh_degree,
                       scale_modifier, prefiltered);
  const RasterInputs& in = a.in;
  const int64_t B = in.B, N = in.N;
  auto f32 = torch::dtype(torch::kFloat32).device(a.device);
  auto i32 = torch::dtype(torch::kInt32).device(a.device);
  torch::Tensor radii = torch::zeros({B, N}, i32);
  torch::Tensor means2d = torch::zeros({B, N, 2}, f32);
  torch::Tensor conic_opacity = torch::zeros({B, N, 4}, f32);
  torch::Tensor rgb = torch::zeros({B, N, 3}, f32);
  torch::Tensor clamped = torch::zeros({B, N, 3}, torch::dtype(torch::kUInt8).device(a.device));
  torch::Tensor depths = torch::zeros({B, N}, f32);
  torch::Tensor cov_state = torch::zeros({B, N, 6}, f32);
  torch::Tensor tiles_touched = torch::zeros({B, N}, i32);
  torch::Tensor ranges = torch::zeros({B * in.tiles(), 2}, i32);
  torch::Tensor final_T = torch::empty({B, H, W}, f32);
  torch::Tensor n_contrib = torch::empty({B, H, W}, i32);
  torch::Tensor color = torch::empty({B, 3, H, W}, f32);
  torch::Tensor depth = torch::empty({B, 1, H, W}, f32);
  torch::Tensor alpha = torch::empty({B, 1, H, W}, f32);

  std::vector<torch::Tensor> state = {means2d, conic_opacity, rgb, clamped, depths, cov_state,
                                      torch::Tensor(), ranges, final_T, n_contrib};
  GeomState st;
  PixelState ps;
  unpack_state(radii, state, &st, &ps);
  st.tiles_touched = tiles_touched.data_ptr<int>();

  torch::Tensor point_list;
  if (a.device.is_cuda()) {
#ifdef WITH_CUDA
    point_list = rasterize_fwd_cuda(in, st, ps, ranges.data_ptr<int>(), color.data_ptr<float>(),
                                    depth.data_ptr<float>(), alpha.data_ptr<float>());
#else
    TORCH_CHECK(false, "diff_gaussian_rasterization was built without CUDA; reinstall on a machine with nvcc "
                       "(or GT_BUILD_CUDA=1) to rasterize CUDA tensors");
#endif
  } else {
    point_list = rasterize_fwd_cpu(in, st, ps, ranges.data_ptr<int>(), color.data_ptr<float>(),
                                   depth.data_ptr<float>(), alpha.data_ptr<float>());
  }
  state[kPointList] = point_list;
  return {color, depth, alpha, radii, state};
}

// Backward. Returns the gradients of means3D, means2D (NDC), shs, colors_precomp, opacities, scales,
// rotations, cov3D_precomp and bg; absent inputs get empty tensors.
std::vector<torch::Tensor> rasterize_bwd(const torch::Tensor& means3d, const torch::Tensor& shs,
                                         const torch::Tensor& colors, const torch::Tensor& opacities,
                                         const torch::Tensor& scales, const torch::Tensor& rotations,
                                         const torch::Tensor& cov3d, const torch::Tensor& bg,
                                         const torch::Tensor& cams, int64_t sh_degree, double scale_modifier,
                                         bool prefiltered, const torch::Tensor& radii,
                                         const std::vector<torch::Tensor>& state, const torch::Tensor& v_color,
                                         const torch::Tensor& v_depth, const torch::Tensor& v_alpha) {
  const int64_t H = bg.size(2), W = bg.size(3);
#ifdef WITH_CUDA
  std::optional<c10::cuda::CUDAGuard> guard;  // kernels run on the inputs' GPU
  if (means3d.is_cuda()) guard.emplace(means3d.device());
#endif
  Args a = make_inputs(means3d, shs, colors, opacities, scales, rotations, cov3d, bg, cams, H, W, sh_degree,
                       scale_modifier, prefiltered);
  const RasterInputs& in = a.in;
  const int64_t B = in.B, N = in.N;
  GT_CHECK_INPUT(v_color, a.device);
  GT_CHECK_INPUT(v_depth, a.device);
  GT_CHECK_INPUT(v_alpha, a.device);
  check_shape(v_color, {B, 3, H, W}, "grad of color");
  check_shape(v_depth, {B, 1, H, W}, "grad of depth");
  check_shape(v_alpha, {B, 1, H, W}, "grad of alpha");
  auto f32 = torch::dtype(torch::kFloat32).device(a.device);

  GeomState st;
  PixelState ps;
  unpack_state(radii, state, &st, &ps);

  torch::Tensor v_means2d_pix = torch::zeros({B, N, 2}, f32);
  torch::Tensor v_conic = torch::zeros({B, N, 3}, f32);
  torch::Tensor v_opacity = torch::zeros({B, N}, f32);
  torch::Tensor v_rgb = torch::zeros({B, N, 3}, f32);
  torch::Tensor v_depths = torch::zeros({B, N}, f32);
  torch::Tensor v_means3d = torch::zeros({B, N, 3}, f32);
  torch::Tensor v_means2d = torch::zeros({B, N, 3}, f32);
  torch::Tensor v_opacities = torch::zeros({B, N, 1}, f32);
  torch::Tensor v_bg = torch::zeros({B, 3, H, W}, f32);
  torch::Tensor none = torch::empty({0}, f32);
  torch::Tensor v_shs = in.shs ? torch::zeros_like(shs) : none;
  torch::Tensor v_colors = in.colors ? torch::zeros_like(colors) : none;
  torch::Tensor v_scales = in.scales ? torch::zeros_like(scales) : none;
  torch::Tensor v_rotations = in.rotations ? torch::zeros_like(rotations) : none;
  torch::Tensor v_cov3d = in.cov3d ? torch::zeros_like(cov3d) : none;

  RasterGrads gr;
  gr.v_color = v_color.data_ptr<float>();
  gr.v_depth = v_depth.data_ptr<float>();
  gr.v_alpha = v_alpha.data_ptr<float>();
  gr.v_means2d_pix = v_means2d_pix.data_ptr<float>();
  gr.v_conic = v_conic.data_ptr<float>();
  gr.v_opacity = v_opacity.data_ptr<float>();
  gr.v_rgb = v_rgb.data_ptr<float>();
  gr.v_depths = v_depths.data_ptr<float>();
  gr.v_means3d = v_means3d.data_ptr<float>();
  gr.v_means2d = v_means2d.data_ptr<float>();
  gr.v_shs = in.shs ? v_shs.data_ptr<float>() : nullptr;
  gr.v_colors = in.colors ? v_colors.data_ptr<float>() : nullptr;
  gr.v_opacities = v_opacities.data_ptr<float>();
  gr.v_scales = in.scales ? v_scales.data_ptr<float>() : nullptr;
  gr.v_rotations = in.rotations ? v_rotations.data_ptr<float>() : nullptr;
  gr.v_cov3d = in.cov3d ? v_cov3d.data_ptr<float>() : nullptr;
  gr.v_bg = v_bg.data_ptr<float>();

  const int* point_list = state[kPointList].data_ptr<int>();
  const int* ranges = state[kRanges].data_ptr<int>();
  if (a.device.is_cuda()) {
#ifdef WITH_CUDA
    rasterize_bwd_cuda(in, st, ps, point_list, ranges, gr);
#else
    TORCH_CHECK(false, "diff_gaussian_rasterization was built without CUDA");
#endif
  } else {
    rasterize_bwd_cpu(in, st, ps, point_list, ranges, gr);
  }
  return {v_means3d, v_means2d, v_shs, v_colors, v_opacities, v_scales, v_rotations, v_cov3d, v_bg};
}

// Visibility test of the 3DGS API (`markVisible`): view-space z > 0.2 for each of B cameras.
torch::Tensor mark_visible(const torch::Tensor& means3d, const torch::Tensor& viewmatrix) {
  TORCH_CHECK(means3d.dim() == 2 && means3d.size(1) == 3, "positions must have shape [N, 3], got ",
              means3d.sizes());
  TORCH_CHECK(viewmatrix.numel() == 16, "viewmatrix must have 16 elements");
  auto view = viewmatrix.reshape({4, 4}).to(means3d.dtype());
  auto z = torch::matmul(means3d, view.index({torch::indexing::Slice(0, 3), 2})) + view.index({3, 2});
  return z > kNearCull;
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
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  return d;
}

}  // namespace
}  // namespace gt

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gaussiantalker's differentiable Gaussian rasterizer (CPU + CUDA)";
  m.def("rasterize_fwd", &gt::rasterize_fwd, "batched forward pass");
  m.def("rasterize_bwd", &gt::rasterize_bwd, "batched backward pass");
  m.def("mark_visible", &gt::mark_visible, "frustum near-plane visibility");
  m.def("build_info", &gt::build_info, "which backends were compiled");
  m.attr("TILE_SIZE") = gt::kTileX;
  m.attr("CAM_STRIDE") = gt::kCamStride;
}

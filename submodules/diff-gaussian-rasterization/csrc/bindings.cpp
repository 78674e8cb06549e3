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

// Every failed check raises a Python ValueError naming the argument (TORCH_CHECK_VALUE).

// An optional input is an empty tensor when absent.
bool present(const torch::Tensor& t) { return t.defined() && t.numel() > 0; }

void check_shape(const torch::Tensor& t, std::vector<int64_t> shape, const char* name) {
  TORCH_CHECK_VALUE(t.sizes().vec() == shape, name, " must have shape ", c10::IntArrayRef(shape), ", got ",
                    t.sizes());
}

struct Args {
  RasterInputs in;
  torch::Device device = torch::kCPU;
  std::vector<torch::Tensor> keep;  // contiguous copies of non-contiguous inputs, alive for the call
};

// Checks dtype and device and returns a pointer to a contiguous float32 copy (the tensor itself when it is
// already contiguous), so that views such as slices and transposes are accepted.
const float* input_ptr(Args* a, const torch::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.scalar_type() == torch::kFloat32, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == a->device, name, " is on ", t.device(), " but means3D is on ", a->device);
  a->keep.push_back(t.contiguous());
  return a->keep.back().data_ptr<float>();
}

// Sizes the kernels can index with their 32-bit counters, and the CUDA grid limits; refused before any launch.
void check_limits(const RasterInputs& in, bool cuda) {
  TORCH_CHECK_VALUE((int64_t)in.B * in.N <= INT32_MAX, "B * N = ", (int64_t)in.B * in.N,
                    " Gaussian instances in one call is more than the 2^31 - 1 the rasterizer indexes; split the batch");
  TORCH_CHECK_VALUE((int64_t)in.H * in.W <= INT32_MAX, "image of ", in.H, "x", in.W, " pixels is too large");
  TORCH_CHECK_VALUE((int64_t)in.B * in.tiles() <= INT32_MAX, "B * tiles = ", (int64_t)in.B * in.tiles(),
                    " is more than the 2^31 - 1 the rasterizer indexes; split the batch");
  if (cuda) {
    TORCH_CHECK_VALUE(in.B <= 65535, "a batch of ", in.B, " cameras is more than the 65535 one CUDA call can render ",
                      "(the grid's z dimension); split the batch");
    TORCH_CHECK_VALUE(in.grid_y() <= 65535, "image height ", in.H, " is more than the CUDA grid allows");
  }
}

// A per-Gaussian input: [B, N, tail...] (one set per camera) or [N, tail...] (shared by the B cameras: read
// with a zero batch stride instead of being copied B times; sets `bit` in in.shared).
const float* per_gaussian(Args* a, const torch::Tensor& t, int64_t B, int64_t N, std::vector<int64_t> tail, int bit,
                          const char* name) {
  std::vector<int64_t> full = {B, N}, shared = {N};
  full.insert(full.end(), tail.begin(), tail.end());
  shared.insert(shared.end(), tail.begin(), tail.end());
  if (t.sizes().vec() != full) {
    TORCH_CHECK_VALUE(t.sizes().vec() == shared, name, " must have shape ", c10::IntArrayRef(full), " or ",
                      c10::IntArrayRef(shared), ", got ", t.sizes());
    a->in.shared |= bit;
  }
  return input_ptr(a, t, name);
}

Args make_inputs(const torch::Tensor& means3d, const torch::Tensor& shs, const torch::Tensor& colors,
                 const torch::Tensor& opacities, const torch::Tensor& scales, const torch::Tensor& rotations,
                 const torch::Tensor& cov3d, const torch::Tensor& bg, const torch::Tensor& cams, int64_t H,
                 int64_t W, int64_t sh_degree, double scale_modifier, bool prefiltered, bool debug) {
  TORCH_CHECK_VALUE(cams.dim() == 2 && cams.size(1) == kCamStride, "cams must have shape [B, ", kCamStride,
                    "], got ", cams.sizes());
  TORCH_CHECK_VALUE((means3d.dim() == 3 || means3d.dim() == 2) && means3d.size(-1) == 3,
                    "means3D must have shape [B, N, 3] or [N, 3], got ", means3d.sizes());
  const int64_t B = cams.size(0), N = means3d.size(-2);
  TORCH_CHECK_VALUE(H > 0 && W > 0 && H <= INT32_MAX && W <= INT32_MAX, "image size must be positive, got ", H,
                    "x", W);
  TORCH_CHECK_VALUE(B <= INT32_MAX && N <= INT32_MAX, "means3D has shape ", means3d.sizes(), ", too large");
  Args a;
  a.device = means3d.device();
  RasterInputs& in = a.in;
  in.B = (int)B;
  in.N = (int)N;
  in.H = (int)H;
  in.W = (int)W;
  check_limits(in, a.device.is_cuda());
  in.scale_modifier = (float)scale_modifier;
  in.prefiltered = prefiltered;
  in.debug = debug;
  in.means3d = per_gaussian(&a, means3d, B, N, {3}, kShareMeans, "means3D");
  in.opacities = per_gaussian(&a, opacities, B, N, {1}, kShareOpacities, "opacities");
  check_shape(bg, {B, 3, H, W}, "bg");
  in.bg = input_ptr(&a, bg, "bg");
  in.cams = input_ptr(&a, cams, "cams");
  if (present(colors)) {
    in.colors = per_gaussian(&a, colors, B, N, {3}, kShareColors, "colors_precomp");
  } else {
    TORCH_CHECK_VALUE(present(shs) || N == 0, "either shs or colors_precomp must be given");
    if (present(shs)) {
      TORCH_CHECK_VALUE(shs.dim() >= 3 && shs.size(-1) == 3, "shs must have shape [B, N, K, 3] or [N, K, 3], got ",
                        shs.sizes());
      TORCH_CHECK_VALUE(sh_degree >= 0 && sh_degree <= 3, "sh_degree must be in 0..3, got ", sh_degree);
      TORCH_CHECK_VALUE(shs.size(-2) >= (sh_degree + 1) * (sh_degree + 1), "shs has ", shs.size(-2),
                        " coefficients, sh_degree ", sh_degree, " needs ", (sh_degree + 1) * (sh_degree + 1));
      in.shs = per_gaussian(&a, shs, B, N, {shs.size(-2), 3}, kShareShs, "shs");
      in.sh_coeffs = (int)shs.size(-2);
      in.sh_degree = (int)sh_degree;
    }
  }
  if (present(cov3d)) {
    in.cov3d = per_gaussian(&a, cov3d, B, N, {6}, kShareCov3d, "cov3D_precomp");
  } else {
    TORCH_CHECK_VALUE((present(scales) && present(rotations)) || N == 0,
                      "either cov3D_precomp or scales and rotations must be given");
    if (N > 0) {
      in.scales = per_gaussian(&a, scales, B, N, {3}, kShareScales, "scales");
      in.rotations = per_gaussian(&a, rotations, B, N, {4}, kShareRotations, "rotations");
    }
  }
  return a;
}

// The gradient of a per-Gaussian input, from the kernels' per-instance buffer [B, N, ...]: summed over the
// cameras when the input was shared ([N, ...]).
torch::Tensor input_grad(const torch::Tensor& per_instance, const RasterInputs& in, int bit) {
  return (in.shared & bit) ? per_instance.sum(0) : per_instance;
}

// The backward state is an opaque list of tensors; this is the one place that knows its layout.
enum StateIndex { kMeans2d, kConicOpacity, kRgb, kClamped, kDepths, kCov3d, kPointList, kRanges, kFinalT, kNContrib,
                  kStateSize };
void unpack_state(const torch::Tensor& radii, const std::vector<torch::Tensor>& state, GeomState* st, PixelState* ps) {
  TORCH_CHECK(state.size() == kStateSize, "corrupt rasterizer state");
  for (const auto& t : state)  // (the point list is filled in after unpacking in the forward pass)
    TORCH_CHECK(!t.defined() || (t.is_contiguous() && t.device() == radii.device()), "corrupt rasterizer state");
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
    int64_t sh_degree, double scale_modifier, bool prefiltered, bool debug) {
#ifdef WITH_CUDA
  std::optional<c10::cuda::CUDAGuard> guard;  // kernels run on the inputs' GPU
  if (means3d.is_cuda()) guard.emplace(means3d.device());
#endif
  Args a = make_inputs(means3d, shs, colors, opacities, scales, rotations, cov3d, bg, cams, H, W, sh_degree,
                       scale_modifier, prefiltered, debug);
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
  torch::Tensor extents = torch::empty({B, N, 2}, i32);
  st.extents = extents.data_ptr<int>();

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
                                         bool prefiltered, bool debug, const torch::Tensor& radii,
                                         const std::vector<torch::Tensor>& state, const torch::Tensor& v_color,
                                         const torch::Tensor& v_depth, const torch::Tensor& v_alpha) {
  const int64_t H = bg.size(2), W = bg.size(3);
#ifdef WITH_CUDA
  std::optional<c10::cuda::CUDAGuard> guard;  // kernels run on the inputs' GPU
  if (means3d.is_cuda()) guard.emplace(means3d.device());
#endif
  Args a = make_inputs(means3d, shs, colors, opacities, scales, rotations, cov3d, bg, cams, H, W, sh_degree,
                       scale_modifier, prefiltered, debug);
  const RasterInputs& in = a.in;
  const int64_t B = in.B, N = in.N;
  check_shape(v_color, {B, 3, H, W}, "grad of color");
  check_shape(v_depth, {B, 1, H, W}, "grad of depth");
  check_shape(v_alpha, {B, 1, H, W}, "grad of alpha");
  const float* v_color_ptr = input_ptr(&a, v_color, "grad of color");
  const float* v_depth_ptr = input_ptr(&a, v_depth, "grad of depth");
  const float* v_alpha_ptr = input_ptr(&a, v_alpha, "grad of alpha");
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
  // Per-instance [B, N, ...] and contiguous, whatever the inputs' layout (shared inputs are summed at the end).
  torch::Tensor v_shs = in.shs ? torch::zeros({B, N, in.sh_coeffs, 3}, f32) : none;
  torch::Tensor v_colors = in.colors ? torch::zeros({B, N, 3}, f32) : none;
  torch::Tensor v_scales = in.scales ? torch::zeros({B, N, 3}, f32) : none;
  torch::Tensor v_rotations = in.rotations ? torch::zeros({B, N, 4}, f32) : none;
  torch::Tensor v_cov3d = in.cov3d ? torch::zeros({B, N, 6}, f32) : none;

  RasterGrads gr;
  gr.v_color = v_color_ptr;
  gr.v_depth = v_depth_ptr;
  gr.v_alpha = v_alpha_ptr;
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
  return {input_grad(v_means3d, in, kShareMeans), v_means2d, in.shs ? input_grad(v_shs, in, kShareShs) : none,
          in.colors ? input_grad(v_colors, in, kShareColors) : none, input_grad(v_opacities, in, kShareOpacities),
          in.scales ? input_grad(v_scales, in, kShareScales) : none,
          in.rotations ? input_grad(v_rotations, in, kShareRotations) : none,
          in.cov3d ? input_grad(v_cov3d, in, kShareCov3d) : none, v_bg};
}

// Visibility test of the 3DGS API (`markVisible`): view-space z > 0.2 for each of B cameras.
torch::Tensor mark_visible(const torch::Tensor& means3d, const torch::Tensor& viewmatrix) {
  TORCH_CHECK_VALUE(means3d.dim() == 2 && means3d.size(1) == 3, "positions must have shape [N, 3], got ",
                    means3d.sizes());
  TORCH_CHECK_VALUE(viewmatrix.numel() == 16, "viewmatrix must have 16 elements, got ", viewmatrix.sizes());
  TORCH_CHECK_VALUE(means3d.is_floating_point(), "positions must be floating point, got ", means3d.scalar_type());
  auto view = viewmatrix.reshape({4, 4}).to(means3d.device(), means3d.scalar_type());
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

// The header's constants, so that the Python reference reads the same numbers (a test ties them).
pybind11::dict constants() {
  pybind11::dict d;
  d["TILE"] = kTileX;
  d["NEAR_CULL"] = kNearCull;
  d["LOW_PASS"] = kLowPass;
  d["MAX_ALPHA"] = kMaxAlpha;
  d["MIN_ALPHA"] = kMinAlpha;
  d["MIN_T"] = kMinTransmittance;
  d["FRUSTUM_GUARD"] = kFrustumGuard;
  d["NDC_EPS"] = kNdcEps;
  d["MAX_RADIUS"] = kMaxRadius;
  d["SH_C0"] = kSH_C0;
  d["SH_C1"] = kSH_C1;
  d["SH_C2"] = pybind11::make_tuple(kSH_C2_0, kSH_C2_1, kSH_C2_2, kSH_C2_3, kSH_C2_4);
  d["SH_C3"] = pybind11::make_tuple(kSH_C3_0, kSH_C3_1, kSH_C3_2, kSH_C3_3, kSH_C3_4, kSH_C3_5, kSH_C3_6);
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
  m.def("constants", &gt::constants, "the kernels' constants (float32 values)");
  m.attr("TILE_SIZE") = gt::kTileX;
  m.attr("CAM_STRIDE") = gt::kCamStride;
}

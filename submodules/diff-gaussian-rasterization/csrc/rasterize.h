// The rasterizer's per-element routines and launcher interface, shared by the CPU and CUDA backends.
//
// Data layout: a batch of B cameras, each with its own N Gaussians ("instances", global index
// g = b * N + i). The pipeline is the 3DGS one:
//   1. preprocess (per instance): cull, project, 2D covariance, conic, radius, tile rectangle, colour;
//   2. binning: for every camera, the instances touching each 16x16 tile, sorted front to back by view
//      depth (ties: lower index first);
//   3. render (per pixel): front-to-back compositing over the tile's list;
//   4. backward: the pixel loop back to front, accumulating per-instance gradients of the 2D mean,
//      conic, opacity, colour and depth; then the preprocess VJP back to the inputs.
// The backends only differ in how they schedule 1-4 (OpenMP loops vs CUDA kernels and a radix sort).
#pragma once

#include "rasterize_math.h"

namespace gt {

// Bits of RasterInputs::shared: which per-Gaussian inputs are one [N, ...] set for all B cameras.
enum SharedInput : int {
  kShareMeans = 1, kShareShs = 2, kShareColors = 4, kShareOpacities = 8, kShareScales = 16, kShareRotations = 32,
  kShareCov3d = 64
};

// Inputs of one forward/backward call (raw pointers into contiguous float32 tensors). A per-Gaussian input
// is either [B, N, ...] (one set per camera) or, when its bit is set in `shared`, [N, ...] read by every
// camera (no B-fold copy of attributes the cameras share). Read them through the accessors.
struct RasterInputs {
  int B = 0, N = 0, H = 0, W = 0;
  int sh_degree = 0, sh_coeffs = 0;  // active degree and K (coefficients per Gaussian in `shs`)
  float scale_modifier = 1.f;
  bool prefiltered = false;
  bool debug = false;                // CUDA: synchronise after every stage and name the one that failed
  const float* means3d = nullptr;    // [B, N, 3]
  const float* shs = nullptr;        // [B, N, K, 3] or null
  const float* colors = nullptr;     // [B, N, 3] or null (then shs is used)
  const float* opacities = nullptr;  // [B, N, 1]
  const float* scales = nullptr;     // [B, N, 3] or null (then cov3d is used)
  const float* rotations = nullptr;  // [B, N, 4]
  const float* cov3d = nullptr;      // [B, N, 6] or null
  const float* bg = nullptr;         // [B, 3, H, W]
  const float* cams = nullptr;       // [B, kCamStride]

  int shared = 0;                    // SharedInput bits

  // Row of instance g (= b * N + i) in an input: i when that input is shared, g otherwise.
  GT_HD int64_t row(int64_t g, int bit) const { return (shared & bit) ? g % N : g; }
  GT_HD const float* mean(int64_t g) const { return means3d + 3 * row(g, kShareMeans); }
  GT_HD const float* sh(int64_t g) const { return shs + row(g, kShareShs) * sh_coeffs * 3; }
  GT_HD const float* color(int64_t g) const { return colors + 3 * row(g, kShareColors); }
  GT_HD float opacity(int64_t g) const { return opacities[row(g, kShareOpacities)]; }
  GT_HD const float* scale(int64_t g) const { return scales + 3 * row(g, kShareScales); }
  GT_HD const float* rotation(int64_t g) const { return rotations + 4 * row(g, kShareRotations); }
  GT_HD const float* cov(int64_t g) const { return cov3d + 6 * row(g, kShareCov3d); }

  GT_HD int grid_x() const { return (W + kTileX - 1) / kTileX; }
  GT_HD int grid_y() const { return (H + kTileY - 1) / kTileY; }
  GT_HD int tiles() const { return grid_x() * grid_y(); }
};

// Per-instance results of the preprocess step, kept for the backward pass.
struct GeomState {
  int* radii = nullptr;          // [B*N]   0 = culled
  float* means2d = nullptr;      // [B*N, 2] pixel coordinates
  float* conic_opacity = nullptr;  // [B*N, 4]
  float* rgb = nullptr;          // [B*N, 3]
  uint8_t* clamped = nullptr;    // [B*N, 3]
  float* depths = nullptr;       // [B*N] view-space z
  float* cov3d = nullptr;        // [B*N, 6] (computed or copied)
  int* tiles_touched = nullptr;  // [B*N]
  int* extents = nullptr;        // [B*N, 2] half extents of the tile rectangle (forward only)
};

// Tiles [rmin, rmax) in which instance g is listed (the opacity-aware rectangle of preprocess_instance).
GT_HD bool listed_tiles(const GeomState& st, int64_t g, int grid_x, int grid_y, int rmin[2], int rmax[2]) {
  const int rx = st.extents[2 * g], ry = st.extents[2 * g + 1];
  if (st.radii[g] <= 0 || rx < 0 || ry < 0) return false;
  tile_rect_xy({st.means2d[2 * g], st.means2d[2 * g + 1]}, rx, ry, grid_x, grid_y, rmin, rmax);
  return rmax[0] > rmin[0] && rmax[1] > rmin[1];
}

// Per-pixel results of the forward pass.
struct PixelState {
  float* final_T = nullptr;    // [B, H, W]
  int* n_contrib = nullptr;    // [B, H, W] 1 + position of the last contributing entry in the tile list
};

// Gradients flowing in and out of the backward pass.
struct RasterGrads {
  const float* v_color = nullptr;  // [B, 3, H, W]
  const float* v_depth = nullptr;  // [B, 1, H, W]
  const float* v_alpha = nullptr;  // [B, 1, H, W]
  // per-instance intermediate gradients (accumulated by the pixel pass)
  float* v_means2d_pix = nullptr;  // [B*N, 2]
  float* v_conic = nullptr;        // [B*N, 3]
  float* v_opacity = nullptr;      // [B*N]
  float* v_rgb = nullptr;          // [B*N, 3]
  float* v_depths = nullptr;       // [B*N]
  // outputs
  float* v_means3d = nullptr;   // [B, N, 3]
  float* v_means2d = nullptr;   // [B, N, 3] gradient w.r.t. the NDC 2D mean (the densification signal)
  float* v_shs = nullptr;       // [B, N, K, 3]
  float* v_colors = nullptr;    // [B, N, 3]
  float* v_opacities = nullptr; // [B, N, 1]
  float* v_scales = nullptr;    // [B, N, 3]
  float* v_rotations = nullptr; // [B, N, 4]
  float* v_cov3d = nullptr;     // [B, N, 6]
  float* v_bg = nullptr;        // [B, 3, H, W]
};

GT_HD float cam_fx(const float* cam, int W) { return W / (2.f * cam[kCamTanX]); }
GT_HD float cam_fy(const float* cam, int H) { return H / (2.f * cam[kCamTanY]); }

// ---------------------------------------------------------------------------------------------------
// 1. Preprocess one instance.
//
// The one culling rule of both backends (and of the Python reference): an instance is not rendered
// (radius 0, no tile entries, zero gradient) when it is behind the near plane (unless `prefiltered`), when
// any of its inputs is not finite (mean, scale, rotation or cov3D, opacity, the colour or the SH
// coefficients of the active degree), when its 2D covariance is not positive definite or its mean / conic
// is not finite, when its radius is not > 0, or when its tile rectangle is empty. Culling non-finite input
// explicitly matters on the GPU: `(int)NaN` is 0 there while the tile count of a NaN rectangle is not, which
// used to leave unwritten sort keys behind. A zero quaternion is *not* culled: it reads as the identity
// rotation (the quaternion is used as given, like upstream).
GT_HD bool inputs_finite(const RasterInputs& in, int64_t g) {
  bool ok = all_finite(in.mean(g), 3) && finitef(in.opacity(g));
  if (in.cov3d) {
    ok = ok && all_finite(in.cov(g), 6);
  } else {
    ok = ok && all_finite(in.scale(g), 3) && all_finite(in.rotation(g), 4);
  }
  if (in.colors) ok = ok && all_finite(in.color(g), 3);
  return ok;  // (SH coefficients: tested through their sum in sh_to_color, see preprocess_instance)
}

GT_HD void preprocess_instance(const RasterInputs& in, const GeomState& st, int64_t g) {
  const int b = (int)(g / in.N);
  const float* cam = in.cams + (int64_t)b * kCamStride;
  const float* view = cam + kCamView;
  const float* proj = cam + kCamProj;
  st.radii[g] = 0;
  st.tiles_touched[g] = 0;
  st.extents[2 * g + 0] = st.extents[2 * g + 1] = -1;
  if (!inputs_finite(in, g)) return;
  const float q_max = support_q(in.opacity(g));  // (for tile_extents, started early)

  const Vec3 p = load3(in.mean(g));
  const Vec3 t = transform_point_4x3(view, p);
  if (!(finitef(t.x) && finitef(t.y) && finitef(t.z))) return;
  if (!in.prefiltered && t.z <= kNearCull) return;

  Sym3 S;
  if (in.cov3d) {
    for (int k = 0; k < 6; ++k) S.m[k] = in.cov(g)[k];
  } else {
    S = compute_cov3d(load3(in.scale(g)), in.scale_modifier, load4(in.rotation(g)));
  }
  const float fx = cam_fx(cam, in.W), fy = cam_fy(cam, in.H);
  EwaJacobian J = ewa_jacobian(t, fx, fy, cam[kCamTanX], cam[kCamTanY]);
  float T[6];
  ewa_T(J, view, T);
  const Cov2d c2 = project_cov(S, T);
  const float det = c2.a * c2.c - c2.b * c2.b;
  if (!(det > 0.f && c2.a > 0.f)) return;  // not positive definite (or NaN)
  const Conic con = invert_cov2d(c2, det);
  const Projected pm = project_mean(proj, p, in.W, in.H);
  const float radius = splat_radius(c2, det);
  if (!(radius > 0.f) || !(finitef(con.A) && finitef(con.B) && finitef(con.C)) ||
      !(finitef(pm.pix.x) && finitef(pm.pix.y)))
    return;
  int rmin[2], rmax[2];
  tile_rect(pm.pix, (int)radius, in.grid_x(), in.grid_y(), rmin, rmax);
  // Both extents must be positive: two negative extents would give a positive area.
  if (rmax[0] <= rmin[0] || rmax[1] <= rmin[1]) return;
  // The tiles it is listed in: the opacity-aware rectangle inside the 3-sigma one (same pixels drawn).
  int rx, ry;
  tile_extents(c2, in.opacity(g), q_max, radius, &rx, &ry);
  st.extents[2 * g + 0] = rx;
  st.extents[2 * g + 1] = ry;
  int area = 0;
  if (rx >= 0 && ry >= 0) {
    tile_rect_xy(pm.pix, rx, ry, in.grid_x(), in.grid_y(), rmin, rmax);
    area = rmax[0] > rmin[0] && rmax[1] > rmin[1] ? (rmax[0] - rmin[0]) * (rmax[1] - rmin[1]) : 0;
  }

  bool clamped[3] = {false, false, false};
  Vec3 rgb;
  if (in.colors) {
    rgb = load3(in.color(g));
  } else {
    bool finite;
    rgb = sh_to_color(in.sh_degree, in.sh(g), p, load3(cam + kCamPos), clamped, &finite);
    if (!finite) return;  // a non-finite active SH coefficient (nothing stored yet but the extents)
  }
  st.radii[g] = (int)radius;
  st.tiles_touched[g] = area;
  st.means2d[2 * g + 0] = pm.pix.x;
  st.means2d[2 * g + 1] = pm.pix.y;
  st.conic_opacity[4 * g + 0] = con.A;
  st.conic_opacity[4 * g + 1] = con.B;
  st.conic_opacity[4 * g + 2] = con.C;
  st.conic_opacity[4 * g + 3] = in.opacity(g);
  st.rgb[3 * g + 0] = rgb.x;
  st.rgb[3 * g + 1] = rgb.y;
  st.rgb[3 * g + 2] = rgb.z;
  for (int c = 0; c < 3; ++c) st.clamped[3 * g + c] = clamped[c] ? 1 : 0;
  st.depths[g] = t.z;
  for (int k = 0; k < 6; ++k) st.cov3d[6 * g + k] = S.m[k];
}

// ---------------------------------------------------------------------------------------------------
// 3. Forward compositing of one pixel. The tile's splats are provided through `fetch(j, &splat,
// &rgb, &depth)` so that the CUDA kernel can read them from shared memory and the CPU from a local
// buffer. Returns the accumulated values; `n_contrib` is 1 + the last contributing list position.
struct PixelAccum {
  float color[3];
  float depth;
  float T;
  int n_contrib;
};
GT_HD void pixel_begin(PixelAccum* acc) {
  acc->color[0] = acc->color[1] = acc->color[2] = 0.f;
  acc->depth = 0.f;
  acc->T = 1.f;
  acc->n_contrib = 0;
}
// One compositing step; returns false when the pixel is saturated (stop).
GT_HD bool pixel_step(PixelAccum* acc, const Splat& s, const float* rgb, float depth, float px, float py,
                      int list_pos) {
  float alpha, g;
  if (!splat_alpha(s, px, py, &alpha, &g)) return true;
  const float test_T = acc->T * (1.f - alpha);
  if (test_T < kMinTransmittance) return false;
  const float w = alpha * acc->T;
  acc->color[0] += rgb[0] * w;
  acc->color[1] += rgb[1] * w;
  acc->color[2] += rgb[2] * w;
  acc->depth += depth * w;
  acc->T = test_T;
  acc->n_contrib = list_pos + 1;
  return true;
}
GT_HD void pixel_end(const RasterInputs& in, const PixelState& ps, const PixelAccum& acc, int b, int pix,
                     float* out_color, float* out_depth, float* out_alpha) {
  const size_t HW = (size_t)in.H * in.W;
  const float* bg = in.bg + (size_t)b * 3 * HW;
  for (int c = 0; c < 3; ++c) out_color[(size_t)b * 3 * HW + c * HW + pix] = acc.color[c] + acc.T * bg[c * HW + pix];
  out_depth[(size_t)b * HW + pix] = acc.depth;
  out_alpha[(size_t)b * HW + pix] = 1.f - acc.T;
  ps.final_T[(size_t)b * HW + pix] = acc.T;
  ps.n_contrib[(size_t)b * HW + pix] = acc.n_contrib;
}

// ---------------------------------------------------------------------------------------------------
// 4a. Backward state of one pixel, walked back to front.
struct PixelBack {
  float T;           // transmittance in front of the current splat
  float gc[3];       // dL/dcolor of the pixel
  float gd, ga;      // dL/ddepth, dL/dalpha of the pixel
  float Rc[3];       // normalised colour behind the current splat (starts at the background)
  float Rd, Ra;      // same for depth and alpha (start at 0)
};
GT_HD void pixel_back_begin(const RasterInputs& in, const PixelState& ps, const RasterGrads& gr, int b, int pix,
                            PixelBack* pb, float* v_bg_out) {
  const size_t HW = (size_t)in.H * in.W;
  pb->T = ps.final_T[(size_t)b * HW + pix];
  const float* bg = in.bg + (size_t)b * 3 * HW;
  for (int c = 0; c < 3; ++c) {
    pb->gc[c] = gr.v_color[(size_t)b * 3 * HW + c * HW + pix];
    pb->Rc[c] = bg[c * HW + pix];
    // out = ... + T_final * bg
    if (v_bg_out) v_bg_out[(size_t)b * 3 * HW + c * HW + pix] = pb->T * pb->gc[c];
  }
  pb->gd = gr.v_depth[(size_t)b * HW + pix];
  pb->ga = gr.v_alpha[(size_t)b * HW + pix];
  pb->Rd = 0.f;
  pb->Ra = 0.f;
}
// One step back over a splat that may have contributed. Fills the splat's gradient contribution and
// returns true when it did contribute (same tests as the forward pass).
struct StepGrad {
  SplatGrad sg;
  float rgb[3];
  float depth;
};
GT_HD bool pixel_back_step(PixelBack* pb, const Splat& s, const float* rgb, float depth, float px, float py,
                           StepGrad* out) {
  float alpha, g;
  if (!splat_alpha(s, px, py, &alpha, &g)) return false;
  const float T = pb->T / (1.f - alpha);  // transmittance in front of this splat
  const float w = alpha * T;
  float v_alpha = 0.f;
  for (int c = 0; c < 3; ++c) {
    out->rgb[c] = w * pb->gc[c];
    v_alpha += (rgb[c] - pb->Rc[c]) * pb->gc[c];
    pb->Rc[c] = alpha * rgb[c] + (1.f - alpha) * pb->Rc[c];
  }
  out->depth = w * pb->gd;
  v_alpha += (depth - pb->Rd) * pb->gd;
  v_alpha += (1.f - pb->Ra) * pb->ga;
  pb->Rd = alpha * depth + (1.f - alpha) * pb->Rd;
  pb->Ra = alpha + (1.f - alpha) * pb->Ra;
  v_alpha *= T;
  pb->T = T;
  out->sg = vjp_splat_alpha(s, px, py, g, v_alpha);
  return true;
}

// ---------------------------------------------------------------------------------------------------
// 4b. Preprocess VJP of one instance: from the accumulated per-instance gradients to the inputs.
GT_HD void preprocess_backward_instance(const RasterInputs& in, const GeomState& st, const RasterGrads& gr,
                                        int64_t g) {
  if (st.radii[g] <= 0) return;  // culled: outputs were zero-initialised
  const int b = (int)(g / in.N);
  const float* cam = in.cams + (int64_t)b * kCamStride;
  const float* view = cam + kCamView;
  const float* proj = cam + kCamProj;
  const Vec3 p = load3(in.mean(g));
  const Vec3 t = transform_point_4x3(view, p);
  Sym3 S;
  for (int k = 0; k < 6; ++k) S.m[k] = st.cov3d[6 * g + k];
  const float fx = cam_fx(cam, in.W), fy = cam_fy(cam, in.H);

  // conic -> 2D covariance -> (Sigma, t)
  EwaJacobian J = ewa_jacobian(t, fx, fy, cam[kCamTanX], cam[kCamTanY]);
  float T[6];
  ewa_T(J, view, T);
  const Cov2d c2 = project_cov(S, T);
  const Conic v_con = {gr.v_conic[3 * g + 0], gr.v_conic[3 * g + 1], gr.v_conic[3 * g + 2]};
  const Cov2d v_c2 = vjp_invert_cov2d(c2, v_con);
  Sym3 v_S;
  Vec3 v_t;
  vjp_project_cov(t, fx, fy, cam[kCamTanX], cam[kCamTanY], view, S, v_c2, &v_S, &v_t);
  v_t.z += gr.v_depths[g];  // depth output = view z
  Vec3 v_p = vjp_transform_point_4x3(view, v_t);

  // 2D mean: pixel -> NDC gradient (stored for densification) -> 3D mean
  const Vec2 v_ndc = {gr.v_means2d_pix[2 * g + 0] * 0.5f * in.W, gr.v_means2d_pix[2 * g + 1] * 0.5f * in.H};
  gr.v_means2d[3 * g + 0] = v_ndc.x;
  gr.v_means2d[3 * g + 1] = v_ndc.y;
  gr.v_means2d[3 * g + 2] = 0.f;
  const Vec3 v_pm = vjp_project_mean(proj, p, v_ndc);
  v_p.x += v_pm.x;
  v_p.y += v_pm.y;
  v_p.z += v_pm.z;

  // colour
  const Vec3 v_rgb = {gr.v_rgb[3 * g + 0], gr.v_rgb[3 * g + 1], gr.v_rgb[3 * g + 2]};
  if (in.colors) {
    gr.v_colors[3 * g + 0] = v_rgb.x;
    gr.v_colors[3 * g + 1] = v_rgb.y;
    gr.v_colors[3 * g + 2] = v_rgb.z;
  } else {
    const bool clamped[3] = {st.clamped[3 * g] != 0, st.clamped[3 * g + 1] != 0, st.clamped[3 * g + 2] != 0};
    const int64_t off = g * in.sh_coeffs * 3;
    const Vec3 v_dir = vjp_sh_to_color(in.sh_degree, in.sh(g), p, load3(cam + kCamPos), clamped, v_rgb,
                                       gr.v_shs + off);
    v_p.x += v_dir.x;
    v_p.y += v_dir.y;
    v_p.z += v_dir.z;
  }
  gr.v_means3d[3 * g + 0] = v_p.x;
  gr.v_means3d[3 * g + 1] = v_p.y;
  gr.v_means3d[3 * g + 2] = v_p.z;
  gr.v_opacities[g] = gr.v_opacity[g];

  // covariance -> scale and rotation (or the precomputed covariance)
  if (in.cov3d) {
    for (int k = 0; k < 6; ++k) gr.v_cov3d[6 * g + k] = v_S.m[k];
  } else {
    Vec3 v_s;
    Vec4 v_q;
    vjp_compute_cov3d(load3(in.scale(g)), in.scale_modifier, load4(in.rotation(g)), v_S, &v_s, &v_q);
    gr.v_scales[3 * g + 0] = v_s.x;
    gr.v_scales[3 * g + 1] = v_s.y;
    gr.v_scales[3 * g + 2] = v_s.z;
    gr.v_rotations[4 * g + 0] = v_q.x;
    gr.v_rotations[4 * g + 1] = v_q.y;
    gr.v_rotations[4 * g + 2] = v_q.z;
    gr.v_rotations[4 * g + 3] = v_q.w;
  }
}

}  // namespace gt

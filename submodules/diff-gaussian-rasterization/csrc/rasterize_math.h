// Header-only math of the Gaussian rasterizer, shared by the CPU (C++/OpenMP) and CUDA kernels.
//
// Every function here is `GT_HD` (host + device), so the CPU backend runs exactly the arithmetic that
// runs on the GPU and the CPU tests exercise it. Forward functions come with their vector-Jacobian
// products (VJPs, prefix `vjp_`): given the gradient of the loss w.r.t. the outputs, they return the
// gradient w.r.t. the inputs. Formulas and constants follow docs/conventions.md and the 3DGS paper
// (Kerbl et al. 2023); derivatives are the exact ones of the forward function (checked against autograd
// on the pure-PyTorch reference), including where the original rasterizer approximated them.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// Forced inline on the CPU as on the GPU: left to the compiler, preprocess_instance outgrew its budget and
// sh_to_color became a call that passes the Vec3 arguments through the stack, where reloading them stalls
// store forwarding (about 20 ns per Gaussian, single-threaded).
#if defined(__CUDACC__)
#define GT_HD __host__ __device__ __forceinline__
#elif defined(_MSC_VER)
#define GT_HD __forceinline
#else
#define GT_HD inline __attribute__((always_inline))
#endif

namespace gt {

constexpr int kTileX = 16;
constexpr int kTileY = 16;
constexpr int kTileSize = kTileX * kTileY;
constexpr float kNearCull = 0.2f;        // view-space z at or below which a Gaussian is culled
constexpr float kLowPass = 0.3f;         // dilation of the 2D covariance (anti-aliasing)
constexpr float kMaxAlpha = 0.99f;       // per-Gaussian alpha clamp
constexpr float kMinAlpha = 1.0f / 255.0f;
constexpr float kMinTransmittance = 1e-4f;
constexpr float kFrustumGuard = 1.3f;    // the EWA Jacobian is evaluated at most 1.3x outside the frustum
constexpr float kNdcEps = 1e-7f;         // added to clip-space w before the perspective division
// Largest screen-space radius kept (pixels). A finite but enormous Gaussian would overflow the float ->
// int conversion of its radius; 2^24 is exact in float and far beyond any image.
constexpr float kMaxRadius = 16777216.0f;

// Per-camera parameters packed as one row of floats, so that a batch of cameras is one [B, kCamStride]
// tensor: viewmatrix (16, row-vector form), projmatrix (16), campos (3), tanfovx, tanfovy.
constexpr int kCamView = 0;
constexpr int kCamProj = 16;
constexpr int kCamPos = 32;
constexpr int kCamTanX = 35;
constexpr int kCamTanY = 36;
constexpr int kCamStride = 37;

// ---------------------------------------------------------------------------------------------------
// Small vector types (our own: float3 exists only under CUDA).
struct Vec2 {
  float x, y;
};
struct Vec3 {
  float x, y, z;
};
struct Vec4 {
  float x, y, z, w;
};
// Symmetric 3x3 matrix stored as its upper triangle: xx, xy, xz, yy, yz, zz (the cov3D layout).
struct Sym3 {
  float m[6];
};
// Row-major 3x3 matrix.
struct Mat3 {
  float m[9];
  GT_HD float operator()(int r, int c) const { return m[r * 3 + c]; }
  GT_HD float& operator()(int r, int c) { return m[r * 3 + c]; }
};

GT_HD Vec3 load3(const float* p) { return {p[0], p[1], p[2]}; }
GT_HD Vec4 load4(const float* p) { return {p[0], p[1], p[2], p[3]}; }
// fminf / fmaxf where the first argument is never NaN (a constant or a checked value): the same result, a NaN
// `b` included (then `a`; an arithmetic result is never a signalling NaN), but inline on x86-64, where GCC
// calls libm for fminf / fmaxf.
GT_HD float min_of(float a, float b) { return b < a ? b : a; }
GT_HD float max_of(float a, float b) { return b > a ? b : a; }
GT_HD float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }
GT_HD bool finitef(float v) {
#if defined(__CUDA_ARCH__)
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}
GT_HD uint32_t float_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
#endif
}
// True when the n floats at p are all finite (no NaN, no +-inf): no exponent field is all ones. Integer
// tests without branches, so that the CPU compiler vectorises the loop (it runs over 48 SH values).
GT_HD bool all_finite(const float* p, int n) {
  uint32_t bad = 0;
  for (int k = 0; k < n; ++k) bad |= (~float_bits(p[k]) & 0x7f800000u) == 0u;
  return bad == 0u;
}

// A point through a 4x4 matrix in row-vector form: out_j = sum_k p_k M[k][j] + M[3][j].
GT_HD Vec3 transform_point_4x3(const float* M, Vec3 p) {
  return {p.x * M[0] + p.y * M[4] + p.z * M[8] + M[12], p.x * M[1] + p.y * M[5] + p.z * M[9] + M[13],
          p.x * M[2] + p.y * M[6] + p.z * M[10] + M[14]};
}
GT_HD Vec4 transform_point_4x4(const float* M, Vec3 p) {
  return {p.x * M[0] + p.y * M[4] + p.z * M[8] + M[12], p.x * M[1] + p.y * M[5] + p.z * M[9] + M[13],
          p.x * M[2] + p.y * M[6] + p.z * M[10] + M[14], p.x * M[3] + p.y * M[7] + p.z * M[11] + M[15]};
}
// VJP of the two above w.r.t. the point: dL/dp_k = sum_j M[k][j] dL/dout_j.
GT_HD Vec3 vjp_transform_point_4x3(const float* M, Vec3 g) {
  return {M[0] * g.x + M[1] * g.y + M[2] * g.z, M[4] * g.x + M[5] * g.y + M[6] * g.z,
          M[8] * g.x + M[9] * g.y + M[10] * g.z};
}
GT_HD Vec3 vjp_transform_point_4x4(const float* M, Vec4 g) {
  return {M[0] * g.x + M[1] * g.y + M[2] * g.z + M[3] * g.w, M[4] * g.x + M[5] * g.y + M[6] * g.z + M[7] * g.w,
          M[8] * g.x + M[9] * g.y + M[10] * g.z + M[11] * g.w};
}

// NDC -> pixel coordinate (pixel centres at integers).
GT_HD float ndc2pix(float v, int size) { return ((v + 1.0f) * size - 1.0f) * 0.5f; }

// ---------------------------------------------------------------------------------------------------
// Projection of the mean: clip = [p,1] @ proj, ndc = clip.xyz / (clip.w + 1e-7), pixel = ndc2pix(ndc).
struct Projected {
  Vec2 ndc;
  Vec2 pix;
};
GT_HD Projected project_mean(const float* proj, Vec3 p, int W, int H) {
  Vec4 h = transform_point_4x4(proj, p);
  float pw = 1.0f / (h.w + kNdcEps);
  Projected out;
  out.ndc = {h.x * pw, h.y * pw};
  out.pix = {ndc2pix(out.ndc.x, W), ndc2pix(out.ndc.y, H)};
  return out;
}
// VJP w.r.t. the 3D mean, given dL/dndc (x, y).
GT_HD Vec3 vjp_project_mean(const float* proj, Vec3 p, Vec2 v_ndc) {
  Vec4 h = transform_point_4x4(proj, p);
  float pw = 1.0f / (h.w + kNdcEps);
  Vec4 v_h = {v_ndc.x * pw, v_ndc.y * pw, 0.0f, -(v_ndc.x * h.x + v_ndc.y * h.y) * pw * pw};
  return vjp_transform_point_4x4(proj, v_h);
}

// ---------------------------------------------------------------------------------------------------
// Quaternion (w, x, y, z; used as given, callers normalise) -> rotation matrix.
GT_HD Mat3 quat_to_rotmat(Vec4 q) {
  const float w = q.x, x = q.y, y = q.z, z = q.w;
  Mat3 R;
  R.m[0] = 1.f - 2.f * (y * y + z * z);
  R.m[1] = 2.f * (x * y - w * z);
  R.m[2] = 2.f * (x * z + w * y);
  R.m[3] = 2.f * (x * y + w * z);
  R.m[4] = 1.f - 2.f * (x * x + z * z);
  R.m[5] = 2.f * (y * z - w * x);
  R.m[6] = 2.f * (x * z - w * y);
  R.m[7] = 2.f * (y * z + w * x);
  R.m[8] = 1.f - 2.f * (x * x + y * y);
  return R;
}
// VJP of quat_to_rotmat: dL/dq (w,x,y,z) from dL/dR.
GT_HD Vec4 vjp_quat_to_rotmat(Vec4 q, const Mat3& G) {
  const float w = q.x, x = q.y, y = q.z, z = q.w;
  const float* g = G.m;
  float vw = 2.f * (-z * g[1] + y * g[2] + z * g[3] - x * g[5] - y * g[6] + x * g[7]);
  float vx = 2.f * (y * g[1] + z * g[2] + y * g[3] - 2.f * x * g[4] - w * g[5] + z * g[6] + w * g[7] -
                    2.f * x * g[8]);
  float vy = 2.f * (-2.f * y * g[0] + x * g[1] + w * g[2] + x * g[3] + z * g[5] - w * g[6] + z * g[7] -
                    2.f * y * g[8]);
  float vz = 2.f * (-2.f * z * g[0] - w * g[1] + x * g[2] + w * g[3] - 2.f * z * g[4] + y * g[5] +
                    x * g[6] + y * g[7]);
  return {vw, vx, vy, vz};
}

// Sigma = R S S^T R^T with S = diag(scale * modifier).
GT_HD Sym3 compute_cov3d(Vec3 scale, float mod, Vec4 q) {
  Mat3 R = quat_to_rotmat(q);
  const float s[3] = {scale.x * mod, scale.y * mod, scale.z * mod};
  Mat3 M;  // M = R S
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) M(r, c) = R(r, c) * s[c];
  Sym3 S;
  S.m[0] = M(0, 0) * M(0, 0) + M(0, 1) * M(0, 1) + M(0, 2) * M(0, 2);
  S.m[1] = M(0, 0) * M(1, 0) + M(0, 1) * M(1, 1) + M(0, 2) * M(1, 2);
  S.m[2] = M(0, 0) * M(2, 0) + M(0, 1) * M(2, 1) + M(0, 2) * M(2, 2);
  S.m[3] = M(1, 0) * M(1, 0) + M(1, 1) * M(1, 1) + M(1, 2) * M(1, 2);
  S.m[4] = M(1, 0) * M(2, 0) + M(1, 1) * M(2, 1) + M(1, 2) * M(2, 2);
  S.m[5] = M(2, 0) * M(2, 0) + M(2, 1) * M(2, 1) + M(2, 2) * M(2, 2);
  return S;
}
// VJP of compute_cov3d. `v_cov` holds dL/d(upper-triangle entries) as independent variables, the
// convention of cov3D_precomp (an off-diagonal entry stands for both symmetric positions).
GT_HD void vjp_compute_cov3d(Vec3 scale, float mod, Vec4 q, const Sym3& v_cov, Vec3* v_scale, Vec4* v_rot) {
  Mat3 R = quat_to_rotmat(q);
  const float s[3] = {scale.x * mod, scale.y * mod, scale.z * mod};
  // Symmetric dL/dSigma: the off-diagonal gradient is shared by the two positions.
  Mat3 G;
  G.m[0] = v_cov.m[0];
  G.m[4] = v_cov.m[3];
  G.m[8] = v_cov.m[5];
  G.m[1] = G.m[3] = 0.5f * v_cov.m[1];
  G.m[2] = G.m[6] = 0.5f * v_cov.m[2];
  G.m[5] = G.m[7] = 0.5f * v_cov.m[4];
  // Sigma = M M^T, M = R S  =>  dL/dM = 2 G M.
  Mat3 M, vM;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) M(r, c) = R(r, c) * s[c];
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) vM(r, c) = 2.f * (G(r, 0) * M(0, c) + G(r, 1) * M(1, c) + G(r, 2) * M(2, c));
  Mat3 vR;
  float vs[3] = {0.f, 0.f, 0.f};
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) {
      vR(r, c) = vM(r, c) * s[c];
      vs[c] += vM(r, c) * R(r, c);
    }
  *v_scale = {vs[0] * mod, vs[1] * mod, vs[2] * mod};
  *v_rot = vjp_quat_to_rotmat(q, vR);
}

// ---------------------------------------------------------------------------------------------------
// EWA projection of the 3D covariance to a 2D pixel-space covariance (a, b, c) = [[a, b], [b, c]],
// including the low-pass dilation. `t` is the view-space mean.
struct Cov2d {
  float a, b, c;
};
struct EwaJacobian {
  // J = [[j00, 0, j02], [0, j11, j12]] and which of the view directions were clamped to the guard band.
  float j00, j02, j11, j12;
  float cx, cy;
  bool clamp_x, clamp_y;
};
GT_HD EwaJacobian ewa_jacobian(Vec3 t, float fx, float fy, float tanx, float tany) {
  const float limx = kFrustumGuard * tanx, limy = kFrustumGuard * tany;
  const float txtz = t.x / t.z, tytz = t.y / t.z;
  EwaJacobian J;
  J.clamp_x = txtz < -limx || txtz > limx;
  J.clamp_y = tytz < -limy || tytz > limy;
  J.cx = clampf(txtz, -limx, limx);
  J.cy = clampf(tytz, -limy, limy);
  // With tx = cx * tz: J02 = -fx * tx / tz^2 = -fx * cx / tz.
  J.j00 = fx / t.z;
  J.j02 = -fx * J.cx / t.z;
  J.j11 = fy / t.z;
  J.j12 = -fy * J.cy / t.z;
  return J;
}
// T = J W (2x3) where W is the rotation part of world-to-camera: W[r][c] = view[c*4 + r].
GT_HD void ewa_T(const EwaJacobian& J, const float* view, float T[6]) {
  for (int c = 0; c < 3; ++c) {
    const float w0 = view[c * 4 + 0], w1 = view[c * 4 + 1], w2 = view[c * 4 + 2];
    T[c] = J.j00 * w0 + J.j02 * w2;
    T[3 + c] = J.j11 * w1 + J.j12 * w2;
  }
}
GT_HD Cov2d project_cov(const Sym3& S, const float T[6]) {
  // Sigma as a full matrix.
  const float s00 = S.m[0], s01 = S.m[1], s02 = S.m[2], s11 = S.m[3], s12 = S.m[4], s22 = S.m[5];
  // U = T Sigma (2x3)
  float U[6];
  for (int r = 0; r < 2; ++r) {
    const float* t = T + 3 * r;
    U[3 * r + 0] = t[0] * s00 + t[1] * s01 + t[2] * s02;
    U[3 * r + 1] = t[0] * s01 + t[1] * s11 + t[2] * s12;
    U[3 * r + 2] = t[0] * s02 + t[1] * s12 + t[2] * s22;
  }
  Cov2d c;
  c.a = U[0] * T[0] + U[1] * T[1] + U[2] * T[2] + kLowPass;
  c.b = U[0] * T[3] + U[1] * T[4] + U[2] * T[5];
  c.c = U[3] * T[3] + U[4] * T[4] + U[5] * T[5] + kLowPass;
  return c;
}

// VJP of project_cov(Sigma, T(J(t), W)) w.r.t. Sigma and the view-space mean t, given dL/d(a, b, c)
// (b as one variable). The guard-band clamp passes no gradient through a clamped direction.
GT_HD void vjp_project_cov(Vec3 t, float fx, float fy, float tanx, float tany, const float* view, const Sym3& S,
                           Cov2d v, Sym3* v_cov3d, Vec3* v_t) {
  EwaJacobian J = ewa_jacobian(t, fx, fy, tanx, tany);
  float T[6];
  ewa_T(J, view, T);
  // Symmetric dL/dcov2D
  const float g00 = v.a, g01 = 0.5f * v.b, g11 = v.c;
  // dL/dSigma = T^T G T (3x3 symmetric); stored as independent upper-triangle variables.
  float GT0[3], GT1[3];  // rows of G T
  for (int c = 0; c < 3; ++c) {
    GT0[c] = g00 * T[c] + g01 * T[3 + c];
    GT1[c] = g01 * T[c] + g11 * T[3 + c];
  }
  float full[9];
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) full[r * 3 + c] = T[r] * GT0[c] + T[3 + r] * GT1[c];
  v_cov3d->m[0] = full[0];
  v_cov3d->m[1] = full[1] + full[3];
  v_cov3d->m[2] = full[2] + full[6];
  v_cov3d->m[3] = full[4];
  v_cov3d->m[4] = full[5] + full[7];
  v_cov3d->m[5] = full[8];
  // dL/dT = 2 G T Sigma
  const float s[9] = {S.m[0], S.m[1], S.m[2], S.m[1], S.m[3], S.m[4], S.m[2], S.m[4], S.m[5]};
  float vT[6];
  for (int c = 0; c < 3; ++c) {
    vT[c] = 2.f * (GT0[0] * s[c] + GT0[1] * s[3 + c] + GT0[2] * s[6 + c]);
    vT[3 + c] = 2.f * (GT1[0] * s[c] + GT1[1] * s[3 + c] + GT1[2] * s[6 + c]);
  }
  // dL/dJ = dL/dT W^T, with W[r][c] = view[c*4 + r]: (vT W^T)[i][k] = sum_c vT[i][c] W[k][c].
  float vj00 = 0.f, vj02 = 0.f, vj11 = 0.f, vj12 = 0.f;
  for (int c = 0; c < 3; ++c) {
    vj00 += vT[c] * view[c * 4 + 0];
    vj02 += vT[c] * view[c * 4 + 2];
    vj11 += vT[3 + c] * view[c * 4 + 1];
    vj12 += vT[3 + c] * view[c * 4 + 2];
  }
  // J00 = fx/tz, J02 = -fx*cx/tz with cx = clamp(tx/tz): dcx/dtx = 1/tz, dcx/dtz = -tx/tz^2 when not clamped.
  const float itz = 1.f / t.z, itz2 = itz * itz;
  const float dcx_dtx = J.clamp_x ? 0.f : itz, dcx_dtz = J.clamp_x ? 0.f : -t.x * itz2;
  const float dcy_dty = J.clamp_y ? 0.f : itz, dcy_dtz = J.clamp_y ? 0.f : -t.y * itz2;
  v_t->x = vj02 * (-fx * itz) * dcx_dtx;
  v_t->y = vj12 * (-fy * itz) * dcy_dty;
  v_t->z = vj00 * (-fx * itz2) + vj11 * (-fy * itz2) + vj02 * (fx * J.cx * itz2 - fx * itz * dcx_dtz) +
           vj12 * (fy * J.cy * itz2 - fy * itz * dcy_dtz);
}

// Conic (inverse 2D covariance) and its VJP back to (a, b, c).
struct Conic {
  float A, B, C;
};
GT_HD Conic invert_cov2d(Cov2d c, float det) {
  const float inv = 1.f / det;
  return {c.c * inv, -c.b * inv, c.a * inv};
}
GT_HD Cov2d vjp_invert_cov2d(Cov2d c, Conic g) {
  const float det = c.a * c.c - c.b * c.b;
  const float i2 = 1.f / (det * det);
  const float a = c.a, b = c.b, cc = c.c;
  Cov2d v;
  v.a = i2 * (-cc * cc * g.A + b * cc * g.B - b * b * g.C);
  v.b = i2 * (2.f * b * cc * g.A - (det + 2.f * b * b) * g.B + 2.f * a * b * g.C);
  v.c = i2 * (-b * b * g.A + a * b * g.B - a * a * g.C);
  return v;
}

// Screen-space radius: 3 sigma of the larger eigenvalue, capped at kMaxRadius. NaN when the covariance
// is not finite (the caller culls every radius that is not > 0).
GT_HD float splat_radius(Cov2d c, float det) {
  const float mid = 0.5f * (c.a + c.c);
  const float disc = sqrtf(max_of(0.1f, mid * mid - det));
  const float l1 = mid + disc, l2 = mid - disc;
  // (= fmaxf(l1, l2): l1 >= l2, and where l1 alone is NaN, mid = -inf, the root of l2 = -inf is NaN too)
  const float r = ceilf(3.f * sqrtf(max_of(l1, l2)));
  return r > kMaxRadius ? kMaxRadius : r;  // (fminf would turn a NaN into kMaxRadius)
}

// Tile rectangle [min, max) touched by a splat, clamped to the grid. tile_index(v, n) = clamp(floor(v), 0, n):
// for an integer n that is floor(clamp(v, 0, n)), and the int conversion of a value >= 0 is its floor, so no
// floorf is needed (a libm call on x86-64 without SSE4.1). The same as the floorf form for every v but NaN,
// which never gets here (preprocess culls a non-finite mean or radius first).
GT_HD int tile_index(float v, int n) { return (int)min_of((float)n, max_of(0.f, v)); }

// Tile rectangle of a splat with per-axis half extents (pixels).
GT_HD void tile_rect_xy(Vec2 p, int rx, int ry, int grid_x, int grid_y, int rmin[2], int rmax[2]) {
  rmin[0] = tile_index((p.x - rx) / kTileX, grid_x);
  rmin[1] = tile_index((p.y - ry) / kTileY, grid_y);
  rmax[0] = tile_index((p.x + rx + kTileX - 1) / kTileX, grid_x);
  rmax[1] = tile_index((p.y + ry + kTileY - 1) / kTileY, grid_y);
}

// The square one: the same half extent `radius` on both axes.
GT_HD void tile_rect(Vec2 p, int radius, int grid_x, int grid_y, int rmin[2], int rmax[2]) {
  tile_rect_xy(p, radius, radius, grid_x, grid_y, rmin, rmax);
}

// Opacity-aware half extents of the tiles a splat is listed in. A splat can only be drawn where
// o * exp(-q/2) >= kMinAlpha, q = d^T conic d, i.e. inside the ellipse q <= 2 ln(o / kMinAlpha), whose
// bounding box has half widths sqrt(q_max * a) and sqrt(q_max * c) (a, c: the 2D covariance's diagonal).
// A margin (0.01 on q_max, one pixel on the extents, which tile_rect's rounding needs) keeps every pixel the
// per-pixel test accepts; the 3-sigma radius stays the upper bound. So the drawn pixels are those of the
// 3-sigma rule, with fewer tile entries for faint or elongated splats (-1: not listed in any tile).
constexpr float kSupportMargin = 0.01f;
// q_max with its margin. It depends on the opacity alone, so preprocess_instance asks for it first: the libm
// call then overlaps the projection instead of coming last, with many live registers to spill around it.
GT_HD float support_q(float opacity) { return 2.f * logf(opacity / kMinAlpha) + kSupportMargin; }
// `q` = support_q(opacity), read only when opacity >= kMinAlpha.
GT_HD void tile_extents(Cov2d c, float opacity, float q, float radius, int* rx, int* ry) {
  if (!(opacity >= kMinAlpha)) {
    *rx = *ry = -1;
    return;
  }
  *rx = (int)min_of(radius, ceilf(sqrtf(q * c.a)) + 1.f);
  *ry = (int)min_of(radius, ceilf(sqrtf(q * c.c)) + 1.f);
}

// ---------------------------------------------------------------------------------------------------
// Real spherical harmonics up to degree 3 (the 3DGS constants), with their gradients.
constexpr float kSH_C0 = 0.28209479177387814f;
constexpr float kSH_C1 = 0.4886025119029199f;
// Scalars rather than arrays: namespace-scope constexpr arrays are not visible in CUDA device code.
constexpr float kSH_C2_0 = 1.0925484305920792f, kSH_C2_1 = -1.0925484305920792f, kSH_C2_2 = 0.31539156525252005f,
                kSH_C2_3 = -1.0925484305920792f, kSH_C2_4 = 0.5462742152960396f;
constexpr float kSH_C3_0 = -0.5900435899266435f, kSH_C3_1 = 2.890611442640554f, kSH_C3_2 = -0.4570457994644658f,
                kSH_C3_3 = 0.3731763325901154f, kSH_C3_4 = -0.4570457994644658f, kSH_C3_5 = 1.445305721320277f,
                kSH_C3_6 = -0.5900435899266435f;

// Basis values Y[k] (k < (deg+1)^2) at unit direction d, and optionally their gradients dY[k] = dY/dd.
GT_HD void sh_basis(int deg, Vec3 d, float Y[16], Vec3 dY[16]) {
  const float x = d.x, y = d.y, z = d.z;
  Y[0] = kSH_C0;
  if (dY) dY[0] = {0.f, 0.f, 0.f};
  if (deg < 1) return;
  Y[1] = -kSH_C1 * y;
  Y[2] = kSH_C1 * z;
  Y[3] = -kSH_C1 * x;
  if (dY) {
    dY[1] = {0.f, -kSH_C1, 0.f};
    dY[2] = {0.f, 0.f, kSH_C1};
    dY[3] = {-kSH_C1, 0.f, 0.f};
  }
  if (deg < 2) return;
  const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  Y[4] = kSH_C2_0 * xy;
  Y[5] = kSH_C2_1 * yz;
  Y[6] = kSH_C2_2 * (2.f * zz - xx - yy);
  Y[7] = kSH_C2_3 * xz;
  Y[8] = kSH_C2_4 * (xx - yy);
  if (dY) {
    dY[4] = {kSH_C2_0 * y, kSH_C2_0 * x, 0.f};
    dY[5] = {0.f, kSH_C2_1 * z, kSH_C2_1 * y};
    dY[6] = {-2.f * kSH_C2_2 * x, -2.f * kSH_C2_2 * y, 4.f * kSH_C2_2 * z};
    dY[7] = {kSH_C2_3 * z, 0.f, kSH_C2_3 * x};
    dY[8] = {2.f * kSH_C2_4 * x, -2.f * kSH_C2_4 * y, 0.f};
  }
  if (deg < 3) return;
  Y[9] = kSH_C3_0 * y * (3.f * xx - yy);
  Y[10] = kSH_C3_1 * xy * z;
  Y[11] = kSH_C3_2 * y * (4.f * zz - xx - yy);
  Y[12] = kSH_C3_3 * z * (2.f * zz - 3.f * xx - 3.f * yy);
  Y[13] = kSH_C3_4 * x * (4.f * zz - xx - yy);
  Y[14] = kSH_C3_5 * z * (xx - yy);
  Y[15] = kSH_C3_6 * x * (xx - 3.f * yy);
  if (dY) {
    dY[9] = {kSH_C3_0 * 6.f * xy, kSH_C3_0 * (3.f * xx - 3.f * yy), 0.f};
    dY[10] = {kSH_C3_1 * yz, kSH_C3_1 * xz, kSH_C3_1 * xy};
    dY[11] = {-2.f * kSH_C3_2 * xy, kSH_C3_2 * (4.f * zz - xx - 3.f * yy), 8.f * kSH_C3_2 * yz};
    dY[12] = {-6.f * kSH_C3_3 * xz, -6.f * kSH_C3_3 * yz, kSH_C3_3 * (6.f * zz - 3.f * xx - 3.f * yy)};
    dY[13] = {kSH_C3_4 * (4.f * zz - 3.f * xx - yy), -2.f * kSH_C3_4 * xy, 8.f * kSH_C3_4 * xz};
    dY[14] = {2.f * kSH_C3_5 * xz, -2.f * kSH_C3_5 * yz, kSH_C3_5 * (xx - yy)};
    dY[15] = {kSH_C3_6 * (3.f * xx - 3.f * yy), -6.f * kSH_C3_6 * xy, 0.f};
  }
}

// RGB from SH coefficients `sh` ([K, 3], K >= (deg+1)^2) seen from `campos`: SH(d) + 0.5, clamped at 0.
// `clamped[c]` records which channels were clamped (they pass no gradient). `*finite` tells whether the
// sum before the clamp was finite: false exactly when an active coefficient is NaN or infinite (or the sum
// overflows), which the caller culls; testing the sum spares a second pass over the 48 coefficients.
GT_HD Vec3 sh_to_color(int deg, const float* sh, Vec3 pos, Vec3 campos, bool clamped[3], bool* finite) {
  Vec3 v = {pos.x - campos.x, pos.y - campos.y, pos.z - campos.z};
  const float inv = 1.f / sqrtf(v.x * v.x + v.y * v.y + v.z * v.z);
  Vec3 d = {v.x * inv, v.y * inv, v.z * inv};
  float Y[16];
  sh_basis(deg, d, Y, nullptr);
  const int K = (deg + 1) * (deg + 1);
  float rgb[3] = {0.5f, 0.5f, 0.5f};
  for (int k = 0; k < K; ++k)
    for (int c = 0; c < 3; ++c) rgb[c] += Y[k] * sh[3 * k + c];
  *finite = all_finite(rgb, 3);
  for (int c = 0; c < 3; ++c) {
    clamped[c] = rgb[c] < 0.f;
    rgb[c] = clamped[c] ? 0.f : rgb[c];
  }
  return {rgb[0], rgb[1], rgb[2]};
}
// VJP of sh_to_color: writes dL/dsh ([K, 3], only the first (deg+1)^2 rows) and returns dL/dpos.
GT_HD Vec3 vjp_sh_to_color(int deg, const float* sh, Vec3 pos, Vec3 campos, const bool clamped[3], Vec3 v_rgb,
                           float* v_sh) {
  const float g[3] = {clamped[0] ? 0.f : v_rgb.x, clamped[1] ? 0.f : v_rgb.y, clamped[2] ? 0.f : v_rgb.z};
  Vec3 v = {pos.x - campos.x, pos.y - campos.y, pos.z - campos.z};
  const float inv = 1.f / sqrtf(v.x * v.x + v.y * v.y + v.z * v.z);
  Vec3 d = {v.x * inv, v.y * inv, v.z * inv};
  float Y[16];
  Vec3 dY[16];
  sh_basis(deg, d, Y, dY);
  const int K = (deg + 1) * (deg + 1);
  Vec3 v_d = {0.f, 0.f, 0.f};
  for (int k = 0; k < K; ++k) {
    float s = 0.f;
    for (int c = 0; c < 3; ++c) {
      v_sh[3 * k + c] = Y[k] * g[c];
      s += sh[3 * k + c] * g[c];
    }
    v_d.x += s * dY[k].x;
    v_d.y += s * dY[k].y;
    v_d.z += s * dY[k].z;
  }
  // d = v / |v|: dL/dv = (dL/dd - d (d . dL/dd)) / |v|
  const float dot = d.x * v_d.x + d.y * v_d.y + d.z * v_d.z;
  return {(v_d.x - d.x * dot) * inv, (v_d.y - d.y * dot) * inv, (v_d.z - d.z * dot) * inv};
}

// ---------------------------------------------------------------------------------------------------
// Per-pixel compositing. One Gaussian as the pixel loop sees it.
struct Splat {
  Vec2 xy;     // pixel-space mean
  Vec4 co;     // conic (A, B, C) and opacity
};
// Alpha of a splat at pixel (px, py); returns false when the splat is skipped there.
// `power_out` and `g_out` (= exp(power)) are kept for the backward pass.
GT_HD float splat_power(const Splat& s, float px, float py) {
  const float dx = s.xy.x - px, dy = s.xy.y - py;
  return -0.5f * (s.co.x * dx * dx + s.co.z * dy * dy) - s.co.y * dx * dy;
}
GT_HD bool splat_alpha(const Splat& s, float px, float py, float* alpha, float* g_out) {
  const float power = splat_power(s, px, py);
  if (power > 0.f) return false;
  const float g = expf(power);
  const float a = fminf(kMaxAlpha, s.co.w * g);
  if (a < kMinAlpha) return false;
  *alpha = a;
  *g_out = g;
  return true;
}

// VJP of alpha(s, pixel) given dL/dalpha: accumulates dL/d(pixel mean), dL/dconic and dL/dopacity.
struct SplatGrad {
  float mx, my;       // dL/d mean2D (pixels)
  float A, B, C;      // dL/d conic
  float o;            // dL/d opacity
};
GT_HD SplatGrad vjp_splat_alpha(const Splat& s, float px, float py, float g, float v_alpha) {
  SplatGrad out;
  const float dx = s.xy.x - px, dy = s.xy.y - py;
  if (s.co.w * g > kMaxAlpha) {  // clamped: alpha does not depend on the inputs here
    out.mx = out.my = out.A = out.B = out.C = out.o = 0.f;
    return out;
  }
  out.o = g * v_alpha;
  const float v_power = s.co.w * g * v_alpha;  // d alpha / d power = alpha
  out.A = -0.5f * dx * dx * v_power;
  out.C = -0.5f * dy * dy * v_power;
  out.B = -dx * dy * v_power;
  out.mx = (-s.co.x * dx - s.co.y * dy) * v_power;
  out.my = (-s.co.z * dy - s.co.y * dx) * v_power;
  return out;
}

}  // namespace gt

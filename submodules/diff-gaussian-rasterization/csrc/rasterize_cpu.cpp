// CPU backend (C++/OpenMP) of the rasterizer. The arithmetic lives in rasterize.h / rasterize_math.h and
// is shared with the CUDA backend; this file only schedules it.
//
// Scheduling differs from the GPU on purpose: a CUDA block walks each pixel through the whole tile list,
// while here one thread takes a tile and walks the *splats* of its list in depth order, touching only the
// pixels inside the splat's exact support (the ellipse where alpha >= kMinAlpha, plus a 1-pixel margin). Every
// pixel still sees the same splats in the same order with the same per-pixel tests, so the pixels are
// identical; the work drops from (pixels x list length) to (pixels actually covered).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "rasterize.h"
#include "rasterize_launch.h"

namespace gt {
namespace {

int num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Pixel rectangle [x0, x1) x [y0, y1) of tile `tile`, clipped to the image.
struct PixRect {
  int x0, y0, x1, y1;
};
PixRect tile_pixels(const RasterInputs& in, int tile) {
  const int tx = tile % in.grid_x(), ty = tile / in.grid_x();
  return {tx * kTileX, ty * kTileY, std::min(in.W, (tx + 1) * kTileX), std::min(in.H, (ty + 1) * kTileY)};
}

// The support of a splat: the pixels where it can reach alpha >= kMinAlpha, i.e. o * exp(-q/2) >= kMinAlpha
// with q = d^T Conic d, i.e. q <= 2 ln(o / kMinAlpha): an ellipse. It is enlarged slightly (q bound + 0.01, one pixel
// each side) so that float rounding can never exclude a pixel the exact per-pixel test would accept; the
// per-pixel test still decides. Iterated row by row, each row clipped to the ellipse's chord.
struct Support {
  bool empty = true;
  bool whole = false;   // degenerate conic: scan the whole rectangle
  float A, B, C, det, q, mx, my;
  float min_power = -3.4e38f;  // below this power alpha < kMinAlpha for sure: skip without exp()
  int y0, y1;
  // Pixel columns [x0, x1) of row y that can be inside the support, clipped to rect r.
  void row(int y, const PixRect& r, int* x0, int* x1) const {
    if (whole) {
      *x0 = r.x0;
      *x1 = r.x1;
      return;
    }
    const float dy = my - (float)y;
    const float disc = A * q - det * dy * dy;  // dx solves A dx^2 + 2 B dy dx + C dy^2 - q = 0
    if (disc < 0.f) {
      *x0 = *x1 = r.x0;
      return;
    }
    const float c = -B * dy / A, h = std::sqrt(disc) / A;
    // x = mx - dx with dx in [c - h, c + h]
    *x0 = std::max(r.x0, (int)std::floor(mx - c - h));
    *x1 = std::min(r.x1, (int)std::ceil(mx - c + h) + 1);
  }
};
Support splat_support(const Splat& s, const PixRect& r) {
  Support out;
  const float o = s.co.w;
  if (o < kMinAlpha) return out;  // alpha = min(0.99, o exp(power)) <= o: never drawn
  out.A = s.co.x;
  out.B = s.co.y;
  out.C = s.co.z;
  out.mx = s.xy.x;
  out.my = s.xy.y;
  out.det = out.A * out.C - out.B * out.B;
  if (!(out.det > 0.f) || !(out.A > 0.f)) {
    out.whole = true;
    out.empty = false;
    out.y0 = r.y0;
    out.y1 = r.y1;
    return out;
  }
  out.q = 2.f * std::log(o / kMinAlpha) + 0.01f;
  out.min_power = -0.5f * out.q;
  const float ey = std::sqrt(out.q * out.A / out.det);
  out.y0 = std::max(r.y0, (int)std::floor(out.my - ey));
  out.y1 = std::min(r.y1, (int)std::ceil(out.my + ey) + 1);
  out.empty = out.y0 >= out.y1;
  return out;
}

// A tile's splats gathered into one contiguous buffer (the CPU's "shared memory").
struct TileSplats {
  std::vector<Splat> splat;
  std::vector<float> rgb;    // [n, 3]
  std::vector<float> depth;  // [n]
  std::vector<int> id;       // global instance index
  void load(const GeomState& st, const int* list, int n) {
    splat.resize(n);
    rgb.resize(3 * (size_t)n);
    depth.resize(n);
    id.resize(n);
    for (int j = 0; j < n; ++j) {
      const int g = list[j];
      id[j] = g;
      splat[j].xy = {st.means2d[2 * g], st.means2d[2 * g + 1]};
      splat[j].co = load4(st.conic_opacity + 4 * g);
      for (int c = 0; c < 3; ++c) rgb[3 * j + c] = st.rgb[3 * g + c];
      depth[j] = st.depths[g];
    }
  }
};

// The visible instances (radius > 0) g = first .. first + n - 1, front to back by view depth, ties in index
// order: the order of a stable sort by depth. It is an LSD radix sort, stable by construction, of the depths'
// bits mapped to unsigned keys of the same order (-0 taken as +0, so that equal depths stay ties), 8 bits a
// pass; a pass is skipped when every key has the same digit there. (std::stable_sort with a comparison
// reading depths[] took longer than the whole preprocess step.)
std::vector<int> depth_order(const GeomState& st, int64_t first, int n) {
  std::vector<uint32_t> key, key_tmp;
  std::vector<int> id, id_tmp;
  key.reserve(n);
  id.reserve(n);
  for (int i = 0; i < n; ++i) {
    const int64_t g = first + i;
    if (st.radii[g] <= 0) continue;
    const float d = st.depths[g] == 0.f ? 0.f : st.depths[g];  // (finite: culled otherwise)
    uint32_t u;
    std::memcpy(&u, &d, sizeof(u));
    key.push_back((u & 0x80000000u) ? ~u : (u | 0x80000000u));
    id.push_back((int)g);
  }
  const size_t m = id.size();
  if (m < 2) return id;
  size_t count[4][256] = {};
  for (size_t j = 0; j < m; ++j)
    for (int p = 0; p < 4; ++p) ++count[p][(key[j] >> (8 * p)) & 255u];
  key_tmp.resize(m);
  id_tmp.resize(m);
  for (int p = 0; p < 4; ++p) {
    if (count[p][(key[0] >> (8 * p)) & 255u] == m) continue;
    size_t next[256];
    for (size_t d = 0, s = 0; d < 256; ++d) {
      next[d] = s;
      s += count[p][d];
    }
    for (size_t j = 0; j < m; ++j) {
      const size_t t = next[(key[j] >> (8 * p)) & 255u]++;
      key_tmp[t] = key[j];
      id_tmp[t] = id[j];
    }
    key.swap(key_tmp);
    id.swap(id_tmp);
  }
  return id;
}

// Start loading the cache line at p: the accumulators are indexed by instance, so each splat's are a cache
// miss; fetched before its pixels are walked, the miss overlaps that work instead of following it.
inline void prefetch_write(const float* p) {
#if defined(__GNUC__)
  __builtin_prefetch(p, 1);
#else
  (void)p;
#endif
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Binning: per camera, visible instances sorted by depth (stable: ties keep index order), then a
// counting sort by tile that preserves that order. Fills point_list and tile_ranges [B*T, 2].
static at::Tensor bin_cpu(const RasterInputs& in, const GeomState& st, int* ranges) {
  const int T = in.tiles();
  const int gx = in.grid_x(), gy = in.grid_y();
  std::vector<int64_t> cam_offset(in.B + 1, 0);
  for (int b = 0; b < in.B; ++b) {
    int64_t s = 0;
    for (int i = 0; i < in.N; ++i) s += st.tiles_touched[b * in.N + i];
    cam_offset[b + 1] = cam_offset[b] + s;
  }
  // point_list entries and tile ranges are int32 (as on the GPU).
  TORCH_CHECK_VALUE(cam_offset[in.B] <= INT32_MAX, "the rasterizer's tile lists would have ", cam_offset[in.B],
                    " entries, more than the 2^31 - 1 it can index; render fewer Gaussians or cameras per call");
  at::Tensor point_list = at::empty({(int64_t)cam_offset[in.B]}, at::dtype(at::kInt));
  int* list = point_list.data_ptr<int>();
#pragma omp parallel for schedule(dynamic, 1) if (in.B > 1)
  for (int b = 0; b < in.B; ++b) {
    const std::vector<int> order = depth_order(st, (int64_t)b * in.N, in.N);
    std::vector<int64_t> start(T + 1, 0);
    auto for_tiles = [&](int g, auto&& fn) {
      int rmin[2], rmax[2];
      if (!listed_tiles(st, g, gx, gy, rmin, rmax)) return;
      for (int y = rmin[1]; y < rmax[1]; ++y)
        for (int x = rmin[0]; x < rmax[0]; ++x) fn(y * gx + x);
    };
    for (int g : order) for_tiles(g, [&](int t) { ++start[t + 1]; });
    for (int t = 0; t < T; ++t) start[t + 1] += start[t];
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    int* out = list + cam_offset[b];
    for (int g : order) for_tiles(g, [&](int t) { out[fill[t]++] = g; });
    for (int t = 0; t < T; ++t) {
      ranges[2 * ((size_t)b * T + t) + 0] = (int)(cam_offset[b] + start[t]);
      ranges[2 * ((size_t)b * T + t) + 1] = (int)(cam_offset[b] + start[t + 1]);
    }
  }
  return point_list;
}

at::Tensor rasterize_fwd_cpu(const RasterInputs& in, const GeomState& st, const PixelState& ps, int* ranges,
                                float* out_color, float* out_depth, float* out_alpha) {
  const int64_t total = (int64_t)in.B * in.N;
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < total; ++g) preprocess_instance(in, st, g);

  at::Tensor point_list = bin_cpu(in, st, ranges);
  const int* list = point_list.data_ptr<int>();

  const int T = in.tiles();
  const int64_t jobs = (int64_t)in.B * T;
#pragma omp parallel
  {
    TileSplats buf;
    PixelAccum acc[kTileSize];
    bool done[kTileSize];
#pragma omp for schedule(dynamic, 1)
    for (int64_t job = 0; job < jobs; ++job) {
      const int b = (int)(job / T), tile = (int)(job % T);
      const PixRect r = tile_pixels(in, tile);
      const int lo = ranges[2 * job], hi = ranges[2 * job + 1];
      for (int k = 0; k < kTileSize; ++k) {
        pixel_begin(&acc[k]);
        done[k] = false;
      }
      buf.load(st, list + lo, hi - lo);
      for (int j = 0; j < hi - lo; ++j) {
        const Support s = splat_support(buf.splat[j], r);
        if (s.empty) continue;
        for (int y = s.y0; y < s.y1; ++y) {
          int x0, x1;
          s.row(y, r, &x0, &x1);
          for (int x = x0; x < x1; ++x) {
            const int k = (y - r.y0) * kTileX + (x - r.x0);
            if (done[k] || splat_power(buf.splat[j], (float)x, (float)y) < s.min_power) continue;
            done[k] = !pixel_step(&acc[k], buf.splat[j], &buf.rgb[3 * j], buf.depth[j], (float)x, (float)y, j);
          }
        }
      }
      for (int y = r.y0; y < r.y1; ++y)
        for (int x = r.x0; x < r.x1; ++x)
          pixel_end(in, ps, acc[(y - r.y0) * kTileX + (x - r.x0)], b, y * in.W + x, out_color, out_depth,
                    out_alpha);
    }
  }
  return point_list;
}

// Per-instance gradients accumulated by the pixel pass: 2D mean (2), conic (3), opacity, rgb (3), depth.
constexpr int kAccum = 10;

void rasterize_bwd_cpu(const RasterInputs& in, const GeomState& st, const PixelState& ps, const int* point_list,
                       const int* ranges, const RasterGrads& gr) {
  const int T = in.tiles();
  const int nthreads = num_threads();
  // Tiles of one camera only touch that camera's instances: process cameras in turn, each with private
  // per-thread accumulators of N entries, reduced once per camera (no atomics).
  // Deterministic for a given thread count: tiles are dealt round-robin (static, 1), so every thread adds
  // the same tiles in the same order on every run, and the accumulators are reduced in thread order.
  // (A dynamic schedule would hand tiles out by timing, changing the float sums from run to run.)
  std::vector<float> local((size_t)nthreads * in.N * kAccum);
  for (int b = 0; b < in.B; ++b) {
    std::fill(local.begin(), local.end(), 0.f);
#pragma omp parallel
    {
      TileSplats buf;
      PixelBack pb[kTileSize];
      int ncon[kTileSize];
      float* acc = local.data() + (size_t)thread_id() * in.N * kAccum;
#pragma omp for schedule(static, 1)
      for (int tile = 0; tile < T; ++tile) {
        const int64_t job = (int64_t)b * T + tile;
        const int lo = ranges[2 * job], hi = ranges[2 * job + 1];
        if (hi == lo) {
          // no splat: only the background gradient
          const PixRect r = tile_pixels(in, tile);
          for (int y = r.y0; y < r.y1; ++y)
            for (int x = r.x0; x < r.x1; ++x) pixel_back_begin(in, ps, gr, b, y * in.W + x, &pb[0], gr.v_bg);
          continue;
        }
        const PixRect r = tile_pixels(in, tile);
        for (int y = r.y0; y < r.y1; ++y)
          for (int x = r.x0; x < r.x1; ++x) {
            const int k = (y - r.y0) * kTileX + (x - r.x0);
            const int pix = y * in.W + x;
            pixel_back_begin(in, ps, gr, b, pix, &pb[k], gr.v_bg);
            ncon[k] = ps.n_contrib[(size_t)b * in.H * in.W + pix];
          }
        buf.load(st, point_list + lo, hi - lo);
        for (int j = hi - lo - 1; j >= 0; --j) {
          const Support s = splat_support(buf.splat[j], r);
          if (s.empty) continue;
          prefetch_write(acc + (size_t)(buf.id[j] - b * in.N) * kAccum);  // read after the pixel loop
          float sum[kAccum] = {0.f};
          bool any = false;
          for (int y = s.y0; y < s.y1; ++y) {
            int x0, x1;
            s.row(y, r, &x0, &x1);
            for (int x = x0; x < x1; ++x) {
              const int k = (y - r.y0) * kTileX + (x - r.x0);
              if (j >= ncon[k] || splat_power(buf.splat[j], (float)x, (float)y) < s.min_power) continue;
              StepGrad sg;
              if (!pixel_back_step(&pb[k], buf.splat[j], &buf.rgb[3 * j], buf.depth[j], (float)x, (float)y, &sg))
                continue;
              any = true;
              sum[0] += sg.sg.mx;
              sum[1] += sg.sg.my;
              sum[2] += sg.sg.A;
              sum[3] += sg.sg.B;
              sum[4] += sg.sg.C;
              sum[5] += sg.sg.o;
              sum[6] += sg.rgb[0];
              sum[7] += sg.rgb[1];
              sum[8] += sg.rgb[2];
              sum[9] += sg.depth;
            }
          }
          if (any) {
            float* a = acc + (size_t)(buf.id[j] - b * in.N) * kAccum;
            for (int q = 0; q < kAccum; ++q) a[q] += sum[q];
          }
        }
      }
      // reduce the per-thread accumulators of this camera
#pragma omp for schedule(static)
      for (int i = 0; i < in.N; ++i) {
        float s[kAccum] = {0.f};
        for (int t = 0; t < nthreads; ++t) {
          const float* a = local.data() + ((size_t)t * in.N + i) * kAccum;
          for (int q = 0; q < kAccum; ++q) s[q] += a[q];
        }
        const int64_t g = (int64_t)b * in.N + i;
        gr.v_means2d_pix[2 * g] = s[0];
        gr.v_means2d_pix[2 * g + 1] = s[1];
        gr.v_conic[3 * g] = s[2];
        gr.v_conic[3 * g + 1] = s[3];
        gr.v_conic[3 * g + 2] = s[4];
        gr.v_opacity[g] = s[5];
        gr.v_rgb[3 * g] = s[6];
        gr.v_rgb[3 * g + 1] = s[7];
        gr.v_rgb[3 * g + 2] = s[8];
        gr.v_depths[g] = s[9];
      }
    }
  }

  const int64_t total = (int64_t)in.B * in.N;
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < total; ++g) preprocess_backward_instance(in, st, gr, g);
}

}  // namespace gt

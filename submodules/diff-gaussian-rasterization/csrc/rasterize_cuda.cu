// CUDA backend of the rasterizer. The per-element arithmetic is the shared code of rasterize.h; this file
// schedules it the 3DGS way: one thread per instance for preprocessing, a radix sort of (camera*tile,
// depth) keys for binning, one 16x16 block per tile for compositing, with the tile's splats staged in
// shared memory, and atomics for the per-instance gradients.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <cub/cub.cuh>

#include "rasterize.h"
#include "rasterize_launch.h"

namespace gt {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) { return (int)((n + kThreads - 1) / kThreads); }

// Raises naming the stage when its launch failed. With `debug`, also waits for the stage to finish, so that
// an asynchronous fault (an illegal address...) is reported at the stage that caused it.
void check_stage(const RasterInputs& in, cudaStream_t stream, const char* stage) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess && in.debug) err = cudaStreamSynchronize(stream);
  TORCH_CHECK(err == cudaSuccess, "diff_gaussian_rasterization: CUDA error in stage '", stage, "': ",
              cudaGetErrorString(err),
              in.debug ? "" : " (errors are asynchronous: rerun with debug=True to find the stage that caused it)");
}
void check_cub(cudaError_t err, const char* stage) {
  TORCH_CHECK(err == cudaSuccess, "diff_gaussian_rasterization: cub failed in stage '", stage, "': ",
              cudaGetErrorString(err));
}

__global__ void preprocess_kernel(RasterInputs in, GeomState st) {
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g < (int64_t)in.B * in.N) preprocess_instance(in, st, g);
}

// Float -> unsigned key with the same order (negative depths only occur with `prefiltered`).
__device__ __forceinline__ uint32_t depth_key(float d) {
  const uint32_t u = __float_as_uint(d);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void duplicate_kernel(RasterInputs in, GeomState st, const int64_t* offsets, uint64_t* keys,
                                 int* values) {
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= (int64_t)in.B * in.N) return;
  const int b = (int)(g / in.N);
  const int gx = in.grid_x();
  int64_t off = g == 0 ? 0 : offsets[g - 1];
  int rmin[2], rmax[2];
  // exactly the tiles_touched[g] entries counted by preprocess_instance (none for a culled instance)
  if (!listed_tiles(st, g, gx, in.grid_y(), rmin, rmax)) return;
  const uint64_t dkey = depth_key(st.depths[g]);
  for (int y = rmin[1]; y < rmax[1]; ++y)
    for (int x = rmin[0]; x < rmax[0]; ++x) {
      const uint64_t tile = (uint64_t)b * in.tiles() + (uint64_t)(y * gx + x);
      keys[off] = (tile << 32) | dkey;
      values[off] = (int)g;
      ++off;
    }
}

__global__ void tile_ranges_kernel(const uint64_t* keys, int64_t P, int* ranges) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= P) return;
  const int64_t tile = (int64_t)(keys[i] >> 32);
  if (i == 0) {
    ranges[2 * tile] = 0;
  } else {
    const int64_t prev = (int64_t)(keys[i - 1] >> 32);
    if (prev != tile) {
      ranges[2 * prev + 1] = (int)i;
      ranges[2 * tile] = (int)i;
    }
  }
  if (i == P - 1) ranges[2 * tile + 1] = (int)P;
}

// Shared-memory copy of a tile's splats, filled cooperatively by the block.
struct SharedSplats {
  Splat splat[kTileSize];
  float rgb[kTileSize * 3];
  float depth[kTileSize];
  int id[kTileSize];
  __device__ void stage(const GeomState& st, int slot, int g) {
    id[slot] = g;
    splat[slot].xy = {st.means2d[2 * g], st.means2d[2 * g + 1]};
    splat[slot].co = load4(st.conic_opacity + 4 * g);
    for (int c = 0; c < 3; ++c) rgb[3 * slot + c] = st.rgb[3 * g + c];
    depth[slot] = st.depths[g];
  }
};

__global__ void __launch_bounds__(kTileSize) render_kernel(RasterInputs in, GeomState st, PixelState ps,
                                                            const int* point_list, const int* ranges,
                                                            float* out_color, float* out_depth, float* out_alpha) {
  const int b = blockIdx.z;
  const int tile = blockIdx.y * in.grid_x() + blockIdx.x;
  const int x = blockIdx.x * kTileX + threadIdx.x % kTileX;
  const int y = blockIdx.y * kTileY + threadIdx.x / kTileX;
  const bool inside = x < in.W && y < in.H;
  const int64_t job = (int64_t)b * in.tiles() + tile;
  const int lo = ranges[2 * job], hi = ranges[2 * job + 1];

  __shared__ SharedSplats sh;

  PixelAccum acc;
  pixel_begin(&acc);
  bool done = !inside;
  for (int base = lo; base < hi; base += kTileSize) {
    if (__syncthreads_count(done) == kTileSize) break;
    const int j = base + threadIdx.x;
    if (j < hi) sh.stage(st, threadIdx.x, point_list[j]);
    __syncthreads();
    const int n = min(kTileSize, hi - base);
    for (int k = 0; k < n && !done; ++k)
      done = !pixel_step(&acc, sh.splat[k], &sh.rgb[3 * k], sh.depth[k], (float)x, (float)y, base + k - lo);
  }
  if (inside) pixel_end(in, ps, acc, b, y * in.W + x, out_color, out_depth, out_alpha);
}

// Sum of v over the 32 lanes of the warp, valid in lane 0. Every lane of the warp must call it.
__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// One block per tile, walking the tile's list back to front. Two savings over a plain per-pixel loop (both
// as in gsplat): the walk starts at the block's last contributing entry (max n_contrib over its pixels), not
// at the end of the list; and the per-(pixel, splat) gradients are first summed over the warp with shuffles,
// so that one lane adds the warp's 10 sums with atomics instead of 32 lanes adding 10 values each. All lanes,
// including pixels outside the image, stay in the loop so that the shuffles see the whole warp.
__global__ void __launch_bounds__(kTileSize) render_backward_kernel(RasterInputs in, GeomState st, PixelState ps,
                                                                     const int* point_list, const int* ranges,
                                                                     RasterGrads gr) {
  const int b = blockIdx.z;
  const int tile = blockIdx.y * in.grid_x() + blockIdx.x;
  const int x = blockIdx.x * kTileX + threadIdx.x % kTileX;
  const int y = blockIdx.y * kTileY + threadIdx.x / kTileX;
  const bool inside = x < in.W && y < in.H;
  const int64_t job = (int64_t)b * in.tiles() + tile;
  const int lo = ranges[2 * job], hi = ranges[2 * job + 1];
  const int lane = threadIdx.x & 31;

  __shared__ SharedSplats sh;
  __shared__ int block_ncon;

  PixelBack pb;
  int ncon = 0;
  if (inside) {
    pixel_back_begin(in, ps, gr, b, y * in.W + x, &pb, gr.v_bg);
    ncon = ps.n_contrib[(size_t)b * in.H * in.W + y * in.W + x];
  }
  if (threadIdx.x == 0) block_ncon = 0;
  __syncthreads();
  atomicMax(&block_ncon, ncon);
  __syncthreads();
  const int end = min(hi, lo + block_ncon);  // entries past every pixel's last contributor are skipped

  // Walk the list back to front in batches.
  for (int top = end; top > lo; top -= kTileSize) {
    const int start = max(lo, top - kTileSize);
    __syncthreads();
    const int j = start + threadIdx.x;
    if (j < top) sh.stage(st, threadIdx.x, point_list[j]);
    __syncthreads();
    for (int k = top - start - 1; k >= 0; --k) {
      StepGrad sg;
      const bool hit = inside && start + k - lo < ncon &&
                       pixel_back_step(&pb, sh.splat[k], &sh.rgb[3 * k], sh.depth[k], (float)x, (float)y, &sg);
      if (!__any_sync(0xffffffffu, hit)) continue;
      float v[10] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      if (hit) {
        v[0] = sg.sg.mx;
        v[1] = sg.sg.my;
        v[2] = sg.sg.A;
        v[3] = sg.sg.B;
        v[4] = sg.sg.C;
        v[5] = sg.sg.o;
        v[6] = sg.rgb[0];
        v[7] = sg.rgb[1];
        v[8] = sg.rgb[2];
        v[9] = sg.depth;
      }
#pragma unroll
      for (int q = 0; q < 10; ++q) v[q] = warp_sum(v[q]);
      if (lane == 0) {
        const int64_t g = sh.id[k];
        atomicAdd(&gr.v_means2d_pix[2 * g], v[0]);
        atomicAdd(&gr.v_means2d_pix[2 * g + 1], v[1]);
        atomicAdd(&gr.v_conic[3 * g], v[2]);
        atomicAdd(&gr.v_conic[3 * g + 1], v[3]);
        atomicAdd(&gr.v_conic[3 * g + 2], v[4]);
        atomicAdd(&gr.v_opacity[g], v[5]);
        atomicAdd(&gr.v_rgb[3 * g], v[6]);
        atomicAdd(&gr.v_rgb[3 * g + 1], v[7]);
        atomicAdd(&gr.v_rgb[3 * g + 2], v[8]);
        atomicAdd(&gr.v_depths[g], v[9]);
      }
    }
  }
}

__global__ void preprocess_backward_kernel(RasterInputs in, GeomState st, RasterGrads gr) {
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g < (int64_t)in.B * in.N) preprocess_backward_instance(in, st, gr, g);
}

int bits_needed(uint64_t v) {
  int n = 0;
  while (v > 0) {
    ++n;
    v >>= 1;
  }
  return n;
}

}  // namespace

at::Tensor rasterize_fwd_cuda(const RasterInputs& in, const GeomState& st, const PixelState& ps, int* ranges,
                                 float* out_color, float* out_depth, float* out_alpha) {
  auto stream = at::cuda::getCurrentCUDAStream();
  auto opts = at::TensorOptions().device(at::kCUDA, at::cuda::current_device());
  const int64_t total = (int64_t)in.B * in.N;
  if (total > 0) {
    preprocess_kernel<<<blocks_for(total), kThreads, 0, stream>>>(in, st);
    check_stage(in, stream, "preprocess");
  }

  // Offsets of each instance's tile entries: inclusive scan of tiles_touched (64-bit).
  at::Tensor touched = at::from_blob(st.tiles_touched, {total}, opts.dtype(at::kInt)).to(at::kLong);
  at::Tensor offsets = total > 0 ? at::cumsum(touched, 0) : touched;
  const int64_t P = total > 0 ? offsets[total - 1].item<int64_t>() : 0;
  // point_list entries and tile ranges are int32.
  TORCH_CHECK_VALUE(P <= INT32_MAX, "the rasterizer's tile lists would have ", P,
                    " entries, more than the 2^31 - 1 it can index; render fewer Gaussians or cameras per call");
  at::Tensor point_list = at::empty({P}, opts.dtype(at::kInt));
  if (P > 0) {
    at::Tensor keys = at::empty({P}, opts.dtype(at::kLong));
    at::Tensor keys_sorted = at::empty({P}, opts.dtype(at::kLong));
    at::Tensor values = at::empty({P}, opts.dtype(at::kInt));
    auto* k_in = reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>());
    auto* k_out = reinterpret_cast<uint64_t*>(keys_sorted.data_ptr<int64_t>());
    duplicate_kernel<<<blocks_for(total), kThreads, 0, stream>>>(in, st, offsets.data_ptr<int64_t>(), k_in,
                                                                  values.data_ptr<int>());
    check_stage(in, stream, "duplicate (tile keys)");
    const int end_bit = 32 + bits_needed((uint64_t)in.B * in.tiles());
    size_t temp_bytes = 0;
    check_cub(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, k_in, k_out, values.data_ptr<int>(),
                                                  point_list.data_ptr<int>(), (int)P, 0, end_bit, stream),
              "sort (temporary storage size)");
    at::Tensor temp = at::empty({(int64_t)temp_bytes}, opts.dtype(at::kByte));
    check_cub(cub::DeviceRadixSort::SortPairs(temp.data_ptr(), temp_bytes, k_in, k_out, values.data_ptr<int>(),
                                                  point_list.data_ptr<int>(), (int)P, 0, end_bit, stream),
              "sort");
    check_stage(in, stream, "sort");
    tile_ranges_kernel<<<blocks_for(P), kThreads, 0, stream>>>(k_out, P, ranges);
    check_stage(in, stream, "tile ranges");
  }
  if (in.B > 0) {
    dim3 grid(in.grid_x(), in.grid_y(), in.B);
    render_kernel<<<grid, kTileSize, 0, stream>>>(in, st, ps, point_list.data_ptr<int>(), ranges, out_color,
                                                   out_depth, out_alpha);
    check_stage(in, stream, "render");
  }
  return point_list;
}

void rasterize_bwd_cuda(const RasterInputs& in, const GeomState& st, const PixelState& ps, const int* point_list,
                        const int* ranges, const RasterGrads& gr) {
  auto stream = at::cuda::getCurrentCUDAStream();
  if (in.B > 0) {
    dim3 grid(in.grid_x(), in.grid_y(), in.B);
    render_backward_kernel<<<grid, kTileSize, 0, stream>>>(in, st, ps, point_list, ranges, gr);
    check_stage(in, stream, "render backward");
  }
  const int64_t total = (int64_t)in.B * in.N;
  if (total > 0) {
    preprocess_backward_kernel<<<blocks_for(total), kThreads, 0, stream>>>(in, st, gr);
    check_stage(in, stream, "preprocess backward");
  }
}

}  // namespace gt

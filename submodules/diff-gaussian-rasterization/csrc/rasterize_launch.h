// Launchers of the two backends. Pointers in the structs are on the backend's device; `ranges` is
// [B * tiles, 2] int32. The forward returns the tile-sorted instance list (int32 [P]).
#pragma once

// Only the light ATen headers: torch/extension.h costs minutes of host compilation in every .cu file.
#include <ATen/core/Tensor.h>

#include "rasterize.h"

namespace gt {

at::Tensor rasterize_fwd_cpu(const RasterInputs& in, const GeomState& st, const PixelState& ps, int* ranges,
                                float* out_color, float* out_depth, float* out_alpha);
void rasterize_bwd_cpu(const RasterInputs& in, const GeomState& st, const PixelState& ps, const int* point_list,
                       const int* ranges, const RasterGrads& gr);

#ifdef WITH_CUDA
at::Tensor rasterize_fwd_cuda(const RasterInputs& in, const GeomState& st, const PixelState& ps, int* ranges,
                                 float* out_color, float* out_depth, float* out_alpha);
void rasterize_bwd_cuda(const RasterInputs& in, const GeomState& st, const PixelState& ps, const int* point_list,
                        const int* ranges, const RasterGrads& gr);
#endif

}  // namespace gt

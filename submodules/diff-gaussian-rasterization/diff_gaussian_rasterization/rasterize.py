"""The native rasterizer: autograd glue over the compiled CPU/CUDA kernels, and the 3DGS-style module."""

from __future__ import annotations

from typing import Optional

import torch

from ._backend import load_extension
from ._types import Batch, GaussianRasterizationSettings, RasterizeResult, normalize_inputs, unbatch

_PKG = "diff_gaussian_rasterization"


def pack_cameras(viewmatrix: torch.Tensor, projmatrix: torch.Tensor, campos: torch.Tensor,
                 tanfov: torch.Tensor) -> torch.Tensor:
    """Pack B cameras into the kernels' ``[B, 37]`` rows: view (16), proj (16), campos (3), tanfovx, tanfovy.

    viewmatrix, projmatrix: ``[B, 4, 4]`` row-vector form; campos ``[B, 3]``; tanfov ``[B, 2]``.
    """
    B = viewmatrix.shape[0]
    return torch.cat(
        [viewmatrix.reshape(B, 16), projmatrix.reshape(B, 16), campos.reshape(B, 3), tanfov.reshape(B, 2)], dim=1
    ).to(torch.float32).contiguous()


def _f32(t: Optional[torch.Tensor], name: str, device: torch.device) -> torch.Tensor:
    if t is None:
        return torch.empty(0, dtype=torch.float32, device=device)
    if t.dtype != torch.float32:
        raise ValueError(f"{name} must be float32 for the native rasterizer, got {t.dtype} "
                         "(the pure-PyTorch reference `_rasterize_reference` accepts float64)")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but means3D is on {device}")
    return t.contiguous()


class _RasterizeGaussians(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means3D, means2D, shs, colors, opacities, scales, rotations, cov3D, bg, cams, H, W,
                sh_degree, scale_modifier, prefiltered, debug):
        ext = load_extension(_PKG)
        color, depth, alpha, radii, state = ext.rasterize_fwd(
            means3D, shs, colors, opacities, scales, rotations, cov3D, bg, cams, H, W, sh_degree,
            scale_modifier, prefiltered, debug)
        ctx.config = (sh_degree, scale_modifier, prefiltered, debug, len(state))
        ctx.save_for_backward(means3D, shs, colors, opacities, scales, rotations, cov3D, bg, cams, radii, *state)
        ctx.mark_non_differentiable(radii)
        return color, depth, alpha, radii

    @staticmethod
    def backward(ctx, v_color, v_depth, v_alpha, _v_radii):
        sh_degree, scale_modifier, prefiltered, debug, n_state = ctx.config
        saved = ctx.saved_tensors
        means3D, shs, colors, opacities, scales, rotations, cov3D, bg, cams, radii = saved[:10]
        state = list(saved[10:10 + n_state])

        def grad(t):
            return torch.zeros_like(t) if t is None else t.contiguous()

        ext = load_extension(_PKG)
        (v_means3D, v_means2D, v_shs, v_colors, v_opac, v_scales, v_rot, v_cov, v_bg) = ext.rasterize_bwd(
            means3D, shs, colors, opacities, scales, rotations, cov3D, bg, cams, sh_degree, scale_modifier,
            prefiltered, debug, radii, state, grad(v_color) if v_color is not None else torch.zeros_like(bg),
            grad(v_depth) if v_depth is not None else bg.new_zeros(bg.shape[0], 1, *bg.shape[2:]),
            grad(v_alpha) if v_alpha is not None else bg.new_zeros(bg.shape[0], 1, *bg.shape[2:]))

        def opt(g, needed):
            return g if needed and g.numel() > 0 else None

        need = ctx.needs_input_grad
        return (opt(v_means3D, need[0]), opt(v_means2D, need[1]), opt(v_shs, need[2]), opt(v_colors, need[3]),
                opt(v_opac, need[4]), opt(v_scales, need[5]), opt(v_rot, need[6]), opt(v_cov, need[7]),
                opt(v_bg, need[8]), None, None, None, None, None, None, None)


def _shared(t: Optional[torch.Tensor], given: Optional[torch.Tensor], B: int) -> Optional[torch.Tensor]:
    """An attribute shared by the B cameras (a [B, N, ...] view with a zero batch stride) as its [N, ...] set:
    the kernels read it for every camera instead of a B-fold copy, and return its gradient summed over them.
    The caller's own [N, ...] tensor is passed when there is one (so autograd adds no select / expand pair)."""
    if t is None or B == 1 or t.dim() < 2 or t.stride(0) != 0:
        return t
    return given if given is not None and given.dim() == t.dim() - 1 else t[0]


def _run_native(b: Batch, settings: GaussianRasterizationSettings, given: dict) -> RasterizeResult:
    """``given``: the caller's attribute tensors by Batch field name, before batching."""
    dev = b.means3D.device
    cams = pack_cameras(b.viewmatrix, b.projmatrix, b.campos, b.tanfov)
    # means2D only carries the screen-space gradient out; its value is not used (as in 3DGS).
    means2D = b.means2D if b.means2D is not None else torch.zeros(b.B, b.N, 3, device=dev)

    def attr(name, label):
        return _f32(_shared(getattr(b, name), given.get(name), b.B), label, dev)

    color, depth, alpha, radii = _RasterizeGaussians.apply(
        attr("means3D", "means3D"), _f32(means2D, "means2D", dev), attr("shs", "shs"),
        attr("colors", "colors_precomp"), attr("opacities", "opacities"), attr("scales", "scales"),
        attr("rotations", "rotations"), attr("cov3D", "cov3D_precomp"), _f32(b.bg, "bg", dev),
        cams.to(dev), int(settings.image_height), int(settings.image_width),
        int(settings.sh_degree) if b.shs is not None else 0, float(settings.scale_modifier),
        bool(settings.prefiltered), bool(settings.debug))
    return RasterizeResult(color, radii, depth, alpha)


def rasterize_gaussians(
    settings: GaussianRasterizationSettings,
    means3D: torch.Tensor,
    opacities: torch.Tensor,
    means2D: Optional[torch.Tensor] = None,
    shs: Optional[torch.Tensor] = None,
    colors_precomp: Optional[torch.Tensor] = None,
    scales: Optional[torch.Tensor] = None,
    rotations: Optional[torch.Tensor] = None,
    cov3D_precomp: Optional[torch.Tensor] = None,
) -> RasterizeResult:
    """Render Gaussians with the compiled kernels (CPU or CUDA, following the tensors' device).

    Single camera: attributes ``[N, ...]``, outputs ``color [3,H,W]``, ``radii [N]``, ``depth [1,H,W]``,
    ``alpha [1,H,W]``. Batch (``settings.viewmatrix`` is ``[B,4,4]``): attributes ``[B,N,...]`` (one set
    per camera, e.g. the deformed Gaussians of B frames) or ``[N,...]`` (shared), outputs with a leading B;
    equal to B single calls. Shapes: means3D ``[N,3]``, opacities ``[N,1]`` (activated), shs ``[N,K,3]`` or
    colors_precomp ``[N,3]``, scales ``[N,3]`` (activated) and rotations ``[N,4]`` (w,x,y,z) or
    cov3D_precomp ``[N,6]``. ``means2D [N,3]`` receives dL/d(NDC mean) in ``.grad[..., :2]``.
    Gradients reach every tensor input from color, depth and alpha. Raises ValueError on bad shapes.
    """
    b = normalize_inputs(settings, means3D, means2D, opacities, shs, colors_precomp, scales, rotations,
                         cov3D_precomp)
    given = {"means3D": means3D, "opacities": opacities, "shs": shs, "colors": colors_precomp, "scales": scales,
             "rotations": rotations, "cov3D": cov3D_precomp}
    return unbatch(_run_native(b, settings, given), b.batched)


class GaussianRasterizer(torch.nn.Module):
    """3DGS-compatible module: ``GaussianRasterizer(settings)(means3D, means2D, opacities, shs=...)``."""

    def __init__(self, raster_settings: GaussianRasterizationSettings):
        super().__init__()
        self.raster_settings = raster_settings

    def markVisible(self, positions: torch.Tensor) -> torch.Tensor:  # noqa: N802 (3DGS API name)
        """Boolean ``[N]``: view-space z > 0.2 for the (single) camera of the settings."""
        with torch.no_grad():
            view = self.raster_settings.viewmatrix
            if view.dim() != 2:
                raise ValueError("markVisible needs a single [4, 4] camera")
            return load_extension(_PKG).mark_visible(positions, view)

    def forward(self, means3D, means2D, opacities, shs=None, colors_precomp=None, scales=None, rotations=None,
                cov3D_precomp=None) -> RasterizeResult:
        return rasterize_gaussians(self.raster_settings, means3D, opacities, means2D=means2D, shs=shs,
                                   colors_precomp=colors_precomp, scales=scales, rotations=rotations,
                                   cov3D_precomp=cov3D_precomp)

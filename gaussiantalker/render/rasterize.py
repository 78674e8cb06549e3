"""One batched rasterizer call for B frames of deformed Gaussians."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..camera import CameraMatrices
from ..model.types import GaussianBatch

Tensor = torch.Tensor


@dataclass
class RenderOutput:
    """What :func:`render_batch` returns."""

    image: Tensor  # [B, 3, H, W] composited over the background (not clamped)
    depth: Tensor  # [B, 1, H, W] alpha-weighted view-space z (not normalised)
    alpha: Tensor  # [B, 1, H, W] accumulated opacity
    radii: Tensor  # [B, N] int32 screen radii in pixels, 0 = not drawn
    means2d: Tensor | None  # [B, N, 3] leaf whose .grad[..., :2] is dL/d(NDC mean) after backward; None without grad


def _batched_cameras(cameras: CameraMatrices, device: torch.device) -> tuple:
    view = cameras.world_view_transform
    if view.ndim == 2:
        view, full, center = view[None], cameras.full_proj_transform[None], cameras.camera_center[None]
    else:
        full, center = cameras.full_proj_transform, cameras.camera_center
    b = view.shape[0]

    def per_cam(v) -> Tensor:
        t = torch.as_tensor(v, dtype=torch.float32)
        return (t.expand(b) if t.ndim == 0 else t).to(device, torch.float32).contiguous()

    return (view.to(device, torch.float32).contiguous(), full.to(device, torch.float32).contiguous(),
            center.to(device, torch.float32).contiguous(), per_cam(cameras.tanfovx), per_cam(cameras.tanfovy))


def render_batch(g: GaussianBatch, cameras: CameraMatrices, background: Tensor) -> RenderOutput:
    """Render B sets of Gaussians through B cameras over B background images, in one rasterizer call.

    Args:
        g: B sets of N activated Gaussians (``means [B, N, 3]`` ...); ``B == 1`` is broadcast to B cameras.
        cameras: B cameras (``CameraMatrices`` of ``gaussiantalker.camera``), any dtype/device.
        background: ``[B, 3, H, W]`` per-pixel background (H, W = the cameras' size).
    Returns:
        :class:`RenderOutput`. Gradients reach every Gaussian attribute from image, depth and alpha.
    Raises:
        ValueError: on mismatched batch sizes or image sizes, or non-finite means.
    """
    from diff_gaussian_rasterization import (
        GaussianRasterizationSettings,
        rasterize_gaussians,
    )

    device = g.means.device
    view, full, center, tanx, tany = _batched_cameras(cameras, device)
    b, h, w = view.shape[0], int(cameras.height), int(cameras.width)
    if background.ndim != 4 or tuple(background.shape) != (b, 3, h, w):
        raise ValueError(f"background must have shape [{b}, 3, {h}, {w}], got {tuple(background.shape)}")
    if g.batch_size not in (1, b):
        raise ValueError(f"the Gaussians have batch size {g.batch_size} but there are {b} cameras")

    if not bool(torch.isfinite(g.means).all()):
        raise ValueError("the Gaussian means are not finite (NaN or inf); the rasterizer needs finite positions")

    def per_cam(t: Tensor) -> Tensor:
        return t.expand(b, *t.shape[1:]) if t.shape[0] != b else t

    settings = GaussianRasterizationSettings(
        image_height=h, image_width=w, tanfovx=tanx, tanfovy=tany,
        bg=background.to(device, torch.float32).contiguous(), scale_modifier=1.0, viewmatrix=view,
        projmatrix=full, sh_degree=int(g.sh_degree), campos=center, prefiltered=False, debug=False)
    means2d = None
    if torch.is_grad_enabled():
        means2d = torch.zeros(b, g.num_points, 3, device=device, requires_grad=True)
    out = rasterize_gaussians(
        settings, per_cam(g.means), per_cam(g.opacities), means2D=means2d, shs=per_cam(g.shs),
        scales=per_cam(g.scales), rotations=per_cam(g.rotations))
    return RenderOutput(image=out.color, depth=out.depth, alpha=out.alpha, radii=out.radii, means2d=means2d)


__all__ = ["RenderOutput", "composite_upsampled", "render_batch"]


def composite_upsampled(color: Tensor, alpha: Tensor, background: Tensor) -> tuple[Tensor, Tensor]:
    """A head rendered small over a zero background, brought to the background's size and composited on it.

    Args:
        color: ``[B, 3, h, w]`` premultiplied colour (a render over a zero background).
        alpha: ``[B, 1, h, w]`` its accumulated opacity.
        background: ``[B, 3, H, W]`` (H >= h, W >= w).
    Returns:
        ``(image [B, 3, H, W], alpha [B, 1, H, W])``: ``color' + (1 - alpha') background`` where ``color'`` and
        ``alpha'`` are bicubically upsampled (sharper than bilinear; overshoot clamped to [0, alpha']).
    """
    import torch.nn.functional as F

    size = tuple(background.shape[-2:])
    a = F.interpolate(alpha, size=size, mode="bicubic", align_corners=False).clamp(0.0, 1.0)
    c = F.interpolate(color, size=size, mode="bicubic", align_corners=False)
    c = torch.minimum(c.clamp_min(0.0), a)  # premultiplied: no channel above its alpha
    return c + (1.0 - a) * background, a

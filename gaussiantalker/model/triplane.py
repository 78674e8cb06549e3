"""The multi-resolution tri-plane of the canonical Gaussians (reference §5.1) and its regularisers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

# Axis pairs of the three planes; the first coordinate of a pair indexes the plane's width.
_PAIRS = ((0, 1), (0, 2), (1, 2))


class TriPlane(nn.Module):
    """Three feature planes per scale, multiplied per point and concatenated over scales.

    ``forward(xyz [N, 3]) -> [N, channels * len(multires)]``. Points are normalised into the box
    ``aabb`` (a ``[2, 3]`` buffer: min, max) and sampled bilinearly (``align_corners=True``, border
    padding), so points outside the box read the border features.
    """

    def __init__(self, channels: int, resolution: Sequence[int], multires: Sequence[int]) -> None:
        super().__init__()
        self.channels = int(channels)
        self.register_buffer("aabb", torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
        self.grids = nn.ModuleList()
        for m in multires:
            planes = nn.ParameterList()
            for i, j in _PAIRS:
                plane = torch.empty(1, self.channels, int(resolution[j]) * m, int(resolution[i]) * m)
                nn.init.uniform_(plane, 0.1, 0.5)
                planes.append(nn.Parameter(plane))
            self.grids.append(planes)

    @property
    def out_dim(self) -> int:
        return self.channels * len(self.grids)

    def set_aabb(self, xyz: Tensor) -> None:
        """Set the box to the bounding box of ``xyz [N, 3]``."""
        with torch.no_grad():
            self.aabb[0].copy_(xyz.min(0).values)
            self.aabb[1].copy_(xyz.max(0).values)

    def planes(self) -> list[Tensor]:
        """Every plane of every scale (``[1, C, H, W]``)."""
        return [p for planes in self.grids for p in planes]

    def time_planes(self) -> list[Tensor]:
        """Planes with a time axis: none in a 3-D tri-plane (the K-planes time regularisers act on these)."""
        return []

    def forward(self, xyz: Tensor) -> Tensor:
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f"xyz must have shape [N, 3], got {tuple(xyz.shape)}")
        # NaN coordinates make grid_sample's CPU backward crash the process (PyTorch): the trainer checks
        # that the Gaussians are finite before every backward.
        lo, hi = self.aabb[0], self.aabb[1]
        p = (xyz - lo) * 2.0 / (hi - lo).clamp_min(1e-6) - 1.0  # [N, 3] in [-1, 1] inside the box
        feats = []
        for planes in self.grids:
            f = None
            for plane, (i, j) in zip(planes, _PAIRS):
                coords = p[:, [i, j]].view(1, -1, 1, 2)
                s = F.grid_sample(plane, coords, mode="bilinear", padding_mode="border", align_corners=True)
                s = s.view(self.channels, -1).t()  # [N, C]
                f = s if f is None else f * s
            feats.append(f)
        return torch.cat(feats, dim=-1)


def plane_tv(planes: Sequence[Tensor]) -> Tensor:
    """Total variation of feature planes (the K-planes form: ``2 (mean dh² + mean dw²)``, summed over planes)."""
    total = planes[0].new_zeros(())
    for t in planes:
        h, w = t.shape[-2:]
        tv_h = (t[..., 1:, :] - t[..., : h - 1, :]).square().mean()
        tv_w = (t[..., :, 1:] - t[..., :, : w - 1]).square().mean()
        total = total + 2.0 * (tv_h + tv_w)
    return total


def time_smoothness(time_planes: Sequence[Tensor], like: Tensor) -> Tensor:
    """Second-difference smoothness along the time axis (the planes' height) of time planes (K-planes)."""
    total = like.new_zeros(())
    for t in time_planes:
        h = t.shape[-2]
        d1 = t[..., 1:, :] - t[..., : h - 1, :]
        total = total + (d1[..., 1:, :] - d1[..., :-1, :]).square().mean()
    return total


def l1_time_planes(time_planes: Sequence[Tensor], like: Tensor) -> Tensor:
    """L1 pull of time planes towards 1 (their neutral value for the multiplicative fusion)."""
    total = like.new_zeros(())
    for t in time_planes:
        total = total + (1.0 - t).abs().mean()
    return total


__all__ = ["TriPlane", "l1_time_planes", "plane_tv", "time_smoothness"]

"""Random Gaussian scenes and cameras shared by the rasterizer tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from diff_gaussian_rasterization import look_at, make_settings


@dataclass
class Scene:
    means3D: torch.Tensor  # [N, 3]
    opacities: torch.Tensor  # [N, 1]
    scales: torch.Tensor  # [N, 3]
    rotations: torch.Tensor  # [N, 4]
    shs: torch.Tensor  # [N, 16, 3]
    colors: torch.Tensor  # [N, 3]


def random_scene(n: int, seed: int = 0, spread: float = 1.0, scale_range=(0.01, 0.15),
                 opacity_range=(0.05, 0.99)) -> Scene:
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) * 2 - 1) * spread
    lo, hi = scale_range
    scales = torch.exp(torch.empty(n, 3).uniform_(torch.log(torch.tensor(lo)).item(), torch.log(torch.tensor(hi)).item(), generator=g))
    q = torch.randn(n, 4, generator=g)
    q = q / q.norm(dim=-1, keepdim=True)
    o = torch.empty(n, 1).uniform_(*opacity_range, generator=g)
    shs = torch.randn(n, 16, 3, generator=g) * 0.3
    colors = torch.rand(n, 3, generator=g)
    return Scene(means, o, scales, q, shs, colors)


def head_scene(n: int, seed: int = 0) -> Scene:
    """Gaussians on an ellipsoidal 'head' surface with kNN-like scales: a realistic benchmark load."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    means = d * torch.tensor([0.8, 1.0, 0.9]) + 0.01 * torch.randn(n, 3, generator=g)
    area = 4 * 3.14159 * 0.9 ** 2
    s = (area / n) ** 0.5  # mean spacing on the surface
    scales = s * torch.exp(0.3 * torch.randn(n, 3, generator=g))
    q = torch.randn(n, 4, generator=g)
    q = q / q.norm(dim=-1, keepdim=True)
    o = torch.sigmoid(torch.randn(n, 1, generator=g))
    shs = torch.randn(n, 16, 3, generator=g) * 0.2
    colors = torch.rand(n, 3, generator=g)
    return Scene(means, o, scales, q, shs, colors)


def camera(H: int, W: int, eye=(0.0, 0.0, -3.0), target=(0.0, 0.0, 0.0), fovx_deg: float = 50.0,
           bg: Optional[torch.Tensor] = None, sh_degree: int = 3, dtype=torch.float32):
    tanx = float(torch.tan(torch.deg2rad(torch.tensor(fovx_deg / 2))))
    tany = tanx * H / W
    w2c = look_at(eye, target, dtype=dtype)
    return make_settings(w2c, tanx, tany, H, W, bg=bg if bg is not None else torch.tensor([0.1, 0.2, 0.3], dtype=dtype),
                         sh_degree=sh_degree)


def batch_cameras(B: int, H: int, W: int, seed: int = 0, bg=None, sh_degree: int = 3, fovx_deg: float = 50.0):
    g = torch.Generator().manual_seed(seed)
    w2cs = []
    for _ in range(B):
        eye = torch.tensor([0.0, 0.0, -3.0]) + 0.5 * torch.randn(3, generator=g)
        w2cs.append(look_at(eye.tolist(), (0.0, 0.0, 0.0)))
    tanx = float(torch.tan(torch.deg2rad(torch.tensor(fovx_deg / 2))))
    return make_settings(torch.stack(w2cs), tanx, tanx * H / W, H, W,
                         bg=bg if bg is not None else torch.tensor([0.1, 0.2, 0.3]), sh_degree=sh_degree)

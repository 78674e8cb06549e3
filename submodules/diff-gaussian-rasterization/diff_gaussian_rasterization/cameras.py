"""Building rasterizer settings from an ordinary world-to-camera matrix (camera looks along +z, x right,
y down; the OpenCV / 3DGS convention)."""

from __future__ import annotations

from typing import Optional

import torch

from ._types import GaussianRasterizationSettings


def projection_matrix(tanfovx: float, tanfovy: float, znear: float = 0.01, zfar: float = 100.0,
                      dtype=torch.float32, device=None) -> torch.Tensor:
    """The 3DGS perspective matrix P ([4, 4], column-vector form): P[0,0] = 1/tanx, P[1,1] = 1/tany,
    P[2,2] = f/(f-n), P[2,3] = -f n/(f-n), P[3,2] = 1."""
    P = torch.zeros(4, 4, dtype=dtype, device=device)
    P[0, 0] = 1.0 / tanfovx
    P[1, 1] = 1.0 / tanfovy
    P[2, 2] = zfar / (zfar - znear)
    P[2, 3] = -(zfar * znear) / (zfar - znear)
    P[3, 2] = 1.0
    return P


def make_settings(w2c: torch.Tensor, tanfovx: float, tanfovy: float, image_height: int, image_width: int,
                  bg: Optional[torch.Tensor] = None, sh_degree: int = 0, znear: float = 0.01,
                  zfar: float = 100.0) -> GaussianRasterizationSettings:
    """Settings for one camera (``w2c [4, 4]``) or a batch (``w2c [B, 4, 4]``), column-vector form in,
    row-vector matrices out (``viewmatrix = W2C^T``, ``projmatrix = W2C^T P^T``). ``bg`` defaults to black."""
    if w2c.shape[-2:] != (4, 4) or w2c.dim() not in (2, 3):
        raise ValueError(f"w2c must have shape [4, 4] or [B, 4, 4], got {tuple(w2c.shape)}")
    P = projection_matrix(tanfovx, tanfovy, znear, zfar, dtype=w2c.dtype, device=w2c.device)
    view = w2c.transpose(-1, -2)
    proj = view @ P.transpose(0, 1)
    campos = torch.linalg.inv(w2c)[..., :3, 3]
    if bg is None:
        bg = torch.zeros(3, dtype=w2c.dtype, device=w2c.device)
    return GaussianRasterizationSettings(
        image_height=int(image_height), image_width=int(image_width), tanfovx=float(tanfovx),
        tanfovy=float(tanfovy), bg=bg, scale_modifier=1.0, viewmatrix=view.contiguous(),
        projmatrix=proj.contiguous(), sh_degree=int(sh_degree), campos=campos.contiguous(), prefiltered=False,
        debug=False)


def look_at(eye, target, up=(0.0, -1.0, 0.0), dtype=torch.float32) -> torch.Tensor:
    """World-to-camera [4, 4] of a camera at ``eye`` looking at ``target`` (+z forward, y down)."""
    eye = torch.as_tensor(eye, dtype=dtype)
    z = torch.as_tensor(target, dtype=dtype) - eye
    z = z / z.norm()
    x = torch.linalg.cross(torch.as_tensor(up, dtype=dtype), z)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])  # rows: camera axes in world coordinates
    w2c = torch.eye(4, dtype=dtype)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ eye
    return w2c

"""Cameras from tracked head poses: the one place where the tracker's pose convention meets the
rasterizer's matrices.

Conventions (``docs/camera.md`` has the full derivation):

* Head pose (tracker, reference §2.8): ``X' = Rot(euler) @ X + trans`` with
  ``Rot(θ, φ, ψ) = Rx(θ) @ Ry(φ) @ Rz(ψ)`` (the original's matrices, see :func:`rotation_from_euler`),
  camera looking down ``-Z`` with ``Y`` up; pixel ``u = -f·X'/Z' + cx``, ``v = f·Y'/Z' + cy``.
* ``transform_matrix`` in ``transforms_*.json`` (ER-NeRF convention): camera-to-world in the OpenGL
  camera convention (x right, y up, looking along -z), ``[Rotᵀ | -Rotᵀ·trans·s]`` with
  ``s = TRANSFORMS_SCALE = 0.1``. The world frame is the canonical head frame, in *scene units* =
  tracker units × 0.1 (metres for the BFM: its units are 10 cm). ``points3d.ply`` uses scene units too.
* Rasterizer (3DGS): row-vector matrices, ``viewmatrix = W2Cᵀ`` with an OpenCV camera (x right,
  y down, looking along +z), ``projmatrix = W2Cᵀ @ Pᵀ``.
* Pixel coordinates: the centre of pixel (i, j) is at (i, j). The principal point ``(cx, cy)`` is
  honoured exactly (``P[0, 2]``, ``P[1, 2]``), so a canonical point lands on the same pixel in the
  rasterizer as in the tracker's projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

Tensor = torch.Tensor

#: Scale from tracker units to scene units used in ``transform_matrix`` (ER-NeRF's ``trans / 10``).
TRANSFORMS_SCALE = 0.1
#: Near and far planes of the rasterizer's projection (reference §3.2).
ZNEAR = 0.01
ZFAR = 100.0

# OpenGL camera (y up, looking along -z) <-> OpenCV camera (y down, looking along +z).
_GL_TO_CV = (1.0, -1.0, -1.0)


def rotation_from_euler(euler: Tensor) -> Tensor:
    """Rotation matrices of the tracker's Euler angles (reference §2.8).

    ``Rot = Rx(θ) @ Ry(φ) @ Rz(ψ)`` with ``Rx = [[1,0,0],[0,cθ,sθ],[0,-sθ,cθ]]``,
    ``Ry = [[cφ,0,-sφ],[0,1,0],[sφ,0,cφ]]``, ``Rz = [[cψ,-sψ,0],[sψ,cψ,0],[0,0,1]]``.

    Args:
        euler: ``[..., 3]`` angles (θ, φ, ψ) in radians.
    Returns:
        ``[..., 3, 3]`` rotation matrices, same dtype/device.
    """
    if euler.shape[-1:] != (3,):
        raise ValueError(f"euler must have shape [..., 3], got {tuple(euler.shape)}")
    c, s = torch.cos(euler), torch.sin(euler)
    ct, cp, cs_ = c.unbind(-1)
    st, sp, ss = s.unbind(-1)
    # Product Rx @ Ry @ Rz written out (see docs/camera.md).
    rows = [
        torch.stack([cp * cs_, -cp * ss, -sp], -1),
        torch.stack([ct * ss + st * sp * cs_, ct * cs_ - st * sp * ss, st * cp], -1),
        torch.stack([-st * ss + ct * sp * cs_, -st * cs_ - ct * sp * ss, ct * cp], -1),
    ]
    return torch.stack(rows, -2)


def euler_from_rotation(rot: Tensor) -> Tensor:
    """Inverse of :func:`rotation_from_euler` (φ in [-π/2, π/2]).

    Args:
        rot: ``[..., 3, 3]`` rotation matrices.
    Returns:
        ``[..., 3]`` angles (θ, φ, ψ) in radians.
    """
    if rot.shape[-2:] != (3, 3):
        raise ValueError(f"rot must have shape [..., 3, 3], got {tuple(rot.shape)}")
    phi = torch.asin((-rot[..., 0, 2]).clamp(-1.0, 1.0))
    theta = torch.atan2(rot[..., 1, 2], rot[..., 2, 2])
    psi = torch.atan2(-rot[..., 0, 1], rot[..., 0, 0])
    return torch.stack([theta, phi, psi], -1)


def c2w_from_pose(euler: Tensor, trans: Tensor, scale: float = TRANSFORMS_SCALE) -> Tensor:
    """ER-NeRF ``transform_matrix`` (camera-to-world, OpenGL camera) of tracked head poses.

    Args:
        euler: ``[F, 3]`` (or ``[3]``) tracker angles in radians.
        trans: ``[F, 3]`` (or ``[3]``) tracker translations in tracker units.
        scale: tracker units -> scene units (0.1, as ER-NeRF's ``trans / 10``).
    Returns:
        ``[F, 4, 4]`` (or ``[4, 4]``) matrices ``[[Rotᵀ, -Rotᵀ·trans·scale], [0, 0, 0, 1]]``.
    """
    if euler.shape[-1:] != (3,) or trans.shape != euler.shape:
        raise ValueError(
            f"euler and trans must both have shape [F, 3]; got {tuple(euler.shape)} and {tuple(trans.shape)}"
        )
    rot_t = rotation_from_euler(euler).transpose(-1, -2)
    out = torch.zeros(euler.shape[:-1] + (4, 4), dtype=euler.dtype, device=euler.device)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ (trans * scale).unsqueeze(-1)).squeeze(-1)
    out[..., 3, 3] = 1.0
    return out


@dataclass(frozen=True)
class CameraMatrices:
    """What the rasterizer needs for one camera or a batch of B cameras (row-vector 3DGS form).

    Unbatched inputs give ``[4, 4]`` / ``[3]`` tensors and Python floats for the tangents.
    """

    world_view_transform: Tensor  # [B, 4, 4] = W2Cᵀ (OpenCV camera), the rasterizer's viewmatrix
    projection_matrix: Tensor  # [B, 4, 4] = Pᵀ
    full_proj_transform: Tensor  # [B, 4, 4] = W2Cᵀ @ Pᵀ, the rasterizer's projmatrix
    camera_center: Tensor  # [B, 3] camera position in the world (canonical head) frame
    tanfovx: Union[float, Tensor]  # [B] tan(FoVx / 2) = W / (2 f)
    tanfovy: Union[float, Tensor]  # [B] tan(FoVy / 2) = H / (2 f)
    width: int
    height: int
    w2c: Tensor  # [B, 4, 4] world-to-camera, column-vector, OpenCV camera (x right, y down, z forward)


def _as_batch(value, batch: int, ref: Tensor, name: str) -> Tensor:
    t = torch.as_tensor(value, dtype=ref.dtype, device=ref.device)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"{name} must be a scalar or have shape [{batch}], got {tuple(t.shape)}")
    return t


def projection_matrix(
    focal, width: int, height: int, cx=None, cy=None, znear: float = ZNEAR, zfar: float = ZFAR,
    dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None,
) -> Tensor:
    """Perspective matrix ``P`` (column-vector form) of the 3DGS rasterizer, with the principal point.

    ``P[0,0] = 1/tan_x``, ``P[1,1] = 1/tan_y``, ``P[2,2] = zfar/(zfar-znear)``,
    ``P[2,3] = -zfar·znear/(zfar-znear)``, ``P[3,2] = 1`` and ``P[0,2] = (2cx - W + 1)/W``,
    ``P[1,2] = (2cy - H + 1)/H`` so that ``pixel = f·x/z + cx`` with the rasterizer's
    ``pixel = ((ndc + 1)·W - 1)/2``. ``cx``/``cy`` default to ``W/2``/``H/2`` (the transforms JSON).

    Args:
        focal: focal length in pixels, scalar or ``[B]``.
    Returns:
        ``[4, 4]`` for a scalar focal, else ``[B, 4, 4]``.
    """
    f = torch.as_tensor(focal, dtype=dtype, device=device)
    batched = f.ndim == 1
    f = f.reshape(-1)
    b = f.shape[0]
    cx_t = _as_batch(width / 2.0 if cx is None else cx, b, f, "cx")
    cy_t = _as_batch(height / 2.0 if cy is None else cy, b, f, "cy")
    p = torch.zeros(b, 4, 4, dtype=dtype, device=f.device)
    p[:, 0, 0] = 2.0 * f / width  # 1 / tan_x
    p[:, 1, 1] = 2.0 * f / height
    p[:, 0, 2] = (2.0 * cx_t - width + 1.0) / width
    p[:, 1, 2] = (2.0 * cy_t - height + 1.0) / height
    p[:, 2, 2] = zfar / (zfar - znear)
    p[:, 2, 3] = -(zfar * znear) / (zfar - znear)
    p[:, 3, 2] = 1.0
    return p if batched else p[0]


def cameras_from_transforms(
    transform_matrix: Tensor, focal, width: int, height: int, cx=None, cy=None,
    znear: float = ZNEAR, zfar: float = ZFAR,
) -> CameraMatrices:
    """Rasterizer cameras from ``transform_matrix`` entries of ``transforms_*.json``.

    Args:
        transform_matrix: ``[4, 4]`` or ``[B, 4, 4]`` camera-to-world (OpenGL camera, scene units).
        focal: ``focal_len`` in pixels; scalar or ``[B]``.
        width, height: image size in pixels (ints; the JSON's ``2·cx``, ``2·cy``).
        cx, cy: principal point in pixels (pixel centres at integers); default ``W/2``, ``H/2``.
        znear, zfar: clipping planes (scene units), 0.01 and 100 as in the reference.
    Returns:
        :class:`CameraMatrices`; tensors in ``transform_matrix``'s dtype and device.
    Raises:
        ValueError: on a wrong shape or a non-positive size / focal.
    """
    c2w = torch.as_tensor(transform_matrix)
    if not c2w.is_floating_point():
        c2w = c2w.float()
    if c2w.shape[-2:] != (4, 4) or c2w.ndim not in (2, 3):
        raise ValueError(f"transform_matrix must have shape [4, 4] or [B, 4, 4], got {tuple(c2w.shape)}")
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    batched = c2w.ndim == 3
    c2w_b = c2w.reshape(-1, 4, 4)
    b = c2w_b.shape[0]
    f = _as_batch(focal, b, c2w_b, "focal")
    if bool((f <= 0).any()):
        raise ValueError(f"focal must be positive, got {f.tolist()}")
    w2c_gl = torch.linalg.inv(c2w_b)
    flip = torch.tensor(_GL_TO_CV + (1.0,), dtype=c2w_b.dtype, device=c2w_b.device)
    w2c = flip[:, None] * w2c_gl  # [B, 4, 4] rows scaled: OpenGL -> OpenCV camera axes
    proj = projection_matrix(f, width, height, cx, cy, znear, zfar, c2w_b.dtype, c2w_b.device)
    view_t = w2c.transpose(1, 2)
    proj_t = proj.transpose(1, 2)
    full = view_t @ proj_t
    center = c2w_b[:, :3, 3]
    tanx = width / (2.0 * f)
    tany = height / (2.0 * f)
    if not batched:
        return CameraMatrices(view_t[0], proj_t[0], full[0], center[0], float(tanx[0]), float(tany[0]),
                              width, height, w2c[0])
    return CameraMatrices(view_t, proj_t, full, center, tanx, tany, width, height, w2c)


def cameras_from_pose(
    euler: Tensor, trans: Tensor, focal, width: int, height: int, cx=None, cy=None,
    scale: float = TRANSFORMS_SCALE, znear: float = ZNEAR, zfar: float = ZFAR,
) -> CameraMatrices:
    """Rasterizer cameras straight from tracked poses (``track_params.pt``): the same cameras as
    :func:`cameras_from_transforms` applied to :func:`c2w_from_pose`. ``scale=1`` gives
    GaussianTalker's own choice (tracker units, no /10), ``0.1`` the transforms JSON's scene units."""
    return cameras_from_transforms(c2w_from_pose(euler, trans, scale), focal, width, height, cx, cy,
                                   znear, zfar)


def project_points(points: Tensor, cameras: CameraMatrices) -> Tensor:
    """Pixel coordinates of world points through the rasterizer's matrices (for tests and previews).

    Args:
        points: ``[N, 3]`` world points (scene units).
        cameras: an unbatched or batched :class:`CameraMatrices`.
    Returns:
        ``[N, 2]`` or ``[B, N, 2]`` pixels (centre of pixel (i, j) at (i, j)).
    """
    if points.ndim != 2 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {tuple(points.shape)}")
    full = cameras.full_proj_transform
    hom = torch.cat([points, torch.ones_like(points[:, :1])], -1).to(full.dtype)
    h = hom @ full  # [N, 4] or [B, N, 4]
    ndc = h[..., :3] / (h[..., 3:4] + 1e-12)
    x = ((ndc[..., 0] + 1.0) * cameras.width - 1.0) / 2.0
    y = ((ndc[..., 1] + 1.0) * cameras.height - 1.0) / 2.0
    return torch.stack([x, y], -1)


def fov_from_focal(focal: float, size: int) -> float:
    """Full field of view (radians) of ``size`` pixels at focal ``focal`` (``2·atan(size / 2f)``)."""
    return 2.0 * math.atan(size / (2.0 * focal))


__all__ = [
    "TRANSFORMS_SCALE", "ZNEAR", "ZFAR", "CameraMatrices", "rotation_from_euler", "euler_from_rotation",
    "c2w_from_pose", "projection_matrix", "cameras_from_transforms", "cameras_from_pose",
    "project_points", "fov_from_focal",
]

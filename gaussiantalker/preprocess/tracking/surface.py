"""A dense head surface around the fitted 68-point shape: the offline model's ``points3d.ply``.

The Gaussians need a starting cloud that covers what the camera sees of the head: face, forehead and
hair, ears, upper neck. From the subject's fitted landmarks (canonical frame, x to the subject's left,
y up, z towards the camera) four simple surfaces are built and sampled uniformly by area:

* **face** — a height field ``z = h(x, y)`` through the 68 landmarks (thin-plate-spline interpolation,
  slightly smoothed), over the region bounded by the jaw line below and the cranium above; extra control
  points on that boundary put the field on the cranium so the two meet;
* **cranium** (forehead, hair cap, back of the head down to the ears) — an ellipsoid sized from the
  landmarks: half-width 1.1 x the half-distance between the tragus-level jaw points, top one eye-to-chin
  distance above the eyes, front at the brow ridge, depth 1.35 x the half-width; the part in front of
  the face is left out;
* **ears** — flattened ellipsoids (60 x 35 x 16 mm scaled to the face) beside the tragus points;
* **upper neck** — an elliptic cylinder (half-widths 0.75 and 0.8 x 0.75 of the cranium's) from the
  jaw angle down 0.6 eye-to-chin distances, without the front part hidden behind the jaw.

Proportions are anthropometric averages scaled by the subject's own face width and height, so the cloud
follows the fitted shape. Surface normals come with the points (outward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np


@dataclass
class HeadSurface:
    points: np.ndarray  # [N, 3] canonical frame, tracker units
    normals: np.ndarray  # [N, 3] unit, outward
    part: np.ndarray  # [N] int: 0 face, 1 cranium, 2 ears, 3 neck


@dataclass
class _Frame:
    """Measurements of the fitted shape that size the parts."""

    half_width: float  # half distance between tragus-level jaw points
    eye_y: float
    chin_y: float
    brow_y: float
    brow_z: float
    tragus: np.ndarray  # [2, 3] jaw points 0 and 16
    jaw_angle_y: float

    @property
    def face_height(self) -> float:
        return self.eye_y - self.chin_y


def _measure(shape: np.ndarray) -> _Frame:
    eye = shape[[36, 39, 42, 45]].mean(0)
    brow = shape[17:27]
    return _Frame(
        half_width=float(np.linalg.norm(shape[0] - shape[16]) / 2), eye_y=float(eye[1]),
        chin_y=float(shape[8, 1]), brow_y=float(brow[:, 1].max()), brow_z=float(brow[:, 2].max()),
        tragus=shape[[0, 16]], jaw_angle_y=float(shape[[4, 12], 1].mean()),
    )


def _ellipsoid_samples(rng, centre, axes, n) -> Tuple[np.ndarray, np.ndarray]:
    """~Area-uniform points and normals on an ellipsoid (sphere samples thinned by the area factor)."""
    d = rng.standard_normal((int(n * 2.2) + 16, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    grad = d / np.asarray(axes)  # area element of the map sphere -> ellipsoid ∝ |∇| · Π axes
    factor = np.linalg.norm(grad, axis=1) * np.prod(axes)
    keep = rng.uniform(0, factor.max(), len(d)) < factor
    d, grad = d[keep][:n], grad[keep][:n]
    return centre + d * np.asarray(axes), grad / np.linalg.norm(grad, axis=1, keepdims=True)


def _inside(poly: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over points."""
    x, y = xy[:, 0:1], xy[:, 1:2]
    x0, y0 = poly[:, 0][None], poly[:, 1][None]
    x1, y1 = np.roll(poly[:, 0], -1)[None], np.roll(poly[:, 1], -1)[None]
    cross = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / np.where(y1 != y0, y1 - y0, 1e-12) + x0)
    return cross.sum(1) % 2 == 1


def _cranium(m: _Frame) -> Tuple[np.ndarray, np.ndarray]:
    a = 1.1 * m.half_width
    top = m.eye_y + m.face_height
    cy = m.eye_y - 0.1 * m.face_height
    b = top - cy
    d = 1.35 * a
    cz = m.brow_z + 0.005 - d  # front of the ellipsoid at the brow ridge
    return np.array([0.0, cy, cz]), np.array([a, b, d])


def _face_region(shape: np.ndarray, centre, axes) -> np.ndarray:
    """Polygon (x, y) of the face: jaw line, then an arc where the cranium meets the forehead."""
    jaw = shape[0:17, :2]
    top_y = centre[1] + 0.55 * axes[1]
    t = np.linspace(0, np.pi, 15)[1:-1]
    arc = np.stack([shape[16, 0] * np.cos(t), shape[16, 1] + (top_y - shape[16, 1]) * np.sin(t)], -1)
    return np.concatenate([jaw, arc])


def _cranium_z(xy: np.ndarray, centre, axes) -> np.ndarray:
    """Front z of the cranium ellipsoid above ``xy`` (clamped at its rim)."""
    q = ((xy - centre[:2]) / axes[:2]) ** 2
    return centre[2] + axes[2] * np.sqrt(np.clip(1 - q.sum(1), 0, None))


def _face(rng, shape, centre, axes, density) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    from scipy.interpolate import RBFInterpolator

    poly = _face_region(shape, centre, axes)
    boundary = poly[17:]
    ctrl_xy = np.concatenate([shape[:, :2], boundary])
    ctrl_z = np.concatenate([shape[:, 2], _cranium_z(boundary, centre, axes) + 0.002])
    height = RBFInterpolator(ctrl_xy, ctrl_z, kernel="thin_plate_spline", smoothing=1e-4)
    lo, hi = poly.min(0), poly.max(0)
    n_try = int(density * np.prod(hi - lo) * 3) + 64
    xy = rng.uniform(lo, hi, (n_try, 2))
    xy = xy[_inside(poly, xy)]
    eps = 1e-3
    z = height(xy)
    hx = (height(xy + [eps, 0]) - z) / eps
    hy = (height(xy + [0, eps]) - z) / eps
    factor = np.sqrt(1 + hx ** 2 + hy ** 2)
    keep = rng.uniform(0, factor.max(), len(xy)) < factor
    area = np.prod(hi - lo) * _inside(poly, rng.uniform(lo, hi, (4000, 2))).mean() * factor.mean()
    n = int(density * area)
    xy, z, hx, hy = xy[keep][:n], z[keep][:n], hx[keep][:n], hy[keep][:n]
    normals = np.stack([-hx, -hy, np.ones_like(hx)], -1)
    return np.concatenate([xy, z[:, None]], 1), normals / np.linalg.norm(normals, axis=1, keepdims=True), poly


def _ellipsoid_area(axes) -> float:
    p = 1.6075  # Knud Thomsen's approximation
    a, b, c = axes
    return 4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


def _sample_parts(shape: np.ndarray, m: _Frame, density: float, rng):
    """Points, normals and part labels at ``density`` points per unit area (before trimming)."""
    centre, axes = _cranium(m)
    ear_axes = np.array([0.08, 0.3, 0.175]) * (m.half_width / 0.67)  # semi-axes of a 16 x 60 x 35 mm ear
    neck_r = np.array([0.75 * axes[0], 0.6 * axes[0]])
    neck_c = np.array([0.0, centre[2] + 0.25 * axes[2]])
    neck_top, neck_bottom = m.jaw_angle_y, m.chin_y - 0.6 * m.face_height
    neck_area = np.pi * (neck_r.sum()) * (neck_top - neck_bottom)  # ≈ perimeter x height
    face_p, face_n, poly = _face(rng, shape, centre, axes, density)
    cran_p, cran_n = _ellipsoid_samples(rng, centre, axes, int(density * _ellipsoid_area(axes)))
    hidden = _inside(poly, cran_p[:, :2]) & (cran_p[:, 2] > centre[2])
    low_back = (cran_p[:, 1] < m.tragus[:, 1].mean() - 0.2 * m.face_height)
    cran_p, cran_n = cran_p[~hidden & ~low_back], cran_n[~hidden & ~low_back]
    ears = []
    for side, tragus in zip((-1.0, 1.0), m.tragus):
        c = np.array([side * (axes[0] * 0.97), tragus[1] + 0.2 * ear_axes[1], tragus[2] - 0.8 * ear_axes[2]])
        ears.append(_ellipsoid_samples(rng, c, ear_axes, int(density * _ellipsoid_area(ear_axes))))
    n_neck = int(density * neck_area)
    ang = rng.uniform(0, 2 * np.pi, n_neck)
    y = rng.uniform(neck_bottom, neck_top, n_neck)
    neck_p = np.stack([neck_r[0] * np.cos(ang), y, neck_c[1] + neck_r[1] * np.sin(ang)], -1)
    under_jaw = (np.sin(ang) > 0) & (y > m.chin_y)
    neck_p = neck_p[~under_jaw]
    neck_n = np.stack([np.cos(ang) / neck_r[0], np.zeros_like(ang), np.sin(ang) / neck_r[1]], -1)[~under_jaw]
    neck_n /= np.linalg.norm(neck_n, axis=1, keepdims=True)

    parts = [(face_p, face_n), (cran_p, cran_n), (np.concatenate([e[0] for e in ears]),
             np.concatenate([e[1] for e in ears])), (neck_p, neck_n)]
    points = np.concatenate([p for p, _ in parts])
    normals = np.concatenate([n for _, n in parts])
    label = np.concatenate([np.full(len(p), i) for i, (p, _) in enumerate(parts)])
    return points, normals, label


def dense_head_surface(shape68: np.ndarray, num_points: int = 30000, seed: int = 0) -> HeadSurface:
    """Sample ~``num_points`` points (within -10% / +0%) on the head surface around ``shape68``.

    Args:
        shape68: ``[68, 3]`` fitted canonical landmarks (tracker units, x left, y up, z forward).
        num_points: target count (the offline ``points3d.ply`` uses 30 000).
        seed: sampling seed (the result is deterministic).
    Raises:
        ValueError: on a wrong shape or a degenerate layout.
    """
    shape = np.asarray(shape68, dtype=np.float64)
    if shape.shape != (68, 3) or not np.isfinite(shape).all():
        raise ValueError(f"shape68 must be a finite [68, 3] array, got {shape.shape}")
    m = _measure(shape)
    if m.half_width <= 0 or m.face_height <= 0:
        raise ValueError("shape68 is degenerate (zero face width or height)")
    # The trimmed area is not known in closed form: a coarse pass measures it, the second one samples.
    probe = len(_sample_parts(shape, m, 2000.0, np.random.default_rng(seed))[0])
    density = 1.15 * num_points * 2000.0 / max(probe, 1)
    rng = np.random.default_rng(seed)
    points, normals, label = _sample_parts(shape, m, density, rng)
    if len(points) > num_points:
        keep = np.sort(rng.choice(len(points), num_points, replace=False))
        points, normals, label = points[keep], normals[keep], label[keep]
    return HeadSurface(points.astype(np.float32), normals.astype(np.float32), label.astype(np.int64))


__all__ = ["HeadSurface", "dense_head_surface"]

"""The generic frontal 68-point face layout and the offline landmark shape model built on it.

How the layout was derived. Coordinates are millimetres of an average adult face, x to the subject's
left (image right), y up, z towards the camera, origin at the nose tip (pronasale, iBUG 30); only the
subject's right half and the midline are written, the left half is the mirror image. The values come
from standard anthropometric averages: outer / inner eye-corner widths ~88 / ~32 mm, eye fissure
~28 x 9 mm, canthi ~30 mm above the nose tip and 33-44 mm behind it, alar base ~28 mm, subnasale 16 mm
below and 15 mm behind the tip, mouth width ~50 mm, upper-lip height ~12 mm, nose tip to chin ~84 mm,
face width at the tragus ~134 mm and 90 mm behind the nose tip, brows 12-20 mm above the eye. They were
then compared with MediaPipe's own 3D landmarks on a frontal clip (similarity-aligned, mirrored
average): 7.7 mm RMS before adjustment; where the two disagreed by more than the anthropometric spread
(depth of the nose bridge and canthi, brow height, width of the lower jaw, whose MediaPipe vertices are
fixed mesh points rather than the occluding contour) the values were moved towards the measured ones.
The result is a prior, not a person: the tracker fits a subject-specific shape around it.

Units. The model is expressed in tracker units (1 unit = 10 cm, the BFM convention, so a face ~7 units
from the camera gives ``trans.z ≈ -7``). The origin is moved to the head's pivot region: x on the
midline, y at the mean landmark height, z at the depth of the tragus-level jaw points 0 / 16.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

from ..landmarks import IBUG68_MIRROR
from .model import MorphableModel

MM_PER_UNIT = 100.0

# fmt: off
# iBUG index -> (x, y, z) millimetres; right half (x < 0) and midline only.
_HALF_LAYOUT_MM: Dict[int, Tuple[float, float, float]] = {
    # jaw: tragus level (0) down to the chin (8)
    0: (-67, 8, -90), 1: (-66, -6, -89), 2: (-65, -17, -87), 3: (-62, -31, -82), 4: (-56, -46, -75),
    5: (-45, -61, -61), 6: (-33, -72, -50), 7: (-18, -80, -39), 8: (0, -84, -31),
    # right brow, outer -> inner
    17: (-55, 42, -47), 18: (-46, 49, -37), 19: (-35, 52, -30), 20: (-23, 51, -26), 21: (-11, 48, -24),
    # nose bridge and tip, nose base
    27: (0, 33, -24), 28: (0, 22, -16), 29: (0, 10, -6), 30: (0, 0, 0),
    31: (-14, -12, -17), 32: (-7, -15, -15), 33: (0, -16, -15),
    # right eye: outer corner, upper lid, inner corner, lower lid
    36: (-44, 30, -44), 37: (-35, 34, -37), 38: (-25, 34, -35), 39: (-16, 29, -33),
    40: (-25, 26, -35), 41: (-35, 26, -37),
    # outer lips: corner, upper lip, philtrum midpoint; lower midpoint and lower lip
    48: (-25, -36, -34), 49: (-17, -30, -22), 50: (-7, -27, -16), 51: (0, -28, -15),
    57: (0, -46, -18), 58: (-8, -45, -19), 59: (-17, -42, -24),
    # inner lips (closed mouth)
    60: (-22, -36, -31), 61: (-8, -34, -20), 62: (0, -34, -19), 66: (0, -37, -19), 67: (-8, -37, -20),
}
# fmt: on

#: Landmarks treated as rigid: nose bridge, nose base, eye corners, and — for fixed-vertex landmarks
#: such as MediaPipe's — the tragus-level jaw points. They carry the head pose and the temporal
#: smoothness term; everything else may move with expression.
RIGID_LANDMARKS: Tuple[int, ...] = (0, 1, 15, 16, 27, 28, 29, 30, 31, 33, 35, 36, 39, 42, 45)
#: The jaw points that are rigid only when the jaw landmarks are fixed vertices.
_TRAGUS_LANDMARKS: Tuple[int, ...] = (0, 1, 15, 16)
#: Jaw-line conventions: ``fixed`` = the same surface point in every frame (MediaPipe's mesh vertices,
#: our default detector); ``contour`` = the occluding contour (iBUG annotation, dlib, FAN, the BFM's
#: dynamic contour), whose points slide along the cheek when the head turns.
JAW_CONVENTIONS = ("fixed", "contour")


def _rigid_landmarks(jaw: str) -> Tuple[int, ...]:
    if jaw not in JAW_CONVENTIONS:
        raise ValueError(f"jaw must be one of {JAW_CONVENTIONS}, got {jaw!r}")
    return tuple(k for k in RIGID_LANDMARKS if jaw == "fixed" or k not in _TRAGUS_LANDMARKS)


def _motion_sigma_mm(jaw: str = "fixed") -> np.ndarray:
    """Per-landmark σ (mm) of expression motion along x, y, z: the scale of the learned basis.

    Sized to the motion each point shows in speech and expression: the chin drops 10-20 mm when the
    jaw opens, lips stretch and round by ~10 mm, brows rise ~5-10 mm, lids close ~8 mm. The rigid
    landmarks (:data:`RIGID_LANDMARKS`) get zero: the basis cannot move them, so it cannot mimic a
    head rotation.
    """
    s = np.zeros((68, 3))
    jaw_mm = {0: 3, 1: 3, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7, 7: 8, 8: 8}
    for k, v in jaw_mm.items():
        s[k] = s[16 - k] = (0.6 * v, v, 0.8 * v)
    s[17:27] = (2.0, 5.0, 2.0)  # brows
    s[[32, 34]] = (1.5, 1.5, 1.5)  # nostrils (the nose base centre and wings are rigid)
    s[[37, 38, 40, 41, 43, 44, 46, 47]] = (1.0, 4.0, 1.5)  # lids
    s[48:60] = (6.0, 8.0, 5.0)  # outer lips
    s[60:68] = (6.0, 10.0, 5.0)  # inner lips
    s[list(_rigid_landmarks(jaw))] = 0.0
    return s


def _id_sigma_mm() -> np.ndarray:
    """Per-landmark σ (mm) of the subject-specific shape around the template, along x, y, z."""
    s = np.full((68, 3), 6.0)
    s[0:17] = 8.0  # face contour varies most between people (and between detectors)
    s[:, 2] *= 1.25  # depth is the least certain coordinate of the template
    return s


def generic_layout_mm() -> np.ndarray:
    """``[68, 3]`` generic frontal layout in millimetres, origin at the nose tip (see module doc)."""
    pts = np.full((68, 3), np.nan)
    for k, v in _HALF_LAYOUT_MM.items():
        pts[k] = v
        pts[IBUG68_MIRROR[k]] = (-v[0], v[1], v[2])
    if np.isnan(pts).any():
        raise RuntimeError("generic layout misses landmarks")  # a bug in the table above
    return pts


def generic_layout() -> np.ndarray:
    """``[68, 3]`` generic layout in tracker units (10 cm), origin at the head pivot (module doc)."""
    pts = generic_layout_mm() / MM_PER_UNIT
    origin = np.array([0.0, pts[:, 1].mean(), 0.5 * (pts[0, 2] + pts[16, 2])])
    return pts - origin


def _triangles(layout: np.ndarray) -> np.ndarray:
    from scipy.spatial import Delaunay

    return Delaunay(layout[:, :2]).simplices.astype(np.int64)


def landmark_model(num_exp: int = 12, jaw: str = "fixed", dtype: torch.dtype = torch.float64,
                   device=None) -> MorphableModel:
    """The offline default model: a 68-vertex landmark shape with a per-coordinate identity basis
    (σ from :func:`_id_sigma_mm`) and room for ``num_exp`` expression components learned from the
    video (scale :func:`_motion_sigma_mm`); the basis starts at zero.

    Args:
        num_exp: size of the learned expression space.
        jaw: ``"fixed"`` for fixed-vertex jaw landmarks (MediaPipe, the default detector): the
            tragus-level points 0, 1, 15, 16 are rigid; ``"contour"`` for contour-following detectors:
            the whole jaw line may move (and :class:`TrackerConfig` ``jaw_weight`` ~0.1 is advised).
    """
    if num_exp < 1:
        raise ValueError(f"num_exp must be >= 1, got {num_exp}")
    layout = generic_layout()
    n = 68 * 3
    id_basis = np.eye(n).reshape(n, 68, 3)
    opts = dict(dtype=dtype, device=device)
    return MorphableModel(
        name="landmarks68" if jaw == "fixed" else "landmarks68-contour",
        mean=torch.as_tensor(layout, **opts),
        id_basis=torch.as_tensor(id_basis, **opts),
        id_sigma=torch.as_tensor(_id_sigma_mm().reshape(-1) / MM_PER_UNIT, **opts),
        exp_basis=torch.zeros(num_exp, 68, 3, **opts),
        exp_sigma=torch.ones(num_exp, **opts),
        landmark_ids=torch.arange(68, device=device),
        rigid_ids=torch.as_tensor(_rigid_landmarks(jaw), device=device),
        triangles=torch.as_tensor(_triangles(layout), device=device),
        exp_point_sigma=torch.as_tensor(_motion_sigma_mm(jaw) / MM_PER_UNIT, **opts),
    )


__all__ = ["generic_layout", "generic_layout_mm", "landmark_model", "RIGID_LANDMARKS", "MM_PER_UNIT"]

"""Shared helpers of the tracking tests: a small random morphable model in BFM 2009's file layout and
synthetic landmark sequences with known pose, focal, identity and expressions.

The ground truth is computed here with numpy, independently of the tracker's code: the model's
conversion (sub-mesh, centring, /1e5), the Euler matrices and the projection of reference §2.8 and the
dynamic jaw contour are re-implemented below.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import scipy.io

from gaussiantalker.preprocess.tracking.template import RIGID_LANDMARKS, generic_layout

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
GERMAN_CLIP = SHARED_DATA / "clips" / "MimicTalk__German_20s.mp4"

N_ID, N_EXP, N_MOUTH_EXP = 199, 79, 10
JAW_LEFT, JAW_RIGHT = list(range(0, 8)), list(range(9, 17))


@dataclass
class SyntheticBFM:
    """Converted arrays of the synthetic model (tracker units), as the tracker should see them."""

    folder: Path
    mean: np.ndarray  # [V, 3] centred, /1e5
    id_basis: np.ndarray  # [199, V, 3]
    id_sigma: np.ndarray  # [199]
    exp_basis: np.ndarray  # [79, V, 3]; components < N_MOUTH_EXP move mouth and jaw only
    exp_sigma: np.ndarray  # [79]
    keyinds: np.ndarray  # [68]
    left_contour: np.ndarray  # [8, 20]
    right_contour: np.ndarray  # [8, 20]
    rigid_ids: np.ndarray  # [R]


@dataclass
class SyntheticSequence:
    landmarks: np.ndarray  # [F, 68, 2] noisy
    clean: np.ndarray  # [F, 68, 2]
    euler: np.ndarray  # [F, 3]
    rot: np.ndarray  # [F, 3, 3]
    trans: np.ndarray  # [F, 3]
    focal: float
    id: np.ndarray  # [199]
    exp: np.ndarray  # [F, 79]
    image_size: Tuple[int, int]


def euler_matrix(euler: np.ndarray) -> np.ndarray:
    """Rx(θ)·Ry(φ)·Rz(ψ) with the matrices of reference §2.8, as explicit products."""
    out = []
    for t, p, s in np.asarray(euler).reshape(-1, 3):
        rx = np.array([[1, 0, 0], [0, np.cos(t), np.sin(t)], [0, -np.sin(t), np.cos(t)]])
        ry = np.array([[np.cos(p), 0, -np.sin(p)], [0, 1, 0], [np.sin(p), 0, np.cos(p)]])
        rz = np.array([[np.cos(s), -np.sin(s), 0], [np.sin(s), np.cos(s), 0], [0, 0, 1]])
        out.append(rx @ ry @ rz)
    return np.stack(out)


def _smooth_fields(rng, pos: np.ndarray, n: int, width: float, centres: int = 24) -> np.ndarray:
    """``n`` random smooth displacement fields over vertices ``pos`` (RBF sums), unit RMS."""
    fields = np.empty((n, pos.shape[0], 3))
    for j in range(n):
        c = pos[rng.choice(pos.shape[0], centres, replace=False)]
        w = rng.standard_normal((centres, 3))
        k = np.exp(-((pos[:, None] - c[None]) ** 2).sum(-1) / (2 * width ** 2))
        f = k @ w
        fields[j] = f / np.sqrt((f ** 2).sum(-1).mean())
    return fields


def _contour_rows(layout: np.ndarray, ids) -> np.ndarray:
    """20 candidates per jaw landmark on a horizontal elliptic arc through it; the frontal silhouette
    point (extreme x at zero rotation) is the landmark position itself (arc angle 0)."""
    rows = []
    angles = np.deg2rad(np.arange(-40, 40, 4))  # 20 angles, 0 included
    for k in ids:
        x, y, z = layout[k]
        a, b = abs(x), 0.6 * abs(x)
        sign = np.sign(x) if x != 0 else 1.0
        rows.append(np.stack([sign * a * np.cos(angles), np.full_like(angles, y),
                              z + b * np.sin(angles)], -1))
    return np.stack(rows)  # [8, 20, 3]


def write_synthetic_bfm(folder: Path, seed: int = 0) -> SyntheticBFM:
    """Write ``01_MorphableModel.mat``, ``exp_info.npy``, ``keys_info.npy`` and ``topology_info.npy`` of a
    small random model in BFM 2009's layout (µm, xyz interleaved, a sub-mesh) into ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    layout = generic_layout() + 0.03 * _smooth_fields(rng, generic_layout(), 1, 0.5)[0]  # not the template
    left = _contour_rows(layout, JAW_LEFT)
    right = _contour_rows(layout, JAW_RIGHT)
    theta = rng.uniform(0, 2 * np.pi, 260)
    phi = rng.uniform(-0.2, 1.2, 260)
    filler = np.stack([0.7 * np.cos(phi) * np.sin(theta) * 0.9, 0.9 * np.sin(phi) - 0.1,
                       0.8 * np.cos(phi) * np.cos(theta) - 0.45], -1)
    sub_pos = np.concatenate([layout, left.reshape(-1, 3), right.reshape(-1, 3), filler])
    n_sub = sub_pos.shape[0]
    keyinds = np.arange(68)
    left_ids = 68 + np.arange(160).reshape(8, 20)
    right_ids = 228 + np.arange(160).reshape(8, 20)
    anchors = layout[list(RIGID_LANDMARKS)]
    d2 = ((sub_pos[:, None] - anchors[None]) ** 2).sum(-1)
    mask = np.prod(1 - np.exp(-d2 / (2 * 0.08 ** 2)), axis=1)  # 0 at the rigid landmarks
    mouth = np.exp(-((sub_pos - layout[62]) ** 2).sum(-1) / (2 * 0.35 ** 2))
    rigid_ids = np.concatenate([keyinds[list(RIGID_LANDMARKS)], np.nonzero(mask < 0.02)[0]])
    rigid_ids = np.unique(rigid_ids)

    id_fields = _smooth_fields(rng, sub_pos, N_ID, 0.35)
    id_sigma = 0.04 * np.exp(-np.arange(N_ID) / 12.0)  # units of 10 cm: 4 mm first component
    exp_fields = _smooth_fields(rng, sub_pos, N_EXP, 0.25) * mask[None, :, None]
    exp_fields[:N_MOUTH_EXP] *= mouth[None, :, None]
    exp_sigma = 0.05 * np.exp(-np.arange(N_EXP) / 8.0)
    mu_exp = 0.002 * _smooth_fields(rng, sub_pos, 1, 0.3)[0] * mask[:, None]

    # Full model: the sub-mesh plus hidden vertices, shuffled, in micrometres with an offset.
    n_full = n_sub + 120
    order = rng.permutation(n_full)
    sub_inds = order[:n_sub]
    offset = np.array([0.3, 1.1, -0.4])
    full_mu = rng.standard_normal((n_full, 3))
    full_mu[sub_inds] = sub_pos - mu_exp + offset
    full_pc = 0.01 * rng.standard_normal((n_full, 3, N_ID))
    full_pc[sub_inds] = id_fields.transpose(1, 2, 0)
    scipy.io.savemat(folder / "01_MorphableModel.mat", {
        "shapeMU": (full_mu * 1e5).reshape(-1, 1).astype(np.float32),
        "shapePC": (full_pc * 1e5).reshape(-1, N_ID).astype(np.float32),
        "shapeEV": id_sigma.reshape(-1, 1).astype(np.float32),
        "texMU": np.full((3 * n_full, 1), 128, np.float32),
        "texPC": np.zeros((3 * n_full, N_ID), np.float32),
        "texEV": np.ones((N_ID, 1), np.float32),
    })
    tris = _triangles(sub_pos)
    vert_tris = np.full((n_sub, 8), -1, np.int64)
    for t, tri in enumerate(tris):
        for v in tri:
            free = np.nonzero(vert_tris[v] < 0)[0]
            if free.size:
                vert_tris[v, free[0]] = t
    _save_dict(folder / "topology_info.npy", {"sub_inds": sub_inds, "tris": tris, "vert_tris": vert_tris})
    _save_dict(folder / "exp_info.npy", {
        "mu_exp": (mu_exp * 1e5).reshape(-1), "base_exp": (exp_fields * 1e5).reshape(N_EXP, -1),
        "sig_exp": exp_sigma})
    _save_dict(folder / "keys_info.npy", {"keyinds": keyinds, "left_contour": left_ids,
                                          "right_contour": right_ids, "rigid_ids": rigid_ids})
    mean = sub_pos + offset
    mean = mean - mean.mean(0)
    return SyntheticBFM(folder, mean, id_fields, id_sigma, exp_fields, exp_sigma, keyinds, left_ids,
                        right_ids, rigid_ids)


def _triangles(pos: np.ndarray) -> np.ndarray:
    from scipy.spatial import ConvexHull

    return ConvexHull(pos).simplices.astype(np.int64)


def _save_dict(path: Path, d: dict) -> None:
    """``np.save`` of a dict, as the original's files (a pickled 0-d object array)."""
    arr = np.empty((), dtype=object)
    arr[()] = d
    np.save(path, arr, allow_pickle=True)


def smooth_trajectory(num_frames: int, rng, yaw: float = 0.45, pitch: float = 0.2, roll: float = 0.1,
                      depth: float = 7.0) -> Tuple[np.ndarray, np.ndarray]:
    """A smooth head trajectory at 25 fps: sums of slow sines with random phases."""
    t = np.arange(num_frames) / 25.0
    ph = rng.uniform(0, 2 * np.pi, 6)
    euler = np.stack([pitch * np.sin(2 * np.pi * 0.23 * t + ph[0]), yaw * np.sin(2 * np.pi * 0.17 * t + ph[1]),
                      roll * np.sin(2 * np.pi * 0.29 * t + ph[2])], -1)
    trans = np.stack([0.25 * np.sin(2 * np.pi * 0.11 * t + ph[3]), 0.15 * np.sin(2 * np.pi * 0.13 * t + ph[4]),
                      -depth + 0.35 * np.sin(2 * np.pi * 0.07 * t + ph[5])], -1)
    return euler, trans


def synthesize(model: SyntheticBFM, num_frames: int, seed: int, focal: float = 1000.0,
               image_size: Tuple[int, int] = (512, 512), exp_mode: str = "all", noise: float = 1.0,
               static_pose: bool = False) -> SyntheticSequence:
    """Sample identity, expressions (``all``, ``mouth`` = mouth/jaw components only, or ``none``) and a
    smooth pose; project the 68 landmarks (dynamic jaw contour) and add Gaussian noise (pixels)."""
    rng = np.random.default_rng(seed)
    f_ = num_frames
    idc = rng.standard_normal(N_ID)
    exp = np.zeros((f_, N_EXP))
    if exp_mode != "none":
        k = N_MOUTH_EXP if exp_mode == "mouth" else N_EXP
        raw = rng.standard_normal((f_ + 8, k))
        kernel = np.hanning(9) / np.hanning(9).sum()  # speech-like: changes within ~0.2 s
        exp[:, :k] = 1.5 * np.stack([np.convolve(raw[:, j], kernel, "valid") for j in range(k)], -1)[:f_]
    if static_pose:
        euler, trans = np.tile([0.05, -0.1, 0.02], (f_, 1)), np.tile([0.05, -0.1, -7.0], (f_, 1))
    else:
        euler, trans = smooth_trajectory(f_, rng)
    rot = euler_matrix(euler)
    shape = model.mean + np.einsum("i,ivc->vc", idc * model.id_sigma, model.id_basis)
    verts = shape[None] + np.einsum("fj,jvc->fvc", exp * model.exp_sigma, model.exp_basis)  # [F, V, 3]
    cam = np.einsum("fij,fvj->fvi", rot, verts) + trans[:, None]
    h, w = image_size
    u = -focal * cam[..., 0] / cam[..., 2] + w / 2.0
    v = focal * cam[..., 1] / cam[..., 2] + h / 2.0
    ids = np.tile(model.keyinds, (f_, 1))
    for rows, pick, lms in ((model.left_contour, np.argmin, JAW_LEFT), (model.right_contour, np.argmax, JAW_RIGHT)):
        cand_u = u[:, rows]  # [F, 8, 20]
        ids[:, lms] = np.take_along_axis(np.broadcast_to(rows, (f_,) + rows.shape),
                                         pick(cand_u, -1)[..., None], -1)[..., 0]
    clean = np.stack([np.take_along_axis(u, ids, 1), np.take_along_axis(v, ids, 1)], -1)
    noisy = clean + noise * rng.standard_normal(clean.shape)
    return SyntheticSequence(noisy, clean, euler, rot, trans, focal, idc, exp, image_size)


def aligned_rotation_errors(true_rot: np.ndarray, est_rot: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-frame angle (degrees) between estimated and true rotations after the best constant change
    of canonical frame ``Q`` (``R_est ≈ R_true·Q``), and ``Q``."""
    m = np.einsum("fji,fjk->ik", true_rot, est_rot)
    u, _, vt = np.linalg.svd(m)
    q = u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt
    chord = np.linalg.norm((est_rot - true_rot @ q).reshape(len(est_rot), -1), axis=1) / (2 * np.sqrt(2))
    return np.degrees(2 * np.arcsin(np.clip(chord, 0, 1))), q


def camera_space_points(rot: np.ndarray, trans: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``[F, N, 3]`` canonical points ``pts [N, 3]`` posed per frame."""
    return np.einsum("fij,nj->fni", rot, pts) + trans[:, None]


def read_frames(path: Path, max_frames: Optional[int] = None) -> np.ndarray:
    from gaussiantalker.preprocess.landmarks import read_video_rgb

    return read_video_rgb(path, max_frames)


def pickle_is_refused(path: Path) -> bool:
    """Write a malicious pickled 'dict' and check the model reader refuses it."""
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    arr = np.empty((), dtype=object)
    arr[()] = {"x": Evil()}
    np.save(path, arr, allow_pickle=True)
    from gaussiantalker.preprocess.tracking.bfm import load_npy_dict

    try:
        load_npy_dict(path)
    except pickle.UnpicklingError:
        return True
    return False

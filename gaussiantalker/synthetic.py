"""A tiny but real talking-head dataset, generated: for tests and benchmarks.

:func:`make_synthetic_dataset` writes a dataset folder in our format (``meta.json``, ``aud_mfcc.npy``,
``points3d.ply``) or, with ``legacy=True``, in the original GaussianTalker layout (``aud_ds.npy``
``[F,16,29]`` float64, ``track_params.pt`` with per-frame ``vertices``, no ``meta.json``, no
``points3d.ply``). The scene:

* a head: an ellipsoid fixed in the world (= canonical head) frame, skin-coloured with world-fixed
  shading, two eyes that blink (``au.csv`` carries the blink as AU45), and a dark mouth whose opening
  height follows the audio's amplitude envelope frame by frame;
* a fixed camera looking at the head, the head moving slightly per frame; as in the original, the world
  is the head frame and each frame's camera is the inverse head pose (``gaussiantalker.camera``);
* an image-fixed background plate (``bc.jpg``), a neck and a torso block (``torso_imgs``).

The images are ray-cast through exactly the cameras of ``transforms_*.json`` (pixel centres at integer
coordinates, 2x2 supersampling), and ``points3d.ply`` samples the same ellipsoid surface, so a Gaussian
model can fit them. The audio is a real signal (syllable-like envelopes on a voiced harmonic carrier)
written to ``aud.wav``; its features are computed from it: ``mfcc`` with
:func:`gaussiantalker.audio.extract_features`, and for the legacy ``aud_ds.npy`` (29 values, where the
original has DeepSpeech logits) a fixed linear map of the same MFCC windows to 29 dimensions — a
*synthetic* stand-in for DeepSpeech, not DeepSpeech. The ground truth (mouth opening and blink per
frame) is in ``synthetic.json``; :func:`synthetic_energy` reads it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

PathLike = Union[str, os.PathLike]

__all__ = ["HEAD_AXES", "LEGACY_DS_MAP_SEED", "SyntheticScene", "make_synthetic_dataset", "synthetic_energy"]

#: Semi-axes of the head ellipsoid (x, y, z) in scene units (tracker units x 0.1).
HEAD_AXES = (0.075, 0.095, 0.08)
#: Seed of the fixed 26 -> 29 map that makes the legacy ``aud_ds.npy`` from MFCC windows.
LEGACY_DS_MAP_SEED = 29
FPS = 25
SAMPLE_RATE = 16000
_MOUTH_CENTRE_V = -0.45
_MOUTH_HALF_WIDTH = 0.3
_EYE_CENTRES = ((-0.38, 0.28), (0.38, 0.28))
_EYE_HALF = (0.14, 0.07)

_SKIN = np.array([0.86, 0.66, 0.55])
_LIP = np.array([0.72, 0.33, 0.33])
_MOUTH = np.array([0.22, 0.04, 0.06])
_SCLERA = np.array([0.95, 0.95, 0.93])
_IRIS = np.array([0.12, 0.10, 0.14])
_NECK = np.array([0.74, 0.54, 0.45])
_TORSO = np.array([0.22, 0.33, 0.62])
_LIGHT = np.array([0.35, 0.45, 0.82]) / np.linalg.norm([0.35, 0.45, 0.82])

# The original's parsing colours as OpenCV (BGR) triples: head blue, neck green, torso red, bg white.
_PARSING_BGR = {"head": (255, 0, 0), "neck": (0, 255, 0), "torso": (0, 0, 255), "bg": (255, 255, 255)}


@dataclass
class SyntheticScene:
    """Everything generated before it is written (all arrays, no files)."""

    audio: np.ndarray  # [T] float32 at 16 kHz
    opening: np.ndarray  # [F] mouth opening in [0, 1] (the amplitude envelope at each frame's time)
    blink: np.ndarray  # [F] eye closure in [0, 1]
    au45: np.ndarray  # [F] OpenFace-style AU45_r (0..5 scale; clip(au45, 0, 2) / 2 == blink)
    euler: np.ndarray  # [F, 3] head pose angles (radians)
    trans: np.ndarray  # [F, 3] head translation (tracker units)
    focal: float  # pixels
    size: int


# ----------------------------------------------------------------------------------------------
# Scene generation
# ----------------------------------------------------------------------------------------------


def _make_audio(num_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(audio [T], opening [F])``: syllables (raised-cosine envelopes of random length, gap and
    loudness) on a voiced carrier; opening = the envelope at each frame time, max-normalised."""
    n = round(num_frames / FPS * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    env = np.zeros(n)
    pos = rng.uniform(0.0, 0.06)
    end = n / SAMPLE_RATE
    while pos < end:
        dur = rng.uniform(0.12, 0.32)
        amp = rng.uniform(0.25, 1.0)
        inside = (t >= pos) & (t < pos + dur)
        env[inside] = np.maximum(env[inside], amp * np.sin(np.pi * (t[inside] - pos) / dur) ** 2)
        gap = rng.uniform(0.0, 0.1) if rng.random() > 0.15 else rng.uniform(0.2, 0.4)
        pos += dur + gap
    f0 = rng.uniform(110.0, 170.0) * (1.0 + 0.04 * np.sin(2 * np.pi * 3.1 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    carrier = sum(np.sin(k * phase) / k for k in range(1, 13))
    carrier = carrier / np.abs(carrier).max()
    noise = rng.standard_normal(n) * 0.004
    audio = 0.6 * env * carrier + noise
    # On the 16-bit grid, so the features computed here equal those of the written aud.wav.
    audio = (np.clip(np.round(audio * 32768.0), -32768, 32767) / 32768.0).astype(np.float32)
    frame_samples = np.clip(np.round(np.arange(num_frames) * SAMPLE_RATE / FPS).astype(int), 0, n - 1)
    peak = env.max() if env.max() > 0 else 1.0
    opening = np.clip(env[frame_samples] / peak, 0.0, 1.0)
    return audio, opening


def _make_blinks(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """AU45_r per frame (0..5): a few blinks of 3-5 frames peaking at 2.5-4."""
    au = np.zeros(num_frames)
    pos = int(rng.integers(8, 20))
    while pos < num_frames:
        length = int(rng.integers(3, 6))
        peak = rng.uniform(2.5, 4.0)
        for k in range(length):
            if pos + k < num_frames:
                au[pos + k] = peak * math.sin(math.pi * (k + 0.5) / length)
        pos += length + int(rng.integers(15, 35))
    return au


def _make_poses(num_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Smooth slight head motion: euler ``[F, 3]`` (radians) and trans ``[F, 3]`` (tracker units)."""
    t = np.arange(num_frames) / FPS
    ph = rng.uniform(0, 2 * np.pi, size=6)
    euler = np.stack([0.05 * np.sin(2 * np.pi * t / 2.3 + ph[0]),
                      0.08 * np.sin(2 * np.pi * t / 3.1 + ph[1]),
                      0.03 * np.sin(2 * np.pi * t / 1.7 + ph[2])], -1)
    trans = np.stack([0.06 * np.sin(2 * np.pi * t / 2.9 + ph[3]),
                      0.3 + 0.04 * np.sin(2 * np.pi * t / 2.2 + ph[4]),
                      -7.0 + 0.12 * np.sin(2 * np.pi * t / 3.7 + ph[5])], -1)
    return euler, trans


def _scene(num_frames: int, size: int, seed: int) -> SyntheticScene:
    rng = np.random.default_rng(seed)
    audio, opening = _make_audio(num_frames, rng)
    au45 = _make_blinks(num_frames, rng)
    euler, trans = _make_poses(num_frames, rng)
    return SyntheticScene(audio=audio, opening=opening, blink=np.clip(au45, 0, 2) / 2, au45=au45,
                          euler=euler, trans=trans, focal=2.33 * size, size=size)


# ----------------------------------------------------------------------------------------------
# Geometry: ray casting the head, landmarks, point cloud
# ----------------------------------------------------------------------------------------------


def _rot(euler: np.ndarray) -> np.ndarray:
    """The tracker's ``Rot = Rx @ Ry @ Rz`` (docs/camera.md), numpy float64."""
    import torch

    from .camera import rotation_from_euler

    return rotation_from_euler(torch.as_tensor(euler, dtype=torch.float64)).numpy()


def _surface_uv(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return p[..., 0] / HEAD_AXES[0], p[..., 1] / HEAD_AXES[1]


def _mouth_half_height(opening: float) -> float:
    return 0.02 + 0.17 * float(opening)


def _head_colour(p: np.ndarray, opening: float, blink: float) -> np.ndarray:
    """Colour ``[..., 3]`` of world points ``p [..., 3]`` on the ellipsoid surface."""
    a = np.asarray(HEAD_AXES)
    normal = p / a**2
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    shade = 0.55 + 0.45 * np.clip(normal @ _LIGHT, 0.0, 1.0)
    col = _SKIN * shade[..., None]
    u, v = _surface_uv(p)
    front = p[..., 2] > 0
    mh = _mouth_half_height(opening)
    lips = front & (((u / (_MOUTH_HALF_WIDTH + 0.06)) ** 2 + ((v - _MOUTH_CENTRE_V) / (mh + 0.06)) ** 2) < 1)
    mouth = front & (((u / _MOUTH_HALF_WIDTH) ** 2 + ((v - _MOUTH_CENTRE_V) / mh) ** 2) < 1)
    col[lips] = _LIP * shade[lips, None]
    col[mouth] = _MOUTH
    eh = _EYE_HALF[1] * (1.0 - blink)
    if eh > 0.004:
        for cu, cv in _EYE_CENTRES:
            eye = front & ((((u - cu) / _EYE_HALF[0]) ** 2 + ((v - cv) / eh) ** 2) < 1)
            iris = eye & ((((u - cu) / 0.055) ** 2 + ((v - cv) / 0.055) ** 2) < 1)
            col[eye] = _SCLERA
            col[iris] = _IRIS
    return col


def _on_surface(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Front-surface points ``[..., 3]`` (scene units) at normalised coordinates ``(u, v)``."""
    a, b, c = HEAD_AXES
    z = c * np.sqrt(np.clip(1.0 - u**2 - v**2, 0.0, None))
    return np.stack([u * a, v * b, z], -1)


def _landmarks_3d(opening: float, blink: float) -> np.ndarray:
    """68 canonical points (iBUG layout; index 0 at image left in a frontal view), ``[68, 3]``."""
    pts = []
    t = np.pi + np.arange(17) * np.pi / 16
    pts += list(zip(0.85 * np.cos(t), -0.1 + 0.75 * np.sin(t)))  # jaw 0-16
    pts += [(x, 0.46) for x in np.linspace(-0.65, -0.15, 5)] + [(x, 0.46) for x in np.linspace(0.15, 0.65, 5)]
    pts += [(0.0, v) for v in np.linspace(0.3, -0.05, 4)] + [(x, -0.15) for x in np.linspace(-0.15, 0.15, 5)]
    eh = _EYE_HALF[1] * (1.0 - blink)
    for cu, cv in _EYE_CENTRES:  # 6 points per eye, clockwise from the outer corner
        ang = np.array([np.pi, 2 * np.pi / 3, np.pi / 3, 0.0, -np.pi / 3, -2 * np.pi / 3])
        pts += list(zip(cu + _EYE_HALF[0] * np.cos(ang), cv + eh * np.sin(ang)))
    mh = _mouth_half_height(opening)
    ang = np.pi - np.arange(12) * 2 * np.pi / 12  # outer lip 48-59
    pts += list(zip((_MOUTH_HALF_WIDTH + 0.06) * np.cos(ang), _MOUTH_CENTRE_V + (mh + 0.06) * np.sin(ang)))
    ang = np.pi - np.arange(8) * 2 * np.pi / 8  # inner lip 60-67
    pts += list(zip(_MOUTH_HALF_WIDTH * np.cos(ang), _MOUTH_CENTRE_V + mh * np.sin(ang)))
    uv = np.array(pts)
    return _on_surface(uv[:, 0], uv[:, 1])


def _project(points: np.ndarray, rot: np.ndarray, trans: np.ndarray, focal: float, size: int) -> np.ndarray:
    """Tracker projection of world points (scene units): ``u = -f X'/Z' + cx``, ``v = f Y'/Z' + cy``."""
    from .camera import TRANSFORMS_SCALE

    x = points @ rot.T + trans * TRANSFORMS_SCALE
    return np.stack([-focal * x[:, 0] / x[:, 2] + size / 2, focal * x[:, 1] / x[:, 2] + size / 2], -1)


def _pixel_rays(focal: float, size: int, ss: int = 2) -> np.ndarray:
    """Ray directions ``[S, H, W, 3]`` in the tracker's OpenGL camera for ``S = ss²`` sub-pixels of each
    pixel (pixel centres at integer coordinates)."""
    offs = (np.arange(ss) + 0.5) / ss - 0.5
    oy, ox = np.meshgrid(offs, offs, indexing="ij")
    rows, cols = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    u = cols[None] + ox.reshape(-1, 1, 1)
    v = rows[None] + oy.reshape(-1, 1, 1)
    c = size / 2
    # Inverse of u = -f X/Z + cx, v = f Y/Z + cy at Z = -1.
    return np.stack([(u - c) / focal, -(v - c) / focal, -np.ones_like(u)], -1)


def _cast(rays: np.ndarray, rot: np.ndarray, trans: np.ndarray):
    """Ray-cast the ellipsoid: ``(hit [S,H,W] bool, points [K,3])`` (world points of the K hits)."""
    from .camera import TRANSFORMS_SCALE

    a = np.asarray(HEAD_AXES)
    o = -(rot.T @ (trans * TRANSFORMS_SCALE)) / a  # camera centre, ellipsoid-normalised
    do = (rays @ rot) / a  # Rotᵀ d' per ray, normalised
    qa = np.einsum("...i,...i->...", do, do)
    qb = 2 * (do @ o)
    qc = float(o @ o - 1.0)
    disc = qb**2 - 4 * qa * qc
    hit = disc > 0
    tt = (-qb[hit] - np.sqrt(disc[hit])) / (2 * qa[hit])
    front = tt > 0
    hit[hit] = front
    pts = (o + tt[front, None] * do[hit]) * a
    return hit, pts


def _plate(size: int) -> np.ndarray:
    """Background plate ``[H, W, 3]`` float in [0, 1]: a soft two-tone gradient with a stripe."""
    r = np.linspace(0, 1, size)[:, None]
    c = np.linspace(0, 1, size)[None, :]
    base = np.stack([0.50 + 0.15 * c + 0 * r, 0.58 + 0.1 * r + 0 * c, 0.52 + 0.12 * (1 - c) + 0 * r], -1)
    stripe = (np.abs(c - 0.15) < 0.04) & (r < 0.7)
    base[np.broadcast_to(stripe, (size, size))] *= 0.8
    return base


def _body_labels(size: int) -> np.ndarray:
    """Image-fixed neck (2) and torso (3) regions, ``[H, W]`` uint8 (0 elsewhere)."""
    lab = np.zeros((size, size), np.uint8)
    r = np.arange(size)[:, None] / size
    c = np.arange(size)[None, :] / size
    lab[np.broadcast_to((r >= 0.60) & (r < 0.80) & (np.abs(c - 0.5) < 0.09), lab.shape)] = 2
    lab[np.broadcast_to((r >= 0.80) & (np.abs(c - 0.5) < 0.34), lab.shape)] = 3
    return lab


def _body_colours(size: int) -> np.ndarray:
    r = np.linspace(0, 1, size)[:, None, None]
    lab = _body_labels(size)
    col = np.zeros((size, size, 3))
    col[lab == 2] = np.broadcast_to(_NECK * (1.0 - 0.25 * r), (size, size, 3))[lab == 2]
    col[lab == 3] = np.broadcast_to(_TORSO * (1.1 - 0.3 * r), (size, size, 3))[lab == 3]
    return col


def _render_frame(scene: SyntheticScene, k: int, rays: np.ndarray, plate: np.ndarray, body: np.ndarray,
                  body_lab: np.ndarray):
    """``(rgb [H,W,3] float, labels [H,W] uint8)`` of frame ``k``."""
    hit, pts = _cast(rays, _rot(scene.euler[k]), scene.trans[k])
    under = np.where((body_lab > 0)[..., None], body, plate)  # [H, W, 3]
    col = np.broadcast_to(under, hit.shape + (3,)).copy()  # [S, H, W, 3]
    col[hit] = _head_colour(pts, scene.opening[k], scene.blink[k])
    rgb = col.mean(0)
    labels = body_lab.copy()
    labels[hit.mean(0) >= 0.5] = 1
    return rgb, labels


def _surface_points(num_points: int, rng: np.random.Generator) -> np.ndarray:
    """``[N, 3]`` points on the ellipsoid, uniform in area (rejection on the sphere map's stretch)."""
    a = np.asarray(HEAD_AXES)
    out = []
    have = 0
    while have < num_points:
        n = rng.standard_normal((2 * num_points, 3))
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        stretch = np.linalg.norm(n / a * a.prod(), axis=1)  # area element of the map sphere -> ellipsoid
        keep = rng.random(len(n)) < stretch / stretch.max()
        out.append(n[keep] * a)
        have += int(keep.sum())
    return np.concatenate(out)[:num_points]


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _to_u8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def _write_image(path: Path, rgb_or_rgba: np.ndarray) -> None:
    """Write an RGB / RGBA uint8 image with OpenCV (converted to BGR / BGRA at the boundary)."""
    import cv2

    from .fileio import atomic_write

    code = cv2.COLOR_RGBA2BGRA if rgb_or_rgba.shape[-1] == 4 else cv2.COLOR_RGB2BGR
    bgr = cv2.cvtColor(rgb_or_rgba, code)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []

    def write(tmp: Path) -> None:
        if not cv2.imwrite(str(tmp), bgr, params):
            raise OSError(f"could not write {path}")

    atomic_write(path, write)


def _write_text(path: Path, text: str) -> None:
    from .fileio import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(text))


def _write_npy(path: Path, array: np.ndarray) -> None:
    from .fileio import atomic_write

    atomic_write(path, lambda tmp: np.save(tmp, array))


def _au_csv(au45: np.ndarray) -> str:
    """An OpenFace ``FeatureExtraction``-style CSV (``", "`` separators, so ``" AU45_r"``)."""
    cols = ["frame", "face_id", "timestamp", "confidence", "success", "AU01_r", "AU45_r", "AU45_c"]
    lines = [", ".join(cols)]
    for i, v in enumerate(au45):
        lines.append(", ".join([str(i + 1), "0", f"{i / FPS:.3f}", "0.98", "1", "0.00", f"{v:.2f}",
                                "1.00" if v > 1.0 else "0.00"]))
    return "\n".join(lines) + "\n"


def _legacy_ds(mfcc_windows: np.ndarray) -> np.ndarray:
    """The synthetic stand-in for DeepSpeech logits: MFCC windows ``[F,16,26]`` through a fixed map
    ``[26, 29]`` (identity on the first 26 outputs, 3 fixed random mixtures), float64 ``[F,16,29]``."""
    rng = np.random.default_rng(LEGACY_DS_MAP_SEED)
    extra = rng.standard_normal((26, 3)) / np.sqrt(26)
    m = np.concatenate([np.eye(26), extra], 1)
    return mfcc_windows.astype(np.float64) @ m


def _write_frames(folder: Path, scene: SyntheticScene) -> None:
    """ori_imgs (+ .lms), parsing, gt_imgs, torso_imgs and bc.jpg."""
    size = scene.size
    plate = _plate(size)
    body = _body_colours(size)
    body_lab = _body_labels(size)
    rays = _pixel_rays(scene.focal, size)
    colours = {1: _PARSING_BGR["head"], 2: _PARSING_BGR["neck"], 3: _PARSING_BGR["torso"], 0: _PARSING_BGR["bg"]}
    for name in ("ori_imgs", "parsing", "gt_imgs", "torso_imgs"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    _write_image(folder / "bc.jpg", _to_u8(plate))
    torso_alpha = (body_lab > 0).astype(np.uint8) * 255
    for k in range(len(scene.opening)):
        rgb, labels = _render_frame(scene, k, rays, plate, body, body_lab)
        img = _to_u8(rgb)
        _write_image(folder / "ori_imgs" / f"{k}.jpg", img)
        _write_image(folder / "gt_imgs" / f"{k}.jpg", img)
        bgr = np.zeros((size, size, 3), np.uint8)
        for lab, c in colours.items():
            bgr[labels == lab] = c
        # The parsing PNG holds the original's colour triples in OpenCV's BGR order (blue head on disk).
        _write_image(folder / "parsing" / f"{k}.png", bgr[..., ::-1].copy())
        torso_rgb = np.where((body_lab > 0)[..., None], _to_u8(body), 0).astype(np.uint8)
        _write_image(folder / "torso_imgs" / f"{k}.png", np.dstack([torso_rgb, torso_alpha]))
        lms = _project(_landmarks_3d(scene.opening[k], scene.blink[k]), _rot(scene.euler[k]), scene.trans[k],
                       scene.focal, size)
        _write_text(folder / "ori_imgs" / f"{k}.lms", "".join(f"{x:f} {y:f}\n" for x, y in lms))


def _write_tracking(folder: Path, scene: SyntheticScene, legacy: bool, num_points: int, seed: int) -> None:
    """track_params.pt, transforms_{train,val}.json, and points3d.ply (ours) or ``vertices`` (legacy)."""
    import torch

    from .camera import TRANSFORMS_SCALE, c2w_from_pose
    from .fileio import atomic_write
    from .plyio import PointCloud, write_ply

    f = len(scene.opening)
    pts = _surface_points(num_points, np.random.default_rng(seed + 1))  # [N, 3] scene units
    params = {
        "id": torch.zeros(1, 100), "exp": torch.zeros(f, 79),
        "euler": torch.as_tensor(scene.euler, dtype=torch.float32),
        "trans": torch.as_tensor(scene.trans, dtype=torch.float32),
        "focal": torch.tensor([scene.focal], dtype=torch.float32),
    }
    if legacy:
        verts = torch.as_tensor(pts / TRANSFORMS_SCALE, dtype=torch.float32)  # tracker units
        params["vertices"] = verts[None].repeat(f, 1, 1)  # [F, V, 3]
    else:
        colours = _head_colour(pts, 0.0, 0.0)
        write_ply(folder / "points3d.ply", PointCloud(xyz=pts, colors=colours))
    atomic_write(folder / "track_params.pt", lambda tmp: torch.save(params, tmp))
    c2w = c2w_from_pose(torch.as_tensor(scene.euler), torch.as_tensor(scene.trans), TRANSFORMS_SCALE).numpy()
    cut = int(f * 10 / 11)
    for name, ids in (("train", range(cut)), ("val", range(cut, f))):
        doc = {"focal_len": float(scene.focal), "cx": scene.size / 2, "cy": scene.size / 2,
               "frames": [{"img_id": i, "aud_id": i, "transform_matrix": c2w[i].tolist()} for i in ids]}
        _write_text(folder / f"transforms_{name}.json", json.dumps(doc, indent=1))


def _write_audio(folder: Path, scene: SyntheticScene, legacy: bool, audio_kind: str) -> tuple[str, int]:
    """aud.wav / aud_train.wav / aud_novel.wav and the feature file; returns ``(kind, dim)``."""
    from .audio import extract_features, feature_filename, write_wav
    from .fileio import atomic_write

    f = len(scene.opening)
    cut = int(f * 10 / 11)
    split_sample = round(cut * SAMPLE_RATE / FPS)
    for name, part in (("aud.wav", scene.audio), ("aud_train.wav", scene.audio[:split_sample]),
                       ("aud_novel.wav", scene.audio[split_sample:])):
        atomic_write(folder / name, lambda tmp, a=part: write_wav(tmp, a))
    if legacy:
        if audio_kind not in ("mfcc", "deepspeech"):
            raise ValueError(f"legacy datasets carry aud_ds.npy only; audio_kind {audio_kind!r} is not possible")
        feats = extract_features(scene.audio, kind="mfcc", num_frames=f)
        _write_npy(folder / "aud_ds.npy", _legacy_ds(feats.windows))
        return "deepspeech", 29
    if audio_kind not in ("mfcc", "phonetic"):
        raise ValueError(f"synthetic datasets compute mfcc or phonetic features only, got audio_kind={audio_kind!r}")
    feats = extract_features(scene.audio, kind=audio_kind, num_frames=f)
    _write_npy(folder / feature_filename(audio_kind), feats.windows.astype(np.float32))
    return audio_kind, feats.dim


def make_synthetic_dataset(folder: PathLike, num_frames: int = 66, size: int = 64, seed: int = 0,
                           legacy: bool = False, audio_kind: str = "mfcc", num_points: int = 2000) -> Path:
    """Write a synthetic talking-head dataset into ``folder`` (created; existing files are replaced).

    Args:
        folder: dataset folder.
        num_frames: video frames at 25 fps (train = first ``int(F·10/11)``, val = the rest).
        size: image width = height in pixels (focal ``2.33·size``).
        seed: everything is a deterministic function of the seed and the other arguments.
        legacy: write the original GaussianTalker layout instead of ours (see the module docstring).
        audio_kind: ``"mfcc"`` (ours: ``aud_mfcc.npy``) or ``"phonetic"`` (``aud_phonetic.npy``: the synthetic
            sound's recognised phones are arbitrary, but every file and shape is real); legacy datasets always get
            ``aud_ds.npy``.
        num_points: points on the head surface (``points3d.ply``, or the legacy ``vertices``).
    Returns:
        The folder.
    Raises:
        ValueError: bad sizes or an audio kind this generator cannot make.
    """
    if num_frames < 12:
        raise ValueError(f"num_frames must be at least 12 (a non-empty val split), got {num_frames}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16, got {size}")
    if num_points < 1:
        raise ValueError(f"num_points must be positive, got {num_points}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scene = _scene(int(num_frames), int(size), int(seed))
    _write_frames(folder, scene)
    _write_tracking(folder, scene, legacy, int(num_points), int(seed))
    kind, dim = _write_audio(folder, scene, legacy, audio_kind)
    _write_text(folder / "au.csv", _au_csv(scene.au45))
    truth = {"seed": int(seed), "opening": scene.opening.tolist(), "blink": scene.blink.tolist(),
             "focal": scene.focal, "head_axes": list(HEAD_AXES)}
    _write_text(folder / "synthetic.json", json.dumps(truth))
    if not legacy:
        from . import __version__
        from .audio import feature_filename

        cut = int(num_frames * 10 / 11)
        meta = {
            "format": "gaussiantalker-dataset", "version": 1, "library_version": __version__,
            "name": folder.name, "source": {"path": "synthetic", "fps": float(FPS), "width": size, "height": size,
                                            "duration": num_frames / FPS},
            "fps": FPS, "num_frames": int(num_frames), "width": size, "height": size, "crop": None,
            "audio": {"kind": kind, "dim": dim, "file": feature_filename(kind)},
            "backends": {"landmarks": "synthetic", "parsing": "synthetic", "tracking": "synthetic",
                         "audio": kind, "blink": "synthetic"},
            "split": {"train": [0, cut], "val": [cut, int(num_frames)]}, "missing_faces": [], "timings": {},
        }
        _write_text(folder / "meta.json", json.dumps(meta, indent=1))
    return folder


def synthetic_energy(folder: PathLike) -> np.ndarray:
    """Ground-truth mouth opening per frame (``[F]`` in [0, 1]) of a dataset made by
    :func:`make_synthetic_dataset` (the audio's amplitude envelope at each frame's time)."""
    path = Path(folder) / "synthetic.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {folder} was not made by make_synthetic_dataset")
    return np.asarray(json.loads(path.read_text())["opening"], dtype=np.float64)

"""The original GaussianTalker / ER-NeRF / AD-NeRF dataset layout, written and read here by hand from the
reference (``../shared/reference/gaussiantalker-method.md`` §1-§3), independently of our writer and loader:

* :func:`build_original_dataset` writes a small dataset the way the original preprocessing lays it out
  (OpenCV BGR colour codes, BGRA torso PNGs, float64 ``aud_ds.npy``, OpenFace ``au.csv``, per-frame
  ``vertices`` in tracker units, ``transform_matrix = [Rᵀ | -Rᵀ·trans/10]``), in the variants of the
  three projects;
* :func:`original_loader_problems` lists what the original's loader (§3.1-§3.3) would trip over in a
  dataset folder: missing files and keys, wrong shapes, and units (the mean ``vertices`` posed with the
  tracked pose must land on the face).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List

import numpy as np

HEAD = (255, 0, 0)  # BGR triples as the original's code compares them (blue on disk)
NECK = (0, 255, 0)
TORSO = (0, 0, 255)
BACKGROUND = (255, 255, 255)


def rotation(euler) -> np.ndarray:
    """``Rot(θ, φ, ψ) = Rx·Ry·Rz`` of the original tracker (reference §2.8)."""
    t, p, s = (float(a) for a in euler)
    rx = np.array([[1, 0, 0], [0, math.cos(t), math.sin(t)], [0, -math.sin(t), math.cos(t)]])
    ry = np.array([[math.cos(p), 0, -math.sin(p)], [0, 1, 0], [math.sin(p), 0, math.cos(p)]])
    rz = np.array([[math.cos(s), -math.sin(s), 0], [math.sin(s), math.cos(s), 0], [0, 0, 1]])
    return rx @ ry @ rz


def project(points: np.ndarray, euler, trans, focal: float, cx: float, cy: float) -> np.ndarray:
    """The tracker's projection: ``X' = Rot·X + t``, ``u = -f·X'/Z' + cx``, ``v = f·Y'/Z' + cy``."""
    posed = points @ rotation(euler).T + np.asarray(trans, dtype=np.float64)
    return np.stack([-focal * posed[:, 0] / posed[:, 2] + cx, focal * posed[:, 1] / posed[:, 2] + cy], -1)


def build_original_dataset(folder: Path, variant: str = "gaussiantalker", frames: int = 22, size: int = 64,
                           seed: int = 0) -> dict:
    """Write a dataset in the original layout; returns what was written (for the checks).

    Variants: ``gaussiantalker`` (``aud_ds.npy`` float64 ``[F,16,29]`` + its byte copy ``aud.npy``, per-frame
    ``vertices``, OpenFace ``au.csv`` with ``", "``), ``adnerf`` (only ``aud.npy``), ``ernerf`` (HuBERT
    ``aud_hu.npy`` ``[F,2,1024]``, no ``vertices``, an ``au.csv`` without the leading spaces), ``ernerf-eo``
    (``aud_eo.npy`` ``[F,16,44]``), ``ernerf-wav2vec`` (English wav2vec logits as ``aud.npy``, ``[F,16,32]``).
    """
    import cv2
    import torch

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("ori_imgs", "parsing", "gt_imgs", "torso_imgs"):
        (folder / sub).mkdir(exist_ok=True)
    f = frames
    focal, cx, cy = 1.9 * size, size / 2, size / 2
    t = np.arange(f)
    euler = np.stack([0.04 * np.sin(t / 3), 0.08 * np.sin(t / 5), 0.02 * np.cos(t / 4)], -1)
    trans = np.stack([0.05 * np.sin(t / 6), 0.1 + 0.03 * np.cos(t / 7), np.full(f, -7.0)], -1)
    # head: an ellipsoid of points in tracker units (the 3DMM's scale: ~1.6 wide), "expression" jitter
    n = rng.standard_normal((900, 3))
    head = n / np.linalg.norm(n, axis=1, keepdims=True) * np.array([0.8, 1.0, 0.8])
    vertices = head[None] + rng.normal(0, 0.01, (f, len(head), 3))
    energy = np.clip(np.sin(t / 2) + 0.2 * rng.standard_normal(f), 0, None)  # mouth opening from the "audio"
    au45 = np.where(t % 9 == 4, 3.5, 0.1)
    yy, xx = np.mgrid[0:size, 0:size]
    plate = np.stack([60 + 80 * xx / size, 90 + 40 * yy / size, np.full_like(xx, 140.0)], -1).astype(np.uint8)
    cv2.imwrite(str(folder / "bc.jpg"), plate)
    for i in range(f):
        uv = project(head, euler[i], trans[i], focal, cx, cy)
        (u0, v0), r = uv.mean(0), (uv[:, 0].max() - uv[:, 0].min()) / 2
        img = plate.copy()
        labels = np.full((size, size, 3), BACKGROUND, np.uint8)
        torso = (yy > v0 + 1.25 * r) & (np.abs(xx - u0) < 1.6 * r)
        neck = (yy > v0 + 0.7 * r) & (yy <= v0 + 1.25 * r) & (np.abs(xx - u0) < 0.45 * r)
        face = ((xx - u0) / r) ** 2 + ((yy - v0) / (1.2 * r)) ** 2 < 1
        img[torso], labels[torso] = (40, 40, 160), TORSO
        img[neck], labels[neck] = (120, 150, 200), NECK
        img[face], labels[face] = (110, 160, 220), HEAD
        mouth = ((xx - u0) / (0.35 * r)) ** 2 + ((yy - v0 - 0.5 * r) / (0.05 * r + 0.12 * r * energy[i])) ** 2 < 1
        img[mouth] = (40, 30, 90)
        for side in (-1, 1):
            eye = ((xx - u0 - side * 0.35 * r) / (0.15 * r)) ** 2 + ((yy - v0 + 0.25 * r) / (0.1 * r)) ** 2 < 1
            img[eye] = (200, 200, 200) if au45[i] < 1 else (110, 160, 220)
        cv2.imwrite(str(folder / "ori_imgs" / f"{i}.jpg"), img)
        cv2.imwrite(str(folder / "parsing" / f"{i}.png"), labels)
        gt = img.copy()
        gt[(labels == BACKGROUND).all(-1)] = plate[(labels == BACKGROUND).all(-1)]
        cv2.imwrite(str(folder / "gt_imgs" / f"{i}.jpg"), gt)
        bgra = np.zeros((size, size, 4), np.uint8)
        body = torso | neck
        bgra[body, :3], bgra[body, 3] = img[body], 255
        cv2.imwrite(str(folder / "torso_imgs" / f"{i}.png"), bgra)
        # 68 landmarks: jaw, brows, nose, eyes on the face; the outer (48-59) and inner lips on the mouth
        a = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([u0 + 0.7 * r * np.cos(a), v0 + 0.8 * r * np.sin(a)], -1)
        b = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        lips = np.stack([u0 + 0.35 * r * np.cos(b), v0 + 0.5 * r + (0.05 + 0.12 * energy[i]) * r * np.sin(b)], -1)
        lms = np.concatenate([pts, lips])
        (folder / "ori_imgs" / f"{i}.lms").write_text("".join(f"{x:f} {y:f}\n" for x, y in lms))

    cut = int(f * 10 / 11)
    for name, ids in (("train", range(cut)), ("val", range(cut, f))):
        frames_json = []
        for i in ids:
            rot = rotation(euler[i])
            c2w = np.eye(4)
            c2w[:3, :3] = rot.T
            c2w[:3, 3] = -rot.T @ (trans[i] / 10)
            frames_json.append({"img_id": i, "aud_id": i, "transform_matrix": c2w.tolist()})
        doc = {"focal_len": focal, "cx": cx, "cy": cy, "frames": frames_json}
        (folder / f"transforms_{name}.json").write_text(json.dumps(doc, indent=2))
    params = {"id": torch.zeros(1, 100), "exp": torch.zeros(f, 79), "euler": torch.tensor(euler, dtype=torch.float32),
              "trans": torch.tensor(trans, dtype=torch.float32), "focal": torch.tensor([focal], dtype=torch.float32)}
    if not variant.startswith("ernerf"):
        params["vertices"] = torch.tensor(vertices, dtype=torch.float32)  # [F, V, 3], tracker units
    torch.save(params, folder / "track_params.pt")

    sep = "," if variant.startswith("ernerf") else ", "
    lines = [sep.join(["frame", "face_id", "timestamp", "confidence", "success", "AU01_r", "AU45_r", "AU45_c"])]
    lines += [sep.join([str(i + 1), "0", f"{i / 25:.3f}", "0.98", "1", "0.00", f"{au45[i]:.2f}",
                        "1" if au45[i] >= 1 else "0"]) for i in range(f)]
    (folder / "au.csv").write_text("\n".join(lines) + "\n")

    # speech features: the mouth opening is a linear function of them, so there is something to learn
    def windows(dim: int) -> np.ndarray:
        proj = rng.standard_normal(dim)
        w = rng.normal(0, 0.3, (f, 16, dim))
        w += energy[:, None, None] * proj[None, None, :]
        return w

    if variant in ("gaussiantalker", "adnerf"):
        ds = windows(29)  # float64, as the original's extract_ds_features.py writes it
        np.save(folder / "aud.npy", ds)
        if variant == "gaussiantalker":
            np.save(folder / "aud_ds.npy", ds)  # process.py's byte copy
        feats = ds
    elif variant == "ernerf":
        feats = rng.normal(0, 0.3, (f, 2, 1024)).astype(np.float32) + energy[:, None, None].astype(np.float32)
        np.save(folder / "aud_hu.npy", feats)
    elif variant == "ernerf-eo":
        feats = windows(44).astype(np.float32)
        np.save(folder / "aud_eo.npy", feats)
    elif variant == "ernerf-wav2vec":
        feats = windows(32).astype(np.float32)
        np.save(folder / "aud.npy", feats)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return {"frames": f, "vertices": vertices if "vertices" in params else None, "au45": au45,
            "features": feats, "focal": focal, "split": cut}


def original_loader_problems(folder: Path, check_frames=(0, None, -1)) -> List[str]:
    """What the original GaussianTalker loader (reference §3.1-§3.3) would fail on in ``folder``; ``[]``
    when it would read everything. ``check_frames``: positions in the frame list whose per-frame files and
    units are checked (None = the middle one)."""
    import cv2
    import pandas as pd
    import torch

    folder = Path(folder)
    problems: List[str] = []
    # 1. audio: aud_ds.npy only, 3-D [M, 16, 29] (permuted to [M, 29, 16])
    aud = folder / "aud_ds.npy"
    if not aud.is_file():
        problems.append("aud_ds.npy: missing")
    else:
        a = np.load(aud)
        if a.ndim != 3 or a.shape[1:] != (16, 29):
            problems.append(f"aud_ds.npy: shape {a.shape}, the original needs [M, 16, 29]")
    # transforms: focal_len, cx, cy, frames (img_id, aud_id)
    frames, intrinsics = [], set()
    for name in ("train", "val"):
        path = folder / f"transforms_{name}.json"
        if not path.is_file():
            problems.append(f"{path.name}: missing")
            continue
        doc = json.loads(path.read_text())
        missing = {"focal_len", "cx", "cy", "frames"} - set(doc)
        if missing:
            problems.append(f"{path.name}: no {sorted(missing)}")
            continue
        intrinsics.add((doc["focal_len"], doc["cx"], doc["cy"]))
        for fr in doc["frames"]:
            if "img_id" not in fr or "aud_id" not in fr:
                problems.append(f"{path.name}: a frame without img_id / aud_id")
                break
            frames.append(int(fr["img_id"]))
    if len(intrinsics) != 1 or not frames:
        return problems + ["transforms: no frames, or the two files disagree on focal_len / cx / cy"]
    focal, cx, cy = intrinsics.pop()
    w, h = round(2 * cx), round(2 * cy)
    last = max(frames)
    # 2. eye: pandas, column " AU45_r" (with OpenFace's leading space), indexed by img_id
    try:
        au = pd.read_csv(folder / "au.csv")
        if " AU45_r" not in au.columns:
            problems.append(f"au.csv: no ' AU45_r' column (columns: {list(au.columns)[:6]})")
        elif len(au) <= last:
            problems.append(f"au.csv: {len(au)} rows, img_id goes up to {last}")
    except FileNotFoundError:
        problems.append("au.csv: missing")
    # 6. initial point cloud: mean over frames of track_params["vertices"]; cameras from euler / trans
    params = torch.load(folder / "track_params.pt", map_location="cpu", weights_only=True)
    for key in ("euler", "trans", "focal", "vertices"):
        if key not in params:
            problems.append(f"track_params.pt: no {key!r}")
    if {"euler", "trans"} <= set(params) and min(len(params["euler"]), len(params["trans"])) <= last:
        problems.append(f"track_params.pt: {len(params['euler'])} poses, img_id goes up to {last}")
    verts = params.get("vertices")
    if verts is not None and (verts.ndim != 3 or verts.shape[-1] != 3):
        problems.append(f"track_params.pt: vertices of shape {tuple(verts.shape)}, the original needs [F, V, 3]")
        verts = None
    mean = verts.float().mean(0).numpy().astype(np.float64) if verts is not None else None
    # per-frame files (§3.3) and units
    for pos in check_frames:
        k = frames[len(frames) // 2] if pos is None else frames[pos]
        img = cv2.imread(str(folder / "ori_imgs" / f"{k}.jpg"))
        if img is None or img.shape[:2] != (h, w):
            problems.append(f"ori_imgs/{k}.jpg: missing or not {w}x{h}")
            continue
        try:
            lms = np.loadtxt(folder / "ori_imgs" / f"{k}.lms")
        except OSError:
            problems.append(f"ori_imgs/{k}.lms: missing")
            continue
        if lms.shape != (68, 2):
            problems.append(f"ori_imgs/{k}.lms: shape {lms.shape}, not 68 x 2")
            continue
        parsing = cv2.imread(str(folder / "parsing" / f"{k}.png"))
        if parsing is None or parsing.shape[:2] != (h, w) or not (parsing == HEAD).all(-1).any():
            problems.append(f"parsing/{k}.png: missing, of another size, or no head colour BGR {HEAD}")
        torso = cv2.imread(str(folder / "torso_imgs" / f"{k}.png"), cv2.IMREAD_UNCHANGED)
        if torso is None or torso.ndim != 3 or torso.shape[2] != 4:
            problems.append(f"torso_imgs/{k}.png: missing or not 4-channel")
        if mean is not None and {"euler", "trans", "focal"} <= set(params):
            posed_z = (mean @ rotation(params["euler"][k]).T + params["trans"][k].double().numpy())[:, 2]
            uv = project(mean, params["euler"][k], params["trans"][k].double().numpy(), float(params["focal"][0]),
                         cx, cy)
            lo, hi = uv.min(0), uv.max(0)
            inside = ((lms >= lo - 2) & (lms <= hi + 2)).all(1).mean()
            ratio = (hi - lo) / np.maximum(lms.max(0) - lms.min(0), 1e-6)
            if not (posed_z < 0).all() or inside < 0.9 or not ((ratio > 0.9) & (ratio < 3)).all():
                problems.append(f"frame {k}: the mean vertices posed with its euler / trans and projected with "
                                f"focal {float(params['focal'][0]):.1f} do not cover its landmarks (units?): "
                                f"{inside:.0%} inside, size ratio {np.round(ratio, 2).tolist()}")
    if cv2.imread(str(folder / "bc.jpg")) is None:
        problems.append("bc.jpg: missing")
    return problems

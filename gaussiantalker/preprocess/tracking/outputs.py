"""Writing a tracking result in the dataset format: ``track_params.pt``, ``transforms_{train,val}.json``,
``points3d.ply`` and a preview video. Every file is written under a temporary name and renamed.

* ``track_params.pt``: the original's keys — ``id [1, Ni]``, ``exp [F, Ne]``, ``euler [F, 3]``,
  ``trans [F, 3]``, ``focal [1]``, ``vertices [1, N, 3]`` (float32, CPU). ``vertices`` is the canonical
  point cloud in tracker units (``points3d.ply`` / 0.1): what the original's loader computes as the mean
  over frames of its per-frame ``[F, 34650, 3]`` vertices, stored once (360 KB for 30,000 points, where
  the original's per-frame vertices take ~3 GB for 5 minutes), so the original initialises its Gaussians
  from it unchanged.
* ``transforms_*.json`` (ER-NeRF convention): ``focal_len``, ``cx = W/2``, ``cy = H/2``, ``frames`` with
  ``img_id``, ``aud_id`` and ``transform_matrix`` = camera-to-world ``[Rotᵀ | -Rotᵀ·trans/10]``
  (:func:`gaussiantalker.camera.c2w_from_pose`); train = first ``int(F·10/11)`` frames, val = the rest.
* ``points3d.ply``: the canonical cloud in scene units (tracker units x 0.1, the units of
  ``transform_matrix``): BFM — the sub-mesh vertices of the fitted identity with the clip's mean
  expression (what the original averages over frames); offline — :func:`.surface.dense_head_surface`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Union

import numpy as np
import torch

from ...camera import TRANSFORMS_SCALE, c2w_from_pose, rotation_from_euler
from ...fileio import atomic_write
from ...plyio import PointCloud, write_ply
from .fit import TrackingResult
from .surface import dense_head_surface

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def write_track_params(path: PathLike, result: TrackingResult, cloud: Optional[PointCloud] = None) -> Path:
    """``track_params.pt`` with the original's keys; ``vertices`` = ``[1, N, 3]`` ``cloud`` (scene units,
    default :func:`canonical_point_cloud`) in tracker units (see the module docstring)."""
    cloud = canonical_point_cloud(result) if cloud is None else cloud
    vertices = torch.from_numpy(np.asarray(cloud.xyz, dtype=np.float64) / TRANSFORMS_SCALE).float()[None]
    params = {
        "id": result.id.reshape(1, -1).float().cpu(),
        "exp": result.exp.float().cpu(),
        "euler": result.euler.float().cpu(),
        "trans": result.trans.float().cpu(),
        "focal": torch.tensor([result.focal], dtype=torch.float32),
        "vertices": vertices.contiguous(),
    }
    return atomic_write(Path(path), lambda tmp: torch.save(params, tmp))


def split_index(num_frames: int) -> int:
    """First validation frame: train = ``[0, int(F·10/11))``, val = the rest (reference §2.9)."""
    return int(num_frames * 10 / 11)


def tracking_outliers(result: TrackingResult, factor: float = 4.0, floor_px: float = 3.0) -> np.ndarray:
    """``[F]`` bool: frames whose mean landmark fit error is above ``factor`` x the clip's median frame error and
    above ``floor_px`` pixels (a lost or wrong track: a hand before the face, a landmark detector that jumped)."""
    err = result.reprojection_error().mean(1).double().numpy()  # [F] pixels
    return (err > factor * float(np.median(err))) & (err > floor_px)


def write_transforms(folder: PathLike, result: TrackingResult,
                     frame_ids: Optional[Sequence[int]] = None, exclude: Sequence[int] = ()) -> Dict[str, Path]:
    """``transforms_train.json`` and ``transforms_val.json`` in ``folder``.

    Args:
        frame_ids: image index of each tracked frame (default ``0..F-1``); also used as ``aud_id``.
        exclude: positions of tracked frames left out of both splits (no face, tracking outliers); the split
            point stays where it is for the whole clip.
    """
    n = result.num_frames
    ids = list(range(n)) if frame_ids is None else [int(i) for i in frame_ids]
    if len(ids) != n:
        raise ValueError(f"frame_ids has {len(ids)} entries for {n} tracked frames")
    c2w = c2w_from_pose(result.euler.double(), result.trans.double(), TRANSFORMS_SCALE).numpy()
    frames = [{"img_id": i, "aud_id": i, "transform_matrix": m.tolist()} for i, m in zip(ids, c2w)]
    h, w = result.image_size
    cut = split_index(n)
    drop = {int(i) for i in exclude}
    keep = [k for k in range(n) if k not in drop]
    if not any(k < cut for k in keep) or not any(k >= cut for k in keep):
        # Never an empty split: the original's split of the whole clip if the exclusions would empty one.
        keep = list(range(n))
    out = {}
    for name, part in (("train", [frames[k] for k in keep if k < cut]), ("val", [frames[k] for k in keep if k >= cut])):
        doc = {"focal_len": float(result.focal), "cx": float(w / 2), "cy": float(h / 2), "frames": part}
        path = Path(folder) / f"transforms_{name}.json"
        out[name] = atomic_write(path, lambda tmp, d=doc: tmp.write_text(json.dumps(d, indent=1)))
    return out


def canonical_point_cloud(result: TrackingResult, num_points: int = 30000) -> PointCloud:
    """The cloud that initialises the Gaussians, in scene units (see the module docstring)."""
    model = result.model
    if model.learns_expressions:
        surf = dense_head_surface(result.shape68.numpy(), num_points)
        return PointCloud(xyz=surf.points * TRANSFORMS_SCALE, normals=surf.normals)
    mean_exp = result.exp.double().mean(0, keepdim=True)
    with torch.no_grad():
        verts = model.to(dtype=torch.float64).geometry(result.id.double(), mean_exp)[0]
    return PointCloud(xyz=(verts * TRANSFORMS_SCALE).numpy())


def write_point_cloud(path: PathLike, result: TrackingResult, num_points: int = 30000,
                      cloud: Optional[PointCloud] = None) -> Path:
    return write_ply(path, canonical_point_cloud(result, num_points) if cloud is None else cloud)


# ----------------------------------------------------------------------------------------------
# Preview
# ----------------------------------------------------------------------------------------------


def _dots(img: np.ndarray, pts: np.ndarray, colour, radius: int) -> None:
    h, w = img.shape[:2]
    ok = np.isfinite(pts).all(1)
    p = np.round(pts[ok]).astype(int)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy > radius * radius:
                continue
            x, y = p[:, 0] + dx, p[:, 1] + dy
            inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            img[y[inside], x[inside]] = colour


def _axes_2d(result: TrackingResult, index: int, length: float = 0.5) -> np.ndarray:
    """``[3, 2, 2]`` pixel segments of the head's x / y / z axes drawn from the fitted nose tip."""
    rot = rotation_from_euler(result.euler[index].double())
    origin = result.shape68[30].double()
    ends = torch.cat([origin[None], origin[None] + length * torch.eye(3, dtype=torch.float64)])
    cam = ends @ rot.T + result.trans[index].double()
    uv = torch.stack([-result.focal * cam[:, 0] / cam[:, 2] + result.cx,
                      result.focal * cam[:, 1] / cam[:, 2] + result.cy], -1).numpy()
    return np.stack([np.stack([uv[0], uv[i + 1]]) for i in range(3)])


def render_preview_frame(frame: np.ndarray, result: TrackingResult, index: int) -> np.ndarray:
    """One preview frame: detected landmarks (red), fitted landmarks (green), head axes (x red,
    y green, z blue) from the nose tip."""
    img = np.array(frame, dtype=np.uint8, copy=True)
    scale = max(1, round(max(img.shape[:2]) / 512))
    for (a, b), colour in zip(_axes_2d(result, index), ((255, 60, 60), (60, 255, 60), (80, 80, 255))):
        t = np.linspace(0, 1, 200)[:, None]
        _dots(img, a + t * (b - a), colour, scale)
    _dots(img, result.landmarks[index].numpy(), (255, 40, 40), 2 * scale)
    _dots(img, result.landmarks_fit[index].numpy(), (40, 255, 40), scale)
    return img


def write_preview(path: PathLike, frames: Iterable[np.ndarray], result: TrackingResult, fps: float = 25.0,
                  max_frames: Optional[int] = 250) -> Path:
    """An H.264 mp4 of the fitted landmarks over the frames (ffmpeg from ``imageio-ffmpeg``).

    Args:
        frames: ``[H, W, 3]`` uint8 RGB frames in tracking order (an array or an iterator).
        max_frames: stop after this many frames (None: all).
    """
    import imageio_ffmpeg

    path = Path(path)
    h, w = result.image_size
    limit = result.num_frames if max_frames is None else min(max_frames, result.num_frames)

    def write(tmp: Path) -> None:
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo",
               "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
               "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast",
               "-crf", "23", "-pix_fmt", "yuv420p", "-f", "mp4", str(tmp)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        count = 0
        try:
            for i, frame in zip(range(limit), frames):
                if frame.shape != (h, w, 3):
                    raise ValueError(f"preview frame {i} has shape {frame.shape}, expected {(h, w, 3)}")
                proc.stdin.write(render_preview_frame(frame, result, i).tobytes())
                count += 1
        finally:
            proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace")
            code = proc.wait()
        if code != 0:
            raise RuntimeError(f"ffmpeg failed writing the preview ({code}): {err.strip()}")
        if count == 0:
            raise ValueError("no frames given for the preview")

    return atomic_write(path, write)


@dataclass
class TrackingOutputs:
    """Files written by :func:`write_tracking_outputs` and a summary for ``meta.json``."""

    track_params: Path
    transforms_train: Path
    transforms_val: Path
    points3d: Path
    preview: Optional[Path]
    model: str
    focal: float
    num_frames: int
    median_reprojection_px: float
    median_jitter_deg: float
    timings: Dict[str, float] = field(default_factory=dict)


def write_tracking_outputs(folder: PathLike, result: TrackingResult, frames: Optional[Iterable[np.ndarray]] = None,
                           frame_ids: Optional[Sequence[int]] = None, num_points: int = 30000,
                           preview_name: str = "track_preview.mp4", exclude: Sequence[int] = ()) -> TrackingOutputs:
    """Write all tracking outputs into ``folder`` (the preview only when ``frames`` are given); ``exclude``: see
    :func:`write_transforms`."""
    folder = Path(folder)
    cloud = canonical_point_cloud(result, num_points)  # points3d.ply, and track_params.pt's vertices
    params = write_track_params(folder / "track_params.pt", result, cloud)
    tf = write_transforms(folder, result, frame_ids, exclude)
    ply = write_point_cloud(folder / "points3d.ply", result, num_points, cloud)
    preview = write_preview(folder / preview_name, frames, result) if frames is not None else None
    jitter = result.rotation_jitter_deg()
    return TrackingOutputs(
        track_params=params, transforms_train=tf["train"], transforms_val=tf["val"], points3d=ply,
        preview=preview, model=result.model_name, focal=result.focal, num_frames=result.num_frames,
        median_reprojection_px=float(result.reprojection_error().median()),
        median_jitter_deg=float(jitter.median()) if jitter.numel() else 0.0, timings=dict(result.timings),
    )


__all__ = ["write_track_params", "write_transforms", "canonical_point_cloud", "write_point_cloud",
           "write_preview", "render_preview_frame", "write_tracking_outputs", "TrackingOutputs", "split_index",
           "tracking_outliers"]

"""Continue a tracked pose sequence for as long as the driving audio lasts.

A trained model can only show the head poses, eye blinks and torso/background frames that were
tracked in its video (``K`` frames). A driving audio of any length needs a sequence of any length, so
output frame ``j`` reads a *playhead* position ``u(j)`` in ``[0, K-1]``:

* ``"track"``: ``u`` runs forward one frame per frame (output frame ``j`` is tracked frame ``j`` as long
  as the sequence lasts), then turns and runs backward, then forward again (ping-pong). A plain
  reflection would reverse the head's velocity in one frame (a visible jolt), so each turn after the
  first pass is *blended*: within ``turn`` frames of a turn the playhead follows a parabola whose slope
  goes smoothly from +1 to -1 (the motion slows down, stops and comes back; the velocity is continuous).
  Positions inside a turn are fractional: the pose, blink and background of a fractional position are
  interpolated between the two neighbouring tracked frames (:func:`blend_c2w`).
* ``"static"``: ``u = 0`` for every frame (the first frame's pose and background held still).

The schedule is a pure function of ``j`` (no state), so any chunk of frames can be computed on its own
(batches, streaming) and gives the same positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

Tensor = torch.Tensor

POSE_MODES = ("track", "static")

__all__ = ["POSE_MODES", "PoseSchedule", "blend_c2w", "matrix_from_quat", "pose_track", "quat_from_matrix"]


@dataclass(frozen=True)
class PoseSchedule:
    """Playhead positions over a tracked sequence of ``length`` frames.

    Args:
        length: number of tracked frames ``K`` (>= 1).
        mode: ``"track"`` (ping-pong with blended turns) or ``"static"`` (frame 0 held).
        turn: half-width of a blended turn in frames (the playhead decelerates over ``turn`` frames and
            accelerates back over ``turn`` frames); clipped to ``(K-1)/2`` for short sequences.
    """

    length: int
    mode: str = "track"
    turn: float = 4.0

    def __post_init__(self) -> None:
        if int(self.length) < 1:
            raise ValueError(f"a pose sequence needs at least one frame, got length={self.length}")
        if self.mode not in POSE_MODES:
            raise ValueError(f"pose must be one of {POSE_MODES}, got {self.mode!r}")
        if self.turn < 0:
            raise ValueError(f"turn must be >= 0, got {self.turn}")

    def positions(self, frames: np.ndarray) -> np.ndarray:
        """Playhead positions ``[n]`` float64 in ``[0, K-1]`` of output frames ``frames`` ``[n]`` (ints >= 0)."""
        j = np.asarray(frames, dtype=np.float64)
        if j.ndim != 1 or (j.size and j.min() < 0):
            raise ValueError("frames must be a 1-D array of non-negative frame indices")
        last = float(self.length - 1)
        if self.mode == "static" or last == 0.0:
            return np.zeros_like(j)
        r = min(float(self.turn), last / 2.0)
        period = 2.0 * last
        t = np.mod(j, period)
        u = np.where(t <= last, t, period - t)  # plain reflection (triangle wave)
        if r > 0:
            d_top = t - last  # distance to the turn at the end of the sequence
            top = np.abs(d_top) < r
            u = np.where(top, last - r / 2.0 - d_top ** 2 / (2.0 * r), u)
            # Turns at the start of the sequence: not on the first pass (frame 0 is tracked frame 0).
            d_bot = np.where(t > last, t - period, t)
            bot = (np.abs(d_bot) < r) & (j >= period - r)
            u = np.where(bot, r / 2.0 + d_bot ** 2 / (2.0 * r), u)
        return np.clip(u, 0.0, last)

    def neighbours(self, frames: np.ndarray) -> tuple:
        """``(i0 [n] int64, i1 [n] int64, w [n] float32)``: position = ``(1-w)·i0 + w·i1``, ``i1 = i0 + 1``
        clipped to the sequence (``w = 0`` exactly at integer positions)."""
        u = self.positions(frames)
        i0 = np.floor(u).astype(np.int64)
        w = (u - i0).astype(np.float32)
        i1 = np.minimum(i0 + 1, self.length - 1)
        return i0, i1, w


def quat_from_matrix(rot: Tensor) -> Tensor:
    """Unit quaternions (w, x, y, z) ``[..., 4]`` of rotation matrices ``[..., 3, 3]`` (w >= 0)."""
    if rot.shape[-2:] != (3, 3):
        raise ValueError(f"rot must be [..., 3, 3], got {tuple(rot.shape)}")
    m = rot.double()
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # Shepperd's method: take the largest of the four squared components for stability.
    q2 = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    k = q2.argmax(-1, keepdim=True)
    def m_(i: int, j: int) -> Tensor:
        return m[..., i, j]

    cands = torch.stack([
        torch.stack([q2[..., 0], m_(2, 1) - m_(1, 2), m_(0, 2) - m_(2, 0), m_(1, 0) - m_(0, 1)], -1),
        torch.stack([m_(2, 1) - m_(1, 2), q2[..., 1], m_(0, 1) + m_(1, 0), m_(0, 2) + m_(2, 0)], -1),
        torch.stack([m_(0, 2) - m_(2, 0), m_(0, 1) + m_(1, 0), q2[..., 2], m_(1, 2) + m_(2, 1)], -1),
        torch.stack([m_(1, 0) - m_(0, 1), m_(0, 2) + m_(2, 0), m_(1, 2) + m_(2, 1), q2[..., 3]], -1),
    ], -2)  # [..., 4 candidates, 4]
    q = torch.gather(cands, -2, k[..., None].expand(*k.shape[:-1], 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)
    return q.to(rot.dtype)


def matrix_from_quat(q: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` of quaternions (w, x, y, z) ``[..., 4]`` (normalised here)."""
    if q.shape[-1:] != (4,):
        raise ValueError(f"q must be [..., 4], got {tuple(q.shape)}")
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, -2)


def blend_c2w(a: Tensor, b: Tensor, w: Tensor) -> Tensor:
    """Interpolate camera-to-world matrices: slerp of the rotations, lerp of the camera centres.

    Args:
        a, b: ``[B, 4, 4]`` rigid transforms.
        w: ``[B]`` weights in [0, 1] (0 gives ``a`` exactly, 1 gives ``b`` exactly).
    Returns:
        ``[B, 4, 4]`` in ``a``'s dtype.
    """
    if a.shape != b.shape or a.ndim != 3 or a.shape[-2:] != (4, 4) or w.shape != a.shape[:1]:
        raise ValueError(f"need a, b [B, 4, 4] and w [B]; got {tuple(a.shape)}, {tuple(b.shape)}, {tuple(w.shape)}")
    out = a.clone()
    mix = w > 0
    if not bool(mix.any()):
        return out
    wd = w.double()[:, None]
    qa, qb = quat_from_matrix(a[:, :3, :3].double()), quat_from_matrix(b[:, :3, :3].double())
    dot = (qa * qb).sum(-1, keepdim=True)
    qb = torch.where(dot < 0, -qb, qb)
    dot = dot.abs().clamp(max=1.0)
    theta = torch.acos(dot)
    sin = torch.sin(theta)
    small = sin < 1e-8
    s = torch.where(small, torch.ones_like(sin), sin)
    ka = torch.where(small, 1 - wd, torch.sin((1 - wd) * theta) / s)
    kb = torch.where(small, wd, torch.sin(wd * theta) / s)
    rot = matrix_from_quat(ka * qa + kb * qb)
    centre = (1 - wd) * a[:, :3, 3].double() + wd * b[:, :3, 3].double()
    blended = torch.zeros_like(a, dtype=torch.float64)
    blended[:, :3, :3] = rot
    blended[:, :3, 3] = centre
    blended[:, 3, 3] = 1.0
    out[mix] = blended[mix].to(a.dtype)
    full = w >= 1
    out[full] = b[full]
    return out


def pose_track(data) -> "tuple[list[int], torch.Tensor, torch.Tensor]":
    """The pose sequence a :class:`Talker` follows: every tracked frame of ``data`` (train then val split),
    ordered by frame id. Returns ``(img_ids [K], c2w [K, 4, 4] float32, eye [K] float32)``."""
    refs = [(img_id, "train", k) for k, img_id in enumerate(data.train_ids)]
    refs += [(img_id, "val", k) for k, img_id in enumerate(data.val_ids)]
    refs.sort()
    if not refs:
        raise ValueError(f"dataset {data.path} has no frames")
    splits = {"train": data.split("train"), "val": data.split("val")}
    c2w = torch.stack([splits[name].c2w[k] for _, name, k in refs]).float()
    eye = torch.stack([splits[name].eye[k] for _, name, k in refs]).float()
    return [r[0] for r in refs], c2w, eye

"""Lip-sync measures: mouth opening from 68-point landmarks, its agreement with a real clip or with the
driving audio, and the pose-normalised lip code the model learns from.

All functions are stateless numpy on per-frame arrays (``F`` frames). Landmarks are the iBUG 68-point
layout, ``[F, 68, 2]`` pixels (x = column, y = row); frames without a face are NaN rows.

* :func:`mouth_opening` — the inner-lip gap divided by the face height (nose bridge 27 to chin 8): a
  unit-free number, about 0 for closed lips and 0.05-0.25 for speech, that does not depend on the image
  size or on the distance to the camera.
* :func:`audio_envelope` — the speech energy per video frame (dB), the signal a moving mouth should follow.
* :func:`lip_sync_scores` — Pearson correlation and amplitude ratio of a rendered mouth against the real one.
* :func:`audio_sync_scores` — how well a mouth follows an audio envelope, and whether it closes in silences.
* :func:`lip_shape` / :class:`LipCode` — mouth landmarks aligned on the rigid face points (similarity
  transform), reduced to a few principal components: the tracked lip code the audio path is taught.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np

__all__ = [
    "AudioSyncScores", "LipCode", "LipSyncScores", "audio_envelope", "audio_sync_scores", "best_lag", "lagged_pearson",
    "closed_gap", "lip_shape", "lip_sync_scores", "mouth_opening", "opening_readout", "pearson", "silent_frames",
]

#: Inner-lip point pairs of the iBUG layout (upper, lower): 61-67, 62-66, 63-65.
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
#: Rigid points a frame's landmarks are aligned on: eye corners, nose bridge and base.
RIGID_POINTS = (36, 39, 42, 45, 27, 28, 29, 30, 31, 33, 35)
MOUTH = slice(48, 68)
#: Envelope: RMS over this many seconds centred on each frame, in dB relative to full scale.
ENVELOPE_WINDOW_S = 0.08
#: A frame is silent when its envelope is this many dB below the clip's loud level (95th percentile).
SILENCE_DB = 30.0
#: Silences shorter than this many frames are not scored (the mouth needs a moment to close).
SILENCE_MIN_FRAMES = 5


def _points(lms: np.ndarray) -> np.ndarray:
    a = np.asarray(lms, dtype=np.float64)
    if a.ndim != 3 or a.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must have shape [F, 68, 2], got {a.shape}")
    return a


def mouth_opening(lms: np.ndarray) -> np.ndarray:
    """Inner-lip gap / face height per frame, ``[F]`` (NaN where the landmarks are NaN).

    The gap is the mean of the three vertical inner-lip distances (61-67, 62-66, 63-65); the face height
    is the distance from the top of the nose bridge (27) to the chin (8)."""
    p = _points(lms)
    gap = np.mean([np.linalg.norm(p[:, a] - p[:, b], axis=-1) for a, b in INNER_LIP_PAIRS], axis=0)
    height = np.linalg.norm(p[:, 27] - p[:, 8], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return gap / height


def opening_readout(codes: np.ndarray, opening: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The mouth opening read linearly out of lip codes: the least-squares fit of ``opening [N]`` on ``codes
    [N, K]`` and a constant, over the rows where both are finite. Returns ``codes [M, K] -> opening [M]`` (float64).
    Scores an audio predictor without rendering: its predicted codes read out against the tracked opening."""
    y, target = np.asarray(codes, np.float64), np.asarray(opening, np.float64)
    ok = np.isfinite(target) & np.isfinite(y).all(1)
    weights = np.linalg.lstsq(np.c_[y[ok], np.ones(int(ok.sum()))], target[ok], rcond=None)[0]

    def read(c: np.ndarray) -> np.ndarray:
        c = np.asarray(c, np.float64)
        return np.c_[c, np.ones(len(c))] @ weights

    return read


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the frames where both are finite (NaN if fewer than 3 or a constant)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    x, y = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else float("nan")


def lagged_pearson(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """``pearson(a[t], b[t + k])`` over the frames where both exist."""
    k = int(k)
    return pearson(a[max(0, -k): len(a) - max(0, k)], b[max(0, k): len(b) - max(0, -k)])


def best_lag(a: np.ndarray, b: np.ndarray, max_lag: int = 4) -> tuple[int, float]:
    """The shift ``k`` in ``[-max_lag, max_lag]`` maximising ``pearson(a[t], b[t + k])`` and that value."""
    best = (0, pearson(a, b))
    max_lag = min(int(max_lag), len(a) - 3)  # at least 3 overlapping frames
    for k in range(-max_lag, max_lag + 1):
        if k == 0:
            continue
        r = lagged_pearson(a, b, k)
        if np.isfinite(r) and (not np.isfinite(best[1]) or r > best[1]):
            best = (k, r)
    return best


def audio_envelope(samples: np.ndarray, num_frames: int, fps: float = 25.0, sample_rate: int = 16000,
                   window_s: float = ENVELOPE_WINDOW_S) -> np.ndarray:
    """Speech energy per video frame: RMS of the ``window_s`` seconds centred on frame ``j`` (time
    ``j / fps``), in dB full scale (floored at -100 dB). ``samples``: ``[T]`` float in [-1, 1]. ``[F]``."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    half = max(1, int(round(window_s * sample_rate / 2)))
    sq = np.concatenate([[0.0], np.cumsum(x * x)])
    centres = np.round(np.arange(num_frames) * sample_rate / fps).astype(np.int64)
    lo, hi = np.clip(centres - half, 0, x.size), np.clip(centres + half, 0, x.size)
    n = np.maximum(hi - lo, 1)
    rms = np.sqrt(np.maximum((sq[hi] - sq[lo]) / n, 0.0))
    return 20.0 * np.log10(np.maximum(rms, 1e-5))


def silent_frames(envelope_db: np.ndarray, below_db: float = SILENCE_DB,
                  min_frames: int = SILENCE_MIN_FRAMES) -> np.ndarray:
    """Frames inside silences: runs of at least ``min_frames`` frames whose envelope is ``below_db`` under
    the clip's loud level (its 95th percentile), the run's first and last 2 frames left out (the mouth is
    still closing / already opening there). ``[F]`` bool."""
    env = np.asarray(envelope_db, np.float64)
    quiet = env < np.percentile(env, 95) - below_db
    out = np.zeros_like(quiet)
    i = 0
    while i < len(quiet):
        if not quiet[i]:
            i += 1
            continue
        j = i
        while j < len(quiet) and quiet[j]:
            j += 1
        if j - i >= min_frames:
            out[i + 2: j - 2] = True
        i = j
    return out


def closed_gap(opening: np.ndarray) -> float:
    """The subject's typical closed-mouth opening: the 10th percentile of its (finite) openings."""
    o = np.asarray(opening, np.float64)
    o = o[np.isfinite(o)]
    return float(np.percentile(o, 10)) if o.size else float("nan")


@dataclass
class LipSyncScores:
    """A rendered mouth against the real one on the same frames."""

    pearson: float  # correlation of the openings, same frames
    amplitude_ratio: float  # std(rendered opening) / std(real opening)
    best_lag: int  # frames (rendered later than real when > 0) with the highest correlation
    best_lag_pearson: float
    mean_rendered: float
    mean_real: float
    frames: int  # frames where both have a face

    def as_dict(self) -> dict:
        return asdict(self)


def lip_sync_scores(rendered_opening: np.ndarray, real_opening: np.ndarray) -> LipSyncScores:
    """Compare two mouth-opening series of the same frames (:func:`mouth_opening` of each clip)."""
    r, g = np.asarray(rendered_opening, np.float64), np.asarray(real_opening, np.float64)
    if r.shape != g.shape:
        raise ValueError(f"the series differ in length: {r.shape} and {g.shape}")
    ok = np.isfinite(r) & np.isfinite(g)
    sd = float(np.std(g[ok])) if ok.sum() > 1 else float("nan")
    amp = float(np.std(r[ok])) / sd if sd and np.isfinite(sd) and sd > 0 else float("nan")
    lag, lag_r = best_lag(g, r)
    return LipSyncScores(pearson=pearson(r, g), amplitude_ratio=amp, best_lag=int(lag), best_lag_pearson=lag_r,
                         mean_rendered=float(np.mean(r[ok])) if ok.any() else float("nan"),
                         mean_real=float(np.mean(g[ok])) if ok.any() else float("nan"), frames=int(ok.sum()))


@dataclass
class AudioSyncScores:
    """A mouth (rendered or real) against the audio that drives (or accompanies) it."""

    envelope_pearson: float  # correlation of the opening with the energy envelope (dB), same frames
    best_lag: int  # frames (mouth later than audio when > 0) with the highest correlation
    best_lag_pearson: float
    silent_frames: int  # frames inside silences (see silent_frames)
    silence_opening: Optional[float]  # mean opening on those frames (None without silences)
    opening_std: float
    frames: int

    def as_dict(self) -> dict:
        return asdict(self)


def audio_sync_scores(opening: np.ndarray, envelope_db: np.ndarray) -> AudioSyncScores:
    """Correlation of a mouth-opening series with an audio envelope of the same frames, and the mouth's
    opening inside the audio's silences."""
    o, e = np.asarray(opening, np.float64), np.asarray(envelope_db, np.float64)
    if o.shape != e.shape:
        raise ValueError(f"the series differ in length: {o.shape} and {e.shape}")
    lag, lag_r = best_lag(e, o)
    quiet = silent_frames(e) & np.isfinite(o)
    ok = np.isfinite(o)
    return AudioSyncScores(envelope_pearson=pearson(o, e), best_lag=int(lag), best_lag_pearson=lag_r,
                           silent_frames=int(quiet.sum()),
                           silence_opening=float(np.mean(o[quiet])) if quiet.any() else None,
                           opening_std=float(np.std(o[ok])) if ok.any() else float("nan"), frames=int(ok.sum()))


# --------------------------------------------------------------------------------------------------
# the lip code


def _similarity_to(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Scale, rotation ``[2, 2]`` and translation ``[2]`` mapping points ``src [P, 2]`` onto ``dst [P, 2]``
    in the least-squares sense (Umeyama, no reflection)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, s, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    rot = u @ np.diag([1.0, d]) @ vt
    scale = float((s * np.array([1.0, d])).sum() / max((a * a).sum(), 1e-12))
    return scale, rot, md - scale * rot @ ms


def lip_shape(lms: np.ndarray, reference: Optional[np.ndarray] = None) -> np.ndarray:
    """The 20 mouth landmarks of each frame in a common face frame, ``[F, 40]``.

    Each frame is mapped by the similarity transform that best aligns its rigid points (eye corners, nose)
    onto ``reference`` (``[68, 2]``; default: the mean of the frames, itself aligned), so head motion,
    distance and in-plane rotation drop out and what is left is the mouth's own shape. Units: the
    reference's face height (nose bridge to chin) is 1."""
    p = _points(lms)
    ok = np.isfinite(p).all(axis=(1, 2))
    if not ok.any():
        raise ValueError("no frame has finite landmarks")
    rigid = list(RIGID_POINTS)
    if reference is None:
        reference = p[ok][0]
        for _ in range(2):  # mean shape of the aligned frames (two Procrustes rounds suffice)
            aligned = []
            for q in p[ok]:
                s, r, t = _similarity_to(q[rigid], reference[rigid])
                aligned.append(q @ (s * r).T + t)
            reference = np.mean(aligned, axis=0)
    ref = np.asarray(reference, np.float64)
    unit = np.linalg.norm(ref[27] - ref[8])
    out = np.full((len(p), 40), np.nan)
    for i in np.flatnonzero(ok):
        s, r, t = _similarity_to(p[i][rigid], ref[rigid])
        mouth = p[i][MOUTH] @ (s * r).T + t
        out[i] = ((mouth - ref[MOUTH].mean(0)) / unit).reshape(-1)
    return out


@dataclass
class LipCode:
    """Principal components of the aligned mouth shapes of a clip's training frames, whitened.

    ``encode(shapes [F, 40]) -> [F, K]`` with unit variance per component on the training frames; the first
    component is, for speech, mostly the mouth opening."""

    mean: np.ndarray  # [40]
    basis: np.ndarray  # [K, 40] orthonormal rows
    scale: np.ndarray  # [K] std of each component on the training frames
    explained: np.ndarray  # [K] fraction of the variance each component explains

    @classmethod
    def fit(cls, shapes: np.ndarray, k: int) -> LipCode:
        x = np.asarray(shapes, np.float64)
        x = x[np.isfinite(x).all(1)]
        if len(x) < 2:
            raise ValueError("a lip code needs at least 2 frames with landmarks")
        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        var = s ** 2 / len(x)
        k = int(min(k, len(var)))
        basis = vt[:k]
        # Sign convention: each component correlates positively with the mouth opening, so that "+" reads
        # the same way in every model.
        proj = (x - mean) @ basis.T
        lower = x.reshape(-1, 20, 2)
        gap = (lower[:, 18, 1] - lower[:, 14, 1])  # 66 below 62 (rows grow downwards)
        for j in range(k):
            if pearson(proj[:, j], gap) < 0:
                basis[j] = -basis[j]
        return cls(mean=mean, basis=basis, scale=np.sqrt(np.maximum(var[:k], 1e-12)),
                   explained=var[:k] / max(var.sum(), 1e-12))

    def encode(self, shapes: np.ndarray) -> np.ndarray:
        return ((np.asarray(shapes, np.float64) - self.mean) @ self.basis.T) / self.scale

"""Eye blink (OpenFace's AU45 intensity) for the dataset's ``au.csv``.

Three sources, in this order of preference:

1. a user's ``au_csv`` (e.g. run OpenFace by hand): validated (an ``AU45_r`` column, numeric, one row per
   frame +- 2) and copied byte for byte (a file one or two rows short gets its last row repeated);
2. OpenFace's ``FeatureExtraction`` when it is on ``PATH`` (run on the dataset's 25 fps frames, its
   CSV validated the same way);
3. the offline default, :func:`au45_from_landmarks`: the eye-aspect ratio of the eye landmarks,
   normalised per subject onto OpenFace's 0-5 scale.

The eye-aspect ratio (EAR) of one eye is ``(|p2 - p6| + |p3 - p5|) / (2 |p1 - p4|)`` with ``p1``/``p4`` the
eye corners and ``p2, p3`` / ``p6, p5`` the upper / lower lid; the two eyes are averaged. With the 478
MediaPipe points it uses 3D distances (x, y and MediaPipe's depth, same pixel scale), which makes it
less sensitive to head yaw; with 68 points the 2D iBUG eye points. Normalisation: the open-eye EAR of
the subject is the :data:`OPEN_PERCENTILE` th percentile over the clip (blinks are a few percent of
frames); ``AU45 = 5 x clip((1 - EAR / open) / (1 - CLOSED_RATIO), 0, 1)``, so the open eye reads 0 and
a lid closed to :data:`CLOSED_RATIO` of the open EAR (a full blink) reads 5. The model reads
``clip(AU45, 0, 2) / 2`` (reference §3.2): 2 is reached at 32 % closure.

The CSV has OpenFace's layout: the columns ``frame, face_id, timestamp, confidence, success``, the 17
intensities ``AU01_r .. AU45_r`` and the 18 presences ``AU01_c .. AU45_c``, joined with OpenFace's
``", "`` separator (so the column is read as ``" AU45_r"`` by the original's loader). Only ``AU45_r`` and
``AU45_c`` are estimated; the other AUs are written as 0. ``frame`` counts from 1 as in OpenFace;
``success`` is 0 on frames whose landmarks were interpolated (no face detected).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

from ..fileio import atomic_write
from .steps import PreprocessError

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

OPEN_PERCENTILE = 90.0
CLOSED_RATIO = 0.2
ROW_TOLERANCE = 2
"""A user's / OpenFace's au.csv may have this many rows more or fewer than the video has frames."""

AU_INTENSITY = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15", "AU17",
                "AU20", "AU23", "AU25", "AU26", "AU45")
AU_PRESENCE = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15", "AU17",
               "AU20", "AU23", "AU25", "AU26", "AU28", "AU45")
COLUMNS = (["frame", "face_id", "timestamp", "confidence", "success"] + [f"{a}_r" for a in AU_INTENSITY]
           + [f"{a}_c" for a in AU_PRESENCE])

# MediaPipe mesh eye points: (corner, upper, upper, corner, lower, lower) as p1..p6 of the EAR.
MESH_EYES = ((33, 160, 158, 133, 153, 144), (362, 385, 387, 263, 373, 380))
IBUG_EYES = ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47))


def eye_aspect_ratio(points: np.ndarray) -> np.ndarray:
    """``[F, 478, 3]`` mesh points or ``[F, 68, 2]`` iBUG points -> ``[F]`` EAR averaged over both eyes."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[1] not in (68, 478):
        raise ValueError(f"points must have shape [F, 68, 2] or [F, 478, 3], got {pts.shape}")
    eyes = IBUG_EYES if pts.shape[1] == 68 else MESH_EYES
    ears = []
    for idx in eyes:
        p = pts[:, list(idx)]  # [F, 6, C]
        dist = np.linalg.norm(p[:, [1, 2, 0]] - p[:, [5, 4, 3]], axis=-1)  # [F, 3]: lids, lids, corners
        ears.append((dist[:, 0] + dist[:, 1]) / (2.0 * np.maximum(dist[:, 2], 1e-6)))
    return np.mean(ears, axis=0)


def au45_from_landmarks(points: np.ndarray) -> np.ndarray:
    """``[F]`` AU45 intensities on OpenFace's 0-5 scale from the eye landmarks (see the module doc)."""
    ear = eye_aspect_ratio(points)
    ok = np.isfinite(ear)
    if not ok.any():
        raise ValueError("no frame has eye landmarks")
    open_ear = float(np.percentile(ear[ok], OPEN_PERCENTILE))
    closure = (1.0 - ear / max(open_ear, 1e-6)) / (1.0 - CLOSED_RATIO)
    au = 5.0 * np.clip(closure, 0.0, 1.0)
    return np.where(ok, au, 0.0)


def write_au_csv(path: PathLike, au45: np.ndarray, success: np.ndarray, fps: float = 25.0) -> Path:
    """Write an OpenFace-layout ``au.csv`` (see the module doc), atomically.

    Args:
        au45: ``[F]`` AU45 intensities (0-5).
        success: ``[F]`` bool, a face was detected in the frame.
    """
    au45 = np.asarray(au45, dtype=np.float64)
    success = np.asarray(success, dtype=bool)
    if au45.ndim != 1 or success.shape != au45.shape:
        raise ValueError(f"au45 [F] and success [F] must match, got {au45.shape} and {success.shape}")
    lines = [", ".join(COLUMNS)]
    zeros_r = ["0.00"] * (len(AU_INTENSITY) - 1)
    zeros_c = ["0.00"] * (len(AU_PRESENCE) - 1)
    for i, (a, ok) in enumerate(zip(au45.tolist(), success.tolist())):
        row = [str(i + 1), "0", f"{i / fps:.3f}", "0.98" if ok else "0.00", "1" if ok else "0"]
        row += zeros_r + [f"{a:.2f}"] + zeros_c + ["1.00" if a >= 1.0 else "0.00"]
        lines.append(", ".join(row))
    text = "\n".join(lines) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def read_au45(path: PathLike) -> np.ndarray:
    """The ``AU45_r`` column of an OpenFace CSV as ``[F]`` float64 (header names are stripped).

    Raises:
        PreprocessError: unreadable file, no ``AU45_r`` column, or a value that is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"au.csv file {path} does not exist")
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PreprocessError(f"{path}: not a readable CSV file ({exc})") from exc
    if not rows:
        raise PreprocessError(f"{path}: empty file; expected OpenFace's CSV with an AU45_r column")
    header = [h.strip() for h in rows[0]]
    if "AU45_r" not in header:
        raise PreprocessError(
            f"{path}: no AU45_r column (columns: {', '.join(header[:8])}{', ...' if len(header) > 8 else ''}); "
            "expected the CSV written by OpenFace FeatureExtraction (run it with -aus)")
    col = header.index("AU45_r")
    values: List[float] = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        try:
            v = float(row[col])
        except (IndexError, ValueError):
            raise PreprocessError(f"{path}, line {n}: AU45_r value {row[col].strip() if col < len(row) else ''!r} "
                                  "is not a number") from None
        if not math.isfinite(v):
            raise PreprocessError(f"{path}, line {n}: AU45_r value {v} is not finite")
        values.append(v)
    return np.asarray(values, dtype=np.float64)


def validate_au_csv(path: PathLike, num_frames: Optional[int] = None) -> np.ndarray:
    """Check an OpenFace CSV (column present, numeric, ``num_frames`` +- :data:`ROW_TOLERANCE` rows);
    returns its AU45_r values. Raises PreprocessError naming the file and the problem."""
    values = read_au45(path)
    if num_frames is not None and abs(len(values) - num_frames) > ROW_TOLERANCE:
        raise PreprocessError(
            f"{path}: {len(values)} rows of AU45_r but the video has {num_frames} frames at 25 fps (allowed: "
            f"{num_frames - ROW_TOLERANCE}-{num_frames + ROW_TOLERANCE}); was it made from another video or "
            "another frame rate?")
    return values


def copy_file(src: PathLike, dest: PathLike) -> Path:
    """Byte copy of ``src`` to ``dest``, atomically."""
    return atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))


def _openface_header(line: str) -> str:
    """A CSV header in OpenFace's form: names joined by ``", "``, which pandas reads as ``" AU45_r"`` — the
    column name the original's loader asks for (``df[" AU45_r"]``)."""
    return ", ".join(name.strip() for name in next(csv.reader([line])))


def copy_au_csv(src: PathLike, dest: PathLike, rows: int, num_frames: int) -> Path:
    """Put a validated OpenFace CSV of ``rows`` data rows at ``dest``: a byte copy, except that a header
    without OpenFace's ``", "`` separator (a CSV re-saved by another tool) is rewritten in that form, so the
    original's loader finds ``" AU45_r"``, and a file one or two rows short gets its last row repeated, so
    every frame has a row (readers index rows by frame)."""
    lines = Path(src).read_text().splitlines()
    header = _openface_header(lines[0]) if lines else ""
    if rows >= num_frames and lines and lines[0] == header:
        return copy_file(src, dest)
    while lines and not lines[-1].strip():
        lines.pop()
    if lines[0] != header:
        logger.info("%s: header written with OpenFace's ', ' separator (as the original's loader reads it)", src)
    if rows < num_frames:
        logger.info("%s has %d rows for %d frames: its last row is repeated for the last %d frame(s)", src, rows,
                    num_frames, num_frames - rows)
    text = "\n".join([header] + lines[1:] + [lines[-1]] * max(0, num_frames - rows)) + "\n"
    return atomic_write(dest, lambda tmp: tmp.write_text(text))


def openface_exe() -> Optional[str]:
    """OpenFace's ``FeatureExtraction`` on PATH, or None."""
    return shutil.which("FeatureExtraction")


def run_openface(frames_dir: Path, num_frames: int, dest: Path, exe: str, fps: float = 25.0) -> np.ndarray:
    """Run OpenFace ``FeatureExtraction -aus`` on the frames (as a lossless 25 fps video, so the rows keep
    the frame order) and put its validated CSV at ``dest``. Returns the AU45 values."""
    from ..media import run_ffmpeg

    with tempfile.TemporaryDirectory(prefix="gt-openface-") as tmp:
        video = Path(tmp) / "frames.avi"
        run_ffmpeg(["-y", "-framerate", str(fps), "-start_number", "0", "-i", str(frames_dir / "%d.jpg"),
                    "-frames:v", str(num_frames), "-c:v", "mjpeg", "-q:v", "1", str(video)], path=frames_dir)
        out_dir = Path(tmp) / "out"
        proc = subprocess.run([exe, "-f", str(video), "-out_dir", str(out_dir), "-aus"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        csv_path = out_dir / "frames.csv"
        if proc.returncode != 0 or not csv_path.is_file():
            tail = proc.stdout.decode(errors="replace").strip().splitlines()[-5:]
            raise PreprocessError(f"OpenFace {exe} failed on {frames_dir} (exit {proc.returncode}): {' | '.join(tail)}")
        values = validate_au_csv(csv_path, num_frames)
        copy_au_csv(csv_path, dest, len(values), num_frames)
    return values


def blink_stats(au45: Sequence[float]) -> dict:
    """Small summary for meta.json: mean, fraction of frames with AU45 >= 1 (eyes at least 20 % closed)."""
    a = np.asarray(au45, dtype=np.float64)
    return {"frames": int(a.size), "mean": round(float(a.mean()), 4) if a.size else 0.0,
            "closed_fraction": round(float((a >= 1.0).mean()), 4) if a.size else 0.0}


__all__ = [
    "COLUMNS",
    "ROW_TOLERANCE",
    "au45_from_landmarks",
    "eye_aspect_ratio",
    "openface_exe",
    "read_au45",
    "run_openface",
    "validate_au_csv",
    "write_au_csv",
]

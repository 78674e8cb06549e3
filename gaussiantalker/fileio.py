"""Atomic file writes: the one way this library puts a file in place (never half-written); and the one reader and
writer of the dataset's ``.lms`` landmark files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

import numpy as np

PathLike = Union[str, os.PathLike]


def _default_mode() -> int:
    """Permissions a plain ``open()`` would give (``mkstemp`` creates files 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    The temporary file keeps ``path``'s suffix (some writers choose the format by it) and is removed
    when ``write`` raises or the process is interrupted before the rename. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_lms(path: PathLike, points68: np.ndarray) -> None:
    """Write ``[68, 2]`` landmarks in ER-NeRF's ``.lms`` format (68 lines ``x y``), atomically."""
    pts = np.asarray(points68, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"points68 must have shape [68, 2], got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError(f"points68 for {path} contains NaN/inf (frame without a face?)")
    text = "\n".join(f"{x:f} {y:f}" for x, y in pts) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_lms(path: PathLike) -> np.ndarray:
    """Read an ER-NeRF ``.lms`` file -> ``[68, 2]`` float64 (x = column, y = row, pixels).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (naming the file) for one that is not 68
    finite ``x y`` rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (the frame's landmarks)")
    try:
        pts = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: not a text file of 'x y' rows ({e})") from None
    if pts.shape != (68, 2):
        raise ValueError(f"{path}: expected 68 lines of 'x y', got an array of shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError(f"{path}: landmarks contain NaN or infinite values")
    return pts

"""Helpers of the preprocessing tests: synthetic input videos made with the real ffmpeg, file hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Iterable

from gaussiantalker.media import run_ffmpeg

MAY = "clips/Real3DPortrait__May_5s.mp4"
VFR = "clips/video-retalking__1.mp4"
PORTRAIT = "clips/LatentSync__demo1_video.mp4"


def make_video(path: Path, seconds: float, audio: bool = True, size: str = "320x240") -> Path:
    """A test-pattern video (no face) from ffmpeg's ``testsrc``, with a sine tone unless ``audio`` is False."""
    args = ["-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=25:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        args += ["-c:a", "aac", "-shortest"]
    run_ffmpeg(args + [str(path)], path=path)
    return path


def cut_video(src: Path, dest: Path, seconds: float) -> Path:
    """The first ``seconds`` of ``src`` without re-encoding."""
    run_ffmpeg(["-y", "-i", str(src), "-t", str(seconds), "-c", "copy", str(dest)], path=src)
    return dest


def file_hashes(folder: Path, patterns: Iterable[str]) -> Dict[str, str]:
    """sha256 of every file matching the patterns under ``folder`` (relative path -> hex)."""
    out = {}
    for pattern in patterns:
        for p in sorted(folder.glob(pattern)):
            if p.is_file():
                out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_ids(folder: Path) -> Dict[str, str]:
    """``run_id`` of every step marker of a dataset folder."""
    import json

    return {p.stem: json.loads(p.read_text())["run_id"] for p in sorted((folder / ".steps").glob("*.json"))}

"""Video files through ffmpeg pipes: an H.264 writer that muxes audio, and frame readers.

Writer (:class:`VideoEncoder`, :func:`write_video`): raw RGB frames go to ffmpeg through a pipe as they
are made (no frame list is ever held), encoded as H.264 (libx264), ``yuv420p``, constant frame rate
(25 fps by default), ``+faststart`` (the index at the front, so browsers start playing at once), with
an optional audio track encoded as AAC. Odd frame sizes are padded by one pixel (right/bottom, edge
colour repeated) because 4:2:0 chroma needs even dimensions. :func:`write_video` puts the file in place
atomically (temporary name beside it, then a rename).

Readers: :func:`iter_frames` decodes a file to ``[H, W, 3]`` uint8 RGB frames (optionally resampled to a
constant frame rate, as preprocessing does); :func:`read_frames` stacks them.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..fileio import atomic_write
from ..media import MediaError, ffmpeg_exe, probe

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = ["VideoEncoder", "VideoInfo", "iter_frames", "read_frames", "to_uint8", "write_video"]


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`write_video` wrote."""

    path: Path
    frames: int
    width: int
    height: int
    fps: float
    has_audio: bool


def to_uint8(images) -> np.ndarray:
    """``[B, 3, H, W]`` (or ``[3, H, W]``) float tensor/array in [0, 1] -> ``[B, H, W, 3]`` uint8 (rounded)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the package
        torch = None
    if torch is not None and isinstance(images, torch.Tensor):
        x = images.detach()
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(x.shape)}")
        return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
    a = np.asarray(images, dtype=np.float32)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {a.shape}")
    return np.ascontiguousarray((np.clip(a, 0.0, 1.0) * 255.0).round().astype(np.uint8).transpose(0, 2, 3, 1))


class VideoEncoder:
    """An ffmpeg process that encodes frames written to it (use :func:`write_video` to place a file).

    Args:
        path: output ``.mp4`` (overwritten).
        width, height: frame size of the frames that will be written.
        fps: constant output frame rate.
        audio: a media file whose first audio stream is muxed as AAC, or None for a silent video.
        crf, preset: libx264 quality (lower crf = better, 18 is visually lossless) and speed preset.
    """

    def __init__(
        self, path: PathLike, width: int, height: int, fps: float = 25.0, audio: Optional[PathLike] = None,
        crf: int = 18, preset: str = "veryfast",
    ) -> None:
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.audio = Path(audio) if audio is not None else None
        self.frames = 0
        self._closed = False
        size = f"{self.width + self.width % 2}x{self.height + self.height % 2}"  # padded to even in write()
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", size,
               "-framerate", f"{self.fps:g}", "-i", "pipe:0"]
        if self.audio is not None:
            cmd += ["-i", str(self.audio), "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "160k"]
        else:
            cmd += ["-map", "0:v:0"]
        cmd += ["-c:v", "libx264", "-preset", preset, "-crf", str(int(crf)), "-pix_fmt", "yuv420p",
                "-r", f"{self.fps:g}", "-movflags", "+faststart", "-f", "mp4", str(self.path)]
        # stderr goes to a file, not a pipe: a pipe nobody reads can fill up and stall ffmpeg.
        self._stderr = tempfile.TemporaryFile()
        log.debug("running %s", cmd)
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr)

    def write(self, frames: np.ndarray) -> None:
        """Append ``[H, W, 3]`` or ``[B, H, W, 3]`` uint8 RGB frames."""
        a = np.asarray(frames)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[1:] != (self.height, self.width, 3) or a.dtype != np.uint8:
            raise ValueError(
                f"frames must be [B, {self.height}, {self.width}, 3] uint8, got {a.shape} {a.dtype}"
            )
        if self.width % 2 or self.height % 2:
            # 4:2:0 chroma needs even sizes: repeat the last row/column (a constant colour would bleed).
            a = np.pad(a, ((0, 0), (0, self.height % 2), (0, self.width % 2), (0, 0)), mode="edge")
        try:
            self._proc.stdin.write(np.ascontiguousarray(a).tobytes())
        except BrokenPipeError:
            self._proc.wait()
            raise MediaError(f"ffmpeg stopped while writing {self.path}: {self._error_text()}") from None
        self.frames += a.shape[0]

    def close(self) -> None:
        """Finish the file; raises :class:`MediaError` when ffmpeg failed (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        if self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        code = self._proc.wait()
        text = self._error_text()
        self._stderr.close()
        if code != 0:
            raise MediaError(f"ffmpeg failed writing {self.path} (exit {code}): {text}")

    def abort(self) -> None:
        """Stop ffmpeg without finishing the file (after an error in the caller)."""
        self._closed = True
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if not self._stderr.closed:
            self._stderr.close()

    def _error_text(self) -> str:
        if self._stderr.closed:
            return "(no message)"
        self._stderr.seek(0)
        lines = [ln.strip() for ln in self._stderr.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return " | ".join(lines[-6:]) if lines else "(no message)"

    def __enter__(self) -> VideoEncoder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(
    path: PathLike, frames: Iterable[np.ndarray], width: int, height: int, fps: float = 25.0,
    audio: Optional[PathLike] = None, crf: int = 18, preset: str = "veryfast",
) -> VideoInfo:
    """Encode an iterable of ``[H, W, 3]`` / ``[B, H, W, 3]`` uint8 RGB frames to an mp4, atomically.

    Frames are consumed one item at a time and piped to ffmpeg, so a generator that renders them keeps
    memory bounded. ``audio`` (any media file with an audio stream) is muxed as AAC; the video is not
    cut to the audio or the other way round.

    Raises:
        ValueError: a frame of the wrong shape or dtype, or no frames at all.
        MediaError: ffmpeg failed (the message quotes it); nothing is left at ``path``.
    """
    path = Path(path)
    if audio is not None:
        info = probe(audio)
        if info.audio is None:
            kinds = ", ".join(s.kind for s in info.streams) or "none"
            raise MediaError(f"{audio} has no audio stream to mux (streams found: {kinds})")
    result = {}

    def _write(tmp: Path) -> None:
        with VideoEncoder(tmp, width, height, fps, audio, crf, preset) as enc:
            for item in frames:
                enc.write(item)
            if enc.frames == 0:
                raise ValueError(f"no frames to write to {path}")
        result["frames"] = enc.frames

    atomic_write(path, _write)
    return VideoInfo(path=path, frames=result["frames"], width=int(width), height=int(height), fps=float(fps),
                     has_audio=audio is not None)


def iter_frames(path: PathLike, fps: Optional[float] = None, max_frames: Optional[int] = None) -> Iterator[np.ndarray]:
    """Decode the first video stream of ``path`` to ``[H, W, 3]`` uint8 RGB frames, in order.

    Args:
        fps: resample to this constant rate (ffmpeg's ``fps`` filter, as preprocessing does), else the
            file's own frames.
        max_frames: stop after this many frames.
    Raises:
        FileNotFoundError: no such file. MediaError: not a video ffmpeg can read.
    """
    info = probe(path)
    if info.video is None or not info.video.width or not info.video.height:
        kinds = ", ".join(s.kind for s in info.streams) or "none"
        raise MediaError(f"{path} has no video stream (streams found: {kinds})")
    w, h = info.video.width, info.video.height
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(path), "-map", "0:v:0"]
    if fps is not None:
        cmd += ["-vf", f"fps={float(fps):g}"]
    if max_frames is not None:
        cmd += ["-frames:v", str(int(max_frames))]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    size = w * h * 3
    try:
        while True:
            buf = proc.stdout.read(size)
            if len(buf) < size:
                break
            yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
        code = proc.wait()
        if code != 0:
            err.seek(0)
            text = " | ".join(err.read().decode("utf-8", "replace").strip().splitlines()[-4:])
            raise MediaError(f"ffmpeg failed decoding {path} (exit {code}): {text}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        err.close()


def read_frames(path: PathLike, fps: Optional[float] = None, max_frames: Optional[int] = None) -> np.ndarray:
    """All frames of ``path`` as ``[F, H, W, 3]`` uint8 RGB (see :func:`iter_frames`)."""
    frames = list(iter_frames(path, fps, max_frames))
    if not frames:
        raise MediaError(f"{path}: no video frames decoded")
    return np.stack(frames)

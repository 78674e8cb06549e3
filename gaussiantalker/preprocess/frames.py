"""Video in, frames and audio out: input checks, 25 fps frame extraction, 16 kHz audio, frame I/O.

Timing. The frames come from ffmpeg's ``fps=25:start_time=0`` filter: it resamples any source rate,
constant or variable, onto the 25 fps grid of the container's clock, duplicating or dropping frames,
and pads the start when the video stream starts late. The audio goes through
``aresample=first_pts=0``, which pads (or trims) the audio start onto the same clock, and is then cut
or padded with silence to exactly ``F / 25`` seconds for ``F`` frames. Frame ``i`` and the audio at
``i / 25`` s are therefore the same instant, whatever the source's frame timing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

import numpy as np

from ..media import MediaError, probe, run_ffmpeg
from .crop import CropBox
from .steps import PreprocessError

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

FPS = 25
SAMPLE_RATE = 16000
MIN_SECONDS = 2.0
JPEG_QSCALE = 1
"""ffmpeg's ``-q:v`` for the frames (1 = best; the original's setting)."""


@dataclass(frozen=True)
class SourceInfo:
    """The input video as :func:`check_video` found it (goes to ``meta.json`` as ``source``)."""

    path: str
    fps: float
    width: int
    height: int
    duration: float
    video_codec: str
    audio_codec: str
    audio_channels: int
    audio_sample_rate: int

    def to_dict(self) -> dict:
        return asdict(self)


def display_size(video: PathLike) -> tuple:
    """``(width, height)`` of the first decoded frame, as ffmpeg shows it: after the rotation a phone
    video's display matrix asks for (which the stream summary does not apply)."""
    proc = run_ffmpeg(["-i", str(video), "-map", "0:v:0", "-frames:v", "1", "-f", "image2pipe", "-c:v", "png", "-"],
                      path=video, capture_stdout=True)
    png = proc.stdout
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n":
        raise PreprocessError(f"{video}: no video frame could be decoded")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def check_video(video: PathLike) -> SourceInfo:
    """Probe ``video`` and check it can be preprocessed.

    Raises:
        FileNotFoundError: no such file.
        PreprocessError: not a video, no video stream, no audio stream, shorter than 2 s.
    """
    path = Path(video)
    try:
        info = probe(path)
    except MediaError as exc:
        raise PreprocessError(f"{path} is not a video file ffmpeg can read ({exc})") from exc
    kinds = ", ".join(s.kind for s in info.streams) or "none"
    v, a = info.video, info.audio
    if v is None or not v.width or not v.height:
        raise PreprocessError(f"{path} has no video stream (streams found: {kinds})")
    if a is None:
        raise PreprocessError(
            f"{path} has no audio stream (streams found: {kinds}); the model learns from the speech in the video")
    duration = info.duration
    if duration is None or duration <= 0:
        raise PreprocessError(f"{path}: ffmpeg cannot tell the duration of the video")
    if duration < MIN_SECONDS:
        raise PreprocessError(
            f"{path} is {duration:.2f} s long; preprocessing needs at least {MIN_SECONDS:g} s, and the method "
            "wants minutes of video (3-5 min of one person talking) to learn a good model")
    width, height = display_size(path)  # a rotated phone video: the frames are height x width
    return SourceInfo(path=str(path.resolve()), fps=float(v.fps or 0.0), width=width, height=height,
                      duration=float(duration), video_codec=v.codec, audio_codec=a.codec,
                      audio_channels=int(a.channels or 1), audio_sample_rate=int(a.sample_rate or 0))


def extract_frames(video: PathLike, out_dir: Path, crop: CropBox, size: int) -> int:
    """Write ``out_dir/<i>.jpg`` (i from 0): 25 fps, ``crop`` of the source, resized to ``size`` x ``size``.

    Returns the number of frames written.
    """
    filters = [f"fps={FPS}:start_time=0"]
    if not crop.is_full_frame:
        filters.append(crop.ffmpeg_filter())
    if crop.size != size:
        flags = "area" if crop.size > size else "lanczos"
        filters.append(f"scale={size}:{size}:flags={flags}")
    args = ["-i", str(video), "-map", "0:v:0", "-vf", ",".join(filters), "-q:v", str(JPEG_QSCALE), "-qmin", "1",
            "-start_number", "0"]
    run_ffmpeg(args + ["-y", str(out_dir / "%d.jpg")], path=video)
    n = len([p for p in os.listdir(out_dir) if p.endswith(".jpg")])
    if n == 0:
        raise PreprocessError(f"{video}: no video frames could be decoded")
    return n


def extract_audio(video: PathLike, num_frames: int, channels: int) -> np.ndarray:
    """The clip's audio as ``[F / 25 * 16000]`` float32 mono samples at 16 kHz (channels averaged),
    aligned to the frames (see the module doc)."""
    proc = run_ffmpeg(["-i", str(video), "-map", "0:a:0", "-vn", "-af", f"aresample={SAMPLE_RATE}:first_pts=0",
                       "-ar", str(SAMPLE_RATE), "-ac", str(channels), "-f", "f32le", "-c:a", "pcm_f32le", "-"],
                      path=video, capture_stdout=True)
    audio = np.frombuffer(proc.stdout, dtype=np.float32)
    audio = audio[: audio.size // channels * channels].reshape(-1, channels).mean(axis=1)
    want = round(num_frames * SAMPLE_RATE / FPS)
    if audio.size == 0:
        raise PreprocessError(f"{video}: the audio stream decodes to no samples")
    diff = (audio.size - want) / SAMPLE_RATE
    if abs(diff) > 0.5:
        logger.warning("%s: the audio is %.2f s %s than the %d video frames; %s", video, abs(diff),
                       "longer" if diff > 0 else "shorter", num_frames, "cut" if diff > 0 else "padded with silence")
    if audio.size >= want:
        return np.ascontiguousarray(audio[:want])
    return np.concatenate([audio, np.zeros(want - audio.size, np.float32)])


def frame_path(folder: Path, index: int, ext: str = ".jpg") -> Path:
    return folder / f"{index}{ext}"


def read_rgb(path: Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of an image file (OpenCV, converted from BGR at once)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise PreprocessError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def iter_frames(folder: Path, indices: Sequence[int]) -> Iterator[np.ndarray]:
    """The frames ``<i>.jpg`` of ``folder`` for ``indices``, as ``[H, W, 3]`` uint8 RGB."""
    for i in indices:
        yield read_rgb(frame_path(folder, i))


def write_jpg(path: Path, rgb: np.ndarray, quality: int = 95) -> None:
    """Write an RGB image as JPEG (for files inside a temporary folder)."""
    import cv2

    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"cannot write {path}")


def write_png_rgba(path: Path, rgba: np.ndarray) -> None:
    """Write ``[H, W, 4]`` uint8 RGBA as PNG (OpenCV wants BGRA)."""
    import cv2

    if not cv2.imwrite(str(path), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA)):
        raise OSError(f"cannot write {path}")


__all__ = [
    "FPS",
    "MIN_SECONDS",
    "SAMPLE_RATE",
    "SourceInfo",
    "check_video",
    "extract_audio",
    "extract_frames",
    "frame_path",
    "iter_frames",
    "read_rgb",
    "write_jpg",
    "write_png_rgba",
]

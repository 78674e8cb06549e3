"""The built-in example subject: a public-domain photograph animated into a short talking video.

So that the first command works on a fresh machine with no data, the demo makes its own input:

* :func:`make_demo_speech` writes a speech-like signal (a glottal pulse train at a drifting pitch through
  formant resonators, syllables at ~4 Hz with pauses, noise bursts for consonants) as a 16 kHz wav;
* :func:`make_demo_video` animates scikit-image's ``astronaut`` photograph (Eileen Collins, a NASA photo in
  the public domain, shipped inside the scikit-image wheel) into a 25 fps talking video: the face is
  found once on the still with MediaPipe face mesh, the lower lip and jaw are displaced downwards by a
  smooth local field driven by the signal's amplitude envelope (the mouth opens into a dark inner mouth
  with a hint of teeth), and the whole image moves with a slight, smooth head motion; frames and sound
  are encoded as H.264 + AAC mp4;
* :func:`run_demo` runs the whole library on it: preprocess, train (``cpu_small``), render from a second
  generated signal, evaluate, and prints where the video and the evaluation report are.

The video is a 2D animation, not a 3D head: it exercises every step of the pipeline on a fresh machine,
it is not a benchmark of quality.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np

from .fileio import atomic_write

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

FPS = 25
SAMPLE_RATE = 16000
DEMO_NAME = "astronaut"

__all__ = [
    "DemoResult",
    "FaceGeometry",
    "astronaut_image",
    "make_demo_speech",
    "make_demo_video",
    "run_demo",
    "speech_envelope",
]


# --------------------------------------------------------------------------------------------------
# the speech-like signal

# (F1, F2, F3) in Hz of a few vowels (adult speaker, textbook averages).
_VOWELS = np.array([
    (730.0, 1090.0, 2440.0),  # a
    (530.0, 1840.0, 2480.0),  # e
    (390.0, 1990.0, 2550.0),  # i-ish (open i, so the mouth opens for it too)
    (570.0, 840.0, 2410.0),  # o
    (440.0, 1020.0, 2240.0),  # u-ish
])
_BANDWIDTHS = (90.0, 110.0, 170.0)


def _syllable_plan(seconds: float, rng: np.random.Generator) -> list:
    """(start, duration, vowel index, stressed) of each syllable; pauses between phrases."""
    out = []
    t = 0.25
    while t < seconds - 0.3:
        phrase = rng.uniform(1.2, 2.4)
        end = min(t + phrase, seconds - 0.25)
        while t < end - 0.12:
            dur = rng.uniform(0.14, 0.28)
            out.append((t, min(dur, end - t), int(rng.integers(len(_VOWELS))), bool(rng.random() < 0.3)))
            t += dur + rng.uniform(0.02, 0.07)
        t = end + rng.uniform(0.3, 0.6)  # a pause
    return out


def _resonator(x: np.ndarray, freqs: np.ndarray, bandwidth: float, block: int = 80) -> np.ndarray:
    """Two-pole resonator whose centre frequency ``freqs`` [T] (Hz) changes every ``block`` samples;
    the filter state carries over between blocks, so glides are click-free."""
    from scipy.signal import lfilter

    r = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    y = np.empty_like(x)
    zi = np.zeros(2)
    for i0 in range(0, x.shape[0], block):
        f = float(freqs[i0])
        a = [1.0, -2.0 * r * np.cos(2.0 * np.pi * f / SAMPLE_RATE), r * r]
        y[i0:i0 + block], zi = lfilter([1.0 - r], a, x[i0:i0 + block], zi=zi)
    return y


def _speech_samples(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    plan = _syllable_plan(seconds, rng)
    env = np.zeros(n)
    formants = np.tile(_VOWELS[0], (n, 1))
    noise_env = np.zeros(n)
    for start, dur, vowel, stressed in plan:
        i0, i1 = int(start * SAMPLE_RATE), min(n, int((start + dur) * SAMPLE_RATE))
        if i1 <= i0:
            continue
        u = np.linspace(0.0, 1.0, i1 - i0)
        shape = np.sin(np.pi * u) ** 0.8  # rises and falls within the syllable
        env[i0:i1] = np.maximum(env[i0:i1], shape * (1.0 if stressed else rng.uniform(0.55, 0.85)))
        formants[i0:i1] = _VOWELS[vowel]
        if rng.random() < 0.6:  # a consonant burst at the onset
            k = min(i1 - i0, int(0.04 * SAMPLE_RATE))
            noise_env[i0:i0 + k] = np.maximum(noise_env[i0:i0 + k], 0.25 * np.hanning(2 * k)[:k])
    # Smooth formant transitions (~30 ms) so the resonators glide between vowels.
    k = int(0.03 * SAMPLE_RATE)
    kernel = np.hanning(2 * k + 1)
    kernel /= kernel.sum()
    formants = np.stack([np.convolve(np.pad(formants[:, j], k, mode="edge"), kernel, "valid")
                         for j in range(3)], 1)
    # Glottal source: pulses at a pitch that drifts (intonation) with a little jitter.
    f0 = 150.0 + 25.0 * np.sin(2 * np.pi * 0.4 * t + rng.uniform(0, 6.3))
    f0 *= 1.0 + 0.01 * np.convolve(rng.standard_normal(n), np.ones(400) / 400, "same")
    phase = np.cumsum(f0 / SAMPLE_RATE)
    source = np.diff(np.floor(phase), prepend=0.0)  # one impulse per period
    source = np.convolve(source, np.hanning(24), "same")  # a softer glottal pulse
    voiced = sum(_resonator(source, formants[:, j], _BANDWIDTHS[j]) * g for j, g in enumerate((1.0, 0.6, 0.3)))
    noise = np.diff(rng.standard_normal(n + 1))  # high-passed noise for fricatives
    signal = voiced * env + 0.3 * noise * noise_env
    signal += 0.002 * rng.standard_normal(n)  # room noise, so pauses are not digital silence
    return (0.6 * signal / (np.abs(signal).max() + 1e-9)).astype(np.float32)


def make_demo_speech(path: PathLike, seconds: float = 8.0, seed: int = 0) -> Path:
    """Write a speech-like signal of ``seconds`` seconds as a 16 kHz mono 16-bit wav at ``path``.

    Voiced syllables (~4 per second) with formant-like resonances of a few vowels, consonant noise
    bursts and pauses between phrases; deterministic for a given ``seed``. Returns the path.
    """
    if seconds <= 0.5:
        raise ValueError(f"seconds must be > 0.5, got {seconds}")
    from .audio import write_wav

    audio = _speech_samples(float(seconds), int(seed))
    return atomic_write(path, lambda tmp: write_wav(tmp, audio, SAMPLE_RATE))


def speech_envelope(audio: np.ndarray, num_frames: int, fps: float = FPS,
                    sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Amplitude envelope of ``audio`` ``[T]`` at video rate: ``[num_frames]`` in [0, 1].

    RMS over a 60 ms window centred on each frame, smoothed over 3 frames, normalised by its 98th
    percentile (pauses give ~0, loud syllables 1).
    """
    audio = np.asarray(audio, dtype=np.float64)
    half = int(0.03 * sample_rate)
    rms = np.zeros(num_frames)
    for i in range(num_frames):
        c = int(round(i / fps * sample_rate))
        seg = audio[max(0, c - half): c + half]
        rms[i] = np.sqrt(np.mean(seg ** 2)) if seg.size else 0.0
    rms = np.convolve(np.pad(rms, 1, mode="edge"), np.ones(3) / 3, "valid")
    floor = np.percentile(rms, 5)
    top = np.percentile(rms, 98)
    return np.clip((rms - floor) / max(top - floor, 1e-9), 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# the face


def astronaut_image() -> np.ndarray:
    """scikit-image's ``astronaut`` photograph, ``[512, 512, 3]`` uint8 RGB (public domain, NASA)."""
    try:
        from skimage import data
    except ImportError as exc:
        raise ImportError("the built-in demo needs scikit-image (it ships the photograph): "
                          "pip install scikit-image") from exc
    return np.ascontiguousarray(data.astronaut()[..., :3])


@dataclass(frozen=True)
class FaceGeometry:
    """Where the mouth and face are in the still photograph (pixels of the photograph)."""

    mouth_center: Tuple[float, float]  # (x, y) between the inner lips
    mouth_width: float  # distance of the mouth corners
    lip_line: Tuple[float, float, float]  # y = a (x - cx)^2 + b (x - cx) + c, the line between the lips
    chin_y: float
    face_center: Tuple[float, float]
    face_height: float  # brows to chin


def find_face(image: np.ndarray) -> FaceGeometry:
    """Mouth and face geometry of ``image`` ``[H, W, 3]`` uint8 RGB from MediaPipe face mesh (one still).

    Raises:
        ValueError: no face found.
    """
    from .preprocess.landmarks import detect_landmarks

    result = detect_landmarks(image[None], mode="static", max_faces=1)
    if not result.found[0]:
        raise ValueError("MediaPipe found no face in the demo photograph")
    p = result.points68[0].astype(np.float64)  # [68, 2]
    left, right = p[60], p[64]
    center = 0.5 * (p[62] + p[66])
    cx = float(center[0])
    xs = np.array([left[0], cx, right[0]]) - cx
    ys = np.array([left[1], center[1], right[1]])
    coef = np.polyfit(xs, ys, 2)
    face_min, face_max = p.min(0), p.max(0)
    return FaceGeometry(
        mouth_center=(cx, float(center[1])), mouth_width=float(np.linalg.norm(p[54] - p[48])),
        lip_line=(float(coef[0]), float(coef[1]), float(coef[2])), chin_y=float(p[8, 1]),
        face_center=(float((face_min[0] + face_max[0]) / 2), float((face_min[1] + face_max[1]) / 2)),
        face_height=float(face_max[1] - face_min[1]),
    )


def _crop_box(face: FaceGeometry, image_size: Tuple[int, int]) -> Tuple[float, float, float]:
    """(x0, y0, side) of a square around head and shoulders, inside the image."""
    h, w = image_size
    side = min(3.0 * face.face_height, h, w)
    x0 = np.clip(face.face_center[0] - side / 2, 0, w - side)
    y0 = np.clip(face.face_center[1] + 0.18 * side - side / 2, 0, h - side)
    return float(x0), float(y0), float(side)


def _head_motion(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """``[F, 3]`` (angle in degrees, dx, dy in output fractions): a few slow sinusoids per axis."""
    t = np.arange(num_frames) / FPS
    out = np.zeros((num_frames, 3))
    for j, amp in enumerate((1.6, 0.008, 0.006)):
        for freq in (0.13, 0.31, 0.57):
            out[:, j] += amp / 2.0 * np.sin(2 * np.pi * (freq * rng.uniform(0.8, 1.25)) * t + rng.uniform(0, 6.3))
    return out


class _MouthWarp:
    """Opens the mouth of the still by ``amount`` in [0, 1] (a backward displacement field + fill)."""

    def __init__(self, image: np.ndarray, face: FaceGeometry, strength: float = 0.3) -> None:
        self.face = face
        h, w = image.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.xx, self.yy = xx, yy
        cx = face.mouth_center[0]
        a, b, c = face.lip_line
        dx = xx - cx
        self.line = (a * dx * dx + b * dx + c).astype(np.float32)  # [H, W] y of the lip line
        mw = face.mouth_width
        self.max_open = strength * mw  # px of the photograph at amount 1
        # Horizontal profile: 1 at the mouth centre, ~0.15 at the corners, 0 beyond.
        hx = np.clip(1.0 - (dx / (0.55 * mw)) ** 2, 0.0, 1.0)
        self.hx = hx.astype(np.float32)
        below = yy - self.line
        rise = np.clip(below / 1.5, 0.0, 1.0)
        chin = face.chin_y - self.line
        fall = np.clip(1.0 - (yy - face.chin_y) / (0.6 * mw), 0.0, 1.0)
        fall = np.where(yy < face.chin_y, 1.0, fall * fall * (3 - 2 * fall))
        self.vy = (rise * fall * (chin > 0)).astype(np.float32)  # [H, W] share of the opening moved down

    def __call__(self, amount: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Source coordinates (map_x, map_y), the inner-mouth weight and the opening in pixels of each
        column, all ``[H, W]`` float32."""
        d = (amount * self.max_open) * self.hx  # [H, W] opening at each column
        map_y = self.yy - d * self.vy
        gap = (self.yy - self.line)  # inside the opening: between the lip line and line + d
        inner = np.clip(gap + 0.5, 0.0, 1.0) * np.clip(d - gap + 0.5, 0.0, 1.0) * (d > 0.5)
        return self.xx, map_y.astype(np.float32), inner.astype(np.float32), d


def _inner_mouth(warp: _MouthWarp, d: np.ndarray) -> np.ndarray:
    """Colour of the inner mouth ``[H, W, 3]`` float: dark red, with upper teeth near the lip line."""
    depth = np.clip((warp.yy - warp.line) / np.maximum(d, 1.0), 0.0, 1.0)
    colour = np.empty(warp.yy.shape + (3,), np.float32)
    base = np.array([70.0, 25.0, 30.0], np.float32)
    colour[:] = base * (1.0 - 0.5 * np.sin(np.pi * depth))[..., None]
    teeth = (depth < 0.22) & (warp.hx > 0.45)
    colour[teeth] = (215.0, 205.0, 195.0)
    return colour


def _render_frames(image: np.ndarray, face: FaceGeometry, envelope: np.ndarray, size: int,
                   rng: np.random.Generator):
    """Yield ``[size, size, 3]`` uint8 RGB frames, one per envelope value."""
    import cv2

    warp = _MouthWarp(image, face)
    x0, y0, side = _crop_box(face, image.shape[:2])
    motion = _head_motion(len(envelope), rng)
    src = image.astype(np.float32)
    for amount, (angle, tx, ty) in zip(envelope, motion):  # noqa: B905 - same length by construction
        map_x, map_y, inner, d = warp(float(amount))
        frame = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        fill = _inner_mouth(warp, d)
        frame = frame * (1.0 - inner[..., None]) + fill * inner[..., None]
        # Crop + resize + head motion in one affine map (rotation about the mouth-nose region).
        scale = size / side
        pivot = (face.face_center[0], face.face_center[1] + 0.3 * face.face_height)
        m = cv2.getRotationMatrix2D(pivot, float(angle), 1.0)
        m[:, 2] += (-x0 + tx * side, -y0 + ty * side)
        m *= scale
        out = cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT)
        yield np.clip(out + 0.5, 0, 255).astype(np.uint8)


def make_demo_video(path: PathLike, seconds: float = 8.0, size: int = 512, seed: int = 0,
                    face: Optional[FaceGeometry] = None) -> Path:
    """Write the demo talking video (H.264 + AAC mp4, 25 fps, ``size`` x ``size``) at ``path``.

    The speech is :func:`make_demo_speech` with ``seed``; the mouth opening of each frame follows its
    :func:`speech_envelope`. ``face`` skips the face search on the still (it is the same every time).
    Returns the path.
    """
    from .audio import load_audio
    from .media import ffmpeg_exe

    if size < 64 or size % 2:
        raise ValueError(f"size must be an even number >= 64, got {size}")
    path = Path(path)
    image = astronaut_image()
    if face is None:
        face = find_face(image)
    num_frames = int(round(seconds * FPS))
    wav = path.with_name(f".{path.stem}.speech.wav")
    try:
        make_demo_speech(wav, seconds, seed)
        envelope = speech_envelope(load_audio(wav), num_frames)
        frames = _render_frames(image, face, envelope, size, np.random.default_rng(seed + 7))

        def encode(tmp: Path) -> None:
            cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                   "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size}x{size}", "-r", str(FPS), "-i", "pipe:0",
                   "-i", str(wav), "-map", "0:v", "-map", "1:a",
                   "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
                   "-c:a", "aac", "-b:a", "128k", "-shortest", "-movflags", "+faststart",
                   str(tmp)]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                for frame in frames:
                    proc.stdin.write(frame.tobytes())
                proc.stdin.close()
                err = proc.stderr.read().decode("utf-8", "replace")
            finally:
                code = proc.wait()
            if code != 0:
                raise RuntimeError(f"ffmpeg failed writing {path} (exit {code}): {err.strip()[-400:]}")

        atomic_write(path, encode)
    finally:
        if wav.exists():
            wav.unlink()
    return path


# --------------------------------------------------------------------------------------------------
# the whole pipeline


@dataclass
class DemoResult:
    """What :func:`run_demo` made."""

    video: Path  # the generated talking video (input)
    speech: Path  # the second generated signal the model was driven with
    dataset: Any  # gaussiantalker.Dataset
    model: Any  # gaussiantalker.Model
    render: Any  # gaussiantalker.RenderResult: .path is the rendered mp4
    evaluation: Any  # gaussiantalker.EvaluationResult
    seconds: float  # wall-clock time of the whole run


#: Fine-stage iterations of the demo: cpu_small's 1250 cost ~11 min on 2 cores; on this 8 s clip the training
#: PSNR stops rising after ~600 (34.4 dB at 600, 34.5 at 1000, measured 2026-11-25), so the demo stays
#: within 15 minutes.
DEMO_ITERATIONS = 600


def run_demo(out_dir: PathLike = "gaussiantalker-demo", seconds: float = 8.0, iterations: Optional[int] = None,
             device: str = "auto", progress: bool = True, config: str = "cpu_small") -> DemoResult:
    """Make the demo video, preprocess it, train with ``config`` (``cpu_small``), render from a second
    generated signal, evaluate, and print where the results are.

    Args:
        out_dir: folder of the demo (the video, the second signal, and the workspace ``workspace/``).
        seconds: length of the generated video.
        iterations: fine-stage training iterations (default :data:`DEMO_ITERATIONS`; the coarse stage keeps
            the config's).
        device: ``auto``, ``CPU``, ``GPU<n>`` or ``cuda:<n>``.
        progress: show progress bars and print the summary.
    """
    from . import api

    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    video = out / f"{DEMO_NAME}.mp4"
    speech = out / "speech_novel.wav"
    workspace = out / "workspace"
    if not video.is_file():
        log.info("making the demo video %s (%.1f s)", video, seconds)
        make_demo_video(video, seconds=seconds, seed=0)
    if not speech.is_file():
        make_demo_speech(speech, seconds=max(2.0, seconds / 2), seed=1)
    dataset = api.preprocess(video, workspace=workspace, device=device, progress=progress)
    if iterations is None:
        iterations = DEMO_ITERATIONS
    model = api.train(dataset, config=config, iterations=iterations, device=device, workspace=workspace,
                      progress=progress)
    rendered = api.render(model, speech, device=device, workspace=workspace, progress=progress)
    evaluation = api.evaluate(model, device=device, workspace=workspace, progress=progress)
    result = DemoResult(video=video, speech=speech, dataset=dataset, model=model, render=rendered,
                        evaluation=evaluation, seconds=time.perf_counter() - start)
    if progress:
        print(f"demo input video:   {video}")
        print(f"rendered video:     {rendered.path}")
        print(f"evaluation report:  {evaluation.report_path} (PSNR {evaluation.psnr:.2f} dB on held-out frames)")
        print(f"done in {result.seconds / 60:.1f} min")
    return result

"""Reading any audio (or the audio track of a video) as 16 kHz mono float32, and writing PCM wav."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Union

import numpy as np

from ..media import MediaError, probe, run_ffmpeg

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

SAMPLE_RATE = 16000
"""The sample rate every feature extractor works at (DeepSpeech, HuBERT and our MFCC all expect it)."""

__all__ = ["SAMPLE_RATE", "load_audio", "write_wav"]


def load_audio(path: PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of ``path`` to mono float32 at ``sample_rate``.

    Any format ffmpeg reads works: wav (16/24/32-bit integer or float PCM), mp3, m4a/aac, flac, ogg, and
    the audio track of a video file. Channels are averaged (ffmpeg's own ``-ac 1`` downmix scales a
    stereo pair by 1/sqrt(2) each, so the average is taken here instead); resampling is ffmpeg's.

    Returns:
        ``[T]`` float32, nominally in [-1, 1]; ``T / sample_rate`` is the duration in seconds.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        MediaError: not a media file, no audio stream, or an audio stream with no samples; the message
            names the file.
        ValueError: ``sample_rate`` is not a positive integer.
    """
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    sample_rate = int(sample_rate)
    p = Path(path)
    info = probe(p)
    stream = info.audio
    if stream is None:
        kinds = ", ".join(s.kind for s in info.streams) or "none"
        raise MediaError(f"{p} has no audio stream (streams found: {kinds})")
    channels = stream.channels
    args = ["-i", str(p), "-map", "0:a:0", "-vn", "-sn", "-dn"]
    if channels is None:
        log.warning("%s: channel layout not understood; using ffmpeg's mono downmix", p)
        args += ["-ac", "1"]
        channels = 1
    else:
        # Ask for the stream's own channel count so ffmpeg does not remix; averaged below.
        args += ["-ac", str(channels)]
    args += ["-ar", str(sample_rate), "-f", "f32le", "-c:a", "pcm_f32le", "pipe:1"]
    proc = run_ffmpeg(["-v", "error"] + args, path=p, capture_stdout=True)
    raw = np.frombuffer(proc.stdout, dtype="<f4")
    if raw.size % channels:
        raise MediaError(f"{p}: ffmpeg returned {raw.size} samples, not a multiple of {channels} channels")
    audio = raw.reshape(-1, channels)  # [T, C]
    if audio.shape[0] == 0:
        raise MediaError(f"{p} has an audio stream ({stream.codec}) but it decodes to zero samples")
    mono = audio[:, 0].copy() if channels == 1 else audio.mean(axis=1, dtype=np.float64).astype(np.float32)
    log.debug("%s: %d samples at %d Hz (%d channel(s) averaged)", p, mono.shape[0], sample_rate, channels)
    return mono  # [T]


def write_wav(path: PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write ``audio`` (``[T]`` float in [-1, 1], or int16) as a 16-bit PCM mono wav, the format of the
    datasets' ``aud.wav``. Floats are scaled by 32768 (the inverse of what :func:`load_audio` does, so
    16-bit values survive a round trip exactly) and clipped. Returns the path."""
    from scipy.io import wavfile

    a = np.asarray(audio)
    if a.ndim != 1:
        raise ValueError(f"audio must be [T] mono, got shape {tuple(a.shape)}")
    if a.dtype != np.int16:
        a = np.clip(np.round(a.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    p = Path(path)
    wavfile.write(str(p), int(sample_rate), a)
    return p

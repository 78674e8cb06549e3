"""ffmpeg support: find the binary, run it safely, and probe media files.

Everything that touches audio or video files goes through this module, so there is one place that
knows which ffmpeg is used and how its failures are reported.

Which binary: ``$GAUSSIANTALKER_FFMPEG`` when set, else the one ``imageio-ffmpeg`` resolves (its own
``$IMAGEIO_FFMPEG_EXE``, then the static build it ships, which has libx264 and AAC), else ``ffmpeg`` on
``PATH``. imageio-ffmpeg ships no ``ffprobe``, so :func:`probe` reads the stream summary that
``ffmpeg -i FILE`` prints; that summary has had the same shape for many years of releases.

ffmpeg always runs from an argument list (never a shell), and a failure raises :class:`MediaError`
naming the file.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

ENV_VAR = "GAUSSIANTALKER_FFMPEG"

__all__ = [
    "MediaError",
    "MediaInfo",
    "StreamInfo",
    "ffmpeg_exe",
    "probe",
    "run_ffmpeg",
]


class MediaError(RuntimeError):
    """ffmpeg is missing, or a file cannot be read or written by it. The message names the file."""


# --------------------------------------------------------------------------------------------------
# the binary


_EXE: Optional[str] = None


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary to use (resolved once per process).

    Raises:
        MediaError: no ffmpeg was found; the message says how to get one.
    """
    global _EXE
    if _EXE is not None:
        return _EXE
    env = os.environ.get(ENV_VAR)
    if env:
        if not Path(env).is_file():
            raise MediaError(f"${ENV_VAR} points to {env!r}, which is not a file")
        _EXE = env
        return _EXE
    try:
        import imageio_ffmpeg
    except ImportError:
        imageio_ffmpeg = None
    if imageio_ffmpeg is not None:
        try:
            _EXE = imageio_ffmpeg.get_ffmpeg_exe()
            return _EXE
        except RuntimeError as exc:  # it raises RuntimeError when it finds no binary at all
            log.warning("imageio-ffmpeg found no ffmpeg binary (%s); looking on PATH", exc)
    found = shutil.which("ffmpeg")
    if found is None:
        raise MediaError(
            "no ffmpeg binary found: `pip install imageio-ffmpeg` (it ships one), install ffmpeg "
            f"on PATH, or set ${ENV_VAR} to the binary"
        )
    _EXE = found
    return _EXE


def run_ffmpeg(
    args: Sequence[str],
    *,
    path: Optional[PathLike] = None,
    check: bool = True,
    capture_stdout: bool = False,
    input_bytes: Optional[bytes] = None,
    timeout: Optional[float] = None,
) -> subprocess.CompletedProcess:
    """Run ``ffmpeg -hide_banner -nostdin <args>`` and return the completed process.

    Args:
        args: arguments after the binary, as a list (no shell is involved, so paths need no quoting).
        path: the file the command is about; named in the error message.
        check: raise :class:`MediaError` on a non-zero exit status.
        capture_stdout: return stdout as bytes (for ``-f f32le -`` style output); otherwise discarded.
        input_bytes: bytes fed to stdin (for ``-i pipe:0``).
        timeout: seconds before the process is killed (``subprocess.TimeoutExpired`` propagates).

    Returns:
        ``subprocess.CompletedProcess`` with ``stdout`` (bytes or None) and ``stderr`` (str).
    """
    cmd = [ffmpeg_exe(), "-hide_banner"]
    if input_bytes is None:
        # Without -nostdin ffmpeg reads keystrokes from the terminal and can stall a parent process.
        cmd.append("-nostdin")
    cmd.extend(str(a) for a in args)
    log.debug("running %s", cmd)
    proc = subprocess.run(
        cmd,
        input=input_bytes,
        stdin=subprocess.DEVNULL if input_bytes is None else None,
        stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
        check=False,
    )
    proc.stderr = proc.stderr.decode("utf-8", errors="replace")
    if check and proc.returncode != 0:
        about = f" on {path}" if path is not None else ""
        raise MediaError(f"ffmpeg failed{about} (exit {proc.returncode}): {_tail(proc.stderr)}")
    return proc


def _tail(text: str, lines: int = 6) -> str:
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(kept[-lines:]) if kept else "(no message)"


# --------------------------------------------------------------------------------------------------
# probing


@dataclass(frozen=True)
class StreamInfo:
    """One stream of a media file, as ffmpeg describes it. Fields a stream kind lacks are None."""

    index: int
    """Stream index inside the file (the ``N`` of ``0:N``)."""
    kind: str
    """``"audio"``, ``"video"``, ``"subtitle"``, ``"data"`` or ``"attachment"``."""
    codec: str
    """Codec name, e.g. ``"aac"``, ``"pcm_s24le"``, ``"h264"``."""
    sample_rate: Optional[int] = None
    """Audio samples per second."""
    channels: Optional[int] = None
    """Audio channel count."""
    sample_format: Optional[str] = None
    """Audio sample format as ffmpeg names it, e.g. ``"s16"``, ``"fltp"``, ``"s32 (24 bit)"``."""
    width: Optional[int] = None
    """Video width in pixels."""
    height: Optional[int] = None
    """Video height in pixels."""
    fps: Optional[float] = None
    """Average video frame rate (ffmpeg's ``fps``; ``tbr`` when that is absent). For a variable frame
    rate file this is the average, not a constant rate."""
    attached_pic: bool = False
    """A cover image (mp3/m4a artwork), not a real video track."""


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` found in a media file."""

    path: Path
    container: str
    """Demuxer name(s), e.g. ``"wav"``, ``"mov,mp4,m4a,3gp,3g2,mj2"``."""
    duration: Optional[float]
    """Container duration in seconds (10 ms resolution), None when ffmpeg cannot tell."""
    start: Optional[float]
    """Container start time in seconds, when given."""
    streams: Tuple[StreamInfo, ...]

    @property
    def audio_streams(self) -> Tuple[StreamInfo, ...]:
        return tuple(s for s in self.streams if s.kind == "audio")

    @property
    def video_streams(self) -> Tuple[StreamInfo, ...]:
        """Real video tracks (cover images excluded)."""
        return tuple(s for s in self.streams if s.kind == "video" and not s.attached_pic)

    @property
    def audio(self) -> Optional[StreamInfo]:
        """The first audio stream, or None."""
        streams = self.audio_streams
        return streams[0] if streams else None

    @property
    def video(self) -> Optional[StreamInfo]:
        """The first real video stream, or None."""
        streams = self.video_streams
        return streams[0] if streams else None


_DURATION = re.compile(r"^\s*Duration:\s*(?P<dur>N/A|\d+:\d+:\d+(?:\.\d+)?)(?:,\s*start:\s*(?P<start>-?[\d.]+))?")
_INPUT = re.compile(r"^Input #0, (?P<fmt>.+?), from ")
_STREAM = re.compile(
    r"^\s*Stream #0:(?P<idx>\d+)(?:\[0x[0-9a-fA-F]+\])?(?:\([^)]*\))?:\s*"
    r"(?P<kind>Video|Audio|Subtitle|Data|Attachment):\s*(?P<rest>.*)$"
)
# ffmpeg's names for channel layouts (libavutil/channel_layout.c), mapped to channel counts.
_LAYOUTS = {
    "mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "3.0(back)": 3, "4.0": 4, "quad": 4, "quad(side)": 4,
    "3.1": 4, "5.0": 5, "5.0(side)": 5, "4.1": 5, "5.1": 6, "5.1(side)": 6, "6.0": 6, "6.0(front)": 6,
    "hexagonal": 6, "6.1": 7, "6.1(back)": 7, "6.1(front)": 7, "7.0": 7, "7.0(front)": 7, "7.1": 8,
    "7.1(wide)": 8, "7.1(wide-side)": 8, "octagonal": 8, "downmix": 2,
}
_CHANNELS = re.compile(r"^(\d+) channels?")
_SIZE = re.compile(r"(?<![\w.])(\d{1,5})x(\d{1,5})(?![\w])")
_FPS = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(k?) (fps|tbr)\b")


def probe(path: PathLike, formats: Optional[Sequence[str]] = None) -> MediaInfo:
    """Streams, duration and container of a media file.

    ffmpeg may open only local files while probing (``-protocol_whitelist file``: a playlist inside the file
    cannot make it fetch a URL).

    Args:
        formats: when given, the ffmpeg demuxers allowed (``-format_whitelist``, e.g. ``("mov", "wav")``): a
            file of any other format (an HLS or concat playlist that would read other files) is refused.
            For untrusted files such as uploads.

    Raises:
        FileNotFoundError: ``path`` does not exist (or is a folder).
        MediaError: ffmpeg cannot read it (not a media file, truncated, unknown format); the message
            names the file and quotes ffmpeg.
    """
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise FileNotFoundError(f"media file {p} {what}")
    # `ffmpeg -i FILE` with no output prints the summary and exits 1 by design, so the exit status
    # says nothing; whether an "Input #0" header was printed does.
    args = ["-protocol_whitelist", "file"]
    if formats is not None:
        args += ["-format_whitelist", ",".join(formats)]
    proc = run_ffmpeg([*args, "-i", str(p)], path=p, check=False)
    return _parse_probe(p, proc.stderr)


def _parse_probe(path: Path, text: str) -> MediaInfo:
    container: Optional[str] = None
    duration: Optional[float] = None
    start: Optional[float] = None
    streams = []
    for line in text.splitlines():
        if line.startswith("Output #") or line.startswith("Stream mapping"):
            break
        m = _INPUT.match(line)
        if m and container is None:
            container = m.group("fmt")
            continue
        m = _DURATION.match(line)
        if m and container is not None and duration is None:
            duration = _clock_seconds(m.group("dur"))
            start = float(m.group("start")) if m.group("start") else None
            continue
        m = _STREAM.match(line)
        if m and container is not None:
            streams.append(_parse_stream(int(m.group("idx")), m.group("kind").lower(), m.group("rest")))
    if container is None:
        raise MediaError(f"{path} is not a media file ffmpeg can read: {_tail(text, 2)}")
    return MediaInfo(path=path, container=container, duration=duration, start=start, streams=tuple(streams))


def _clock_seconds(text: str) -> Optional[float]:
    if text == "N/A":
        return None
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def _split_fields(rest: str) -> list:
    """Split a stream description on the commas that are not inside parentheses or brackets."""
    fields, depth, cur = [], 0, []
    for ch in rest:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            fields.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    fields.append("".join(cur).strip())
    return fields


def _parse_stream(index: int, kind: str, rest: str) -> StreamInfo:
    fields = _split_fields(rest)
    codec = fields[0].split()[0] if fields and fields[0] else "unknown"
    info = dict(index=index, kind=kind, codec=codec)
    if kind == "audio":
        for f in fields[1:]:
            hz = re.match(r"^(\d+) Hz$", f)
            if hz:
                info["sample_rate"] = int(hz.group(1))
            elif f in _LAYOUTS:
                info["channels"] = _LAYOUTS[f]
            elif _CHANNELS.match(f):
                info["channels"] = int(_CHANNELS.match(f).group(1))
            elif "sample_rate" in info and "channels" in info and "sample_format" not in info:
                # the field after the layout is the sample format ("s16", "fltp", "s32 (24 bit)")
                info["sample_format"] = f
    elif kind == "video":
        size = _SIZE.search(rest)
        if size:
            info["width"], info["height"] = int(size.group(1)), int(size.group(2))
        rates = {unit: float(v) * (1000.0 if k else 1.0) for v, k, unit in _FPS.findall(rest)}
        fps = rates.get("fps", rates.get("tbr"))
        if fps is not None:
            info["fps"] = fps
        info["attached_pic"] = "(attached pic)" in rest
    return StreamInfo(**info)

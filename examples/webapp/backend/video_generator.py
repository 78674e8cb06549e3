"""Video generation: trained models listed from the workspace, loaded once, rendered in background jobs.

* :class:`TalkerCache` keeps the last few ``gaussiantalker.load(...)`` results in memory (keyed by model,
  iteration and device), each with a lock: a model is loaded once and serves every later render.
* :class:`VideoGenerator` runs ``talker.render(audio, out=...)`` as a job; the mp4 (H.264 + AAC) goes to
  ``<workspace>/webapp/static/videos/<job id>.mp4``, served at ``/static/videos/<job id>.mp4``.
* :func:`render_segments` renders a reply in short mp4 pieces through ``talker.stream`` so a page can start
  playing the first piece while the rest is rendered (used by the chat page), then joins them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from gaussiantalker.workspace import Workspace, validate_name

from .jobs import JobContext, JobManager
from .uploads import UploadStore

log = logging.getLogger(__name__)

FPS = 25
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
MAX_BATCH = 1024


class ModelNotFound(FileNotFoundError):
    """No trained model of that name in the workspace."""


def is_model_dir(path: Path) -> bool:
    """A folder is a model when it has ``model.json`` or ``point_cloud/iteration_*``."""
    return (path / "model.json").is_file() or any((path / "point_cloud").glob("iteration_*"))


def list_models(ws: Workspace) -> List[Dict[str, Any]]:
    """Trained models of the workspace: ``[{"name", "iterations"}]`` (iterations: saved, sorted)."""
    from gaussiantalker.model.io import list_iterations

    out = []
    for name in ws.models():
        folder = ws.model_dir(name)
        if is_model_dir(folder):
            out.append({"name": name, "iterations": list_iterations(folder)})
    return out


def model_folder(ws: Workspace, name: str, iteration: Optional[int] = None) -> Tuple[Path, int]:
    """The folder of model ``name`` and the iteration to use (default the newest).

    Raises:
        InvalidNameError: ``name`` is not a plain name (``..``, separators).
        ModelNotFound: no such model, or it has no saved iteration yet.
        ValueError: ``iteration`` is not one of the saved ones (the message lists them).
    """
    from gaussiantalker.model.io import list_iterations

    folder = ws.model_dir(validate_name(name))
    if not folder.is_dir() or not is_model_dir(folder):
        have = ", ".join(m["name"] for m in list_models(ws)) or "none"
        raise ModelNotFound(f"no trained model {name!r} (models: {have})")
    saved = list_iterations(folder)
    if not saved:
        raise ModelNotFound(f"model {name!r} has no saved iteration yet (still training?)")
    if iteration is None:
        return folder, saved[-1]
    if int(iteration) not in saved:
        raise ValueError(f"model {name!r} has no iteration {iteration} (saved: {', '.join(map(str, saved))})")
    return folder, int(iteration)


class TalkerCache:
    """Loaded talkers, least recently used dropped past ``size``; ``get`` returns ``(talker, lock)``."""

    def __init__(self, ws: Workspace, device: str = "auto", size: int = 2) -> None:
        self.ws, self.device, self.size = ws, device, max(1, int(size))
        self._lock = threading.Lock()
        self._items: "OrderedDict[tuple, Tuple[Any, threading.Lock]]" = OrderedDict()
        self.loads = 0  # how many times a model was read from disk (tests check "load once")

    def get(self, name: str, iteration: Optional[int] = None) -> Tuple[Any, threading.Lock]:
        import gaussiantalker

        folder, it = model_folder(self.ws, name, iteration)
        key = (str(folder), it, self.device)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            t0 = time.perf_counter()
            talker = gaussiantalker.load(folder, iteration=it, device=self.device)
            self.loads += 1
            log.info("loaded model %s iteration %d on %s in %.2f s", name, it, talker.device,
                     time.perf_counter() - t0)
            self._items[key] = (talker, threading.Lock())
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return self._items[key]


@dataclass
class GenerateRequest:
    """What the generation page submits (``POST /api/generate``)."""

    model: str
    audio: str  # id of an "audio" upload
    batch_size: int = 32
    iteration: Optional[int] = None


class VideoGenerator:
    """Validates generation requests and renders them as jobs (one at a time per device)."""

    def __init__(self, cache: TalkerCache, uploads: UploadStore, jobs: JobManager, videos_dir: Path) -> None:
        self.cache, self.uploads, self.jobs, self.videos_dir = cache, uploads, jobs, Path(videos_dir)

    def submit(self, req: GenerateRequest) -> tuple:
        """Check ``req`` (model, iteration, audio upload, batch size) and queue the render.

        Returns ``(job, created)``; the same model + audio + iteration while still queued/running is the same job.
        """
        if not 0 < int(req.batch_size) <= MAX_BATCH:
            raise ValueError(f"batch size must be 1..{MAX_BATCH}, got {req.batch_size}")
        _, iteration = model_folder(self.cache.ws, req.model, req.iteration)
        up = self.uploads.get(req.audio, "audio")
        params = {"model": req.model, "iteration": iteration, "audio": up.id, "audio_name": up.filename,
                  "batch_size": int(req.batch_size)}

        def run(ctx: JobContext) -> Dict[str, Any]:
            talker, lock = self.cache.get(req.model, iteration)
            out = self.videos_dir / f"{ctx.id}.mp4"

            def callback(p) -> None:
                ctx.check_cancelled()
                ctx.progress(**p.as_dict())

            with lock:
                res = talker.render(up.path, out=out, batch_size=int(req.batch_size), progress=False,
                                    callback=callback)
            ctx.log(f"rendered {res.frames} frames in {res.seconds:.1f} s")
            return {"video": f"/static/videos/{out.name}", "frames": res.frames, "seconds": round(res.seconds, 3),
                    "iteration": res.iteration}

        key = f"generate:{req.model}:{iteration}:{up.sha256}:{int(req.batch_size)}"
        return self.jobs.submit("generate", f"render:{self.cache.device}", params, run, key=key)


# --------------------------------------------------------------------------------------------- streaming
def render_segments(talker, samples: np.ndarray, out_dir: Path, first_frames: int, frames_per_segment: int,
                    on_segment: Callable[[int, Path, int], None], on_first_frame: Callable[[], None],
                    check: Callable[[], None] = lambda: None, chunk: int = 2560) -> Tuple[List[Path], int]:
    """Render ``samples`` (``[T]`` float32, 16 kHz) through ``talker.stream`` into mp4 pieces with sound.

    The first piece has ``first_frames`` frames, each later one ``frames_per_segment``; piece ``i`` is
    ``out_dir/seg_<i>.mp4`` (H.264 + AAC of its slice of the audio). ``on_segment(i, path, frames_done)`` is
    called as each piece is in place, ``on_first_frame()`` when the first frame exists, ``check()`` between
    chunks (raise there to stop). The audio is fed in ``chunk``-sample pieces, as a TTS engine would stream it.

    Returns:
        (the pieces in order, the number of frames).
    """
    from gaussiantalker.audio import write_wav
    from gaussiantalker.render.video import write_video

    out_dir.mkdir(parents=True, exist_ok=True)
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    pieces: List[Path] = []
    pending: List[np.ndarray] = []
    done = 0

    def chunks():
        for a in range(0, len(samples), chunk):
            check()
            yield samples[a:a + chunk]

    def flush() -> None:
        nonlocal done
        k0, k1 = done, done + len(pending)
        audio = np.zeros((k1 - k0) * SAMPLES_PER_FRAME, np.float32)
        part = samples[k0 * SAMPLES_PER_FRAME:k1 * SAMPLES_PER_FRAME]
        audio[:len(part)] = part
        path = out_dir / f"seg_{len(pieces):03d}.mp4"
        wav = out_dir / f".seg_{len(pieces):03d}.wav"
        write_wav(wav, audio)
        try:
            write_video(path, pending, talker.width, talker.height, FPS, audio=wav)  # atomic
        finally:
            wav.unlink(missing_ok=True)
        pieces.append(path)
        done = k1
        pending.clear()
        on_segment(len(pieces) - 1, path, done)

    for frame in talker.stream(chunks()):
        if done == 0 and not pending:
            on_first_frame()
        pending.append(frame)
        if len(pending) >= (first_frames if not pieces else frames_per_segment):
            flush()
    if pending:
        flush()
    return pieces, done


def join_segments(pieces: List[Path], wav: Path, out: Path) -> Path:
    """One mp4 from the pieces' video (copied, frame-exact) and the whole reply's audio ``wav``."""
    from gaussiantalker.fileio import atomic_write
    from gaussiantalker.media import run_ffmpeg

    listing = out.parent / f".{out.stem}.concat.txt"
    listing.write_text("".join(f"file '{p.resolve()}'\n" for p in pieces), encoding="utf-8")
    try:
        atomic_write(out, lambda tmp: run_ffmpeg(
            ["-y", "-f", "concat", "-safe", "0", "-i", listing, "-i", wav, "-map", "0:v:0", "-map", "1:a:0",
             "-c:v", "copy", "-c:a", "aac", "-b:a", "160k", "-shortest", "-movflags", "+faststart", tmp], path=out))
    finally:
        listing.unlink(missing_ok=True)
    return out


__all__ = ["GenerateRequest", "ModelNotFound", "TalkerCache", "VideoGenerator", "is_model_dir", "join_segments",
           "list_models", "model_folder", "render_segments"]

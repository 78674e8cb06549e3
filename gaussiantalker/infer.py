"""Inference: any audio, any length, to a talking-head video with sound.

* :func:`render` — one call: audio in, mp4 out (H.264 + AAC, 25 fps, ``round(25 x duration)`` frames).
* :func:`load` — a :class:`Talker` that keeps the model, the tracked pose/background sequence and the
  feature extractor in memory for many renders; :meth:`Talker.stream` yields frames as audio arrives;
  :class:`gaussiantalker.live.LiveSession` on a Talker is an always-on avatar.

Per batch of frames: audio-feature windows of the driving audio (the model's feature kind), the pose,
blink and torso/background of the pose schedule (:mod:`gaussiantalker.render.poses`: ping-pong over all
tracked frames with blended turns, or frame 0 held), the fine-stage deformation and the rasterizer with
the frame's torso-over-background image as background. Frames go to ffmpeg as they are made.
A batch that runs out of memory is split in halves and retried (:func:`run_batches`); the pixels do
not depend on the batch size. ``docs/inference.md`` has the details and measurements.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

import numpy as np
import torch

from .devices import resolve_device
from .fileio import atomic_write
from .progress import Progress, ProgressCallback, eta
from .render.poses import PoseSchedule, blend_c2w, pose_track
from .render.video import VideoEncoder, to_uint8
from .workspace import resolve_model_dir

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
T = TypeVar("T")
Tensor = torch.Tensor

FPS = 25.0
SAMPLE_RATE = 16000
WINDOW_ROWS = 16  # rows of one audio-feature window
CONTEXT_BEFORE = 4  # frame k reads the windows of frames k-4 .. k+3
CONTEXT_AFTER = 3

__all__ = [
    "AUDIO_SUFFIXES", "Composite", "FeatureKindUnavailableError", "RenderResult", "RenderTimings", "Talker",
    "audio_files", "is_out_of_memory", "load", "render", "render_many", "run_batches",
]


class FeatureKindUnavailableError(ValueError):
    """The model was trained on an audio-feature kind that cannot be computed here (e.g. DeepSpeech
    without its graph file), or whose dimension differs from the model's."""


@dataclass
class RenderTimings:
    """Seconds spent in each part of a render (wall clock, summed over batches)."""

    features: float = 0.0
    data: float = 0.0  # poses, blinks and torso/background images of the schedule
    deform: float = 0.0
    rasterize: float = 0.0
    encode: float = 0.0  # uint8 conversion and writing to ffmpeg (plus its final flush)
    total: float = 0.0

    def as_dict(self) -> Dict[str, float]:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


@dataclass
class Composite:
    """Frames made by :meth:`Talker.compose`."""

    image: Tensor  # [B, 3, H, W] in [0, 1] (not clamped), at the output size
    alpha: Tensor  # [B, 1, H, W] the head's coverage


@dataclass
class RenderResult:
    """What :func:`render` wrote."""

    path: Path  # the mp4 (H.264 + AAC)
    frames: int
    seconds: float  # wall-clock time of the whole render
    fps: float  # frames / seconds
    copies: Tuple[Path, ...] = ()  # the same video written elsewhere (custom/ours_<k>/renders/output.mp4)
    full_frame: Optional[Path] = None  # paste_back video
    iteration: int = -1
    timings: RenderTimings = field(default_factory=RenderTimings)


# --------------------------------------------------------------------------------------------------
# memory-aware batching


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors and CPU allocation failures."""
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, RuntimeError):
        msg = str(exc).lower()
        return "out of memory" in msg or "can't allocate memory" in msg or "cannot allocate memory" in msg
    return False


def run_batches(fn: Callable[[int, int], T], total: int, batch_size: int) -> Iterator[Tuple[int, int, T]]:
    """Call ``fn(start, stop)`` over ``[0, total)`` in batches, in order; yields ``(start, stop, result)``.

    A batch that raises an out-of-memory error (:func:`is_out_of_memory`) is split in halves and
    retried, and the smaller size is kept for the rest; a single frame that does not fit re-raises.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size, start = int(batch_size), 0
    while start < total:
        stop = min(total, start + size)
        failed = None
        try:
            result = fn(start, stop)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc) or stop - start == 1:
                raise
            failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if failed is not None:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            size = max(1, (stop - start) // 2)
            log.warning("out of memory on a batch of %d frames (%s); retrying with batches of %d",
                        stop - start, failed, size)
            continue
        yield start, stop, result
        start = stop


# --------------------------------------------------------------------------------------------------
# loading


class _BackgroundCache:
    """LRU cache of ``[3, H, W]`` uint8 torso-over-background images, bounded in bytes."""

    def __init__(self, load: Callable[[int], np.ndarray], max_bytes: float) -> None:
        self._load, self._max = load, float(max_bytes)
        self._items: OrderedDict[int, Tensor] = OrderedDict()
        self._bytes = 0

    def __getitem__(self, i: int) -> Tensor:
        """``[3, H, W]`` float32 in [0, 1] (exactly the dataset's ``bg_torso``)."""
        i = int(i)
        if i in self._items:
            self._items.move_to_end(i)
            img = self._items[i]
        else:
            img = torch.from_numpy(np.ascontiguousarray(np.asarray(self._load(i)).transpose(2, 0, 1)))
            if img.numel() <= self._max:
                self._items[i] = img
                self._bytes += img.numel()
                while self._bytes > self._max:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.numel()
        return img.float().div_(255.0)


class Talker:
    """A trained model kept in memory for many renders. Build it with :func:`load`.

    Attributes:
        model_dir, iteration, audio_kind, audio_dim, width, height, device.
        length: tracked frames in the pose sequence (all frames of the dataset, train then val, in
            frame order).
    """

    def __init__(self, loaded, data, model_dir: Path, device: torch.device, assets=None,
                 cache_mb: float = 512.0) -> None:
        self.loaded, self.data = loaded, data
        self.model = loaded.model.to(device).eval()
        self.model_dir, self.device, self.assets = Path(model_dir), device, assets
        self.iteration = int(loaded.iteration)
        self.audio_kind, self.audio_dim = str(loaded.audio_kind), int(loaded.audio_dim)
        # The model renders the head at its training size (render_width x render_height); the frames a user
        # gets have the dataset's own size (width x height): a smaller head render is upsampled and composited
        # over the full-size torso and background.
        self.render_width, self.render_height, self.focal = int(data.width), int(data.height), float(data.focal)
        data.audio_shift = self.model.clip_shift  # the clip's own audio, aligned as in training
        self.full = data.at_full_size()  # width, height, bg_torso (and, for a dataset, its splits) at the output size
        self.width, self.height = int(self.full.width), int(self.full.height)
        #: "utterance": a driving audio's features are brought to the training clip's speech statistics (per
        #: channel mean / std) before the model reads them; "none": used as they are.
        self.audio_norm = "none"
        #: Close the mouth where the driving audio is silent (gaussiantalker.audio.voice; lip-code models that know
        #: their subject's closed mouth): None = as training chose for this subject (closed, unless the subject holds
        #: the mouth open in its own pauses), True = always, False = never (the mouth the audio predicts there).
        self.close_in_silence: Optional[bool] = None
        self._extractor = _check_feature_kind(self.audio_kind, self.audio_dim, self.model_dir, assets)
        self.source: Optional[Path] = None  # the export file, for a Talker loaded from one
        self.frame_ids, self.c2w, self.eye = pose_track(data)
        self._bg = _BackgroundCache(lambda i: self.full.bg_torso(self.frame_ids[i]), cache_mb * 2 ** 20)

    @property
    def length(self) -> int:
        return len(self.frame_ids)

    # ---------------------------------------------------------------------------------------------
    def features(self, audio) -> np.ndarray:
        """``[M, 16, D]`` float32 windows of ``audio`` (a path or ``[T]`` 16 kHz samples) in the model's kind."""
        from .audio import extract_features

        feats = extract_features(audio, kind=self._extractor, fps=FPS)
        if self.audio_norm == "utterance":
            from .audio.features import energy_column
            from .audio.phonetic import MFCC_DIM
            from .audio.windows import match_statistics

            # the MFCC values only: a phonetic row's articulation values say which phone it is, whoever speaks
            w = feats.windows.copy()
            n = MFCC_DIM if self.audio_kind == "phonetic" else w.shape[-1]
            w[..., :n] = match_statistics(w[..., :n], self.model.audio_mean.cpu().numpy()[:n],
                                          self.model.audio_std.cpu().numpy()[:n], energy_column(self.audio_kind))
            return w
        return feats.windows

    @property
    def gates_silence(self) -> bool:
        """Whether renders close the mouth in the driving audio's silences by default (:attr:`close_in_silence`, else
        the model's choice; never for a model that does not know its subject's closed mouth)."""
        return self._gates(None)

    def _gates(self, choice: Optional[bool]) -> bool:
        """Whether a render asked ``close_in_silence=choice`` (None: :attr:`close_in_silence`) closes the mouth."""
        if choice is None:
            choice = self.close_in_silence
        if choice is None:
            return self.model.closes_in_silence
        return bool(choice) and self.model.has_silence_gate

    def voice(self, samples: np.ndarray, num_frames: int,
              close_in_silence: Optional[bool] = None) -> Optional[np.ndarray]:
        """``[num_frames]`` voice activity of ``samples`` (16 kHz) per output frame, or None when the render does not
        close the mouth in silences (``close_in_silence``, as for :meth:`render`); see
        :mod:`gaussiantalker.audio.voice`."""
        if not self._gates(close_in_silence):
            return None
        from .audio.voice import voice_activity

        return voice_activity(samples, num_frames, fps=FPS)

    def render_frames(self, windows: Tensor, frames: np.ndarray, schedule: PoseSchedule,
                      offset: int = 0, timings: Optional[RenderTimings] = None,
                      voice: Optional[np.ndarray] = None) -> Tensor:
        """Render output frames ``frames`` ``[B]`` (ints).

        Args:
            windows: ``[M, 16, D]`` audio windows; row ``r`` belongs to output frame ``offset + r``
                (rows before it or past its end read zeros, as at the ends of the audio).
            schedule: the pose schedule.
            voice: ``[M]`` voice activity aligned with ``windows`` (:meth:`voice`), or None (not gated).
        Returns:
            ``[B, 3, H, W]`` float32 images in [0, 1] on the model's device.
        """
        from .data import audio_context

        tm = timings if timings is not None else RenderTimings()
        t0 = time.perf_counter()
        idx = torch.as_tensor(np.asarray(frames) - offset, dtype=torch.long)
        audio = audio_context(windows, idx)  # [B, 8, 16, D], zeros outside the audio
        i0, i1, w = schedule.neighbours(np.asarray(frames))
        wt = torch.from_numpy(w)
        c2w = blend_c2w(self.c2w[i0], self.c2w[i1], wt)
        eye = (1 - wt) * self.eye[i0] + wt * self.eye[i1]
        bg = torch.stack([self._background(a, b, float(x)) for a, b, x in zip(i0, i1, w)])
        v = None
        if voice is not None:
            v = torch.from_numpy(np.asarray(voice, np.float32)[idx.clamp(0, len(voice) - 1).numpy()])
        tm.data += time.perf_counter() - t0
        return self.compose(audio, eye, c2w, bg, tm, voice=v).image

    def compose(self, audio: Tensor, eye: Tensor, c2w: Tensor, background: Tensor,
                timings: Optional[RenderTimings] = None, lips: Optional[Tensor] = None,
                voice: Optional[Tensor] = None) -> Composite:
        """Render B frames from their conditions and composite them over their backgrounds.

        Args:
            audio: ``[B, 8, 16, D]`` audio-feature windows (see :func:`gaussiantalker.data.audio_context`).
            eye: ``[B]`` blink in [0, 1]. c2w: ``[B, 4, 4]`` camera-to-world (scene units).
            background: ``[B, 3, height, width]`` torso-over-background images at the output size.
            lips: ``[B, K]`` lip codes to use instead of the ones predicted from the audio (lip-code models; e.g.
                the tracked codes, to see what the renderer alone makes of them).
            voice: ``[B]`` voice activity of the frames (:meth:`voice`): the predicted mouth is closed where it is 0.
        Returns:
            :class:`Composite`: ``image [B, 3, height, width]`` and the head's ``alpha [B, 1, height, width]``.
        """
        from .camera import cameras_from_transforms
        from .data import camera_condition
        from .model.types import Conditions
        from .render.rasterize import composite_upsampled, render_batch

        tm = timings if timings is not None else RenderTimings()
        t0 = time.perf_counter()
        cam = camera_condition(c2w.double()).float()  # as the dataset computes it
        cameras = cameras_from_transforms(c2w.to(self.device), self.focal, self.render_width, self.render_height)
        cond = Conditions(audio, eye.reshape(-1, 1).float(), cam, lips, voice).to(self.device)
        bg = background.to(self.device)
        upsample = (self.render_width, self.render_height) != (self.width, self.height)
        # A smaller head render goes over an empty (zero) background: its pixels are then the premultiplied
        # colour, which upsamples correctly together with its alpha.
        render_bg = bg.new_zeros(bg.shape[0], 3, self.render_height, self.render_width) if upsample else bg
        t1 = time.perf_counter()
        with torch.no_grad():
            g = self.model.deform("fine", cond)  # eval, no autograd: frame by frame, batch-invariant
            _sync(self.device)
            t2 = time.perf_counter()
            out = render_batch(g, cameras, render_bg)
            if upsample:
                image, alpha = composite_upsampled(out.image, out.alpha, bg)
            else:
                image, alpha = out.image, out.alpha
            _sync(self.device)
        t3 = time.perf_counter()
        tm.data += t1 - t0
        tm.deform += t2 - t1
        tm.rasterize += t3 - t2
        return Composite(image, alpha)

    def _background(self, i0: int, i1: int, w: float) -> Tensor:
        a = self._bg[i0]
        if w <= 0 or i0 == i1:
            return a
        return (1 - w) * a + w * self._bg[i1]

    def _frames(self, windows: np.ndarray, total: int, schedule: PoseSchedule, batch_size: int,
                timings: RenderTimings, progress: bool, callback: Optional[ProgressCallback] = None,
                voice: Optional[np.ndarray] = None) -> Iterator[np.ndarray]:
        """``[b, H, W, 3]`` uint8 batches of output frames ``0 .. total-1``."""
        from tqdm.auto import tqdm

        begin = time.perf_counter()
        win = torch.from_numpy(np.ascontiguousarray(windows))
        bar = tqdm(total=total, unit="frame", desc="render", disable=not progress)
        try:
            def one(start: int, stop: int) -> Tensor:
                return self.render_frames(win, np.arange(start, stop), schedule, timings=timings, voice=voice)

            for start, stop, images in run_batches(one, total, batch_size):
                t = time.perf_counter()
                out = to_uint8(images)
                timings.encode += time.perf_counter() - t
                bar.update(stop - start)
                if callback is not None:
                    elapsed = time.perf_counter() - begin
                    callback(Progress(stage="render", iteration=stop, total=total, elapsed=elapsed,
                                      eta=eta(stop, total, elapsed), message=f"rendered {stop}/{total} frames"))
                yield out
        finally:
            bar.close()

    def frames(self, audio, batch_size: int = 128, pose: str = "track",
               close_in_silence: Optional[bool] = None) -> Iterator[np.ndarray]:
        """The frames :meth:`render` would encode, as ``[H, W, 3]`` uint8 RGB arrays (no file written).

        Args:
            audio: a media file, or ``[T]`` float32 samples at 16 kHz.
            close_in_silence: as for :meth:`render`.
        """
        from .audio import load_audio

        samples = _as_samples(audio, load_audio)
        windows = self.features(samples)
        voice = self.voice(samples, int(windows.shape[0]), close_in_silence)
        schedule = PoseSchedule(self.length, pose)
        for batch in self._frames(windows, int(windows.shape[0]), schedule, batch_size, RenderTimings(), False,
                                  voice=voice):
            yield from batch

    # ---------------------------------------------------------------------------------------------
    def render(self, audio, out: Optional[PathLike] = None, batch_size: int = 128, pose: str = "track",
               progress: bool = True, paste_back: bool = False,
               callback: Optional[ProgressCallback] = None, close_in_silence: Optional[bool] = None) -> RenderResult:
        """Render ``audio`` (a media file, or ``[T]`` float32 samples at 16 kHz) to an mp4 with sound.

        Args:
            out: the mp4 to write; default ``<model>/renders/output.mp4``, copied to
                ``<model>/custom/ours_<iteration>/renders/output.mp4``.
            batch_size: frames per deformation/rasterizer call (split on out-of-memory).
            pose: ``"track"`` (the tracked sequence, ping-pong with blended turns) or ``"static"``.
            paste_back: also write ``<out stem>_full.mp4``: the render pasted into the source video's
                full frames (only for datasets that preprocessing cropped).
            callback: called with a :class:`~gaussiantalker.progress.Progress` (stage ``"render"``) after every
                batch; an exception it raises stops the render (nothing is left at ``out``).
            close_in_silence: close the mouth where the audio is silent (True), never (False), or None: as
                :attr:`close_in_silence` says, by default the model's choice (closed, unless its subject holds the
                mouth open in its own pauses: :attr:`GaussianTalkerModel.closes_in_silence`).
        Returns:
            :class:`RenderResult`; ``frames == round(25 x audio seconds)``.
        Raises:
            FileNotFoundError / MediaError: the audio cannot be read (no file, no audio stream).
            ValueError: bad arguments; paste_back on a dataset without a crop.
        """
        from .audio import load_audio, write_wav

        start = time.perf_counter()
        timings = RenderTimings()
        schedule = PoseSchedule(self.length, pose)
        samples = _as_samples(audio, load_audio)
        t = time.perf_counter()
        windows = self.features(samples)
        total = int(windows.shape[0])
        voice = self.voice(samples, total, close_in_silence)
        timings.features = time.perf_counter() - t
        target = Path(out) if out is not None else self.model_dir / "renders" / "output.mp4"
        crop = self._crop() if paste_back else None
        tmp_wav = None
        try:
            if isinstance(audio, (str, os.PathLike)):
                mux = Path(audio)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp_wav = target.parent / f".{target.stem}.audio.wav"
                write_wav(tmp_wav, samples)
                mux = tmp_wav
            gen = self._frames(windows, total, schedule, batch_size, timings, progress, callback, voice)
            counted: Dict[str, int] = {}

            def write_main(tmp_main: Path) -> None:
                if crop is None:
                    counted["n"] = self._encode(gen, tmp_main, None, schedule, mux, timings)
                else:
                    atomic_write(_paste_target(target), lambda tmp_full: counted.__setitem__(
                        "n", self._encode(gen, tmp_main, tmp_full, schedule, mux, timings, crop)))

            atomic_write(target, write_main)
        finally:
            if tmp_wav is not None and tmp_wav.exists():
                tmp_wav.unlink()
        copies: List[Path] = []
        if out is None:
            copy = self.model_dir / "custom" / f"ours_{self.iteration}" / "renders" / "output.mp4"
            atomic_write(copy, lambda p: shutil.copyfile(target, p))
            copies.append(copy)
        seconds = time.perf_counter() - start
        timings.total = seconds
        n = counted["n"]
        full = _paste_target(target) if crop is not None else None
        log.info("rendered %d frames in %.1f s (%.1f fps) to %s", n, seconds, n / seconds, target)
        return RenderResult(path=target, frames=n, seconds=seconds, fps=n / max(seconds, 1e-9),
                            copies=tuple(copies), full_frame=full, iteration=self.iteration, timings=timings)

    def _encode(self, gen: Iterator[np.ndarray], path: Path, full_path: Optional[Path], schedule: PoseSchedule,
                mux: Path, timings: RenderTimings, crop_src=None) -> int:
        """Write the frames of ``gen`` to ``path`` (and the pasted-back frames to ``full_path``)."""
        from contextlib import ExitStack

        with ExitStack() as stack:
            enc = stack.enter_context(VideoEncoder(path, self.width, self.height, FPS, mux))
            full = None
            if crop_src is not None:
                from .render.paste import SourceFrames, feather_mask, paste

                crop, source = crop_src
                src = stack.enter_context(SourceFrames(source, max(self.frame_ids) + 1, crop, FPS))
                full = stack.enter_context(VideoEncoder(full_path, crop.source_width, crop.source_height, FPS, mux))
                mask = feather_mask(crop.size)
            j = 0
            for batch in gen:
                t = time.perf_counter()
                enc.write(batch)
                if full is not None:
                    i0, i1, w = schedule.neighbours(np.arange(j, j + batch.shape[0]))
                    for f, a, b, x in zip(batch, i0, i1, w):
                        bg = src.blend(self.frame_ids[a], self.frame_ids[b], float(x))
                        full.write(paste(bg, f, crop, mask))
                j += batch.shape[0]
                timings.encode += time.perf_counter() - t
            if j == 0:
                raise ValueError("no frames to write")
            t = time.perf_counter()
            if full is not None:
                full.close()
            enc.close()
            timings.encode += time.perf_counter() - t
        return j

    def stream(self, audio_chunks: Iterable[np.ndarray], sample_rate: int = SAMPLE_RATE, pose: str = "track",
               batch_size: int = 32, close_in_silence: Optional[bool] = None) -> Iterator[np.ndarray]:
        """Yield ``[H, W, 3]`` uint8 RGB frames (25 fps) as audio chunks arrive.

        Args:
            audio_chunks: ``[t]`` float32 mono chunks at 16 kHz, any size (e.g. 320 samples = 20 ms).
            sample_rate: must be 16000 (resample before streaming).
            pose: as for :meth:`render`.
            batch_size: most frames per deformation/rasterizer call.
            close_in_silence: as for :meth:`render`.
        The frames equal :meth:`render`'s frames for the same audio. Frame ``k`` is yielded once the
        audio reaches ``k / 25 s + look-ahead``: the features' look-ahead (0.1525 s for mfcc) plus 3
        frames (0.12 s) because frame ``k`` reads the windows of frames ``k-4 .. k+3``; the last frames
        come when the iterator of chunks ends.
        """
        from .audio import StreamingFeatures
        from .audio.voice import StreamingVoice

        if int(sample_rate) != SAMPLE_RATE:
            raise ValueError(f"stream() takes 16 kHz audio, got sample_rate={sample_rate}: resample the chunks first")
        feats = StreamingFeatures(self._extractor, fps=FPS)
        gate = StreamingVoice(fps=FPS) if self._gates(close_in_silence) else None
        schedule = PoseSchedule(self.length, pose)
        buf = np.zeros((0, WINDOW_ROWS, self.audio_dim), np.float32)  # windows of frames buf_start ..
        voice = np.zeros(0, np.float64)  # voice activity of frames buf_start .. (gated renders)
        buf_start, done = 0, 0

        def emit(stop: int) -> Iterator[np.ndarray]:
            nonlocal buf, voice, buf_start, done
            if gate is not None:  # a frame waits for its voice activity too (it comes sooner than the windows)
                stop = min(stop, buf_start + voice.shape[0])
            if stop <= done:
                return
            win = torch.from_numpy(np.ascontiguousarray(buf))
            v = voice if gate is not None else None

            def one(a: int, b: int) -> Tensor:
                return self.render_frames(win, np.arange(done + a, done + b), schedule, offset=buf_start, voice=v)

            for _, _, images in run_batches(one, stop - done, batch_size):
                yield from to_uint8(images)
            done = stop
            # Keep the windows that later frames still read (frame k reads k-4 .. k+3).
            keep = max(0, done - CONTEXT_BEFORE) - buf_start
            if keep > 0:
                buf, voice, buf_start = buf[keep:], voice[keep:], buf_start + keep

        for chunk in audio_chunks:
            x = np.asarray(chunk, dtype=np.float32).reshape(-1)
            new = feats.push(x)
            if new.shape[0]:
                buf = np.concatenate([buf, new])
            if gate is not None:
                voice = np.concatenate([voice, gate.push(x)])
            yield from emit(buf_start + buf.shape[0] - CONTEXT_AFTER)
        rest = feats.finish()
        if rest.shape[0]:
            buf = np.concatenate([buf, rest])
        if gate is not None:
            voice = np.concatenate([voice, gate.finish(buf_start + buf.shape[0])])
        yield from emit(buf_start + buf.shape[0])

    def _crop(self):
        from .render.paste import Crop

        meta = _dataset_meta(self.data.path)
        crop = meta.get("crop")
        if self.source is not None:
            raise ValueError(f"paste_back needs the source video and the dataset's crop; {self.source} is an export "
                             f"without them: render from the model folder")
        if not crop:
            raise ValueError(f"paste_back: dataset {self.data.path} was not cropped (meta.json has no crop)")
        crop = Crop.from_meta(crop)
        source = (meta.get("source") or {}).get("path")
        if not source:
            raise ValueError(f"paste_back: {self.data.path}/meta.json does not record the source video path")
        return crop, Path(source)


def load(model_dir, iteration: Optional[int] = None, device="auto", workspace: Optional[PathLike] = None,
         assets: Optional[PathLike] = None, cache_mb: float = 512.0) -> Talker:
    """Load a trained model for many renders.

    Args:
        model_dir: the model folder (``<workspace>/output/<name>``), a model name in ``workspace``
            (default ``./GaussianTalker``), a :class:`gaussiantalker.train.Model`, or an export file
            (``NAME.gtalk``, :func:`gaussiantalker.export.export`: needs no dataset).
        iteration: the saved iteration to load (default: the newest).
        device: ``"auto"``, ``"CPU"``, ``"GPU0"``, ``"cuda:1"``, ...
        assets: asset folder for the audio-feature model files (DeepSpeech graph, HuBERT).
        cache_mb: memory for decoded torso/background frames (an LRU cache).
    Raises:
        ModelNotFoundError: no such model folder. IterationNotFoundError: the message lists the saved ones.
        FeatureKindUnavailableError: the model's audio features cannot be computed here.
        FileNotFoundError: the model's dataset folder is gone.
    """
    from .data import TalkingHeadData
    from .model.io import load_model

    dev = resolve_device(device)
    path = resolve_model_dir(getattr(model_dir, "path", model_dir), workspace)
    if path.is_file():  # a one-file export (gaussiantalker.export)
        if iteration is not None:
            raise ValueError(f"{path} is an export of one iteration: load it without iteration=")
        from .export import read_export

        p = path.expanduser().resolve()
        loaded, data = read_export(p, device=dev)
        talker = Talker(loaded, data, p.parent / p.stem, dev, assets, cache_mb)
        talker.source = p  # renders go to <folder of the file>/<file stem>/renders/ unless out= is given
        return talker
    loaded = load_model(path, iteration=iteration, device=dev)
    _check_feature_kind(loaded.audio_kind, loaded.audio_dim, path, assets)
    ds = Path(loaded.dataset_path)
    if not ds.is_dir():
        raise FileNotFoundError(f"model {path} was trained on the dataset {ds}, which does not exist any more")
    res = getattr(getattr(loaded.config, "model", None), "resolution", -1)
    data = TalkingHeadData.open(ds, resolution=None if res is None or int(res) <= 0 else int(res))
    if (int(data.width), int(data.height)) != (int(loaded.width), int(loaded.height)):
        raise ValueError(f"model {path} renders {loaded.width}x{loaded.height} but its dataset {ds} loads as "
                         f"{data.width}x{data.height}")
    return Talker(loaded, data, path, dev, assets, cache_mb)


def render(model, audio, out: Optional[PathLike] = None, batch_size: int = 128, iteration: Optional[int] = None,
           pose: str = "track", device="auto", workspace: Optional[PathLike] = None, progress: bool = True,
           paste_back: bool = False, callback: Optional[ProgressCallback] = None,
           close_in_silence: Optional[bool] = None) -> RenderResult:
    """Render a talking-head video of ``audio`` with a trained model.

    Args:
        model: a :class:`Talker`, a :class:`gaussiantalker.train.Model`, a model folder or a model name.
        audio: any media file with an audio stream, or ``[T]`` float32 samples at 16 kHz.
        out, batch_size, pose, progress, paste_back, callback, close_in_silence: see :meth:`Talker.render`.
        iteration, device, workspace: see :func:`load` (ignored for a :class:`Talker`, except that a
            different ``iteration`` is an error).
    Returns:
        :class:`RenderResult` (path, frames, seconds, fps, ...).
    """
    if isinstance(model, Talker):
        if iteration is not None and int(iteration) != model.iteration:
            raise ValueError(f"this Talker holds iteration {model.iteration}, not {iteration}: load() that one")
        talker = model
    else:
        talker = load(model, iteration=iteration, device=device, workspace=workspace)
    return talker.render(audio, out=out, batch_size=batch_size, pose=pose, progress=progress, paste_back=paste_back,
                         callback=callback, close_in_silence=close_in_silence)


#: File name endings taken from an audio folder (any media file with an audio stream works when named).
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".opus", ".aac", ".mp4", ".mov", ".mkv", ".webm")


def audio_files(audio: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    """The audio files of ``audio``: a file, a folder (its files with an :data:`AUDIO_SUFFIXES` ending, sorted), or
    a list of both. Raises FileNotFoundError for a missing path or an empty folder, ValueError when two files
    share a name stem (their videos would overwrite each other: ``renders/<stem>.mp4``)."""
    items = [audio] if isinstance(audio, (str, os.PathLike)) else list(audio)
    files: List[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"audio folder {path} has no audio files ({', '.join(AUDIO_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"audio file {path} does not exist")
    stems: Dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise ValueError(f"audio files {stems[f.stem]} and {f} have the same name: both would render to "
                             f"renders/{f.stem}.mp4")
        stems[f.stem] = f
    return files


def render_many(model, audio: Union[PathLike, Sequence[PathLike]], batch_size: int = 128,
                iteration: Optional[int] = None, pose: str = "track", device: Any = "auto",
                workspace: Optional[PathLike] = None, progress: bool = True, paste_back: bool = False,
                out: Optional[PathLike] = None, per_file: bool = True,
                assets: Optional[PathLike] = None, close_in_silence: Optional[bool] = None) -> List[RenderResult]:
    """Render many audio files, each to ``<model>/renders/<audio stem>.mp4`` (or ``out/<stem>.mp4``: ``out`` is a
    folder), sharded across the ranks of a data-parallel launch (``docs/distributed.md``). ``per_file=False``
    (one file): it renders to ``out`` or :meth:`Talker.render`'s default ``renders/output.mp4``. ``assets``: see
    :func:`load`; ``close_in_silence``: see :meth:`Talker.render`.

    One process: every file here, the model loaded once. Under ``torchrun``: rank r renders files r, r + N, ...
    on its device and every rank returns all results (gathered). ``device`` a list (``"GPU0,GPU1"``,
    ``["CPU", "CPU"]``): one rank per entry, started here through torch's elastic launcher.

    Returns:
        one :class:`RenderResult` per file, in the order of :func:`audio_files`.
    """
    from .distributed import SINGLE, init, launch, launched, parse_devices, shard, this_rank_device

    files = audio_files(audio)
    devices = parse_devices(device)
    if devices is not None and not launched():
        ref = getattr(model, "source", None) or getattr(model, "model_dir", None) or getattr(model, "path", model)
        if isinstance(model, Talker):
            iteration = model.iteration if getattr(model, "source", None) is None else None
        results = launch(render_many, devices, str(ref), [str(f) for f in files], batch_size=batch_size,
                         iteration=iteration, pose=pose, workspace=None if workspace is None else str(workspace),
                         progress=progress, paste_back=paste_back, out=None if out is None else str(out),
                         per_file=per_file, assets=None if assets is None else str(assets),
                         close_in_silence=close_in_silence)
        return results[0]
    dev = resolve_device(this_rank_device(device))
    comm = init(dev) if launched() else SINGLE
    mine = shard(list(enumerate(files)), comm.rank, comm.world)
    done: List[Tuple[int, RenderResult]] = []
    if mine:
        talker = model if isinstance(model, Talker) else load(model, iteration=iteration, device=dev,
                                                              workspace=workspace, assets=assets)
        folder = Path(out) if out is not None else talker.model_dir / "renders"
        for index, path in mine:
            log.info("rank %d of %d: rendering %s", comm.rank, comm.world, path)
            target = folder / f"{path.stem}.mp4" if per_file else out
            done.append((index, talker.render(path, out=target, batch_size=batch_size, pose=pose, progress=progress,
                                              paste_back=paste_back, close_in_silence=close_in_silence)))
    gathered = [pair for part in comm.gather_objects(done, what="render results") for pair in part]
    return [result for _, result in sorted(gathered, key=lambda pair: pair[0])]


def _paste_target(target: Path) -> Path:
    return target.with_name(f"{target.stem}_full{target.suffix}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _as_samples(audio, load_audio) -> np.ndarray:
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio, SAMPLE_RATE)
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"audio samples must be a non-empty [T] array at 16 kHz, got shape {a.shape}")
    return a


def _dataset_meta(path: Path) -> dict:
    import json

    f = Path(path) / "meta.json"
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{f}: not valid JSON ({exc})") from None


def _check_feature_kind(kind: str, dim: int, model_dir: Path, assets):
    """The extractor of the model's feature kind, or :class:`FeatureKindUnavailableError`."""
    from .audio import get_extractor

    try:
        extractor = get_extractor(kind, assets)
    except (FileNotFoundError, ImportError) as exc:
        raise FeatureKindUnavailableError(
            f"model {model_dir} was trained on {kind!r} audio features, which cannot be computed here: {exc}"
        ) from None
    except ValueError as exc:
        raise FeatureKindUnavailableError(f"model {model_dir}: audio feature kind {kind!r}: {exc}") from None
    if int(extractor.dim) != int(dim):
        raise FeatureKindUnavailableError(
            f"model {model_dir} was trained on {kind!r} features of dimension {dim}, but the {kind!r} "
            f"extractor available here makes dimension {extractor.dim} (another model file?)"
        )
    return extractor

"""Live avatar: frames on a 25 fps clock that listen, speak what they are given and listen again.

A :class:`LiveSession` sits on a loaded :class:`~gaussiantalker.infer.Talker` and answers, for every output
frame index ``n`` of its clock, "what is on screen now" (:meth:`LiveSession.frame`) and, for every audio
sample, "what is heard now" (:meth:`LiveSession.audio`). A worker thread renders a few frames ahead.

* **One pose cursor.** Frame ``n`` always takes its head pose, blink and torso/background from position
  ``n`` of a ping-pong schedule (:class:`~gaussiantalker.render.poses.PoseSchedule`) over the first
  ``loop_frames`` tracked frames, whether the avatar listens or speaks: the motion never jumps at a switch.
* **Listening** frames read the audio windows of silence (the mouth rests closed, as the model learnt it
  from the pauses of its clip). They depend on the pose position only, so they are cached per model
  (:class:`IdleFrames`, shared by every session of that model) and cost nothing after the first loop.
* **Speaking.** :meth:`LiveSession.say` schedules an utterance to start a couple of frames after the one now
  on screen. Its audio windows are computed with silence before and after it, so the mouth opens and
  closes with the sound (no cut), and the same samples go on the audio timeline from the same frame:
  video frame ``n`` and audio sample ``n * rate / 25`` are one instant (A/V aligned by construction).
* **Barge-in.** :meth:`LiveSession.interrupt` cuts the utterance's sound at the next frame (with a 10 ms
  fade), drops the replies queued after it and renders the frames not yet made with the cut audio's
  windows (the mouth closes over a few frames).
* **Late frames.** When a frame is not rendered by the time it is due, the previous image is shown again
  (``LiveFrame.fresh`` is False) and the worker skips ahead: the lips stay on the sound, the picture
  stutters. :attr:`LiveSession.stats` counts both.

Nothing here knows about networks: ``examples/webapp`` puts sessions on WebRTC tracks.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Deque, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from .audio.io import SAMPLE_RATE
from .render.poses import PoseSchedule, blend_c2w
from .render.video import to_uint8

if TYPE_CHECKING:  # annotations only: at run time the session needs the instance, not the module
    from .infer import Talker

FPS = 25.0
"""Frames per second of every render (the same as :data:`gaussiantalker.infer.FPS`; a test ties them)."""

log = logging.getLogger(__name__)

__all__ = ["IdleFrames", "LiveFrame", "LiveSession", "LiveStats", "Utterance"]

PAD_BEFORE = 4  # frames of silence whose windows precede an utterance (frame k reads windows k-4 .. k+3)
PAD_AFTER = 8  # frames rendered after the speech ends, with silence windows: the mouth closes smoothly
LEAD = 2  # an utterance starts this many frames after the frame on screen (room for its first render)
FADE_S = 0.01  # fade-out of an interrupted utterance


@dataclass
class LiveFrame:
    """One output frame of a session."""

    index: int  # frame number on the session's clock (frame n is shown at n / 25 s)
    image: np.ndarray  # [H, W, 3] uint8 RGB at the talker's output size
    speaking: bool  # rendered from speech audio windows (False: listening)
    fresh: bool  # False: the frame was not ready in time and the previous image is shown again
    utterance: int = -1  # id of the utterance it belongs to (-1 when listening)


@dataclass
class Utterance:
    """Speech given to :meth:`LiveSession.say` and where it sits on the session's clock."""

    id: int
    start_frame: int  # the frame at which the speech starts (its first sample is heard at start_frame / 25 s)
    speech_frames: int  # frames the speech lasts
    samples: np.ndarray  # [T] float32 at the session's audio rate (after an interrupt: cut and faded)
    created: float  # time.perf_counter() when say() was called
    features_s: float = 0.0  # seconds spent computing its audio windows
    first_rendered: Optional[float] = None  # perf_counter when its first speech frame was rendered
    first_shown: Optional[float] = None  # perf_counter when its first speech frame was handed out by frame()
    interrupted_at: Optional[int] = None  # frame at which interrupt() cut it
    interrupt_called: Optional[float] = None  # perf_counter of that interrupt() call
    stopped_shown: Optional[float] = None  # perf_counter when the first frame after the cut was handed out

    @property
    def end_frame(self) -> int:
        """First frame after the utterance's rendered frames (speech plus the closing tail)."""
        return self.start_frame + self.speech_frames + PAD_AFTER

    def timings(self) -> Dict[str, Optional[float]]:
        """Seconds from say(): ``features``, ``first_frame_rendered``, ``first_frame_shown`` (None if not yet)."""
        def since(t: Optional[float]) -> Optional[float]:
            return None if t is None else round(t - self.created, 4)

        out = {"features": round(self.features_s, 4), "first_frame_rendered": since(self.first_rendered),
               "first_frame_shown": since(self.first_shown)}
        if self.interrupt_called is not None and self.stopped_shown is not None:
            out["stop_after_interrupt"] = round(self.stopped_shown - self.interrupt_called, 4)
        return out


@dataclass
class LiveStats:
    """What a session has done so far."""

    frames_shown: int = 0  # frame() calls
    frames_repeated: int = 0  # frame() calls answered with the previous image (not rendered in time)
    frames_rendered: int = 0  # rendered by this session's worker (idle-cache hits not counted)
    idle_cache_hits: int = 0
    render_seconds: float = 0.0  # worker time spent rendering
    utterances: int = 0
    interrupts: int = 0

    def as_dict(self) -> Dict[str, float]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class IdleFrames:
    """Listening frames of one talker, cached by pose position: shared by all its live sessions.

    Args:
        talker: the loaded model.
        loop_frames: the idle motion ping-pongs over the first ``loop_frames`` tracked frames.
        max_mb: memory for cached frames (uint8); past it, frames are rendered each time.
    """

    _shared: "weakref.WeakKeyDictionary[Talker, Dict[int, IdleFrames]]" = weakref.WeakKeyDictionary()
    _shared_lock = threading.Lock()

    def __init__(self, talker: Talker, loop_frames: int = 125, max_mb: float = 512.0) -> None:
        self.talker = talker
        self.schedule = PoseSchedule(max(1, min(int(loop_frames), talker.length)), "track")
        self.lock = threading.Lock()  # one render of this talker at a time among live sessions
        self._frames: Dict[Tuple[int, int, float], np.ndarray] = {}
        self._max_items = max(1, int(max_mb * 2 ** 20 // (talker.width * talker.height * 3)))
        self.silence = _silence_window(talker)  # [16, D]
        self._times: Deque[float] = deque(maxlen=9)
        self._renders = 0
        # every distinct pose position of the loop (first pass and the periodic turns) -> a frame showing it
        frames = np.arange(3 * self.period + 2)
        i0, i1, w = self.schedule.neighbours(frames)
        self._keys: Dict[Tuple[int, int, float], int] = {}
        for n, a, b, x in zip(frames.tolist(), i0.tolist(), i1.tolist(), w.tolist()):
            self._keys.setdefault((a, b, round(x, 4)), n)

    @classmethod
    def of(cls, talker: Talker, loop_frames: int = 125, max_mb: float = 512.0) -> "IdleFrames":
        """The shared cache of ``talker`` for ``loop_frames`` (made on first use)."""
        with cls._shared_lock:
            per = cls._shared.setdefault(talker, {})
            if loop_frames not in per:
                per[loop_frames] = cls(talker, loop_frames, max_mb)
            return per[loop_frames]

    @property
    def period(self) -> int:
        """Frames after which the idle motion repeats (after the first pass)."""
        return max(1, 2 * (self.schedule.length - 1))

    def key(self, n: int) -> Tuple[int, int, float]:
        i0, i1, w = self.schedule.neighbours(np.array([n]))
        return int(i0[0]), int(i1[0]), round(float(w[0]), 4)

    def get(self, n: int) -> Optional[np.ndarray]:
        return self._frames.get(self.key(n))

    def put(self, n: int, image: np.ndarray) -> None:
        if len(self._frames) < self._max_items:
            self._frames[self.key(n)] = image

    def fill(self) -> int:
        """Render every listening frame of the loop now (a few seconds; later sessions start smooth).
        Returns how many were rendered."""
        done = 0
        while True:
            n = self.missing()
            if n is None:
                return done
            self.put(n, self.render(np.array([n]))[0])
            done += 1

    @property
    def cached(self) -> int:
        return len(self._frames)

    def missing(self) -> Optional[int]:
        """A frame index whose idle image is not cached yet (None: the whole loop is cached, or memory is full)."""
        if len(self._frames) >= min(self._max_items, len(self._keys)):
            return None
        for k, n in self._keys.items():
            if k not in self._frames:
                return n
        return None

    def render(self, frames: np.ndarray, windows: Optional[np.ndarray] = None, offset: int = 0,
               voice: Optional[np.ndarray] = None) -> np.ndarray:
        """``[B, H, W, 3]`` uint8 frames at pose positions ``frames`` with audio ``windows`` (``[M, 16, D]``,
        row ``r`` for frame ``offset + r``; None: silence) and their voice activity ``voice`` (``[M]``; None: not
        gated, or silence when ``windows`` is None and the talker closes the mouth in silences)."""
        from .data import audio_context

        t = self.talker
        frames = np.asarray(frames, dtype=np.int64)
        if windows is None:
            audio = torch.from_numpy(self.silence).expand(len(frames), 8, *self.silence.shape)
        else:
            audio = audio_context(torch.from_numpy(windows), torch.as_tensor(frames - offset))
        v = None
        if windows is None and t.gates_silence:
            v = torch.zeros(len(frames))
        elif voice is not None:
            v = torch.from_numpy(voice[np.clip(frames - offset, 0, len(voice) - 1)].astype(np.float32))
        i0, i1, w = self.schedule.neighbours(frames)
        wt = torch.from_numpy(w)
        c2w = blend_c2w(t.c2w[i0], t.c2w[i1], wt)
        eye = (1 - wt) * t.eye[i0] + wt * t.eye[i1]
        bg = torch.stack([t._background(a, b, float(x)) for a, b, x in zip(i0, i1, w)])
        with self.lock:
            start = time.perf_counter()
            image = t.compose(audio.contiguous(), eye, c2w, bg, voice=v).image
            out = to_uint8(image)
            if self._renders > 0:  # the first call warms up (seconds on a CPU): not a measure of speed
                self._times.append((time.perf_counter() - start) / max(1, len(frames)))
            self._renders += 1
        return out

    def seconds_per_frame(self, slow: bool = False) -> float:
        """Median (``slow``: 90th percentile) render time of one frame over the last few renders (0 before any)."""
        if not self._times:
            return 0.0
        return float(np.percentile(self._times, 90) if slow else np.median(self._times))


def _silence_window(talker: Talker) -> np.ndarray:
    """``[16, D]`` float32: the audio window of a frame in the middle of a second of silence."""
    win = talker.features(np.zeros(SAMPLE_RATE, np.float32))
    return np.ascontiguousarray(win[win.shape[0] // 2])


class _Plan:
    """The audio windows of the current utterance over the session clock (frames ``offset + r``)."""

    def __init__(self, utt: Utterance, windows: np.ndarray, offset: int, voice: Optional[np.ndarray]) -> None:
        self.utt, self.windows, self.offset, self.voice = utt, windows, offset, voice


class LiveSession:
    """A talking head that is always on: listening frames until :meth:`say`, then speech, then listening.

    Args:
        talker: a loaded model (:func:`gaussiantalker.load`); shared, never modified.
        loop_frames: idle head motion ping-pongs over the first ``loop_frames`` tracked frames (125: 5 s).
        ahead: frames rendered ahead of the one on screen (more: smoother under load, later barge-in).
        audio_rate: sample rate of :meth:`audio` (48000 for WebRTC/Opus).
        idle_cache_mb: memory of the talker's shared listening-frame cache.
    Call :meth:`start` (or use ``with``), then :meth:`frame` for ``n = 0, 1, 2, ...`` at 25 fps (or
    :meth:`frames` for a paced iterator), :meth:`audio` for the sound; :meth:`close` at the end.
    """

    def __init__(self, talker: Talker, loop_frames: int = 125, ahead: int = 4, audio_rate: int = 48000,
                 idle_cache_mb: float = 512.0) -> None:
        if int(ahead) < 1:
            raise ValueError(f"ahead must be >= 1 frame, got {ahead}")
        if int(audio_rate) % int(FPS) or int(audio_rate) < 8000:
            raise ValueError(f"audio_rate must be a multiple of 25 Hz and >= 8000, got {audio_rate}")
        import scipy.signal  # noqa: F401 - imported now, not in the first say() (0.4 s on a slow machine)

        self.talker = talker
        self.idle = IdleFrames.of(talker, loop_frames, idle_cache_mb)
        self.ahead, self.audio_rate = int(ahead), int(audio_rate)
        self.samples_per_frame = self.audio_rate // int(FPS)
        self.width, self.height = talker.width, talker.height
        self.stats = LiveStats()
        self._cond = threading.Condition()
        self._ready: Dict[int, LiveFrame] = {}  # rendered frames not shown yet
        self._playhead = -1  # the last frame handed out by frame()
        self._next = 0  # the next frame the worker makes
        self._gen = 0  # bumped whenever the plan changes: renders begun under an older plan are thrown away
        self._plans: List[_Plan] = []  # utterances being said or queued, in clock order
        self._utts: List[Utterance] = []  # on the audio timeline, in order (kept while audible)
        self._last: Optional[LiveFrame] = None
        self._ids = 0
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self.error: Optional[BaseException] = None

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> "LiveSession":
        """Start the render worker (idempotent); the first frames are rendered at once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="gaussiantalker-live", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the worker; frame() keeps answering the last image."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def __enter__(self) -> "LiveSession":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._stop

    # ------------------------------------------------------------------------------------------ output
    def frame(self, n: int, wait: float = 0.0) -> LiveFrame:
        """The frame to show at clock frame ``n`` (call with increasing ``n``; never blocks longer than ``wait``
        seconds). A frame not rendered in time is answered with the previous image (``fresh=False``)."""
        n = int(n)
        deadline = time.perf_counter() + max(0.0, wait)
        with self._cond:
            while n not in self._ready and wait > 0 and not self._stop and time.perf_counter() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - time.perf_counter()))
            got = self._ready.pop(n, None)
            for k in [k for k in self._ready if k < n]:
                del self._ready[k]
            self._playhead = max(self._playhead, n)
            self.stats.frames_shown += 1
            if got is None:
                self.stats.frames_repeated += 1
                if self._last is None:
                    img = self._first_image()
                    got = LiveFrame(n, img, False, False)
                else:
                    got = LiveFrame(n, self._last.image, self._last.speaking, False, self._last.utterance)
            self._mark_shown(got)
            self._last = got
            if n % 25 == 0:  # forget utterances whose plan and sound are over
                heard = n * self.samples_per_frame
                active = {id(p.utt) for p in self._plans}
                self._utts = [u for u in self._utts if id(u) in active
                              or u.start_frame * self.samples_per_frame + u.samples.shape[0] > heard]
            self._cond.notify_all()
        return got

    def _mark_shown(self, f: LiveFrame) -> None:
        now = time.perf_counter()
        for u in self._utts:
            if f.fresh and f.speaking and f.utterance == u.id and u.first_shown is None and f.index >= u.start_frame:
                u.first_shown = now
            if (u.interrupted_at is not None and u.stopped_shown is None and f.index >= u.interrupted_at):
                u.stopped_shown = now

    def _first_image(self) -> np.ndarray:
        img = self.idle.get(0)
        return img if img is not None else np.zeros((self.height, self.width, 3), np.uint8)

    def audio(self, start: int, count: int) -> np.ndarray:
        """``[count]`` float32 samples at ``audio_rate`` from sample ``start`` of the session clock (sample
        ``n * audio_rate / 25`` is heard with frame ``n``): the utterances' speech, silence elsewhere."""
        out = np.zeros(int(count), np.float32)
        s0, s1 = int(start), int(start) + int(count)
        with self._cond:
            utts = list(self._utts)
        for u in utts:
            a = u.start_frame * self.samples_per_frame
            b = a + u.samples.shape[0]
            lo, hi = max(a, s0), min(b, s1)
            if lo < hi:
                out[lo - s0:hi - s0] += u.samples[lo - a:hi - a]
        return out

    def frames(self, count: Optional[int] = None, realtime: bool = True) -> Iterator[LiveFrame]:
        """Frames ``0, 1, ...`` (``count`` of them, or until closed), paced at 25 fps when ``realtime``
        (else each frame is waited for: every frame fresh, as fast as the worker renders)."""
        t0 = time.perf_counter()
        n = 0
        while (count is None or n < count) and not self._stop:
            if realtime:
                delay = t0 + n / FPS - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                yield self.frame(n)
            else:
                yield self.frame(n, wait=3600.0)
            n += 1

    @property
    def playhead(self) -> int:
        """The last frame handed out by :meth:`frame` (-1 before the first)."""
        return self._playhead

    @property
    def speaking(self) -> bool:
        """True while the frame on screen is inside an utterance (speech or its closing tail)."""
        with self._cond:
            return self._speaking_at(self._playhead)

    def _speaking_at(self, n: int) -> bool:
        return any(p.utt.start_frame <= n < p.utt.end_frame for p in self._plans)

    # ------------------------------------------------------------------------------------------ input
    def say(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Utterance:
        """Speak ``samples`` (``[T]`` float mono at ``sample_rate``). It starts :data:`LEAD` frames after the frame
        on screen, or after the utterance being spoken (utterances queue up; :meth:`interrupt` to cut in).

        Returns:
            the :class:`Utterance` (its ``start_frame`` on the clock; timings fill in as frames are shown).
        """
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if x.size == 0:
            raise ValueError("say() needs non-empty audio")
        created = time.perf_counter()
        x16 = _resample(x, int(sample_rate), SAMPLE_RATE)
        speech_frames = max(1, int(round(x16.shape[0] / SAMPLE_RATE * FPS)))
        t = time.perf_counter()
        windows, voice = self._windows(x16, speech_frames)
        features_s = time.perf_counter() - t
        out = _resample(x16, SAMPLE_RATE, self.audio_rate)
        with self._cond:
            start = self._playhead + 1 + max(LEAD, self._lag_frames() + 1)
            if self._plans:  # queued after what is being said (its closing tail included)
                start = max(start, self._plans[-1].utt.end_frame + PAD_BEFORE)
            self._ids += 1
            utt = Utterance(self._ids, start, speech_frames, out, created, features_s)
            self._utts.append(utt)
            self._plans.append(_Plan(utt, windows, start - PAD_BEFORE, voice))
            self._changed(start)
            self.stats.utterances += 1
        return utt

    def interrupt(self) -> Optional[Utterance]:
        """Barge-in: the sound of the utterance being spoken stops with the next frame (a 10 ms fade), the queued
        ones are dropped, and the frames not yet rendered are rendered with the cut audio's windows (the mouth
        closes over a few frames). Returns the cut utterance, or None when nothing was being said."""
        with self._cond:
            cut = self._playhead + 1  # the sound stops here
            video_cut = cut + max(LEAD, self._lag_frames() + 1)  # frames from here are rendered again
            live = [p for p in self._plans if p.utt.start_frame + p.utt.speech_frames > cut]
            if not live:
                return None
            now = time.perf_counter()
            self.stats.interrupts += 1
            first = live[0]
            for p in live[1:]:  # queued replies: dropped
                self._plans.remove(p)
                self._utts.remove(p.utt)
            utt = first.utt
            utt.interrupted_at, utt.interrupt_called = cut, now
            if cut <= utt.start_frame:  # not heard yet: dropped as a whole
                self._plans.remove(first)
                self._utts.remove(utt)
                utt.stopped_shown = now
                self._changed(cut)
                return utt
            keep = (cut - utt.start_frame) * self.samples_per_frame
            fade = min(keep, int(FADE_S * self.audio_rate))
            samples = utt.samples[:keep].copy()
            if fade:
                samples[keep - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
            utt.samples = samples
            utt.speech_frames = cut - utt.start_frame
            x16 = _resample(samples, self.audio_rate, SAMPLE_RATE)
        windows, voice = self._windows(x16, utt.speech_frames)
        with self._cond:
            if first in self._plans:
                first.windows, first.voice = windows, voice
                self._changed(video_cut)
        return utt

    def _windows(self, x16: np.ndarray, speech_frames: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Audio windows of ``[PAD_BEFORE frames of silence, speech, PAD_AFTER frames of silence]`` and their voice
        activity (None when the talker does not close the mouth in silences)."""
        spf = SAMPLE_RATE // int(FPS)
        padded = np.concatenate([np.zeros(PAD_BEFORE * spf, np.float32), x16[: speech_frames * spf],
                                 np.zeros(PAD_AFTER * spf, np.float32)])
        windows = np.ascontiguousarray(self.talker.features(padded), dtype=np.float32)
        return windows, self.talker.voice(padded, int(windows.shape[0]))

    def _changed(self, first: int) -> None:
        """The plans changed from frame ``first`` on (lock held): frames from there are rendered again."""
        self._gen += 1
        first = max(first, self._playhead + 1)
        for k in [k for k in self._ready if k >= first]:
            del self._ready[k]
        self._next = min(self._next, first)
        self._cond.notify_all()

    def _plan_at(self, n: int) -> Optional[_Plan]:
        """The utterance plan frame ``n`` belongs to (lock held); plans that ended before it are dropped."""
        while self._plans and self._plans[0].utt.end_frame <= min(n, self._playhead + 1):
            self._plans.pop(0)  # its utterance stays on the audio timeline until frame() forgets it
        for p in self._plans:
            if p.utt.start_frame <= n < p.utt.end_frame:
                return p
        return None

    # ------------------------------------------------------------------------------------------ worker
    def _work(self) -> None:
        try:
            torch.set_grad_enabled(False)
            while True:
                job = self._next_job()
                if job is None:
                    return
                n, plan, gen = job
                t = time.perf_counter()
                if plan == "fill":
                    image, rendered = self.idle.render(np.array([n]))[0], True
                    self.idle.put(n, image)
                elif plan is None:
                    cached = self.idle.get(n)
                    if cached is not None:
                        image, rendered = cached, False
                    else:
                        image, rendered = self.idle.render(np.array([n]))[0], True
                        self.idle.put(n, image)
                else:
                    image, rendered = self.idle.render(np.array([n]), plan.windows, plan.offset, plan.voice)[0], True
                self._store(n, plan, gen, image, rendered, time.perf_counter() - t)
        except BaseException as exc:  # noqa: BLE001 - kept for the owner; frame() goes on with the last image
            log.exception("live session worker stopped")
            self.error = exc

    def _next_job(self):
        """``(n, plan or None, generation)`` of the next frame to render, or None when closed. While the
        frames ahead are made, listening frames the idle cache lacks are rendered into it."""
        with self._cond:
            while not self._stop:
                # A frame must be ready before it is due: start no earlier than the render time allows.
                lag = self._lag_frames()
                earliest = self._playhead + 1 + lag
                if self._next < earliest and self._playhead >= 0:
                    self._next = earliest
                if self._next <= self._playhead + lag + self.ahead:
                    n = self._next
                    return n, self._plan_at(n), self._gen
                miss = self.idle.missing()
                if miss is not None and not self._plans:
                    return miss, "fill", self._gen
                self._cond.wait(timeout=0.02)
            return None

    def _lag_frames(self) -> int:
        """Frames that may pass while one frame renders: from the slowest of the recent render times, plus one
        frame of margin when rendering is slower than the clock (a frame that comes late is thrown away)."""
        t = self.idle.seconds_per_frame(slow=True)
        return 0 if t * FPS < 0.8 else int(np.ceil(t * FPS))

    def _store(self, n: int, plan, gen: int, image: np.ndarray, rendered: bool, seconds: float) -> None:
        with self._cond:
            if rendered:
                self.stats.frames_rendered += 1
                self.stats.render_seconds += seconds
            else:
                self.stats.idle_cache_hits += 1
            if plan == "fill" or gen != self._gen or n <= self._playhead:
                return
            speaking = plan is not None
            utt_id = plan.utt.id if speaking else -1
            if speaking and plan.utt.first_rendered is None and n >= plan.utt.start_frame:
                plan.utt.first_rendered = time.perf_counter()
            self._ready[n] = LiveFrame(n, image, speaking, True, utt_id)
            self._next = n + 1
            self._cond.notify_all()


def _resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """``x`` at ``rate_out`` (polyphase, scipy); unchanged when the rates agree."""
    if rate_in == rate_out:
        return np.asarray(x, dtype=np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(rate_in), int(rate_out))
    return resample_poly(x, rate_out // g, rate_in // g).astype(np.float32)

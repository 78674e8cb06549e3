"""Live conversation over WebRTC (aiortc): one peer connection per session carries the avatar's video and
voice down and the browser's microphone up.

* :class:`LiveManager` holds the sessions (at most ``max_sessions``; one loaded model shared by all of them,
  through the app's :class:`~.video_generator.TalkerCache`), answers SDP offers and closes sessions on
  ``DELETE``, when the peer connection fails or closes, or when it never connects.
* Each session is a :class:`gaussiantalker.live.LiveSession` (listening frames, speech, barge-in) on two
  tracks that share one media clock: video frame ``n`` has pts ``n * 3600`` (90 kHz), audio frame ``m`` of
  20 ms has pts ``m * 960`` (48 kHz), and both are sent when the clock reaches them.
* The microphone track goes through an energy VAD (:class:`Vad`): speech while the avatar talks interrupts
  it at once (barge-in); the end of a sentence (``vad_end_s`` of quiet) closes the utterance. Recognition
  streams while the user speaks (pocketsphinx, when the ASR stage can stream), so only its last step is left
  after the sentence ends; then the LLM (or echo) and the TTS, whose audio goes to the avatar.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .chat_engine import StageError, _run_stage
from .jobs import one_line
from .video_generator import model_folder

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
AUDIO_FRAME = 960  # 20 ms at 48 kHz
ASR_RATE = 16000


class LiveUnavailable(RuntimeError):
    """Live mode cannot run here (aiortc missing) or no session slot is free; one line for the page."""


class SessionNotFound(LookupError):
    """No live session of that id."""


def aiortc_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("aiortc") is not None and importlib.util.find_spec("av") is not None


@dataclass
class LiveOptions:
    """Settings of the live sessions (from :class:`~.settings.Settings`)."""

    max_sessions: int = 2
    loop_frames: int = 125  # idle head motion: ping-pong over the first loop_frames tracked frames
    ahead: int = 4  # frames rendered ahead of the clock
    connect_timeout_s: float = 30.0  # a session whose peer never connects is closed after this
    vad_threshold: float = 0.02  # RMS (full scale 1.0) of a 20 ms microphone frame counted as voice
    vad_start_frames: int = 3  # voiced 20 ms frames in a row that start an utterance (and barge in)
    vad_end_s: float = 0.3  # quiet that ends an utterance


class Vad:
    """Energy voice-activity detection over 20 ms frames of 16 kHz int16 audio."""

    def __init__(self, threshold: float, start_frames: int, end_s: float) -> None:
        self.threshold, self.start_frames = float(threshold), int(start_frames)
        self.end_frames = max(1, int(round(end_s / 0.02)))
        self.active = False
        self._voiced = 0
        self._quiet = 0

    def push(self, pcm: np.ndarray) -> Optional[str]:
        """``"start"`` when speech begins, ``"end"`` when it has ended, else None."""
        rms = float(np.sqrt(np.mean((pcm.astype(np.float32) / 32768.0) ** 2))) if pcm.size else 0.0
        voiced = rms >= self.threshold
        if not self.active:
            self._voiced = self._voiced + 1 if voiced else 0
            if self._voiced >= self.start_frames:
                self.active, self._quiet = True, 0
                return "start"
            return None
        self._quiet = 0 if voiced else self._quiet + 1
        if self._quiet >= self.end_frames:
            self.active, self._voiced = False, 0
            return "end"
        return None


class _Clock:
    """The media clock both tracks follow: starts when the first of them asks for a frame."""

    def __init__(self) -> None:
        self.start: Optional[float] = None

    async def wait_until(self, seconds: float) -> None:
        if self.start is None:
            self.start = time.perf_counter()
        delay = self.start + seconds - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)


def _tracks(session, clock: _Clock, stats: Dict[str, Any]):
    """The avatar's video and audio tracks (aiortc MediaStreamTracks) over ``session``."""
    import av
    from aiortc import MediaStreamTrack

    class AvatarVideo(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        async def recv(self):
            n = self.n
            self.n += 1
            await clock.wait_until(n / 25.0)
            f = session.frame(n)
            frame = av.VideoFrame.from_ndarray(f.image, format="rgb24")
            frame.pts, frame.time_base = n * (VIDEO_CLOCK // 25), Fraction(1, VIDEO_CLOCK)
            stats["video_frames"] = n + 1
            stats["video_repeated"] = stats.get("video_repeated", 0) + (0 if f.fresh else 1)
            log_times = stats.setdefault("video_send", [])
            if len(log_times) < 20000:
                log_times.append((n, time.perf_counter(), f.speaking, f.fresh, f.utterance))
            return frame

    class AvatarAudio(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.m = 0

        async def recv(self):
            m = self.m
            self.m += 1
            await clock.wait_until(m * AUDIO_FRAME / AUDIO_RATE)
            x = session.audio(m * AUDIO_FRAME, AUDIO_FRAME)
            pcm = (np.clip(x, -1.0, 1.0) * 32767).astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, m * AUDIO_FRAME, Fraction(1, AUDIO_RATE)
            stats["audio_frames"] = m + 1
            voiced = stats.setdefault("audio_voiced", [])
            if np.any(pcm) and len(voiced) < 20000:
                voiced.append((m, time.perf_counter()))
            return frame

    return AvatarVideo(), AvatarAudio()


class LiveConversation:
    """One live session: its peer connection, avatar, microphone listener and the turns so far."""

    def __init__(self, manager: "LiveManager", sid: str, model: str, talker, mode: str) -> None:
        from gaussiantalker.live import LiveSession

        self.manager, self.id, self.model, self.mode = manager, sid, model, mode
        o = manager.options
        self.session = LiveSession(talker, loop_frames=o.loop_frames, ahead=o.ahead, audio_rate=AUDIO_RATE)
        self.created = time.time()
        self.state = "new"
        self.turns: List[Dict[str, Any]] = []
        self.stats: Dict[str, Any] = {}
        self.clock = _Clock()
        self.pc = None
        self._mic: "queue.Queue[Optional[np.ndarray]]" = queue.Queue(maxsize=500)
        self._listener: Optional[threading.Thread] = None
        self._closed = False

    # ------------------------------------------------------------------------------------------ public
    def public(self) -> Dict[str, Any]:
        s = self.session
        return {"session": self.id, "model": self.model, "mode": self.mode, "state": self.state,
                "speaking": s.speaking, "frame": s.playhead, "width": s.width, "height": s.height,
                "turns": self.turns[-20:], "stats": s.stats.as_dict(),
                "video_frames": self.stats.get("video_frames", 0), "audio_frames": self.stats.get("audio_frames", 0),
                "idle_loop": {"cached": s.idle.cached, "complete": s.idle.missing() is None},
                "error": one_line(s.error) if s.error is not None else None}

    def say_samples(self, samples: np.ndarray, turn: Dict[str, Any]) -> Dict[str, Any]:
        """Give speech (16 kHz) to the avatar; ``turn`` is recorded with its timings as they come in."""
        utt = self.session.say(samples)
        turn.update({"utterance": utt.id, "start_frame": utt.start_frame, "frames": utt.speech_frames})
        turn["_utt"] = utt
        self.turns.append(turn)
        return turn

    def turn_json(self, turn: Dict[str, Any]) -> Dict[str, Any]:
        out = {k: v for k, v in turn.items() if not k.startswith("_")}
        utt = turn.get("_utt")
        if utt is not None:
            t = utt.timings()
            timings = dict(out.get("timings", {}))
            timings.update({"features": t["features"], "first_frame": t["first_frame_shown"]})
            if "stop_after_interrupt" in t:
                timings["stop_after_interrupt"] = t["stop_after_interrupt"]
            since = turn.get("_since")
            if since is not None and utt.first_shown is not None:
                timings["total_to_first_frame"] = round(utt.first_shown - since, 4)
            if utt.interrupted_at is not None:
                out["interrupted_at_frame"] = utt.interrupted_at
            out["timings"] = timings
        return out

    # ------------------------------------------------------------------------------------------ microphone
    def start_listener(self) -> None:
        self._listener = threading.Thread(target=self._listen, name=f"live-listen-{self.id}", daemon=True)
        self._listener.start()

    async def consume_mic(self, track) -> None:
        """Read the microphone track: 16 kHz mono int16 in 20 ms pieces to the listener thread."""
        import av
        from aiortc.mediastreams import MediaStreamError

        resampler = av.AudioResampler(format="s16", layout="mono", rate=ASR_RATE)
        buf = np.zeros(0, np.int16)
        while not self._closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            for out in resampler.resample(frame):
                buf = np.concatenate([buf, out.to_ndarray().reshape(-1).astype(np.int16)])
            while buf.shape[0] >= 320:
                chunk, buf = buf[:320], buf[320:]
                try:
                    self._mic.put_nowait(chunk)
                except queue.Full:  # the listener is stuck (a slow stage): drop audio rather than memory
                    pass

    def _listen(self) -> None:
        o = self.manager.options
        vad = Vad(o.vad_threshold, o.vad_start_frames, o.vad_end_s)
        try:
            stream = self.manager.asr_stream()
        except StageError as exc:  # no streaming recogniser: whole sentences go to transcribe()
            log.warning("live %s: %s; recognising whole sentences instead", self.id, exc)
            stream = None
        pre: List[np.ndarray] = []  # the last few frames before the VAD fires: the sentence's beginning
        speech: List[np.ndarray] = []
        onset = 0.0
        while True:
            try:
                chunk = self._mic.get(timeout=0.5)
            except queue.Empty:
                if self._closed:
                    return
                continue
            if chunk is None or self._closed:
                return
            event = vad.push(chunk)
            now = time.perf_counter()
            if not vad.active and event is None:
                pre = (pre + [chunk])[-10:]
                continue
            if event == "start":
                onset = now - (o.vad_start_frames - 1) * 0.02  # when the first voiced frame arrived
                cut = self.session.interrupt()
                if cut is not None:
                    self.stats["barge_in"] = {"utterance": cut.id, "detected_after_onset_s": round(now - onset, 4)}
                    log.info("live %s: barge-in, reply %d cut at frame %s", self.id, cut.id, cut.interrupted_at)
                speech = list(pre)
                if stream is not None:
                    stream.begin()
                    for c in pre:
                        stream.push(c)
                pre = []
            if vad.active or event == "end":
                speech.append(chunk)
                if stream is not None:
                    stream.push(chunk)
            if event == "end":
                self._turn(stream, speech, ended=now - (vad.end_frames - 1) * 0.02, detected=now, onset=onset)
                speech = []

    def _turn(self, stream, speech: List[np.ndarray], ended: float, detected: float, onset: float) -> None:
        """The user's sentence ended: ASR -> LLM -> TTS -> the avatar; the turn's timings are recorded."""
        turn: Dict[str, Any] = {"source": "microphone", "timings": {"vad_end": round(detected - ended, 4)}}
        try:
            t = time.perf_counter()
            if stream is not None:
                text = _run_stage("ASR", stream.end)
            else:
                text = self._transcribe(np.concatenate(speech))
            turn["transcript"] = text
            turn["timings"]["asr"] = round(time.perf_counter() - t, 4)
            if not text.strip():
                turn["error"] = "ASR: no speech recognised"
                self.turns.append(turn)
                return
            self._answer(text, turn, ended)
        except StageError as exc:
            turn["error"] = one_line(exc)
            self.turns.append(turn)

    def _transcribe(self, pcm: np.ndarray) -> str:
        from gaussiantalker.audio import write_wav

        with tempfile.TemporaryDirectory(prefix="gt_live_asr_") as d:
            wav = Path(d) / "speech.wav"
            write_wav(wav, pcm.astype(np.float32) / 32768.0)
            return _run_stage("ASR", lambda: self.manager.chat.asr.transcribe(wav))

    def _answer(self, text: str, turn: Dict[str, Any], since: float) -> Dict[str, Any]:
        """LLM (or echo) then TTS then the avatar; ``since`` is when the latency clock started."""
        chat = self.manager.chat
        llm = chat.echo if self.mode == "echo" else chat.llm
        history = []
        for old in self.turns[-10:]:
            if old.get("transcript") and old.get("reply"):
                history += [{"role": "user", "content": old["transcript"]},
                            {"role": "assistant", "content": old["reply"]}]
        t = time.perf_counter()
        reply = _run_stage("LLM", lambda: llm.reply(history + [{"role": "user", "content": text}]))
        turn["timings"]["llm"] = round(time.perf_counter() - t, 4)
        turn["reply"], turn["llm"] = reply, getattr(llm, "name", "custom")
        if not reply.strip():
            raise StageError("LLM: empty reply")
        return self.speak(reply, turn, since)

    def speak(self, text: str, turn: Dict[str, Any], since: float) -> Dict[str, Any]:
        from gaussiantalker.audio import load_audio

        t = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="gt_live_tts_") as d:
            wav = Path(_run_stage("TTS", lambda: self.manager.chat.tts.speak(text, Path(d) / "reply.wav")))
            samples = load_audio(wav)
        turn["timings"]["tts"] = round(time.perf_counter() - t, 4)
        if samples.size == 0:
            raise StageError("TTS: the reply audio is empty")
        turn["_since"] = since
        return self.say_samples(samples, turn)

    # ------------------------------------------------------------------------------------------ closing
    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.state = "closed"
        try:
            self._mic.put_nowait(None)
        except queue.Full:  # a busy listener sees _closed at its next piece
            pass
        self.session.close()
        if self.pc is not None:
            try:
                await self.pc.close()
            except Exception as exc:  # noqa: BLE001 - closing a broken connection must not stop the cleanup
                log.debug("live %s: closing the peer connection: %s", self.id, exc)


class LiveManager:
    """The live sessions of the app."""

    def __init__(self, cache, chat, options: LiveOptions) -> None:
        self.cache, self.chat, self.options = cache, chat, options
        self.sessions: Dict[str, LiveConversation] = {}
        self._lock = asyncio.Lock()
        self._reserved = 0
        self._warming: set = set()

    def status(self) -> Dict[str, Any]:
        return {"available": aiortc_available(), "sessions": len(self.sessions),
                "max_sessions": self.options.max_sessions}

    def asr_stream(self):
        make = getattr(self.chat.asr, "stream", None)
        return make() if callable(make) else None

    def get(self, sid: str) -> LiveConversation:
        conv = self.sessions.get(str(sid)[:64])
        if conv is None:
            raise SessionNotFound(f"no live session {str(sid)[:40]!r}")
        return conv

    async def offer(self, body: Any) -> Dict[str, Any]:
        """Answer an SDP offer: a new session on ``model``. Raises ValueError (bad request), ModelNotFound,
        LiveUnavailable (aiortc missing, or every session slot taken)."""
        if not isinstance(body, dict):
            raise ValueError("the request body must be a JSON object with sdp, type and model")
        unknown = sorted(set(body) - {"sdp", "type", "model", "mode"})
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(unknown)}")
        sdp, kind, model = body.get("sdp"), body.get("type", "offer"), body.get("model")
        if not isinstance(sdp, str) or not sdp.strip():
            raise ValueError("sdp must be the offer's SDP text")
        if kind != "offer":
            raise ValueError(f"type must be 'offer', got {str(kind)[:20]!r}")
        if not isinstance(model, str) or not model:
            raise ValueError("model must name a trained model")
        mode = body.get("mode") or ("llm" if self.chat.llm is not None else "echo")
        if mode not in ("llm", "echo") or (mode == "llm" and self.chat.llm is None):
            raise ValueError(f"mode {str(mode)[:20]!r} is not available (use echo, or configure an LLM)")
        if not sdp.lstrip().startswith("v=0"):
            raise ValueError("bad SDP offer: it does not start with 'v=0'")
        if not aiortc_available():
            raise LiveUnavailable("live mode needs aiortc on the server (pip install aiortc); use segment mode")
        model_folder(self.cache.ws, model)  # 404 before any work
        async with self._lock:
            if len(self.sessions) + self._reserved >= self.options.max_sessions:
                raise LiveUnavailable(f"too many live sessions ({self.options.max_sessions} of "
                                      f"{self.options.max_sessions} in use): close one or try again later")
            self._reserved += 1
        try:
            return await self._open(sdp, model, mode)
        finally:
            self._reserved -= 1

    async def _open(self, sdp: str, model: str, mode: str) -> Dict[str, Any]:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        talker, _ = await asyncio.to_thread(self.cache.get, model)
        sid = secrets.token_hex(8)
        conv = LiveConversation(self, sid, model, talker, mode)
        pc = RTCPeerConnection()
        conv.pc = pc
        video, audio = _tracks(conv.session, conv.clock, conv.stats)

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "audio":
                asyncio.ensure_future(conv.consume_mic(track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            conv.state = pc.connectionState
            if pc.connectionState in ("failed", "closed"):
                if sid in self.sessions:
                    log.info("live %s: peer connection %s; closing the session", sid, pc.connectionState)
                    await self.close(sid)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            pc.addTrack(video)
            pc.addTrack(audio)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # noqa: BLE001 - aiortc raises many types on a bad offer
            await pc.close()
            raise ValueError(f"bad SDP offer: {one_line(exc)}") from None
        self.sessions[sid] = conv
        conv.session.start()
        conv.start_listener()
        self._warm_idle(conv.session)
        asyncio.ensure_future(self._watch_connect(conv))
        log.info("live %s: model %s, %d session(s)", sid, model, len(self.sessions))
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "session": sid}

    def _warm_idle(self, session) -> None:
        """Render the model's listening loop in the background once (sessions then listen at no cost)."""
        idle = session.idle
        if id(idle) in self._warming:
            return
        self._warming.add(id(idle))
        threading.Thread(target=idle.fill, name="live-idle-fill", daemon=True).start()

    async def _watch_connect(self, conv: LiveConversation) -> None:
        await asyncio.sleep(self.options.connect_timeout_s)
        if conv.pc is not None and conv.pc.connectionState not in ("connected",) and conv.id in self.sessions:
            log.info("live %s: the peer did not connect within %.0f s; closing", conv.id,
                     self.options.connect_timeout_s)
            await self.close(conv.id)

    async def say(self, sid: str, text: Optional[str] = None, audio_path: Optional[Path] = None) -> Dict[str, Any]:
        """``text`` through the TTS, or the audio file straight, to the avatar of session ``sid``."""
        conv = self.get(sid)
        since = time.perf_counter()
        if text is not None:
            turn = {"source": "say", "reply": text, "timings": {}}  # speak() records _since
            await asyncio.to_thread(conv.speak, text, turn, since)
        else:
            from gaussiantalker.audio import load_audio

            samples = await asyncio.to_thread(load_audio, audio_path)
            if samples.size == 0:
                raise ValueError("the uploaded audio is empty")
            turn = {"source": "audio", "timings": {}, "_since": since}
            await asyncio.to_thread(conv.say_samples, samples, turn)
        return conv.turn_json(turn)

    async def close(self, sid: str) -> Dict[str, Any]:
        conv = self.sessions.pop(str(sid)[:64], None)
        if conv is None:
            raise SessionNotFound(f"no live session {str(sid)[:40]!r}")
        await conv.close()
        log.info("live %s closed; %d session(s) left", sid, len(self.sessions))
        return {"session": sid, "state": "closed"}

    def public(self, sid: str) -> Dict[str, Any]:
        conv = self.get(sid)
        d = conv.public()
        d["turns"] = [conv.turn_json(t) for t in conv.turns[-20:]]
        return d

    async def shutdown(self) -> None:
        for sid in list(self.sessions):
            try:
                await self.close(sid)
            except SessionNotFound:
                pass


__all__ = ["LiveManager", "LiveOptions", "LiveUnavailable", "SessionNotFound", "Vad", "aiortc_available"]

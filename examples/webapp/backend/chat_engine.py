"""The chat pipeline: speech -> ASR -> LLM -> TTS -> talking-head video, each stage pluggable.

Stage interfaces (small protocols; any object with the method works):

* ASR: ``transcribe(wav_path) -> str`` — default :class:`PocketSphinxASR` (offline; its English model ships
  in the ``pocketsphinx`` wheel).
* LLM: ``reply(messages) -> str`` with OpenAI-style ``[{"role": ..., "content": ...}]`` — :class:`OpenAIChatLLM`
  for any OpenAI-compatible ``/chat/completions`` endpoint (plain HTTP, no SDK); :class:`EchoLLM` repeats the
  recognised text and says so (the page labels it; it is never presented as a language model).
* TTS: ``speak(text, out_wav) -> Path`` — :class:`EspeakTTS` (Debian's ``espeak-ng``), :class:`CommandTTS`
  (any command with ``{text}`` and ``{out}`` placeholders, run without a shell), or a Python callable.

A stage is chosen in the chat config (``{"asr": {"backend": ...}, "llm": {...}, "tts": {...}}``) by name
(``pocketsphinx``, ``openai``, ``echo``, ``espeak-ng``, ``command``) or by a dotted path
``package.module:Name`` to a class (instantiated with the table's other keys) or a function (used as the
method). :meth:`ChatEngine.submit` runs one turn as a job; the reply is rendered in short mp4 pieces as
soon as the TTS audio exists (see :func:`~.video_generator.render_segments`) and the job record lists them
as they appear, then the joined reply video.
"""

from __future__ import annotations

import importlib
import json
import logging
import shlex
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, runtime_checkable

from .jobs import JobContext, JobManager
from .uploads import UploadStore
from .video_generator import TalkerCache, join_segments, model_folder, render_segments

log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """A chat stage failed or is not available; the message is one line for the page."""


@runtime_checkable
class ASR(Protocol):
    def transcribe(self, wav_path: Path) -> str:
        """The words spoken in ``wav_path``."""


@runtime_checkable
class LLM(Protocol):
    def reply(self, messages: List[Dict[str, str]]) -> str:
        """The assistant's answer to the conversation ``messages`` (OpenAI chat format)."""


@runtime_checkable
class TTS(Protocol):
    def speak(self, text: str, out_wav: Path) -> Path:
        """Write ``text`` spoken to ``out_wav`` (any audio format ffmpeg reads); return the path."""


# --------------------------------------------------------------------------------------------- ASR
class PocketSphinxASR:
    """Offline English speech recognition with pocketsphinx (the model in its wheel); loaded on first use."""

    name = "pocketsphinx"

    def __init__(self, **options: Any) -> None:
        self.options = options
        self._decoder = None
        self._lock = threading.Lock()  # one decoder, one utterance at a time

    def warm(self) -> None:
        """Load the acoustic model now (about a second) instead of on the first request."""
        with self._lock:
            self._get()

    def _get(self):
        if self._decoder is None:
            try:
                from pocketsphinx import Decoder
            except ImportError:
                raise StageError("ASR: pocketsphinx is not installed (pip install pocketsphinx)") from None
            self._decoder = Decoder(samprate=16000, loglevel="FATAL", **self.options)
        return self._decoder

    def transcribe(self, wav_path: Path) -> str:
        import numpy as np

        from gaussiantalker.audio import load_audio

        samples = load_audio(wav_path)  # [T] float32, 16 kHz mono
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
        with self._lock:
            d = self._get()
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            hyp = d.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""

    def stream(self) -> "PocketSphinxStream":
        """A recogniser fed while the user speaks (live sessions): its own decoder, loaded now."""
        return PocketSphinxStream(self.options)


class PocketSphinxStream:
    """Incremental recognition: :meth:`begin`, :meth:`push` 16 kHz int16 pieces as they arrive, :meth:`end` ->
    the words. Decoding happens during :meth:`push`, so little is left to do when the sentence ends."""

    def __init__(self, options: Dict[str, Any]) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError:
            raise StageError("ASR: pocketsphinx is not installed (pip install pocketsphinx)") from None
        self._decoder = Decoder(samprate=16000, loglevel="FATAL", **options)
        self._open = False

    def begin(self) -> None:
        if self._open:
            self._decoder.end_utt()
        self._decoder.start_utt()
        self._open = True

    def push(self, pcm) -> None:
        if self._open:
            self._decoder.process_raw(pcm.tobytes(), False, False)

    def end(self) -> str:
        if not self._open:
            return ""
        self._decoder.end_utt()
        self._open = False
        hyp = self._decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""


# --------------------------------------------------------------------------------------------- LLM
class EchoLLM:
    """Not a language model: replies with the user's last message (labelled "echo" everywhere)."""

    name = "echo"

    def reply(self, messages: List[Dict[str, str]]) -> str:
        for m in reversed(messages):
            if m.get("role") == "user":
                return m.get("content", "")
        return ""


class OpenAIChatLLM:
    """Any OpenAI-compatible chat endpoint: ``POST <base_url>/chat/completions`` with ``model`` and ``messages``."""

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: Optional[str] = None, system_prompt: Optional[str] = None,
                 timeout: float = 60.0, max_tokens: Optional[int] = None, temperature: Optional[float] = None) -> None:
        if not base_url or not model:
            raise StageError("LLM: base_url and model are required (GT_LLM_BASE_URL, GT_LLM_MODEL)")
        self.base_url, self.model, self.api_key = base_url.rstrip("/"), model, api_key
        self.system_prompt, self.timeout = system_prompt, float(timeout)
        self.max_tokens, self.temperature = max_tokens, temperature

    def reply(self, messages: List[Dict[str, str]]) -> str:
        msgs = list(messages)
        if self.system_prompt:
            msgs = [{"role": "system", "content": self.system_prompt}] + msgs
        body: Dict[str, Any] = {"model": self.model, "messages": msgs}
        if self.max_tokens is not None:
            body["max_tokens"] = int(self.max_tokens)
        if self.temperature is not None:
            body["temperature"] = float(self.temperature)
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode("utf-8"),
                                     headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace")
            raise StageError(f"LLM: {self.base_url} answered HTTP {exc.code}: {' '.join(detail.split())}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise StageError(f"LLM: cannot reach {self.base_url}: {getattr(exc, 'reason', exc)}") from None
        except ValueError:
            raise StageError(f"LLM: {self.base_url} did not answer JSON") from None
        try:
            text = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise StageError(f"LLM: unexpected answer from {self.base_url} (no choices[0].message.content)") from None
        return str(text or "").strip()


# --------------------------------------------------------------------------------------------- TTS
class CommandTTS:
    """A TTS command: ``command`` with ``{text}`` and ``{out}`` placeholders, split like a shell line but run
    without a shell (``espeak-ng -v en -w {out} {text}``, ``piper --output_file {out} ...``)."""

    name = "command"

    def __init__(self, command: str, timeout: float = 120.0) -> None:
        if "{out}" not in command:
            raise StageError("TTS: the command needs an {out} placeholder for the wav it writes")
        self.command, self.timeout = command, float(timeout)

    def speak(self, text: str, out_wav: Path) -> Path:
        args = [a.replace("{text}", text).replace("{out}", str(out_wav)) for a in shlex.split(self.command)]
        if "{text}" not in self.command:
            args_input = text.encode("utf-8")  # the text goes to stdin
        else:
            args_input = None
        exe = shutil.which(args[0])
        if exe is None:
            raise StageError(f"TTS: command {args[0]!r} not found")
        proc = subprocess.run([exe, *args[1:]], input=args_input, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=self.timeout, check=False)
        if proc.returncode != 0 or not Path(out_wav).is_file():
            err = " ".join(proc.stderr.decode("utf-8", "replace").split())[:200]
            raise StageError(f"TTS: {args[0]} failed (exit {proc.returncode}): {err or 'no output file'}")
        return Path(out_wav)


class EspeakTTS(CommandTTS):
    """espeak-ng (Debian package ``espeak-ng``): ``espeak-ng -v <voice> -s <speed> -w out.wav -- text``."""

    name = "espeak-ng"

    def __init__(self, voice: str = "en-us", speed: int = 160, timeout: float = 60.0) -> None:
        self.voice, self.speed, self.timeout = str(voice), int(speed), float(timeout)
        self.command = "espeak-ng"

    @staticmethod
    def available() -> bool:
        return shutil.which("espeak-ng") is not None

    def speak(self, text: str, out_wav: Path) -> Path:
        if not self.available():
            raise StageError("TTS: espeak-ng is not installed (apt-get install espeak-ng) - configure another TTS")
        args = ["espeak-ng", "-v", self.voice, "-s", str(self.speed), "-w", str(out_wav), "--", text]
        proc = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=self.timeout,
                              check=False)
        if proc.returncode != 0 or not Path(out_wav).is_file():
            err = " ".join(proc.stderr.decode("utf-8", "replace").split())[:200]
            raise StageError(f"TTS: espeak-ng failed (exit {proc.returncode}): {err}")
        return Path(out_wav)


# --------------------------------------------------------------------------------------------- factory
_BUILTIN: Dict[str, Dict[str, Callable[..., Any]]] = {
    "asr": {"pocketsphinx": PocketSphinxASR},
    "llm": {"openai": OpenAIChatLLM, "echo": EchoLLM},
    "tts": {"espeak-ng": EspeakTTS, "espeak": EspeakTTS, "command": CommandTTS},
}
_METHOD = {"asr": "transcribe", "llm": "reply", "tts": "speak"}


class _FunctionStage:
    """A plain function used as a stage: ``fn(wav) -> str``, ``fn(messages) -> str`` or ``fn(text, out) -> Path``."""

    def __init__(self, stage: str, fn: Callable[..., Any], name: str) -> None:
        self.name, self._fn = name, fn
        setattr(self, _METHOD[stage], fn)


def make_stage(stage: str, table: Dict[str, Any]) -> Any:
    """Build the ``stage`` (``asr``, ``llm``, ``tts``) from its config table: ``backend`` (a built-in name or
    ``module:attr`` / ``module.attr``) plus keyword options. Raises StageError (unknown backend, bad options)."""
    options = dict(table)
    backend = str(options.pop("backend", ""))
    if stage == "llm" and not backend:
        backend = "openai" if options.get("base_url") else ""
    if stage == "tts" and not backend:
        backend = "command" if options.get("command") else "espeak-ng"
    if stage == "asr" and not backend:
        backend = "pocketsphinx"
    if not backend:
        raise StageError(f"{stage.upper()}: no backend configured")
    factory = _BUILTIN[stage].get(backend)
    if factory is None:
        factory = _import(stage, backend)
    if isinstance(factory, type):
        try:
            obj = factory(**options)
        except TypeError as exc:
            raise StageError(f"{stage.upper()}: bad options for {backend}: {exc}") from None
    elif callable(factory):
        obj = _FunctionStage(stage, factory, backend)
    else:
        raise StageError(f"{stage.upper()}: {backend} is neither a class nor a function")
    if not callable(getattr(obj, _METHOD[stage], None)):
        raise StageError(f"{stage.upper()}: {backend} has no {_METHOD[stage]}() method")
    if not getattr(obj, "name", None):
        try:
            obj.name = backend
        except AttributeError:
            pass
    return obj


def _import(stage: str, dotted: str) -> Any:
    module, sep, attr = dotted.partition(":")
    if not sep:
        module, _, attr = dotted.rpartition(".")
    if not module or not attr:
        raise StageError(f"{stage.upper()}: unknown backend {dotted!r} (built-in: {', '.join(_BUILTIN[stage])}; "
                         "or module:Name)")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise StageError(f"{stage.upper()}: cannot import {dotted}: {exc}") from None


# --------------------------------------------------------------------------------------------- engine
@dataclass
class ChatRequest:
    """One chat turn (``POST /api/chat``)."""

    model: str
    audio: str  # id of an "audio" upload (the recorded or uploaded speech)
    mode: str = "llm"  # "llm" (the configured endpoint) or "echo" (repeat the recognised text)
    history: List[Dict[str, str]] = field(default_factory=list)  # earlier turns, OpenAI format


class ChatEngine:
    """The configured stages and the turn job. The LLM is None when no endpoint is configured."""

    def __init__(self, config: Dict[str, Dict[str, Any]], cache: TalkerCache, uploads: UploadStore,
                 jobs: JobManager, videos_dir: Path, first_frames: int = 13, frames_per_segment: int = 50) -> None:
        self.cache, self.uploads, self.jobs, self.videos_dir = cache, uploads, jobs, Path(videos_dir)
        self.first_frames, self.frames_per_segment = first_frames, frames_per_segment
        self.config = config
        self.asr = make_stage("asr", config.get("asr", {}))
        self.tts = make_stage("tts", config.get("tts", {}))
        llm_table = config.get("llm", {})
        self.llm = make_stage("llm", llm_table) if (llm_table.get("backend") or llm_table.get("base_url")) else None
        self.echo = EchoLLM()

    def warm(self) -> None:
        """Load what the stages can load ahead of the first turn (in a background thread; errors only logged)."""
        warm = getattr(self.asr, "warm", None)
        if callable(warm):
            def run() -> None:
                try:
                    warm()
                except Exception as exc:  # noqa: BLE001 - the first turn will report it on the page
                    log.warning("could not pre-load the ASR: %s", exc)

            threading.Thread(target=run, name="webapp-warm-asr", daemon=True).start()

    def status(self) -> Dict[str, Any]:
        """What the chat page shows: the stages in use and whether an LLM is configured."""
        tts_ok = EspeakTTS.available() if isinstance(self.tts, EspeakTTS) else True
        return {"asr": getattr(self.asr, "name", "custom"), "tts": getattr(self.tts, "name", "custom"),
                "tts_available": tts_ok,
                "llm": getattr(self.llm, "name", "custom") if self.llm is not None else None,
                "llm_model": getattr(self.llm, "model", None), "llm_configured": self.llm is not None,
                "modes": (["llm"] if self.llm is not None else []) + ["echo"]}

    def submit(self, req: ChatRequest) -> tuple:
        """Check ``req`` and queue the turn. Raises ValueError / FileNotFoundError / UploadError."""
        if req.mode not in ("llm", "echo"):
            raise ValueError(f"unknown chat mode {req.mode!r}: use llm or echo")
        if req.mode == "llm" and self.llm is None:
            raise ValueError("no LLM is configured (set GT_LLM_BASE_URL and GT_LLM_MODEL, or a chat config file); "
                             "choose echo mode to repeat the recognised text")
        _, iteration = model_folder(self.cache.ws, req.model)
        up = self.uploads.get(req.audio, "audio")
        history = [{"role": str(m.get("role")), "content": str(m.get("content"))} for m in req.history[-20:]
                   if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
        params = {"model": req.model, "iteration": iteration, "audio": up.id, "mode": req.mode,
                  "llm": "echo" if req.mode == "echo" else getattr(self.llm, "name", "custom")}
        llm = self.echo if req.mode == "echo" else self.llm
        return self.jobs.submit("chat", f"render:{self.cache.device}", params,
                                _ChatTurn(self, req.model, iteration, Path(up.path), llm, req.mode, history))


class _ChatTurn:
    """The body of one chat turn job."""

    def __init__(self, engine: ChatEngine, model: str, iteration: int, audio: Path, llm: Any, mode: str,
                 history: List[Dict[str, str]]) -> None:
        self.e, self.model, self.iteration, self.audio = engine, model, iteration, audio
        self.llm, self.mode, self.history = llm, mode, history

    def __call__(self, ctx: JobContext) -> Dict[str, Any]:
        from gaussiantalker.audio import load_audio

        t0 = ctx.job.created  # the request's arrival: timings are measured from there
        timings: Dict[str, float] = {}
        out_dir = self.e.videos_dir / ctx.id
        out_dir.mkdir(parents=True, exist_ok=True)

        def stage(name: str, message: str) -> float:
            ctx.check_cancelled()
            ctx.progress(stage=name, message=message)
            ctx.log(message)
            return time.perf_counter()

        t = stage("asr", "recognising speech")
        text = _run_stage("ASR", lambda: self.e.asr.transcribe(self.audio))
        timings["asr"] = time.perf_counter() - t
        if not text.strip():
            raise StageError("ASR: no speech recognised in the recording")
        ctx.result(transcript=text, llm=getattr(self.llm, "name", "custom") if self.mode == "llm" else "echo",
                   mode=self.mode)
        t = stage("llm", "echo: repeating the recognised text" if self.mode == "echo" else "asking the LLM")
        messages = self.history + [{"role": "user", "content": text}]
        answer = _run_stage("LLM", lambda: self.llm.reply(messages))
        timings["llm"] = time.perf_counter() - t
        if not answer.strip():
            raise StageError("LLM: empty reply")
        ctx.result(reply=answer)
        t = stage("tts", "speaking the reply")
        wav = out_dir / "reply_tts.wav"
        spoken = Path(_run_stage("TTS", lambda: self.e.tts.speak(answer, wav)))
        timings["tts"] = time.perf_counter() - t
        t = stage("render", "rendering the reply")
        talker, lock = self.e.cache.get(self.model, self.iteration)
        samples = load_audio(spoken)  # [T] float32, 16 kHz
        if samples.size == 0:
            raise StageError("TTS: the reply audio is empty")
        segments: List[str] = []
        marks: Dict[str, float] = {}

        def first_frame() -> None:
            marks["first_frame"] = time.time() - t0

        def on_segment(i: int, path: Path, frames: int) -> None:
            if i == 0:
                marks["first_segment"] = time.time() - t0
            segments.append(f"/static/videos/{ctx.id}/{path.name}")
            ctx.result(segments=list(segments), frames_done=frames)
            ctx.progress(stage="render", iteration=frames, message=f"rendered {frames} frames")

        with lock:
            pieces, frames = render_segments(talker, samples, out_dir, self.e.first_frames,
                                             self.e.frames_per_segment, on_segment, first_frame, ctx.check_cancelled)
        timings["render"] = time.perf_counter() - t
        full = join_segments(pieces, spoken, out_dir / "reply.mp4")
        marks["video"] = time.time() - t0
        ctx.log(f"reply video: {frames} frames; first frame {marks['first_frame']:.2f} s after the request")
        return {"video": f"/static/videos/{ctx.id}/{full.name}", "frames": frames,
                "timings": {**{k: round(v, 3) for k, v in timings.items()},
                            **{f"since_request_{k}": round(v, 3) for k, v in marks.items()}}}


def _run_stage(label: str, fn: Callable[[], Any]) -> Any:
    """Run a stage; any failure becomes one StageError line naming the stage."""
    try:
        return fn()
    except StageError:
        raise
    except subprocess.TimeoutExpired:
        raise StageError(f"{label}: timed out") from None
    except Exception as exc:  # noqa: BLE001 - a plug-in stage may raise anything; the page gets one line
        log.exception("%s stage failed", label)
        raise StageError(f"{label}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None


__all__ = ["ASR", "LLM", "TTS", "ChatEngine", "ChatRequest", "CommandTTS", "EchoLLM", "EspeakTTS", "OpenAIChatLLM",
           "PocketSphinxASR", "StageError", "make_stage"]

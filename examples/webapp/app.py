"""The HTTP server: three pages and their JSON API, over the library in process.

Pages (plain HTML + vanilla JS in ``static/``): ``/model_training.html``, ``/video_generation.html``,
``/chat_system.html`` (``/`` redirects to the training page). JSON API (errors are ``{"error": "one line"}``
with a 4xx/5xx status; the server never stops on bad input):

===========================  ==================================================================
``GET  /api/status``         devices, configs, limits, chat stages, LLM configured or not
``GET  /api/models``         trained models in ``<workspace>/output`` with their saved iterations
``GET  /api/datasets``       preprocessed datasets in ``<workspace>/data``
``POST /api/uploads``        ``?kind=video|audio|au_csv&filename=NAME``, body = the file's bytes
``GET  /api/uploads``        ``?kind=...``: stored uploads (to pick a video already on the server)
``POST /api/train``          JSON :class:`~.backend.model_trainer.TrainRequest` -> job
``POST /api/generate``       JSON :class:`~.backend.video_generator.GenerateRequest` -> job
``POST /api/chat``           JSON :class:`~.backend.chat_engine.ChatRequest` -> job
``GET  /api/jobs``           ``?kind=train|generate|chat``: job records, newest first
``GET  /api/jobs/{id}``      one job record (state, progress, log tail, result, error)
``POST /api/jobs/{id}/cancel``
``POST /api/live/offer``     JSON ``{"sdp", "type", "model"[, "mode"]}`` -> ``{"sdp", "type", "session"}`` (WebRTC)
``POST /api/live/{s}/say``   JSON ``{"text"}`` (TTS -> avatar) or an audio body (straight to the avatar)
``GET  /api/live/{s}``       the session: state, speaking, turns with their timings
``DELETE /api/live/{s}``     close the session
===========================  ==================================================================

Rendered videos are served from ``<workspace>/webapp/static/videos`` at ``/static/videos/``.

Every request passes :class:`~.backend.security.RequestGuard` (Host and Origin checks, JSON content types,
the optional ``GT_WEBAPP_TOKEN``); uploads and videos are deleted by age and quota
(:class:`~.backend.retention.Retention`); training jobs that were queued or running when the server stopped
are queued again when it starts.
"""

from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, Optional, Type

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from gaussiantalker.workspace import InvalidNameError, Workspace

from .backend.chat_engine import ChatEngine, ChatRequest, StageError
from .backend.jobs import Job, JobManager, JobNotFoundError, one_line
from .backend.live import LiveManager, LiveOptions, LiveUnavailable, SessionNotFound
from .backend.model_trainer import ModelTrainer, TrainRequest
from .backend.retention import Retention, ids_in
from .backend.security import RequestGuard
from .backend.settings import Settings, load_chat_config
from .backend.uploads import KINDS, UploadError, UploadStore
from .backend.video_generator import GenerateRequest, ModelNotFound, TalkerCache, VideoGenerator, list_models

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
PAGES = ("model_training.html", "video_generation.html", "chat_system.html")
_JOB_ID = re.compile(r"^[0-9a-f]{16}$")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _job_json(job: Job, created: Optional[bool] = None) -> Dict[str, Any]:
    d = job.to_dict()
    d.pop("key", None)
    d.pop("resume", None)  # server paths
    if created is not None:
        d["deduplicated"] = not created
    return d


def _request(cls: Type, body: Any):
    """Build a request dataclass from a JSON object, refusing unknown keys and wrong types (one line)."""
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    values = {k: (None if v == "" else v) for k, v in body.items()}
    for k in ("iterations", "iteration", "batch_size"):
        if values.get(k) is not None:
            try:
                values[k] = int(values[k])
            except (TypeError, ValueError):
                raise ValueError(f"{k} must be an integer, got {values[k]!r}") from None
    for k, v in values.items():
        if k == "history":
            if not isinstance(v, list):
                raise ValueError("history must be a list of messages")
        elif v is not None and not isinstance(v, (str, int)):
            raise ValueError(f"{k} must be a string or a number")
    values = {k: v for k, v in values.items() if v is not None}
    try:
        return cls(**values)
    except TypeError as exc:  # a required field missing
        raise ValueError(one_line(exc).replace("__init__() ", "")) from None


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    """The web application for ``settings`` (default: workspace ``GaussianTalker``, 200 MiB uploads).

    Builds the job manager (reloading earlier job records), the upload store, the talker cache and the chat
    stages; the worker threads stop when the app shuts down.
    """
    s = settings or Settings()
    s.make_dirs()
    _import_torchvision_first()
    ws = Workspace.at(s.workspace)
    jobs = JobManager(s.jobs_dir)
    uploads = UploadStore(s.uploads_dir, s.max_upload_bytes)
    cache = TalkerCache(ws, device=_device(s.device), size=s.max_talkers)
    trainer = ModelTrainer(s.workspace, uploads, jobs, s.configs_dir, s.locks_dir)
    generator = VideoGenerator(cache, uploads, jobs, s.videos_dir)
    chat_cfg = load_chat_config(s.chat_config, s.chat)
    chat = ChatEngine(chat_cfg, cache, uploads, jobs, s.videos_dir, s.first_segment_frames, s.segment_frames)
    retention = Retention(s.uploads_dir, s.videos_dir, s.retention_days, s.storage_quota_mb, s.stale_part_hours,
                          in_use=lambda: ids_in(jobs.active_records()))
    uploads.on_stored = lambda up: retention.sweep(protect={up.id})
    jobs.on_finished = lambda job: retention.sweep(protect={job.id})
    for job in jobs.restore("train", trainer.restore):
        log.info("training job %s (%s) queued again after the restart", job.id, job.params.get("name"))
    retention.sweep()  # after restore: what the restored jobs use is protected

    live = LiveManager(cache, chat, LiveOptions(max_sessions=s.max_live_sessions, loop_frames=s.live_loop_frames))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        chat.warm()
        yield
        await live.shutdown()
        jobs.shutdown()

    app = FastAPI(title="gaussiantalker web app", lifespan=lifespan)
    app.add_middleware(RequestGuard, allowed_hosts=s.allowed_hosts, token=s.token)
    app.state.settings, app.state.jobs, app.state.cache, app.state.chat = s, jobs, cache, chat
    app.state.retention, app.state.live = retention, live
    _errors(app)
    app.mount("/static/videos", StaticFiles(directory=s.videos_dir), name="videos")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return RedirectResponse("/model_training.html")

    for page in PAGES:
        app.add_api_route(f"/{page}", _page(page), methods=["GET"], include_in_schema=False)

    @app.get("/api/status")
    def status():
        return {"workspace": str(s.workspace), "devices": trainer.devices(), "configs": trainer.configs(),
                "max_upload_mb": s.max_upload_mb, "render_device": cache.device, "chat": chat.status(), "live": live.status()}

    @app.get("/api/models")
    def models():
        return {"models": list_models(ws)}

    @app.get("/api/datasets")
    def datasets():
        return {"datasets": trainer.datasets()}

    @app.post("/api/uploads")
    async def upload(request: Request, kind: str, filename: str = ""):
        tmp = await uploads.receive(kind, filename, request.stream(), request.headers.get("content-length"))
        up = await run_in_threadpool(uploads.store, kind, filename, tmp)
        return up.public()

    @app.get("/api/uploads")
    def list_uploads(kind: Optional[str] = None):
        if kind is not None and kind not in KINDS:
            raise UploadError(f"unknown upload kind {kind!r}: use one of {', '.join(KINDS)}")
        return {"uploads": [u.public() for u in uploads.list(kind)]}

    @app.post("/api/train")
    async def train(request: Request):
        req = _request(TrainRequest, await _json(request))
        job, created = await run_in_threadpool(trainer.submit, req)
        return _job_json(job, created)

    @app.post("/api/generate")
    async def generate(request: Request):
        req = _request(GenerateRequest, await _json(request))
        job, created = await run_in_threadpool(generator.submit, req)
        return _job_json(job, created)

    @app.post("/api/chat")
    async def chat_turn(request: Request):
        req = _request(ChatRequest, await _json(request))
        job, created = await run_in_threadpool(chat.submit, req)
        return _job_json(job, created)

    @app.get("/api/jobs")
    def list_jobs(kind: Optional[str] = None):
        return {"jobs": [_job_json(j) for j in jobs.list(kind)]}

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: str):
        return _job_json(jobs.get(_checked_job_id(job_id)))

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel_job(job_id: str):
        return _job_json(jobs.cancel(_checked_job_id(job_id)))

    @app.post("/api/live/offer")
    async def live_offer(request: Request):
        return await live.offer(await _json(request))

    @app.post("/api/live/{session}/say")
    async def live_say(session: str, request: Request):
        live.get(session)  # 404 before reading a body
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype == "application/json":
            body = await _json(request)
            if not isinstance(body, dict) or set(body) != {"text"} or not isinstance(body["text"], str):
                raise ValueError('say takes JSON {"text": "..."} or an audio file as the body')
            if not body["text"].strip():
                raise ValueError("text is empty")
            return await live.say(session, text=body["text"][:2000])
        if not (ctype.startswith("audio/") or ctype.startswith("video/") or ctype == "application/octet-stream"):
            raise UploadError(f"say takes application/json or an audio body, not {ctype or 'no content type'!r}",
                              status=415)
        tmp = await uploads.receive("audio", "say.wav", request.stream(), request.headers.get("content-length"))
        up = await run_in_threadpool(uploads.store, "audio", "say.wav", tmp)  # probed like any upload
        return await live.say(session, audio_path=Path(up.path))

    @app.get("/api/live/{session}")
    def live_get(session: str):
        return live.public(session)

    @app.delete("/api/live/{session}")
    async def live_close(session: str):
        return await live.close(session)

    return app


def _import_torchvision_first() -> None:
    """A training job imports TensorFlow (MediaPipe preprocessing); importing torchvision or aiortc's pylibsrtp
    after TensorFlow in one process crashes it (measured; ``gaussiantalker._import_order``). The server is one
    long process that runs every job, so it imports them (the optional perceptual loss / LPIPS, the live
    sessions) first, when they are installed."""
    from gaussiantalker._import_order import before_tensorflow

    before_tensorflow()


def _device(spec: str) -> str:
    from gaussiantalker.devices import resolve_device

    return str(resolve_device(spec))


def _checked_job_id(job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise JobNotFoundError(f"no job {job_id[:40]!r}")
    return job_id


async def _json(request: Request) -> Any:
    import json

    body = await request.body()
    if len(body) > 1 << 20:
        raise UploadError("request body too large (JSON requests are limited to 1 MiB)", status=413)
    try:
        return json.loads(body or b"null")
    except ValueError:
        raise ValueError("the request body is not valid JSON") from None


def _page(name: str):
    def page():
        return FileResponse(STATIC / name, media_type="text/html")

    page.__name__ = name.replace(".", "_")
    return page


def _errors(app: FastAPI) -> None:
    """Every failure becomes ``{"error": "<one line>"}`` with a fitting status; nothing reaches the client as a
    traceback and no request can stop the server."""

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError):
        return _error(exc.status, one_line(exc))

    def status_of(status: int):
        async def handler(request: Request, exc: Exception):
            return _error(status, one_line(exc))

        return handler

    # Starlette picks the handler of the most specific class in the exception's MRO.
    for exc_type, status in ((InvalidNameError, 400), (StageError, 503), (JobNotFoundError, 404),
                             (SessionNotFound, 404), (LiveUnavailable, 503),
                             (ModelNotFound, 404), (FileNotFoundError, 404), (ValueError, 400)):
        app.add_exception_handler(exc_type, status_of(status))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        text = exc.detail if isinstance(exc.detail, str) else str(exc.status_code)
        if exc.status_code == 404:
            text = f"not found: {request.url.path[:100]}"
        return _error(exc.status_code, one_line(ValueError(text)))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        parts = ["{}: {}".format(".".join(str(x) for x in e.get("loc", ())[1:]) or "request", e.get("msg", ""))
                 for e in exc.errors()]
        return _error(422, one_line(ValueError("; ".join(parts))))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error: {one_line(exc)}")


__all__ = ["PAGES", "create_app"]

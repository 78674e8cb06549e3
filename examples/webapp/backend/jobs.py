"""Background jobs: one worker thread per lane, records persisted as JSON, log capture, cancel.

A *lane* is a queue with one worker thread, e.g. ``"train:cpu"``: jobs of one lane run one at a time in
submission order, so one training job per device runs while the others wait ``queued``. Every job record
(id, kind, state, progress, log tail, result, error) is written atomically to
``<workspace>/webapp/jobs/<id>.json`` on each state change (progress at most twice a second), so a page
reload shows it and a restarted server lists it. Jobs that were queued or running when the server stopped
are marked ``interrupted`` (their thread is gone), except those of a kind registered with
:meth:`JobManager.restore` (training): those are queued again, in their old order, under the same id.

A job's ``run(ctx)`` reports through its :class:`JobContext`; ``ctx.check_cancelled()`` raises
:class:`JobCancelled` once the user pressed cancel (the training callback calls it, so a running training
stops at its next progress report; its checkpoints stay and a new job resumes from them).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from gaussiantalker.fileio import atomic_write

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled", "interrupted")
LOG_LINES = 200
SAVE_INTERVAL = 0.5  # seconds between two progress saves of one job


class JobCancelled(Exception):
    """Raised inside a job (by :meth:`JobContext.check_cancelled`) when the user cancelled it."""


class JobNotFoundError(FileNotFoundError):
    """No job with that id."""


@dataclass
class Job:
    """One job record (what ``GET /api/jobs/<id>`` returns and ``jobs/<id>.json`` holds)."""

    id: str
    kind: str  # "train", "generate", "chat"
    lane: str  # e.g. "train:cpu"
    state: str = "queued"  # queued, running, done, failed, cancelled, interrupted
    params: Dict[str, Any] = field(default_factory=dict)
    key: Optional[str] = None  # de-duplication key: an active job with the same key is not started twice
    created: float = 0.0
    started: Optional[float] = None
    finished: Optional[float] = None
    progress: Dict[str, Any] = field(default_factory=dict)
    log: List[str] = field(default_factory=list)
    result: Dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None
    cancel_requested: bool = False
    resume: Optional[Dict[str, Any]] = None  # what restore() needs to run it again (server-side only)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Job":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def one_line(exc: BaseException) -> str:
    """An exception as one short line for the page (whitespace collapsed, at most 300 characters)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class _ThreadLogs(logging.Handler):
    """Sends log records of a job's worker thread into that job's log tail."""

    def __init__(self, manager: "JobManager") -> None:
        super().__init__(logging.INFO)
        self.manager = manager
        self.threads: Dict[int, str] = {}
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        job_id = self.threads.get(threading.get_ident())
        if job_id is not None:
            try:
                self.manager.append_log(job_id, self.format(record))
            except Exception:  # noqa: BLE001 - a logging handler must never raise into the caller
                self.handleError(record)


class JobContext:
    """What a running job sees: progress and result updates, log lines, cancellation."""

    def __init__(self, manager: "JobManager", job: Job) -> None:
        self.manager, self.job = manager, job

    @property
    def id(self) -> str:
        return self.job.id

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` when the user asked to cancel this job."""
        if self.job.cancel_requested:
            raise JobCancelled(f"job {self.job.id} cancelled")

    def progress(self, **fields: Any) -> None:
        """Replace the job's progress fields (stage, step, iteration, total, loss, eta, message, ...)."""
        self.manager.update(self.job.id, progress=dict(fields))

    def result(self, **fields: Any) -> None:
        """Merge ``fields`` into the job's result (e.g. streamed segments as they are written)."""
        self.manager.update(self.job.id, result={**self.job.result, **fields}, force=True)

    def log(self, line: str) -> None:
        self.manager.append_log(self.job.id, line)


class JobManager:
    """Submits, runs, persists and cancels jobs. Thread-safe."""

    def __init__(self, jobs_dir: Path, loggers: Tuple[str, ...] = ("gaussiantalker", "examples.webapp")) -> None:
        self.dir = Path(jobs_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._jobs: Dict[str, Job] = {}
        self._runs: Dict[str, Callable[[JobContext], Dict[str, Any]]] = {}
        self._queues: Dict[str, "queue.Queue[Optional[str]]"] = {}
        self._workers: Dict[str, threading.Thread] = {}
        self._saved: Dict[str, float] = {}
        self._closed = False
        self._was_active: Dict[str, str] = {}  # job id -> its state when the last server stopped
        #: Called with a snapshot of each job once it has finished (e.g. the retention sweep); errors are logged.
        self.on_finished: Optional[Callable[[Job], None]] = None
        self._load()
        self._handler = _ThreadLogs(self)
        self._loggers = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
        for lg, level in self._loggers:
            if level == logging.NOTSET or level > logging.INFO:
                lg.setLevel(logging.INFO)  # INFO records must reach the job's log tail
            lg.addHandler(self._handler)

    # ------------------------------------------------------------------------------------ records
    def _load(self) -> None:
        for path in sorted(self.dir.glob("*.json")):
            try:
                job = Job.from_dict(json.loads(path.read_text(encoding="utf-8")))
            except (ValueError, TypeError) as exc:
                log.warning("skipping unreadable job record %s: %s", path, exc)
                continue
            if job.state in ACTIVE:
                self._was_active[job.id] = job.state
                job.error = f"the server stopped while this job was {job.state}; submit it again"
                job.state, job.finished = "interrupted", time.time()
                self._write(job)
            self._jobs[job.id] = job

    def restore(self, kind: str, factory: Callable[[Job], Callable[[JobContext], Dict[str, Any]]]) -> List[Job]:
        """Queue again the jobs of ``kind`` that were queued or running when the last server stopped.

        ``factory(job)`` rebuilds the job's ``run`` from its record; when it raises, the job stays
        ``interrupted`` with the reason. Returns the jobs queued again (oldest first).
        """
        restored = []
        with self._lock:
            ids = sorted((i for i in self._was_active if self._jobs[i].kind == kind),
                         key=lambda i: self._jobs[i].created)
            for job_id in ids:
                job, was = self._jobs[job_id], self._was_active.pop(job_id)
                try:
                    run = factory(job)
                except Exception as exc:  # noqa: BLE001 - the record says why it could not resume
                    job.error = f"the server stopped while this job was {was}; it cannot resume: {one_line(exc)}"
                    self._write(job)
                    continue
                job.state, job.error, job.finished, job.cancel_requested = "queued", None, None, False
                job.log.append(f"{time.strftime('%H:%M:%S')} the server restarted while this job was {was}: "
                               "queued again (training resumes from its newest checkpoint)")
                self._runs[job.id] = run
                self._write(job)
                self._lane(job.lane).put(job.id)
                restored.append(self.get(job.id))
        return restored

    def active_records(self) -> List[str]:
        """The JSON of every queued or running job (what they refer to must not be deleted)."""
        with self._lock:
            return [json.dumps(j.to_dict(), default=str) for j in self._jobs.values() if j.state in ACTIVE]

    def _write(self, job: Job) -> None:
        text = json.dumps(job.to_dict(), indent=1, default=str)
        atomic_write(self.dir / f"{job.id}.json", lambda p: p.write_text(text, encoding="utf-8"))
        self._saved[job.id] = time.monotonic()

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFoundError(f"no job {job_id!r}")
            return Job.from_dict(json.loads(json.dumps(job.to_dict(), default=str)))  # a snapshot

    def list(self, kind: Optional[str] = None) -> List[Job]:
        """Jobs, newest first."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if kind is None or j.kind == kind]
            return [self.get(j.id) for j in sorted(jobs, key=lambda j: j.created, reverse=True)]

    def update(self, job_id: str, force: bool = False, **fields: Any) -> None:
        with self._lock:
            job = self._jobs[job_id]
            for k, v in fields.items():
                setattr(job, k, v)
            if force or time.monotonic() - self._saved.get(job_id, 0.0) >= SAVE_INTERVAL:
                self._write(job)

    def append_log(self, job_id: str, line: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.log.append(line)
                del job.log[:-LOG_LINES]

    # ------------------------------------------------------------------------------------ running
    def submit(self, kind: str, lane: str, params: Dict[str, Any], run: Callable[[JobContext], Dict[str, Any]],
               key: Optional[str] = None, resume: Optional[Dict[str, Any]] = None) -> Tuple[Job, bool]:
        """Queue ``run`` on ``lane``. Returns ``(job, created)``; when an active job has the same ``key``
        that job is returned with ``created=False`` and nothing new is queued. ``resume`` is kept in the record
        for :meth:`restore` (not shown to clients)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the job manager is shut down")
            if key is not None:
                for job in self._jobs.values():
                    if job.key == key and job.state in ACTIVE:
                        return self.get(job.id), False
            job = Job(id=uuid.uuid4().hex[:16], kind=kind, lane=lane, params=dict(params), key=key,
                      created=time.time(), resume=resume)
            self._jobs[job.id] = job
            self._runs[job.id] = run
            self._write(job)
            self._lane(lane).put(job.id)
            return self.get(job.id), True

    def _lane(self, lane: str) -> "queue.Queue[Optional[str]]":
        q = self._queues.get(lane)
        if q is None:
            q = self._queues[lane] = queue.Queue()
            t = threading.Thread(target=self._work, args=(q,), name=f"webapp-{lane}", daemon=True)
            self._workers[lane] = t
            t.start()
        return q

    def _work(self, q: "queue.Queue[Optional[str]]") -> None:
        while True:
            job_id = q.get()
            if job_id is None:
                return
            self._run_one(job_id)

    def _run_one(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs[job_id]
            run = self._runs.pop(job_id)
            if job.state != "queued" or self._closed:  # cancelled while waiting, or shutting down
                return
            job.state, job.started = "running", time.time()
            self._write(job)
        ident = threading.get_ident()
        self._handler.threads[ident] = job_id
        state, error, result = "done", None, None
        try:
            result = run(JobContext(self, job))
        except JobCancelled:
            state, error = "cancelled", "cancelled by the user"
        except Exception as exc:  # noqa: BLE001 - any failure of a job is recorded, the worker lives on
            log.exception("job %s (%s) failed", job_id, job.kind)
            state, error = "failed", one_line(exc)
        finally:
            self._handler.threads.pop(ident, None)
        with self._lock:
            if result:
                job.result = {**job.result, **result}
            job.state, job.error, job.finished = state, error, time.time()
            self._write(job)
        if self.on_finished is not None:
            try:
                self.on_finished(self.get(job_id))
            except Exception:  # noqa: BLE001 - a hook must not kill the worker
                log.exception("after job %s", job_id)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job now, or ask a running one to stop at its next progress report."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFoundError(f"no job {job_id!r}")
            if job.state == "queued":
                job.state, job.finished, job.error = "cancelled", time.time(), "cancelled before it started"
                job.cancel_requested = True
                self._write(job)
            elif job.state == "running":
                job.cancel_requested = True
                self._write(job)
            return self.get(job_id)

    def wait(self, job_id: str, timeout: float = 60.0) -> Job:
        """Block until the job has finished (for scripts and tests); returns its record."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            job = self.get(job_id)
            if job.state in FINISHED:
                return job
            time.sleep(0.05)
        raise TimeoutError(f"job {job_id} still {self.get(job_id).state} after {timeout:g} s")

    def shutdown(self) -> None:
        """Stop the workers after their current job (queued jobs stay queued and read as interrupted later)."""
        with self._lock:
            self._closed = True
            for q in self._queues.values():
                q.put(None)
        for lg, level in self._loggers:
            lg.removeHandler(self._handler)
            lg.setLevel(level)


__all__ = ["ACTIVE", "FINISHED", "Job", "JobCancelled", "JobContext", "JobManager", "JobNotFoundError", "one_line"]

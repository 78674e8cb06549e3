"""Training jobs: ``gaussiantalker.train`` in a background thread, one job per device at a time.

The job's progress is the library's :class:`gaussiantalker.progress.Progress` (the figures the command
line's progress bar shows: stage, step, iteration, loss, PSNR, points, ETA); the job's log tail gets the
``gaussiantalker`` log records of its thread and a line per stage change. Cancelling raises from the
progress callback: the trainer checkpoints first, so a new job for the same model resumes from there.

A job record keeps what is needed to run it again (the source, name, device, iterations, config), so a
restarted server queues the training jobs it was running or had queued again (:meth:`ModelTrainer.restore`),
and they resume from their checkpoints. One model is trained by one job at a time, also across processes:
a job holds an exclusive lock on ``<workspace>/webapp/locks/train-<name>.lock`` (``flock``) while it trains,
and a job that finds it taken waits (``stage: waiting``), cancellable.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from gaussiantalker.workspace import Workspace, name_from_path, validate_name

from .jobs import Job, JobContext, JobManager
from .uploads import UploadError, UploadStore

log = logging.getLogger(__name__)


@dataclass
class TrainRequest:
    """What the training page submits (``POST /api/train``). Give ``video`` (an upload id) or ``dataset``."""

    video: Optional[str] = None  # id of a "video" upload
    dataset: Optional[str] = None  # name of a preprocessed dataset in <workspace>/data
    name: Optional[str] = None  # model name (default: the video's file stem or the dataset's name)
    device: str = "auto"  # auto, CPU, GPU0, cuda:1
    iterations: Optional[int] = None  # total iterations (default: the config's)
    config: Optional[str] = None  # a preset name or the name of a file in <workspace>/webapp/configs
    au_csv: Optional[str] = None  # id of an "au_csv" upload (with a video)
    landmarks: str = "auto"  # landmark backend (with a video): auto, mediapipe, dlib, face-alignment
    audio_features: str = "auto"  # speech features (with a video): auto, mfcc, deepspeech, hubert


class ModelTrainer:
    """Validates training requests and runs them as jobs."""

    def __init__(self, workspace: Path, uploads: UploadStore, jobs: JobManager, configs_dir: Path,
                 locks_dir: Optional[Path] = None) -> None:
        self.ws = Workspace.at(workspace)
        self.uploads, self.jobs, self.configs_dir = uploads, jobs, Path(configs_dir)
        self.locks_dir = Path(locks_dir) if locks_dir is not None else self.ws.root / "webapp" / "locks"

    # ------------------------------------------------------------------------------------ listing
    def configs(self) -> List[str]:
        """The bundled presets, then the config files placed in ``<workspace>/webapp/configs``."""
        from gaussiantalker.config import list_presets

        extra = sorted(p.name for p in self.configs_dir.glob("*") if p.suffix in (".py", ".json") and p.is_file())
        return list(list_presets()) + extra

    def datasets(self) -> List[str]:
        return self.ws.datasets()

    @staticmethod
    def devices() -> List[str]:
        """Device choices as the command line spells them."""
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return ["auto", "CPU"] + [f"GPU{i}" for i in range(n)]

    # ------------------------------------------------------------------------------------ submit
    def submit(self, req: TrainRequest) -> tuple:
        """Check ``req`` and queue it. Returns ``(job, created)``; ``created`` is False when the same model is
        already queued or training (that job is returned; the same request twice never trains twice).

        Raises:
            UploadError / ValueError (InvalidNameError, bad device or config) / FileNotFoundError.
        """
        from gaussiantalker.devices import resolve_device

        if (req.video is None) == (req.dataset is None):
            raise ValueError("give either an uploaded video or a dataset on the server")
        if req.iterations is not None and int(req.iterations) <= 0:
            raise ValueError(f"iterations must be a positive integer, got {req.iterations}")
        device = str(resolve_device(req.device))
        backends = _backends(req)
        au_csv = None
        if req.video is not None:
            up = self.uploads.get(req.video, "video")
            source, label = Path(up.path), f"upload {up.id} ({up.filename})"
            name = validate_name(req.name) if req.name else name_from_path(up.filename)
            if req.au_csv:
                au_csv = self.uploads.get(req.au_csv, "au_csv").path
        else:
            if req.au_csv:
                raise ValueError("an AU csv goes with a video upload; a dataset already has its au.csv")
            if backends:
                raise ValueError("landmarks / audio_features go with a video upload; a dataset is already "
                                 "preprocessed")
            source = self.ws.data_dir(validate_name(req.dataset))
            if not source.is_dir():
                have = ", ".join(self.ws.datasets()) or "none"
                raise FileNotFoundError(f"no dataset {req.dataset!r} on the server (datasets: {have})")
            label = f"dataset {req.dataset}"
            name = validate_name(req.name) if req.name else req.dataset
        config = self._config(req.config)
        params = {"source": label, "name": name, "device": device, "iterations": req.iterations,
                  "config": req.config or "64_dim_1_transformer", "au_csv": bool(au_csv), "backends": backends}
        resume = {"source": str(source), "name": name, "device": device, "iterations": req.iterations,
                  "config": config, "au_csv": str(au_csv) if au_csv else None, "backends": backends}
        run = self._run(resume)
        job, created = self.jobs.submit("train", f"train:{device}", params, run, key=f"train:{name}", resume=resume)
        if not created and job.params.get("source") != label:
            raise ValueError(f"model {name!r} is already being trained by job {job.id} from {job.params['source']}")
        return job, created

    def _run(self, spec: Dict[str, Any]) -> "_TrainRun":
        return _TrainRun(spec["source"], spec["name"], spec["device"], spec.get("iterations"), spec.get("config"),
                         spec.get("au_csv"), self.ws.root, self.locks_dir, spec.get("backends"))

    def restore(self, job: Job) -> "_TrainRun":
        """The run of a training job recorded by an earlier server (for :meth:`JobManager.restore`).

        Raises:
            ValueError: the record has no resume information (written by an older version).
            FileNotFoundError: its video, dataset, config or AU csv is gone.
        """
        spec = job.resume
        if not isinstance(spec, dict) or not spec.get("source") or not spec.get("name"):
            raise ValueError("the job record has no resume information")
        validate_name(spec["name"])
        for key in ("source", "config", "au_csv"):
            value = spec.get(key)
            if key == "config" and value and "/" not in value and "\\" not in value:
                continue  # a preset name
            if value and not Path(value).exists():
                raise FileNotFoundError(f"its {key} {value} is gone")
        return self._run(spec)

    def jobs_for(self, name: str, active: bool = False) -> List[Job]:
        return [j for j in self.jobs.list("train") if j.params.get("name") == name
                and (not active or j.state in ("queued", "running"))]

    def _config(self, config: Optional[str]) -> Optional[str]:
        """A preset name or a file of the configs folder, as a path/preset string for the library."""
        if not config:
            return None
        from gaussiantalker.config import list_presets

        if config in list_presets():
            return config
        validate_name(config)
        path = self.configs_dir / config
        if not path.is_file():
            raise FileNotFoundError(f"no config {config!r} (choose one of: {', '.join(self.configs())})")
        return str(path)


class _TrainRun:
    """The body of one training job (a callable object so the job records its arguments clearly)."""

    def __init__(self, source: str, name: str, device: str, iterations: Optional[int], config: Optional[str],
                 au_csv: Optional[str], workspace: Path, locks_dir: Path,
                 backends: Optional[Dict[str, str]] = None) -> None:
        self.source, self.name, self.device, self.iterations = source, name, device, iterations
        self.config, self.au_csv, self.workspace, self.locks_dir = config, au_csv, workspace, Path(locks_dir)
        self.backends = backends

    def __call__(self, ctx: JobContext) -> Dict[str, Any]:
        with model_lock(self.locks_dir, self.name, ctx):
            return self._train(ctx)

    def _train(self, ctx: JobContext) -> Dict[str, Any]:
        import gaussiantalker

        last = {"stage": None, "logged": 0.0}

        def callback(p) -> None:
            ctx.check_cancelled()  # raising stops training (it checkpoints first)
            fields = p.as_dict()
            ctx.progress(**fields)
            now = time.monotonic()
            if (p.stage, p.step) != last["stage"] or now - last["logged"] >= 10.0:
                last["stage"], last["logged"] = (p.stage, p.step), now
                ctx.log(_progress_line(fields))

        ctx.log(f"training {self.name} on {self.device} from {Path(self.source).name}")
        model = gaussiantalker.train(self.source, config=self.config, iterations=self.iterations,
                                     device=self.device, workspace=self.workspace, name=self.name, progress=False,
                                     au_csv=self.au_csv, callback=callback, backends=self.backends)
        metrics = {k: float(v) for k, v in (model.metrics or {}).items() if isinstance(v, (int, float))}
        ctx.log(f"finished: {model.name} iteration {model.iteration}")
        return {"model": model.name, "iteration": int(model.iteration), "metrics": metrics}


def _backends(req: TrainRequest) -> Optional[Dict[str, str]]:
    """The request's backend choices as the library's ``backends`` (None when both are auto), checked
    against the command line's choices (``--landmarks``, ``--audio_features``)."""
    from gaussiantalker.cli import AUDIO_FEATURES, LANDMARK_BACKENDS

    chosen = {}
    for key, value, allowed in (("landmarks", req.landmarks, LANDMARK_BACKENDS),
                                ("audio", req.audio_features, AUDIO_FEATURES)):
        value = value or "auto"
        if value not in allowed:
            field = "landmarks" if key == "landmarks" else "audio_features"
            raise ValueError(f"{field} must be one of {', '.join(allowed)}, got {value!r}")
        if value != "auto":
            chosen[key] = value
    return chosen or None


@contextlib.contextmanager
def model_lock(locks_dir: Path, name: str, ctx: Optional[JobContext] = None, poll: float = 0.5):
    """Hold the exclusive lock of model ``name`` (``<locks_dir>/train-<name>.lock``, ``flock``; released when
    the process dies). Waits while another job, in this process or another, holds it; ``ctx`` gets a
    ``waiting`` progress line and can cancel the wait."""
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): one process per workspace is the user's job there
        log.warning("no fcntl on this platform: training jobs of other processes are not excluded")
        yield None
        return

    locks_dir.mkdir(parents=True, exist_ok=True)
    path = locks_dir / f"train-{validate_name(name)}.lock"
    with open(path, "a+") as fh:
        told = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if ctx is not None:
                    ctx.check_cancelled()
                    if not told:
                        told = True
                        ctx.progress(stage="waiting", message=f"model {name} is being trained by another job")
                        ctx.log(f"waiting: model {name} is being trained by another job or process ({path})")
                time.sleep(poll)
        try:
            yield path
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _progress_line(p: Dict[str, Any]) -> str:
    parts = [p.get("stage") or ""]
    if p.get("step"):
        parts.append(p["step"])
    if p.get("total"):
        parts.append(f"{p.get('iteration', 0)}/{p['total']}")
    if p.get("loss") is not None:
        parts.append(f"loss {p['loss']:.4f}")
    if p.get("eta") is not None:
        parts.append(f"eta {p['eta']:.0f} s")
    if p.get("message"):
        parts.append(p["message"])
    return " ".join(str(x) for x in parts if x)


__all__ = ["ModelTrainer", "TrainRequest", "UploadError", "model_lock"]

"""One call from a talking-head video to a training dataset (``<workspace>/data/<name>/``).

>>> data = preprocess("obama.mp4", workspace="GaussianTalker")        # offline defaults, resumable
>>> data.num_frames, data.audio_kind, data.backends["landmarks"]

The steps (:mod:`.stages`) run in order; a step whose marker says it is done with the same inputs
is skipped, so calling it again costs seconds, and a run that was killed resumes where it stopped.
The dataset format is described in ``docs/dataset-format.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

from ..progress import Progress, ProgressCallback
from ..workspace import DEFAULT_WORKSPACE, Workspace, name_from_path, validate_name
from .dataset import Dataset, PreprocessSummary
from .steps import MARKER_DIR, Context, PreprocessError, check_steps, plan_statuses, run_steps

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

BACKEND_KEYS = ("landmarks", "parsing", "tracking", "audio", "blink")


@dataclass
class PlannedStep:
    """What one step of :func:`preprocess` would do (``--dry-run``)."""

    name: str
    description: str
    reads: List[Path]
    writes: List[Path]
    done: bool
    """Already done with the same inputs (it would be skipped)."""
    reason: str
    """Why it would run (or ``"done"``)."""
    depends: List[str] = field(default_factory=list)


def _options(video, workspace, name, device, au_csv, backends, size, assets):
    from ..assets import file_digest
    from ..devices import resolve_device
    from .stages import Options

    video = Path(video).expanduser()
    if not video.is_file():
        what = "is a folder, not a video file" if video.is_dir() else "does not exist"
        raise FileNotFoundError(f"video {video} {what}")
    name = validate_name(name) if name is not None else name_from_path(video)
    if int(size) != size or size < 64 or size % 2:
        raise ValueError(f"size must be an even number of pixels >= 64, got {size!r}")
    backends = dict(backends or {})
    unknown = sorted(set(backends) - set(BACKEND_KEYS))
    if unknown:
        raise ValueError(f"unknown backends key(s) {unknown}; known: {list(BACKEND_KEYS)}")
    au = Path(au_csv).expanduser() if au_csv is not None else None
    if au is not None and not au.is_file():
        raise FileNotFoundError(f"au_csv file {au} does not exist")
    folder = Workspace.at(workspace).data_dir(name)
    return Options(video=video, name=name, folder=folder, size=int(size), backends=backends, au_csv=au,
                   assets=Path(assets).expanduser() if assets is not None else None,
                   device=str(resolve_device(device)), source_digest=file_digest(video))


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """One preprocess run per dataset folder at a time (an advisory lock, released when the process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    (folder / MARKER_DIR).mkdir(parents=True, exist_ok=True)
    with open(folder / MARKER_DIR / "lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PreprocessError(f"{folder}: another preprocess run is working on this dataset folder") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def preprocess(
    video: PathLike,
    workspace: PathLike = DEFAULT_WORKSPACE,
    name: Optional[str] = None,
    device: str = "auto",
    au_csv: Optional[PathLike] = None,
    backends: Optional[Mapping[str, str]] = None,
    size: int = 512,
    assets: Optional[PathLike] = None,
    progress: bool = True,
    *,
    stop_after: Optional[str] = None,
    callback: Optional[ProgressCallback] = None,
) -> Dataset:
    """Turn a talking-head video into a training dataset in ``<workspace>/data/<name>/``.

    Args:
        video: the input video (any container/codec ffmpeg reads, with an audio track, >= 2 s; the method
            wants 3-5 minutes of one person talking to a static camera).
        workspace: workspace folder (default ``./GaussianTalker``).
        name: dataset name (default: the video's file stem, made safe).
        device: ``"auto"``, ``"cpu"``, ``"cuda:<n>"``, ``"GPU<n>"``: used by tracking, face parsing
            (BiSeNet) and HuBERT features; MediaPipe runs on the CPU. Not part of the step fingerprints.
        au_csv: an OpenFace CSV with the ``AU45_r`` column to use instead of estimating blinks.
        backends: per-step backend choice: ``landmarks`` (auto|mediapipe|dlib|face-alignment), ``parsing``
            (auto|mediapipe-selfie|bisenet), ``tracking`` (auto|offline|bfm), ``audio``
            (auto|mfcc|deepspeech|hubert), ``blink`` (auto|eye-landmarks|openface). Missing keys: auto.
        size: side of the square output frames in pixels.
        assets: asset folder with optional pretrained files (default ``$GAUSSIANTALKER_HOME``).
        progress: show tqdm progress bars.
        stop_after: run the steps up to this one only (e.g. ``"frames"``); ``meta.json`` is then not written.
        callback: called with a :class:`~gaussiantalker.progress.Progress` (stage ``"preprocess"``) before each
            step that runs and once at the end; an exception it raises stops preprocessing (finished steps
            are kept and skipped next time).

    Returns:
        :class:`Dataset` with ``summary`` set (frames, face coverage, backends, seconds per step).

    Raises:
        FileNotFoundError: the video or the au_csv does not exist.
        PreprocessError: the input cannot be preprocessed (not a video, no audio, too short, no face, face
            lost for more than 5 frames, a bad au_csv, ...); the message names the file and the problem.
        ValueError: a bad argument (unknown backend, bad size or name).
        BackendUnavailableError (ImportError): a backend asked for is not installed or lacks its file.
    """
    from .stages import make_steps

    start = time.perf_counter()
    opts = _options(video, workspace, name, device, au_csv, backends, size, assets)
    steps = make_steps()
    if stop_after is not None:
        names = [s.name for s in steps]
        if stop_after not in names:
            raise ValueError(f"stop_after must be one of {names}, got {stop_after!r}")
        steps = steps[: names.index(stop_after) + 1]
    ctx = Context(opts.folder, opts, progress)
    check_steps(steps, ctx)  # bad backends / au_csv fail here, before the dataset folder is created
    opts.folder.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    with _folder_lock(opts.folder), tqdm(total=len(steps), desc=f"preprocess {opts.name}", unit="step",
                                         disable=not progress) as bar:
        def on_step(step, status) -> None:
            bar.set_postfix_str(step.name)
            if callback is not None:
                callback(Progress(stage="preprocess", step=step.name, iteration=steps.index(step), total=len(steps),
                                  elapsed=time.perf_counter() - start, message=f"{step.name}: {status.reason}"))

        records = run_steps(steps, ctx, on_step=on_step)
        bar.update(len(steps))
        if callback is not None:
            callback(Progress(stage="preprocess", iteration=len(steps), total=len(steps),
                              elapsed=time.perf_counter() - start, eta=0.0, message=f"{opts.name}: preprocessed"))
    total = time.perf_counter() - start
    summary = _summary(ctx, records, total)
    logger.info("preprocessed %s -> %s\n%s", opts.video, opts.folder, summary.format())
    if stop_after is not None and "meta" not in ctx.markers:
        data = _partial_dataset(ctx)
    else:
        data = Dataset.open(opts.folder)
    data.summary = summary
    return data


def _summary(ctx: Context, records, total: float) -> PreprocessSummary:
    info = {k: v["info"] for k, v in ctx.markers.items()}
    n = int(info.get("frames", {}).get("num_frames", 0))
    lm = info.get("landmarks", {})
    backends = {k: str(info[k]["backend"]) for k in ("landmarks", "parsing", "tracking", "blink") if k in info}
    if "features" in info:
        backends["audio"] = info["features"]["kind"]
    return PreprocessSummary(
        frames=n, frames_with_face=int(lm.get("frames_with_face", 0)),
        missing_faces=[tuple(r) for r in lm.get("missing_faces", [])], backends=backends,
        seconds={r.name: r.seconds for r in records}, ran=[r.name for r in records if r.ran],
        skipped=[r.name for r in records if not r.ran], total_seconds=total,
    )


def _partial_dataset(ctx: Context) -> Dataset:
    """A handle for a run stopped early (no meta.json yet)."""
    from .crop import CropBox

    info = {k: v["info"] for k, v in ctx.markers.items()}
    fr = info.get("frames", {})
    crop = info.get("crop", {}).get("crop")
    return Dataset(path=ctx.folder, name=ctx.options.name, num_frames=int(fr.get("num_frames", 0)),
                   fps=float(fr.get("fps", 25)), width=int(fr.get("width", 0)), height=int(fr.get("height", 0)),
                   audio_kind=str(info.get("features", {}).get("kind", "none")), backends={},
                   crop=CropBox.from_dict(crop) if crop else None)


def plan_preprocess(
    video: PathLike,
    workspace: PathLike = DEFAULT_WORKSPACE,
    name: Optional[str] = None,
    device: str = "auto",
    au_csv: Optional[PathLike] = None,
    backends: Optional[Mapping[str, str]] = None,
    size: int = 512,
    assets: Optional[PathLike] = None,
    progress: bool = True,
) -> List[PlannedStep]:
    """The steps :func:`preprocess` would run with these arguments, with the paths each reads and writes
    and whether it is already done. Reads the video (to fingerprint it) and the markers; writes nothing.

    Raises:
        FileNotFoundError / ValueError: as :func:`preprocess` for bad arguments.
    """
    from .stages import make_steps

    opts = _options(video, workspace, name, device, au_csv, backends, size, assets)
    steps = make_steps()
    ctx = Context(opts.folder, opts, progress=False)
    statuses = plan_statuses(steps, ctx)
    def paths(step) -> List[Path]:
        return [opts.folder / o.path / o.pattern if o.pattern else opts.folder / o.path for o in step.outputs(ctx)]

    by_name = {s.name: s for s in steps}
    plan = []
    for step, st in zip(steps, statuses):
        if step.name == "meta":
            reads = [opts.folder / MARKER_DIR / "*.json"]
        else:
            reads = list(step.reads(ctx)) + [p for d in step.depends for p in paths(by_name[d])]
        plan.append(PlannedStep(name=step.name, description=step.description, reads=reads, writes=paths(step),
                                done=st.done, reason=st.reason, depends=list(step.depends)))
    return plan


def format_plan(plan: List[PlannedStep]) -> str:
    """The plan as text for ``--dry-run``."""
    lines = []
    for p in plan:
        state = "done, skipped" if p.done else f"would run ({p.reason})"
        lines.append(f"{p.name:<11} {state}: {p.description}")
        for r in p.reads:
            lines.append(f"    reads  {r}")
        for w in p.writes:
            lines.append(f"    writes {w}")
    return "\n".join(lines)


def summarize(summary: PreprocessSummary) -> Dict[str, object]:
    """The summary as plain JSON values (for benchmarks and the CLI)."""
    return {"frames": summary.frames, "face_coverage": summary.face_coverage, "backends": summary.backends,
            "seconds": summary.seconds, "ran": summary.ran, "total_seconds": summary.total_seconds}


__all__ = ["Dataset", "PlannedStep", "PreprocessError", "format_plan", "plan_preprocess", "preprocess"]

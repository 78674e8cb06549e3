"""The step machinery of preprocessing: small steps with explicit inputs and outputs, completion
markers, fingerprints, and atomic outputs.

A :class:`Step` names the steps it depends on, the parameters that shape its result and the outputs
it writes (files, or files matching a pattern inside a folder). When it finishes, a marker
``.steps/<name>.json`` records:

* ``fingerprint``: a hash of the step's name and version, its parameters and the ``run_id`` of every
  step it depends on;
* ``run_id``: a fresh random token of this run of the step;
* ``outputs``: each output with its size in bytes (files) or its file count (folders);
* ``info``: what the step found (probe results, crop box, frame count, backends, ...), read by the
  steps after it and by ``meta.json``; and ``seconds``.

A step is *done* when its marker exists, the fingerprint is the one computed now, and every output is
still there (same size / same number of files). Because a dependant's fingerprint contains the
``run_id`` of its dependencies, a step that runs again (its parameters changed, an output was deleted)
makes every step that depends on it run again too. Before a step runs its marker is deleted, so a run
that fails or is killed never leaves the step marked done; outputs are written under temporary names
and renamed (:func:`gaussiantalker.fileio.atomic_write`, :func:`replace_dir`), so a killed run leaves
either the old file, the new file or a temporary file that the next run removes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
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
    Union,
)

from ..fileio import atomic_write

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

MARKER_DIR = ".steps"
MARKER_FORMAT = 1


class PreprocessError(ValueError):
    """Preprocessing cannot go on with this input; the message names the file and the problem."""


@dataclass(frozen=True)
class Output:
    """One output of a step: a file (``pattern`` None) or the files matching ``pattern`` in a folder."""

    path: str
    """Path relative to the dataset folder."""
    pattern: Optional[str] = None
    """Glob of the files this step owns inside the folder ``path`` (e.g. ``"*.jpg"``)."""
    optional: bool = False
    """May be absent (e.g. a preview that was not asked for); not checked when absent at run time."""

    @property
    def is_dir(self) -> bool:
        return self.pattern is not None


def count_files(folder: Path, pattern: str) -> int:
    """Number of non-hidden files in ``folder`` matching ``pattern`` (0 when the folder is absent)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    return sum(1 for n in names if not n.startswith(".") and fnmatch.fnmatch(n, pattern))


def replace_dir(tmp: Path, dest: Path) -> Path:
    """Put the finished folder ``tmp`` in place of ``dest`` (the old folder is removed first)."""
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def temp_dir_for(dest: Path) -> Path:
    """A fresh, empty temporary folder beside ``dest`` (a leftover of a killed run is removed)."""
    tmp = dest.parent / f".{dest.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_json(path: Path, doc: Any) -> Path:
    """Write ``doc`` as indented JSON, atomically."""
    text = json.dumps(doc, indent=1, sort_keys=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def digest(obj: Any) -> str:
    """Stable short hash of a JSON-able object."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class StepResult:
    """What :meth:`Step.run` returns: facts for ``meta.json`` and the steps after it."""

    info: Dict[str, Any] = field(default_factory=dict)


class Context:
    """What every step sees: the dataset folder, the run's options and the markers of finished steps."""

    def __init__(self, folder: Path, options: Any, progress: bool = True) -> None:
        self.folder = folder
        self.options = options
        self.progress = progress
        self.markers: Dict[str, dict] = {}

    def path(self, rel: str) -> Path:
        return self.folder / rel

    def info(self, step: str) -> Dict[str, Any]:
        """``info`` of a finished step (KeyError when it has not run in this pipeline)."""
        return self.markers[step]["info"]

    def bar(self, total: Optional[int], desc: str):
        """A tqdm progress bar (silent when ``progress`` is False)."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="frame", disable=not self.progress, leave=False)

    def track(self, items: Iterable, total: Optional[int], desc: str) -> Iterator:
        """Iterate ``items`` with a progress bar."""
        with self.bar(total, desc) as bar:
            for item in items:
                yield item
                bar.update(1)


class Step:
    """A preprocessing step. Subclasses set ``name``, ``depends``, ``version`` and implement
    :meth:`outputs`, :meth:`params` and :meth:`run`."""

    name: str = ""
    depends: Tuple[str, ...] = ()
    version: int = 1
    description: str = ""

    def outputs(self, ctx: Context) -> List[Output]:
        """Files and folders this step writes."""
        return []

    def reads(self, ctx: Context) -> List[Path]:
        """Files from outside the dataset folder this step reads (for ``--dry-run``)."""
        return []

    def params(self, ctx: Context) -> Dict[str, Any]:
        """Everything besides the dependencies that decides the result (JSON-able)."""
        return {}

    def run(self, ctx: Context) -> StepResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, ctx: Context) -> None:
        """Cheap validation of the inputs and backends of a step that will run, before any step runs (so a
        bad input fails in seconds and nothing is marked). Raises PreprocessError / ImportError."""


# ----------------------------------------------------------------------------------------------
# markers
# ----------------------------------------------------------------------------------------------


def marker_path(folder: Path, step: str) -> Path:
    return folder / MARKER_DIR / f"{step}.json"


def read_marker(folder: Path, step: str) -> Optional[dict]:
    """The marker of ``step`` or None (absent or unreadable: then the step is simply not done)."""
    path = marker_path(folder, step)
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != MARKER_FORMAT:
        return None
    return doc


def fingerprint(step: Step, ctx: Context, dep_run_ids: Dict[str, Optional[str]]) -> str:
    return digest({"step": step.name, "version": step.version, "params": step.params(ctx), "deps": dep_run_ids})


def describe_outputs(folder: Path, outputs: Sequence[Output]) -> List[dict]:
    """Sizes / file counts of the outputs as they are now (recorded in the marker)."""
    out = []
    for o in outputs:
        p = folder / o.path
        if o.is_dir:
            out.append({"path": o.path, "pattern": o.pattern, "files": count_files(p, o.pattern)})
        elif p.is_file():
            out.append({"path": o.path, "size": p.stat().st_size})
        elif not o.optional:
            raise RuntimeError(f"step output {p} was not written")
    return out


def outputs_intact(folder: Path, recorded: Sequence[dict]) -> Optional[str]:
    """None when every recorded output is still as recorded, else a reason."""
    for o in recorded:
        p = folder / o["path"]
        if "pattern" in o:
            n = count_files(p, o["pattern"])
            if n != o["files"]:
                return f"{o['path']}/{o['pattern']}: {n} files, expected {o['files']}"
        else:
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                return f"{o['path']} is missing"
            if size != o["size"]:
                return f"{o['path']} changed size"
    return None


def remove_temp_leftovers(folder: Path, outputs: Sequence[Output]) -> None:
    """Delete temporary files/folders a killed run of this step may have left (``.<stem>.*<suffix>``)."""
    for o in outputs:
        p = folder / o.path
        tmp_dir = p.parent / f".{p.name}.tmp"
        if tmp_dir.is_dir():
            shutil.rmtree(tmp_dir)
        if o.is_dir:
            if p.is_dir():
                suffix = os.path.splitext(o.pattern)[1]
                for n in os.listdir(p):
                    if n.startswith(".") and n.endswith(suffix):
                        (p / n).unlink()
        elif p.parent.is_dir():
            stem, suffix = os.path.splitext(p.name)
            for n in os.listdir(p.parent):
                if n.startswith(f".{stem}.") and n.endswith(suffix) and n != p.name:
                    (p.parent / n).unlink()


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------


@dataclass
class StepStatus:
    """Whether a step is done, and why not."""

    name: str
    done: bool
    reason: str
    fingerprint: str


def step_status(step: Step, ctx: Context, statuses: Dict[str, StepStatus]) -> StepStatus:
    """Status of ``step`` given its dependencies' statuses (a dependency that will run makes it run)."""
    for dep in step.depends:
        if not statuses[dep].done:
            return StepStatus(step.name, False, f"depends on {dep}, which runs", "")
    dep_ids = {dep: (ctx.markers.get(dep) or {}).get("run_id") for dep in step.depends}
    fp = fingerprint(step, ctx, dep_ids)
    marker = read_marker(ctx.folder, step.name)
    if marker is None:
        return StepStatus(step.name, False, "not done yet", fp)
    if marker.get("fingerprint") != fp:
        return StepStatus(step.name, False, "inputs or parameters changed", fp)
    broken = outputs_intact(ctx.folder, marker.get("outputs", []))
    if broken:
        return StepStatus(step.name, False, broken, fp)
    return StepStatus(step.name, True, "done", fp)


@dataclass
class StepRecord:
    """How one step went in :func:`run_steps`."""

    name: str
    ran: bool
    seconds: float
    reason: str


def run_step(step: Step, ctx: Context, fp: str) -> dict:
    """Run one step now and write its marker; returns the marker."""
    marker_file = marker_path(ctx.folder, step.name)
    if marker_file.exists():
        marker_file.unlink()
    outputs = step.outputs(ctx)
    remove_temp_leftovers(ctx.folder, outputs)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = step.run(ctx)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    marker = {
        "format": MARKER_FORMAT, "step": step.name, "fingerprint": fp, "run_id": uuid.uuid4().hex,
        "outputs": describe_outputs(ctx.folder, outputs), "info": result.info, "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(marker_file, marker)
    return marker


def dependants(steps: Sequence[Step], name: str) -> List[str]:
    """Names of the steps that depend on ``name``, directly or through other steps."""
    found: List[str] = []
    for s in steps:
        if any(d == name or d in found for d in s.depends):
            found.append(s.name)
    return found


def check_steps(steps: Sequence[Step], ctx: Context) -> None:
    """Run :meth:`Step.check` of the steps that will run (fail early, before any step runs)."""
    for s, st in zip(steps, plan_statuses(steps, ctx)):
        if not st.done:
            s.check(ctx)


def run_steps(steps: Sequence[Step], ctx: Context,
              on_step: Optional[Callable[[Step, StepStatus], None]] = None) -> List[StepRecord]:
    """Run the steps in order, skipping those that are done. Steps must come after their dependencies."""
    names = [s.name for s in steps]
    for i, s in enumerate(steps):
        missing = [d for d in s.depends if d not in names[:i]]
        if missing:
            raise ValueError(f"step {s.name} depends on {missing}, which do not come before it")
    check_steps(steps, ctx)
    statuses: Dict[str, StepStatus] = {}
    records: List[StepRecord] = []
    for s in steps:
        status = step_status(s, ctx, statuses)
        if status.done:
            ctx.markers[s.name] = read_marker(ctx.folder, s.name)
            statuses[s.name] = status
            records.append(StepRecord(s.name, False, 0.0, "done"))
            logger.debug("step %s: done, skipped", s.name)
            continue
        if not status.fingerprint:  # a dependency ran: compute the fingerprint with its new run_id
            dep_ids = {dep: ctx.markers[dep]["run_id"] for dep in s.depends}
            status.fingerprint = fingerprint(s, ctx, dep_ids)
        logger.debug("step %s: running (%s)", s.name, status.reason)
        for later in dependants(steps, s.name):  # they run again too: never leave them marked done meanwhile
            marker_path(ctx.folder, later).unlink(missing_ok=True)
        if on_step is not None:
            on_step(s, status)
        marker = run_step(s, ctx, status.fingerprint)
        ctx.markers[s.name] = marker
        # not "done" for its dependants: their markers hold the old run_id, so they run too
        statuses[s.name] = StepStatus(s.name, False, "ran", status.fingerprint)
        records.append(StepRecord(s.name, True, marker["seconds"], status.reason))
    return records


def plan_statuses(steps: Sequence[Step], ctx: Context) -> List[StepStatus]:
    """What :func:`run_steps` would do, without running or writing anything."""
    statuses: Dict[str, StepStatus] = {}
    out = []
    for s in steps:
        st = step_status(s, ctx, statuses)
        if st.done:
            ctx.markers[s.name] = read_marker(ctx.folder, s.name)
        statuses[s.name] = st
        out.append(st)
    return out


__all__ = [
    "Context",
    "Output",
    "PreprocessError",
    "Step",
    "StepRecord",
    "StepResult",
    "StepStatus",
    "check_steps",
    "count_files",
    "dependants",
    "digest",
    "marker_path",
    "plan_statuses",
    "read_marker",
    "replace_dir",
    "run_steps",
    "temp_dir_for",
    "write_json",
]

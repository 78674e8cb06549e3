"""Retention: the app's uploads, rendered videos and unfinished uploads do not fill the disk.

:meth:`Retention.sweep` (run when the app starts, after every stored upload and after every finished job)
deletes, never touching what a queued or running job uses:

1. unfinished uploads (``uploads/.<id>.part``) and renders (``static/videos/.<name>``, an atomic write's
   temporary file) untouched for ``stale_part_hours``;
2. uploads (``uploads/<id>.<ext>`` + ``<id>.json``) and rendered videos (``static/videos/<job>.mp4``, the
   chat's ``static/videos/<job>/`` segment folders) older than ``retention_days``;
3. then, while uploads + videos + unfinished uploads take more than ``storage_quota_mb``, the oldest of them
   (by last modification).

Job records are small and kept (a deleted video's job still lists, its video link answers 404).
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Set

log = logging.getLogger(__name__)

_UPLOAD = re.compile(r"^([0-9a-f]{32})(\..*)?$")
_PART = re.compile(r"^\.[0-9a-f]{32}\.part$")
_JOB = re.compile(r"^([0-9a-f]{16})(\..*)?$")


@dataclass
class Item:
    """One deletable unit: an upload with its record, a video or segment folder, or a ``.part`` file."""

    kind: str  # "upload", "video", "part"
    key: str  # upload id, job id, or the .part file name
    paths: List[Path]
    size: int
    mtime: float


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _mtime(path: Path) -> float:
    if path.is_dir():
        return max([path.stat().st_mtime] + [p.stat().st_mtime for p in path.rglob("*")])
    return path.stat().st_mtime


class Retention:
    """Deletes old uploads and videos by age and by a total quota (see the module docstring)."""

    def __init__(self, uploads_dir: Path, videos_dir: Path, retention_days: float, quota_mb: float,
                 stale_part_hours: float = 1.0, in_use: Optional[Callable[[], Set[str]]] = None) -> None:
        self.uploads_dir, self.videos_dir = Path(uploads_dir), Path(videos_dir)
        self.max_age = float(retention_days) * 86400.0
        self.quota = int(float(quota_mb) * 2 ** 20)
        self.part_age = float(stale_part_hours) * 3600.0
        self.in_use = in_use or (lambda: set())
        self._lock = threading.Lock()

    def items(self) -> List[Item]:
        """Everything the sweep may delete, oldest first."""
        groups: dict = {}
        for p in self.uploads_dir.iterdir() if self.uploads_dir.is_dir() else ():
            if _PART.match(p.name):
                groups[("part", p.name)] = [p]
                continue
            m = _UPLOAD.match(p.name)
            if m:
                groups.setdefault(("upload", m.group(1)), []).append(p)
        for p in self.videos_dir.iterdir() if self.videos_dir.is_dir() else ():
            if p.name.startswith(".") and p.is_file():  # an atomic write's temporary file (a render in progress)
                groups[("part", p.name)] = [p]
                continue
            m = _JOB.match(p.name)
            if m:
                groups.setdefault(("video", m.group(1)), []).append(p)
        out = []
        for (kind, key), paths in groups.items():
            try:
                out.append(Item(kind, key, paths, sum(_size(p) for p in paths), max(_mtime(p) for p in paths)))
            except FileNotFoundError:  # removed while we looked (a finishing upload, another sweep)
                continue
        return sorted(out, key=lambda it: it.mtime)

    def sweep(self, now: Optional[float] = None, protect: Iterable[str] = ()) -> List[Item]:
        """Delete what is too old or over the quota; returns the items deleted. Items whose key is in
        ``protect`` (e.g. the upload just stored) or in use by an active job are kept."""
        with self._lock:
            now = time.time() if now is None else float(now)
            busy = set(self.in_use()) | set(protect)
            items = self.items()
            removed: List[Item] = []
            keep: List[Item] = []
            for it in items:
                age = now - it.mtime
                if it.kind == "part":
                    stale = age > self.part_age
                else:
                    stale = self.max_age > 0 and age > self.max_age and it.key not in busy
                (removed if stale else keep).append(it)
            if self.quota > 0:
                total = sum(it.size for it in keep)
                for it in list(keep):  # oldest first
                    if total <= self.quota:
                        break
                    if it.key in busy or (it.kind == "part" and now - it.mtime <= self.part_age):
                        continue  # in use, or an upload still arriving
                    keep.remove(it)
                    removed.append(it)
                    total -= it.size
            for it in removed:
                self._delete(it)
            if removed:
                log.info("retention: deleted %d item(s), %.1f MiB (%s)", len(removed),
                         sum(it.size for it in removed) / 2 ** 20, ", ".join(f"{it.kind} {it.key}" for it in removed))
            return removed

    @staticmethod
    def _delete(item: Item) -> None:
        # The upload's record last: a listing never shows a record whose file is gone half way.
        for p in sorted(item.paths, key=lambda q: q.suffix == ".json"):
            try:
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            except FileNotFoundError:
                pass


def ids_in(texts: Iterable[str]) -> Set[str]:
    """Upload ids (32 hex) and job ids (16 hex) mentioned in ``texts``."""
    found: Set[str] = set()
    for t in texts:
        found.update(re.findall(r"(?<![0-9a-f])([0-9a-f]{32}|[0-9a-f]{16})(?![0-9a-f])", t))
    return found


__all__ = ["Item", "Retention", "ids_in"]

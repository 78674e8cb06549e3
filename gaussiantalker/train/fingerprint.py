"""Which dataset a model folder was trained on: a cheap fingerprint, recorded and checked on resume.

A model folder is found by name (``<workspace>/output/<name>``), and ``train`` resumes from its newest
checkpoint. A second video with the same file stem would therefore continue the first person's model.
``<model>/dataset.json`` records the dataset's path, name and fingerprint when training starts; a later
``train`` into the same folder compares the fingerprint before it resumes, and refuses (naming both
datasets) unless asked to start afresh.

The fingerprint is a SHA-256 over the files that identify a preprocessed video: the camera tracks
(``transforms_train.json``, ``transforms_val.json``), the audio features (``aud_*.npy``), the blinks
(``au.csv``) and the background (``bc.jpg``), each with its size. Files up to :data:`WHOLE` bytes are read
whole; larger ones (HuBERT features of a long video reach hundreds of MB) by their first and last
:data:`SAMPLE` bytes, so the check stays well under a second. ``meta.json`` is left out: it records timings
that change when preprocessing re-runs a step on the same video.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Union

from ..fileio import atomic_write

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
RECORD = "dataset.json"
WHOLE = 32 * 2 ** 20
SAMPLE = 4 * 2 ** 20
_FILES = ("transforms_train.json", "transforms_val.json", "au.csv", "bc.jpg", "aud_ds.npy", "aud_hubert.npy",
          "aud_mfcc.npy", "aud_phonetic.npy")

__all__ = ["DatasetMismatchError", "check_dataset", "dataset_fingerprint", "record_dataset", "discard_training"]


class DatasetMismatchError(ValueError):
    """The model folder holds checkpoints of training on another dataset."""


def dataset_fingerprint(path: PathLike) -> str:
    """``sha256:<hex>`` of the dataset's identifying files (see the module docstring); a missing file counts
    as absent (legacy datasets lack some)."""
    root = Path(path)
    h = hashlib.sha256()
    for name in _FILES:
        f = root / name
        if not f.is_file():
            continue
        size = f.stat().st_size
        h.update(name.encode() + b"\0" + str(size).encode() + b"\0")
        with open(f, "rb") as fh:
            if size <= WHOLE:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            else:
                h.update(fh.read(SAMPLE))
                fh.seek(size - SAMPLE)
                h.update(fh.read(SAMPLE))
    return "sha256:" + h.hexdigest()


def _read_record(model_dir: Path) -> dict | None:
    f = model_dir / RECORD
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{f}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else None


def record_dataset(model_dir: PathLike, dataset: PathLike, fingerprint: str | None = None) -> Path:
    """Write ``<model_dir>/dataset.json`` (path, name, fingerprint of ``dataset``)."""
    ds = Path(dataset).resolve()
    doc = {"path": str(ds), "name": ds.name, "fingerprint": fingerprint or dataset_fingerprint(ds)}
    text = json.dumps(doc, indent=2) + "\n"
    return atomic_write(Path(model_dir) / RECORD, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_dataset(model_dir: PathLike, dataset: PathLike) -> str:
    """Before resuming: the dataset must be the one the checkpoints were trained on. Returns its fingerprint.

    A folder without a record (made before records existed) is trusted and a record is written.

    Raises:
        DatasetMismatchError: another dataset (the message names both and what to do).
    """
    root, ds = Path(model_dir), Path(dataset).resolve()
    fp = dataset_fingerprint(ds)
    rec = _read_record(root)
    if rec is None:
        log.warning("%s has checkpoints but no %s (made by an older version): assuming they were trained on %s",
                    root, RECORD, ds)
        record_dataset(root, ds, fp)
        return fp
    if rec.get("fingerprint") != fp:
        raise DatasetMismatchError(
            f"model {root.name!r} ({root}) holds checkpoints trained on dataset {rec.get('path')!r}, but this "
            f"training uses {str(ds)!r}, a different dataset (fingerprint {fp[7:19]} instead of "
            f"{str(rec.get('fingerprint', ''))[7:19]}): choose another model name (--name), or start this model "
            f"afresh with --fresh (train(..., restart=True)), which deletes its checkpoints and snapshots")
    return fp


def discard_training(model_dir: PathLike) -> list[str]:
    """Delete what a fresh start replaces: checkpoints, snapshots, metrics, training log, dataset record
    (rendered videos stay). Returns the names removed."""
    root = Path(model_dir)
    removed = []
    for name in ("checkpoints", "point_cloud", "metrics.json", "train_log.jsonl", RECORD, "report.html"):
        p = root / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed

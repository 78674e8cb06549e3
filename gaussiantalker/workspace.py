"""The workspace layout (kept from the old wrapper) and safe names.

```
<workspace>/                 default ./GaussianTalker
├── data/<name>/             one preprocessed video
└── output/<name>/           one trained model
```

A ``<name>`` is never a path: it is validated by :func:`validate_name` wherever it enters.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Union

PathLike = Union[str, os.PathLike]

DEFAULT_WORKSPACE = "GaussianTalker"

# Letters, digits, '.', '_', '-'; must start with a letter or digit (so no '.', '..', hidden names).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InvalidNameError(ValueError):
    """A dataset or model name that is not a plain, safe folder name."""


def validate_name(name: str) -> str:
    """Return ``name`` if it is a plain folder name, else raise :class:`InvalidNameError`.

    Refused: empty names, ``.``/``..``, absolute paths, path separators, names starting with ``.`` or
    ``-``, and characters other than letters, digits, ``.``, ``_``, ``-`` (at most 128 characters).
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError("a model/dataset name must be a non-empty string")
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise InvalidNameError(f"invalid name {name!r}: a name is not a path (no '/' or '\\\\')")
    if ".." in name.split(".") or name in (".", ".."):
        raise InvalidNameError(f"invalid name {name!r}: '..' is not allowed")
    if not _NAME.match(name):
        raise InvalidNameError(
            f"invalid name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return name


def name_from_path(path: PathLike) -> str:
    """The default dataset/model name of a video: its file stem, made safe (other characters -> '_')."""
    stem = Path(path).stem
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-")
    return validate_name(safe[:128] or "video")


@dataclass(frozen=True)
class Workspace:
    """Paths inside one workspace folder. Creating the object touches nothing on disk."""

    root: Path

    @classmethod
    def at(cls, root: PathLike = DEFAULT_WORKSPACE) -> "Workspace":
        return cls(Path(root).expanduser())

    def data_dir(self, name: str) -> Path:
        """``<root>/data/<name>``: one preprocessed video."""
        return self.root / "data" / validate_name(name)

    def model_dir(self, name: str) -> Path:
        """``<root>/output/<name>``: one trained model."""
        return self.root / "output" / validate_name(name)

    def datasets(self) -> List[str]:
        """Names of the dataset folders present (sorted)."""
        return _children(self.root / "data")

    def models(self) -> List[str]:
        """Names of the model folders present (sorted)."""
        return _children(self.root / "output")


def _children(folder: Path) -> List[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name))


__all__ = ["DEFAULT_WORKSPACE", "InvalidNameError", "Workspace", "name_from_path", "resolve_model_dir", "validate_name"]


def resolve_model_dir(model, workspace: "PathLike | None" = None) -> Path:
    """A model folder or export file: an existing folder is that folder; a string with a path separator (or
    a path object) is that path; a bare string is a model name inside ``<workspace>/output`` (or an export
    file of that name in the current folder when the workspace has no such model)."""
    p = Path(model).expanduser()
    if p.is_dir() or not isinstance(model, str) or "/" in model or "\\" in model:
        return p
    named = Workspace.at(workspace if workspace is not None else DEFAULT_WORKSPACE).model_dir(validate_name(model))
    # A bare name is the workspace's model; a file of that name here is an export only when there is none.
    return p if p.is_file() and not named.is_dir() else named

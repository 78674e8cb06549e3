"""Where optional pretrained files are looked up.

Nothing is ever downloaded. Every pretrained file is optional: it is found in the asset folder
(``assets=`` argument, else ``$GAUSSIANTALKER_HOME``, else ``~/.cache/gaussiantalker``) under its original
file name, and each step that could use it has an offline default when it is absent.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, os.PathLike]

ENV_VAR = "GAUSSIANTALKER_HOME"


def asset_dir(assets: Optional[PathLike] = None) -> Path:
    """The asset folder: ``assets`` if given, else ``$GAUSSIANTALKER_HOME``, else
    ``~/.cache/gaussiantalker``. The folder need not exist."""
    if assets is not None:
        return Path(assets).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/gaussiantalker").expanduser()


def find_asset(filename: str, assets: Optional[PathLike] = None) -> Optional[Path]:
    """Path of ``filename`` in the asset folder (also looked for one level down, so users may keep
    sub-folders such as ``3DMM/``), or None when it is absent."""
    root = asset_dir(assets)
    direct = root / filename
    if direct.is_file():
        return direct
    if root.is_dir():
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            if (sub / filename).is_file():
                return sub / filename
    return None


def file_digest(path: PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (weights files are hundreds of MB)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()

"""Device strings as users write them: ``GPU0``, ``cuda:1``, ``CPU``, ``auto``."""

from __future__ import annotations

import re
from typing import Union

import torch

_GPU = re.compile(r"^gpu(\d+)$", re.IGNORECASE)


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """Turn a user device spec into a ``torch.device``.

    Accepts ``"auto"``/None (first CUDA device if any, else CPU), ``"CPU"``, ``"GPU<n>"`` (the old wrapper's
    spelling), ``"cuda"``, ``"cuda:<n>"`` and ``torch.device``. Raises ``ValueError`` for an unknown spelling
    or a GPU index that does not exist on this machine.
    """
    if isinstance(device, torch.device):
        spec = str(device)
    elif device is None:
        spec = "auto"
    else:
        spec = str(device).strip()
    low = spec.lower()
    if low == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if low == "cpu":
        return torch.device("cpu")
    m = _GPU.match(low)
    if m:
        index = int(m.group(1))
    elif low == "cuda":
        index = 0
    elif low.startswith("cuda:") and low[5:].isdigit():
        index = int(low[5:])
    else:
        raise ValueError(f"unknown device {spec!r}: use GPU<n>, cuda:<n>, CPU or auto")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        have = f"{count} CUDA device(s)" if count else "no CUDA device"
        raise ValueError(f"device {spec!r} does not exist: this machine has {have} (use --gpu CPU)")
    return torch.device(f"cuda:{index}")

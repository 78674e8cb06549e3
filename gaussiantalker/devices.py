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


BUILD_COMMAND = "pip install --no-build-isolation -e ."
_NATIVE = ("diff_gaussian_rasterization", "simple_knn")


class NativeKernelsError(RuntimeError):
    """The compiled rasterizer / simple-knn lack the kernels a device needs; the message gives the build command."""


def _arch_covers(arch_list, capability) -> bool:
    """Whether kernels compiled for ``arch_list`` (TORCH_CUDA_ARCH_LIST entries such as ``"8.0"``,
    ``"9.0+PTX"``) run on a GPU of compute ``capability`` ``(major, minor)``: the same major version at
    or below its minor (binary compatible), or PTX of an older or equal one (JIT-compiled)."""
    for entry in arch_list:
        text = str(entry).strip()
        ptx = text.upper().endswith("+PTX")
        try:
            major, minor = (int(x) for x in text.upper().replace("+PTX", "").split(".")[:2])
        except ValueError:
            continue
        if (major, minor) <= tuple(capability) and (ptx or major == capability[0]):
            return True
    return False


def check_native_kernels(device: Union[str, torch.device]) -> None:
    """Fail fast when the compiled packages cannot run on ``device`` (before minutes of preprocessing).

    Checks ``diff_gaussian_rasterization.build_info()`` and ``simple_knn.build_info()``: CPU kernels for
    the CPU, CUDA kernels for a CUDA device (compiled for its architecture when the list is known).

    Raises:
        NativeKernelsError: with what is missing and the command that builds it.
    """
    import importlib

    device = torch.device(device)
    need = "cuda" if device.type == "cuda" else "cpu"
    lacking, arch_note = [], ""
    for name in _NATIVE:
        try:
            info = importlib.import_module(name).build_info()
        except ImportError:
            info = {}
        if not info.get(need):
            lacking.append(name)
        elif need == "cuda" and info.get("cuda_arch") and torch.cuda.is_available():
            cap = torch.cuda.get_device_capability(device)
            if not _arch_covers(info["cuda_arch"], cap):
                lacking.append(name)
                arch_note = (f" for this GPU's architecture {cap[0]}.{cap[1]} (built for "
                             f"{';'.join(info['cuda_arch'])}); set TORCH_CUDA_ARCH_LIST={cap[0]}.{cap[1]} and")
    if not lacking:
        return
    names = " and ".join(lacking)
    if need == "cpu":
        raise NativeKernelsError(f"{names} not built (no CPU kernels): build them from the gaussiantalker "
                                 f"source tree with `{BUILD_COMMAND}` (torch first)")
    if arch_note:
        raise NativeKernelsError(f"device {device}: {names} have no CUDA kernels{arch_note} rebuild with "
                                 f"`GT_BUILD_CUDA=1 {BUILD_COMMAND}`")
    raise NativeKernelsError(
        f"device {device}: {names} were built without CUDA kernels (torch {torch.__version__} has CUDA "
        f"{torch.version.cuda}): rebuild with `GT_BUILD_CUDA=1 {BUILD_COMMAND}` (needs the CUDA toolkit's nvcc; "
        f"see the README), or run on the CPU (--gpu CPU)")

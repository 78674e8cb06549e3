"""Loading of the compiled extension. Importing the package never compiles anything: the extension is
built by ``pip install`` and only looked up here, on first use."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict

_CACHE: Dict[str, ModuleType] = {}
_ERRORS: Dict[str, ImportError] = {}

BUILD_HINT = (
    "the native extension `{name}._C` is not built. Build it from the gaussiantalker source tree with\n"
    "    pip install --no-build-isolation -e .\n"
    "(torch must be installed first; CUDA kernels are added when nvcc is found, GT_BUILD_CUDA=0|1 forces it)."
)


class ExtensionNotBuiltError(ImportError):
    """The compiled extension is missing or failed to load."""


def load_extension(package: str) -> ModuleType:
    """Import ``<package>._C`` once, or raise ExtensionNotBuiltError with build instructions."""
    if package in _CACHE:
        return _CACHE[package]
    if package not in _ERRORS:
        try:
            _CACHE[package] = importlib.import_module(f"{package}._C")
            return _CACHE[package]
        except ImportError as exc:
            _ERRORS[package] = exc
    err = _ERRORS[package]
    raise ExtensionNotBuiltError(BUILD_HINT.format(name=package) + f"\n(import error: {err})") from err


def build_info(package: str) -> dict:
    """Which backends the extension was compiled with; all False (plus the error) when it is missing."""
    try:
        ext = load_extension(package)
    except ExtensionNotBuiltError as exc:
        return {"cpu": False, "cuda": False, "cuda_arch": [], "error": str(exc)}
    return parse_build_info(ext.build_info())


def parse_build_info(raw) -> dict:
    """The extension reports ``cuda_arch_list`` as TORCH_CUDA_ARCH_LIST's string; expose it as a list."""
    info = dict(raw)
    info["cuda_arch"] = [a for a in info.pop("cuda_arch_list", "").replace(" ", ";").split(";") if a]
    return info

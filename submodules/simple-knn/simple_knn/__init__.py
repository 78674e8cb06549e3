"""Exact 3-nearest-neighbour distances for initialising Gaussian scales (the `simple_knn` API of 3DGS).

``distCUDA2(points [N, 3]) -> [N]``: the mean of the squared distances from each point to its 3 nearest
other points, on the points' device (CPU or CUDA; the name is kept for compatibility). For N < 4 the mean
is over the N - 1 others and a single point gets 0; duplicate points are at distance 0.
"""

import importlib

import torch

__all__ = ["distCUDA2", "build_info"]

_HINT = (
    "the native extension `simple_knn._C` is not built. Build it from the gaussiantalker source tree with\n"
    "    pip install --no-build-isolation -e .\n"
)


def _ext():
    try:
        return importlib.import_module("simple_knn._C")
    except ImportError as exc:
        raise ImportError(_HINT + f"(import error: {exc})") from exc


def distCUDA2(points: torch.Tensor) -> torch.Tensor:  # noqa: N802 (3DGS API name)
    """Mean squared distance to the 3 nearest neighbours: float32 ``[N, 3]`` -> ``[N]``."""
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be a [N, 3] tensor, got {tuple(getattr(points, 'shape', ()))}")
    return _ext().distCUDA2(points.detach().to(torch.float32))


def build_info() -> dict:
    """Which backends were compiled: ``{"cpu": bool, "cuda": bool, "cuda_arch": [...]}``."""
    try:
        info = dict(_ext().build_info())
    except ImportError as exc:
        return {"cpu": False, "cuda": False, "cuda_arch": [], "error": str(exc)}
    info["cuda_arch"] = [a for a in info.pop("cuda_arch_list", "").replace(" ", ";").split(";") if a]
    return info

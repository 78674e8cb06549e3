"""gaussiantalker's differentiable 3D Gaussian rasterizer (CPU + CUDA), with the 3DGS ecosystem's API.

    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer
    out = GaussianRasterizer(settings)(means3D, means2D, opacities, shs=shs, scales=s, rotations=q)
    out.color, out.radii, out.depth, out.alpha

Extended over the original: a per-pixel background image, depth and alpha outputs whose gradients reach
the inputs, batched rendering of B cameras with B attribute sets in one call, and a CPU backend. The
pure-PyTorch oracle is ``_rasterize_reference``. Importing compiles nothing.
"""

from ._backend import ExtensionNotBuiltError
from ._backend import build_info as _build_info
from ._reference import _rasterize_reference  # noqa: F401  (the tests' oracle, imported from the package)
from ._types import GaussianRasterizationSettings, RasterizeResult
from .cameras import look_at, make_settings, projection_matrix
from .rasterize import GaussianRasterizer, pack_cameras, rasterize_gaussians

__all__ = [
    "ExtensionNotBuiltError",
    "GaussianRasterizationSettings",
    "GaussianRasterizer",
    "RasterizeResult",
    "build_info",
    "look_at",
    "make_settings",
    "projection_matrix",
    "pack_cameras",
    "rasterize_gaussians",
]


def build_info() -> dict:
    """Which backends were compiled: ``{"cpu": bool, "cuda": bool, "cuda_arch": [...], "openmp": bool}``.
    All False (with an ``"error"`` entry) when the extension is not built."""
    return _build_info(__name__)

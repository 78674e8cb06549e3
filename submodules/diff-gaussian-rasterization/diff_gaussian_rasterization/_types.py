"""Settings and result types, and the normalisation of (possibly batched) inputs shared by the native
rasterizer and its pure-PyTorch reference."""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

Number = Union[float, torch.Tensor]


class GaussianRasterizationSettings(NamedTuple):
    """Camera and image settings, as in the 3DGS ecosystem, extended for batches.

    Single camera: ``viewmatrix`` / ``projmatrix`` ``[4, 4]``, ``campos`` ``[3]``. Batch of B cameras:
    ``[B, 4, 4]``, ``[B, 4, 4]``, ``[B, 3]``, and ``tanfovx`` / ``tanfovy`` floats or ``[B]`` tensors.
    Matrices are in row-vector form (``viewmatrix = W2C^T``, ``projmatrix = W2C^T @ P^T``).
    ``bg`` is a colour ``[3]``, an image ``[3, H, W]`` or, for a batch, ``[B, 3, H, W]``.
    """

    image_height: int
    image_width: int
    tanfovx: Number
    tanfovy: Number
    bg: torch.Tensor
    scale_modifier: float
    viewmatrix: torch.Tensor
    projmatrix: torch.Tensor
    sh_degree: int
    campos: torch.Tensor
    prefiltered: bool
    debug: bool = False


class RasterizeResult(NamedTuple):
    """What the rasterizer returns. Single camera: ``color [3, H, W]``, ``radii [N]`` (int32, 0 = not
    rendered), ``depth [1, H, W]`` (alpha-weighted view-space z, not normalised), ``alpha [1, H, W]``.
    Batched: the same with a leading ``B``."""

    color: torch.Tensor
    radii: torch.Tensor
    depth: torch.Tensor
    alpha: torch.Tensor


class Batch(NamedTuple):
    """Inputs normalised to a batch of B cameras with per-camera attributes (float32 or float64)."""

    batched: bool
    B: int
    N: int
    means3D: torch.Tensor  # [B, N, 3]
    means2D: Optional[torch.Tensor]  # [B, N, 3]
    opacities: torch.Tensor  # [B, N, 1]
    shs: Optional[torch.Tensor]  # [B, N, K, 3]
    colors: Optional[torch.Tensor]  # [B, N, 3]
    scales: Optional[torch.Tensor]  # [B, N, 3]
    rotations: Optional[torch.Tensor]  # [B, N, 4]
    cov3D: Optional[torch.Tensor]  # [B, N, 6]
    bg: torch.Tensor  # [B, 3, H, W]
    viewmatrix: torch.Tensor  # [B, 4, 4]
    projmatrix: torch.Tensor  # [B, 4, 4]
    campos: torch.Tensor  # [B, 3]
    tanfov: torch.Tensor  # [B, 2]


def _fail(name: str, expected: str, t: torch.Tensor) -> None:
    raise ValueError(f"{name} must have shape {expected}, got {tuple(t.shape)}")


def _per_camera(name: str, t: Optional[torch.Tensor], B: int, N: int, tail: tuple, batched: bool):
    """Accept ``[N, *tail]`` (shared by all cameras) or, when batched, ``[B, N, *tail]``."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    want = (N,) + tail
    expected = f"[N{''.join(', ' + str(d) for d in tail)}]"
    if tuple(t.shape) == want:
        return t.unsqueeze(0).expand(B, *want)
    if batched and tuple(t.shape) == (B,) + want:
        return t
    if batched:
        expected += f" or [B, N{''.join(', ' + str(d) for d in tail)}] with B={B}"
    _fail(name, expected, t)
    return None


def _scalar_per_camera(name: str, v: Number, B: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        return t.expand(B)
    if tuple(t.shape) != (B,):
        _fail(name, f"a number or [B] with B={B}", t)
    return t


def normalize_inputs(
    settings: GaussianRasterizationSettings,
    means3D: torch.Tensor,
    means2D: Optional[torch.Tensor],
    opacities: torch.Tensor,
    shs: Optional[torch.Tensor],
    colors_precomp: Optional[torch.Tensor],
    scales: Optional[torch.Tensor],
    rotations: Optional[torch.Tensor],
    cov3D_precomp: Optional[torch.Tensor],
) -> Batch:
    """Check shapes (ValueError naming the argument) and bring everything to the batched layout."""
    view = settings.viewmatrix
    if not isinstance(view, torch.Tensor) or view.shape[-2:] != (4, 4) or view.dim() not in (2, 3):
        raise ValueError(f"viewmatrix must have shape [4, 4] or [B, 4, 4], got {tuple(getattr(view, 'shape', ()))}")
    batched = view.dim() == 3
    B = view.shape[0] if batched else 1
    if not isinstance(means3D, torch.Tensor) or means3D.shape[-1:] != (3,) or means3D.dim() not in (2, 3):
        _fail("means3D", "[N, 3] or [B, N, 3]", means3D)
    if means3D.dim() == 3 and not batched:
        raise ValueError(
            f"means3D has a batch dimension {tuple(means3D.shape)} but viewmatrix is a single [4, 4] camera; "
            "pass [B, 4, 4] view/projection matrices for a batch"
        )
    N = means3D.shape[-2]
    if (shs is None) == (colors_precomp is None):
        raise ValueError("give exactly one of shs and colors_precomp")
    if cov3D_precomp is None and (scales is None or rotations is None):
        raise ValueError("give cov3D_precomp, or both scales and rotations")
    if cov3D_precomp is not None and (scales is not None or rotations is not None):
        raise ValueError("give cov3D_precomp or scales/rotations, not both")
    proj = settings.projmatrix
    if tuple(proj.shape) != tuple(view.shape):
        _fail("projmatrix", str(list(view.shape)), proj)
    campos = settings.campos
    if tuple(campos.shape) != ((B, 3) if batched else (3,)):
        _fail("campos", "[B, 3]" if batched else "[3]", campos)
    H, W = int(settings.image_height), int(settings.image_width)
    if H <= 0 or W <= 0:
        raise ValueError(f"image size must be positive, got {H}x{W}")

    m3 = means3D if means3D.dim() == 3 else _per_camera("means3D", means3D, B, N, (3,), batched)
    k_sh = None
    if shs is not None:
        if shs.dim() not in (3, 4) or shs.shape[-1] != 3:
            _fail("shs", "[N, K, 3] or [B, N, K, 3]", shs)
        k_sh = shs.shape[-2]
        need = (int(settings.sh_degree) + 1) ** 2
        if not 0 <= int(settings.sh_degree) <= 3 or k_sh < need:
            raise ValueError(f"sh_degree {settings.sh_degree} needs 0..3 and at least {need} coefficients, shs has {k_sh}")
    bg = settings.bg
    if bg.dim() == 1 and bg.shape[0] == 3:
        bgB = bg.view(1, 3, 1, 1).expand(B, 3, H, W)
    elif tuple(bg.shape) == (3, H, W):
        bgB = bg.unsqueeze(0).expand(B, 3, H, W)
    elif batched and tuple(bg.shape) == (B, 3, H, W):
        bgB = bg
    else:
        raise ValueError(f"bg must have shape [3], [3, {H}, {W}]" + (f" or [{B}, 3, {H}, {W}]" if batched else "")
                         + f", got {tuple(bg.shape)}")
    tanx = _scalar_per_camera("tanfovx", settings.tanfovx, B, view)
    tany = _scalar_per_camera("tanfovy", settings.tanfovy, B, view)
    return Batch(
        batched=batched,
        B=B,
        N=N,
        means3D=m3,
        means2D=_per_camera("means2D", means2D, B, N, (3,), batched),
        opacities=_per_camera("opacities", opacities, B, N, (1,), batched),
        shs=_per_camera("shs", shs, B, N, (k_sh, 3), batched) if shs is not None else None,
        colors=_per_camera("colors_precomp", colors_precomp, B, N, (3,), batched),
        scales=_per_camera("scales", scales, B, N, (3,), batched),
        rotations=_per_camera("rotations", rotations, B, N, (4,), batched),
        cov3D=_per_camera("cov3D_precomp", cov3D_precomp, B, N, (6,), batched),
        bg=bgB,
        viewmatrix=view if batched else view.unsqueeze(0),
        projmatrix=proj if batched else proj.unsqueeze(0),
        campos=campos if batched else campos.unsqueeze(0),
        tanfov=torch.stack([tanx, tany], dim=-1),
    )


def unbatch(result: RasterizeResult, batched: bool) -> RasterizeResult:
    if batched:
        return result
    return RasterizeResult(*(t[0] for t in result))

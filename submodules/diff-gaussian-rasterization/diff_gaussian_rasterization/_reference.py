"""Pure-PyTorch dense reference of the rasterizer: the oracle the kernels are tested against.

No tiles, no sorting tricks, no hand-written derivatives: every Gaussian is evaluated at every pixel and
autograd does the backward pass. Slow (memory grows as pixels x Gaussians) and obviously correct. It keeps
the kernels' discrete rules exactly: the culling rule (near plane, non-finite input, a 2D covariance that is
not positive definite, radius, empty tile rectangle), the 1/255 alpha skip, the 0.99 clamp and the 1e-4
transmittance stop. Works in float32 and float64 (for gradcheck).

The constants below are the kernels' (csrc/rasterize_math.h); the extension reports its own through
``_C.constants()`` and a test ties the two, so they cannot drift apart.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._types import Batch, GaussianRasterizationSettings, RasterizeResult, normalize_inputs, unbatch

TILE = 16
NEAR_CULL = 0.2
LOW_PASS = 0.3
MAX_ALPHA = 0.99
MIN_ALPHA = 1.0 / 255.0
MIN_T = 1e-4
FRUSTUM_GUARD = 1.3
NDC_EPS = 1e-7
MAX_RADIUS = 2.0 ** 24

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)


def _quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """[N, 4] (w, x, y, z, used as given) -> [N, 3, 3]."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def _compute_cov3d(scales: torch.Tensor, rotations: torch.Tensor, modifier: float) -> torch.Tensor:
    """Sigma = R S S^T R^T: [N, 3], [N, 4] -> [N, 3, 3]."""
    M = _quat_to_rotmat(rotations) * (scales * modifier).unsqueeze(-2)
    return M @ M.transpose(-1, -2)


def _sym_from_upper(c: torch.Tensor) -> torch.Tensor:
    """[N, 6] upper triangle (xx, xy, xz, yy, yz, zz) -> [N, 3, 3]."""
    xx, xy, xz, yy, yz, zz = c.unbind(-1)
    return torch.stack([xx, xy, xz, xy, yy, yz, xz, yz, zz], dim=-1).reshape(*c.shape[:-1], 3, 3)


def _project_cov2d(t: torch.Tensor, cov3d: torch.Tensor, view: torch.Tensor, fx, fy, tanx, tany) -> torch.Tensor:
    """EWA: view-space means [N, 3], Sigma [N, 3, 3] -> 2D covariance [N, 2, 2] with the low-pass added."""
    tz = t[:, 2]
    cx = torch.clamp(t[:, 0] / tz, -FRUSTUM_GUARD * tanx, FRUSTUM_GUARD * tanx)
    cy = torch.clamp(t[:, 1] / tz, -FRUSTUM_GUARD * tany, FRUSTUM_GUARD * tany)
    tx, ty = cx * tz, cy * tz
    zero = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zero, -fx * tx / (tz * tz), zero, fy / tz, -fy * ty / (tz * tz)], dim=-1)
    J = J.reshape(-1, 2, 3)
    Wr = view[:3, :3].transpose(0, 1)  # rotation of world-to-camera (view is in row-vector form)
    T = J @ Wr
    cov2 = T @ cov3d @ T.transpose(-1, -2)
    return cov2 + LOW_PASS * torch.eye(2, dtype=t.dtype, device=t.device)


def _sh_basis(deg: int, d: torch.Tensor) -> torch.Tensor:
    """Real SH basis of the 3DGS convention at unit directions [N, 3] -> [N, (deg+1)^2]."""
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if deg >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if deg >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * xz, SH_C2[4] * (xx - yy)]
    if deg >= 3:
        out += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * xy * z, SH_C3[2] * y * (4 * zz - xx - yy),
                SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


def _sh_to_color(deg: int, shs: torch.Tensor, means3D: torch.Tensor, campos: torch.Tensor) -> torch.Tensor:
    """[N, K, 3] coefficients seen from campos -> RGB [N, 3], SH(d) + 0.5 clamped at 0."""
    v = means3D - campos
    d = v / v.norm(dim=-1, keepdim=True)
    Y = _sh_basis(deg, d)
    rgb = (Y.unsqueeze(-1) * shs[:, : Y.shape[-1]]).sum(-2) + 0.5
    return torch.clamp_min(rgb, 0.0)


def _tile_rect(pix: torch.Tensor, radius: torch.Tensor, gx: int, gy: int):
    """Tile rectangle [min, max) per Gaussian, clamped to the grid (the kernels' culling)."""
    r = radius.to(pix.dtype)
    lo = torch.stack([torch.floor((pix[:, 0] - r) / TILE).clamp(0, gx), torch.floor((pix[:, 1] - r) / TILE).clamp(0, gy)], -1)
    hi = torch.stack([torch.floor((pix[:, 0] + r + TILE - 1) / TILE).clamp(0, gx),
                      torch.floor((pix[:, 1] + r + TILE - 1) / TILE).clamp(0, gy)], -1)
    return lo.long(), hi.long()


def _render_camera(b: Batch, k: int, H: int, W: int, sh_degree: int, modifier: float, prefiltered: bool):
    """Dense rendering of camera k of the batch. Returns color [3,H,W], radii [N], depth [1,H,W], alpha."""
    view, proj, campos = b.viewmatrix[k], b.projmatrix[k], b.campos[k]
    tanx, tany = b.tanfov[k, 0], b.tanfov[k, 1]
    N = b.means3D.shape[1]
    dt, dev = b.means3D.dtype, b.means3D.device
    # Rows with a non-finite input are culled. They are replaced by harmless values before any arithmetic,
    # so that no NaN reaches autograd (a masked NaN still poisons the backward pass: 0 * NaN = NaN).
    n_sh = (sh_degree + 1) ** 2
    attrs = {"means3D": b.means3D[k], "opacities": b.opacities[k],
             "scales": None if b.scales is None else b.scales[k],
             "rotations": None if b.rotations is None else b.rotations[k],
             "cov3D": None if b.cov3D is None else b.cov3D[k],
             "colors": None if b.colors is None else b.colors[k],
             "shs": None if b.shs is None else b.shs[k]}
    with torch.no_grad():
        finite = torch.ones(N, dtype=torch.bool, device=dev)
        for name, x in attrs.items():
            if x is not None and not (name in ("scales", "rotations") and b.cov3D is not None):
                x = x[:, :n_sh] if name == "shs" else x
                finite &= torch.isfinite(x).flatten(1).all(-1)
    harmless = {"means3D": 0.0, "opacities": 0.5, "scales": 1.0, "rotations": 0.5, "cov3D": 1.0, "colors": 0.0,
                "shs": 0.0}
    a_ = {n: None if x is None else torch.where(finite.view(-1, *([1] * (x.dim() - 1))), x,
                                                torch.full_like(x, harmless[n]))
          for n, x in attrs.items()}
    means3D = a_["means3D"]
    fx, fy = W / (2 * tanx), H / (2 * tany)

    ph = torch.cat([means3D, torch.ones_like(means3D[:, :1])], dim=-1)
    t = ph @ view[:, :3]
    hom = ph @ proj
    ndc = hom[:, :2] / (hom[:, 3:4] + NDC_EPS)
    if b.means2D is not None:
        ndc = ndc + b.means2D[k][:, :2]  # the screen-space gradient hook
    pix = ((ndc + 1) * torch.tensor([W, H], dtype=dt, device=dev) - 1) * 0.5

    cov3d = (_sym_from_upper(a_["cov3D"]) if b.cov3D is not None
             else _compute_cov3d(a_["scales"], a_["rotations"], modifier))
    # Finite scales can still overflow the covariance (the kernels then see a non-finite 2D covariance).
    with torch.no_grad():
        finite_cov = torch.isfinite(cov3d).flatten(1).all(-1)
        finite = finite & finite_cov
    cov3d = torch.where(finite_cov.view(-1, 1, 1), cov3d, torch.eye(3, dtype=dt, device=dev).expand_as(cov3d))
    # Culled Gaussians still go through the math (masked out below); keep their z away from 0.
    visible_z = finite & torch.isfinite(t).all(-1) & ((t[:, 2] > NEAR_CULL) | prefiltered)
    t_safe = torch.where(visible_z.unsqueeze(-1), t, torch.ones_like(t))
    cov2 = _project_cov2d(t_safe, cov3d, view, fx, fy, tanx, tany)
    a, bb, c = cov2[:, 0, 0], cov2[:, 0, 1], cov2[:, 1, 1]
    det = a * c - bb * bb
    pos_def = (det > 0) & (a > 0)
    det_safe = torch.where(pos_def, det, torch.ones_like(det))
    conA, conB, conC = c / det_safe, -bb / det_safe, a / det_safe

    with torch.no_grad():
        mid = 0.5 * (a + c)
        disc = torch.sqrt(torch.clamp_min(mid * mid - det, 0.1))
        radius = torch.ceil(3 * torch.sqrt(torch.maximum(mid + disc, mid - disc)))
        radius = torch.where(radius > MAX_RADIUS, torch.full_like(radius, MAX_RADIUS), radius)
        finite_2d = (torch.isfinite(pix).all(-1) & torch.isfinite(conA) & torch.isfinite(conB)
                     & torch.isfinite(conC))
        ok = visible_z & pos_def & (radius > 0) & finite_2d
        gx, gy = (W + TILE - 1) // TILE, (H + TILE - 1) // TILE
        lo, hi = _tile_rect(torch.where(ok.unsqueeze(-1), pix.detach(), torch.zeros_like(pix)),
                            torch.where(ok, radius, torch.zeros_like(radius)), gx, gy)
        # both extents positive (two negative extents would make a positive area)
        valid = ok & (hi[:, 0] > lo[:, 0]) & (hi[:, 1] > lo[:, 1])
        radii = torch.where(valid, radius, torch.zeros_like(radius)).to(torch.int32)
    # Culled rows: a zero conic and mean keep exp(power) finite there (an inf would poison the backward pass).
    pix = torch.where(valid.unsqueeze(-1), pix, torch.zeros_like(pix))
    conA, conB, conC = (torch.where(valid, x, torch.zeros_like(x)) for x in (conA, conB, conC))

    if b.colors is not None:
        rgb = a_["colors"]
    else:
        rgb = _sh_to_color(sh_degree, a_["shs"], means3D, campos)
        # The kernels test the SH sum before the clamp (non-finite exactly when a coefficient is, or on overflow).
        with torch.no_grad():
            d = means3D - campos
            raw = (_sh_basis(sh_degree, d / d.norm(dim=-1, keepdim=True)).unsqueeze(-1)
                   * b.shs[k][:, :n_sh]).sum(-2)
            valid = valid & torch.isfinite(raw).all(-1)
            radii = torch.where(valid, radii, torch.zeros_like(radii))
        rgb = torch.where(valid.unsqueeze(-1), rgb, torch.zeros_like(rgb))

    # Dense per-pixel evaluation: [P, N]
    ys, xs = torch.meshgrid(torch.arange(H, device=dev), torch.arange(W, device=dev), indexing="ij")
    px, py = xs.reshape(-1, 1).to(dt), ys.reshape(-1, 1).to(dt)
    dx, dy = pix[:, 0].unsqueeze(0) - px, pix[:, 1].unsqueeze(0) - py
    power = -0.5 * (conA * dx * dx + conC * dy * dy) - conB * dx * dy
    alpha = torch.minimum(a_["opacities"][:, 0] * torch.exp(power), torch.tensor(MAX_ALPHA, dtype=dt, device=dev))
    with torch.no_grad():
        ptx, pty = (xs.reshape(-1, 1) // TILE), (ys.reshape(-1, 1) // TILE)
        in_rect = (ptx >= lo[:, 0]) & (ptx < hi[:, 0]) & (pty >= lo[:, 1]) & (pty < hi[:, 1])
        keep = valid.unsqueeze(0) & in_rect & (power <= 0) & (alpha >= MIN_ALPHA)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))

    # Front to back by view depth (stable: ties keep index order), then the transmittance stop rule.
    order = torch.sort(t[:, 2].detach(), stable=True).indices
    alpha = alpha[:, order]
    one_minus = 1 - alpha
    T_excl = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), one_minus[:, :-1]], dim=1), dim=1)
    with torch.no_grad():
        stopped = torch.cummax(((T_excl * one_minus) < MIN_T).to(torch.int8), dim=1).values.bool()
    alpha = torch.where(stopped, torch.zeros_like(alpha), alpha)
    T_excl = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), (1 - alpha)[:, :-1]], dim=1), dim=1)
    weights = alpha * T_excl  # [P, N]
    T_final = torch.prod(1 - alpha, dim=1) if N > 0 else torch.ones(H * W, dtype=dt, device=dev)

    color = weights @ rgb[order] + T_final.unsqueeze(-1) * b.bg[k].reshape(3, -1).transpose(0, 1)
    depth = weights @ t[order, 2]
    return (color.transpose(0, 1).reshape(3, H, W), radii, depth.reshape(1, H, W),
            (1 - T_final).reshape(1, H, W))


def _rasterize_reference(
    settings: GaussianRasterizationSettings,
    means3D: torch.Tensor,
    opacities: torch.Tensor,
    means2D: Optional[torch.Tensor] = None,
    shs: Optional[torch.Tensor] = None,
    colors_precomp: Optional[torch.Tensor] = None,
    scales: Optional[torch.Tensor] = None,
    rotations: Optional[torch.Tensor] = None,
    cov3D_precomp: Optional[torch.Tensor] = None,
) -> RasterizeResult:
    """Pure-PyTorch twin of :func:`rasterize_gaussians` (same arguments, same results, autograd backward)."""
    b = normalize_inputs(settings, means3D, means2D, opacities, shs, colors_precomp, scales, rotations,
                         cov3D_precomp)
    H, W = int(settings.image_height), int(settings.image_width)
    outs = [_render_camera(b, k, H, W, int(settings.sh_degree), float(settings.scale_modifier),
                           bool(settings.prefiltered)) for k in range(b.B)]
    color, radii, depth, alpha = (torch.stack(x) for x in zip(*outs))
    return unbatch(RasterizeResult(color, radii, depth, alpha), b.batched)

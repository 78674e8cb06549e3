"""Parity of the kernels on the scenes that reach the risky code paths: more than 1000 Gaussians in one tile
(multi-pass shared-memory loading and the backward's multi-pass loop), saturated pixels (the early exit),
`scale_modifier != 1`, `prefiltered`, non-contiguous inputs, a batch of 128 cameras and 1M Gaussians.

Every scene runs on the CPU kernels against the dense PyTorch twin (always, so CI exercises the scene code)
and, under the `gpu` marker, on the CUDA kernels against both. Forward outputs are compared per pixel and
gradients per Gaussian (a relative norm over the whole tensor would hide a few wrong rows). Pixels where a
discrete test of the compositing could flip with float rounding (an alpha or a transmittance within 1e-4
relative of the 1/255 skip or the 1e-4 stop; FMA contraction on the GPU moves the last bits of the power and
so of alpha) are masked out of both the comparison and the loss. (An absolute 1e-5 band around 1/255 would be
0.25% of the threshold, far wider than float rounding, and masks two thirds of the crowded tile.)
"""

from __future__ import annotations

import pytest
import torch
from _raster_scenes import batch_cameras, camera, head_scene, random_scene

from diff_gaussian_rasterization import _rasterize_reference, rasterize_gaussians
from diff_gaussian_rasterization import _reference as ref

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
ATOL_IMAGE = 1e-4
OUTPUTS = ("color", "depth", "alpha")


def _to(st, kw, device):
    st = st._replace(bg=st.bg.to(device), viewmatrix=st.viewmatrix.to(device), projmatrix=st.projmatrix.to(device),
                     campos=st.campos.to(device))
    return st, {k: v.to(device) for k, v in kw.items()}


def _kw(sc, deg=3):
    return {"means3D": sc.means3D, "opacities": sc.opacities, "shs": sc.shs[:, : (deg + 1) ** 2].contiguous(),
            "scales": sc.scales, "rotations": sc.rotations}


def _stable_mask(st, kw, eps=1e-4):
    """[B or 1, 1, H, W] True where no discrete compositing decision sits within a relative `eps` of its
    threshold: the twin is rendered with the 1/255 alpha skip and the 1e-4 stop both scaled by 1 - eps and
    1 + eps, and the pixels that change are masked."""
    outs = []
    saved = ref.MIN_ALPHA, ref.MIN_T
    try:
        for s in (-1, 1):
            ref.MIN_ALPHA, ref.MIN_T = saved[0] * (1 + s * eps), saved[1] * (1 + s * eps)
            with torch.no_grad():
                outs.append(_rasterize_reference(st, **kw))
    finally:
        ref.MIN_ALPHA, ref.MIN_T = saved
    same = None
    for name in OUTPUTS:
        a, b = getattr(outs[0], name), getattr(outs[1], name)
        eq = (a == b).all(dim=-3, keepdim=True)
        same = eq if same is None else same & eq
    return same, outs[0]


def _run(fn, st, kw, cot, mask):
    """Outputs and gradients of every input under the cotangents `cot` (zero where `mask` is False)."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in kw.items()}
    means2D = torch.zeros_like(kw["means3D"]).requires_grad_()
    bg = st.bg.detach().clone().requires_grad_()
    out = fn(st._replace(bg=bg), means2D=means2D, **leaves)
    m = mask.to(out.color.device).to(out.color.dtype)
    loss = sum((getattr(out, n) * cot[n].to(out.color.device) * m).sum() for n in OUTPUTS)
    loss.backward()
    grads = {k: v.grad.detach().cpu() for k, v in leaves.items()}
    grads["means2D"] = means2D.grad.detach().cpu()
    return out, grads


def _cotangents(out, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(getattr(out, n).shape, generator=g) for n in OUTPUTS}


def _compare(out, grads, out_r, grads_r, mask, what, rtol=2e-3, atol_frac=2e-4, max_bad_rows=0, forward=True):
    """Forward per pixel (where `mask`), gradients per Gaussian: row i is right when
    max|a_i - r_i| <= rtol * max|r_i| + atol_frac * max over all rows |r| (the absolute part is the float32
    noise of sums over many pixels)."""
    m = mask.cpu()
    for name in OUTPUTS if forward else ():
        a, r = getattr(out, name).detach().cpu(), getattr(out_r, name).detach().cpu()
        err = ((a - r).abs() * m).max().item() if a.numel() else 0.0
        assert err <= ATOL_IMAGE, f"{what}: {name} differs by {err} at a stable pixel"
    for k, r in grads_r.items():
        a = grads[k]
        B_rows = r.reshape(-1, r.shape[-1]) if k != "shs" else r.reshape(-1, r.shape[-2] * r.shape[-1])
        A_rows = a.reshape(B_rows.shape)
        scale = B_rows.abs().max().item()
        if scale == 0:
            assert A_rows.abs().max().item() == 0, f"{what}: {k} should be zero"
            continue
        bound = rtol * B_rows.abs().amax(-1) + atol_frac * scale
        bad = ((A_rows - B_rows).abs().amax(-1) > bound).nonzero().flatten()
        assert torch.isfinite(A_rows).all(), f"{what}: non-finite gradient of {k}"
        assert bad.numel() <= max_bad_rows, (
            f"{what}: {k} wrong in {bad.numel()} of {B_rows.shape[0]} rows, e.g. row {bad[0].item()}: "
            f"{A_rows[bad[0]].tolist()} vs {B_rows[bad[0]].tolist()}")


def _check(device, st, kw, seed=0):
    """The kernels of `device` against the twin (and, for CUDA, against the CPU kernels)."""
    mask, shapes = _stable_mask(st, kw)
    assert mask.float().mean() > 0.75, "the scene has too many near-threshold pixels to be a fair test"
    cot = _cotangents(shapes, seed)
    out_r, g_r = _run(_rasterize_reference, st, kw, cot, mask)
    s, k = _to(st, kw, device)
    out, g = _run(rasterize_gaussians, s, k, cot, mask)
    assert torch.equal(out.radii.cpu(), out_r.radii), "radii differ"
    _compare(out, g, out_r, g_r, mask, f"{device} vs twin")
    if device != "cpu":
        out_c, g_c = _run(rasterize_gaussians, st, kw, cot, mask)
        _compare(out, g, out_c, g_c, mask, f"{device} vs cpu")
    return out, g


# ---------------------------------------------------------------------------------------------------
def _crowded_tile_scene(n=1500, seed=11):
    """`n` faint Gaussians in front of the camera whose splats each cover the whole 32x32 image (4 tiles), so
    every tile's list holds all of them, and faint enough that pixels stay unsaturated for ~1000 of them."""
    sc = random_scene(n, seed=seed, spread=0.02, scale_range=(0.35, 0.45), opacity_range=(0.005, 0.012))
    sc.means3D[:, 2] += torch.linspace(-0.5, 0.5, n)  # distinct depths
    return sc


@pytest.mark.parametrize("device", DEVICES)
def test_more_than_1000_gaussians_in_one_tile(device):
    sc = _crowded_tile_scene()
    st = camera(32, 32, fovx_deg=30.0)
    out, g = _check(device, st, _kw(sc))
    assert (out.radii > 20).sum() > 1000, "the scene must put > 1000 splats over every tile"
    # far more than one shared-memory batch (256) of each tile's list contributes to the pixels
    assert (g["opacities"] != 0).sum() > 1000


@pytest.mark.parametrize("device", DEVICES)
def test_saturated_pixels(device):
    # (opacities stay below the 0.99 clamp: two clamped layers put T exactly on the 1e-4 stop)
    sc = random_scene(600, seed=12, spread=0.3, scale_range=(0.15, 0.4), opacity_range=(0.7, 0.95))
    st = camera(40, 48)
    out, _ = _check(device, st, _kw(sc))
    assert (out.alpha > 1 - 1.5e-4).float().mean() > 0.3, "most pixels should reach the transmittance stop"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("modifier", [0.6, 1.7])
def test_scale_modifier(device, modifier):
    sc = random_scene(250, seed=13)
    st = camera(37, 45)._replace(scale_modifier=modifier)
    _check(device, st, _kw(sc))


@pytest.mark.parametrize("device", DEVICES)
def test_prefiltered(device):
    sc = random_scene(250, seed=14)
    sc.means3D[:20, 2] = -2.88  # view z 0.12: inside the near cull distance, drawn only when prefiltered
    st = camera(33, 41)._replace(prefiltered=True)
    out, _ = _check(device, st, _kw(sc))
    assert (out.radii[:20] > 0).any(), "prefiltered must skip the near cull"


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    sc = random_scene(200, seed=15)
    kw = _kw(sc)
    views = {k: v.transpose(0, -1).contiguous().transpose(0, -1) for k, v in kw.items()}
    # slices of larger tensors
    views["shs"] = torch.cat([kw["shs"], kw["shs"]], dim=1)[:, :16]
    views["opacities"] = torch.cat([kw["opacities"], kw["opacities"]], dim=1)[:, :1]
    assert not any(v.is_contiguous() for v in views.values())
    st = camera(30, 38)
    a, _ = _check(device, st, views)
    s, k = _to(st, kw, device)
    assert torch.equal(a.color, rasterize_gaussians(s, **k).color)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_of_128_cameras(device):
    B, H, W = 128, 16, 20
    st = batch_cameras(B, H, W, seed=16)
    sc = random_scene(100, seed=17)
    kw = _kw(sc, deg=1)
    st = st._replace(sh_degree=1)
    out, _ = _check(device, st, kw)
    assert out.color.shape == (B, 3, H, W)


@pytest.mark.parametrize("device", DEVICES)
def test_million_gaussians_sampled_pixels(device):
    """1M Gaussians at 512x512 on the GPU against the CPU kernels (the twin cannot hold it): forward on
    sampled pixels, gradients of a loss on those pixels per Gaussian. The CPU variant runs the same scene code
    at 3,000 Gaussians and 64x64 against the twin."""
    n, size = (1_000_000, 512) if device == "cuda" else (3000, 64)
    sc = head_scene(n, seed=18)
    st = camera(size, size, eye=(0.0, 0.0, -2.6), fovx_deg=45.0)
    kw = _kw(sc)
    g = torch.Generator().manual_seed(5)
    sample = torch.zeros(1, size, size, dtype=torch.bool)
    sample.view(-1)[torch.randperm(size * size, generator=g)[:4096]] = True
    if device == "cpu":
        _check("cpu", st, kw)
        return
    out_c = rasterize_gaussians(st, **kw)
    cot = _cotangents(out_c, seed=6)
    out_c, g_c = _run(rasterize_gaussians, st, kw, cot, sample)
    s, k = _to(st, kw, device)
    out, g_d = _run(rasterize_gaussians, s, k, cot, sample)
    # No twin to find the near-threshold pixels: allow a few of the 4096 sampled pixels and rows to differ.
    for name in OUTPUTS:
        d = (getattr(out, name).detach().cpu() - getattr(out_c, name).detach()).abs()[:, sample[0]]
        assert (d > ATOL_IMAGE).float().mean() < 2e-3 and d.max() < 5e-3, f"{name}: max diff {d.max()}"
    _compare(out, g_d, out_c, g_c, sample, "cuda vs cpu (1M)", max_bad_rows=n // 1000, forward=False)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_shared_and_per_camera_attributes(device):
    """Shared attributes ([N, ...]) are read by every camera without a B-fold copy and get their gradient summed
    over the cameras; mixed with per-camera ones ([B, N, ...]) they equal the all-per-camera call."""
    B, H, W = 3, 26, 30
    st = batch_cameras(B, H, W, seed=19)
    sc = random_scene(120, seed=20)
    kw = _kw(sc)
    g = torch.Generator().manual_seed(21)
    kw["means3D"] = sc.means3D + 0.02 * torch.randn(B, *sc.means3D.shape, generator=g)  # per camera
    kw["opacities"] = sc.opacities.expand(B, -1, -1).clone()  # per camera (same values)
    _check(device, st, kw)
    full = {k: (v if v.dim() == kw["means3D"].dim() else v.expand(B, *v.shape).clone()) for k, v in kw.items()}
    s, k_mixed = _to(st, kw, device)
    _, k_full = _to(st, full, device)
    a, b = rasterize_gaussians(s, **k_mixed), rasterize_gaussians(s, **k_full)
    assert torch.equal(a.color, b.color) and torch.equal(a.radii, b.radii)


def test_opacity_aware_tiles_list_fewer_entries_and_draw_the_same_pixels():
    """Tile lists hold the splats whose alpha >= 1/255 ellipse reaches the tile, not the whole 3-sigma square."""
    from diff_gaussian_rasterization import pack_cameras
    from diff_gaussian_rasterization._backend import load_extension

    sc = head_scene(2500, seed=22)
    sc.scales = sc.scales * 3  # splats over several tiles
    sc.opacities = sc.opacities * 0.1  # faint: their alpha >= 1/255 ellipse is well inside 3 sigma
    st = camera(96, 96, eye=(0.0, 0.0, -2.6), fovx_deg=45.0)
    cams = pack_cameras(st.viewmatrix[None], st.projmatrix[None], st.campos[None],
                        torch.tensor([[st.tanfovx, st.tanfovy]]))
    e = torch.empty(0)
    _, _, _, radii, state = load_extension("diff_gaussian_rasterization").rasterize_fwd(
        sc.means3D, sc.shs, e, sc.opacities, sc.scales, sc.rotations, e, st.bg.view(1, 3, 1, 1).expand(1, 3, 96, 96),
        cams, 96, 96, 3, 1.0, False, False)
    means2d, point_list = state[0][0], state[6]
    r = radii[0].float()
    lo = torch.floor((means2d - r[:, None]) / 16).clamp(0, 6)
    hi = torch.floor((means2d + r[:, None] + 15) / 16).clamp(0, 6)
    three_sigma = ((hi - lo).clamp_min(0).prod(-1) * (r > 0)).sum().item()
    print(f"tile entries: {point_list.numel()} opacity-aware, {three_sigma:.0f} with 3-sigma squares")
    assert 0 < point_list.numel() < 0.8 * three_sigma, (point_list.numel(), three_sigma)
    _check("cpu", st, _kw(sc))  # the pixels and gradients are still the twin's (3-sigma rule)

"""The compiled rasterizer (CPU kernels; CUDA under the `gpu` marker) against the pure-PyTorch reference."""

from __future__ import annotations

import math

import pytest
import torch
from _raster_scenes import batch_cameras, camera, head_scene, random_scene

from diff_gaussian_rasterization import (
    GaussianRasterizationSettings,
    GaussianRasterizer,
    _rasterize_reference,
    build_info,
    rasterize_gaussians,
)
from diff_gaussian_rasterization._reference import _compute_cov3d, _project_cov2d, _sh_to_color

ATOL_IMAGE = 1e-4


def _inputs(sc, mode="sh", sh_degree=3, cov=False):
    kw = {"means3D": sc.means3D, "opacities": sc.opacities}
    if mode == "sh":
        kw["shs"] = sc.shs[:, : max(1, (sh_degree + 1) ** 2)].contiguous()
    else:
        kw["colors_precomp"] = sc.colors
    if cov:
        kw["cov3D_precomp"] = _cov_upper(sc)
    else:
        kw["scales"], kw["rotations"] = sc.scales, sc.rotations
    return kw


def _cov_upper(sc):
    S = _compute_cov3d(sc.scales, sc.rotations, 1.0)
    return torch.stack([S[:, 0, 0], S[:, 0, 1], S[:, 0, 2], S[:, 1, 1], S[:, 1, 2], S[:, 2, 2]], -1).contiguous()


def _assert_forward_equal(st, kw):
    out = rasterize_gaussians(st, **kw)
    ref = _rasterize_reference(st, **kw)
    for name in ("color", "depth", "alpha"):
        a, r = getattr(out, name), getattr(ref, name)
        assert a.shape == r.shape, name
        err = (a - r).abs().max().item() if a.numel() else 0.0
        assert err <= ATOL_IMAGE, f"{name}: max abs diff {err}"
    assert torch.equal(out.radii, ref.radii)
    return out


def _grads(fn, st, kw, seed=0):
    """Gradients of every tensor input (and means2D, bg) under random cotangents on color, depth, alpha."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in kw.items()}
    means2D = torch.zeros_like(kw["means3D"]).requires_grad_()
    bg = st.bg.detach().clone().requires_grad_()
    st = st._replace(bg=bg)
    out = fn(st, means2D=means2D, **leaves)
    g = torch.Generator().manual_seed(seed)
    loss = sum((getattr(out, n) * torch.randn(getattr(out, n).shape, generator=g)).sum()
               for n in ("color", "depth", "alpha"))
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads["means2D"], grads["bg"] = means2D.grad, bg.grad
    return grads


def _assert_grads_close(a, r, rel_tol=1e-3, cos_tol=0.999):
    for k in r:
        x, y = a[k], r[k]
        assert x is not None and y is not None, k
        x, y = x.flatten().double(), y.flatten().double()
        if y.norm() == 0:
            assert x.norm() <= 1e-6, f"{k}: expected zero gradient, got norm {x.norm()}"
            continue
        rel = ((x - y).norm() / y.norm()).item()
        cos = torch.nn.functional.cosine_similarity(x, y, dim=0).item()
        assert rel <= rel_tol and cos >= cos_tol, f"{k}: rel L2 {rel:.2e}, cosine {cos:.6f}"


def test_build_info_reports_cpu():
    info = build_info()
    assert info["cpu"] is True and "cuda" in info and isinstance(info["cuda_arch"], list)


# ---------------------------------------------------------------------------------------------------
# Forward
@pytest.mark.parametrize("H,W,n,seed", [(37, 53, 60, 0), (64, 64, 400, 1), (16, 16, 30, 2), (31, 100, 200, 3),
                                        (128, 96, 800, 4)])
def test_forward_random_scenes(H, W, n, seed):
    sc = random_scene(n, seed=seed)
    out = _assert_forward_equal(camera(H, W), _inputs(sc))
    assert out.alpha.max() > 0.5  # the scene is actually visible


@pytest.mark.parametrize("deg", [0, 1, 2, 3])
def test_forward_sh_degrees(deg):
    sc = random_scene(150, seed=10 + deg)
    _assert_forward_equal(camera(40, 48, sh_degree=deg), _inputs(sc, sh_degree=deg))


def test_forward_colors_precomp_and_cov3d_precomp():
    sc = random_scene(150, seed=20)
    st = camera(45, 61)
    _assert_forward_equal(st, _inputs(sc, mode="rgb"))
    a = _assert_forward_equal(st, _inputs(sc, mode="rgb", cov=True))
    b = rasterize_gaussians(st, **_inputs(sc, mode="rgb"))
    assert (a.color - b.color).abs().max() < 1e-5  # same covariance, two input paths


def test_forward_image_background():
    sc = random_scene(120, seed=21)
    bg = torch.rand(3, 37, 53, generator=torch.Generator().manual_seed(1))
    out = _assert_forward_equal(camera(37, 53, bg=bg), _inputs(sc))
    empty = rasterize_gaussians(camera(37, 53, bg=bg), **_inputs(random_scene(0)))
    assert torch.allclose(empty.color, bg)  # nothing drawn: the background image itself
    assert out.color.shape == (3, 37, 53)


def test_forward_edge_cases_behind_offscreen_border():
    sc = random_scene(40, seed=30)
    m = sc.means3D.clone()
    m[:10, 2] = -3.5 - torch.rand(10)  # behind the camera (eye at z=-3 looking at +z)
    m[10:13, 2] = -2.85  # just in front of the 0.2 near cull distance... and
    m[13:16, 2] = -2.9  # ... inside it
    m[16:20, 0] = 5.0 + torch.rand(4)  # far off screen to the side
    m[20:25, 0] = 1.4 * math.tan(math.radians(25)) * 3  # around the image border / guard band
    sc.means3D = m
    st = camera(33, 47)
    out = _assert_forward_equal(st, _inputs(sc))
    assert (out.radii[:10] == 0).all() and (out.radii[13:16] == 0).all()
    assert (out.radii[16:20] == 0).all()


def test_forward_opacity_extremes_and_scale_extremes():
    sc = random_scene(80, seed=31)
    o = sc.opacities.clone()
    o[:20] = 1e-3  # below 1/255 everywhere: never drawn
    o[20:40] = 0.99999  # clamped at 0.99
    sc.opacities = o
    s = sc.scales.clone()
    s[40:45] = 3.0  # huge: covers the whole image
    s[45:60] = 1e-4  # tiny: sub-pixel, the 0.3 dilation dominates
    sc.scales = s
    _assert_forward_equal(camera(40, 40), _inputs(sc))
    only_faint = random_scene(20, seed=32)
    only_faint.opacities = torch.full_like(only_faint.opacities, 1e-3)
    out = rasterize_gaussians(camera(20, 20), **_inputs(only_faint))
    assert out.alpha.abs().max() == 0


def test_forward_saturation_stop_rule():
    # Many opaque layers: transmittance reaches the 1e-4 stop in most pixels, and never goes below it.
    sc = random_scene(300, seed=33, spread=0.4, scale_range=(0.3, 0.6), opacity_range=(0.9, 0.99))
    out = _assert_forward_equal(camera(24, 40), _inputs(sc))
    assert (out.alpha > 0.9998).float().mean() > 0.5
    assert out.alpha.max() <= 1 - 1e-4 + 1e-7


@pytest.mark.parametrize("n", [0, 1])
def test_forward_tiny_n(n):
    sc = random_scene(n, seed=40, spread=0.2, scale_range=(0.2, 0.3), opacity_range=(0.8, 0.9))
    out = _assert_forward_equal(camera(17, 23), _inputs(sc))
    assert out.radii.shape == (n,)
    assert out.color.shape == (3, 17, 23) and out.depth.shape == (1, 17, 23) and out.alpha.shape == (1, 17, 23)


def test_depth_is_alpha_weighted_view_z():
    # One opaque Gaussian straight ahead at distance 3: depth / alpha is its view z at the centre.
    sc = random_scene(1, seed=41)
    sc.means3D = torch.zeros(1, 3)
    sc.scales = torch.full((1, 3), 0.3)
    sc.rotations = torch.tensor([[1.0, 0, 0, 0]])
    sc.opacities = torch.full((1, 1), 0.9)
    out = rasterize_gaussians(camera(21, 21), **_inputs(sc))
    c = out.depth[0, 10, 10] / out.alpha[0, 10, 10]
    assert abs(c.item() - 3.0) < 1e-4
    assert abs(out.alpha[0, 10, 10].item() - 0.9) < 1e-4


# ---------------------------------------------------------------------------------------------------
# Backward
@pytest.mark.parametrize("deg", [0, 1, 2, 3])
def test_backward_matches_reference_sh(deg):
    sc = random_scene(120, seed=50 + deg)
    st = camera(37, 53, sh_degree=deg)
    kw = _inputs(sc, sh_degree=deg)
    _assert_grads_close(_grads(rasterize_gaussians, st, kw), _grads(_rasterize_reference, st, kw))


def test_backward_matches_reference_colors_cov3d_and_image_bg():
    sc = random_scene(150, seed=60)
    bg = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(2))
    st = camera(40, 56, bg=bg)
    for kw in (_inputs(sc, mode="rgb"), _inputs(sc, mode="rgb", cov=True), _inputs(sc, cov=True)):
        _assert_grads_close(_grads(rasterize_gaussians, st, kw), _grads(_rasterize_reference, st, kw))


def test_backward_edge_cases():
    sc = random_scene(90, seed=61, scale_range=(0.05, 0.5))
    m = sc.means3D.clone()
    m[:10, 2] = -4.0  # behind
    m[10:20, 0] = 2.2  # beyond the 1.3x guard band but large enough to reach the image: clamped Jacobian
    m[10:20, 2] = -1.0
    sc.means3D = m
    o = sc.opacities.clone()
    o[20:30] = 0.99999
    sc.opacities = o
    st = camera(30, 44)
    kw = _inputs(sc)
    a = _grads(rasterize_gaussians, st, kw)
    _assert_grads_close(a, _grads(_rasterize_reference, st, kw))
    assert a["means3D"][:10].abs().max() == 0  # culled: no gradient


def test_backward_saturated_pixels():
    sc = random_scene(200, seed=62, spread=0.4, scale_range=(0.2, 0.5), opacity_range=(0.6, 0.98))
    st = camera(24, 32)
    kw = _inputs(sc)
    _assert_grads_close(_grads(rasterize_gaussians, st, kw), _grads(_rasterize_reference, st, kw))


def test_depth_and_alpha_losses_have_gradients():
    """The original rasterizer dropped the depth gradient; ours carries depth and alpha losses."""
    sc = random_scene(100, seed=63)
    st = camera(32, 32)
    for name in ("depth", "alpha"):
        m = sc.means3D.clone().requires_grad_()
        o = sc.opacities.clone().requires_grad_()
        out = rasterize_gaussians(st, m, o, shs=sc.shs, scales=sc.scales, rotations=sc.rotations)
        getattr(out, name).sum().backward()
        assert m.grad.abs().sum() > 0 and o.grad.abs().sum() > 0, name


def test_means2d_receives_screen_space_gradient():
    sc = random_scene(80, seed=64)
    st = camera(32, 40)
    means2D = torch.zeros_like(sc.means3D, requires_grad=True)
    out = GaussianRasterizer(st)(sc.means3D, means2D, sc.opacities, shs=sc.shs, scales=sc.scales,
                                 rotations=sc.rotations)
    out.color.sum().backward()
    visible = out.radii > 0
    assert means2D.grad[visible, :2].abs().sum() > 0
    assert means2D.grad[:, 2].abs().max() == 0
    assert means2D.grad[~visible].abs().max() == 0


# ---------------------------------------------------------------------------------------------------
# Batched
def _batched_attrs(B, n, seed):
    scs = [random_scene(n, seed=seed + k) for k in range(B)]
    return {
        "means3D": torch.stack([s.means3D for s in scs]),
        "opacities": torch.stack([s.opacities for s in scs]),
        "shs": torch.stack([s.shs for s in scs]),
        "scales": torch.stack([s.scales for s in scs]),
        "rotations": torch.stack([s.rotations for s in scs]),
    }


def _single(st, k):
    bg = st.bg[k] if st.bg.dim() == 4 else st.bg
    return st._replace(viewmatrix=st.viewmatrix[k], projmatrix=st.projmatrix[k], campos=st.campos[k], bg=bg)


def test_batched_equals_single_calls_values_and_gradients():
    B, H, W = 3, 29, 41
    st = batch_cameras(B, H, W, seed=7, bg=torch.rand(B, 3, H, W, generator=torch.Generator().manual_seed(3)))
    kw = _batched_attrs(B, 70, seed=80)
    gb = _grads(rasterize_gaussians, st, kw, seed=9)
    out_b = rasterize_gaussians(st, **kw)
    assert out_b.color.shape == (B, 3, H, W) and out_b.radii.shape == (B, 70)
    assert out_b.depth.shape == (B, 1, H, W) and out_b.alpha.shape == (B, 1, H, W)
    g = torch.Generator().manual_seed(9)
    cot = [[torch.randn(s, generator=g) for s in ((B, 3, H, W), (B, 1, H, W), (B, 1, H, W))]][0]
    for k in range(B):
        sk = _single(st, k)
        kwk = {n: v[k] for n, v in kw.items()}
        out_k = rasterize_gaussians(sk, **kwk)
        assert torch.equal(out_k.color, out_b.color[k]) and torch.equal(out_k.radii, out_b.radii[k])
        assert torch.equal(out_k.depth, out_b.depth[k]) and torch.equal(out_k.alpha, out_b.alpha[k])
        leaves = {n: v.clone().requires_grad_() for n, v in kwk.items()}
        o = rasterize_gaussians(sk, **leaves)
        ((o.color * cot[0][k]).sum() + (o.depth * cot[1][k]).sum() + (o.alpha * cot[2][k]).sum()).backward()
        for n in leaves:
            torch.testing.assert_close(leaves[n].grad, gb[n][k], rtol=1e-5, atol=1e-6)
    _assert_grads_close(gb, _grads(_rasterize_reference, st, kw, seed=9))


def test_batched_shared_attributes_broadcast():
    B = 2
    st = batch_cameras(B, 24, 24, seed=8)
    sc = random_scene(50, seed=90)
    kw = _inputs(sc)
    out = rasterize_gaussians(st, **kw)
    for k in range(B):
        single = rasterize_gaussians(_single(st, k), **kw)
        assert torch.equal(single.color, out.color[k])
    _assert_grads_close(_grads(rasterize_gaussians, st, kw), _grads(_rasterize_reference, st, kw))


# ---------------------------------------------------------------------------------------------------
# Errors at the public boundary
def test_bad_shapes_raise_value_errors_naming_the_argument():
    sc = random_scene(10, seed=1)
    st = camera(16, 16)
    with pytest.raises(ValueError, match="opacities"):
        rasterize_gaussians(st, sc.means3D, sc.opacities[:5], shs=sc.shs, scales=sc.scales, rotations=sc.rotations)
    with pytest.raises(ValueError, match="exactly one of shs and colors_precomp"):
        rasterize_gaussians(st, sc.means3D, sc.opacities, scales=sc.scales, rotations=sc.rotations)
    with pytest.raises(ValueError, match="bg"):
        rasterize_gaussians(st._replace(bg=torch.zeros(3, 5, 5)), sc.means3D, sc.opacities, shs=sc.shs,
                            scales=sc.scales, rotations=sc.rotations)
    with pytest.raises(ValueError, match="float32"):
        rasterize_gaussians(st, sc.means3D.double(), sc.opacities, shs=sc.shs, scales=sc.scales,
                            rotations=sc.rotations)
    with pytest.raises(ValueError, match="sh_degree"):
        rasterize_gaussians(st._replace(sh_degree=3), sc.means3D, sc.opacities, shs=sc.shs[:, :4],
                            scales=sc.scales, rotations=sc.rotations)


def test_settings_are_the_3dgs_fields():
    assert GaussianRasterizationSettings._fields == (
        "image_height", "image_width", "tanfovx", "tanfovy", "bg", "scale_modifier", "viewmatrix", "projmatrix",
        "sh_degree", "campos", "prefiltered", "debug")


# ---------------------------------------------------------------------------------------------------
# float64 gradcheck of the reference's pieces
def test_gradcheck_reference_pieces():
    g = torch.Generator().manual_seed(0)
    s = (torch.rand(4, 3, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    q = torch.randn(4, 4, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: _compute_cov3d(a, b, 1.3), (s, q))

    t = torch.tensor([[0.1, -0.2, 2.0], [3.5, 0.3, 1.5], [-0.4, 2.9, 2.5]], dtype=torch.float64,
                     requires_grad=True)  # the last two are clamped to the guard band in x / y
    cov = _compute_cov3d(s[:3].detach(), q[:3].detach(), 1.0).requires_grad_()
    view = torch.eye(4, dtype=torch.float64)
    view[:3, :3] = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))[0]
    assert torch.autograd.gradcheck(lambda a, b: _project_cov2d(a, b, view, 60.0, 50.0, 0.5, 0.6), (t, cov))

    shs = torch.randn(4, 16, 3, generator=g, dtype=torch.float64).requires_grad_()
    pts = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_()
    campos = torch.tensor([0.0, 0.0, -3.0], dtype=torch.float64)
    for deg in range(4):
        assert torch.autograd.gradcheck(lambda a, b: _sh_to_color(deg, a, b, campos), (shs, pts))


def test_gradcheck_reference_full_render():
    sc = random_scene(3, seed=5, spread=0.3, scale_range=(0.2, 0.4), opacity_range=(0.3, 0.7))
    st = camera(6, 7, sh_degree=1, dtype=torch.float64)
    st = st._replace(bg=st.bg.double())

    def f(m, o, sh, s, r):
        out = _rasterize_reference(st, m, o, shs=sh, scales=s, rotations=r)
        return out.color, out.depth, out.alpha

    args = tuple(x.double().requires_grad_() for x in (sc.means3D, sc.opacities, sc.shs[:, :4], sc.scales,
                                                        sc.rotations))
    assert torch.autograd.gradcheck(f, args, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# CUDA (only where a GPU is present)
@pytest.mark.gpu
@pytest.mark.parametrize("mode,cov", [("sh", False), ("rgb", False), ("sh", True)])
def test_cuda_matches_cpu_and_reference(mode, cov):
    assert build_info()["cuda"], "the CUDA kernels were not compiled"
    sc = random_scene(400, seed=100)
    bg = torch.rand(3, 70, 90, generator=torch.Generator().manual_seed(4))
    st = camera(70, 90, bg=bg)
    kw = _inputs(sc, mode=mode, cov=cov)
    cpu = rasterize_gaussians(st, **kw)
    dev = torch.device("cuda")
    st_d = st._replace(bg=st.bg.to(dev), viewmatrix=st.viewmatrix.to(dev), projmatrix=st.projmatrix.to(dev),
                       campos=st.campos.to(dev))
    kw_d = {k: v.to(dev) for k, v in kw.items()}
    gpu = rasterize_gaussians(st_d, **kw_d)
    for name in ("color", "depth", "alpha"):
        assert (getattr(gpu, name).cpu() - getattr(cpu, name)).abs().max() <= ATOL_IMAGE, name
    assert torch.equal(gpu.radii.cpu(), cpu.radii)
    g_gpu = {k: v.cpu() for k, v in _grads(rasterize_gaussians, st_d, kw_d).items()}
    _assert_grads_close(g_gpu, _grads(rasterize_gaussians, st, kw))
    _assert_grads_close(g_gpu, _grads(_rasterize_reference, st, kw))


@pytest.mark.gpu
def test_cuda_batched_equals_cpu_batched():
    B = 4
    st = batch_cameras(B, 48, 64, seed=3)
    kw = _batched_attrs(B, 200, seed=110)
    dev = torch.device("cuda")
    st_d = st._replace(bg=st.bg.to(dev), viewmatrix=st.viewmatrix.to(dev), projmatrix=st.projmatrix.to(dev),
                       campos=st.campos.to(dev))
    kw_d = {k: v.to(dev) for k, v in kw.items()}
    a, b = rasterize_gaussians(st, **kw), rasterize_gaussians(st_d, **kw_d)
    assert (a.color - b.color.cpu()).abs().max() <= ATOL_IMAGE
    _assert_grads_close({k: v.cpu() for k, v in _grads(rasterize_gaussians, st_d, kw_d).items()},
                        _grads(rasterize_gaussians, st, kw))


def test_backward_is_deterministic_with_two_threads():
    """The CPU backward hands tiles to threads in a fixed order: equal gradients on every run (bit for bit)."""
    sc = head_scene(5000, seed=7)  # many overlapping splats over many tiles
    st = camera(128, 128)
    kw = _inputs(sc)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = _grads(rasterize_gaussians, st, kw)
        for _ in range(3):
            again = _grads(rasterize_gaussians, st, kw)
            for k, v in first.items():
                assert torch.equal(v, again[k]), k
    finally:
        torch.set_num_threads(threads)
    assert first["means3D"].abs().sum() > 0

"""The rasterizer's safety rules, on every backend: non-finite and degenerate Gaussians are culled (one rule
in the shared header, mirrored by the reference), native entry points check their arguments with a
ValueError and accept non-contiguous views, and the kernels' constants are the reference's.

Each test runs on the CPU kernels and, under the `gpu` marker, on the CUDA kernels with the same scene."""

from __future__ import annotations

import pytest
import torch
from _raster_scenes import camera, random_scene

import simple_knn
from diff_gaussian_rasterization import _rasterize_reference, rasterize_gaussians
from diff_gaussian_rasterization import _reference as ref
from diff_gaussian_rasterization._backend import load_extension

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
NAN, INF = float("nan"), float("inf")


def _to(st, kw, device):
    st = st._replace(bg=st.bg.to(device), viewmatrix=st.viewmatrix.to(device), projmatrix=st.projmatrix.to(device),
                     campos=st.campos.to(device))
    return st, {k: v.to(device) for k, v in kw.items()}


def _attrs(sc, mode, deg=3):
    kw = {"means3D": sc.means3D, "opacities": sc.opacities}
    if mode == "cov":
        S = ref._compute_cov3d(sc.scales, sc.rotations, 1.0)
        kw["cov3D_precomp"] = torch.stack([S[:, 0, 0], S[:, 0, 1], S[:, 0, 2], S[:, 1, 1], S[:, 1, 2], S[:, 2, 2]], -1)
        kw["colors_precomp"] = sc.colors
    else:
        kw["scales"], kw["rotations"] = sc.scales, sc.rotations
        kw["shs"] = sc.shs[:, : (deg + 1) ** 2].contiguous()
    return kw


# (attribute, column, value): every way one row can be poisoned. The SH one sits in the last coefficient of
# the active degree, the last place a check could forget.
POISON_SH = [("means3D", 0, NAN), ("means3D", 2, INF), ("means3D", 1, -INF), ("scales", 1, NAN), ("scales", 0, INF),
             ("scales", 2, 1e30),  # finite, but its covariance overflows to inf
             ("rotations", 3, NAN), ("rotations", 0, INF), ("opacities", 0, NAN), ("opacities", 0, INF),
             ("shs", (15, 2), NAN), ("shs", (0, 0), INF)]
POISON_COV = [("cov3D_precomp", 0, NAN), ("cov3D_precomp", 4, INF), ("cov3D_precomp", "negdef", None),
              ("colors_precomp", 1, NAN), ("means3D", 0, NAN), ("opacities", 0, -INF)]


def _poison(kw, positions, poisons):
    """Insert one poisoned copy of row 0 per entry of `poisons` at `positions` (sorted); returns the new
    attributes and the boolean mask of the inserted rows."""
    n = kw["means3D"].shape[0] + len(poisons)
    bad = torch.zeros(n, dtype=torch.bool)
    bad[positions] = True
    out = {}
    for name, x in kw.items():
        y = torch.empty((n,) + x.shape[1:], dtype=x.dtype)
        y[~bad] = x
        y[bad] = x[:1].expand(len(poisons), *x.shape[1:])
        out[name] = y
    for pos, (name, col, val) in zip(positions, poisons):
        if col == "negdef":  # finite but negative definite: its 2D covariance is not positive definite
            out[name][pos] = torch.tensor([-1.0, 0.0, 0.0, -1.0, 0.0, -1.0])
        elif isinstance(col, tuple):
            out[name][pos][col] = val
        else:
            out[name][pos, col] = val
    return out, bad


def _render_and_grads(fn, st, kw, seed=0):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in kw.items()}
    means2D = torch.zeros_like(kw["means3D"]).requires_grad_()
    out = fn(st, means2D=means2D, **leaves)
    g = torch.Generator().manual_seed(seed)
    loss = sum((getattr(out, n) * torch.randn(getattr(out, n).shape, generator=g).to(out.color.device)).sum()
               for n in ("color", "depth", "alpha"))
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads["means2D"] = means2D.grad
    return out, grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["sh", "cov"])
def test_non_finite_and_degenerate_rows_are_culled(device, mode):
    sc = random_scene(150, seed=3)
    clean = _attrs(sc, mode)
    poisons = POISON_SH if mode == "sh" else POISON_COV
    g = torch.Generator().manual_seed(1)
    n = clean["means3D"].shape[0] + len(poisons)
    positions = sorted(torch.randperm(n, generator=g)[: len(poisons)].tolist())
    dirty, bad = _poison(clean, positions, poisons)
    st = camera(48, 64)
    for fn in (rasterize_gaussians, _rasterize_reference):
        if fn is _rasterize_reference and device != "cpu":
            continue
        s, kc = _to(st, clean, device)
        _, kd = _to(st, dirty, device)
        out_c, g_c = _render_and_grads(fn, s, kc)
        out_d, g_d = _render_and_grads(fn, s, kd)
        name = fn.__name__
        assert out_c.alpha.max() > 0.5, "the clean scene must be visible"
        for k in ("color", "depth", "alpha"):
            a, b = getattr(out_c, k), getattr(out_d, k)
            if fn is rasterize_gaussians:  # the same splats in the same order: the same pixels, bit for bit
                assert torch.equal(a, b), f"{name}: {k} changed by the culled rows"
            else:  # the dense twin's matrix products may block the sums differently with more columns
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"{name}: {k}")
        assert (out_d.radii[bad.to(device)] == 0).all(), f"{name}: a poisoned row was rendered"
        assert torch.equal(out_d.radii[~bad.to(device)], out_c.radii)
        for k, v in g_d.items():
            assert torch.isfinite(v).all(), f"{name}: non-finite gradient of {k}"
            assert (v[bad.to(device)] == 0).all(), f"{name}: a culled row got a gradient in {k}"
            a, b = v[~bad.to(device)], g_c[k]
            if fn is rasterize_gaussians and device == "cpu":  # fixed summation order: bit for bit
                assert torch.equal(a, b), f"{name}: {k}"
            else:  # CUDA atomics / the twin's dense sums add in another order: float32 rounding only
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * b.abs().max().item(), msg=f"{name}: {k}")


@pytest.mark.parametrize("device", DEVICES)
def test_zero_quaternion_reads_as_identity(device):
    sc = random_scene(60, seed=4)
    kw = _attrs(sc, "sh")
    zero, ident = dict(kw), dict(kw)
    zero["rotations"] = kw["rotations"].clone()
    zero["rotations"][:10] = 0.0
    ident["rotations"] = kw["rotations"].clone()
    ident["rotations"][:10] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    st, z = _to(camera(32, 32), zero, device)
    _, i = _to(camera(32, 32), ident, device)
    a, b = rasterize_gaussians(st, **z), rasterize_gaussians(st, **i)
    assert (a.radii[:10] > 0).any(), "zero quaternions are not culled"
    assert torch.equal(a.color, b.color) and torch.equal(a.radii, b.radii)


@pytest.mark.parametrize("device", DEVICES)
def test_enormous_finite_gaussian_radius_is_capped_not_overflowed(device):
    """A radius beyond int32 used to overflow the float -> int conversion (culled by accident on x86)."""
    sc = random_scene(30, seed=5)
    sc.scales[0] = 3e7
    sc.means3D[0] = torch.tensor([0.0, 0.0, 0.5])
    sc.opacities[0] = 0.3
    st, kw = _to(camera(24, 40), _attrs(sc, "sh"), device)
    out = rasterize_gaussians(st, **kw)
    assert out.radii[0].item() == int(ref.MAX_RADIUS)
    st_c, kw_c = _to(camera(24, 40), _attrs(sc, "sh"), "cpu")
    r = _rasterize_reference(st_c, **kw_c)
    assert torch.equal(out.radii.cpu(), r.radii)
    assert (out.color.cpu() - r.color).abs().max() <= 1e-4


def test_kernel_constants_are_the_reference_constants():
    c = load_extension("diff_gaussian_rasterization").constants()

    def f32(x):
        return torch.tensor(x, dtype=torch.float32).item()

    assert c["TILE"] == ref.TILE
    for name in ("NEAR_CULL", "LOW_PASS", "MAX_ALPHA", "MIN_ALPHA", "MIN_T", "FRUSTUM_GUARD", "NDC_EPS", "MAX_RADIUS",
                 "SH_C0", "SH_C1"):
        assert c[name] == f32(getattr(ref, name)), name
    assert list(c["SH_C2"]) == [f32(x) for x in ref.SH_C2]
    assert list(c["SH_C3"]) == [f32(x) for x in ref.SH_C3]


# ---------------------------------------------------------------------------------------------------
# Native entry points: ValueErrors and non-contiguous views
def _native_args(device="cpu"):
    sc = random_scene(20, seed=6)
    st = camera(16, 24)
    from diff_gaussian_rasterization import pack_cameras

    cams = pack_cameras(st.viewmatrix[None], st.projmatrix[None], st.campos[None],
                        torch.tensor([[st.tanfovx, st.tanfovy]]))
    e = torch.empty(0)
    args = [sc.means3D[None], sc.shs[None], e, sc.opacities[None], sc.scales[None], sc.rotations[None], e,
            st.bg.view(1, 3, 1, 1).expand(1, 3, 16, 24), cams, 16, 24, 3, 1.0, False, False]
    return [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("device", DEVICES)
def test_native_entry_points_raise_value_errors(device):
    ext = load_extension("diff_gaussian_rasterization")
    args = _native_args(device)
    ext.rasterize_fwd(*args)  # the baseline is accepted
    cases = {0: (args[0].double(), "means3D must be float32"), 3: (args[3][:, :5], "opacities must have shape"),
             4: (args[4][..., :2], "scales must have shape"), 8: (args[8][:, :30], "cams must have shape"),
             1: (args[1][..., :2], "shs must have shape")}
    for i, (bad, msg) in cases.items():
        a = list(args)
        a[i] = bad
        with pytest.raises(ValueError, match=msg):
            ext.rasterize_fwd(*a)
    a = list(args)
    a[11] = 4
    with pytest.raises(ValueError, match="sh_degree"):
        ext.rasterize_fwd(*a)
    if device == "cuda":
        a = list(args)
        a[3] = a[3].cpu()
        with pytest.raises(ValueError, match="opacities is on cpu but means3D is on cuda"):
            ext.rasterize_fwd(*a)
    with pytest.raises(ValueError, match="points must have shape"):
        simple_knn._ext().distCUDA2(torch.zeros(5, 2, device=device))
    with pytest.raises(ValueError, match="float32"):
        simple_knn._ext().distCUDA2(torch.zeros(5, 3, dtype=torch.float64, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_native_entry_points_accept_non_contiguous_views(device):
    ext = load_extension("diff_gaussian_rasterization")
    args = _native_args(device)
    views = list(args)
    for i in (0, 1, 3, 4, 5, 7, 8):  # transposed / strided copies of the same values
        t = args[i]
        views[i] = t.transpose(0, -1).contiguous().transpose(0, -1)
    a, b = ext.rasterize_fwd(*args), ext.rasterize_fwd(*views)
    for x, y in zip(a[:4], b[:4]):
        assert torch.equal(x, y)
    # backward with non-contiguous upstream gradients and non-contiguous inputs
    H, W = 16, 24
    g = [torch.rand(1, 3, H, W, device=device), torch.rand(1, 1, H, W, device=device),
         torch.rand(1, 1, H, W, device=device)]
    gv = [x.transpose(2, 3).contiguous().transpose(2, 3) for x in g]
    common = dict(zip(range(9), args[:9]))
    ga = ext.rasterize_bwd(*[common[i] for i in range(9)], 3, 1.0, False, False, a[3], a[4], *g)
    gb = ext.rasterize_bwd(*views[:9], 3, 1.0, False, False, b[3], b[4], *gv)
    for x, y in zip(ga, gb):
        assert x.is_contiguous() or x.numel() == 0
        assert torch.equal(x, y)
    p = torch.randn(3, 500, device=device).t()
    assert not p.is_contiguous()
    assert torch.equal(simple_knn.distCUDA2(p), simple_knn.distCUDA2(p.contiguous()))


@pytest.mark.parametrize("device", DEVICES)
def test_debug_mode_runs_and_matches(device):
    """debug=True synchronises after every CUDA stage (a no-op on the CPU); the results are the same."""
    st, kw = _to(camera(32, 48), _attrs(random_scene(200, seed=7), "sh"), device)
    a, ga = _render_and_grads(rasterize_gaussians, st, kw)
    b, gb = _render_and_grads(rasterize_gaussians, st._replace(debug=True), kw)
    assert torch.equal(a.color, b.color) and torch.equal(a.radii, b.radii)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_gpu_while_first_is_current():
    """Inputs on cuda:1 while cuda:0 is current: the kernels must run on cuda:1 (device guards)."""
    torch.cuda.set_device(0)
    st, kw = _to(camera(32, 48), _attrs(random_scene(200, seed=8), "sh"), "cuda:1")
    out = rasterize_gaussians(st, **kw)
    cpu = rasterize_gaussians(*_to(camera(32, 48), _attrs(random_scene(200, seed=8), "sh"), "cpu"))
    assert out.color.device == torch.device("cuda:1")
    assert (out.color.cpu() - cpu.color).abs().max() <= 1e-4
    p = torch.randn(3000, 3)
    torch.testing.assert_close(simple_knn.distCUDA2(p.to("cuda:1")).cpu(), simple_knn.distCUDA2(p), rtol=1e-5,
                               atol=1e-7)

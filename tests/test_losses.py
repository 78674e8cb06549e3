"""Losses and metrics: SSIM against an independent float64 computation, the lip and head-mask terms, and
the VGG16 perceptual loss / LPIPS loaders with weight files the tests write in the real key layouts."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate

from gaussiantalker import losses, metrics
from gaussiantalker.losses import (
    PerceptualLoss,
    head_mask_term,
    l1,
    lip_l1,
    make_perceptual_loss,
    ssim,
)

VGG_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
             17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512)}
ALEX_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM from the formula in float64 with scipy's correlation (zero padding), per channel."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    g /= g.sum()
    win = np.outer(g, g)
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for xc, yc in zip(x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:])):
        def f(a):
            return correlate(a, win, mode="constant", cval=0.0)

        mx, my = f(xc), f(yc)
        sxx, syy, sxy = f(xc * xc) - mx**2, f(yc * yc) - my**2, f(xc * yc) - mx * my
        vals.append(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_a_float64_reference():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 20, generator=gen, dtype=torch.float64)
    y = (x + 0.2 * torch.rand(2, 3, 24, 20, generator=gen, dtype=torch.float64)).clamp(0, 1)
    ref = _ssim_reference(x.numpy(), y.numpy())
    assert float(ssim(x, y)) == pytest.approx(ref, abs=1e-12)
    assert float(ssim(x.float(), y.float())) == pytest.approx(ref, abs=1e-5)
    per_image = ssim(x, y, reduction="none")
    assert per_image.shape == (2,)
    assert float(per_image[1]) == pytest.approx(_ssim_reference(x[1].numpy(), y[1].numpy()), abs=1e-12)
    torch.testing.assert_close(metrics.ssim(x, y), per_image)


def test_ssim_properties_and_gradient():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 16, 16, generator=gen, dtype=torch.float64)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-12)
    noisy = [(x + s * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1) for s in (0.05, 0.2)]
    assert 1.0 > float(ssim(noisy[0], x)) > float(ssim(noisy[1], x))
    assert float(ssim(noisy[0], x)) == pytest.approx(float(ssim(x, noisy[0])), abs=1e-12)
    a = torch.rand(1, 1, 7, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.rand(1, 1, 7, 7, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: ssim(t, b), (a,), fast_mode=True)
    with pytest.raises(ValueError, match="same shape"):
        ssim(x, x[..., :8])


def test_l1_lip_and_head_mask_terms():
    gen = torch.Generator().manual_seed(2)
    r = torch.rand(2, 3, 10, 12, generator=gen, requires_grad=True)
    t = torch.rand(2, 3, 10, 12, generator=gen)
    assert float(l1(r, t).detach()) == pytest.approx(float((r - t).abs().mean().detach()))
    rects = [(0, 4, 0, 4), (2, 10, 3, 12)]
    crops = torch.cat([(r[0, :, 0:4, 0:4] - t[0, :, 0:4, 0:4]).flatten(),
                       (r[1, :, 2:10, 3:12] - t[1, :, 2:10, 3:12]).flatten()])
    loss = lip_l1(r, t, torch.tensor(rects))
    assert float(loss.detach()) == pytest.approx(float(crops.abs().mean().detach()), rel=1e-6)  # bigger crops weigh more
    loss.backward()
    assert r.grad[0, :, 5:, 5:].abs().sum() == 0 and r.grad[1, :, 2:10, 3:12].abs().sum() > 0
    with pytest.raises(ValueError, match="empty or outside"):
        lip_l1(r, t, [(0, 0, 0, 4), (0, 4, 0, 4)])
    alpha = torch.full((2, 1, 10, 12), 0.25, requires_grad=True)
    mask = torch.zeros(2, 1, 10, 12)
    mask[:, :, :5] = 1
    term = head_mask_term(alpha, mask)
    assert float(term.detach()) == pytest.approx(0.5 * 0.75 + 0.5 * 0.25)
    term.backward()
    assert alpha.grad.abs().sum() > 0  # the fixed term has a gradient
    depth = torch.zeros(2, 1, 10, 12)
    assert float(head_mask_term(depth, mask, kind="depth")) == pytest.approx(0.5)  # sigmoid(0)·2-1 = 0


def _write_vgg16(path, seed=0, classifier=True):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for i, (cout, cin) in VGG_CONVS.items():
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * (2.0 / (cin * 9)) ** 0.5
        state[f"features.{i}.bias"] = torch.randn(cout, generator=gen) * 0.01
    if classifier:  # torchvision's file also holds the classifier (small stand-ins: never loaded)
        state["classifier.0.weight"] = torch.zeros(4, 8)
    torch.save(state, path)
    return state


def _write_alexnet(path, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for i, (cout, cin, k) in ALEX_CONVS.items():
        state[f"features.{i}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * (2.0 / (cin * k * k)) ** 0.5
        state[f"features.{i}.bias"] = torch.randn(cout, generator=gen) * 0.01
    torch.save(state, path)
    return state


def _write_linear(path, channels, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen) for i, c in enumerate(channels)}
    torch.save(state, path)
    return state


@pytest.fixture(scope="module")
def vgg_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    state = _write_vgg16(root / losses.VGG16_FILENAME)
    lin = _write_linear(root / "vgg.pth", (64, 128, 256, 512, 512))
    return root, state, lin


def test_perceptual_loss_loads_torchvision_layout(vgg_assets, caplog):
    root, state, _ = vgg_assets
    loss_fn = make_perceptual_loss(assets=root)
    assert isinstance(loss_fn, PerceptualLoss)
    for i in (0, 7, 21):
        assert torch.equal(loss_fn.vgg.features[i].weight, state[f"features.{i}.weight"])
    assert len(loss_fn.vgg.features) == 23  # up to relu4_3
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 24, 24, generator=gen)
    y = torch.rand(2, 3, 24, 24, generator=gen, requires_grad=True)
    small = PerceptualLoss(root / losses.VGG16_FILENAME, resize=None)
    assert float(small(x, x)) == 0.0
    value = small(y, x)
    value.backward()
    assert float(value.detach()) > 0 and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in small.parameters())  # the network stays frozen
    assert loss_fn.resize == 224  # the original's input size
    loss_fn.resize = 40
    assert float(loss_fn(x[:1], y[:1].detach())) > 0


def test_perceptual_loss_absent_or_bad(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="gaussiantalker.losses"):
        assert make_perceptual_loss(assets=tmp_path) is None
        assert make_perceptual_loss(assets=tmp_path) is None
    assert sum("perceptual loss off" in r.message for r in caplog.records) == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    state = _write_vgg16(bad / losses.VGG16_FILENAME)
    state["features.5.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(state, bad / losses.VGG16_FILENAME)
    with pytest.raises(ValueError, match=r"vgg16-397923af.pth: features.5.weight has shape"):
        make_perceptual_loss(assets=bad)
    (bad / losses.VGG16_FILENAME).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable PyTorch weights file"):
        make_perceptual_loss(assets=bad)


def _lpips_reference(x, y, convs, taps, lin, strides=None, pools=None):
    """LPIPS by the formula, straight from the weight dicts (conv by conv with F.conv2d)."""
    import torch.nn.functional as F

    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(t):
        t = ((t * 2 - 1) - shift) / scale
        out = []
        for i, (w, b, stride, pad, pool_before) in enumerate(convs):
            if pool_before:
                t = pool_before(t)
            t = F.relu(F.conv2d(t, w, b, stride=stride, padding=pad))
            if i in taps:
                out.append(t)
        return out

    total = torch.zeros(x.shape[0])
    for i, (fx, fy) in enumerate(zip(feats(x), feats(y))):
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total += ((nx - ny) ** 2 * lin[f"lin{i}.model.1.weight"]).sum(1).mean((1, 2))
    return total


def test_lpips_vgg_and_alex_match_the_formula(vgg_assets, tmp_path):
    root, vgg_state, vgg_lin = vgg_assets
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 48, 48, generator=gen)
    y = (x + 0.1 * torch.randn(2, 3, 48, 48, generator=gen)).clamp(0, 1)

    model = metrics.make_lpips("vgg", assets=root)
    assert isinstance(model, metrics.LPIPS) and model.net == "vgg"
    got = metrics.lpips(x, y, net="vgg", assets=root)
    pool = torch.nn.MaxPool2d(2, 2)
    order = sorted(VGG_CONVS)
    convs = [(vgg_state[f"features.{i}.weight"], vgg_state[f"features.{i}.bias"], 1, 1,
              pool if i in (5, 10, 17, 24) else None) for i in order]
    taps = {order.index(i) for i in (2, 7, 14, 21, 28)}
    torch.testing.assert_close(got, _lpips_reference(x, y, convs, taps, vgg_lin), rtol=1e-4, atol=1e-6)
    assert torch.all(metrics.lpips(x, x, net="vgg", assets=root) == 0)

    alex_root = tmp_path / "alex"
    alex_root.mkdir()
    a_state = _write_alexnet(alex_root / metrics.ALEXNET_FILENAMES[0])
    a_lin = _write_linear(alex_root / "alex.pth", (64, 192, 384, 256, 256))
    got = metrics.lpips(x, y, assets=alex_root)  # auto -> alex
    assert metrics.make_lpips(assets=alex_root).net == "alex"
    apool = torch.nn.MaxPool2d(3, 2)
    params = {0: (4, 2, None), 3: (1, 2, apool), 6: (1, 1, apool), 8: (1, 1, None), 10: (1, 1, None)}
    convs = [(a_state[f"features.{i}.weight"], a_state[f"features.{i}.bias"], *params[i]) for i in sorted(ALEX_CONVS)]
    torch.testing.assert_close(got, _lpips_reference(x, y, convs, {0, 1, 2, 3, 4}, a_lin), rtol=1e-4, atol=1e-6)


def test_lpips_absent_and_bad_linear_file(tmp_path, vgg_assets, caplog):
    with caplog.at_level(logging.INFO, logger="gaussiantalker.metrics"):
        assert metrics.make_lpips(assets=tmp_path) is None
        assert metrics.lpips(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), assets=tmp_path) is None
    assert sum("LPIPS off" in r.message for r in caplog.records) == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    _write_vgg16(bad / losses.VGG16_FILENAME)
    _write_linear(bad / "vgg.pth", (64, 128, 256, 512, 256))
    with pytest.raises(ValueError, match=r"vgg.pth: lin4.model.1.weight has shape"):
        metrics.make_lpips("vgg", assets=bad)


def test_psnr_and_landmark_distance():
    t = torch.full((2, 3, 8, 8), 0.5)
    p = t.clone()
    p[0] += 0.1
    p[1] += 0.01
    torch.testing.assert_close(metrics.psnr(p, t), torch.tensor([20.0, 40.0]), atol=1e-3, rtol=0)
    assert float(metrics.psnr(t, t)[0]) == pytest.approx(100.0)
    gt = torch.zeros(1, 68, 2)
    pred = gt.clone()
    pred[0, 48:68, 0] = 3.0
    pred[0, 48:68, 1] = 4.0
    pred[0, :48] = 100.0
    assert float(metrics.landmark_distance(pred, gt)[0]) == pytest.approx(5.0)
    assert float(metrics.landmark_distance(pred, gt, mouth_only=False)[0]) == pytest.approx(
        (48 * 100 * 2**0.5 + 20 * 5) / 68)
    with pytest.raises(ValueError, match="68, 2"):
        metrics.landmark_distance(pred[:, :60], gt[:, :60])

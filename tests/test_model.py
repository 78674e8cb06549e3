"""The model: identity at initialisation, stage switch, batching, tri-plane cache, save/load."""

from __future__ import annotations

import math

import pytest
import torch

from gaussiantalker.camera import cameras_from_transforms
from gaussiantalker.config import load_config
from gaussiantalker.model import (
    Conditions,
    GaussianTalkerModel,
    IterationNotFoundError,
    ModelNotFoundError,
    list_iterations,
    load_model,
)
from gaussiantalker.model.io import ModelInfo, save_iteration, save_model_info
from gaussiantalker.render.rasterize import render_batch

SIZE = 32


def tiny_config(**overrides):
    base = {"kplanes_config": {"output_coordinate_dim": 8, "resolution": [8, 8, 8]}, "d_model": 16, "net_width": 16,
                "ffn_hidden": 32, "tensorboard": False}
    base.update(overrides)
    return load_config("64_dim_1_transformer", **base)


def sphere(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, 3, generator=g)
    return 0.08 * p / p.norm(dim=1, keepdim=True), torch.rand(n, 3, generator=g)


def make_model(audio_dim=26, **overrides):
    torch.manual_seed(0)
    xyz, rgb = sphere()
    return GaussianTalkerModel.from_point_cloud(xyz, rgb, tiny_config(**overrides), audio_dim)


def cameras(b):
    c2w = torch.eye(4).repeat(b, 1, 1)
    c2w[:, 2, 3] = torch.linspace(0.45, 0.55, b)  # OpenGL camera on +z looking at the head
    c2w[:, 0, 3] = torch.linspace(-0.02, 0.02, b)
    return cameras_from_transforms(c2w, 70.0, SIZE, SIZE)


def conditions(b, dim=26, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Conditions(torch.randn(b, 8, 16, dim, generator=g), torch.rand(b, 1, generator=g),
                      torch.randn(b, 12, generator=g))


def coarse_step(model, steps=3):
    """A few real coarse optimisation steps, so the tri-plane prediction is not the initial one."""
    opt = torch.optim.Adam([p for group in model.parameter_groups("coarse").values() for p in group], lr=1e-2)
    bg = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    for _ in range(steps):
        out = render_batch(model.deform("coarse"), cameras(1), bg)
        (out.image - 0.3).abs().mean().backward()
        opt.step()
        opt.zero_grad()


def test_initialisation_from_the_point_cloud():
    model = make_model()
    xyz, rgb = sphere()
    assert torch.equal(model.xyz.detach(), xyz)
    assert torch.allclose(model.features_dc[:, 0].detach() * 0.28209479177387814 + 0.5, rgb, atol=1e-6)
    assert torch.all(model.features_rest == 0)
    assert torch.allclose(torch.sigmoid(model.opacity), torch.full_like(model.opacity, 0.1))
    assert torch.all(model.rotation[:, 0] == 1) and torch.all(model.rotation[:, 1:] == 0)
    assert torch.all(model.scaling[:, 0] == model.scaling[:, 1])
    # scale = sqrt(mean squared distance to the 3 nearest neighbours)
    d2 = torch.cdist(xyz, xyz).fill_diagonal_(math.inf).square().topk(3, largest=False).values.mean(1)
    assert torch.allclose(torch.exp(model.scaling[:, 0]).detach(), d2.sqrt(), rtol=1e-4)
    assert torch.allclose(model.triplane.aabb, torch.stack([xyz.min(0).values, xyz.max(0).values]))


def test_max_points_subsamples_reproducibly():
    xyz, rgb = sphere(500)
    cfg = tiny_config(max_points=120)
    a = GaussianTalkerModel.from_point_cloud(xyz, rgb, cfg, 26, torch.Generator().manual_seed(5))
    b = GaussianTalkerModel.from_point_cloud(xyz, rgb, cfg, 26, torch.Generator().manual_seed(5))
    assert a.num_points == 120 and torch.equal(a.xyz, b.xyz)


def test_untrained_deformation_is_the_identity_and_first_fine_render_equals_coarse():
    model = make_model()
    coarse_step(model)
    cams, bg = cameras(3), torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        coarse = model.deform("coarse", conditions(3))
        coarse_img = render_batch(coarse, cams, bg).image
    model.start_fine()
    for mode in (True, False):  # dropout on or off: the zero heads make it irrelevant
        model.train(mode)
        with torch.no_grad():
            fine = model.deform("fine", conditions(3))
            fine_img = render_batch(fine, cams, bg).image
        for name in ("means", "scales", "rotations", "opacities", "shs"):
            assert torch.allclose(getattr(fine, name), getattr(coarse, name).expand_as(getattr(fine, name)),
                                  atol=1e-6, rtol=1e-6), name
        assert torch.allclose(fine_img, coarse_img, atol=1e-6)
    assert fine.attention.shape == (3, 1, model.num_points, 4)
    assert torch.allclose(fine.attention.sum(-1), torch.ones(3, 1, model.num_points))


def test_fine_stage_needs_start_fine_and_conditions():
    model = make_model()
    with pytest.raises(ValueError, match="start_fine"):
        model.deform("fine", conditions(1))
    model.start_fine()
    with pytest.raises(ValueError, match="Conditions"):
        model.deform("fine", None)
    with pytest.raises(ValueError, match="dimension"):
        model.deform("fine", conditions(1, dim=29))
    with pytest.raises(ValueError, match="stage"):
        model.deform("medium", conditions(1))
    with pytest.raises(ValueError, match="audio"):
        Conditions(torch.zeros(2, 8, 15, 26), torch.zeros(2, 1), torch.zeros(2, 12))


def _perturb_heads(model):
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        for p in model.offset_heads.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_batched_deformation_equals_single_frames_and_conditions_matter():
    model = make_model()
    model.start_fine()
    _perturb_heads(model)
    model.eval()
    cond = conditions(3)
    with torch.no_grad():
        batch = model.deform("fine", cond)
        for i in range(3):
            one = model.deform("fine", Conditions(cond.audio[i:i + 1], cond.eye[i:i + 1], cond.cam[i:i + 1]))
            assert torch.allclose(one.means[0], batch.means[i], atol=1e-6)
            assert torch.allclose(one.shs[0], batch.shs[i], atol=1e-6)
    assert not torch.allclose(batch.means[0], batch.means[1])  # different audio -> different offsets


def test_triplane_feature_is_cached_in_eval_mode_only():
    model = make_model()
    model.eval()
    with torch.no_grad():
        a = model.triplane_features()
        assert model.triplane_features() is a
        model.xyz.add_(0.001)  # a parameter edit invalidates the cache
        b = model.triplane_features()
        assert b is not a and not torch.equal(a, b)
    model.train()
    assert model.triplane_features() is not model.triplane_features()


def test_gradients_reach_every_fine_stage_group():
    model = make_model()
    model.start_fine()
    model.active_sh_degree.fill_(3)  # else the higher SH coefficients are (rightly) unused
    _perturb_heads(model)
    out = render_batch(model.deform("fine", conditions(2)), cameras(2), torch.rand(2, 3, SIZE, SIZE))
    (out.image.mean() + out.alpha.mean()).backward()
    for name, params in model.parameter_groups("fine").items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name
    assert out.means2d.grad is not None and out.means2d.grad[..., :2].abs().sum() > 0


def test_save_and_load_round_trip(tmp_path):
    model = make_model()
    coarse_step(model)
    model.start_fine()
    _perturb_heads(model)
    cfg = tiny_config()
    with pytest.raises(ModelNotFoundError):
        list_iterations(tmp_path / "missing")
    save_model_info(tmp_path, cfg, ModelInfo("mfcc", 26, str(tmp_path / "data"), SIZE, SIZE, 70.0))
    with pytest.raises(ModelNotFoundError, match="no trained iteration"):
        load_model(tmp_path)
    save_iteration(tmp_path, 5, model)
    save_iteration(tmp_path, 10, model)
    assert list_iterations(tmp_path) == [5, 10]
    with pytest.raises(IterationNotFoundError, match="5, 10"):
        load_model(tmp_path, iteration=7)
    loaded = load_model(tmp_path, iteration=5)
    assert (loaded.iteration, loaded.audio_kind, loaded.audio_dim, loaded.width) == (5, "mfcc", 26, SIZE)
    assert not loaded.model.training
    torch.load(tmp_path / "point_cloud" / "iteration_5" / "deformation.pth", weights_only=True)
    model.eval()
    cond, cams, bg = conditions(2), cameras(2), torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        a = render_batch(model.deform("fine", cond), cams, bg).image
        b = render_batch(loaded.model.deform("fine", cond), cams, bg).image
    assert torch.allclose(a, b, atol=1e-6)
    assert load_model(tmp_path).iteration == 10


@pytest.mark.parametrize("shared", [True, False])
def test_cross_attention_equals_the_textbook_layer(shared):
    """The token-side output projection is the same layer as multi-head attention written out in full."""
    import math

    from gaussiantalker.model.networks import CrossAttentionLayer

    torch.manual_seed(0)
    layer = CrossAttentionLayer(d_model=16, n_head=2, ffn_hidden=24, drop_prob=0.2).eval()
    b, n, t, d = 3, 50, 4, 16
    x = torch.randn(n, d) if shared else torch.randn(b, n, d)
    tokens = torch.randn(b, t, d)
    out, att = layer(x, tokens)

    xb = x.expand(b, n, d) if shared else x
    q = layer.q(xb).view(b, n, 2, 8).transpose(1, 2)  # [B, h, N, hd]
    k = layer.k(tokens).view(b, t, 2, 8).transpose(1, 2)
    v = layer.v(tokens).view(b, t, 2, 8).transpose(1, 2)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)  # [B, h, N, T]
    mixed = (a @ v).transpose(1, 2).reshape(b, n, d)
    ref = layer.norm1(xb + layer.o(mixed))
    ref = layer.norm2(ref + layer.ffn(ref))
    assert torch.allclose(out, ref, atol=1e-5), float((out - ref).abs().max())
    assert torch.allclose(att, a.mean(1), atol=1e-6)


def test_run_heads_equals_calling_each_head():
    from torch import nn

    from gaussiantalker.model.networks import head, run_heads

    torch.manual_seed(0)
    heads = nn.ModuleDict({"a": head(16, 32, 3), "b": head(16, 32, 48), "c": head(16, 8, 1)})
    x = torch.randn(2, 40, 16, requires_grad=True)
    fused = run_heads(heads, x)
    for name, seq in heads.items():
        assert torch.allclose(fused[name], seq(x), atol=1e-6), name
    sum(v.sum() for v in fused.values()).backward()  # gradients reach every head
    assert all(p.grad is not None for p in heads.parameters())


@pytest.mark.parametrize("n_layer,sh_degree,no_dshs", [(1, 3, False), (2, 1, False), (1, 3, True)])
def test_inference_blocks_equal_the_batched_training_form(n_layer, sh_degree, no_dshs):
    """Eval mode without autograd takes the block-by-block path; it must be the same function."""
    model = make_model(n_layer=n_layer, sh_degree=sh_degree, no_dshs=no_dshs)
    model.start_fine()
    _perturb_heads(model)
    model.eval()
    model.BLOCK = 70  # several blocks, the last one partial (300 Gaussians)
    cond = conditions(5)
    with torch.no_grad():
        blocks = model.deform("fine", cond)
    with torch.enable_grad():
        batched = model.deform("fine", cond)
    for name in ("means", "scales", "rotations", "opacities", "shs", "attention"):
        a, b = getattr(blocks, name), getattr(batched, name)
        assert a.shape == b.shape and torch.allclose(a, b.detach(), atol=1e-5, rtol=1e-5), name
    with torch.no_grad():  # one frame alone gives exactly that frame of the batch
        single = model.deform("fine", Conditions(cond.audio[2:3], cond.eye[2:3], cond.cam[2:3]))
    assert torch.equal(single.means[0], blocks.means[2]) and torch.equal(single.shs[0], blocks.shs[2])


# ---------------------------------------------------------------------------------------------- lip blendshapes


def lip_conditions(b, k=4, seed=2):
    cond = conditions(b, seed=seed)
    codes = torch.randn(b, k, generator=torch.Generator().manual_seed(seed + 10)).clamp(-3, 3)
    return Conditions(cond.audio, cond.eye, cond.cam, codes)


def _random_bases(model, seed=4):
    from gaussiantalker.model.talker import LIP_BASES

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in LIP_BASES:
            getattr(model, name).copy_(0.01 * torch.randn(getattr(model, name).shape, generator=g))


def test_lip_blendshapes_start_at_zero_then_move_each_gaussian_linearly_with_the_code():
    plain = make_model(lip_code_dim=4)
    blend = make_model(lip_code_dim=4, lip_blendshapes=True)
    for m in (plain, blend):
        coarse_step(m)  # the same steps: the bases take no part in the coarse stage
        m.start_fine()
        _perturb_heads(m)
        m.eval()
    assert blend.lip_basis_xyz.shape == (blend.num_points, 4, 3) and not blend.lip_basis_xyz.any()
    cond = lip_conditions(3)
    with torch.enable_grad():
        a, b = plain.deform("fine", cond), blend.deform("fine", cond)
    for name in ("means", "scales", "rotations", "opacities", "shs"):  # zero bases: the model without them
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-6), name
    _random_bases(blend)
    with torch.enable_grad():
        c = blend.deform("fine", cond)
    code = cond.lips
    assert torch.allclose(c.means - b.means, torch.einsum("bk,nkc->bnc", code, blend.lip_basis_xyz), atol=1e-6)
    assert torch.allclose(c.shs[:, :, 0] - b.shs[:, :, 0], torch.einsum("bk,nkc->bnc", code, blend.lip_basis_dc),
                          atol=1e-6)
    assert torch.allclose(c.shs[:, :, 1:], b.shs[:, :, 1:]) and torch.allclose(c.scales, b.scales)
    logit = torch.logit(b.opacities.clamp(1e-6, 1 - 1e-6)) + torch.einsum("bk,nkc->bnc", code, blend.lip_basis_opacity)
    assert torch.allclose(c.opacities, torch.sigmoid(logit), atol=1e-5)
    # the bases are trained: the loss reaches them
    blend.train()
    (blend.deform("fine", cond).means.square().sum()).backward()
    assert blend.lip_basis_xyz.grad is not None and blend.lip_basis_xyz.grad.abs().sum() > 0
    assert {"lip_basis_xyz", "lip_basis_dc", "lip_basis_opacity"} <= set(blend.parameter_groups("fine"))
    assert "lip_basis_xyz" not in blend.parameter_groups("coarse")


def test_lip_blendshapes_inference_blocks_equal_the_batched_form_and_survive_save_and_load(tmp_path):
    model = make_model(lip_code_dim=4, lip_blendshapes=True)
    coarse_step(model)
    model.start_fine()
    _perturb_heads(model)
    _random_bases(model)
    model.eval()
    model.BLOCK = 70
    cond = lip_conditions(4)
    with torch.no_grad():
        blocks = model.deform("fine", cond)
    with torch.enable_grad():
        batched = model.deform("fine", cond)
    for name in ("means", "opacities", "shs"):
        assert torch.allclose(getattr(blocks, name), getattr(batched, name).detach(), atol=1e-5), name
    cfg = tiny_config(lip_code_dim=4, lip_blendshapes=True)
    save_model_info(tmp_path, cfg, ModelInfo("mfcc", 26, str(tmp_path / "data"), SIZE, SIZE, 70.0))
    save_iteration(tmp_path, 3, model)
    loaded = load_model(tmp_path).model
    assert torch.equal(loaded.lip_basis_opacity, model.lip_basis_opacity)
    with torch.no_grad():
        again = loaded.deform("fine", cond)
    assert torch.allclose(again.means, blocks.means, atol=1e-6)


def test_lip_blendshapes_need_a_lip_code():
    from gaussiantalker.config import ConfigError

    with pytest.raises(ConfigError, match="lip_blendshapes needs a lip code"):
        tiny_config(lip_blendshapes=True)


def test_lip_blendshapes_hold_the_code_inside_the_tracked_range():
    model = make_model(lip_code_dim=4, lip_blendshapes=True)
    model.start_fine()
    _random_bases(model)
    model.eval()
    with torch.no_grad():
        model.lip_low.fill_(-1.0)
        model.lip_high.fill_(1.0)
        wide = torch.tensor([[5.0, -5.0, 0.5, 0.0]])
        held = model.blend_offsets(wide)["xyz"]
        assert torch.allclose(held, model.blend_offsets(torch.tensor([[1.0, -1.0, 0.5, 0.0]]))["xyz"])
        assert not torch.allclose(held, torch.einsum("bk,nkc->bnc", wide, model.lip_basis_xyz))

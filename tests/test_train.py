"""The trainer on tiny synthetic datasets: both stages, checkpoints, resume, densification, legacy data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gaussiantalker.config import load_config
from gaussiantalker.data import TalkingHeadData
from gaussiantalker.model import list_iterations, load_model
from gaussiantalker.model.io import ModelInfo
from gaussiantalker.synthetic import make_synthetic_dataset
from gaussiantalker.train import Trainer, TrainingError, train
from gaussiantalker.train.checkpoint import list_checkpoints

TINY = {"kplanes_config": {"output_coordinate_dim": 8, "resolution": [8, 8, 8]}, "d_model": 16, "net_width": 16,
            "ffn_hidden": 32, "max_points": 150, "tensorboard": False, "batch_size": 2}


def tiny(preset="64_dim_1_transformer", **overrides):
    return load_config(preset, **{**TINY, **overrides})


@pytest.fixture(autouse=True)
def one_thread():
    """Train on one thread: the CPU rasterizer's backward adds per-thread partial gradients of tiles that are
    handed out dynamically, so with several threads the float rounding varies from run to run and an
    interrupted run cannot be compared bit for bit (one thread is also faster on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    return make_synthetic_dataset(root / "data" / "synth", num_frames=24, size=32, num_points=300)


def _states_equal(a: dict, b: dict, path="") -> None:
    assert a.keys() == b.keys(), path
    for k, x in a.items():
        y = b[k]
        if isinstance(x, dict):
            _states_equal(x, y, f"{path}.{k}")
        elif isinstance(x, torch.Tensor):
            assert x.shape == y.shape and torch.allclose(x.double(), y.double(), rtol=0, atol=0), f"{path}.{k}"
        elif isinstance(x, (list, tuple)):
            assert len(x) == len(y), f"{path}.{k}"
            for i, (u, v) in enumerate(zip(x, y)):
                _states_equal({i: u}, {i: v}, f"{path}.{k}")
        else:
            assert x == y, f"{path}.{k}"


@pytest.mark.parametrize("preset", ["64_dim_1_transformer", "64_dim_2_transformer", "cpu_small"])
def test_every_config_trains_both_stages(preset, dataset, tmp_path):
    # The preset's own network sizes (only the image, point count and stage lengths are shrunk).
    cfg = load_config(preset, coarse_iterations=1, iterations=1, batch_size=2, max_points=150, resolution=-1,
                      tensorboard=False)
    model = train(dataset, config=cfg, device="CPU", workspace=tmp_path, progress=False)
    assert model.path == tmp_path / "output" / "synth" and model.iteration == 1
    assert model.audio_kind == "mfcc"
    assert list_checkpoints(model.path) == [2]
    ckpt = torch.load(model.path / "checkpoints" / "chkpnt_2.pth", weights_only=True)
    assert ckpt["progress"]["stage"] == "fine" and ckpt["progress"]["global_iteration"] == 2
    assert {"model", "optimizer", "scheduler", "strategy", "rng", "config"} <= set(ckpt)
    metrics = json.loads((model.path / "metrics.json").read_text())["metrics"]
    assert metrics["psnr"] > 5 and 0 < metrics["ssim"] <= 1 and metrics == pytest.approx(model.metrics)
    saved = json.loads((model.path / "config.json").read_text())
    assert saved["ModelHiddenParams"]["n_layer"] == cfg.hidden.n_layer
    loaded = load_model(model.path)
    assert loaded.audio_dim == 26 and loaded.width == 32 and loaded.model.num_points >= 1


def test_resume_equals_an_uninterrupted_run(dataset, tmp_path):
    # Densification and pruning active in the coarse stage, dropout in the fine stage: the strategy state,
    # the optimizer state, the data order and the RNG streams all have to survive the interruption.
    cfg = tiny(coarse_iterations=8, iterations=12, checkpoint_every=5, densify_from_iter=1,
               densification_interval=3, pruning_from_iter=1, pruning_interval=3,
               densify_grad_threshold_coarse=1e-7, opacity_threshold_coarse=0.3)
    data = TalkingHeadData.open(dataset)
    straight = Trainer(data, cfg, tmp_path / "straight", torch.device("cpu"), progress=False)
    straight.run()
    first = Trainer(data, cfg, tmp_path / "resumed", torch.device("cpu"), progress=False)
    first.run(stop_at=10)
    assert list_checkpoints(tmp_path / "resumed") == [5, 10]
    second = Trainer(data, cfg, tmp_path / "resumed", torch.device("cpu"), progress=False)
    second.run()
    a = torch.load(tmp_path / "straight" / "checkpoints" / "chkpnt_20.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "chkpnt_20.pth", weights_only=True)
    for key in ("progress", "model", "optimizer", "strategy", "rng"):
        _states_equal(a[key], b[key], key)


def _check_optimizer_matches(trainer: Trainer) -> None:
    model, opt = trainer.model, trainer.optimizer
    owned = {id(p) for g in opt.param_groups for p in g["params"]}
    for name, param in model.gaussian_parameters().items():
        if id(param) not in owned:
            continue
        state = opt.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                assert state[key].shape == param.shape, (name, key)
    for group in opt.param_groups:
        for p in group["params"]:
            assert any(p is q for q in model.parameters()), group["name"]
    n = model.num_points
    assert trainer.strategy.grad_accum.shape == (n,) and trainer.strategy.max_radii.shape == (n,)


def test_densify_and_prune_keep_the_optimizer_consistent_in_both_stages(dataset, tmp_path):
    cfg = tiny(coarse_iterations=6, iterations=6, checkpoint_every=0, split_gs_in_fine_stage=True,
               densify_from_iter=1, densification_interval=2, pruning_from_iter=1, pruning_interval=2,
               densify_grad_threshold_coarse=1e-8, densify_grad_threshold_fine_init=1e-8,
               opacity_threshold_coarse=0.3, opacity_threshold_fine_init=0.2, percent_dense=0.05)
    trainer = Trainer(TalkingHeadData.open(dataset), cfg, tmp_path / "m", torch.device("cpu"), progress=False)
    counts = {"coarse": set(), "fine": set()}
    for step in range(1, 13):
        trainer.run(stop_at=step)
        _check_optimizer_matches(trainer)
        counts[trainer.state.stage].add(trainer.model.num_points)
    assert len(counts["coarse"]) > 1 and len(counts["fine"]) > 1  # the point count changed in both stages


def test_nan_is_an_error_naming_the_iteration_not_a_restart(dataset, tmp_path):
    trainer = Trainer(TalkingHeadData.open(dataset), tiny(coarse_iterations=3, iterations=0), tmp_path / "m",
                      torch.device("cpu"), progress=False)
    trainer.prepare()
    with torch.no_grad():
        trainer.model.xyz[:] = float("nan")
    with pytest.raises(TrainingError, match="coarse iteration 1"):
        trainer.run()


def test_a_legacy_dataset_trains(tmp_path):
    legacy = make_synthetic_dataset(tmp_path / "data" / "old", num_frames=24, size=32, num_points=200, legacy=True)
    model = train(legacy, config=tiny(coarse_iterations=1, iterations=1), device="cpu", progress=False)
    assert model.path == tmp_path / "output" / "old"
    assert model.audio_kind == "deepspeech" and load_model(model.path).audio_dim == 29
    assert list_iterations(model.path) == [1]


def test_the_kernel_predictor_weighs_high_mfcc_cepstra_less(dataset, tmp_path):
    # MFCC rows: c0 weighs 1, c25 lip_kernel_taper (relative to c0, every row alike); other features all alike.
    legacy = make_synthetic_dataset(tmp_path / "data" / "old", num_frames=24, size=32, num_points=200, legacy=True)
    cases = ((dataset, 0.3, tiny("cpu_small")), (dataset, 0.6, tiny("cpu_small", lip_kernel_taper=0.6)),
             (legacy, 1.0, tiny("cpu_small")))
    for data, taper, cfg in cases:
        trainer = Trainer(TalkingHeadData.open(data), cfg, tmp_path / f"m{taper}", torch.device("cpu"), progress=False)
        trainer.prepare()
        predictor = trainer.model.lip_regression
        w = predictor.feat_weight.reshape(-1, 16, predictor.audio_dim)
        assert torch.allclose(w[..., -1], taper * w[..., 0]) and torch.all(w[..., 0] > 0)


def test_phonetic_features_train_and_render(tmp_path):
    """A dataset with the default offline features (MFCC + the recognised phone's articulation, D = 32): the kernel
    predictor tapers the MFCC values and weighs the six articulation values lip_kernel_phone_weight, its noisy
    copies are phonetic rows too, and the trained model renders a new audio through the same features."""
    pytest.importorskip("pocketsphinx", reason="pocketsphinx (a core dependency) is not installed")
    from gaussiantalker import render
    from gaussiantalker.audio import write_wav

    data = make_synthetic_dataset(tmp_path / "data" / "ph", num_frames=24, size=32, num_points=200,
                                  audio_kind="phonetic")
    cfg = tiny("cpu_small", coarse_iterations=1, iterations=1, lip_kernel_phone_weight=1.5)
    trainer = Trainer(TalkingHeadData.open(data), cfg, tmp_path / "m", torch.device("cpu"), progress=False)
    trainer.prepare()
    predictor = trainer.model.lip_regression
    assert trainer.model.audio_dim == predictor.audio_dim == 32
    w = predictor.feat_weight.reshape(-1, 16, 32)
    assert torch.allclose(w[..., 25], 0.3 * w[..., 0]) and torch.allclose(w[..., 26:], 1.5 * w[..., :1].expand_as(w[..., 26:]))
    bank = trainer._lip_bank()
    assert bank is not None and bank[0].shape[-1] == 32
    model = train(data, config=cfg, device="cpu", progress=False)
    assert model.audio_kind == "phonetic"
    wav = tmp_path / "new.wav"
    write_wav(wav, np.sin(np.linspace(0, 600, 16000)).astype(np.float32) * 0.3)
    out = render(model.path, wav, tmp_path / "new.mp4", device="cpu", progress=False)
    assert out.frames == 25 and Path(out.path).stat().st_size > 0


@pytest.mark.parametrize("phones_hold_the_mouth", [True, False])
def test_the_phones_are_used_only_where_they_raise_the_cross_validated_r(tmp_path, phones_hold_the_mouth, caplog):
    """The articulation values of a phonetic dataset weigh lip_kernel_phone_weight when they predict the training
    mouths better (cross-validated), else 0: here they are made to carry each frame's opening, or noise."""
    pytest.importorskip("pocketsphinx", reason="pocketsphinx (a core dependency) is not installed")
    import logging

    folder = make_synthetic_dataset(tmp_path / "data" / "ph60", num_frames=66, size=32, num_points=200,
                                    audio_kind="phonetic")
    opening = TalkingHeadData.open(folder).mouth_opening.numpy()
    windows = np.load(folder / "aud_phonetic.npy")
    if phones_hold_the_mouth:
        windows[:, :, 26:] = np.nan_to_num((opening - np.nanmean(opening)) / np.nanstd(opening))[:, None, None]
    else:
        windows[:, :, 26:] = np.random.default_rng(0).standard_normal(windows[:, :, 26:].shape)
    np.save(folder / "aud_phonetic.npy", windows)
    trainer = Trainer(TalkingHeadData.open(folder), tiny("cpu_small"), tmp_path / "m", torch.device("cpu"),
                      progress=False)
    computed = []
    folds = trainer._lip_kernel_folds
    trainer._lip_kernel_folds = lambda weights=None: computed.append(weights) or folds(weights)
    with caplog.at_level(logging.INFO, logger="gaussiantalker.train.trainer"):
        trainer.prepare()
    chosen = 1.0 if phones_hold_the_mouth else 0.0
    assert trainer._phone_weight == chosen
    w = trainer.model.lip_regression.feat_weight.reshape(-1, 16, 32)
    assert torch.allclose(w[..., 26:], chosen * w[..., :1].expand_as(w[..., 26:]))
    assert any("with the recognised phones" in r.getMessage() for r in caplog.records)
    # The fit and its calibration reuse the chosen weight's folds: two cross-validations, not three, and the same
    # out-of-fold codes as a fresh computation at that weight.
    assert len(computed) == 2 and all(c is not None for c in computed)
    assert torch.equal(trainer._folds_cv, folds(trainer._kernel_weights(chosen))[2])
    # model.json says what was chosen, and why.
    summary = ModelInfo.read(tmp_path / "m" / "model.json").lip_predictor
    assert summary["phone_weight"] == chosen and summary["audio_shift_frames"] == int(trainer.model.clip_shift)
    assert (summary["cv_r_with_phones"] > summary["cv_r_without_phones"]) == phones_hold_the_mouth
    assert len(summary["cv_r_per_component"]) == len(summary["gain"]) == trainer.model.lip_dim


def test_training_again_resumes_and_extends(dataset, tmp_path):
    cfg = tiny(coarse_iterations=2, iterations=1, checkpoint_every=0)
    first = train(dataset, config=cfg, device="cpu", workspace=tmp_path, name="again", progress=False)
    assert list_checkpoints(first.path) == [3]
    more = train(dataset, config=None, iterations=3, device="cpu", workspace=tmp_path, name="again", progress=False)
    assert list_checkpoints(more.path) == [3, 5] and more.iteration == 3
    assert more.config.optimization.iterations == 3 and more.config.hidden.d_model == 16  # the saved config


def test_tensorboard_scalars_and_previews_without_tensorflow(dataset, tmp_path):
    import sys

    pytest.importorskip("tensorboard")
    had_tf = "tensorflow" in sys.modules
    cfg = tiny(coarse_iterations=2, iterations=2, tensorboard=True, log_every=1, preview_every=2)
    model = train(dataset, config=cfg, device="cpu", workspace=tmp_path, progress=False)
    events = list((model.path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 200
    assert had_tf or "tensorflow" not in sys.modules  # tensorboard must not pull TensorFlow in


def test_coarse_pruning_reads_the_rendered_triplane_opacity():
    from gaussiantalker.model import GaussianTalkerModel
    from gaussiantalker.train.strategy import DensifyStrategy

    g = torch.Generator().manual_seed(0)
    xyz = torch.randn(200, 3, generator=g) * 0.05
    cfg = tiny(pruning_from_iter=0, pruning_interval=1, densify_from_iter=10**6)
    model = GaussianTalkerModel.from_point_cloud(xyz, None, cfg, 26)
    with torch.no_grad():  # a stale free opacity that would keep everything
        model.opacity.fill_(5.0)
        model.canonical_heads["opacity"][-1].weight.normal_(0.0, 1.0, generator=g)
    opt = torch.optim.Adam([{"params": [model.xyz], "name": "xyz", "lr": 1e-3}])
    model.xyz.grad = torch.ones_like(model.xyz)
    opt.step()  # gives xyz an Adam state to edit
    before = model.xyz.detach().clone()
    predicted = torch.sigmoid(model.canonical_attributes()["opacity"]).squeeze(-1).detach()
    threshold = float(predicted.median())
    cfg = cfg.replace(opacity_threshold_coarse=threshold)
    strategy = DensifyStrategy(cfg, 1.0, "coarse")
    strategy.reset(model.num_points, "cpu")
    assert strategy.step(1, model, opt)
    assert 0 < model.num_points < before.shape[0]
    assert torch.equal(model.xyz.detach(), before[predicted >= threshold])
    assert opt.state[model.xyz]["exp_avg"].shape == model.xyz.shape


class _Stop(Exception):
    pass


def test_progress_callback_reports_and_a_raising_callback_stops_training_resumably(dataset, tmp_path):
    from gaussiantalker import Progress

    cfg = tiny(coarse_iterations=10, iterations=20, checkpoint_every=15)
    seen = []

    def stop_in_fine(p):
        seen.append(p)
        if p.stage == "fine" and p.iteration >= 20:
            raise _Stop("cancelled by the caller")

    with pytest.raises(_Stop):
        train(dataset, config=cfg, device="cpu", workspace=tmp_path, name="cb", progress=False,
              callback=stop_in_fine)
    assert all(isinstance(p, Progress) for p in seen)
    assert [(p.stage, p.iteration) for p in seen] == [("coarse", 10), ("fine", 20)]
    first = seen[0]
    assert first.total == 30 and first.loss is not None and first.loss > 0 and first.psnr is not None
    assert first.points and first.eta is not None and first.eta > 0 and 0 < first.fraction < 1
    assert list_checkpoints(tmp_path / "output" / "cb") == [15, 20]  # saved on the way, and where it stopped
    log = [json.loads(line) for line in (tmp_path / "output" / "cb" / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [10, 20] and log[0]["stage"] == "coarse"

    seen.clear()
    model = train(dataset, config=None, device="cpu", workspace=tmp_path, name="cb", progress=False,
                  callback=seen.append)  # resumes at 20, finishes, evaluates
    assert [(p.stage, p.iteration) for p in seen] == [("fine", 30), ("evaluate", 30)]
    assert model.iteration == 20 and list_checkpoints(model.path) == [15, 20, 30]


def test_min_extent_floors_the_learning_rate_scale(dataset):
    """A clip whose head hardly moves has a tiny camera spread; the networks' learning rates must not follow it."""
    data = TalkingHeadData.open(dataset)
    spread = float(data.camera_extent)
    assert 0 < spread < 0.1  # the synthetic head moves a little
    floored = Trainer(data, tiny(), dataset.parent / "m1", torch.device("cpu"), progress=False)
    assert floored.extent == pytest.approx(0.1)
    assert floored.lrs.at(0)["deformation"] == pytest.approx(floored.config.optimization.deformation_lr_init * 1.0)
    original = Trainer(data, tiny(min_extent=0.0), dataset.parent / "m2", torch.device("cpu"), progress=False)
    assert original.extent == pytest.approx(spread)  # 0 keeps the original's camera spread
    big = Trainer(data, tiny(min_extent=spread / 2), dataset.parent / "m3", torch.device("cpu"), progress=False)
    assert big.extent == pytest.approx(spread)  # a floor below the spread changes nothing


def test_frame_order_repeats_the_wide_open_frames():
    from collections import Counter

    from gaussiantalker.train.sampler import FrameOrder

    repeat = [1, 2, 1, 3, 1]
    order = FrameOrder(5, seed=3, stage="fine", repeat=repeat)
    epoch = order.batch(0, order.n)
    assert order.n == 8 and Counter(epoch) == {i: r for i, r in enumerate(repeat)}
    assert order.batch(0, 20) == FrameOrder(5, seed=3, stage="fine", repeat=repeat).batch(0, 20)  # seeded
    assert sorted(FrameOrder(5, seed=3, stage="fine").batch(0, 5)) == list(range(5))  # default: once each
    with pytest.raises(ValueError, match="repeat"):
        FrameOrder(5, seed=3, stage="fine", repeat=[1, 0, 1, 1, 1])


@pytest.fixture(scope="module")
def dataset60(tmp_path_factory):
    """60 training frames: enough for the kernel lip predictor's 5-fold cross-validation (it needs 50)."""
    root = tmp_path_factory.mktemp("ws60")
    return make_synthetic_dataset(root / "data" / "synth60", num_frames=66, size=32, num_points=300)


def _record_fine_lips(monkeypatch) -> list:
    """The lip codes every fine-stage deformation is given, as the renderer sees them."""
    from gaussiantalker.model.talker import GaussianTalkerModel

    seen, deform = [], GaussianTalkerModel.deform

    def recording(self, stage, cond=None):
        if stage == "fine" and cond is not None and cond.lips is not None:
            seen.append(cond.lips.detach().cpu().clone())
        return deform(self, stage, cond)

    monkeypatch.setattr(GaussianTalkerModel, "deform", recording)
    return seen


def test_the_renderer_is_shown_out_of_fold_predicted_codes(dataset60, tmp_path, monkeypatch):
    # share 1: every fine-stage frame gets its out-of-fold predicted code (calibrated, clamped, no noise)
    seen = _record_fine_lips(monkeypatch)
    cfg = tiny("cpu_small", coarse_iterations=1, iterations=4, batch_size=4, resolution=-1,
               lip_code_predicted_share=1.0)
    trainer = Trainer(TalkingHeadData.open(dataset60), cfg, tmp_path / "all", torch.device("cpu"), progress=False)
    trainer.run()
    model, split = trainer.model, trainer.train_split
    predicted = trainer._predicted
    assert predicted.shape == (len(split), model.lip_dim) == (60, 6)
    assert model.clip_shift == 0  # the synthetic clip's sound is in step with its picture
    rows = torch.cat(seen)
    assert rows.shape == (16, 6)
    assert all(bool((predicted == row).all(1).any()) for row in rows)  # each one a frame's predicted code
    assert bool((rows >= model.lip_low).all()) and bool((rows <= model.lip_high).all())  # clamped as at render time
    # out of fold: further from the tracked codes than the final fit's own (in-sample) predictions of them
    from gaussiantalker.data import audio_context

    tracked = split.lips[:, : model.lip_dim]
    with torch.no_grad():
        insample = model.lip_code(audio_context(split.audio, torch.arange(len(split))))
    assert float((predicted - tracked).abs().mean()) > 1.5 * float((insample - tracked).abs().mean())

    # share 0.5: some frames get the predicted code, the others the tracked one plus noise
    seen.clear()
    cfg = cfg.replace(lip_code_predicted_share=0.5, iterations=8)
    half = Trainer(TalkingHeadData.open(dataset60), cfg, tmp_path / "half", torch.device("cpu"), progress=False)
    half.run()
    rows = torch.cat(seen)
    from_predicted = torch.tensor([bool((half._predicted == row).all(1).any()) for row in rows])
    assert 0 < int(from_predicted.sum()) < len(rows)

    # share 0 (the GaussianTalker presets and the default): tracked codes only, nothing cross-validated kept
    seen.clear()
    none = Trainer(TalkingHeadData.open(dataset60), cfg.replace(lip_code_predicted_share=0.0, iterations=2),
                   tmp_path / "none", torch.device("cpu"), progress=False)
    none.run()
    assert none._predicted_lips() is None and len(seen) == 2
    assert not any(bool((half._predicted == row).all(1).any()) for row in torch.cat(seen))


@pytest.fixture(scope="module")
def dataset60_phonetic(tmp_path_factory):
    pytest.importorskip("pocketsphinx", reason="pocketsphinx (a core dependency) is not installed")
    root = tmp_path_factory.mktemp("ws60p")
    return make_synthetic_dataset(root / "data" / "synth60p", num_frames=66, size=32, num_points=300,
                                  audio_kind="phonetic")


@pytest.mark.parametrize("kind", ["mfcc", "phonetic"])
def test_resume_with_predicted_codes_equals_an_uninterrupted_run(kind, request, tmp_path):
    # The out-of-fold codes are not in the checkpoint: the resumed run recomputes them from the same
    # deterministic folds (with phonetic features, after choosing the phones' weight again), and the frames picked
    # for them follow the sample count, so it goes on exactly.
    cfg = tiny("cpu_small", coarse_iterations=3, iterations=8, checkpoint_every=5, batch_size=4, resolution=-1,
               lip_code_predicted_share=0.5)
    data = TalkingHeadData.open(request.getfixturevalue("dataset60" if kind == "mfcc" else "dataset60_phonetic"))
    Trainer(data, cfg, tmp_path / "straight", torch.device("cpu"), progress=False).run()
    first = Trainer(data, cfg, tmp_path / "resumed", torch.device("cpu"), progress=False)
    first.run(stop_at=7)
    assert list_checkpoints(tmp_path / "resumed") == [5, 7]
    second = Trainer(data, cfg, tmp_path / "resumed", torch.device("cpu"), progress=False)
    second.run()
    assert second._predicted is not None and torch.equal(second._predicted, first._predicted)
    if kind == "phonetic":
        assert second._phone_weight is not None and second._phone_weight == first._phone_weight
    # The resumed run keeps what the fresh run's fit recorded in model.json.
    recorded = ModelInfo.read(tmp_path / "straight" / "model.json").lip_predictor
    assert recorded is not None and ModelInfo.read(tmp_path / "resumed" / "model.json").lip_predictor == recorded
    assert (recorded["phone_weight"] is None) == (kind == "mfcc")
    a = torch.load(tmp_path / "straight" / "checkpoints" / "chkpnt_11.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "chkpnt_11.pth", weights_only=True)
    for key in ("progress", "model", "optimizer", "strategy", "rng"):
        _states_equal(a[key], b[key], key)


def test_lip_blendshapes_follow_densification_and_resume_exactly(dataset60, tmp_path):
    # The bases are per-Gaussian: created at the fine stage's start for the Gaussians the coarse stage left, edited
    # with them when the fine stage densifies and prunes, trained, and restored by a resumed run.
    cfg = tiny("cpu_small", coarse_iterations=4, iterations=10, checkpoint_every=7, batch_size=2, resolution=-1,
               lip_blendshapes=True, split_gs_in_fine_stage=True, densify_from_iter=1, densification_interval=2,
               pruning_from_iter=1, pruning_interval=2, densify_until_iter=9, densify_grad_threshold_coarse=1e-8,
               densify_grad_threshold_fine_init=1e-8, opacity_threshold_coarse=0.3, opacity_threshold_fine_init=0.2,
               percent_dense=0.05)
    data = TalkingHeadData.open(dataset60)
    straight = Trainer(data, cfg, tmp_path / "straight", torch.device("cpu"), progress=False)
    counts = set()
    for step in range(5, 15):
        straight.run(stop_at=step)
        _check_optimizer_matches(straight)
        model = straight.model
        assert model.lip_basis_xyz.shape[0] == model.num_points == model.lip_basis_opacity.shape[0]
        counts.add(model.num_points)
    assert len(counts) > 1  # the fine stage changed the point count
    mask = straight.model.lip_mask[:, 0]
    assert 0 < int(mask.sum()) < mask.numel()  # the bases act at the mouth only
    outside = mask == 0
    assert not straight.model.lip_basis_xyz[outside].any() and not straight.model.lip_basis_opacity[outside].any()
    assert straight.model.lip_basis_xyz.abs().sum() > 0 and straight.model.lip_basis_dc.abs().sum() > 0
    first = Trainer(data, cfg, tmp_path / "resumed", torch.device("cpu"), progress=False)
    first.run(stop_at=9)
    second = Trainer(data, cfg, tmp_path / "resumed", torch.device("cpu"), progress=False)
    second.run()
    a = torch.load(tmp_path / "straight" / "checkpoints" / "chkpnt_14.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "chkpnt_14.pth", weights_only=True)
    assert "lip_basis_dc" in a["model"]
    for key in ("progress", "model", "optimizer", "strategy", "rng"):
        _states_equal(a[key], b[key], key)
    loaded = load_model(tmp_path / "resumed")
    assert torch.equal(loaded.model.lip_basis_xyz, second.model.lip_basis_xyz.cpu())


def test_each_rank_picks_its_rows_of_the_one_process_picks(dataset60, tmp_path):
    # Data-parallel: the picks are drawn for the whole global batch and sliced, so ranks holding rows 0:3 and
    # 3:5 of a batch of 5 give those rows exactly what one process gives them.
    from gaussiantalker.data import collate

    cfg = tiny("cpu_small", coarse_iterations=1, iterations=2, batch_size=5, resolution=-1,
               lip_code_predicted_share=0.5)
    trainer = Trainer(TalkingHeadData.open(dataset60), cfg, tmp_path / "m", torch.device("cpu"), progress=False)
    trainer.prepare()
    split = trainer.train_split
    picked = 0
    for consumed in range(0, 60, 5):
        trainer.state.consumed = consumed
        batch = collate([split[k] for k in range(consumed, consumed + 5)])
        lips = batch.lips[:, :6] + 0.1
        trainer._part = (0, 5, 5)
        whole = trainer._with_predicted_lips(batch, lips)
        parts = []
        for lo, hi in ((0, 3), (3, 5)):
            trainer._part = (lo, hi, 5)
            rows = collate([split[k] for k in range(consumed + lo, consumed + hi)])
            parts.append(trainer._with_predicted_lips(rows, lips[lo:hi]))
        assert torch.equal(torch.cat(parts), whole)
        picked += int((whole != lips).any(1).sum())
    assert 10 < picked < 50  # about half of the 60


def test_a_predicted_share_without_the_kernel_predictor_is_reported_not_silently_dropped(dataset, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="gaussiantalker.train.trainer"):
        Trainer(TalkingHeadData.open(dataset), tiny("cpu_small", lip_predictor="network",
                                                     lip_code_predicted_share=0.5), tmp_path / "m",
                torch.device("cpu"), progress=False)
    assert "lip_code_predicted_share 0.50 is ignored" in caplog.text and "'network'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="gaussiantalker.train.trainer"):
        Trainer(TalkingHeadData.open(dataset), tiny("cpu_small", lip_code_predicted_share=0.5), tmp_path / "k",
                torch.device("cpu"), progress=False)
    assert "is ignored" not in caplog.text


def test_a_clip_whose_sound_is_early_is_learnt_in_step(tmp_path, caplog):
    # The synthetic clip with its sound moved 3 frames (120 ms) ahead of the picture: frame k's aud_id is k + 3.
    import gaussiantalker

    path = make_synthetic_dataset(tmp_path / "data" / "early", num_frames=100, size=32, num_points=300)
    for name in ("train", "val"):
        doc_path = path / f"transforms_{name}.json"
        doc = json.loads(doc_path.read_text())
        for frame in doc["frames"]:
            frame["aud_id"] = int(frame["img_id"]) + 3
        doc_path.write_text(json.dumps(doc))
    cfg = tiny("cpu_small", coarse_iterations=3, iterations=2, checkpoint_every=2, batch_size=4, resolution=-1)
    with caplog.at_level("WARNING", logger="gaussiantalker.train.trainer"):
        trainer = Trainer(TalkingHeadData.open(path), cfg, tmp_path / "m", torch.device("cpu"), progress=False)
        trainer.run()
    # -3, or -4: the synthetic subject's mouth is read about as well from its own window as from the one before.
    shift = trainer.model.clip_shift
    assert shift in (-3, -4) and f"{40 * -shift} ms ahead of its picture" in caplog.text
    split = trainer.train_split
    m = trainer.data.audio.shape[0]
    assert split.audio_rows.tolist() == [min(max(i + 3 + shift, 0), m - 1) for i in split.img_ids]
    # The saved model: a Talker reads the clip's own audio the same way (held-out frames, evaluate), and a new
    # audio as it is.
    talker = gaussiantalker.load(tmp_path / "m", device="CPU")
    assert talker.model.clip_shift == shift and talker.data.audio_shift == shift
    val = talker.full.split("val")
    assert val.audio_rows.tolist() == [min(max(i + 3 + shift, 0), m - 1) for i in val.img_ids]
    result = gaussiantalker.evaluate(talker)
    assert any("ahead of its picture" in note and f"read {-shift} frame(s) earlier" in note for note in result.notes)
    # Other voices are scored against the real footage with its own sound read in step as well: it follows that
    # sound better than the sound as the transforms give it (3 frames early).
    from gaussiantalker.evaluate import evaluate_audio

    voice = path / "aud_novel.wav"
    (in_step,) = evaluate_audio(talker, [voice], progress=False)
    talker.data.audio_shift = 0
    (as_given,) = evaluate_audio(talker, [voice], progress=False)
    talker.data.audio_shift = shift
    assert in_step.reference_pearson > as_given.reference_pearson + 0.1
    # A resumed run reads the shift from its checkpoint (and its fresh dataset object is shifted again).
    first = Trainer(TalkingHeadData.open(path), cfg, tmp_path / "r", torch.device("cpu"), progress=False)
    first.run(stop_at=2)
    second = Trainer(TalkingHeadData.open(path), cfg, tmp_path / "r", torch.device("cpu"), progress=False)
    second.prepare()
    assert second.state.global_iteration == 2 and second.model.clip_shift == shift
    assert torch.equal(second.train_split.audio, split.audio)
    # A dataset object that comes shifted is measured afresh; off, the clip is read as its transforms say (the
    # GaussianTalker presets, without the kernel predictor, too).
    shifted = trainer.data
    assert shifted.audio_shift == shift
    again = Trainer(shifted, cfg, tmp_path / "again", torch.device("cpu"), progress=False)
    again.prepare()
    assert again.model.clip_shift == shift and torch.equal(again.train_split.audio, split.audio)
    for name, c in (("off", cfg.replace(lip_kernel_align=False)), ("original", tiny())):
        other = Trainer(shifted, c, tmp_path / name, torch.device("cpu"), progress=False)
        other.prepare()
        assert other.model.clip_shift == 0 and shifted.audio_shift == 0
        assert other.train_split.audio_rows.tolist() == [min(i + 3, m - 1) for i in other.train_split.img_ids]
        shifted.audio_shift = shift


def test_the_mouth_region_is_the_front_of_the_head_inside_the_lip_crops():
    from gaussiantalker.camera import cameras_from_transforms, project_points
    from gaussiantalker.train.trainer import mouth_region

    g = torch.Generator().manual_seed(0)
    p = torch.randn(4000, 3, generator=g)
    xyz = 0.1 * p / p.norm(dim=1, keepdim=True)  # a head-sized sphere at the origin
    c2w = torch.eye(4).repeat(3, 1, 1)
    c2w[:, 2, 3] = torch.tensor([0.5, 0.52, 0.48])  # cameras on +z looking at it
    c2w[:, 0, 3] = torch.tensor([0.0, 0.01, -0.01])
    cams = cameras_from_transforms(c2w, 120.0, 64, 64)
    rects = torch.tensor([[40, 50, 27, 37]] * 3)  # rows 40-50, columns 27-37: below the centre
    inside = mouth_region(xyz, cams, rects, margin=0.0, share=1.0)
    assert 0 < int(inside.sum()) < 200
    uv = project_points(xyz[inside], cams)  # [3, n, 2]
    assert ((uv[..., 1] >= 40) & (uv[..., 1] <= 50) & (uv[..., 0] >= 27) & (uv[..., 0] <= 37)).all()
    assert (xyz[inside, 2] > 0).all()  # the side facing the cameras, not the back of the sphere behind the crop
    behind = (xyz[:, 2] < 0) & ((project_points(xyz, cams)[0, :, 1] - 45).abs() < 4)
    assert behind.any() and not (inside & behind).any()
    assert int(mouth_region(xyz, cams, rects, margin=0.5, share=1.0).sum()) > int(inside.sum())  # the margin grows it

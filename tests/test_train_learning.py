"""Learning, not just running: after a short CPU training on a synthetic clip whose mouth opens with the audio
energy, new audio opens the rendered mouth in step with its energy; without the audio token it does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gaussiantalker.config import load_config
from gaussiantalker.data import TalkingHeadData, audio_context, collate
from gaussiantalker.model import Conditions, load_model
from gaussiantalker.render.rasterize import render_batch
from gaussiantalker.synthetic import make_synthetic_dataset, synthetic_energy
from gaussiantalker.train import train

SIZE = 64


def _mouth_darkness(model, audio: torch.Tensor, batch) -> np.ndarray:
    """Minus the mean rendered colour inside each frame's lip rectangle (an open mouth is dark)."""
    with torch.no_grad():
        g = model.deform("fine", Conditions(audio, batch.eye, batch.cam))
        img = render_batch(g, batch.cameras, batch.bg_torso).image
    return np.array([-float(img[i, :, r0:r1, c0:c1].mean())
                     for i, (r0, r1, c0, c1) in enumerate(batch.lips_rect.tolist())])


def test_rendered_mouth_follows_new_audio(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster on a shared 2-core machine, and bit-reproducible (see test_train.py)
    try:
        clip = make_synthetic_dataset(tmp_path / "data" / "talk", num_frames=132, size=SIZE, num_points=400)
        novel = make_synthetic_dataset(tmp_path / "novel", num_frames=66, size=SIZE, num_points=10, seed=1)
        # A small network and a short run; the network learning rate is raised for the short fine stage.
        # (120 training frames: with 60 the mapping learnt from the training audio generalises less well.)
        cfg = load_config("64_dim_1_transformer",
                          kplanes_config={"output_coordinate_dim": 16, "resolution": [16, 16, 16]},
                          d_model=32, net_width=64, coarse_iterations=60, iterations=400, batch_size=4,
                          densify_until_iter=0, deformation_lr_init=3e-3, deformation_lr_final=3e-4,
                          position_lr_max_steps=1000, checkpoint_every=0, tensorboard=False)
        model = train(clip, config=cfg, device="cpu", progress=False)
        assert model.metrics["psnr"] > 25
        loaded = load_model(model.path).model

        # Drive the trained head with the *new* clip's audio, through the training clip's cameras and blinks.
        train_split = TalkingHeadData.open(clip).split("train")
        windows = TalkingHeadData.open(novel).audio  # [M, 16, D]
        n = windows.shape[0]
        batch = collate([train_split[k % len(train_split)] for k in range(n)])
        audio = audio_context(windows, torch.arange(n))
        energy = synthetic_energy(novel)[:n]

        with_audio = _mouth_darkness(loaded, audio, batch)
        r_audio = np.corrcoef(with_audio, energy)[0, 1]

        # The same model with its audio token zeroed: only the camera, blink and null tokens remain.
        hook = loaded.audio_encoder.register_forward_hook(lambda m, i, out: (torch.zeros_like(out[0]), out[1]))
        without = _mouth_darkness(loaded, audio, batch)
        hook.remove()
        r_silent = np.corrcoef(without, energy)[0, 1]
    finally:
        torch.set_num_threads(threads)
    print(f"Pearson with audio {r_audio:.3f}, audio token zeroed {r_silent:.3f}")
    assert r_audio > 0.7, (r_audio, r_silent)
    assert abs(r_silent) < 0.5, (r_audio, r_silent)


def test_cpu_small_lip_code_learns_at_the_preset_rates(tmp_path):
    """cpu_small's lip-code path at its own learning rates (no raised rates, unlike the test above): new audio
    drives the rendered mouth through the predicted lip code; with the code held constant it does not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clip = make_synthetic_dataset(tmp_path / "data" / "talk", num_frames=132, size=SIZE, num_points=400)
        novel = make_synthetic_dataset(tmp_path / "novel", num_frames=66, size=SIZE, num_points=10, seed=1)
        preset = load_config("cpu_small")
        assert preset.hidden.lip_code_dim > 0
        # Shorter stages and a smaller tri-plane for a 64-pixel subject; every learning rate is cpu_small's.
        cfg = load_config("cpu_small", kplanes_config={"output_coordinate_dim": 16, "resolution": [16, 16, 16]},
                          d_model=32, coarse_iterations=60, iterations=400, densify_until_iter=0, resolution=-1,
                          max_points=0, checkpoint_every=0, tensorboard=False, preview_every=0)
        for key in ("deformation_lr_init", "deformation_lr_final", "grid_lr_init", "lip_code_lr", "feature_lr"):
            assert getattr(cfg.optimization, key) == getattr(preset.optimization, key), key
        model = train(clip, config=cfg, device="cpu", progress=False)
        loaded = load_model(model.path).model
        assert loaded.lip_dim == preset.hidden.lip_code_dim
        # the synthetic subject's mouth is shut in its silences: closing it there costs nothing, so renders do
        assert loaded.closes_in_silence, json.loads((Path(model.path) / "model.json").read_text())

        train_split = TalkingHeadData.open(clip).split("train")
        windows = TalkingHeadData.open(novel).audio
        n = windows.shape[0]
        batch = collate([train_split[k % len(train_split)] for k in range(n)])
        audio = audio_context(windows, torch.arange(n))
        energy = synthetic_energy(novel)[:n]
        r_audio = np.corrcoef(_mouth_darkness(loaded, audio, batch), energy)[0, 1]
        # The control: one constant lip code for every frame (the calibration's centre). The code is the audio's only
        # way in, through the attention's token and, with lip blendshapes (on in cpu_small), each mouth Gaussian's
        # basis, so a constant code must leave the mouth still.
        assert loaded.lip_blend == preset.hidden.lip_blendshapes
        loaded.lip_code = lambda a: loaded.lip_center.expand(a.shape[0], -1)
        r_silent = np.corrcoef(_mouth_darkness(loaded, audio, batch), energy)[0, 1]
        del loaded.lip_code
    finally:
        torch.set_num_threads(threads)
    print(f"cpu_small: Pearson with audio {r_audio:.3f}, lip code held constant {r_silent:.3f}")
    assert r_audio > 0.7, (r_audio, r_silent)
    assert abs(r_silent) < 0.5, (r_audio, r_silent)

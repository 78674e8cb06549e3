"""Datasets in the original format, both ways (README: "Datasets made by GaussianTalker / ER-NeRF train
unchanged"): folders laid out by hand as GaussianTalker, AD-NeRF and ER-NeRF write them (``_original_format``,
not our writer) open and train here; the checks the original loader would make pass on those folders.
(Our own preprocessing output against the same checks: ``test_preprocess.py``.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _original_format import build_original_dataset, original_loader_problems

# variant -> (kind, feature dim D, initial point cloud)
VARIANTS = {
    "gaussiantalker": ("deepspeech", 29, "track_params.pt vertices"),
    "adnerf": ("deepspeech", 29, "track_params.pt vertices"),
    "ernerf": ("hubert", 1024, "ellipsoid fallback"),
    "ernerf-eo": ("wav2vec-eo", 44, "ellipsoid fallback"),
    "ernerf-wav2vec": ("wav2vec", 32, "ellipsoid fallback"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("original")
    return {v: (root / "data" / v, build_original_dataset(root / "data" / v, v)) for v in VARIANTS}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_original_layouts_open(folders, variant):
    from gaussiantalker.data import TalkingHeadData, collate
    from gaussiantalker.preprocess import Dataset

    folder, made = folders[variant]
    kind, dim, source = VARIANTS[variant]
    data = TalkingHeadData.open(folder)
    assert data.legacy and (data.audio_kind, data.audio_dim) == (kind, dim)
    assert data.audio.shape == (made["frames"], 16, dim) and data.audio.dtype == torch.float32
    handle = Dataset.open(folder)
    assert handle.legacy and handle.audio_kind == kind and handle.num_frames == made["frames"]
    # eye: au.csv with or without OpenFace's leading spaces
    np.testing.assert_allclose(data.eye.numpy(), np.clip(made["au45"], 0, 2) / 2, rtol=1e-6)
    # features, as the model reads them: [M, 16, D] windows
    feats = made["features"]
    if variant == "ernerf":  # [M, 2, D] pairs of 50 Hz rows -> 16-row windows centred on the frame
        rows = feats.reshape(-1, dim)
        for j in (0, 5, made["frames"] - 1):
            for r in range(16):
                k = 2 * j - 8 + r
                want = rows[k] if 0 <= k < len(rows) else np.zeros(dim)
                np.testing.assert_allclose(data.audio[j, r].numpy(), want, rtol=1e-6)
    else:
        np.testing.assert_allclose(data.audio.numpy(), feats.astype(np.float32), rtol=1e-6)
    xyz, _ = data.point_cloud()
    assert data.point_source == source
    if made["vertices"] is not None:  # the original's init: mean over frames, tracker units -> scene units x 0.1
        np.testing.assert_allclose(xyz.numpy(), made["vertices"].mean(0) * 0.1, rtol=1e-4, atol=1e-6)
    batch = collate([data.split("train")[i] for i in range(2)])
    assert batch.audio.shape == (2, 8, 16, dim) and torch.isfinite(batch.target).all()
    # head mask from the BGR colour codes: the face, not the torso
    assert 0.05 < float(batch.head_mask.mean()) < 0.6


def test_hand_built_folders_pass_the_original_loader_checks(folders):
    """The checks of ``original_loader_problems`` accept the original's own layout (so they test the format,
    not our writer) and catch what the original cannot read."""
    folder, _ = folders["gaussiantalker"]
    assert original_loader_problems(folder) == []
    problems = original_loader_problems(folders["ernerf"][0])
    assert "aud_ds.npy: missing" in problems and "track_params.pt: no 'vertices'" in problems
    assert any("AU45_r" in p for p in problems)  # ER-NeRF's csv without the leading space


@pytest.mark.parametrize("variant", ["gaussiantalker", "ernerf", "ernerf-eo"])
def test_train_on_an_original_layout_dataset(folders, variant, tmp_path):
    """gt.train on the folder as the other project left it: both stages run, the model records the
    folder's feature kind, and it renders the held-out frames."""
    import gaussiantalker as gt
    from gaussiantalker.config import load_config

    folder, made = folders[variant]
    kind, dim, _ = VARIANTS[variant]
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    config = load_config("cpu_small", coarse_iterations=30, iterations=10, resolution=64, max_points=2000,
                         batch_size=4)
    model = gt.train(folder, config=config, device="cpu", progress=False, workspace=tmp_path / "ws",
                     name=f"from-{variant}")
    assert model.iteration == 10 and model.audio_kind == kind
    assert (model.path / "point_cloud" / "iteration_10" / "point_cloud.ply").is_file()
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before  # the dataset is not changed
    psnr = model.metrics.get("psnr") if model.metrics else None
    assert psnr is not None and np.isfinite(psnr) and psnr > 15, model.metrics

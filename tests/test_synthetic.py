"""The synthetic dataset generator: deterministic, both layouts, real audio features, and images that
agree with the cameras and the point cloud (checked with the real rasterizer)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from gaussiantalker.synthetic import HEAD_AXES, make_synthetic_dataset, synthetic_energy


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ours", seed=3)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "legacy", seed=3, legacy=True)


def test_deterministic_by_seed(tmp_path, ours):
    again = make_synthetic_dataset(tmp_path / "again", seed=3)
    other = make_synthetic_dataset(tmp_path / "other", seed=4)
    for rel in ("aud_mfcc.npy", "ori_imgs/7.jpg", "parsing/7.png", "torso_imgs/7.png", "transforms_val.json",
                "points3d.ply", "au.csv", "ori_imgs/7.lms"):
        assert (again / rel).read_bytes() == (ours / rel).read_bytes(), rel
    assert (other / "aud_mfcc.npy").read_bytes() != (ours / "aud_mfcc.npy").read_bytes()
    assert not np.array_equal(synthetic_energy(other), synthetic_energy(ours))


def test_our_layout(ours):
    meta = json.loads((ours / "meta.json").read_text())
    assert meta["format"] == "gaussiantalker-dataset" and meta["num_frames"] == 66
    assert meta["audio"] == {"kind": "mfcc", "dim": 26, "file": "aud_mfcc.npy"}
    assert meta["split"] == {"train": [0, 60], "val": [60, 66]}
    w = np.load(ours / "aud_mfcc.npy")
    assert w.shape == (66, 16, 26) and w.dtype == np.float32
    params = torch.load(ours / "track_params.pt", weights_only=True)
    assert set(params) == {"id", "exp", "euler", "trans", "focal"}  # ours: no per-frame vertices
    for name in ("bc.jpg", "aud.wav", "aud_train.wav", "aud_novel.wav", "points3d.ply", "gt_imgs/65.jpg"):
        assert (ours / name).is_file(), name


def test_legacy_layout(legacy):
    assert not (legacy / "meta.json").exists() and not (legacy / "points3d.ply").exists()
    ds = np.load(legacy / "aud_ds.npy")
    assert ds.shape == (66, 16, 29) and ds.dtype == np.float64
    params = torch.load(legacy / "track_params.pt", weights_only=True)
    assert params["vertices"].shape == (66, 2000, 3)
    # Tracker units: the head is ~10x the scene-unit ellipsoid.
    assert params["vertices"][0, :, 0].abs().max() == pytest.approx(HEAD_AXES[0] * 10, rel=1e-3)
    assert params["trans"][:, 2].mean() == pytest.approx(-7.0, abs=0.2)
    header = (legacy / "au.csv").read_text().splitlines()[0]
    assert ", AU45_r" in header  # OpenFace's ", " separator: the column is " AU45_r"
    # Parsing maps hold the original's colours: head blue, neck green, torso red, background white (RGB).
    bgr = cv2.imread(str(legacy / "parsing" / "0.png"))
    rgb_colours = {tuple(c) for c in bgr[..., ::-1].reshape(-1, 3)}
    assert rgb_colours == {(0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255)}


def test_features_are_computed_from_the_written_audio(ours, legacy):
    import gaussiantalker.audio as gta

    feats = gta.extract_features(ours / "aud.wav", kind="mfcc", num_frames=66)
    np.testing.assert_allclose(np.load(ours / "aud_mfcc.npy"), feats.windows, atol=1e-5)
    # The legacy 29-dim stand-in keeps the MFCC windows in its first 26 values.
    np.testing.assert_allclose(np.load(legacy / "aud_ds.npy")[..., :26], feats.windows, atol=1e-5)


def test_energy_is_recoverable_and_visible(ours):
    opening = synthetic_energy(ours)
    assert opening.shape == (66,) and opening.min() >= 0 and 0.5 < opening.max() <= 1.0
    c0 = np.load(ours / "aud_mfcc.npy")[:, 8, 0]  # log energy of the window's centre row
    assert np.corrcoef(c0, opening)[0, 1] > 0.9
    # The mouth's dark pixels grow with the opening.
    dark = []
    for k in range(66):
        img = cv2.imread(str(ours / "ori_imgs" / f"{k}.jpg")).astype(np.float64)
        lms = np.loadtxt(ours / "ori_imgs" / f"{k}.lms")
        c0_, r0 = lms[48:60].min(0).astype(int)
        c1_, r1 = lms[48:60].max(0).astype(int) + 1
        dark.append(float((img[r0:r1, c0_:c1_].sum(-1) < 180).sum()))
    assert np.corrcoef(dark, opening)[0, 1] > 0.9


def test_val_energy_is_not_a_replay_of_train(ours):
    opening = synthetic_energy(ours)
    train, val = opening[:60], opening[60:]
    dists = [np.abs(train[i : i + len(val)] - val).max() for i in range(len(train) - len(val) + 1)]
    assert min(dists) > 0.05


def test_landmarks_follow_the_rasterizer_cameras(ours):
    """The .lms files (tracker projection) equal the rasterizer's projection of the same canonical points."""
    from gaussiantalker.camera import cameras_from_transforms, project_points
    from gaussiantalker.synthetic import _landmarks_3d

    doc = json.loads((ours / "transforms_train.json").read_text())
    truth = json.loads((ours / "synthetic.json").read_text())
    for frame in doc["frames"][::17]:
        k = frame["img_id"]
        cams = cameras_from_transforms(torch.tensor(frame["transform_matrix"], dtype=torch.float64),
                                       doc["focal_len"], 64, 64)
        pts = torch.from_numpy(_landmarks_3d(truth["opening"][k], truth["blink"][k]))
        px = project_points(pts, cams).numpy()
        np.testing.assert_allclose(px, np.loadtxt(ours / "ori_imgs" / f"{k}.lms"), atol=1e-4)


def test_images_agree_with_point_cloud_and_cameras(ours):
    """Gaussians placed at points3d.ply (their colours) rendered with the dataset's cameras cover the
    parsing head mask and reproduce the target image (closed mouth aside)."""
    from diff_gaussian_rasterization import (
        GaussianRasterizationSettings,
        rasterize_gaussians,
    )

    from gaussiantalker.data import TalkingHeadData, collate

    data = TalkingHeadData.open(ours)
    xyz, rgb = data.point_cloud()
    split = data.split("train")
    batch = collate([split[k] for k in (0, 20, 40)])
    cams = batch.cameras
    settings = GaussianRasterizationSettings(
        image_height=64, image_width=64, tanfovx=cams.tanfovx, tanfovy=cams.tanfovy, bg=batch.bg_torso,
        scale_modifier=1.0, viewmatrix=cams.world_view_transform, projmatrix=cams.full_proj_transform,
        sh_degree=0, campos=cams.camera_center, prefiltered=False)
    n = xyz.shape[0]
    out = rasterize_gaussians(settings, xyz, torch.full((n, 1), 0.95), colors_precomp=rgb,
                              scales=torch.full((n, 3), 0.004), rotations=torch.tensor([1.0, 0, 0, 0]).expand(n, 4))
    covered = out.alpha > 0.5  # [B, 1, H, W]
    mask = batch.head_mask > 0.5
    for b in range(3):
        # Same silhouette position per frame (the Gaussians' footprint only widens it a little) ...
        yc, xc = torch.nonzero(covered[b, 0], as_tuple=True)
        ym, xm = torch.nonzero(mask[b, 0], as_tuple=True)
        assert abs(xc.float().mean() - xm.float().mean()) < 0.3
        assert abs(yc.float().mean() - ym.float().mean()) < 0.3
        assert (covered[b] & mask[b]).sum() >= 0.99 * mask[b].sum()
        assert covered[b].sum() <= 1.35 * mask[b].sum()
    # ... and the colours match the target.
    mse = ((out.color - batch.target) ** 2).mean()
    assert -10 * torch.log10(mse) > 22.0

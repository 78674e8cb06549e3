"""Evaluation on the held-out split: metrics, metrics.json merge, the self-contained report, LMD."""

from __future__ import annotations

import json
import re
import sys
import types

import numpy as np
import pytest
from _infer_helpers import trained_model

from gaussiantalker.evaluate import _still_mouth_note, envelope_ratio, evaluate, interior_mask, mouth_lmd, read_training_curves
from gaussiantalker.report import svg_line_plot


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return trained_model(tmp_path_factory)


def test_evaluate_writes_metrics_and_report(model_dir, tmp_path):
    before = json.loads((model_dir / "metrics.json").read_text())
    result = evaluate(model_dir, device="cpu", out=tmp_path, progress=False)
    val = json.loads((model_dir / "model.json").read_text())["dataset_path"]
    from gaussiantalker.data import TalkingHeadData

    n = len(TalkingHeadData.open(val).split("val"))
    assert result.frames == n and len(result.per_frame["psnr"]) == n and len(result.per_frame["lmd"]) == n
    assert 5.0 < result.psnr < 100.0 and 0.0 < result.ssim <= 1.0
    assert 0.0 <= result.head_alpha <= 1.0 and 0.0 <= result.head_alpha_interior <= 1.0
    assert len(result.per_frame["head_alpha_interior"]) == n
    # The same held-out frames, the same model: training's own validation PSNR is reproduced.
    if "psnr" in before.get("metrics", {}):
        assert result.psnr == pytest.approx(before["metrics"]["psnr"], abs=1e-3)
    # Synthetic faces are not faces to MediaPipe: LMD is absent, and the report says why.
    assert result.lmd is None and result.lmd_frames == 0
    assert any("LMD not computed" in note for note in result.notes)
    # 40 training frames are too few to choose whether renders close the mouth in silences: they do not, and say why
    assert any("keeps the mouth the audio predicts in silences" in note and "could not check" in note
               for note in result.notes), result.notes
    # The lip-code model's halves: the predictor's codes read out against the tracked opening (no detector
    # needed: a number even here), the tracked codes' own read-out (the code holds the synthetic mouth's
    # opening), and no render-side figure without faces to detect.
    parts = result.mouth_parts
    assert set(parts) == {"predicted_readout_pearson", "tracked_readout_pearson", "tracked_codes_pearson",
                          "tracked_codes_amplitude", "limit"}
    assert -1.0 <= parts["predicted_readout_pearson"] <= 1.0 and parts["tracked_readout_pearson"] > 0.9
    assert parts["tracked_codes_pearson"] is None and parts["limit"] is None
    merged = json.loads(result.metrics_path.read_text())
    assert {k: merged[k] for k in before} == before  # what training wrote is kept
    ev = merged["evaluation"]
    assert ev["frames"] == n and ev["psnr"] == pytest.approx(result.psnr, abs=1e-5) and ev["lmd"] is None
    assert ev["mouth_parts"]["tracked_readout_pearson"] == pytest.approx(parts["tracked_readout_pearson"])
    html = (tmp_path / "report.html").read_text()
    assert result.report_path == tmp_path / "report.html"
    assert "data:image/jpeg;base64," in html and "<svg" in html and "config.json" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing loaded from elsewhere
    assert "<script" not in html
    assert "the audio predictor alone" in html and "the renderer alone" in html
    again = evaluate(model_dir, device="cpu", progress=False)  # default: the report beside the model
    assert again.report_path == model_dir / "report.html" and again.psnr == result.psnr


def test_training_curves_from_tensorboard_and_jsonl(tmp_path):
    if "tensorflow" not in sys.modules:  # keep tensorboard from importing TensorFlow (as the trainer does)
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    model = tmp_path / "m"
    writer = SummaryWriter(str(model / "tensorboard"))
    for it in range(1, 6):
        writer.add_scalar("fine/loss", 1.0 / it, it)
        writer.add_scalar("fine/psnr", 20.0 + it, it)
    writer.close()
    curves = read_training_curves(model)
    assert [s for s, _ in curves["fine/loss"]] == [1, 2, 3, 4, 5]
    assert curves["fine/psnr"][-1] == (5.0, pytest.approx(25.0))
    (model / "train_log.jsonl").write_text('{"iteration": 1, "loss": 0.5}\n{"iteration": 2, "loss": 0.25}\nnot json\n')
    assert read_training_curves(model) == {"loss": [(1.0, 0.5), (2.0, 0.25)]}
    assert read_training_curves(tmp_path / "nothing") == {}


def test_svg_plot_is_valid_xml():
    import xml.etree.ElementTree as ET

    svg = svg_line_plot({"a": [(0, 1.0), (1, float("nan")), (2, 3.0)], "b<&>": [(0, 2.0)]}, "t & <x>")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) == 2
    ET.fromstring(svg_line_plot({}, "empty"))


def test_mouth_lmd_on_real_frames(shared_data):
    """Real faces through MediaPipe: the same frames give 0, frames shifted by (3, 2) px give ~3.6 px."""
    from gaussiantalker.render.video import read_frames

    clip = shared_data / "clips" / "Real3DPortrait__May_5s.mp4"
    if not clip.is_file():
        pytest.skip(f"{clip} is absent")
    frames = read_frames(clip, max_frames=6)
    shifted = np.roll(frames, shift=(2, 3), axis=(1, 2))
    same = mouth_lmd(iter(frames), iter(frames.copy()))
    moved = mouth_lmd(iter(shifted), iter(frames))
    assert np.all(np.isfinite(same)) and np.all(same < 1e-6)
    assert np.all(np.isfinite(moved))
    assert float(np.median(moved)) == pytest.approx(np.hypot(3, 2), abs=0.6)


def test_interior_mask_leaves_out_the_edge_but_not_the_frame_border():
    import torch

    mask = torch.zeros(1, 1, 100, 100)
    mask[..., 40:60, 30:70] = 1
    mask[..., 80:, 0:10] = 1  # touches the frame's border: only its inner sides are eroded
    inner = interior_mask(mask, 0.03)  # 3 px
    expected = torch.zeros_like(mask)
    expected[..., 43:57, 33:67] = 1
    expected[..., 83:, 0:7] = 1
    assert torch.equal(inner, expected)
    # a head whose interior is solid and whose edge is soft: only the plain mean sees the edge
    alpha = inner + 0.5 * (mask - inner)
    assert float((alpha * mask).sum() / mask.sum()) < 0.8 and float((alpha * inner).sum() / inner.sum()) == 1.0


def test_envelope_ratio_needs_a_reference():
    assert envelope_ratio(0.3, 0.2) == pytest.approx(1.5)
    # a subject whose mouth does not follow its own audio's energy (opens it in pauses) is no scale
    assert np.isnan(envelope_ratio(0.3, 0.05)) and np.isnan(envelope_ratio(0.3, -0.29))
    assert np.isnan(envelope_ratio(0.3, float("nan")))


def test_a_held_out_tail_without_mouth_motion_is_noted():
    # a short clip ending in a pause: r and amplitude of a still mouth mean nothing, and evaluate says so
    rng = np.random.default_rng(0)
    training = np.abs(rng.normal(0.05, 0.04, 200))
    note = _still_mouth_note(np.full(14, 0.0006) + rng.normal(0, 1e-4, 14), training)
    assert note is not None and "hardly moves" in note and "0.0001" in note
    assert _still_mouth_note(np.abs(rng.normal(0.05, 0.03, 40)), training) is None  # a speaking tail
    assert _still_mouth_note(np.full(5, np.nan), training) is None

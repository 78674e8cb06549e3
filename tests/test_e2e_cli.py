"""End to end through the command line, as a user would run it: `gaussiantalker train` on a real clip
(preprocess + train with a shortened cpu_small), then `gaussiantalker infer` on real speech.

Skipped only when ../shared/data is absent. The model is small and trained briefly (a few minutes on
2 cores), so the quality check is modest: its held-out PSNR must beat a static mean-frame baseline by 1 dB
(measured 2026-11-25: 29.4 dB against 25.5 dB after 200 + 100 iterations).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gaussiantalker.audio import frame_count, load_audio
from gaussiantalker.media import probe
from gaussiantalker.render.video import iter_frames

REPO = Path(__file__).resolve().parents[1]
CLIP = "clips/Real3DPortrait__May_5s.mp4"
SPEECH = "audio/video-retalking__2.wav"
NAME = "Real3DPortrait__May_5s"

pytestmark = pytest.mark.slow


def _cli(*args: str, cwd: Path, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("TEST_MODE", None)
    proc = subprocess.run([sys.executable, "-m", "gaussiantalker", *args], cwd=cwd, env=env, check=False,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"gaussiantalker {' '.join(args)} failed ({proc.returncode}):\n" \
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _short_config(folder: Path) -> Path:
    """cpu_small with fewer iterations, written as a user would: a copy of the preset, edited."""
    text = (REPO / "configs" / "cpu_small.py").read_text()
    for key, value in (("coarse_iterations", 200), ("iterations", 100), ("densify_until_iter", 180),
                       ("checkpoint_every", 100)):
        text, n = re.subn(rf"(\b{key}=)\d+", rf"\g<1>{value}", text)
        assert n == 1, key
    path = folder / "cpu_short.py"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    config = _short_config(work)
    _cli("train", "--video_path", str(shared_data / CLIP), "--gpu", "CPU", "--config", str(config),
         "--workspace", "ws", "-q", cwd=work)
    return work


def test_train_writes_the_model_folder(trained):
    model = trained / "ws" / "output" / NAME
    assert (model / "config.json").is_file()
    assert any((model / "point_cloud").glob("iteration_*/point_cloud.ply"))
    assert any((model / "checkpoints").glob("chkpnt_*.pth"))
    metrics = json.loads((model / "metrics.json").read_text())
    assert math.isfinite(metrics["metrics"]["psnr"])


def test_psnr_beats_a_static_mean_frame(trained):
    from gaussiantalker.config import TrainConfig
    from gaussiantalker.data import TalkingHeadData

    model = trained / "ws" / "output" / NAME
    config = TrainConfig.from_json(model / "config.json")
    data = TalkingHeadData.open(trained / "ws" / "data" / NAME, resolution=config.model.resolution)
    train, val = data.split("train"), data.split("val")
    mean = torch.stack([train[k].target for k in range(len(train))]).mean(0)
    baseline = sum(float(-10 * torch.log10((val[k].target - mean).square().mean())) for k in range(len(val)))
    baseline /= len(val)
    psnr = json.loads((model / "metrics.json").read_text())["metrics"]["psnr"]
    assert psnr > baseline + 1.0, (psnr, baseline)


def test_infer_writes_a_video_with_sound(trained, shared_data):
    _cli("infer", "--model_dir", NAME, "--audio_path", str(shared_data / SPEECH), "--gpu", "CPU",
         "--batch_size", "16", "--workspace", "ws", "-q", cwd=trained)
    out = trained / "ws" / "output" / NAME / "renders" / "output.mp4"
    info = probe(out)
    assert len(info.video_streams) == 1 and len(info.audio_streams) == 1
    assert info.video_streams[0].codec == "h264" and info.audio_streams[0].codec == "aac"
    seconds = load_audio(shared_data / SPEECH).shape[0] / 16000
    frames = sum(1 for _ in iter_frames(out))
    assert frames == frame_count(seconds, 25.0), (frames, seconds)
    assert abs(info.duration - seconds) < 0.1
    copies = list((trained / "ws" / "output" / NAME / "custom").glob("ours_*/renders/output.mp4"))
    assert copies, "custom/ours_<k>/renders/output.mp4 missing"

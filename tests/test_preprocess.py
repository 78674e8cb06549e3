"""Preprocessing on real clips (../shared/data): the May_5s clip end to end (one run shared by the tests
of this module), markers and resuming, a variable-frame-rate clip, a full-frame portrait clip, and
frames without a face."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _preprocess_helpers import MAY, PORTRAIT, VFR, cut_video, file_hashes, run_ids

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FORMAT_FILES = ("aud.wav", "aud_train.wav", "aud_novel.wav", "aud_phonetic.npy", "au.csv", "bc.jpg", "track_params.pt",
                "transforms_train.json", "transforms_val.json", "points3d.ply", "landmarks478.npy", "meta.json",
                "preview.mp4")


@pytest.fixture(scope="module")
def may(shared_data, tmp_path_factory):
    """May_5s preprocessed once for the module: (video path, dataset handle)."""
    from gaussiantalker.preprocess import preprocess

    video = shared_data / MAY
    if not video.is_file():
        pytest.skip(f"{video} is absent")
    ws = tmp_path_factory.mktemp("may_ws")
    data = preprocess(video, workspace=ws, name="may", device="cpu", progress=False)
    return video, data


def _copy_dataset(data, tmp_path: Path) -> Path:
    """A copy of a dataset in a new workspace (same name), so a test may change it."""
    ws = tmp_path / "ws"
    shutil.copytree(data.path, ws / "data" / data.name)
    return ws


def _wav(path: Path):
    from scipy.io import wavfile

    rate, samples = wavfile.read(path)
    return rate, samples


def test_may_end_to_end(may):
    import cv2
    import pandas as pd
    import torch

    from gaussiantalker.preprocess import Dataset
    from gaussiantalker.preprocess.landmarks import read_lms
    from gaussiantalker.preprocess.parsing import read_parsing

    video, data = may
    folder = data.path
    n = data.num_frames
    assert abs(n - 125) <= 1
    assert (data.width, data.height, data.fps, data.audio_kind) == (512, 512, 25.0, "phonetic")  # the offline default
    for f in FORMAT_FILES:
        assert (folder / f).is_file() and (folder / f).stat().st_size > 0, f
    for sub, ext in (("ori_imgs", "jpg"), ("ori_imgs", "lms"), ("parsing", "png"), ("gt_imgs", "jpg"),
                     ("torso_imgs", "png")):
        assert sorted(int(p.stem) for p in (folder / sub).glob(f"*.{ext}")) == list(range(n)), (sub, ext)

    # audio: 16 kHz mono, F / 25 s, split at the train/val frame boundary
    rate, aud = _wav(folder / "aud.wav")
    assert rate == 16000 and aud.ndim == 1 and aud.size == n * 640
    cut = int(n * 10 / 11)
    assert _wav(folder / "aud_train.wav")[1].size == cut * 640
    assert _wav(folder / "aud_novel.wav")[1].size == (n - cut) * 640
    feats = np.load(folder / "aud_phonetic.npy")
    assert feats.shape == (n, 16, 32) and feats.dtype == np.float32 and np.isfinite(feats).all()
    from gaussiantalker.audio import extract_features

    # the first 26 values of each row are the mfcc features; the other six say which phone: she speaks
    mfcc = extract_features(folder / "aud.wav", kind="mfcc", num_frames=n).windows
    np.testing.assert_allclose(feats[..., :26], mfcc, rtol=1e-6, atol=1e-6)
    assert (feats[:, 8, 31] == 0).mean() > 0.5

    # landmarks: inside the image and on the face (the face-mesh box of the same frame, parsing head)
    lm478 = np.load(folder / "landmarks478.npy")
    assert lm478.shape == (n, 478, 3) and lm478.dtype == np.float32 and np.isfinite(lm478).all()
    head_hits = []
    for i in (0, n // 2, n - 1):
        lms = read_lms(folder / "ori_imgs" / f"{i}.lms")
        assert ((lms >= 0) & (lms < 512)).all()
        lo, hi = lm478[i, :, :2].min(0), lm478[i, :, :2].max(0)
        assert ((lms >= lo - 2) & (lms <= hi + 2)).all()
        labels = read_parsing(folder / "parsing" / f"{i}.png")
        assert labels.shape == (512, 512)
        # parsing: all four classes, each a real region (the clip shows head, neck, shoulders and background)
        counts = np.bincount(labels.ravel(), minlength=4)
        assert (counts > 0.01 * labels.size).all(), counts
        inner = np.round(lms[17:68]).astype(int)  # brows, eyes, nose, mouth
        head_hits.append((labels[inner[:, 1], inner[:, 0]] == 1).mean())
    assert min(head_hits) > 0.95

    torso = cv2.imread(str(folder / "torso_imgs" / "0.png"), cv2.IMREAD_UNCHANGED)
    assert torso.shape == (512, 512, 4)
    assert (torso[torso[..., 3] == 0][:, :3] == 0).all() and (torso[..., 3] == 255).any()
    assert cv2.imread(str(folder / "bc.jpg")).shape == (512, 512, 3)

    au = pd.read_csv(folder / "au.csv")
    assert " AU45_r" in au.columns and len(au) == n
    assert au[" AU45_r"].between(0, 5).all()
    assert au[" AU45_r"].max() >= 3 and au[" AU45_r"].median() < 1  # she blinks twice in these 5 s

    params = torch.load(folder / "track_params.pt")
    assert params["euler"].shape == (n, 3) and params["vertices"].shape[0] == 1  # the mean cloud, once
    train = json.loads((folder / "transforms_train.json").read_text())
    val = json.loads((folder / "transforms_val.json").read_text())
    assert [f["img_id"] for f in train["frames"] + val["frames"]] == list(range(n))
    assert len(train["frames"]) == cut

    meta = json.loads((folder / "meta.json").read_text())
    assert meta["format"] == "gaussiantalker-dataset" and meta["num_frames"] == n
    assert meta["backends"] == {"landmarks": "mediapipe", "crop": "mediapipe-face-detection",
                                "parsing": "mediapipe-selfie", "tracking": "offline", "blink": "eye-landmarks",
                                "audio": "phonetic"}
    assert meta["audio"] == {"kind": "phonetic", "dim": 32, "file": "aud_phonetic.npy", "sample_rate": 16000,
                             "seconds": n / 25}
    assert meta["crop"] == {"x": 0, "y": 0, "size": 512, "source_width": 512, "source_height": 512}
    assert meta["split"] == {"train": [0, cut], "val": [cut, n]}
    assert meta["source"]["path"] == str(video.resolve())
    assert set(meta["timings"]) >= {"frames", "landmarks", "tracking", "parsing", "torso"}

    again = Dataset.open(folder)
    assert (again.num_frames, again.audio_kind, again.backends, again.crop) == (n, "phonetic", meta["backends"],
                                                                              data.crop)
    assert data.summary.face_coverage == 1.0 and data.summary.frames == n
    assert "probe" in data.summary.ran and "torso" in data.summary.ran


def test_may_reads_as_the_original_loader_expects(may, tmp_path):
    """Our dataset against the original GaussianTalker loader's expectations (keys, shapes, units:
    ``_original_format.original_loader_problems``): all met but the DeepSpeech features, which the default
    (MFCC) dataset does not have; with them (what ``--audio_features deepspeech`` writes) nothing is missing."""
    import importlib.util

    from _audio_helpers import run_python
    from _original_format import original_loader_problems

    _, data = may
    folder = _copy_dataset(data, tmp_path) / "data" / data.name
    assert original_loader_problems(folder) == ["aud_ds.npy: missing"]
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow not installed: the DeepSpeech half of this check needs it (a tiny test graph)")
    tests = Path(__file__).resolve().parent
    out = run_python(
        f"import sys; sys.path.insert(0, {str(tests)!r})\n"
        "from pathlib import Path\n"
        "from _audio_helpers import build_tiny_deepspeech_graph\n"
        "from gaussiantalker.audio import extract_features, save_features\n"
        f"folder = Path({str(folder)!r})\n"
        f"graph = build_tiny_deepspeech_graph(Path({str(tmp_path / 'tiny_ds.pb')!r}))\n"
        f"feats = extract_features(folder / 'aud.wav', 'deepspeech', model_path=graph, num_frames={data.num_frames})\n"
        "print(save_features(feats, folder))\n")
    assert out.returncode == 0, out.stderr[-3000:]
    assert original_loader_problems(folder) == []


def test_rerun_does_nothing_and_plan_says_done(may):
    from gaussiantalker.preprocess import plan_preprocess, preprocess

    video, data = may
    before = run_ids(data.path)
    plan = plan_preprocess(video, workspace=data.path.parents[1], name=data.name, device="cpu")
    assert [p.done for p in plan] == [True] * len(plan)
    again = preprocess(video, workspace=data.path.parents[1], name=data.name, device="cpu", progress=False)
    assert again.summary.ran == []
    assert run_ids(data.path) == before


def test_deleting_an_output_reruns_its_step_and_dependants(may, tmp_path):
    from gaussiantalker.preprocess import plan_preprocess, preprocess

    video, data = may
    ws = _copy_dataset(data, tmp_path)
    folder = ws / "data" / data.name
    before = run_ids(folder)
    (folder / "aud_train.wav").unlink()
    plan = {p.name: p.done for p in plan_preprocess(video, workspace=ws, name=data.name)}
    assert [k for k, done in plan.items() if not done] == ["audio", "features", "meta"]
    seen = []
    again = preprocess(video, workspace=ws, name=data.name, device="cpu", progress=False, callback=seen.append)
    assert again.summary.ran == ["audio", "features", "meta"]
    # the callback hears of each step that runs, then the end
    assert [(p.stage, p.step) for p in seen] == [("preprocess", "audio"), ("preprocess", "features"),
                                                 ("preprocess", "meta"), ("preprocess", "")]
    assert seen[-1].fraction == 1.0 and 0 < seen[0].fraction < 1
    after = run_ids(folder)
    assert {k for k in before if before[k] != after[k]} == {"audio", "features", "meta"}
    assert (folder / "aud_train.wav").is_file()


def test_killed_run_resumes_with_the_same_files(may, tmp_path):
    from gaussiantalker.preprocess import preprocess

    video, data = may
    ws = _copy_dataset(data, tmp_path)
    folder = ws / "data" / data.name
    shutil.rmtree(folder / "gt_imgs")  # the torso step must run again: kill it half way
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
            "from gaussiantalker.preprocess import preprocess\n"
            f"preprocess({str(video)!r}, workspace={str(ws)!r}, name={data.name!r}, device='cpu', progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp_dir = folder / ".gt_imgs.tmp"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if tmp_dir.is_dir() and len(list(tmp_dir.glob("*.jpg"))) >= 20:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert not (folder / ".steps" / "torso.json").exists()
    assert not (folder / ".steps" / "meta.json").exists()  # a dependant of the killed step
    assert not (folder / "gt_imgs").exists() and tmp_dir.is_dir()

    resumed = preprocess(video, workspace=ws, name=data.name, device="cpu", progress=False)
    assert resumed.summary.ran == ["torso", "meta"]
    assert not tmp_dir.exists()
    patterns = ["gt_imgs/*.jpg", "torso_imgs/*.png", "ori_imgs/*", "parsing/*.png", "*.wav", "*.npy", "au.csv",
                "bc.jpg"]
    assert file_hashes(folder, patterns) == file_hashes(data.path, patterns)
    assert not list(folder.glob(".*.tmp"))


def test_au_csv_with_the_wrong_row_count(may, tmp_path):
    from gaussiantalker.preprocess import PreprocessError, preprocess

    video, data = may
    ws = _copy_dataset(data, tmp_path)
    folder = ws / "data" / data.name
    rows = (folder / "au.csv").read_text().splitlines()
    bad = tmp_path / "short.csv"
    bad.write_text("\n".join(rows[: len(rows) - 10]) + "\n")
    with pytest.raises(PreprocessError, match=r"short\.csv.*115 rows.*125 frames"):
        preprocess(video, workspace=ws, name=data.name, au_csv=bad, progress=False)
    markers = {p.stem for p in (folder / ".steps").glob("*.json")}
    assert "blink" not in markers and "meta" not in markers and "tracking" in markers

    good = tmp_path / "openface.csv"  # a user file within +-2 rows is copied byte for byte
    good.write_text("\n".join(rows + rows[-1:]) + "\n")
    again = preprocess(video, workspace=ws, name=data.name, au_csv=good, progress=False)
    assert again.summary.ran == ["blink", "meta"]
    assert (folder / "au.csv").read_bytes() == good.read_bytes()
    assert again.backends["blink"] == "user-csv"
    short = tmp_path / "short2.csv"  # ... and one two rows short gets its last row repeated
    short.write_text("\n".join(rows[:-2]) + "\n")
    preprocess(video, workspace=ws, name=data.name, au_csv=short, progress=False)
    assert (folder / "au.csv").read_text().splitlines() == rows[:-2] + [rows[-3]] * 2


def test_variable_frame_rate_clip_becomes_constant_25fps(shared_data, tmp_path):
    from gaussiantalker.media import probe
    from gaussiantalker.preprocess import preprocess

    video = shared_data / VFR
    if not video.is_file():
        pytest.skip(f"{video} is absent")
    data = preprocess(video, workspace=tmp_path, name="vfr", device="cpu", progress=False, stop_after="features")
    info = probe(video)
    n = data.num_frames
    # the source averages ~22 fps: constant 25 fps over its 6.1 s gives ~153 frames
    assert abs(n - info.duration * 25) <= 1.5
    assert data.crop.is_full_frame and (data.width, data.height) == (512, 512)
    rate, aud = _wav(data.path / "aud.wav")
    assert rate == 16000 and abs(aud.size / rate - n / 25) <= 0.040
    assert np.load(data.path / "aud_phonetic.npy").shape[0] == n
    assert not (data.path / "meta.json").exists()


def test_full_frame_portrait_is_cropped_to_the_face(shared_data, tmp_path):
    from gaussiantalker.preprocess import preprocess
    from gaussiantalker.preprocess.landmarks import read_lms

    src = shared_data / PORTRAIT
    if not src.is_file():
        pytest.skip(f"{src} is absent")
    video = cut_video(src, tmp_path / "portrait.mp4", 3.0)  # 1080 x 1920 HEVC, first 3 s
    data = preprocess(video, workspace=tmp_path, device="cpu", progress=False, stop_after="landmarks")
    crop = data.crop
    assert (crop.source_width, crop.source_height) == (1080, 1920) and not crop.is_full_frame
    assert 300 <= crop.size <= 1080 and crop.x + crop.size <= 1080 and crop.y + crop.size <= 1920
    marker = json.loads((data.path / ".steps" / "crop.json").read_text())
    assert marker["info"]["crop"] == crop.to_dict()
    assert (data.width, data.height) == (512, 512)
    for i in (0, data.num_frames - 1):
        lms = read_lms(data.path / "ori_imgs" / f"{i}.lms")
        centre = lms.mean(0) / 512
        width = (lms[:, 0].max() - lms[:, 0].min()) / 512
        assert 0.3 < centre[0] < 0.7 and 0.3 < centre[1] < 0.7, centre
        assert 0.25 < width < 0.7, width  # a head-and-shoulders crop, not the whole body nor only the face


def _blackout(src: Path, dest: Path, first: int, last: int) -> Path:
    from gaussiantalker.media import run_ffmpeg

    t0, t1 = first / 25, (last + 1) / 25 - 0.001
    run_ffmpeg(["-y", "-i", str(src), "-t", "3", "-vf",
                f"drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='between(t,{t0},{t1})'",
                "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "copy", str(dest)], path=src)
    return dest


def test_frames_without_a_face(shared_data, tmp_path):
    from gaussiantalker.preprocess import PreprocessError, preprocess

    video = shared_data / MAY
    if not video.is_file():
        pytest.skip(f"{video} is absent")
    short_gap = _blackout(video, tmp_path / "gap3.mp4", 40, 42)
    data = preprocess(short_gap, workspace=tmp_path, device="cpu", progress=False, stop_after="landmarks")
    marker = json.loads((data.path / ".steps" / "landmarks.json").read_text())
    assert marker["info"]["missing_faces"] == [[40, 42]]
    assert (data.path / "ori_imgs" / "41.lms").is_file()
    assert np.isnan(np.load(data.path / "landmarks478.npy")[41]).all()

    # A run too long to interpolate is left out of training (and counted), not a reason to give up the clip.
    long_gap = _blackout(video, tmp_path / "gap12.mp4", 30, 41)
    data = preprocess(long_gap, workspace=tmp_path, device="cpu", progress=False)
    meta = json.loads((data.path / "meta.json").read_text())
    assert meta["dropped_frames"]["no_face"] == 12
    assert set(range(30, 42)) <= set(meta["dropped_frames"]["frames"])
    train = [f["img_id"] for f in json.loads((data.path / "transforms_train.json").read_text())["frames"]]
    assert not set(range(30, 42)) & set(train) and {29, 42} <= set(train)

    # Too little face left: one clear error naming the file, nothing past the frames step.
    mostly_dark = _blackout(video, tmp_path / "dark.mp4", 10, 74)
    with pytest.raises(PreprocessError, match=r"dark\.mp4: a face is visible in only 10 of 75 frames"):
        preprocess(mostly_dark, workspace=tmp_path, device="cpu", progress=False, stop_after="landmarks")
    steps = tmp_path / "data" / "dark" / ".steps"
    assert (steps / "frames.json").exists() and not (steps / "landmarks.json").exists()

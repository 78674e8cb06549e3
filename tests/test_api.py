"""The Python API: every public name imports, the verbs and the subpackages of the same name coexist,
importing the package is cheap, bad arguments fail fast with clear errors, and the verbs work end to end
on a tiny synthetic dataset."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gaussiantalker as gt
from gaussiantalker import api

REPO = Path(__file__).resolve().parents[1]
VERBS = ("preprocess", "train", "render", "load", "evaluate")
TYPES = ("Dataset", "Model", "RenderResult", "Talker", "EvaluationResult")


def test_all_names_import():
    """Every name in ``__all__`` resolves (this needs every pipeline module to exist)."""
    assert set(VERBS) | set(TYPES) <= set(gt.__all__)
    for name in gt.__all__:
        obj = getattr(gt, name)
        assert obj is not None, name
        if name in VERBS:
            assert callable(obj), name
            assert (api.__dict__[name].__doc__ or "").strip(), name
        if name in TYPES:
            assert inspect.isclass(obj), name
            assert obj.__doc__, name
    for name in ("Dataset", "Model", "RenderResult", "EvaluationResult"):
        assert dataclasses.is_dataclass(getattr(gt, name)), name
    namespace = {}
    exec("from gaussiantalker import *", namespace)
    assert set(gt.__all__) <= set(namespace)


def test_import_is_cheap():
    code = ("import sys, gaussiantalker as gt; gt.preprocess; gt.train; gt.render; gt.evaluate; gt.load; "
            "import gaussiantalker.cli; "
            "print(','.join(m for m in ('tensorflow', 'mediapipe', 'transformers', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_verbs_and_subpackages_coexist():
    """``gt.train(...)`` is the verb and ``gaussiantalker.train`` is still the training subpackage."""
    import gaussiantalker.preprocess.landmarks as landmarks  # a submodule import binds the subpackage

    assert landmarks.__name__ == "gaussiantalker.preprocess.landmarks"
    for verb in ("preprocess", "train", "render", "evaluate"):
        obj = getattr(gt, verb)
        assert callable(obj) and obj.__name__ == f"gaussiantalker.{verb}"
        assert inspect.signature(obj) == inspect.signature(getattr(api, verb))
    from gaussiantalker import train

    assert callable(train) and train is sys.modules["gaussiantalker.train"]
    assert inspect.signature(gt.load) == inspect.signature(api.load)


def test_calling_a_subpackage_calls_the_verb(monkeypatch):
    seen = []
    monkeypatch.setattr(api, "render", lambda *a, **k: seen.append((a, k)) or "ok")
    assert gt.render("m", "a.wav", batch_size=4) == "ok"
    assert seen == [(("m", "a.wav"), {"batch_size": 4})]


def test_bad_arguments_fail_fast(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        gt.preprocess(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        gt.train(tmp_path / "missing.mp4")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="no_such_preset"):
        gt.train(video, config="no_such_preset", workspace=tmp_path / "ws")
    with pytest.raises(ValueError, match="GPU99"):
        gt.train(video, device="GPU99", workspace=tmp_path / "ws")
    with pytest.raises(ValueError, match="iterations"):
        gt.train(video, iterations=0)
    with pytest.raises(FileNotFoundError, match="au.csv"):
        gt.preprocess(video, au_csv=tmp_path / "au.csv", workspace=tmp_path / "ws")
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="nobody"):
        gt.render("nobody", audio, workspace=tmp_path / "ws")
    with pytest.raises(FileNotFoundError, match="a2.wav"):
        gt.render("nobody", tmp_path / "a2.wav", workspace=tmp_path / "ws")
    with pytest.raises(FileNotFoundError, match="nobody"):
        gt.evaluate("nobody", workspace=tmp_path / "ws")
    with pytest.raises(FileNotFoundError):
        gt.load(tmp_path / "no_model_here")
    with pytest.raises(ValueError, match="invalid name"):
        gt.render("bad name!", audio, workspace=tmp_path / "ws")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "v.mp4"]  # nothing was created


def test_native_kernels_are_checked_before_any_work(tmp_path, monkeypatch):
    """A CUDA device with a build that has no CUDA kernels (or no build at all) fails in train / render
    before preprocessing, with the build command."""
    import diff_gaussian_rasterization
    import simple_knn

    from gaussiantalker.devices import NativeKernelsError

    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x")
    (tmp_path / "ws" / "output" / "m").mkdir(parents=True)
    started = []
    monkeypatch.setattr(api, "preprocess", lambda *a, **k: started.append(a))
    monkeypatch.setattr(api, "_device", lambda device: "cuda:0")  # as on a GPU machine
    monkeypatch.setattr(diff_gaussian_rasterization, "build_info",
                        lambda: {"cpu": True, "cuda": False, "cuda_arch": []})
    with pytest.raises(NativeKernelsError, match="GT_BUILD_CUDA=1 pip install --no-build-isolation -e ."):
        gt.train(video, device="GPU0", workspace=tmp_path / "ws")
    with pytest.raises(NativeKernelsError, match="diff_gaussian_rasterization were built without CUDA"):
        gt.render("m", audio, device="GPU0", workspace=tmp_path / "ws")
    monkeypatch.setattr(api, "_device", lambda device: "cpu")
    monkeypatch.setattr(simple_knn, "build_info", lambda: {"cpu": False, "cuda": False, "error": "no _C"})
    with pytest.raises(NativeKernelsError, match="simple_knn not built.*pip install --no-build-isolation -e ."):
        gt.train(video, device="CPU", workspace=tmp_path / "ws")
    assert started == []


def test_native_kernels_cover_the_gpu_architecture():
    from gaussiantalker.devices import _arch_covers

    archs = ["7.5", "8.0", "9.0+PTX"]
    assert _arch_covers(archs, (8, 6)) and _arch_covers(archs, (9, 0)) and _arch_covers(archs, (12, 0))
    assert not _arch_covers(["8.0"], (9, 0)) and not _arch_covers(["8.6"], (8, 0))
    assert not _arch_covers(["9.0+PTX"], (8, 9))


def test_train_passes_preprocessing_backends(tmp_path, monkeypatch):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    seen = {}
    monkeypatch.setattr(api, "preprocess", lambda path, **kw: seen.update(kw) or "dataset")
    monkeypatch.setattr(sys.modules["gaussiantalker.train"], "train", lambda data, **kw: ("model", data))
    choice = {"landmarks": "dlib", "audio": "deepspeech"}
    assert gt.train(video, device="CPU", backends=choice, workspace=tmp_path / "ws") == ("model", "dataset")
    assert seen["backends"] == choice
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="backends apply to a video"):
        gt.train(tmp_path / "folder", device="CPU", backends=choice)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny synthetic dataset trained for a few iterations through the API."""
    from gaussiantalker.config import load_config
    from gaussiantalker.synthetic import make_synthetic_dataset

    ws = tmp_path_factory.mktemp("ws")
    data = make_synthetic_dataset(ws / "data" / "synth", num_frames=40, size=64)
    config = load_config("cpu_small", coarse_iterations=8, iterations=6, resolution=64, max_points=500)
    model = gt.train(data, config=config, device="cpu", progress=False)
    return ws, data, model


def test_api_end_to_end_on_synthetic_data(trained, tmp_path):
    from gaussiantalker.audio import load_audio
    from gaussiantalker.media import probe

    ws, data, model = trained
    assert isinstance(model, gt.Model)
    assert model.path == ws / "output" / "synth" and model.iteration == 6
    audio = data / "aud.wav"
    result = gt.render(model, audio, out=tmp_path / "out.mp4", batch_size=8, device="cpu", progress=False)
    assert isinstance(result, gt.RenderResult)
    info = probe(result.path)
    assert info.video is not None and info.audio is not None
    talker = gt.load(model.path, device="cpu")
    assert isinstance(talker, gt.Talker)
    samples = load_audio(audio)
    chunks = np.array_split(samples[: 16000], 5)
    frames = list(talker.stream(chunks))
    assert frames and all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in frames)
    by_name = gt.render("synth", audio, out=tmp_path / "by_name.mp4", workspace=ws, device="cpu", progress=False,
                        assets=tmp_path / "no_assets")
    assert by_name.frames == result.frames
    evaluation = gt.evaluate(model, device="cpu", progress=False)
    assert isinstance(evaluation, gt.EvaluationResult)
    assert (model.path / "metrics.json").is_file()

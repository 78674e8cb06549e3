"""One-file exports (``gt.export`` / ``gaussiantalker export``) and the dataset fingerprint of a model folder.

The export must render without its dataset, pixel for pixel as the model folder does; a damaged, foreign or
newer file must fail with one line naming it; a second ``train`` of another video under the same name must
not resume the first one's checkpoints.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from _infer_helpers import model_folder, synthetic

import gaussiantalker as gt
from gaussiantalker.cli import main as cli_main

pytest.importorskip("safetensors", reason="exports need safetensors (a dependency: pip install safetensors)")


def _audio(seconds: float = 2.4) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000.0
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 1.3 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A model folder, its export, and the folder's frames for the test audio (rendered before the dataset
    is moved away)."""
    root = tmp_path_factory.mktemp("export")
    dataset = synthetic(root)
    folder = model_folder(dataset, root / "output" / "tiny")
    result = gt.export(folder, root / "shared" / "tiny.gtalk", progress=False)
    talker = gt.load(folder, device="cpu")
    # More frames than the 44 tracked ones: the pose schedule turns back (ping-pong) inside this audio.
    frames = np.stack(list(talker.frames(_audio(), batch_size=7)))
    bg = np.stack([talker.data.bg_torso(i) for i in talker.frame_ids])
    return {"root": root, "dataset": dataset, "folder": folder, "result": result, "frames": frames, "bg": bg,
            "frame_ids": list(talker.frame_ids), "c2w": talker.c2w.clone(), "eye": talker.eye.clone()}


def test_export_renders_identically_without_the_dataset(exported, tmp_path):
    r = exported["result"]
    assert r.path.is_file() and r.bytes == r.path.stat().st_size and r.frames == 44 and r.iteration == 3
    assert not [p for p in r.path.parent.iterdir() if p.name != r.path.name]  # no temporary leftovers
    # Move the file to "another machine": the dataset and the model folder are gone.
    moved = tmp_path / "elsewhere" / "tiny.gtalk"
    moved.parent.mkdir()
    shutil.copyfile(r.path, moved)
    hidden = exported["root"] / "hidden"
    shutil.move(str(exported["root"] / "data"), str(hidden))
    shutil.move(str(exported["root"] / "output"), str(hidden.with_name("hidden_output")))
    try:
        talker = gt.load(moved, device="cpu")
        assert talker.iteration == 3 and talker.audio_kind == "mfcc" and talker.source == moved
        assert talker.frame_ids == exported["frame_ids"]
        assert torch.equal(talker.c2w, exported["c2w"]) and torch.equal(talker.eye, exported["eye"])
        # The torso/background frames come back bit for bit (lossless video).
        bg = np.stack([talker.data.bg_torso(i) for i in talker.frame_ids])
        assert bg.shape == exported["bg"].shape and np.array_equal(bg, exported["bg"])
        frames = np.stack(list(talker.frames(_audio(), batch_size=5)))
        assert frames.shape == exported["frames"].shape
        assert np.array_equal(frames, exported["frames"])  # the whole frame, not only the head
        video = gt.render(moved, _audio(1.0), out=tmp_path / "out.mp4", progress=False, device="cpu")
        assert video.path.is_file() and video.frames == 25
    finally:
        shutil.move(str(hidden), str(exported["root"] / "data"))
        shutil.move(str(hidden.with_name("hidden_output")), str(exported["root"] / "output"))


def test_export_file_is_safetensors_with_versioned_metadata(exported):
    from safetensors import safe_open

    from gaussiantalker.export import EXPORT_VERSION, META_KEY

    path = exported["result"].path
    head = path.read_bytes()[:8 + 1]
    (n,) = struct.unpack("<Q", head[:8])
    assert head[8:9] == b"{" and n < path.stat().st_size  # safetensors: u64 header length, then JSON
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[META_KEY])
        keys = set(f.keys())
        state = gt.load(exported["folder"], device="cpu").model.state_dict()
        # The whole state dict travels, whatever it contains (no list of names to keep up to date).
        assert {f"model.{k}" for k in state} <= keys
        for k, v in state.items():
            assert torch.equal(f.get_tensor(f"model.{k}"), v.cpu()), k
    assert meta["format"] == "gaussiantalker-export" and meta["version"] == EXPORT_VERSION
    assert meta["audio_kind"] == "mfcc" and meta["frames"] == 44 and meta["bg_torso"]["lossless"] is True
    assert meta["bg_torso"]["crf"] is None
    assert meta["config"]["ModelParams"]["sh_degree"] >= 0


def _rewrite_meta(src: Path, dst: Path, **changes) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from gaussiantalker.export import META_KEY

    with safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()[META_KEY])
    meta.update(changes)
    save_file(tensors, str(dst), metadata={META_KEY: json.dumps(meta)})
    return dst


def test_bad_files_fail_with_one_line_naming_them(exported, tmp_path):
    from safetensors.torch import save_file

    from gaussiantalker.export import EXPORT_VERSION, ExportError, read_export

    src = exported["result"].path
    truncated = tmp_path / "truncated.gtalk"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    garbage = tmp_path / "garbage.gtalk"
    garbage.write_bytes(b"PK\x03\x04 this is a zip, or a pickle, or anything else" * 10)
    foreign = tmp_path / "foreign.gtalk"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    newer = _rewrite_meta(src, tmp_path / "newer.gtalk", version=EXPORT_VERSION + 1, library_version="9.0")
    broken = _rewrite_meta(src, tmp_path / "broken.gtalk", audio_dim=7)  # does not match the weights
    cases = {truncated: "not a gaussiantalker export", garbage: "not a gaussiantalker export",
             foreign: "without 'gaussiantalker' metadata", newer: "newer gaussiantalker",
             broken: "damaged export"}
    for path, why in cases.items():
        with pytest.raises(ExportError) as info:
            gt.load(path, device="cpu")
        msg = str(info.value)
        assert str(path) in msg and why in msg and "\n" not in msg, msg
    assert f"version {EXPORT_VERSION + 1}" in str(pytest.raises(ExportError, read_export, newer).value)


def test_export_is_atomic_and_needs_the_dataset(tmp_path):
    dataset = synthetic(tmp_path)
    folder = model_folder(dataset, tmp_path / "output" / "tiny")
    out = tmp_path / "out" / "tiny.gtalk"
    out.parent.mkdir()
    out.write_bytes(b"an older export")
    shutil.rmtree(dataset / "torso_imgs")  # the frames cannot be read: the export fails half way
    with pytest.raises(FileNotFoundError):
        gt.export(folder, out, progress=False)
    assert out.read_bytes() == b"an older export"  # the old file is untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.gtalk"]  # and nothing left beside it
    shutil.rmtree(dataset)
    with pytest.raises(FileNotFoundError, match="does not exist any more"):
        gt.export(folder, out, progress=False)


def test_cli_export(exported, tmp_path, capsys):
    root = exported["root"]
    out = tmp_path / "cli.gtalk"
    assert cli_main(["export", "--model_dir", "tiny", "--out", str(out), "--workspace", str(root), "-q"]) == 0
    assert out.is_file() and "export:" in capsys.readouterr().out
    talker = gt.load(out, device="cpu")
    assert np.array_equal(np.stack(list(talker.frames(_audio(), batch_size=16))), exported["frames"])
    # dry run: writes nothing
    dry = tmp_path / "dry.gtalk"
    assert cli_main(["export", "--model_dir", "tiny", "--out", str(dry), "--workspace", str(root), "--dry-run"]) == 0
    assert not dry.exists()
    assert cli_main(["export", "--model_dir", "nope", "--out", str(dry), "--workspace", str(root)]) == 1


# ------------------------------------------------------------------------------------------------ fingerprint
def _tiny_config():
    from gaussiantalker.config import load_config

    return load_config("cpu_small", coarse_iterations=3, iterations=2, resolution=-1, max_points=150)


def test_second_video_with_the_same_name_does_not_resume(tmp_path):
    from gaussiantalker.train.fingerprint import DatasetMismatchError

    first = synthetic(tmp_path / "a", name="talk", seed=1)
    second = synthetic(tmp_path / "b", name="talk", seed=2)
    ws = tmp_path / "ws"
    cfg = _tiny_config()
    model = gt.train(first, config=cfg, device="cpu", workspace=ws, name="talk", progress=False)
    record = json.loads((model.path / "dataset.json").read_text())
    assert record["path"] == str(first.resolve()) and record["fingerprint"].startswith("sha256:")
    ckpts = sorted((model.path / "checkpoints").iterdir())
    assert ckpts
    old_bytes = ckpts[-1].read_bytes()
    # The same dataset again: resumes (nothing to do, already at the end) without complaint.
    again = gt.train(first, config=cfg, device="cpu", workspace=ws, name="talk", progress=False)
    assert again.iteration == model.iteration
    # Another video under the same name: refused, naming both datasets, before anything is touched.
    with pytest.raises(DatasetMismatchError) as info:
        gt.train(second, config=cfg, device="cpu", workspace=ws, name="talk", progress=False)
    msg = str(info.value)
    assert str(first.resolve()) in msg and str(second.resolve()) in msg and "--fresh" in msg and "\n" not in msg
    assert sorted((model.path / "checkpoints").iterdir()) == ckpts
    assert json.loads((model.path / "dataset.json").read_text()) == record
    # On request: start afresh on the second video.
    fresh = gt.train(second, config=cfg, device="cpu", workspace=ws, name="talk", progress=False, restart=True)
    assert json.loads((fresh.path / "dataset.json").read_text())["path"] == str(second.resolve())
    # Trained again from scratch (resuming the finished first model would have rewritten nothing).
    assert [p.name for p in sorted((fresh.path / "checkpoints").iterdir())] == [p.name for p in ckpts]
    assert (fresh.path / "checkpoints" / ckpts[-1].name).read_bytes() != old_bytes
    with pytest.raises(DatasetMismatchError):
        gt.train(first, config=cfg, device="cpu", workspace=ws, name="talk", progress=False)


def test_cli_train_fresh_flag(tmp_path, capsys):
    first = synthetic(tmp_path / "a", name="talk", seed=1)
    second = synthetic(tmp_path / "b", name="talk", seed=2)
    ws = tmp_path / "ws"
    gt.train(first, config=_tiny_config(), device="cpu", workspace=ws, name="talk", progress=False)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(_tiny_config().to_json())
    args = ["train", "--video_path", str(second), "--gpu", "CPU", "--config", str(cfg), "--name", "talk",
            "--workspace", str(ws), "-q"]
    assert cli_main(args) == 1
    assert "different dataset" in capsys.readouterr().err
    assert cli_main(args + ["--fresh"]) == 0
    assert json.loads((ws / "output" / "talk" / "dataset.json").read_text())["path"] == str(second.resolve())


def test_lossy_frames_change_only_the_background_by_the_codec_error(exported, tmp_path):
    lossy = gt.export(exported["folder"], tmp_path / "lossy.gtalk", crf=18, progress=False)
    talker = gt.load(lossy.path, device="cpu")
    bg = np.stack([talker.data.bg_torso(i) for i in talker.frame_ids]).astype(int)
    err = np.abs(bg - exported["bg"])
    assert 0 < err.max() and err.mean() < 2.0  # lossy, but close
    frames = np.stack(list(talker.frames(_audio(), batch_size=16))).astype(int)
    diff = np.abs(frames - exported["frames"])
    # The Gaussians are the same; a composited pixel moves at most as much as the background under it.
    assert diff.max() <= err.max() + 1 and diff.mean() <= err.mean() + 0.5
    with pytest.raises(ValueError, match="crf"):
        gt.export(exported["folder"], tmp_path / "bad.gtalk", crf=99, progress=False)


def test_a_bare_name_is_the_workspace_model_before_a_file_of_that_name(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_bytes(b"not an export")
    talker = gt.load("tiny", workspace=exported["root"], device="cpu")  # the model folder, not the stray file
    assert talker.source is None and talker.model_dir == exported["folder"]
    shutil.copyfile(exported["result"].path, tmp_path / "tiny.gtalk")
    assert gt.load("tiny.gtalk", workspace=exported["root"], device="cpu").source == tmp_path / "tiny.gtalk"


def test_fingerprint_follows_the_tracks_and_audio_not_meta_timings(tmp_path):
    from gaussiantalker.train.fingerprint import dataset_fingerprint

    ds = synthetic(tmp_path, name="fp")
    fp = dataset_fingerprint(ds)
    assert fp == dataset_fingerprint(ds) and fp.startswith("sha256:")
    meta = json.loads((ds / "meta.json").read_text())
    meta["timings_for_the_test"] = {"frames": 1.23}
    (ds / "meta.json").write_text(json.dumps(meta))  # re-running a step rewrites meta.json: same dataset
    assert dataset_fingerprint(ds) == fp
    tr = json.loads((ds / "transforms_val.json").read_text())
    tr["frames"][0]["transform_matrix"][0][3] += 0.01  # another tracking: another dataset
    (ds / "transforms_val.json").write_text(json.dumps(tr))
    assert dataset_fingerprint(ds) != fp

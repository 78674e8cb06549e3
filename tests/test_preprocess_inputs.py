"""Preprocessing: bad inputs give one clear error and leave no step of theirs marked done; the small
pieces (crop rule, gap interpolation, blink scale, au.csv checks, markers, legacy folders) on their own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _preprocess_helpers import make_video


def _markers(ws: Path, name: str):
    return sorted(p.stem for p in (ws / "data" / name / ".steps").glob("*.json"))


def test_text_file_named_mp4(tmp_path):
    from gaussiantalker.preprocess import PreprocessError, preprocess

    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 20)
    with pytest.raises(PreprocessError, match=r"notes\.mp4 is not a video file"):
        preprocess(fake, workspace=tmp_path, progress=False)
    assert _markers(tmp_path, "notes") == []


def test_video_without_audio(tmp_path):
    from gaussiantalker.preprocess import PreprocessError, preprocess

    video = make_video(tmp_path / "silent.mp4", 3, audio=False)
    with pytest.raises(PreprocessError, match=r"silent\.mp4 has no audio stream"):
        preprocess(video, workspace=tmp_path, progress=False)
    assert _markers(tmp_path, "silent") == []


def test_half_second_clip(tmp_path):
    from gaussiantalker.preprocess import PreprocessError, preprocess

    video = make_video(tmp_path / "blip.mp4", 0.5)
    with pytest.raises(PreprocessError, match=r"blip\.mp4 is 0\.\d+ s long.*minutes of video"):
        preprocess(video, workspace=tmp_path, progress=False)
    assert _markers(tmp_path, "blip") == []


def test_video_without_a_face(tmp_path):
    from gaussiantalker.preprocess import PreprocessError, preprocess

    video = make_video(tmp_path / "pattern.mp4", 3)
    with pytest.raises(PreprocessError, match=r"pattern\.mp4: no face found"):
        preprocess(video, workspace=tmp_path, progress=False)
    assert _markers(tmp_path, "pattern") == ["probe"]  # the input's own step (crop) is not marked done


def test_au_csv_without_the_column_fails_before_any_step(tmp_path):
    from gaussiantalker.preprocess import PreprocessError, preprocess

    video = make_video(tmp_path / "clip.mp4", 3)
    bad = tmp_path / "au.csv"
    bad.write_text("frame, face_id, timestamp, AU01_r\n1, 0, 0.0, 0.5\n")
    with pytest.raises(PreprocessError, match=r"au\.csv: no AU45_r column"):
        preprocess(video, workspace=tmp_path, au_csv=bad, progress=False)
    assert _markers(tmp_path, "clip") == []
    bad.write_text("frame, AU45_r\n1, 0.5\n2, closed\n")
    with pytest.raises(PreprocessError, match=r"au\.csv, line 3: AU45_r value 'closed' is not a number"):
        preprocess(video, workspace=tmp_path, au_csv=bad, progress=False)


def test_bad_arguments(tmp_path):
    from gaussiantalker.preprocess import preprocess

    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        preprocess(tmp_path / "missing.mp4", workspace=tmp_path)
    video = make_video(tmp_path / "clip.mp4", 2.5)
    with pytest.raises(ValueError, match="unknown backends key"):
        preprocess(video, workspace=tmp_path, backends={"landmark": "dlib"})
    with pytest.raises(ValueError, match="invalid name"):
        preprocess(video, workspace=tmp_path, name="../escape")
    with pytest.raises(ValueError, match="unknown tracking backend"):
        preprocess(video, workspace=tmp_path, backends={"tracking": "flame"}, progress=False)
    with pytest.raises(FileNotFoundError, match="79999_iter.pth"):
        preprocess(video, workspace=tmp_path, backends={"parsing": "bisenet"}, assets=tmp_path, progress=False)
    with pytest.raises(ImportError, match="dlib"):  # dlib-bin or its predictor missing: says what to do
        preprocess(video, workspace=tmp_path, backends={"landmarks": "dlib"}, assets=tmp_path, progress=False)
    assert not (tmp_path / "data").exists()


def test_plan_touches_nothing(tmp_path):
    from gaussiantalker.preprocess import plan_preprocess
    from gaussiantalker.preprocess.pipeline import format_plan

    video = make_video(tmp_path / "clip.mp4", 2.5)
    ws = tmp_path / "ws"
    plan = plan_preprocess(video, workspace=ws)
    assert [p.name for p in plan][:3] == ["probe", "crop", "frames"] and plan[-1].name == "meta"
    assert not any(p.done for p in plan)
    frames = next(p for p in plan if p.name == "frames")
    assert frames.writes == [ws / "data" / "clip" / "ori_imgs" / "*.jpg"]
    assert "would run" in format_plan(plan)
    assert not ws.exists()


def test_crop_rule():
    from gaussiantalker.preprocess.crop import crop_from_boxes

    # a face-crop video: kept whole
    full = crop_from_boxes(np.array([[130.0, 140, 390, 410]] * 3), 512, 512)
    assert full.is_full_frame
    # a portrait phone video: one square around the face, inside the frame
    boxes = np.array([[480.0, 650, 700, 870], [500, 660, 710, 880], [470, 640, 690, 860]])
    crop = crop_from_boxes(boxes, 1080, 1920)
    assert crop.size < 1080 and crop.x + crop.size <= 1080 and crop.y + crop.size <= 1920
    assert crop.x <= boxes[:, 0].min() and crop.x + crop.size >= boxes[:, 2].max()
    assert crop.y <= boxes[:, 1].min() and crop.y + crop.size >= boxes[:, 3].max()
    # a face near the top edge: shifted to stay inside
    top = crop_from_boxes(np.array([[400.0, 0, 600, 200]]), 1080, 1920)
    assert top.y == 0
    with pytest.raises(ValueError):
        crop_from_boxes(np.zeros((0, 4)), 100, 100)


def test_gap_interpolation():
    from gaussiantalker.preprocess.stages import interpolate_gaps, missing_ranges

    pts = np.asfortranarray(np.arange(8, dtype=np.float32)[:, None, None] * np.ones((8, 2, 2), np.float32))
    found = np.array([False, True, True, False, False, True, True, False])
    pts[~found] = np.nan
    out = interpolate_gaps(pts, found)
    assert missing_ranges(found) == [(0, 0), (3, 4), (7, 7)]
    assert np.allclose(out[:, 0, 0], [1, 1, 2, 3, 4, 5, 6, 6])
    assert np.isnan(pts[3]).all()  # the input is not changed


def test_blink_scale_and_csv(tmp_path):
    import pandas as pd

    from gaussiantalker.preprocess.blink import (COLUMNS, au45_from_landmarks, eye_aspect_ratio,
                                                 validate_au_csv, write_au_csv)

    rng = np.random.default_rng(0)
    # 68-point eyes: corners 10 px apart, lids opening 3 px (open) to 0.3 px (closed)
    f = 50
    opening = np.full(f, 3.0)
    opening[20:23] = [1.5, 0.3, 1.5]
    pts = np.zeros((f, 68, 2))
    for base in (36, 42):
        pts[:, base + 0] = [0, 0]
        pts[:, base + 3] = [10, 0]
        pts[:, base + 1, 0], pts[:, base + 2, 0] = 3, 7
        pts[:, base + 5, 0], pts[:, base + 4, 0] = 3, 7
        pts[:, base + 1, 1] = pts[:, base + 2, 1] = -opening / 2
        pts[:, base + 5, 1] = pts[:, base + 4, 1] = opening / 2
    pts += rng.normal(0, 0.01, pts.shape)
    assert np.allclose(eye_aspect_ratio(pts)[0], 0.3, atol=0.01)
    au = au45_from_landmarks(pts)
    assert au[21] > 4.5 and 2 < au[20] < 4 and np.median(au) < 0.2

    path = write_au_csv(tmp_path / "au.csv", au, np.arange(f) != 5)
    df = pd.read_csv(path)
    assert list(df.columns) == [COLUMNS[0]] + [" " + c for c in COLUMNS[1:]]
    assert np.allclose(df[" AU45_r"], au, atol=0.005) and df[" success"].tolist()[4:7] == [1, 0, 1]
    assert df["frame"].tolist() == list(range(1, f + 1))
    assert np.allclose(validate_au_csv(path, f + 2), df[" AU45_r"])


@pytest.mark.parametrize("sep", [", ", ","])
def test_user_au_csv_reads_as_the_original_expects(tmp_path, sep):
    """A user's au.csv with or without OpenFace's leading spaces is accepted, and the dataset's copy has the
    column the original's loader reads, ``df[" AU45_r"]`` (an OpenFace file stays a byte copy)."""
    import pandas as pd

    from gaussiantalker.preprocess.blink import copy_au_csv, validate_au_csv

    rows = [sep.join(["frame", "timestamp", "success", "AU45_r"])]
    rows += [sep.join([str(i + 1), f"{i / 25:.3f}", "1", f"{(i % 7) / 2:.2f}"]) for i in range(10)]
    src = tmp_path / f"user{len(sep)}.csv"
    src.write_text("\n".join(rows) + "\n")
    values = validate_au_csv(src, 10)
    assert np.allclose(values, [(i % 7) / 2 for i in range(10)])
    dest = copy_au_csv(src, tmp_path / "au.csv", len(values), 10)
    df = pd.read_csv(dest)
    assert np.allclose(df[" AU45_r"], values)
    if sep == ", ":
        assert dest.read_bytes() == src.read_bytes()
    # one row short: the last row repeated, header in OpenFace's form too
    src.write_text("\n".join(rows[:-1]) + "\n")
    df = pd.read_csv(copy_au_csv(src, tmp_path / "au2.csv", 9, 10))
    assert len(df) == 10 and np.allclose(df[" AU45_r"], values[:9].tolist() + [values[8]])


def test_rerun_after_changed_parameters_uses_markers(tmp_path):
    from gaussiantalker.preprocess.steps import Context, Output, Step, StepResult, run_steps

    calls = []

    class Write(Step):
        def __init__(self, name, depends=(), value=1):
            self.name, self.depends, self.value = name, depends, value

        def outputs(self, ctx):
            return [Output(f"{self.name}.txt")]

        def params(self, ctx):
            return {"value": self.value}

        def run(self, ctx):
            calls.append(self.name)
            ctx.path(f"{self.name}.txt").write_text(str(self.value))
            return StepResult({"value": self.value})

    def ctx():
        return Context(tmp_path, None, progress=False)

    steps = [Write("a"), Write("b", ("a",)), Write("c")]
    run_steps(steps, ctx())
    assert calls == ["a", "b", "c"]
    run_steps(steps, ctx())
    assert calls == ["a", "b", "c"]  # nothing ran
    run_steps([Write("a", value=2), Write("b", ("a",)), Write("c")], ctx())
    assert calls[3:] == ["a", "b"]  # changed parameter: the step and its dependant
    (tmp_path / "c.txt").write_text("12345")  # changed output
    run_steps([Write("a", value=2), Write("b", ("a",)), Write("c")], ctx())
    assert calls[5:] == ["c"]


def test_dataset_open_legacy_folder(tmp_path):
    import cv2

    from gaussiantalker.preprocess import Dataset

    folder = tmp_path / "obama"
    (folder / "ori_imgs").mkdir(parents=True)
    for i in range(12):
        cv2.imwrite(str(folder / "ori_imgs" / f"{i}.jpg"), np.full((45, 40, 3), i, np.uint8))
    np.save(folder / "aud_ds.npy", np.zeros((12, 16, 29), np.float32))
    np.save(folder / "aud_mfcc.npy", np.zeros((12, 16, 26), np.float32))
    for name, ids in (("train", range(10)), ("val", range(10, 12))):
        frames = [{"img_id": i, "aud_id": i, "transform_matrix": np.eye(4).tolist()} for i in ids]
        (folder / f"transforms_{name}.json").write_text(json.dumps({"focal_len": 1000, "frames": frames}))
    data = Dataset.open(folder)
    assert data.legacy and (data.num_frames, data.width, data.height, data.fps) == (12, 40, 45, 25.0)
    assert data.audio_kind == "deepspeech" and data.crop is None and data.backends == {}
    assert data.split == {"train": [0, 10], "val": [10, 12]}
    with pytest.raises(FileNotFoundError, match="no ori_imgs"):
        Dataset.open(tmp_path)


def test_unavailable_landmark_backends_say_what_to_install(tmp_path):
    import importlib.util

    from gaussiantalker.preprocess.landmark_backends import BackendUnavailableError, detect

    frames = [np.zeros((64, 64, 3), np.uint8)]
    if importlib.util.find_spec("dlib") is None:
        with pytest.raises(BackendUnavailableError, match="pip install dlib-bin"):
            detect(frames, "dlib", assets=tmp_path)
    else:
        with pytest.raises(BackendUnavailableError, match="shape_predictor_68_face_landmarks.dat"):
            detect(frames, "dlib", assets=tmp_path)
    with pytest.raises(BackendUnavailableError, match="face-alignment"):
        detect(frames, "face-alignment", assets=tmp_path)
    with pytest.raises(ValueError, match="unknown landmark backend"):
        detect(frames, "openpose")


def test_rotated_phone_video_reports_its_displayed_size(tmp_path):
    from gaussiantalker.media import probe, run_ffmpeg
    from gaussiantalker.preprocess.frames import check_video

    landscape = make_video(tmp_path / "landscape.mp4", 2.5, size="320x240")
    rotated = tmp_path / "rotated.mp4"  # stored 320 x 240 with a 90° display matrix, as phones write them
    run_ffmpeg(["-y", "-display_rotation", "90", "-i", str(landscape), "-c", "copy", str(rotated)], path=landscape)
    assert (probe(rotated).video.width, probe(rotated).video.height) == (320, 240)
    info = check_video(rotated)
    assert (info.width, info.height) == (240, 320)
    assert (check_video(landscape).width, check_video(landscape).height) == (320, 240)

"""The command line: the old wrapper's interface word for word, dry runs that touch nothing, clear errors.

Only here the heavy work is replaced: the ``gaussiantalker.api`` verbs are swapped for recorders, so the
tests prove that each DESIGN.md example line parses and reaches the right function with the right
arguments. Errors, dry runs and ``TEST_MODE=1`` run the real code (and a few run as real subprocesses).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from gaussiantalker import api, cli
from gaussiantalker.config import preset_dir

REPO = Path(__file__).resolve().parents[1]

# DESIGN.md, "Command line": every one of these lines must run unchanged.
DESIGN_LINES = [
    "gaussiantalker train --video_path ./obama.mp4 --gpu GPU0 --iterations 10000",
    "gaussiantalker train --video_path ./obama.mp4 --gpu GPU0 --iterations 15000 --config configs/64_dim_1_transformer.py",  # noqa: E501
    "gaussiantalker train --video_path ./obama.mp4 --gpu GPU0 --au_csv ./au.csv",
    "gaussiantalker train --video_path ./obama.mp4 --gpu CPU --iterations 10000",
    "gaussiantalker infer --model_dir obama --audio_path speech.wav --gpu GPU0",
    "gaussiantalker infer --model_dir obama --audio_path speech.wav --gpu GPU0 --batch_size 256 --iteration 15000",
    "TEST_MODE=1 gaussiantalker train --video_path ./test.mp4 --gpu GPU0 --iterations 10000",
    "TEST_MODE=1 gaussiantalker infer --model_dir test --audio_path ./test.wav",
]


def _argv(line: str):
    words = shlex.split(line)
    env = {}
    while "=" in words[0]:
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    assert words.pop(0) == "gaussiantalker"
    return env, words


class Recorder:
    """Stands in for one api verb: records its arguments, returns a result-like object."""

    def __init__(self, result):
        self.calls = []
        self.result = result

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result


@pytest.fixture
def recorders(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TEST_MODE", raising=False)
    rec = {
        "train": Recorder(SimpleNamespace(path=tmp_path / "GaussianTalker/output/obama", iteration=10000)),
        "preprocess": Recorder(SimpleNamespace(path=tmp_path / "GaussianTalker/data/obama", num_frames=10)),
        "render": Recorder(SimpleNamespace(path=tmp_path / "out.mp4")),
        "evaluate": Recorder(SimpleNamespace(iteration=5, frames=3, psnr=30.0, ssim=0.9, lpips=None, lmd=1.5,
                                             mouth={"pearson": 0.8, "amplitude_ratio": 0.9}, head_alpha=0.99,
                                             head_alpha_interior=0.999,
                                             face_psnr=27.0, face_psnr_mean_frame=24.0,
                                             metrics_path=tmp_path / "m.json", report_path=tmp_path / "r.html")),
    }
    for name, r in rec.items():
        monkeypatch.setattr(api, name, r)
    for name in ("obama.mp4", "au.csv", "speech.wav"):
        (tmp_path / name).write_bytes(b"x")
    return rec


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its type, size and mtime (ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            out[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return out


def run_cli(*args, cwd, env=None, timeout=120):
    """``python -m gaussiantalker ARGS`` as a real subprocess."""
    full_env = {k: v for k, v in os.environ.items() if k != "TEST_MODE"}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "gaussiantalker", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ": error: " in ln]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


# --------------------------------------------------------------------------------------------------
# the DESIGN.md lines reach the right function


@pytest.mark.parametrize("line", [ln for ln in DESIGN_LINES if " train " in ln and "TEST_MODE" not in ln])
def test_design_train_lines(line, recorders):
    _, argv = _argv(line)
    assert cli.main(argv) == 0
    (args, kw), = recorders["train"].calls
    assert args == ("./obama.mp4",)
    assert kw["device"] == ("CPU" if "--gpu CPU" in line else "GPU0")
    assert kw["workspace"] == Path("GaussianTalker")
    assert kw["iterations"] == (int(line.split("--iterations ")[1].split()[0]) if "--iterations" in line else None)
    if "--config" in line:  # resolved against the bundled presets, from any directory
        assert kw["config"] == preset_dir() / "64_dim_1_transformer.py"
    else:
        assert kw["config"] is None
    assert kw["au_csv"] == ("./au.csv" if "--au_csv" in line else None)
    assert kw["progress"] is True
    assert not recorders["render"].calls and not recorders["preprocess"].calls


@pytest.mark.parametrize("line", [ln for ln in DESIGN_LINES if " infer " in ln and "TEST_MODE" not in ln])
def test_design_infer_lines(line, recorders, capsys):
    _, argv = _argv(line)
    assert cli.main(argv) == 0
    (args, kw), = recorders["render"].calls
    assert args == ("obama", "speech.wav")
    assert kw["device"] == "GPU0"
    assert kw["batch_size"] == (256 if "--batch_size 256" in line else 128)
    assert kw["iteration"] == (15000 if "--iteration 15000" in line else None)
    assert kw["pose"] == "track" and kw["paste_back"] is False and kw["out"] is None
    assert kw["close_in_silence"] is None  # the model's choice
    assert "out.mp4" in capsys.readouterr().out


def test_other_commands_reach_their_function(recorders, monkeypatch, capsys):
    assert cli.main(["preprocess", "--video_path", "obama.mp4", "--name", "obama", "--gpu", "cuda:0", "-q"]) == 0
    (args, kw), = recorders["preprocess"].calls
    assert args == ("obama.mp4",) and kw["name"] == "obama" and kw["device"] == "cuda:0" and kw["progress"] is False
    assert cli.main(["evaluate", "--model_dir", "obama", "--iteration", "5", "--workspace", "ws"]) == 0
    (args, kw), = recorders["evaluate"].calls
    assert args == ("obama",) and kw["iteration"] == 5 and kw["workspace"] == Path("ws")
    out = capsys.readouterr().out
    assert "psnr: 30.0000" in out and "lpips: not measured" in out and "r.html" in out
    # options before the command work too; infer's extra flags
    assert cli.main(["--workspace", "ws2", "infer", "--model_dir", "obama", "--audio_path", "speech.wav",
                     "--pose", "static", "--paste_back", "--out", "x.mp4"]) == 0
    (args, kw), = recorders["render"].calls
    assert kw["workspace"] == Path("ws2") and kw["pose"] == "static" and kw["paste_back"] and kw["out"] == "x.mp4"
    for word, value in (("yes", True), ("no", False), ("auto", None)):
        assert cli.main(["infer", "--model_dir", "obama", "--audio_path", "speech.wav", "--close_in_silence", word]) == 0
        assert recorders["render"].calls[-1][1]["close_in_silence"] is value
    # demo
    import gaussiantalker.demo as demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: seen.update(out=out, **kw) or SimpleNamespace(
        render=SimpleNamespace(path="v.mp4")))
    assert cli.main(["demo", "--out", "d", "--seconds", "3", "--iterations", "7", "--gpu", "CPU"]) == 0
    assert seen == {"out": "d", "seconds": 3.0, "iterations": 7, "device": "CPU", "progress": True}


def test_backend_options_reach_the_api(recorders, capsys):
    """--landmarks and --audio_features choose the optional backends from the command line."""
    assert cli.main(["train", "--video_path", "obama.mp4", "--landmarks", "dlib", "--audio_features",
                     "deepspeech"]) == 0
    assert recorders["train"].calls[-1][1]["backends"] == {"landmarks": "dlib", "audio": "deepspeech"}
    assert cli.main(["preprocess", "--video_path", "obama.mp4", "--landmarks", "face-alignment",
                     "--audio-features", "hubert"]) == 0
    assert recorders["preprocess"].calls[-1][1]["backends"] == {"landmarks": "face-alignment", "audio": "hubert"}
    assert cli.main(["train", "--video_path", "obama.mp4", "--landmarks", "mediapipe"]) == 0
    assert recorders["train"].calls[-1][1]["backends"] == {"landmarks": "mediapipe"}
    assert cli.main(["train", "--video_path", "obama.mp4"]) == 0
    assert recorders["train"].calls[-1][1]["backends"] is None  # auto: the best present
    capsys.readouterr()
    for bad in (["--landmarks", "openface"], ["--audio_features", "wav2vec"]):
        assert cli.main(["train", "--video_path", "obama.mp4", *bad]) == 2
        assert "invalid choice" in one_error_line(capsys.readouterr().err)


def test_dry_run_plans_with_the_chosen_backends(tmp_path, monkeypatch, capsys):
    # (not with the `recorders` fixture: the first import of gaussiantalker.preprocess would take the
    # signature of the recorder standing in for api.preprocess)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TEST_MODE", raising=False)
    (tmp_path / "v.mp4").write_bytes(b"x")
    assert cli.main(["preprocess", "--video_path", "v.mp4", "--audio_features", "hubert", "--dry-run"]) == 0
    assert "aud_hubert.npy" in capsys.readouterr().out
    assert os.listdir(tmp_path) == ["v.mp4"]


def test_model_dir_path_inside_the_workspace_is_accepted(recorders):
    (Path("GaussianTalker") / "output" / "obama").mkdir(parents=True)
    assert cli.main(["infer", "--model_dir", "GaussianTalker/output/obama/", "--audio_path", "speech.wav"]) == 0
    assert recorders["render"].calls[0][0][0] == "obama"


@pytest.mark.parametrize("bad", ["../x", "/tmp/x", "a/b", "..", ".hidden", "x y"])
def test_bad_model_names_are_refused(bad, recorders, capsys):
    assert cli.main(["infer", "--model_dir", bad, "--audio_path", "speech.wav"]) == 2
    assert "error:" in one_error_line(capsys.readouterr().err)
    assert cli.main(["train", "--video_path", "obama.mp4", "--name", bad]) == 2
    assert not recorders["render"].calls and not recorders["train"].calls


def test_usage_errors_exit_2(recorders, capsys):
    for argv in (["train"], ["infer", "--model_dir", "x"], ["train", "--video_path", "v", "--gpu", "banana"],
                 ["train", "--video_path", "v", "--iterations", "0"], ["frobnicate"],
                 ["train", "--video_path", "obama.mp4", "--config", "no_such_preset"]):
        assert cli.main(argv) == 2, argv
        one_error_line(capsys.readouterr().err)
    assert not recorders["train"].calls


def test_help_shows_examples(capsys):
    assert cli.main(["--help"]) == 0
    assert "examples:" in capsys.readouterr().out
    for command in ("train", "infer", "preprocess", "evaluate", "assets", "demo"):
        assert cli.main([command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "examples:" in out and "--workspace" in out and "--dry-run" in out
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for line in DESIGN_LINES[:2]:
        assert line in out


# --------------------------------------------------------------------------------------------------
# failures: one line, exit 1, traceback only with --verbose


def test_failures_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TEST_MODE", raising=False)
    assert cli.main(["train", "--video_path", "missing.mp4", "--gpu", "CPU"]) == 1
    assert "missing.mp4" in one_error_line(capsys.readouterr().err)
    (tmp_path / "a.wav").write_bytes(b"x")
    assert cli.main(["infer", "--model_dir", "nobody", "--audio_path", "a.wav", "--gpu", "CPU"]) == 1
    assert "nobody" in one_error_line(capsys.readouterr().err)
    assert cli.main(["infer", "--model_dir", "nobody", "--audio_path", "a.wav", "--gpu", "CPU", "--verbose"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("gaussiantalker: error:")
    assert not (tmp_path / "GaussianTalker").exists()


def test_missing_gpu_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.chdir(tmp_path)
    (tmp_path / "v.mp4").write_bytes(b"x")
    gpu = f"GPU{torch.cuda.device_count()}"  # one past the last one present
    assert cli.main(["train", "--video_path", "v.mp4", "--gpu", gpu]) == 1
    assert "does not exist" in one_error_line(capsys.readouterr().err)


def test_subprocess_errors(tmp_path):
    r = run_cli("train", "--video_path", "nope.mp4", "--gpu", "CPU", cwd=tmp_path)
    assert r.returncode == 1 and "nope.mp4" in one_error_line(r.stderr)
    r = run_cli("train", "--video_path", "nope.mp4", "--config", "configs/no_such.py", cwd=tmp_path)
    assert r.returncode == 2 and "no_such" in one_error_line(r.stderr)
    r = run_cli("infer", "--model_dir", "../escape", "--audio_path", "a.wav", cwd=tmp_path)
    assert r.returncode == 2 and "escape" in one_error_line(r.stderr)
    assert sorted(os.listdir(tmp_path)) == []


# --------------------------------------------------------------------------------------------------
# --dry-run and TEST_MODE=1 change nothing


def _model_folder(root: Path, name: str, iterations=(10, 20)) -> Path:
    folder = root / "GaussianTalker" / "output" / name
    for k in iterations:
        (folder / "point_cloud" / f"iteration_{k}").mkdir(parents=True)
        (folder / "point_cloud" / f"iteration_{k}" / "point_cloud.ply").write_bytes(b"ply")
        (folder / "checkpoints").mkdir(exist_ok=True)
        (folder / "checkpoints" / f"chkpnt_{k}.pth").write_bytes(b"pth")
    (folder / "config.json").write_text("{}")
    return folder


def test_design_test_mode_lines_touch_nothing(tmp_path):
    """The two TEST_MODE=1 lines of DESIGN.md, unchanged, as real subprocesses."""
    (tmp_path / "test.mp4").write_bytes(b"not really a video")
    (tmp_path / "test.wav").write_bytes(b"RIFF")
    before = snapshot(tmp_path)
    env, argv = _argv(DESIGN_LINES[6])
    r = run_cli(*argv, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "GaussianTalker/data/test" in r.stdout and "GaussianTalker/output/test" in r.stdout
    assert "TEST_MODE=1" in r.stdout
    assert snapshot(tmp_path) == before  # the workspace was not even created
    _model_folder(tmp_path, "test")
    before = snapshot(tmp_path)
    env, argv = _argv(DESIGN_LINES[7])
    r = run_cli(*argv, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "renders/output.mp4" in r.stdout and "iteration 20" in r.stdout
    assert snapshot(tmp_path) == before


def test_design_test_mode_lines_on_a_fresh_machine(tmp_path):
    """The wrapper's own TEST_MODE=1 examples, unchanged, where neither the inputs nor the model exist:
    a dry run tests the logic, so it prints every step and path, names what is missing, and exits 0."""
    for line, expect_missing, expect_steps in (
        (DESIGN_LINES[7], ["audio file test.wav does not exist", "model 'test' not found"],
         ["audio features", "render", "GaussianTalker/output/test/renders/output.mp4"]),
        (DESIGN_LINES[6], ["video or dataset folder test.mp4 does not exist"],
         ["preprocess: frames", "preprocess: tracking", "GaussianTalker/data/test/track_params.pt", "train",
          "GaussianTalker/output/test/checkpoints/chkpnt_<k>.pth"]),
    ):
        env, argv = _argv(line)
        r = run_cli(*argv, cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "dry run (TEST_MODE=1)" in r.stdout
        for text in expect_steps:
            assert text in r.stdout, (text, r.stdout)
        missing = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("missing: ")]
        assert len(missing) == len(expect_missing), r.stdout
        for text, ln in zip(expect_missing, missing):
            assert text in ln, (text, ln)
        assert not r.stderr.strip(), r.stderr
        assert os.listdir(tmp_path) == []
    # with every input present it says so
    (tmp_path / "test.wav").write_bytes(b"RIFF")
    _model_folder(tmp_path, "test")
    env, argv = _argv(DESIGN_LINES[7])
    r = run_cli(*argv, cwd=tmp_path, env=env)
    assert r.returncode == 0 and "inputs: all present" in r.stdout and "missing:" not in r.stdout


def test_dry_run_step_table_matches_the_pipeline():
    """The steps a dry run lists when the video is missing are the pipeline's steps, in its order."""
    from gaussiantalker.preprocess.stages import make_steps

    assert [name for name, _, _ in cli._PREPROCESS_STEPS] == [s.name for s in make_steps()]


def test_dry_run_every_command_touches_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TEST_MODE", raising=False)
    (tmp_path / "v.mp4").write_bytes(b"x")
    (tmp_path / "a.wav").write_bytes(b"x")
    (tmp_path / "legacy_dataset").mkdir()
    _model_folder(tmp_path, "m")
    before = snapshot(tmp_path)
    runs = [
        ["--dry-run", "preprocess", "--video_path", "v.mp4", "--name", "clip"],
        ["train", "--video_path", "v.mp4", "--config", "64_dim_2_transformer", "--dry-run"],
        ["train", "--video_path", "legacy_dataset", "--dry-run"],
        ["infer", "--model_dir", "m", "--audio_path", "a.wav", "--iteration", "10", "--dry-run"],
        ["evaluate", "--model_dir", "m", "--dry-run"],
        ["demo", "--out", "demo", "--dry-run"],
        ["train", "--video_path", "v.mp4", "--workspace", "other", "--dry-run"],
    ]
    for argv in runs:
        assert cli.main(argv) == 0, (argv, capsys.readouterr().err)
        out = capsys.readouterr().out
        assert "dry run" in out and "writes:" in out, argv
    assert snapshot(tmp_path) == before
    # a dry run resumes from what is there and says so
    assert cli.main(["train", "--video_path", "v.mp4", "--name", "m", "--dry-run"]) == 0
    assert "resume from iteration 20" in capsys.readouterr().out
    # and names what a real run would miss, still exiting 0 (it tests the plan, not the files)
    assert cli.main(["infer", "--model_dir", "m", "--audio_path", "a.wav", "--iteration", "99", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "missing: model 'm' has no iteration 99 (saved: 10, 20)" in out and "inputs missing (1)" in out
    assert cli.main(["infer", "--model_dir", "zz", "--audio_path", "a.wav", "--dry-run"]) == 0
    assert "missing: model 'zz' not found" in capsys.readouterr().out
    monkeypatch.setenv("TEST_MODE", "1")
    assert cli.main(["evaluate", "--model_dir", "m"]) == 0
    assert "TEST_MODE=1" in capsys.readouterr().out
    assert snapshot(tmp_path) == before


def test_logging_handler_is_removed():
    import logging

    before = list(logging.getLogger("gaussiantalker").handlers)
    cli.main(["assets", "--dir", "/nonexistent-asset-dir"])
    assert logging.getLogger("gaussiantalker").handlers == before


# --------------------------------------------------------------------------------------------------
# native libraries' log chatter stays off the terminal unless --verbose


def test_native_log_filter_drops_chatter_and_keeps_the_rest(tmp_path):
    """C++-style lines written to descriptor 2 are filtered; Python's stderr and other lines pass."""
    code = (
        "import os, sys\n"
        "from gaussiantalker.nativelog import quiet_native_logs\n"
        "with quiet_native_logs():\n"
        "    assert os.environ['TF_CPP_MIN_LOG_LEVEL'] == '3'\n"
        "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "    os.write(2, b'W0000 00:00:1796484307.690295   11533 inference_feedback_manager.cc:114] Feedback\\n')\n"
        "    os.write(2, b'2026-12-05 15:25:05.492262: I tensorflow/core/util/port.cc:153] oneDNN custom ops\\n')\n"
        "    os.write(2, b'E0000 00:00:1.5  7 graph.cc:9] a native error\\nsomething else native\\n')\n"
        "    sys.stderr.write('python line\\n')\n"
        "os.write(2, b'after the block\\n')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "GLOG_minloglevel")}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stderr.splitlines()) == sorted(["E0000 00:00:1.5  7 graph.cc:9] a native error",
                                                    "something else native", "python line", "after the block"])


def _faceless_video(path: Path) -> Path:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=160x160:rate=25", "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=16000",
                    "-t", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
                   check=True, timeout=60)
    return path


def _shown(stderr: str) -> list:
    """The stderr lines a terminal shows at the end (a progress bar's \\r updates collapse to the last)."""
    return [ln.rsplit("\r", 1)[-1].strip() for ln in stderr.split("\n") if ln.rsplit("\r", 1)[-1].strip()]


def test_a_video_without_a_face_fails_in_one_line(tmp_path):
    """No TensorFlow / MediaPipe chatter, no step-status lines: the progress bar and the one-line error."""
    chatter = ("XNNPACK", "absl::InitializeLog", "inference_feedback_manager", "oneDNN", "cpu_feature_guard",
               "step probe: running", "step crop: running")
    video = _faceless_video(tmp_path / "noface.mp4")
    r = run_cli("train", "--video_path", str(video), "--gpu", "CPU", cwd=tmp_path, timeout=300)
    assert r.returncode == 1, r.stderr
    shown = _shown(r.stderr)
    error = one_error_line(r.stderr)
    assert "no face" in error
    bars = [ln for ln in shown if ln.startswith("preprocess noface:") and "%|" in ln]
    others = [ln for ln in shown if ln not in bars and ln != error]
    assert len(others) <= 1, shown  # at most one hint line
    assert not [c for c in chatter if c in r.stderr], r.stderr
    # --verbose shows them (so the run above did meet native chatter and the filter removed it)
    r = run_cli("train", "--video_path", str(video), "--gpu", "CPU", "--verbose", cwd=tmp_path, timeout=300)
    assert r.returncode == 1
    assert "XNNPACK" in r.stderr and "absl::InitializeLog" in r.stderr, r.stderr
    assert "step crop: running" in r.stderr  # the step-status lines are debug messages


def test_docs_list_the_differences_from_the_wrapper():
    """README promises the wrapper's lines run unchanged; docs/cli.md lists every behaviour that differs,
    each with its reason, and the defaults it states are the parser's."""
    readme = (REPO / "README.md").read_text()
    assert "word for word" not in readme and "docs/cli.md#differences-from-the-wrapper" in readme
    doc = (REPO / "docs" / "cli.md").read_text()
    section = doc.split("## Differences from the wrapper", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and not set(cells[0]) <= {"-"} and cells[0] != "what":
            assert all(cells), f"a row without its wrapper value, our value or its reason: {line}"
            rows[cells[0]] = cells
    for key in ("`--gpu` default", "`--iterations` default (`train`)", "what `--iterations` counts",
                "`--iteration` default (`infer`)"):
        assert key in rows, f"docs/cli.md does not list {key}"
    parser = cli.build_parser()
    train = parser.parse_args(["train", "--video_path", "v.mp4"])
    infer = parser.parse_args(["infer", "--model_dir", "m", "--audio_path", "a.wav"])
    assert train.gpu == "auto" and "`auto`" in rows["`--gpu` default"][2]
    assert train.iterations is None and "config's" in rows["`--iterations` default (`train`)"][2]
    assert infer.iteration is None and "newest" in rows["`--iteration` default (`infer`)"][2]
    assert "fine-stage" in rows["what `--iterations` counts"][2]


def test_main_leaves_the_package_logger_as_it_found_it(tmp_path):
    """main() runs inside other programs (tests, notebooks): its --quiet must not silence their logging after it."""
    import logging

    from gaussiantalker.cli import main

    logger = logging.getLogger("gaussiantalker")
    before = (logger.level, list(logger.handlers))
    assert main(["assets", "--quiet", "--dir", str(tmp_path)]) == 0
    assert (logger.level, list(logger.handlers)) == before


def test_device_lists_and_many_audio_files_reach_the_api(recorders, tmp_path, capsys):
    """``--gpu GPU0,GPU1`` (data-parallel) and ``--audio_path`` with several files (sharded renders)."""
    assert cli.main(["train", "--video_path", "obama.mp4", "--gpu", "GPU0, GPU1,GPU2,GPU3"]) == 0
    (_, kw), = recorders["train"].calls
    assert kw["device"] == "GPU0,GPU1,GPU2,GPU3"
    assert cli.main(["train", "--video_path", "obama.mp4", "--gpu", "CPU,CPU"]) == 0
    assert recorders["train"].calls[-1][1]["device"] == "CPU,CPU"
    (tmp_path / "b.wav").write_bytes(b"x")
    recorders["render"].result = [SimpleNamespace(path=tmp_path / "speech.mp4"), SimpleNamespace(path=tmp_path / "b.mp4")]
    assert cli.main(["infer", "--model_dir", "obama", "--audio_path", "speech.wav", "b.wav", "--gpu", "CPU,CPU"]) == 0
    (args, kw), = recorders["render"].calls
    assert args == ("obama", ["speech.wav", "b.wav"]) and kw["device"] == "CPU,CPU"
    out = capsys.readouterr().out
    assert "speech.mp4" in out and "b.mp4" in out
    for bad in ("GPU0,", "GPU0,banana", "auto,auto"):
        assert cli.main(["train", "--video_path", "obama.mp4", "--gpu", bad]) == 2
    assert cli.main(["preprocess", "--video_path", "obama.mp4", "--gpu", "GPU0,GPU1"]) == 2  # one process


def test_dry_run_of_many_audio_files_lists_one_video_each(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    replies = tmp_path / "replies"
    replies.mkdir()
    for name in ("a.wav", "b.mp3"):
        (replies / name).write_bytes(b"x")
    assert cli.main(["infer", "--model_dir", "obama", "--audio_path", str(replies), "--gpu", "CPU,CPU",
                     "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 processes" in out and "renders/a.mp4" in out and "renders/b.mp4" in out

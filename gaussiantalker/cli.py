"""The ``gaussiantalker`` command line: the old ``run_gaussiantalker.sh`` interface (its documented lines run
unchanged; the differences are listed in ``docs/cli.md``).

```
gaussiantalker train --video_path VIDEO [--gpu GPU0|GPU1|...|CPU] [--iterations 10000]
                     [--config configs/64_dim_1_transformer.py] [--au_csv AU.csv]
gaussiantalker infer --model_dir NAME --audio_path AUDIO [--gpu GPU0] [--batch_size 128] [--iteration 10000]
gaussiantalker preprocess | evaluate | assets | demo
```

This module only parses arguments, checks what is cheap to check, and calls :mod:`gaussiantalker.api`
(or, for ``--dry-run`` / ``TEST_MODE=1``, prints every step with the paths it would read and write). Exit codes:
0 success, 1 failure, 2 usage error (bad option, bad name, unknown device spelling or config preset),
130 interrupted. Errors are one line on stderr (``gaussiantalker: error: ...``); ``--verbose`` adds the
traceback. Every command is documented in ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Dict, List, Optional

from . import __version__
from .workspace import InvalidNameError, Workspace, name_from_path, validate_name

PROG = "gaussiantalker"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
TEST_MODE_VAR = "TEST_MODE"
DEFAULT_WORKSPACE = "./GaussianTalker"
_DEVICE = re.compile(r"^(auto|cpu|gpu\d+|cuda(:\d+)?)$", re.IGNORECASE)


class UsageError(ValueError):
    """The command line is wrong (exit code 2)."""


# --------------------------------------------------------------------------------------------------
# parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``gaussiantalker train: error: ...``), exit code 2."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_USAGE)


def _device_arg(text: str) -> str:
    if not _DEVICE.match(text.strip()):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use GPU<n>, cuda:<n>, CPU or auto")
    return text.strip()


def _devices_arg(text: str) -> str:
    """One device, or a comma-separated list (one rank per entry: ``GPU0,GPU1``, ``CPU,CPU``)."""
    parts = [x.strip() for x in text.split(",")]
    for part in parts:
        if not _DEVICE.match(part) or part.lower() == "auto" and len(parts) > 1:
            raise argparse.ArgumentTypeError(f"unknown device {part!r} in {text!r}: use GPU<n>, cuda:<n>, CPU or auto, "
                                             f"or a list such as GPU0,GPU1 (one process per entry)")
    return ",".join(parts)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_common(p: argparse.ArgumentParser, suppress: bool) -> None:
    """Options every command takes (before or after the command name)."""

    def d(value):
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--workspace", metavar="DIR", default=d(DEFAULT_WORKSPACE),
                   help="workspace folder with data/ and output/ (default ./GaussianTalker)")
    p.add_argument("--assets", metavar="DIR", default=d(None),
                   help="folder of optional pretrained files (default $GAUSSIANTALKER_HOME or ~/.cache/gaussiantalker)")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true", default=d(False),
                   help="print every step with the paths it would read and write; change nothing "
                        "(TEST_MODE=1 in the environment means the same)")
    p.add_argument("-q", "--quiet", action="store_true", default=d(False), help="no progress bars or progress messages")
    p.add_argument("-v", "--verbose", action="store_true", default=d(False),
                   help="debug messages, and the traceback of an error")


def _add_gpu(p: argparse.ArgumentParser, many: bool = False) -> None:
    if many:
        p.add_argument("--gpu", type=_devices_arg, default="auto", metavar="DEVICE",
                       help="GPU0, GPU1, ..., CPU, cuda:<n> or auto (default: the first GPU, else the CPU); a list "
                            "such as GPU0,GPU1,GPU2,GPU3 (or CPU,CPU) starts one process per entry and works "
                            "data-parallel; under torchrun leave it out (rank r uses GPU r), see docs/distributed.md")
        return
    p.add_argument("--gpu", type=_device_arg, default="auto", metavar="DEVICE",
                   help="GPU0, GPU1, ..., CPU, cuda:<n> or auto (default: the first GPU, else the CPU)")


LANDMARK_BACKENDS = ("auto", "mediapipe", "dlib", "face-alignment")
AUDIO_FEATURES = ("auto", "phonetic", "mfcc", "deepspeech", "hubert")


def _add_backends(p: argparse.ArgumentParser) -> None:
    p.add_argument("--landmarks", choices=LANDMARK_BACKENDS, default="auto",
                   help="landmark backend (default auto = mediapipe; dlib and face-alignment need their "
                        "package and model files, see `gaussiantalker assets`)")
    p.add_argument("--audio_features", "--audio-features", choices=AUDIO_FEATURES, default="auto",
                   help="speech features (default auto: deepspeech when its graph is in the asset folder, "
                        "else mfcc; deepspeech is what the original GaussianTalker trains on)")


def _backends(args) -> Optional[Dict[str, str]]:
    """``--landmarks`` / ``--audio_features`` as the api's ``backends`` (None when both are auto)."""
    chosen = {"landmarks": getattr(args, "landmarks", "auto"), "audio": getattr(args, "audio_features", "auto")}
    chosen = {k: v for k, v in chosen.items() if v != "auto"}
    return chosen or None


_EXAMPLES = {
    "train": """examples:
  gaussiantalker train --video_path ./obama.mp4 --gpu GPU0 --iterations 10000
  gaussiantalker train --video_path ./obama.mp4 --gpu GPU0 --iterations 15000 --config configs/64_dim_1_transformer.py
  gaussiantalker train --video_path ./obama.mp4 --gpu GPU0 --au_csv ./au.csv
  gaussiantalker train --video_path ./obama.mp4 --gpu CPU --config cpu_small
  TEST_MODE=1 gaussiantalker train --video_path ./test.mp4 --gpu GPU0 --iterations 10000
  gaussiantalker train --video_path ./obama.mp4 --gpu GPU0,GPU1,GPU2,GPU3     # data-parallel, 4 processes
  torchrun --nproc-per-node 4 -m gaussiantalker train --video_path ./obama.mp4   (docs/distributed.md)

The video is preprocessed into <workspace>/data/<name>/ first (finished steps are re-used), then the
model is trained into <workspace>/output/<name>/, resuming from its newest checkpoint.""",
    "infer": """examples:
  gaussiantalker infer --model_dir obama --audio_path speech.wav --gpu GPU0
  gaussiantalker infer --model_dir obama --audio_path speech.wav --gpu GPU0 --batch_size 256 --iteration 15000
  TEST_MODE=1 gaussiantalker infer --model_dir test --audio_path ./test.wav
  gaussiantalker infer --model_dir obama --audio_path replies/ --gpu GPU0,GPU1  # one video per file, 2 processes

Writes <workspace>/output/<name>/renders/output.mp4 (and custom/ours_<k>/renders/output.mp4); several
files or a folder: <workspace>/output/<name>/renders/<audio name>.mp4 each.""",
    "preprocess": """examples:
  gaussiantalker preprocess --video_path ./obama.mp4
  gaussiantalker preprocess --video_path ./obama.mp4 --gpu GPU0 --au_csv ./au.csv --name obama""",
    "evaluate": """examples:
  gaussiantalker evaluate --model_dir obama
  gaussiantalker evaluate --model_dir obama --iteration 10000

Writes metrics.json and report.html into <workspace>/output/<name>/.""",
    "export": """examples:
  gaussiantalker export --model_dir obama --out obama.gtalk
  gaussiantalker export --model_dir obama --out obama.gtalk --iteration 10000

One file (safetensors, no pickle) with the weights, config, poses, blinks and the torso/background
frames (lossless video); gaussiantalker.load("obama.gtalk") renders it on any machine (docs/export.md).""",
    "assets": """examples:
  gaussiantalker assets
  gaussiantalker assets --dir ~/weights --json""",
    "demo": """examples:
  gaussiantalker demo
  gaussiantalker demo --out ./demo --seconds 4 --iterations 300

Animates scikit-image's public-domain 'astronaut' photograph into a talking video, then preprocesses,
trains (cpu_small), renders from new generated speech and evaluates it.""",
}


def _sub(subs, name: str, help_text: str, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return subs.add_parser(name, help=help_text, description=help_text, epilog=_EXAMPLES[name], parents=[common],
                           formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gaussiantalker`` command."""
    parser = _Parser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Audio-driven 3D Gaussian talking heads (GaussianTalker) from one video.",
                     epilog="examples:\n" + "\n".join(
                         line for key in ("train", "infer") for line in _EXAMPLES[key].splitlines()[1:3])
                     + "\n\nexit codes: 0 success, 1 failure, 2 usage error, 130 interrupted; see docs/cli.md")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_common(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, suppress=True)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subs.required = True

    p = _sub(subs, "train", "preprocess a video (re-using finished steps) and train a model (resuming)", common)
    p.add_argument("--video_path", "--video-path", required=True, metavar="VIDEO",
                   help="the training video (or an already preprocessed dataset folder)")
    _add_gpu(p, many=True)
    p.add_argument("--iterations", type=_positive_int, metavar="N", help="training iterations (default: the config's)")
    p.add_argument("--config", metavar="PRESET_OR_FILE",
                   help="preset name (64_dim_1_transformer, cpu_small, ...) or config file "
                        "(default 64_dim_1_transformer)")
    p.add_argument("--au_csv", "--au-csv", metavar="AU.csv", help="OpenFace au.csv for the eye blinks")
    p.add_argument("--name", help="dataset and model name (default: the video's file stem)")
    _add_backends(p)
    p.add_argument("--fresh", action="store_true",
                   help="discard the model's checkpoints and snapshots and train from scratch (needed when the "
                        "model folder was trained on another dataset)")

    p = _sub(subs, "infer", "render a trained model saying new audio", common)
    p.add_argument("--model_dir", "--model-dir", required=True, metavar="NAME",
                   help="model name (a folder of <workspace>/output/)")
    p.add_argument("--audio_path", "--audio-path", required=True, metavar="AUDIO", nargs="+",
                   help="the audio to say; several files or a folder render one video each, "
                        "<model>/renders/<audio name>.mp4, sharded across the processes of --gpu GPU0,GPU1 or torchrun")
    _add_gpu(p, many=True)
    p.add_argument("--batch_size", "--batch-size", type=_positive_int, default=128, metavar="N",
                   help="frames per batch (default 128)")
    p.add_argument("--iteration", type=_positive_int, metavar="K", help="saved iteration to use (default: the newest)")
    p.add_argument("--pose", choices=("track", "static"), default="track",
                   help="head motion: the training video's (track, default) or none (static)")
    p.add_argument("--paste_back", "--paste-back", action="store_true",
                   help="paste the face back into the full original frames (cropped videos)")
    p.add_argument("--close_in_silence", "--close-in-silence", choices=("auto", "yes", "no"), default="auto",
                   help="close the mouth where the audio is silent: auto (default: as training chose for this "
                        "person), yes, no")
    p.add_argument("--out", metavar="MP4", help="output video (default <model>/renders/output.mp4)")

    p = _sub(subs, "preprocess", "turn a video into a training dataset", common)
    p.add_argument("--video_path", "--video-path", required=True, metavar="VIDEO", help="the video")
    _add_gpu(p)
    p.add_argument("--au_csv", "--au-csv", metavar="AU.csv", help="OpenFace au.csv for the eye blinks")
    p.add_argument("--name", help="dataset name (default: the video's file stem)")
    p.add_argument("--size", type=_positive_int, default=512, help="side of the square frames (default 512)")
    _add_backends(p)

    p = _sub(subs, "evaluate", "evaluate a model on its held-out frames (metrics.json, report.html)", common)
    p.add_argument("--model_dir", "--model-dir", required=True, metavar="NAME", help="model name")
    _add_gpu(p)
    p.add_argument("--iteration", type=_positive_int, metavar="K", help="saved iteration (default: the newest)")
    p.add_argument("--audio", nargs="+", metavar="AUDIO",
                   help="score renders driven by these audio files (other voices) instead of the held-out frames: "
                        "the mouth against each audio's energy envelope, and closing in its silences")

    p = _sub(subs, "export", "write a trained model into one file that renders without its dataset", common)
    p.add_argument("--model_dir", "--model-dir", required=True, metavar="NAME", help="model name")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (NAME.gtalk)")
    p.add_argument("--iteration", type=_positive_int, metavar="K", help="saved iteration (default: the newest)")
    p.add_argument("--crf", type=int, metavar="Q", help="store the torso/background frames lossy at this H.264 "
                   "quality (e.g. 18: several times smaller; default lossless, renders identical to the folder's)")

    p = _sub(subs, "assets", "list the optional pretrained files: where looked for, found or not, what each enables",
             common)
    p.add_argument("--dir", dest="assets_dir", metavar="DIR", help="asset folder to inspect (same as --assets)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _sub(subs, "demo", "run the built-in example subject end to end (no data needed)", common)
    p.add_argument("--out", default="gaussiantalker-demo", metavar="DIR",
                   help="demo folder (default ./gaussiantalker-demo)")
    p.add_argument("--seconds", type=_positive_float, default=8.0, help="length of the generated video (default 8)")
    p.add_argument("--iterations", type=_positive_int, metavar="N",
                   help="fine-stage training iterations (default 600; the coarse stage keeps cpu_small's 1000)")
    _add_gpu(p)
    return parser


# --------------------------------------------------------------------------------------------------
# checks shared by the real run and the dry run


def test_mode() -> bool:
    """True when ``TEST_MODE`` is set to a true value (1, true, yes, on) in the environment."""
    return os.environ.get(TEST_MODE_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def _name(text: Optional[str], what: str) -> Optional[str]:
    if text is None:
        return None
    try:
        return validate_name(text)
    except InvalidNameError as exc:
        raise UsageError(f"{what}: {exc}") from None


def model_name(model_dir: str, workspace: Workspace) -> str:
    """The model name meant by ``--model_dir``.

    A plain name is validated. A path is accepted only when it is a folder directly inside
    ``<workspace>/output`` (then its name is used), so ``--model_dir GaussianTalker/output/obama`` works
    but a path elsewhere (``../x``, ``/tmp/x``) is refused: a model name is never a path.
    """
    if "/" not in model_dir and "\\" not in model_dir:
        return _name(model_dir, "--model_dir")
    path = Path(model_dir).expanduser()
    output = (workspace.root / "output").resolve()
    if path.is_dir() and path.resolve().parent == output:
        return _name(path.resolve().name, "--model_dir")
    raise UsageError(f"--model_dir {model_dir!r}: give a model name, or the path of a model folder directly "
                     f"inside {workspace.root / 'output'} (a model name is never a path)")


def resolve_config_arg(config: Optional[str]) -> Optional[Path]:
    """``--config`` as a file: an existing path, else a bundled preset by file name (UsageError if neither)."""
    if config is None:
        return None
    from .config import resolve_config

    try:
        return resolve_config(config)
    except FileNotFoundError as exc:
        raise UsageError(f"--config: {exc}") from None


# --------------------------------------------------------------------------------------------------
# commands


def _progress(args) -> bool:
    return not args.quiet


def _main_rank() -> bool:
    """Whether this process prints results: not one of the other ranks under torchrun."""
    return os.environ.get("RANK", "0") == "0"


def _cmd_train(args) -> int:
    ws = Workspace.at(args.workspace)
    name = _name(args.name, "--name")
    config = resolve_config_arg(args.config)
    if args.dry_run:
        return _plan_train(args, ws, name, config)
    from . import api

    model = api.train(args.video_path, config=config, iterations=args.iterations, device=args.gpu,
                      workspace=ws.root, name=name, progress=_progress(args), assets=args.assets,
                      au_csv=args.au_csv, backends=_backends(args), restart=args.fresh)
    if _main_rank():
        print(f"model: {model.path} (iteration {model.iteration})")
    return EXIT_OK


def _cmd_preprocess(args) -> int:
    ws = Workspace.at(args.workspace)
    name = _name(args.name, "--name")
    if args.dry_run:
        return _plan_preprocess(args, ws, name)
    from . import api

    data = api.preprocess(args.video_path, workspace=ws.root, name=name, device=args.gpu, au_csv=args.au_csv,
                          size=args.size, assets=args.assets, progress=_progress(args), backends=_backends(args))
    print(f"dataset: {data.path} ({data.num_frames} frames)")
    return EXIT_OK


def _cmd_infer(args) -> int:
    ws = Workspace.at(args.workspace)
    name = model_name(args.model_dir, ws)
    if args.dry_run:
        return _plan_infer(args, ws, name)
    from . import api

    audio = args.audio_path[0] if len(args.audio_path) == 1 else list(args.audio_path)
    result = api.render(name, audio, out=args.out, batch_size=args.batch_size, iteration=args.iteration,
                        pose=args.pose, device=args.gpu, workspace=ws.root, progress=_progress(args),
                        paste_back=args.paste_back, assets=args.assets,
                        close_in_silence={"auto": None, "yes": True, "no": False}[args.close_in_silence])
    for r in result if isinstance(result, list) else [result]:
        if _main_rank():
            print(f"video: {r.path}")
    return EXIT_OK


def _cmd_evaluate(args) -> int:
    ws = Workspace.at(args.workspace)
    name = model_name(args.model_dir, ws)
    if args.dry_run:
        return _plan_evaluate(args, ws, name)
    from . import api

    if args.audio:
        return _evaluate_audio(args, ws, name)
    result = api.evaluate(name, iteration=args.iteration, device=args.gpu, workspace=ws.root,
                          progress=_progress(args), assets=args.assets)
    print(f"iteration {result.iteration}, {result.frames} held-out frames")
    m = result.mouth or {}
    rows = [("mouth opening r", m.get("pearson")), ("mouth amplitude", m.get("amplitude_ratio")),
            ("lmd", result.lmd), ("head alpha", result.head_alpha),
            ("head alpha, interior", result.head_alpha_interior), ("face psnr", result.face_psnr),
            ("face psnr (mean frame)", result.face_psnr_mean_frame), ("psnr", result.psnr), ("ssim", result.ssim),
            ("lpips", result.lpips)]
    parts = getattr(result, "mouth_parts", None) or {}
    if parts:  # a lip-code model: the renderer alone and the audio predictor alone (see the note)
        rows[2:2] = [("mouth r from the tracked lip codes", parts.get("tracked_codes_pearson")),
                     ("mouth r read out of the predicted codes", parts.get("predicted_readout_pearson"))]
    for key, value in rows:
        print(f"{key}: {value:.4f}" if isinstance(value, (int, float)) else f"{key}: not measured")
    for note in getattr(result, "notes", None) or ():
        print(f"note: {note}")
    print(f"metrics: {result.metrics_path}")
    print(f"report: {result.report_path}")
    return EXIT_OK


def _evaluate_audio(args, ws: Workspace, name: str) -> int:
    from .evaluate import evaluate_audio
    from .infer import load

    for path in args.audio:
        if not Path(path).is_file():
            raise FileNotFoundError(f"audio file {path} does not exist")
    talker = load(name, iteration=args.iteration, device=args.gpu, workspace=ws.root, assets=args.assets)
    entries = evaluate_audio(talker, args.audio, progress=_progress(args), assets=args.assets, write=True)
    for e in entries:
        silence = "no silence" if e.silence_opening is None else (
            f"opening in {e.silent_frames} silent frames {e.silence_opening:.4f} "
            f"({'closed' if e.closes_in_silence else 'NOT closed'}: <= {e.closed_gap:.4f} + {e.silence_margin:.4f}"
            + ("" if e.reference_silence_opening is None else
               f"; the real footage in its own silences: {e.reference_silence_opening:.4f}") + ")")
        ratio = f"ratio {e.ratio:.2f}" if math.isfinite(e.ratio) else (
            "no ratio: the real footage's mouth hardly follows its own audio's energy")
        if e.subject_lag:  # the subject's mouth leads (or trails) its sound: the same comparison at its shift
            ratio += (f"; at the subject's own {'lead' if e.subject_lag < 0 else 'lag'} of {abs(e.subject_lag)} "
                      f"frame(s): r {e.subject_lag_pearson:.3f} vs {e.subject_lag_reference:.3f}"
                      + (f", ratio {e.subject_lag_ratio:.2f}" if math.isfinite(e.subject_lag_ratio) else ""))
        print(f"{e.audio}: mouth vs audio envelope r {e.envelope_pearson:.3f} (real footage {e.reference_pearson:.3f},"
              f" {ratio}); {silence}")
    print(f"metrics: {talker.model_dir / 'metrics.json'}")
    return EXIT_OK


def _cmd_export(args) -> int:
    ws = Workspace.at(args.workspace)
    name = model_name(args.model_dir, ws)
    if args.dry_run:
        missing: List[str] = []
        model_dir, iteration = _model_for_plan(ws, name, args.iteration, missing)
        _print_header(args, ws)
        _print_step(1, "export", f"iteration {iteration}", [str(model_dir), "the model's dataset folder"],
                    [str(Path(args.out).expanduser())])
        _print_missing(missing)
        return EXIT_OK
    from . import api

    result = api.export(name, args.out, iteration=args.iteration, workspace=ws.root, progress=_progress(args),
                        crf=args.crf)
    print(f"export: {result.path} ({result.bytes / 1e6:.1f} MB, iteration {result.iteration}, {result.frames} frames)")
    return EXIT_OK


def _cmd_assets(args) -> int:
    from .assets_report import asset_report, format_json, format_table

    report = asset_report(args.assets_dir or args.assets)
    print(format_json(report) if args.json else format_table(report))
    return EXIT_OK


def _cmd_demo(args) -> int:
    if args.dry_run:
        return _plan_demo(args)
    from .demo import run_demo

    result = run_demo(args.out, seconds=args.seconds, iterations=args.iterations, device=args.gpu,
                      progress=_progress(args))
    if args.quiet:
        print(f"video: {result.render.path}")
    return EXIT_OK


COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _cmd_train, "infer": _cmd_infer, "preprocess": _cmd_preprocess, "evaluate": _cmd_evaluate,
    "assets": _cmd_assets, "demo": _cmd_demo, "export": _cmd_export,
}


# --------------------------------------------------------------------------------------------------
# dry run: every step with the paths it would read and write; nothing is created, written or deleted


def _print_header(args, ws: Optional[Workspace]) -> None:
    why = "--dry-run" if not test_mode() else f"{TEST_MODE_VAR}=1"
    print(f"{PROG} {args.command}: dry run ({why}), nothing is written")
    if ws is not None:
        state = "exists" if ws.root.is_dir() else "absent, a real run creates it"
        print(f"  workspace: {ws.root} ({state})")
    if getattr(args, "gpu", None) is not None:
        print(f"  device:    {_device_note(args.gpu)}")


def _device_note(spec: str) -> str:
    from .devices import resolve_device

    if "," in spec:
        from .distributed import parse_devices

        try:
            return f"{spec} -> {len(parse_devices(spec))} processes (data-parallel, docs/distributed.md)"
        except ValueError as exc:
            return f"{spec}: {exc}; a real run on this machine stops here"
    try:
        return f"{spec} -> {resolve_device(spec)}"
    except ValueError as exc:  # a dry run is often made on another machine than the real run
        return f"{spec}: {exc}; a real run on this machine stops here"


def _print_step(index: int, name: str, status: str, reads: Sequence, writes: Sequence, notes: Sequence = ()) -> None:
    print(f"[{index}] {name}" + (f"  ({status})" if status else ""))
    for item in reads:
        print(f"      reads:  {item}")
    for item in writes:
        print(f"      writes: {item}")
    for item in notes:
        print(f"      note:   {item}")


def _input(path: Optional[str], what: str, missing: List[str]) -> Optional[Path]:
    """``path`` as a Path; when it does not exist, the dry run notes it in ``missing`` and goes on."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.exists():
        missing.append(f"{what} {p} does not exist")
    return p


def _print_missing(missing: Sequence[str]) -> None:
    """The dry run's verdict on its inputs (it exits 0 either way: it tests the plan, not the files)."""
    if not missing:
        print("inputs: all present")
        return
    print(f"inputs missing ({len(missing)}): a real run stops with exit 1 at the first of them")
    for item in missing:
        print(f"  missing: {item}")


# The dataset files of each preprocessing step (docs/dataset-format.md, "Steps and markers"), for a dry run
# whose inputs are missing (the pipeline plans only from a video it can fingerprint). The step names are
# the pipeline's (a test keeps them equal).
_PREPROCESS_STEPS = (
    ("probe", ("{video}",), ()),
    ("crop", ("{video}",), ()),
    ("frames", ("{video}",), ("ori_imgs/*.jpg",)),
    ("audio", ("{video}",), ("aud.wav", "aud_train.wav", "aud_novel.wav")),
    ("features", ("aud.wav",), ("aud_<kind>.npy",)),
    ("landmarks", ("ori_imgs/*.jpg",), ("landmarks478.npy", "ori_imgs/*.lms")),
    ("blink", ("{au_csv}",), ("au.csv",)),
    ("tracking", ("ori_imgs/*.lms",), ("track_params.pt", "transforms_train.json", "transforms_val.json",
                                       "points3d.ply", "track_preview.mp4")),
    ("parsing", ("ori_imgs/*.jpg", "ori_imgs/*.lms"), ("parsing/*.png",)),
    ("background", ("ori_imgs/*.jpg", "parsing/*.png"), ("bc.jpg",)),
    ("torso", ("ori_imgs/*.jpg", "parsing/*.png", "bc.jpg"), ("gt_imgs/*.jpg", "torso_imgs/*.png")),
    ("preview", ("ori_imgs/*.jpg", "ori_imgs/*.lms", "parsing/*.png"), ("preview.mp4",)),
    ("meta", (".steps/*.json",), ("meta.json",)),
)


def _preprocess_plan(video: Path, ws: Workspace, name: str, args, inputs_present: bool = True) -> List[tuple]:
    """(name, status, reads, writes, notes) of each preprocessing step.

    With all inputs present the pipeline plans itself (fingerprints, finished steps); otherwise the
    steps and their files are listed from the dataset format, each "to do"."""
    import importlib.util

    au_csv = getattr(args, "au_csv", None)
    if inputs_present and importlib.util.find_spec("gaussiantalker.preprocess.pipeline") is not None:
        from .preprocess.pipeline import plan_preprocess

        steps = plan_preprocess(video, workspace=ws.root, name=name, device=_plan_device(args.gpu), au_csv=au_csv,
                                size=getattr(args, "size", 512), assets=args.assets, backends=_backends(args))
        return [_step_fields(step) for step in steps]
    data = ws.data_dir(name)
    out = []
    for step, reads, writes in _PREPROCESS_STEPS:
        done = (data / ".steps" / f"{step}.json").is_file()
        reads = [str(video) if r == "{video}" else (str(au_csv) if au_csv else "eye landmarks") if r == "{au_csv}"
                 else str(data / r) for r in reads]
        status = "marker present, not re-checked (an input is missing)" if done else "to do"
        out.append((f"preprocess: {step}", status, reads, [str(data / w) for w in writes], ()))
    return out


def _step_fields(step) -> tuple:
    """A ``PlannedStep`` of the preprocessing pipeline as (name, status, reads, writes, notes)."""
    done = bool(getattr(step, "done", False))
    reason = getattr(step, "reason", "")
    status = "done, re-used" if done else (f"to do: {reason}" if reason else "to do")
    note = getattr(step, "description", None)
    return (f"preprocess: {step.name}", status, [str(r) for r in getattr(step, "reads", ())],
            [str(w) for w in getattr(step, "writes", ())], [note] if note else [])


def _plan_device(spec: str) -> str:
    """The device to plan with: ``spec``, or the CPU when it does not exist here (it shapes no path)."""
    from .devices import resolve_device

    try:
        return str(resolve_device(spec))
    except ValueError:
        return "cpu"


def _saved_iterations(model_dir: Path) -> List[int]:
    """Iterations with a saved point cloud or checkpoint in a model folder."""
    found = set()
    for pattern, regex in (("point_cloud/iteration_*", r"iteration_(\d+)$"),
                           ("checkpoints/chkpnt_*.pth", r"chkpnt_(\d+)\.pth$")):
        for p in model_dir.glob(pattern):
            m = re.search(regex, p.name)
            if m:
                found.add(int(m.group(1)))
    return sorted(found)


def _config_iterations(config: Path) -> Optional[int]:
    from .config import load_config

    cfg = load_config(config)
    for group in vars(cfg).values():
        if hasattr(group, "iterations"):
            return int(group.iterations)
    return None


def _plan_preprocess(args, ws: Workspace, name: Optional[str]) -> int:
    missing: List[str] = []
    video = _input(args.video_path, "video", missing)
    _input(args.au_csv, "AU csv", missing)
    _print_header(args, ws)
    for i, step in enumerate(_preprocess_plan(video, ws, name or name_from_path(video), args, not missing), 1):
        _print_step(i, *step)
    _print_missing(missing)
    return EXIT_OK


def _plan_train(args, ws: Workspace, name: Optional[str], config: Optional[Path]) -> int:
    from .config import DEFAULT_PRESET

    missing: List[str] = []
    source = _input(args.video_path, "video or dataset folder", missing)
    _input(args.au_csv, "AU csv", missing)
    _print_header(args, ws)
    steps = []
    if source.is_dir():
        data, name = source, name or _name(source.name, "dataset folder name")
    else:
        name = name or name_from_path(source)
        data = ws.data_dir(name)
        steps = _preprocess_plan(source, ws, name, args, not missing)
    config = config or resolve_config_arg(DEFAULT_PRESET)
    iterations = args.iterations or _config_iterations(config)
    model_dir = ws.model_dir(name)
    saved = _saved_iterations(model_dir)
    resume = f"resume from iteration {saved[-1]}" if saved else "from scratch"
    if saved and args.fresh:
        resume = f"from scratch (--fresh: deletes {model_dir / 'checkpoints'} and {model_dir / 'point_cloud'})"
    steps.append(("train", f"{resume}, to iteration {iterations}", [str(data), str(config)],
                  [str(model_dir / "config.json"), str(model_dir / "checkpoints" / "chkpnt_<k>.pth"),
                   str(model_dir / "point_cloud" / "iteration_<k>" / "point_cloud.ply")], ()))
    for i, step in enumerate(steps, 1):
        _print_step(i, *step)
    _print_missing(missing)
    return EXIT_OK


def _model_for_plan(ws: Workspace, name: str, iteration: Optional[int], missing: List[str]) -> tuple:
    """(model folder, iteration) to plan with; what is not there goes into ``missing`` (the iteration is
    then ``iteration`` or the placeholder ``"<newest>"``)."""
    model_dir = ws.model_dir(name)
    if not model_dir.is_dir():
        have = ", ".join(ws.models()) or "none"
        missing.append(f"model {name!r} not found: no folder {model_dir} (models there: {have})")
        return model_dir, iteration or "<newest>"
    saved = _saved_iterations(model_dir)
    if not saved:
        missing.append(f"model folder {model_dir} has no saved iteration (point_cloud/iteration_<k>)")
        return model_dir, iteration or "<newest>"
    if iteration is not None and iteration not in saved:
        missing.append(f"model {name!r} has no iteration {iteration} (saved: {', '.join(map(str, saved))})")
    return model_dir, iteration or saved[-1]


def _plan_infer(args, ws: Workspace, name: str) -> int:
    missing: List[str] = []
    paths = list(args.audio_path)
    if len(paths) == 1 and not Path(paths[0]).is_dir():
        audio = [_input(paths[0], "audio file", missing)]
        model_dir, k = _model_for_plan(ws, name, args.iteration, missing)
        writes = [args.out] if args.out else [str(model_dir / "renders" / "output.mp4"),
                                              str(model_dir / "custom" / f"ours_{k}" / "renders" / "output.mp4")]
    else:
        from .infer import audio_files

        try:
            audio = audio_files(paths)
        except (FileNotFoundError, ValueError) as exc:
            missing.append(str(exc))
            audio = paths
        model_dir, k = _model_for_plan(ws, name, args.iteration, missing)
        folder = Path(args.out) if args.out else model_dir / "renders"
        writes = [str(folder / f"{Path(a).stem}.mp4") for a in audio]
    _print_header(args, ws)
    _print_step(1, "audio features", "", [str(a) for a in audio], [], ["kept in memory"])
    _print_step(2, "render", f"iteration {k}, batch size {args.batch_size}, pose {args.pose}",
                [str(model_dir / "point_cloud" / f"iteration_{k}"), str(model_dir / "config.json")], writes)
    _print_missing(missing)
    return EXIT_OK


def _plan_evaluate(args, ws: Workspace, name: str) -> int:
    missing: List[str] = []
    model_dir, k = _model_for_plan(ws, name, args.iteration, missing)
    _print_header(args, ws)
    _print_step(1, "evaluate", f"iteration {k}, held-out frames",
                [str(model_dir / "point_cloud" / f"iteration_{k}"), "the model's dataset (config.json)"],
                [str(model_dir / "metrics.json"), str(model_dir / "report.html")])
    _print_missing(missing)
    return EXIT_OK


def _plan_demo(args) -> int:
    from .config import load_config
    from .demo import DEMO_ITERATIONS, DEMO_NAME

    coarse = load_config("cpu_small").optimization.coarse_iterations

    out = Path(args.out)
    ws = Workspace.at(out / "workspace")
    _print_header(args, ws)
    data, model = ws.data_dir(DEMO_NAME), ws.model_dir(DEMO_NAME)
    steps = [
        ("make the demo video", f"{args.seconds:g} s", ["scikit-image's astronaut photograph"],
         [str(out / f"{DEMO_NAME}.mp4")], ()),
        ("make the novel speech", "", [], [str(out / "speech_novel.wav")], ()),
        ("preprocess", "", [str(out / f"{DEMO_NAME}.mp4")], [str(data)], ()),
        ("train", f"cpu_small, {coarse} coarse + {args.iterations or DEMO_ITERATIONS} fine iterations", [str(data)],
         [str(model)], ()),
        ("render", "", [str(out / "speech_novel.wav"), str(model)], [str(model / "renders" / "output.mp4")], ()),
        ("evaluate", "", [str(model)], [str(model / "metrics.json"), str(model / "report.html")], ()),
    ]
    for i, step in enumerate(steps, 1):
        _print_step(i, *step)
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# entry point


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"{PROG}: {level}{record.getMessage()}"


def _configure_logging(args) -> tuple[logging.Handler, int]:
    """The CLI's log handler on the package logger (the library itself never configures logging); returns it and
    the logger's previous level, which :func:`_run_command` restores (main() also runs inside other programs)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    logger = logging.getLogger(PROG)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    return handler, previous


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (OSError, ValueError)) else f"{type(exc).__name__}: {text}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (0 success, 1 failure, 2 usage, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    args.dry_run = bool(args.dry_run or test_mode())
    from .nativelog import quiet_native_logs

    with quiet_native_logs(enabled=not args.verbose):  # TensorFlow / MediaPipe chatter only with --verbose
        return _run_command(args)


def _run_command(args) -> int:
    handler, previous_level = _configure_logging(args)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` that exited: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush cannot fail
        return EXIT_FAILURE
    except (UsageError, InvalidNameError) as exc:
        _report(exc, args)
        return EXIT_USAGE
    except Exception as exc:  # every failure becomes one line (the traceback with --verbose)
        _report(exc, args)
        return EXIT_FAILURE
    finally:
        logging.getLogger(PROG).removeHandler(handler)
        logging.getLogger(PROG).setLevel(previous_level)


def _report(exc: BaseException, args) -> None:
    if args.verbose:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.write(f"{PROG}: error: {_one_line(exc)}\n")


def run(argv: Optional[List[str]] = None) -> None:
    """Console-script style entry: exits the process with :func:`main`'s code."""
    sys.exit(main(argv))


if __name__ == "__main__":  # pragma: no cover
    run()

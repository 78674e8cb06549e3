"""The Python API: the command line's verbs, in process.

```python
import gaussiantalker as gt
data = gt.preprocess("obama.mp4", workspace="GaussianTalker", device="cuda:0")
model = gt.train(data, iterations=10000, config="64_dim_1_transformer", device="cuda:0")
video = gt.render(model, audio="speech.wav", batch_size=128)
talker = gt.load("GaussianTalker/output/obama")
for frame in talker.stream(audio_chunks): ...
report = gt.evaluate(model)
gt.export(model, "obama.gtalk"); talker = gt.load("obama.gtalk")   # one file, no dataset needed
```

Each verb imports its pipeline when it is called (``import gaussiantalker`` stays cheap), checks what is
cheap to check first (the device, the config, that the input exists) so that a bad argument fails before
minutes of work, and returns a typed result (:class:`~gaussiantalker.preprocess.dataset.Dataset`,
``Model``, ``RenderResult``, ``Talker``, ``EvaluationResult``). Devices are written as users write them:
``"auto"``, ``"CPU"``, ``"GPU0"``, ``"cuda:1"``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Union

from .progress import ProgressCallback
from .workspace import DEFAULT_WORKSPACE

if TYPE_CHECKING:  # the result types live with their pipelines
    from .evaluate import EvaluationResult
    from .export import ExportResult
    from .infer import RenderResult, Talker
    from .preprocess.dataset import Dataset
    from .train import Model

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

__all__ = ["evaluate", "export", "load", "preprocess", "render", "train"]


def _device(device: Any) -> str:
    """Resolve ``device`` now (an unknown spelling or a missing GPU fails before any work)."""
    from .devices import resolve_device

    return str(resolve_device(device))


def _device_with_kernels(device: Any) -> str:
    """:func:`_device`, and the compiled kernels for it present (``NativeKernelsError`` with the build
    command otherwise): a CUDA torch without our CUDA kernels fails here, not after preprocessing."""
    from .devices import check_native_kernels

    dev = _device(device)
    check_native_kernels(dev)
    return dev


def _existing_file(path: PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} {p} does not exist")
    return p


def preprocess(
    video: PathLike,
    workspace: PathLike = DEFAULT_WORKSPACE,
    name: Optional[str] = None,
    device: str = "auto",
    au_csv: Optional[PathLike] = None,
    backends: Optional[Dict[str, str]] = None,
    size: int = 512,
    assets: Optional[PathLike] = None,
    progress: bool = True,
    callback: Optional[ProgressCallback] = None,
) -> Dataset:
    """Turn a video of one person talking into a training dataset ``<workspace>/data/<name>/``.

    Steps already finished for the same video and settings are re-used (each step leaves a completion
    marker), so calling it again after an interruption continues where it stopped.

    Args:
        video: the video file (any format ffmpeg reads; other frame rates are resampled to 25 fps).
        workspace: the workspace folder (``data/`` and ``output/`` inside).
        name: dataset name (default: the video's file stem); a plain folder name, never a path.
        device: ``"auto"``, ``"CPU"``, ``"GPU<n>"`` or ``"cuda:<n>"``.
        au_csv: an OpenFace ``au.csv`` to use for eye blinks instead of estimating them.
        backends: step -> backend overrides (e.g. ``{"audio": "deepspeech"}``); default: the best present.
        size: side of the square frames in pixels.
        assets: folder of optional pretrained files (default ``$GAUSSIANTALKER_HOME``).
        progress: show progress bars.
        callback: called with a :class:`Progress` from the working thread (see :mod:`gaussiantalker.progress`);
            an exception it raises stops the work, keeping what is saved.

    Returns:
        the :class:`Dataset` (``.path``, ``.name``, ``.num_frames``, ``.backends``, ...).

    Raises:
        FileNotFoundError: the video (or ``au_csv``) does not exist.
        ValueError: bad name or device; ``PreprocessError`` (a ValueError) when the video cannot be used.
    """
    _existing_file(video, "video")
    if au_csv is not None:
        _existing_file(au_csv, "AU csv")
    dev = _device(device)
    from .preprocess.pipeline import preprocess as run

    return run(video, workspace=workspace, name=name, device=dev, au_csv=au_csv, backends=backends, size=size,
               assets=assets, progress=progress, callback=callback)


def _check_model(model: Any, workspace: Optional[PathLike]) -> None:
    """A model given as a folder or a name must exist (``Model`` / ``Talker`` objects are checked later).

    As :func:`gaussiantalker.infer.load` resolves it: an existing folder is that folder; a string with a
    path separator is a folder; a bare string is a model name inside ``<workspace>/output``.
    """
    if not isinstance(model, (str, os.PathLike)):
        return
    from .workspace import Workspace, validate_name

    text = os.fspath(model)
    folder = Path(text).expanduser()
    if folder.is_dir() or folder.is_file():  # a model folder, or an export file
        return
    if not isinstance(model, str) or "/" in text or "\\" in text:
        raise FileNotFoundError(f"model folder {folder} does not exist")
    ws = Workspace.at(workspace if workspace is not None else DEFAULT_WORKSPACE)
    if not ws.model_dir(validate_name(text)).is_dir():
        have = ", ".join(ws.models()) or "none"
        raise FileNotFoundError(f"model {text!r} not found: no folder {ws.model_dir(text)} (models there: {have})")


def _is_dataset(obj: Any) -> bool:
    return hasattr(obj, "path") and hasattr(obj, "num_frames") and not isinstance(obj, (str, os.PathLike))


def train(
    video_or_dataset: Any,
    config: Any = None,
    iterations: Optional[int] = None,
    device: str = "auto",
    workspace: Optional[PathLike] = None,
    name: Optional[str] = None,
    progress: bool = True,
    assets: Optional[PathLike] = None,
    au_csv: Optional[PathLike] = None,
    callback: Optional[ProgressCallback] = None,
    backends: Optional[Dict[str, str]] = None,
    restart: bool = False,
) -> Model:
    """Train a talking-head model; resumes from the newest checkpoint of ``<workspace>/output/<name>/``.

    Args:
        video_or_dataset: a :class:`Dataset`, a dataset folder (ours, or one preprocessed by
            GaussianTalker / ER-NeRF / TalkingGaussian), or a video file — then it is preprocessed first
            into ``<workspace>/data/<name>/``, re-using the steps already done.
        config: a preset name (``"64_dim_1_transformer"``, ``"cpu_small"``), a config file path, or a
            ``TrainConfig``; default the ``64_dim_1_transformer`` preset.
        iterations: total training iterations (default: the config's).
        device: ``"auto"``, ``"CPU"``, ``"GPU<n>"`` or ``"cuda:<n>"``; or a list (``["GPU0", "GPU1"]``,
            ``"GPU0,GPU1"``, ``"CPU,CPU"``) to train data-parallel, one process per entry (a video is
            preprocessed first, in this process). Under ``torchrun`` this process is one rank
            (``docs/distributed.md``): rank 0 preprocesses a video while the others wait.
        workspace: the workspace folder (default ``GaussianTalker``; for a dataset folder, the workspace
            that contains it).
        name: model (and, for a video, dataset) name; default the dataset's name.
        progress: show progress bars.
        assets: folder of optional pretrained files.
        au_csv: OpenFace ``au.csv`` for a video input (see :func:`preprocess`).
        callback: called with a :class:`Progress` at each preprocessing step, every 10 iterations and before
            the final evaluation (see :mod:`gaussiantalker.progress`); an exception it raises stops the work,
            keeping what is saved (the next call resumes).
        backends: preprocessing backends for a video input (see :func:`preprocess`), e.g.
            ``{"landmarks": "dlib", "audio": "deepspeech"}``.
        restart: discard the model folder's checkpoints and snapshots and train afresh. Without it, a model
            folder whose checkpoints were trained on another dataset (e.g. another video with the same file
            name) is refused with ``DatasetMismatchError`` naming both datasets.

    Returns:
        the ``Model`` (``.path``, ``.name``, ``.iteration``, ``.config``, ``.audio_kind``, ``.metrics``).

    Raises:
        FileNotFoundError: the input or the config does not exist (the message lists the presets).
        ValueError: bad name, device, iteration count or config value.
        NativeKernelsError: the compiled rasterizer lacks the kernels for ``device`` (before any work).
    """
    if iterations is not None and int(iterations) <= 0:
        raise ValueError(f"iterations must be a positive integer, got {iterations}")
    data = video_or_dataset
    path = None if _is_dataset(data) else _existing_file(data, "video or dataset folder")
    if isinstance(config, (str, os.PathLike)):
        from .config import resolve_config

        config = resolve_config(config)
    from .distributed import launched, parse_devices, rank_device

    devices = None if launched() else parse_devices(device)
    if launched():
        device = rank_device(device)
    dev = _device_with_kernels(devices[0] if devices else device)
    if devices is not None and callback is not None:
        raise ValueError("a progress callback cannot follow a multi-process run (it would run in the rank "
                         "processes); follow <model>/train_log.jsonl instead")
    if path is not None:
        if path.is_file():
            def prepare() -> Dataset:
                return preprocess(path, workspace=workspace if workspace is not None else DEFAULT_WORKSPACE,
                                  name=name, device=dev, au_csv=au_csv, assets=assets, progress=progress,
                                  callback=callback, backends=backends)

            if launched():
                from .distributed import on_main_first

                data = on_main_first(prepare, dev, "preprocessing")
            else:
                data = prepare()
        elif au_csv is not None:
            raise ValueError("au_csv applies to a video input; a dataset folder already has its au.csv")
    if backends and not (path is not None and path.is_file()):
        raise ValueError("backends apply to a video input; a dataset is already preprocessed")
    from .train import train as run

    return run(data, config=config, iterations=iterations, device=devices or dev, workspace=workspace, name=name,
               progress=progress, assets=assets, callback=callback, restart=restart)


def render(
    model: Any,
    audio: Union[PathLike, Sequence[PathLike]],
    out: Optional[PathLike] = None,
    batch_size: int = 128,
    iteration: Optional[int] = None,
    pose: str = "track",
    device: str = "auto",
    workspace: Optional[PathLike] = None,
    progress: bool = True,
    paste_back: bool = False,
    assets: Optional[PathLike] = None,
    callback: Optional[ProgressCallback] = None,
    close_in_silence: Optional[bool] = None,
) -> RenderResult:
    """Render the model's person saying ``audio``: an mp4 with the audio track.

    Args:
        model: a ``Model``, a ``Talker`` (from :func:`load`), a model folder, or a model name inside
            ``<workspace>/output/``.
        audio: an audio file (or a video's audio track), any format ffmpeg reads, or ``[T]`` float32
            samples at 16 kHz. Several files (a list, or a folder): each renders to
            ``<model>/renders/<audio name>.mp4`` (``out``: a folder for them instead) and a list of results is
            returned, one per file; with a device list (``"GPU0,GPU1"``) or under ``torchrun`` the files are
            sharded across the ranks (``docs/distributed.md``).
        out: where to write the mp4 (default ``<model>/renders/output.mp4``, also kept as
            ``<model>/custom/ours_<k>/renders/output.mp4``).
        batch_size: frames rendered per batch.
        iteration: which saved iteration (default the newest).
        pose: ``"track"`` (the training video's head motion, looped) or ``"static"``.
        device: ``"auto"``, ``"CPU"``, ``"GPU<n>"`` or ``"cuda:<n>"``; a list for several audio files.
        workspace: the workspace, when ``model`` is a name (default ``GaussianTalker``).
        progress: show progress bars.
        paste_back: paste the rendered face back into the full original frames (when the video was
            cropped during preprocessing).
        assets: folder of optional pretrained files (the DeepSpeech graph or HuBERT model, when the
            model was trained on those features).
        callback: called with a :class:`Progress` after every rendered batch (see
            :mod:`gaussiantalker.progress`); an exception it raises stops the render (no file is left).
        close_in_silence: close the mouth where the audio is silent: ``True`` always, ``False`` never, ``None``
            (default) as training chose for this person (closed, unless the training video shows them holding the
            mouth open in their own pauses; ``docs/quality.md``). Models trained before 2026-12-07 never close it.

    Returns:
        ``RenderResult`` (``.path``, ``.frames``, ``.seconds``, ``.fps``); a list of them for several files.

    Raises:
        FileNotFoundError: the audio or the model does not exist; ``IterationNotFoundError`` lists the
            saved iterations.
        NativeKernelsError: the compiled rasterizer lacks the kernels for ``device`` (before any work).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    from .distributed import launched, parse_devices

    many = isinstance(audio, (list, tuple)) or (isinstance(audio, (str, os.PathLike)) and Path(audio).is_dir())
    devices = None if launched() else parse_devices(device)
    if many or (launched() and isinstance(audio, (str, os.PathLike))):  # files: sharded over the ranks
        from .infer import audio_files, render_many

        if callback is not None:
            raise ValueError("callback applies to one audio file rendered in one process")
        _check_model(model, workspace)
        files = audio_files(audio)
        if not launched():
            _device_with_kernels(devices[0] if devices else device)  # before any process starts
        else:
            from .distributed import rank_device

            device = rank_device(device)
        results = render_many(model, files, batch_size=batch_size, iteration=iteration, pose=pose, device=device,
                              workspace=workspace, progress=progress, paste_back=paste_back, out=out,
                              per_file=many, assets=assets, close_in_silence=close_in_silence)
        return results if many else results[0]
    if devices is not None:  # one file cannot be sharded: the first device renders it
        log.info("one audio file: rendering on %s (give several files or a folder to use every device)", devices[0])
        device = devices[0]
    if isinstance(audio, (str, os.PathLike)):
        _existing_file(audio, "audio file")
    _check_model(model, workspace)
    dev = _device_with_kernels(device)
    from .infer import Talker
    from .infer import load as load_talker
    from .infer import render as run

    if assets is not None and not isinstance(model, Talker):
        model = load_talker(model, iteration=iteration, device=dev, workspace=workspace, assets=assets)
    return run(model, audio, out=out, batch_size=batch_size, iteration=iteration, pose=pose, device=dev,
               workspace=workspace, progress=progress, paste_back=paste_back, callback=callback,
               close_in_silence=close_in_silence)


def load(model_dir: Any, iteration: Optional[int] = None, device: str = "auto",
         workspace: Optional[PathLike] = None, assets: Optional[PathLike] = None) -> Talker:
    """Load a trained model once for many renders (apps, servers, chat loops).

    Args:
        model_dir: the model folder (``<workspace>/output/<name>``), a model name inside
            ``<workspace>/output``, a ``Model``, or an export file (``NAME.gtalk``, see :func:`export`):
            it renders without the dataset.
        iteration: which saved iteration (default the newest).
        device: ``"auto"``, ``"CPU"``, ``"GPU<n>"`` or ``"cuda:<n>"``.
        workspace: the workspace, when ``model_dir`` is a name (default ``GaussianTalker``).
        assets: folder of optional pretrained files (the DeepSpeech graph or HuBERT model, when the
            model was trained on those features).

    Returns:
        a ``Talker``: ``.render(audio, ...)`` writes a video, ``.stream(audio_chunks)`` yields
        ``[H, W, 3]`` uint8 RGB frames as audio arrives.

    Raises:
        FileNotFoundError: no model there; ``IterationNotFoundError`` lists the saved iterations.
        ExportError: (a ValueError) an export file that is corrupt, truncated, not an export, or from a
            newer version; the one-line message names the file.
    """
    _check_model(model_dir, workspace)
    dev = _device(device)
    from .infer import load as run

    return run(model_dir, iteration=iteration, device=dev, workspace=workspace, assets=assets)


def evaluate(
    model: Any,
    iteration: Optional[int] = None,
    device: str = "auto",
    workspace: Optional[PathLike] = None,
    progress: bool = True,
    batch_size: int = 16,
    assets: Optional[PathLike] = None,
    out: Optional[PathLike] = None,
    audio: Sequence[PathLike] = (),
) -> EvaluationResult:
    """Evaluate a model on its dataset's held-out frames; writes ``metrics.json`` and ``report.html``
    into the model folder.

    Args:
        model: a ``Model``, a ``Talker``, a model folder, or a model name inside ``<workspace>/output/``.
        iteration: which saved iteration (default the newest).
        device: ``"auto"``, ``"CPU"``, ``"GPU<n>"`` or ``"cuda:<n>"``.
        workspace: the workspace, when ``model`` is a name.
        progress: show progress bars.
        batch_size: frames per rendering call.
        assets: folder of optional pretrained files (LPIPS weights, landmark models).
        out: folder for ``report.html`` (default the model folder; ``metrics.json`` always goes there).
        audio: driving audio of other voices, also scored without ground truth (mouth vs the audio's energy
            envelope, closing in silences): ``EvaluationResult.audio``.

    Returns:
        ``EvaluationResult``: the mouth-opening correlation and amplitude against the real frames (``mouth``),
        ``lmd``, ``head_alpha`` (and ``head_alpha_interior``, the head mask without its edge), ``face_psnr`` (and
        the mean training frame's), ``psnr``, ``ssim``, ``lpips`` (means over the held-out frames),
        ``metrics_path``, ``report_path``.
    """
    _check_model(model, workspace)
    dev = _device(device)
    from .evaluate import evaluate as run

    return run(model, iteration=iteration, device=dev, workspace=workspace, out=out, batch_size=batch_size,
               assets=assets, progress=progress, audio=tuple(audio))


def export(model: Any, out: PathLike, iteration: Optional[int] = None, workspace: Optional[PathLike] = None,
           progress: bool = True, crf: Optional[int] = None) -> ExportResult:
    """Write a trained model into one file that renders anywhere, without its dataset.

    The file (``.gtalk`` by convention) is a safetensors file (no pickle): the model's whole state dict, its
    config and audio-feature kind, the camera, the tracked poses and blinks, and the torso/background frames
    as a losslessly compressed video. ``gt.load(out)`` / ``gt.render(out, audio)`` render from it exactly as
    from the model folder (docs/export.md). Written atomically.

    Args:
        model: a ``Model``, a ``Talker`` loaded from a folder, a model folder, or a model name inside
            ``<workspace>/output/``.
        out: the file to write.
        iteration: which saved iteration (default the newest).
        workspace: the workspace, when ``model`` is a name (default ``GaussianTalker``).
        progress: show a progress bar while the frames are encoded.
        crf: None (default) stores the torso/background frames losslessly (renders equal the folder's bit for
            bit); an H.264 quality such as 18 makes the file several times smaller, the composited frames then
            differ from the folder's where the background shows, by the codec's error.

    Returns:
        ``ExportResult`` (``.path``, ``.bytes``, ``.iteration``, ``.frames``, ``.codec``, ``.seconds``).

    Raises:
        FileNotFoundError: no such model, or its dataset folder is gone; ``IterationNotFoundError``.
    """
    _check_model(model, workspace)
    from .export import export as run

    return run(model, out, iteration=iteration, workspace=workspace, progress=progress, crf=crf)

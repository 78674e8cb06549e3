"""One-file models: :func:`export` a trained model to ``NAME.gtalk``, :func:`gaussiantalker.load` it anywhere.

A model folder refers to its dataset by absolute path (the tracked poses, blinks and torso/background
frames that rendering needs live there). An export carries all of it, so the file renders on another
machine without the dataset:

* the file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file (no pickle): tensors plus a
  string-to-string metadata table. The metadata key ``gaussiantalker`` holds one JSON document (format,
  version, library version, the resolved config, audio-feature kind and dimension, image size, focal,
  iteration, frame count, how the frames were encoded, where the model came from);
* ``model.<key>``: every entry of the model's ``state_dict()``, whatever it contains (loaded back with
  ``strict=True``);
* ``track.frame_ids`` ``[K]`` int64, ``track.c2w`` ``[K, 4, 4]`` float32, ``track.eye`` ``[K]`` float32: the
  pose sequence a :class:`~gaussiantalker.infer.Talker` follows (every tracked frame, in frame order);
* ``media.bg_torso``: the bytes of a Matroska video of the K torso-over-background frames, encoded
  losslessly by default (H.264 RGB at ``-qp 0``, or FFV1 where the ffmpeg build lacks ``libx264rgb``), one
  keyframe every :data:`GOP` frames so that a block of frames can be decoded on its own.

Lossless frames decode bit-exactly, so a render from the export equals the render from the model folder
pixel for pixel (``tests/test_export.py``); ``crf=`` trades that for a smaller file. ``docs/export.md`` has
the details and sizes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from .fileio import atomic_write

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

EXPORT_FORMAT = "gaussiantalker-export"
EXPORT_VERSION = 1
SUFFIX = ".gtalk"
META_KEY = "gaussiantalker"
#: Frames per keyframe interval of the frame video (and per decoded block).
GOP = 25
FPS = 25

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "ExportError", "ExportResult", "PackedData", "export",
           "is_export", "read_export"]


class ExportError(ValueError):
    """A file that is not a readable export (corrupt, truncated, foreign, or from a newer version)."""


@dataclass
class ExportResult:
    """What :func:`export` wrote."""

    path: Path
    bytes: int
    iteration: int
    frames: int  # tracked frames carried (pose, blink and torso/background of each)
    codec: str  # encoder of the frame video
    seconds: float


def _safetensors():
    try:
        import safetensors.torch  # noqa: F401
        from safetensors import safe_open
    except ImportError:
        raise ImportError("exported models need the safetensors package: pip install safetensors") from None
    return safetensors.torch, safe_open


# --------------------------------------------------------------------------------------------------
# writing


def _codec(crf: Optional[int] = None) -> tuple[str, list[str]]:
    """The encoder to use and its ffmpeg arguments: H.264 in RGB (``libx264rgb``), lossless (``-qp 0``) or at
    quality ``crf``; without ``libx264rgb`` in the ffmpeg build, lossless FFV1 (``crf`` is then refused)."""
    from .media import MediaError, run_ffmpeg

    encoders = run_ffmpeg(["-encoders"], capture_stdout=True).stdout.decode("utf-8", "replace")
    if " libx264rgb " in encoders:
        quality = ["-qp", "0"] if crf is None else ["-crf", str(int(crf))]
        return "libx264rgb", ["-c:v", "libx264rgb", *quality, "-preset", "fast", "-g", str(GOP), "-pix_fmt", "rgb24"]
    if crf is not None:
        raise MediaError("this ffmpeg has no libx264rgb encoder: export without crf (lossless FFV1)")
    return "ffv1", ["-c:v", "ffv1", "-level", "3", "-g", "1", "-pix_fmt", "bgr0"]


def _encode_frames(frames, width: int, height: int, out: Path, crf: Optional[int] = None) -> str:
    """Encode ``[H, W, 3]`` uint8 RGB frames to the Matroska file ``out`` (lossless unless ``crf``); returns
    the encoder."""
    from .media import MediaError, ffmpeg_exe

    codec, args = _codec(crf)
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "rawvideo",
           "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(FPS), "-i", "pipe:0", *args,
           "-f", "matroska", str(out)]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)
        try:
            for f in frames:
                if f.shape != (height, width, 3) or f.dtype != np.uint8:
                    raise ValueError(f"frame of shape {f.shape} {f.dtype}, expected ({height}, {width}, 3) uint8")
                proc.stdin.write(np.ascontiguousarray(f).tobytes())
            proc.stdin.close()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.wait() != 0:
            err.seek(0)
            text = " ".join(err.read().decode("utf-8", "replace").split())[-400:]
            raise MediaError(f"ffmpeg could not encode the torso/background frames to {out}: {text}")
    return codec


def _model_source(model, iteration: Optional[int], workspace: Optional[PathLike]) -> tuple[Path, Optional[int]]:
    from .workspace import resolve_model_dir

    if hasattr(model, "model_dir") and hasattr(model, "compose"):  # a loaded Talker
        if getattr(model, "source", None) is not None:
            raise ValueError(f"{model.source} is already an export")
        return model.model_dir, iteration if iteration is not None else model.iteration
    return resolve_model_dir(getattr(model, "path", model), workspace), iteration


def export(model, out: PathLike, iteration: Optional[int] = None, workspace: Optional[PathLike] = None,
           progress: bool = True, crf: Optional[int] = None) -> ExportResult:
    """Write a trained model and everything rendering needs into one file (atomically).

    Args:
        model: a model folder, a model name inside ``<workspace>/output``, a ``Model`` or a ``Talker``.
        out: the file to write (``.gtalk`` by convention; any name works).
        iteration: which saved iteration (default the newest).
        workspace: the workspace, when ``model`` is a name (default ``GaussianTalker``).
        progress: show a progress bar while the frames are encoded.
        crf: None (default): the torso/background frames are stored losslessly and renders equal the model
            folder's bit for bit. An H.264 quality (0-51, e.g. 18) stores them lossy, several times smaller:
            the Gaussians render identically, the composited frames differ where the background shows,
            by the codec's error (docs/export.md).
    Returns:
        :class:`ExportResult` (path, size in bytes, iteration, frames, encoder, seconds).
    Raises:
        ModelNotFoundError / IterationNotFoundError: no such model or iteration.
        FileNotFoundError: the model's dataset folder is gone (the frames come from it).
    """
    from tqdm.auto import tqdm

    from . import __version__
    from .data import TalkingHeadData
    from .render.poses import pose_track
    from .model.io import load_model

    st, _ = _safetensors()
    if crf is not None and not 0 <= int(crf) <= 51:
        raise ValueError(f"crf must be an H.264 quality in 0..51 (or None: lossless), got {crf}")
    start = time.perf_counter()
    folder, iteration = _model_source(model, iteration, workspace)
    loaded = load_model(folder, iteration=iteration, device="cpu")
    ds = Path(loaded.dataset_path)
    if not ds.is_dir():
        raise FileNotFoundError(f"model {folder} was trained on the dataset {ds}, which does not exist any more: "
                                f"an export needs its frames")
    res = getattr(loaded.config.model, "resolution", -1)
    data = TalkingHeadData.open(ds, resolution=None if res is None or int(res) <= 0 else int(res))
    if (int(data.width), int(data.height)) != (int(loaded.width), int(loaded.height)):
        raise ValueError(f"model {folder} renders {loaded.width}x{loaded.height} but its dataset {ds} loads as "
                         f"{data.width}x{data.height}")
    frame_ids, c2w, eye = pose_track(data)
    full = data.at_full_size()  # renders come out at the dataset's own size: its frames are stored at that size
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gtalk-", dir=out.parent) as tmp:
        video = Path(tmp) / "bg_torso.mkv"
        bar = tqdm(frame_ids, unit="frame", desc="export frames", disable=not progress)
        try:
            codec = _encode_frames((full.bg_torso(i) for i in bar), int(full.width), int(full.height), video, crf)
        finally:
            bar.close()
        blob = np.fromfile(video, dtype=np.uint8)
    tensors: Dict[str, torch.Tensor] = {f"model.{k}": v.detach().cpu().contiguous()
                                        for k, v in loaded.model.state_dict().items()}
    tensors.update({
        "track.frame_ids": torch.tensor(frame_ids, dtype=torch.int64),
        "track.c2w": c2w.float().contiguous(),
        "track.eye": eye.float().contiguous(),
        "media.bg_torso": torch.from_numpy(blob),
    })
    meta = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "library_version": __version__,
        "config": loaded.config.to_dict(), "iteration": int(loaded.iteration), "audio_kind": loaded.audio_kind,
        "audio_dim": int(loaded.audio_dim), "width": int(loaded.width), "height": int(loaded.height),
        "focal": float(loaded.focal), "frames": len(frame_ids), "fps": FPS,
        "output_width": int(full.width), "output_height": int(full.height),
        "bg_torso": {"container": "matroska", "codec": codec, "gop": GOP if codec == "libx264rgb" else 1,
                     "pix_fmt": "rgb24", "lossless": crf is None, "crf": crf},
        "source": {"model": folder.name, "dataset": data.name,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    metadata = {META_KEY: json.dumps(meta)}
    atomic_write(out, lambda p: st.save_file(tensors, str(p), metadata=metadata))
    size = out.stat().st_size
    seconds = time.perf_counter() - start
    log.info("exported %s iteration %d (%d frames, %s) to %s: %.1f MB in %.1f s", folder, loaded.iteration,
             len(frame_ids), codec, out, size / 1e6, seconds)
    return ExportResult(path=out, bytes=size, iteration=int(loaded.iteration), frames=len(frame_ids), codec=codec,
                        seconds=seconds)


# --------------------------------------------------------------------------------------------------
# reading


def is_export(path: PathLike) -> bool:
    """True when ``path`` is a file (not a folder): :func:`gaussiantalker.load` then reads it as an export."""
    return Path(path).is_file()


def _read_meta(path: Path) -> tuple[dict, Any]:
    """The export's metadata and an open ``safe_open`` handle. Raises :class:`ExportError` (one line)."""
    _, safe_open = _safetensors()
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        raw = (handle.metadata() or {}).get(META_KEY)
    except Exception as exc:  # safetensors raises its own error types for every malformed file
        text = " ".join(str(exc).split())[:200]
        raise ExportError(f"{path}: not a gaussiantalker export (not a readable safetensors file: {text})") from None
    if raw is None:
        raise ExportError(f"{path}: not a gaussiantalker export (a safetensors file without '{META_KEY}' metadata)")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise ExportError(f"{path}: damaged export (its metadata is not valid JSON: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise ExportError(f"{path}: not a gaussiantalker export (format {fmt!r})")
    version = meta.get("version")
    if not isinstance(version, int):
        raise ExportError(f"{path}: damaged export (no integer version field)")
    if version > EXPORT_VERSION:
        from . import __version__

        raise ExportError(f"{path}: export format version {version} was written by a newer gaussiantalker "
                          f"({meta.get('library_version', '?')}); this one ({__version__}) reads versions up to "
                          f"{EXPORT_VERSION}: upgrade gaussiantalker")
    return meta, handle


class _FrameVideo:
    """Random access to the frames of the lossless frame video: decodes aligned blocks of :data:`GOP`
    frames with ffmpeg (accurate seek) and keeps the last few blocks."""

    def __init__(self, source: Path, key: str, width: int, height: int, frames: int, keep: int = 4) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gaussiantalker-export-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.dir), True)
        self.file = self.dir / "bg_torso.mkv"
        _copy_tensor_bytes(source, key, self.file)
        self.width, self.height, self.frames = int(width), int(height), int(frames)
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._keep = int(keep)
        self._lock = threading.Lock()

    def _decode(self, block: int) -> np.ndarray:
        from .media import run_ffmpeg

        first = block * GOP
        count = min(GOP, self.frames - first)
        # Seeking a quarter frame before the wanted one: accurate seek then starts exactly at it.
        proc = run_ffmpeg(["-loglevel", "error", "-ss", f"{(first - 0.25) / FPS:.6f}" if first else "0",
                           "-i", str(self.file), "-frames:v", str(count), "-f", "rawvideo", "-pix_fmt", "rgb24",
                           "pipe:1"], path=self.file, capture_stdout=True)
        size = self.width * self.height * 3
        if len(proc.stdout) != count * size:
            raise ExportError(f"{self.file}: decoded {len(proc.stdout) // size} frames of block {block}, "
                              f"expected {count} (damaged frame video)")
        return np.frombuffer(proc.stdout, np.uint8).reshape(count, self.height, self.width, 3)

    def __getitem__(self, k: int) -> np.ndarray:
        """Frame ``k`` (``0 <= k < frames``) as ``[H, W, 3]`` uint8 RGB."""
        if not 0 <= k < self.frames:
            raise IndexError(f"frame {k} out of range [0, {self.frames})")
        block = k // GOP
        with self._lock:
            arr = self._blocks.get(block)
            if arr is None:
                arr = self._blocks[block] = self._decode(block)
                while len(self._blocks) > self._keep:
                    self._blocks.popitem(last=False)
            else:
                self._blocks.move_to_end(block)
        return arr[k - block * GOP]

    def close(self) -> None:
        self._cleanup()


def _copy_tensor_bytes(path: Path, key: str, dst: Path) -> None:
    """Copy the raw bytes of tensor ``key`` of the safetensors file ``path`` to ``dst`` in blocks (the frame
    video can be hundreds of MB: it is not read into memory)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        start, stop = (int(x) for x in header[key]["data_offsets"])
        f.seek(8 + n + start)
        left = stop - start
        with open(dst, "wb") as out:
            while left > 0:
                block = f.read(min(left, 1 << 22))
                if not block:
                    raise ExportError(f"{path}: damaged export (the frame video is cut short)")
                out.write(block)
                left -= len(block)


class PackedData:
    """The part of :class:`~gaussiantalker.data.TalkingHeadData` that a :class:`~gaussiantalker.infer.Talker`
    reads, served from an export: size, focal, the pose sequence and the torso/background frames."""

    def __init__(self, path: Path, meta: dict, frame_ids: torch.Tensor, c2w: torch.Tensor, eye: torch.Tensor,
                 video: _FrameVideo) -> None:
        self.path, self.meta = Path(path), {}
        self.export_meta = meta
        self.name = str(meta.get("source", {}).get("dataset", self.path.stem))
        self.width, self.height, self.focal = int(meta["width"]), int(meta["height"]), float(meta["focal"])
        ids = [int(i) for i in frame_ids.tolist()]
        if len(ids) != c2w.shape[0] or len(ids) != eye.shape[0] or len(ids) != video.frames:
            raise ExportError(f"{path}: damaged export ({len(ids)} frame ids, {c2w.shape[0]} poses, "
                              f"{eye.shape[0]} blinks, {video.frames} frames)")
        self.train_ids, self.val_ids = ids, []
        self._index = {img_id: k for k, img_id in enumerate(ids)}
        self._splits = {"train": SimpleNamespace(c2w=c2w, eye=eye),
                        "val": SimpleNamespace(c2w=c2w[:0], eye=eye[:0])}
        self._video = video

    def split(self, name: str):
        return self._splits[name]

    def at_full_size(self) -> SimpleNamespace:
        """The output size and the stored torso/background frames (at that size) for the renders."""
        return SimpleNamespace(path=self.path, width=self._video.width, height=self._video.height,
                               bg_torso=self.bg_torso)

    def bg_torso(self, img_id: int) -> np.ndarray:
        """``[H, W, 3]`` uint8: the torso-over-background frame of ``img_id`` (as the dataset gave it)."""
        return self._video[self._index[int(img_id)]]


def read_export(path: PathLike, device="cpu"):
    """Read an export: ``(LoadedModel, PackedData)``; the model in eval mode on ``device``.

    Raises:
        FileNotFoundError: no such file. ExportError: corrupt, truncated, foreign or newer (one line naming it).
    """
    from .config import TrainConfig
    from .devices import resolve_device
    from .model.io import LoadedModel
    from .model.talker import GaussianTalkerModel

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"export file {p} does not exist")
    meta, handle = _read_meta(p)
    try:
        keys = list(handle.keys())
        state = {k[len("model."):]: handle.get_tensor(k) for k in keys if k.startswith("model.")}
        track = {k: handle.get_tensor(k) for k in ("track.frame_ids", "track.c2w", "track.eye")}
        if "media.bg_torso" not in keys:
            raise KeyError("media.bg_torso")
        config = TrainConfig.from_dict(meta["config"], origin=str(p))
        GaussianTalkerModel.adapt_config(config, state)
        model = GaussianTalkerModel(config, int(meta["audio_dim"]), int(state["xyz"].shape[0]))
        model.load_state_dict(state, strict=True)
    except ExportError:
        raise
    except Exception as exc:  # a missing key, a wrong shape, a bad config: all mean a damaged file
        text = " ".join(str(exc).split())[:300]
        raise ExportError(f"{p}: damaged export ({type(exc).__name__}: {text})") from None
    model.to(resolve_device(device)).eval()
    loaded = LoadedModel(model=model, config=config, iteration=int(meta["iteration"]),
                         audio_kind=str(meta["audio_kind"]), audio_dim=int(meta["audio_dim"]), dataset_path=p,
                         width=int(meta["width"]), height=int(meta["height"]), focal=float(meta["focal"]))
    del handle
    out_w, out_h = int(meta.get("output_width", loaded.width)), int(meta.get("output_height", loaded.height))
    video = _FrameVideo(p, "media.bg_torso", out_w, out_h, int(meta["frames"]))
    data = PackedData(p, meta, track["track.frame_ids"], track["track.c2w"], track["track.eye"], video)
    return loaded, data



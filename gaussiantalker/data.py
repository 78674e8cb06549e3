"""Training- and render-time data: one loader for our datasets and for the original's.

:class:`TalkingHeadData` opens a dataset folder — ours (``meta.json``, ``points3d.ply``, ``aud_mfcc.npy``
...) or one made by the original GaussianTalker / ER-NeRF preprocessing (colour parsing maps,
``au.csv``, ``aud_ds.npy`` as ``[F,16,29]`` or ``[F,29,16]``, ``track_params.pt`` with or without
``vertices``) — and gives a :class:`TalkingHeadSplit` (a ``torch.utils.data.Dataset``) per split whose
items are :class:`FrameSample` (reference §3.3). Images load lazily (OpenCV; BGR becomes RGB right at
the read), optionally downscaled to ``resolution`` and kept in a size-limited LRU cache.
:func:`collate` stacks samples into a :class:`FrameBatch` with the rasterizer cameras.

Units: cameras and the point cloud are in scene units (tracker units x 0.1, ``docs/camera.md``).
What is read, the legacy compatibility and the fallbacks: ``docs/data-loading.md``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Union

import numpy as np
import torch

from .audio.features import fixed_dim
from .camera import TRANSFORMS_SCALE, CameraMatrices, cameras_from_transforms
from .fileio import read_lms

log = logging.getLogger(__name__)

Tensor = torch.Tensor
PathLike = Union[str, os.PathLike]

__all__ = [
    "AUDIO_CONTEXT", "AUDIO_FILES", "LIP_CODE_DIM", "DatasetError", "FrameBatch", "FrameSample", "TalkingHeadData",
    "TalkingHeadSplit", "legacy_audio_file",
    "audio_context", "camera_condition", "collate", "head_mask_from_parsing", "lips_rect",
]

#: Audio windows per sample: rows ``[k-4, k+4)`` of the split's sequence (the original's att_mode 2).
AUDIO_CONTEXT = 8
#: Audio-feature files in the order a folder without ``meta.json`` is searched (docs/data-loading.md):
#: ours and GaussianTalker's, then AD-NeRF's ``aud.npy`` (DeepSpeech ``[M, 16, 29]``; ER-NeRF's English
#: wav2vec logits under the same name have another D) and ER-NeRF's ``aud_hu.npy`` (HuBERT, ``[M, 2, 1024]``:
#: two 50 Hz rows per frame) and ``aud_eo.npy`` (the Esperanto wav2vec2 logits, ``[M, 16, 44]``).
AUDIO_FILES = (("aud_ds.npy", "deepspeech"), ("aud_hubert.npy", "hubert"), ("aud_phonetic.npy", "phonetic"),
               ("aud_mfcc.npy", "mfcc"),
               ("aud.npy", "deepspeech"), ("aud_hu.npy", "hubert"), ("aud_eo.npy", "wav2vec-eo"))
#: Components of the tracked lip code every sample carries (a model uses its first ``lip_code_dim``).
LIP_CODE_DIM = 8
#: Points of the fallback cloud (ER-NeRF datasets: no points3d.ply and no vertices).
FALLBACK_POINTS = 20000
_GL_TO_CV = torch.tensor([1.0, -1.0, -1.0])


class DatasetError(ValueError):
    """A dataset file is malformed or inconsistent; the message names the file and the problem."""


# ----------------------------------------------------------------------------------------------
# Samples and batches
# ----------------------------------------------------------------------------------------------


@dataclass
class FrameSample:
    """One training / rendering frame (reference §3.3), CPU tensors, images RGB in [0, 1]."""

    index: int  # position in the split
    img_id: int  # frame number in the dataset (``ori_imgs/<img_id>.jpg``)
    image: Tensor  # [3, H, W] the ori_imgs frame
    head_mask: Tensor  # [1, H, W] float {0, 1}: parsing == head
    background: Tensor  # [3, H, W] bc.jpg
    bg_torso: Tensor  # [3, H, W] torso layer over the background
    target: Tensor  # [3, H, W] image * head_mask + bg_torso * (1 - head_mask)
    audio: Tensor  # [8, 16, D] windows [k-4, k+4) of the split's audio sequence, zero-padded
    eye: Tensor  # [1] clip(AU45_r, 0, 2) / 2
    cam: Tensor  # [12] camera condition (see camera_condition)
    c2w: Tensor  # [4, 4] transform_matrix (camera-to-world, OpenGL camera, scene units)
    lips_rect: tuple[int, int, int, int]  # (r0, r1, c0, c1): rows r0:r1, columns c0:c1, clipped
    focal: float  # focal length in pixels at this sample's resolution
    lips: Tensor  # [LIP_CODE_DIM] the tracked lip code of the frame (see TalkingHeadData.lip_codes)


@dataclass
class FrameBatch:
    """B stacked samples plus their rasterizer cameras (``FrameSample`` fields with a leading B)."""

    index: Tensor  # [B] long
    img_id: Tensor  # [B] long
    image: Tensor  # [B, 3, H, W]
    head_mask: Tensor  # [B, 1, H, W]
    background: Tensor  # [B, 3, H, W]
    bg_torso: Tensor  # [B, 3, H, W]
    target: Tensor  # [B, 3, H, W]
    audio: Tensor  # [B, 8, 16, D]
    eye: Tensor  # [B, 1]
    cam: Tensor  # [B, 12]
    c2w: Tensor  # [B, 4, 4]
    lips_rect: Tensor  # [B, 4] long (r0, r1, c0, c1)
    focal: Tensor  # [B]
    lips: Tensor  # [B, LIP_CODE_DIM]
    cameras: CameraMatrices  # batched, B cameras

    @property
    def batch_size(self) -> int:
        return int(self.image.shape[0])

    @property
    def height(self) -> int:
        return int(self.image.shape[2])

    @property
    def width(self) -> int:
        return int(self.image.shape[3])

    def to(self, device, non_blocking: bool = False) -> FrameBatch:
        """A copy with every tensor (cameras included) on ``device``."""

        def move(v):
            return v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v

        cams = self.cameras
        cams = replace(cams, **{f.name: move(getattr(cams, f.name)) for f in fields(cams)})
        out = {f.name: move(getattr(self, f.name)) for f in fields(self) if f.name != "cameras"}
        return FrameBatch(cameras=cams, **out)


def camera_condition(c2w: Tensor) -> Tensor:
    """The 12-value camera condition of each frame: world-to-camera rotation (3x3, row-major) then
    translation (3), for the OpenCV camera (x right, y down, z forward) in scene units — the same
    matrix as :attr:`CameraMatrices.w2c` (the original's token used ``R = w2cᵀ`` and tracker units).

    Args:
        c2w: ``[B, 4, 4]`` (or ``[4, 4]``) camera-to-world transforms (OpenGL camera, scene units).
    Returns:
        ``[B, 12]`` (or ``[12]``), same dtype.
    """
    if c2w.shape[-2:] != (4, 4) or c2w.ndim not in (2, 3):
        raise ValueError(f"c2w must have shape [B, 4, 4] or [4, 4], got {tuple(c2w.shape)}")
    rot_t = c2w[..., :3, :3].transpose(-1, -2)  # world-to-camera rotation, OpenGL camera
    flip = _GL_TO_CV.to(device=c2w.device, dtype=c2w.dtype)
    rot = flip[:, None] * rot_t  # rows flipped: OpenCV camera
    t = -(rot @ c2w[..., :3, 3:4])[..., 0]
    return torch.cat([rot.flatten(-2), t], -1)


def audio_context(windows: Tensor, indices: Tensor, context: int = AUDIO_CONTEXT) -> Tensor:
    """Audio windows ``[k - context/2, k + context/2)`` of a sequence for each index, zero-padded
    outside the sequence (the original's padding, without its too-short-padding bug).

    Args:
        windows: ``[M, 16, D]`` the audio windows of a sequence (one per frame of a split or clip).
        indices: ``[B]`` integer positions in that sequence.
    Returns:
        ``[B, context, 16, D]``.
    """
    if windows.ndim != 3:
        raise ValueError(f"windows must have shape [M, 16, D], got {tuple(windows.shape)}")
    idx = torch.as_tensor(indices, device=windows.device).long().reshape(-1)
    m = windows.shape[0]
    half = context // 2
    pos = idx[:, None] + torch.arange(-half, context - half, device=windows.device)  # [B, context]
    valid = (pos >= 0) & (pos < m)
    if m == 0:
        return windows.new_zeros((idx.shape[0], context) + tuple(windows.shape[1:]))
    out = windows[pos.clamp(0, m - 1)]  # [B, context, 16, D]
    return out * valid[..., None, None].to(windows.dtype)


def collate(samples: Sequence[FrameSample]) -> FrameBatch:
    """Stack samples (all of one size) into a :class:`FrameBatch` with batched cameras."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    stack = {name: torch.stack([getattr(s, name) for s in samples]) for name in
             ("image", "head_mask", "background", "bg_torso", "target", "audio", "eye", "cam", "c2w", "lips")}
    h, w = stack["image"].shape[-2:]
    focal = torch.tensor([s.focal for s in samples], dtype=stack["c2w"].dtype)
    cameras = cameras_from_transforms(stack["c2w"], focal, int(w), int(h))
    return FrameBatch(
        index=torch.tensor([s.index for s in samples], dtype=torch.long),
        img_id=torch.tensor([s.img_id for s in samples], dtype=torch.long),
        lips_rect=torch.tensor([list(s.lips_rect) for s in samples], dtype=torch.long),
        focal=focal, cameras=cameras, **stack,
    )


# ----------------------------------------------------------------------------------------------
# Per-frame file decoding
# ----------------------------------------------------------------------------------------------


def _imread(path: Path, flags: int) -> np.ndarray:
    import cv2

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    img = cv2.imread(str(path), flags)
    if img is None:
        raise DatasetError(f"{path}: not an image OpenCV can decode (corrupt or wrong format)")
    return img


def _read_rgb(path: Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB (OpenCV's BGR converted here)."""
    import cv2

    img = _imread(path, cv2.IMREAD_COLOR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def head_mask_from_parsing(parsing_bgr: np.ndarray) -> np.ndarray:
    """Head mask ``[H, W]`` bool of an original-style parsing map read by OpenCV (BGR order): the head
    colour is the BGR triple (255, 0, 0), blue on disk (reference §1). Channels are thresholded at 128,
    which equals the exact-colour test of the original for its colours."""
    b, g, r = parsing_bgr[..., 0], parsing_bgr[..., 1], parsing_bgr[..., 2]
    return (b >= 128) & (g < 128) & (r < 128)


def _read_lms(path: Path) -> np.ndarray:
    """68 landmarks ``[68, 2]`` (x = column, y = row) of an ``.lms`` file (:func:`~gaussiantalker.fileio.read_lms`,
    a bad file as a :class:`DatasetError`)."""
    try:
        return read_lms(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist (landmarks of the frame, needed for the lip crop)") from None
    except ValueError as e:
        raise DatasetError(str(e)) from None


def lips_rect(lms: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Square lip crop ``(r0, r1, c0, c1)`` of 68 landmarks (reference §3.2), clipped to the image as ints.

    Centre = the integer centre of the outer-lip (48-59) bounding box, half-size = half the larger
    extent. Fixes the original's float bounds at the border; the rect is at least one pixel, so a
    lip loss is never the mean of nothing.
    """
    rows, cols = lms[48:60, 1], lms[48:60, 0]
    r_lo, r_hi = int(rows.min()), int(rows.max())
    c_lo, c_hi = int(cols.min()), int(cols.max())
    rc, cc = (r_lo + r_hi) // 2, (c_lo + c_hi) // 2
    half = max(r_hi - r_lo, c_hi - c_lo) // 2
    r0 = min(max(0, rc - half), height - 1)
    c0 = min(max(0, cc - half), width - 1)
    r1 = max(min(height, rc + half), r0 + 1)
    c1 = max(min(width, cc + half), c0 + 1)
    return int(r0), int(r1), int(c0), int(c1)


@dataclass
class _Record:
    """The decoded per-frame files at the working resolution (what the cache holds)."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    mask: np.ndarray  # [H, W] uint8 {0, 1}
    bg_torso: np.ndarray  # [H, W, 3] uint8 RGB
    lips: tuple[int, int, int, int]

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + self.mask.nbytes + self.bg_torso.nbytes + 64


def _to_chw(img: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


# ----------------------------------------------------------------------------------------------
# Dataset-level files
# ----------------------------------------------------------------------------------------------


@dataclass
class _Transforms:
    focal: float
    cx: float
    cy: float
    img_ids: list[int]
    aud_ids: list[int]
    c2w: np.ndarray  # [n, 4, 4] float64


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level")
    return doc


def _read_transforms(path: Path) -> _Transforms:
    """``transforms_{train,val}.json`` (ER-NeRF convention, reference §1)."""
    doc = _read_json(path)
    for key in ("focal_len", "cx", "cy"):
        if not isinstance(doc.get(key), (int, float)) or not math.isfinite(doc[key]) or doc[key] <= 0:
            raise DatasetError(f"{path}: '{key}' must be a positive number, got {doc.get(key)!r}")
    frames = doc.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DatasetError(f"{path}: has no frames (a non-empty 'frames' list is required)")
    img_ids, aud_ids, mats = [], [], []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or "img_id" not in fr or "transform_matrix" not in fr:
            raise DatasetError(f"{path}: frame {i} needs 'img_id' and 'transform_matrix'")
        m = np.asarray(fr["transform_matrix"], dtype=np.float64)
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise DatasetError(f"{path}: frame {i} has a transform_matrix that is not a finite 4x4 matrix")
        img_id = int(fr["img_id"])
        aud_id = int(fr.get("aud_id", img_id))
        if img_id < 0 or aud_id < 0:
            raise DatasetError(f"{path}: frame {i} has a negative img_id/aud_id")
        img_ids.append(img_id)
        aud_ids.append(aud_id)
        mats.append(m)
    return _Transforms(float(doc["focal_len"]), float(doc["cx"]), float(doc["cy"]), img_ids, aud_ids,
                       np.stack(mats))


def legacy_audio_file(folder: PathLike) -> tuple[Path, str] | None:
    """The audio-feature file a folder without ``meta.json`` is read from, and its kind (the first of
    :data:`AUDIO_FILES` present), or None. ``aud.npy`` is DeepSpeech when its windows have D = 29 (AD-NeRF),
    else ``"wav2vec"`` (ER-NeRF's English wav2vec2 logits); only the array header is read."""
    folder = Path(folder)
    for name, kind in AUDIO_FILES:
        path = folder / name
        if path.is_file():
            if name == "aud.npy":
                try:
                    shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
                except (ValueError, OSError):
                    shape = ()
                if len(shape) == 3 and 29 not in shape[1:]:
                    kind = "wav2vec"
            return path, kind
    return None


def _pairs_to_windows(rows2: np.ndarray) -> np.ndarray:
    """ER-NeRF's HuBERT ``[M, 2, D]`` (rows ``2j``, ``2j+1`` of a 50 Hz sequence per frame ``j``) as our
    ``[M, 16, D]`` windows: rows ``[2j-8, 2j+8)`` of that sequence, zero outside (docs/audio.md)."""
    m, _, d = rows2.shape
    padded = np.concatenate([np.zeros((8, d), rows2.dtype), rows2.reshape(2 * m, d), np.zeros((8, d), rows2.dtype)])
    index = 2 * np.arange(m)[:, None] + np.arange(16)[None, :]
    return padded[index]


def _read_audio(folder: Path, meta: dict) -> tuple[np.ndarray, str, Path]:
    """``(windows [M, 16, D] float32, kind, file)``; a legacy ``[M, 29, 16]`` file is transposed, ER-NeRF's
    ``aud_hu.npy`` ``[M, 2, D]`` made into 16-row windows."""
    audio_meta = meta.get("audio") if isinstance(meta.get("audio"), dict) else {}
    kinds = {name: kind for name, kind in AUDIO_FILES}
    if audio_meta.get("file"):
        path = folder / str(audio_meta["file"])
        kind = str(audio_meta.get("kind") or kinds.get(path.name, ""))
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (named by {folder / 'meta.json'})")
    else:
        found = legacy_audio_file(folder)
        if found is None:
            names = ", ".join(n for n, _ in AUDIO_FILES)
            raise FileNotFoundError(f"{folder}: no audio feature file ({names})")
        path, kind = found
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DatasetError(f"{path}: not a readable .npy array ({e})") from None
    if arr.ndim != 3:
        raise DatasetError(f"{path}: audio windows must be 3-D [M, 16, D], got shape {arr.shape}")
    if path.name == "aud_hu.npy" and arr.shape[1] == 2:
        arr = _pairs_to_windows(arr)
    if arr.shape[1] != 16 and arr.shape[2] == 16:
        arr = arr.transpose(0, 2, 1)  # the original's [M, D, 16] (channels x time)
    if arr.shape[1] != 16:
        raise DatasetError(f"{path}: audio windows must be [M, 16, D] (or [M, D, 16]), got shape {arr.shape}")
    dim = fixed_dim(kind)
    if dim is not None and arr.shape[2] != dim:
        raise DatasetError(f"{path}: {kind} windows have D={dim}, this file has D={arr.shape[2]}")
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path}: audio windows contain NaN or infinite values")
    return np.ascontiguousarray(arr, dtype=np.float32), kind, path


def _read_au45(path: Path) -> np.ndarray:
    """The ``AU45_r`` column of an OpenFace CSV (``" AU45_r"`` with its leading space), ``[rows]``."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DatasetError(f"{path}: empty file (an OpenFace CSV with an AU45_r column is expected)") from None
        if "AU45_r" not in header:
            raise DatasetError(f"{path}: no AU45_r column (columns: {', '.join(header[:8])}, ...)")
        col = header.index("AU45_r")
        values = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                values.append(float(row[col]))
            except (ValueError, IndexError):
                raise DatasetError(f"{path}: line {line} has no number in the AU45_r column") from None
    return np.asarray(values, dtype=np.float64)


def _load_track_params(path: Path) -> dict:
    """``track_params.pt``, memory-mapped when it is a zip-format file (the legacy ``vertices`` can be GBs)."""
    try:
        params = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Files from torch < 1.6 (legacy non-zip format) cannot be memory-mapped.
        params = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(params, dict):
        raise DatasetError(f"{path}: expected a dict of tensors, got {type(params).__name__}")
    return params


def _ellipsoid_surface(num: int, axes: np.ndarray, seed: int = 0) -> np.ndarray:
    """``[num, 3]`` points uniform in area on an origin-centred ellipsoid with semi-axes ``axes``."""
    rng = np.random.default_rng(seed)
    out, have = [], 0
    while have < num:
        n = rng.standard_normal((2 * num, 3))
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        stretch = np.linalg.norm(n / axes, axis=1)
        keep = rng.random(len(n)) < stretch / stretch.max()
        out.append(n[keep] * axes)
        have += int(keep.sum())
    return np.concatenate(out)[:num]


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------


class TalkingHeadData:
    """A dataset folder opened for training or rendering (ours or the original's layout).

    Attributes (sizes after resizing to ``resolution``):
        path, name, width, height, focal (pixels), audio_kind, audio_dim,
        audio: ``[M, 16, D]`` float32 windows of the whole clip,
        eye: ``[F]`` float32 in [0, 1] = ``clip(AU45_r, 0, 2) / 2`` (zeros without ``au.csv``),
        train_ids / val_ids: img_ids in order, camera_extent (scene units), legacy (no ``meta.json``),
        meta (the ``meta.json`` content, ``{}`` for legacy datasets), num_frames (``max img_id + 1``),
        audio_shift: frames by which each frame reads a later (> 0) or earlier audio window than its ``aud_id``: the
        offset of the clip's sound against its picture that a model measured (``GaussianTalkerModel.clip_shift``;
        set by the trainer and by :func:`gaussiantalker.load`; 0 = as the transforms say). Splits made after it is
        set use it.
    """

    def __init__(self, path: PathLike, resolution: int | None = None, cache_mb: float = 0.0):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"dataset folder {self.path} does not exist")
        if cache_mb < 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        meta_path = self.path / "meta.json"
        self.legacy = not meta_path.is_file()
        self.meta: dict = {} if self.legacy else _read_json(meta_path)
        self.name = str(self.meta.get("name") or self.path.name)
        self._transforms = {s: _read_transforms(self.path / f"transforms_{s}.json") for s in ("train", "val")}
        tr, va = self._transforms["train"], self._transforms["val"]
        for key in ("focal", "cx", "cy"):
            if not math.isclose(getattr(tr, key), getattr(va, key), rel_tol=1e-6):
                raise DatasetError(f"{self.path}: transforms_train.json and transforms_val.json disagree on "
                                   f"{key} ({getattr(tr, key)} vs {getattr(va, key)})")
        self.source_width, self.source_height = round(2 * tr.cx), round(2 * tr.cy)
        self._set_resolution(resolution, tr.focal)
        self.train_ids, self.val_ids = list(tr.img_ids), list(va.img_ids)
        self.num_frames = max(self.train_ids + self.val_ids) + 1
        windows, self.audio_kind, self.audio_file = _read_audio(self.path, self.meta)
        self.audio = torch.from_numpy(windows)  # [M, 16, D]
        self.audio_shift = 0
        self.audio_dim = int(windows.shape[2])
        self._check_audio_count()
        self.eye = self._read_eye()  # [F]
        self._lips: tuple[Tensor, Tensor] | None = None
        centres = torch.as_tensor(tr.c2w[:, :3, 3])
        self.camera_extent = float(1.1 * (centres - centres.mean(0)).norm(dim=1).max())
        self._background_full = self._read_background()  # [H0, W0, 3] float32 RGB in [0, 1]
        self.background = _to_chw(self._resize(self._background_full * 255.0, area=True))  # [3, H, W]
        self.cache_mb = float(cache_mb)
        self._cache: OrderedDict[int, _Record] = OrderedDict()
        self._cache_bytes = 0
        self.point_source: str | None = None

    @classmethod
    def open(cls, path: PathLike, resolution: int | None = None, cache_mb: float = 0.0) -> TalkingHeadData:
        """Open a dataset folder.

        Args:
            path: the dataset folder (ours or the original GaussianTalker / ER-NeRF layout).
            resolution: longer image side in pixels to work at (images INTER_AREA, parsing nearest, focal
                and lip rects scaled); None or a value >= the native size keeps the native size.
            cache_mb: size limit of the in-memory LRU cache of decoded frames in MB (0 = no cache).
        Raises:
            FileNotFoundError: the folder or a required file is missing (the message names it).
            DatasetError: a file is malformed or inconsistent (the message names it).
        """
        return cls(path, resolution=resolution, cache_mb=cache_mb)

    # -- setup helpers -------------------------------------------------------------------------

    def _set_resolution(self, resolution: int | None, focal: float) -> None:
        w0, h0 = self.source_width, self.source_height
        if resolution is not None and (int(resolution) != resolution or resolution < 8):
            raise ValueError(f"resolution must be an integer >= 8 (pixels of the longer side), got {resolution!r}")
        if resolution is None or resolution >= max(w0, h0):
            self.width, self.height = w0, h0
        else:
            s = resolution / max(w0, h0)
            self.width, self.height = max(1, round(w0 * s)), max(1, round(h0 * s))
        self.scale = (self.width / w0, self.height / h0)  # (x, y)
        self.focal = focal * self.scale[0]

    def _resize(self, img: np.ndarray, area: bool) -> np.ndarray:
        import cv2

        if (img.shape[1], img.shape[0]) == (self.width, self.height):
            return img
        interp = cv2.INTER_AREA if area else cv2.INTER_NEAREST
        return cv2.resize(img, (self.width, self.height), interpolation=interp)

    def _check_audio_count(self) -> None:
        m, f = self.audio.shape[0], self.num_frames
        if m == 0:
            raise DatasetError(f"{self.audio_file}: has no audio windows")
        if abs(m - f) > 2:
            log.warning("%s: %d audio windows for %d frames; frame indices past the end use the last window "
                        "(as the original)", self.audio_file, m, f)

    def _read_eye(self) -> Tensor:
        path = self.path / "au.csv"
        if not path.is_file():
            log.warning("%s: no au.csv; the eye (blink) condition is 0 for every frame", self.path)
            return torch.zeros(self.num_frames)
        au = _read_au45(path)
        if au.shape[0] < self.num_frames:
            raise DatasetError(f"{path}: {au.shape[0]} rows, but frames go up to img_id {self.num_frames - 1}")
        if au.shape[0] > self.num_frames + 2:
            log.warning("%s: %d rows for %d frames; the first %d are used", path, au.shape[0], self.num_frames,
                        self.num_frames)
        return torch.from_numpy(np.clip(au[: self.num_frames], 0.0, 2.0) / 2.0).float()

    def _read_background(self) -> np.ndarray:
        import cv2

        path = self.path / "bc.jpg"
        bg = _read_rgb(path)
        if bg.shape[:2] != (self.source_height, self.source_width):
            log.warning("%s is %dx%d, the frames are %dx%d: resized (INTER_AREA)", path, bg.shape[1],
                        bg.shape[0], self.source_width, self.source_height)
            bg = cv2.resize(bg, (self.source_width, self.source_height), interpolation=cv2.INTER_AREA)
        return bg.astype(np.float32) / 255.0

    # -- public ----------------------------------------------------------------------------------

    def split(self, name: str) -> TalkingHeadSplit:
        """The ``"train"`` or ``"val"`` split as a ``torch.utils.data.Dataset`` of :class:`FrameSample`."""
        if name not in self._transforms:
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return TalkingHeadSplit(self, name, self._transforms[name])

    def audio_rows_of(self, aud_ids: Sequence[int]) -> Tensor:
        """``[n]`` long: the audio window each of these ``aud_id`` s is read from (+ ``audio_shift``, inside the clip)."""
        m, shift = self.audio.shape[0], int(self.audio_shift)
        return torch.tensor([min(max(int(a) + shift, 0), m - 1) for a in aud_ids], dtype=torch.long)

    def frame_audio_rows(self) -> Tensor:
        """``[num_frames]`` long: the audio window (at 25 per second, so also the audio's time in frames) each frame
        ``img_id`` is read with, ``audio_shift`` included; a frame in no split reads its own index."""
        aud = list(range(self.num_frames))
        for t in self._transforms.values():
            for img_id, aud_id in zip(t.img_ids, t.aud_ids):
                aud[img_id] = aud_id
        return self.audio_rows_of(aud)

    def frame_voice(self) -> np.ndarray | None:
        """``[num_frames]`` float64: the voice activity (:mod:`gaussiantalker.audio.voice`) of the audio each frame
        ``img_id`` is read with (:meth:`frame_audio_rows`), from the dataset's ``aud.wav``; None without that file."""
        from .audio import load_audio
        from .audio.voice import voice_activity

        wav = self.path / "aud.wav"
        if not wav.is_file():
            return None
        voice = voice_activity(load_audio(wav), int(self.audio.shape[0]))
        return voice[self.frame_audio_rows().numpy()]

    def point_cloud(self) -> tuple[Tensor, Tensor]:
        """Initial point cloud: ``xyz [N, 3]`` scene units, ``rgb [N, 3]`` in [0, 1].

        ``points3d.ply`` if present (its colours, else grey 0.5); else the mean over frames of
        ``track_params.pt["vertices"]`` x ``TRANSFORMS_SCALE`` (the original's init, grey); else (ER-NeRF
        datasets) points on a head-sized ellipsoid around the world origin, sized from the landmarks and
        the cameras (logged). :attr:`point_source` records which.
        """
        ply = self.path / "points3d.ply"
        if ply.is_file():
            from .plyio import read_ply

            cloud = read_ply(ply)
            xyz = torch.from_numpy(cloud.xyz.copy())
            if cloud.colors is not None:
                rgb = torch.from_numpy(cloud.colors.astype(np.float32) / 255.0)
            else:
                rgb = torch.full_like(xyz, 0.5)
            self.point_source = "points3d.ply"
        else:
            tp = self.path / "track_params.pt"
            params = _load_track_params(tp) if tp.is_file() else {}
            verts = params.get("vertices")
            if verts is not None:
                if verts.ndim != 3 or verts.shape[-1] != 3:
                    raise DatasetError(f"{tp}: 'vertices' must be [F, V, 3], got {tuple(verts.shape)}")
                xyz = verts.float().mean(0) * TRANSFORMS_SCALE
                self.point_source = "track_params.pt vertices"
            else:
                xyz = torch.from_numpy(self._fallback_points()).float()
                self.point_source = "ellipsoid fallback"
            rgb = torch.full_like(xyz, 0.5)
        if xyz.ndim != 2 or xyz.shape[0] == 0 or not torch.isfinite(xyz).all():
            raise DatasetError(f"{self.path}: the initial point cloud ({self.point_source}) is empty or not finite")
        return xyz.float(), rgb.float()

    def _fallback_points(self) -> np.ndarray:
        """Head-sized ellipsoid around the world origin (the canonical head frame's centre): its half-width
        is the landmarks' face half-width in pixels x camera distance / focal, over up to 8 train frames."""
        tr = self._transforms["train"]
        picks = np.unique(np.linspace(0, len(tr.img_ids) - 1, min(8, len(tr.img_ids))).round().astype(int))
        half_w, half_h = [], []
        for k in picks:
            lms = _read_lms(self.path / "ori_imgs" / f"{tr.img_ids[k]}.lms")
            dist = float(np.linalg.norm(tr.c2w[k, :3, 3]))
            half_w.append((lms[:17, 0].max() - lms[:17, 0].min()) / 2 * dist / tr.focal)
            half_h.append((lms[:, 1].max() - lms[:, 1].min()) / 2 * dist / tr.focal)
        w = float(np.median(half_w))
        axes = np.array([1.1 * w, 1.35 * max(float(np.median(half_h)), w), w])
        log.warning("%s: no points3d.ply and no per-frame vertices in track_params.pt; initialising the Gaussians "
                    "on an ellipsoid of semi-axes %s (scene units) around the world origin", self.path,
                    np.round(axes, 4).tolist())
        return _ellipsoid_surface(FALLBACK_POINTS, axes)

    def _lip_track(self) -> tuple[Tensor, Tensor]:
        """``(codes [F, LIP_CODE_DIM], opening [F])`` from the frames' landmarks (computed once)."""
        if self._lips is None:
            from .lipsync import LipCode, lip_shape, mouth_opening

            lms = np.stack([self._lms_or_nan(i) for i in range(self.num_frames)])
            shapes = lip_shape(lms)
            code = LipCode.fit(shapes[np.asarray(self.train_ids)], LIP_CODE_DIM)
            codes = np.zeros((self.num_frames, LIP_CODE_DIM), np.float32)
            codes[:, : code.basis.shape[0]] = code.encode(shapes)
            self._lips = (torch.from_numpy(np.nan_to_num(codes)), torch.from_numpy(mouth_opening(lms)).float())
        return self._lips

    def _lms_or_nan(self, img_id: int) -> np.ndarray:
        """The frame's landmarks, or NaN rows when its ``.lms`` is missing or malformed (the error is raised when
        that frame itself is loaded, naming the file; the other frames keep their lip codes)."""
        try:
            return _read_lms(self.path / "ori_imgs" / f"{img_id}.lms")
        except (FileNotFoundError, DatasetError):
            return np.full((68, 2), np.nan)

    @property
    def lip_codes(self) -> Tensor:
        """``[F, LIP_CODE_DIM]`` float32: each frame's tracked lip code. The 20 mouth landmarks, aligned on the
        rigid face points (:func:`~gaussiantalker.lipsync.lip_shape`), projected on the principal components of
        the training frames' mouth shapes and whitened there (unit variance per component); a clip with fewer
        components than ``LIP_CODE_DIM`` pads with zeros. Read from ``ori_imgs/<i>.lms`` (every dataset has them)."""
        return self._lip_track()[0]

    @property
    def mouth_opening(self) -> Tensor:
        """``[F]`` float32: inner-lip gap / face height of each frame's tracked landmarks."""
        return self._lip_track()[1]

    def at_full_size(self) -> TalkingHeadData:
        """This dataset at its native size (itself when it was opened at that size)."""
        if (self.width, self.height) == (self.source_width, self.source_height):
            return self
        full = type(self).open(self.path, cache_mb=self.cache_mb)
        full.audio_shift = self.audio_shift
        return full

    def cache_info(self) -> tuple[int, int]:
        """``(frames cached, bytes cached)``."""
        return len(self._cache), self._cache_bytes

    def frame(self, img_id: int) -> _Record:
        """Decoded files of frame ``img_id`` at the working resolution (through the cache)."""
        rec = self._cache.get(img_id)
        if rec is not None:
            self._cache.move_to_end(img_id)
            return rec
        rec = self._decode(img_id)
        limit = self.cache_mb * 1e6
        if rec.nbytes <= limit:
            self._cache[img_id] = rec
            self._cache_bytes += rec.nbytes
            while self._cache_bytes > limit:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
        return rec

    def _decode(self, img_id: int) -> _Record:
        import cv2

        img_path = self.path / "ori_imgs" / f"{img_id}.jpg"
        image = _read_rgb(img_path)
        parsing_path = self.path / "parsing" / f"{img_id}.png"
        parsing = _imread(parsing_path, cv2.IMREAD_COLOR)
        for p, a in ((img_path, image), (parsing_path, parsing)):
            self._check_shape(p, a)
        mask = head_mask_from_parsing(parsing).astype(np.uint8)
        image = self._resize(image, area=True)
        mask = self._resize(mask, area=False)
        bg_torso = self.bg_torso(img_id)
        lms = _read_lms(self.path / "ori_imgs" / f"{img_id}.lms") * np.array(self.scale)
        return _Record(image=image, mask=mask, bg_torso=bg_torso, lips=lips_rect(lms, self.height, self.width))

    def lips_rect_of(self, img_id: int) -> tuple[int, int, int, int]:
        """Frame ``img_id``'s lip crop (as in :meth:`frame`) from its ``.lms`` file alone (no image decoded; cached):
        a data-parallel run weighs its share of the lip loss by the crops of the whole batch."""
        cache = self.__dict__.setdefault("_lips_rects", {})
        if img_id not in cache:
            lms = _read_lms(self.path / "ori_imgs" / f"{img_id}.lms") * np.array(self.scale)
            cache[img_id] = lips_rect(lms, self.height, self.width)
        return cache[img_id]

    def bg_torso(self, img_id: int) -> np.ndarray:
        """``[H, W, 3]`` uint8: frame ``img_id``'s torso layer over the background (reference §3.3), at the working
        resolution. Decodes only the torso PNG (what rendering needs; :meth:`frame` gives it too)."""
        import cv2

        torso_path = self.path / "torso_imgs" / f"{img_id}.png"
        torso = _imread(torso_path, cv2.IMREAD_UNCHANGED)
        self._check_shape(torso_path, torso)
        if torso.ndim != 3 or torso.shape[2] != 4 or torso.dtype != np.uint8:
            raise DatasetError(f"{torso_path}: expected an 8-bit RGBA PNG (4 channels), got shape {torso.shape} "
                               f"{torso.dtype}")
        torso = cv2.cvtColor(torso, cv2.COLOR_BGRA2RGBA).astype(np.float32) / 255.0
        alpha = torso[..., 3:]
        bg_torso = torso[..., :3] * alpha + self._background_full * (1.0 - alpha)
        return np.clip(np.round(self._resize(bg_torso, area=True) * 255.0), 0, 255).astype(np.uint8)

    def _check_shape(self, path: Path, array: np.ndarray) -> None:
        if array.shape[:2] != (self.source_height, self.source_width):
            raise DatasetError(f"{path}: is {array.shape[1]}x{array.shape[0]}, the dataset's frames are "
                               f"{self.source_width}x{self.source_height} (2·cx x 2·cy of the transforms JSON)")

    def __repr__(self) -> str:
        return (f"TalkingHeadData({str(self.path)!r}, {self.width}x{self.height}, train={len(self.train_ids)}, "
                f"val={len(self.val_ids)}, audio={self.audio_kind}[{self.audio_dim}], legacy={self.legacy})")


class TalkingHeadSplit(torch.utils.data.Dataset):
    """The frames of one split in order; ``split[k]`` is a :class:`FrameSample` (loaded lazily)."""

    def __init__(self, data: TalkingHeadData, name: str, transforms: _Transforms):
        self.data = data
        self.name = name
        self.img_ids: list[int] = list(transforms.img_ids)
        self.aud_ids: list[int] = list(transforms.aud_ids)
        #: ``[n]`` the audio window of each frame: its ``aud_id`` + the data's ``audio_shift``, inside the clip
        self.audio_rows = data.audio_rows_of(transforms.aud_ids)
        self.audio = data.audio[self.audio_rows]  # [n, 16, D], the split's audio sequence (reference §3.2)
        self.eye = data.eye[torch.tensor(self.img_ids, dtype=torch.long)]  # [n]
        self.c2w = torch.from_numpy(transforms.c2w).float()  # [n, 4, 4]
        self.cam = camera_condition(self.c2w.double()).float()  # [n, 12]
        self.lips = data.lip_codes[torch.tensor(self.img_ids, dtype=torch.long)]  # [n, LIP_CODE_DIM]

    def __len__(self) -> int:
        return len(self.img_ids)

    def cameras(self) -> CameraMatrices:
        """Rasterizer cameras of every frame of the split (batched, ``[n]``)."""
        return cameras_from_transforms(self.c2w, self.data.focal, self.data.width, self.data.height)

    def __getitem__(self, k: int) -> FrameSample:
        n = len(self.img_ids)
        if not -n <= k < n:
            raise IndexError(f"{self.name} split has {n} frames, index {k} is out of range")
        k = int(k) % n
        img_id = self.img_ids[k]
        rec = self.data.frame(img_id)
        image = _to_chw(rec.image)
        mask = torch.from_numpy(rec.mask).float()[None]
        bg_torso = _to_chw(rec.bg_torso)
        return FrameSample(
            index=k, img_id=img_id, image=image, head_mask=mask, background=self.data.background,
            bg_torso=bg_torso, target=image * mask + bg_torso * (1.0 - mask),
            audio=audio_context(self.audio, torch.tensor([k]))[0], eye=self.eye[k : k + 1].clone(),
            cam=self.cam[k].clone(), c2w=self.c2w[k].clone(), lips_rect=rec.lips, focal=float(self.data.focal),
            lips=self.lips[k].clone(),
        )

    def __repr__(self) -> str:
        return f"TalkingHeadSplit({self.name!r}, {len(self)} frames of {self.data.name!r})"

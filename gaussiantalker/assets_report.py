"""``gaussiantalker assets``: every optional pretrained file, where it is looked for, whether it is there.

Nothing is ever downloaded: each file is optional, and each step that could use one has an offline
default (DESIGN.md, "Offline by default"). This module lists them all (:data:`REGISTRY`), finds each
the way the code that uses it does, and reports its size and SHA-256, checked against the published
checksum where one is known:

* torch-hub style names (``resnet50-19c8e357.pth``, ``vgg16-397923af.pth``, ``s3fd-619a316812.pth``,
  ...) carry the first hex digits of the file's SHA-256 after the last ``-`` (the convention that
  ``torch.hub`` checks with ``check_hash=True``), so those are verified by prefix;
* the DeepSpeech graph has a published SHA-1 (checked by the original download code);
* for the others no checksum is published: the report says "unknown" and shows the SHA-256 found.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

from .assets import asset_dir, file_digest, find_asset

PathLike = Union[str, os.PathLike]

__all__ = ["REGISTRY", "AssetReport", "AssetSpec", "AssetStatus", "asset_report", "format_json", "format_table"]

_HUB_PREFIX = re.compile(r"-([0-9a-f]{8,})\.[A-Za-z.]+$")


@dataclass(frozen=True)
class AssetSpec:
    """One optional file (or model folder) and what it is for."""

    names: Tuple[str, ...]
    """File name(s) it is looked for under (the first is the usual one); a folder name for ``kind="folder"``."""
    enables: str
    """What it enables when present."""
    fallback: str
    """What is used instead when it is absent."""
    source: str
    """Where it comes from (for the user to obtain it)."""
    kind: str = "file"
    """``"file"``, or ``"folder"`` (a model folder found by its ``config.json``)."""
    sha1: Optional[str] = None
    """Published SHA-1, when there is one."""
    used: bool = True
    """False for files the old wrapper required that this library does not use."""
    locations: Optional[Callable[[Path], List[Path]]] = field(default=None, compare=False, repr=False)
    """Extra candidate paths beyond the asset folder (given the asset folder), in lookup order."""
    asset_folder: bool = True
    """Looked for in the asset folder (and one sub-folder down) with :func:`find_asset`."""


def _torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: ``$TORCH_HOME/hub`` or ``$XDG_CACHE_HOME/torch/hub``."""
    home = os.environ.get("TORCH_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "torch" / "hub"


def _fan_locations(assets: Path) -> List[Path]:
    # gaussiantalker.preprocess.landmark_backends.fan_weights_dir: torch's hub checkpoints, then <assets>/checkpoints
    return [_torch_hub_dir() / "checkpoints", assets / "checkpoints"]


def _dlib_locations(assets: Path) -> List[Path]:
    spec = importlib.util.find_spec("face_recognition_models")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    return [Path(r) / "models" for r in roots]


_BFM_ENABLES = "head tracking with the Basel Face Model 2009 as in the original (needs all four BFM files)"
_BFM_FALLBACK = "the offline tracker: a subject-specific landmark shape model fitted to the video itself"
_BFM_SOURCE = ("01_MorphableModel.mat: University of Basel (registration); the .npy files ship with "
               "AD-NeRF / ER-NeRF / GaussianTalker under data_utils/face_tracking/3DMM/")
_NOT_USED = "not used by this library (nothing is needed instead)"

REGISTRY: Tuple[AssetSpec, ...] = (
    AssetSpec(("01_MorphableModel.mat",), _BFM_ENABLES, _BFM_FALLBACK, _BFM_SOURCE),
    AssetSpec(("exp_info.npy",), _BFM_ENABLES, _BFM_FALLBACK, _BFM_SOURCE),
    AssetSpec(("keys_info.npy",), _BFM_ENABLES, _BFM_FALLBACK, _BFM_SOURCE),
    AssetSpec(("topology_info.npy",), _BFM_ENABLES, _BFM_FALLBACK, _BFM_SOURCE),
    AssetSpec(("epoch_20.pth",), "required by the old Docker wrapper (a face-reconstruction checkpoint)", _NOT_USED,
              "Deep3DFaceRecon_pytorch release (face_recon checkpoint)", used=False),
    AssetSpec(("resnet50-19c8e357.pth",), "required by the old Docker wrapper (ImageNet ResNet-50 weights)", _NOT_USED,
              "torchvision ImageNet weights (download.pytorch.org)", used=False),
    AssetSpec(("shape_predictor_68_face_landmarks.dat",), "dlib 68-point landmarks (backends={'landmarks': 'dlib'}, "
              "needs dlib / dlib-bin)", "the predictor of the face-recognition-models package when installed; "
              "the default landmarks are MediaPipe face mesh either way", "dlib.net model files",
              locations=_dlib_locations),
    AssetSpec(("s3fd-619a316812.pth",), "face-alignment landmarks, the original's (S3FD face detector; needs "
              "2DFAN4 too and `pip install face-alignment`)", "MediaPipe face mesh (478 points -> iBUG 68)",
              "face-alignment package's release files", locations=_fan_locations, asset_folder=False),
    AssetSpec(("2DFAN4-11f355bf06.pth.tar",), "face-alignment landmarks, the original's (2D-FAN-4 landmark "
              "network; needs s3fd too)", "MediaPipe face mesh (478 points -> iBUG 68)",
              "face-alignment package's release files", locations=_fan_locations, asset_folder=False),
    AssetSpec(("79999_iter.pth",), "BiSeNet face parsing as in the original (19 CelebAMask-HQ classes)",
              "MediaPipe selfie segmentation + landmark geometry -> head / neck / torso / background",
              "face-parsing.PyTorch, redistributed by AD-NeRF (data_util/face_parsing/)"),
    AssetSpec(("deepspeech-0_1_0-b90017e8.pb",), "DeepSpeech v0.1.0 audio features (aud_ds.npy, [F,16,29]) as in "
              "the original; needs tensorflow-cpu (pip install gaussiantalker[deepspeech])",
              "MFCC + recognised-phone windows (aud_phonetic.npy, [F,16,32]; pocketsphinx)", "osmr/deepspeech_features release v0.0.1",
              sha1="b90017e816572ddce84f5843f1fa21e6a377975e"),
    AssetSpec(("hubert-large-ls960-ft",), "HuBERT audio features (aud_hubert.npy, [F,16,1024]); needs transformers "
              "(pip install gaussiantalker[hubert])", "MFCC + recognised-phone windows (aud_phonetic.npy)",
              "facebook/hubert-large-ls960-ft saved with save_pretrained (config.json + weights)", kind="folder"),
    AssetSpec(("vgg16-397923af.pth",), "the VGG16 perceptual loss in training, and LPIPS-VGG (with vgg.pth)",
              "perceptual loss off (logged once); LPIPS-VGG not reported", "torchvision ImageNet weights"),
    AssetSpec(("alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth"), "LPIPS-Alex in evaluation (with alex.pth)",
              "LPIPS-VGG when its two files are present, else no LPIPS in the report", "torchvision ImageNet weights"),
    AssetSpec(("alex.pth",), "LPIPS-Alex linear layers (with the AlexNet weights)",
              "LPIPS-VGG when present, else no LPIPS", "the lpips package (weights/v0.1/alex.pth)"),
    AssetSpec(("vgg.pth",), "LPIPS-VGG linear layers (with the VGG16 weights)",
              "LPIPS-Alex when present, else no LPIPS", "the lpips package (weights/v0.1/vgg.pth)"),
)


@dataclass
class AssetStatus:
    """What was found for one :class:`AssetSpec`."""

    name: str
    """The usual file (or folder) name."""
    found: Optional[Path]
    """Where it was found, or None."""
    looked_in: List[str]
    """The places searched, in order (``<assets>/*/NAME`` means one sub-folder down)."""
    size: Optional[int]
    """Bytes of the file (of the weights file for a folder)."""
    sha256: Optional[str]
    checksum: str
    """``"ok (...)"``, ``"MISMATCH (...)"``, ``"unknown (no published checksum)"`` or ``"-"`` when absent."""
    enables: str
    fallback: str
    source: str
    used: bool

    @property
    def ok(self) -> bool:
        return self.found is not None and not self.checksum.startswith("MISMATCH")


@dataclass
class AssetReport:
    """The asset folder and the status of every optional file."""

    asset_dir: Path
    assets: List[AssetStatus]

    def to_dict(self) -> Dict[str, object]:
        items = []
        for a in self.assets:
            d = asdict(a)
            d["found"] = str(a.found) if a.found is not None else None
            items.append(d)
        return {"asset_dir": str(self.asset_dir), "exists": self.asset_dir.is_dir(), "assets": items}


def _find(spec: AssetSpec, root: Path, assets: Optional[PathLike]) -> Tuple[Optional[Path], List[str]]:
    looked: List[str] = []
    extra = spec.locations(root) if spec.locations is not None else []
    for name in spec.names:
        probe = f"{name}/config.json" if spec.kind == "folder" else name
        if spec.asset_folder:
            looked += [str(root / name), str(root / "*" / name)]
            hit = find_asset(probe, assets)
            if hit is not None:
                return (hit.parent if spec.kind == "folder" else hit), _unique(looked)
        for folder in extra:
            looked.append(str(folder / name))
            if (folder / probe).is_file():
                return folder / name, _unique(looked)
    return None, _unique(looked)


def _unique(items: Sequence[str]) -> List[str]:
    return list(dict.fromkeys(items))


def _weights_file(folder: Path) -> Optional[Path]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def _check(spec: AssetSpec, path: Path, sha256: Optional[str]) -> str:
    if spec.sha1 is not None and path.name == spec.names[0]:
        digest = file_digest(path, "sha1")
        return f"ok (SHA-1 {spec.sha1})" if digest == spec.sha1 else f"MISMATCH (SHA-1 {digest}, expected {spec.sha1})"
    m = _HUB_PREFIX.search(path.name)
    if m and sha256 is not None:
        prefix = m.group(1)
        if sha256.startswith(prefix):
            return f"ok (SHA-256 starts with {prefix})"
        return f"MISMATCH (SHA-256 {sha256[:16]}..., expected it to start with {prefix})"
    if spec.kind == "folder" and sha256 is None:
        return "no weights file (model.safetensors or pytorch_model.bin)"
    return "unknown (no published checksum)"


def asset_report(assets: Optional[PathLike] = None, checksums: bool = True) -> AssetReport:
    """Find every file of :data:`REGISTRY` and check it.

    Args:
        assets: the asset folder (default ``$GAUSSIANTALKER_HOME``, else ``~/.cache/gaussiantalker``).
        checksums: compute SHA-256 of the files found (weights files are large: a few seconds per GB).
    """
    root = asset_dir(assets)
    out = []
    for spec in REGISTRY:
        found, looked = _find(spec, root, assets)
        size = digest = None
        check = "-"
        if found is not None:
            target = _weights_file(found) if spec.kind == "folder" else found
            if target is not None:
                size = target.stat().st_size
                digest = file_digest(target) if checksums else None
            check = _check(spec, found, digest) if checksums else "not computed"
        out.append(AssetStatus(name=spec.names[0], found=found, looked_in=looked, size=size, sha256=digest,
                               checksum=check, enables=spec.enables, fallback=spec.fallback, source=spec.source,
                               used=spec.used))
    return AssetReport(asset_dir=root, assets=out)


def format_json(report: AssetReport) -> str:
    """The report as JSON (for machines)."""
    return json.dumps(report.to_dict(), indent=2)


def _size(n: Optional[int]) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def format_table(report: AssetReport) -> str:
    """The report as text for people: one block per file."""
    state = "exists" if report.asset_dir.is_dir() else "does not exist"
    lines = [f"asset folder: {report.asset_dir} ({state}; set $GAUSSIANTALKER_HOME or --assets DIR to change it)",
             "nothing is downloaded: every file is optional, each step has an offline default", ""]
    width = max(len(a.name) for a in report.assets)
    for a in report.assets:
        mark = "found  " if a.found is not None else "missing"
        if a.found is not None and not a.ok:
            mark = "BAD    "
        lines.append(f"{mark} {a.name:<{width}}  {a.found if a.found is not None else ''}")
        if a.found is not None:
            lines.append(f"        size {_size(a.size) or '?'}, sha256 {a.sha256 or '-'}, checksum {a.checksum}")
        else:
            lines.append(f"        looked in: {', '.join(a.looked_in)}")
        lines.append(f"        enables:   {a.enables}")
        if a.found is None or not a.ok:
            lines.append(f"        instead:   {a.fallback}")
        lines.append(f"        source:    {a.source}")
    n = sum(a.found is not None for a in report.assets)
    lines.append("")
    lines.append(f"{n} of {len(report.assets)} optional files found")
    return "\n".join(lines)

"""``hubert`` features: a transformers ``HubertModel`` loaded from a local folder (nothing downloads).

Folder layout (what ``save_pretrained`` writes, or a hub snapshot copied by hand)::

    <assets>/hubert-large-ls960-ft/       (or any folder passed as model_path)
    ├── config.json                       required: a HubertConfig
    ├── model.safetensors                 or pytorch_model.bin: the weights
    └── preprocessor_config.json          optional: its "do_normalize" decides input normalisation

``facebook/hubert-large-ls960-ft`` (the checkpoint the original's ``hubert.py`` uses; D = 1024) loads
as a ``HubertModel`` (its CTC head is ignored). Without ``preprocessor_config.json`` the input is
normalised when ``config.feat_extract_norm == "layer"`` (the large models), as their processors do.

Rows: the model's last hidden state. Its convolutional front end has a 400-sample receptive field
and a 320-sample stride, so with 200 zeros in front row ``k`` is centred on ``k / 50`` s, like ``mfcc``.
Self-attention over hours of audio is out of reach, so the utterance is processed in blocks of
:data:`DEFAULT_PLAN` (1 s kept, 1 s of past and 0.5 s of future context, each block normalised on its
own); offline and streaming run the very same blocks, so they agree exactly.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..assets import asset_dir, find_asset
from .base import BlockPlan, Extractor

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

HUBERT_DIRNAME = "hubert-large-ls960-ft"
"""Folder name looked for in the asset folder."""
DEFAULT_PLAN = BlockPlan(block=50, left=50, right=25)
INSTALL_HINT = "install transformers with `pip install gaussiantalker[hubert]`"

__all__ = ["DEFAULT_PLAN", "HUBERT_DIRNAME", "HubertExtractor", "find_hubert"]


def find_hubert(assets: Optional[PathLike] = None, model_path: Optional[PathLike] = None) -> Path:
    """The HuBERT folder: ``model_path`` when given, else ``HUBERT_DIRNAME`` in the asset folder.

    Raises:
        FileNotFoundError: no such folder, or it has no ``config.json``; the message gives the layout.
    """
    if model_path is not None:
        folder = Path(model_path).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"HuBERT folder {folder} has no config.json: pass a folder written by "
                "HubertModel.save_pretrained (config.json + model.safetensors or pytorch_model.bin)"
            )
        return folder
    found = find_asset(f"{HUBERT_DIRNAME}/config.json", assets)
    if found is None:
        raise FileNotFoundError(
            f"HuBERT model not found: place a folder {HUBERT_DIRNAME}/ with config.json and "
            f"model.safetensors (or pytorch_model.bin) in {asset_dir(assets)}, pass model_path=FOLDER, "
            "or use kind='mfcc'"
        )
    return found.parent


def _wants_normalize(folder: Path, config) -> bool:
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        with open(pre, encoding="utf-8") as f:
            value = json.load(f).get("do_normalize")
        if value is not None:
            return bool(value)
    return getattr(config, "feat_extract_norm", "group") == "layer"


class HubertExtractor(Extractor):
    """The ``hubert`` kind (D = the model's hidden size)."""

    kind = "hubert"

    def __init__(self, folder: PathLike, device=None, plan: Optional[BlockPlan] = None):
        try:
            import torch
            from transformers import HubertModel
        except ImportError as exc:
            raise ImportError(f"HuBERT features need transformers: {INSTALL_HINT}") from exc
        from ..devices import resolve_device

        self.folder = Path(folder)
        self.device = resolve_device(device)
        try:
            model = HubertModel.from_pretrained(str(self.folder), local_files_only=True)
        except OSError as exc:
            raise FileNotFoundError(
                f"cannot load HuBERT from {self.folder}: {exc} (expected config.json and "
                "model.safetensors or pytorch_model.bin)"
            ) from exc
        self.model = model.eval().to(self.device)
        self.normalize = _wants_normalize(self.folder, model.config)
        self.dim = int(model.config.hidden_size)
        self.plan = plan or DEFAULT_PLAN
        self.source = f"HubertModel from {self.folder} (last hidden state, blocks {self.plan})"
        self._torch = torch
        log.info(
            "HuBERT loaded from %s on %s (dim %d, normalize=%s)", self.folder, self.device, self.dim, self.normalize
        )

    def chunk_rows(self, chunk: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))[None].to(self.device)  # [1, L]
        if self.normalize:
            # What Wav2Vec2FeatureExtractor(do_normalize=True) does: zero mean, unit (population) variance.
            x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
        with torch.inference_mode():
            hidden = self.model(x).last_hidden_state[0]  # [n, D]
        return hidden.float().cpu().numpy()

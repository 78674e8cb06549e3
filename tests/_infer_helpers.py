"""Tiny models for the inference and evaluation tests (shared by test_infer.py and test_evaluate.py).

``trained_model`` trains a tiny model on a synthetic dataset once per test session (cached here, so the
two test modules share it). ``model_folder`` writes a model folder straight from a synthetic dataset
without training (the canonical Gaussians of its point cloud, the deformation heads given small random
weights so that the audio changes the pixels): used where a second model is needed only for its
metadata (another audio-feature kind) and by the benchmark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch

_CACHE: Dict[str, Path] = {}

TINY_FRAMES = 44  # train 40 frames, val 4
TINY_SIZE = 48


def synthetic(root: Path, name: str = "tiny", **kw) -> Path:
    from gaussiantalker.synthetic import make_synthetic_dataset

    kw.setdefault("num_frames", TINY_FRAMES)
    kw.setdefault("size", TINY_SIZE)
    kw.setdefault("num_points", 600)
    return make_synthetic_dataset(root / "data" / name, **kw)


def model_folder(dataset: Path, out: Path, config: Optional[str] = None, iteration: int = 3, seed: int = 0,
                 head_scale: float = 0.002) -> Path:
    """A model folder (C's layout) with the dataset's canonical Gaussians and random deformation heads."""
    from gaussiantalker.config import load_config
    from gaussiantalker.data import TalkingHeadData
    from gaussiantalker.model.io import ModelInfo, save_iteration, save_model_info
    from gaussiantalker.model.talker import GaussianTalkerModel

    torch.manual_seed(seed)
    data = TalkingHeadData.open(dataset)
    cfg = load_config(config)
    xyz, rgb = data.point_cloud()
    model = GaussianTalkerModel.from_point_cloud(xyz, rgb, cfg, data.audio_dim)
    model.start_fine()
    with torch.no_grad():
        model.opacity.fill_(2.0)  # visible
        if not model.lip_kernel:
            for p in model.audio_encoder.parameters():  # random init barely separates audio windows: amplify
                p.mul_(2.0)
        else:  # a lip code that follows the audio: the kernel predictor fitted to a random projection of it
            from gaussiantalker.data import audio_context

            audio = audio_context(data.audio, torch.arange(data.audio.shape[0]))
            codes = audio[:, 4].flatten(1) @ torch.randn(audio[:, 4].flatten(1).shape[1], model.lip_dim) * 0.05
            model.lip_regression.fit(audio, codes)
            model.lip_closed.copy_(codes.min(0).values - 1.0)  # a closed mouth unlike any the audio predicts
            model.lip_gate.fill_(1.0)  # renders close the mouth in silences unless told otherwise
            last = [m for m in model.lip_encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.normal_(0.0, 1.0)
        for name, seq in model.offset_heads.items():
            last = [m for m in seq.modules() if isinstance(m, torch.nn.Linear)][-1]
            # Colour offsets big enough to see, geometry offsets small (the head stays a head).
            last.weight.normal_(0.0, 0.2 if name == "dshs" else head_scale)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    save_iteration(out, iteration, model)
    save_model_info(out, cfg, ModelInfo(audio_kind=data.audio_kind, audio_dim=data.audio_dim,
                                        dataset_path=str(dataset.resolve()), width=data.width, height=data.height,
                                        focal=data.focal))
    return out


def audio_model(tmp_path_factory) -> Path:
    """A model whose deformation visibly follows the audio (random heads), for the equality tests."""
    if "audio" not in _CACHE:
        root = tmp_path_factory.mktemp("gt_audio_model")
        _CACHE["audio"] = model_folder(synthetic(root), root / "output" / "tiny")
    return _CACHE["audio"]


def lip_model(tmp_path_factory) -> Path:
    """A ``cpu_small`` (kernel lip-code) model whose code follows the audio, with a closed-mouth code: the silence
    gate's tests."""
    if "lip" not in _CACHE:
        root = tmp_path_factory.mktemp("gt_lip_model")
        _CACHE["lip"] = model_folder(synthetic(root), root / "output" / "tiny", config="cpu_small", head_scale=0.0)
    return _CACHE["lip"]


def trained_model(tmp_path_factory) -> Path:
    """A tiny model trained on a synthetic dataset (once per session)."""
    if "trained" in _CACHE:
        return _CACHE["trained"]
    root = tmp_path_factory.mktemp("gt_infer")
    dataset = synthetic(root)
    try:
        from gaussiantalker.config import resolve_config
        from gaussiantalker.train import train

        resolve_config("cpu_small")
    except (ImportError, FileNotFoundError):  # the trainer or its preset is not there yet
        train = None
    if train is None:
        path = model_folder(dataset, root / "output" / "tiny")
    else:
        from gaussiantalker.config import load_config

        # A few iterations of each stage: a real trained model folder (not a good model) in seconds.
        cfg = load_config("cpu_small", coarse_iterations=4, iterations=2, resolution=-1)
        model = train(dataset, config=cfg, device="cpu", workspace=root, name="tiny", progress=False)
        path = Path(model.path)
    _CACHE["trained"] = path
    return path

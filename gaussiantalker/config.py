"""Training configuration: the original GaussianTalker's parameter groups as typed dataclasses.

A config file is *data*: ``configs/64_dim_1_transformer.py`` holds literal assignments in the original's
shape (``ModelHiddenParams = dict(...)``, ``OptimizationParams = dict(...)``, ``ModelParams = dict(...)``,
``PipelineParams = dict(...)``). It is parsed with :mod:`ast` and :func:`ast.literal_eval`, never executed.
Keys a file does not set keep the dataclass defaults, which are the effective values of the original's
shipped ``64_dim_1_transformer.py`` (its repository defaults overridden by that file). A key that no group
knows is an error naming the key and the file.

Fields marked "accepted for compatibility; no effect" exist so that the original's files load unchanged.
The resolved configuration of a trained model is saved as plain JSON (``config.json``) and read back with
:meth:`TrainConfig.from_json`.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, os.PathLike]

DEFAULT_PRESET = "64_dim_1_transformer"

CONFIG_FORMAT = "gaussiantalker-config"
CONFIG_VERSION = 1


class ConfigError(ValueError):
    """A configuration file or value that cannot be used (names the file and the key)."""


def _kplanes_default() -> dict[str, Any]:
    return {"grid_dimensions": 2, "input_coordinate_dim": 3, "output_coordinate_dim": 32, "resolution": [64, 64, 64]}


@dataclass
class ModelParams:
    """Scene / data loading parameters (the original's ``ModelParams``, plus ours)."""

    sh_degree: int = 3
    """Maximum spherical-harmonics degree of the Gaussians' colour (0..3)."""
    source_path: str = ""
    """Accepted for compatibility; no effect (the dataset is an argument of ``train``)."""
    model_path: str = ""
    """Accepted for compatibility; no effect (the model folder follows the workspace layout)."""
    images: str = "images"
    """Accepted for compatibility; no effect."""
    resolution: int = -1
    """Training image size in pixels (square crops are resized to this); -1 keeps the dataset's size."""
    white_background: bool = True
    """Accepted for compatibility; no effect (the background is the per-frame torso-over-plate image)."""
    data_device: str = "cuda"
    """Accepted for compatibility; no effect (``train(device=...)`` chooses the device)."""
    eval: bool = True
    """Accepted for compatibility; the held-out split is always kept out of training."""
    render_process: bool = False
    """Accepted for compatibility; no effect."""
    add_points: bool = False
    """Accepted for compatibility; no effect."""
    extension: str = ".png"
    """Accepted for compatibility; no effect."""
    llffhold: int = 8
    """Accepted for compatibility; no effect."""
    max_points: int = 0
    """Ours: at most this many initial Gaussians (random subset of the point cloud, seeded); 0 = all."""
    max_gaussians: int = 50000
    """Ours: densification stops adding Gaussians once there are this many (the original's 50k cap)."""
    cache_mb: float = 0.0
    """Ours: in-memory cache of decoded training frames, in MB (0 = load lazily every time)."""


@dataclass
class PipelineParams:
    """Rasterizer pipeline switches (the original's ``PipelineParams``)."""

    convert_SHs_python: bool = False
    """Accepted for compatibility; SH colours are always evaluated in the rasterizer."""
    compute_cov3D_python: bool = False
    """Accepted for compatibility; covariances are always computed in the rasterizer."""
    debug: bool = False
    """Accepted for compatibility; no effect (the original forced it on, a large silent slowdown)."""


@dataclass
class ModelHiddenParams:
    """Deformation network (the original's ``ModelHiddenParams``)."""

    net_width: int = 128
    """Hidden width of the coarse-stage tri-plane MLP and heads and of the five offset heads."""
    timebase_pe: int = 4
    """Accepted for compatibility; no effect."""
    defor_depth: int = 2
    """Depth of the tri-plane feature MLP (Linear layers) of the coarse stage."""
    posebase_pe: int = 10
    """Accepted for compatibility; no effect (computed and discarded by the original)."""
    scale_rotation_pe: int = 2
    """Accepted for compatibility; no effect (computed and discarded by the original)."""
    opacity_pe: int = 2
    """Accepted for compatibility; no effect."""
    timenet_width: int = 64
    """Accepted for compatibility; no effect."""
    timenet_output: int = 32
    """Accepted for compatibility; no effect."""
    bounds: float = 1.6
    """Accepted for compatibility; no effect (the tri-plane box is the point cloud's bounding box)."""
    plane_tv_weight: float = 0.0002
    """Weight of the total-variation regulariser on the tri-plane planes (applied in both stages)."""
    time_smoothness_weight: float = 0.001
    """Weight of the second-difference smoothness along time planes; a 3-D tri-plane has none (term is 0)."""
    l1_time_planes: float = 0.0001
    """Weight of the L1 pull of time planes towards 1; a 3-D tri-plane has none (term is 0)."""
    kplanes_config: dict[str, Any] = field(default_factory=_kplanes_default)
    """Tri-plane: ``grid_dimensions`` (2), ``input_coordinate_dim`` (3), channels, base ``resolution``."""
    multires: list[int] = field(default_factory=lambda: [1, 2])
    """Resolution multipliers of the tri-plane scales; their features are concatenated."""
    no_dx: bool = False
    """Disable the position offset head."""
    no_grid: bool = False
    """Must be False: the tri-plane is the query of the attention."""
    no_ds: bool = False
    """Disable the scale offset head."""
    no_dr: bool = False
    """Disable the rotation offset head."""
    no_do: bool = False
    """Disable the opacity offset head."""
    no_dshs: bool = False
    """Disable the SH offset head."""
    empty_voxel: bool = False
    """Must be False (unused network in the original)."""
    grid_pe: int = 0
    """Accepted for compatibility; no effect."""
    static_mlp: bool = False
    """Must be False (unused network in the original)."""
    apply_rotation: bool = False
    """Must be False: rotation offsets are added to the quaternion, as the original does."""
    render_process: bool = False
    """Accepted for compatibility; no effect (the shipped files set it in this group)."""
    only_infer: bool = False
    """Accepted for compatibility; no effect (the tri-plane feature is cached whenever the model is in eval mode)."""
    d_model: int = 64
    """Width of the spatial-audio attention; must equal the tri-plane feature size (channels x scales)."""
    n_head: int = 2
    """Attention heads."""
    drop_prob: float = 0.2
    """Dropout probability inside the attention layers."""
    ffn_hidden: int = 128
    """Hidden width of the attention layers' feed-forward block."""
    n_layer: int = 1
    """Number of spatial-audio attention layers."""
    visualize_attention: bool = False
    """Accepted for compatibility; attention maps are always returned by ``deform``."""
    train_tri_plane: bool = True
    """Keep training the tri-plane planes in the fine stage."""
    pos_emb: bool = False
    """Accepted for compatibility; no effect."""
    cam_token: bool = True
    """Ours: False leaves the camera out of the attention's tokens (its token is zero). The camera changes with every
    frame, so it lets the network explain each training frame's mouth by its pose instead of its sound; a
    talking head seen from the front needs little view-dependent deformation."""
    lip_code_dim: int = 0
    """Ours: 0 = the original's audio token. K > 0 (at most 8): the audio encoder predicts a K-component lip code,
    taught by the tracked mouth landmarks of every training frame, and the attention's first token encodes that
    code: the tracked code while training (teacher forcing), the one predicted from the audio when rendering."""
    lip_predictor: str = "kernel"
    """Ours (lip-code models): how audio predicts the lip code. ``"kernel"``: kernel ridge regression on the frame's
    audio window and the next frame's, fitted in closed form before training (gaussiantalker.model.lipkernel);
    ``"network"``: the original's audio encoder with a linear head, trained by AdamW beside the renderer (the
    first lip-code models; it overfits the few hundred frames of a short clip)."""
    lip_blendshapes: bool = False
    """Ours (lip-code models): in the fine stage each Gaussian around the mouth also gets a learnt linear response to
    the lip code: its position, base colour and opacity (logit) move by ``code @ basis``, one ``[K, 3]``, ``[K, 3]`` and
    ``[K, 1]`` basis per Gaussian, starting at zero, beside the attention's offsets. The attention gives every Gaussian
    the code through one shared token, and learnt the mouth's extremes poorly (a half-open mouth with a pale band for
    teeth); a basis per Gaussian lets the lips part and the teeth show. "Around the mouth": the Gaussians on the front
    of the head that project into the frames' lip crops (grown by a quarter) in at least half of 32 training frames
    (:func:`gaussiantalker.train.trainer.mouth_region`); bases everywhere fitted the whole head to the code
    (docs/quality.md)."""


@dataclass
class OptimizationParams:
    """Training schedule, learning rates, losses and densification (the original's ``OptimizationParams``)."""

    dataloader: bool = True
    """Accepted for compatibility; frames are always fed by a seeded, resumable sampler."""
    zerostamp_init: bool = False
    """Accepted for compatibility; no effect."""
    custom_sampler: str | None = None
    """Accepted for compatibility; no effect."""
    iterations: int = 10000
    """Iterations of the fine (audio-driven) stage."""
    coarse_iterations: int = 7999
    """Iterations of the coarse (canonical) stage, batch size 1."""
    min_extent: float = 0.1
    """Ours: floor of the scene extent, in scene units (0.1 = 1 unit of the original's tracker), that scales the
    position, network and tri-plane learning rates and the densification size thresholds. The original uses
    the spread of the camera centres, which for a talking head (a static camera) measures how much the head
    moves: about 1 tracker unit for minutes of video, but 0.34 for a 5 s clip with a still head, whose networks
    then learned 3x slower (held-out PSNR on May_5s after 300 + 150 iterations: 24.6 dB, 30.5 dB at 1.0).
    0 keeps the original's behaviour."""
    position_lr_init: float = 0.00016
    """Initial learning rate of the Gaussian positions (times the camera extent)."""
    position_lr_final: float = 0.0000016
    """Final learning rate of the Gaussian positions (times the camera extent)."""
    position_lr_delay_mult: float = 0.01
    """Accepted for compatibility; no effect (the original's delay is 0 steps)."""
    position_lr_max_steps: int = 20000
    """Steps of the log-linear decay of the position, deformation and grid learning rates (per stage)."""
    deformation_lr_init: float = 0.0001
    """Initial learning rate of the networks (times the extent in the original's units)."""
    deformation_lr_final: float = 0.00001
    """Final learning rate of the networks (times the extent in the original's units)."""
    deformation_lr_delay_mult: float = 0.01
    """Accepted for compatibility; no effect."""
    grid_lr_init: float = 0.0016
    """Initial learning rate of the tri-plane planes (times the extent in the original's units)."""
    grid_lr_final: float = 0.00016
    """Final learning rate of the tri-plane planes (times the extent in the original's units)."""
    sh_degree_interval: int = 1000
    """Raise the active SH degree every this many iterations of a stage (the original's 1000), except in the last
    half interval of a stage (a band raised there would be saved untrained)."""
    feature_lr: float = 0.0025
    """Learning rate of the SH DC coefficients (the rest use 1/20 of it)."""
    opacity_lr: float = 0.05
    """Learning rate of the opacity logits (fine stage)."""
    scaling_lr: float = 0.005
    """Learning rate of the log-scales."""
    rotation_lr: float = 0.001
    """Learning rate of the quaternions."""
    percent_dense: float = 0.01
    """Clone below / split above this fraction of the camera extent (largest scale)."""
    lambda_dssim: float = 0.0
    """Accepted for compatibility; no effect (the D-SSIM weight is fixed at 0.2 as in the original's code)."""
    lambda_lpips: float = 0.0
    """Accepted for compatibility; no effect (the perceptual weight is 0.01 when VGG16 weights are present)."""
    weight_constraint_init: float = 1.0
    """Accepted for compatibility; no effect."""
    weight_constraint_after: float = 0.2
    """Accepted for compatibility; no effect."""
    weight_decay_iteration: int = 5000
    """Accepted for compatibility; no effect."""
    opacity_reset_interval: int = 3000
    """After this many iterations, pruning also removes Gaussians too large on screen or in the world."""
    densification_interval: int = 100
    """Densify every this many iterations."""
    densify_from_iter: int = 1000
    """Densify only after this iteration."""
    densify_until_iter: int = 7000
    """Densify and prune only before this iteration."""
    densify_grad_threshold_coarse: float = 0.001
    """Mean screen-space (NDC) gradient norm above which a Gaussian is cloned or split (coarse stage)."""
    densify_grad_threshold_fine_init: float = 0.0002
    """The same threshold in the fine stage (used only with ``split_gs_in_fine_stage``)."""
    densify_grad_threshold_after: float = 0.0002
    """Accepted for compatibility; no effect."""
    pruning_from_iter: int = 500
    """Prune only after this iteration."""
    pruning_interval: int = 100
    """Prune every this many iterations."""
    opacity_threshold_coarse: float = 0.005
    """Prune Gaussians whose (tri-plane predicted) opacity is below this (coarse stage)."""
    opacity_threshold_fine_init: float = 0.005
    """Prune threshold in the fine stage (used only with ``split_gs_in_fine_stage``)."""
    opacity_threshold_fine_after: float = 0.005
    """Accepted for compatibility; no effect."""
    batch_size: int = 32
    """Frames per fine-stage iteration (the coarse stage always uses 1)."""
    add_point: bool = False
    """Accepted for compatibility; must be False."""
    lip_fine_tuning: bool = True
    """Add ``lip_weight`` x L1 on the lip crop."""
    lip_weight: float = 0.4
    """Ours: weight of the lip-crop L1 (the original's 0.4)."""
    open_mouth_repeat: int = 1
    """Ours: in the fine stage, training frames whose mouth opening is in the top quarter of the clip's appear this
    many times per epoch (1 = every frame once, the original)."""
    lip_kernel_ridge: float = 0.3
    """Ours (kernel lip predictor): the ridge lambda of the kernel regression (the kernel's diagonal is 1)."""
    lip_kernel_centres: int = 2000
    """Ours (kernel lip predictor): at most this many training windows serve as kernel centres (Nystroem); a
    longer clip's frames are subsampled (memory and fit time grow with the square of this number)."""
    lip_kernel_taper: float = 0.3
    """Ours (kernel lip predictor, MFCC and phonetic features): the weight of an MFCC row's last cepstrum (c25) in the
    kernel's distance, c0 (energy) weighing 1 and those between linearly in between (1 = all alike). The cepstra
    are standardised, so without it the high ones, which carry the spectrum's fine detail (pitch harmonics, noise)
    more than the vocal tract's shape, weigh as much as the low ones: cross-validated r German 0.50 -> 0.52,
    French 0.58 -> 0.62, LatentSync 0.20 -> 0.33, video-retalking 1 0.33 -> 0.34, and the mouth follows other
    voices' energy better (docs/quality.md)."""
    lip_kernel_phone_weight: float = 1.0
    """Ours (kernel lip predictor, ``phonetic`` features only): the weight of a row's six articulation values (the
    recognised phone's jaw opening, lip closure, ...; :mod:`gaussiantalker.audio.phonetic`) in the kernel's
    distance, beside its 26 MFCC values (docs/quality.md)."""
    lip_kernel_align: bool = True
    """Ours (kernel lip predictor): before the fit, measure how many frames (-6 .. +6) the clip's sound is off its
    picture, by cross-validation on the training frames, and fit the predictor on the audio read that much later or
    earlier, so that a clip whose sound is up to 240 ms off still teaches a mouth in step (a shift is taken only
    when clearly and steadily better; off: the audio as the dataset's transforms give it)."""
    lip_code_lr: float = 0.001
    """Ours (network lip predictor): learning rate of the audio -> lip-code predictor (AdamW, weight decay 0.01)."""
    lip_code_batch: int = 64
    """Ours (network lip predictor): training frames per step of the audio -> lip-code predictor (one step per iteration
    of both stages; it costs little next to a render)."""
    lip_code_noise: float = 0.1
    """Ours (lip-code models): std of the noise added to the tracked code the renderer is trained with (codes have
    unit variance), so that it tolerates the predicted codes' errors."""
    lip_code_predicted_share: float = 0.0
    """Ours (kernel lip predictor): the share of fine-stage frames that the renderer sees with their out-of-fold
    *predicted* lip code (from the predictor's 5-fold cross-validation, calibrated and clamped as at render time)
    instead of the tracked one, so that it also learns the codes it will get from audio (0 = tracked codes only)."""
    lip_basis_xyz_lr_scale: float = 1.0
    """Ours (``lip_blendshapes``): the position bases' learning rate as a fraction of the positions' own. Adam takes
    a full step for every element whatever its gradient, so at the positions' rate the bases of small Gaussians by
    the lips wander, and the widest mouths break into specks."""
    lip_code_augment: bool = True
    """Ours (lip-code models, mfcc features): the predictor also learns from the training audio with noise added and
    from silence / noise alone (-> the closed mouth): the kernel predictor fits them with the frames, the network
    one draws a quarter of each fine-stage batch from them."""
    lip_code_holdout: float = 0.1
    """Ours (network lip predictor): the last fraction of the training frames the predictor does not see in the coarse
    stage; its error there calibrates the amplitude of predicted codes (regression shrinks it)."""
    depth_fine_tuning: bool = True
    """Add 0.4 x L1 between the rendered alpha and the head mask (with real gradients)."""
    split_gs_in_fine_stage: bool = False
    """Also densify and prune in the fine stage."""
    canonical_tri_plane_factor_list: list[str] = field(default_factory=lambda: ["opacity", "shs"])
    """Attributes predicted by the tri-plane in the coarse stage (of scales, rotations, opacity, shs)."""
    train_l: list[str] = field(default_factory=lambda: [
        "xyz", "deformation", "grid", "f_dc", "f_rest", "opacity", "scaling", "rotation"])
    """Parameter groups that are optimised."""
    checkpoint_every: int = 1000
    """Ours: write a resumable checkpoint every this many (global) iterations, and always at the end."""
    seed: int = 6666
    """Ours: seed of every random choice (initial subset, sampler, dropout, splits)."""
    num_workers: int = -1
    """Ours: data-loading worker processes; -1 = 0 on CPU, 4 on CUDA."""
    log_every: int = 10
    """Ours: TensorBoard scalars every this many iterations."""
    preview_every: int = 500
    """Ours: TensorBoard preview images (GT | render | difference) every this many iterations."""
    tensorboard: bool = True
    """Ours: write TensorBoard logs to ``<model>/tensorboard`` when the ``tensorboard`` package is installed."""
    hash_check_every: int = 100
    """Ours (data-parallel runs): every this many iterations (and at the end) the ranks compare a hash of their
    parameters and stop with an error if they differ; 0 = never (``docs/distributed.md``)."""


_GROUPS = {
    "ModelParams": ("model", ModelParams),
    "OptimizationParams": ("optimization", OptimizationParams),
    "ModelHiddenParams": ("hidden", ModelHiddenParams),
    "PipelineParams": ("pipeline", PipelineParams),
}


@dataclass
class TrainConfig:
    """The full resolved configuration of a training run."""

    model: ModelParams = field(default_factory=ModelParams)
    """Scene and data loading."""
    optimization: OptimizationParams = field(default_factory=OptimizationParams)
    """Schedule, learning rates, losses, densification."""
    hidden: ModelHiddenParams = field(default_factory=ModelHiddenParams)
    """Deformation network."""
    pipeline: PipelineParams = field(default_factory=PipelineParams)
    """Rasterizer switches."""
    source: str = ""
    """Where the configuration came from (preset path or file), for the record."""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, keyed by the original's group names."""
        out: dict[str, Any] = {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, "source": self.source}
        for group, (attr, _) in _GROUPS.items():
            out[group] = dataclasses.asdict(getattr(self, attr))
        return out

    def to_json(self) -> str:
        """The configuration as plain JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "<dict>") -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown groups or keys raise :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: expected a JSON object, got {type(data).__name__}")
        groups = {}
        for key, value in data.items():
            if key in ("format", "version", "source"):
                continue
            if key not in _GROUPS:
                raise ConfigError(f"{origin}: unknown configuration group {key!r} (known: {', '.join(_GROUPS)})")
            groups[key] = value
        cfg = _build(groups, origin)
        cfg.source = str(data.get("source", ""))
        return cfg

    @classmethod
    def from_json(cls, text_or_path: str | PathLike) -> TrainConfig:
        """Read a configuration saved by :meth:`to_json` (a JSON string, or the path of a file)."""
        text = str(text_or_path)
        origin = "<json>"
        if not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            if not path.is_file():
                raise FileNotFoundError(f"configuration file {path} does not exist")
            origin, text = str(path), path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{origin}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, origin)

    def save(self, path: PathLike) -> Path:
        """Write :meth:`to_json` to ``path`` atomically."""
        from .fileio import atomic_write

        text = self.to_json()
        return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with fields replaced by plain field name (``iterations=100``); see :func:`load_config`."""
        cfg = TrainConfig.from_dict(self.to_dict(), self.source or "<config>")
        _apply_overrides(cfg, overrides)
        validate(cfg, cfg.source or "<config>")
        return cfg


def _coerce(value: Any, default: Any, key: str, origin: str) -> Any:
    """Check a value against the type of its default (ints accepted for floats)."""
    if default is None:
        if value is None or isinstance(value, str):
            return value
        raise ConfigError(f"{origin}: {key} must be a string or None, got {value!r}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{origin}: {key} must be True or False, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{origin}: {key} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{origin}: {key} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{origin}: {key} must be a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{origin}: {key} must be a list, got {value!r}")
        return list(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: {key} must be a dict, got {value!r}")
        unknown = set(value) - set(default)
        if unknown:
            raise ConfigError(f"{origin}: unknown key {min(unknown)!r} in {key}")
        return {**default, **value}
    return value


def _build(groups: dict[str, dict[str, Any]], origin: str) -> TrainConfig:
    cfg = TrainConfig()
    for group, values in groups.items():
        attr, klass = _GROUPS[group]
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: {group} must be a dict, got {type(values).__name__}")
        obj = getattr(cfg, attr)
        known = {f.name for f in fields(klass)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{origin}: unknown key {key!r} in {group}")
            setattr(obj, key, _coerce(value, getattr(obj, key), f"{group}.{key}", origin))
    validate(cfg, origin)
    return cfg


def _field_owner(cfg: TrainConfig, key: str) -> Any:
    owners = [getattr(cfg, attr) for attr, klass in _GROUPS.values() if key in {f.name for f in fields(klass)}]
    if not owners:
        raise ConfigError(f"unknown configuration key {key!r}")
    return owners[0]


def _apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        owner = _field_owner(cfg, key)
        setattr(owner, key, _coerce(value, getattr(owner, key), key, "override"))


def validate(cfg: TrainConfig, origin: str = "<config>") -> None:
    """Reject values this implementation cannot honour (:class:`ConfigError` naming the key)."""
    h, o, m = cfg.hidden, cfg.optimization, cfg.model

    def bad(key: str, why: str) -> None:
        raise ConfigError(f"{origin}: {key} {why}")

    kp = h.kplanes_config
    if kp.get("grid_dimensions") != 2:
        bad("kplanes_config.grid_dimensions", f"must be 2 (planes), got {kp.get('grid_dimensions')!r}")
    if kp.get("input_coordinate_dim") != 3:
        bad("kplanes_config.input_coordinate_dim", f"must be 3 (a tri-plane), got {kp.get('input_coordinate_dim')!r}")
    res = kp.get("resolution")
    if not isinstance(res, list) or len(res) != 3 or not all(isinstance(r, int) and r > 1 for r in res):
        bad("kplanes_config.resolution", f"must be three integers > 1, got {res!r}")
    channels = kp.get("output_coordinate_dim")
    if not isinstance(channels, int) or channels <= 0:
        bad("kplanes_config.output_coordinate_dim", f"must be a positive integer, got {channels!r}")
    if not h.multires or not all(isinstance(r, int) and r > 0 for r in h.multires):
        bad("ModelHiddenParams.multires", f"must be positive integers, got {h.multires!r}")
    if h.d_model != channels * len(h.multires):
        bad("ModelHiddenParams.d_model", f"must equal output_coordinate_dim x len(multires) = "
            f"{channels * len(h.multires)} (the tri-plane feature is the attention query), got {h.d_model}")
    if h.d_model % h.n_head:
        bad("ModelHiddenParams.n_head", f"must divide d_model {h.d_model}, got {h.n_head}")
    for key in ("no_grid", "empty_voxel", "static_mlp", "apply_rotation"):
        if getattr(h, key):
            bad(f"ModelHiddenParams.{key}", "=True is not supported (the original's unused or disabled path)")
    if o.add_point:
        bad("OptimizationParams.add_point", "=True is not supported (the original's code path is broken)")
    if h.defor_depth < 1 or h.net_width < 1 or h.n_layer < 1 or h.ffn_hidden < 1:
        bad("ModelHiddenParams", "defor_depth, net_width, n_layer and ffn_hidden must be positive")
    if not 0.0 <= h.drop_prob < 1.0:
        bad("ModelHiddenParams.drop_prob", f"must be in [0, 1), got {h.drop_prob}")
    if not 0 <= h.lip_code_dim <= 8:
        bad("ModelHiddenParams.lip_code_dim", f"must be 0..8, got {h.lip_code_dim}")
    if h.lip_blendshapes and not h.lip_code_dim:
        bad("ModelHiddenParams.lip_blendshapes", "needs a lip code (lip_code_dim > 0)")
    if h.lip_predictor not in ("kernel", "network"):
        bad("ModelHiddenParams.lip_predictor", f"must be 'kernel' or 'network', got {h.lip_predictor!r}")
    if o.open_mouth_repeat < 1:
        bad("OptimizationParams.open_mouth_repeat", f"must be >= 1, got {o.open_mouth_repeat}")
    if not o.lip_basis_xyz_lr_scale >= 0.0:
        bad("OptimizationParams.lip_basis_xyz_lr_scale", f"must be >= 0, got {o.lip_basis_xyz_lr_scale}")
    if not 0.0 <= o.lip_code_predicted_share <= 1.0:
        bad("OptimizationParams.lip_code_predicted_share", f"must be in [0, 1], got {o.lip_code_predicted_share}")
    if not o.lip_kernel_ridge > 0:
        bad("OptimizationParams.lip_kernel_ridge", f"must be > 0, got {o.lip_kernel_ridge}")
    if not 0.0 < o.lip_kernel_taper <= 1.0:
        bad("OptimizationParams.lip_kernel_taper", f"must be in (0, 1], got {o.lip_kernel_taper}")
    if not o.lip_kernel_phone_weight >= 0:
        bad("OptimizationParams.lip_kernel_phone_weight", f"must be >= 0, got {o.lip_kernel_phone_weight}")
    if o.lip_kernel_centres < 16:
        bad("OptimizationParams.lip_kernel_centres", f"must be >= 16, got {o.lip_kernel_centres}")
    if not 0.0 <= o.lip_code_holdout < 0.5:
        bad("OptimizationParams.lip_code_holdout", f"must be in [0, 0.5), got {o.lip_code_holdout}")
    unknown = set(o.canonical_tri_plane_factor_list) - {"scales", "rotations", "opacity", "shs"}
    if unknown:
        bad("OptimizationParams.canonical_tri_plane_factor_list", f"has unknown entry {min(unknown)!r}")
    unknown = set(o.train_l) - {"xyz", "deformation", "grid", "f_dc", "f_rest", "opacity", "scaling", "rotation"}
    if unknown:
        bad("OptimizationParams.train_l", f"has unknown group {min(unknown)!r}")
    if not 0 <= m.sh_degree <= 3:
        bad("ModelParams.sh_degree", f"must be 0..3, got {m.sh_degree}")
    if m.resolution != -1 and m.resolution < 16:
        bad("ModelParams.resolution", f"must be -1 or at least 16, got {m.resolution}")
    for key in ("iterations", "coarse_iterations", "max_points", "checkpoint_every", "log_every", "preview_every",
                "hash_check_every"):
        owner = o if hasattr(o, key) else m
        if getattr(owner, key) < 0:
            bad(key, f"must not be negative, got {getattr(owner, key)}")
    if o.batch_size < 1:
        bad("OptimizationParams.batch_size", f"must be at least 1, got {o.batch_size}")


# --------------------------------------------------------------------------------------------- files


def _literal(node: ast.AST, path: Path, what: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError as exc:
        raise ConfigError(f"{path}:{node.lineno}: {what} is not a literal value ({exc})") from exc


def parse_config_file(path: PathLike) -> dict[str, dict[str, Any]]:
    """The literal groups of a config file (``Name = dict(key=literal, ...)`` or ``Name = {...}``).

    The file is parsed, never executed. Raises :class:`ConfigError` (naming the file and line) for
    anything else: unknown group names, non-literal values, other statements.
    """
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise ConfigError(f"{path}: not a valid config file ({exc})") from exc
    groups: dict[str, dict[str, Any]] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            continue  # a docstring
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise ConfigError(f"{path}:{stmt.lineno}: only `GroupName = dict(...)` assignments are allowed")
        name = stmt.targets[0].id
        if name not in _GROUPS:
            raise ConfigError(f"{path}:{stmt.lineno}: unknown configuration group {name!r} "
                              f"(known: {', '.join(_GROUPS)})")
        value = stmt.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict":
            if value.args:
                raise ConfigError(f"{path}:{stmt.lineno}: {name} = dict(...) takes keyword arguments only")
            entries = {}
            for kw in value.keywords:
                if kw.arg is None:
                    raise ConfigError(f"{path}:{stmt.lineno}: {name}: `**` is not allowed in a config file")
                entries[kw.arg] = _literal(kw.value, path, f"{name}.{kw.arg}")
        elif isinstance(value, ast.Dict):
            entries = _literal(value, path, name)
        else:
            raise ConfigError(f"{path}:{stmt.lineno}: {name} must be dict(...) or a {{...}} literal")
        groups.setdefault(name, {}).update(entries)
    return groups


def preset_dir() -> Path:
    """Folder of the bundled presets: ``<package>/configs`` when installed, else ``<repo>/configs``."""
    package = Path(__file__).resolve().parent
    installed = package / "configs"
    if installed.is_dir():
        return installed
    return package.parent / "configs"


def list_presets() -> list[str]:
    """Names (file stems) of the bundled presets."""
    folder = preset_dir()
    return sorted(p.stem for p in folder.glob("*.py")) if folder.is_dir() else []


def resolve_config(name_or_path: PathLike) -> Path:
    """The config file meant by ``name_or_path``: an existing file, else a bundled preset by file stem.

    ``64_dim_1_transformer``, ``configs/64_dim_1_transformer.py`` and the old wrapper's
    ``arguments/64_dim_1_transformer.py`` all resolve to the bundled preset from any directory.
    Raises FileNotFoundError listing the presets.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    stem = path.stem if path.suffix in (".py", ".json") else path.name
    candidate = preset_dir() / f"{stem}.py"
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(
        f"config {str(name_or_path)!r} is neither a file nor a bundled preset "
        f"(presets: {', '.join(list_presets()) or 'none found in ' + str(preset_dir())})"
    )


def load_config(name_or_path: PathLike | None = None, **overrides: Any) -> TrainConfig:
    """Load a config file (``.py`` literal groups, or a saved ``config.json``) or a preset, then apply
    ``overrides`` by plain field name (``load_config("cpu_small", iterations=100)``).

    ``None`` loads the default preset (``64_dim_1_transformer``). Raises :class:`ConfigError` for unknown
    keys (naming the key and the file) or unsupported values, FileNotFoundError for a missing file.
    """
    path = resolve_config(DEFAULT_PRESET if name_or_path is None else name_or_path)
    if path.suffix == ".json":
        cfg = TrainConfig.from_json(path)
    else:
        cfg = _build(parse_config_file(path), str(path))
        cfg.source = str(path)
    if overrides:
        try:
            _apply_overrides(cfg, overrides)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        validate(cfg, str(path))
    return cfg


__all__ = [
    "DEFAULT_PRESET",
    "ConfigError",
    "ModelHiddenParams",
    "ModelParams",
    "OptimizationParams",
    "PipelineParams",
    "TrainConfig",
    "list_presets",
    "load_config",
    "parse_config_file",
    "preset_dir",
    "resolve_config",
    "validate",
]

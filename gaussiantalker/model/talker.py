"""The GaussianTalker model: canonical Gaussians, tri-plane, condition encoders, attention, offset heads.

Stages (reference §4.2, §5.5):

* ``coarse``: positions, scales and rotations are free per-Gaussian parameters; the attributes named in
  ``canonical_tri_plane_factor_list`` (by default opacity and SH) are predicted by MLP heads from the
  tri-plane feature of each Gaussian's position. No conditions.
* ``fine``: :meth:`GaussianTalkerModel.start_fine` materialises the tri-plane predictions as free
  parameters; the tri-plane feature becomes the query of the spatial-audio attention over the tokens
  (audio, eye, camera, null), and five heads add offsets to position, log-scale, quaternion, opacity logit
  and SH. The heads' last layers start at zero, so an untrained deformation is exactly the identity.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from ..config import TrainConfig
from .networks import (
    AudioEncoder,
    EyeEncoder,
    SpatialAudioAttention,
    fuse_heads,
    head,
    init_linear,
    mlp,
    run_heads,
    small_last_linear,
    zero_last_linear,
)
from .lipkernel import KernelLipPredictor
from .triplane import TriPlane
from .types import Conditions, GaussianBatch, rgb_to_sh

Tensor = torch.Tensor
log = logging.getLogger(__name__)

#: Per-Gaussian parameters, in the order of the PLY file (optimizer group names in brackets).
GAUSSIAN_PARAMS = ("xyz", "features_dc", "features_rest", "opacity", "scaling", "rotation")
#: Lip blendshapes (``ModelHiddenParams.lip_blendshapes``): per-Gaussian ``[N, K, C]`` bases, by name -> (C, the
#: attribute they move, the optimizer group whose learning rate they take). Stored in ``deformation.pth``, not the PLY.
LIP_BASES = {"lip_basis_xyz": (3, "xyz", "xyz"), "lip_basis_dc": (3, "features_dc", "f_dc"),
             "lip_basis_opacity": (1, "opacity", "opacity")}
#: The per-Gaussian tensors of a lip-blendshape model's fine stage beside GAUSSIAN_PARAMS: the bases and their mask.
LIP_ROWS = (*LIP_BASES, "lip_mask")
#: The fine-stage offset heads and their output sizes.
OFFSET_HEADS = {"dx": 3, "ds": 3, "dr": 4, "do": 1, "dshs": 48}
_HEAD_FLAG = {"dx": "no_dx", "ds": "no_ds", "dr": "no_dr", "do": "no_do", "dshs": "no_dshs"}
_FACTOR_DIM = {"scales": 3, "rotations": 4, "opacity": 1, "shs": 48}
#: The offset heads added to a per-Gaussian parameter as they are ("dshs" is reshaped to the SH layout).
_OFFSET_TARGET = {"dx": "xyz", "ds": "scaling", "dr": "rotation", "do": "opacity"}
STAGES = ("coarse", "fine")


class GaussianTalkerModel(nn.Module):
    """All learnable state of one talking-head model.

    Build one with :meth:`from_point_cloud` (training) or ``GaussianTalkerModel(config, audio_dim, n)``
    followed by ``load_state_dict`` (loading). Per-Gaussian parameters: ``xyz [N,3]``,
    ``features_dc [N,1,3]``, ``features_rest [N,15,3]``, ``opacity [N,1]`` (logit), ``scaling [N,3]``
    (log), ``rotation [N,4]`` (w,x,y,z, unnormalised).
    """

    def __init__(self, config: TrainConfig, audio_dim: int, num_points: int) -> None:
        super().__init__()
        h, o = config.hidden, config.optimization
        self.max_sh_degree = int(config.model.sh_degree)
        self.audio_dim = int(audio_dim)
        self.factors = tuple(f for f in ("scales", "rotations", "opacity", "shs")
                             if f in o.canonical_tri_plane_factor_list)
        n, k = int(num_points), (self.max_sh_degree + 1) ** 2
        self.xyz = nn.Parameter(torch.zeros(n, 3))
        self.features_dc = nn.Parameter(torch.zeros(n, 1, 3))
        self.features_rest = nn.Parameter(torch.zeros(n, k - 1, 3))
        self.opacity = nn.Parameter(torch.zeros(n, 1))
        self.scaling = nn.Parameter(torch.zeros(n, 3))
        self.rotation = nn.Parameter(torch.zeros(n, 4))
        self.register_buffer("active_sh_degree", torch.tensor(0, dtype=torch.long))
        self.register_buffer("fine_ready", torch.tensor(False))

        kp = h.kplanes_config
        self.triplane = TriPlane(kp["output_coordinate_dim"], kp["resolution"], h.multires)
        d = self.triplane.out_dim
        # Coarse stage: tri-plane feature -> MLP -> the canonical attribute heads.
        self.feature_out = mlp([d] + [h.net_width] * h.defor_depth)
        self.canonical_heads = nn.ModuleDict({f: head(h.net_width, h.net_width, _FACTOR_DIM[f]) for f in self.factors})
        # Fine stage: condition encoders, attention, offset heads.
        self.lip_dim = int(h.lip_code_dim)
        self.lip_kernel = self.lip_dim > 0 and h.lip_predictor == "kernel"
        if not self.lip_kernel:  # the original's audio encoder (or the network lip predictor's trunk)
            self.audio_encoder = AudioEncoder(self.audio_dim, h.d_model)
        self.eye_encoder = EyeEncoder(h.d_model)
        self.cam_encoder = mlp([12, 64, h.d_model], bias=False)
        self.null_token = nn.Parameter(torch.randn(1, 1, h.d_model))
        self.attention = SpatialAudioAttention(h.d_model, h.n_head, h.ffn_hidden, h.n_layer, h.drop_prob)
        # Lip-code models: audio -> predicted lip code (taught by the tracked landmarks), code -> the first token.
        self.cam_token = bool(h.cam_token)
        if self.lip_kernel:
            self.lip_regression = KernelLipPredictor(self.audio_dim, self.lip_dim)
        elif self.lip_dim:
            self.lip_predictor = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(h.d_model, self.lip_dim))
        if self.lip_dim:
            self.lip_encoder = mlp([self.lip_dim, 64, h.d_model], bias=False)
            # Calibration of predicted codes (set by the trainer): centre + gain * (p - centre), clamped to the
            # tracked codes' range. Regression toward the mean shrinks a predictor's swing on unseen audio.
            self.register_buffer("lip_center", torch.zeros(self.lip_dim))
            self.register_buffer("lip_gain", torch.ones(self.lip_dim))
            self.register_buffer("lip_low", torch.full((self.lip_dim,), -4.0))
            self.register_buffer("lip_high", torch.full((self.lip_dim,), 4.0))
            # The subject's closed-mouth code (set by the trainer): renders close the predicted mouth toward it where
            # the driving audio is silent (gate_lips). NaN (models saved before it): no gate.
            self.register_buffer("lip_closed", torch.full((self.lip_dim,), float("nan")))
            # 1: renders close the mouth in silences unless told otherwise; 0: only when asked (the trainer's choice:
            # a subject who holds the mouth open in its own pauses is rendered so)
            self.register_buffer("lip_gate", torch.zeros(()))
        # Per-coefficient mean / std of the training clip's audio features (set by the trainer): renders can
        # bring another voice's features to the same statistics (see gaussiantalker.infer).
        self.register_buffer("audio_mean", torch.zeros(self.audio_dim))
        self.register_buffer("audio_std", torch.ones(self.audio_dim))
        #: per-Gaussian linear responses to the lip code (fine stage; zero until trained): see ``LIP_BASES``
        self.lip_blend = bool(h.lip_blendshapes) and self.lip_dim > 0
        if self.lip_blend:
            self._new_bases(n)
        self.offset_heads = nn.ModuleDict({
            name: head(h.d_model, h.net_width, dim) for name, dim in OFFSET_HEADS.items()
            if not getattr(h, _HEAD_FLAG[name])
        })
        init_linear(self)
        for seq in self.canonical_heads.values():
            small_last_linear(seq, 0.1)
        for seq in self.offset_heads.values():
            zero_last_linear(seq)
        self._cache: tuple[tuple, Tensor] | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_point_cloud(cls, xyz: Tensor, rgb: Tensor | None, config: TrainConfig, audio_dim: int,
                         generator: torch.Generator | None = None) -> GaussianTalkerModel:
        """Initial model from a point cloud ``xyz [N,3]`` (scene units) with colours ``rgb [N,3]`` in [0,1]
        (None: grey). At most ``config.model.max_points`` points are kept (a random subset drawn with
        ``generator``); scales from the mean squared distance to the 3 nearest neighbours (simple-knn);
        rotation identity; opacity logit(0.1); the tri-plane box is the points' bounding box."""
        from simple_knn import distCUDA2

        if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] < 1:
            raise ValueError(f"xyz must have shape [N, 3] with N >= 1, got {tuple(xyz.shape)}")
        xyz = xyz.detach().to("cpu", torch.float32)
        rgb = torch.full_like(xyz, 0.5) if rgb is None else rgb.detach().to("cpu", torch.float32)
        if rgb.shape != xyz.shape:
            raise ValueError(f"rgb must have shape {tuple(xyz.shape)}, got {tuple(rgb.shape)}")
        limit = int(config.model.max_points)
        if 0 < limit < xyz.shape[0]:
            keep = torch.randperm(xyz.shape[0], generator=generator)[:limit].sort().values
            xyz, rgb = xyz[keep], rgb[keep]
        model = cls(config, audio_dim, xyz.shape[0])
        dist2 = distCUDA2(xyz).clamp_min(1e-7)
        with torch.no_grad():
            model.xyz.copy_(xyz)
            model.features_dc.copy_(rgb_to_sh(rgb).unsqueeze(1))
            model.scaling.copy_(torch.log(torch.sqrt(dist2)).unsqueeze(-1).repeat(1, 3))
            model.rotation.zero_()
            model.rotation[:, 0] = 1.0
            model.opacity.fill_(math.log(0.1 / 0.9))
        model.triplane.set_aabb(xyz)
        return model

    @property
    def num_points(self) -> int:
        return int(self.xyz.shape[0])

    @property
    def clip_shift(self) -> int:
        """Frames by which the training clip's sound lagged (> 0) or led its picture, as the kernel lip predictor's fit
        measured it (0 for other models): renders of the clip's own audio read it shifted by this much
        (``TalkingHeadData.audio_shift``); a new audio is read as it is."""
        return int(self.lip_regression.clip_shift) if self.lip_kernel else 0

    def gaussian_parameters(self) -> dict[str, nn.Parameter]:
        """The per-Gaussian parameters by name (rows = Gaussians), the lip bases included once the fine stage has
        them (densification and pruning edit them all)."""
        names = GAUSSIAN_PARAMS + (LIP_ROWS if self.lip_blend and bool(self.fine_ready) else ())
        return {name: getattr(self, name) for name in names}

    def replace_gaussian_parameters(self, tensors: dict[str, Tensor]) -> dict[str, nn.Parameter]:
        """Swap in new per-Gaussian tensors (after densify / prune); returns the new Parameters."""
        out = {}
        for name, value in tensors.items():
            if name not in GAUSSIAN_PARAMS and not (self.lip_blend and name in LIP_ROWS):
                raise ValueError(f"unknown per-Gaussian parameter {name!r}")
            param = nn.Parameter(value.detach().contiguous(), requires_grad=getattr(self, name).requires_grad)
            setattr(self, name, param)
            out[name] = param
        self._cache = None
        return out

    @staticmethod
    def adapt_config(config: TrainConfig, state: dict[str, Tensor]) -> TrainConfig:
        """``config`` as the saved ``state`` needs it: lip-code models saved before the kernel predictor (their
        state has the network predictor's ``lip_predictor.*``) keep ``lip_predictor = "network"``."""
        if config.hidden.lip_code_dim and config.hidden.lip_predictor == "kernel" \
                and any(k.startswith("lip_predictor.") for k in state):
            config.hidden.lip_predictor = "network"
        return config

    def resize_for_state(self, state: dict[str, Tensor]) -> None:
        """Give the per-Gaussian parameters the row count of ``state`` (before ``load_state_dict``)."""
        n = int(state["xyz"].shape[0])
        if self.lip_blend and "lip_basis_xyz" in state and int(state["lip_basis_xyz"].shape[0]) != self.lip_basis_xyz.shape[0]:
            self._new_bases(int(state["lip_basis_xyz"].shape[0]))
        if n != self.num_points:
            self.replace_gaussian_parameters({name: state[name].new_zeros(state[name].shape).to(
                getattr(self, name).device) for name in GAUSSIAN_PARAMS})

    # ------------------------------------------------------------------ parameter groups

    def parameter_groups(self, stage: str) -> dict[str, list]:
        """Parameters trained in ``stage``, by the original's optimizer group names (reference §4.3)."""
        groups: dict[str, list] = {"xyz": [self.xyz], "grid": list(self.triplane.planes()), "scaling": [self.scaling],
                                   "rotation": [self.rotation]}
        if stage == "coarse":
            groups["deformation"] = list(self.feature_out.parameters()) + list(self.canonical_heads.parameters())
            if "scales" in self.factors:
                del groups["scaling"]
            if "rotations" in self.factors:
                del groups["rotation"]
            if "opacity" not in self.factors:
                groups["opacity"] = [self.opacity]
            if "shs" not in self.factors:
                groups["f_dc"], groups["f_rest"] = [self.features_dc], [self.features_rest]
        elif stage == "fine":
            # A lip-code model trains its audio path with its own optimizer (lip_parameters), in both stages.
            first = list(self.lip_encoder.parameters()) if self.lip_dim else list(self.audio_encoder.parameters())
            groups["deformation"] = (first + list(self.eye_encoder.parameters())
                                     + list(self.cam_encoder.parameters()) + [self.null_token]
                                     + list(self.attention.parameters()) + list(self.offset_heads.parameters()))
            groups.update(opacity=[self.opacity], f_dc=[self.features_dc], f_rest=[self.features_rest])
            if self.lip_blend:  # each basis in a group of its own (one parameter per group, as densification needs)
                groups.update({name: [getattr(self, name)] for name in LIP_BASES})
        else:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        return groups

    # ------------------------------------------------------------------ forward

    def triplane_features(self) -> Tensor:
        """Tri-plane feature of every canonical Gaussian, ``[N, d_model]``; cached in eval mode."""
        if self.training or torch.is_grad_enabled():
            return self.triplane(self.xyz)
        params = [self.xyz] + self.triplane.planes()
        key = tuple((p.data_ptr(), p._version) for p in params) + (str(self.xyz.device),)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.triplane(self.xyz))
        return self._cache[1]

    def canonical_attributes(self) -> dict[str, Tensor]:
        """Raw (pre-activation) canonical attributes ``[N, ...]``. Before :meth:`start_fine`: the tri-plane
        predictions for the factors in ``canonical_tri_plane_factor_list``, the free parameters for the
        others; after it, the free parameters."""
        out = {"xyz": self.xyz, "scaling": self.scaling, "rotation": self.rotation, "opacity": self.opacity,
               "shs": torch.cat([self.features_dc, self.features_rest], dim=1)}
        if not self.factors or bool(self.fine_ready):
            return out
        hidden = self.feature_out(self.triplane(self.xyz))  # [N, net_width]
        n = self.num_points
        if "scales" in self.factors:
            out["scaling"] = self.canonical_heads["scales"](hidden) - 2.0  # the original's offset
        if "rotations" in self.factors:
            out["rotation"] = self.canonical_heads["rotations"](hidden)
        if "opacity" in self.factors:
            out["opacity"] = self.canonical_heads["opacity"](hidden)
        if "shs" in self.factors:
            shs = self.canonical_heads["shs"](hidden).view(n, 16, 3)
            out["shs"] = shs[:, : (self.max_sh_degree + 1) ** 2]
        return out

    @torch.no_grad()
    def start_fine(self) -> None:
        """Materialise the last coarse prediction as the free fine-stage parameters (idempotent)."""
        if bool(self.fine_ready):
            return
        attrs = self.canonical_attributes()
        self.scaling.copy_(attrs["scaling"])
        self.rotation.copy_(attrs["rotation"])
        self.opacity.copy_(attrs["opacity"])
        self.features_dc.copy_(attrs["shs"][:, :1])
        self.features_rest.copy_(attrs["shs"][:, 1:])
        if self.lip_blend:  # the coarse stage densified and pruned: one zero basis per Gaussian now
            self._new_bases(self.num_points)
        self.fine_ready.fill_(True)
        self._cache = None

    def _new_bases(self, n: int) -> None:
        """Zero lip bases for ``n`` Gaussians (``LIP_BASES``), all of them in the mouth region (``lip_mask``)."""
        for name, (c, _, _) in LIP_BASES.items():
            setattr(self, name, nn.Parameter(torch.zeros(n, self.lip_dim, c, device=self.xyz.device)))
        #: ``[N, 1]`` 1 for the Gaussians whose bases act (the mouth region the trainer finds), 0 elsewhere; a
        #: per-Gaussian tensor (densification and pruning edit it with the others), never trained
        self.lip_mask = nn.Parameter(torch.ones(n, 1, device=self.xyz.device), requires_grad=False)

    @torch.no_grad()
    def set_lip_region(self, inside: Tensor) -> None:
        """Let the lip bases act on the Gaussians ``inside`` (bool ``[N]``) only."""
        if not self.lip_blend:
            raise ValueError("this model has no lip blendshapes (ModelHiddenParams.lip_blendshapes)")
        if inside.shape != (self.num_points,):
            raise ValueError(f"expected a mask of {self.num_points} Gaussians, got {tuple(inside.shape)}")
        self.lip_mask.copy_(inside.reshape(-1, 1).to(self.lip_mask))

    def lip_parameters(self) -> list[nn.Parameter]:
        """The network audio -> lip-code predictor's parameters ([] for other models: the kernel predictor is
        fitted in closed form, see :class:`KernelLipPredictor`)."""
        if not self.lip_dim or self.lip_kernel:
            return []
        return list(self.audio_encoder.parameters()) + list(self.lip_predictor.parameters())

    def predict_lips(self, audio: Tensor) -> Tensor:
        """Raw lip codes predicted from audio windows ``[B, 8, 16, D]`` -> ``[B, K]`` (lip-code models)."""
        if not self.lip_dim:
            raise ValueError("this model has no lip code (ModelHiddenParams.lip_code_dim = 0)")
        if self.lip_kernel:
            return self.lip_regression(audio)
        token, _ = self.audio_encoder(audio)
        return self.lip_predictor(token)

    def lip_code(self, audio: Tensor) -> Tensor:
        """The calibrated code a render uses: ``clamp(centre + gain * (predicted - centre), low, high)``, ``[B, K]``."""
        return self.calibrate_lips(self.predict_lips(audio))

    def calibrate_lips(self, predicted: Tensor) -> Tensor:
        """Raw predicted codes ``[B, K]`` -> the calibrated codes a render uses (see :meth:`lip_code`)."""
        return self.clamp_lips(self.lip_center + self.lip_gain * (predicted - self.lip_center))

    def clamp_lips(self, code: Tensor) -> Tensor:
        """Codes ``[B, K]`` held inside the tracked codes' range (``lip_low`` .. ``lip_high``)."""
        return torch.maximum(torch.minimum(code, self.lip_high), self.lip_low)

    def condition_code(self, cond: Conditions) -> Tensor:
        """The lip code ``[B, K]`` a render of ``cond`` uses: ``cond.lips`` when given, else the one the audio predicts
        (closed where ``cond.voice`` says the audio is silent: :meth:`gate_lips`)."""
        if cond.lips is not None:
            return cond.lips[:, : self.lip_dim]
        code = self.lip_code(cond.audio)
        return code if cond.voice is None else self.gate_lips(code, cond.voice)

    @property
    def has_silence_gate(self) -> bool:
        """Whether this model knows its subject's closed mouth (lip-code models trained since 2026-12-07)."""
        return bool(self.lip_dim) and bool(torch.isfinite(self.lip_closed).all())

    @property
    def closes_in_silence(self) -> bool:
        """Whether renders close the mouth in the driving audio's silences by default: the trainer's choice
        (``Trainer._choose_silence_gate``); a render may ask otherwise (``Talker.close_in_silence``)."""
        return self.has_silence_gate and float(self.lip_gate) > 0.5

    def gate_lips(self, code: Tensor, voice: Tensor) -> Tensor:
        """Codes ``[B, K]`` closed by voice activity ``[B]`` in [0, 1]: ``closed + voice * (code - closed)`` (1 = as
        given, 0 = the subject's closed mouth); unchanged for a model without :attr:`has_silence_gate`."""
        if not self.has_silence_gate:
            return code
        v = voice.reshape(-1, 1).to(code)
        return self.lip_closed + v * (code - self.lip_closed)

    def blend_offsets(self, code: Tensor, start: int = 0, stop: int | None = None) -> dict[str, Tensor]:
        """The lip blendshapes' offsets for codes ``[B, K]`` of Gaussians ``start:stop``, by the attribute they move
        (``xyz [B, n, 3]``, ``features_dc [B, n, 3]``, ``opacity [B, n, 1]``). The code is held inside the tracked
        codes' range (``lip_low`` .. ``lip_high``, as a predicted code is): a linear basis fitted there scatters the
        mouth's Gaussians when driven far past it (a tracked code wider than any training frame's)."""
        code = self.clamp_lips(code)
        mask = self.lip_mask[start:stop]
        return {attr: torch.einsum("bk,nkc->bnc", code, getattr(self, name)[start:stop]) * mask
                for name, (_, attr, _) in LIP_BASES.items()}

    def encode_conditions(self, cond: Conditions, code: Tensor | None = None) -> Tensor:
        """The condition tokens ``[B, 4, d_model]``: audio (or lip code), eye, camera, null. ``code``: the lip code,
        when the caller has it already (see :meth:`condition_code`)."""
        if self.lip_dim:
            audio = self.lip_encoder(self.condition_code(cond) if code is None else code)
        else:
            audio, _ = self.audio_encoder(cond.audio)
        eye = self.eye_encoder(cond.eye)
        cam = self.cam_encoder(cond.cam if self.cam_token else torch.zeros_like(cond.cam))  # bias-free: 0 -> 0
        null = self.null_token.expand(cond.batch_size, 1, -1)
        return torch.cat([audio.unsqueeze(1), eye.unsqueeze(1), cam.unsqueeze(1), null], dim=1)

    def deform(self, stage: str, cond: Conditions | None = None) -> GaussianBatch:
        """The Gaussians of ``stage`` for a batch of conditions.

        ``coarse``: the canonical Gaussians (conditions are optional and only set the batch size B; the
        tensors are expanded, not copied). ``fine``: the canonical Gaussians plus the offsets predicted
        from ``cond`` (required); raises ValueError before :meth:`start_fine`.
        """
        sh_degree = min(int(self.active_sh_degree), self.max_sh_degree)
        if stage == "coarse":
            a = self.canonical_attributes()
            b = 1 if cond is None else cond.batch_size
            return _activate(a["xyz"], a["scaling"], a["rotation"], a["opacity"], a["shs"], sh_degree, None, b)
        if stage != "fine":
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if not bool(self.fine_ready):
            raise ValueError("the fine stage needs start_fine() first (the model has not finished its coarse stage)")
        if cond is None:
            raise ValueError("the fine stage needs Conditions (audio, eye, cam)")
        if cond.audio.shape[-1] != self.audio_dim:
            raise ValueError(f"audio features have dimension {cond.audio.shape[-1]}, the model was trained "
                             f"on {self.audio_dim}")
        if not self.training and not torch.is_grad_enabled():
            return self._deform_blocks(cond, sh_degree)
        b, n = cond.batch_size, self.num_points
        code = self.condition_code(cond) if self.lip_dim else None
        tokens = self.encode_conditions(cond, code)
        h, attention = self.attention(self.triplane_features(), tokens)  # [B, N, d], [B, L, N, 4]
        shs = torch.cat([self.features_dc, self.features_rest], dim=1)
        attrs = {name: getattr(self, name) for name in _OFFSET_TARGET.values()}
        # Each head on its own here: with autograd, the backward of slices of one fused product would allocate
        # the whole [B, N, 5 x 128] gradient once per head (training measured 1.6x slower per step).
        heads = {name: seq(h) for name, seq in self.offset_heads.items()}
        for head_name, attr in _OFFSET_TARGET.items():
            if head_name in heads:
                attrs[attr] = attrs[attr] + heads[head_name]
        if "dshs" in heads:
            shs = shs + heads["dshs"].view(b, n, 16, 3)[:, :, : shs.shape[1]]
        if self.lip_blend:
            blend = self.blend_offsets(code)
            attrs["xyz"] = attrs["xyz"] + blend["xyz"]
            attrs["opacity"] = attrs["opacity"] + blend["opacity"]
            shs = _batched(shs, b, 3)
            shs = torch.cat([shs[:, :, :1] + blend["features_dc"].unsqueeze(2), shs[:, :, 1:]], dim=2)
        return _activate(attrs["xyz"], attrs["scaling"], attrs["rotation"], attrs["opacity"], shs, sh_degree,
                         attention, b)

    #: Gaussians per block in :meth:`_deform_blocks` (rows of its matrix products; their intermediates, up to
    #: ``block x 640`` floats, stay in the CPU's cache instead of streaming ``B x N x 640`` through memory).
    BLOCK = 8192

    def _deform_blocks(self, cond: Conditions, sh_degree: int) -> GaussianBatch:
        """The fine-stage deformation for inference (no autograd, eval mode): the same function as the batched
        form, computed frame by frame over blocks of Gaussians (on a GPU, one block). Faster on a CPU
        (cache-sized products, no ``[B, N, 640]`` intermediates), and each frame's pixels do not depend on the
        batch it is rendered in (every product has the same shape whatever B is)."""
        b, n = cond.batch_size, self.num_points
        layers = list(self.attention.layers)
        # Frame by frame also for the condition encoders: matrix kernels for a handful of rows round differently
        # for different row counts, so a batched encoder would make a frame's pixels depend on its batch.
        sides = []  # per frame, per layer: keys [1, d, 8], values [1, 8, d]
        codes = []  # per frame, its lip code [1, K] (lip-code models)
        for i in range(b):
            row = cond.rows(i, i + 1)
            codes.append(self.condition_code(row) if self.lip_dim else None)
            tokens = self.encode_conditions(row, codes[-1])
            sides.append([layer.token_side(tokens) for layer in layers])
        feats = self.triplane_features()  # [N, d]
        heads = self.offset_heads
        fused = fuse_heads(heads) if len(heads) else None
        # [B, N, ...]: the canonical values, the offsets added block by block below
        attrs = {name: getattr(self, name).unsqueeze(0).repeat(b, 1, 1) for name in _OFFSET_TARGET.values()}
        shs = torch.cat([self.features_dc, self.features_rest], dim=1).unsqueeze(0).repeat(b, 1, 1, 1)
        k = shs.shape[2]  # SH coefficients kept
        attention = shs.new_empty(b, len(layers), n, 4)  # [B, L, N, 4 tokens]
        # On a GPU one block of all Gaussians per frame: the products are big enough, and fewer launches.
        block = self.BLOCK if self.xyz.device.type == "cpu" else max(n, 1)
        for s in range(0, n, block):
            e = min(s + block, n)
            x0 = feats[s:e]
            q0 = layers[0].q(x0) if layers else None  # the first layer's query is shared by the frames
            for i in range(b):
                x = x0
                for li, (layer, (kmat, u)) in enumerate(zip(layers, sides[i])):
                    x, att = layer.gaussian_side(x, kmat[0], u[0], q0 if li == 0 else None)
                    attention[i, li, s:e] = att
                if fused is not None:
                    out = run_heads(heads, x, fused)
                    for head_name, attr in _OFFSET_TARGET.items():
                        if head_name in out:
                            attrs[attr][i, s:e] += out[head_name]
                    if "dshs" in out:
                        shs[i, s:e] += out["dshs"].view(e - s, 16, 3)[:, :k]
                if self.lip_blend:  # added after the heads, in the batched form's order
                    blend = self.blend_offsets(codes[i], s, e)
                    attrs["xyz"][i, s:e] += blend["xyz"][0]
                    attrs["opacity"][i, s:e] += blend["opacity"][0]
                    shs[i, s:e, 0] += blend["features_dc"][0]
        # Activations frame by frame too: vectorised exp / sigmoid round their last partial SIMD block differently
        # from full blocks, so a [B, N] tensor would give a frame other bits than its own [1, N] one (1 ulp,
        # seen with AVX-512 and N = 600).
        frames = [_activate(attrs["xyz"][i:i + 1], attrs["scaling"][i:i + 1], attrs["rotation"][i:i + 1],
                            attrs["opacity"][i:i + 1], shs[i:i + 1], sh_degree, None, 1) for i in range(b)]
        return GaussianBatch(
            means=torch.cat([f.means for f in frames]), scales=torch.cat([f.scales for f in frames]),
            rotations=torch.cat([f.rotations for f in frames]), opacities=torch.cat([f.opacities for f in frames]),
            shs=torch.cat([f.shs for f in frames]), sh_degree=sh_degree, attention=attention)

    def train(self, mode: bool = True) -> GaussianTalkerModel:
        self._cache = None
        return super().train(mode)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._cache = None
        for name in ("audio_mean", "audio_std"):  # models saved before these buffers existed: no normalisation
            state_dict.setdefault(prefix + name, getattr(self, name).detach().clone())
        if self.lip_dim:  # lip-code models saved before the silence gate: no closed code (NaN), no gate
            state_dict.setdefault(prefix + "lip_closed", torch.full((self.lip_dim,), float("nan")))
            state_dict.setdefault(prefix + "lip_gate", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _batched(t: Tensor, b: int, item_dims: int) -> Tensor:
    """``t`` with a leading batch dimension B (expanded, not copied, when it has none)."""
    if t.ndim == item_dims:
        return t.unsqueeze(0).expand(b, *t.shape)
    return t


def _activate(xyz: Tensor, scaling: Tensor, rotation: Tensor, opacity: Tensor, shs: Tensor, sh_degree: int,
              attention: Tensor | None, b: int) -> GaussianBatch:
    rot = _batched(rotation, b, 2)
    sh = _batched(shs, b, 3)
    if sh.shape[2] < 16:  # a lower max SH degree: pad to the 16 coefficients of the batch layout
        sh = torch.cat([sh, sh.new_zeros(*sh.shape[:2], 16 - sh.shape[2], 3)], dim=2)
    return GaussianBatch(
        means=_batched(xyz, b, 2),
        scales=torch.exp(_batched(scaling, b, 2)),
        rotations=torch.nn.functional.normalize(rot, dim=-1),
        opacities=torch.sigmoid(_batched(opacity, b, 2)),
        shs=sh,
        sh_degree=sh_degree,
        attention=attention,
    )


__all__ = ["GAUSSIAN_PARAMS", "LIP_BASES", "LIP_ROWS", "OFFSET_HEADS", "STAGES", "GaussianTalkerModel"]

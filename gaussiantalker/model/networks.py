"""Condition encoders and the spatial-audio cross-attention (reference §5.3-§5.4).

All encoders are batched: the original looped over frames in Python for the audio attention.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

Tensor = torch.Tensor

_FRAME_GENERATORS: contextvars.ContextVar[Sequence[torch.Generator] | None] = contextvars.ContextVar(
    "frame_generators", default=None)


@contextlib.contextmanager
def frame_dropout(generators: Sequence[torch.Generator] | None) -> Iterator[None]:
    """Within the block, :class:`FrameDropout` layers draw the mask of frame ``b`` of a ``[B, ...]`` input from
    ``generators[b]`` (one per frame, on the input's device) instead of from the global RNG.

    The trainer seeds frame ``b``'s generator with its sample number, so a frame gets the same masks whatever
    batch (or rank of a data-parallel run) it lands in: a 2-rank run then trains exactly the function a
    single-process run trains (``docs/distributed.md``). None = the global RNG (``nn.Dropout``'s behaviour)."""
    token = _FRAME_GENERATORS.set(generators)
    try:
        yield
    finally:
        _FRAME_GENERATORS.reset(token)


class FrameDropout(nn.Dropout):
    """``nn.Dropout`` on ``[B, ...]`` inputs whose masks can be drawn frame by frame (see :func:`frame_dropout`)."""

    def forward(self, x: Tensor) -> Tensor:
        generators = _FRAME_GENERATORS.get()
        if generators is None or not self.training or self.p == 0.0:
            return super().forward(x)
        if x.ndim < 2 or x.shape[0] != len(generators):
            raise ValueError(f"frame dropout: {len(generators)} generators for an input of shape {tuple(x.shape)}")
        keep = 1.0 - self.p
        mask = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        for b, g in enumerate(generators):
            mask[b].bernoulli_(keep, generator=g)
        return x * mask.mul_(1.0 / keep)


def mlp(dims: list[int], bias: bool = True) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        if k:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b, bias=bias))
    return nn.Sequential(*layers)


class AudioEncoder(nn.Module):
    """Audio windows ``[B, 8, 16, D]`` -> one ``[B, d_model]`` token.

    AudioNet (per window: four stride-2 Conv1d over the 16 time steps, D->32->32->64->64, LeakyReLU 0.02,
    then Linear 64->64->32), AudioAttNet (Conv1d over the 8-window sequence, 32->16->8->4->2->1 channels,
    Linear 8->8, softmax weights, weighted sum of the 8 embeddings), then a bias-free MLP 32->64->d_model.
    """

    def __init__(self, audio_dim: int, d_model: int) -> None:
        super().__init__()
        self.audio_dim = int(audio_dim)
        chans = [self.audio_dim, 32, 32, 64, 64]
        convs: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            convs += [nn.Conv1d(a, b, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(0.02)]
        self.conv = nn.Sequential(*convs)
        self.fc = nn.Sequential(nn.Linear(64, 64), nn.LeakyReLU(0.02), nn.Linear(64, 32))
        att: list[nn.Module] = []
        chans = [32, 16, 8, 4, 2, 1]
        for a, b in zip(chans[:-1], chans[1:]):
            att += [nn.Conv1d(a, b, kernel_size=3, stride=1, padding=1), nn.LeakyReLU(0.02)]
        self.att_conv = nn.Sequential(*att)
        self.att_fc = nn.Linear(8, 8)
        self.out = mlp([32, 64, d_model], bias=False)

    def forward(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the token ``[B, d_model]`` and the window weights ``[B, 8]``."""
        if audio.ndim != 4 or audio.shape[1:] != (8, 16, self.audio_dim):
            raise ValueError(f"audio must have shape [B, 8, 16, {self.audio_dim}], got {tuple(audio.shape)}")
        b = audio.shape[0]
        x = audio.reshape(b * 8, 16, self.audio_dim).transpose(1, 2)  # [B*8, D, 16] channels x time
        x = self.conv(x).squeeze(-1)  # [B*8, 64]
        emb = self.fc(x).view(b, 8, 32)  # [B, 8, 32]
        w = self.att_conv(emb.transpose(1, 2)).view(b, 8)  # [B, 8]
        w = torch.softmax(self.att_fc(w), dim=1)
        token = (w.unsqueeze(-1) * emb).sum(1)  # [B, 32]
        return self.out(token), w


class EyeEncoder(nn.Module):
    """Blink ``[B, 1]`` in [0, 1] -> ``[B, d_model]``.

    A fresh design (the original multiplied by ``10000^(2i/d)``, aliasing most channels): 16 frequencies
    ``π·2^(4i/15)`` (π .. 16π, at most 8 periods over [0, 1]), sin and cos -> 32 values, then a
    bias-free MLP 32->64->d_model.
    """

    def __init__(self, d_model: int, num_freqs: int = 16) -> None:
        super().__init__()
        freqs = math.pi * 2.0 ** torch.linspace(0.0, 4.0, num_freqs)
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = mlp([2 * num_freqs, 64, d_model], bias=False)

    def forward(self, eye: Tensor) -> Tensor:
        x = eye * self.freqs  # [B, F]
        return self.mlp(torch.cat([torch.sin(x), torch.cos(x)], dim=-1))


class CrossAttentionLayer(nn.Module):
    """One post-LayerNorm transformer layer: the Gaussians' features attend to the condition tokens.

    ``x = LN(x + Dropout(MHA(x, tokens)))``, ``x = LN(x + Dropout(FFN(x)))``, FFN = Linear-ReLU-Dropout-Linear.
    """

    def __init__(self, d_model: int, n_head: int, ffn_hidden: int, drop_prob: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=1e-12)
        self.norm2 = nn.LayerNorm(d_model, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_hidden), nn.ReLU(), FrameDropout(drop_prob),
                                 nn.Linear(ffn_hidden, d_model))
        self.drop1 = FrameDropout(drop_prob)
        self.drop2 = FrameDropout(drop_prob)

    def forward(self, x: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, N, d]`` or ``[N, d]`` (shared by the batch), ``tokens [B, T, d]`` -> ``([B, N, d],
        attention [B, N, T] averaged over heads)``.

        The output projection is applied to the few value tokens instead of to every Gaussian:
        ``Wo (sum_j a_j v_j) = sum_j a_j (Wo v_j)``, so the per-Gaussian work of the attention is a product
        with ``heads x T`` (= 8) columns instead of the ``d x d`` projection (mathematically the same layer).
        """
        kmat, u = self.token_side(tokens)
        return self.gaussian_side(x, kmat, u)

    def token_side(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """The per-frame half: ``tokens [B, T, d]`` -> keys ``[B, d, h*T]`` (block-diagonal over heads, scaled
        by ``1/sqrt(hd)``) and values through the output projection ``[B, h*T, d]``."""
        b, t, d = tokens.shape
        h, hd = self.n_head, d // self.n_head
        k = self.k(tokens).view(b, t, h, hd)
        v = self.v(tokens).view(b, t, h, hd)
        eye = torch.eye(h, dtype=k.dtype, device=k.device)
        kmat = torch.einsum("btic,ig->bicgt", k, eye).reshape(b, d, h * t) / math.sqrt(hd)
        u = torch.einsum("btic,oic->bito", v, self.o.weight.view(d, h, hd)).reshape(b, h * t, d)
        return kmat, u

    def gaussian_side(self, x: Tensor, kmat: Tensor, u: Tensor, q: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The per-Gaussian half: ``x [B, N, d]`` or ``[N, d]`` with ``kmat [B, d, h*T]`` / ``u [B, h*T, d]``
        (or one frame's ``[d, h*T]`` / ``[h*T, d]`` with ``x [N, d]``); ``q``: ``self.q(x)`` if already known.
        Returns the new features and the attention ``[..., N, T]`` averaged over heads."""
        h, ht = self.n_head, kmat.shape[-1]
        q = self.q(x) if q is None else q
        logits = q @ kmat  # [B, N, h*T] (a shared query broadcasts over the frames)
        att = torch.softmax(logits.unflatten(-1, (h, ht // h)), dim=-1)  # [..., N, h, T]
        out = att.flatten(-2) @ u + self.o.bias  # [..., N, d]
        x = self.norm1(x + self.drop1(out))  # a shared x broadcasts to [B, N, d]
        x = self.norm2(x + self.drop2(self.ffn(x)))
        return x, att.mean(-2)


class SpatialAudioAttention(nn.Module):
    """``n_layer`` cross-attention layers; returns the attended features and the maps of every layer."""

    def __init__(self, d_model: int, n_head: int, ffn_hidden: int, n_layer: int, drop_prob: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [CrossAttentionLayer(d_model, n_head, ffn_hidden, drop_prob) for _ in range(n_layer)])

    def forward(self, x: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``x [N, d]`` tri-plane features, ``tokens [B, T, d]`` -> ``([B, N, d], [B, L, N, T])``."""
        maps = []
        for layer in self.layers:
            x, att = layer(x, tokens)
            maps.append(att)
        return x, torch.stack(maps, dim=1)


def init_linear(module: nn.Module) -> None:
    """Xavier-uniform (gain 1) weights for every Linear, biases left at PyTorch's default (as the original)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)


def zero_last_linear(seq: nn.Sequential) -> None:
    """Zero the weight and bias of the last Linear, so the head outputs exactly 0 until trained."""
    last = [m for m in seq.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)


def small_last_linear(seq: nn.Sequential, gain: float = 0.1) -> None:
    """Xavier-uniform with a small gain and zero bias for the last Linear (the tri-plane heads)."""
    last = [m for m in seq.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.xavier_uniform_(last.weight, gain=gain)
    if last.bias is not None:
        nn.init.zeros_(last.bias)


def head(d_in: int, hidden: int, k: int) -> nn.Sequential:
    """``ReLU -> Linear(d_in, hidden) -> ReLU -> Linear(hidden, k)``."""
    return nn.Sequential(nn.ReLU(), nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, k))


def fuse_heads(heads: nn.ModuleDict) -> tuple[list[str], Tensor, Tensor]:
    """The first layers of every :func:`head` of ``heads`` stacked: names, ``W1 [H * hidden, d_in]``, ``b1``."""
    names = list(heads)
    firsts = [heads[k][1] for k in names]
    return names, torch.cat([f.weight for f in firsts]), torch.cat([f.bias for f in firsts])


def run_heads(heads: nn.ModuleDict, x: Tensor, fused: tuple | None = None) -> dict[str, Tensor]:
    """Every :func:`head` of ``heads`` on the same input ``x [..., d_in]``: ``{name: [..., k]}``.

    The same function as calling each head, computed as one product for all first layers (one ReLU of
    ``x``, one ``[M, d_in] x [d_in, heads * hidden]`` matrix product instead of five small ones) and then
    each second layer on its slice of the hidden features. ``fused``: :func:`fuse_heads` of ``heads``, when
    the caller runs them many times. For inference: under autograd the slices' backward is slow.
    """
    if not len(heads):
        return {}
    names, w1, b1 = fused if fused is not None else fuse_heads(heads)
    hidden = torch.relu(nn.functional.linear(torch.relu(x), w1, b1))  # [..., H * hidden]
    out, start = {}, 0
    for name in names:
        width = heads[name][1].out_features
        out[name] = heads[name][3](hidden[..., start:start + width])
        start += width
    return out


__all__ = [
    "AudioEncoder",
    "CrossAttentionLayer",
    "EyeEncoder",
    "FrameDropout",
    "SpatialAudioAttention",
    "frame_dropout",
    "fuse_heads",
    "head",
    "init_linear",
    "run_heads",
    "mlp",
    "small_last_linear",
    "zero_last_linear",
]

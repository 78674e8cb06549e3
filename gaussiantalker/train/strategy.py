"""Densification and pruning (reference §4.4) as an object with explicit state, keeping Adam consistent.

Every edit of the per-Gaussian parameters (clone, split, prune) edits the optimizer's ``exp_avg`` /
``exp_avg_sq`` rows the same way (new rows start at zero), so the optimizer always matches the
parameters it updates (the original's stale-state bugs, §10.2). In the coarse stage, pruning reads the
tri-plane-predicted opacity (the one that is rendered), not a stale parameter.
"""

from __future__ import annotations

import logging

import torch

from ..config import TrainConfig
from ..model.talker import LIP_ROWS, GaussianTalkerModel

Tensor = torch.Tensor
log = logging.getLogger(__name__)

#: Optimizer group name of each per-Gaussian parameter.
GROUP_OF = {"xyz": "xyz", "features_dc": "f_dc", "features_rest": "f_rest", "opacity": "opacity",
            "scaling": "scaling", "rotation": "rotation", **{name: name for name in LIP_ROWS}}


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices ``[N, 3, 3]`` of quaternions ``[N, 4]`` (w, x, y, z; normalised here)."""
    q = torch.nn.functional.normalize(q, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).view(-1, 3, 3)


def _group_param(optimizer: torch.optim.Optimizer, name: str) -> dict | None:
    for group in optimizer.param_groups:
        if group["name"] == name:
            return group
    return None


def edit_gaussians(model: GaussianTalkerModel, optimizer: torch.optim.Optimizer | None, keep: Tensor | None,
                   extra: dict[str, Tensor] | None) -> None:
    """Keep the rows ``keep`` (bool ``[N]``, None = all) of every per-Gaussian parameter, then append the
    rows ``extra[name]``; the optimizer's state rows follow (zeros for appended rows)."""
    new_values: dict[str, Tensor] = {}
    old_params = model.gaussian_parameters()
    for name, param in old_params.items():
        value = param.detach()
        if keep is not None:
            value = value[keep]
        if extra is not None:
            value = torch.cat([value, extra[name].to(value)], dim=0)
        new_values[name] = value
    new_params = model.replace_gaussian_parameters(new_values)
    if optimizer is None:
        return
    for name, old in old_params.items():
        group = _group_param(optimizer, GROUP_OF[name])
        if group is None:
            continue
        if len(group["params"]) != 1 or group["params"][0] is not old:
            raise RuntimeError(f"optimizer group {GROUP_OF[name]!r} does not hold the model's {name}")
        state = optimizer.state.pop(old, None)
        new = new_params[name]
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                buf = state[key]
                if keep is not None:
                    buf = buf[keep]
                if extra is not None:
                    buf = torch.cat([buf, torch.zeros_like(extra[name], dtype=buf.dtype, device=buf.device)], 0)
                state[key] = buf.contiguous()
            optimizer.state[new] = state
        group["params"][0] = new


class DensifyStrategy:
    """Screen-space gradient statistics plus the clone / split / prune schedule of one stage.

    State (saved in checkpoints): ``grad_accum [N]``, ``denom [N]``, ``max_radii [N]``.
    """

    def __init__(self, config: TrainConfig, camera_extent: float, stage: str) -> None:
        o = config.optimization
        self.o, self.stage = o, stage
        self.extent = float(camera_extent)
        self.max_gaussians = int(config.model.max_gaussians)
        self.enabled = stage == "coarse" or o.split_gs_in_fine_stage
        self.grad_threshold = o.densify_grad_threshold_coarse if stage == "coarse" else o.densify_grad_threshold_fine_init
        self.opacity_threshold = o.opacity_threshold_coarse if stage == "coarse" else o.opacity_threshold_fine_init
        self.grad_accum = torch.zeros(0)
        self.denom = torch.zeros(0)
        self.max_radii = torch.zeros(0)
        self.seed = int(o.seed)
        #: ``reduce_max(tensor)`` in place over the ranks of a data-parallel run (None: one process)
        self.reduce_max = None

    def reset(self, n: int, device) -> None:
        self.grad_accum = torch.zeros(n, device=device)
        self.denom = torch.zeros(n, device=device)
        self.max_radii = torch.zeros(n, device=device)

    def state_dict(self) -> dict[str, object]:
        return {"stage": self.stage, "grad_accum": self.grad_accum.cpu(), "denom": self.denom.cpu(),
                "max_radii": self.max_radii.cpu()}

    def load_state_dict(self, state: dict[str, object], device) -> None:
        if state["stage"] != self.stage:
            raise ValueError(f"strategy state of stage {state['stage']!r} cannot resume stage {self.stage!r}")
        self.grad_accum = state["grad_accum"].to(device)
        self.denom = state["denom"].to(device)
        self.max_radii = state["max_radii"].to(device)

    @torch.no_grad()
    def observe(self, radii: Tensor, means2d_grad: Tensor | None) -> None:
        """Accumulate after backward: ``radii [B, N]``, ``means2d_grad [B, N, 3]`` (NDC gradient)."""
        if not self.enabled or means2d_grad is None:
            return
        self.accumulate(*self.batch_statistics(radii, means2d_grad))

    @staticmethod
    @torch.no_grad()
    def batch_statistics(radii: Tensor, means2d_grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One batch's raw statistics: the screen gradient summed over the batch ``[N, 2]``, visibility ``[N]``
        (1.0 where seen in any frame) and the largest radius ``[N]``. A data-parallel run sums the first two and
        takes the max of the third over the ranks (``docs/distributed.md``) before :meth:`accumulate`."""
        return means2d_grad[..., :2].sum(0), (radii > 0).any(0).to(means2d_grad.dtype), radii.max(0).values.float()

    @torch.no_grad()
    def accumulate(self, grad_sum: Tensor, visible: Tensor, radii_max: Tensor) -> None:
        """Add one (global) batch: ``grad_sum [N, 2]``, ``visible [N]`` (> 0 = seen), ``radii_max [N]``."""
        seen = visible > 0
        self.max_radii[seen] = torch.maximum(self.max_radii[seen], radii_max[seen])
        g = grad_sum.norm(dim=-1)  # [N]: the batch's gradients summed, then the norm
        self.grad_accum[seen] += g[seen]
        self.denom[seen] += 1

    def synchronise(self) -> None:
        """Make ``max_radii`` the maximum over the ranks (a data-parallel run keeps each rank's own maximum between
        densification steps: cheaper than one more collective per iteration). No-op with one process."""
        if self.reduce_max is not None:
            self.reduce_max(self.max_radii)

    def due(self, iteration: int) -> bool:
        o = self.o
        if not self.enabled or iteration >= o.densify_until_iter:
            return False
        return self._densify_due(iteration) or self._prune_due(iteration)

    def _densify_due(self, it: int) -> bool:
        o = self.o
        return it > o.densify_from_iter and it % max(o.densification_interval, 1) == 0

    def _prune_due(self, it: int) -> bool:
        o = self.o
        return it > o.pruning_from_iter and it % max(o.pruning_interval, 1) == 0

    @torch.no_grad()
    def step(self, iteration: int, model: GaussianTalkerModel, optimizer: torch.optim.Optimizer) -> bool:
        """Densify and/or prune when due at stage iteration ``iteration``. Returns True if anything changed."""
        if not self.due(iteration):
            return False
        changed = False
        n0 = model.num_points
        self.synchronise()
        if self._densify_due(iteration) and model.num_points < self.max_gaussians:
            changed |= self._densify(model, optimizer, iteration)
        if self._prune_due(iteration):
            changed |= self._prune(iteration, model, optimizer)
        if changed:
            log.debug("%s iteration %d: %d -> %d Gaussians", self.stage, iteration, n0, model.num_points)
        return changed

    def split_generator(self, iteration: int, device) -> torch.Generator:
        """The generator of the split noise at ``iteration``: seeded from (seed, stage, iteration) only, so every rank
        of a data-parallel run (and a resumed run) draws the same offsets and holds the same Gaussians."""
        salt = 1 if self.stage == "coarse" else 2
        return torch.Generator(device=device).manual_seed((self.seed * 1_000_033 + salt * 104_729 + int(iteration))
                                                          % (2 ** 63))

    def _densify(self, model: GaussianTalkerModel, optimizer: torch.optim.Optimizer, iteration: int = 0) -> bool:
        grads = self.grad_accum / self.denom
        grads[~torch.isfinite(grads)] = 0.0
        attrs = model.canonical_attributes()
        scales = torch.exp(attrs["scaling"])  # [N, 3]
        big = scales.max(dim=1).values > self.o.percent_dense * self.extent
        hot = grads >= self.grad_threshold
        clone, split = hot & ~big, hot & big
        if not bool(clone.any() or split.any()):
            return False
        params = {k: v.detach() for k, v in model.gaussian_parameters().items()}
        # Split: two samples from N(0, diag(scale)) rotated by the quaternion, scale / (0.8 * 2).
        rot = quaternion_to_matrix(attrs["rotation"][split]).repeat(2, 1, 1)
        std = scales[split].repeat(2, 1)
        noise = torch.normal(torch.zeros_like(std), std, generator=self.split_generator(iteration, std.device))
        offsets = torch.bmm(rot, noise.unsqueeze(-1)).squeeze(-1)
        new_split = {name: value[split].repeat(2, *([1] * (value.ndim - 1))) for name, value in params.items()}
        new_split["xyz"] = params["xyz"][split].repeat(2, 1) + offsets
        new_split["scaling"] = torch.log(std / (0.8 * 2))
        extra = {name: torch.cat([params[name][clone], new_split[name]], 0) for name in params}
        keep = ~split
        edit_gaussians(model, optimizer, keep, extra)
        n = model.num_points
        self.reset(n, self.grad_accum.device)  # as 3DGS: statistics restart after densification
        return True

    def _prune(self, iteration: int, model: GaussianTalkerModel, optimizer: torch.optim.Optimizer) -> bool:
        attrs = model.canonical_attributes()
        remove = torch.sigmoid(attrs["opacity"]).squeeze(-1) < self.opacity_threshold
        if iteration > self.o.opacity_reset_interval:
            remove |= self.max_radii > 20
            remove |= torch.exp(attrs["scaling"]).max(dim=1).values > 0.1 * self.extent
        if not bool(remove.any()):
            return False
        if bool(remove.all()):
            log.warning("%s iteration %d: pruning would remove every Gaussian; skipped", self.stage, iteration)
            return False
        keep = ~remove
        edit_gaussians(model, optimizer, keep, None)
        self.grad_accum, self.denom, self.max_radii = self.grad_accum[keep], self.denom[keep], self.max_radii[keep]
        return True


__all__ = ["GROUP_OF", "DensifyStrategy", "edit_gaussians", "quaternion_to_matrix"]

"""The morphable-model interface shared by the BFM 2009 model and the offline landmark model.

Geometry (reference §2.8): ``X = mean + Σ_i (id_i·σ_id,i)·B_id,i + Σ_j (exp_j·σ_exp,j)·B_exp,j`` in the
canonical head frame (x right, y up, z towards the camera; tracker units, 1 unit = 10 cm for the BFM).
Coefficients are in units of their σ. The 68 iBUG landmarks are vertices ``landmark_ids``; jaw points
0-7 / 9-16 may instead be chosen per frame among ``contour_left`` / ``contour_right`` candidates (the
vertex with the smallest / largest projected x, i.e. on the occluding contour).

The offline model (:func:`~.template.landmark_model`) has no expression basis to begin with: it carries
``exp_point_sigma``, the σ of each landmark's motion (zero for rigid landmarks), and the tracker learns a
small basis from the video (:mod:`.expression`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

Tensor = torch.Tensor

NUM_LANDMARKS = 68
#: Jaw landmarks whose vertex is chosen on the contour (left rows -> 0..7, right rows -> 9..16).
CONTOUR_LEFT_LANDMARKS = tuple(range(0, 8))
CONTOUR_RIGHT_LANDMARKS = tuple(range(9, 17))


@dataclass(frozen=True)
class MorphableModel:
    """A linear face model restricted to what tracking needs. All tensors on one device/dtype."""

    name: str
    mean: Tensor  # [V, 3] mean shape (tracker units)
    id_basis: Tensor  # [Ni, V, 3] identity directions (multiplied by id_sigma in the geometry)
    id_sigma: Tensor  # [Ni]
    exp_basis: Tensor  # [Ne, V, 3] expression directions
    exp_sigma: Tensor  # [Ne]
    landmark_ids: Tensor  # [68] long, vertex of each iBUG landmark
    rigid_ids: Tensor  # [R] long, vertices used for the temporal smoothness term
    triangles: Tensor  # [T, 3] long
    contour_left: Optional[Tensor] = None  # [8, C] long, candidates for landmarks 0..7
    contour_right: Optional[Tensor] = None  # [8, C] long, candidates for landmarks 9..16
    exp_point_sigma: Optional[Tensor] = None  # [68, 3] σ of a basis learned per video (offline); 0 = rigid

    def __post_init__(self) -> None:
        v = self.mean.shape[0]
        if self.mean.ndim != 2 or self.mean.shape[1] != 3:
            raise ValueError(f"mean must have shape [V, 3], got {tuple(self.mean.shape)}")
        for name in ("id", "exp"):
            basis, sigma = getattr(self, f"{name}_basis"), getattr(self, f"{name}_sigma")
            if basis.ndim != 3 or basis.shape[1:] != (v, 3) or sigma.shape != basis.shape[:1]:
                raise ValueError(
                    f"{name}_basis must be [N, {v}, 3] with {name}_sigma [N]; got "
                    f"{tuple(basis.shape)} and {tuple(sigma.shape)}"
                )
        if self.landmark_ids.shape != (NUM_LANDMARKS,):
            raise ValueError(f"landmark_ids must have shape [68], got {tuple(self.landmark_ids.shape)}")
        for name in ("contour_left", "contour_right"):
            c = getattr(self, name)
            if c is not None and (c.ndim != 2 or c.shape[0] != 8):
                raise ValueError(f"{name} must have shape [8, C], got {tuple(c.shape)}")
        if (self.contour_left is None) != (self.contour_right is None):
            raise ValueError("contour_left and contour_right must be given together")
        if self.exp_point_sigma is not None and self.exp_point_sigma.shape != (NUM_LANDMARKS, 3):
            raise ValueError(f"exp_point_sigma must have shape [68, 3], got {tuple(self.exp_point_sigma.shape)}")
        for name in ("landmark_ids", "rigid_ids", "triangles", "contour_left", "contour_right"):
            ids = getattr(self, name)
            if ids is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= v):
                raise ValueError(f"{name} has vertex indices outside [0, {v})")

    @property
    def num_vertices(self) -> int:
        return int(self.mean.shape[0])

    @property
    def num_id(self) -> int:
        return int(self.id_sigma.shape[0])

    @property
    def num_exp(self) -> int:
        return int(self.exp_sigma.shape[0])

    @property
    def learns_expressions(self) -> bool:
        return self.exp_point_sigma is not None

    @property
    def has_contour(self) -> bool:
        return self.contour_left is not None

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "MorphableModel":
        """Copy with float tensors cast to ``dtype`` and everything moved to ``device``."""
        changes = {}
        for name in ("mean", "id_basis", "id_sigma", "exp_basis", "exp_sigma", "exp_point_sigma"):
            t = getattr(self, name)
            if t is not None:
                changes[name] = t.to(device=device, dtype=dtype or t.dtype)
        for name in ("landmark_ids", "rigid_ids", "triangles", "contour_left", "contour_right"):
            t = getattr(self, name)
            if t is not None:
                changes[name] = t.to(device=device)
        return replace(self, **changes)

    def subset(self, vertex_ids: Tensor) -> "MorphableModel":
        """The model restricted to ``vertex_ids`` (which must contain every landmark, contour and
        rigid vertex); index tensors are remapped, triangles dropped."""
        vertex_ids = torch.as_tensor(vertex_ids, device=self.mean.device).long()
        remap = torch.full((self.num_vertices,), -1, dtype=torch.long, device=vertex_ids.device)
        remap[vertex_ids] = torch.arange(vertex_ids.numel(), device=vertex_ids.device)

        def re(ids: Optional[Tensor]) -> Optional[Tensor]:
            if ids is None:
                return None
            out = remap[ids]
            if bool((out < 0).any()):
                raise ValueError("subset() vertex_ids must contain every landmark, contour and rigid vertex")
            return out

        return replace(
            self, mean=self.mean[vertex_ids], id_basis=self.id_basis[:, vertex_ids],
            exp_basis=self.exp_basis[:, vertex_ids], landmark_ids=re(self.landmark_ids),
            rigid_ids=re(self.rigid_ids), contour_left=re(self.contour_left),
            contour_right=re(self.contour_right),
            triangles=torch.zeros(0, 3, dtype=torch.long, device=self.mean.device),
        )

    def tracked_vertices(self) -> Tensor:
        """Sorted vertex ids that tracking reads: landmarks, contour candidates, rigid vertices."""
        parts = [self.landmark_ids.reshape(-1), self.rigid_ids.reshape(-1)]
        if self.contour_left is not None:
            parts += [self.contour_left.reshape(-1), self.contour_right.reshape(-1)]
        return torch.unique(torch.cat(parts))

    def geometry(self, id_coeff: Tensor, exp_coeff: Optional[Tensor] = None,
                 vertex_ids: Optional[Tensor] = None) -> Tensor:
        """Canonical (unposed) vertices.

        Args:
            id_coeff: ``[Ni]`` identity coefficients (σ units).
            exp_coeff: ``[F, Ne]`` expression coefficients (σ units), or None for the neutral face.
            vertex_ids: optional ``[K]`` subset of vertices.
        Returns:
            ``[V, 3]`` (no ``exp_coeff``) or ``[F, V, 3]`` (``K`` instead of ``V`` with ``vertex_ids``).
        """
        if id_coeff.shape != (self.num_id,):
            raise ValueError(f"id_coeff must have shape [{self.num_id}], got {tuple(id_coeff.shape)}")
        mean, bid, bexp = self.mean, self.id_basis, self.exp_basis
        if vertex_ids is not None:
            mean, bid, bexp = mean[vertex_ids], bid[:, vertex_ids], bexp[:, vertex_ids]
        shape = mean + torch.einsum("i,ivc->vc", id_coeff * self.id_sigma, bid)
        if exp_coeff is None:
            return shape
        if exp_coeff.ndim != 2 or exp_coeff.shape[1] != self.num_exp:
            raise ValueError(f"exp_coeff must have shape [F, {self.num_exp}], got {tuple(exp_coeff.shape)}")
        return shape + torch.einsum("fj,jvc->fvc", exp_coeff * self.exp_sigma, bexp)

    def candidate_ids(self) -> Tensor:
        """``[68, C]`` candidate vertices per landmark (a fixed landmark repeats its vertex)."""
        c = 1 if self.contour_left is None else int(self.contour_left.shape[1])
        cand = self.landmark_ids[:, None].expand(NUM_LANDMARKS, c).clone()
        if self.contour_left is not None:
            cand[list(CONTOUR_LEFT_LANDMARKS)] = self.contour_left
            cand[list(CONTOUR_RIGHT_LANDMARKS)] = self.contour_right
        return cand

    def select_contour(self, cand_u: Tensor) -> Tensor:
        """Pick the contour candidate per landmark from projected x coordinates.

        Args:
            cand_u: ``[..., 68, C]`` projected x (pixels) of :meth:`candidate_ids`.
        Returns:
            ``[..., 68]`` index into the candidate axis (argmin for 0..7, argmax for 9..16, 0 else).
        """
        choice = torch.zeros(cand_u.shape[:-1], dtype=torch.long, device=cand_u.device)
        if self.contour_left is not None:
            left, right = list(CONTOUR_LEFT_LANDMARKS), list(CONTOUR_RIGHT_LANDMARKS)
            choice[..., left] = cand_u[..., left, :].argmin(-1)
            choice[..., right] = cand_u[..., right, :].argmax(-1)
        return choice


__all__ = ["MorphableModel", "NUM_LANDMARKS", "CONTOUR_LEFT_LANDMARKS", "CONTOUR_RIGHT_LANDMARKS"]

"""Basel Face Model 2009 as the original tracker uses it (reference §2.8), read from the asset folder.

Files (original names; registration at the University of Basel for the first, the others ship with
AD-NeRF / ER-NeRF / GaussianTalker under ``data_utils/face_tracking/3DMM/``), found with
:func:`gaussiantalker.assets.find_asset` (directly in the asset folder or one sub-folder down):

* ``01_MorphableModel.mat`` — ``shapeMU [3N, 1]``, ``shapePC [3N, 199]``, ``shapeEV [199, 1]`` (µm);
* ``topology_info.npy`` — ``sub_inds [34650]`` (the sub-mesh), ``tris [T, 3]``, ``vert_tris``;
* ``exp_info.npy`` — ``mu_exp [3·34650]``, ``base_exp [>=79, 3·34650]``, ``sig_exp``;
* ``keys_info.npy`` — ``keyinds [68]``, ``left_contour [8, 20]``, ``right_contour [8, 20]``,
  ``rigid_ids [464]`` (sub-mesh vertex ids).

The ``.npy`` files are pickled dicts: they are read with a restricted unpickler that only rebuilds
numpy arrays and plain containers (no arbitrary code). The conversion of §2.8 (restrict to the
sub-mesh, ``mean = mu_shape + mu_exp`` centred per axis, mean and bases divided by 1e5) runs once; the
converted arrays are cached as ``bfm2009_converted.npz`` (plain arrays, no pickle) next to the
``.mat`` (or in ``cache_dir``) and reused while the source files are unchanged (sizes and mtimes).
The texture basis is not loaded: the photometric stage is not implemented (landmarks only).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch

from ...assets import asset_dir, find_asset
from ...fileio import atomic_write
from .model import MorphableModel

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

MAT_FILE = "01_MorphableModel.mat"
EXP_FILE = "exp_info.npy"
KEYS_FILE = "keys_info.npy"
TOPOLOGY_FILE = "topology_info.npy"
BFM_FILES = (MAT_FILE, EXP_FILE, KEYS_FILE, TOPOLOGY_FILE)
CACHE_FILE = "bfm2009_converted.npz"
_CACHE_VERSION = 1
_UNIT = 1e5  # BFM micrometres -> tracker units (10 cm)

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "int"), ("builtins", "float"), ("builtins", "str"), ("builtins", "bytes"),
    ("builtins", "bytearray"), ("collections", "OrderedDict"), ("_codecs", "encode"),
}


_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # files pickled by Python 2


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers only."""

    def find_class(self, module: str, name: str):
        module = _PY2_MODULES.get(module, module)
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a model file")
        return super().find_class(module, name)


def load_npy_dict(path: PathLike) -> Dict[str, np.ndarray]:
    """A dict saved with ``np.save(path, dict)`` (a pickled 0-d object array), read safely."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        if dtype != np.dtype(object) or shape != ():
            raise ValueError(f"{path}: expected a pickled dict, found an array {dtype} {shape}")
        obj = _ArrayUnpickler(f, encoding="latin1").load()
    if isinstance(obj, np.ndarray):
        obj = obj.item()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    return {str(k): np.asarray(v) for k, v in obj.items()}


def bfm_files(assets: Optional[PathLike] = None) -> Dict[str, Optional[Path]]:
    """Where each BFM file was found (None when absent)."""
    return {name: find_asset(name, assets) for name in BFM_FILES}


def bfm_available(assets: Optional[PathLike] = None) -> bool:
    """True when all four BFM files are in the asset folder."""
    return all(p is not None for p in bfm_files(assets).values())


def _fingerprint(paths: Dict[str, Path]) -> str:
    stats = {name: [p.stat().st_size, p.stat().st_mtime_ns] for name, p in sorted(paths.items())}
    return json.dumps({"version": _CACHE_VERSION, "files": stats}, sort_keys=True)


def _read_mat(path: Path) -> Dict[str, np.ndarray]:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), variable_names=["shapeMU", "shapePC", "shapeEV"])
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5) files
        raise ValueError(f"{path}: MATLAB v7.3 files are not supported; re-save it as v7 or earlier") from exc
    missing = [k for k in ("shapeMU", "shapePC", "shapeEV") if k not in mat]
    if missing:
        raise ValueError(f"{path}: missing variables {missing} (is this the BFM 2009 01_MorphableModel.mat?)")
    return mat


def convert_bfm(paths: Dict[str, Path]) -> Dict[str, np.ndarray]:
    """The conversion of reference §2.8, from the four source files to plain arrays."""
    mat = _read_mat(paths[MAT_FILE])
    topo = load_npy_dict(paths[TOPOLOGY_FILE])
    exp = load_npy_dict(paths[EXP_FILE])
    keys = load_npy_dict(paths[KEYS_FILE])
    for name, d, need in ((TOPOLOGY_FILE, topo, ("sub_inds", "tris")),
                          (EXP_FILE, exp, ("mu_exp", "base_exp", "sig_exp")),
                          (KEYS_FILE, keys, ("keyinds", "left_contour", "right_contour", "rigid_ids"))):
        missing = [k for k in need if k not in d]
        if missing:
            raise ValueError(f"{paths[name]}: missing keys {missing}")
    mu = np.asarray(mat["shapeMU"], np.float64).reshape(-1)
    pc = np.asarray(mat["shapePC"])
    ev = np.asarray(mat["shapeEV"], np.float64).reshape(-1)
    n_full = mu.shape[0] // 3
    if pc.shape[0] != mu.shape[0] or pc.shape[1] != ev.shape[0]:
        raise ValueError(f"{paths[MAT_FILE]}: shapePC {pc.shape} does not match shapeMU {mu.shape} / shapeEV {ev.shape}")
    sub = np.asarray(topo["sub_inds"], np.int64).reshape(-1)
    if sub.min() < 0 or sub.max() >= n_full:
        raise ValueError(f"{paths[TOPOLOGY_FILE]}: sub_inds outside [0, {n_full})")
    n_sub = sub.shape[0]
    idx3 = (3 * sub[:, None] + np.arange(3)).reshape(-1)
    mu_exp = np.asarray(exp["mu_exp"], np.float64).reshape(-1)
    base_exp = np.asarray(exp["base_exp"], np.float64)
    if mu_exp.shape[0] != 3 * n_sub or base_exp.ndim != 2 or base_exp.shape[1] != 3 * n_sub:
        raise ValueError(f"{paths[EXP_FILE]}: expected mu_exp [{3 * n_sub}] and base_exp [K, {3 * n_sub}], "
                         f"got {mu_exp.shape} and {base_exp.shape}")
    mean = (mu[idx3] + mu_exp).reshape(n_sub, 3)
    mean = (mean - mean.mean(0)) / _UNIT
    id_basis = (pc[idx3].astype(np.float64).T / _UNIT).reshape(-1, n_sub, 3)
    out = {
        "mean": mean.astype(np.float32),
        "id_basis": id_basis.astype(np.float32),
        "id_sigma": ev.astype(np.float32),
        "exp_basis": (base_exp / _UNIT).reshape(-1, n_sub, 3).astype(np.float32),
        "exp_sigma": np.asarray(exp["sig_exp"], np.float32).reshape(-1),
        "landmark_ids": np.asarray(keys["keyinds"], np.int64).reshape(-1),
        "contour_left": np.asarray(keys["left_contour"], np.int64),
        "contour_right": np.asarray(keys["right_contour"], np.int64),
        "rigid_ids": np.asarray(keys["rigid_ids"], np.int64).reshape(-1),
        "triangles": np.asarray(topo["tris"], np.int64).reshape(-1, 3),
    }
    if out["exp_sigma"].shape[0] != out["exp_basis"].shape[0]:
        raise ValueError(f"{paths[EXP_FILE]}: sig_exp has {out['exp_sigma'].shape[0]} entries for "
                         f"{out['exp_basis'].shape[0]} expression components")
    return out


def _load_or_convert(paths: Dict[str, Path], cache_dir: Path) -> Dict[str, np.ndarray]:
    cache = cache_dir / CACHE_FILE
    fingerprint = _fingerprint(paths)
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["fingerprint"]) == fingerprint:
                logger.debug("BFM: using converted cache %s", cache)
                return {k: z[k] for k in z.files if k != "fingerprint"}
        logger.info("BFM: source files changed, re-converting (cache %s)", cache)
    logger.info("BFM: converting %s (once; cached in %s)", paths[MAT_FILE], cache)
    arrays = convert_bfm(paths)
    try:
        atomic_write(cache, lambda tmp: np.savez(tmp, fingerprint=np.array(fingerprint), **arrays))
    except OSError as exc:
        logger.warning("BFM: could not write the conversion cache in %s (%s); it will be converted "
                       "again next time", cache_dir, exc)
    return arrays


def load_bfm2009(
    assets: Optional[PathLike] = None, num_id: int = 100, num_exp: int = 79,
    cache_dir: Optional[PathLike] = None, dtype: torch.dtype = torch.float32,
) -> MorphableModel:
    """Load the BFM 2009 face model (as the original: 100 identity and 79 expression components).

    Args:
        assets: asset folder (default ``$GAUSSIANTALKER_HOME`` or ``~/.cache/gaussiantalker``).
        num_id, num_exp: components kept.
        cache_dir: where the converted arrays are cached (default: the ``.mat`` file's folder).
        dtype: float dtype of the returned tensors.
    Raises:
        FileNotFoundError: naming the missing files and where they were looked for.
        ValueError: on malformed files.
    """
    found = bfm_files(assets)
    missing = [name for name, p in found.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"BFM 2009 files missing from {asset_dir(assets)}: {', '.join(missing)}. Put "
            f"01_MorphableModel.mat (from the University of Basel) and exp_info.npy, keys_info.npy, "
            f"topology_info.npy (from AD-NeRF's data_utils/face_tracking/3DMM/) there, or use the "
            f"offline tracker (landmark_model())."
        )
    paths = {k: v for k, v in found.items() if v is not None}
    arrays = _load_or_convert(paths, Path(cache_dir) if cache_dir else paths[MAT_FILE].parent)
    n_id, n_exp = arrays["id_sigma"].shape[0], arrays["exp_sigma"].shape[0]
    if not (1 <= num_id <= n_id and 1 <= num_exp <= n_exp):
        raise ValueError(f"num_id must be in [1, {n_id}] and num_exp in [1, {n_exp}], got {num_id}, {num_exp}")
    f = lambda k: torch.as_tensor(arrays[k], dtype=dtype)  # noqa: E731
    i = lambda k: torch.as_tensor(arrays[k], dtype=torch.long)  # noqa: E731
    return MorphableModel(
        name="bfm2009", mean=f("mean"), id_basis=f("id_basis")[:num_id], id_sigma=f("id_sigma")[:num_id],
        exp_basis=f("exp_basis")[:num_exp], exp_sigma=f("exp_sigma")[:num_exp],
        landmark_ids=i("landmark_ids"), rigid_ids=i("rigid_ids"), triangles=i("triangles"),
        contour_left=i("contour_left"), contour_right=i("contour_right"),
    )




class BFM2009:
    """The Basel Face Model 2009 loader (the original's face model), as a small namespace."""

    FILES = BFM_FILES

    @staticmethod
    def available(assets: Optional[PathLike] = None) -> bool:
        """True when the four files are in the asset folder."""
        return bfm_available(assets)

    @staticmethod
    def load(assets: Optional[PathLike] = None, num_id: int = 100, num_exp: int = 79,
             cache_dir: Optional[PathLike] = None, dtype: torch.dtype = torch.float32) -> MorphableModel:
        """See :func:`load_bfm2009`."""
        return load_bfm2009(assets, num_id, num_exp, cache_dir, dtype)


__all__ = ["BFM2009", "load_bfm2009", "bfm_available", "bfm_files", "load_npy_dict", "convert_bfm", "BFM_FILES"]

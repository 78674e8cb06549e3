"""Minimal binary PLY reading and writing for point clouds (xyz, optional normals and colours).

Writes ``binary_little_endian`` files with one ``vertex`` element (``x y z`` float32, optionally
``nx ny nz`` float32 and ``red green blue`` uchar), the layout every point-cloud tool reads. Reads
binary (either endianness) and ASCII files whose ``vertex`` element has scalar properties only; other
elements placed *after* the vertices (faces of a mesh) are ignored, elements before them must have
scalar properties. Writes are atomic (temporary name + rename).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from .fileio import atomic_write

PathLike = Union[str, os.PathLike]

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


@dataclass
class PointCloud:
    """A point cloud as read from / written to PLY."""

    xyz: np.ndarray  # [N, 3] float32
    normals: Optional[np.ndarray] = None  # [N, 3] float32
    colors: Optional[np.ndarray] = None  # [N, 3] uint8 RGB

    def __post_init__(self) -> None:
        self.xyz = np.asarray(self.xyz, dtype=np.float32)
        if self.xyz.ndim != 2 or self.xyz.shape[1] != 3:
            raise ValueError(f"xyz must have shape [N, 3], got {self.xyz.shape}")
        n = self.xyz.shape[0]
        if self.normals is not None:
            self.normals = np.asarray(self.normals, dtype=np.float32)
            if self.normals.shape != (n, 3):
                raise ValueError(f"normals must have shape [{n}, 3], got {self.normals.shape}")
        if self.colors is not None:
            colors = np.asarray(self.colors)
            if colors.shape != (n, 3):
                raise ValueError(f"colors must have shape [{n}, 3], got {colors.shape}")
            if colors.dtype != np.uint8:
                if np.issubdtype(colors.dtype, np.floating):
                    colors = np.clip(np.round(colors * 255.0), 0, 255)
                colors = colors.astype(np.uint8)
            self.colors = colors


def write_ply(path: PathLike, cloud: PointCloud) -> Path:
    """Write ``cloud`` as a binary little-endian PLY at ``path`` (atomically). Returns the path."""
    path = Path(path)
    fields: List[Tuple[str, str]] = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if cloud.normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if cloud.colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    data = np.empty(cloud.xyz.shape[0], dtype=fields)
    for i, axis in enumerate("xyz"):
        data[axis] = cloud.xyz[:, i]
    if cloud.normals is not None:
        for i, axis in enumerate(("nx", "ny", "nz")):
            data[axis] = cloud.normals[:, i]
    if cloud.colors is not None:
        for i, axis in enumerate(("red", "green", "blue")):
            data[axis] = cloud.colors[:, i]
    type_names = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(data)}"]
    header += [f"property {type_names[t]} {name}" for name, t in fields]
    header.append("end_header")
    blob = ("\n".join(header) + "\n").encode("ascii") + data.tobytes()
    return atomic_write(path, lambda tmp: tmp.write_bytes(blob))


def _parse_header(f) -> Tuple[str, List[Tuple[str, int, List[Tuple[str, str]], bool]]]:
    if f.readline().strip() != b"ply":
        raise ValueError(f"{f.name}: not a PLY file (missing 'ply' magic)")
    fmt = None
    elements: List[Tuple[str, int, List[Tuple[str, str]], bool]] = []
    while True:
        line = f.readline()
        if not line:
            raise ValueError(f"{f.name}: PLY header has no end_header")
        words = line.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), [], False))
        elif words[0] == "property":
            if not elements:
                raise ValueError(f"{f.name}: property before any element")
            name, count, props, has_list = elements[-1]
            if words[1] == "list":
                elements[-1] = (name, count, props, True)
            else:
                if words[1] not in _PLY_TYPES:
                    raise ValueError(f"{f.name}: unknown PLY type {words[1]!r}")
                props.append((words[2], _PLY_TYPES[words[1]]))
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise ValueError(f"{f.name}: unsupported PLY format {fmt!r}")
    return fmt, elements


def read_ply_vertices(path: PathLike) -> Dict[str, np.ndarray]:
    """All scalar properties of the ``vertex`` element of a PLY file, by name (``[N]`` arrays)."""
    with open(path, "rb") as f:
        fmt, elements = _parse_header(f)
        endian = ">" if fmt == "binary_big_endian" else "<"
        for name, count, props, has_list in elements:
            if has_list:
                if name == "vertex":
                    raise ValueError(f"{path}: list properties in the vertex element are not supported")
                raise ValueError(f"{path}: element {name!r} with list properties precedes the vertices")
            dtype = np.dtype([(p, endian + t) for p, t in props])
            if fmt == "ascii":
                rows = [f.readline().split() for _ in range(count)]
                table = np.array(rows, dtype=np.float64).reshape(count, len(props))
                data = np.empty(count, dtype=dtype)
                for i, (p, _) in enumerate(props):
                    data[p] = table[:, i]
            else:
                raw = f.read(dtype.itemsize * count)
                if len(raw) != dtype.itemsize * count:
                    raise ValueError(f"{path}: file is truncated in element {name!r}")
                data = np.frombuffer(raw, dtype=dtype, count=count)
            if name == "vertex":
                return {p: np.asarray(data[p]) for p, _ in props}
    raise ValueError(f"{path}: no 'vertex' element")


def read_ply(path: PathLike) -> PointCloud:
    """Read a point cloud (xyz, and normals / colours when the file has them)."""
    props = read_ply_vertices(path)
    for axis in "xyz":
        if axis not in props:
            raise ValueError(f"{path}: vertex element has no {axis!r} property")
    xyz = np.stack([props[a] for a in "xyz"], -1).astype(np.float32)
    normals = None
    if all(k in props for k in ("nx", "ny", "nz")):
        normals = np.stack([props[k] for k in ("nx", "ny", "nz")], -1).astype(np.float32)
    colors = None
    if all(k in props for k in ("red", "green", "blue")):
        colors = np.stack([props[k] for k in ("red", "green", "blue")], -1)
        if np.issubdtype(colors.dtype, np.floating):
            colors = np.clip(np.round(colors * 255.0), 0, 255)
        colors = colors.astype(np.uint8)
    return PointCloud(xyz=xyz, normals=normals, colors=colors)


__all__ = ["PointCloud", "write_ply", "read_ply", "read_ply_vertices"]

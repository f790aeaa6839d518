"""Real scans as sparse voxel grids: read a triangle mesh, sample points on its surface, voxelise.

Reading and sampling use trimesh (``pip install sparsecnn[spatial]``): ``trimesh.load`` reads OFF
(and PLY, OBJ, STL ...), ``trimesh.sample.sample_surface`` draws points uniformly by area.
The points are scaled so the mesh's bounding box fits the grid (longest side ``resolution -
2 margin`` voxels, centred), quantised, and each voxel's feature is the number of points in it
(normalised to mean 1) -- or, with ``channels > 1``, seeded random features, as a benchmark
input.

The shared data (``../shared/data/meshes``) holds the Stanford Bunny and Armadillo; at 128^3 their
surfaces occupy ~1-3 % of the voxels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .tensor import SparseTensor

MESHES = {"bunny": "bunny00.off", "armadillo": "armadillo.off"}


def mesh_path(name: str, data_dir=None) -> Path | None:
    """Path of a mesh: an existing file, or a shared one (``"bunny"``, ``"armadillo"`` or a file
    name under ``<shared data>/meshes``); None if absent."""
    from ..data import shared_data_dir

    if name not in MESHES and Path(name).is_file():
        return Path(name)
    base = Path(data_dir) if data_dir is not None else shared_data_dir()
    if base is None:
        return None
    p = base / "meshes" / MESHES.get(name, name)
    return p if p.is_file() else None


def load_mesh(path):
    """A ``trimesh.Trimesh`` from a mesh file (OFF, PLY, OBJ, STL ...).

    Raises
    ------
    ImportError
        trimesh is not installed (``pip install sparsecnn[spatial]``).
    FileNotFoundError, ValueError
        Missing file; a file holding no triangles.
    """
    try:
        import trimesh
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("reading meshes needs trimesh: pip install 'sparsecnn[spatial]'") from exc
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no mesh file {path}")
    mesh = trimesh.load(path, force="mesh", process=False)
    if len(mesh.faces) == 0:
        raise ValueError(f"{path} holds no triangles")
    return mesh


def surface_points(mesh, resolution: int, margin: int = 1, density: float = 8.0,
                   seed: int = 0) -> np.ndarray:
    """Points sampled uniformly on the mesh surface, in grid units of a ``resolution^3`` grid.

    ``density`` points per voxel-sized area of surface (8 leaves no holes in the voxelised
    surface at these resolutions). Returns (N, 3) float64 in ``[margin, resolution - margin)``.
    """
    import trimesh

    lo, hi = mesh.bounds
    scale = (resolution - 2 * margin - 1e-6) / float(np.max(hi - lo))
    n = int(np.ceil(mesh.area * scale * scale * density))
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    center = (lo + hi) / 2
    return (np.asarray(pts) - center) * scale + resolution / 2


def voxelize(name_or_path, resolution: int, channels: int = 1, batch: int = 1, seed: int = 0,
             data_dir=None) -> SparseTensor:
    """A mesh's surface voxelised into a ``resolution^3`` grid, as a SparseTensor.

    Parameters
    ----------
    name_or_path : ``"bunny"``, ``"armadillo"`` or a mesh file
    resolution : int -- grid side (voxels)
    channels : int -- 1: point density per voxel; more: seeded N(0, 1) features
    batch : int -- copies of the scan in the batch, each rotated by a multiple of 90 degrees
        about the vertical axis (so the batch entries have different sites)
    seed : int

    Raises
    ------
    FileNotFoundError
        Unknown name (and no shared data) or missing file.
    """
    path = mesh_path(str(name_or_path), data_dir)
    if path is None:
        raise FileNotFoundError(f"mesh {name_or_path!r} not found (shared data absent?)")
    mesh = load_mesh(path)
    pts = surface_points(mesh, resolution, seed=seed)
    allp, allb = [], []
    c = resolution / 2
    for b in range(batch):
        p = pts.copy()
        for _ in range(b % 4):   # rotate 90 degrees about y: (x, z) -> (z, -x)
            p[:, 0], p[:, 2] = p[:, 2].copy(), 2 * c - p[:, 0] - 1e-9
        allp.append(np.clip(p, 0, resolution - 1e-6))
        allb.append(np.full(len(p), b))
    st = SparseTensor.from_points(np.concatenate(allp), 1.0, batch=np.concatenate(allb),
                                  origin=(0.0, 0.0, 0.0), spatial_shape=(resolution,) * 3)
    if channels == 1:
        f = st.features
        return st.replace_feature(f / f.mean())
    g = torch.Generator().manual_seed(seed)
    return st.replace_feature(torch.randn(st.n, channels, generator=g))

"""``SparseTensor``: features on the active sites of a voxel (3-D) or pixel (2-D) grid.

A sparse tensor is ``P`` active sites with integer coordinates ``coords`` ((P, 1 + D) int32, the
batch index first, as spconv's ``indices`` and MinkowskiEngine's coordinates) in a grid
``(batch_size, *spatial_shape)``, and their features ``feats`` ((P, C) float32). Sites not listed
are zero. The coordinates live in a :class:`CoordSet`, shared (not copied) by every tensor on the
same sites, so that rulebooks can be cached by coordinate-set identity.

``indice_dict`` is the rulebook cache (spconv's name): a dict carried from each layer's input to
its output, keyed by ``(CoordSet, Geometry)`` (coordinate-set identity, kernel size, stride,
padding, dilation, kind) and by user ``indice_key`` names. A layer whose key is present reuses the
rulebook instead of rebuilding it.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch

from numba import njit, prange

from .hashing import build_table, pack_keys
from .rulebook import _row_strides

MAX_KEY = 2**62


class CoordSet:
    """An immutable set of active sites: coordinates, grid shape, batch size, and the hash table
    from packed coordinate to row (built on first use).

    Compared and hashed by identity: two tensors share rulebooks only if they share the CoordSet
    object (every layer that keeps its sites -- submanifold convolution, BatchNorm, ReLU -- passes
    it on).

    Attributes
    ----------
    coords : numpy.ndarray (P, 1 + D) int32, read-only
    spatial_shape : tuple of int (D,)
    batch_size : int
    """

    __slots__ = ("coords", "spatial_shape", "batch_size", "_keys", "_table", "_sorted",
                 "__weakref__")

    def __init__(self, coords: np.ndarray, spatial_shape: tuple[int, ...], batch_size: int,
                 keys: np.ndarray | None = None, table=None):
        coords = np.ascontiguousarray(coords, dtype=np.int32)
        coords.setflags(write=False)
        self.coords = coords
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        self.batch_size = int(batch_size)
        self._keys = keys
        self._table = table
        self._sorted = None

    @property
    def n(self) -> int:
        return self.coords.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.spatial_shape)

    def keys(self) -> np.ndarray:
        """(P,) int64 packed keys: the row-major linear index in ``(batch, *spatial_shape)``."""
        if self._keys is None:
            self._keys = pack_keys(self.coords, _row_strides(self.batch_size, self.spatial_shape))
        return self._keys

    def is_sorted(self) -> bool:
        """Whether the sites are in strictly ascending key (lexicographic) order."""
        if self._sorted is None:
            from .rulebook import _strictly_ascending
            self._sorted = bool(_strictly_ascending(self.keys())) if self.n > 1 else True
        return self._sorted

    def table(self):
        """The :class:`~sparsecnn.spatial.hashing.HashTable` ``key -> row`` (``H_in``).

        Raises
        ------
        ValueError
            If two rows hold the same coordinate.
        """
        if self._table is None:
            table, dup = build_table(self.keys())
            if dup:
                raise ValueError(f"coords has {dup} duplicate site(s), e.g. "
                                 f"{_first_duplicate(self.coords)}; each (batch, *xyz) must "
                                 "appear once")
            self._table = table
        return self._table

    def __repr__(self) -> str:
        return (f"CoordSet(n={self.n}, spatial_shape={self.spatial_shape}, "
                f"batch_size={self.batch_size})")


@njit(cache=True, nogil=True, parallel=True)
def _col_min_max(a):
    """Per-column (min, max) of an int array (P, M), P >= 1 (parallel over row blocks)."""
    n, m = a.shape
    block = 1 << 14
    nb = (n + block - 1) // block
    lo = np.empty((nb, m), dtype=np.int64)
    hi = np.empty((nb, m), dtype=np.int64)
    for b in prange(nb):
        for c in range(m):
            lo[b, c] = a[b * block, c]
            hi[b, c] = a[b * block, c]
        for i in range(b * block, min(n, (b + 1) * block)):
            for c in range(m):
                v = a[i, c]
                if v < lo[b, c]:
                    lo[b, c] = v
                if v > hi[b, c]:
                    hi[b, c] = v
    out_lo = lo[0].copy()
    out_hi = hi[0].copy()
    for b in range(1, nb):
        for c in range(m):
            out_lo[c] = min(out_lo[c], lo[b, c])
            out_hi[c] = max(out_hi[c], hi[b, c])
    return out_lo, out_hi


def _first_duplicate(coords: np.ndarray) -> list[int]:
    u, inv, cnt = np.unique(coords, axis=0, return_inverse=True, return_counts=True)
    return u[np.argmax(cnt)].tolist()


def _as_int(value, name: str) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


class SparseTensor:
    """Features on the active sites of a 2-D or 3-D grid (spconv's ``SparseConvTensor``,
    MinkowskiEngine's ``SparseTensor``).

    Parameters
    ----------
    feats : torch.Tensor (P, C) float32
        Features of the active sites (``features`` is an alias).
    coords : torch.Tensor or numpy.ndarray (P, 1 + D), integer
        ``(batch, x_1, ..., x_D)`` per site (``indices`` is an alias); stored as int32. Any order
        is accepted; lexicographic order (what :meth:`from_dense` and :meth:`from_points` give)
        makes neighbouring sites neighbouring rows, which the kernels' caches like.
    spatial_shape : sequence of D ints
        Grid size per spatial dimension (D = 1 .. 4; the modules provide 2-D and 3-D).
    batch_size : int, optional
        Default: largest batch index + 1 (1 for an empty tensor).

    Raises
    ------
    TypeError
        ``feats`` not a float32 tensor, ``coords`` not integer, ``batch_size`` not an int.
    ValueError
        Wrong ranks, ``P`` of ``feats`` and ``coords`` differing, ``spatial_shape`` not matching
        ``D`` or not positive, a coordinate or batch index outside the grid, a duplicate site.
    """

    def __init__(self, feats, coords, spatial_shape, batch_size=None):
        if isinstance(feats, np.ndarray):
            feats = torch.from_numpy(feats)
        if not isinstance(feats, torch.Tensor):
            raise TypeError(f"feats must be a torch.Tensor (P, C) float32, got {type(feats).__name__}")
        if feats.dtype != torch.float32:
            raise TypeError(f"feats must be float32, got {feats.dtype}")
        if feats.dim() != 2:
            raise ValueError(f"feats must be 2-D (P, C), got shape {tuple(feats.shape)}")
        if isinstance(coords, torch.Tensor):
            coords = coords.detach().cpu().numpy()
        coords = np.asarray(coords)
        if not np.issubdtype(coords.dtype, np.integer):
            raise TypeError(f"coords must be an integer array (P, 1 + D), got dtype {coords.dtype}")
        if coords.ndim != 2 or coords.shape[1] < 2:
            raise ValueError(f"coords must be 2-D (P, 1 + D) with D >= 1, got shape {coords.shape}")
        if coords.shape[0] != feats.shape[0]:
            raise ValueError(f"feats has {feats.shape[0]} rows but coords has {coords.shape[0]}: "
                             "one feature row per site expected")
        if isinstance(spatial_shape, torch.Size):
            spatial_shape = tuple(spatial_shape)
        if isinstance(spatial_shape, Integral) or not hasattr(spatial_shape, "__len__"):
            raise TypeError(f"spatial_shape must be a sequence of ints, got {spatial_shape!r}")
        shape = tuple(_as_int(s, "spatial_shape entries") for s in spatial_shape)
        d = coords.shape[1] - 1
        if len(shape) != d:
            raise ValueError(f"spatial_shape {shape} has {len(shape)} dims but coords has D = {d} "
                             "(columns after the batch index)")
        if not 1 <= d <= 4:
            raise ValueError(f"D = {d} spatial dims not supported (1 .. 4)")
        if min(shape) < 1:
            raise ValueError(f"spatial_shape must be positive, got {shape}")
        n = coords.shape[0]
        if n:
            if coords.dtype != np.int32 and coords.dtype != np.int64:
                coords = coords.astype(np.int64)
            coords = np.ascontiguousarray(coords)
            lo, hi = _col_min_max(coords)
        if batch_size is None:
            batch_size = int(hi[0]) + 1 if n else 1
        batch_size = _as_int(batch_size, "batch_size")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(np.prod(shape, dtype=np.float64) * batch_size) >= MAX_KEY:
            raise ValueError(f"grid {batch_size} x {shape} too large (>= 2^62 sites)")
        if n:
            bounds = (batch_size, *shape)
            for c in range(d + 1):
                if lo[c] < 0 or hi[c] >= bounds[c]:
                    what = "batch index" if c == 0 else f"coordinate {c - 1}"
                    bad = int(lo[c]) if lo[c] < 0 else int(hi[c])
                    raise ValueError(f"coords column {c} ({what}) has value {bad} outside "
                                     f"[0, {bounds[c]}) (spatial_shape {shape}, batch_size "
                                     f"{batch_size})")
        cs = CoordSet(coords, shape, batch_size)
        cs.table()  # builds H_in; raises on duplicates
        self._init(feats, cs, {})

    # --- construction without validation (layers) ---------------------------------------
    def _init(self, feats: torch.Tensor, cs: CoordSet, indice_dict: dict):
        self.features = feats
        self.coord_set = cs
        self.indice_dict = indice_dict

    @classmethod
    def _make(cls, feats: torch.Tensor, cs: CoordSet, indice_dict: dict) -> SparseTensor:
        t = cls.__new__(cls)
        t._init(feats, cs, indice_dict)
        return t

    def replace_feature(self, feats: torch.Tensor) -> SparseTensor:
        """A tensor on the same sites (same CoordSet and rulebook cache) with new features
        (P, C') float32."""
        if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or feats.shape[0] != self.n:
            raise ValueError(f"replacement features must be a tensor ({self.n}, C), got "
                             f"{getattr(feats, 'shape', type(feats).__name__)}")
        return SparseTensor._make(feats, self.coord_set, self.indice_dict)

    # --- properties -------------------------------------------------------------------------
    @property
    def feats(self) -> torch.Tensor:
        return self.features

    @property
    def coords(self) -> torch.Tensor:
        """(P, 1 + D) int32 tensor (a read-only view of the CoordSet's array)."""
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # non-writable array
            return torch.from_numpy(self.coord_set.coords)

    indices = coords

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.coord_set.spatial_shape

    @property
    def batch_size(self) -> int:
        return self.coord_set.batch_size

    @property
    def n(self) -> int:
        """Number of active sites P."""
        return self.coord_set.n

    @property
    def ndim_spatial(self) -> int:
        return self.coord_set.ndim

    @property
    def channels(self) -> int:
        return self.features.shape[1]

    def __repr__(self) -> str:
        return (f"SparseTensor(n={self.n}, channels={self.channels}, spatial_shape="
                f"{self.spatial_shape}, batch_size={self.batch_size})")

    # --- dense conversion -------------------------------------------------------------------
    def to_dense(self) -> torch.Tensor:
        """The dense tensor (batch_size, C, *spatial_shape) float32 (channels first, as torch's
        conv input); inactive sites are 0. Differentiable w.r.t. the features."""
        b, shape = self.batch_size, self.spatial_shape
        c = self.channels
        lin = torch.from_numpy(self.coord_set.keys())
        flat = self.features.new_zeros((b * int(np.prod(shape)), c))
        flat = flat.index_copy(0, lin, self.features)
        return flat.view(b, *shape, c).movedim(-1, 1).contiguous()

    dense = to_dense

    @classmethod
    def from_dense(cls, x: torch.Tensor, mask: torch.Tensor | None = None) -> SparseTensor:
        """Sparse tensor of the sites of ``x`` (N, C, *spatial) float32 where any channel is
        nonzero (or where ``mask`` (N, *spatial) bool is True), in lexicographic order.

        Raises
        ------
        TypeError, ValueError
            ``x`` not a float32 tensor of rank 3..6, ``mask`` of another shape.
        """
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
            raise TypeError(f"x must be a float32 torch.Tensor (N, C, *spatial), got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if not 3 <= x.dim() <= 6:
            raise ValueError(f"x must be (N, C, *spatial) with 1..4 spatial dims, got {tuple(x.shape)}")
        if mask is None:
            mask = (x != 0).any(dim=1)
        elif tuple(mask.shape) != (x.shape[0], *x.shape[2:]):
            raise ValueError(f"mask must have shape {(x.shape[0], *x.shape[2:])}, got "
                             f"{tuple(mask.shape)}")
        coords = torch.nonzero(mask).to(torch.int32)
        idx = coords.long()
        feats = x.movedim(1, -1)[tuple(idx.T)].contiguous()
        return cls(feats, coords, tuple(x.shape[2:]), batch_size=x.shape[0])

    @classmethod
    def from_points(cls, xyz, voxel_size, feats=None, batch=None, origin=None,
                    spatial_shape=None) -> SparseTensor:
        """Voxelise a point cloud: quantise ``floor((xyz - origin) / voxel_size)`` and average the
        features of the points falling in each voxel.

        Parameters
        ----------
        xyz : torch.Tensor or numpy.ndarray (N, D) float
            Point positions (any unit; ``voxel_size`` in the same unit).
        voxel_size : float or sequence of D floats, > 0
        feats : (N, C) float, optional
            Point features, averaged per voxel; default one channel of ones (occupancy).
        batch : (N,) int, optional
            Batch index of each point (default all 0).
        origin : sequence of D floats, optional
            Grid corner; default the per-dimension minimum of ``xyz``.
        spatial_shape : sequence of D ints, optional
            Default: just large enough for every point. Points outside it raise ValueError.

        Returns
        -------
        SparseTensor with sites in lexicographic order, feats float32.
        """
        xyz = torch.as_tensor(np.asarray(xyz) if not isinstance(xyz, torch.Tensor) else xyz)
        if not torch.is_floating_point(xyz) or xyz.dim() != 2:
            raise TypeError(f"xyz must be a float (N, D) array, got {xyz.dtype} {tuple(xyz.shape)}")
        n, d = xyz.shape
        xyz = xyz.double()
        vs = torch.as_tensor(voxel_size, dtype=torch.float64).reshape(-1).expand(d)
        if not bool((vs > 0).all()) or not bool(torch.isfinite(vs).all()):
            raise ValueError(f"voxel_size must be > 0, got {voxel_size!r}")
        if not bool(torch.isfinite(xyz).all()):
            raise ValueError("xyz has non-finite values")
        if origin is None:
            origin = xyz.min(dim=0).values if n else torch.zeros(d, dtype=torch.float64)
        origin = torch.as_tensor(origin, dtype=torch.float64).reshape(d)
        q = torch.floor((xyz - origin) / vs).long()
        if batch is None:
            b = torch.zeros(n, dtype=torch.long)
        else:
            b = torch.as_tensor(np.asarray(batch) if not isinstance(batch, torch.Tensor) else batch).long()
            if b.shape != (n,):
                raise ValueError(f"batch must have shape ({n},), got {tuple(b.shape)}")
        if feats is None:
            f = torch.ones(n, 1, dtype=torch.float32)
        else:
            f = torch.as_tensor(np.asarray(feats) if not isinstance(feats, torch.Tensor) else feats)
            if f.dim() != 2 or f.shape[0] != n:
                raise ValueError(f"feats must be (N={n}, C), got {tuple(f.shape)}")
            f = f.float()
        if spatial_shape is None:
            spatial_shape = tuple(int(v) + 1 for v in q.max(dim=0).values) if n else (1,) * d
        if n and (int(q.min()) < 0 or any(int(q[:, i].max()) >= spatial_shape[i] for i in range(d))):
            raise ValueError(f"points fall outside spatial_shape {tuple(spatial_shape)} with "
                             f"origin {origin.tolist()} and voxel_size {vs.tolist()}")
        if n and int(b.min()) < 0:
            raise ValueError("batch indices must be >= 0")
        batch_size = int(b.max()) + 1 if n else 1
        strides = torch.from_numpy(_row_strides(batch_size, tuple(spatial_shape)))
        lin = b * strides[0] + (q * strides[1:]).sum(dim=1)
        ulin, inv = torch.unique(lin, return_inverse=True)            # sorted: lexicographic
        cnt = torch.bincount(inv, minlength=ulin.shape[0]).clamp_min(1).float()
        acc = torch.zeros(ulin.shape[0], f.shape[1], dtype=torch.float32).index_add_(0, inv, f)
        uniq = torch.empty(ulin.shape[0], d + 1, dtype=torch.long)
        r = ulin.clone()
        for c in range(d + 1):
            uniq[:, c] = torch.div(r, strides[c], rounding_mode="floor")
            r = r - uniq[:, c] * strides[c]
        return cls(acc / cnt[:, None], uniq.to(torch.int32), tuple(spatial_shape),
                   batch_size=batch_size)

"""Functional sparse convolution and pooling on :class:`~sparsecnn.spatial.SparseTensor`.

All argument checking happens here; the kernels (:mod:`sparsecnn.spatial.kernels`) and rulebook
builders (:mod:`sparsecnn.spatial.rulebook`) assume valid input.

- :func:`sparse_conv` -- submanifold (``kind="subm"``), regular (``"conv"``) or inverse
  (``"inverse"``) convolution with a torch-layout weight (C_out, C_in, k_1, ..., k_D).
- :func:`sparse_max_pool` -- max over the active sites of each window (regular output sites).
- :func:`get_rulebook` -- the rulebook of a layer, from the tensor's ``indice_dict`` or built and
  stored there.

Gradients: input features, weight and bias are differentiable (a ``torch.autograd.Function``:
the input gradient is the same fused kernel over the transposed rulebook with ``W_k^T``; the weight
gradient is ``X[in_k]^T dY[out_k]`` per offset).
"""

from __future__ import annotations

from numbers import Integral

import torch

from .. import dispatch
from ..kernels import prepared as _prepared
from ..kernels import registry
from . import kernels as K
from .problem import SparseConvProblem
from .rulebook import Geometry, RuleBook, build_conv, build_subm
from .tensor import CoordSet, SparseTensor


def _tuple(v, d: int, name: str) -> tuple[int, ...]:
    if isinstance(v, Integral) and not isinstance(v, bool):
        v = (int(v),) * d
    try:
        t = tuple(v)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of {d} ints, got {v!r}") from None
    if len(t) != d or not all(isinstance(a, Integral) and not isinstance(a, bool) for a in t):
        raise ValueError(f"{name} must be an int or {d} ints, got {v!r}")
    return tuple(int(a) for a in t)


def make_geometry(kind: str, ndim: int, kernel_size, stride=1, padding=0, dilation=1) -> Geometry:
    """Validated :class:`Geometry`. For ``kind="subm"`` the kernel must be odd, stride 1, and
    ``padding`` is ignored (the window is centred: ``d (k - 1) / 2``).

    Raises
    ------
    ValueError
        Unknown kind, sizes < 1 (padding < 0), an even submanifold kernel or a strided one.
    """
    if kind not in ("subm", "conv", "inverse"):
        raise ValueError(f"kind must be 'subm', 'conv' or 'inverse', got {kind!r}")
    ks = _tuple(kernel_size, ndim, "kernel_size")
    st = _tuple(stride, ndim, "stride")
    dl = _tuple(dilation, ndim, "dilation")
    pd = _tuple(padding, ndim, "padding")
    if min(ks) < 1 or min(st) < 1 or min(dl) < 1:
        raise ValueError(f"kernel_size, stride and dilation must be >= 1, got {ks}, {st}, {dl}")
    if min(pd) < 0:
        raise ValueError(f"padding must be >= 0, got {pd}")
    if kind == "subm":
        if any(k % 2 == 0 for k in ks):
            raise ValueError(f"submanifold convolution needs an odd kernel_size, got {ks}")
        if any(s != 1 for s in st):
            raise ValueError(f"submanifold convolution has stride 1, got {st}")
        pd = tuple(d * (k - 1) // 2 for k, d in zip(ks, dl))
    return Geometry(kind, ks, st, pd, dl)


def get_rulebook(x: SparseTensor, geometry: Geometry, indice_key: str | None = None) -> tuple[RuleBook, CoordSet]:
    """The rulebook of a layer of ``geometry`` applied to ``x`` and its output coordinate set.

    Looked up in ``x.indice_dict`` under ``(x.coord_set, geometry)`` (and, for
    ``kind="inverse"``, under ``indice_key``: the forward convolution whose rulebook is
    transposed); built and stored there when absent. A regular convolution's rulebook is also
    stored under ``indice_key`` if given, for the inverse convolution that undoes it.

    Raises
    ------
    KeyError
        ``kind="inverse"`` and no forward rulebook is stored under ``indice_key`` (or it does not
        end on ``x``'s sites).
    """
    cs = x.coord_set
    cache = x.indice_dict
    if geometry.kind == "inverse":
        fwd = cache.get(indice_key) if indice_key is not None else None
        if fwd is None:
            raise KeyError(f"SparseInverseConv needs the rulebook of the forward SparseConv with "
                           f"indice_key={indice_key!r}; none is stored on this tensor "
                           f"(known keys: {sorted(k for k in cache if isinstance(k, str))})")
        if fwd.coords_out is not cs:
            raise KeyError(f"the rulebook stored under indice_key={indice_key!r} does not end on "
                           "this tensor's sites (the inverse convolution must get the forward "
                           "convolution's output sites)")
        g = fwd.geometry
        if (g.kernel_size, g.stride, g.padding, g.dilation) != (
                geometry.kernel_size, geometry.stride, geometry.padding, geometry.dilation):
            raise ValueError(f"inverse convolution geometry {geometry} does not match the forward "
                             f"one stored under {indice_key!r}: {g}")
        rb = fwd.transposed()
        return rb, rb.coords_out
    key = (cs, geometry)
    rb = cache.get(key)
    if rb is None:
        if geometry.kind == "subm":
            rb = build_subm(cs, geometry)
        else:
            rb, out_coords, oshape, okeys, table = build_conv(cs, geometry)
            rb.coords_out = CoordSet(out_coords, oshape, cs.batch_size, keys=okeys, table=table)
        cache[key] = rb
    if indice_key is not None and (geometry.kind == "conv" or indice_key not in cache):
        # a regular conv names its rulebook for the inverse conv that undoes it (the latest one
        # under a name wins); submanifold layers sharing a name share the first
        cache[indice_key] = rb
    return rb, rb.coords_out


def _weight_kio(weight: torch.Tensor, ndim: int) -> torch.Tensor:
    """(C_out, C_in, *k) -> (K, C_in, C_out) contiguous (differentiable)."""
    cout, cin = weight.shape[:2]
    perm = (*range(2, 2 + ndim), 1, 0)
    return weight.permute(perm).reshape(-1, cin, cout).contiguous()


def _run(x: torch.Tensor, w_kio: torch.Tensor, bias, rb: RuleBook, kernel: registry.Kernel,
         problem: SparseConvProblem) -> torch.Tensor:
    """``kernel.run`` on the (uncached: a tensor) prepared weight (K, C_in, C_out)."""
    return kernel.run(_prepared.prepare(kernel, w_kio, problem), x, bias, rb)


def problem_of(x: torch.Tensor, w_kio: torch.Tensor, rb: RuleBook) -> SparseConvProblem:
    """The :class:`SparseConvProblem` of features ``x`` (P_in, C_in), weight ``w_kio``
    (K, C_in, C_out) and rulebook ``rb``."""
    g = rb.geometry
    cs = rb.coords_in
    return SparseConvProblem(kind=g.kind, ndim=len(g.kernel_size),
                             kernel_size=tuple(g.kernel_size), n_in=rb.n_in, n_out=rb.n_out,
                             c_in=int(w_kio.shape[1]), c_out=int(w_kio.shape[2]),
                             batch_size=int(getattr(cs, "batch_size", 1) or 1),
                             dtype=str(x.dtype).removeprefix("torch."), device=x.device.type)


def kernel_for(problem: SparseConvProblem, algo: str | None = None) -> registry.Kernel:
    """The registered kernel for ``problem``: ``algo`` checked by the registry, or the
    dispatcher's choice (:func:`sparsecnn.dispatch.choose`) when None.

    Raises
    ------
    ValueError
        ``algo`` is not a registered sparse-convolution kernel, or cannot run ``problem``
        (the message says why, e.g. ``C_out`` not a multiple of 8 for ``"fused"``).
    TypeError
        The features' dtype is not one the kernel takes.
    """
    if algo is None:
        return registry.get(problem.op, dispatch.choose(problem))
    if algo not in registry.names(problem.op):
        raise ValueError(f"algo must be one of {registry.names(problem.op)} or None, got {algo!r}")
    try:
        return registry.resolve(problem, algo)
    except ValueError as exc:
        kernel = registry.get(problem.op, algo)
        raise ValueError(f"algo {algo!r} cannot run this convolution (C_in = {problem.c_in}, "
                         f"C_out = {problem.c_out}): {exc}; {algo}: {kernel.description}") from None


class _SparseConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_kio, bias, rb, kernel, problem):
        ctx.save_for_backward(x, w_kio)
        ctx.rb, ctx.kernel, ctx.has_bias = rb, kernel, bias is not None
        with torch.no_grad():
            return _run(x.contiguous(), w_kio, bias, rb, kernel, problem)

    @staticmethod
    def backward(ctx, gy):
        x, w_kio = ctx.saved_tensors
        rb = ctx.rb
        gy = gy.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            # dX[i] = sum_k W_k dY[j] over the transposed rulebook (gather-GEMM-scatter is its
            # own transpose)
            wt = w_kio.transpose(1, 2).contiguous()
            rbt = rb.transposed()
            p = problem_of(gy, wt, rbt)
            kernel = ctx.kernel if ctx.kernel.why_not(p) is None else kernel_for(p)
            gx = _run(gy, wt, None, rbt, kernel, p)
        if ctx.needs_input_grad[1]:
            starts, ii, oo = rb.pairs()
            ti, to = torch.from_numpy(ii), torch.from_numpy(oo)
            gw = torch.zeros_like(w_kio)
            for k in range(w_kio.shape[0]):
                s, e = int(starts[k]), int(starts[k + 1])
                if e > s:
                    gw[k] = x.index_select(0, ti[s:e]).T @ gy.index_select(0, to[s:e])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum(0)
        return gx, gw, gb, None, None, None


def sparse_conv(x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                kind: str = "subm", stride=1, padding=0, dilation=1, indice_key: str | None = None,
                algo: str | None = None) -> SparseTensor:
    """Sparse convolution of ``x`` with a torch-layout weight.

    Parameters
    ----------
    x : SparseTensor with ``D`` spatial dims and ``C_in`` channels
    weight : torch.Tensor (C_out, C_in, k_1, ..., k_D) float32
        As ``torch.nn.ConvNd.weight``. For ``kind="inverse"`` too (C_out = the finer level's
        channels); the dense reference is then ``conv_transposeNd`` with ``weight.transpose(0, 1)``.
    bias : torch.Tensor (C_out,) float32, optional
    kind : {"subm", "conv", "inverse"}
        ``"subm"``: output sites = input sites, centred odd window (Graham & van der Maaten
        2017) -- equal to ``F.conv3d(dense, weight, padding=d(k-1)/2, dilation=d)`` at the active
        sites. ``"conv"``: output sites = every site whose window holds an active input -- equal
        to ``F.conv3d(dense, weight, stride, padding, dilation)`` there (zero elsewhere, bias
        aside). ``"inverse"``: the transposed convolution back onto the input sites of the
        ``"conv"`` layer stored under ``indice_key`` (spconv's ``SparseInverseConv``).
    stride, padding, dilation : int or D ints
        As torch's; ignored for ``"subm"`` except ``dilation``; taken from the forward layer for
        ``"inverse"`` (must match if given).
    indice_key : str, optional
        Name under which a ``"conv"`` stores its rulebook (for a later ``"inverse"``).
    algo : {"fused", "gemm"}, optional
        A kernel registered for the op ``"sparse_conv"`` (:mod:`sparsecnn.spatial.kernels`);
        default: :func:`sparsecnn.dispatch.choose` of the :class:`SparseConvProblem`.

    Returns
    -------
    SparseTensor (P_out, C_out), sharing ``x.indice_dict``.

    Raises
    ------
    TypeError
        ``x`` not a SparseTensor, ``weight`` / ``bias`` not float32 tensors.
    ValueError
        Weight rank or channel mismatch, bad geometry, an unknown ``algo`` or one that cannot
        run the problem (``"fused"`` with ``C_out`` not a multiple of 8).
    KeyError
        ``"inverse"`` without a stored forward rulebook.
    """
    if not isinstance(x, SparseTensor):
        raise TypeError(f"x must be a SparseTensor, got {type(x).__name__}")
    if not isinstance(weight, torch.Tensor) or weight.dtype != torch.float32:
        raise TypeError(f"weight must be a float32 torch.Tensor, got "
                        f"{getattr(weight, 'dtype', type(weight).__name__)}")
    d = x.ndim_spatial
    if weight.dim() != 2 + d:
        raise ValueError(f"weight must be (C_out, C_in, {', '.join(['k'] * d)}) for {d}-D input, "
                         f"got shape {tuple(weight.shape)}")
    if weight.shape[1] != x.channels:
        raise ValueError(f"weight expects C_in = {weight.shape[1]} but x has {x.channels} channels")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.dtype != torch.float32:
            raise TypeError("bias must be a float32 torch.Tensor or None")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    ks = tuple(weight.shape[2:])
    if kind == "inverse":
        fwd = x.indice_dict.get(indice_key) if indice_key is not None else None
        if fwd is not None:
            g = fwd.geometry
            stride, padding, dilation = g.stride, g.padding, g.dilation
    geometry = make_geometry(kind, d, ks, stride, padding, dilation)
    rb, cs_out = get_rulebook(x, geometry, indice_key)
    w_kio = _weight_kio(weight, d)
    feats = x.features
    p = problem_of(feats, w_kio, rb)
    kernel = kernel_for(p, algo)
    if torch.is_grad_enabled() and (feats.requires_grad or weight.requires_grad or
                                    (bias is not None and bias.requires_grad)):
        y = _SparseConvFn.apply(feats, w_kio, bias, rb, kernel, p)
    else:
        y = _run(feats.contiguous(), w_kio, bias, rb, kernel, p)
    return SparseTensor._make(y, cs_out, x.indice_dict)


class _MaxPoolFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rb):
        y, arg = K.maxpool(x.contiguous(), rb.nbr)
        ctx.save_for_backward(arg)
        ctx.n_in = x.shape[0]
        return y

    @staticmethod
    def backward(ctx, gy):
        (arg,) = ctx.saved_tensors
        gx = gy.new_zeros((ctx.n_in, gy.shape[1]))
        gx.scatter_add_(0, arg, gy)
        return gx, None


def sparse_max_pool(x: SparseTensor, kernel_size, stride=None, padding=0, dilation=1,
                    indice_key: str | None = None) -> SparseTensor:
    """Sparse max-pooling (spconv's ``SparseMaxPool``): output sites as a regular sparse
    convolution of the same geometry, each the per-channel max over the *active* sites of its
    window (inactive sites are not zeros here; the dense reference is ``F.max_pool3d`` on the
    densified input with ``-inf`` at inactive sites). ``stride`` defaults to ``kernel_size``.

    Raises
    ------
    TypeError, ValueError
        As :func:`sparse_conv`.
    """
    if not isinstance(x, SparseTensor):
        raise TypeError(f"x must be a SparseTensor, got {type(x).__name__}")
    d = x.ndim_spatial
    geometry = make_geometry("conv", d, kernel_size, kernel_size if stride is None else stride,
                             padding, dilation)
    rb, cs_out = get_rulebook(x, geometry, indice_key)
    if torch.is_grad_enabled() and x.features.requires_grad:
        y = _MaxPoolFn.apply(x.features, rb)
    else:
        y, _ = K.maxpool(x.features.contiguous(), rb.nbr)
    return SparseTensor._make(y, cs_out, x.indice_dict)

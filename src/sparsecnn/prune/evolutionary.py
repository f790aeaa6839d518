"""Evolutionary pruning with rewinding: the seeds' GPU paper (003, section 5.1, Algorithm 1).

The paper prunes with retraining while keeping a *population* of subnetworks, each a vector of
per-layer sparsities. Its text (the equations did not survive in the seeds' copy) gives the parts;
this module implements each of them as follows -- where the paper leaves a choice open, ours is
stated.

Mask score (eqs. 2-3)
    After every training step the mask of layer ``l`` is recomputed: weight ``i`` gets the score

        c_i = alpha * |w_i| / mean_kept(|w|)  +  beta * |g_i| / mean(|g|)          (eq. 2)

    with ``w`` the current (masked) weights, ``g`` an exponential moving average (decay
    ``grad_decay``) of the *dense* gradient dL/dW -- nonzero at pruned positions too, taken
    before the mask (:class:`~sparsecnn.prune.masks.WeightMask` ``track_grad``) -- and the layer
    keeps its ``n_l - z_l`` highest scores (``z_l = round(s_l * n_l)`` zeros at the layer's
    current sparsity ``s_l``):

        m_i = [c_i > c_(z_l)]    (the z_l lowest scores are pruned; exactly z_l)       (eq. 3)

    ``alpha`` and ``beta`` are the weighting coefficients. A pruned weight (``w = 0``) whose
    gradient stays large migrates back into the mask (with value 0, as in RigL, Evci et al.
    2020); with ``beta = 0`` the score is the magnitude and nothing migrates back.

Population, candidates and selection
    Each *iteration* lasts ``interval`` optimizer steps (the paper's "number of batches after
    which the pruning configuration can be changed"). At its end the candidate's top-1 on a
    held-out *validation* set is measured; it is accepted if it is within the accepted drop of
    the solution it was trained from (its parent): ``val >= val_parent - accepted_drop *
    max(1, ln(d_parent / d) / drop_unit)`` with ``d`` the total density (the larger the share of
    the remaining weights a candidate removes -- the ramp's early steps -- the more drop it may
    cost; a fixed threshold rejected nearly every early step of a short run). An
    accepted candidate joins the population and becomes the parent of the next one. The first
    candidate is accepted without comparison (its parent, the starting model, was not trained
    with this loss, and published weights may have been trained on the validation images). The total
    sparsity over the pruned layers follows the same cubic ramp as AGP (Zhu & Gupta 2017) from 0
    at ``start_step`` to ``final_sparsity`` at ``end_step``, so that, at equal training steps,
    evolutionary and AGP spend the same steps at each total sparsity; what the evolution decides
    is how that sparsity is spread over the layers, which weights carry it, and when to go back.

Mask increase by sensitivity
    After an acceptance a subset of the layers (``layer_fraction`` of them, drawn with
    probability proportional to ``1 / sensitivity``) is pruned further: their log-densities
    ``log(1 - s_l)`` go down by ``y * clip(sqrt(min_sens / sens_l), 0.25, 1)``, ``y`` solved
    (bisection) so that the total reaches the ramp's next value, no layer by more than twice
    the step one common shift of all layers would need; what the chosen layers cannot carry
    (that limit, ``max_layer_sparsity``) is spread over all layers.

Rewinding, mutation, crossover
    A rejected candidate's weights are rewound to those of the last accepted solution (weights,
    masks, optimizer momentum and the gradient average; the learning-rate schedule and the step
    budget are *not* rewound: the steps are spent). The next candidate is then a mutation of
    the parent (``mutation_rate`` of the layers get ``N(0, mutation_scale)`` added to their
    log-density) or, with probability ``crossover_prob``, a crossover of two random population
    members (each layer's sparsity from one or the other with probability 1/2), refitted to the
    ramp's total by one common log-density shift. After ``patience`` consecutive rejections the
    best of these attempts (by validation top-1; its weights were kept) is accepted anyway, so
    the ramp is kept.

Sensitivity statistics
    Initialised by a one-shot prune-one-layer sweep on the validation set at ``probe_sparsity``
    (:func:`sparsecnn.prune.sensitivity_sweep`; ``init_sensitivity="uniform"``: all equal).
    After every iteration, each pruned layer's sensitivity is multiplied by
    ``clip((m_l + 0.1 m) / (1.1 m), 0.5, 2) ** sensitivity_rate``, ``m_l`` the share of its
    pruned weights that migrated back into the mask per step during the iteration and ``m`` the
    mean over the pruned layers (weights regrowing = the layer wants capacity back); after a
    rejection the layers that were pruned further are multiplied by ``1 + excess *
    min(1, k * share_l)`` (``share_l`` = their share of the added zeros, ``k`` their number,
    ``excess = min(1, drop / accepted_drop)``). Sensitivities are normalised to geometric mean
    1 and kept within [0.1, 10].

Initial population and clustering
    The population starts from ``population_size`` sparsity vectors (line 1 of Algorithm 1):
    the allocation of one global magnitude threshold, the uniform one and random log-density
    perturbations of the first (``initial_spread``), each fitted to ``probe_sparsity`` and
    scored by one-shot validation top-1 (no training); the best is the first candidate's shape.
    When the population outgrows ``population_size``, its sparsity vectors are clustered with
    k-means (``clusters``; :func:`scipy.cluster.vq.kmeans2`) and only the fittest
    ``population_size // clusters`` of each cluster stay (the current parent always stays).

Budget: the method spends exactly the optimizer steps of the training loop (rewinding does not
add steps); in addition it runs forward passes on the validation set (one per iteration, plus
``population_size`` + number-of-layers one-shot evaluations at the start), counted in
:meth:`EvolutionaryPruner.summary`.

Distributed training: every rank runs the same decisions -- validation counts are summed over
ranks, the dense gradients averaged, and the random generator is seeded alike -- so the masks are
identical on every rank (checked by :func:`sparsecnn.prune.distributed.check_masks_identical`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from . import distributed as D
from .masks import _keep_top, _mask_param, check_sparsity, select_layers, set_mask_
from .schedule import agp_sparsity


@dataclass(frozen=True)
class EvolutionConfig:
    """Parameters of :class:`EvolutionaryPruner` (the paper's inputs plus our choices).

    Attributes
    ----------
    population_size : int
        Solutions kept in the population (the paper's population size), >= 2.
    clusters : int
        k-means clusters when the population overflows, >= 1.
    interval : int or None
        Optimizer steps per iteration (the paper's batches between configuration changes);
        None: the recipe's pruning frequency (half an epoch by default).
    accepted_drop : float
        Accepted validation top-1 drop of a candidate against its parent (the paper's
        accuracy threshold), in [0, 1], per ``drop_unit`` of the total log-density the
        candidate removes (at least ``accepted_drop``).
    drop_unit : float
        Log-density cut (``ln(d_parent / d_candidate)``, total over the pruned layers) that
        one ``accepted_drop`` pays for, > 0; 0.1 = about 10 % of the remaining weights.
    alpha, beta : float
        Weights of the normalised magnitude and gradient terms of the score (eq. 2), >= 0, not
        both 0.
    grad_decay : float
        Decay of the moving average of the dense gradient, in [0, 1) (0: last step only).
    mask_every : int
        Optimizer steps between mask recomputations (the paper: 1, every step).
    layer_fraction : float
        Share of the layers pruned further after an acceptance, in (0, 1].
    mutation_rate, mutation_scale : float
        Share of layers a mutation changes, in (0, 1], and the standard deviation of the change
        of their log-density, > 0.
    crossover_prob : float
        Probability that a rejection is followed by a crossover (else a mutation), in [0, 1].
    patience : int
        Consecutive rejections after which the best of these attempts is accepted anyway, >= 1.
    sensitivity_rate : float
        Exponent of the migration update of the sensitivities, in [0, 1].
    init_sensitivity : {"sweep", "uniform"}
        Initial sensitivities from a one-shot prune-one-layer sweep, or all 1.
    probe_sparsity : float or None
        Sparsity of the one-shot probes (sweep and initial population); None: the ramp's value
        halfway between start and end (0.875 * final_sparsity).
    initial_spread : float
        Standard deviation of the random log-density perturbations of the initial population.
    max_layer_sparsity : float
        Upper bound of any layer's sparsity, in (0, 1) (at least one weight stays).
    """

    population_size: int = 8
    clusters: int = 3
    interval: int | None = None
    accepted_drop: float = 0.02
    drop_unit: float = 0.1
    alpha: float = 1.0
    beta: float = 0.1
    grad_decay: float = 0.9
    mask_every: int = 1
    layer_fraction: float = 0.5
    mutation_rate: float = 0.25
    mutation_scale: float = 0.3
    crossover_prob: float = 0.5
    patience: int = 2
    sensitivity_rate: float = 0.3
    init_sensitivity: str = "sweep"
    probe_sparsity: float | None = None
    initial_spread: float = 0.3
    max_layer_sparsity: float = 0.995

    def replace(self, **changes) -> "EvolutionConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "EvolutionConfig":
        """Return self; raise ValueError naming the first bad field."""
        def _int(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"evolution.{name} must be an int >= {lo}, got {v!r}")

        def _num(name, lo, hi, lo_open=False, hi_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise ValueError(f"evolution.{name} must be a number, got {v!r}")
            if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
                raise ValueError(f"evolution.{name} must be in {'(' if lo_open else '['}{lo}, "
                                 f"{hi}{')' if hi_open else ']'}, got {v!r}")

        _int("population_size", 2)
        _int("clusters", 1)
        if self.interval is not None:
            _int("interval", 1)
        _int("mask_every", 1)
        _int("patience", 1)
        _num("accepted_drop", 0.0, 1.0)
        _num("drop_unit", 0.0, math.inf, lo_open=True)
        _num("alpha", 0.0, math.inf)
        _num("beta", 0.0, math.inf)
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("evolution.alpha and evolution.beta cannot both be 0")
        _num("grad_decay", 0.0, 1.0, hi_open=True)
        _num("layer_fraction", 0.0, 1.0, lo_open=True)
        _num("mutation_rate", 0.0, 1.0, lo_open=True)
        _num("mutation_scale", 0.0, math.inf, lo_open=True)
        _num("crossover_prob", 0.0, 1.0)
        _num("sensitivity_rate", 0.0, 1.0)
        _num("initial_spread", 0.0, math.inf)
        _num("max_layer_sparsity", 0.0, 1.0, lo_open=True, hi_open=True)
        if self.probe_sparsity is not None:
            check_sparsity(self.probe_sparsity, "evolution.probe_sparsity")
        if self.init_sensitivity not in ("sweep", "uniform"):
            raise ValueError("evolution.init_sensitivity must be 'sweep' or 'uniform', got "
                             f"{self.init_sensitivity!r}")
        return self


# ------------------------------------------------------------------------------------------------
# sparsity vectors: fitting a total, realising integer zero counts
# ------------------------------------------------------------------------------------------------
def fit_total(log_density: np.ndarray, numel: np.ndarray, total: float, min_density: np.ndarray,
              weights: np.ndarray | None = None, max_step: float | None = None) -> np.ndarray:
    """Per-layer sparsities ``1 - clip(exp(log_density - min(y * weights, max_step)),
    min_density, 1)`` with ``y`` solved (bisection) so that the weighted total sparsity
    ``sum(n_l s_l) / sum(n_l)`` is ``total``.

    ``weights`` None: one common shift of every layer (``y`` may be negative). With weights
    (>= 0, zero for layers left alone) ``y >= 0`` and each layer's log-density goes down by at
    most ``max_step`` (None: no limit); if the weighted layers cannot reach the total within
    that, they take their limit and the rest is spread over all layers by a common shift.

    Returns float64 sparsities in [0, 1 - min_density].
    """
    return _fit(log_density, numel, total, min_density, weights, max_step)[0]


def uniform_shift(log_density: np.ndarray, numel: np.ndarray, total: float,
                  min_density: np.ndarray) -> float:
    """The common log-density shift ``y`` with which :func:`fit_total` (no weights) reaches
    ``total``."""
    return _fit(log_density, numel, total, min_density, None, None)[1]


def _fit(log_density, numel, total, min_density, weights, max_step):
    log_density = np.asarray(log_density, dtype=np.float64)
    n = np.asarray(numel, dtype=np.float64)
    dmin = np.asarray(min_density, dtype=np.float64)
    target = float(total) * n.sum()
    cap = float((n * (1.0 - dmin)).sum())
    if target >= cap:
        return 1.0 - dmin, 60.0
    w = np.ones_like(n) if weights is None else np.asarray(weights, dtype=np.float64)
    limit = np.inf if max_step is None else float(max_step)

    def sparsity(y):
        step = np.minimum(y * w, limit)
        d = np.clip(np.exp(np.minimum(log_density - step, 0.0)), dmin, 1.0)
        return 1.0 - d

    def zeros(y):
        return float((n * sparsity(y)).sum())

    lo, hi = (-60.0, 60.0) if weights is None else (0.0, 60.0)
    if weights is not None and zeros(hi) < target:
        base = np.log(np.clip(1.0 - sparsity(hi), dmin, 1.0))
        return _fit(base, n, total, dmin, None, None)
    if zeros(lo) >= target:
        return sparsity(lo), lo
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if zeros(mid) < target:
            lo = mid
        else:
            hi = mid
    return sparsity(hi), hi


def zeros_per_layer(sparsity: np.ndarray, numel: np.ndarray, total: float,
                    max_zeros: np.ndarray) -> np.ndarray:
    """Integer zeros per layer realising ``sparsity`` with exactly ``round(total * sum(numel))``
    zeros in all (or ``sum(max_zeros)`` if fewer), each within ``[0, max_zeros]``: the floors of
    ``sparsity * numel``, then what is missing (or too much) spread in proportion to each layer's
    room, the last few by largest remainder."""
    n = np.asarray(numel, dtype=np.int64)
    cap = np.asarray(max_zeros, dtype=np.int64)
    want = int(round(float(total) * int(n.sum())))
    want = min(want, int(cap.sum()))
    exact = np.clip(np.asarray(sparsity, dtype=np.float64) * n, 0, cap)
    z = np.floor(exact).astype(np.int64)
    rest = want - int(z.sum())
    if rest == 0:
        return z
    sign = 1 if rest > 0 else -1
    room = (cap - z) if sign > 0 else z.copy()
    # the bulk proportionally to each layer's room, the last few by largest remainder
    share = np.minimum(room, np.floor(room * abs(rest) / max(int(room.sum()), 1)).astype(np.int64))
    z += sign * share
    rest -= sign * int(share.sum())
    room -= share
    order = np.argsort(-(exact - np.floor(exact)) * sign, kind="stable")
    while rest != 0 and room.sum() > 0:
        for j in order:
            if rest != 0 and room[j] > 0:
                z[j] += sign
                room[j] -= 1
                rest -= sign
    return z


# ------------------------------------------------------------------------------------------------
# the pruner
# ------------------------------------------------------------------------------------------------
class EvolutionaryPruner:
    """Evolutionary pruning with rewinding; call :meth:`step` after every optimizer step.

    Parameters
    ----------
    model : torch.nn.Module
        Masks (all ones) are attached to the selected layers at construction: build the
        optimizer after the pruner. With :func:`sparsecnn.prune.train` the optimizer is bound
        automatically (:meth:`bind`); used by hand, call ``bind(optimizer)`` first.
    final_sparsity : float in [0, 1)
        Total sparsity over the pruned layers at ``end_step`` (exact: ``round(s * weights)``
        zeros in all).
    start_step, end_step : int
        The ramp of the total sparsity (cubic, as AGP), ``0 <= start_step < end_step``.
    val_loader : iterable of (x, y)
        The validation set the selection sees (hold it out of the training data; never the test
        set). Under torch.distributed each rank evaluates its share and the counts are summed.
    config : EvolutionConfig
    skip_first_conv, skip_classifier, layers, types
        Layer selection, see :func:`sparsecnn.prune.select_layers`.
    seed : int
        Seeds the evolution's random generator (mutations, crossovers, layer choices, k-means).

    Attributes
    ----------
    t : int
        Calls of :meth:`step` so far.
    current_sparsity : float
        Total sparsity of the current masks over the pruned layers.
    sparsities : dict of str to float
        The current per-layer sparsities.
    history : list of dict
        One row per iteration (step, total, val top-1, parent's, accepted, kind of candidate...).

    Raises
    ------
    ValueError
        Bad sparsity, steps, configuration or layer names.
    """

    def __init__(
        self,
        model: nn.Module,
        final_sparsity: float,
        start_step: int,
        end_step: int,
        val_loader,
        *,
        config: EvolutionConfig | None = None,
        skip_first_conv: bool = False,
        skip_classifier: bool = False,
        layers: Iterable[str] | None = None,
        seed: int = 0,
    ):
        self.final_sparsity = check_sparsity(final_sparsity, "final_sparsity")
        for label, v in (("start_step", start_step), ("end_step", end_step)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{label} must be an int, got {v!r}")
        if start_step < 0 or end_step <= start_step:
            raise ValueError(f"need 0 <= start_step < end_step, got start_step={start_step}, "
                             f"end_step={end_step}")
        self.config = (config or EvolutionConfig()).validate()
        if val_loader is None:
            raise ValueError("evolutionary pruning needs a validation loader (held-out data)")
        self.model = model
        self.start_step, self.end_step = start_step, end_step
        self.interval = self.config.interval or max(1, (end_step - start_step) // 20)
        self.val_loader = val_loader
        self.seed = int(seed)
        chosen = select_layers(model, layers, skip_first_conv=skip_first_conv,
                               skip_classifier=skip_classifier)
        self.layer_names = [n for n, _ in chosen]
        self._modules = [m for _, m in chosen]
        for module in self._modules:
            if _mask_param(module) is None:
                set_mask_(module, torch.ones_like(module.weight, dtype=torch.bool))
            _mask_param(module).track_grad = self.config.beta > 0
        self.numel = np.array([m.weight.numel() for m in self._modules], dtype=np.int64)
        keep_min = np.maximum(1, np.ceil((1.0 - self.config.max_layer_sparsity) * self.numel))
        self.max_zeros = (self.numel - keep_min).astype(np.int64)
        self.min_density = 1.0 - self.max_zeros / self.numel
        self.gen = torch.Generator().manual_seed(self.seed * 7919 + 17)
        self.optimizer = None
        self._log: Callable[[str], None] | None = None
        self._val_shard = None
        self._device = None
        # evolving state
        self.t = 0
        self.zeros = np.zeros(len(self._modules), dtype=np.int64)
        self.current_sparsity = 0.0
        self.sensitivity = np.ones(len(self._modules))
        self.population: list[dict] = []
        self.parent: dict | None = None  # {"sparsity", "fitness", "step", "state"}
        self.candidate: dict | None = None
        self.next_boundary = start_step
        self.rejections = 0
        self.best_rejected: dict | None = None  # the best rejected attempt since the parent
        self.phase = "waiting"  # -> "evolving" -> "finetune"
        self.history: list[dict] = []
        self.counts = {"evaluations": 0, "val_images": 0, "accepted": 0, "rejected": 0,
                       "forced": 0, "rewinds": 0, "mutations": 0, "crossovers": 0,
                       "increases": 0, "clusterings": 0, "mask_updates": 0, "migrated_in": 0}
        self._ema = [None] * len(self._modules)
        self._migrated = np.zeros(len(self._modules))
        self._migration_steps = 0
        self.initial: dict = {}

    # -- binding --------------------------------------------------------------------------------
    def bind(self, optimizer: torch.optim.Optimizer, *, log: Callable[[str], None] | None = None,
             device: torch.device | None = None) -> None:
        """Give the pruner the optimizer (rewinding restores its momentum), a log function
        (one line per iteration) and the device batches go to."""
        self.optimizer = optimizer
        self._log = log
        self._device = device

    @property
    def sparsities(self) -> dict[str, float]:
        return {n: int(z) / int(k) for n, z, k in zip(self.layer_names, self.zeros, self.numel)}

    def sparsity_at(self, step: int) -> float:
        """The ramp's total sparsity at optimizer step ``step`` (cubic, AGP)."""
        return agp_sparsity(step, 0.0, self.final_sparsity, self.start_step, self.end_step)

    # -- helpers --------------------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        if self._log is not None:
            self._log(msg)

    def _evaluate(self) -> float:
        if self._val_shard is None:
            self._val_shard = D.shard_eval_loader(self.val_loader)
        acc = D.evaluate(self.model, self._val_shard, self._device)
        self.counts["evaluations"] += 1
        self.counts["val_images"] += _len_dataset(self.val_loader)
        return acc

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.gen))

    def _randn(self, n: int) -> np.ndarray:
        return torch.randn(n, generator=self.gen).double().numpy()

    def _log_density(self, sparsity) -> np.ndarray:
        d = np.clip(1.0 - np.asarray(sparsity, dtype=np.float64), self.min_density, 1.0)
        return np.log(d)

    def _fit(self, log_density, total, weights=None) -> np.ndarray:
        return fit_total(log_density, self.numel, total, self.min_density, weights)

    def _vec(self) -> np.ndarray:
        return self.zeros / self.numel

    # -- gradients and masks --------------------------------------------------------------------
    def _update_grad_ema(self) -> None:
        if self.config.beta == 0:
            return
        decay = self.config.grad_decay
        for i, module in enumerate(self._modules):
            p = _mask_param(module)
            g = p.dense_grad
            p.dense_grad = None
            if g is None:
                continue
            g = D.all_reduce_mean_(g.float())
            if self._ema[i] is None:
                self._ema[i] = g.clone()
            else:
                self._ema[i].mul_(decay).add_(g, alpha=1.0 - decay)

    def _scores(self, i: int, module: nn.Module) -> torch.Tensor:
        w = module.weight.detach().abs().float()
        n_kept = int((w > 0).sum())
        mean_kept = float(w.sum()) / n_kept if n_kept else 1.0
        score = self.config.alpha * w / (mean_kept + 1e-12)
        if self.config.beta > 0 and self._ema[i] is not None:
            g = self._ema[i].abs()
            score = score + self.config.beta * g / (float(g.mean()) + 1e-12)
        return score

    def _apply(self, zeros: np.ndarray, *, count_migration: bool) -> None:
        """Recompute every layer's mask from the scores at ``zeros`` zeros (eq. 3)."""
        for i, module in enumerate(self._modules):
            p = _mask_param(module)
            old = p.mask.detach() > 0
            keep = _keep_count(self._scores(i, module), int(zeros[i]))
            if count_migration:
                back = int((keep & ~old).sum())
                self._migrated[i] += back
                self.counts["migrated_in"] += back
            set_mask_(module, keep)
        self.zeros = np.asarray(zeros, dtype=np.int64).copy()
        self.current_sparsity = float(self.zeros.sum()) / float(self.numel.sum())
        self.counts["mask_updates"] += 1

    def _set_candidate(self, vec, total: float, kind: str, **info) -> None:
        zeros = zeros_per_layer(vec, self.numel, total, self.max_zeros)
        self._apply(zeros, count_migration=False)
        self.candidate = {"kind": kind, "total": self.current_sparsity,
                          "parent_zeros": None if self.parent is None
                          else list(map(int, self.parent["zeros"])), **info}

    # -- snapshots (rewinding) ------------------------------------------------------------------
    def _snapshot(self) -> dict:
        model = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        opt = None
        if self.optimizer is not None:
            opt = copy.deepcopy({k: {n: (t.detach().to("cpu", copy=True) if torch.is_tensor(t)
                                         else t) for n, t in s.items()}
                                 for k, s in self.optimizer.state_dict()["state"].items()})
        ema = [None if e is None else e.detach().to("cpu", copy=True) for e in self._ema]
        return {"model": model, "optimizer": opt, "ema": ema}

    def _restore(self, snap: dict) -> None:
        self.model.load_state_dict(snap["model"])
        if self.optimizer is not None and snap["optimizer"] is not None:
            sd = self.optimizer.state_dict()
            sd["state"] = copy.deepcopy(snap["optimizer"])
            self.optimizer.load_state_dict(sd)  # param_groups (the current lr) kept
        device = self._modules[0].weight.device
        self._ema = [None if e is None else e.to(device, copy=True) for e in snap["ema"]]

    # -- the algorithm --------------------------------------------------------------------------
    def step(self) -> float | None:
        """Advance by one optimizer step: recompute the masks (every ``mask_every`` steps), and
        at an iteration boundary evaluate the candidate, accept or rewind, and set the next one.

        Returns the total sparsity when the per-layer sparsities changed, else None.
        """
        t = self.t
        self.t += 1
        self._update_grad_ema()
        if self.phase == "waiting" and t >= self.start_step:
            self._start(t)
            return self.current_sparsity
        if self.phase == "evolving" and t >= self.next_boundary:
            before = self.zeros.copy()
            self._iteration(t)
            return self.current_sparsity if not np.array_equal(before, self.zeros) else None
        if self.phase != "waiting" and (t - self.start_step) % self.config.mask_every == 0:
            self._apply(self.zeros, count_migration=True)
            self._migration_steps += 1
        return None

    def _next_boundary(self, t: int) -> int:
        if t < self.end_step:
            return min(t + self.interval, self.end_step)
        return t + self.interval

    def _start(self, t: int) -> None:
        cfg = self.config
        probe = cfg.probe_sparsity
        if probe is None:
            probe = agp_sparsity(1, 0.0, self.final_sparsity, 0, 2)  # the ramp's midpoint value
        self.initial["probe_sparsity"] = probe
        base = self._evaluate()
        # sensitivities: one-shot prune-one-layer sweep on the validation set
        if cfg.init_sensitivity == "sweep" and probe > 0:
            from .sensitivity import sensitivity_sweep

            loader = self.val_loader
            if self._device is not None and self._device.type != "cpu":
                loader = D.DeviceLoader(loader, self._device)
            rows = sensitivity_sweep(self.model, loader, [probe], layers=self.layer_names,
                                     progress=False)
            rows = D.broadcast_object(rows)  # every rank takes rank 0's numbers
            self.counts["evaluations"] += len(rows)
            self.counts["val_images"] += len(rows) * _len_dataset(self.val_loader)
            drops = {r["layer"]: r["drop"] for r in rows[1:]}
            sens = np.array([max(drops[n], 0.0) + 0.005 for n in self.layer_names])
            self.sensitivity = sens / np.exp(np.log(sens).mean())
            self.initial["sweep"] = {n: drops[n] for n in self.layer_names}
        # the initial population: global-magnitude allocation, uniform, random perturbations
        start = self._snapshot()
        shapes = [("global", self._global_allocation(probe)),
                  ("uniform", self._fit(np.zeros(len(self.numel)), probe))]
        while len(shapes) < cfg.population_size:
            noisy = self._log_density(shapes[0][1]) + cfg.initial_spread * self._randn(len(self.numel))
            shapes.append(("random", self._fit(noisy, probe)))
        members = []
        for kind, vec in shapes:
            zeros = zeros_per_layer(vec, self.numel, probe, self.max_zeros)
            self._apply_magnitude(zeros)
            members.append({"sparsity": (zeros / self.numel).tolist(), "fitness": self._evaluate(),
                            "step": t, "kind": f"init-{kind}", "zeros": zeros.tolist()})
            self.model.load_state_dict(start["model"])  # probes prune the weights: undo
        self.initial["population"] = [{"kind": m["kind"], "fitness": m["fitness"]} for m in members]
        self.initial["dense_val_top1"] = base
        members.sort(key=lambda m: -m["fitness"])
        self.population = members
        self.parent = {"sparsity": [0.0] * len(self.numel), "zeros": [0] * len(self.numel),
                       "fitness": base, "step": t, "state": start, "kind": "start"}
        self.phase = "evolving"
        self.next_boundary = self._next_boundary(t)
        total = self.sparsity_at(self.next_boundary)
        best = np.asarray(members[0]["sparsity"])
        self._set_candidate(self._fit(self._log_density(best), total), total, "init",
                            shape=members[0]["kind"])
        self._say(f"evolution: val top-1 {base:.4f} dense; {len(members)} initial solutions at "
                  f"{probe:.3f} one-shot, best {members[0]['kind']} {members[0]['fitness']:.4f}; "
                  f"first candidate at total {self.current_sparsity:.3f}")

    def _apply_magnitude(self, zeros) -> None:
        for i, module in enumerate(self._modules):
            set_mask_(module, _keep_top(module.weight.detach().abs(), int(zeros[i])))

    def _global_allocation(self, total: float) -> np.ndarray:
        mags = torch.cat([m.weight.detach().abs().reshape(-1).float() for m in self._modules])
        k = int(round(total * mags.numel()))
        if k == 0:
            return np.zeros(len(self._modules))
        thresh = float(torch.kthvalue(mags, k).values)
        vec = np.array([float((m.weight.detach().abs() <= thresh).sum()) / m.weight.numel()
                        for m in self._modules])
        return self._fit(self._log_density(vec), total)

    def _iteration(self, t: int) -> None:
        cfg = self.config
        fitness = self._evaluate()
        ref = self.parent["fitness"]
        # the first candidate has no trained parent: the starting model's validation top-1 was
        # not reached with this training (and the published weights may have seen these images)
        first = self.parent["kind"] == "start"
        allowed = self._allowed_drop()
        ok = first or fitness >= ref - allowed
        forced = not ok and self.rejections + 1 >= cfg.patience
        accepted = ok or forced
        # sensitivity update from the weights that migrated into the mask
        pruned = self.zeros > 0
        if self._migration_steps > 0 and pruned.any():
            rate = self._migrated / (np.maximum(self.zeros, 1) * self._migration_steps)
            mean = float(rate[pruned].mean())
            if mean > 0:
                factor = np.clip((rate + 0.1 * mean) / (1.1 * mean), 0.5, 2.0) ** cfg.sensitivity_rate
                self.sensitivity = np.where(pruned, self.sensitivity * factor, self.sensitivity)
        self._migrated[:] = 0
        self._migration_steps = 0
        parent_zeros = np.asarray(self.parent["zeros"], dtype=np.int64)
        added = np.maximum(self.zeros - parent_zeros, 0)
        if not ok and added.sum() > 0:
            share = added / added.sum()
            excess = min(1.0, (ref - fitness - allowed) / max(allowed, 1e-3))
            k = int((added > 0).sum())
            self.sensitivity = self.sensitivity * (1.0 + excess * np.minimum(k * share, 1.0))
        self.sensitivity = self.sensitivity / np.exp(np.log(self.sensitivity).mean())
        self.sensitivity = np.clip(self.sensitivity, 0.1, 10.0)
        row = {"step": t, "total": self.current_sparsity, "val_top1": fitness, "parent_val": ref,
               "allowed_drop": allowed, "kind": self.candidate["kind"], "accepted": accepted,
               "forced": forced}
        best = self.best_rejected
        if forced and best is not None and best["fitness"] > fitness:
            # patience: accept the best of the attempts since the parent, not the last one
            self._restore(best["state"])
            self.zeros = np.asarray(best["zeros"], dtype=np.int64)
            self.current_sparsity = float(self.zeros.sum()) / float(self.numel.sum())
            fitness = best["fitness"]
            self.candidate = {**self.candidate, "kind": best["kind"]}
            row["took_earlier_attempt"] = True
        if not accepted and (best is None or fitness > best["fitness"]):
            self.best_rejected = {"fitness": fitness, "zeros": self.zeros.tolist(),
                                  "kind": self.candidate["kind"], "state": self._snapshot()}
        if accepted:
            self.best_rejected = None
            self.counts["accepted"] += 1
            self.counts["forced"] += int(forced)
            self.rejections = 0
            member = {"sparsity": self._vec().tolist(), "zeros": self.zeros.tolist(),
                      "fitness": fitness, "step": t, "kind": self.candidate["kind"]}
            self.population.append(member)
            self.parent = {**member, "state": self._snapshot()}
            self._cluster()
        else:
            self.counts["rejected"] += 1
            self.counts["rewinds"] += 1
            self.rejections += 1
            self._restore(self.parent["state"])
            self.zeros = parent_zeros.copy()
        self.history.append(row)
        self._say(f"evolution step {t}: total {row['total']:.4f} val {fitness:.4f} (parent "
                  f"{ref:.4f}) {'accepted' if accepted else 'rejected, rewound'}"
                  f"{' (patience)' if forced else ''} [{row['kind']}]")
        if accepted and t >= self.end_step:
            self.phase = "finetune"
            self.candidate = None
            return
        self.next_boundary = self._next_boundary(t)
        total = self.sparsity_at(min(self.next_boundary, self.end_step))
        if accepted:
            vec = self._increase(self._vec(), total)
            self.counts["increases"] += 1
            self._set_candidate(vec, total, "increase")
        elif len(self.population) >= 2 and self._rand() < cfg.crossover_prob:
            self.counts["crossovers"] += 1
            self._set_candidate(self._crossover(total), total, "crossover")
        else:
            self.counts["mutations"] += 1
            self._set_candidate(self._mutate(self._vec(), total), total, "mutation")

    def _allowed_drop(self) -> float:
        """``accepted_drop`` per ``drop_unit`` of log-density removed since the parent (total
        over the pruned layers), never less than ``accepted_drop``."""
        n = float(self.numel.sum())
        d_parent = 1.0 - float(np.sum(self.parent["zeros"])) / n
        d_now = 1.0 - float(self.zeros.sum()) / n
        cut = math.log(max(d_parent, 1e-9) / max(d_now, 1e-9))
        return self.config.accepted_drop * max(1.0, cut / self.config.drop_unit)

    def _increase(self, vec: np.ndarray, total: float) -> np.ndarray:
        """Prune a sensitivity-weighted random subset of the layers further, to ``total``.

        ``layer_fraction`` of the layers, drawn with probability proportional to
        1 / sensitivity; their log-densities go down by ``y * w_l`` with ``w_l =
        clip(sqrt(min_sens / sens_l), 0.25, 1)``, at most twice the step that one common shift of
        all layers would need (so no layer takes the whole increment); what they cannot carry
        is spread over all layers."""
        n_layers = len(vec)
        ld = self._log_density(vec)
        if total <= float((vec * self.numel).sum()) / self.numel.sum() + 1e-12:
            return vec
        k = max(1, int(math.ceil(self.config.layer_fraction * n_layers)))
        inv = 1.0 / self.sensitivity
        room = self.zeros < self.max_zeros
        if not room.any():
            return vec
        prob = torch.tensor(inv * room + 1e-12)
        chosen = torch.multinomial(prob, min(k, int(room.sum())), replacement=False,
                                   generator=self.gen).numpy()
        w = np.zeros(n_layers)
        sens = self.sensitivity[chosen]
        w[chosen] = np.clip(np.sqrt(sens.min() / sens), 0.25, 1.0)
        y_uniform = uniform_shift(ld, self.numel, total, self.min_density)
        return fit_total(ld, self.numel, total, self.min_density, w,
                         max_step=2.0 * max(y_uniform, 1e-3))

    def _mutate(self, vec: np.ndarray, total: float) -> np.ndarray:
        n_layers = len(vec)
        k = max(1, int(round(self.config.mutation_rate * n_layers)))
        idx = torch.randperm(n_layers, generator=self.gen)[:k].numpy()
        ld = self._log_density(vec)
        ld[idx] += self.config.mutation_scale * self._randn(k)
        return self._fit(ld, total)

    def _crossover(self, total: float) -> np.ndarray:
        pick = torch.randperm(len(self.population), generator=self.gen)[:2].tolist()
        a = np.asarray(self.population[pick[0]]["sparsity"])
        b = np.asarray(self.population[pick[1]]["sparsity"])
        take_b = (torch.rand(len(a), generator=self.gen) < 0.5).numpy()
        child = np.where(take_b, b, a)
        return self._fit(self._log_density(child), total)

    def _cluster(self) -> None:
        """k-means on the population's sparsity vectors; keep the fittest of each cluster."""
        cfg = self.config
        if len(self.population) <= cfg.population_size:
            return
        from scipy.cluster.vq import kmeans2

        self.counts["clusterings"] += 1
        x = np.array([m["sparsity"] for m in self.population], dtype=np.float64)
        k = min(cfg.clusters, len(self.population))
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (), generator=self.gen)))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # empty clusters are fine here
            _, labels = kmeans2(x, k, minit="++", seed=rng)
        per = max(1, cfg.population_size // k)
        keep = set()
        for c in range(k):
            idx = [i for i in range(len(self.population)) if labels[i] == c]
            idx.sort(key=lambda i: -self.population[i]["fitness"])
            keep.update(idx[:per])
        keep.add(len(self.population) - 1)  # the parent is the newest member
        order = sorted(keep, key=lambda i: -self.population[i]["fitness"])
        newest = len(self.population) - 1
        order = [newest] + [i for i in order if i != newest]
        kept = sorted(order[:cfg.population_size])
        self.population = [self.population[i] for i in kept]

    # -- reporting and checkpoints --------------------------------------------------------------
    def summary(self) -> dict:
        """Counts (iterations accepted/rejected/forced, rewinds, mutations, crossovers,
        validation evaluations and images), the final per-layer sparsities and sensitivities,
        the population's fitness, the initial sweep and the iteration history."""
        return {"counts": dict(self.counts), "interval": self.interval,
                "layer_sparsity": self.sparsities, "total_sparsity": self.current_sparsity,
                "sensitivity": dict(zip(self.layer_names, map(float, self.sensitivity))),
                "population": [{"kind": m["kind"], "step": m["step"], "fitness": m["fitness"],
                                "total": float(np.dot(m["sparsity"], self.numel) / self.numel.sum())}
                               for m in self.population],
                "initial": self.initial, "history": list(self.history),
                "config": dataclasses.asdict(self.config)}

    def state_dict(self) -> dict:
        """Everything needed to resume mid-run (the masks themselves live in the model)."""
        return {"t": self.t, "zeros": self.zeros.tolist(), "current_sparsity": self.current_sparsity,
                "sensitivity": self.sensitivity.tolist(), "population": copy.deepcopy(self.population),
                "parent": self.parent, "candidate": copy.deepcopy(self.candidate),
                "next_boundary": self.next_boundary, "rejections": self.rejections,
                "best_rejected": self.best_rejected,
                "phase": self.phase, "history": list(self.history), "counts": dict(self.counts),
                "ema": [None if e is None else e.detach().cpu() for e in self._ema],
                "migrated": self._migrated.tolist(), "migration_steps": self._migration_steps,
                "initial": copy.deepcopy(self.initial), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        self.zeros = np.asarray(state["zeros"], dtype=np.int64)
        self.current_sparsity = float(state["current_sparsity"])
        self.sensitivity = np.asarray(state["sensitivity"], dtype=np.float64)
        self.population = list(state["population"])
        self.parent = state["parent"]
        self.candidate = state["candidate"]
        self.next_boundary = int(state["next_boundary"])
        self.rejections = int(state["rejections"])
        self.best_rejected = state["best_rejected"]
        self.phase = state["phase"]
        self.history = list(state["history"])
        self.counts = dict(state["counts"])
        device = self._modules[0].weight.device
        self._ema = [None if e is None else e.to(device) for e in state["ema"]]
        self._migrated = np.asarray(state["migrated"], dtype=np.float64)
        self._migration_steps = int(state["migration_steps"])
        self.initial = dict(state["initial"])
        self.gen.set_state(state["gen"])


def _keep_count(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Bool mask of ``scores``' shape with exactly ``n_prune`` lowest scores False
    (``torch.topk`` on the smaller side; deterministic for equal inputs, ties arbitrary but
    fixed)."""
    flat = scores.reshape(-1)
    n = flat.numel()
    if n_prune <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if n_prune >= n:
        return torch.zeros_like(scores, dtype=torch.bool)
    if n_prune <= n - n_prune:
        keep = torch.ones(n, dtype=torch.bool, device=flat.device)
        keep[torch.topk(flat, n_prune, largest=False, sorted=False).indices] = False
    else:
        keep = torch.zeros(n, dtype=torch.bool, device=flat.device)
        keep[torch.topk(flat, n - n_prune, largest=True, sorted=False).indices] = True
    return keep.view_as(scores)


def _len_dataset(loader) -> int:
    ds = getattr(loader, "dataset", None)
    try:
        return len(ds) if ds is not None else 0
    except TypeError:
        return 0

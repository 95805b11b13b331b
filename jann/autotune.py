"""Autotuning search-time parameters: FAISS's `ParameterSpace` / `OperatingPoints` in JAX.

    space = jann.search_parameter_space(index)      # {"nprobe": (1, 2, 4, ..., nlist)}
    result = jann.autotune(index, xq, gt, target_recall=0.95, k=10)
    result.best             # fastest OperatingPoint with recall@k >= 0.95, or None
    result.frontier         # Pareto-optimal points, recall ascending, QPS descending
    D, I = jann.search(index, xq, 10, **result.best.params)

Each setting is timed as jann.search is used (all queries in one call, results on the
host): the first call (compilation, caches) is reported apart as `warmup_s`, then the best
of `repeats` calls gives QPS. Recall@k is |found[:k] & gt[:k]| / k averaged over queries.

Exploration follows FAISS's `ParameterSpace::explore`: settings assume that raising any
parameter raises both recall and cost, so a setting is skipped when even its optimistic
outcome (the recall of a measured setting above it, the time of one below it) would be
dominated by a point already measured. The order is the cheapest setting, the dearest,
then the rest in a seeded random order, which gives both bounds early.

The space of an index is what its type declares (`Index.search_parameter_space()`:
IVF's nprobe, a graph's ef, a refinement's k_factor on top of its base's), so a new index
type needs no edit here.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jann._inputs import as_array, as_vectors
from jann.api import search_program_params, ntotal, search
from jann.compose import K_FACTOR_VALUES
from jann.errors import InvalidDtypeError, InvalidInputError, NotTrainedError
from jann.graph import EF_VALUES
from jann.index import Index
from jann.ivf import nprobe_values

__all__ = [
    "GRAPH_EF_VALUES",
    "K_FACTOR_VALUES",
    "AutotuneResult",
    "OperatingPoint",
    "autotune",
    "explore",
    "nprobe_values",
    "pareto_frontier",
    "recall_at_k",
    "search_parameter_space",
]

# Beam widths for graph indexes (hnswlib's ef, FAISS's efSearch); values below k are
# dropped by whoever knows k, since a graph search returns at most ef results.
GRAPH_EF_VALUES = EF_VALUES


# ------------------------------------------------------------------ parameter space
def search_parameter_space(index) -> dict[str, tuple]:
    """The search-time parameters of `index` and the values worth trying.

    Returns {name: ascending values}, names as `jann.search` takes them; {} for an index
    with no knobs (Flat, flat-coded, exhaustive 2-level, LSH). Each index type declares
    its own (`Index.search_parameter_space`).
    """
    _require_index(index, "search_parameter_space")
    return {n: tuple(v) for n, v in index.search_parameter_space().items()}


def _require_index(index, what: str):
    if not isinstance(index, Index):
        raise InvalidInputError(f"{what} needs a jann index, got {type(index).__name__}")


# ------------------------------------------------------------------ operating points
@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """One measured setting: `params` for jann.search, recall@k, and its speed.

    seconds: best wall time of one call over all queries; qps = nq / seconds;
    warmup_s: the first call (compilation included), kept out of qps;
    runs_s: every timed call; metrics: extra measurements (e.g. recall@1, recall@100).
    """

    params: dict
    recall: float
    qps: float
    seconds: float
    warmup_s: float = math.nan
    runs_s: tuple = ()
    metrics: dict = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"params": dict(self.params), "recall": self.recall, "qps": self.qps,
                "seconds": self.seconds, "warmup_s": self.warmup_s,
                "runs_s": list(self.runs_s), **dict(self.metrics)}


def pareto_frontier(points: Sequence[OperatingPoint]) -> tuple[OperatingPoint, ...]:
    """The points no other point beats on both recall and QPS, by ascending recall (so
    QPS strictly descends); of exact duplicates the first measured is kept."""
    order = sorted(range(len(points)), key=lambda i: (-points[i].qps, -points[i].recall, i))
    frontier, best_recall = [], -math.inf
    for i in order:
        if points[i].recall > best_recall:
            frontier.append(points[i])
            best_recall = points[i].recall
    return tuple(frontier)


@dataclasses.dataclass(frozen=True)
class AutotuneResult:
    """What `autotune` / `explore` found.

    points: every measured setting in measurement order; frontier: the Pareto-optimal
    ones (recall ascending, QPS descending); best: the fastest point whose recall@k
    reaches target_recall, None when none does (then `met` is False and `best_recall`
    is the most accurate point); skipped: settings not measured because their best
    possible outcome was already dominated.
    """

    points: tuple
    frontier: tuple
    best: OperatingPoint | None
    target_recall: float
    k: int
    skipped: tuple = ()

    @classmethod
    def from_points(cls, points, target_recall: float, k: int, skipped=()) -> AutotuneResult:
        points = tuple(points)
        frontier = pareto_frontier(points)
        return cls(points, frontier, _fastest_at(frontier, target_recall), target_recall, k,
                   tuple(skipped))

    @property
    def met(self) -> bool:
        return self.best is not None

    @property
    def best_recall(self) -> OperatingPoint | None:
        return self.frontier[-1] if self.frontier else None

    def best_for(self, target_recall: float) -> OperatingPoint | None:
        """The fastest measured point reaching another target, without re-measuring."""
        return _fastest_at(self.frontier, _check_target(target_recall))

    def as_dict(self) -> dict:
        return {"k": self.k, "target_recall": self.target_recall, "met": self.met,
                "best": None if self.best is None else self.best.as_dict(),
                "frontier": [p.as_dict() for p in self.frontier],
                "points": [p.as_dict() for p in self.points],
                "skipped": [dict(s) for s in self.skipped]}

    def table(self) -> str:
        """The frontier as aligned text, the chosen point marked with '*'."""
        lines = [f"{'':2}{'params':40} {'recall@' + str(self.k):>10} {'QPS':>12}"]
        for p in self.frontier:
            mark = "*" if p is self.best else ""
            params = ", ".join(f"{n}={v}" for n, v in p.params.items()) or "(none)"
            lines.append(f"{mark:2}{params:40} {p.recall:10.4f} {p.qps:12,.0f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        if self.met:
            head = (f"fastest setting with recall@{self.k} >= {self.target_recall}: "
                    f"{self.best.params} (recall {self.best.recall:.4f}, "
                    f"{self.best.qps:,.0f} QPS)")
        elif self.best_recall is not None:
            head = (f"no setting reaches recall@{self.k} >= {self.target_recall}; the most "
                    f"accurate is {self.best_recall.params} (recall "
                    f"{self.best_recall.recall:.4f})")
        else:
            head = "no setting measured"
        return f"{head}\n{self.table()}"


def _fastest_at(frontier, target):
    # Along the frontier recall ascends and QPS descends: the first point that reaches
    # the target is the fastest one that does.
    return next((p for p in frontier if p.recall >= target), None)


# ------------------------------------------------------------------ exploration
def _grid(space: Mapping[str, Sequence]) -> tuple[list[str], list[tuple]]:
    if not isinstance(space, Mapping):
        raise InvalidInputError(
            f"params must be a dict {{name: [values]}}, got {type(space).__name__}")
    names, axes = [], []
    for name, values in space.items():
        if not isinstance(name, str):
            raise InvalidInputError(f"parameter names must be str, got {name!r}")
        if isinstance(values, (np.ndarray, jax.Array)):
            values = np.asarray(values).ravel().tolist()
        elif isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            values = [values]
        values = [v.item() if isinstance(v, np.generic) else v for v in values]
        if not values:
            raise InvalidInputError(f"parameter {name!r} has no values to try")
        try:
            values = sorted(set(values))
        except TypeError:
            raise InvalidInputError(
                f"values of {name!r} must be comparable numbers, got {values!r}") from None
        names.append(name)
        axes.append(tuple(values))
    return names, axes


def _ge(a: tuple, b: tuple) -> bool:
    return all(x >= y for x, y in zip(a, b))


def explore(space: Mapping[str, Sequence], measure: Callable[[dict], OperatingPoint], *,
            target_recall: float = 0.95, k: int = 10, prune: bool = True, seed: int = 0,
            progress: Callable[[int, int, dict, OperatingPoint | None], Any] | None = None
            ) -> AutotuneResult:
    """Measure the settings of `space` ({name: values}) with `measure(params)`, any
    library's search; `autotune` is this with jann.search. Values are tried in ascending
    order of cost by assumption (larger = slower and more accurate). `progress(i, n,
    params, point)` is called after each setting (point None when skipped)."""
    target_recall = _check_target(target_recall)
    names, axes = _grid(space)
    combos = list(itertools.product(*axes))
    if len(combos) > 2:
        rest = list(range(1, len(combos) - 1))
        np.random.default_rng(seed).shuffle(rest)
        order = [0, len(combos) - 1, *rest]
    else:
        order = list(range(len(combos)))
    measured: list[tuple[tuple, OperatingPoint]] = []
    skipped = []
    for step, c in enumerate(order):
        combo, params = combos[c], dict(zip(names, combos[c]))
        if prune and _predicted_dominated(combo, measured):
            skipped.append(params)
            point = None
        else:
            point = measure(params)
            if not isinstance(point, OperatingPoint):
                raise InvalidInputError(
                    f"measure must return an OperatingPoint, got {type(point).__name__}")
            measured.append((combo, point))
        if progress is not None:
            progress(step + 1, len(order), params, point)
    # Report points in grid order, whatever order they were measured in.
    measured.sort(key=lambda cp: combos.index(cp[0]))
    return AutotuneResult.from_points([p for _, p in measured], target_recall, k, skipped)


def _predicted_dominated(combo: tuple, measured) -> bool:
    """FAISS's pruning: the best `combo` could do is the lowest recall of a measured
    setting at or above it and the time of the slowest measured setting at or below
    it; skip it when a measured point is at least that good on both."""
    upper_recall = min((p.recall for c, p in measured if _ge(c, combo)), default=math.inf)
    lower_seconds = max((p.seconds for c, p in measured if _ge(combo, c)), default=0.0)
    return any(p.recall >= upper_recall and p.seconds <= lower_seconds for _, p in measured)


# ------------------------------------------------------------------ recall, timing
def recall_at_k(found, gt, k: int) -> float:
    """Mean |found[:k] & gt[:k]| / k over queries (ids, order-free, as ann-benchmarks).

    Negative ids (missing results, -1) never count as hits."""
    found, gt = np.asarray(found), np.asarray(gt)
    if found.ndim != 2 or gt.ndim != 2 or found.shape[0] != gt.shape[0]:
        raise InvalidInputError(
            f"found and gt must be 2-D with the same rows, got {found.shape} and {gt.shape}")
    if found.shape[1] < k or gt.shape[1] < k:
        raise InvalidInputError(f"recall@{k} needs >= {k} columns, got {found.shape[1]} "
                                f"found and {gt.shape[1]} ground-truth")
    hits = 0
    # Row blocks bound the (rows, k, k) comparison to a few MB at k = 100.
    for s in range(0, len(gt), 1024):
        f, g = found[s:s + 1024, :k], gt[s:s + 1024, :k]
        hits += int(((f[:, :, None] == g[:, None, :]) & (f[:, :, None] >= 0)).any(2).sum())
    return hits / max(gt.shape[0] * k, 1)


def _time_calls(fn: Callable[[], Any], repeats: int) -> tuple[Any, float, list[float]]:
    """(result, first call s, [timed call s]): the first call compiles and is kept apart."""
    t = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t)
    return out, first, runs


def _check_target(target_recall) -> float:
    if isinstance(target_recall, bool) or not isinstance(target_recall, (int, float)) or \
            not 0 < target_recall <= 1:
        raise InvalidInputError(f"target_recall must be a number in (0, 1], got "
                                f"{target_recall!r}")
    return float(target_recall)


def _check_gt(gt, nq: int, k: int) -> np.ndarray:
    gt = as_array(gt, "gt")
    if gt.ndim != 2 or gt.shape[0] != nq:
        raise InvalidInputError(f"gt must be (nq={nq}, >= k) neighbour ids, got shape "
                                f"{tuple(gt.shape)}")
    if not np.issubdtype(gt.dtype, np.integer) or np.issubdtype(gt.dtype, np.bool_):
        raise InvalidDtypeError(f"gt must hold integer ids, got dtype {gt.dtype}")
    if gt.shape[1] < k:
        raise InvalidInputError(f"gt has {gt.shape[1]} neighbours per query, recall@{k} "
                                f"needs at least {k}")
    return np.asarray(gt)


# ------------------------------------------------------------------ autotune
def autotune(index, xq, gt, target_recall: float = 0.95, k: int = 10,
             params: Mapping[str, Sequence] | None = None, *, repeats: int = 3,
             selector=None, prune: bool = True, seed: int = 0,
             progress: Callable[[int, int, dict, OperatingPoint | None], Any] | None = None
             ) -> AutotuneResult:
    """Sweep the search-time parameters of `index` on queries xq with true neighbours gt.

    params: {name: values} to try (default `search_parameter_space(index)`; a dict that
    names some parameters fixes or restricts just those). gt: (nq, >= k) integer ids of
    the exact neighbours, nearest first. Every setting is checked before any is run, so a
    bad name or value raises at once. Returns an `AutotuneResult`; `result.best` is None
    when no setting reaches target_recall.
    """
    target_recall = _check_target(target_recall)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise InvalidInputError(f"k must be a positive int, got {k!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InvalidInputError(f"repeats must be an int >= 1, got {repeats!r}")
    _require_index(index, "autotune")
    space = search_parameter_space(index) if params is None else params
    if not index.is_trained:
        raise NotTrainedError(f"autotune on an untrained {index.describe()} index: call "
                              "jann.train(index, x) first")
    if ntotal(index) == 0:
        raise InvalidInputError("autotune needs a non-empty index: add vectors first")
    xq = as_vectors(xq, index.d, "queries")
    if xq.shape[0] == 0:
        raise InvalidInputError("autotune needs at least one query")
    gt = _check_gt(gt, xq.shape[0], int(k))
    names, axes = _grid(space)
    for combo in itertools.product(*axes):
        try:
            search_program_params(index, dict(zip(names, combo)))
        except TypeError:  # an unknown keyword for the index's parameter checker
            raise InvalidInputError(
                f"{index.describe()} does not take search parameter(s) {names}; its "
                f"parameters are {sorted(search_parameter_space(index))}") from None

    def measure(setting: dict) -> OperatingPoint:
        def run():
            return jax.block_until_ready(search(index, xq, int(k), selector=selector,
                                                **setting)[1])

        ids, first, runs = _time_calls(run, repeats)
        best = min(runs)
        return OperatingPoint(params=setting, recall=recall_at_k(ids, gt, int(k)),
                              qps=xq.shape[0] / best, seconds=best, warmup_s=first,
                              runs_s=tuple(runs))

    return explore(space, measure, target_recall=target_recall, k=int(k), prune=prune,
                   seed=seed, progress=progress)

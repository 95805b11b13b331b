"""The IVF list scan: each query's k best rows among the inverted lists it probes.

- `reference.py`: the contract (how rows are decoded or looked up, the keys) and the
  oracle `ivf_scan_reference`;
- `pallas.py`: the Pallas kernel (`ivf_scan_pallas`, one program per query);
- the XLA path is the caller's: the IVF index's list-major scan (`jann.ivf.IVFIndex.scan`)
  needs the index's work plan and decodes every codec, so `ivf_search` takes it as an
  argument;
- here: `KernelDecode`, how a codec tells the kernel to read its codes (each codec's
  `kernel_decode()` returns one, or None where the kernel cannot read them), and
  `ivf_search`, the choice between the kernel and the XLA path (`backend=`, see
  `jann.ops.backend`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp

from ..backend import choose
from ..errors import InvalidInputError
from .pallas import ivf_scan_pallas
from .reference import DECODES, METRICS, decoder, ivf_scan_reference

__all__ = ["DECODES", "KernelDecode", "decoder", "ivf_scan_pallas", "ivf_scan_reference",
           "ivf_search"]


@dataclasses.dataclass(frozen=True)
class KernelDecode:
    """How the IVF kernel reads a codec's stored rows (`ivf_scan.reference`'s decodes).

    kind: "float" (raw vectors), "sq8" (8-bit scalar codes; vmin / vdiff: (d,) or (1,)
    ranges), "direct" (8-bit codes taken as values) or "pq" (packed `nbits`-bit sub-codes
    scored by look-up tables; ip_tables(x) gives the (n, M, 2**nbits) inner products of
    the sub-vectors of x (n, d) with each sub-space's centroids, from which `ivf_search`
    builds the per-query and per-list tables).
    """

    kind: str
    vmin: Any = None
    vdiff: Any = None
    nbits: int = 8
    ip_tables: Callable | None = None

    def __post_init__(self):
        if self.kind not in DECODES:
            raise InvalidInputError(f"decode must be one of {DECODES}, got {self.kind!r}")
        if self.kind == "pq" and self.ip_tables is None:
            raise InvalidInputError('the "pq" decode needs ip_tables')

    def kernel_arguments(self, q, centroids, metric: str, by_residual: bool) -> dict:
        """The decode's keyword arguments of `ivf_scan_pallas` for prepared queries q:
        the ranges for "sq8"; for "pq" the tables -2 q_m.C_m (l2) or -q_m.C_m (ip), and
        for l2 by residual the list tables 2 c_m.C_m (the key decomposition of
        `ivf_scan.reference`)."""
        if self.kind == "sq8":
            return {"vmin": self.vmin, "vdiff": self.vdiff}
        if self.kind != "pq":
            return {}
        scale = -1.0 if metric == "ip" else -2.0
        tables = scale * self.ip_tables(q)
        list_tables = (None if scale == -1.0 or not by_residual
                       else 2.0 * self.ip_tables(centroids))
        return {"tables": tables, "list_tables": list_tables, "nbits": self.nbits}


def ivf_search(q, lists, k: int, metric: str, *, decode: KernelDecode | None, offsets,
               payload, norms, allowed, ids, centroids, by_residual: bool,
               xla_scan: Callable, backend: str = "auto"):
    """Each prepared query's k best stored rows among its probed lists, on the chosen
    backend: (distances (nq, k) float32, ids (nq, k)), as `xla_scan` returns them.

    q: (nq, d) float32 prepared queries; lists: (nq, P) probed list ids (nlist = unused);
    metric: "l2" (squared distances, ascending) or "ip" (scores, descending); decode: the
    codec's `kernel_decode()`, None where the kernel cannot read its codes (then XLA,
    whatever the backend); offsets (nlist + 1,), payload (N, ...), norms (N,) squared
    norms of the decoded rows, allowed (N,) bool rows that may be returned, ids (N,) and
    centroids (nlist, d): the lists in CSR order; xla_scan(q, lists): the XLA path, with
    the same results (`jann.ivf.IVFIndex.scan`).
    """
    if decode is None or backend == "xla":
        return xla_scan(q, lists)
    if metric not in METRICS:
        raise InvalidInputError(f"ivf_search supports {METRICS}, got {metric!r}")
    similarity = metric == "ip"

    def kernel(q, lists, interpret):
        bias = jnp.where(allowed, 0.0 if similarity else norms, jnp.inf)
        keys, rows = ivf_scan_pallas(
            q, lists, offsets, payload, bias, centroids, k, metric, by_residual=by_residual,
            decode=decode.kind, interpret=interpret,
            **decode.kernel_arguments(q, centroids, metric, by_residual))
        found = jnp.where(rows < 0, -1, ids[jnp.clip(rows, 0, max(ids.shape[0] - 1, 0))])
        return (-keys if similarity else jnp.maximum(keys, 0.0)), found

    return choose("ivf_scan", backend, xla_scan, kernel, q, lists)

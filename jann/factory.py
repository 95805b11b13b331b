"""`index_factory`: build an (untrained) index from a FAISS factory string.

Supported now (later index families extend `_BUILDERS`):

    [IDMap,|IDMap2,]Flat[(float16|bfloat16)]

`metric` is a keyword ("l2", "ip", "cosine", "l1", "linf", "lp" with metric_arg=p,
"canberra", "braycurtis", "jensenshannon", "jaccard", "nan_euclidean", "abs_ip", "gower").
"""

from __future__ import annotations

import re

from jann.errors import FactoryStringError, InvalidInputError
from jann.flat import STORAGE_DTYPES, FlatIndex
from jann.ops.distances import canonical_metric

__all__ = ["index_factory", "GRAMMAR"]

GRAMMAR = """supported factory strings:
  Flat                      exact search, float32 storage
  Flat(float16|bfloat16)    exact search, half-precision storage, float32 accumulation
  IDMap,<index>             the index stores user ids (add(..., ids=...)); duplicates allowed
  IDMap2,<index>            as IDMap, ids must be unique
metrics (metric=...): l2, ip, cosine, l1, linf, lp (metric_arg=p), canberra, braycurtis,
  jensenshannon, jaccard, nan_euclidean, abs_ip, gower"""

_FLAT = re.compile(r"^Flat(?:\((float32|float16|bfloat16)\))?$")


def index_factory(d: int, description: str, metric: str = "l2", *, metric_arg: float = 2.0,
                  dtype: str | None = None):
    """The index that `description` names, for vectors of dimension d (untrained)."""
    if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
        raise InvalidInputError(f"d must be a positive int, got {d!r}")
    if not isinstance(description, str):
        raise FactoryStringError(f"the factory string must be a str, got {description!r}")
    metric = canonical_metric(metric)
    parts = [p.strip() for p in description.split(",")]
    id_mode = "sequential"
    if parts and parts[0] in ("IDMap", "IDMap2"):
        id_mode = parts.pop(0).lower()
    match = _FLAT.match(",".join(parts))
    if match is None:
        raise FactoryStringError(f"cannot parse factory string {description!r}\n{GRAMMAR}")
    storage = dtype or match.group(1) or "float32"
    if storage not in STORAGE_DTYPES:
        raise InvalidInputError(
            f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {storage!r}")
    if metric == "lp" and not metric_arg > 0:
        raise InvalidInputError(f"the lp metric needs metric_arg = p > 0, got {metric_arg}")
    return FlatIndex.empty(d, metric, metric_arg=metric_arg, dtype=storage, id_mode=id_mode)

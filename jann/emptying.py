"""`jann.reset(index)`: an index emptied with its training kept (FAISS's `index.reset()`)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jann.api import remove_ids, shrink_to_fit
from jann.graph.maintenance import compact
from jann.index import Index
from jann.selectors import IDSelectorAll

__all__ = ["reset"]


def reset(index):
    """The index with every vector removed and its training kept, numbering new rows from
    id 0 again and cut to the smallest capacity (FAISS's `index.reset()`)."""
    if index.is_trained:
        index, _ = remove_ids(index, IDSelectorAll())
        if np.asarray(index.count).sum() > 0:  # a graph's removed rows are tombstones
            index = compact(index)
    return shrink_to_fit(_numbered_from_zero(index))


def _numbered_from_zero(index):
    """index (and every index it wraps) with its count of rows ever added set to 0."""
    changes = {}
    for field in dataclasses.fields(index):
        value = getattr(index, field.name)
        if field.name == "n_added":
            changes[field.name] = jnp.zeros_like(value)
        elif isinstance(value, Index):
            changes[field.name] = _numbered_from_zero(value)
    return dataclasses.replace(index, **changes)

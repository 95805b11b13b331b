"""Batches of the public functions: the bucket sizes a batch is padded to, and chunks.

A serving loop sends batches of every size; padding each to one of a few buckets keeps the
compiled programs to one per bucket, not one per batch size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ADD_BUCKETS", "QUERY_BUCKETS", "SKIPPING_QUERY_BUCKETS", "bucket",
           "bucketed_chunks", "chunks", "host_view", "pad_rows", "query_buckets", "to_jax"]

# Query batches are padded up to one of these sizes; larger batches run in chunks of the
# largest. Adds are padded the same way, with sizes of their own.
QUERY_BUCKETS = (16, 64, 256, 1024, 4096, 8192, 16384)
# An index whose search skips padded query rows still pays for them in the steps that
# work on whole blocks (IVF's probe of 16 rows: one query per call took 1.1 ms as 16
# padded rows, 0.42 ms as one; sift-textures IVF2048,Flat, nprobe 45), so single queries,
# the serving case, get buckets of their own.
SKIPPING_QUERY_BUCKETS = (1, 4) + QUERY_BUCKETS
# A padded add row is not free: it is encoded, assigned and (graph) linked like a real
# one. With 1024 rows the smallest bucket, one streamed row cost 24 ms on IVF1024,PQ16
# and 290 ms on HNSW32 (10k x 128), against 0.9 and 84 ms for the row alone; small adds
# get buckets of their own (at most 6 compiles per capacity).
ADD_BUCKETS = (1, 16, 128, 1024, 4096, 16384)


def bucket(n: int, buckets) -> int:
    return next((b for b in buckets if b >= n), buckets[-1])


def pad_rows(x, rows: int):
    if x.shape[0] == rows:
        return x
    if isinstance(x, np.ndarray):
        out = np.zeros((rows,) + x.shape[1:], x.dtype)
        out[: x.shape[0]] = x
        return out
    return _pad_jit(x, rows)


@functools.partial(jax.jit, static_argnames=("rows",))
def _pad_jit(x, rows):
    return jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def chunks(n: int, size: int):
    return [(s, min(s + size, n)) for s in range(0, max(n, 1), size)]


def bucketed_chunks(n: int, buckets=QUERY_BUCKETS, padding_is_free: bool = False):
    """(start, stop, padded size) covering n rows: whole buckets, largest first, then the
    rest. By default the rest is cut into whole smaller buckets plus one padded one, so a
    10000-query batch runs as 8192 + 1024 + 256 + 256 + 256 + 16 instead of 16384 (39%
    padding): padded rows cost an exact search as much as real ones. An index whose
    search skips padded rows (`skips_padded_queries`: IVF probes no list for them) takes
    the rest as one padded bucket instead, as each call has a cost of its own (the
    list-major scan reads every probed list once per call: IVF1024,PQ56,RFlat on
    Fashion-MNIST, 10k queries, nprobe 8, k_factor 4 took 1.41 s as 4096 + 4096 + 4096
    and 1.05 s as one 16384)."""
    out, start = [], 0
    while n - start > 0:
        left = n - start
        size = next((b for b in reversed(buckets) if b <= left), None)
        if padding_is_free and left < buckets[-1]:
            size = bucket(left, buckets)
        elif size is None or (size == buckets[0] and left < size):
            size = bucket(left, buckets)
        stop = min(start + size, n)
        out.append((start, stop, size))
        start = stop
    return out or [(0, 0, buckets[0])]


def query_buckets(index) -> tuple[int, ...]:
    """The batch sizes `search` pads a query batch of this index to."""
    return SKIPPING_QUERY_BUCKETS if index.skips_padded_queries else QUERY_BUCKETS




def host_view(x):
    return np.asarray(x)


def to_jax(a):
    return jax.device_put(np.ascontiguousarray(a))

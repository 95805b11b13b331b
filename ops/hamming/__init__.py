"""Hamming k-NN over packed binary codes (FAISS `IndexBinaryFlat`).

- `reference.py`: bit packing (`pack_bits`, `unpack_bits`, FAISS's bit order), the word
  layout the scans read (`as_words`), input checks and the oracle
  (`knn_hamming_reference`: full distance matrix, `lax.top_k`);
- `xla.py`: the streamed scan (`knn_hamming_scan`);
- `pallas.py`: the fused Pallas kernel (`knn_hamming_pallas`);
- here: the choice between them (`hamming_search`, `backend=`, see `jann.ops.backend`)
  and the validated public functions `hamming_distances` and `knn_hamming` (XLA).
"""

from __future__ import annotations

import functools

import jax

from ..backend import choose
from ..knn.xla import with_row_count
from ..topk import check_k
from .pallas import knn_hamming_pallas
from .reference import (
    MISSING_DISTANCE, as_words, check_code_pair, check_valid, knn_hamming_reference,
    pack_bits, popcount_distances, unpack_bits)
from .xla import knn_hamming_scan

__all__ = ["MISSING_DISTANCE", "as_words", "hamming_distances", "hamming_search",
           "knn_hamming", "knn_hamming_pallas", "knn_hamming_reference", "knn_hamming_scan",
           "pack_bits", "unpack_bits"]


@jax.jit
def _hamming_jit(a, b):
    return popcount_distances(as_words(a), as_words(b))


def hamming_distances(a_codes, b_codes) -> jax.Array:
    """All-pairs Hamming distances (na, nb) int32 between two sets of packed codes."""
    a, b = check_code_pair(a_codes, b_codes)
    return _hamming_jit(a, b)


@functools.partial(jax.jit, static_argnames=("k", "tile", "query_block"))
def _knn_hamming_jit(xq, xb, xb_valid, k, tile, query_block):
    return knn_hamming_scan(xq, xb, k, xb_valid=xb_valid, tile=tile, query_block=query_block)


def knn_hamming(xq_codes, xb_codes, k: int, *, xb_valid=None, tile: int | None = None,
                query_block: int | None = None):
    """Exact k nearest codes of xb for each code of xq under Hamming distance.

    FAISS `IndexBinaryFlat.search`: returns distances (nq, k) int32 and indices (nq, k)
    int32, ascending, ties by lower index; -1 / INT32_MAX where fewer than k codes
    qualify. xb_valid: optional (N,) bool, the rows that may be returned. Streams xb in
    tiles (tile, query_block: overrides of the defaults, mainly for tests).
    """
    xq, xb = check_code_pair(xq_codes, xb_codes)
    return _knn_hamming_jit(xq, xb, check_valid(xb_valid, xb.shape[0]), check_k(k),
                            None if tile is None else check_k(tile),
                            None if query_block is None else check_k(query_block))


def hamming_search(xq_codes, xb_codes, k: int, *, xb_valid=None, n_rows=None,
                   backend: str = "auto"):
    """`knn_hamming_scan`'s contract (int32 distances) on the chosen backend."""
    def xla(xq, xb, xb_valid, n_rows):
        return knn_hamming_scan(xq, xb, k, xb_valid=with_row_count(xb, xb_valid, n_rows))

    def pallas(xq, xb, xb_valid, n_rows, interpret):
        return knn_hamming_pallas(xq, xb, k, xb_valid=with_row_count(xb, xb_valid, n_rows),
                                  interpret=interpret)

    return choose("hamming", backend, xla, pallas, xq_codes, xb_codes, xb_valid, n_rows)

"""LSH (FAISS `IndexLSH`): vectors hashed to bits, searched by Hamming distance.

A vector becomes `nbits` bits, (optionally randomly rotated) coordinates >= per-bit
thresholds (0, or the training medians with "t"); codes are stored packed,
FAISS's bit order, and searched with the streamed Hamming k-NN of `jann.ops.hamming`.
Distances come back as float32 Hamming distances, as from IndexLSH. Codes cannot be
decoded back to vectors, so `reconstruct` and `range_search` raise, as in FAISS.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jann._inputs import check_code_bits
from jann._storage import id_mode_prefix
from jann._pytree import pytree_dataclass, static
from jann.errors import InvalidInputError
from jann.flat import FlatIndex
from jann.ops import hamming
from jann.ops.hamming import hamming_search
from jann.transforms import random_orthogonal

__all__ = ["LSHTransform", "BinaryCodeStore"]


@pytree_dataclass
class LSHTransform:
    """x -> packed bits of (rotation @ x >= thresholds); d_out is the code size in bytes."""

    rotation: jax.Array
    thresholds: jax.Array
    d_in: int = static()
    nbits: int = static()
    rotate: bool = static(False)
    train_thresholds: bool = static(False)
    is_trained: bool = static(False)

    @classmethod
    def create(cls, d: int, nbits: int | None = None, *, rotate: bool = False,
               train_thresholds: bool = False) -> "LSHTransform":
        nbits = d if nbits is None else nbits
        if nbits <= 0 or (not rotate and nbits != d):
            raise InvalidInputError(
                f"LSH needs nbits > 0, and nbits == d={d} unless rotating (got {nbits})")
        return cls(rotation=jnp.eye(nbits, d, dtype=jnp.float32),
                   thresholds=jnp.zeros((nbits,), jnp.float32), d_in=d, nbits=nbits,
                   rotate=rotate, train_thresholds=train_thresholds,
                   is_trained=not (rotate or train_thresholds))

    @property
    def d_out(self) -> int:
        return -(-self.nbits // 8)

    def train(self, x, *, key=None):
        key = jax.random.key(0) if key is None else key
        rotation = random_orthogonal(key, self.nbits, self.d_in) if self.rotate else self.rotation
        thresholds = self.thresholds
        if self.train_thresholds:
            projected = jnp.asarray(x, jnp.float32) @ rotation.T
            thresholds = jnp.median(projected, axis=0)
        return dataclasses.replace(self, rotation=rotation, thresholds=thresholds,
                                   is_trained=True)

    def apply(self, x):
        projected = x.astype(jnp.float32) @ self.rotation.T
        return hamming.pack_bits(projected >= self.thresholds)  # FAISS: bit = (x >= t)

    def reverse(self, y):
        raise InvalidInputError("LSH codes cannot be decoded back to vectors")


@pytree_dataclass
class BinaryCodeStore(FlatIndex):
    """Packed binary codes with Flat's storage (ids, growth, removal), searched by Hamming
    distance; `vectors` holds the (capacity, nbytes) uint8 codes."""

    @classmethod
    def create(cls, d: int, metric: str = "hamming", *, id_mode: str = "sequential"):
        """An empty store of d-bit codes (d a multiple of 8)."""
        d = check_code_bits(d)
        store = super().create(d // 8, metric, id_mode=id_mode)
        return dataclasses.replace(store, vectors=jnp.zeros((0, d // 8), jnp.uint8))

    def describe(self) -> str:  # named by the LSH transform in front of it
        return id_mode_prefix(self.id_mode)

    def prepare(self, codes):
        return codes

    def search_core(self, codes, k: int, selector=None, backend: str = "auto"):
        distances, rows = hamming_search(codes, self.vectors, k,
                                         xb_valid=self.allowed(selector), backend=backend)
        missing = rows < 0
        return jnp.where(missing, jnp.inf, distances.astype(jnp.float32)), self._row_ids(rows)

    def range_core(self, codes, radius, capacity, selector=None, **params):
        raise InvalidInputError("range_search is not supported by LSH indexes (as in FAISS)")

    def reconstruct_core(self, ids):
        raise InvalidInputError("LSH codes cannot be decoded back to vectors (as in FAISS)")


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

from jann._pytree import pytree_dataclass
from jann.compose import PreTransformIndex
from jann.errors import InvalidInputError
from jann.flat import FlatIndex
from jann.ops import hamming
from jann.ops.dispatch import hamming_search
from jann.transforms import random_orthogonal

__all__ = ["LSHTransform", "BinaryCodeStore", "lsh_index"]


@pytree_dataclass(data=("rotation", "thresholds"), meta=("d_in", "nbits", "rotate",
                                                         "train_thresholds", "is_trained"))
@dataclasses.dataclass(frozen=True)
class LSHTransform:
    """x -> packed bits of (rotation @ x >= thresholds); d_out is the code size in bytes."""

    rotation: jax.Array
    thresholds: jax.Array
    d_in: int
    nbits: int
    rotate: bool = False
    train_thresholds: bool = False
    is_trained: bool = False

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


@pytree_dataclass(data=FlatIndex.DATA_FIELDS, meta=FlatIndex.META_FIELDS)
@dataclasses.dataclass(frozen=True)
class BinaryCodeStore(FlatIndex):
    """Packed binary codes with Flat's storage (ids, growth, removal), searched by Hamming
    distance; `vectors` holds the (capacity, nbytes) uint8 codes."""

    def describe(self) -> str:  # named by the LSH transform in front of it
        return {"sequential": "", "idmap": "IDMap,", "idmap2": "IDMap2,"}[self.id_mode]

    def prepare_queries(self, codes):
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


def lsh_index(d: int, nbits: int | None = None, *, rotate: bool = False,
              train_thresholds: bool = False, id_mode: str = "sequential"):
    """The "LSH[<nbits>][r][t]" factory index: an LSHTransform in front of binary codes."""
    transform = LSHTransform.create(d, nbits, rotate=rotate, train_thresholds=train_thresholds)
    store = BinaryCodeStore.empty(transform.d_out, "l2", id_mode=id_mode)
    store = dataclasses.replace(store, vectors=jnp.zeros((0, transform.d_out), jnp.uint8))
    name = f"LSH{'' if nbits in (None, d) else nbits}{'r' if rotate else ''}" \
           f"{'t' if train_thresholds else ''}"
    return PreTransformIndex(transform=transform, index=store, transform_description=name)

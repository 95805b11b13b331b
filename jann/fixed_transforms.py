"""Transforms without training: L2 normalisation ("L2norm", FAISS `NormalizationTransform`)
and dimension remapping ("Pad<d>": zero padding, FAISS `RemapDimensionsTransform`).

"L2norm,Flat" with the ip metric is cosine similarity as FAISS users build it (jann also
has the "cosine" metric, which normalises the same way inside the index). "Pad128"
pads vectors with zeros to 128 dimensions (FAISS pads for kernels that want a multiple
of a block); distances and inner products are unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jann._pytree import pytree_dataclass, static
from jann.errors import InvalidInputError

__all__ = ["NormalizationTransform", "RemapDimensions"]


def _vectors(x, d: int, what: str = "vectors") -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2 or x.shape[1] != d:
        raise InvalidInputError(f"{what} must be (n, {d}), got shape {tuple(x.shape)}")
    return x


@pytree_dataclass
class NormalizationTransform:
    """Each vector divided by its L2 norm (a zero vector stays zero); the reverse is the
    identity, as FAISS's (the norm is not kept)."""

    d_in: int = static()
    d_out: int = static()
    is_trained: bool = static(True)

    @classmethod
    def create(cls, d: int) -> "NormalizationTransform":
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise InvalidInputError(f"L2norm needs a positive dimension, got {d!r}")
        return cls(d_in=int(d), d_out=int(d))

    def describe(self) -> str:
        return "L2norm"

    def train(self, x=None, *, key=None) -> "NormalizationTransform":
        return self

    def apply(self, x) -> jax.Array:
        x = _vectors(x, self.d_in)
        norms = jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))
        return jnp.where(norms > 0, x / jnp.where(norms > 0, norms, 1.0), 0.0)

    def reverse(self, y) -> jax.Array:
        return _vectors(y, self.d_out, "transformed vectors")


@pytree_dataclass
class RemapDimensions:
    """Output column i is input column `map[i]`, or 0 where map[i] = -1 (FAISS
    `RemapDimensionsTransform`); "Pad<d>" maps the input columns to the first ones."""

    map: jax.Array
    d_in: int = static()
    d_out: int = static()
    is_trained: bool = static(True)

    @classmethod
    def create(cls, d_in: int, mapping) -> "RemapDimensions":
        mapping = np.asarray(mapping)
        if mapping.ndim != 1 or not mapping.size or mapping.dtype.kind not in "iu" or \
                mapping.min() < -1 or mapping.max() >= d_in:
            raise InvalidInputError(f"a dimension map must list input columns in [-1, "
                                    f"{d_in}), got {mapping!r}")
        return cls(map=jnp.asarray(mapping, jnp.int32), d_in=int(d_in),
                   d_out=int(mapping.size))

    @classmethod
    def padding(cls, d_in: int, d_out: int) -> "RemapDimensions":
        if d_out < d_in:
            raise InvalidInputError(f"Pad{d_out} cannot pad {d_in} dimensions to fewer")
        return cls.create(d_in, np.concatenate([np.arange(d_in), -np.ones(d_out - d_in,
                                                                          np.int64)]))

    def describe(self) -> str:
        padding = np.concatenate([np.arange(self.d_in), -np.ones(self.d_out - self.d_in)]) \
            if self.d_out >= self.d_in else None
        if padding is not None and np.array_equal(np.asarray(self.map), padding):
            return f"Pad{self.d_out}"
        return f"Remap{self.d_out}"

    def train(self, x=None, *, key=None) -> "RemapDimensions":
        return self

    def apply(self, x) -> jax.Array:
        x = _vectors(x, self.d_in)
        x = jnp.concatenate([x, jnp.zeros((x.shape[0], 1), x.dtype)], axis=1)
        return x[:, jnp.where(self.map >= 0, self.map, self.d_in)]

    def reverse(self, y) -> jax.Array:
        """Each input column from the last output column mapped to it (0 if none)."""
        y = _vectors(y, self.d_out, "transformed vectors")
        target = jnp.where(self.map >= 0, self.map, self.d_in)
        return jnp.zeros((y.shape[0], self.d_in + 1), y.dtype).at[:, target].set(y)[:, :-1]

"""A fixed affine map y = x A^T + b (FAISS `LinearTransform`).

What the linear transforms of a FAISS index file (PCA, OPQ, random and ITQ rotations,
centring) are read as: FAISS itself stores them as their A and b (an OPQ rotation is a
plain `LinearTransform` there), so reading them as such searches exactly as FAISS does.
`of` gives the map of any jann linear transform, which is how `jann.write_faiss` writes
them. It is trained when made; `train` returns it unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jann._pytree import pytree_dataclass, static
from jann.errors import InvalidInputError

__all__ = ["LinearTransform"]

_HI = jax.lax.Precision.HIGHEST


@pytree_dataclass
class LinearTransform:
    """matrix (d_out, d_in) and bias (d_out,) float32; `name` is what `describe` says
    (the factory component it came from where known, e.g. "PCA64")."""

    matrix: jax.Array
    bias: jax.Array
    d_in: int = static()
    d_out: int = static()
    name: str = static("")
    is_trained: bool = static(True)

    @classmethod
    def create(cls, matrix, bias=None, name: str = "") -> "LinearTransform":
        matrix = np.asarray(matrix, np.float32)
        if matrix.ndim != 2 or 0 in matrix.shape:
            raise InvalidInputError(f"a linear transform's matrix must be (d_out, d_in), "
                                    f"got shape {matrix.shape}")
        d_out, d_in = matrix.shape
        bias = np.zeros(d_out, np.float32) if bias is None else np.asarray(bias, np.float32)
        if bias.shape != (d_out,):
            raise InvalidInputError(f"a linear transform's bias must be ({d_out},), got "
                                    f"shape {bias.shape}")
        if not (np.isfinite(matrix).all() and np.isfinite(bias).all()):
            raise InvalidInputError("a linear transform's matrix or bias is not finite")
        return cls(matrix=jnp.asarray(matrix), bias=jnp.asarray(bias), d_in=d_in,
                   d_out=d_out, name=name or f"LinearTransform{d_out}")

    @classmethod
    def of(cls, transform) -> "LinearTransform":
        """The map of a trained jann linear transform (PCAMatrix, RandomRotationMatrix,
        OPQMatrix, ITQMatrix, LinearTransform); a non-linear one is refused."""
        if isinstance(transform, cls):
            return transform
        matrix = getattr(transform, "A", getattr(transform, "matrix", None))
        if matrix is None or not hasattr(transform, "reverse"):
            raise InvalidInputError(f"{type(transform).__name__} is not a linear map")
        bias = getattr(transform, "b", None)
        name = transform.describe() if hasattr(transform, "describe") else ""
        return cls.create(np.asarray(matrix), None if bias is None else np.asarray(bias),
                          name)

    def describe(self) -> str:
        return self.name

    def train(self, x=None, *, key=None) -> "LinearTransform":
        return self

    def apply(self, x) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise InvalidInputError(f"vectors must be (n, {self.d_in}), got shape {x.shape}")
        return jnp.matmul(x, self.matrix.T, precision=_HI) + self.bias

    def reverse(self, y) -> jax.Array:
        """The least-squares inverse, (y - b) pinv(A)^T: the transpose map when A's rows
        are orthonormal (FAISS's `reverse_transform`, which needs them so)."""
        y = jnp.asarray(y, jnp.float32)
        if y.ndim != 2 or y.shape[1] != self.d_out:
            raise InvalidInputError(f"transformed vectors must be (n, {self.d_out}), got "
                                    f"shape {y.shape}")
        return jnp.matmul(y - self.bias, jnp.linalg.pinv(self.matrix).T, precision=_HI)

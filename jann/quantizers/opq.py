"""OPQ rotation (FAISS `OPQMatrix`, factory prefix `OPQ16_64`): a learned orthonormal map
applied before product quantization.

PQ quantizes each block of d/M coordinates independently, so it loses most where
correlated or high-variance coordinates fall into the same block. OPQ learns a rotation
that spreads the variance so a PQ of the rotated data reconstructs it better. Training
alternates, as FAISS does: fix the rotation and (re)train a PQ on the rotated data, then
fix the PQ reconstructions and solve for the rotation that best maps the data onto them
(orthogonal Procrustes: an SVD of a d x d_out matrix). The first PQ is trained from scratch
(`niter_pq_0` k-means iterations); later ones start from the previous centroids and run
`niter_pq` iterations, so all but the first round compile into one jitted loop.

Convergence from the random start is slow: on Fashion-MNIST pixels (196-d, M=14, 5000
training vectors) PQ alone reconstructs held-out vectors with squared error 67k, OPQ+PQ
after 20 rounds with 85-89k and after 50 with 76-79k (FAISS and jann alike, +-3% over
seeds), so OPQ pays off only on data whose coordinates are badly balanced for PQ.

The trained transform is linear without bias: apply(x) = x A^T, reverse(y) = y A, with A
(d_out, d_in) having orthonormal rows (columns when d_out > d_in), so `reverse` is the
exact inverse on the range of `apply`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jann._pytree import pytree_dataclass, static
from jann.errors import InvalidInputError, NotTrainedError
from jann.quantizers.pq import (ProductQuantizer, check_codec_shape, input_vectors,
                                training_vectors)

__all__ = ["OPQMatrix"]

_HIGHEST = jax.lax.Precision.HIGHEST


def _matmul(a, b):
    return jnp.matmul(a, b, precision=_HIGHEST)


def random_rotation(key, d: int) -> jax.Array:
    """A (d, d) random orthogonal matrix (QR of a Gaussian matrix, as FAISS seeds OPQ)."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (d, d), jnp.float32))
    return q * jnp.where(jnp.diag(r) < 0, -1.0, 1.0)[None, :]


def procrustes(x: jax.Array, target: jax.Array) -> jax.Array:
    """The (d_out, d) matrix R with orthonormal rows minimising ||x R^T - target||_F.

    x: (n, d), target: (n, d_out). With U S V^T = svd(target^T x), R = U V^T.
    """
    u, _, vt = jnp.linalg.svd(_matmul(target.T, x), full_matrices=False)
    return _matmul(u, vt)


def _rotation_update(x, rotation, pq):
    """Rotation that maps x onto the PQ reconstructions of its current projection."""
    projected = _matmul(x, rotation.T)
    return procrustes(x, pq.decode_indices(pq.encode_indices(projected)))


@jax.jit
def _first_update(x, rotation, pq):
    return _rotation_update(x, rotation, pq)


@functools.partial(jax.jit, static_argnames=("rounds", "niter_pq"))
def _alternate(x, rotation, pq, key, rounds: int, niter_pq: int):
    """`rounds` of (hot-start PQ refinement, rotation update), as one compiled loop."""
    def one_round(i, state):
        rotation, pq = state
        pq = pq.refine(_matmul(x, rotation.T), key=jax.random.fold_in(key, i), niter=niter_pq)
        return _rotation_update(x, rotation, pq), pq

    return jax.lax.fori_loop(0, rounds, one_round, (rotation, pq))


@pytree_dataclass
class OPQMatrix:
    """Learned rotation for a PQ with M sub-quantizers on d_out dimensions.

    matrix: (d_out, d_in) float32 (zeros until trained). Static: d_in, d_out, M,
    is_trained. Transform interface: `d_in`, `d_out`, `train`, `apply`, `reverse`.
    """

    matrix: jax.Array
    d_in: int = static()
    d_out: int = static()
    M: int = static()
    is_trained: bool = static(False)

    @classmethod
    def create(cls, d_in: int, M: int, d_out: int | None = None) -> "OPQMatrix":
        """An untrained OPQ (FAISS `OPQMatrix(d_in, M, d_out)`); d_out defaults to d_in
        and must be a multiple of M."""
        d_out = d_in if d_out is None else d_out
        if isinstance(d_in, bool) or not isinstance(d_in, int) or d_in <= 0:
            raise InvalidInputError(f"OPQMatrix: d_in must be a positive int, got {d_in!r}")
        check_codec_shape(d_out, M, 8, "OPQMatrix")
        return cls(matrix=jnp.zeros((d_out, d_in), jnp.float32), d_in=d_in, d_out=d_out, M=M,
                   is_trained=False)

    def train(self, x, *, key, niter: int = 50, niter_pq: int = 4, niter_pq_0: int = 40,
              nbits: int = 8, max_train_points: int = 256 * 256,
              verbose: bool = False) -> "OPQMatrix":
        """A trained copy (FAISS's algorithm and defaults). x is subsampled to
        `max_train_points` and centred; the rotation starts random; each of `niter` rounds
        trains a PQ (M x nbits) on the rotated data and updates the rotation."""
        if niter < 1:
            raise InvalidInputError(f"OPQMatrix: niter must be >= 1, got {niter}")
        x = training_vectors(x, self.d_in)
        key_sample, key_rot, key_pq, key_loop = jax.random.split(key, 4)
        if x.shape[0] > max_train_points:
            keep = jax.random.permutation(key_sample, x.shape[0])[:max_train_points]
            x = x[jnp.sort(keep)]
        x = x - jnp.mean(x, axis=0)
        d = max(self.d_in, self.d_out)          # d_out > d_in: pad the input with zeros
        x = jnp.pad(x, ((0, 0), (0, d - self.d_in)))
        rotation = random_rotation(key_rot, d)[:self.d_out]
        # FAISS's OPQ lets its PQ use up to 1000 points per centroid.
        pq = ProductQuantizer.create(self.d_out, self.M, nbits).train(
            _matmul(x, rotation.T), key=key_pq, niter=niter_pq_0,
            max_points_per_centroid=1000, verbose=verbose)
        rotation = _first_update(x, rotation, pq)
        rotation, _ = _alternate(x, rotation, pq, key_loop, niter - 1, niter_pq)
        return dataclasses.replace(self, matrix=rotation[:, :self.d_in], is_trained=True)

    def _require_trained(self, what: str) -> None:
        if not self.is_trained:
            raise NotTrainedError(f"OPQMatrix.{what} before train")

    def apply(self, x) -> jax.Array:
        """(n, d_in) -> (n, d_out) rotated vectors. Jittable."""
        self._require_trained("apply")
        return _matmul(input_vectors(x, self.d_in).astype(jnp.float32), self.matrix.T)

    def reverse(self, y) -> jax.Array:
        """(n, d_out) -> (n, d_in): the transpose map (FAISS `reverse_transform`)."""
        self._require_trained("reverse")
        return _matmul(input_vectors(y, self.d_out, "y").astype(jnp.float32), self.matrix)

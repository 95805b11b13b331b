"""Residual and product-residual quantizers (FAISS `ResidualQuantizer`, factory `RQ8x8`, and
`ProductResidualQuantizer`, `PRQ2x4x8`): additive codecs, where a vector is approximated
by a sum of M codewords, one from each of M codebooks over the full (sub-)space.

Unlike PQ, every codebook sees every coordinate, so M codebooks of 2**nbits words reach a
lower error than PQ at the same code size, at the price of a harder encoder: choosing each
codeword greedily against the current residual is far from optimal, so encoding keeps the
`beam_size` best partial sums at every step (beam search; FAISS's default beam is 5).
Training follows FAISS's sequential scheme: codebook m is k-means on the beam residuals
left by codebooks 0..m-1, then the training set is re-encoded with the new codebook.
FAISS's default k-means there grows the dimension progressively over a PCA basis; jann
runs plain k-means (FAISS's `train_type = 0`). On held-out Fashion-MNIST vectors that
matches FAISS's plain mode and is 2-3% above its default (RQ4x8 +2.0%, RQ8x8 +3.1%; the
product variant is within 2%); progressive dimensions would need a k-means that starts
from given centroids.

Codes use the layout of `pq.py` (one byte per sub-code for nbits > 4, two per byte
below), so the look-up scan is shared with PQ. Distances: with the `distance_tables(xq,
"ip")` look-up one gets <q, x_hat> by `adc`; ||q - x_hat||^2 = ||q||^2 - 2 <q, x_hat> +
||x_hat||^2 needs the squared norm of the reconstruction, `norm(codes)`, which an index
computes once when it stores the codes.

The product variant cuts d into `nsplits` blocks with an RQ of `Msub` codebooks in each;
both classes share one implementation that sees codebooks as (nsplits, Msub, K, dsub)
(nsplits = 1 for the plain RQ).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jann._pytree import pytree_dataclass, static
from jann.errors import InvalidInputError, NotTrainedError
from jann.kmeans import kmeans
from jann.ops.knn import map_query_blocks
from jann.quantizers.pq import (adc_lookup, check_codec_shape, check_training_size,
                                code_size_for, input_vectors, pack_codes, rows_per_block,
                                training_vectors, unpack_codes)

__all__ = ["ProductResidualQuantizer", "ResidualQuantizer", "beam_search_encode",
           "decode_indices"]

DEFAULT_BEAM_SIZE = 5
_HIGHEST = jax.lax.Precision.HIGHEST


# --- beam search (pure, jittable) --------------------------------------------------------
def _initial_beam(x: jax.Array, beam_size: int, M: int):
    """Beam state for rows x: every slot holds x, only slot 0 is live (error ||x||^2),
    the others have error +inf until enough candidates exist to fill them."""
    n, d = x.shape
    residuals = jnp.broadcast_to(x[:, None, :], (n, beam_size, d)).astype(jnp.float32)
    errors = jnp.full((n, beam_size), jnp.inf, jnp.float32).at[:, 0].set(
        jnp.sum(residuals[:, 0] ** 2, axis=-1))
    codes = jnp.zeros((n, beam_size, M), jnp.int32)
    return residuals, codes, errors


def _extend_beam(residuals, codes, errors, codebook, m):
    """One beam step with codebook m (K, d): of the beam_size * K (slot, codeword)
    candidates keep the beam_size with the smallest new residual norm, sorted."""
    n, beam_size, _ = residuals.shape
    K = codebook.shape[0]
    cross = jnp.einsum("nbd,kd->nbk", residuals, codebook, precision=_HIGHEST)
    new_errors = (jnp.sum(residuals ** 2, axis=-1)[..., None] - 2.0 * cross
                  + jnp.sum(codebook ** 2, axis=-1))
    new_errors = jnp.where(jnp.isinf(errors)[..., None], jnp.inf, new_errors)
    neg_best, flat = jax.lax.top_k(-new_errors.reshape(n, beam_size * K), beam_size)
    parent, word = flat // K, flat % K
    residuals = jnp.take_along_axis(residuals, parent[..., None], axis=1) - codebook[word]
    codes = jnp.take_along_axis(codes, parent[..., None], axis=1).at[:, :, m].set(word)
    return residuals, codes, -neg_best


_extend_beam_jit = jax.jit(_extend_beam)


def beam_search_encode(x: jax.Array, codebooks: jax.Array, beam_size: int) -> jax.Array:
    """(n, d) rows -> (n, M) int32 indices into codebooks (M, K, d) whose codeword sum is
    the best found by a beam search of width beam_size. Streams rows in blocks."""
    M, K, d = codebooks.shape

    def encode_block(rows):
        def step(state, codebook_and_m):
            return _extend_beam(*state, *codebook_and_m), None

        state = _initial_beam(rows, beam_size, M)
        (_, codes, _), _ = jax.lax.scan(step, state, (codebooks, jnp.arange(M)))
        return codes[:, 0]

    block = rows_per_block(beam_size * (K + 2 * d + M))
    return map_query_blocks(encode_block, x.astype(jnp.float32), block)


def decode_indices(indices: jax.Array, codebooks: jax.Array) -> jax.Array:
    """(n, M) indices -> (n, d) float32 sums of the selected codewords of (M, K, d)."""
    def add_codeword(total, codebook_and_column):
        codebook, column = codebook_and_column
        return total + codebook[column], None

    init = jnp.zeros((indices.shape[0], codebooks.shape[2]), jnp.float32)
    total, _ = jax.lax.scan(add_codeword, init, (codebooks, indices.T.astype(jnp.int32)))
    return total


def train_codebooks(x: jax.Array, M: int, nbits: int, *, key, beam_size: int, niter: int,
                    max_points_per_centroid: int, verbose: bool) -> jax.Array:
    """(M, 2**nbits, d) codebooks trained one after the other on beam residuals (host)."""
    K = 1 << nbits
    residuals, codes, errors = _initial_beam(x, beam_size, M)
    codebooks, live = [], 1
    for m in range(M):
        # Live slots come first (the beam is sorted); train on all of them, as FAISS does.
        # Every stage reuses the same key, as FAISS reuses its seed: from the second stage
        # on, the k-means then starts from the residuals of the same training rows. On
        # Fashion-MNIST (RQ8x8, 5000 training vectors) that gives a 3% lower held-out
        # error than a fresh key per stage, and matches FAISS.
        samples = residuals[:, :live].reshape(-1, x.shape[1])
        codebook = kmeans(samples, K, key=key, niter=niter,
                          max_points_per_centroid=max_points_per_centroid,
                          min_points_per_centroid=0, verbose=verbose).centroids
        residuals, codes, errors = _extend_beam_jit(residuals, codes, errors, codebook, m)
        codebooks.append(codebook)
        live = min(live * K, beam_size)
        if verbose:
            print(f"  RQ codebook {m + 1}/{M}: mean squared error "
                  f"{float(jnp.mean(errors[:, 0])):.6g}", flush=True)
    return jnp.stack(codebooks)


# --- the codec, shared by RQ (one split) and PRQ -----------------------------------------
class _AdditiveCodec:
    """Codec methods over `split_codebooks` (nsplits, Msub, K, dsub). Subclasses define
    the fields `codebooks`, `d`, `nbits`, `beam_size`, `is_trained`, the sizes `M`
    (codebooks in all), `nsplits` and `Msub`, `split_codebooks` and
    `with_split_codebooks`. (No field may be defined here: a dataclass would take a
    property of this class as the field's default.)"""

    @property
    def ksub(self) -> int:
        """Codewords per codebook (2**nbits)."""
        return 1 << self.nbits

    @property
    def dsub(self) -> int:
        """Dimensions per split (d / nsplits)."""
        return self.d // self.nsplits

    @property
    def code_size(self) -> int:
        """Bytes per encoded vector (layout of `jann.quantizers.pq`)."""
        return code_size_for(self.M, self.nbits)

    def _require_trained(self, what: str) -> None:
        if not self.is_trained:
            raise NotTrainedError(f"{type(self).__name__}.{what} before train")

    def _splits(self, x, name: str = "x") -> jax.Array:
        """(n, d) -> (nsplits, n, dsub)."""
        x = input_vectors(x, self.d, name).astype(jnp.float32)
        return jnp.swapaxes(x.reshape(x.shape[0], self.nsplits, self.dsub), 0, 1)

    def train(self, x, *, key, niter: int = 25, max_points_per_centroid: int = 256,
              verbose: bool = False):
        """A trained copy: in each split, codebooks learned one after the other by k-means
        on the beam-search residuals of the previous ones. Deterministic for a key."""
        x = training_vectors(x, self.d)
        check_training_size(x.shape[0], self.ksub, type(self).__name__)
        keys = jax.random.split(key, self.nsplits)
        codebooks = [
            train_codebooks(part, self.Msub, self.nbits, key=k, beam_size=self.beam_size,
                            niter=niter, max_points_per_centroid=max_points_per_centroid,
                            verbose=verbose)
            for part, k in zip(self._splits(x), keys)]
        return self.with_split_codebooks(jnp.stack(codebooks))

    def encode_indices(self, x) -> jax.Array:
        """(n, d) -> (n, M) int32 codeword indices (beam search in each split)."""
        self._require_trained("encode")
        per_split = jax.vmap(functools.partial(beam_search_encode, beam_size=self.beam_size))(
            self._splits(x), self.split_codebooks)                    # (nsplits, n, Msub)
        return jnp.swapaxes(per_split, 0, 1).reshape(per_split.shape[1], self.M)

    def encode(self, x) -> jax.Array:
        """(n, d) float -> (n, code_size) uint8."""
        return pack_codes(self.encode_indices(x), self.nbits)

    def decode_indices(self, indices) -> jax.Array:
        """(n, M) indices -> (n, d) float32 reconstructions."""
        self._require_trained("decode")
        indices = jnp.asarray(indices)
        indices = indices.reshape(indices.shape[0], self.nsplits, self.Msub)
        parts = jax.vmap(decode_indices, in_axes=(1, 0))(indices, self.split_codebooks)
        return jnp.swapaxes(parts, 0, 1).reshape(indices.shape[0], self.d)

    def decode(self, codes) -> jax.Array:
        """(n, code_size) uint8 -> (n, d) float32."""
        return self.decode_indices(unpack_codes(jnp.asarray(codes), self.M, self.nbits))

    def norm(self, codes) -> jax.Array:
        """(n,) float32 squared norms of the reconstructions of codes."""
        x_hat = self.decode(codes)
        return jnp.sum(x_hat * x_hat, axis=-1)

    def distance_tables(self, xq, metric: str = "ip") -> jax.Array:
        """(nq, M, ksub) inner products of each query (its split) with every codeword;
        `adc` of these tables is <q, decode(codes)>. Only "ip": add `norm(codes)` and
        ||q||^2 for squared L2."""
        self._require_trained("distance_tables")
        if metric != "ip":
            raise InvalidInputError(
                f"{type(self).__name__}.distance_tables supports metric='ip' only (got "
                f"{metric!r}); l2 is ||q||^2 - 2 adc(ip tables) + norm(codes)")
        tables = jnp.einsum("snd,smkd->nsmk", self._splits(xq, "xq"), self.split_codebooks,
                            precision=_HIGHEST)
        return tables.reshape(tables.shape[0], self.M, self.ksub)

    def adc(self, tables: jax.Array, codes) -> jax.Array:
        """(nq, n) float32: each query's summed table entries for each code."""
        return adc_lookup(tables, unpack_codes(jnp.asarray(codes), self.M, self.nbits))

    def kernel_decode(self) -> None:
        """The IVF list-scan kernel has no decode for these codes (`jann.ops.ivf_scan`):
        IVF-RQ searches run the XLA scan whatever the backend."""
        return None


def _check_beam(beam_size, what: str) -> None:
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size <= 0:
        raise InvalidInputError(f"{what}: beam_size must be a positive int, got {beam_size!r}")


@pytree_dataclass
class ResidualQuantizer(_AdditiveCodec):
    """M codebooks of 2**nbits codewords over the full space; x ~ sum of one word each.

    codebooks: (M, ksub, d) float32 (zeros until trained). Static: d, M, nbits,
    beam_size (encoder beam width, FAISS `max_beam_size`), is_trained.
    """

    codebooks: jax.Array
    d: int = static()
    M: int = static()
    nbits: int = static(8)
    beam_size: int = static(DEFAULT_BEAM_SIZE)
    is_trained: bool = static(False)

    @classmethod
    def create(cls, d: int, M: int, nbits: int = 8, *,
               beam_size: int = DEFAULT_BEAM_SIZE) -> "ResidualQuantizer":
        """An untrained RQ (FAISS `ResidualQuantizer(d, M, nbits)`; factory `RQ{M}x{nbits}`)."""
        check_codec_shape(d, M, nbits, "ResidualQuantizer", parts=("splits", 1))
        _check_beam(beam_size, "ResidualQuantizer")
        return cls(codebooks=jnp.zeros((M, 1 << nbits, d), jnp.float32), d=d, M=M,
                   nbits=nbits, beam_size=beam_size, is_trained=False)

    @property
    def nsplits(self) -> int:
        """One split: the whole space."""
        return 1

    @property
    def Msub(self) -> int:
        """Codebooks per split (all M)."""
        return self.M

    @property
    def split_codebooks(self) -> jax.Array:
        """Codebooks as (1, M, ksub, d), the shared implementation's view."""
        return self.codebooks[None]

    def with_split_codebooks(self, split_codebooks) -> "ResidualQuantizer":
        """A trained copy holding (1, M, ksub, d) codebooks."""
        return dataclasses.replace(self, codebooks=split_codebooks[0], is_trained=True)


@pytree_dataclass
class ProductResidualQuantizer(_AdditiveCodec):
    """d cut into nsplits blocks, an RQ of Msub codebooks in each; M = nsplits * Msub.

    codebooks: (nsplits, Msub, ksub, d // nsplits) float32. Static: d, nsplits, Msub,
    nbits, beam_size, is_trained. Codes are the splits' codes side by side.
    """

    codebooks: jax.Array
    d: int = static()
    nsplits: int = static()
    Msub: int = static()
    nbits: int = static(8)
    beam_size: int = static(DEFAULT_BEAM_SIZE)
    is_trained: bool = static(False)

    @classmethod
    def create(cls, d: int, nsplits: int, Msub: int, nbits: int = 8, *,
               beam_size: int = DEFAULT_BEAM_SIZE) -> "ProductResidualQuantizer":
        """An untrained PRQ (FAISS `ProductResidualQuantizer(d, nsplits, Msub, nbits)`;
        factory `PRQ{nsplits}x{Msub}x{nbits}`)."""
        check_codec_shape(d, Msub, nbits, "ProductResidualQuantizer",
                          parts=("nsplits", nsplits))
        _check_beam(beam_size, "ProductResidualQuantizer")
        return cls(codebooks=jnp.zeros((nsplits, Msub, 1 << nbits, d // nsplits), jnp.float32),
                   d=d, nsplits=nsplits, Msub=Msub, nbits=nbits, beam_size=beam_size,
                   is_trained=False)

    @property
    def M(self) -> int:
        """Codebooks in all (sub-codes per vector)."""
        return self.nsplits * self.Msub

    @property
    def split_codebooks(self) -> jax.Array:
        """Codebooks as stored: (nsplits, Msub, ksub, dsub)."""
        return self.codebooks

    def with_split_codebooks(self, split_codebooks) -> "ProductResidualQuantizer":
        """A trained copy holding the given (nsplits, Msub, ksub, dsub) codebooks."""
        return dataclasses.replace(self, codebooks=split_codebooks, is_trained=True)

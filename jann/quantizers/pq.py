"""Product quantizer (FAISS `ProductQuantizer`): the codec behind IVF-PQ, PQ and OPQ indexes.

A vector is cut into M sub-vectors of d/M dimensions, and each is replaced by the index of
its nearest centroid among 2**nbits learned for that sub-space; the code is the M indices.
Distances to a query are then M table look-ups (asymmetric distance computation, ADC): the
query's distance to every centroid of every sub-space is computed once (`distance_tables`),
and a stored code's distance is the sum of its M entries (`adc`).

Code layout, chosen so that a scan kernel only ever reads whole bytes or nibbles:

- nbits 9..16: two bytes per sub-code, low byte first, code_size = 2 M ("PQ16x10");
- nbits 5..8: one byte per sub-code, code_size = M (as FAISS for nbits = 8);
- nbits 1..4: two sub-codes per byte, sub-code 2j in the low nibble and 2j+1 in the high
  nibble of byte j, code_size = ceil(M / 2) (as FAISS for nbits = 4, e.g. PQ32x4 is 16
  bytes).

For nbits 4 and 8 the bytes are therefore identical to FAISS's codes. For other widths
FAISS packs bits tightly (PQ14x6 is 11 bytes there, 14 here; PQ16x10 20 and 32); jann
trades those bytes for a layout a kernel can address without bit arithmetic across byte
boundaries. Codes of more than 8 bits are scored by decoding (their look-up tables of
2**nbits entries per sub-space are no longer small), on XLA whatever the backend.

The same packing and the same look-up sum serve every codec whose code is M small indices
(residual and additive quantizers in `rq.py`): both are defined in `jann.ops`
(`jann.ops.codes.pack_codes` / `unpack_codes`, which the scan kernels read, and
`jann.ops.adc.adc_lookup`, the ADC scans' oracle) and re-exported here.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jann._inputs import as_vectors, check_finite
from jann._pytree import pytree_dataclass, static
from jann.errors import InvalidInputError, NotTrainedError
from jann.kmeans import check_training_points, kmeans, lloyd_step
from jann.ops.adc import adc_lookup
from jann.ops.codes import pack_codes, unpack_codes
from jann.ops.ivf_scan import KernelDecode
from jann.ops.knn import map_query_blocks

__all__ = ["ProductQuantizer", "adc_lookup", "check_codec_shape", "check_training_size",
           "code_size_for", "pack_codes", "unpack_codes"]

# FAISS asks for this many training points per centroid before it stops warning.
MIN_POINTS_PER_CENTROID = 39
# Floats of the score block one step of a streamed encoder may hold (16 MiB).
_SCORE_BUDGET = 1 << 22
# The same for PQ's (rows, M, ksub) block: 4 MiB stays nearer the cache. Measured (PQ
# encode of 50k-200k rows, 2 threads; 16 / 4 / 1 MiB): sift-textures PQ16x10 8.4 / 4.3 /
# 6.3 s, PQ16 2.6 / 1.6 / 1.6 s, PQ4 0.21 / 0.18 / 0.14 s; debian-minilm PQ48 1.8 / 1.0 /
# 1.6 s, PQ48x10 5.7 / 5.6 / 14.4 s; fashion-mnist PQ98 3.3 / 2.1 / 4.1 s;
# sift-textures-1m (16 / 4 MiB) PQ16 13.9 / 7.9 s, PQ16x10 41.7 / 26.5 s.
_PQ_SCORE_BUDGET = 1 << 20
_HIGHEST = jax.lax.Precision.HIGHEST
# The widest sub-code a ProductQuantizer takes (FAISS's limit too).
MAX_NBITS = 16


# --- code layout (shared by every codec whose code is M sub-codes) --------------------------
def check_codec_shape(d: int, M: int, nbits: int, what: str,
                      parts: tuple[str, int] | None = None, max_nbits: int = 8) -> None:
    """Raise InvalidInputError unless d and M are positive ints, nbits lies in
    1..max_nbits and the number of sub-spaces d is cut into, `parts` = (name, count)
    (("M", M) by default), divides d."""
    parts_name, n_parts = ("M", M) if parts is None else parts
    for name, value in (("d", d), ("M", M), ("nbits", nbits), (parts_name, n_parts)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidInputError(f"{what}: {name} must be a positive int, got {value!r}")
    if nbits > max_nbits:
        raise InvalidInputError(f"{what}: nbits must lie in 1..{max_nbits}, got {nbits}")
    if d % n_parts:
        raise InvalidInputError(
            f"{what}: {parts_name}={n_parts} must divide the dimension d={d}")


def code_size_for(M: int, nbits: int) -> int:
    """Bytes per code: ceil(M / 2) for nbits <= 4 (nibbles), M for 5..8 (bytes), 2 M
    above (two bytes each)."""
    return (M + 1) // 2 if nbits <= 4 else M if nbits <= 8 else 2 * M


def check_training_size(n: int, ksub: int, what: str) -> None:
    """Refuse fewer than ksub points; warn below FAISS's 39 points per centroid."""
    check_training_points(n, ksub, what, MIN_POINTS_PER_CENTROID, stacklevel=4)


def training_vectors(x, d: int) -> jax.Array:
    """Validated (n, d) float32 training data (finite values, the codec's dimension)."""
    x = as_vectors(x, d, "training vectors")
    check_finite(x, "training vectors")
    return jnp.asarray(x, jnp.float32)


def input_vectors(x, d: int, name: str = "x") -> jax.Array:
    """x as a (n, d) jax array; a wrong rank or dimension is an InvalidInputError (shapes
    are static, so this also holds under jit)."""
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != d:
        raise InvalidInputError(f"{name} must have shape (n, {d}), got {tuple(x.shape)}")
    return x


def rows_per_block(per_row: int, budget: int = _SCORE_BUDGET) -> int:
    """Rows a streamed encoder may process at once so per_row floats each fit the budget."""
    return max(1, budget // max(1, per_row))


# --- sub-space arithmetic ----------------------------------------------------------------
def _subvectors(x: jax.Array, M: int) -> jax.Array:
    return x.astype(jnp.float32).reshape(x.shape[0], M, x.shape[1] // M)


# Sub-spaces at most this wide are computed as dsub broadcast multiply-adds, which XLA
# fuses into one loop over the (n, M, ksub) output (or straight into the argmin of
# `nearest_subcodes`); as a batched dot the contraction is too short for a matrix kernel.
# Measured on XLA CPU (2 threads, 4096 rows x 256 centroids, einsum -> multiply-adds):
# M 16 x dsub 8: 48 -> 26 ms; M 48 x 8: 179 -> 80; M 32 x 4: 115 -> 45; M 64 x 2:
# 223 -> 77; M 8 x 16: 37 -> 23; M 4 x 32: 17 -> 16.
_NARROW_SUBSPACE = 32


def _subspace_dots(x_sub: jax.Array, centroids: jax.Array) -> jax.Array:
    """(n, M, dsub) x (M, ksub, dsub) -> (n, M, ksub) inner products, full float32."""
    if x_sub.shape[-1] <= _NARROW_SUBSPACE:
        return _summed_over_dsub(lambda j: x_sub[:, :, None, j] * centroids[None, :, :, j],
                                 x_sub.shape[-1])
    return jnp.einsum("nmd,mkd->nmk", x_sub, centroids, precision=_HIGHEST)


def _summed_over_dsub(term, dsub: int) -> jax.Array:
    total = term(0)
    for j in range(1, dsub):
        total = total + term(j)
    return total


def nearest_subcodes(x_sub: jax.Array, centroids: jax.Array) -> jax.Array:
    """Index of the nearest centroid in each sub-space: (n, M, dsub) -> (n, M) int32.

    Narrow sub-spaces rank by the squared distance summed over the sub-space (fused into
    the argmin: no (n, M, ksub) scores in memory; 8192 rows of M 16 x dsub 8 against 256
    centroids in 62 ms instead of 314); wider ones by ||c||^2 - 2 <x, c> (||x||^2 is
    common to all candidates). Either way a centroid given as input wins against any
    other that is not numerically equal to it.
    """
    if x_sub.shape[-1] <= _NARROW_SUBSPACE:
        scores = _summed_over_dsub(
            lambda j: jnp.square(x_sub[:, :, None, j] - centroids[None, :, :, j]),
            x_sub.shape[-1])
    else:
        c_norms = jnp.sum(centroids * centroids, axis=-1)
        scores = c_norms[None] - 2.0 * _subspace_dots(x_sub, centroids)
    return jnp.argmin(scores, axis=-1).astype(jnp.int32)


@pytree_dataclass
class ProductQuantizer:
    """M sub-quantizers of 2**nbits centroids each over d/M-dimensional sub-vectors.

    centroids: (M, ksub, dsub) float32 (zeros until trained). Static: d, M, nbits,
    is_trained.
    """

    centroids: jax.Array
    d: int = static()
    M: int = static()
    nbits: int = static(8)
    is_trained: bool = static(False)

    @classmethod
    def create(cls, d: int, M: int, nbits: int = 8) -> "ProductQuantizer":
        """An untrained PQ (FAISS `ProductQuantizer(d, M, nbits)`)."""
        check_codec_shape(d, M, nbits, "ProductQuantizer", max_nbits=MAX_NBITS)
        return cls(centroids=jnp.zeros((M, 1 << nbits, d // M), jnp.float32),
                   d=d, M=M, nbits=nbits, is_trained=False)

    @property
    def dsub(self) -> int:
        """Dimensions per sub-vector (d / M)."""
        return self.d // self.M

    @property
    def ksub(self) -> int:
        """Centroids per sub-quantizer (2**nbits)."""
        return 1 << self.nbits

    @property
    def code_size(self) -> int:
        """Bytes per encoded vector (see the module doc for the layout)."""
        return code_size_for(self.M, self.nbits)

    def _require_trained(self, what: str) -> None:
        if not self.is_trained:
            raise NotTrainedError(f"ProductQuantizer.{what} before train")

    # --- training (host level) ------------------------------------------------------------
    def train(self, x, *, key, niter: int = 25, max_points_per_centroid: int = 256,
              init: str = "random", verbose: bool = False) -> "ProductQuantizer":
        """A trained copy: k-means in each sub-space (FAISS defaults: 25 iterations, at most
        256 points per centroid, random init). Deterministic for a given key."""
        x = training_vectors(x, self.d)
        check_training_size(x.shape[0], self.ksub, "ProductQuantizer")
        # One key for all sub-spaces, as FAISS uses one seed: each k-means then samples and
        # seeds from the same training rows.
        centroids = [
            kmeans(x[:, m * self.dsub:(m + 1) * self.dsub], self.ksub, key=key,
                   niter=niter, init=init, max_points_per_centroid=max_points_per_centroid,
                   min_points_per_centroid=0, verbose=verbose).centroids
            for m in range(self.M)]
        return dataclasses.replace(self, centroids=jnp.stack(centroids), is_trained=True)

    def refine(self, x, *, key, niter: int) -> "ProductQuantizer":
        """`niter` Lloyd iterations per sub-space starting from the current centroids
        (FAISS's `Train_hot_start`, as OPQ uses between rotations). Jittable. Uses the
        k-means step of `jann.kmeans` directly: `kmeans` itself always starts afresh."""
        self._require_trained("refine")
        x_sub = jnp.swapaxes(_subvectors(input_vectors(x, self.d), self.M), 0, 1)  # (M,n,dsub)

        def lloyd(args):
            return lloyd_step(*args, False)[0]

        def step(i, centroids):
            keys = jax.random.split(jax.random.fold_in(key, i), self.M)
            # lax.map, not vmap: batched, the step's empty-cluster `cond` would run its
            # split branch on every iteration.
            return jax.lax.map(lloyd, (x_sub, centroids, keys))

        return dataclasses.replace(self, centroids=jax.lax.fori_loop(0, niter, step,
                                                                     self.centroids))

    # --- codec (jittable) -----------------------------------------------------------------
    def encode_indices(self, x) -> jax.Array:
        """(n, d) -> (n, M) int32 sub-codes (nearest centroid per sub-space), streamed."""
        self._require_trained("encode")
        x = input_vectors(x, self.d)
        block = rows_per_block(self.M * self.ksub, _PQ_SCORE_BUDGET)
        return map_query_blocks(
            lambda rows: nearest_subcodes(_subvectors(rows, self.M), self.centroids), x, block)

    def encode(self, x) -> jax.Array:
        """(n, d) float -> (n, code_size) uint8."""
        return pack_codes(self.encode_indices(x), self.nbits)

    def decode_indices(self, indices: jax.Array) -> jax.Array:
        """(n, M) int sub-codes -> (n, d) float32 reconstructions."""
        self._require_trained("decode")
        picked = jax.vmap(lambda c, i: c[i], in_axes=(0, 1), out_axes=1)(
            self.centroids, indices.astype(jnp.int32))               # (n, M, dsub)
        return picked.reshape(indices.shape[0], self.d)

    def decode(self, codes) -> jax.Array:
        """(n, code_size) uint8 -> (n, d) float32."""
        return self.decode_indices(unpack_codes(jnp.asarray(codes), self.M, self.nbits))

    def kernel_decode(self) -> KernelDecode | None:
        """How the IVF list-scan kernel reads these codes: by look-up tables built from
        `distance_tables(x, "ip")` (`jann.ops.ivf_scan`); codes wider than a byte are
        decoded instead (None)."""
        if self.nbits > 8:
            return None
        return KernelDecode("pq", nbits=self.nbits,
                            ip_tables=functools.partial(self.distance_tables, metric="ip"))

    # --- asymmetric distances -------------------------------------------------------------
    def distance_tables(self, xq, metric: str = "l2") -> jax.Array:
        """(nq, M, ksub) float32 look-up tables of the queries against every centroid:
        squared L2 distances of each query sub-vector ("l2") or inner products ("ip")."""
        self._require_trained("distance_tables")
        if metric not in ("l2", "ip"):
            raise InvalidInputError(f"ProductQuantizer tables support 'l2' and 'ip', got "
                                    f"{metric!r}")
        q_sub = _subvectors(input_vectors(xq, self.d, "xq"), self.M)
        dots = _subspace_dots(q_sub, self.centroids)
        if metric == "ip":
            return dots
        q_norms = jnp.sum(q_sub * q_sub, axis=-1)[..., None]
        c_norms = jnp.sum(self.centroids * self.centroids, axis=-1)[None]
        return jnp.maximum(q_norms + c_norms - 2.0 * dots, 0.0)

    def adc(self, tables: jax.Array, codes) -> jax.Array:
        """(nq, n) float32: each query's summed table entries for each code (ADC)."""
        return adc_lookup(tables, unpack_codes(jnp.asarray(codes), self.M, self.nbits))

"""Distributed k-means: `kmeans_sharded` on training vectors split by rows over a mesh
axis (sums and counts `psum`-reduced, the vectors never gathered), and the helpers that
lay training rows over an axis and sample them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jann._inputs import as_vectors, check_finite
from jann.errors import InvalidInputError
from jann.kmeans import KMeansResult, assign as kmeans_assign, check_training_points
from jann.kmeans import distinct_positions, iterate, update_centroids
from jann.ops import distances as dist_ops
from jann.ops.sorting import prefix_sum
from jann.sharding.mesh import all_local, check_mesh, smap


def rows_over_axis(x, mesh, axis):
    """x (n, d) as a (S * m, d) float32 array split by rows over `axis` (zero rows padded
    at the end), and n. A jax array already laid out that way is used as it is."""
    nshards = mesh.shape[axis]
    sharding = NamedSharding(mesh, P(axis))
    x = as_vectors(x, None, "training vectors")
    n = x.shape[0]
    pad = -n % nshards
    if isinstance(x, jax.Array) and not pad and x.dtype == jnp.float32 and \
            x.sharding.is_equivalent_to(sharding, 2):
        return x, n
    if isinstance(x, np.ndarray) and all_local(mesh):
        host = np.zeros((n + pad, x.shape[1]), np.float32)
        host[:n] = x
        return jax.device_put(host, sharding), n
    padded = jax.jit(lambda a: jnp.pad(a.astype(jnp.float32), ((0, pad), (0, 0))),
                     out_shardings=sharding)(x)
    return padded, n


def sample_rows(rows, n: int, size: int, mesh, axis):
    """At most `size` evenly spaced rows among the first n of rows split over `axis`
    (to the host): each device picks its own, only the sample travels."""
    step = max(1, -(-n // size))
    per = rows.shape[0] // mesh.shape[axis]
    take = -(-per // step) + 1

    def pick(x_local):
        me = jax.lax.axis_index(axis)
        local = (-me * per) % step + step * jnp.arange(take)
        valid = (local < per) & (me * per + local < n)
        picked = x_local[jnp.minimum(local, per - 1)]
        return (jax.lax.all_gather(picked, axis, tiled=True),
                jax.lax.all_gather(valid, axis, tiled=True))

    picked, valid = jax.jit(smap(pick, mesh, (P(axis),), (P(), P())))(rows)
    return np.asarray(picked)[np.asarray(valid)]


def kmeans_sharded(x, k: int, mesh: Mesh, *, axis: str | None = None, key, niter: int = 25,
                   spherical: bool = False, max_points_per_centroid: int = 256,
                   min_points_per_centroid: int = 39, verbose: bool = False,
                   n_valid: int | None = None) -> KMeansResult:
    """k-means over training vectors split by rows over mesh axis `axis`: each device
    assigns its own rows; per-cluster sums and counts are `psum`-reduced, so the vectors
    are never gathered (only the k initial centroids are).

    The same algorithm and key schedule as `jann.kmeans` (random init among the points,
    FAISS's empty-cluster split): without subsampling it computes the same centroids up
    to float rounding of the sums. Above `max_points_per_centroid * k` points each device
    keeps an equal random share of its rows. `n_valid`: only the first n_valid rows of x
    are points (x padded to the device count). One restart (no nredo).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise InvalidInputError(f"k must be a positive int, got {k!r}")
    if key is None:
        raise InvalidInputError("kmeans_sharded needs an explicit key=jax.random.key(...)")
    if niter < 0:
        raise InvalidInputError(f"need niter >= 0, got {niter}")
    axis = check_mesh(mesh, axis)
    x, n = rows_over_axis(x, mesh, axis)
    n = n if n_valid is None else n_valid
    check_finite(x, "training vectors")
    check_training_points(n, k, "k-means", min_points_per_centroid)
    nshards, rows = mesh.shape[axis], x.shape[0] // mesh.shape[axis]
    valid_per_shard = np.clip(n - np.arange(nshards) * rows, 0, rows)
    keep = min(rows, -(-k * max_points_per_centroid // nshards))
    key_sample, key = jax.random.split(key)
    subsample = n > k * max_points_per_centroid
    points = int(np.minimum(valid_per_shard, keep).sum()) if subsample else n
    key, key_init, key_iter = jax.random.split(key, 3)
    wanted = distinct_positions(key_init, points, k)  # as jann.kmeans draws them
    row_spec = P(axis)

    def prepare(x_local, wanted):
        me = jax.lax.axis_index(axis)
        valid = me * rows + jnp.arange(rows) < n
        if subsample:  # an equal random share of every device's rows
            score = jax.random.uniform(jax.random.fold_in(key_sample, me), (rows,))
            pick = jnp.sort(jnp.argsort(jnp.where(valid, score, 2.0))[:keep])
            x_local, valid = x_local[pick], valid[pick]
        if spherical:
            x_local = dist_ops.normalize_L2(x_local)
        # The k initial centroids: the points ranked `wanted` among all valid points.
        before = jnp.sum(jnp.where(jnp.arange(nshards) < me,
                                   jax.lax.all_gather(jnp.sum(valid), axis), 0))
        rank = before + prefix_sum(valid) - 1
        hit = valid[None, :] & (rank[None, :] == wanted[:, None])          # (k, rows)
        init = jax.lax.psum(jnp.dot(hit.astype(jnp.float32), x_local,
                                    precision=jax.lax.Precision.HIGHEST), axis)
        return x_local, valid, init

    x, valid, centroids = jax.jit(smap(prepare, mesh, (row_spec, P()),
                                        (row_spec, row_spec, P())))(x, wanted)

    def lloyd(x_local, valid, centroids, key):
        dist, labels = kmeans_assign(x_local, centroids, spherical)
        labels = jnp.where(valid, labels, k)  # padding rows fall out of every cluster
        sums = jax.lax.psum(jax.ops.segment_sum(x_local, labels, num_segments=k), axis)
        counts = jax.lax.psum(jax.ops.segment_sum(jnp.ones_like(labels), labels,
                                                  num_segments=k), axis)
        objective = jax.lax.psum(jnp.sum(jnp.where(valid, dist, 0.0)), axis)
        new = update_centroids(centroids, sums, counts, key, spherical)
        return new, objective, jnp.sum(counts == 0)

    step = jax.jit(smap(lloyd, mesh, (row_spec, row_spec, P(), P()), (P(), P(), P())))
    centroids, history = iterate(lambda c, sub: step(x, valid, c, sub), centroids, key_iter,
                                 niter, verbose and "sharded k-means")
    return KMeansResult(centroids, history)

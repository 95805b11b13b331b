"""The `GraphIndex` pytree: its fields, construction, input hooks, the distance keys
the build and the search share, and removal / reconstruction. Building and searching
come from the mixins in `jann.graph.building` and `jann.graph.searching`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jann import _storage
from jann._inputs import as_binary_codes, as_vectors, check_code_bits
from jann._pytree import pytree_dataclass, static
from jann.errors import InvalidInputError
from jann.graph.building import GraphBuilding
from jann.graph.searching import GraphSearching
from jann.graph.settings import ENTRY_POINTS
from jann.index import Index
from jann.ops import distances as dist_ops
from jann.ops import hamming
from jann.quantizers.identity import IdentityCodec
from jann.quantizers.layout import encoded_row

__all__ = ["GraphIndex"]


@pytree_dataclass
class GraphIndex(GraphBuilding, GraphSearching, _storage.StatusWord, Index):
    """Fixed-degree graph index. Array fields are leaves; configuration is static.

    codec:     how rows are stored (IdentityCodec, ScalarQuantizer, ProductQuantizer);
               None for binary codes.
    payload:   (capacity, *code_shape) stored codes.  norms: (capacity,) squared norms of
               the decoded rows (l2).
    neighbors: (capacity, graph_degree) int32 out-edges (rows), -1 = empty slot.
    edge_keys: (capacity, graph_degree) float32 distance key of each edge (squared l2,
               -inner product, or Hamming), +inf for empty slots.
    ids:       (capacity,) ids.  deleted: (capacity,) tombstones.
    entries:   (ENTRY_POINTS,) int32 fixed entry rows (-1 = none).
    count:     () int32 rows used (tombstoned ones included, until `compact`).
    n_added:   () int32 rows ever added: the next sequential id.
    status:    () int32 refused-write bits.  rng: (2,) uint32 key data for sampling.
    """

    # Padded query rows (`n_queries` given) are not searched.
    skips_padded_queries = True

    codec: object
    payload: jax.Array
    norms: jax.Array
    neighbors: jax.Array
    edge_keys: jax.Array
    ids: jax.Array
    deleted: jax.Array
    entries: jax.Array
    count: jax.Array
    n_added: jax.Array
    status: jax.Array
    rng: jax.Array
    metric: str = static("l2", choices=dist_ops.METRICS)
    id_mode: str = static("sequential", choices=_storage.ID_MODES)
    graph_degree: int = static(64)
    intermediate_degree: int = static(128)
    binary: bool = static(False)
    description: str = static("CAGRA64,128")

    # --- construction ---------------------------------------------------------------
    @classmethod
    def create(cls, d: int, graph_degree: int = 64, intermediate_degree: int | None = None,
               codec=None, *, metric: str = "l2", id_mode: str = "sequential",
               binary: bool = False, description: str | None = None, key=None):
        """An empty graph index over d-dimensional vectors (d bits when binary).

        codec: None = float32 vectors (IdentityCodec); any jann codec otherwise.
        key: `jax.random` key for the random entry points (default key 0)."""
        graph_degree = int(graph_degree)
        intermediate_degree = 2 * graph_degree if intermediate_degree is None else \
            int(intermediate_degree)
        if graph_degree < 1:
            raise InvalidInputError(f"graph_degree must be >= 1, got {graph_degree}")
        if intermediate_degree < graph_degree:
            raise InvalidInputError(
                f"intermediate_degree ({intermediate_degree}) must be >= graph_degree "
                f"({graph_degree})")
        if binary:
            d = check_code_bits(d)
            codec, code = None, jax.ShapeDtypeStruct((0, d // 8), jnp.uint8)
            metric = "hamming"
        else:
            if codec is None:
                codec = IdentityCodec.create(d)
            code = encoded_row(codec, d)
        key = jax.random.key(0) if key is None else key
        return cls(
            codec=codec, payload=jnp.zeros((0,) + code.shape[1:], code.dtype),
            norms=jnp.zeros((0,), jnp.float32),
            neighbors=jnp.zeros((0, graph_degree), jnp.int32),
            edge_keys=jnp.zeros((0, graph_degree), jnp.float32),
            ids=_storage.empty_ids(0), deleted=jnp.zeros((0,), bool),
            entries=jnp.full((ENTRY_POINTS,), -1, jnp.int32),
            count=jnp.zeros((), jnp.int32), n_added=jnp.zeros((), jnp.int32),
            status=jnp.zeros((), jnp.int32), rng=jax.random.key_data(key),
            metric=metric, id_mode=id_mode, graph_degree=graph_degree,
            intermediate_degree=intermediate_degree, binary=binary,
            description=description or f"CAGRA{graph_degree},{intermediate_degree}")

    @property
    def d(self) -> int:
        return 8 * self.payload.shape[1] if self.binary else self.codec.d

    @property
    def capacity(self) -> int:
        return self.payload.shape[0]

    @property
    def is_trained(self) -> bool:
        return self.binary or bool(self.codec.is_trained)

    def describe(self) -> str:
        return _storage.id_mode_prefix(self.id_mode) + self.description

    def grown(self, capacity: int) -> GraphIndex:
        pad = _storage.pad_rows
        return dataclasses.replace(
            self, payload=pad(self.payload, capacity), norms=pad(self.norms, capacity),
            neighbors=pad(self.neighbors, capacity, -1),
            edge_keys=pad(self.edge_keys, capacity, np.inf), ids=pad(self.ids, capacity, -1),
            deleted=pad(self.deleted, capacity, False))

    def train(self, x, *, key=None, **kwargs):
        """Train the codec (SQ / PQ); the graph itself needs no training."""
        key = jax.random.key(0) if key is None else key
        key_codec, key_graph = jax.random.split(key)
        if self.binary:
            return dataclasses.replace(self, rng=jax.random.key_data(key_graph))
        codec = self.codec.train(self.prepare(jnp.asarray(x, jnp.float32)), key=key_codec,
                                 **kwargs)
        return dataclasses.replace(self, codec=codec, rng=jax.random.key_data(key_graph))

    # --- input hooks used by jann.api -------------------------------------------------
    @property
    def takes_float_vectors(self) -> bool:
        return not self.binary

    def as_input(self, x, name: str):
        """Binary indexes take packed uint8 codes (n, d / 8); float ones any real array."""
        if not self.binary:
            return as_vectors(x, self.d, name)
        return as_binary_codes(x, self.d, name)

    def check_add(self, n: int):
        """The first add builds the graph: it needs more rows than the degree."""
        if _storage.host_int(self.count) == 0 and n <= self.graph_degree:
            raise InvalidInputError(
                f"cannot build a graph of degree {self.graph_degree} from {n} vectors: the "
                f"first add needs at least graph_degree + 1 = {self.graph_degree + 1} "
                "(lower the degree, or add more vectors at once)")

    def next_id(self):
        return self.n_added

    def ntotal_live(self):
        return jnp.sum(self.live() & ~self.deleted, dtype=jnp.int32)

    # --- helpers --------------------------------------------------------------------
    def live(self):
        return _storage.live_mask(self.capacity, self.count)

    def prepare(self, x):
        if self.binary:
            return x.astype(jnp.uint8)
        return dist_ops.normalize_L2(x) if self.metric == "cosine" else x.astype(jnp.float32)

    # --- distance keys (shared by the build and the search) ---------------------------
    @property
    def _scan_metric(self) -> str:
        return "l2" if self.metric == "l2" else "ip"

    def _query_form(self, q):
        """Prepared queries as the distance routines take them (words for binary)."""
        return hamming.as_words(q) if self.binary else q

    def _rows_form(self, rows):
        """Stored rows (any shape of row numbers) as vectors / words, for distances."""
        safe = jnp.clip(rows, 0, max(self.capacity - 1, 0))
        codes = self.payload[safe]
        if self.binary:
            flat = codes.reshape(-1, codes.shape[-1])
            return hamming.as_words(flat).reshape(*rows.shape, -1)
        flat = codes.reshape((-1,) + self.payload.shape[1:])
        return self.codec.decode(flat).reshape(*rows.shape, -1)

    def _keys_to(self, qf, rows):
        """Distance keys (smaller = nearer) of queries qf (nq, .) to rows (nq, C): full
        squared l2, -inner product, or Hamming; +inf where rows < 0."""
        x = self._rows_form(rows)
        if self.binary:
            return self._keys(rows, hamming=jnp.sum(jax.lax.population_count(
                jnp.bitwise_xor(qf[:, None, :], x)).astype(jnp.int32), -1))
        return self._keys(rows, qf, jnp.einsum("qd,qcd->qc", qf, x,
                                               preferred_element_type=jnp.float32))

    def _keys_to_shared(self, qf, rows, x):
        """`_keys_to` for S rows shared by all queries (x: their vectors / words): a
        matrix product rather than a per-query gather. Keys (nq, S)."""
        if self.binary:
            return self._keys(rows[None, :], hamming=jnp.sum(jax.lax.population_count(
                jnp.bitwise_xor(qf[:, None, :], x[None])).astype(jnp.int32), -1))
        return self._keys(rows[None, :], qf,
                          jnp.matmul(qf, x.T, preferred_element_type=jnp.float32))

    def _keys(self, rows, qf=None, dots=None, hamming=None):
        """Keys from query-row dot products (or Hamming distances); +inf for NaN and for
        rows < 0. rows broadcasts against the (nq, C) dots."""
        if hamming is not None:
            keys = hamming.astype(jnp.float32)
        elif self.metric == "l2":
            safe = jnp.clip(rows, 0, max(self.capacity - 1, 0))
            keys = self.norms[safe] - 2.0 * dots + jnp.sum(qf * qf, -1, keepdims=True)
            keys = jnp.maximum(keys, 0.0)
        else:
            keys = -dots
        keys = jnp.where(jnp.isnan(keys), jnp.inf, keys)
        return jnp.where(rows >= 0, keys, jnp.inf)

    # --- remove / reconstruct ---------------------------------------------------------
    def remove_core(self, selector):
        removed = self.live() & ~self.deleted & selector(self.ids)
        return (dataclasses.replace(self, deleted=self.deleted | removed),
                jnp.sum(removed, dtype=jnp.int32))

    def reconstruct_core(self, ids):
        rows, found = _storage.lookup_ids(self.ids, self.live() & ~self.deleted,
                                          ids.astype(self.ids.dtype))
        rows = jnp.clip(rows, 0, max(self.capacity - 1, 0))
        if self.binary:
            return jnp.where(found[:, None], self.payload[rows], 0).astype(jnp.uint8), found
        out = self.codec.decode(self.payload[rows])
        return jnp.where(found[:, None], out, jnp.nan), found

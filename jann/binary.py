"""Binary indexes over packed bit codes, searched by Hamming distance (FAISS
`IndexBinaryFlat`, `IndexBinaryIVF`, `IndexBinaryHash`; the binary graph "BHNSW<M>" is
`jann.graph.GraphIndex` with binary storage).

Inputs are uint8 arrays (n, d / 8), bits packed as `jann.pack_bits` does (FAISS's order);
`d` is in bits and must be a multiple of 8. Anything else raises. Distances come back as
float32 Hamming distances (whole numbers, equal to a numpy popcount of the xor); ties are
ordered by id, as IndexBinaryFlat. From float vectors in one factory string:
"LSH<nbits>[r][t],<binary index>" (random-hyperplane / thresholded bits) or
"ITQ<nbits>,<binary index>" (PCA + ITQ rotation, then the sign bit).

BinaryIVF ("BIVF<nlist>"): k-means on the unpacked bits (float), centroids thresholded at
1/2 (as FAISS trains its binary quantizer); rows stored in CSR order by list, like
`jann.ivf`. Search probes the `nprobe` nearest centroids and scans those lists
query-major in chunks of `SCAN_CHUNK` rows; the loop runs for the longest probed list,
so skewed lists cost the batch the time of the longest one.
BinaryHash ("BHash<b>"): the "list" of a code is its first b bits (2**b buckets, exact
match); a search probes every bucket within Hamming distance `nflip` of the query's
prefix (search parameter, default 1), and `nflip = b` scans everything (exact).
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jann import _storage
from jann._inputs import as_binary_codes, check_code_bits
from jann._pytree import pytree_dataclass, static
from jann.errors import InvalidInputError
from jann.index import Index
from jann.lsh import BinaryCodeStore
from jann.ops import hamming
from jann.ops.sorting import list_offsets

__all__ = ["BinaryFlat", "BinaryIVF"]

SCAN_CHUNK = 256
MAX_HASH_PROBES = 4096


def _order_by_key_then_id(keys, ids, k):
    """Rows sorted by (key, id) and cut to k: FAISS's tie order for binary results."""
    by_id = jnp.argsort(jnp.where(ids < 0, jnp.iinfo(ids.dtype).max, ids), axis=1, stable=True)
    keys, ids = (jnp.take_along_axis(a, by_id, 1) for a in (keys, ids))
    by_key = jnp.argsort(keys, axis=1, stable=True)[:, :k]
    return jnp.take_along_axis(keys, by_key, 1), jnp.take_along_axis(ids, by_key, 1)


@pytree_dataclass
class BinaryFlat(BinaryCodeStore):
    """Exact Hamming search over packed codes (FAISS `IndexBinaryFlat`, "BFlat")."""

    @property
    def d(self) -> int:
        return 8 * self.vectors.shape[1]

    def describe(self) -> str:
        return super().describe() + "BFlat"

    takes_float_vectors = False

    def as_input(self, x, name):
        return as_binary_codes(x, self.d, name)

    def prepare(self, codes):
        return codes.astype(jnp.uint8)

    def add_core(self, x, n_valid, ids, valid_rows):
        return super().add_core(x.astype(jnp.uint8), n_valid, ids, valid_rows)

    def search_core(self, codes, k: int, selector=None, backend: str = "auto"):
        d, i = super().search_core(codes.astype(jnp.uint8), k, selector, backend)
        return _order_by_key_then_id(d, i, k)

    def reconstruct_core(self, ids):
        out, found = self.stored_rows(ids)
        return jnp.where(found[:, None], out, 0).astype(jnp.uint8), found


@pytree_dataclass
class BinaryIVF(_storage.ListedRows, Index):
    """Inverted lists of binary codes ("BIVF<nlist>"), or prefix buckets ("BHash<b>").

    centroids: (nlist, nbytes) uint8 (IVF; empty for the hash index).
    payload:   (capacity, nbytes) codes sorted by list.  ids: (capacity,).
    offsets:   (nlist + 1,) list boundaries.  count / status: as every index.
    n_added:   rows ever added: the next sequential id (as IVFIndex).
    hash_bits: 0 for IVF, b for BHash (nlist = 2**b, the list is the b-bit prefix).
    """

    centroids: jax.Array
    payload: jax.Array
    ids: jax.Array
    offsets: jax.Array
    count: jax.Array
    status: jax.Array
    n_added: jax.Array
    id_mode: str = static("sequential", choices=_storage.ID_MODES)
    hash_bits: int = static(0)
    is_trained: bool = static(False)
    description: str = static("BIVF")

    metric = "hamming"

    @classmethod
    def create(cls, d: int, nlist: int = 0, *, hash_bits: int = 0,
               id_mode: str = "sequential") -> BinaryIVF:
        d = check_code_bits(d)
        if hash_bits:
            if not 1 <= hash_bits <= min(d, 24):
                raise InvalidInputError(f"BHash needs 1 <= b <= min(d, 24) prefix bits, got "
                                        f"{hash_bits}")
            nlist, desc = 1 << hash_bits, f"BHash{hash_bits}"
        else:
            if nlist < 1:
                raise InvalidInputError(f"nlist must be >= 1, got {nlist}")
            desc = f"BIVF{nlist}"
        return cls(centroids=jnp.zeros((0 if hash_bits else nlist, d // 8), jnp.uint8),
                   payload=jnp.zeros((0, d // 8), jnp.uint8), ids=_storage.empty_ids(0),
                   offsets=jnp.zeros((nlist + 1,), jnp.int32),
                   count=jnp.zeros((), jnp.int32), status=jnp.zeros((), jnp.int32),
                   n_added=jnp.zeros((), _storage.empty_ids(0).dtype),
                   id_mode=id_mode, hash_bits=hash_bits, is_trained=bool(hash_bits),
                   description=desc)

    @property
    def d(self) -> int:
        return 8 * self.payload.shape[1]

    takes_float_vectors = False

    def as_input(self, x, name):
        return as_binary_codes(x, self.d, name)

    def grown(self, capacity: int) -> BinaryIVF:
        return dataclasses.replace(self, payload=_storage.pad_rows(self.payload, capacity),
                                   ids=_storage.pad_rows(self.ids, capacity, -1))

    def live(self):
        return _storage.live_mask(self.capacity, self.count)

    # --- training / assignment ------------------------------------------------------
    def train(self, x, *, key=None, niter: int = 10, **kwargs):
        """k-means on the unpacked bits; centroids = majority bit of each cluster."""
        if self.hash_bits:
            return self
        from jann.kmeans import kmeans
        key = jax.random.key(0) if key is None else key
        bits = hamming.unpack_bits(jnp.asarray(x, jnp.uint8)).astype(jnp.float32)
        if bits.shape[0] < self.nlist:
            raise InvalidInputError(f"training BIVF{self.nlist} needs at least {self.nlist} "
                                    f"codes, got {bits.shape[0]}")
        centroids = kmeans(bits, self.nlist, key=key, niter=niter, **kwargs).centroids
        return dataclasses.replace(self, centroids=hamming.pack_bits(centroids > 0.5),
                                   is_trained=True)

    def _prefix(self, codes):
        bits = hamming.unpack_bits(codes, self.hash_bits).astype(jnp.int32)
        return jnp.sum(bits << jnp.arange(self.hash_bits, dtype=jnp.int32), axis=1)

    def _flips(self, nflip: int) -> np.ndarray:
        masks = [0]
        for r in range(1, nflip + 1):
            masks += [sum(1 << b for b in c) for c in
                      itertools.combinations(range(self.hash_bits), r)]
        return np.asarray(masks, np.int32)

    def probe(self, codes, nprobe: int):
        """(n, P) lists to scan for each code."""
        if self.hash_bits:
            return self._prefix(codes)[:, None] ^ jnp.asarray(self._flips(nprobe))[None, :]
        _, lists = hamming.knn_hamming_scan(codes, self.centroids, nprobe)
        return lists

    # --- cores --------------------------------------------------------------------
    def row_lists(self):
        rows = jnp.arange(self.capacity, dtype=jnp.int32)
        return (jnp.searchsorted(self.offsets, rows, side="right") - 1).astype(jnp.int32)

    def add_core(self, x, n_valid, ids, valid_rows):
        codes = x.astype(jnp.uint8)
        n = codes.shape[0]
        if ids is None:
            ids = self.n_added + jnp.arange(n, dtype=self.ids.dtype)
        status = _storage.append_status(self, n_valid, ids, valid_rows)
        lists = self.probe(codes, 1 if not self.hash_bits else 0)[:, 0]
        new_lists = jnp.where((status == 0) & (jnp.arange(n) < n_valid), lists, self.nlist)
        keys = jnp.concatenate([self.row_lists(), new_lists.astype(jnp.int32)])
        order = jnp.argsort(keys, stable=True)[: self.capacity]
        counts = jnp.bincount(keys, length=self.nlist + 1)[: self.nlist]
        offsets = list_offsets(counts)
        return dataclasses.replace(
            self, payload=jnp.concatenate([self.payload, codes])[order],
            ids=jnp.concatenate([self.ids, ids.astype(self.ids.dtype)])[order],
            offsets=offsets, count=offsets[-1], status=self.status | status,
            n_added=_storage.advanced(self.n_added, n_valid, status))

    def remove_core(self, selector):
        live = self.live()
        removed = live & selector(self.ids)
        keep = live & ~removed
        lists = self.row_lists()
        (payload, ids), count = _storage.compact_rows((self.payload, self.ids), keep)
        counts = jnp.bincount(jnp.where(keep, lists, self.nlist), length=self.nlist + 1)
        offsets = list_offsets(counts[: self.nlist])
        return (dataclasses.replace(self, payload=payload, ids=ids, offsets=offsets,
                                    count=count), jnp.sum(removed, dtype=jnp.int32))

    def reconstruct_core(self, ids):
        rows, found = _storage.lookup_ids(self.ids, self.live(), ids.astype(self.ids.dtype))
        out = self.payload[jnp.clip(rows, 0, max(self.capacity - 1, 0))]
        return jnp.where(found[:, None], out, 0).astype(jnp.uint8), found

    def check_search_params(self, nprobe=None, nflip=None):
        if self.hash_bits:
            if nprobe is not None:
                raise InvalidInputError("BHash takes nflip (bits flipped in the prefix), "
                                        "not nprobe")
            nflip = 1 if nflip is None else nflip
            if isinstance(nflip, bool) or not isinstance(nflip, (int, np.integer)) or \
                    not 0 <= nflip <= self.hash_bits:
                raise InvalidInputError(f"nflip must be an int in [0, {self.hash_bits}], "
                                        f"got {nflip!r}")
            if len(self._flips(int(nflip))) > MAX_HASH_PROBES:
                raise InvalidInputError(f"nflip={nflip} probes more than {MAX_HASH_PROBES} "
                                        "buckets; use fewer prefix bits or a smaller nflip")
            return {"nprobe": int(nflip)}
        if nflip is not None:
            raise InvalidInputError("BIVF takes nprobe, not nflip")
        nprobe = 1 if nprobe is None else nprobe
        if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or \
                not 1 <= nprobe <= self.nlist:
            raise InvalidInputError(f"nprobe must be an int in [1, nlist={self.nlist}], "
                                    f"got {nprobe!r}")
        return {"nprobe": int(nprobe)}

    def search_core(self, codes, k: int, selector=None, nprobe: int = 1,
                    backend: str = "auto"):
        """backend: the list scan below is XLA whatever it says (no binary IVF kernel)."""
        codes = codes.astype(jnp.uint8)
        nq = codes.shape[0]
        lists = self.probe(codes, nprobe)
        q = hamming.as_words(codes)
        n_probe = lists.shape[1]
        starts = self.offsets[lists]
        ends = self.offsets[lists + 1]
        longest = jnp.max(ends - starts) if self.capacity else jnp.int32(0)
        n_chunks = (longest + SCAN_CHUNK - 1) // SCAN_CHUNK
        allowed = self.live() if selector is None else self.live() & selector(self.ids)

        def body(step, best):
            p, c = step // jnp.maximum(n_chunks, 1), step % jnp.maximum(n_chunks, 1)
            rows = starts[:, p][:, None] + c * SCAN_CHUNK + jnp.arange(SCAN_CHUNK)
            ok = rows < ends[:, p][:, None]
            safe = jnp.clip(rows, 0, self.capacity - 1)
            ok &= allowed[safe]
            words = hamming.as_words(self.payload[safe].reshape(-1, self.payload.shape[1]))
            words = words.reshape(nq, SCAN_CHUNK, -1)
            dist = jnp.sum(jax.lax.population_count(
                jnp.bitwise_xor(q[:, None, :], words)).astype(jnp.int32), -1)
            keys = jnp.where(ok, dist.astype(jnp.float32), jnp.inf)
            ids = jnp.where(ok, self.ids[safe], -1)
            # (key, id) order in every merge, so a tie at the k-th place keeps the lower id
            return _order_by_key_then_id(jnp.concatenate([best[0], keys], 1),
                                         jnp.concatenate([best[1], ids], 1), k)

        best = (jnp.full((nq, k), jnp.inf, jnp.float32), jnp.full((nq, k), -1, self.ids.dtype))
        if self.capacity:
            best = jax.lax.fori_loop(0, n_probe * n_chunks, body, best)
        keys, ids = best
        ids = jnp.where(jnp.isinf(keys), -1, ids)
        return _order_by_key_then_id(keys, ids, k)

    def range_core(self, xq, radius, capacity, selector=None, **params):
        raise InvalidInputError(f"range_search is not supported by {self.describe()}")

"""Sharding and replication over devices and hosts (FAISS `IndexShards`, `IndexReplicas`,
`index_cpu_to_all_gpus`), on JAX's own runtime: `jax.sharding` on one host and
`jax.distributed` across hosts, the same code.

    mesh = jax.make_mesh((8,), ("x",))
    sharded = jann.shard(index, mesh, axis="x")      # database split over the 8 devices
    D, I = jann.search(sharded, xq, k=10)            # = jann.search(index, xq, 10)
    replicas = jann.replicate(index, mesh)           # copies; queries split over devices

Layout. A `ShardedIndex` is a pytree wrapping either
- (shard mode) a *stack* of per-shard indexes, every leaf with a leading shard axis (the
  layout `jann.stack` builds), placed with `NamedSharding(mesh, P(axis))`: device s holds
  shard s, an ordinary FlatIndex / IVFIndex over a subset of the vectors. IVF shards all
  hold the same coarse quantizer and codec (one copy per device), so a query probes the
  same lists on every shard and the union of the shards' candidates is the unsharded
  index's. Vectors are dealt round-robin in (list, id) order, so every inverted list is
  spread evenly over the devices; later adds go to the least-filled shards. A graph
  index is split into one sub-graph per device, built over every S-th vector in id
  order (edges name rows, so rows cannot move between shards without a rebuild); a
  search runs every sub-graph's beam search and merges, later adds extend the
  least-filled sub-graphs.
- (replicate mode) the plain index, replicated (`P()`); queries are split over the axis.

Search runs under `shard_map`: each device takes the top-k of its shard, then one merge
(an all-gather of the k candidates of every device, and a top-k over the S * k of them,
ties broken by the smaller id, as the unsharded index orders sequential ids). Results are
the unsharded index's: Flat bit for bit; IVF (same quantizer, same probed lists) the same
ids, distances to float32 rounding (a shard's list scan runs on blocks of another shape);
graph: approximate, as the unsharded graph, but not its results (other graphs; each
sub-graph is searched with the same ef over 1/S of the rows). Inside your own
`shard_map`, use `search_shard` (per-device search + merge).

Ids. Shards store the user-visible ids: an index with sequential ids keeps them global
(0..ntotal-1, numbered in the order vectors were added, as unsharded); after `remove_ids`
Flat renumbers them and IVF and graph indexes keep them, as the unsharded indexes do.
Placement options: `dtype=` ("float16", "bfloat16": Flat storage) and `ids=` ("int32",
"int64"; int64 needs jax_enable_x64; an add whose ids do not fit int32 is refused, never
truncated).

Build. `jann.train` of a sharded IVF index runs the coarse k-means with `kmeans_sharded`:
sums and counts are reduced across devices with `psum`, so the training vectors stay
where they are (only the k initial centroids and a sample of at most `CODEC_SAMPLE` rows
for the codec are collected). `jann.add` gives each vector to one device: the add chunk
(at most 16384 rows, `jann.batching.ADD_BUCKETS`) is broadcast to the devices of the axis and
each stores only the rows it owns (an all-to-all would move less; a chunk is small).

Checkpoints. `jann.save` writes each device's shards from the process that holds them
(Orbax; no gather); `jann.load(path, mesh=...)` restores onto a mesh of any size. A
layout of S saved shards restored on M devices is redistributed in place: devices form
gcd(S, M) groups, each group reads its S / gcd saved shards (Orbax's sharded restore
reads only those) and deals their rows round-robin over its M / gcd devices. A device so
holds S / gcd saved shards for a moment: just its own share when M divides S (8 -> 4 ->
1), one saved shard when S divides M (1 -> 8: a shard that fitted one device of the
saving mesh), all S otherwise (8 -> 3). No layout is refused: any device count can hold
any checkpoint whose vectors fit. Graph sub-graphs are restored as saved onto the same
device count; onto another count they are rebuilt on the host from their rows (one
process), and without a mesh merged into one graph.
"""

from jann.sharding.checkpoint_layout import is_sharded, placement, restore_layout
from jann.sharding.devices import device_bytes, replicate, shard, to_devices, unshard
from jann.sharding.index import CODEC_SAMPLE, ShardedIndex
from jann.sharding.kmeans import kmeans_sharded
from jann.sharding.layout import merge_stack
from jann.sharding.merge import merge_results, search_shard

__all__ = ["ShardedIndex", "shard", "replicate", "to_devices", "unshard", "kmeans_sharded",
           "search_shard", "merge_results", "device_bytes", "CODEC_SAMPLE",
           # for jann.checkpoint (`sharding.placement(index)`, ...)
           "is_sharded", "placement", "restore_layout", "merge_stack"]

"""Tuning constants of the graph index (see the `jann.graph` docstring), with the
measurements behind them. The modules that use a constant import it by name, so a test
that lowers one patches the module that reads it (`jann.graph.building` for the build
bounds)."""

from __future__ import annotations

__all__ = ["CPU_QUERY_BLOCK", "DEFAULT_EF", "DEFAULT_WIDTH", "EF_VALUES", "ENTRIES",
           "ENTRY_POINTS", "ENTRY_SAMPLE", "EXACT_BUILD_MAX", "INITIAL_QUERY_BLOCK",
           "INSERT_BATCH", "LOCAL_LINK_SHARE", "MAX_QUERY_BLOCK", "PROJECTION_DIMS",
           "PROJECTION_MIN_D", "PROJECTION_MIN_ENERGY", "PROJECTION_MIN_QUERIES",
           "PROJECTION_POOL", "PRUNE_BYTES", "REPAIR_PERIOD", "REPAIR_ROUNDS",
           "RERANK_QUERY_BLOCK", "SEARCH_BLOCK_BYTES", "STREAM_EXACT_MAX", "pow2_floor"]

# Until the graph holds this many rows an add finds its candidates by exact k-NN over
# the stored rows (O(n) per added row); beyond, by searching the graph built so far, in
# batches of INSERT_BATCH rows. Measured, Fashion-MNIST 60000 x 784 HNSW16 on 2 cores:
# exact throughout 43.7 s, recall@10 0.951 at ef 16; a bound of 32768 rows 26.8 s, 0.946;
# 16384 rows 25.5 s, 0.943. The exact graph is kept up to this size for its recall (and
# since candidates come from a PCA projection, below, it builds in 23.1 s, still 0.951).
EXACT_BUILD_MAX = 1 << 17
INSERT_BATCH = 1 << 12
# Exact candidates of large adds (PROJECTION_MIN_QUERIES rows or more) of vectors of
# PROJECTION_MIN_D dimensions or more come from a pool of PROJECTION_POOL * k rows
# nearest in the top PROJECTION_DIMS principal directions, when those hold
# PROJECTION_MIN_ENERGY of the variance (`_nearest_stored`).
PROJECTION_DIMS = 128
PROJECTION_MIN_D = 4 * PROJECTION_DIMS
PROJECTION_MIN_QUERIES = 8192
PROJECTION_POOL = 2
PROJECTION_MIN_ENERGY = 0.9
RERANK_QUERY_BLOCK = 256
ENTRY_POINTS = 16
REPAIR_ROUNDS = 8
# An add whose new edges reach at most this share of the graph's rows (batch x degree
# <= share x capacity: streaming adds) rewrites only the lists those edges touch and
# gives each new row an in-edge; the breadth-first repair of the whole graph runs once
# per REPAIR_PERIOD rows added so (`jann.graph.edges.local_reverse_edges`). Between
# repairs an old row whose last in-edge a proposal replaced is unreachable. sift-textures
# HNSW32, 1-row jitted adds: 64 ms at 10k rows with the whole-graph steps, 2.1 ms so
# (4.5 ms at 50k); repairing after every add that stranded a row (found by counting
# in-edges) cost 30-35 ms per add at 50k rows, since most did.
LOCAL_LINK_SHARE = 0.5
# Such streaming adds find their candidates by searching the graph once it holds this
# many rows (exact candidates read every stored vector: a 1-row add to a 50k x 784 graph
# took 53 ms so).
STREAM_EXACT_MAX = 1 << 14
REPAIR_PERIOD = 256
# Rows pruned per step: a (block, K, K) distance table plus the (block, K, d) vectors.
PRUNE_BYTES = 64 << 20
# Search query block: the visited bitsets and the gathered neighbour vectors of one
# iteration stay under this many bytes.
SEARCH_BLOCK_BYTES = 96 << 20
MAX_QUERY_BLOCK = 1024
# On CPU a block of 32 queries keeps an iteration's gathered rows in cache (Fashion-MNIST
# HNSW16, 2 cores: 6.9k QPS at 32 vs 3.6k at 1024); XLA runs such small loops on one core.
CPU_QUERY_BLOCK = 32
# Queries whose starting beams are computed at once (a (block, ENTRY_SAMPLE) matrix).
INITIAL_QUERY_BLOCK = 1024
# Rows sampled as starting points for entry="nearest", the stand-in for HNSW's upper
# layers: one matrix product finds each query's nearest ones.
ENTRY_SAMPLE = 512
DEFAULT_EF = 64
# Beam widths autotuning tries (hnswlib's ef, FAISS's efSearch), ascending.
EF_VALUES = (16, 32, 64, 128, 256, 512)
DEFAULT_WIDTH = 2
ENTRIES = ("nearest", "random", "fixed")


def pow2_floor(x: int) -> int:
    """The largest power of two <= x (at least 1): block sizes from the budgets above."""
    return 1 << max(0, int(x).bit_length() - 1)

"""Inverted-file indexes: IVF-Flat, IVF-PQ, IVF-SQ, IVF-RQ, and the flat-coded indexes.

index.py       `IVFIndex`: storage (CSR lists), training, the pure cores, probing
list_major.py  the list-major scan (large batches, range search)
gathered.py    the gathered, query-major scan (few queries per probed list)
one_list.py    the tiled brute force of a flat-coded index (one list, batches)
"""

from jann.ivf.index import IVFIndex, nprobe_values

__all__ = ["IVFIndex", "nprobe_values"]

"""jann: JAX-native vector search.

Indexes are immutable pytrees; `train`, `add`, `remove_ids`, `search`, `range_search`
are pure functions that work inside your own `jax.jit` code.

    import jann
    index = jann.index_factory(d, "Flat")
    index = jann.add(index, xb)
    D, I = jann.search(index, xq, k=10)
"""



def _map_ops_of_the_source_tree() -> None:
    """A checkout keeps `jann.ops` in ops/ beside jann/ (pyproject's package-dir; the
    wheel installs it as jann/ops). When this `jann` is a checkout's (python run from the
    repository root) and nothing maps `jann.ops` (no editable install), map it here, so
    the source tree imports as the wheel does."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    ops_dir = root / "ops"
    if "jann.ops" in sys.modules or not (ops_dir / "__init__.py").is_file():
        return
    try:
        if 'name = "jann"' not in (root / "pyproject.toml").read_text():
            return
    except OSError:
        return
    if importlib.util.find_spec("jann.ops") is not None:
        return
    spec = importlib.util.spec_from_file_location(
        "jann.ops", ops_dir / "__init__.py", submodule_search_locations=[str(ops_dir)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["jann.ops"] = module
    spec.loader.exec_module(module)


_map_ops_of_the_source_tree()

from jann.ops.namespace import lazy_namespace  # noqa: E402


# What `import jann` offers, imported on first use (`jann.ops.namespace`): `import jann`
# itself imports no jax.
_SUBMODULES = ("config", "ops", "quantizers", "transforms", "graph", "sharding")
_PUBLIC = {
    "jann._pytree": ("pytree_dataclass", "static"),
    "jann.index": ("Index",),
    "jann.facade": ("IndexHandle", "read_index", "write_index"),
    "jann.api": ("add", "add_preassigned", "check", "clear_status", "ntotal", "reconstruct",
                 "reconstruct_n", "remove_ids", "reserve", "search", "shrink_to_fit", "stack",
                 "train"),
    "jann.emptying": ("reset",),
    "jann.ranges": ("RangeResult", "range_search", "range_search_padded"),
    "jann.inverted": ("merge_from", "search_preassigned"),
    "jann.compose": ("PreTransformIndex", "RefineIndex"),
    "jann.ivf": ("IVFIndex",),
    "jann.lsh": ("BinaryCodeStore", "LSHTransform"),
    "jann.graph": ("GraphIndex",),
    "jann.binary": ("BinaryFlat", "BinaryIVF"),
    "jann.ops.hamming": ("hamming_distances", "knn_hamming", "pack_bits", "unpack_bits"),
    "jann.quantizers": ("IdentityCodec", "OPQMatrix", "ProductQuantizer",
                        "ProductResidualQuantizer", "ResidualQuantizer", "ScalarQuantizer"),
    "jann.transforms": ("Chain", "ITQMatrix", "ITQTransform", "PCAMatrix",
                        "RandomRotationMatrix"),
    "jann.linear": ("LinearTransform",),
    "jann.kmeans": ("Kmeans", "kmeans"),
    "jann.autotune": ("AutotuneResult", "OperatingPoint", "autotune", "search_parameter_space"),
    "jann.checkpoint": ("deserialize", "load", "save", "serialize"),
    "jann.sharding": ("ShardedIndex", "replicate", "shard", "to_devices", "unshard"),
    "jann.errors": ("CapacityOverflowError", "CheckpointError", "DuplicateIdError",
                    "FactoryStringError", "FileFormatError", "IdNotFoundError",
                    "InvalidDtypeError", "InvalidInputError", "JannError", "NotTrainedError",
                    "UnknownMetricError", "UnsupportedBackendError"),
    "jann.factory": ("index_factory",),
    "jann.faiss_files": ("read_faiss", "write_faiss"),
    "jann.flat": ("FlatIndex",),
    "jann.ops": ("bucket_sort", "kmax", "kmin", "knn", "merge_knn_results", "normalize_L2",
                 "pairwise_distances"),
    "jann.selectors": ("IDSelector", "IDSelectorAll", "IDSelectorAnd", "IDSelectorArray",
                       "IDSelectorBatch", "IDSelectorBitmap", "IDSelectorNot", "IDSelectorOr",
                       "IDSelectorRange", "IDSelectorXOr"),
}
lazy_namespace(globals(), _PUBLIC, _SUBMODULES)

__version__ = "0.1.0"

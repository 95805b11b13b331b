"""Vector file I/O: TEXMEX ``.fvecs``/``.ivecs``/``.bvecs``, ann-benchmarks HDF5, ``.npy``.

A TEXMEX file is a flat run of records, each a little-endian int32 dimension ``d``
followed by ``d`` values (float32 / int32 / uint8); all records share the same ``d``.
An ann-benchmarks HDF5 file holds datasets ``train``, ``test`` and optionally
``neighbors``, ``distances``, with the metric name in the file attribute ``distance``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jann.errors import FileFormatError, InvalidInputError

__all__ = [
    "read_fvecs",
    "read_ivecs",
    "read_bvecs",
    "write_fvecs",
    "write_ivecs",
    "write_bvecs",
    "iter_chunks",
    "read_hdf5",
    "write_hdf5",
    "load_dataset",
]

PathLike = str | os.PathLike

_HEADER = np.dtype("<i4")
_FVECS = np.dtype("<f4")
_IVECS = np.dtype("<i4")
_BVECS = np.dtype("u1")

# Rows scanned per step when checking record headers: bounds the temporary memory
# for files far larger than RAM while keeping the check vectorised.
_HEADER_SCAN_ROWS = 1 << 22
# Rows per step when writing, so writing a memory-mapped array never needs a full copy.
_WRITE_ROWS = 1 << 16

_METRICS_FROM_HDF5 = {"euclidean": "l2", "angular": "cosine", "dot": "ip", "ip": "ip"}

_LAYOUTS = (
    "accepted dataset layouts:\n"
    "  - an ann-benchmarks .hdf5/.h5 file (datasets train, test[, neighbors, distances])\n"
    "  - a directory with base.npy and queries.npy [gt_ids.npy, gt_dist.npy]\n"
    "  - a directory with base.fvecs|*_base.fvecs and query.fvecs|*_query.fvecs "
    "[groundtruth.ivecs|*_groundtruth.ivecs] (.bvecs also accepted for base/query)\n"
    "  - a single .fvecs, .bvecs or .npy file (base vectors only)"
)


# --------------------------------------------------------------------------- TEXMEX read


def read_fvecs(path: PathLike, mmap: bool = True) -> np.ndarray:
    """Read a ``.fvecs`` file as an ``(n, d)`` float32 array (see :func:`_read_vecs`)."""
    return _read_vecs(path, _FVECS, mmap)


def read_ivecs(path: PathLike, mmap: bool = True) -> np.ndarray:
    """Read an ``.ivecs`` file (typically ground-truth ids) as an ``(n, d)`` int32 array."""
    return _read_vecs(path, _IVECS, mmap)


def read_bvecs(path: PathLike, mmap: bool = True) -> np.ndarray:
    """Read a ``.bvecs`` file (e.g. SIFT1B) as an ``(n, d)`` uint8 array."""
    return _read_vecs(path, _BVECS, mmap)


def _read_vecs(path: PathLike, dtype: np.dtype, mmap: bool) -> np.ndarray:
    """Shared reader for the three TEXMEX flavours.

    The data is exposed as a strided view that skips the per-record header, so with
    ``mmap=True`` nothing is read until rows are touched: a file larger than memory can
    be consumed chunk by chunk (see :func:`iter_chunks`). ``mmap=False`` pays for one
    contiguous copy so the result no longer depends on the file staying in place.
    """
    size = os.path.getsize(path)  # raises FileNotFoundError for a missing file
    if size < _HEADER.itemsize:
        raise FileFormatError(f"{path}: file is {size} bytes, too short for a record header")
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    d = int(raw[: _HEADER.itemsize].view(_HEADER)[0])
    if d <= 0:
        raise FileFormatError(f"{path}: first record has dimension {d}, expected > 0")
    record = _HEADER.itemsize + d * dtype.itemsize
    if size % record:
        raise FileFormatError(
            f"{path}: size {size} bytes is not a multiple of the record size {record} "
            f"(d={d}, {dtype.itemsize}-byte values); truncated or wrong format?"
        )
    n = size // record
    headers = np.ndarray((n,), dtype=_HEADER, buffer=raw, offset=0, strides=(record,))
    _check_headers(path, headers, d)
    view = np.ndarray(
        (n, d), dtype=dtype, buffer=raw, offset=_HEADER.itemsize, strides=(record, dtype.itemsize)
    )
    return view if mmap else np.array(view, dtype=dtype.newbyteorder("="), order="C")


def _check_headers(path: PathLike, headers: np.ndarray, d: int) -> None:
    """Fail on the first record whose dimension differs from the first record's.

    A mismatch almost always means the file is a different format (or a different
    value width) that happened to have a plausible size, so reading on would yield garbage.
    """
    for start in range(0, len(headers), _HEADER_SCAN_ROWS):
        bad = np.flatnonzero(headers[start : start + _HEADER_SCAN_ROWS] != d)
        if bad.size:
            row = start + int(bad[0])
            raise FileFormatError(
                f"{path}: record {row} has dimension {int(headers[row])}, "
                f"but record 0 has {d}; inconsistent headers"
            )


# -------------------------------------------------------------------------- TEXMEX write


def write_fvecs(path: PathLike, x: Any) -> None:
    """Write a 2-D real array as ``.fvecs``; values beyond float32 range are rejected."""
    _write_vecs(path, x, _FVECS)


def write_ivecs(path: PathLike, x: Any) -> None:
    """Write a 2-D integer array as ``.ivecs``; values must fit int32."""
    _write_vecs(path, x, _IVECS)


def write_bvecs(path: PathLike, x: Any) -> None:
    """Write a 2-D integer array as ``.bvecs``; values must be in 0..255."""
    _write_vecs(path, x, _BVECS)


def _write_vecs(path: PathLike, x: Any, dtype: np.dtype) -> None:
    """Shared writer: validate everything first so a bad array never leaves a partial file."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise InvalidInputError(f"expected a 2-D array (n, d), got shape {x.shape}")
    n, d = x.shape
    if n == 0 or d == 0:
        raise InvalidInputError(f"cannot write shape {x.shape}: the format needs n, d >= 1")
    _check_fits(x, dtype)
    record = np.dtype([("d", _HEADER), ("v", dtype, (d,))])  # packed, matches the file layout
    with open(path, "wb") as f:
        for chunk in iter_chunks(x, _WRITE_ROWS):
            out = np.empty(len(chunk), dtype=record)
            out["d"] = d
            out["v"] = chunk
            f.write(out.tobytes())


def _check_fits(x: np.ndarray, dtype: np.dtype) -> None:
    """Reject values the target dtype cannot hold instead of silently wrapping or clipping."""
    kind = x.dtype.kind
    if dtype.kind == "f":
        if kind not in "biuf":
            raise InvalidInputError(f"fvecs needs real numbers, got dtype {x.dtype}")
        if kind == "f" and x.dtype.itemsize > dtype.itemsize:
            finite = np.isfinite(x)
            big = np.max(np.abs(x), where=finite, initial=0.0)
            if big > np.finfo(dtype).max:
                raise InvalidInputError(f"value magnitude {big} overflows {dtype.name}")
        return
    if kind not in "biu":
        raise InvalidInputError(f"{dtype.name} output needs an integer array, got dtype {x.dtype}")
    info = np.iinfo(dtype)
    lo, hi = int(x.min()), int(x.max())
    if lo < info.min or hi > info.max:
        raise InvalidInputError(
            f"values span [{lo}, {hi}], outside the {dtype.name} range [{info.min}, {info.max}]"
        )


# ------------------------------------------------------------------------------ chunking


def iter_chunks(x: Any, chunk_size: int) -> Iterator[np.ndarray]:
    """Yield consecutive row blocks of ``x``.

    Lets a memory-mapped file be fed to an index (or written out) a block at a time:
    only the rows of the current block are paged in, never the whole file.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise InvalidInputError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size <= 0:
        raise InvalidInputError(f"chunk_size must be positive, got {chunk_size}")
    step = int(chunk_size)
    for i in range(0, len(x), step):
        yield np.asarray(x[i : i + step])


# ---------------------------------------------------------------------------------- HDF5


def _h5py():
    """Import h5py on demand so the rest of jann works without it installed."""
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading/writing HDF5 files requires h5py: pip install h5py") from e
    return h5py


def read_hdf5(path: PathLike) -> dict[str, Any]:
    """Read an ann-benchmarks HDF5 file into numpy arrays.

    Returns keys ``train``, ``test``, ``neighbors``, ``distances`` (the last two None
    when absent) and ``metric`` (the ``distance`` attribute as a str, or None).
    """
    h5py = _h5py()
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FileFormatError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        missing = [k for k in ("train", "test") if k not in f]
        if missing:
            raise FileFormatError(
                f"{path}: missing dataset(s) {missing}; an ann-benchmarks file needs train and test"
            )
        out: dict[str, Any] = {
            k: (f[k][()] if k in f else None) for k in ("train", "test", "neighbors", "distances")
        }
        metric = f.attrs.get("distance")
    if isinstance(metric, bytes):
        metric = metric.decode()
    out["metric"] = None if metric is None else str(metric)
    return out


def write_hdf5(
    path: PathLike,
    train: Any,
    test: Any,
    neighbors: Any = None,
    distances: Any = None,
    metric: str | None = "euclidean",
) -> None:
    """Write the ann-benchmarks layout, so files interoperate with that project's tools."""
    h5py = _h5py()
    arrays = {"train": train, "test": test, "neighbors": neighbors, "distances": distances}
    arrays = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    for k, v in arrays.items():
        if v.ndim != 2:
            raise InvalidInputError(f"{k} must be 2-D, got shape {v.shape}")
    d_train, d_test = arrays["train"].shape[1], arrays["test"].shape[1]
    if d_train != d_test:
        raise InvalidInputError(f"train and test dimensions differ: {d_train} vs {d_test}")
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
        if metric is not None:
            f.attrs["distance"] = metric


# ------------------------------------------------------------------------------ datasets


def load_dataset(path: PathLike, mmap: bool = True) -> dict[str, Any]:
    """Load a benchmark dataset from any of the supported layouts (see ``_LAYOUTS``).

    Always returns keys ``base``, ``queries``, ``gt_ids``, ``gt_dist``, ``metric``, with
    None for parts the layout does not provide, so callers need not branch on the source.
    ``.npy`` and TEXMEX files are memory-mapped when ``mmap`` is True (HDF5 is always
    read into memory); arrays keep their stored dtype, e.g. uint8 pixels stay uint8.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory\n{_LAYOUTS}")
    if p.is_dir():
        if (p / "base.npy").is_file() and (p / "queries.npy").is_file():
            return _load_npy_dir(p, mmap)
        if _find_vecs(p, "base") is not None:
            return _load_vecs_dir(p, mmap)
        raise FileFormatError(f"{p}: directory matches no known layout\n{_LAYOUTS}")
    suffix = p.suffix.lower()
    if suffix in (".hdf5", ".h5"):
        return _load_hdf5(p)
    if suffix in (".fvecs", ".bvecs", ".npy"):
        return _dataset(_read_any(p, mmap))
    raise FileFormatError(f"{p}: unrecognised file type {suffix!r}\n{_LAYOUTS}")


def _dataset(
    base: np.ndarray,
    queries: np.ndarray | None = None,
    gt_ids: np.ndarray | None = None,
    gt_dist: np.ndarray | None = None,
    metric: str | None = None,
) -> dict[str, Any]:
    return {
        "base": base,
        "queries": queries,
        "gt_ids": gt_ids,
        "gt_dist": gt_dist,
        "metric": metric,
    }


def _load_hdf5(p: Path) -> dict[str, Any]:
    h = read_hdf5(p)
    metric = h["metric"]
    if metric is not None:
        # Unknown names (e.g. "jaccard") pass through so the caller can report them.
        metric = _METRICS_FROM_HDF5.get(metric.lower(), metric)
    return _dataset(h["train"], h["test"], h["neighbors"], h["distances"], metric)


def _load_npy_dir(p: Path, mmap: bool) -> dict[str, Any]:
    def opt(name: str) -> np.ndarray | None:
        f = p / name
        return _read_npy(f, mmap) if f.is_file() else None

    return _dataset(
        _read_npy(p / "base.npy", mmap),
        _read_npy(p / "queries.npy", mmap),
        opt("gt_ids.npy"),
        opt("gt_dist.npy"),
        "l2",
    )


def _load_vecs_dir(p: Path, mmap: bool) -> dict[str, Any]:
    base = _find_vecs(p, "base")
    query = _find_vecs(p, "query")
    if query is None:
        raise FileFormatError(f"{p}: found base file {base.name} but no query file\n{_LAYOUTS}")
    gt = _find_vecs(p, "groundtruth", exts=(".ivecs",))
    return _dataset(
        _read_any(base, mmap),
        _read_any(query, mmap),
        read_ivecs(gt, mmap) if gt is not None else None,
        None,
        "l2",  # the TEXMEX sets (SIFT, GIST, BIGANN) are all Euclidean
    )


def _find_vecs(p: Path, role: str, exts: tuple[str, ...] = (".fvecs", ".bvecs")) -> Path | None:
    """Find ``<role><ext>`` or a single ``*_<role><ext>`` (SIFT1M naming) in directory ``p``."""
    found = sorted(
        {f for ext in exts for pat in (f"{role}{ext}", f"*_{role}{ext}") for f in p.glob(pat)}
    )
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise FileFormatError(f"{p}: ambiguous {role} file, candidates: {names}")
    return found[0] if found else None


def _read_any(p: Path, mmap: bool) -> np.ndarray:
    readers = {".fvecs": read_fvecs, ".bvecs": read_bvecs, ".ivecs": read_ivecs}
    reader = readers.get(p.suffix.lower())
    return reader(p, mmap) if reader is not None else _read_npy(p, mmap)


def _read_npy(p: Path, mmap: bool) -> np.ndarray:
    try:
        x = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        raise FileFormatError(f"{p}: not a readable .npy array ({e})") from e
    if x.ndim != 2:
        raise FileFormatError(f"{p}: expected a 2-D array (n, d), got shape {x.shape}")
    return x

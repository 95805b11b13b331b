"""FAISS index files read and written without faiss: `jann.read_faiss(path_or_bytes)`,
`jann.write_faiss(index, path=None)`.

FAISS writes an index as its class's fields in order, each object behind a four-byte
code naming its class (faiss/impl/index_read.cpp is the reference). Read and written:
IndexFlatL2 / IndexFlatIP ("IxF2" / "IxFI"), IndexIDMap / IndexIDMap2 ("IxMp" / "IxM2")
around them or another class, IndexIVFFlat ("IwFl"), IndexIVFPQ with 8-bit codes
("IwPQ"), IndexIVFScalarQuantizer ("IwSq", every jann SQ type), IndexScalarQuantizer
("IxSQ") and IndexPQ with 8-bit codes ("IxPq"), with array inverted lists ("ilar"). Codes
are kept as they are (jann's SQ and PQ code as FAISS does), so search results match.
Reading: any other class raises `FileFormatError` naming it, and every size field is
checked against the bytes left before anything is allocated, so a truncated or tampered
file fails cleanly. Writing: jann's indexes of those kinds (a one-list coded index is an
IndexPQ / IndexScalarQuantizer, in an IDMap when its ids are not 0..n-1; an IDMap IVF is
a plain one, FAISS IVF storing any ids); anything else (cosine, which FAISS has no metric
for; RQ / 4-bit PQ codes; transforms, refinement, graphs, binary indexes) raises
`InvalidInputError` naming what FAISS would not get.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np

from jann.api import add, add_preassigned, reserve
from jann.errors import FileFormatError, InvalidInputError
from jann.factory import index_factory
from jann.ops.distances import squared_norms

__all__ = ["read_faiss", "write_faiss"]

# FAISS's MetricType values and the jann metric each is.
_METRICS = {0: "ip", 1: "l2"}
_FLAT = {b"IxF2": "l2", b"IxFI": "ip"}


class _Reader:
    """Little-endian fields of a byte string, every length checked against what is left."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FileFormatError(f"FAISS file truncated or corrupt: {n} bytes wanted at "
                                  f"offset {self.pos}, {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def fourcc(self) -> bytes:
        return self.take(4)

    def array(self, dtype, count: int | None = None) -> np.ndarray:
        """A FAISS vector: its element count (size_t) unless given, then the elements."""
        dtype = np.dtype(dtype).newbyteorder("<")
        n = self.scalar("Q") if count is None else count
        if n > (len(self.data) - self.pos) // max(dtype.itemsize, 1):
            raise FileFormatError(f"FAISS file truncated or corrupt: a vector of {n} "
                                  f"elements at offset {self.pos} is longer than the file")
        return np.frombuffer(self.take(n * dtype.itemsize), dtype).astype(dtype.newbyteorder("="))


def _header(r: _Reader) -> dict:
    """FAISS's Index fields: d, ntotal, two unused words, is_trained, metric."""
    d, ntotal = r.scalar("i"), r.scalar("q")
    r.scalar("q"), r.scalar("q")
    is_trained, metric = r.scalar("B"), r.scalar("i")
    if metric > 1:
        r.scalar("f")  # metric_arg of the other metrics
    if metric not in _METRICS:
        raise FileFormatError(f"FAISS metric type {metric} is not read by jann (L2 and "
                              "inner product are)")
    if d <= 0 or ntotal < 0:
        raise FileFormatError(f"FAISS file corrupt: d={d}, ntotal={ntotal}")
    return {"d": d, "ntotal": ntotal, "is_trained": bool(is_trained),
            "metric": _METRICS[metric]}


def _flat_vectors(r: _Reader, head: dict) -> np.ndarray:
    values = r.array(np.float32)
    if values.size != head["d"] * head["ntotal"]:
        raise FileFormatError(f"FAISS flat index corrupt: {values.size} values for "
                              f"{head['ntotal']} x {head['d']}")
    return values.reshape(head["ntotal"], head["d"])


def _inverted_lists(r: _Reader, nlist: int, code_size: int):
    """(list of each row, codes (n, code_size) uint8, ids (n,)) of array inverted lists."""
    kind = r.fourcc()
    if kind != b"ilar":
        raise FileFormatError(f"FAISS inverted lists {kind!r} are not read by jann "
                              "(array lists 'ilar' are; on-disk lists are not)")
    if r.scalar("Q") != nlist or r.scalar("Q") != code_size:
        raise FileFormatError("FAISS inverted lists do not match their index")
    layout = r.fourcc()
    if layout == b"full":
        sizes = r.array(np.uint64)
        if sizes.size != nlist:
            raise FileFormatError("FAISS inverted lists corrupt: list count")
    elif layout == b"sprs":
        pairs = r.array(np.uint64)
        if pairs.size % 2 or (pairs.size and pairs[::2].max() >= nlist):
            raise FileFormatError("FAISS inverted lists corrupt: sparse sizes")
        sizes = np.zeros(nlist, np.uint64)
        sizes[pairs[::2].astype(np.int64)] = pairs[1::2]
    else:
        raise FileFormatError(f"FAISS inverted lists layout {layout!r} unknown")
    lists, codes, ids = [], [], []
    for i, size in enumerate(sizes.tolist()):
        if size:
            codes.append(r.array(np.uint8, size * code_size).reshape(size, code_size))
            ids.append(r.array(np.int64, size))
            lists.append(np.full(size, i, np.int32))
    if not lists:
        return (np.zeros(0, np.int32), np.zeros((0, code_size), np.uint8),
                np.zeros(0, np.int64))
    return np.concatenate(lists), np.concatenate(codes), np.concatenate(ids)


def _ivf_common(r: _Reader, head: dict) -> dict:
    """The fields every FAISS IVF index starts with: nlist, nprobe, its quantizer and
    direct map."""
    nlist = r.scalar("Q")
    r.scalar("Q")  # nprobe: a search parameter in jann
    quantizer = _read(r)
    if quantizer["kind"] != "flat" or quantizer["vectors"].shape != (nlist, head["d"]):
        raise FileFormatError("FAISS IVF index corrupt: its quantizer does not hold "
                              f"{nlist} flat centroids of dimension {head['d']}")
    if r.scalar("B") != 0:  # direct map type: none, array or hash
        raise FileFormatError("FAISS IVF index with a direct map is not read by jann yet")
    r.array(np.int64)  # the (empty) direct map array
    return {"d": head["d"], "metric": head["metric"], "nlist": nlist,
            "centroids": quantizer["vectors"]}


def _ivf_flat(r: _Reader, head: dict) -> dict:
    parts = _ivf_common(r, head)
    lists, codes, ids = _inverted_lists(r, parts["nlist"], 4 * head["d"])
    if ids.size != head["ntotal"]:
        raise FileFormatError("FAISS IVF index corrupt: its lists do not hold ntotal rows")
    return {**parts, "kind": "ivf_flat", "lists": lists, "ids": ids,
            "vectors": codes.view("<f4").astype(np.float32).reshape(-1, head["d"])}


def _ivf_pq(r: _Reader, head: dict) -> dict:
    parts = _ivf_common(r, head)
    by_residual = bool(r.scalar("B"))
    code_size = r.scalar("Q")
    pq = _product_quantizer(r, head["d"])
    if code_size != pq["code_size"]:
        raise FileFormatError("FAISS IVF-PQ corrupt: code size")
    lists, codes, ids = _inverted_lists(r, parts["nlist"], code_size)
    if ids.size != head["ntotal"]:
        raise FileFormatError("FAISS IVF index corrupt: its lists do not hold ntotal rows")
    return {**parts, **pq, "kind": "ivf_coded", "by_residual": by_residual, "lists": lists,
            "ids": ids, "vectors": codes}


# FAISS's ScalarQuantizer::QuantizerType values and jann's names of them.
_QTYPE_CODES = {0: "SQ8", 1: "SQ4", 2: "SQ8_uniform", 3: "SQ4_uniform", 4: "SQfp16",
                5: "SQ8_direct", 6: "SQ6", 7: "SQbf16"}


def _scalar_quantizer(r: _Reader, d: int) -> dict:
    """A FAISS ScalarQuantizer: type, range statistic (training only), d, code size and
    its trained ranges (vmin then vdiff: per dimension, one pair, or none)."""
    from jann.quantizers.sq import QTYPES

    qtype = r.scalar("i")
    r.scalar("i"), r.scalar("f")  # range statistic and its argument: training only
    sq_d, code_size = r.scalar("Q"), r.scalar("Q")
    trained = r.array(np.float32)
    name = _QTYPE_CODES.get(qtype)
    if name is None:
        raise FileFormatError(f"FAISS scalar quantizer type {qtype} is not read by jann")
    kind, bits = QTYPES[name][2], QTYPES[name][1]
    ranges = {"nonuniform": d, "uniform": 1}.get(kind, 0)
    if sq_d != d or code_size != -(-d * bits // 8) or trained.size != 2 * ranges:
        raise FileFormatError(f"FAISS scalar quantizer corrupt: d={sq_d}, code size "
                              f"{code_size}, {trained.size} trained values for {name}")
    return {"codec": "sq", "qtype": name, "code_size": code_size,
            "vmin": trained[:ranges], "vdiff": trained[ranges:]}


def _product_quantizer(r: _Reader, d: int) -> dict:
    pq_d, M, nbits = r.scalar("Q"), r.scalar("Q"), r.scalar("Q")
    if pq_d != d or not 0 < M <= d or d % M or nbits != 8:
        raise FileFormatError(f"FAISS product quantizer with d={pq_d}, M={M}, nbits={nbits} "
                              "is not read by jann (8-bit codes are)")
    centroids = r.array(np.float32)
    if centroids.size != M * 256 * (d // M):
        raise FileFormatError("FAISS product quantizer corrupt: centroid count")
    return {"codec": "pq", "M": M, "code_size": M, "pq": centroids.reshape(M, 256, d // M)}


def _ivf_sq(r: _Reader, head: dict) -> dict:
    parts = _ivf_common(r, head)
    sq = _scalar_quantizer(r, head["d"])
    if r.scalar("Q") != sq["code_size"]:
        raise FileFormatError("FAISS IVF scalar quantizer corrupt: code size")
    by_residual = bool(r.scalar("B"))
    lists, codes, ids = _inverted_lists(r, parts["nlist"], sq["code_size"])
    if ids.size != head["ntotal"]:
        raise FileFormatError("FAISS IVF index corrupt: its lists do not hold ntotal rows")
    return {**parts, **sq, "kind": "ivf_coded", "by_residual": by_residual, "lists": lists,
            "ids": ids, "vectors": codes}


def _flat_coded(r: _Reader, head: dict, codec: dict) -> dict:
    """IndexScalarQuantizer / IndexPQ: the codec, then the codes of rows 0..ntotal-1."""
    codes = r.array(np.uint8)
    if codes.size != head["ntotal"] * codec["code_size"]:
        raise FileFormatError("FAISS coded index corrupt: code bytes for ntotal rows")
    return {**codec, "kind": "coded", "d": head["d"], "metric": head["metric"], "ids": None,
            "vectors": codes.reshape(head["ntotal"], codec["code_size"])}


def _read(r: _Reader) -> dict:
    """The parts of the next index in the file (vectors, ids, centroids, ...)."""
    code = r.fourcc()
    if code in _FLAT:
        head = _header(r)
        return {"kind": "flat", "d": head["d"], "metric": head["metric"], "ids": None,
                "vectors": _flat_vectors(r, head)}
    if code == b"IwFl":
        return _ivf_flat(r, _header(r))
    if code == b"IwPQ":
        return _ivf_pq(r, _header(r))
    if code in (b"IwSq", b"IwSQ"):
        return _ivf_sq(r, _header(r))
    if code == b"IxSQ":
        head = _header(r)
        return _flat_coded(r, head, _scalar_quantizer(r, head["d"]))
    if code == b"IxPq":
        head = _header(r)
        parts = _flat_coded(r, head, _product_quantizer(r, head["d"]))
        r.scalar("i"), r.scalar("B"), r.scalar("i")  # search type, signs, polysemous ht
        return parts
    if code in (b"IxMp", b"IxM2"):
        head = _header(r)
        inner = _read(r)
        id_map = r.array(np.int64)
        n = inner["vectors"].shape[0]
        if id_map.size != n or head["ntotal"] != n:
            raise FileFormatError("FAISS IDMap corrupt: its ids do not match its vectors")
        internal = np.arange(n) if inner["ids"] is None else inner["ids"]
        if internal.size and (internal.min() < 0 or internal.max() >= n):
            raise FileFormatError("FAISS IDMap corrupt: an inner id past its id map")
        return {**inner, "ids": id_map[internal], "id_mode": "idmap2" if code == b"IxM2"
                else "idmap"}
    raise FileFormatError(f"FAISS index class {code!r} is not read by jann (it reads "
                          "IndexFlat, IndexIDMap / IDMap2, IndexIVFFlat, IndexIVFPQ, "
                          "IndexIVFScalarQuantizer, IndexScalarQuantizer and IndexPQ)")


def _build(parts: dict):
    """The jann index of the parts, with FAISS's ids (sequential where they are 0..n-1)."""
    ids, vectors = parts["ids"], parts["vectors"]
    lists = parts.get("lists")
    if ids is not None:
        order = np.argsort(ids, kind="stable")
        ids, vectors = ids[order], vectors[order]
        lists = None if lists is None else lists[order]
    mode = parts.get("id_mode", "sequential")
    if mode == "sequential" and ids is not None and not np.array_equal(
            ids, np.arange(ids.size)):
        mode = "idmap"  # FAISS IVF keeps ids after removals: gaps need an id map
    prefix = {"sequential": "", "idmap": "IDMap,", "idmap2": "IDMap2,"}[mode]
    given = None if mode == "sequential" else ids
    if parts["kind"] == "flat":
        index = index_factory(parts["d"], prefix + "Flat", parts["metric"])
        return add(index, vectors, given)
    codes = {"pq": lambda: f"PQ{parts['M']}", "sq": lambda: parts["qtype"]}.get(
        parts.get("codec"), lambda: "Flat")()
    if parts["kind"] == "coded":  # one list, no residual: FAISS's IndexPQ / IndexSQ
        index = index_factory(parts["d"], prefix + codes, parts["metric"])
        index = index.with_centroids(np.zeros((1, parts["d"]), np.float32))
        lists = np.zeros(len(vectors), np.int32)
    else:
        index = index_factory(parts["d"], f"{prefix}IVF{parts['nlist']},{codes}",
                              parts["metric"])
        index = index.with_centroids(parts["centroids"])
    if parts["kind"] == "ivf_flat":
        return add_preassigned(dataclasses.replace(index, is_trained=True), vectors, lists,
                               given)
    if parts["codec"] == "pq":
        codec = dataclasses.replace(index.codec, centroids=jnp.asarray(parts["pq"]),
                                    is_trained=True)
    else:
        codec = dataclasses.replace(index.codec, vmin=jnp.asarray(parts["vmin"]),
                                    vdiff=jnp.asarray(parts["vdiff"]), is_trained=True)
    index = dataclasses.replace(index, codec=codec, is_trained=True,
                                by_residual=parts.get("by_residual", False))
    return _with_codes(index, lists, vectors, ids if ids is not None else
                       np.arange(len(vectors)))


@functools.partial(jax.jit, static_argnames="n")
def _insert(index, lists, codes, ids, n):
    norms = squared_norms(index.codec.decode(codes))
    return index.insert_rows(lists, codes, norms, ids, n, jnp.bool_(True))


def _with_codes(index, lists, codes, ids):
    """index holding FAISS's codes as they are (decoding and encoding again could move
    a code on a tie): rows inserted into their lists, numbering past the largest id."""
    n = len(codes)
    if n == 0:
        return index
    index = reserve(index, n)
    index = _insert(index, jnp.asarray(lists), jnp.asarray(codes),
                    jnp.asarray(ids.astype(np.asarray(index.ids).dtype)), n)
    return index.with_next_id(int(ids.max()) + 1)


def read_faiss(source) -> object:
    """The jann index a FAISS index file holds (`faiss.write_index` output, a path or the
    bytes / `faiss.serialize_index` array). Ids and search results are FAISS's: the
    same ids at the same nprobe."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            data = f.read()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, np.ndarray) and source.dtype == np.uint8:
        data = source.tobytes()
    else:
        raise FileFormatError(f"read_faiss takes a path or bytes, got {type(source).__name__}")
    r = _Reader(data)
    parts = _read(r)
    if r.pos != len(data):
        raise FileFormatError(f"FAISS file has {len(data) - r.pos} bytes past its index")
    return _build(parts)


# ----------------------------------------------------------------------------- writing
_METRIC_CODES = {"ip": 0, "l2": 1}


class _Writer:
    """A FAISS file built field by field, little-endian, in faiss/impl/index_write.cpp's
    order."""

    def __init__(self):
        self.out = bytearray()

    def scalar(self, fmt: str, value):
        self.out += struct.pack("<" + fmt, value)

    def fourcc(self, code: bytes):
        self.out += code

    def array(self, values, dtype, with_count: bool = True):
        values = np.ascontiguousarray(values, np.dtype(dtype).newbyteorder("<"))
        if with_count:
            self.scalar("Q", values.size)
        self.out += values.tobytes()


def _write_header(w: _Writer, d: int, ntotal: int, metric: str):
    w.scalar("i", d)
    w.scalar("q", ntotal)
    w.scalar("q", 1 << 20)  # two words FAISS writes and ignores
    w.scalar("q", 1 << 20)
    w.scalar("B", 1)  # is_trained
    w.scalar("i", _METRIC_CODES[metric])


def _write_flat(w: _Writer, vectors: np.ndarray, metric: str):
    w.fourcc(b"IxF2" if metric == "l2" else b"IxFI")
    _write_header(w, vectors.shape[1], vectors.shape[0], metric)
    w.array(vectors.astype(np.float32).reshape(-1), np.float32)


def _write_lists(w: _Writer, offsets: np.ndarray, codes: np.ndarray, ids: np.ndarray):
    """Array inverted lists ("ilar"): list sizes (FAISS's "full" layout when more than
    half the lists hold rows, "sprs" pairs otherwise), then each list's codes and ids."""
    nlist = offsets.size - 1
    sizes = np.diff(offsets).astype(np.uint64)
    w.fourcc(b"ilar")
    w.scalar("Q", nlist)
    w.scalar("Q", codes.shape[1])
    if np.count_nonzero(sizes) > nlist // 2:
        w.fourcc(b"full")
        w.array(sizes, np.uint64)
    else:
        w.fourcc(b"sprs")
        nonempty = np.flatnonzero(sizes)
        w.array(np.stack([nonempty.astype(np.uint64), sizes[nonempty]], 1).reshape(-1),
                np.uint64)
    for i in np.flatnonzero(sizes):
        start, stop = offsets[i], offsets[i + 1]
        w.array(codes[start:stop], np.uint8, with_count=False)
        w.array(ids[start:stop], np.int64, with_count=False)


def _refuse(index, why: str):
    raise InvalidInputError(f"write_faiss: {index.describe()} cannot be written as a FAISS "
                            f"index ({why})")


def _write_codec(w: _Writer, index):
    """The codec's FAISS struct: ProductQuantizer (d, M, nbits, centroids) or
    ScalarQuantizer (type, range statistic, d, code size, trained vmin then vdiff)."""
    codec = index.codec
    if _codec_kind(index) == "pq":
        w.scalar("Q", codec.d)
        w.scalar("Q", codec.M)
        w.scalar("Q", codec.nbits)
        w.array(np.asarray(codec.centroids, np.float32).reshape(-1), np.float32)
        return
    w.scalar("i", {name: value for value, name in _QTYPE_CODES.items()}[codec.qtype])
    w.scalar("i", 0)  # RS_minmax, FAISS's default and jann's statistic
    w.scalar("f", 0.0)
    w.scalar("Q", codec.d)
    w.scalar("Q", codec.code_size)
    w.array(np.concatenate([np.asarray(codec.vmin), np.asarray(codec.vdiff)]), np.float32)


def _codec_kind(index) -> str:
    from jann.quantizers.identity import IdentityCodec
    from jann.quantizers.pq import ProductQuantizer
    from jann.quantizers.sq import ScalarQuantizer

    codec = index.codec
    if isinstance(codec, IdentityCodec):
        return "flat"
    if isinstance(codec, ScalarQuantizer):
        return "sq"
    if isinstance(codec, ProductQuantizer):
        if codec.nbits != 8:
            _refuse(index, f"jann writes 8-bit PQ codes; this one has {codec.nbits} bits")
        return "pq"
    _refuse(index, f"its {type(codec).__name__} codes have no FAISS class jann writes "
                   "(Flat, SQ and 8-bit PQ codes are written)")


def _write_one_list(w: _Writer, index, codes, ids):
    """A coded index of one list without residual as FAISS's IndexPQ / IndexScalarQuantizer
    (rows numbered 0..n-1 there), in an IDMap / IDMap2 when its ids are other numbers."""
    count = codes.shape[0]
    if not np.array_equal(ids, np.arange(count)):
        w.fourcc(b"IxM2" if index.id_mode == "idmap2" else b"IxMp")
        _write_header(w, index.d, count, index.metric)
    kind = _codec_kind(index)
    w.fourcc(b"IxPq" if kind == "pq" else b"IxSQ")
    _write_header(w, index.d, count, index.metric)
    _write_codec(w, index)
    w.array(codes.reshape(-1), np.uint8)
    if kind == "pq":  # search type (ST_PQ), encode signs, polysemous threshold: defaults
        w.scalar("i", 0)
        w.scalar("B", 0)
        w.scalar("i", index.codec.nbits * index.codec.M + 1)
    if not np.array_equal(ids, np.arange(count)):
        w.array(ids, np.int64)


def _write_ivf(w: _Writer, index):
    from jann.flat import FlatIndex

    if index.exhaustive:
        _refuse(index, "FAISS's Index2Layer is not written by jann")
    kind = _codec_kind(index)
    if not isinstance(index.quantizer, FlatIndex):
        _refuse(index, "its coarse quantizer is a graph")
    count = int(index.count)
    offsets = np.asarray(index.offsets, np.int64)
    ids = np.asarray(index.ids)[:count].astype(np.int64)
    payload = np.asarray(index.payload)[:count]
    codes = (payload.astype(np.float32).view(np.uint8).reshape(count, -1)
             if kind == "flat" else payload.astype(np.uint8).reshape(count, -1))
    if kind != "flat" and index.nlist == 1 and not index.by_residual:
        return _write_one_list(w, index, codes, ids)
    w.fourcc({"flat": b"IwFl", "pq": b"IwPQ", "sq": b"IwSq"}[kind])
    _write_header(w, index.d, count, index.metric)
    w.scalar("Q", index.nlist)
    w.scalar("Q", 1)  # nprobe: a search parameter in jann, FAISS's default here
    _write_flat(w, np.asarray(index.centroids), index.metric)
    w.scalar("B", 0)  # no direct map
    w.array(np.zeros(0, np.int64), np.int64)
    if kind == "pq":
        w.scalar("B", int(index.by_residual))
        w.scalar("Q", index.codec.M)
        _write_codec(w, index)
    elif kind == "sq":
        _write_codec(w, index)
        w.scalar("Q", index.codec.code_size)
        w.scalar("B", int(index.by_residual))
    _write_lists(w, offsets, codes, ids)
    return None


def write_faiss(index, path=None):
    """`index` as a FAISS index file (what `faiss.write_index` writes; `faiss.read_index`
    and `jann.read_faiss` read it back with the same ids and results): written to
    `path` when given, else returned as bytes (`faiss.deserialize_index` takes them as a
    uint8 array)."""
    from jann.api import require_trained
    from jann.flat import FlatIndex
    from jann.ivf.index import IVFIndex

    require_trained(index, "write_faiss")
    if not isinstance(index, (FlatIndex, IVFIndex)):
        _refuse(index, "jann writes Flat, IDMap / IDMap2 Flat, IVF Flat and IVF 8-bit PQ")
    if index.metric not in _METRIC_CODES:
        _refuse(index, f"FAISS has no {index.metric!r} metric jann writes (L2 and inner "
                       "product; for cosine, normalise the rows and use 'ip')")
    w = _Writer()
    if isinstance(index, FlatIndex):
        count = int(index.count)
        vectors = np.asarray(index.vectors)[:count]
        if index.id_mode == "sequential":
            _write_flat(w, vectors, index.metric)
        else:
            w.fourcc(b"IxM2" if index.id_mode == "idmap2" else b"IxMp")
            _write_header(w, index.d, count, index.metric)
            _write_flat(w, vectors, index.metric)
            w.array(np.asarray(index.ids)[:count], np.int64)
    else:
        _write_ivf(w, index)
    data = bytes(w.out)
    if path is None:
        return data
    with open(path, "wb") as f:
        f.write(data)
    return None

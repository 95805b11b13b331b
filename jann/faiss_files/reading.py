"""FAISS index files read without faiss: `read_faiss` (see the package docstring)."""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jann._storage import fitted_capacity, id_mode_prefix, pad_rows
from jann.api import add, add_preassigned, reserve
from jann.compose import PreTransformIndex
from jann.errors import FileFormatError
from jann.factory import index_factory
from jann.faiss_files.format import FLAT_CLASSES, METRICS, QTYPE_CODES
from jann.faiss_files.hnsw import build_hnsw, read_hnsw
from jann.faiss_files.wire import Reader
from jann.linear import LinearTransform
from jann.ops.distances import squared_norms
from jann.fixed_transforms import NormalizationTransform, RemapDimensions
from jann.transforms import Chain

__all__ = ["read_faiss"]


def _header(r: Reader) -> dict:
    """FAISS's Index fields: d, ntotal, two unused words, is_trained, metric."""
    d, ntotal = r.scalar("i"), r.scalar("q")
    r.scalar("q"), r.scalar("q")
    is_trained, metric = r.scalar("B"), r.scalar("i")
    if metric > 1:
        r.scalar("f")  # metric_arg of the other metrics
    if metric not in METRICS:
        raise FileFormatError(f"FAISS metric type {metric} is not read by jann (L2 and "
                              "inner product are)")
    if d <= 0 or ntotal < 0:
        raise FileFormatError(f"FAISS file corrupt: d={d}, ntotal={ntotal}")
    return {"d": d, "ntotal": ntotal, "is_trained": bool(is_trained),
            "metric": METRICS[metric]}


def _flat_vectors(r: Reader, head: dict) -> np.ndarray:
    values = r.array(np.float32)
    if values.size != head["d"] * head["ntotal"]:
        raise FileFormatError(f"FAISS flat index corrupt: {values.size} values for "
                              f"{head['ntotal']} x {head['d']}")
    return values.reshape(head["ntotal"], head["d"])


def _inverted_lists(r: Reader, nlist: int, code_size: int):
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


def _ivf_common(r: Reader, head: dict) -> dict:
    """The fields every FAISS IVF index starts with: nlist, nprobe, its quantizer and
    direct map."""
    nlist = r.scalar("Q")
    r.scalar("Q")  # nprobe: a search parameter in jann
    quantizer = _read(r)
    if quantizer["kind"] != "flat" or quantizer["vectors"].shape != (nlist, head["d"]):
        raise FileFormatError("FAISS IVF index corrupt: its quantizer does not hold "
                              f"{nlist} flat centroids of dimension {head['d']}")
    _no_direct_map(r)
    return {"d": head["d"], "metric": head["metric"], "nlist": nlist,
            "centroids": quantizer["vectors"]}


def _no_direct_map(r: Reader):
    if r.scalar("B") != 0:  # direct map type: none, array or hash
        raise FileFormatError("FAISS IVF index with a direct map is not read by jann yet")
    r.array(np.int64)  # the (empty) direct map array


def _binary_header(r: Reader) -> dict:
    """FAISS's IndexBinary fields: d (bits), code size, ntotal, is_trained, metric."""
    d, code_size, ntotal = r.scalar("i"), r.scalar("i"), r.scalar("q")
    r.scalar("B"), r.scalar("i")  # is_trained; metric (Hamming whatever it says)
    if d <= 0 or d % 8 or code_size != d // 8 or ntotal < 0:
        raise FileFormatError(f"FAISS binary index corrupt: d={d}, code size {code_size}, "
                              f"ntotal={ntotal}")
    return {"d": d, "ntotal": ntotal, "metric": "hamming"}


def _binary(r: Reader, code: bytes, head: dict) -> dict:
    """IndexBinaryFlat (its codes) or IndexBinaryIVF (nlist, nprobe, its flat binary
    quantizer, direct map, then array inverted lists of codes)."""
    nbytes = head["d"] // 8
    if code == b"IBxF":
        codes = r.array(np.uint8)
        if codes.size != head["ntotal"] * nbytes:
            raise FileFormatError("FAISS IndexBinaryFlat corrupt: code bytes for ntotal rows")
        return {"kind": "binary_flat", "d": head["d"], "metric": "hamming", "ids": None,
                "vectors": codes.reshape(head["ntotal"], nbytes)}
    nlist = r.scalar("Q")
    r.scalar("Q")  # nprobe: a search parameter in jann
    quantizer = _read(r)
    if quantizer["kind"] != "binary_flat" or quantizer["vectors"].shape != (nlist, nbytes):
        raise FileFormatError("FAISS IndexBinaryIVF corrupt: its quantizer does not hold "
                              f"{nlist} binary centroids of {head['d']} bits")
    _no_direct_map(r)
    lists, codes, ids = _inverted_lists(r, nlist, nbytes)
    if ids.size != head["ntotal"]:
        raise FileFormatError("FAISS IndexBinaryIVF corrupt: its lists do not hold ntotal "
                              "rows")
    return {"kind": "binary_ivf", "d": head["d"], "metric": "hamming", "nlist": nlist,
            "centroids": quantizer["vectors"], "lists": lists, "ids": ids, "vectors": codes}


def _ivf_flat(r: Reader, head: dict) -> dict:
    parts = _ivf_common(r, head)
    lists, codes, ids = _inverted_lists(r, parts["nlist"], 4 * head["d"])
    if ids.size != head["ntotal"]:
        raise FileFormatError("FAISS IVF index corrupt: its lists do not hold ntotal rows")
    return {**parts, "kind": "ivf_flat", "lists": lists, "ids": ids,
            "vectors": codes.view("<f4").astype(np.float32).reshape(-1, head["d"])}


def _ivf_pq(r: Reader, head: dict) -> dict:
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


def _scalar_quantizer(r: Reader, d: int) -> dict:
    """A FAISS ScalarQuantizer: type, range statistic (training only), d, code size and
    its trained ranges (vmin then vdiff: per dimension, one pair, or none)."""
    from jann.quantizers.sq import QTYPES

    qtype = r.scalar("i")
    r.scalar("i"), r.scalar("f")  # range statistic and its argument: training only
    sq_d, code_size = r.scalar("Q"), r.scalar("Q")
    trained = r.array(np.float32)
    name = QTYPE_CODES.get(qtype)
    if name is None:
        raise FileFormatError(f"FAISS scalar quantizer type {qtype} is not read by jann")
    kind, bits = QTYPES[name][2], QTYPES[name][1]
    ranges = {"nonuniform": d, "uniform": 1}.get(kind, 0)
    if sq_d != d or code_size != -(-d * bits // 8) or trained.size != 2 * ranges:
        raise FileFormatError(f"FAISS scalar quantizer corrupt: d={sq_d}, code size "
                              f"{code_size}, {trained.size} trained values for {name}")
    return {"codec": "sq", "qtype": name, "code_size": code_size,
            "vmin": trained[:ranges], "vdiff": trained[ranges:]}


def _product_quantizer(r: Reader, d: int) -> dict:
    """A FAISS ProductQuantizer with 8- or 4-bit codes (whose bytes jann's PQ shares:
    one byte per sub-code, or two per byte, the first in the low nibble)."""
    pq_d, M, nbits = r.scalar("Q"), r.scalar("Q"), r.scalar("Q")
    if pq_d != d or not 0 < M <= d or d % M or nbits not in (4, 8):
        raise FileFormatError(f"FAISS product quantizer with d={pq_d}, M={M}, nbits={nbits} "
                              "is not read by jann (8-bit and 4-bit codes are)")
    centroids = r.array(np.float32)
    if centroids.size != M * (1 << nbits) * (d // M):
        raise FileFormatError("FAISS product quantizer corrupt: centroid count")
    return {"codec": "pq", "M": M, "nbits": nbits, "code_size": -(-M * nbits // 8),
            "pq": centroids.reshape(M, 1 << nbits, d // M)}


def _ivf_sq(r: Reader, head: dict) -> dict:
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


def _flat_coded(r: Reader, head: dict, codec: dict) -> dict:
    """IndexScalarQuantizer / IndexPQ: the codec, then the codes of rows 0..ntotal-1."""
    codes = r.array(np.uint8)
    if codes.size != head["ntotal"] * codec["code_size"]:
        raise FileFormatError("FAISS coded index corrupt: code bytes for ntotal rows")
    return {**codec, "kind": "coded", "d": head["d"], "metric": head["metric"], "ids": None,
            "vectors": codes.reshape(head["ntotal"], codec["code_size"])}


_PCA_CODES = (b"PCAm", b"PcAm", b"Pcam")  # FAISS's PCAMatrix, oldest to newest fields


def _vector_transform(r: Reader) -> dict:
    """A FAISS linear VectorTransform: its A, b and the factory name it came from."""
    code = r.fourcc()
    name = None
    if code in _PCA_CODES:
        eigen_power = r.scalar("f")
        if code == b"Pcam":
            r.scalar("f")  # epsilon: already in A
        random_rotation = r.scalar("B")
        if code != b"PCAm":
            r.scalar("i")  # balanced bins
        for _ in range(3):  # mean, eigenvalues, the full PCA matrix: all already in A, b
            r.array(np.float32)
        name = "PCA" + ("W" if eigen_power == -0.5 else "") + ("R" if random_rotation else "")
    elif code == b"Viqm":
        r.scalar("i"), r.scalar("i")  # ITQ iterations, seed
    elif code == b"VCnt":
        mean = r.array(np.float32)
        d_in, d_out, _ = r.scalar("i"), r.scalar("i"), r.scalar("B")
        if not d_in == d_out == mean.size > 0:
            raise FileFormatError("FAISS CenteringTransform corrupt: its mean and sizes")
        return {"matrix": np.eye(d_in, dtype=np.float32), "bias": -mean, "name": None,
                "d_in": d_in, "d_out": d_out}
    elif code == b"rrot":
        name = "RR"
    elif code in (b"VNrm", b"RmDT"):
        return _fixed_transform(r, code)
    elif code != b"LTra":
        raise FileFormatError(f"FAISS vector transform {code!r} is not read by jann (it "
                              "reads PCAMatrix, OPQ and other LinearTransforms, "
                              "RandomRotationMatrix, ITQMatrix, CenteringTransform, "
                              "NormalizationTransform and RemapDimensionsTransform)")
    have_bias = r.scalar("B")
    matrix, bias = r.array(np.float32), r.array(np.float32)
    d_in, d_out, _ = r.scalar("i"), r.scalar("i"), r.scalar("B")
    if not (0 < d_in and 0 < d_out and matrix.size == d_in * d_out
            and bias.size == (d_out if have_bias else bias.size) and bias.size in (0, d_out)):
        raise FileFormatError("FAISS linear transform corrupt: its matrix, bias and sizes "
                              "disagree")
    return {"matrix": matrix.reshape(d_out, d_in),
            "bias": bias if have_bias and bias.size else np.zeros(d_out, np.float32),
            "name": None if name is None else f"{name}{d_out}", "d_in": d_in, "d_out": d_out}


def _fixed_transform(r: Reader, code: bytes) -> dict:
    """FAISS's NormalizationTransform (L2 only, "L2norm") or RemapDimensionsTransform."""
    if code == b"VNrm":
        norm = r.scalar("f")
        d_in, d_out, _ = r.scalar("i"), r.scalar("i"), r.scalar("B")
        if norm != 2.0:
            raise FileFormatError(f"FAISS NormalizationTransform with norm {norm} is not "
                                  "read by jann (only the L2 norm, \"L2norm\")")
        if not 0 < d_in == d_out:
            raise FileFormatError("FAISS NormalizationTransform corrupt: its sizes")
        return {"transform": NormalizationTransform.create(d_in), "d_in": d_in, "d_out": d_out}
    mapping = r.array(np.int32)
    d_in, d_out, _ = r.scalar("i"), r.scalar("i"), r.scalar("B")
    if not (0 < d_in and mapping.size == d_out > 0 and mapping.min() >= -1
            and mapping.max() < d_in):
        raise FileFormatError("FAISS RemapDimensionsTransform corrupt: its map and sizes")
    return {"transform": RemapDimensions.create(d_in, mapping), "d_in": d_in, "d_out": d_out}


def _pre_transform(r: Reader, head: dict) -> dict:
    """IndexPreTransform: its chain of transforms, then the index they feed."""
    count = r.scalar("i")
    if not 0 < count <= 64:
        raise FileFormatError(f"FAISS IndexPreTransform corrupt: {count} transforms")
    chain = [_vector_transform(r) for _ in range(count)]
    inner = _read(r)
    dims = [head["d"]] + [t["d_out"] for t in chain]
    if [t["d_in"] for t in chain] != dims[:-1] or inner["d"] != dims[-1]:
        raise FileFormatError("FAISS IndexPreTransform corrupt: its transforms' sizes do "
                              "not chain from its d to its index's")
    if inner["kind"] == "refine":
        raise FileFormatError("FAISS IndexPreTransform around an IndexRefine is not read "
                              "by jann")
    return {"kind": "pretransform", "d": head["d"], "metric": inner["metric"],
            "chain": chain, "inner": inner, "ids": inner["ids"], "vectors": inner["vectors"]}


def _read(r: Reader) -> dict:
    """The parts of the next index in the file (vectors, ids, centroids, ...)."""
    code = r.fourcc()
    if code in FLAT_CLASSES:
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
    if code == b"IxRF":
        head = _header(r)
        base, refine = _read(r), _read(r)
        k_factor = r.scalar("f")
        if refine["kind"] != "flat" or refine["vectors"].shape != (head["ntotal"], head["d"]) \
                or base["d"] != head["d"] or not k_factor >= 1:
            raise FileFormatError("FAISS IndexRefine corrupt, or its refine index not Flat")
        return {"kind": "refine", "d": head["d"], "metric": head["metric"], "base": base,
                "refine": refine["vectors"], "k_factor": float(k_factor), "ids": None,
                "vectors": refine["vectors"]}
    if code == b"IHNf":
        return read_hnsw(r, _header(r), _read)
    if code == b"IxPT":
        return _pre_transform(r, _header(r))
    if code in (b"IBxF", b"IBwF"):
        return _binary(r, code, _binary_header(r))
    if code in (b"IxMp", b"IxM2", b"IBMp", b"IBM2"):
        head = _binary_header(r) if code.startswith(b"IB") else _header(r)
        inner = _read(r)
        if inner["kind"] == "refine":
            raise FileFormatError("FAISS IndexIDMap around an IndexRefine is not read by jann")
        id_map = r.array(np.int64)
        n = inner["vectors"].shape[0]
        if id_map.size != n or head["ntotal"] != n:
            raise FileFormatError("FAISS IDMap corrupt: its ids do not match its vectors")
        internal = np.arange(n) if inner["ids"] is None else inner["ids"]
        if internal.size and (internal.min() < 0 or internal.max() >= n):
            raise FileFormatError("FAISS IDMap corrupt: an inner id past its id map")
        return {**inner, "ids": id_map[internal], "id_mode": "idmap2"
                if code in (b"IxM2", b"IBM2") else "idmap"}
    raise FileFormatError(f"FAISS index class {code!r} is not read by jann (it reads "
                          "IndexFlat, IndexIDMap / IDMap2, IndexIVFFlat, IndexIVFPQ, "
                          "IndexIVFScalarQuantizer, IndexScalarQuantizer, IndexPQ, "
                          "IndexHNSWFlat, IndexPreTransform, IndexRefineFlat, "
                          "IndexBinaryFlat and IndexBinaryIVF)")


def _codes_description(parts: dict) -> str:
    """The factory name of the parts' codes: "PQ14", "PQ14x4", "SQ8", ... or "Flat"."""
    if parts.get("codec") == "pq":
        return f"PQ{parts['M']}" + ("x4" if parts["nbits"] == 4 else "")
    return parts["qtype"] if parts.get("codec") == "sq" else "Flat"


def _build(parts: dict):
    """The jann index of the parts, with FAISS's ids (sequential where they are 0..n-1)."""
    if parts["kind"] == "refine":  # the refine rows are the base's labels 0..n-1
        base = _build(parts["base"])
        template = index_factory(parts["d"], f"{base.describe()},RFlat", parts["metric"])
        refine = add(template.refine, parts["refine"], np.arange(len(parts["refine"])))
        return dataclasses.replace(template, base=base, refine=refine,
                                   k_factor=parts["k_factor"])
    if parts["kind"] == "pretransform":  # an IDMap around it numbers its index's rows
        inner = _build({**parts["inner"], "ids": parts["ids"],
                        "id_mode": parts.get("id_mode", parts["inner"].get("id_mode"))})
        transforms = [t["transform"] if "transform" in t else
                      LinearTransform.create(t["matrix"], t["bias"], t["name"])
                      for t in parts["chain"]]
        transform = transforms[0] if len(transforms) == 1 else Chain.create(*transforms)
        return PreTransformIndex(transform=transform, index=inner,
                                 transform_description=transform.describe())
    if parts["kind"] == "binary_ivf":
        return _binary_ivf(parts)
    if parts["kind"] == "hnsw":
        return build_hnsw(parts, index_factory)
    ids, vectors = parts["ids"], parts["vectors"]
    lists = parts.get("lists")
    if ids is not None:
        order = np.argsort(ids, kind="stable")
        ids, vectors = ids[order], vectors[order]
        lists = None if lists is None else lists[order]
    mode = parts.get("id_mode") or "sequential"
    if mode == "sequential" and ids is not None and not np.array_equal(
            ids, np.arange(ids.size)):
        mode = "idmap"  # FAISS IVF keeps ids after removals: gaps need an id map
    prefix = id_mode_prefix(mode)
    given = None if mode == "sequential" else ids
    if parts["kind"] in ("flat", "binary_flat"):
        if parts["kind"] == "binary_flat":  # Hamming, whatever the factory's metric
            return add(index_factory(parts["d"], prefix + "BFlat"), vectors, given)
        return add(index_factory(parts["d"], prefix + "Flat", parts["metric"]), vectors, given)
    codes = _codes_description(parts)
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


def _binary_ivf(parts: dict):
    """BinaryIVF holding FAISS's lists as they are (rows in list order, its ids)."""
    ids, lists, codes = parts["ids"], parts["lists"], parts["vectors"]
    mode = parts.get("id_mode") or ("sequential" if np.array_equal(
        np.sort(ids), np.arange(ids.size)) else "idmap")
    prefix = id_mode_prefix(mode)
    index = index_factory(parts["d"], f"{prefix}BIVF{parts['nlist']}")
    capacity = fitted_capacity(len(ids))
    index = dataclasses.replace(
        index, centroids=jnp.asarray(parts["centroids"]),
        payload=pad_rows(jnp.asarray(codes), capacity),
        ids=pad_rows(jnp.asarray(ids.astype(np.asarray(index.ids).dtype)), capacity, -1),
        offsets=jnp.asarray(np.concatenate([[0], np.cumsum(np.bincount(
            lists, minlength=parts["nlist"]))]).astype(np.int32)),
        count=jnp.asarray(len(ids), jnp.int32), is_trained=True)
    return index.with_next_id(int(ids.max()) + 1 if ids.size else 0)


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
    r = Reader(data)
    parts = _read(r)
    if r.pos != len(data):
        raise FileFormatError(f"FAISS file has {len(data) - r.pos} bytes past its index")
    return _build(parts)

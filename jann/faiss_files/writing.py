"""FAISS index files written without faiss: `write_faiss` (see the package docstring)."""

from __future__ import annotations

import numpy as np

from jann.errors import InvalidInputError
from jann.faiss_files.format import METRIC_CODES, QTYPE_CODES
from jann.faiss_files.hnsw import write_hnsw
from jann.faiss_files.wire import Writer

__all__ = ["write_faiss"]


def _write_header(w: Writer, d: int, ntotal: int, metric: str):
    w.scalar("i", d)
    w.scalar("q", ntotal)
    w.scalar("q", 1 << 20)  # two words FAISS writes and ignores
    w.scalar("q", 1 << 20)
    w.scalar("B", 1)  # is_trained
    w.scalar("i", METRIC_CODES[metric])


def _write_flat(w: Writer, vectors: np.ndarray, metric: str):
    w.fourcc(b"IxF2" if metric == "l2" else b"IxFI")
    _write_header(w, vectors.shape[1], vectors.shape[0], metric)
    w.array(vectors.astype(np.float32).reshape(-1), np.float32)


def _write_lists(w: Writer, offsets: np.ndarray, codes: np.ndarray, ids: np.ndarray):
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


def _write_codec(w: Writer, index):
    """The codec's FAISS struct: ProductQuantizer (d, M, nbits, centroids) or
    ScalarQuantizer (type, range statistic, d, code size, trained vmin then vdiff)."""
    codec = index.codec
    if _codec_kind(index) == "pq":
        w.scalar("Q", codec.d)
        w.scalar("Q", codec.M)
        w.scalar("Q", codec.nbits)
        w.array(np.asarray(codec.centroids, np.float32).reshape(-1), np.float32)
        return
    w.scalar("i", {name: value for value, name in QTYPE_CODES.items()}[codec.qtype])
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
        if codec.nbits not in (4, 8):  # the widths whose bytes FAISS's are too
            _refuse(index, f"jann writes 8- and 4-bit PQ codes; this one has {codec.nbits} "
                           "bits")
        return "pq"
    _refuse(index, f"its {type(codec).__name__} codes have no FAISS class jann writes "
                   "(Flat, SQ and 8- / 4-bit PQ codes are written)")


def _in_id_map(w: Writer, index, ids, wrapped: bool, write_inner, binary: bool = False):
    """write_inner() (rows 0..n-1), inside FAISS's IndexIDMap / IDMap2 (IndexBinaryIDMap
    / IDMap2 when `binary`) holding `ids` when `wrapped`."""
    if not wrapped:
        return write_inner()
    idmap2 = index.id_mode == "idmap2"
    if binary:
        w.fourcc(b"IBM2" if idmap2 else b"IBMp")
        _write_binary_header(w, index.d, len(ids))
    else:
        w.fourcc(b"IxM2" if idmap2 else b"IxMp")
        _write_header(w, index.d, len(ids), index.metric)
    write_inner()
    w.array(ids, np.int64)


def _write_binary_header(w: Writer, d: int, ntotal: int):
    w.scalar("i", d)
    w.scalar("i", d // 8)  # code size
    w.scalar("q", ntotal)
    w.scalar("B", 1)  # is_trained
    w.scalar("i", METRIC_CODES["l2"])  # IndexBinary's metric field, Hamming in effect


def _write_binary_flat(w: Writer, codes: np.ndarray):
    w.fourcc(b"IBxF")
    _write_binary_header(w, 8 * codes.shape[1], codes.shape[0])
    w.array(codes.reshape(-1), np.uint8)


def _write_binary(w: Writer, index):
    """BinaryFlat as IndexBinaryFlat (in an IndexBinaryIDMap when it has ids given), or
    BinaryIVF as IndexBinaryIVF (its lists hold any ids)."""
    from jann.binary import BinaryFlat

    count = int(index.count)
    ids = np.asarray(index.ids)[:count].astype(np.int64)
    if isinstance(index, BinaryFlat):
        codes = np.asarray(index.vectors)[:count]
        _in_id_map(w, index, ids, index.id_mode != "sequential",
                   lambda: _write_binary_flat(w, codes), binary=True)
        return
    if index.hash_bits:
        _refuse(index, "FAISS's IndexBinaryHash is not written by jann")
    w.fourcc(b"IBwF")
    _write_binary_header(w, index.d, count)
    w.scalar("Q", index.nlist)
    w.scalar("Q", 1)  # nprobe: a search parameter in jann, FAISS's default here
    _write_binary_flat(w, np.asarray(index.centroids))
    w.scalar("B", 0)  # no direct map
    w.array(np.zeros(0, np.int64), np.int64)
    _write_lists(w, np.asarray(index.offsets, np.int64), np.asarray(index.payload)[:count],
                 ids)


def _write_one_list(w: Writer, index, codes, ids):
    """A coded index of one list without residual as FAISS's IndexPQ / IndexScalarQuantizer
    (rows numbered 0..n-1 there), in an IDMap / IDMap2 when its ids are other numbers."""
    kind = _codec_kind(index)

    def coded():
        w.fourcc(b"IxPq" if kind == "pq" else b"IxSQ")
        _write_header(w, index.d, codes.shape[0], index.metric)
        _write_codec(w, index)
        w.array(codes.reshape(-1), np.uint8)
        if kind == "pq":  # search type (ST_PQ), encode signs, polysemous threshold
            w.scalar("i", 0)
            w.scalar("B", 0)
            w.scalar("i", index.codec.nbits * index.codec.M + 1)

    _in_id_map(w, index, ids, not np.array_equal(ids, np.arange(len(ids))), coded)


def _write_ivf(w: Writer, index):
    from jann.flat import FlatIndex

    if index.exhaustive:
        _refuse(index, "FAISS's Index2Layer is not written by jann")
    kind = _codec_kind(index)
    if not isinstance(index.quantizer, FlatIndex):
        _refuse(index, "its coarse quantizer is a graph")
    index = index.flushed()  # FAISS's lists hold every row
    count = int(index.count)
    offsets = np.asarray(index.offsets, np.int64)
    ids = np.asarray(index.ids)[:count].astype(np.int64)
    payload = np.asarray(index.payload)[:count]
    codes = (payload.astype(np.float32).view(np.uint8).reshape(count, -1)
             if kind == "flat" else payload.astype(np.uint8).reshape(count, -1))
    if kind != "flat" and index.nlist == 1 and not index.by_residual:
        _write_one_list(w, index, codes, ids)
        return
    w.fourcc({"flat": b"IwFl", "pq": b"IwPQ", "sq": b"IwSq"}[kind])
    _write_header(w, index.d, count, index.metric)
    w.scalar("Q", index.nlist)
    w.scalar("Q", 1)  # nprobe: a search parameter in jann, FAISS's default here
    _write_flat(w, np.asarray(index.centroids), index.metric)
    w.scalar("B", 0)  # no direct map
    w.array(np.zeros(0, np.int64), np.int64)
    if kind == "pq":
        w.scalar("B", int(index.by_residual))
        w.scalar("Q", codes.shape[1])  # code size
        _write_codec(w, index)
    elif kind == "sq":
        _write_codec(w, index)
        w.scalar("Q", codes.shape[1])  # code size
        w.scalar("B", int(index.by_residual))
    _write_lists(w, offsets, codes, ids)


def _write_refine(w: Writer, index):
    """FAISS's IndexRefineFlat: its base, then the exact vectors of rows 0..n-1 (FAISS
    looks the base's labels up by position there), then k_factor."""
    from jann.api import ntotal, reconstruct
    from jann.flat import FlatIndex

    if not isinstance(index.refine, FlatIndex) or index.refine_description != "RFlat":
        _refuse(index, f"FAISS's refine index is Flat; this one is {index.refine_description}")
    n = ntotal(index.base)
    ids = np.asarray(index.refine.ids)[: int(index.refine.count)]
    if not np.array_equal(np.sort(ids), np.arange(n)):
        _refuse(index, "FAISS's IndexRefine numbers rows 0..n-1 and this index's ids are "
                       "other numbers (ids given, or gaps left by removals)")
    w.fourcc(b"IxRF")
    _write_header(w, index.d, n, index.metric)
    _write_index(w, index.base)
    vectors = np.asarray(reconstruct(index.refine, np.arange(n))).reshape(n, index.d)
    _write_flat(w, vectors, index.metric)
    w.scalar("f", index.k_factor)


def _write_fixed_transform(w: Writer, t):
    """NormalizationTransform ("VNrm", the L2 norm) or RemapDimensionsTransform ("RmDT")."""
    if hasattr(t, "map"):
        w.fourcc(b"RmDT")
        w.array(np.asarray(t.map, np.int32), np.int32)
    else:
        w.fourcc(b"VNrm")
        w.scalar("f", 2.0)
    w.scalar("i", t.d_in)
    w.scalar("i", t.d_out)
    w.scalar("B", 1)


def _write_pre_transform(w: Writer, index):
    """IndexPreTransform: its linear transforms as FAISS `LinearTransform`s (A and b; a
    PCA as a `PCAMatrix` holding jann's mean, eigenvalues and components, a random
    rotation as a `RandomRotationMatrix`), then its index."""
    from jann.fixed_transforms import NormalizationTransform, RemapDimensions
    from jann.linear import LinearTransform
    from jann.transforms import Chain, PCAMatrix, RandomRotationMatrix

    transform = index.transform
    chain = transform.transforms if isinstance(transform, Chain) else (transform,)
    fixed = (NormalizationTransform, RemapDimensions)
    try:
        maps = [t if isinstance(t, fixed) else LinearTransform.of(t) for t in chain]
    except InvalidInputError as e:
        _refuse(index, f"FAISS files hold linear transforms, L2norm and Pad; {e}")
    w.fourcc(b"IxPT")
    _write_header(w, index.d, int(index.count), index.metric)
    w.scalar("i", len(maps))
    for t, m in zip(chain, maps):
        if isinstance(t, fixed):
            _write_fixed_transform(w, t)
            continue
        if isinstance(t, PCAMatrix):
            w.fourcc(b"Pcam")
            w.scalar("f", t.eigen_power)
            w.scalar("f", t.epsilon)
            w.scalar("B", int(t.random_rotation))
            w.scalar("i", 0)  # balanced bins
            for values in (t.mean, t.eigenvalues, t.components):
                w.array(np.asarray(values).reshape(-1), np.float32)
        else:
            w.fourcc(b"rrot" if isinstance(t, RandomRotationMatrix) else b"LTra")
        bias = np.asarray(m.bias)
        w.scalar("B", int(bool(bias.any())))
        w.array(np.asarray(m.matrix).reshape(-1), np.float32)
        w.array(bias if bias.any() else bias[:0], np.float32)
        w.scalar("i", m.d_in)
        w.scalar("i", m.d_out)
        w.scalar("B", 1)
    _write_index(w, index.index)


def _write_index(w: Writer, index):
    from jann.compose import PreTransformIndex, RefineIndex
    from jann.flat import FlatIndex
    from jann.ivf.index import IVFIndex

    from jann.binary import BinaryFlat, BinaryIVF
    from jann.graph.index import GraphIndex

    if isinstance(index, PreTransformIndex):
        return _write_pre_transform(w, index)
    if isinstance(index, (BinaryFlat, BinaryIVF)):
        return _write_binary(w, index)
    if isinstance(index, GraphIndex):
        count = int(index.count)
        ids = np.asarray(index.ids)[:count].astype(np.int64)
        wrapped = not np.array_equal(ids, np.arange(count))  # ids given, or kept by compact
        return _in_id_map(w, index, ids, wrapped, lambda: write_hnsw(
            w, index, _write_header, _write_flat, _refuse))
    if not isinstance(index, (FlatIndex, IVFIndex, RefineIndex)):
        _refuse(index, "jann writes Flat, IVF (Flat, SQ, 4- / 8-bit PQ codes), one-list "
                       "SQ / PQ, their IDMap / IDMap2 forms, RFlat refinement, linear "
                       "pre-transforms, HNSW over float vectors, BFlat and BIVF")
    if index.metric not in METRIC_CODES:
        _refuse(index, f"FAISS has no {index.metric!r} metric jann writes (L2 and inner "
                       "product; for cosine, normalise the rows and use 'ip')")
    if isinstance(index, RefineIndex):
        _write_refine(w, index)
    elif isinstance(index, FlatIndex):
        count = int(index.count)
        vectors = np.asarray(index.vectors)[:count]
        _in_id_map(w, index, np.asarray(index.ids)[:count], index.id_mode != "sequential",
                   lambda: _write_flat(w, vectors, index.metric))
    else:
        _write_ivf(w, index)


def write_faiss(index, path=None):
    """`index` as a FAISS index file (what `faiss.write_index` writes; `faiss.read_index`
    and `jann.read_faiss` read it back with the same ids and results): written to
    `path` when given, else returned as bytes (`faiss.deserialize_index` takes them as a
    uint8 array)."""
    from jann.api import require_trained

    require_trained(index, "write_faiss")
    w = Writer()
    _write_index(w, index)
    data = bytes(w.out)
    if path is None:
        return data
    with open(path, "wb") as f:
        f.write(data)
    return None

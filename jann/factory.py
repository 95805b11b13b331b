"""`index_factory`: build an (untrained) index from a FAISS factory string.

Grammar (comma-separated, FAISS's spelling):

    [IDMap,|IDMap2,] {transform,} main [,RFlat | ,Refine(<codes>)]

    transform: PCA<d> | PCAW<d> (whitened) | PCAR<d> (+ random rotation) | PCAWR<d>
               | OPQ<M>[_<d>] | RR[<d>] | ITQ[<d>] | L2norm | Pad<d>
    main:      Flat | Flat(float16|bfloat16)       exact search
               | IVF<nlist>[_HNSW<M>|_CAGRA<R>],<codes>
                                                   inverted file; _HNSW32 etc.: a graph
                                                   index over the centroids assigns (large
                                                   nlist; search knob quantizer_ef)
               | HNSW<M>[,<codes>]                 graph (jann.graph): graph_degree 2*M (FAISS's
                                                   level-0 degree), intermediate_degree 3*M;
                                                   HNSW<M>_<codes> (FAISS's form) the same
               | CAGRA<R>[_<K>][,<codes>]          graph: graph_degree R, intermediate_degree K
                                                   (default 2*R); codes: stored form, default Flat
               | Residual<nlist>,<codes>           2-level: residual codes, every list scanned
               | <codes>                           flat-coded (no partition)
    codes:     Flat | PQ<M>[x<nbits>][np] | SQ8 | SQ4 | SQ6 | SQ8_uniform | SQ4_uniform
               | SQ8_direct | SQfp16 | SQbf16 | RQ<M>x<nbits> | PRQ<nsplits>x<M>x<nbits>
               | LSH[<nbits>][r][t]
               | binary                            Hamming search on packed uint8 codes, d in bits
    binary:    BFlat | BIVF<nlist> | BHNSW<M> | BCAGRA<R>[_<K>] | BHash<b>
               float -> binary in one string: LSH<nbits>[r][t],<binary> or
               {transform,}<binary> (e.g. ITQ256,BHNSW16: the sign of the last transform's
               output is the bit)

`metric` is a keyword: "l2", "ip", "cosine" for every index; Flat also takes "l1", "linf",
"lp" (metric_arg=p), "canberra", "braycurtis", "jensenshannon", "jaccard",
"nan_euclidean", "abs_ip", "gower".
"""

from __future__ import annotations

import re

from jann import binary
from jann.compose import PreTransformIndex, RefineIndex
from jann.errors import FactoryStringError, InvalidInputError
from jann.flat import STORAGE_DTYPES, FlatIndex
from jann.graph import GraphIndex
from jann.ivf import IVFIndex
from jann.lsh import BinaryCodeStore, LSHTransform
from jann.ops.distances import canonical_metric
from jann.quantizers.identity import IdentityCodec
from jann.quantizers.opq import OPQMatrix
from jann.quantizers.pq import ProductQuantizer
from jann.quantizers.rq import ProductResidualQuantizer, ResidualQuantizer
from jann.quantizers.sq import ScalarQuantizer
from jann.transforms import Chain, parse_transform

__all__ = ["GRAMMAR", "index_factory"]

GRAMMAR = __doc__[__doc__.index("Grammar"):].strip()


MAX_FACTORY_NUMBER = 1 << 26  # 67M: nlist, graph degree, bits, dimensions


def _fail(description, why):
    raise FactoryStringError(f"cannot parse factory string {description!r}: {why}\n{GRAMMAR}")


def _split(description: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in description:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


# ------------------------------------------------------------------ transforms
def _transform(token: str, d: int):
    """(transform, d_out) for a transform token, or None when the token is not one."""

    if m := re.fullmatch(r"OPQ(\d+)(?:_(\d+))?", token):
        d_out = int(m.group(2) or d)
        return OPQMatrix.create(d, int(m.group(1)), d_out), d_out
    if re.fullmatch(r"(PCAW?R?\d+|RR\d*|ITQ\d*|L2norm|Pad\d+)", token):
        transform = parse_transform(token, d)
        return transform, transform.d_out
    return None


# ----------------------------------------------------------------------- codecs
_SQ_TYPES = ("SQ8", "SQ4", "SQ6", "SQ8_uniform", "SQ4_uniform", "SQ8_direct", "SQfp16",
             "SQbf16")


def _codec(token: str, d: int, dtype: str):
    """(codec, by_residual default) for a codes token, or None."""

    if token == "Flat":
        return IdentityCodec.create(d, dtype), False
    if m := re.fullmatch(r"PQ(\d+)(?:x(\d+))?(np)?", token):
        return ProductQuantizer.create(d, int(m.group(1)), int(m.group(2) or 8)), True
    if token in _SQ_TYPES:
        return ScalarQuantizer.create(d, token), True
    if m := re.fullmatch(r"RQ(\d+)x(\d+)", token):
        return ResidualQuantizer.create(d, int(m.group(1)), int(m.group(2))), True
    if m := re.fullmatch(r"PRQ(\d+)x(\d+)x(\d+)", token):
        return ProductResidualQuantizer.create(
            d, int(m.group(1)), int(m.group(2)), int(m.group(3))), True
    return None


def _coded_index(d, tokens, description, metric, id_mode, dtype):

    head = tokens[0]
    if m := re.fullmatch(r"(IVF|Residual)(\d+)(?:_(\w+))?", head):
        if len(tokens) != 2:
            _fail(description, f"{head} must be followed by exactly one codes component")
        nlist = int(m.group(2))
        if nlist < 1:
            _fail(description, "nlist must be >= 1")
        found = _codec(tokens[1], d, dtype)
        if found is None:
            _fail(description, f"unknown codes {tokens[1]!r}")
        codec, by_residual = found
        graph_quantizer = None
        if m.group(3):  # IVF<nlist>_HNSW<M>: a graph over the centroids assigns
            if m.group(1) == "Residual" or m.group(3).startswith("B"):
                _fail(description, f"{m.group(3)!r}: only IVF takes a (float) graph quantizer")
            graph_quantizer = _graph_index(d, [m.group(3)], description,
                                           "ip" if metric in ("ip", "cosine") else "l2",
                                           "sequential", "float32")
            if graph_quantizer is None:
                _fail(description, f"unknown coarse quantizer {m.group(3)!r} (HNSW<M> or "
                                   "CAGRA<R>[_<K>])")
        return IVFIndex.create(d, nlist, codec, metric=metric, id_mode=id_mode,
                               by_residual=by_residual, exhaustive=m.group(1) == "Residual",
                               description=f"{head},{tokens[1]}",
                               graph_quantizer=graph_quantizer)
    if m := re.fullmatch(r"LSH(\d*)(r?)(t?)", head):
        if len(tokens) != 1:
            _fail(description, "LSH takes no further component")
        nbits = int(m.group(1)) if m.group(1) else None
        transform = LSHTransform.create(d, nbits, rotate=bool(m.group(2)),
                                        train_thresholds=bool(m.group(3)))
        return PreTransformIndex(  # codes compared by Hamming distance after the transform
            transform=transform, index=BinaryCodeStore.create(8 * transform.d_out, "l2",
                                                              id_mode=id_mode),
            transform_description=f"LSH{'' if nbits in (None, d) else nbits}"
                                  f"{m.group(2)}{m.group(3)}")
    found = _codec(head, d, dtype)
    if found is None or len(tokens) != 1 or head == "Flat":
        return None
    codec, _ = found
    return IVFIndex.create(d, 1, codec, metric=metric, id_mode=id_mode, by_residual=False,
                           description=head)


_GRAPH_RE = re.compile(r"(B?)(?:HNSW(\d+)|CAGRA(\d+)(?:_(\d+))?)")
_BINARY_RE = re.compile(r"BFlat|BIVF(\d+)|BHash(\d+)|B(?:HNSW|CAGRA)[\d_]+")


def _graph_index(d, tokens, description, metric, id_mode, dtype):
    """HNSW<M> / CAGRA<R>[_<K>] (optionally followed by a codes token), B-prefixed for
    binary; None when tokens[0] is not a graph. FAISS's HNSW<M>_<codes> ("HNSW32_PQ16",
    "HNSW32_SQ8": IndexHNSWPQ / SQ, as "HNSW32,PQ16") is read as HNSW<M>,<codes>."""
    if len(tokens) == 1 and (joined := re.fullmatch(r"(HNSW\d+)_(.+)", tokens[0])):
        tokens = list(joined.groups())
    m = _GRAPH_RE.fullmatch(tokens[0])
    if m is None:
        return None
    binary = bool(m.group(1))
    if m.group(2):
        degree, inter = 2 * int(m.group(2)), 3 * int(m.group(2))
    else:
        degree = int(m.group(3))
        inter = int(m.group(4)) if m.group(4) else 2 * degree
    if degree < 1 or inter < degree:
        _fail(description, "the graph needs degree >= 1 and intermediate >= degree")
    codec, name = None, tokens[0]
    if len(tokens) > 2 or (binary and len(tokens) > 1):
        _fail(description, f"{tokens[0]} takes at most one codes component (none if binary)")
    if len(tokens) == 2:
        found = _codec(tokens[1], d, dtype)
        if found is None:
            _fail(description, f"unknown codes {tokens[1]!r}")
        codec, name = found[0], ",".join(tokens)
    elif not binary and dtype != "float32":
        codec = _codec("Flat", d, dtype)[0]
    if binary:
        _check_bits(d, description)
    return GraphIndex.create(d, degree, inter, codec, metric=metric, id_mode=id_mode,
                             binary=binary, description=name)


def _check_bits(bits: int, description: str):
    if bits % 8:
        _fail(description, f"binary indexes need d (bits) to be a multiple of 8, got {bits}")


def _binary_index(d, tokens, description, id_mode):
    if len(tokens) != 1 or not _BINARY_RE.fullmatch(tokens[0]):
        return None
    _check_bits(d, description)
    head = tokens[0]
    if head == "BFlat":
        return binary.BinaryFlat.create(d, id_mode=id_mode)
    if m := re.fullmatch(r"BIVF(\d+)", head):
        return binary.BinaryIVF.create(d, int(m.group(1)), id_mode=id_mode)
    if m := re.fullmatch(r"BHash(\d+)", head):
        return binary.BinaryIVF.create(d, hash_bits=int(m.group(1)), id_mode=id_mode)
    return _graph_index(d, tokens, description, "l2", id_mode, "float32")


def _main_index(d, tokens, description, metric, metric_arg, id_mode, dtype):
    if (index := _binary_index(d, tokens, description, id_mode)) is not None:
        return index
    flat = re.fullmatch(r"Flat(?:\((float32|float16|bfloat16)\))?", tokens[0])
    if flat and len(tokens) == 1:
        return FlatIndex.create(d, metric, metric_arg=metric_arg,
                               dtype=dtype or flat.group(1) or "float32", id_mode=id_mode)
    if metric not in ("l2", "ip", "cosine"):
        _fail(description, f"metric {metric!r} is supported by Flat only")
    index = _graph_index(d, tokens, description, metric, id_mode, dtype or "float32")
    if index is None:
        index = _coded_index(d, tokens, description, metric, id_mode, dtype or "float32")
    if index is None:
        _fail(description, f"unknown component {tokens[0]!r}")
    return index


def index_factory(d: int, description: str, metric: str = "l2", *, metric_arg: float = 2.0,
                  dtype: str | None = None, k_factor: float = 1.0):
    """The index that `description` names, for vectors of dimension d (untrained).

    dtype: storage of Flat / IVF-Flat vectors ("float32", "float16", "bfloat16").
    k_factor: default re-ranking depth of a refine stage (also a search parameter).
    """
    if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
        raise InvalidInputError(f"d must be a positive int, got {d!r}")
    if not isinstance(description, str) or not description.strip():
        raise FactoryStringError(f"the factory string must be a non-empty str, got "
                                 f"{description!r}\n{GRAMMAR}")
    metric = canonical_metric(metric)
    if dtype is not None and dtype not in STORAGE_DTYPES:
        raise InvalidInputError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
    if metric == "lp" and not metric_arg > 0:
        raise InvalidInputError(f"the lp metric needs metric_arg = p > 0, got {metric_arg}")
    # Sizes past any real index (nlist, M, bits, dimensions) are refused here, before an
    # array of that size is asked for.
    for number in re.findall(r"\d+", description):
        if int(number) > MAX_FACTORY_NUMBER:
            _fail(description, f"{number} is larger than any size jann allocates "
                               f"(at most {MAX_FACTORY_NUMBER})")
    tokens = _split(description)
    if any(not t for t in tokens):
        _fail(description, "empty component")
    id_mode = "sequential"
    if tokens[0] in ("IDMap", "IDMap2"):
        id_mode = tokens.pop(0).lower()
    refine = None
    if tokens and (tokens[-1] == "RFlat" or re.fullmatch(r"Refine\((.+)\)", tokens[-1])):
        refine = tokens.pop()
    transforms, d_in = [], d
    while tokens and (found := _transform(tokens[0], d_in)) is not None:
        transforms.append((tokens.pop(0), found[0]))
        d_in = found[1]
    if not tokens:
        _fail(description, "no index component")
    if _BINARY_RE.fullmatch(tokens[-1]) and len(tokens) > 1 or transforms and \
            _BINARY_RE.fullmatch(tokens[0]):
        tokens, d_in = _binarizer(tokens, transforms, d_in, description)
    index = _main_index(d_in, tokens, description, metric, metric_arg, id_mode, dtype)
    if transforms:
        chain = transforms[0][1] if len(transforms) == 1 else Chain.create(
            *[t for _, t in transforms])
        index = PreTransformIndex(transform=chain, index=index,
                                  transform_description=",".join(n for n, _ in transforms if n))
    if refine is not None:
        index = _refined(d, index, refine, metric, k_factor)
    return index


def _binarizer(tokens, transforms, d_in, description):
    """Float -> bits in front of a binary index: an LSH token, or the sign of the last
    transform's output (appended to `transforms`); returns (tokens left, bits)."""
    if len(tokens) == 2:
        m = re.fullmatch(r"LSH(\d*)(r?)(t?)", tokens[0])
        if m is None:
            _fail(description, f"{tokens[0]!r} cannot feed the binary index {tokens[1]!r}")
        nbits = int(m.group(1)) if m.group(1) else d_in
        t = LSHTransform.create(d_in, nbits, rotate=bool(m.group(2)),
                                train_thresholds=bool(m.group(3)))
        transforms.append((tokens[0], t))
        tokens = tokens[1:]
    elif len(tokens) == 1:
        transforms.append(("", LSHTransform.create(d_in, d_in)))
    else:
        _fail(description, "a binary index takes one float -> binary component before it")
    bits = transforms[-1][1].nbits
    _check_bits(bits, description)
    return tokens, bits


def _refined(d, base, token, metric, k_factor):
    """Wrap base in a RefineIndex; the refine index always stores the base's ids."""
    if token == "RFlat":
        refine = FlatIndex.create(d, metric, id_mode="idmap")
    else:
        inner = re.fullmatch(r"Refine\((.+)\)", token).group(1)
        refine = index_factory(d, "IDMap," + inner, metric)
    return RefineIndex(base=base, refine=refine, k_factor=float(k_factor),
                       refine_description=token)

"""FAISS index files read and written without faiss: `jann.read_faiss(path_or_bytes)`,
`jann.write_faiss(index, path=None)`. format.py holds the shared numbers, wire.py the
field codec, reading.py and writing.py one direction each, hnsw.py the graph both ways.

FAISS writes an index as its class's fields in order, each object behind a four-byte
code naming its class (faiss/impl/index_read.cpp is the reference). Read and written:
IndexFlatL2 / IndexFlatIP ("IxF2" / "IxFI"), IndexIDMap / IndexIDMap2 ("IxMp" / "IxM2")
around them or another class, IndexIVFFlat ("IwFl"), IndexIVFPQ with 8- or 4-bit
codes ("IwPQ"), IndexIVFScalarQuantizer ("IwSq", every jann SQ type), IndexScalarQuantizer
("IxSQ"), IndexPQ ("IxPq", 8- or 4-bit), IndexRefineFlat ("IxRF") over any of them
and IndexPreTransform ("IxPT") around them, its linear transforms (PCAMatrix "Pcam" /
"PcAm" / "PCAm", RandomRotationMatrix "rrot", LinearTransform "LTra" as OPQ is stored,
ITQMatrix "Viqm", CenteringTransform "VCnt") read as `jann.LinearTransform`s, its
NormalizationTransform ("VNrm", L2 only: "L2norm") and RemapDimensionsTransform ("RmDT":
"Pad<d>") as jann's (`jann.fixed_transforms`), and
IndexBinaryFlat / IndexBinaryIVF ("IBxF" / "IBwF", with IndexBinaryIDMap / IDMap2 "IBMp"
/ "IBM2") and IndexHNSWFlat ("IHNf", see hnsw.py), with array inverted lists ("ilar").
Codes
are kept as they are (jann's SQ and PQ code as FAISS does), so search results match.
Reading: any other class raises `FileFormatError` naming it, and every size field is
checked against the bytes left before anything is allocated, so a truncated or tampered
file fails cleanly. Writing: jann's indexes of those kinds (a one-list coded index is an
IndexPQ / IndexScalarQuantizer, in an IDMap when its ids are not 0..n-1; an IDMap IVF is
a plain one, FAISS IVF storing any ids); anything else (cosine, which FAISS has no metric
for; RQ codes, PQ codes of other widths; ITQ transforms, a refine index other than Flat or
over ids other than 0..n-1, graphs over codes or with removed rows, BHash) raises
`InvalidInputError` naming what FAISS would not get.
"""

from jann.faiss_files.reading import read_faiss
from jann.faiss_files.writing import write_faiss

__all__ = ["read_faiss", "write_faiss"]

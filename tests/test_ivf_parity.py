"""IVF family and coded indexes: recall within a stated tolerance of faiss-cpu's with
the same factory string, training set and search parameters, on real data (a module of
its own so that the suite's two workers share the IVF tests evenly)."""

import dataclasses

import faiss
import jax
import pytest

import jann
import test_ivf
from test_ivf import K, recall

data = test_ivf.data  # the same fixture: the embedded rows, queries and exact neighbours


# faiss's Index2Layer cannot search; IVF with every list probed is the same computation.
FAISS_EQUIVALENT = {"Residual64,PQ14": ("IVF64,PQ14", {"nprobe": 64})}
# Training sets are kept small (and the same for both libraries) so the suite stays fast.
N_TRAIN = 5000
# OPQ rotation rounds, both libraries (default 50: 15 s of jann's and 25 s of faiss's
# training on one core). Recall@10 jann / faiss: 0.692 / 0.696 at 4, 0.711 / 0.704 at 10,
# 0.724 / 0.726 at 50.
OPQ_NITER = 4


def _faiss_recall(description, xt, xb, xq, gt, metric, params):
    description, extra = FAISS_EQUIVALENT.get(description, (description, {}))
    params = {**params, **extra}
    ref = faiss.index_factory(xb.shape[1], description,
                              faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
    # Polysemous training only renumbers the PQ centroids (for Hamming pre-filtering,
    # unused here): the same codebooks and ADC distances, so the same recall, and it was
    # 90% of FAISS's PQ training (IVF64,PQ28 on 5000 points: 45.7 s -> 3.0 s, 1 thread).
    inner = ref
    while isinstance(inner, (faiss.IndexPreTransform, faiss.IndexRefine)):
        inner = faiss.downcast_index(inner.index if isinstance(inner, faiss.IndexPreTransform)
                                     else inner.base_index)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False
    if description.startswith("OPQ"):
        faiss.downcast_VectorTransform(ref.chain.at(0)).niter = OPQ_NITER
    ref.train(xt)
    ref.add(xb)
    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(ref, name, value)
    return recall(ref.search(xq, K)[1], gt)


# (factory string, search params); nlist kept small so training is quick on 2 cores. The
# flat RQ4x8 index is left to test_rq.py (its codebooks' error against faiss-cpu's, on the
# same rows) and IVF32,RQ4x8 here (search over RQ codes): training both libraries' RQ
# again for it cost 22-44 s of the suite.
PARITY = [
    ("IVF64,Flat", {"nprobe": 4}),
    ("IVF64,SQ8", {"nprobe": 4}),
    ("IVF64,SQfp16", {"nprobe": 4}),
    ("IVF64,SQ4", {"nprobe": 8}),
    ("IVF64,PQ28", {"nprobe": 8}),
    ("IVF64,PQ28x4", {"nprobe": 8}),
    ("IVF64,PQ7x10", {"nprobe": 8}),  # two bytes per sub-code, scored by decoding
    ("IVF64,PQ14,RFlat", {"nprobe": 8, "k_factor": 4}),
    ("OPQ14_112,IVF64,PQ14", {"nprobe": 8}),
    ("PCA64,IVF64,Flat", {"nprobe": 4}),
    ("IVF64_HNSW8,Flat", {"nprobe": 8, "quantizer_ef": 8}),  # compiles shared with the next
    ("IVF32,RQ4x8", {"nprobe": 8}),
    ("PQ14", {}),
    ("SQ8", {}),
    ("Residual64,PQ14", {}),
    ("LSH", {}),
    ("LSHrt", {}),
    ("ITQ64,LSH", {}),
]


# FAISS's own RQ recall moves by 0.02 with its OpenMP thread count alone (its codebook
# k-means differs): IVF32,RQ4x8 0.533 on 1 thread, 0.513 on 2; RQ4x8 0.510 / 0.497.
# jann over keys 0..3: IVF32,RQ4x8 0.496-0.510. The stated tolerance covers that spread.
TOLERANCE = {"IVF32,RQ4x8": 0.035}


@pytest.mark.filterwarnings("ignore:.*training (points|vectors)")
@pytest.mark.parametrize("description,params", PARITY, ids=[p[0] for p in PARITY])
def test_recall_within_tolerance_of_faiss(description, params, data):
    xb, xq, gt = data
    xt = xb[:N_TRAIN]
    index = jann.index_factory(xb.shape[1], description)
    if description.startswith("OPQ"):
        index = dataclasses.replace(index, transform=index.transform.train(
            xt, key=jax.random.key(1), niter=OPQ_NITER))
    index = jann.add(jann.train(index, xt, key=jax.random.key(0)), xb)
    _, I = jann.search(index, xq, K, **params)
    ours = recall(I, gt)
    faiss_names = {"k_factor": "k_factor_rf", "quantizer_ef": "quantizer_efSearch"}
    faiss_params = {faiss_names.get(k, k): v for k, v in params.items()}
    theirs = _faiss_recall(description, xt, xb, xq, gt, "l2", faiss_params)
    tolerance = TOLERANCE.get(description, 0.02)
    assert ours >= theirs - tolerance, f"{description}: jann {ours:.3f} vs faiss {theirs:.3f}"

"""Vector codecs (train / encode / decode): identity, product, scalar and residual
quantizers, and the OPQ rotation trained with a PQ."""

from jann.ops.namespace import lazy_namespace

# Imported on first use (`jann.ops.namespace`): `from jann.quantizers.identity import ...`
# then loads the identity codec alone, not the product quantizer and its k-means.
_PUBLIC = {
    "jann.quantizers.identity": ("IdentityCodec",),
    "jann.quantizers.opq": ("OPQMatrix",),
    "jann.quantizers.pq": ("ProductQuantizer", "adc_lookup", "pack_codes", "unpack_codes"),
    "jann.quantizers.rq": ("ProductResidualQuantizer", "ResidualQuantizer"),
    "jann.quantizers.sq": ("QTYPES", "ScalarQuantizer"),
}
lazy_namespace(globals(), _PUBLIC)

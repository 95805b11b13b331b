"""Vector codecs (train / encode / decode): identity, product, scalar and residual
quantizers, and the OPQ rotation trained with a PQ."""

from jann.quantizers.identity import IdentityCodec
from jann.quantizers.opq import OPQMatrix
from jann.quantizers.pq import ProductQuantizer, adc_lookup, pack_codes, unpack_codes
from jann.quantizers.rq import ProductResidualQuantizer, ResidualQuantizer
from jann.quantizers.sq import QTYPES, ScalarQuantizer

__all__ = ["IdentityCodec", "OPQMatrix", "ProductQuantizer", "ProductResidualQuantizer",
           "QTYPES", "ResidualQuantizer", "ScalarQuantizer", "adc_lookup", "pack_codes",
           "unpack_codes"]

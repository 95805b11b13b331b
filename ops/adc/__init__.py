"""PQ asymmetric distance (ADC) top-k: the k best codes per query from look-up tables.

- `reference.py`: the definition (tables, metrics, empty results), `adc_lookup` and the
  oracle `adc_top_k_reference` (every code's sum, `lax.top_k`);
- `xla.py`: the streamed scan (`adc_top_k_xla`);
- `pallas.py`: the fused Pallas kernel (`adc_top_k_pallas`) and `load_sub_code`, the
  in-kernel reader of packed sub-codes;
- here: the choice between them (`adc_search`, `backend=`, see `jann.ops.backend`).
"""

from __future__ import annotations

from ..backend import choose
from .pallas import adc_top_k_pallas, load_sub_code
from .reference import adc_lookup, adc_top_k_reference
from .xla import adc_top_k_xla

__all__ = ["adc_lookup", "adc_search", "adc_top_k_pallas", "adc_top_k_reference",
           "adc_top_k_xla", "load_sub_code"]


def adc_search(tables, codes, k: int, nbits: int, metric: str = "l2", *, xb_valid=None,
               backend: str = "auto"):
    """k best PQ codes per query from look-up tables (`adc_top_k_pallas`'s contract) on
    the chosen backend."""
    def xla(tables, codes, xb_valid):
        return adc_top_k_xla(tables, codes, k, nbits, metric, xb_valid=xb_valid)

    def pallas(tables, codes, xb_valid, interpret):
        return adc_top_k_pallas(tables, codes, k, nbits, metric, xb_valid=xb_valid,
                                interpret=interpret)

    return choose("adc", backend, xla, pallas, tables, codes, xb_valid)

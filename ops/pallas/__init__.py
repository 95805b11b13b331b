"""Pallas kernels for the scans that dominate search: compiled with Triton when lowered for
CUDA, run by the Pallas interpreter elsewhere (tests). Each module holds the kernel, its
static config (`ScanConfig`), a traceable wrapper and names its pure-jnp oracle;
`jann.ops.dispatch` chooses between these and the XLA paths (`backend=`)."""

from .hamming import knn_hamming_pallas
from .ivf import ivf_scan_pallas, ivf_scan_reference
from .knn import knn_pallas
from .pq import adc_top_k_pallas, adc_top_k_xla
from .topk import ScanConfig

__all__ = ["ScanConfig", "adc_top_k_pallas", "adc_top_k_xla", "ivf_scan_pallas",
           "ivf_scan_reference", "knn_hamming_pallas", "knn_pallas"]

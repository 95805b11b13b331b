"""XLA compiler options of jann's own compiled search programs, chosen per index.

jax 0.10's XLA CPU compiler hands matrix products and reductions to YNNPACK
(`xla_cpu_experimental_ynn_fusion_type`; by default dots and reductions). The
reductions that sum product-code look-ups (M table entries per row, for many short
rows) ran slower there than in XLA's own fused loops, while dots and the reductions of
other scans ran faster. So an index that scores product codes
(`Index.search_compiler_options`) compiles its search and range search with YNNPACK
dots only. Measured (2 threads, jann.search QPS at 1 / 16 / 256 / 2000 queries per
call, default -> dots only):

- sift-textures IVF2048,PQ16, nprobe 11: 1.8k / 5.0k / 5.6k / 16.6k -> 1.9k / 5.1k /
  8.0k / 18.6k; debian-minilm IVF1024,PQ48, nprobe 6: 1.9k / 5.7k / 6.1k / 18.8k ->
  2.3k / 7.5k / 8.8k / 22.3k.
- Not for the others: IVF2048,SQ8 on sift-textures, 256 queries, 4.8k -> 3.9k;
  debian-minilm Flat 5.0k -> 4.6k; IVF-Flat within +-10%.

Compiler options apply to jann's own programs: inside a user's `jax.jit` the user's
program (and its options) includes jann's code. A jaxlib that does not know the option
compiles without it (`jit`).
"""

from __future__ import annotations

import jax

__all__ = ["PRODUCT_CODE_OPTIONS", "jit"]

YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
PRODUCT_CODE_OPTIONS = ((YNN_FUSION_TYPE, "LIBRARY_FUSION_TYPE_DOT"),)
# A flat-coded index ("PQ16": one list) searched by more queries per call than this
# keeps XLA's defaults: sift-textures PQ16, 2000 queries, 2.8k QPS with them, 2.2k
# without (1, 16 and 256 queries: 0.11k -> 0.39k, 0.50k -> 0.85k, 2.2k -> 2.5k).
PRODUCT_CODE_MAX_ONE_LIST_QUERIES = 256

# Options a jaxlib refused (its XLA has no such option or value): compiled without them.
_refused: set = set()


def jit(fun, **jit_kwargs):
    """`fun` compiled once per set of options: call(options, *args) runs the program
    compiled with `options` (a tuple of (name, value) pairs; () for XLA's defaults)."""
    compiled = {}

    def call(options, *args, **kwargs):
        options = () if options in _refused else tuple(options)
        if options not in compiled:
            compiled[options] = jax.jit(fun, compiler_options=dict(options) or None,
                                        **jit_kwargs)
        try:
            return compiled[options](*args, **kwargs)
        except jax.errors.JaxRuntimeError as e:
            if not any(name in str(e) for name, _ in options):
                raise
            _refused.add(options)
            return call((), *args, **kwargs)

    call.compiled = compiled
    return call

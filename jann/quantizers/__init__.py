"""Vector codecs: product, scalar and residual quantizers (train / encode / decode)."""

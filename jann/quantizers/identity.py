"""The identity codec: vectors stored as they are (float32 / float16 / bfloat16).

It lets IVF-Flat and the coded indexes share one storage and scan path: every codec
turns stored rows back into float32 vectors with `decode`, and this one only casts.
"""

from __future__ import annotations

import jax.numpy as jnp

from jann._pytree import pytree_dataclass, static
from jann.ops.ivf_scan import KernelDecode

STORAGE_DTYPES = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}


@pytree_dataclass
class IdentityCodec:
    """Stores vectors in `dtype`; no training."""

    d: int = static()
    dtype: str = static("float32", choices=STORAGE_DTYPES)
    is_trained = True

    @classmethod
    def create(cls, d: int, dtype: str = "float32") -> "IdentityCodec":
        return cls(d=d, dtype=dtype)

    @property
    def code_size(self) -> int:
        return self.d * jnp.dtype(STORAGE_DTYPES[self.dtype]).itemsize

    def train(self, x, *, key=None):
        return self

    def encode(self, x):
        return jnp.asarray(x).astype(STORAGE_DTYPES[self.dtype])

    def decode(self, codes):
        return codes.astype(jnp.float32)

    def kernel_decode(self) -> KernelDecode:
        """How the IVF list-scan kernel reads these rows (`jann.ops.ivf_scan`): as floats."""
        return KernelDecode("float")

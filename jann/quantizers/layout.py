"""What one encoded row looks like, for the indexes that size their storage by a codec
before it is trained (IVF lists, graph payloads)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["encoded_row"]


def encoded_row(codec, d: int) -> jax.ShapeDtypeStruct:
    """Shape and dtype of one encoded row (1, ...), without training the codec."""
    fields = {f.name for f in dataclasses.fields(codec)}
    shaped = dataclasses.replace(codec, is_trained=True) if "is_trained" in fields else codec
    return jax.eval_shape(shaped.encode, jax.ShapeDtypeStruct((1, d), jnp.float32))

"""Registering jann's dataclasses (indexes, codecs, transforms) as pytrees.

Array fields are leaves; the rest is static configuration. The registry lets checkpoints
store any registered object, nested ones included, and rebuild it without pickle.
"""

from __future__ import annotations

import jax

PYTREE_TYPES: dict[str, type] = {}


def pytree_dataclass(data: tuple[str, ...], meta: tuple[str, ...]):
    """Class decorator for a frozen dataclass: register it as a pytree with `data` fields
    as leaves (arrays or other registered objects, or None) and `meta` fields static
    (str / int / float / bool / tuples of them), and remember it by class name."""

    def register(cls):
        cls.DATA_FIELDS = tuple(data)
        cls.META_FIELDS = tuple(meta)
        jax.tree_util.register_dataclass(cls, data_fields=list(data), meta_fields=list(meta))
        if PYTREE_TYPES.get(cls.__name__, cls) is not cls:
            raise TypeError(f"two pytree dataclasses named {cls.__name__}")
        PYTREE_TYPES[cls.__name__] = cls
        return cls

    return register

"""Registering index dataclasses as pytrees (array fields are leaves, the rest static)."""

from __future__ import annotations

import jax

INDEX_TYPES: dict[str, type] = {}


def index_pytree(data: tuple[str, ...], meta: tuple[str, ...]):
    """Class decorator: register a frozen dataclass index as a pytree and remember its
    field split (checkpoints use it to know what to store as arrays vs configuration)."""

    def register(cls):
        cls.DATA_FIELDS = tuple(data)
        cls.META_FIELDS = tuple(meta)
        jax.tree_util.register_dataclass(cls, data_fields=list(data), meta_fields=list(meta))
        INDEX_TYPES[cls.__name__] = cls
        return cls

    return register

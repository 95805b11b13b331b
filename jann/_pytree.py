"""Registering jann's dataclasses (indexes, codecs, transforms) as pytrees.

A class is declared once: its fields are leaves (arrays, other registered objects, or
None) unless marked `static(...)`, which makes them configuration (str / int / float /
bool / tuples of them) kept in the treedef, so changing one selects another compiled
program. `jax.tree_util.register_dataclass` reads the mark. The registry lets
checkpoints store any registered object, nested ones included, and rebuild it without
pickle.
"""

from __future__ import annotations

import dataclasses

import jax

PYTREE_TYPES: dict[str, type] = {}


def static(default=dataclasses.MISSING, **kwargs):
    """A static (configuration) field of a `pytree_dataclass`."""
    return dataclasses.field(default=default, metadata={"static": True}, **kwargs)


def pytree_dataclass(cls=None, *, data=None, meta=None):
    """Make `cls` a frozen dataclass registered as a pytree (fields marked `static` are
    metadata, the others leaves), and remember it by class name."""
    if cls is None:  # the older form naming the fields: @pytree_dataclass(data=..., meta=...)
        def register_named(c):
            jax.tree_util.register_dataclass(c, data_fields=list(data), meta_fields=list(meta))
            return _remember(c, tuple(data), tuple(meta))
        return register_named
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    meta_fields = tuple(f.name for f in fields if f.metadata.get("static", False))
    data_fields = tuple(f.name for f in fields if f.name not in meta_fields)
    jax.tree_util.register_dataclass(cls, data_fields=list(data_fields),
                                     meta_fields=list(meta_fields))
    return _remember(cls, data_fields, meta_fields)


def _remember(cls, data_fields, meta_fields):
    cls.DATA_FIELDS, cls.META_FIELDS = data_fields, meta_fields
    if PYTREE_TYPES.get(cls.__name__, cls) is not cls:
        raise TypeError(f"two pytree dataclasses named {cls.__name__}")
    PYTREE_TYPES[cls.__name__] = cls
    return cls

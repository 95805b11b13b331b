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
import math

import jax

PYTREE_TYPES: dict[str, type] = {}


def static(default=dataclasses.MISSING, *, choices=None, **kwargs):
    """A static (configuration) field of a `pytree_dataclass`; `choices`, when given, are
    the only values it takes (checked when a checkpoint restores it, `meta_problem`)."""
    metadata = {"static": True}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


# The annotations of static fields a restored value is checked against (others, such as
# a Mesh, are not stored in checkpoints).
_CHECKED_TYPES = frozenset({"bool", "int", "float", "str", "None"})


def _admitted(value, kinds: list[str]) -> bool:
    """Whether value is of one of the annotated kinds: bool; int >= 0; a finite float (or
    an int) for float; str; None."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return type(value).__name__.replace("NoneType", "None") in kinds
    if isinstance(value, int):
        return ("int" in kinds and value >= 0) or "float" in kinds
    return isinstance(value, float) and "float" in kinds and math.isfinite(value)


def meta_problem(cls, meta: dict) -> str | None:
    """What is wrong with static field values restored for `cls` (a checkpoint's
    metadata, which no constructor checks), or None: each must be a declared static
    field, of its annotated type (`_admitted`), and one of the field's `choices` when it
    has them."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("static")}
    for name, value in meta.items():
        field = fields.get(name)
        if field is None:
            return f"{name!r} is not a configuration field of {cls.__name__}"
        kinds = [t.strip() for t in str(field.type).split("|")]
        if set(kinds) <= _CHECKED_TYPES and not _admitted(value, kinds):
            return f"{name}={value!r} is not a valid {field.type}"
        choices = field.metadata.get("choices")
        if choices is not None and value not in choices:
            return f"{name}={value!r} is not one of {', '.join(map(repr, choices))}"
    return None


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

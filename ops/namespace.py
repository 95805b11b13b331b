"""Packages whose public names are imported on first use (PEP 562 module `__getattr__`).

`import jann` and `import jann.ops` then import no jax: `jann.client` (standard library
and numpy only) and the error classes load in milliseconds. The first access of a name
the package does not hold yet (`jann.search`, `from jann import add`) imports every public
name at once, as an eager `__init__` would have; other submodules import alone.
"""

from __future__ import annotations

import importlib
import importlib.util

__all__ = ["lazy_namespace"]


def lazy_namespace(namespace: dict, public: dict[str, tuple[str, ...]],
                   submodules: tuple[str, ...] = ()) -> None:
    """Give the package whose globals are `namespace` a `__getattr__` that, on the first
    missing name, imports its `submodules` and the `public` names ({module: names}), a
    `__dir__` listing them, and `__all__`: those names."""
    state = {"loading": False, "loaded": False}
    package = namespace["__name__"]

    def load() -> dict:
        names = {name: importlib.import_module(f"{package}.{name}") for name in submodules}
        for module, module_names in public.items():
            module = importlib.import_module(module, package)
            names.update({name: getattr(module, name) for name in module_names})
        return names

    public_names = {name for names in public.values() for name in names} | set(submodules)
    namespace["__all__"] = sorted(public_names)

    def __getattr__(name: str):
        if name in public_names and not (state["loading"] or state["loaded"]):
            state["loading"] = True
            try:
                namespace.update(load())
                state["loaded"] = True
            finally:
                state["loading"] = False
            return namespace[name]
        # Any other submodule (`from jann import _storage` inside jann) imports alone,
        # not with every public name (which would import it in a cycle).
        if not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}"):
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    namespace["__getattr__"] = __getattr__
    namespace["__dir__"] = __dir__

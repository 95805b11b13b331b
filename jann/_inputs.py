"""Turning user inputs into validated arrays, with errors that name the problem.

Accepts numpy arrays, jax arrays, anything that speaks dlpack (torch tensors, cupy, ...)
and nested sequences. Values (NaN, ranges) are checked only where they are concrete: under
a user's `jax.jit` the arrays are tracers and the indexes fall back to the documented
in-graph behaviour (flags in `index.status`, rows with no results).
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from jann.errors import InvalidDtypeError, InvalidInputError


def id_dtype() -> np.dtype:
    """Dtype of ids: int64 when `jax_enable_x64` is on, else int32 (JAX's default width).

    FAISS uses int64 everywhere; with x64 off jann stores int32 ids and refuses ids that do
    not fit, rather than truncating them.
    """
    return np.dtype(np.int64) if jax.config.jax_enable_x64 else np.dtype(np.int32)


def outside_id_range(ids: np.ndarray, dtype) -> np.ndarray:
    """Mask of the (host, integer) ids that `dtype` cannot hold: cast, they would wrap
    onto other ids."""
    info = np.iinfo(np.dtype(dtype))
    if np.issubdtype(ids.dtype, np.unsignedinteger):
        return ids > info.max
    return (ids < info.min) | (ids > info.max)


def is_traced(*trees) -> bool:
    """True when any leaf is a tracer (we are inside jit / vmap / grad)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def as_array(x, name: str):
    """x as a numpy or jax array (zero-copy where the source allows)."""
    if isinstance(x, (np.ndarray, jax.Array)):
        return x
    if hasattr(x, "__dlpack__"):
        try:
            return jnp.from_dlpack(x)
        except Exception as exc:  # e.g. a GPU tensor on a CPU-only jax
            raise InvalidInputError(f"{name}: cannot import via dlpack: {exc}") from exc
    try:
        return np.asarray(x)
    except Exception as exc:
        raise InvalidInputError(f"{name}: cannot convert {type(x).__name__} to an array") from exc


def check_code_bits(d_bits) -> int:
    """d_bits as the size of a binary code: an int > 0, a multiple of 8 (whole bytes)."""
    if isinstance(d_bits, bool) or not isinstance(d_bits, (int, np.integer)) or d_bits <= 0 \
            or d_bits % 8:
        raise InvalidInputError(f"binary indexes need d (bits) > 0 and a multiple of 8, "
                                f"got {d_bits!r}")
    return int(d_bits)


def as_binary_codes(x, d_bits: int, name: str):
    """x as (n, d_bits / 8) packed uint8 codes (the binary indexes' input), or a clear
    error naming what is wrong."""
    x = as_array(x, name)
    if x.ndim != 2:
        raise InvalidInputError(f"{name} must be a 2-D array (n, code_size) of packed bits, "
                                f"got shape {tuple(x.shape)}")
    if x.dtype != np.uint8:
        raise InvalidDtypeError(
            f"{name} must be uint8 packed binary codes (jann.pack_bits), got dtype {x.dtype}")
    if x.shape[1] * 8 != d_bits:
        raise InvalidInputError(f"{name} has {x.shape[1]} bytes per code ({x.shape[1] * 8} "
                                f"bits), the index has d={d_bits} bits")
    return x


def _check_numeric(dtype, name: str):
    # jnp.issubdtype knows bfloat16 (an ml_dtypes type numpy does not call floating)
    if not (jnp.issubdtype(dtype, jnp.floating) or np.issubdtype(dtype, np.integer)) or \
            np.issubdtype(dtype, np.bool_):
        raise InvalidDtypeError(
            f"{name} must hold real numbers (float or integer dtype), got dtype {dtype}")


def as_vectors(x, d: int | None, name: str = "x"):
    """A (n, d) float array (float32 unless it already is fp16/bf16/fp32), validated."""
    x = as_array(x, name)
    if x.ndim != 2:
        raise InvalidInputError(
            f"{name} must be a 2-D array (n, d), got shape {tuple(x.shape)}"
            + ("; use x[None, :] for a single vector" if x.ndim == 1 else ""))
    _check_numeric(x.dtype, name)
    if d is not None and x.shape[1] != d:
        raise InvalidInputError(f"{name} has dimension {x.shape[1]}, the index has d={d}")
    if x.dtype not in (jnp.float32, jnp.float16, jnp.bfloat16):
        x = x.astype(np.float32) if isinstance(x, np.ndarray) else x.astype(jnp.float32)
    return x


def check_finite(x, name: str, allow_nan: bool = False):
    """Raise when concrete x holds inf (or NaN unless allowed); no-op on tracers."""
    if is_traced(x):
        return
    if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
        # Spread over devices (maybe over hosts): check where it lies, never gather it.
        row = int(_first_bad_row(x, allow_nan))
    else:
        row = _first_bad_host_row(np.asarray(x), allow_nan)
    if row >= 0:
        what = "inf" if allow_nan else "NaN or inf"
        raise InvalidInputError(f"{name} contains {what} (first in row {row})")


def _first_bad_host_row(a: np.ndarray, allow_nan: bool, rows_per_chunk: int = 1 << 16) -> int:
    """First row holding inf (or NaN), -1 if none; in chunks, so the temporary mask stays
    small for a large training set."""
    for start in range(0, a.shape[0], rows_per_chunk):
        chunk = np.asarray(a[start:start + rows_per_chunk], dtype=np.float32)
        bad = np.isinf(chunk) if allow_nan else ~np.isfinite(chunk)
        if bad.any():
            return start + int(np.argwhere(bad)[0][0])
    return -1


@functools.partial(jax.jit, static_argnames=("allow_nan",))
def _first_bad_row(x, allow_nan):
    bad = jnp.isinf(x) if allow_nan else ~jnp.isfinite(x)
    bad = jnp.any(bad.reshape(x.shape[0], -1), axis=1)
    return jnp.where(jnp.any(bad), jnp.argmax(bad), -1)


def as_ids(ids, n: int, name: str = "ids"):
    """User ids as a (n,) array of the id dtype; refuses floats, negatives, overflow."""
    ids = as_array(ids, name)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise InvalidInputError(f"{name} must have shape ({n},), got {tuple(ids.shape)}")
    if not np.issubdtype(ids.dtype, np.integer) or np.issubdtype(ids.dtype, np.bool_):
        raise InvalidDtypeError(f"{name} must be integers, got dtype {ids.dtype}")
    target = id_dtype()
    if is_traced(ids):
        return ids.astype(target)
    a = np.asarray(ids)
    if n and (a.min() < 0 or a.max() >= np.iinfo(target).max):
        raise InvalidInputError(
            f"{name} must lie in [0, {np.iinfo(target).max}) (id dtype {target}"
            + ("; enable jax_enable_x64 for int64 ids" if target == np.int32 else "") + ")")
    return a.astype(target)


def delegated_search_params(inner, description: str, params: dict) -> dict:
    """Search parameters checked by the index `inner` that a wrapper delegates to; an
    index without any refuses every parameter, naming the wrapper."""
    if params and not search_param_names(inner):
        raise InvalidInputError(
            f"{description} takes no search parameters, got {sorted(params)}")
    return inner.check_search_params(**params)


def search_param_names(index) -> list[str]:
    """The search parameters an index accepts (its `check_search_params` keywords, and
    those of the index it delegates to when it takes **params)."""
    names, delegates = _own_search_params(type(index))
    if delegates and index.inner is not None:
        return list(names) + search_param_names(index.inner)
    return list(names)


@functools.lru_cache(maxsize=None)
def _own_search_params(index_type) -> tuple[list[str], bool]:
    # per class: inspect.signature took ~0.1 ms, a tenth of a one-query IVF search
    names, delegates = [], False
    for param in inspect.signature(index_type.check_search_params).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            delegates = True
        elif param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and \
                param.name != "self":
            names.append(param.name)
    return tuple(names), delegates


def split_search_params(params: dict):
    """(static, dynamic) search parameters: plain Python values (a graph's ef, RFlat's
    k_factor) select a compiled program; arrays (IVF's exact nprobe inside its bucket)
    are traced arguments, so changing them does not recompile."""
    dynamic = {k: v for k, v in params.items() if isinstance(v, (jax.Array, np.ndarray))}
    return {k: v for k, v in params.items() if k not in dynamic}, dynamic

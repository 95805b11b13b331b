"""Exceptions raised by jann (defined here, in the lowest layer, so `jann.ops` can raise
them without importing `jann`; `jann.errors` re-exports them).

Every error a user can cause is a `JannError`, so `except jann.JannError` catches all of
them; each also derives from the builtin a Python user would reach for first
(`ValueError`, `TypeError`, `KeyError`), so generic handlers keep working.
"""


class JannError(Exception):
    """Base class of every exception jann raises on purpose."""


class InvalidInputError(JannError, ValueError):
    """An argument has the wrong shape, dimension, value range, or contains NaN / inf."""


class InvalidDtypeError(JannError, TypeError):
    """An argument has a dtype jann cannot use (e.g. strings, complex, float ids)."""


class UnknownMetricError(JannError, ValueError):
    """A metric name jann does not know."""


class FactoryStringError(JannError, ValueError):
    """An `index_factory` string jann cannot parse; the message lists the grammar."""


class UnsupportedBackendError(JannError, RuntimeError):
    """The backend asked for cannot run on the attached devices (e.g. Pallas on a GPU
    older than Ampere)."""


class NotTrainedError(JannError, RuntimeError):
    """`add` or `search` on an index that needs `train` first."""


class DuplicateIdError(JannError, ValueError):
    """Ids added to an index that requires unique ids are already present or repeated."""


class IdNotFoundError(JannError, KeyError):
    """`reconstruct` of an id the index does not hold."""


class CapacityOverflowError(JannError, RuntimeError):
    """An `add` traced inside `jax.jit` did not fit the index's static capacity.

    Inside jit the index cannot grow (its shapes are static), so the add is refused, the
    index keeps its previous contents, and the flag `index.status` records why;
    `jann.check(index)` turns the flag into this exception. Call `jann.reserve` before
    jitting to give the index room.
    """


class CheckpointError(JannError, ValueError):
    """A path or byte string that is not a readable jann checkpoint (missing, truncated,
    tampered with, or written by a newer format version)."""


class FileFormatError(JannError, ValueError):
    """A vector file (fvecs / bvecs / ivecs / HDF5 / npy) that does not follow its format."""

"""Exceptions raised by jann; see `jann.ops.errors` for where they are defined and why."""

from jann.ops.errors import (  # noqa: F401  (re-exported)
    CapacityOverflowError,
    CheckpointError,
    DuplicateIdError,
    FactoryStringError,
    FileFormatError,
    IdNotFoundError,
    InvalidDtypeError,
    InvalidInputError,
    JannError,
    NotTrainedError,
    UnknownMetricError,
    UnsupportedBackendError,
)

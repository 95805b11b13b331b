"""Settings of `jann serve`: ServeConfig, the CLI flags of the same names, and its defaults."""

from __future__ import annotations

import dataclasses

from jann.batching import QUERY_BUCKETS, query_buckets
from jann.errors import InvalidInputError
from jann.ops.topk import check_k
from jann.serve.requests import check_params

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BODY_BYTES = 64 << 20
DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_MAX_BATCH = 1024
DEFAULT_MAX_K = 1024
DEFAULT_MAX_QUERIES = 16384


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Settings of `jann serve` (the CLI flags of the same names)."""

    checkpoint: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_batch: int = DEFAULT_MAX_BATCH
    batching: bool = True
    warm_k: tuple[int, ...] = (10,)
    warm_params: tuple[tuple[str, object], ...] = ()
    max_k: int = DEFAULT_MAX_K
    max_queries: int = DEFAULT_MAX_QUERIES

    def __post_init__(self):
        if self.max_batch not in QUERY_BUCKETS:
            raise InvalidInputError(
                f"max_batch must be one of jann's query buckets {QUERY_BUCKETS}, got "
                f"{self.max_batch}")
        if not 0 <= self.port <= 65535:
            raise InvalidInputError(f"port must be in [0, 65535], got {self.port}")
        if self.max_wait_ms < 0:
            raise InvalidInputError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        for name in ("max_body_bytes", "max_k", "max_queries"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be positive, got {getattr(self, name)}")
        for k in self.warm_k:
            check_k(k)
            if k > self.max_k:
                raise InvalidInputError(f"warm k={k} is above max_k={self.max_k}")
        check_params(dict(self.warm_params))

    @property
    def buckets(self) -> tuple[int, ...]:
        """The query buckets a search of at most `max_batch` rows can use."""
        return tuple(b for b in QUERY_BUCKETS if b <= self.max_batch)

    def buckets_of(self, index) -> tuple[int, ...]:
        """The query buckets a search of this index of at most `max_batch` rows uses."""
        return tuple(b for b in query_buckets(index) if b <= self.max_batch)

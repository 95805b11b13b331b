"""Starting `jann serve`: load the checkpoint and replay its log into a SearchService,
bind the socket, and run uvicorn until interrupted."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys

import uvicorn

import jann
from jann.checkpoint import current_version
from jann.errors import InvalidInputError
from jann.serve.app import create_app
from jann.serve.config import ServeConfig
from jann.serve.service import SearchService
from jann.serve.write_log import WriteLog



def load_service(config: ServeConfig) -> tuple[SearchService, dict]:
    """Load the latest checkpoint, replay its write-ahead log and warm the buckets."""
    path = os.path.abspath(config.checkpoint)
    config = dataclasses.replace(config, checkpoint=path)
    index = jann.load(path)                       # raises CheckpointError if not complete
    version = current_version(path)
    log = WriteLog(path, version)
    index, replayed = log.replay(index)
    service = SearchService(index, config, version, log)
    seconds = service.warm(index)
    service.grow_ahead(index)
    return service, {"checkpoint_version": version, "replayed": replayed, "warm_s": seconds}


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidInputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                                ) from None
    return sock


def run(config: ServeConfig) -> int:
    """Serve until interrupted (SIGINT / SIGTERM); returns the exit code."""
    sock = _bind(config.host, config.port)        # fail fast, before loading and compiling
    with sock:
        service, info = load_service(config)
        state = service.current
        print(f"jann serve: {state.index.describe()} index, {state.ntotal} vectors, "
              f"d={service.d}, checkpoint {info['checkpoint_version']} + {info['replayed']} "
              f"logged writes; warmed buckets {list(config.buckets_of(state.index))} x k "
              f"{list(config.warm_k)} in {info['warm_s']:.1f} s", flush=True)
        if config.token is None and config.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"jann serve: warning: listening on {config.host} without a token: anyone "
                  "who can connect can add, remove and snapshot", file=sys.stderr, flush=True)
        sock.listen(2048)             # connections wait in the backlog until uvicorn runs
        host, port = sock.getsockname()[:2]
        server = uvicorn.Server(uvicorn.Config(
            create_app(service), log_level="warning", access_log=False,
            timeout_keep_alive=30, lifespan="on"))
        shown = f"[{host}]" if ":" in host else host
        print(f"jann serve: listening on http://{shown}:{port}", flush=True)
        server.run(sockets=[sock])
    return 0

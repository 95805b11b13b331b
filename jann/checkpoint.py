"""Checkpoints: `save` / `load` (Orbax for the arrays), `serialize` / `deserialize` (bytes).

An index is a dataclass pytree: its array fields go to storage, its static fields (and
the nesting of sub-indexes) to a small JSON document with a format version and a SHA-256
of every array, so a truncated or tampered checkpoint fails loudly instead of loading
wrong vectors. Nothing is pickled: loading untrusted data never runs code.

On disk a checkpoint is a directory:

    path/LATEST          name of the current version, replaced atomically (os.replace)
    path/v000007/        config.json + arrays/ (an Orbax checkpoint)

A save writes a new version next to the old one and only then swaps LATEST (a crash mid-save
leaves the previous checkpoint loadable); older versions are deleted after the swap.

A sharded index (`jann.shard`) is saved as its stacked per-shard arrays, straight from the
devices that hold them (every process of a multi-host job calls `save`; each writes its own
shards, process 0 publishes), with a SHA-256 per shard and a "placement" entry (format 2).
`load(path, mesh=...)` restores it onto a mesh of any size, each process reading only the
shards its devices need (see `jann.sharding`); `load(path)` without a mesh returns the
plain index with all the vectors (64-bit ids of a sharded one need jax_enable_x64).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import uuid

import jax
import jax.numpy as jnp
import numpy as np

from jann.errors import CheckpointError
from jann._inputs import outside_id_range
from jann._orbax import checkpointer, quiet_failed_read_leftovers
from jann._pytree import PYTREE_TYPES, meta_problem
from jann.index import Index

__all__ = ["save", "load", "serialize", "deserialize", "FORMAT_VERSION"]

FORMAT_VERSION = 2  # 2: sharded / replicated placement; plain indexes are still written as 1
_PLAIN_VERSION = 1
_FORMAT = "jann-index"
_MAGIC = b"JANNIDX\x00"
_LATEST = "LATEST"


def _is_registered(obj) -> bool:
    return PYTREE_TYPES.get(type(obj).__name__) is type(obj)


def _json_meta(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, tuple):
        return [_json_meta(v) for v in value]
    raise CheckpointError(f"cannot store static field value {value!r}")


def _hashable_meta(value):
    return tuple(_hashable_meta(v) for v in value) if isinstance(value, list) else value


def _to_state(index, prefix="", leaf=np.asarray):
    """(JSON tree, {array name: leaf(array)}) of an index, recursing into sub-indexes."""
    meta_names = set(type(index).META_FIELDS)
    tree = {"type": type(index).__name__, "module": type(index).__module__, "meta": {},
            "fields": {}}
    arrays = {}
    for f in dataclasses.fields(index):
        value = getattr(index, f.name)
        if f.name in meta_names:
            tree["meta"][f.name] = _json_meta(value)
        elif value is None:
            tree["fields"][f.name] = None
        elif _is_registered(value):
            sub_tree, sub_arrays = _to_state(value, f"{prefix}{f.name}.", leaf)
            tree["fields"][f.name] = sub_tree
            arrays.update(sub_arrays)
        else:
            name = prefix + f.name
            tree["fields"][f.name] = {"array": name}
            arrays[name] = leaf(value)
    return tree, arrays


def _from_state(tree, arrays):
    types = PYTREE_TYPES
    if not isinstance(tree, dict) or tree.get("type") not in types:
        module = tree.get("module") if isinstance(tree, dict) else None
        hint = "" if not module or module.startswith("jann") else \
            f" (defined in module {module!r}: import it before loading; jann serve --import)"
        raise CheckpointError(f"unknown index type in checkpoint: "
                              f"{tree.get('type') if isinstance(tree, dict) else tree!r}{hint}")
    kwargs = {k: _hashable_meta(v) for k, v in tree.get("meta", {}).items()}
    for name, spec in tree.get("fields", {}).items():
        if spec is None:
            kwargs[name] = None
        elif "array" in spec:
            kwargs[name] = _as_device_array(arrays[spec["array"]], spec["array"])
        else:
            kwargs[name] = _from_state(spec, arrays)
    cls = types[tree["type"]]
    # a type whose fields changed completes those an older checkpoint lacks
    kwargs = getattr(cls, "restored_fields", dict)(kwargs)
    problem = meta_problem(cls, {k: v for k, v in kwargs.items() if k in cls.META_FIELDS})
    if problem:
        raise CheckpointError(f"checkpoint metadata of {tree['type']}: {problem}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint does not match {tree['type']}: {exc}") from exc


def _as_device_array(a, name: str):
    """A stored array on the device, refused (never wrapped) when its 64-bit integers
    (ids saved under jax_enable_x64) do not fit the 32 bits this process gives them."""
    if isinstance(a, np.ndarray) and a.dtype.kind in "iu" and a.dtype.itemsize == 8 \
            and not jax.config.jax_enable_x64:
        if outside_id_range(a, np.int32 if a.dtype.kind == "i" else np.uint32).any():
            raise CheckpointError(
                f"array {name!r} holds 64-bit values (ids saved with jax_enable_x64) that do "
                "not fit 32 bits: load it with jax.config.update('jax_enable_x64', True)")
    return jnp.asarray(a)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _array_specs(arrays: dict) -> dict:
    return {name: {"dtype": a.dtype.name, "shape": list(a.shape), "sha256": _digest(a)}
            for name, a in arrays.items()}


def _config(index) -> tuple[dict, dict]:
    from jann import __version__
    if isinstance(index, Index) and int(np.asarray(index.status)):
        raise CheckpointError(
            "the index records a write refused inside jit (jann.check(index) says which); "
            "handle it, then jann.clear_status(index) before saving")
    if not _sharding().is_sharded(index):
        tree, arrays = _to_state(index)
        return {"format": _FORMAT, "version": _PLAIN_VERSION, "jann_version": __version__,
                "index": tree, "arrays": _array_specs(arrays)}, arrays
    placement = _sharding().placement(index)
    if placement["mode"] == "replicate":
        tree, arrays = _to_state(index.index)
        specs = _array_specs(arrays)
    else:  # the stacked shards stay on their devices: digests per shard, where they are
        tree, arrays = _to_state(index.index, leaf=lambda a: a)
        specs = {name: {"dtype": a.dtype.name, "shape": list(a.shape),
                        "sha256_shards": _shard_digests(a)} for name, a in arrays.items()}
    return {"format": _FORMAT, "version": FORMAT_VERSION, "jann_version": __version__,
            "index": tree, "arrays": specs, "placement": placement}, arrays


def _sharding():
    from jann import sharding  # late: jann.sharding imports the index modules
    return sharding


def _local_slices(a):
    """(s, a[s]) for the slices s of a stacked array that this process holds (each once)."""
    if isinstance(a, np.ndarray):
        yield from enumerate(a)
        return
    seen = set()
    for shard in a.addressable_shards:
        start = shard.index[0].start or 0
        if start not in seen:
            seen.add(start)
            yield from ((start + j, row) for j, row in enumerate(np.asarray(shard.data)))


def _shard_digests(a) -> list:
    """SHA-256 of each slice a[s], computed by the processes that hold them."""
    table = np.zeros((a.shape[0], 32), np.uint8)
    for s, part in _local_slices(a):
        table[s] = np.frombuffer(bytes.fromhex(_digest(part)), np.uint8)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        table = np.asarray(multihost_utils.process_allgather(table)).max(axis=0)
    return [bytes(row).hex() for row in table]


def _check_shards(arrays: dict, specs: dict, where: str) -> None:
    for name, a in arrays.items():
        spec = specs[name]
        if a.dtype.name != spec["dtype"] or list(a.shape) != spec["shape"]:
            raise CheckpointError(f"{where}: array {name!r} does not match its checksum "
                                  "(truncated or modified)")
        for s, part in _local_slices(a):
            if _digest(part) != spec["sha256_shards"][s]:
                raise CheckpointError(f"{where}: array {name!r} shard {s} does not match its "
                                      "checksum (truncated or modified)")


def _sealed(config: dict) -> dict:
    """config with a SHA-256 of its canonical JSON (the arrays carry their own): a flipped
    bit in the metadata is then a CheckpointError, not a KeyError or another index."""
    return {**config, "sha256": _config_digest(config)}


def _config_digest(config: dict) -> str:
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def _unsealed(config, where: str) -> dict:
    """config without its checksum, verified (older checkpoints have none)."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{where} is not a jann index checkpoint")
    config = dict(config)
    digest = config.pop("sha256", None)
    if digest is not None and digest != _config_digest(config):
        raise CheckpointError(f"{where}: the metadata does not match its checksum "
                              "(truncated or modified)")
    return config


def _check_config(config, where: str) -> None:
    if not isinstance(config, dict) or config.get("format") != _FORMAT:
        raise CheckpointError(f"{where} is not a jann index checkpoint")
    version = config.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} was written in checkpoint format {version!r}; this jann reads format "
            f"<= {FORMAT_VERSION}: upgrade jann")


def _verified(config, arrays, where: str):
    specs = config.get("arrays", {})
    for name, spec in specs.items():
        if name not in arrays:
            raise CheckpointError(f"{where}: array {name!r} is missing")
        a = arrays[name]
        if a.dtype.name != spec["dtype"] or list(a.shape) != spec["shape"] or \
                _digest(a) != spec["sha256"]:
            raise CheckpointError(f"{where}: array {name!r} does not match its checksum "
                                  "(truncated or modified)")
    try:
        return _from_state(config["index"], arrays)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{where}: the metadata does not describe an index ({exc!r})"
                              ) from exc


# --------------------------------------------------------------------------- bytes
def serialize(index) -> bytes:
    """The index as bytes: magic, format version, JSON header, raw little-endian arrays."""
    if _sharding().is_sharded(index):
        raise CheckpointError("serialize takes an index on one device: jann.unshard(index) "
                              "first, or jann.save(index, path) to keep the shards apart")
    config, arrays = _config(index)
    offset = 0
    for name, a in arrays.items():
        config["arrays"][name]["offset"] = offset
        offset += a.nbytes
    header = json.dumps(_sealed(config), sort_keys=True).encode()
    body = b"".join(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
                    for a in arrays.values())
    return _MAGIC + struct.pack("<IQ", FORMAT_VERSION, len(header)) + header + body


def deserialize(data: bytes):
    """Inverse of `serialize`; raises CheckpointError on anything malformed."""
    where = "serialized index"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CheckpointError(f"deserialize needs bytes, got {type(data).__name__}")
    data = bytes(data)
    fixed = len(_MAGIC) + struct.calcsize("<IQ")
    if len(data) < fixed or not data.startswith(_MAGIC):
        raise CheckpointError(f"{where}: not jann index bytes (bad magic)")
    version, header_len = struct.unpack_from("<IQ", data, len(_MAGIC))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{where}: format {version} is newer than this jann reads "
                              f"({FORMAT_VERSION}): upgrade jann")
    if fixed + header_len > len(data):
        raise CheckpointError(f"{where}: truncated header")
    try:
        config = json.loads(data[fixed:fixed + header_len])
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{where}: corrupt header") from exc
    _check_config(config, where)
    config = _unsealed(config, where)
    body = memoryview(data)[fixed + header_len:]
    arrays = {}
    try:
        for name, spec in config["arrays"].items():
            dtype = np.dtype(jnp.dtype(spec["dtype"])).newbyteorder("<")
            count = int(np.prod(spec["shape"], dtype=np.int64))
            start = int(spec["offset"])
            if start < 0 or start + count * dtype.itemsize > len(body):
                raise CheckpointError(f"{where}: truncated (array {name!r} past the end)")
            arrays[name] = np.frombuffer(body, dtype, count, start).reshape(
                spec["shape"]).astype(dtype.newbyteorder("="))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{where}: corrupt array table ({exc})") from exc
    return _verified(config, arrays, where)


# ---------------------------------------------------------------------------- disk
_VERSION_RE = re.compile(r"v\d{6,}")
# What save writes besides versions, and so may delete: staging folders and LATEST's
# temporary files (nothing else in the directory is touched).
_OWN_TEMPORARY_RE = re.compile(r"\.tmp-v\d{6,}-[0-9a-f]+|\.LATEST\.[0-9a-f]{8}")
_SAVE_LOCK = ".jann-save.lock"


def current_version(path: str) -> str | None:
    """The version LATEST names, None without LATEST; anything else (a path) is refused."""
    try:
        with open(os.path.join(path, _LATEST), "rb") as f:
            raw = f.read(64)
    except FileNotFoundError:
        return None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        text = None
    if not text:
        return None
    if text is None or not _VERSION_RE.fullmatch(text):
        raise CheckpointError(f"{path}: {_LATEST} does not name a version ({raw[:32]!r})")
    return text


def _agreed(number: int, token: int) -> tuple[int, int]:
    """Process 0's (version number, staging token), so all processes of a multi-host
    save write into the same staging directory."""
    if jax.process_count() == 1:
        return number, token
    from jax.experimental import multihost_utils
    agreed = multihost_utils.broadcast_one_to_all(np.array([number, token], np.int32))
    return int(agreed[0]), int(agreed[1])


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"jann.save:{name}")


def save(index, path) -> str:
    """Write the index to directory `path` atomically; returns the version written.

    The previous checkpoint at `path` stays loadable until the new one is complete.
    With several processes (jax.distributed) every process calls save with the same path
    on a shared file system; each writes the shards it holds, process 0 publishes.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointError(f"{path} exists and is not a checkpoint directory")
    if os.path.isdir(path) and set(os.listdir(path)) - {_SAVE_LOCK} and \
            current_version(path) is None:
        raise CheckpointError(f"{path} is a non-empty directory that is not a jann "
                              "checkpoint; refusing to write into it")
    primary = jax.process_index() == 0
    config, arrays = _config(index)
    if not primary:
        return _save(path, config, arrays, primary)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, _SAVE_LOCK), "w") as lock:
        try:  # one writer at a time; the kernel drops the lock if the process dies
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(f"{path}: another jann.save is writing this checkpoint"
                                  ) from None
        return _save(path, config, arrays, primary)


def _save(path: str, config: dict, arrays: dict, primary: bool) -> str:
    previous = current_version(path)
    number, token = _agreed(
        int(previous[1:]) + 1 if previous and previous[1:].isdigit() else 1,
        int.from_bytes(uuid.uuid4().bytes[:3], "little"))
    version = f"v{number:06d}"
    staging = os.path.join(path, f".tmp-{version}-{token:06x}")
    try:
        if primary:
            os.makedirs(staging)
        _barrier("staging")
        stored = {name: a for name, a in arrays.items() if a.size}  # Orbax refuses 0-size
        if stored:
            writer = checkpointer()
            writer.save(os.path.join(staging, "arrays"), stored)
            writer.wait_until_finished()
        if primary:
            with open(os.path.join(staging, "config.json"), "w") as f:
                json.dump(_sealed(config), f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(staging, os.path.join(path, version))
            latest_tmp = os.path.join(path, f".{_LATEST}.{uuid.uuid4().hex[:8]}")
            with open(latest_tmp, "w") as f:
                f.write(version)
                f.flush()
                os.fsync(f.fileno())
            os.replace(latest_tmp, os.path.join(path, _LATEST))
    finally:
        if primary:
            shutil.rmtree(staging, ignore_errors=True)
    _barrier("published")
    if not primary:
        return version
    # Old versions go, but the one LATEST named until now stays until the next save: a
    # reader that read LATEST just before the swap is still loading it.
    for entry in os.listdir(path):
        if entry in (version, previous, _LATEST, _SAVE_LOCK):
            continue
        if _VERSION_RE.fullmatch(entry) or _OWN_TEMPORARY_RE.fullmatch(entry):
            full = os.path.join(path, entry)
            shutil.rmtree(full, ignore_errors=True) if os.path.isdir(full) else os.remove(full)
    return version


def load(path, mesh=None, *, axis: str | None = None):
    """Read the index saved at `path` (its latest complete version).

    `mesh` (a jax.sharding.Mesh) places it: a sharded checkpoint is restored onto the mesh's
    `axis` (default: the saved axis name, or the mesh's only axis) whatever its size, each
    process reading only what its devices hold; a replicated one is replicated on the mesh;
    a plain one is sharded with `jann.shard`. Without a mesh, a sharded checkpoint comes
    back as one plain index holding every vector."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is not a jann checkpoint (no such directory)")
    for _ in range(_LOAD_ATTEMPTS):
        version = current_version(path)
        if version is None or not os.path.isdir(os.path.join(path, version)):
            raise CheckpointError(f"{path} is not a jann checkpoint (no {_LATEST} version)")
        try:
            return _load_version(path, version, mesh, axis)
        except (CheckpointError, OSError):  # a save that finished meanwhile may have
            # deleted the version being read (it keeps one older one): read the new LATEST
            if current_version(path) == version:
                raise
    raise CheckpointError(f"{path}: saved over {_LOAD_ATTEMPTS} times while loading")


_LOAD_ATTEMPTS = 5
_MAX_CONFIG_BYTES = 64 << 20  # metadata only: an index's config is a few kB


def _load_version(path: str, version: str, mesh, axis):
    where = f"checkpoint {path} ({version})"
    try:
        with open(os.path.join(path, version, "config.json"), "rb") as f:
            config = json.loads(f.read(_MAX_CONFIG_BYTES + 1))
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{where}: unreadable config.json ({exc})") from exc
    _check_config(config, where)  # a newer format first: its seal may differ
    config = _unsealed(config, where)
    placement = config.get("placement")
    sharded = placement is not None and placement.get("mode") == "shard"
    shardings, finish = {}, None
    wide = [n for n, a in config["arrays"].items() if np.dtype(a["dtype"]) in (np.int64, np.uint64)]
    if sharded and wide and not jax.config.jax_enable_x64:  # restored as 32 bits, wrapped
        raise CheckpointError(f"{where}: arrays {wide} hold 64-bit integers (ids saved with "
                              "jax_enable_x64): load it with jax_enable_x64 set")
    if sharded:  # Orbax restores sharded arrays only onto a given layout
        read = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        if mesh is not None:
            read, finish = _sharding().restore_layout(placement, mesh, axis)
        shardings = dict.fromkeys(config["arrays"], read)
    arrays = _read_arrays(os.path.join(path, version, "arrays"), config, shardings, where)
    if not sharded:
        index = _verified(config, arrays, where)
        if mesh is None:
            return index
        if placement is None:
            return _sharding().shard(index, mesh, axis)
        saved_axis = placement.get("axis")
        return _sharding().replicate(index, mesh, axis if axis is not None or saved_axis
                                     not in mesh.axis_names else saved_axis)
    _check_shards(arrays, config["arrays"], where)
    stack = _from_state(config["index"], arrays)
    if finish is None:
        return _sharding().merge_stack(stack, placement["id_mode"])
    return finish(stack)


def _read_arrays(directory: str, config: dict, shardings: dict, where: str) -> dict:
    """The checkpoint's arrays: numpy, or jax arrays laid out by `shardings` ({name:
    sharding}; Orbax then reads on each process only what its devices hold)."""
    arrays = {}
    try:
        specs = config["arrays"]
        stored = [n for n, s in specs.items() if int(np.prod(s["shape"])) > 0]
        if stored and shardings:
            targets = {n: jax.ShapeDtypeStruct(tuple(specs[n]["shape"]),
                                               jnp.dtype(specs[n]["dtype"]),
                                               sharding=shardings[n]) for n in stored}
            arrays.update(checkpointer().restore(directory, targets))
        elif stored:
            restored = checkpointer().restore(directory)
            arrays.update({n: np.asarray(restored[n]) for n in stored})
        for name, spec in specs.items():
            if name not in arrays:
                empty = np.zeros(spec["shape"], jnp.dtype(spec["dtype"]))
                arrays[name] = jax.device_put(empty, shardings[name]) if shardings else empty
    except CheckpointError:
        raise
    except Exception as exc:  # Orbax / tensorstore raise many types on corrupt data
        quiet_failed_read_leftovers()
        raise CheckpointError(f"{where}: cannot read arrays ({type(exc).__name__}: {exc})"
                              ) from exc
    return arrays

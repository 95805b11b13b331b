"""The write-ahead log of `jann serve`: every acknowledged add / remove on top of one
checkpoint version, fsynced before it is acknowledged and replayed on start, and the lock
file that keeps a second server off the same checkpoint directory."""

from __future__ import annotations

import fcntl
import json
import os
import struct
import sys
import zlib

import numpy as np

import jann
from jann.errors import InvalidInputError

# Files the server keeps in the checkpoint directory; jann.save's clean-up of old versions
# removes only entries starting with "v" or ".", so these names survive it.
_WAL_PREFIX, _WAL_SUFFIX = "wal-", ".log"
_LOCK_FILE = "serve.lock"
# Record header: magic, header bytes, payload bytes, CRC-32 of header + payload.
_WAL_RECORD = struct.Struct("<4sIQI")
_WAL_MAGIC = b"JWAL"


def _wal_name(checkpoint_version: str) -> str:
    return f"{_WAL_PREFIX}{checkpoint_version}{_WAL_SUFFIX}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def apply_write(index, op: str, vectors, ids):
    """One write, as the pure library call: (new index, what it did). Shared by live
    writes and log replay, so a replay rebuilds exactly the acknowledged index."""
    if op == "add":
        # the id the index gives the first row (after removals: past every id it gave)
        first = int(index.next_id()) if index.id_mode == "sequential" else None
        new = jann.add(index, vectors, ids)
        return new, {"added": int(vectors.shape[0]), "first_id": first}
    if op == "remove":
        new, removed = jann.remove_ids(index, jann.IDSelectorBatch(ids))
        return new, {"removed": int(removed)}
    raise ValueError(f"unknown write {op!r}")


class WriteLog:
    """Append-only log of the writes applied on top of one checkpoint version.

    Record: magic, header length, payload length, CRC-32 of header + payload; the header
    is JSON ({"op", "shape", "n_ids"}), the payload little-endian float32 vectors then
    int64 ids. Appends are fsynced before the write is acknowledged.
    """

    def __init__(self, directory: str, checkpoint_version: str):
        self.directory = directory
        self.records = 0
        # One writer per checkpoint; the kernel drops the lock when the process dies.
        self._lock = open(os.path.join(directory, _LOCK_FILE), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise InvalidInputError(f"another jann serve is serving {directory}") from None
        self.start(checkpoint_version)

    def start(self, checkpoint_version: str) -> None:
        """Log to the file of `checkpoint_version` and delete the logs of other versions
        (they are contained in that checkpoint, or belong to none)."""
        self.path = os.path.join(self.directory, _wal_name(checkpoint_version))
        for entry in os.listdir(self.directory):
            if entry.startswith(_WAL_PREFIX) and entry.endswith(_WAL_SUFFIX) and \
                    os.path.join(self.directory, entry) != self.path:
                os.remove(os.path.join(self.directory, entry))
        self.records = 0

    @property
    def size(self) -> int:
        return os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def append(self, op: str, vectors, ids) -> None:
        header = json.dumps({"op": op, "shape": None if vectors is None else list(vectors.shape),
                             "n_ids": None if ids is None else int(ids.shape[0])}).encode()
        payload = b"".join([
            b"" if vectors is None else np.ascontiguousarray(vectors, "<f4").tobytes(),
            b"" if ids is None else np.ascontiguousarray(ids, "<i8").tobytes()])
        crc = zlib.crc32(header + payload)
        created = not os.path.exists(self.path)
        with open(self.path, "ab") as f:
            f.write(_WAL_RECORD.pack(_WAL_MAGIC, len(header), len(payload), crc))
            f.write(header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        if created:                                  # make the new file's name durable
            _fsync_dir(self.directory)
        self.records += 1

    def replay(self, index):
        """index with every complete record applied; a torn or corrupt tail (a write
        that never got acknowledged) is cut off the file. Returns (index, records)."""
        if not os.path.exists(self.path):
            return index, 0
        with open(self.path, "rb") as f:
            data = f.read()
        offset, records = 0, 0
        while offset < len(data):
            record = self._parse(data, offset)
            if record is None:
                print(f"jann serve: {self.path}: dropping {len(data) - offset} bytes of an "
                      "incomplete record at the end of the log (a write that was not "
                      "acknowledged)", file=sys.stderr, flush=True)
                with open(self.path, "r+b") as f:
                    f.truncate(offset)
                    os.fsync(f.fileno())
                break
            offset, op, vectors, ids = record
            index, _ = apply_write(index, op, vectors, ids)
            records += 1
        self.records = records
        return index, records

    @staticmethod
    def _parse(data: bytes, offset: int):
        end = offset + _WAL_RECORD.size
        if end > len(data):
            return None
        magic, header_len, payload_len, crc = _WAL_RECORD.unpack_from(data, offset)
        stop = end + header_len + payload_len
        if magic != _WAL_MAGIC or stop > len(data) or \
                zlib.crc32(data[end:stop]) != crc:
            return None
        header = json.loads(data[end:end + header_len])
        payload = memoryview(data)[end + header_len:stop]
        vectors = ids = None
        used = 0
        if header["shape"] is not None:
            count = int(np.prod(header["shape"]))
            vectors = np.frombuffer(payload, "<f4", count).reshape(header["shape"])
            used = 4 * count
        if header["n_ids"] is not None:
            ids = np.frombuffer(payload, "<i8", header["n_ids"], used)
        return stop, header["op"], vectors, ids

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
# Record header: magic, header bytes, payload bytes, CRC-32. Records "JWL2" checksum the
# two lengths too (a record of zero lengths has crc32(b"") == 0 and passed as "JWAL"),
# and are what this version writes; "JWAL" records (header + payload only) still replay.
_WAL_RECORD = struct.Struct("<4sIQI")
_WAL_MAGIC = b"JWL2"
_WAL_MAGIC_V1 = b"JWAL"
_WAL_OPS = ("add", "remove")


def _record_crc(magic: bytes, header_len: int, payload_len: int, body) -> int:
    if magic == _WAL_MAGIC_V1:
        return zlib.crc32(body)
    return zlib.crc32(body, zlib.crc32(struct.pack("<IQ", header_len, payload_len)))


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

    def close(self) -> None:
        """Let another writer take the checkpoint (the lock goes with the file)."""
        self._lock.close()

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
        crc = _record_crc(_WAL_MAGIC, len(header), len(payload), header + payload)
        record = _WAL_RECORD.pack(_WAL_MAGIC, len(header), len(payload), crc) + header + payload
        created = not os.path.exists(self.path)
        end = self.size
        try:
            with open(self.path, "ab") as f:
                f.write(record)
                f.flush()
                os.fsync(f.fileno())
            if created:                              # make the new file's name durable
                _fsync_dir(self.directory)
        except BaseException:
            # A failed append (a full disk, say) may leave part of the record in the file;
            # a later acknowledged record written after it would then be lost at replay,
            # which stops at the torn one. Cut it off before anything else is written.
            self._cut(end)
            raise
        self.records += 1

    def _cut(self, end: int) -> None:
        """Truncate the log back to `end` bytes (the last whole record), durably."""
        try:
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        except FileNotFoundError:
            pass

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
        """(end offset, op, vectors, ids) of the record at `offset`, or None where the
        rest is not one whole, well-formed record (a torn or corrupt tail)."""
        end = offset + _WAL_RECORD.size
        if end > len(data):
            return None
        magic, header_len, payload_len, crc = _WAL_RECORD.unpack_from(data, offset)
        stop = end + header_len + payload_len
        if magic not in (_WAL_MAGIC, _WAL_MAGIC_V1) or stop > len(data) or \
                _record_crc(magic, header_len, payload_len, data[end:stop]) != crc:
            return None
        try:
            header = json.loads(data[end:end + header_len])
            op, shape, n_ids = header["op"], header["shape"], header["n_ids"]
            if op not in _WAL_OPS:
                return None
            count = 0
            if shape is not None:
                if (not isinstance(shape, list) or len(shape) != 2
                        or not all(isinstance(v, int) and v >= 0 for v in shape)):
                    return None
                count = shape[0] * shape[1]
            if n_ids is not None and (not isinstance(n_ids, int) or n_ids < 0):
                return None
            if 4 * count + 8 * (n_ids or 0) != payload_len:
                return None
        except (ValueError, TypeError, KeyError, RecursionError):
            return None
        payload = memoryview(data)[end + header_len:stop]
        vectors = ids = None
        if shape is not None:
            vectors = np.frombuffer(payload, "<f4", count).reshape(shape)
        if n_ids is not None:
            ids = np.frombuffer(payload, "<i8", n_ids, 4 * count)
        return stop, op, vectors, ids

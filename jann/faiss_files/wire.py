"""The FAISS file format's fields: little-endian scalars, four-byte class codes and
counted vectors, read with every length checked against the bytes left (`Reader`) and
written in faiss/impl/index_write.cpp's order (`Writer`)."""

from __future__ import annotations

import struct

import numpy as np

from jann.errors import FileFormatError


class Reader:
    """Little-endian fields of a byte string, every length checked against what is left."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FileFormatError(f"FAISS file truncated or corrupt: {n} bytes wanted at "
                                  f"offset {self.pos}, {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def fourcc(self) -> bytes:
        return self.take(4)

    def array(self, dtype, count: int | None = None) -> np.ndarray:
        """A FAISS vector: its element count (size_t) unless given, then the elements."""
        dtype = np.dtype(dtype).newbyteorder("<")
        n = self.scalar("Q") if count is None else count
        if n > (len(self.data) - self.pos) // max(dtype.itemsize, 1):
            raise FileFormatError(f"FAISS file truncated or corrupt: a vector of {n} "
                                  f"elements at offset {self.pos} is longer than the file")
        return np.frombuffer(self.take(n * dtype.itemsize), dtype).astype(dtype.newbyteorder("="))


class Writer:
    """A FAISS file built field by field, little-endian, in faiss/impl/index_write.cpp's
    order."""

    def __init__(self):
        self.out = bytearray()

    def scalar(self, fmt: str, value):
        self.out += struct.pack("<" + fmt, value)

    def fourcc(self, code: bytes):
        self.out += code

    def array(self, values, dtype, with_count: bool = True):
        values = np.ascontiguousarray(values, np.dtype(dtype).newbyteorder("<"))
        if with_count:
            self.scalar("Q", values.size)
        self.out += values.tobytes()

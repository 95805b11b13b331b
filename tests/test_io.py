"""Tests for jann.io: TEXMEX/HDF5/npy round trips, corrupt-file detection, dataset layouts."""

from pathlib import Path

import numpy as np
import pytest

from jann import io
from jann.errors import FileFormatError

FASHION = Path("/work/shared/data/fashion-mnist")

rng = np.random.default_rng(0)

FORMATS = {
    "fvecs": (io.read_fvecs, io.write_fvecs, np.float32),
    "ivecs": (io.read_ivecs, io.write_ivecs, np.int32),
    "bvecs": (io.read_bvecs, io.write_bvecs, np.uint8),
}


def _random(dtype, n=37, d=5):
    if dtype == np.float32:
        return rng.standard_normal((n, d)).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=(n, d), endpoint=True).astype(dtype)


def _is_memmap_backed(x):
    base = x
    while base is not None:
        if isinstance(base, np.memmap):
            return True
        base = getattr(base, "base", None)
    return False


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip(tmp_path, fmt, mmap):
    read, write, dtype = FORMATS[fmt]
    x = _random(dtype)
    path = tmp_path / f"x.{fmt}"
    write(path, x)
    y = read(path, mmap=mmap)
    assert y.dtype == dtype
    assert y.shape == x.shape
    np.testing.assert_array_equal(y, x)
    assert _is_memmap_backed(y) is mmap
    if not mmap:
        assert y.flags.c_contiguous and y.flags.writeable


def test_file_layout_is_texmex(tmp_path):
    path = tmp_path / "x.bvecs"
    io.write_bvecs(path, np.array([[1, 2, 3], [4, 5, 6]]))
    assert path.read_bytes() == b"\x03\0\0\0\x01\x02\x03\x03\0\0\0\x04\x05\x06"


def test_write_accepts_other_numeric_dtypes(tmp_path):
    io.write_fvecs(tmp_path / "a.fvecs", np.arange(6, dtype=np.int64).reshape(2, 3))
    io.write_ivecs(tmp_path / "a.ivecs", [[1, 2], [3, 4]])
    np.testing.assert_array_equal(io.read_fvecs(tmp_path / "a.fvecs"), np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(io.read_ivecs(tmp_path / "a.ivecs"), [[1, 2], [3, 4]])


def test_iter_chunks_over_mmap_equals_whole(tmp_path):
    x = _random(np.float32, n=1003, d=8)
    path = tmp_path / "big.fvecs"
    io.write_fvecs(path, x)
    y = io.read_fvecs(path, mmap=True)
    chunks = list(io.iter_chunks(y, 100))
    assert len(chunks) == 11
    assert [len(c) for c in chunks[-2:]] == [100, 3]
    assert all(type(c) is np.ndarray for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), x)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "4"])
def test_iter_chunks_rejects_bad_size(bad):
    with pytest.raises(ValueError, match="chunk_size"):
        list(io.iter_chunks(np.zeros((4, 2)), bad))


def _corrupt(path: Path, kind: str) -> None:
    data = bytearray(path.read_bytes())
    if kind == "truncated":
        data = data[:-3]
    elif kind == "zero_length":
        data = bytearray()
    elif kind == "short_header":
        data = data[:2]
    elif kind == "inconsistent_header":
        record = len(data) // 4  # 4 records of equal size
        data[2 * record : 2 * record + 4] = np.int32(7).tobytes()
    elif kind == "nonpositive_dim":
        data[:4] = np.int32(0).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "kind", ["truncated", "zero_length", "short_header", "inconsistent_header", "nonpositive_dim"]
)
def test_corrupt_files_raise(tmp_path, fmt, kind):
    read, write, dtype = FORMATS[fmt]
    path = tmp_path / f"x.{fmt}"
    write(path, _random(dtype, n=4, d=6))
    _corrupt(path, kind)
    with pytest.raises(FileFormatError, match=path.name):
        read(path)


def test_wrong_reader_width_is_detected(tmp_path):
    # A bvecs file read as fvecs: the record size is wrong, so size or headers mismatch.
    path = tmp_path / "x.bvecs"
    io.write_bvecs(path, _random(np.uint8, n=10, d=12))
    with pytest.raises(FileFormatError):
        io.read_fvecs(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        io.read_fvecs(tmp_path / "nope.fvecs")


@pytest.mark.parametrize(
    "write, x",
    [
        (io.write_bvecs, np.array([[0, 256]])),
        (io.write_bvecs, np.array([[-1, 3]])),
        (io.write_bvecs, np.array([[1.0, 2.0]])),
        (io.write_ivecs, np.array([[2**31]])),
        (io.write_ivecs, np.array([[-(2**31) - 1]])),
        (io.write_ivecs, np.array([[0.5]])),
        (io.write_fvecs, np.array([[1e300]])),
        (io.write_fvecs, np.array([[1 + 2j]])),
        (io.write_fvecs, np.zeros(3)),
        (io.write_fvecs, np.zeros((2, 2, 2))),
        (io.write_fvecs, np.zeros((0, 3))),
        (io.write_fvecs, np.zeros((3, 0))),
    ],
)
def test_write_bad_values_raise(tmp_path, write, x):
    path = tmp_path / "bad.vecs"
    with pytest.raises(ValueError):
        write(path, x)
    assert not path.exists()  # validation happens before the file is created


def test_write_accepts_extreme_in_range_values(tmp_path):
    x = np.array([[np.iinfo(np.int32).min, np.iinfo(np.int32).max]], dtype=np.int64)
    io.write_ivecs(tmp_path / "x.ivecs", x)
    np.testing.assert_array_equal(io.read_ivecs(tmp_path / "x.ivecs"), x)
    f = np.array([[np.inf, -np.inf, np.nan]])  # representable in float32: kept
    io.write_fvecs(tmp_path / "x.fvecs", f)
    np.testing.assert_array_equal(io.read_fvecs(tmp_path / "x.fvecs"), f.astype(np.float32))


def _ann_arrays():
    train = _random(np.float32, n=50, d=4)
    test = _random(np.float32, n=7, d=4)
    neighbors = rng.integers(0, 50, size=(7, 10)).astype(np.int32)
    distances = rng.random((7, 10)).astype(np.float32)
    return train, test, neighbors, distances


def test_hdf5_round_trip(tmp_path):
    train, test, neighbors, distances = _ann_arrays()
    path = tmp_path / "a.hdf5"
    io.write_hdf5(path, train, test, neighbors, distances, metric="angular")
    h = io.read_hdf5(path)
    np.testing.assert_array_equal(h["train"], train)
    np.testing.assert_array_equal(h["test"], test)
    np.testing.assert_array_equal(h["neighbors"], neighbors)
    np.testing.assert_array_equal(h["distances"], distances)
    assert h["metric"] == "angular"
    assert isinstance(h["train"], np.ndarray)


def test_hdf5_optional_parts_absent(tmp_path):
    train, test, _, _ = _ann_arrays()
    path = tmp_path / "a.h5"
    io.write_hdf5(path, train, test, metric=None)
    h = io.read_hdf5(path)
    assert h["neighbors"] is None and h["distances"] is None and h["metric"] is None


def test_hdf5_missing_train_raises(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "bad.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("test", data=np.zeros((2, 2)))
    with pytest.raises(FileFormatError, match="train"):
        io.read_hdf5(path)


def test_hdf5_not_hdf5_raises(tmp_path):
    path = tmp_path / "junk.hdf5"
    path.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(FileFormatError):
        io.read_hdf5(path)


@pytest.mark.parametrize(
    "stored, expected", [("euclidean", "l2"), ("angular", "cosine"), ("dot", "ip")]
)
def test_load_dataset_hdf5(tmp_path, stored, expected):
    train, test, neighbors, distances = _ann_arrays()
    path = tmp_path / "set.hdf5"
    io.write_hdf5(path, train, test, neighbors, distances, metric=stored)
    ds = io.load_dataset(path)
    np.testing.assert_array_equal(ds["base"], train)
    np.testing.assert_array_equal(ds["queries"], test)
    np.testing.assert_array_equal(ds["gt_ids"], neighbors)
    np.testing.assert_array_equal(ds["gt_dist"], distances)
    assert ds["metric"] == expected


def test_load_dataset_npy_dir(tmp_path):
    base = _random(np.uint8, n=30, d=6)
    queries = _random(np.uint8, n=5, d=6)
    gt = rng.integers(0, 30, size=(5, 3)).astype(np.int32)
    np.save(tmp_path / "base.npy", base)
    np.save(tmp_path / "queries.npy", queries)
    np.save(tmp_path / "gt_ids.npy", gt)
    ds = io.load_dataset(tmp_path)
    np.testing.assert_array_equal(ds["base"], base)
    np.testing.assert_array_equal(ds["queries"], queries)
    np.testing.assert_array_equal(ds["gt_ids"], gt)
    assert ds["gt_dist"] is None
    assert ds["metric"] == "l2"
    assert ds["base"].dtype == np.uint8


@pytest.mark.parametrize("prefix", ["sift_", ""])
def test_load_dataset_fvecs_dir(tmp_path, prefix):
    base = _random(np.float32, n=40, d=8)
    query = _random(np.float32, n=6, d=8)
    gt = rng.integers(0, 40, size=(6, 5)).astype(np.int32)
    io.write_fvecs(tmp_path / f"{prefix}base.fvecs", base)
    io.write_fvecs(tmp_path / f"{prefix}query.fvecs", query)
    io.write_ivecs(tmp_path / f"{prefix}groundtruth.ivecs", gt)
    io.write_fvecs(tmp_path / f"{prefix}learn.fvecs", base[:10])  # ignored
    ds = io.load_dataset(tmp_path)
    np.testing.assert_array_equal(ds["base"], base)
    np.testing.assert_array_equal(ds["queries"], query)
    np.testing.assert_array_equal(ds["gt_ids"], gt)
    assert ds["gt_dist"] is None and ds["metric"] == "l2"


def test_load_dataset_fvecs_dir_ambiguous(tmp_path):
    x = _random(np.float32, n=3, d=2)
    for name in ("a_base.fvecs", "b_base.fvecs", "a_query.fvecs"):
        io.write_fvecs(tmp_path / name, x)
    with pytest.raises(FileFormatError, match="ambiguous"):
        io.load_dataset(tmp_path)


@pytest.mark.parametrize("suffix", [".fvecs", ".bvecs", ".npy"])
def test_load_dataset_single_file(tmp_path, suffix):
    x = _random(np.uint8, n=9, d=3)
    path = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".bvecs":
        io.write_bvecs(path, x)
    else:
        io.write_fvecs(path, x)
    ds = io.load_dataset(path)
    np.testing.assert_array_equal(ds["base"], x)
    assert ds["queries"] is None


def test_load_dataset_unknown_layouts(tmp_path):
    with pytest.raises(FileFormatError, match="accepted dataset layouts"):
        io.load_dataset(tmp_path)  # empty directory
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(FileFormatError, match="accepted dataset layouts"):
        io.load_dataset(tmp_path / "x.csv")
    np.save(tmp_path / "v.npy", np.zeros(4))
    with pytest.raises(FileFormatError, match="2-D"):
        io.load_dataset(tmp_path / "v.npy")
    with pytest.raises(FileNotFoundError):
        io.load_dataset(tmp_path / "missing")


@pytest.mark.skipif(not FASHION.is_dir(), reason="shared Fashion-MNIST data not present")
def test_load_dataset_fashion_mnist():
    ds = io.load_dataset(FASHION)
    assert ds["base"].shape == (60000, 784) and ds["base"].dtype == np.uint8
    assert ds["queries"].shape == (10000, 784) and ds["queries"].dtype == np.uint8
    assert ds["gt_ids"].shape == (10000, 100) and ds["gt_ids"].dtype == np.int32
    assert ds["gt_dist"].shape == (10000, 100) and ds["gt_dist"].dtype == np.float32
    assert ds["metric"] == "l2"
    assert _is_memmap_backed(ds["base"])  # not read into memory

"""Launch parameters of the Pallas scan kernels (`knn`, `hamming`, `adc`, `ivf_scan`),
chosen from the shape (d, k, storage dtype).

One plan serves every GPU that runs Pallas Triton kernels (compute capability 8.0 and
newer: A100, A10/L4 and RTX 30/40 with 99 KB of shared memory per block, H100 with
227 KB), so a program exported or compiled once runs on all of them; no block depends on
which GPU is attached. The sizes follow from two budgets, checked by compiling every
kernel for A100 and H100 with ptxas refusing register spills
(tests/test_gpu_compile.py, `--xla_gpu_fail_ptx_compilation_on_register_spilling`):

- Registers: a thread holds its share of the (block_q, block_n) key block and of the
  per-query buffer of max_k (key, row) pairs, both live across the whole scan, plus the
  (block_n, block_d) tile being read. With 4 warps (128 threads) and 255 registers per
  thread at most, block_q * (block_n * 4 + max_k * 2) / 128 stays near 100 words, which
  leaves the tile and the selection loop's temporaries room.
- Shared memory: Triton stages a dot's operands there, (block_q + block_n) * block_d
  float32 words: 6 KB at (16, 64, 32), far under 99 KB whatever d is, because d is
  walked in block_d chunks instead of held whole (the old whole-d tile asked 288 KB at
  d = 384 and 576 KB at d = 1024, more than any GPU has).

The IVF list scan is the exception: see `plan_ivf`. No GPU timing has chosen between
plans yet (none was lent); these are the smallest
spill-free blocks that keep a matmul's minimum of 16 per dimension.
"""

from __future__ import annotations

from .topk.pallas import ScanConfig, next_pow2

__all__ = ["plan_adc", "plan_hamming", "plan_ivf", "plan_knn"]

# Per-query buffer bound: larger k runs ceil(k / MAX_K) threshold passes.
MAX_K = 128


def _buffer(k: int) -> int:
    return min(MAX_K, next_pow2(k))


def plan_knn(d: int, k: int, dtype=None) -> ScanConfig:
    """Fused distance + top-k: 16 queries (a dot's minimum) x 128 rows per tile, d in
    chunks of 16 columns. The storage dtype is upcast in registers before the dot, so
    float16 / bfloat16 tiles use the float32 plan. Measured by the spill check over d in
    16..4096, k in 1..1024, three dtypes, A100 and H100: (16, 128, 16) spilled nowhere;
    (16, 64, 32) spilled at d = 384 (float32, k 10 and 100), (16, 64, 16) at 12 shapes."""
    del d, k, dtype
    return ScanConfig(block_q=16, block_n=128, block_d=16, max_k=MAX_K)


def plan_hamming(k: int) -> ScanConfig:
    """Hamming scan: 16 queries x 128 rows of int32 distances, one 32-bit word column
    per step (spill-free over 64..4096 bits and k 1..100 on A100 / H100; 16 x 64 spilled
    on A100 at k = 100, 32 x 64 on both)."""
    del k
    return ScanConfig(block_q=16, block_n=128, block_d=16, max_k=MAX_K)


def plan_adc(k: int) -> ScanConfig:
    """PQ look-up scan: 16 queries x 64 rows of summed table entries per tile (spill
    check over M 8..192, 4 and 8 bits, k 1..100 on A100 / H100: none, as for 16 x 128
    and for 8 warps, since the sub-spaces became a loop; unrolled, 3 of 36 spilled)."""
    del k
    return ScanConfig(block_q=16, block_n=64, block_d=16, max_k=MAX_K)


def plan_ivf(d: int, k: int) -> ScanConfig:
    """IVF list scan: one query per program, 64 list rows per tile, d in chunks of 64,
    2 warps. Every shape compiles. Spills, kept because they are a few words: PQ and sq8
    codes spill nowhere; raw float storage spills on H100 only, at 5 of 42 shapes (d 64
    k 10 and 100, d 256 and 384 k 100 float32, d 128 k 1 float16; A100 none; d 64..1536
    x k 1, 10, 100 x float32 / float16). ptxas -v on the kernel's PTX (sm_90a): d 64 k 10
    and 100 use 56 registers with 4 bytes of spill stores per thread; d 256 and 384 k 100
    use 128 registers with 12 bytes. One to three words per thread stay in L1, against
    a tile of 64 x 64 float32 read per step; in a 108-shape sweep every other block
    tried (9 in all) spilled at 11 to 28 shapes, this one at 7."""
    del k
    return ScanConfig(block_q=1, block_n=64, block_d=min(64, next_pow2(d)), max_k=MAX_K,
                      num_warps=2)

"""One process of the 2-process test (tests/test_sharding.py): a multi-host job on one
machine, each process with 4 simulated CPU devices and its own half of the data.

    python tests/_sharding_multihost.py PROCESS_ID PORT OUT_DIR

Both processes shard an empty / trained index over the 8 global devices, add the rows
they own (a global array built from process-local data), search, run the distributed
k-means and save the sharded index together. Each writes the data and its results to
OUT_DIR/p<id>.npz; the parent redoes it all in one process and compares.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if hasattr(jax.config, "jax_cpu_collectives_implementation"):  # cross-process CPU collectives
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                           initialization_timeout=60)

import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import jann  # noqa: E402
from jann import sharding  # noqa: E402

N, D, NQ, K = 1000, 16, 32, 7


def data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((N, D)).astype(np.float32),
            rng.standard_normal((NQ, D)).astype(np.float32))


def main():
    xb, xq = data()
    assert jax.process_count() == 2 and len(jax.devices()) == 8
    mesh = jax.make_mesh((8,), ("x",))
    mine = xb[process_id * N // 2:(process_id + 1) * N // 2]  # this process's rows only
    rows = jax.make_array_from_process_local_data(NamedSharding(mesh, P("x")), mine)
    assert not rows.is_fully_addressable

    flat = jann.add(jann.shard(jann.index_factory(D, "Flat"), mesh), rows)
    flat_d, flat_i = jann.search(flat, xq, K)

    # IVF: a quantizer every process trains alike on a public sample, then the lists
    # filled with the rows each process owns.
    ivf = jann.train(jann.index_factory(D, "IVF8,Flat"), xb[:400], key=jax.random.key(0))
    ivf = jann.add(jann.shard(ivf, mesh), rows)
    ivf_d, ivf_i = jann.search(ivf, xq, K, nprobe=3)

    # Distributed k-means over the rows of both processes (sums psum-reduced).
    km = sharding.kmeans_sharded(rows, 8, mesh, key=jax.random.key(1), niter=5)

    jann.save(flat, os.path.join(out, "ckpt"))
    np.savez(os.path.join(out, f"p{process_id}.npz"), xb=xb, xq=xq, k=K, flat_d=flat_d,
             flat_i=flat_i, ivf_d=ivf_d, ivf_i=ivf_i, centroids=np.asarray(km.centroids),
             ntotal=jann.ntotal(flat))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()

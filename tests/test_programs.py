"""Compiler options of jann's search programs (`jann.programs`): chosen per index,
compiled once per option set, and dropped where a jaxlib refuses them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jann
from jann import programs


def test_product_codes_take_their_options_and_wrappers_pass_them_on():
    d, many = 16, programs.PRODUCT_CODE_MAX_ONE_LIST_QUERIES + 1
    for coded in ("IVF8,PQ4", "OPQ4,IVF8,PQ4", "IVF8,PQ4,RFlat", "IVF8,PQ4x4"):
        index = jann.index_factory(d, coded)
        for nq in (1, 16, many, 4096):
            assert index.search_compiler_options(nq) == programs.PRODUCT_CODE_OPTIONS
    one_list = jann.index_factory(d, "PQ4")
    assert one_list.search_compiler_options(many - 1) == programs.PRODUCT_CODE_OPTIONS
    assert one_list.search_compiler_options(many) == ()
    for other in ("Flat", "IVF8,Flat", "IVF8,SQ8", "HNSW8", "IVF8,PQ4x10"):
        assert jann.index_factory(d, other).search_compiler_options(16) == ()


def test_a_search_with_options_compiles_once_and_matches_xla_defaults(rng):
    x = rng.standard_normal((1000, 16)).astype(np.float32)
    index = jann.add(jann.train(jann.index_factory(16, "IVF8,PQ4x4"), x, key=0), x)
    before = len(jann.api._search_jit.compiled)
    D, I = jann.search(index, x[:5], 4, nprobe=4)
    D2, I2 = jann.search(index, x[5:10], 4, nprobe=4)
    program = jann.api._search_jit.compiled[programs.PRODUCT_CODE_OPTIONS]
    assert program._cache_size() == 1
    assert len(jann.api._search_jit.compiled) <= before + 1
    static, dynamic = jann.api.search_program_params(index, {"nprobe": 4})
    D0, I0, _ = jann.api._search_jit((), index, x[:5], 4, None, static, dynamic)
    np.testing.assert_array_equal(np.asarray(I), np.asarray(I0))
    np.testing.assert_allclose(np.asarray(D), np.asarray(D0), rtol=1e-5, atol=1e-4)


def test_an_option_the_jaxlib_refuses_is_dropped_and_other_errors_still_raise(monkeypatch):
    monkeypatch.setattr(programs, "_refused", set())
    add_one = programs.jit(lambda a: a + 1)
    bogus = (("xla_cpu_no_such_option_in_any_jaxlib", "1"),)
    np.testing.assert_array_equal(add_one(bogus, jnp.arange(3)), [1, 2, 3])
    assert bogus in programs._refused
    np.testing.assert_array_equal(add_one(bogus, jnp.arange(2)), [1, 2])

    def fails(a):
        return jax.pure_callback(lambda v: (_ for _ in ()).throw(ValueError("no")),
                                 jax.ShapeDtypeStruct(a.shape, a.dtype), a)

    with pytest.raises(Exception):
        programs.jit(fails)(programs.PRODUCT_CODE_OPTIONS, jnp.arange(3))
    assert programs.PRODUCT_CODE_OPTIONS not in programs._refused

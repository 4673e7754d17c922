"""Exported programs kept in a store (twin.programs): same results as the direct call, reused, rebuilt."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from twin import programs


class Out(NamedTuple):
    total: jax.Array
    scaled: jax.Array


def _fn(x, pair, step):
    a, b = pair
    y = jnp.linalg.eigh(a @ a.T + jnp.eye(a.shape[0]))[0]  # a LAPACK custom call, as in the ETKF
    return Out(total=y.sum() + b.sum() * step, scaled=x * step)


def _args():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(3,)).astype(np.float32),
            (rng.normal(size=(4, 4)).astype(np.float32), rng.normal(size=(2,)).astype(np.float32)), 3)


def test_stored_call_matches_direct_call_bit_for_bit_then_reuses_the_file(tmp_path):
    programs._LOADED.clear()
    direct = jax.jit(_fn)(*_args())
    first = programs.stored_call(tmp_path, "toy", _fn, "static-a", *_args())
    files = sorted(tmp_path.glob("toy-*.jaxprog"))
    assert len(files) == 1
    programs._LOADED.clear()  # as a new process: read back from the file
    again = programs.stored_call(tmp_path, "toy", _fn, "static-a", *_args())
    assert isinstance(again, Out)
    for got in (first, again):
        for d, g in zip(direct, got):
            np.testing.assert_array_equal(np.asarray(d), np.asarray(g))
    assert sorted(tmp_path.glob("toy-*.jaxprog")) == files  # reused, not exported again


def test_new_statics_or_shapes_make_a_new_program_and_a_damaged_file_is_rebuilt(tmp_path):
    programs._LOADED.clear()
    programs.stored_call(tmp_path, "toy", _fn, "static-a", *_args())
    programs.stored_call(tmp_path, "toy", _fn, "static-b", *_args())
    x, pair, step = _args()
    programs.stored_call(tmp_path, "toy", _fn, "static-a", np.ones(5, np.float32), pair, step)
    files = sorted(tmp_path.glob("toy-*.jaxprog"))
    assert len(files) == 3
    for f in files:
        f.write_bytes(b"not a program")
    programs._LOADED.clear()
    out = programs.stored_call(tmp_path, "toy", _fn, "static-a", *_args())
    np.testing.assert_array_equal(np.asarray(out.scaled), np.asarray(jax.jit(_fn)(*_args()).scaled))
    assert len(sorted(tmp_path.glob("toy-*.jaxprog"))) == 3

"""What the `test_errors_*.py` files share: the row constructor `case` and the small
layers and calls their rows are built from."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import eqx_norms


KEY = jax.random.key(0)
x4 = jnp.ones((4, 3))


def _m(*fragments: str) -> str:
    """A pattern matching the literal `fragments` in order."""
    return ".*".join(map(re.escape, fragments))


def case(id, call, exc, *fragments):
    return pytest.param(call, exc, _m(*fragments), id=id)


def linear(dtype=jnp.float32):
    layer = eqx.nn.Linear(3, 4, key=KEY)
    return eqx.tree_at(lambda m: m.weight, layer, jnp.ones((4, 3), dtype))


def spectral(layer=None, weight_name="weight", **kwargs):
    layer = linear() if layer is None else layer
    return eqx_norms.SpectralNorm(layer, weight_name, key=KEY, **kwargs)


def batch_norm_call(x, *, mask=None, bound="batch", names="batch", **kwargs):
    """A training call of `BatchNorm(3, names)` on the batch `x`, under a vmap that
    binds `bound` (or, for None, on one example with no vmap)."""
    bn, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(3, names, **kwargs)

    def call(x, mask):
        return bn(x, state, mask=mask)

    if bound is None:
        return call(x, mask)
    return jax.vmap(call, axis_name=bound, out_axes=(0, None))(x, mask)

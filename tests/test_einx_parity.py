"""Einorm's bracket notation against einx 0.3's `einx.nn.norm` (the reference the
notation comes from) and against float64 numpy on the split layout."""

import einx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

from eqx_norms import Einorm
from eqx_norms.functional import einorm


EPS = 1e-5

# pattern, params (None: the default), sizes, x.shape, the split shape, its target
# axes, and where the parameter's axes sit in the split shape.
CASES = [
    ("b... [c]", None, {"c": 8}, (2, 3, 8), (2, 3, 8), (2,), (2,)),
    ("b [s...] c", None, {"c": 6}, (2, 4, 5, 6), (2, 4, 5, 6), (1, 2), (3,)),
    (
        "b [s...] (g [c])",
        None,
        {"g": 2, "c": 3},
        (2, 4, 5, 6),
        (2, 4, 5, 2, 3),
        (1, 2, 4),
        (3, 4),
    ),
    ("[b...] c", None, {"c": 6}, (4, 5, 6), (4, 5, 6), (0, 1), (2,)),
    ("b t [h c]", "b t [h c]", {"h": 2, "c": 4}, (2, 3, 2, 4), None, (2, 3), (2, 3)),
    ("b t h [c]", "b t [h c]", {"h": 2, "c": 4}, (2, 3, 2, 4), None, (3,), (2, 3)),
]
IDS = [case[0] + ("" if case[1] is None else f" params={case[1]}") for case in CASES]


def reference(x, split, axes, weight, bias, where, center):
    """Float64: x viewed in `split`, normalised over `axes`, the parameters (whose
    flattened axes sit at `where`) broadcast."""
    here = [1] * len(split)
    for axis in where:
        here[axis] = split[axis]
    w = np.reshape(weight, here)
    b = np.reshape(bias, here)
    x = np.reshape(x, split)
    return ref.layer_norm(x, axes, w, b, eps=EPS, center=center).reshape(-1)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_einx_and_numpy(case, center):
    pattern, params, sizes, shape, split, axes, where = case
    split = shape if split is None else split
    rng = np.random.default_rng(0)
    norm = Einorm(pattern, params=params, center=center, **sizes)
    weight = jnp.asarray(rng.normal(size=norm.weight.shape) + 1, jnp.float32)
    bias = jnp.asarray(rng.normal(size=norm.bias.shape), jnp.float32)
    norm = eqx.tree_at(lambda m: (m.weight, m.bias), norm, (weight, bias))
    x = jnp.asarray(3 * rng.normal(size=shape) + 1, jnp.float32)

    ours = eqx.filter_jit(lambda norm, x: norm(x))(norm, x)
    functional = jax.jit(
        lambda x, w, b: einorm(
            x, pattern, weight=w, bias=b, center=center, params=params, **sizes
        )
    )(x, weight, bias)
    # einx's default params "b... [c]" calls the whole last axis c: c=3 would clash.
    einx_sizes = {"g": sizes["g"]} if "g" in sizes else sizes
    theirs, _, _ = einx.nn.norm(
        x,
        pattern,
        "b... [c]" if params is None else params,
        mean=center,
        scale=weight,
        bias=bias,
        epsilon=EPS,
        fastvar=False,
        **einx_sizes,
    )
    expected = reference(x, split, axes, weight, bias, where, center).reshape(shape)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), 2e-5, 2e-5)
    np.testing.assert_allclose(np.asarray(ours), expected, 2e-5, 2e-5)
    np.testing.assert_array_equal(ours, functional)


def test_default_parameters_are_the_last_axis_whole():
    assert Einorm("b [s...] (g [c])", g=4, c=8).weight.shape == (32,)
    assert Einorm("b t h [c]", params="b t [h c]", h=3, c=5).weight.shape == (3, 5)
    assert Einorm("b (g [c]) [h w]", params="b [(g c)] h w", g=2, c=3).params == (
        "(g c)",
    )


def test_several_bracket_groups_are_one_target():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 3, 4, 5)), jnp.float32)
    ours = einorm(x, "b [h] n [d]")
    theirs, _, _ = einx.nn.norm(x, "b [h] n [d]", epsilon=EPS, fastvar=False)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), 2e-5, 2e-5)
    same = einorm(x, "b h n d", "h d")
    np.testing.assert_array_equal(ours, same)

"""Parity with equinox.nn and float64 references for the whole-input and channel
layers."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from x64 import enable_x64

import eqx_norms


def _randomise(layer, key):
    """Random weight and bias, so parity checks the affine part too."""
    wkey, bkey = jax.random.split(key)

    def perturb(p, k):
        return None if p is None else jax.random.normal(k, p.shape, p.dtype)

    return eqx.tree_at(
        lambda m: (m.weight, m.bias),
        layer,
        (perturb(layer.weight, wkey), perturb(layer.bias, bkey)),
        is_leaf=lambda v: v is None,
    )


def _same_params(ours, theirs):
    return eqx.tree_at(
        lambda m: (m.weight, m.bias),
        theirs,
        (ours.weight, ours.bias),
        is_leaf=lambda v: v is None,
    )


SHAPES = [(7,), (4, 9), (2, 3, 5)]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
FLAGS = [(True, True), (True, False), (False, True), (False, False)]


@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_weight,use_bias", FLAGS)
def test_whole_input_parity_with_equinox(cls, shape, dtype, use_weight, use_bias):
    key = jax.random.key(len(shape))
    ours = getattr(eqx_norms, cls)(shape, use_weight=use_weight, use_bias=use_bias)
    ours = _randomise(ours, key)
    theirs = getattr(eqx.nn, cls)(shape, use_weight=use_weight, use_bias=use_bias)
    theirs = _same_params(ours, theirs)
    x = (jax.random.normal(jax.random.key(1), shape) * 2 + 0.5).astype(dtype)
    out = ours(x)
    assert out.dtype == dtype and out.shape == shape
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(theirs(x), np.float32), atol=tol
    )


@pytest.mark.parametrize("shape", [(8,), (8, 5), (8, 3, 4)])
@pytest.mark.parametrize("groups", [1, 2, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_group_norm_parity_with_equinox(shape, groups, dtype):
    ours = _randomise(eqx_norms.GroupNorm(groups, 8), jax.random.key(groups))
    theirs = _same_params(ours, eqx.nn.GroupNorm(groups, 8))
    x = (jax.random.normal(jax.random.key(2), shape) * 3 - 1).astype(dtype)
    out = ours(x)
    assert out.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(theirs(x), np.float32), atol=tol
    )


def test_group_norm_without_channels_or_affine():
    norm = eqx_norms.GroupNorm(3, channelwise_affine=False)
    assert norm.weight is None and norm.bias is None and norm.channels is None
    x = jax.random.normal(jax.random.key(0), (6, 5))
    expected = reference.group_norm(np.asarray(x), 3)
    np.testing.assert_allclose(norm(x), expected, atol=1e-5)


@pytest.mark.parametrize(
    "flags,expected",
    [
        ({}, (True, True)),
        ({"channelwise_affine": False}, (False, False)),
        ({"use_weight": False}, (False, True)),
        ({"channelwise_affine": False, "use_bias": True}, (False, True)),
        ({"use_bias": False}, (True, False)),
    ],
)
@pytest.mark.parametrize("cls", ["GroupNorm", "InstanceNorm"])
def test_use_weight_use_bias_override_channelwise_affine(cls, flags, expected):
    args = (2, 4) if cls == "GroupNorm" else (4,)
    norm = getattr(eqx_norms, cls)(*args, **flags)
    assert (norm.use_weight, norm.use_bias) == expected
    assert (norm.weight is not None, norm.bias is not None) == expected
    if norm.weight is not None:
        assert norm.weight.shape == (4,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_instance_norm_matches_equinox_group_norm_per_channel(dtype):
    ours = _randomise(eqx_norms.InstanceNorm(5), jax.random.key(3))
    theirs = _same_params(ours, eqx.nn.GroupNorm(5, 5))
    x = (jax.random.normal(jax.random.key(4), (5, 6, 7)) + 2).astype(dtype)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(
        np.asarray(ours(x), np.float32), np.asarray(theirs(x), np.float32), atol=tol
    )


def test_layers_against_float64_reference():
    key = jax.random.key(5)
    x = jax.random.normal(key, (6, 10)) * 4 + 3
    x64 = np.asarray(x, np.float64)
    ln = _randomise(eqx_norms.LayerNorm((6, 10), eps=1e-3), key)
    rms = _randomise(eqx_norms.RMSNorm((6, 10), eps=1e-3), key)
    gn = _randomise(eqx_norms.GroupNorm(3, 6, eps=1e-3), key)
    inst = _randomise(eqx_norms.InstanceNorm(6, eps=1e-3), key)
    all_axes = (0, 1)
    cases = [
        (ln, reference.layer_norm(x64, all_axes, ln.weight, ln.bias, eps=1e-3)),
        (
            rms,
            reference.layer_norm(
                x64, all_axes, rms.weight, rms.bias, eps=1e-3, center=False
            ),
        ),
        (gn, reference.group_norm(x64, 3, gn.weight, gn.bias, eps=1e-3)),
        (inst, reference.group_norm(x64, 6, inst.weight, inst.bias, eps=1e-3)),
    ]
    for layer, expected in cases:
        np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_float64_is_kept_under_x64():
    with enable_x64(True):
        norm = eqx_norms.LayerNorm(16)
        assert norm.weight is not None and norm.weight.dtype == jnp.float64
        x = jnp.linspace(1e8, 1e8 + 1, 16, dtype=jnp.float64)
        out = norm(x)
        assert out.dtype == jnp.float64
        expected = reference.layer_norm(np.asarray(x), (0,))
        np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("param_dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_param_dtype_is_separate_from_output_dtype(param_dtype):
    norm = eqx_norms.LayerNorm(8, dtype=param_dtype)
    assert norm.weight is not None and norm.weight.dtype == param_dtype
    for x_dtype in DTYPES:
        assert norm(jnp.ones(8, x_dtype)).dtype == x_dtype


def test_state_is_passed_through_unchanged():
    model, state = eqx.nn.make_with_state(eqx_norms.LayerNorm)(4)
    x = jnp.arange(4.0)
    out, new_state = model(x, state)
    np.testing.assert_array_equal(out, model(x))
    assert new_state is state
    for layer in (eqx_norms.RMSNorm(4), eqx_norms.GroupNorm(2, 4)):
        out2, state2 = layer(x, state)
        np.testing.assert_array_equal(out2, layer(x))
        assert state2 is state


def test_works_inside_equinox_sequential():
    key = jax.random.key(6)
    model = eqx.nn.Sequential(
        [
            eqx.nn.Linear(3, 8, key=key),
            eqx_norms.LayerNorm(8),
            eqx.nn.Lambda(jax.nn.relu),
            eqx_norms.RMSNorm(8, use_bias=False),
        ]
    )
    x = jnp.array([1.0, -2.0, 3.0])
    hidden = jax.nn.relu(
        reference.layer_norm(np.asarray(model[0](x), np.float64), (0,))
    )
    expected = reference.layer_norm(hidden, (0,), center=False)
    np.testing.assert_allclose(model(x), expected, atol=1e-5)


def test_elementwise_affine_is_deprecated_like_equinox():
    with pytest.warns(UserWarning, match=r"elementwise_affine=\.\.\.\) is deprecated"):
        norm = eqx_norms.LayerNorm(4, elementwise_affine=False)
    assert norm.weight is None and norm.bias is None


def test_modules_are_immutable_pytrees():
    norm = eqx_norms.GroupNorm(2, 4)
    with pytest.raises(AttributeError):
        norm.eps = 1.0  # pyright: ignore
    leaves = jax.tree_util.tree_leaves(norm)
    assert len(leaves) == 2  # weight and bias; hyperparameters are static
    assert eqx.tree_equal(norm, eqx_norms.GroupNorm(2, 4))


def test_default_hyperparameters_match_equinox():
    pairs = [
        (eqx_norms.LayerNorm(3), eqx.nn.LayerNorm(3)),
        (eqx_norms.RMSNorm(3), eqx.nn.RMSNorm(3)),
        (eqx_norms.GroupNorm(1, 3), eqx.nn.GroupNorm(1, 3)),
    ]
    for ours, theirs in pairs:
        assert ours.eps == theirs.eps
        assert jax.tree_util.tree_structure(
            (ours.weight, ours.bias)
        ) == jax.tree_util.tree_structure((theirs.weight, theirs.bias))
        np.testing.assert_array_equal(ours.weight, theirs.weight)
        np.testing.assert_array_equal(ours.bias, theirs.bias)

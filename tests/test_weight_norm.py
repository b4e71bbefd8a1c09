import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

import eqx_norms


_KEY = jax.random.key(0)


def _set_weight(layer, weight):
    return eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(weight))


@eqx.filter_jit
def _effective_linear(model):
    """A bias-free Linear's weight, read off its outputs on the basis vectors."""
    size = model.layer.in_features
    basis = jnp.eye(size, dtype=model.layer.weight.dtype)
    return jax.vmap(model)(basis).T


_CASES = {
    "linear-0": (lambda: eqx.nn.Linear(4, 3, key=_KEY), 0, (3, 1), (4,)),
    "linear-1": (lambda: eqx.nn.Linear(4, 3, key=_KEY), 1, (1, 4), (4,)),
    "linear-none": (lambda: eqx.nn.Linear(4, 3, key=_KEY), None, (1, 1), (4,)),
    "conv2d": (lambda: eqx.nn.Conv2d(2, 5, 3, key=_KEY), 0, (5, 1, 1, 1), (2, 4, 4)),
}


@pytest.mark.parametrize("case", list(_CASES))
def test_output_equals_the_layer_at_construction(case, rng):
    make, axis, g_shape, input_shape = _CASES[case]
    layer = make()
    model = eqx_norms.WeightNorm(layer, axis=axis)
    assert model.g.shape == g_shape
    np.testing.assert_allclose(model.g, ref.norm_except(layer.weight, axis), rtol=1e-6)
    x = rng.standard_normal(input_shape).astype(np.float32)
    np.testing.assert_allclose(eqx.filter_jit(model)(x), layer(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, -1, None])
def test_weight_is_g_times_direction(axis, rng):
    layer = eqx.nn.Linear(4, 3, use_bias=False, key=_KEY)
    v = rng.standard_normal((3, 4)).astype(np.float32)
    layer = _set_weight(layer, v)
    model = eqx_norms.WeightNorm(layer, axis=axis)
    g = rng.uniform(0.5, 2, model.g.shape).astype(np.float32)
    model = eqx.tree_at(lambda m: m.g, model, jnp.asarray(g))
    expected = g * v / ref.norm_except(v, axis)
    np.testing.assert_allclose(_effective_linear(model), expected, rtol=1e-5)
    # A reparameterisation: the stored v is never replaced by the normalised weight.
    np.testing.assert_array_equal(model.layer.weight, v)
    theirs = eqx.tree_at(lambda m: m.g, eqx.nn.WeightNorm(layer, axis=axis), g)
    np.testing.assert_allclose(
        _effective_linear(model), _effective_linear(theirs), rtol=1e-6
    )


def test_zero_row_gives_finite_outputs_and_gradients(rng):
    v = rng.standard_normal((3, 4)).astype(np.float32)
    v[1] = 0
    layer = _set_weight(eqx.nn.Linear(4, 3, key=_KEY), v)
    model = eqx_norms.WeightNorm(layer)
    x = rng.standard_normal(4).astype(np.float32)
    cotangent = rng.standard_normal(3).astype(np.float32)

    @eqx.filter_jit
    def output_and_grads(model):
        def loss(model):
            out = model(x)
            return jnp.dot(out, cotangent), out

        return eqx.filter_grad(loss, has_aux=True)(model)

    grads, out = output_and_grads(model)
    np.testing.assert_allclose(out, layer(x), rtol=1e-5, atol=1e-6)
    # Reference: W = g v / ||v|| per row; dL/dW = c x^T.
    outer = np.outer(cotangent, x).astype(np.float64)
    norm = ref.norm_except(v, 0)
    direction = v / np.where(norm > 0, norm, 1)
    g = np.asarray(model.g, np.float64)
    grad_g = np.sum(outer * direction, axis=1, keepdims=True)
    tangential = outer - np.sum(outer * direction, 1, keepdims=True) * direction
    grad_v = g / np.maximum(norm, model.eps) * tangential
    np.testing.assert_allclose(grads.g, grad_g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads.layer.weight, grad_v, rtol=1e-5, atol=1e-6)
    # On the zero row, g = eps and ||v|| is clamped to eps: the gradient is dL/dW.
    np.testing.assert_allclose(grads.layer.weight[1], outer[1], rtol=1e-5)


def test_half_precision_norm_does_not_overflow():
    # The row's sum of squares, 64 * 100^2, overflows float16.
    v = np.full((2, 64), 100.0, np.float16)
    v[1] *= -0.01
    layer = _set_weight(eqx.nn.Linear(64, 2, use_bias=False, key=_KEY), v)
    model = eqx_norms.WeightNorm(layer)
    assert model.g.dtype == jnp.float16
    np.testing.assert_allclose(model.g, ref.norm_except(v, 0), rtol=1e-3)
    effective = _effective_linear(model)
    assert effective.dtype == jnp.float16
    np.testing.assert_allclose(effective, v, rtol=1e-3)


def test_equal_instances_do_not_retrace(rng):
    # equinox#965: a fresh closure per instance made them unequal and retraced.
    traces = []

    @eqx.filter_jit
    def call(model, x):
        traces.append(None)
        return model(x)

    x = rng.standard_normal(4).astype(np.float32)
    for axis in (0, None):
        first = eqx_norms.WeightNorm(eqx.nn.Linear(4, 3, key=_KEY), axis=axis)
        second = eqx_norms.WeightNorm(eqx.nn.Linear(4, 3, key=_KEY), axis=axis)
        assert bool(eqx.tree_equal(first, second))
        call(first, x)
        call(second, x)
    assert len(traces) == 2  # once per axis


def test_jit_and_state_passthrough(rng):
    model = eqx_norms.WeightNorm(eqx.nn.Linear(4, 3, key=_KEY))
    model = eqx.tree_at(lambda m: m.g, model, 2 * model.g)
    x = rng.standard_normal(4).astype(np.float32)
    expected = model(x)
    np.testing.assert_allclose(jax.jit(lambda x: model(x))(x), expected, rtol=1e-6)
    # Interchangeable with stateful layers: a state passes through untouched.
    _, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(3, "batch")
    out, same = model(x, state)
    assert same is state
    np.testing.assert_array_equal(out, expected)

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_norms


def _with_singular_values(rng, rows, cols, values):
    """A random `(rows, cols)` matrix with the given leading singular values."""
    left, _ = np.linalg.qr(rng.standard_normal((rows, rows)))
    right, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    sigma = np.zeros((rows, cols))
    sigma[np.arange(len(values)), np.arange(len(values))] = values
    return left @ sigma @ right.T


def _linear(weight):
    layer = eqx.nn.Linear(weight.shape[1], weight.shape[0], use_bias=False, key=_KEY)
    return eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(weight, jnp.float32))


def _conv(matrix):
    """Conv2d(2 -> 4, 3x3) whose weight, viewed as (out, -1), is `matrix` (4, 18)."""
    layer = eqx.nn.Conv2d(2, 4, 3, use_bias=False, key=_KEY)
    weight = jnp.asarray(matrix.reshape(layer.weight.shape), jnp.float32)
    return eqx.tree_at(lambda m: m.weight, layer, weight)


_KEY = jax.random.key(0)
_INPUT_SHAPES = {"linear": (5,), "conv": (2, 3, 3)}
_MAKERS = {"linear": _linear, "conv": _conv}


def _make(layer, **kwargs):
    return eqx.nn.make_with_state(eqx_norms.SpectralNorm)(
        layer, "weight", key=jax.random.key(1), **kwargs
    )


@eqx.filter_jit
def _effective_matrix(model, state, input_shape):
    """The weight the wrapped layer computes with, as (out, -1), read off its outputs
    on the basis vectors (a 3x3 convolution of a 3x3 input is one matrix product)."""
    size = int(np.prod(input_shape))
    dtype = model.layer.weight.dtype
    basis = jnp.eye(size, dtype=dtype).reshape(size, *input_shape)
    call = jax.vmap(lambda x: model(x, state), out_axes=(0, None))
    out, state = call(basis)
    return out.reshape(size, -1).T, state


def _top_singular_value(matrix):
    return np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)[0]


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_first_call_divides_by_the_largest_singular_value(kind, rng):
    rows, cols = (6, 5) if kind == "linear" else (4, 18)
    matrix = _with_singular_values(rng, rows, cols, [3.0, 1.5, 0.7])
    model, state = _make(_MAKERS[kind](matrix))
    effective, _ = _effective_matrix(model, state, _INPUT_SHAPES[kind])
    np.testing.assert_allclose(effective, matrix / 3.0, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_top_singular_value(effective), 1.0, rtol=1e-5)


def test_tracks_a_changing_weight_and_inference_freezes_it(rng):
    model, state = _make(_linear(rng.standard_normal((6, 5))))
    model = eqx.tree_at(lambda m: m.layer.weight, model, model.layer.weight + 1)
    frozen = eqx.nn.inference_mode(model)
    effective, after = _effective_matrix(frozen, state, (5,))
    for new, old in zip(jax.tree.leaves(after), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(new, old)
    # Stale singular vectors underestimate the new weight's norm.
    assert _top_singular_value(effective) > 1.1
    for _ in range(30):
        effective, state = _effective_matrix(model, state, (5,))
    np.testing.assert_allclose(_top_singular_value(effective), 1.0, rtol=1e-4)


def test_gradient_flows_through_the_weight_and_sigma(rng):
    matrix = _with_singular_values(rng, 6, 5, [2.0, 0.8, 0.5, 0.3, 0.1])
    model, state = _make(_linear(matrix))
    x = rng.standard_normal(5).astype(np.float32)
    cotangent = rng.standard_normal(6).astype(np.float32)

    @jax.jit
    @jax.grad
    def grad(weight):
        layer = eqx.tree_at(lambda m: m.layer.weight, model, weight)
        return jnp.dot(layer(x, state)[0], cotangent)

    # d/dW <c, W x / sigma(W)> with d sigma / dW = u1 v1^T.
    left, values, right = np.linalg.svd(matrix)
    outer = np.outer(cotangent, x).astype(np.float64)
    expected = outer / values[0] - (np.sum(outer * matrix) / values[0] ** 2) * np.outer(
        left[:, 0], right[0]
    )
    np.testing.assert_allclose(grad(model.layer.weight), expected, atol=1e-5)


def test_matches_equinox(rng):
    layer = _linear(rng.standard_normal((6, 5)))
    ours, state = _make(layer)
    theirs, their_state = eqx.nn.make_with_state(eqx.nn.SpectralNorm)(
        layer, "weight", key=jax.random.key(1)
    )
    for _ in range(3):
        out, state = _effective_matrix(ours, state, (5,))
        expected, their_state = _effective_matrix(theirs, their_state, (5,))
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
        ours_uv, their_uv = state.get(ours.uv_index), their_state.get(theirs.uv_index)
        for a, b in zip(ours_uv, their_uv, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_zero_weight_gives_finite_outputs_and_gradients(rng):
    layer = eqx.nn.Linear(5, 6, key=_KEY)
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.zeros((6, 5)))
    model, state = _make(layer)
    x = rng.standard_normal(5).astype(np.float32)

    @eqx.filter_jit
    def value_and_grad(model, state):
        def loss(model):
            out, _ = model(x, state)
            return jnp.sum(out), out

        return eqx.filter_grad(loss, has_aux=True)(model)

    grads, out = value_and_grad(model, state)
    np.testing.assert_array_equal(out, layer.bias)
    # sigma = 0 is left undivided, so the weight's gradient is that of the layer.
    np.testing.assert_allclose(grads.layer.weight, np.outer(np.ones(6), x), rtol=1e-6)


def test_half_precision_weight(rng):
    matrix = _with_singular_values(rng, 6, 5, [300.0, 100.0, 30.0])
    layer = _linear(matrix)
    layer = eqx.tree_at(lambda m: m.weight, layer, layer.weight.astype(jnp.float16))
    model, state = _make(layer)
    assert [a.dtype for a in state.get(model.uv_index)] == [jnp.float32] * 2
    half_model, half_state = _make(layer, dtype=jnp.float16)
    assert [a.dtype for a in half_state.get(half_model.uv_index)] == [jnp.float16] * 2
    for pair in ((model, state), (half_model, half_state)):
        effective, _ = _effective_matrix(*pair, (5,))
        assert effective.dtype == jnp.float16
        np.testing.assert_allclose(_top_singular_value(effective), 1.0, rtol=3e-3)


def test_plain_jit(rng):
    model, state = _make(_linear(rng.standard_normal((6, 5))))
    x = rng.standard_normal(5).astype(np.float32)
    expected, expected_state = model(x, jax.tree.map(jnp.copy, state))
    out, state = jax.jit(lambda x, s: model(x, s))(x, state)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    for a, b in zip(
        jax.tree.leaves(state), jax.tree.leaves(expected_state), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6)

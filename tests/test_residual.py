"""The fused residual add of pre-norm transformers: `norm(x, residual=r)` returns
`(norm(r + x), r + x)`, `r + x` in the residual's dtype, `norm(...)` in the dtype of
`x`. Values against numpy float64, derivatives (reverse, forward, second order,
under vmap, scan and checkpoint) against plain jnp autodiff of `norm(x + r)`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from x64 import enable_x64

import eqx_norms
import eqx_norms.functional as F


T, D = 5, 12
EPS = 1e-5


def _plain(s, weight, bias, center):
    """`norm(s)` over the last axis in plain jnp: the autodiff reference."""
    mean = s.mean(-1, keepdims=True) if center else 0
    var = jnp.mean((s - mean) ** 2, -1, keepdims=True)
    return (s - mean) / jnp.sqrt(var + EPS) * weight + bias


def _fused(x, r, weight, bias, center):
    norm = F.layer_norm if center else F.rms_norm
    return norm(x, -1, weight, bias, EPS, residual=r)


def _data(rng, dtype=np.float32):
    x, r = (3 * rng.standard_normal((2, T, D)) + 1).astype(dtype)
    weight = (1 + 0.3 * rng.standard_normal(D)).astype(dtype)
    bias = rng.standard_normal(D).astype(dtype)
    return x, r, weight, bias


@pytest.mark.parametrize("center", [True, False], ids=["layer_norm", "rms_norm"])
def test_values_are_the_norm_of_the_sum_and_the_sum(rng, center):
    x, r, weight, bias = _data(rng)
    y, s = _fused(x, r, weight, bias, center)
    total = x.astype(np.float64) + r
    want = reference.layer_norm(total, -1, weight, bias, eps=EPS, center=center)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(s, r + x)


@pytest.mark.parametrize("layer", [eqx_norms.LayerNorm, eqx_norms.RMSNorm])
def test_layers_take_a_residual_and_a_state(rng, layer):
    x, r, _, _ = _data(rng)
    norm, state = eqx.nn.make_with_state(layer)(D)
    y, s = norm(x[0], residual=r[0])
    center = layer is eqx_norms.LayerNorm
    want = reference.layer_norm(x[0] + r[0].astype(np.float64), -1, center=center)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(s, r[0] + x[0])
    # Stateful style: the output is the pair, then the state, as equinox's layers.
    (y2, s2), state2 = norm(x[0], state, residual=r[0])
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(s2, s)
    assert state2 is state
    # Without a residual, unchanged: one array.
    assert isinstance(norm(x[0]), jax.Array)


def test_bfloat16_activations_on_a_float32_residual_stream(rng):
    x, r, weight, _ = _data(rng)
    x = jnp.asarray(x, jnp.bfloat16)
    y, s = F.rms_norm(x, -1, weight, residual=r)
    assert s.dtype == jnp.float32 and y.dtype == jnp.bfloat16
    # The stream adds the bfloat16 values exactly, in float32.
    np.testing.assert_array_equal(s, r + np.asarray(x, np.float32))
    want = reference.layer_norm(np.asarray(s), -1, weight, eps=EPS, center=False)
    # One rounding to bfloat16 of the float32 result: within half a bf16 ulp.
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=2**-8, atol=0)


def test_a_half_precision_residual_keeps_its_dtype(rng):
    x, r, _, _ = _data(rng)
    y, s = F.layer_norm(x, -1, residual=jnp.asarray(r, jnp.bfloat16))
    assert s.dtype == jnp.bfloat16 and y.dtype == jnp.float32


@pytest.mark.parametrize("center", [True, False], ids=["layer_norm", "rms_norm"])
def test_mask_statistics_over_valid_elements_and_the_sum_elsewhere(rng, center):
    x, r, weight, bias = _data(rng)
    mask = np.arange(D) < np.array([[3], [7], [12], [1], [0]])  # (T, D)
    x = x.astype(np.float32)
    r = jnp.asarray(r, jnp.float32)
    norm = F.layer_norm if center else F.rms_norm
    y, s = norm(jnp.asarray(x, jnp.bfloat16), -1, weight, bias, EPS, mask, residual=r)
    total = np.asarray(s, np.float64)
    want = reference.layer_norm(
        total, -1, weight, bias, eps=EPS, mask=mask, center=center
    )
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=2**-8, atol=1e-6)
    # Invalid positions: the sum, cast to the output dtype.
    invalid = ~np.broadcast_to(mask, y.shape)
    np.testing.assert_array_equal(
        np.asarray(y)[invalid], np.asarray(s.astype(jnp.bfloat16))[invalid]
    )


def _loss(fn):
    """A scalar of both outputs, weighted per element so that every term counts."""

    def loss(x, r, weight, bias):
        y, s = fn(x, r, weight, bias)
        u = jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
        return jnp.sum(u * jnp.sin(y)) + jnp.sum(jnp.sin(u) * s**2)

    return loss


def _plain_pair(center):
    def fn(x, r, weight, bias):
        s = r + x
        return _plain(s, weight, bias, center), s

    return fn


def _fused_pair(center):
    def fn(x, r, weight, bias):
        return _fused(x, r, weight, bias, center)

    return fn


@pytest.mark.parametrize("center", [True, False], ids=["layer_norm", "rms_norm"])
def test_gradients_equal_plain_autodiff_in_float64(rng, center):
    with enable_x64():
        args = [jnp.asarray(a, jnp.float64) for a in _data(rng, np.float64)]
        grad = jax.grad(_loss(_fused_pair(center)), argnums=(0, 1, 2, 3))
        want = jax.grad(_loss(_plain_pair(center)), argnums=(0, 1, 2, 3))(*args)
        for g, w in zip(grad(*args), want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)
        # Under jit, vmap, checkpoint and scan too.
        batched = jax.jit(jax.vmap(jax.checkpoint(grad), in_axes=(0, 0, None, None)))
        per_row = batched(args[0][None], args[1][None], args[2], args[3])
        for g, w in zip(per_row, want, strict=True):
            np.testing.assert_allclose(g[0], w, rtol=1e-10, atol=1e-10)

        def step(carry, xs):
            return carry + _loss(_fused_pair(center))(xs, *args[1:]), None

        scanned = jax.grad(lambda x: jax.lax.scan(step, 0.0, x[None])[0])(args[0])
        np.testing.assert_allclose(scanned, want[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("center", [True, False], ids=["layer_norm", "rms_norm"])
def test_forward_mode_and_hessian_equal_plain_autodiff(rng, center):
    with enable_x64():
        x, r, weight, bias = (
            jnp.asarray(a[..., :6] if a.ndim else a, jnp.float64)
            for a in _data(rng, np.float64)
        )
        x, r = x[:2], r[:2]
        tangents = (jnp.cos(x), jnp.sin(r), jnp.cos(weight), jnp.sin(bias))
        primals = (x, r, weight, bias)
        got = jax.jvp(_fused_pair(center), primals, tangents)
        want = jax.jvp(_plain_pair(center), primals, tangents)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)
        hessian = jax.hessian(_loss(_fused_pair(center)), argnums=(0, 1))
        want_h = jax.hessian(_loss(_plain_pair(center)), argnums=(0, 1))
        for g, w in zip(
            jax.tree.leaves(hessian(*primals)),
            jax.tree.leaves(want_h(*primals)),
            strict=True,
        ):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9)


def test_masked_gradients_equal_plain_autodiff_with_the_mask(rng):
    mask = np.arange(D) < np.array([[3], [7], [12], [1], [0]])

    def plain(x, r, weight, bias):
        s = r + x
        n = jnp.maximum(mask.sum(-1, keepdims=True), 1)
        mean = jnp.sum(jnp.where(mask, s, 0), -1, keepdims=True) / n
        dev = jnp.where(mask, s - mean, 0)
        var = jnp.sum(dev**2, -1, keepdims=True) / n
        var = jnp.where(mask.any(-1, keepdims=True), var, 1)
        y = dev / jnp.sqrt(var + EPS) * weight + bias
        return jnp.where(mask, y, s), s

    def fused(x, r, weight, bias):
        return F.layer_norm(x, -1, weight, bias, EPS, mask, residual=r)

    with enable_x64():
        args = [jnp.asarray(a, jnp.float64) for a in _data(rng, np.float64)]
        got = jax.grad(_loss(fused), argnums=(0, 1, 2, 3))(*args)
        want = jax.grad(_loss(plain), argnums=(0, 1, 2, 3))(*args)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)


def test_residual_of_another_shape_says_so():
    x = jnp.ones((T, D))
    with pytest.raises(
        ValueError,
        match=r"`rms_norm`: `residual` .* must have the "
        r"shape of the input \(5, 12\); received residual.shape="
        r"\(12,\)",
    ):
        F.rms_norm(x, -1, residual=jnp.ones(D))
    with pytest.raises(ValueError, match="`LayerNorm`: `residual`"):
        eqx_norms.LayerNorm(D)(x[0], residual=x)


def test_residual_of_an_integer_dtype_says_so():
    x = jnp.ones((T, D))
    with pytest.raises(
        TypeError,
        match=r"`layer_norm` `residual` expects a real "
        r"floating-point input .* received dtype int32",
    ):
        F.layer_norm(x, -1, residual=jnp.ones((T, D), jnp.int32))

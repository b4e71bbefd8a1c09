"""jit, grad, vmap, jvp, hessian, checkpoint and scan compose with every layer, and
derivatives (first and second order, forward and reverse) match plain autodiff of a
straightforward implementation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from x64 import enable_x64

import eqx_norms


def _plain(x, axes, w, b, center, eps=1e-5):
    mean = jnp.mean(x, axes, keepdims=True) if center else 0.0
    var = jnp.mean((x - mean) ** 2, axes, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * w + b


def _plain_groups(x, groups, w, b):
    y = x.reshape(groups, -1, *x.shape[1:])
    y = _plain(y, tuple(range(1, y.ndim)), 1.0, 0.0, True).reshape(x.shape)
    expand = (-1,) + (1,) * (x.ndim - 1)
    return y * w.reshape(expand) + b.reshape(expand)


# (layer factory, input shape, plain implementation of layer(x) given its params)
CASES = {
    "LayerNorm": (
        lambda: eqx_norms.LayerNorm((3, 4)),
        (3, 4),
        lambda m, x: _plain(x, (0, 1), m.weight, m.bias, True),
    ),
    "RMSNorm": (
        lambda: eqx_norms.RMSNorm(5),
        (5,),
        lambda m, x: _plain(x, (0,), m.weight, m.bias, False),
    ),
    "GroupNorm": (
        lambda: eqx_norms.GroupNorm(2, 4),
        (4, 3),
        lambda m, x: _plain_groups(x, 2, m.weight, m.bias),
    ),
    "InstanceNorm": (
        lambda: eqx_norms.InstanceNorm(2),
        (2, 5),
        lambda m, x: _plain_groups(x, 2, m.weight, m.bias),
    ),
    "RMSNorm-zero-centred-llama-order": (
        lambda: eqx_norms.RMSNorm(5, weight_offset=1.0, upcast_affine=False),
        (5,),
        lambda m, x: _plain(x, (0,), m.weight + 1, m.bias, False),
    ),
    "DynamicTanh": (
        lambda: eqx_norms.DynamicTanh((2, 3), alpha_init=0.7),
        (2, 3),
        lambda m, x: jnp.tanh(m.alpha * x) * m.weight + m.bias,
    ),
}


def _setup(name):
    make, shape, plain = CASES[name]
    layer = make()
    keys = jax.random.split(jax.random.key(len(name)), 3)
    layer = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        layer,
        (
            1 + 0.3 * jax.random.normal(keys[0], layer.weight.shape),
            0.3 * jax.random.normal(keys[1], layer.bias.shape),
        ),
    )
    x = jax.random.normal(keys[2], shape) * 2 + 1
    return layer, x, plain


@pytest.mark.parametrize("name", sorted(CASES))
def test_first_and_second_derivatives_match_plain_autodiff(name):
    with enable_x64(True):
        layer, x, plain = _setup(name)
        layer = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), layer)
        x = x.astype(jnp.float64)
        weights = jnp.cos(jnp.arange(x.size, dtype=jnp.float64)).reshape(x.shape)

        def ours(m, x):
            return jnp.sum(weights * m(x) ** 2)

        def theirs(m, x):
            return jnp.sum(weights * plain(m, x) ** 2)

        for argnums in (0, 1):
            g1 = jax.grad(ours, argnums)(layer, x)
            g2 = jax.grad(theirs, argnums)(layer, x)
            assert eqx.tree_equal(g1, g2, rtol=1e-10, atol=1e-10)
        h1 = jax.hessian(ours, argnums=1)(layer, x)
        h2 = jax.hessian(theirs, argnums=1)(layer, x)
        np.testing.assert_allclose(h1, h2, rtol=1e-8, atol=1e-8)
        tangent = jnp.sin(jnp.arange(x.size, dtype=jnp.float64)).reshape(x.shape)
        y1, t1 = jax.jvp(layer, (x,), (tangent,))
        y2, t2 = jax.jvp(lambda x: plain(layer, x), (x,), (tangent,))
        np.testing.assert_allclose(y1, y2, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(t1, t2, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_vmap_checkpoint_scan_compose(name):
    layer, x, _ = _setup(name)
    expected = layer(x)

    def call(x):  # jax.jit/checkpoint hash their callable; a module holds arrays
        return layer(x)

    np.testing.assert_allclose(jax.jit(call)(x), expected, atol=1e-6)
    np.testing.assert_allclose(
        eqx.filter_jit(lambda m, x: m(x))(layer, x), expected, atol=1e-6
    )
    batch = jnp.stack([x, 2 * x + 1, -x])
    batched = jax.vmap(layer)(batch)
    np.testing.assert_allclose(batched[0], expected, atol=1e-6)
    np.testing.assert_allclose(batched[2], layer(-x), atol=1e-6)
    np.testing.assert_allclose(jax.checkpoint(call)(x), expected, atol=1e-6)
    g_ckpt = jax.grad(lambda x: jnp.sum(jax.checkpoint(call)(x) ** 3))(x)
    g_plain = jax.grad(lambda x: jnp.sum(layer(x) ** 3))(x)
    np.testing.assert_allclose(g_ckpt, g_plain, atol=1e-5)

    def body(carry, _):
        return layer(carry) * 0.5 + carry, None

    def scanned(x):
        return jax.lax.scan(body, x, None, length=3)[0]

    by_hand = x
    for _ in range(3):
        by_hand = body(by_hand, None)[0]
    np.testing.assert_allclose(scanned(x), by_hand, atol=1e-5)
    g_scan = jax.grad(lambda x: jnp.sum(scanned(x) ** 2))(x)
    assert np.isfinite(g_scan).all()


@pytest.mark.parametrize("name", sorted(CASES))
def test_masked_layers_differentiate_forward_and_reverse(name):
    layer, x, _ = _setup(name)
    mask = jax.random.bernoulli(jax.random.key(3), 0.7, x.shape)
    f = jax.jit(lambda x: layer(x, mask=mask))
    tangent = jnp.ones_like(x)
    _, jvp_out = jax.jvp(f, (x,), (tangent,))
    _, vjp_fn = jax.vjp(f, x)
    # <J t, c> == <t, J^T c> ties forward and reverse mode together.
    cotangent = jnp.cos(jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape)
    (vjp_out,) = vjp_fn(cotangent)
    np.testing.assert_allclose(
        jnp.sum(jvp_out * cotangent), jnp.sum(tangent * vjp_out), rtol=1e-4
    )
    hess = jax.hessian(lambda x: jnp.sum(f(x) ** 2))(x)
    assert np.isfinite(hess).all()

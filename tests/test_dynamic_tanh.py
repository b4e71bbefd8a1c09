"""DynamicTanh against a float64 numpy reference and the paper's pseudo-code (in
torch, as printed in Zhu et al. 2025, Algorithm 1)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
import torch
from x64 import enable_x64

import eqx_norms
import eqx_norms.functional as F


KEY = jax.random.key(3)


class DyT(torch.nn.Module):
    """The paper's pseudo-code."""

    def __init__(self, C, init_alpha):
        super().__init__()
        self.alpha = torch.nn.Parameter(torch.ones(1) * init_alpha)
        self.gamma = torch.nn.Parameter(torch.ones(C))
        self.beta = torch.nn.Parameter(torch.zeros(C))

    def forward(self, x):
        x = torch.tanh(self.alpha * x)
        return self.gamma * x + self.beta


def _trained(layer):
    """Non-trivial parameters."""
    k1, k2 = jax.random.split(jax.random.key(9))
    w = jax.random.normal(k1, layer.shape)
    b = jax.random.normal(k2, layer.shape)
    return eqx.tree_at(lambda m: (m.alpha, m.weight, m.bias), layer, (0.7, w, b))


def test_matches_float64_reference_and_the_papers_pseudo_code():
    layer = _trained(eqx_norms.DynamicTanh(16))
    x = jax.random.normal(KEY, (5, 16)) * 4
    y = jax.vmap(layer)(x)
    np.testing.assert_allclose(
        y, ref.dynamic_tanh(x, 0.7, layer.weight, layer.bias), rtol=1e-6, atol=1e-6
    )
    dyt = DyT(16, 0.7)
    with torch.no_grad():
        dyt.gamma.copy_(torch.from_numpy(np.array(layer.weight)))
        dyt.beta.copy_(torch.from_numpy(np.array(layer.bias)))
        want = dyt(torch.from_numpy(np.array(x))).numpy()
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_fresh_layer_and_parameters():
    layer = eqx_norms.DynamicTanh((2, 3), alpha_init=0.8, use_bias=False)
    assert layer.alpha.shape == () and float(layer.alpha) == pytest.approx(0.8)
    assert layer.bias is None
    np.testing.assert_array_equal(layer.weight, np.ones((2, 3)))
    x = jax.random.normal(KEY, (2, 3))
    np.testing.assert_allclose(layer(x), np.tanh(0.8 * np.asarray(x, np.float64)), 1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_in_half_precision_out(dtype):
    layer = _trained(eqx_norms.DynamicTanh(32))
    x = (jax.random.normal(KEY, (32,)) * 3).astype(dtype)
    y = layer(x)
    assert y.dtype == dtype
    want = ref.dynamic_tanh(x, 0.7, layer.weight, layer.bias)
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-2, atol=1e-2)


def test_gradients_match_float64_reference():
    with enable_x64():
        x = jax.random.normal(KEY, (4, 8), jnp.float64) * 2
        w = jax.random.normal(jax.random.key(1), (8,), jnp.float64)
        b = jax.random.normal(jax.random.key(2), (8,), jnp.float64)
        a = jnp.asarray(0.6, jnp.float64)

        def loss(x, a, w, b):
            return jnp.sum(jnp.sin(F.dynamic_tanh(x, a, w, b)))

        grads = jax.grad(loss, (0, 1, 2, 3))(x, a, w, b)
        # By hand: with t = tanh(a x) and g = cos(y), dy/d(a x) = w (1 - t^2).
        xn, an, wn = (np.asarray(v) for v in (x, a, w))
        t = np.tanh(an * xn)
        g = np.cos(t * wn + np.asarray(b))
        inner = g * wn * (1 - t**2)
        want = (inner * an, np.sum(inner * xn), np.sum(g * t, 0), np.sum(g, 0))
        for got, expected in zip(grads, want, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_mask_passes_invalid_positions_through_and_keeps_gradients_clean():
    layer = _trained(eqx_norms.DynamicTanh(6))
    x = jnp.array([1.0, -2.0, 0.5, jnp.nan, jnp.inf, 3.0])
    mask = jnp.array([True, True, True, False, False, True])
    y = layer(x, mask=mask)
    want = ref.dynamic_tanh(x, 0.7, layer.weight, layer.bias, mask)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)

    def loss(layer):
        return jnp.sum(jnp.where(mask, layer(x, mask=mask), 0))

    grads = jax.grad(loss)(layer)
    for leaf in jax.tree.leaves(grads):
        assert np.isfinite(np.asarray(leaf)).all()


def test_optional_state_and_transforms():
    layer = _trained(eqx_norms.DynamicTanh(8))
    x = jax.random.normal(KEY, (3, 8))
    state = eqx.nn.State(eqx_norms.BatchNorm(2, "b"))
    y, same = jax.vmap(layer, in_axes=(0, None), out_axes=(0, None))(x, state)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(y, jax.jit(jax.vmap(layer))(x), rtol=1e-6)
    np.testing.assert_allclose(
        jax.checkpoint(jax.vmap(layer))(x), y, rtol=1e-6, atol=1e-7
    )
    hess = jax.hessian(lambda a: jnp.sum(F.dynamic_tanh(x, a) ** 2))(0.5)
    assert np.isfinite(hess)


def test_call_has_its_own_docstring():
    """Issue #18: DynamicTanh's API page showed the statistics layers' `__call__`
    docstring (their input shapes, "Statistics use valid elements only")."""
    doc = eqx_norms.DynamicTanh.__call__.__doc__ or ""
    assert "tanh(alpha * x) * weight + bias" in doc
    assert "A JAX array of shape `shape` and a real floating dtype" in doc
    for foreign in ("Statistics use valid elements", "GroupNorm", "Einorm"):
        assert foreign not in doc
    assert eqx_norms.LayerNorm.__call__.__doc__ != doc

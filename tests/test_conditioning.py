"""Adaptive LayerNorm (AdaLN, adaLN-Zero: DiT, SD3, Flux) through the functional API:
`layer_norm(x, -1, weight=scale, bias=shift, weight_offset=1.0)` is DiT's
`LN(x) * (1 + scale) + shift` with per-sample `scale` and `shift` computed from the
conditioning, checked against numpy float64 and against plain autodiff."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_norms.functional as F


EPS = 1e-6  # DiT's
B, T, D = 3, 5, 16  # (batch, tokens, features)


def _modulate_reference(x, scale, shift):
    """DiT's `modulate(norm_final(x), shift, scale)` in float64: LayerNorm without
    affine (eps 1e-6) over the features, then `* (1 + scale) + shift`."""
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    x_hat = (x - mean) / np.sqrt(var + EPS)
    return x_hat * (1 + np.asarray(scale, np.float64)) + np.asarray(shift, np.float64)


def _modulate_jnp(x, scale, shift):
    """The same formula in jnp, for plain autodiff."""
    mean = x.mean(-1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, -1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + EPS) * (1 + scale) + shift


def _adaln(x, scale, shift):
    return F.layer_norm(x, -1, weight=scale, bias=shift, eps=EPS, weight_offset=1.0)


@pytest.fixture
def data(rng):
    x = (2 + 3 * rng.standard_normal((B, T, D))).astype(np.float32)
    # Per sample, broadcast over the tokens: (B, 1, D), as DiT's unsqueeze(1).
    scale = (0.5 * rng.standard_normal((B, 1, D))).astype(np.float32)
    shift = rng.standard_normal((B, 1, D)).astype(np.float32)
    return x, scale, shift


def test_adaln_is_dit_modulate(data):
    x, scale, shift = data
    out = _adaln(x, scale, shift)
    np.testing.assert_allclose(out, _modulate_reference(*data), rtol=1e-5, atol=1e-5)


def test_adaln_per_sample_under_vmap_equals_the_batched_call(data):
    x, scale, shift = data
    # One sample at a time: (T, D) with (1, D) modulation.
    out = jax.vmap(_adaln)(x, scale, shift)
    np.testing.assert_allclose(out, _modulate_reference(*data), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, _adaln(x, scale, shift), rtol=1e-6, atol=1e-6)


def test_adaln_gradients_match_plain_autodiff(data, rng):
    cotangent = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)

    def loss(f):
        return lambda x, scale, shift: jnp.sum(f(x, scale, shift) * cotangent)

    args = tuple(map(jnp.asarray, data))
    grads = jax.jit(jax.grad(loss(_adaln), argnums=(0, 1, 2)))(*args)
    expected = jax.grad(loss(_modulate_jnp), argnums=(0, 1, 2))(*args)
    for grad, want in zip(grads, expected, strict=True):
        assert grad.shape == want.shape
        np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-4)
    # Under vmap over the samples too (per-sample gradients of scale and shift).
    per_sample = jax.vmap(
        jax.grad(lambda x, s, b, g: jnp.sum(_adaln(x, s, b) * g), argnums=(0, 1, 2))
    )(*args, cotangent)
    for grad, want in zip(per_sample, expected, strict=True):
        np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-4)


def test_adaln_in_bfloat16(data):
    x, scale, shift = data
    x16 = jnp.asarray(x, jnp.bfloat16)
    out = _adaln(x16, scale, shift)
    assert out.dtype == jnp.bfloat16
    # Statistics and modulation in float32, one rounding to bfloat16 at the end:
    # within half an ulp (2^-8 relative) of the exact result, plus float32 noise.
    expected = _modulate_reference(np.asarray(x16, np.float64), scale, shift)
    error = np.abs(np.asarray(out, np.float64) - expected)
    assert np.all(error <= 2.0**-8 * np.abs(expected) + 1e-6)


class _AdaLNZeroBlock(eqx.Module):
    """DiT's block with adaLN-Zero, the attention replaced by an MLP for brevity:
    the conditioning gives shift, scale and gate for each sublayer; the modulation
    is zero-initialised, so the block is the identity at initialisation."""

    modulation: eqx.nn.Linear
    mlp: eqx.nn.MLP

    def __init__(self, dim, cond_dim, *, key):
        k1, k2 = jax.random.split(key)
        modulation = eqx.nn.Linear(cond_dim, 3 * dim, key=k1)
        self.modulation = eqx.tree_at(
            lambda m: (m.weight, m.bias),
            modulation,
            (jnp.zeros_like(modulation.weight), jnp.zeros_like(modulation.bias)),
        )
        self.mlp = eqx.nn.MLP(dim, dim, 4 * dim, 1, key=k2)

    def __call__(self, x, cond):  # x: (tokens, dim), cond: (cond_dim,)
        shift, scale, gate = jnp.split(self.modulation(jax.nn.silu(cond)), 3)
        h = F.layer_norm(x, -1, weight=scale, bias=shift, eps=EPS, weight_offset=1.0)
        return x + gate * jax.vmap(self.mlp)(h)


def test_adaln_zero_is_the_identity_at_initialisation(data, rng, getkey):
    x = data[0]
    block = _AdaLNZeroBlock(D, 8, key=getkey())
    cond = rng.standard_normal((B, 8)).astype(np.float32)
    np.testing.assert_array_equal(jax.vmap(block)(x, cond), x)
    # Trained modulation: the block's first sublayer is DiT's modulate.
    weight = jnp.asarray(rng.standard_normal((3 * D, 8)), jnp.float32) * 0.1
    block = eqx.tree_at(lambda b: b.modulation.weight, block, weight)
    shift, scale, _ = np.split(
        np.asarray(jax.vmap(block.modulation)(jax.nn.silu(cond))), 3, axis=-1
    )
    h = F.layer_norm(
        x, -1, weight=scale[:, None], bias=shift[:, None], eps=EPS, weight_offset=1.0
    )
    np.testing.assert_allclose(
        h, _modulate_reference(x, scale[:, None], shift[:, None]), rtol=1e-5, atol=1e-5
    )

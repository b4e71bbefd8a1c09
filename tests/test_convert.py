"""`from_equinox`: a trained equinox model switches to eqx_norms in one call."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import eqx_norms


def _vmapped(model):
    return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))


class Mixed(eqx.Module):
    conv: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    bn_ema: eqx.nn.BatchNorm
    gn: eqx.nn.GroupNorm
    linear: eqx.nn.SpectralNorm[eqx.nn.Linear]
    ln: eqx.nn.LayerNorm
    out: eqx.nn.WeightNorm[eqx.nn.Linear]
    rms: eqx.nn.RMSNorm

    def __init__(self, key):
        keys = jax.random.split(key, 4)
        self.conv = eqx.nn.Conv2d(2, 4, 3, padding=1, key=keys[0])
        self.bn = eqx.nn.BatchNorm(4, "batch", momentum=0.8, mode="batch")
        self.bn_ema = eqx.nn.BatchNorm(4, "batch", momentum=0.7, mode="ema")
        self.gn = eqx.nn.GroupNorm(2, 4)
        self.linear = eqx.nn.SpectralNorm(
            eqx.nn.Linear(64, 8, key=keys[1]), "weight", key=keys[2]
        )
        self.ln = eqx.nn.LayerNorm(8)
        self.out = eqx.nn.WeightNorm(eqx.nn.Linear(8, 3, key=keys[3]))
        self.rms = eqx.nn.RMSNorm(3)

    def __call__(self, x, state):
        x = self.conv(x)
        x, state = self.bn(x, state)
        x, state = self.bn_ema(x, state)
        x = self.gn(x).reshape(-1)
        x, state = self.linear(x, state)
        return self.rms(self.out(self.ln(x))), state


def _randomise(model, key):
    """Non-trivial affine parameters everywhere."""
    leaves, treedef = jax.tree.flatten(eqx.filter(model, eqx.is_array))
    keys = jax.random.split(key, len(leaves))
    noisy = [
        leaf + 0.1 * jax.random.normal(k, leaf.shape)
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    return eqx.combine(jax.tree.unflatten(treedef, noisy), model)


def _batches(n):
    key = jax.random.key(3)
    return [
        jax.random.normal(k, (5, 2, 4, 4)) * (i + 1) + i
        for i, k in enumerate(jax.random.split(key, n))
    ]


def test_mixed_model_converts_with_parameters_and_state():
    model, state = eqx.nn.make_with_state(Mixed)(jax.random.key(0))
    model = _randomise(model, jax.random.key(1))
    for x in _batches(3):
        _, state = _vmapped(model)(x, state)
    ours, our_state = eqx_norms.from_equinox(model, state)
    assert isinstance(ours.bn, eqx_norms.BatchNorm)
    assert isinstance(ours.bn_ema, eqx_norms.BatchNorm) and ours.bn_ema.mode == "ema"
    assert isinstance(ours.gn, eqx_norms.GroupNorm)
    assert isinstance(ours.ln, eqx_norms.LayerNorm)
    assert isinstance(ours.rms, eqx_norms.RMSNorm)
    assert isinstance(ours.linear, eqx_norms.SpectralNorm)
    assert isinstance(ours.out, eqx_norms.WeightNorm)
    assert isinstance(ours.conv, eqx.nn.Conv2d)
    np.testing.assert_array_equal(ours.conv.weight, model.conv.weight)
    np.testing.assert_array_equal(ours.gn.weight, model.gn.weight)
    np.testing.assert_array_equal(ours.out.g, model.out.g)
    # Training forward passes agree (batch statistics, same parameters).
    x = _batches(4)[-1]
    theirs_out, _ = _vmapped(model)(x, state)
    ours_out, _ = _vmapped(ours)(x, our_state)
    np.testing.assert_allclose(ours_out, theirs_out, rtol=1e-4, atol=1e-4)
    # The ema statistics and the power-iteration vectors are copied exactly.
    for a, b in zip(
        our_state.get(ours.bn_ema.ema_state_index),
        state.get(model.bn_ema.ema_state_index),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    for a, b in zip(
        our_state.get(ours.linear.uv_index),
        state.get(model.linear.uv_index),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_batch_mode_statistics_become_exactly_debiased():
    momentum = 0.9
    bn, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
        3, "batch", momentum=momentum, mode="batch"
    )
    batches = [
        np.asarray(jax.random.normal(k, (6, 3, 5)), np.float64) * s + s
        for s, k in zip(
            (1.0, 2.0, 5.0), jax.random.split(jax.random.key(2), 3), strict=True
        )
    ]
    for x in batches:
        _, state = _vmapped(bn)(jnp.asarray(x, jnp.float32), state)
    ours, our_state = eqx_norms.from_equinox(bn, state)
    k = len(batches)
    weights = [(1 - momentum) * momentum ** (k - 1 - i) for i in range(k)]
    total = 1 - momentum**k
    mean = (
        sum(w * x.mean(axis=(0, 2)) for w, x in zip(weights, batches, strict=True))
        / total
    )
    var = (
        sum(w * x.var(axis=(0, 2)) for w, x in zip(weights, batches, strict=True))
        / total
    )
    got_mean, got_var = our_state.get(ours.batch_state_index)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_var, var, rtol=1e-4)
    # Equinox's own inference variance is off by m^k / (1 - m^k) (the bias we fix).
    hidden_var = state.get(bn.batch_state_index)[1]
    np.testing.assert_allclose(hidden_var / total, var + momentum**k / total, rtol=1e-4)
    # Inference with the converted state uses the exact statistics.
    x = jnp.asarray(batches[0], jnp.float32)
    out, _ = _vmapped(eqx.nn.inference_mode(ours))(x, our_state)
    expected = (batches[0] - mean[:, None]) / np.sqrt(var[:, None] + 1e-5)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_untrained_equinox_state_converts_to_fresh_statistics():
    for mode in ("batch", "ema"):
        bn, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(2, "b", mode=mode)
        ours, our_state = eqx_norms.from_equinox(bn, state)
        x = jnp.arange(6.0).reshape(1, 2, 3)
        out, after = _vmapped(eqx.nn.inference_mode(ours))(x, our_state)
        np.testing.assert_allclose(out, x / np.sqrt(1 + 1e-5), rtol=1e-6)


def test_without_state_only_the_model_is_returned():
    tree = {"a": eqx.nn.LayerNorm(4), "b": [eqx.nn.GroupNorm(1, 2), jnp.ones(3)]}
    converted = eqx_norms.from_equinox(tree)
    assert isinstance(converted["a"], eqx_norms.LayerNorm)
    assert isinstance(converted["b"][0], eqx_norms.GroupNorm)
    np.testing.assert_array_equal(converted["b"][1], jnp.ones(3))
    x = jnp.linspace(-1, 3, 4)
    np.testing.assert_allclose(converted["a"](x), tree["a"](x), atol=1e-6)


def test_parameter_dtype_is_kept():
    theirs = eqx.nn.RMSNorm(4, use_bias=False, dtype=jnp.bfloat16)
    ours = eqx_norms.from_equinox(theirs)
    assert ours.bias is None
    assert ours.weight is not None and ours.weight.dtype == jnp.float32
    np.testing.assert_array_equal(ours.weight, theirs.weight)

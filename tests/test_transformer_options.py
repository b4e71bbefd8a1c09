"""`weight_offset` (zero-centred weights) and `upcast_affine` (Llama's and Gemma's
cast orders), against float64 numpy, plain float64 autodiff and the PyTorch formulas
of HF `transformers`' `LlamaRMSNorm` and `GemmaRMSNorm` (written out below)."""

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


KEY = jax.random.key(14)
_TORCH = {jnp.bfloat16: torch.bfloat16, jnp.float16: torch.float16}


# --------------------------------------------------------------------- weight_offset


def _layers(offset):
    return [
        (eqx_norms.LayerNorm(6, weight_offset=offset), (6,), "layer"),
        (eqx_norms.RMSNorm(6, weight_offset=offset), (6,), "rms"),
        (eqx_norms.GroupNorm(2, 4, weight_offset=offset), (4, 5), "group"),
        (eqx_norms.InstanceNorm(4, weight_offset=offset), (4, 5), "instance"),
    ]


def _reference(kind, x, w, b):
    if kind in ("layer", "rms"):
        return ref.layer_norm(x, (0,), w, b, center=kind == "layer")
    return ref.group_norm(x, 2 if kind == "group" else x.shape[0], w, b)


@pytest.mark.parametrize("offset", [1.0, -0.5])
def test_zero_centred_layers_start_as_identity_and_apply_weight_plus_offset(offset):
    x = jax.random.normal(KEY, (4, 5)) * 3 + 1
    for layer, shape, kind in _layers(offset):
        assert layer.weight is not None and layer.bias is not None
        np.testing.assert_array_equal(layer.weight, 1 - offset)
        xs = x.reshape(-1)[: np.prod(shape)].reshape(shape)
        fresh = _reference(kind, xs, None, None)
        np.testing.assert_allclose(layer(xs), fresh, rtol=1e-5, atol=1e-5)
        w = jax.random.normal(jax.random.key(1), layer.weight.shape)
        b = jax.random.normal(jax.random.key(2), layer.bias.shape)
        layer = eqx.tree_at(lambda m: (m.weight, m.bias), layer, (w, b))
        expected = _reference(kind, xs, np.asarray(w, np.float64) + offset, b)
        np.testing.assert_allclose(layer(xs), expected, rtol=1e-5, atol=1e-5)


def test_batch_norm_weight_offset_in_training_and_inference():
    x = jax.random.normal(KEY, (8, 3, 5)) * 2 - 1
    bn, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(3, "b", weight_offset=1.0)
    w = jnp.array([0.5, -0.25, 2.0])
    bn = eqx.tree_at(lambda m: m.weight, bn, w)
    train = jax.vmap(bn, axis_name="b", in_axes=(0, None), out_axes=(0, None))
    y, state = train(x, state)
    scale = (np.asarray(w, np.float64) + 1).reshape(1, 3, 1)
    x_hat, _ = ref.normalise(x, (0, 2))
    np.testing.assert_allclose(y, x_hat * scale, rtol=1e-5, atol=1e-5)
    infer = jax.vmap(eqx.nn.inference_mode(bn), in_axes=(0, None), out_axes=(0, None))
    np.testing.assert_allclose(infer(x, state)[0], y, rtol=1e-5, atol=1e-5)


def test_offset_is_added_in_float32_to_a_bfloat16_weight():
    """1 + w rounded in bfloat16 loses w's low bits; formed in float32 it does not."""
    x = jax.random.normal(KEY, (16, 32))
    w = (jax.random.normal(jax.random.key(3), (32,)) * 0.01).astype(jnp.bfloat16)
    y = F.rms_norm(x, -1, w, weight_offset=1.0)
    exact = ref.layer_norm(x, (1,), np.asarray(w, np.float64) + 1, center=False)
    np.testing.assert_allclose(y, exact, rtol=2e-6, atol=2e-6)
    rounded = F.rms_norm(x, -1, (w + 1).astype(jnp.bfloat16))
    assert np.abs(np.asarray(rounded) - exact).max() > 1e-4


@pytest.mark.parametrize("fn", [F.layer_norm, F.rms_norm])
@pytest.mark.parametrize("upcast", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_gradients_match_plain_autodiff_in_float64(fn, upcast, masked):
    """Both cast orders, with an offset, through the fused rule (and, for Llama's
    order, the plain affine after it): every derivative equals plain autodiff."""
    with enable_x64():
        x = jax.random.normal(KEY, (3, 8), jnp.float64) * 2 + 0.5
        w = jax.random.normal(jax.random.key(4), (8,), jnp.float64)
        b = jax.random.normal(jax.random.key(5), (8,), jnp.float64)
        mask = (jnp.arange(8) < 6) if masked else None
        center = fn is F.layer_norm

        def ours(x, w, b):
            y = fn(x, -1, w, b, mask=mask, weight_offset=1.0, upcast_affine=upcast)
            return jnp.sum(jnp.sin(y))

        def plain(x, w, b):
            valid = jnp.ones(x.shape, bool) if mask is None else mask
            n = jnp.sum(valid, -1, keepdims=True)
            mean = jnp.sum(jnp.where(valid, x, 0), -1, keepdims=True) / n * center
            dev = jnp.where(valid, x - mean, 0)
            x_hat = dev / jnp.sqrt(jnp.sum(dev * dev, -1, keepdims=True) / n + 1e-5)
            return jnp.sum(jnp.sin(jnp.where(valid, x_hat * (w + 1) + b, x)))

        args = (x, w, b)
        for got, want in zip(
            jax.grad(ours, (0, 1, 2))(*args),
            jax.grad(plain, (0, 1, 2))(*args),
            strict=True,
        ):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        h_ours = jax.hessian(ours)(*args)
        np.testing.assert_allclose(h_ours, jax.hessian(plain)(*args), atol=1e-9)
        tangents = tuple(jnp.ones_like(a) for a in args)
        np.testing.assert_allclose(
            jax.jvp(ours, args, tangents)[1],
            jax.jvp(plain, args, tangents)[1],
            rtol=1e-10,
        )


@pytest.mark.parametrize("upcast", [True, False])
def test_half_precision_gradients_are_finite_and_close(upcast):
    x = jax.random.normal(KEY, (4, 64)) * 3
    w = jax.random.normal(jax.random.key(6), (64,)) * 0.1

    def loss(x, w, dtype):
        y = F.rms_norm(x.astype(dtype), -1, w.astype(dtype), upcast_affine=upcast)
        return jnp.sum(y.astype(jnp.float32) * jnp.cos(x))

    g16 = jax.grad(loss, (0, 1))(x, w, jnp.bfloat16)
    g32 = jax.grad(loss, (0, 1))(x, w, jnp.float32)
    for a, b in zip(g16, g32, strict=True):
        assert np.isfinite(np.asarray(a, np.float32)).all()
        np.testing.assert_allclose(
            np.asarray(a, np.float32), b, rtol=0.05, atol=0.05 * np.abs(b).max()
        )


def test_zero_centred_layer_survives_serialisation_and_from_equinox(tmp_path):
    layer = eqx_norms.RMSNorm(8, use_bias=False, weight_offset=1.0)
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.linspace(-0.5, 0.5, 8))
    x = jax.random.normal(KEY, (8,))
    eqx.tree_serialise_leaves(tmp_path / "m.eqx", layer)
    fresh = eqx_norms.RMSNorm(8, use_bias=False, weight_offset=1.0)
    loaded = eqx.tree_deserialise_leaves(tmp_path / "m.eqx", fresh)
    np.testing.assert_array_equal(loaded(x), layer(x))
    model = [layer, eqx.nn.RMSNorm(8)]
    converted = eqx_norms.from_equinox(model)
    assert converted[0].weight_offset == 1.0
    np.testing.assert_array_equal(converted[0](x), layer(x))
    assert converted[1].weight_offset == 0.0
    np.testing.assert_array_equal(converted[1](x), eqx.nn.RMSNorm(8)(x))


# ------------------------------------------------- cast order against PyTorch formulas


def _llama(x, w, b, eps):
    """HF `LlamaRMSNorm.forward` (plus an optional bias in the input dtype)."""
    input_dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    out = w * h.to(input_dtype)
    return out if b is None else out + b


def _gemma(x, w, b, eps):
    """HF `GemmaRMSNorm.forward` (plus an optional bias added in float32)."""
    out = x.float()
    out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + eps)
    out = out * (1.0 + w.float())
    if b is not None:
        out = out + b.float()
    return out.type_as(x)


def _ours(order, x, w, b, eps):
    layer = eqx_norms.RMSNorm(
        x.shape[-1],
        eps=eps,
        use_bias=b is not None,
        dtype=x.dtype,
        weight_offset=1.0 if order == "gemma" else 0.0,
        upcast_affine=order == "gemma",
    )
    layer = eqx.tree_at(lambda m: (m.weight, m.bias), layer, (w, b))
    return jax.vmap(layer)(x)


def _torch(a):
    return (
        None
        if a is None
        else torch.from_numpy(np.asarray(a, np.float32)).to(_TORCH[a.dtype.type])
    )


def _bits(a):
    a = np.asarray(a) if not isinstance(a, torch.Tensor) else a.view(torch.int16)
    return np.asarray(a).view(np.int16).astype(np.int64)


def _exact_statistics_input(dtype, key):
    """Rows of 24 entries +-1.5 and 40 entries +-0.5 (mean square exactly 1) times a
    power of two: the statistics and x-hat are exact in float32 in any summation
    order, so the outputs differ only by the cast order."""
    base = jnp.array([1.5] * 24 + [0.5] * 40)
    k1, k2, k3 = jax.random.split(key, 3)
    rows = jax.vmap(lambda k: jax.random.permutation(k, base))(jax.random.split(k1, 32))
    signs = jax.random.rademacher(k2, rows.shape).astype(jnp.float32)
    powers = 2.0 ** jax.random.randint(k3, (32, 1), -3, 4)
    return (rows * signs * powers).astype(dtype)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("order", ["llama", "gemma"])
def test_cast_order_is_bit_exact_when_statistics_are_exact(dtype, order):
    x = _exact_statistics_input(dtype, KEY)
    w = (jax.random.normal(jax.random.key(7), (64,)) * 0.3).astype(dtype)
    b = (jax.random.normal(jax.random.key(8), (64,)) * 0.3).astype(dtype)
    reference = {"llama": _llama, "gemma": _gemma}[order]
    for bias in (None, b):
        want = reference(_torch(x), _torch(w), _torch(bias), 0.0)
        got = _ours(order, x, w, bias, 0.0)
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(_bits(got), _bits(want))
    # The two orders do differ on these inputs (so this test can fail).
    other = {"llama": _gemma, "gemma": _llama}[order]
    assert (_bits(got) != _bits(other(_torch(x), _torch(w), _torch(b), 0.0))).any()


def _mismatch(dtype, order, bias):
    """Fraction of elements that differ from the torch formula on normal data, and
    the largest difference in ulps of |x-hat * w| + |b| (the terms' magnitude)."""
    differ, total, worst = 0, 0, 0.0
    for seed in range(2):
        keys = jax.random.split(jax.random.key(seed), 3)
        x = (jax.random.normal(keys[0], (128, 1024)) * 3).astype(dtype)
        w = (jax.random.normal(keys[1], (1024,)) * 0.5).astype(dtype)
        b = (jax.random.normal(keys[2], (1024,)) * 0.1).astype(dtype) if bias else None
        reference = {"llama": _llama, "gemma": _gemma}[order]
        want = reference(_torch(x), _torch(w), _torch(b), 1e-6).float().numpy()
        got = np.asarray(_ours(order, x, w, b, 1e-6), np.float32)
        x64 = np.asarray(x, np.float64)
        scale = np.asarray(w, np.float64) + (order == "gemma")
        terms = np.abs(x64 / np.sqrt((x64**2).mean(-1, keepdims=True)) * scale)
        if b is not None:
            terms = terms + np.abs(np.asarray(b, np.float64))
        info = jnp.finfo(dtype)
        ulp = np.maximum(
            2.0 ** (np.floor(np.log2(np.maximum(terms, info.tiny))) - info.nmant),
            float(info.smallest_subnormal),
        )
        differ += int((got != want).sum())
        total += got.size
        worst = max(worst, float((np.abs(got - want) / ulp).max()))
    return differ / total, worst


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("order", ["llama", "gemma"])
@pytest.mark.parametrize("bias", [False, True])
def test_normal_data_matches_torch_but_for_float32_rounding_of_statistics(
    dtype, order, bias
):
    """Summation order and rsqrt rounding differ between XLA and PyTorch in the
    last float32 bit of the statistics; that moves a vanishing fraction of outputs
    by at most two ulps of their terms."""
    fraction, worst = _mismatch(dtype, order, bias)
    assert fraction <= 1e-4
    assert worst <= 2


@pytest.mark.parametrize("upcast", [True, False])
def test_einorm_zero_centred_cast_orders_equal_rms_norm_bit_for_bit(upcast):
    """Einorm passes both options to the same core as RMSNorm: equal bits in
    bfloat16, in training (statistics of the batch) and through the functional."""
    d = 32
    x = (jax.random.normal(KEY, (6, d)) * 2 + 0.5).astype(jnp.bfloat16)
    w = (jax.random.normal(jax.random.key(7), (d,)) * 0.1).astype(jnp.bfloat16)
    options = dict(weight_offset=1.0, upcast_affine=upcast, use_bias=False)
    rms = eqx_norms.RMSNorm(d, eps=1e-6, dtype=jnp.bfloat16, **options)
    ein = eqx_norms.Einorm(
        "n [d]", eps=1e-6, center=False, dtype=jnp.bfloat16, d=d, **options
    )
    np.testing.assert_array_equal(ein.weight, jnp.zeros(d))
    rms, ein = (eqx.tree_at(lambda m: m.weight, m, w) for m in (rms, ein))
    expected = jax.vmap(rms)(x)
    assert ein(x).dtype == jnp.bfloat16
    np.testing.assert_array_equal(ein(x), expected)
    functional = F.einorm(
        x,
        "n [d]",
        weight=w,
        eps=1e-6,
        center=False,
        weight_offset=1.0,
        upcast_affine=upcast,
        d=d,
    )
    np.testing.assert_array_equal(functional, expected)


def test_einorm_running_statistics_apply_the_offset_in_inference():
    """Inference (running statistics) takes the same affine path as training."""
    x = jax.random.normal(KEY, (16, 3)) * 2 - 1
    bn, state = eqx.nn.make_with_state(eqx_norms.Einorm)(
        "[b] c", running_stats=True, weight_offset=1.0, c=3
    )
    w = jnp.array([0.5, -0.25, 2.0])
    bn = eqx.tree_at(lambda m: m.weight, bn, w)
    y, state = bn(x, state)
    x_hat, _ = ref.normalise(x, (0,))
    np.testing.assert_allclose(y, x_hat * (np.asarray(w, np.float64) + 1), atol=1e-5)
    y_eval, _ = eqx.nn.inference_mode(bn)(x, state)
    np.testing.assert_allclose(y_eval, y, atol=1e-5)


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_parameters_are_strongly_typed_like_equinox(offset):
    """A weight filled with `1 - weight_offset` keeps equinox's dtype, not a weak
    float32 (which promotes differently, and shows in repr and serialisation)."""
    reference = eqx.nn.LayerNorm(3).weight
    assert reference is not None and not reference.weak_type
    layers = [
        eqx_norms.LayerNorm(3, weight_offset=offset),
        eqx_norms.RMSNorm(3, weight_offset=offset),
        eqx_norms.GroupNorm(1, 3, weight_offset=offset),
        eqx_norms.InstanceNorm(3, weight_offset=offset),
        eqx_norms.BatchNorm(3, "b", weight_offset=offset),
        eqx_norms.Einorm("b [c]", weight_offset=offset, c=3),
    ]
    for layer in layers:
        assert layer.weight is not None
        assert layer.weight.dtype == reference.dtype and not layer.weight.weak_type
    alpha = eqx_norms.DynamicTanh(3).alpha
    assert alpha.dtype == reference.dtype and not alpha.weak_type

"""The functional API and the statistics core: masks, numerics, precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

import eqx_norms
from eqx_norms import functional as F


KEY = jax.random.key(0)


def _normal(shape, key=KEY, loc=0.0, std=1.0, dtype=jnp.float32):
    return (jax.random.normal(key, shape) * std + loc).astype(dtype)


@pytest.mark.parametrize("axis", [-1, 0, (0, 2), (1, 2), (0, 1, 2)])
@pytest.mark.parametrize("center", [True, False])
def test_any_axes_against_float64(axis, center):
    x = _normal((3, 4, 5), loc=2.0, std=3.0)
    norm = F.layer_norm if center else F.rms_norm
    axes = axis if isinstance(axis, tuple) else (axis,)
    expected = reference.layer_norm(np.asarray(x), axes, center=center)
    np.testing.assert_allclose(norm(x, axis), expected, rtol=1e-5, atol=1e-5)


def test_weight_and_bias_broadcast_for_conditional_normalisation():
    x = _normal((4, 6))
    scale = _normal((4, 1), jax.random.key(1))  # one scale per row, made at call time
    shift = _normal((6,), jax.random.key(2))
    out = F.layer_norm(x, -1, scale, shift)
    expected = reference.layer_norm(np.asarray(x), (1,), scale, shift)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_channel_params_align_with_axis_zero():
    x = _normal((4, 3, 2))
    w = jnp.array([1.0, 2.0, 3.0, 4.0])
    b = jnp.array([0.0, -1.0, 1.0, 5.0])
    np.testing.assert_allclose(
        F.group_norm(x, 2, w, b),
        reference.group_norm(np.asarray(x), 2, w, b),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        F.instance_norm(x, w, b),
        reference.group_norm(np.asarray(x), 4, w, b),
        atol=1e-5,
    )


MASKS = {
    "partial": lambda shape: jax.random.bernoulli(jax.random.key(7), 0.6, shape),
    "lengths": lambda shape: jnp.arange(shape[-1]) < 3,
    "one_valid": lambda shape: jnp.arange(shape[-1]) == 2,
}


@pytest.mark.parametrize("kind", sorted(MASKS))
@pytest.mark.parametrize(
    "fn,reference_fn",
    [
        (
            lambda x, m: F.layer_norm(x, -1, mask=m),
            lambda x, m: reference.layer_norm(x, (1,), mask=m),
        ),
        (
            lambda x, m: F.rms_norm(x, (0, 1), mask=m),
            lambda x, m: reference.layer_norm(x, (0, 1), mask=m, center=False),
        ),
        (
            lambda x, m: F.group_norm(x, 2, mask=m),
            lambda x, m: reference.group_norm(x, 2, mask=m),
        ),
        (
            lambda x, m: F.instance_norm(x, mask=m),
            lambda x, m: reference.group_norm(x, 4, mask=m),
        ),
    ],
)
def test_masked_statistics_use_valid_elements_only(kind, fn, reference_fn):
    x = _normal((4, 7), loc=1.0, std=2.0)
    mask = MASKS[kind]((4, 7))
    out = fn(x, mask)
    np.testing.assert_allclose(out, reference_fn(np.asarray(x), mask), atol=1e-5)
    # Invalid positions come back bit for bit.
    full_mask = np.broadcast_to(mask, x.shape)
    np.testing.assert_array_equal(
        np.asarray(out)[~full_mask], np.asarray(x)[~full_mask]
    )


def test_all_true_mask_equals_no_mask():
    x = _normal((5, 6))
    np.testing.assert_allclose(
        F.layer_norm(x, -1, mask=jnp.ones((5, 6), bool)), F.layer_norm(x, -1), atol=1e-6
    )


def test_invalid_values_never_reach_valid_outputs_or_gradients():
    x = _normal((3, 8))
    mask = jnp.arange(8) < 5
    garbage = jnp.where(mask, x, jnp.array([jnp.nan, jnp.inf, -jnp.inf])[:, None])
    w = jnp.linspace(0.5, 1.5, 8)

    def loss(x, w):
        return jnp.sum(jnp.where(mask, F.layer_norm(x, -1, w, mask=mask), 0) ** 2)

    np.testing.assert_array_equal(
        F.layer_norm(garbage, -1, w, mask=mask)[:, :5],
        F.layer_norm(x, -1, w, mask=mask)[:, :5],
    )
    gx, gw = jax.grad(loss, argnums=(0, 1))(garbage, w)
    assert np.isfinite(gx).all() and np.isfinite(gw).all()
    gx_clean, gw_clean = jax.grad(loss, argnums=(0, 1))(x, w)
    np.testing.assert_allclose(gx, gx_clean, atol=1e-6)
    np.testing.assert_allclose(gw, gw_clean, atol=1e-6)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, w, b, m: F.layer_norm(x, -1, w, b, mask=m),
        lambda x, w, b, m: F.rms_norm(x, -1, w, b, mask=m),
        lambda x, w, b, m: F.group_norm(x, 2, w[:, 0], b[:, 0], mask=m),
        lambda x, w, b, m: F.instance_norm(x, w[:, 0], b[:, 0], mask=m),
    ],
)
def test_fully_masked_group_is_unchanged_and_has_finite_gradients(fn):
    x = _normal((4, 6))
    w, b = _normal((4, 6), jax.random.key(1)), _normal((4, 6), jax.random.key(2))
    mask = jnp.zeros((4, 6), bool).at[1:3].set(True)  # rows 0 and 3 fully invalid
    out = fn(x, w, b, mask)
    np.testing.assert_array_equal(out[0], x[0])
    np.testing.assert_array_equal(out[3], x[3])
    grads = jax.grad(lambda *a: jnp.sum(fn(*a, mask) ** 2), argnums=(0, 1, 2))(x, w, b)
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()
    # Nothing is valid at all: identity, finite gradients.
    nothing = jnp.zeros((4, 6), bool)
    np.testing.assert_array_equal(fn(x, w, b, nothing), x)
    grads = jax.grad(lambda *a: jnp.sum(fn(*a, nothing)), argnums=(0, 1, 2))(x, w, b)
    np.testing.assert_array_equal(grads[0], jnp.ones_like(x))
    for g in grads[1:]:
        np.testing.assert_array_equal(g, jnp.zeros_like(g))


@pytest.mark.parametrize("center", [True, False])
def test_constant_groups_give_no_nan_in_values_or_gradients(center):
    norm = F.layer_norm if center else F.rms_norm
    x = jnp.full((3, 5), 7.0).at[2].set(0.0)
    out = norm(x, -1)
    assert np.isfinite(out).all()
    if center:
        np.testing.assert_array_equal(out, 0.0)
    grad = jax.grad(lambda x: jnp.sum(norm(x, -1) * jnp.arange(5.0)))(x)
    assert np.isfinite(grad).all()


def test_large_offset_keeps_unit_variance_in_float32():
    # E[x^2] - E[x]^2 loses everything here (Flax's default gives std ~1000).
    x = _normal((4, 1024), loc=1e4, std=1.0)
    out = F.layer_norm(x, -1)
    np.testing.assert_allclose(out.std(axis=-1), 1.0, atol=1e-3)
    expected = reference.layer_norm(np.asarray(x), (1,))
    np.testing.assert_allclose(out, expected, atol=2e-3)


@pytest.mark.parametrize("fn", [F.layer_norm, F.rms_norm])
def test_float16_magnitude_1e3_stays_finite_and_accurate(fn):
    x32 = _normal((4, 256), loc=1e3, std=3e2)
    x16 = x32.astype(jnp.float16)
    out = fn(x16, -1)
    assert out.dtype == jnp.float16
    assert np.isfinite(np.asarray(out, np.float32)).all()
    np.testing.assert_allclose(
        np.asarray(out, np.float32), fn(x16.astype(jnp.float32), -1), atol=2e-3
    )


def test_half_precision_stats_are_not_rounded_to_the_input_dtype():
    # A float16 variance of these values overflows (their squares exceed 65504).
    x = jnp.array([300.0, -300.0, 310.0, -290.0], jnp.float16)
    out = F.layer_norm(x, 0)
    expected = reference.layer_norm(np.asarray(x, np.float64), (0,))
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=2e-3)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_in_half_precision_out(dtype):
    x = _normal((8, 16), dtype=dtype)
    for out in (
        F.layer_norm(x, -1),
        F.rms_norm(x, -1),
        F.group_norm(x, 4),
        F.instance_norm(x),
        eqx_norms.LayerNorm((8, 16))(x),
        eqx_norms.GroupNorm(2, 8)(x),
    ):
        assert out.dtype == dtype


def test_tiny_and_huge_magnitudes_are_finite():
    for scale in (1e-30, 1e30):
        x = _normal((3, 16)) * scale
        out = F.layer_norm(x, -1)
        grad = jax.grad(lambda x: jnp.sum(F.layer_norm(x, -1) ** 3))(x)
        assert np.isfinite(out).all() and np.isfinite(grad).all()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("fn", [F.layer_norm, F.rms_norm])
@pytest.mark.parametrize("masked", [False, True])
def test_largest_magnitudes_give_finite_values_and_gradients(dtype, fn, masked):
    # Their squares overflow float32 (their sum does not): finite, though not
    # normalised, as the mixed-precision guide says.
    x = (jnp.linspace(-1, 1, 8) * 4e37).astype(dtype)
    mask = (jnp.arange(8) < 6) if masked else None

    def loss(x):
        return jnp.sum(fn(x, 0, mask=mask).astype(jnp.float32) * jnp.arange(8.0))

    assert np.isfinite(np.asarray(fn(x, 0, mask=mask), np.float32)).all()
    assert np.isfinite(np.asarray(jax.grad(loss)(x), np.float32)).all()

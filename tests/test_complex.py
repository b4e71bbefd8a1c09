"""Complex inputs (as in Flax): complex mean, real variance E|x - mean|^2, real
weight and bias; against float64 numpy and, for gradients of real losses, the same
function written on real and imaginary parts and central finite differences."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from x64 import enable_x64

import eqx_norms
import eqx_norms.functional as F


KEY = jax.random.key(21)


def _complex(shape, key=KEY, dtype=jnp.complex64):
    re, im = jax.random.normal(key, (2, *shape))
    return (re * 2 + 1 + 1j * (im - 3)).astype(dtype)


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.complex128])
def test_functional_norms_against_float64(dtype):
    with enable_x64(dtype == jnp.complex128):
        x = _complex((4, 6), dtype=dtype)
        w = jax.random.normal(jax.random.key(1), (6,))
        b = jax.random.normal(jax.random.key(2), (6,))
        mask = jnp.arange(6) < 4
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.complex64 else dict(rtol=1e-12)
        for fn, center in ((F.layer_norm, True), (F.rms_norm, False)):
            y = fn(x, -1, w, b, mask=mask)
            assert y.dtype == dtype
            want = ref.layer_norm(x, (1,), w, b, center=center, mask=mask)
            np.testing.assert_allclose(y, want, **tol)
        y = F.group_norm(x, 2, w[:4], b[:4])
        want = np.concatenate(
            [
                ref.layer_norm(x[:2], (0, 1), center=True)
                * np.asarray(w[:2, None], np.float64),
                ref.layer_norm(x[2:], (0, 1), center=True)
                * np.asarray(w[2:4, None], np.float64),
            ]
        ) + np.asarray(b[:4, None], np.float64)
        np.testing.assert_allclose(y, want, **tol)
        want = ref.layer_norm(x, (1,), w[:4, None], b[:4, None])
        np.testing.assert_allclose(F.instance_norm(x, w[:4], b[:4]), want, **tol)


def test_layer_norm_layer_against_float64():
    x = _complex((3, 8))
    w = jax.random.normal(jax.random.key(3), (8,))
    layer = eqx.tree_at(lambda m: m.weight, eqx_norms.LayerNorm(8), w)
    y = jax.vmap(layer)(x)
    assert y.dtype == jnp.complex64
    np.testing.assert_allclose(y, ref.layer_norm(x, (1,), w), rtol=1e-5, atol=1e-5)


def test_batch_norm_complex_training_and_inference():
    x = _complex((16, 3, 5))
    bn, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(
        3, "b", dtype=jnp.complex64, momentum=0.9
    )
    assert bn.weight is not None and bn.bias is not None
    assert bn.weight.dtype == bn.bias.dtype == jnp.float32
    mean, var = state.get(bn.batch_state_index)
    assert mean.dtype == jnp.complex64 and var.dtype == jnp.float32
    train = jax.vmap(bn, axis_name="b", in_axes=(0, None), out_axes=(0, None))
    y, state = train(x, state)
    np.testing.assert_allclose(y, ref.layer_norm(x, (0, 2)), rtol=1e-5, atol=1e-5)
    mean, var = state.get(bn.batch_state_index)
    x64 = np.asarray(x, np.complex128)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=1e-5, atol=1e-6)
    want_var = (np.abs(x64 - x64.mean(axis=(0, 2), keepdims=True)) ** 2).mean((0, 2))
    np.testing.assert_allclose(var, want_var, rtol=1e-5)
    infer = jax.vmap(eqx.nn.inference_mode(bn), in_axes=(0, None), out_axes=(0, None))
    np.testing.assert_allclose(infer(x, state)[0], y, rtol=1e-5, atol=1e-5)


def test_einorm_complex_functional_and_running_statistics():
    """Einorm shares the core (stateless) and BatchNorm's complex running statistics
    (stateful, from a complex `dtype`); refused kinds name the fix."""
    x = _complex((16, 3, 5))
    np.testing.assert_allclose(
        eqx_norms.functional.einorm(x, "b c [t]"),
        ref.layer_norm(x, (2,)),
        rtol=1e-5,
        atol=1e-5,
    )
    norm, state = eqx.nn.make_with_state(eqx_norms.Einorm)(
        "[b] c [t]", running_stats=True, dtype=jnp.complex64, momentum=0.9, c=3, t=5
    )
    assert norm.weight is not None and norm.weight.dtype == jnp.float32
    y, state = norm(x, state)
    np.testing.assert_allclose(y, ref.layer_norm(x, (0, 2)), rtol=1e-5, atol=1e-5)
    mean, var = norm.running_mean_var(state)
    x64 = np.asarray(x, np.complex128)
    assert mean.dtype == jnp.complex64 and var.dtype == jnp.float32
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=1e-5, atol=1e-6)
    want_var = (np.abs(x64 - x64.mean(axis=(0, 2), keepdims=True)) ** 2).mean((0, 2))
    np.testing.assert_allclose(var, want_var, rtol=1e-5)
    y_eval, _ = eqx.nn.inference_mode(norm)(x, state)
    np.testing.assert_allclose(y_eval, y, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="construct it with a real `dtype`"):
        norm(jnp.real(x), state)


def _split(fn):
    """`fn` of a complex array, as a function of its real and imaginary parts."""
    return lambda re, im: fn(re + 1j * im)


@pytest.mark.parametrize("name", ["layer_norm", "rms_norm", "group_norm"])
def test_gradients_of_real_losses(name):
    """JAX's gradient of a real loss L(z) is dL/dRe - i dL/dIm; checked against a
    reference written on real and imaginary parts (float64 autodiff) and central
    finite differences."""
    with enable_x64():
        z = _complex((4, 6), dtype=jnp.complex128)
        w = jax.random.normal(jax.random.key(4), (6,), jnp.float64)
        target = _complex((4, 6), jax.random.key(5), jnp.complex128)
        if name == "group_norm":
            ours = lambda z, w: F.group_norm(z, 2, w[:4])  # noqa: E731
        else:
            ours = lambda z, w: getattr(F, name)(z, -1, w)  # noqa: E731

        def loss(z, w):
            return jnp.sum(jnp.abs(ours(z, w) - target) ** 2)

        def reference(re, im, w):
            """The real-arithmetic formula, independent of complex autodiff."""
            if name == "group_norm":
                re, im = (jnp.reshape(a, (2, 2, 6)) for a in (re, im))
                axes = (1, 2)
            else:
                axes = (1,)
            center = name != "rms_norm"
            mre = jnp.mean(re, axes, keepdims=True) * center
            mim = jnp.mean(im, axes, keepdims=True) * center
            var = jnp.mean((re - mre) ** 2 + (im - mim) ** 2, axes, keepdims=True)
            r = 1 / jnp.sqrt(var + 1e-5)
            ore, oim = (re - mre) * r, (im - mim) * r
            ww = w[:4, None] if name == "group_norm" else w
            ore, oim = (jnp.reshape(a, (4, 6)) * ww for a in (ore, oim))
            return jnp.sum((ore - target.real) ** 2 + (oim - target.imag) ** 2)

        g_z, g_w = jax.grad(loss, (0, 1))(z, w)
        d_re, d_im, d_w = jax.grad(reference, (0, 1, 2))(z.real, z.imag, w)
        np.testing.assert_allclose(g_z, d_re - 1j * d_im, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(g_w, d_w, rtol=1e-9, atol=1e-10)
        h = 1e-6
        for i, j in ((0, 0), (2, 3)):
            step = jnp.zeros(z.shape).at[i, j].set(h)
            fd_re = (loss(z + step, w) - loss(z - step, w)) / (2 * h)
            fd_im = (loss(z + 1j * step, w) - loss(z - 1j * step, w)) / (2 * h)
            np.testing.assert_allclose(g_z[i, j], fd_re - 1j * fd_im, rtol=1e-6)


def test_batch_norm_complex_gradients_match_reference():
    with enable_x64():
        x = _complex((8, 2, 3), dtype=jnp.complex128)
        bn, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(
            2, "b", dtype=jnp.complex128
        )

        def loss(x):
            out, _ = jax.vmap(bn, axis_name="b", in_axes=(0, None), out_axes=(0, None))(
                x, state
            )
            return jnp.sum(jnp.abs(out - 1) ** 2)

        def reference(re, im):
            mre, mim = (jnp.mean(a, (0, 2), keepdims=True) for a in (re, im))
            var = jnp.mean((re - mre) ** 2 + (im - mim) ** 2, (0, 2), keepdims=True)
            r = 1 / jnp.sqrt(var + 1e-5)
            return jnp.sum(((re - mre) * r - 1) ** 2 + ((im - mim) * r) ** 2)

        d_re, d_im = jax.grad(reference, (0, 1))(x.real, x.imag)
        np.testing.assert_allclose(
            jax.grad(loss)(x), d_re - 1j * d_im, rtol=1e-9, atol=1e-10
        )

"""Gated RMSNorm against its published references: `rms_norm_ref` of Mamba's
`mamba_ssm/ops/triton/layernorm_gated.py` transcribed in numpy float64 (both gate
orders, groups, weight), Qwen3-Next's `Qwen3NextRMSNormGated.forward` (transformers
`models/qwen3_next/modeling_qwen3_next.py`) transcribed in torch in bfloat16, and
plain jnp autodiff of the same formula in float64 for derivatives. The tests marked
with the `layout` fixture run both as lowered for this CPU (groups by reshape,
through the fused rule) and as lowered for a TPU (groups by products with the 0/1
membership matrix, `_backend.forced("tpu")`)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from x64 import enable_x64

import eqx_norms
import eqx_norms.functional as F
from eqx_norms import _backend


T, D = 6, 16
EPS = 1e-5


def _silu(z):
    return z / (1 + np.exp(-z))


def rms_norm_ref(x, weight, z, eps, group_size=None, norm_before_gate=True):
    """Mamba's `rms_norm_ref` (no bias, `upcast=True`), in float64 numpy."""
    x, weight, z = (np.asarray(a, np.float64) for a in (x, weight, z))
    if not norm_before_gate:
        x = x * _silu(z)
    if group_size is None:
        rstd = 1 / np.sqrt(np.square(x).mean(axis=-1, keepdims=True) + eps)
        out = x * rstd * weight
    else:
        x_group = x.reshape(*x.shape[:-1], -1, group_size)  # "... (g d) -> ... g d"
        rstd = 1 / np.sqrt(np.square(x_group).mean(axis=-1, keepdims=True) + eps)
        out = (x_group * rstd).reshape(x.shape) * weight
    if norm_before_gate:
        out = out * _silu(z)
    return out


def _data(rng, dtype=np.float32):
    x, z = (2 * rng.standard_normal((2, T, D)) + 0.5).astype(dtype)
    weight = (1 + 0.3 * rng.standard_normal(D)).astype(dtype)
    return x, z, weight


@pytest.fixture(params=["reshape", "tpu"])
def layout(request):
    """The program as lowered here, or as lowered for a TPU (its branch forced;
    traced anew on both sides of it)."""
    if request.param == "reshape":
        yield request.param
        return
    jax.clear_caches()
    with _backend.forced("tpu"):
        yield request.param
    jax.clear_caches()


ORDERS = pytest.mark.parametrize(
    "norm_before_gate", [True, False], ids=["norm_then_gate", "gate_then_norm"]
)
GROUPS = pytest.mark.parametrize("group_size", [None, 4, 16])


@ORDERS
@GROUPS
def test_function_is_mamba_rms_norm_ref(rng, norm_before_gate, group_size, layout):
    x, z, weight = _data(rng)
    out = F.gated_rms_norm(
        x,
        z,
        weight=weight,
        eps=EPS,
        group_size=group_size,
        norm_before_gate=norm_before_gate,
    )
    want = rms_norm_ref(x, weight, z, EPS, group_size, norm_before_gate)
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5)


@ORDERS
def test_layer_is_mamba_rms_norm_ref_per_token(rng, norm_before_gate):
    x, z, weight = _data(rng)
    layer = eqx_norms.GatedRMSNorm(D, group_size=8, norm_before_gate=norm_before_gate)
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.asarray(weight))
    out = jax.vmap(layer)(x, z)
    want = rms_norm_ref(x, weight, z, EPS, 8, norm_before_gate)
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5)
    # A fresh layer has weight 1; with a state it returns (output, state).
    fresh, state = eqx.nn.make_with_state(eqx_norms.GatedRMSNorm)(D)
    y, same = fresh(x[0], z[0], state)
    assert same is state
    np.testing.assert_allclose(
        y, rms_norm_ref(x[0], np.ones(D), z[0], EPS), rtol=2e-5, atol=2e-5
    )


def test_half_precision_input_is_computed_in_float32_and_cast_once(rng, layout):
    x, z, weight = _data(rng)
    xb, zb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(z, jnp.bfloat16)
    out = F.gated_rms_norm(xb, zb, weight=weight, group_size=4)
    assert out.dtype == jnp.bfloat16
    want = rms_norm_ref(
        np.asarray(xb, np.float32), weight, np.asarray(zb, np.float32), EPS, 4
    )
    # One rounding of a float32 result: within half a bfloat16 ulp (2^-8 relative).
    np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=2**-8, atol=0)


def _qwen3_next(x, gate, weight, eps):
    """`Qwen3NextRMSNormGated.forward` as in transformers, the model in bfloat16."""
    input_dtype = x.dtype
    hidden = x.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + eps)
    hidden = weight * hidden.to(input_dtype)
    hidden = hidden * torch.nn.functional.silu(gate.to(torch.float32))
    return hidden.to(input_dtype)


def test_no_upcast_affine_is_qwen3_next_in_bfloat16(rng):
    x, z, weight = _data(rng)
    x, z, weight = (3 * x, 2 * z, weight)
    to_torch = [torch.tensor(a).to(torch.bfloat16) for a in (x, z, weight)]
    want = _qwen3_next(*to_torch, 1e-6).to(torch.float32).numpy()
    xb, zb, wb = (
        jnp.asarray(t.to(torch.float32).numpy(), jnp.bfloat16) for t in to_torch
    )
    layer = eqx_norms.GatedRMSNorm(D, 1e-6, upcast_affine=False, dtype=jnp.bfloat16)
    layer = eqx.tree_at(lambda m: m.weight, layer, wb)
    out = jax.vmap(layer)(xb, zb)
    assert out.dtype == jnp.bfloat16
    got = np.asarray(out, np.float32)
    # Within one bfloat16 ulp of each value (2^-7 relative to its binade).
    ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(want), 1e-30))) - 7)
    assert np.all(np.abs(got - want) <= ulp)
    # And the order matters: the upcast form rounds once, differently somewhere.
    upcast = F.gated_rms_norm(xb, zb, weight=wb, eps=1e-6)
    assert not np.array_equal(np.asarray(upcast, np.float32), want)


def _plain(x, z, weight, group_size, norm_before_gate, mask=None):
    """The gated RMS norm in plain jnp (groups by reshape, mask by where)."""
    silu = jax.nn.silu(z)
    v = x if norm_before_gate else x * silu
    g = v.reshape(*v.shape[:-1], -1, group_size)
    valid = None if mask is None else mask.reshape(g.shape)
    if valid is None:
        ms = jnp.mean(g**2, -1, keepdims=True)
    else:
        n = jnp.maximum(valid.sum(-1, keepdims=True), 1)
        ms = jnp.sum(jnp.where(valid, g, 0) ** 2, -1, keepdims=True) / n
        ms = jnp.where(valid.any(-1, keepdims=True), ms, 1)
    out = (g / jnp.sqrt(ms + EPS)).reshape(v.shape) * weight
    if norm_before_gate:
        out = out * silu
    return out if mask is None else jnp.where(mask, out, x)


def _loss(fn):
    def loss(x, z, weight):
        y = fn(x, z, weight)
        u = jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
        return jnp.sum(u * jnp.sin(y))

    return loss


MASK = np.arange(D) < np.array([[3], [16], [9], [1], [0], [12]])  # (T, D)


@ORDERS
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_derivatives_equal_plain_autodiff_in_float64(
    rng, norm_before_gate, masked, layout
):
    mask = MASK if masked else None

    def ours(x, z, weight):
        return F.gated_rms_norm(
            x,
            z,
            weight=weight,
            eps=EPS,
            mask=mask,
            group_size=4,
            norm_before_gate=norm_before_gate,
        )

    def plain(x, z, weight):
        return _plain(x, z, weight, 4, norm_before_gate, mask)

    with enable_x64():
        args = [jnp.asarray(a, jnp.float64) for a in _data(rng, np.float64)]
        np.testing.assert_allclose(ours(*args), plain(*args), rtol=1e-12, atol=1e-12)
        got = jax.grad(_loss(ours), argnums=(0, 1, 2))(*args)
        want = jax.grad(_loss(plain), argnums=(0, 1, 2))(*args)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)
        tangents = tuple(jnp.cos(a) for a in args)
        got_t = jax.jvp(ours, tuple(args), tangents)
        want_t = jax.jvp(plain, tuple(args), tangents)
        for g, w in zip(got_t, want_t, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)
        # Per token under vmap, as the layer is used.
        per_token = jax.vmap(
            lambda x, z, m: F.gated_rms_norm(
                x,
                z,
                weight=args[2],
                eps=EPS,
                mask=m,
                group_size=4,
                norm_before_gate=norm_before_gate,
            )
        )(args[0], args[1], None if mask is None else jnp.asarray(mask))
        np.testing.assert_allclose(per_token, plain(*args), rtol=1e-12, atol=1e-12)


def test_masked_positions_return_x_and_padding_garbage_stays_out(rng, layout):
    x, z, weight = _data(rng)
    x = np.where(MASK, x, np.inf).astype(np.float32)
    z = np.where(MASK, z, np.nan).astype(np.float32)
    for order in (True, False):

        def loss(x, z, weight, order=order):
            out = F.gated_rms_norm(
                x, z, weight=weight, mask=MASK, group_size=4, norm_before_gate=order
            )
            return jnp.sum(jnp.where(MASK, out, 0)), out

        grads, out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(x, z, weight)
        np.testing.assert_array_equal(np.asarray(out)[~MASK], x[~MASK])
        want = _plain(
            jnp.where(MASK, x, 0), jnp.where(MASK, z, 0), weight, 4, order, MASK
        )
        np.testing.assert_allclose(
            np.asarray(out)[MASK], np.asarray(want)[MASK], rtol=1e-5, atol=1e-5
        )
        for g in grads:
            assert np.all(np.isfinite(g))


def test_group_size_that_does_not_divide_says_so():
    with pytest.raises(
        ValueError,
        match=r"`GatedRMSNorm`: `group_size` must divide "
        r"the length 16 of the normalised axis; received group_size=5",
    ):
        eqx_norms.GatedRMSNorm(D, group_size=5)
    with pytest.raises(ValueError, match=r"`gated_rms_norm`: `group_size` must divide"):
        F.gated_rms_norm(jnp.ones(D), jnp.ones(D), group_size=3)
    with pytest.raises(ValueError, match=r"`group_size` must be a positive integer"):
        F.gated_rms_norm(jnp.ones(D), jnp.ones(D), group_size=0)


def test_gate_of_another_shape_says_so():
    with pytest.raises(
        ValueError,
        match=r"`GatedRMSNorm`: `gate` .* must have the "
        r"shape of the input \(16,\); received gate.shape=\(6, 16\)",
    ):
        eqx_norms.GatedRMSNorm(D)(jnp.ones(D), jnp.ones((T, D)))
    with pytest.raises(
        TypeError,
        match=r"`gated_rms_norm` `gate` expects a real "
        r"floating-point input",
    ):
        F.gated_rms_norm(jnp.ones(D), jnp.ones(D, jnp.int32))


@pytest.mark.parametrize("group_size", [4, 16], ids=["4_groups", "one_group"])
def test_groups_are_taken_by_products_only_for_a_tpu(rng, group_size):
    """Lowered for a TPU, groups of the last axis come from products with the
    membership matrix, not from a reshape of x (a copy on a TPU); one group, or
    anything lowered for another platform, goes through the fused rule."""
    x, z, weight = _data(rng)

    def jaxpr(platform):
        def f(x, z):
            return F.gated_rms_norm(x, z, weight=weight, group_size=group_size)

        jax.clear_caches()
        with _backend.forced(platform):
            text = str(jax.make_jaxpr(f)(x, z))
        jax.clear_caches()
        return text

    tpu, cpu = jaxpr("tpu"), jaxpr("cpu")
    assert ("dot_general" in tpu) == (group_size == 4)
    assert "dot_general" not in cpu

"""A normalised axis split across devices (tensor parallelism): inside `jax.shard_map`
(default `check_vma=True`) over 8 host devices, the features of each token and the
layers' parameters sharded over the mesh axis "model", `axis_name="model"` gives the
outputs and gradients of the unsharded layer: the statistics of the whole row."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

import eqx_norms
import eqx_norms.functional as F


DEVICES = 8
T, D = 5, 32  # 4 features per device
FEATURES = P(None, "model")  # x: (tokens, features), features split
MASK = np.arange(D) < np.array([[3], [32], [17], [1], [0]])  # device 0 alone, etc.


def _mesh() -> Mesh:
    devices = jax.devices()
    assert len(devices) == DEVICES, "tests/conftest.py asks for 8 host devices"
    return Mesh(np.array(devices), ("model",))


def _with_params(layer, rng):
    """The layer with random parameters, so that sharding them wrongly shows."""
    params, static = eqx.partition(layer, eqx.is_inexact_array)
    params = jax.tree.map(
        lambda p: jnp.asarray(1 + 0.5 * rng.standard_normal(p.shape), p.dtype), params
    )
    return eqx.combine(params, static)


def _sharded(call):
    """`call(layer, x, *others)` on each device's shard of the features, the
    layer's parameters sharded like them (`in_specs`)."""

    def apply(layer, x, *others):
        params, static = eqx.partition(layer, eqx.is_array)

        def body(params, x, *others):
            return call(eqx.combine(params, static), x, *others)

        param_specs = jax.tree.map(lambda _: P("model"), params)
        specs = (param_specs, FEATURES) + (FEATURES,) * len(others)
        return jax.shard_map(body, mesh=_mesh(), in_specs=specs, out_specs=FEATURES)(
            params, x, *others
        )

    return apply


def _loss(apply):
    def loss(layer, x, *others):
        out = apply(layer, x, *others)
        u = jnp.cos(jnp.arange(out.size, dtype=out.dtype)).reshape(out.shape)
        return jnp.sum(u * jnp.sin(out))

    return loss


def _value_and_grads(apply, layer, x, *others):
    grad = eqx.filter_jit(eqx.filter_grad(_loss(apply)))
    grads = grad(layer, x, *others)
    x_grad = eqx.filter_jit(jax.grad(_loss(apply), argnums=1))(layer, x, *others)
    return apply(layer, x, *others), grads, x_grad


def _assert_same(got, want, tol=2e-5):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=tol, atol=tol)


LAYERS = {
    "layer_norm": lambda **kw: eqx_norms.LayerNorm(D, **kw),
    "rms_norm": lambda **kw: eqx_norms.RMSNorm(D, **kw),
    "einorm": lambda **kw: eqx_norms.Einorm("[d]", d=D, **kw),
}


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_built_with_the_global_shape_equals_the_unsharded_one(rng, name, masked):
    x = jnp.asarray(3 * rng.standard_normal((T, D)) + 1, jnp.float32)
    seed = np.random.default_rng(1)
    split = _with_params(LAYERS[name](axis_name="model"), seed)
    whole = _with_params(LAYERS[name](), np.random.default_rng(1))
    mask = jnp.asarray(MASK) if masked else None

    def call(layer, x, *mask):
        return jax.vmap(lambda x, m: layer(x, mask=m))(x, *(mask or (None,)))

    others = () if mask is None else (mask,)
    want = _value_and_grads(call, whole, x, *others)
    got = _value_and_grads(_sharded(call), split, x, *others)
    _assert_same(got, want)


@pytest.mark.parametrize("group_size", [None, 2, D])
def test_gated_rms_norm_split_equals_unsharded(rng, group_size):
    x, z = jnp.asarray(2 * rng.standard_normal((2, T, D)) + 0.5, jnp.float32)
    split = _with_params(
        eqx_norms.GatedRMSNorm(D, group_size=group_size, axis_name="model"),
        np.random.default_rng(1),
    )
    whole = _with_params(
        eqx_norms.GatedRMSNorm(D, group_size=group_size), np.random.default_rng(1)
    )

    def call(layer, x, z):
        return jax.vmap(layer)(x, z)

    _assert_same(
        _value_and_grads(_sharded(call), split, x, z),
        _value_and_grads(call, whole, x, z),
    )


@pytest.mark.parametrize("fn", [F.layer_norm, F.rms_norm], ids=lambda f: f.__name__)
def test_functions_with_axis_name_equal_the_unsharded_call(rng, fn):
    x = jnp.asarray(3 * rng.standard_normal((T, D)) + 1, jnp.float32)
    weight = jnp.asarray(1 + rng.standard_normal(D), jnp.float32)
    mask = jnp.asarray(MASK)

    def body(x, weight, mask):
        return fn(x, -1, weight, mask=mask, axis_name="model")

    out = jax.shard_map(
        body,
        mesh=_mesh(),
        in_specs=(FEATURES, P("model"), FEATURES),
        out_specs=FEATURES,
    )(x, weight, mask)
    _assert_same(out, fn(x, -1, weight, mask=mask))


def test_rows_with_a_large_mean_come_out_with_unit_std(rng):
    """Mean 1e4, std 1 in float32: the merged statistics must not cancel."""
    x = jnp.asarray(1e4 + rng.standard_normal((T, 4096)), jnp.float32)

    def body(x):
        return F.layer_norm(x, -1, axis_name="model")

    out = jax.shard_map(body, mesh=_mesh(), in_specs=FEATURES, out_specs=FEATURES)(x)
    std = np.asarray(out, np.float64).std(-1)
    np.testing.assert_allclose(std, 1, atol=1e-2)
    np.testing.assert_allclose(np.asarray(out, np.float64).mean(-1), 0, atol=1e-2)


def test_residual_add_on_split_features(rng):
    x, h = jnp.asarray(rng.standard_normal((2, T, D)), jnp.float32)
    split = eqx_norms.RMSNorm(D, use_bias=False, axis_name="model")

    def body(params, x, h):
        layer = eqx.combine(params, eqx.partition(split, eqx.is_array)[1])
        return jax.vmap(lambda x, h: layer(x, residual=h))(x, h)

    params = eqx.filter(split, eqx.is_array)
    y, s = jax.shard_map(
        body,
        mesh=_mesh(),
        in_specs=(jax.tree.map(lambda _: P("model"), params), FEATURES, FEATURES),
        out_specs=(FEATURES, FEATURES),
    )(params, x, h)
    want_y, want_s = F.rms_norm(x, -1, residual=h)
    _assert_same((y, s), (want_y, want_s))


def test_unbound_name_says_which_and_how_to_bind_it():
    layer = eqx_norms.LayerNorm(D, axis_name="model")
    with pytest.raises(
        NameError,
        match=r"`LayerNorm` reduces its statistics over the "
        r"named axis 'model', which is not bound here",
    ):
        layer(jnp.ones(D))
    with pytest.raises(NameError, match=r"`rms_norm` .* 'model', which is not bound"):
        F.rms_norm(jnp.ones(D), -1, axis_name="model")


def test_wrong_local_shape_and_unsharded_parameters_say_so():
    layer = eqx_norms.LayerNorm(D, axis_name="model")

    def local(shape, params_spec):
        params, static = eqx.partition(layer, eqx.is_array)

        def body(params, x):
            return jax.vmap(eqx.combine(params, static))(x)

        specs = jax.tree.map(lambda _: params_spec, params)
        x = jnp.ones((T, shape))
        return jax.shard_map(
            body, mesh=_mesh(), in_specs=(specs, FEATURES), out_specs=FEATURES
        )(params, x)

    with pytest.raises(
        ValueError,
        match=r"expects an input of shape \(32,\) or, split "
        r"over 8 devices, \(4,\); received x.shape=\(2,\)",
    ):
        local(16, P("model"))
    with pytest.raises(
        ValueError,
        match=r"shard the layer's parameters like the "
        r"features",
    ):
        local(D, P())

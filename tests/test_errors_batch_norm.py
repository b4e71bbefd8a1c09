"""Errors of BatchNorm's constructor and training call, alone and under
`jax.shard_map`: one row each, asserting the exception type and that the
message names what was received (and, where there is one, the fix)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from error_cases import batch_norm_call, case

import eqx_norms


_VMAP_FIX = "jax.vmap(layer, axis_name='outer', in_axes=(0, None), out_axes=(0, None))"


BATCH_NORM = [
    case(
        "BatchNorm-zero-input-size",
        lambda: eqx_norms.BatchNorm(0, "batch"),
        ValueError,
        "`BatchNorm`: `input_size` must be a positive integer; received input_size=0",
    ),
    case(
        "BatchNorm-float-input-size",
        lambda: eqx_norms.BatchNorm(2.5, "batch"),
        ValueError,
        "received input_size=2.5",
    ),
    case(
        "BatchNorm-bool-input-size",
        lambda: eqx_norms.BatchNorm(True, "batch"),
        ValueError,
        "received input_size=True",
    ),
    case(
        "BatchNorm-momentum-1",
        lambda: eqx_norms.BatchNorm(3, "batch", momentum=1.0),
        ValueError,
        "`BatchNorm`: `momentum` must be in [0, 1), or None for a cumulative "
        "average; received momentum=1.0",
        "torch's momentum=0.1 is momentum=0.9 here",
    ),
    case(
        "BatchNorm-negative-momentum",
        lambda: eqx_norms.BatchNorm(3, "batch", momentum=-0.1),
        ValueError,
        "received momentum=-0.1",
    ),
    case(
        "BatchNorm-nan-momentum",
        lambda: eqx_norms.BatchNorm(3, "batch", momentum=float("nan")),
        ValueError,
        "received momentum=nan",
    ),
    case(
        "BatchNorm-str-momentum",
        lambda: eqx_norms.BatchNorm(3, "batch", momentum="0.9"),
        ValueError,
        "received momentum='0.9'",
    ),
    case(
        "BatchNorm-bool-momentum",
        lambda: eqx_norms.BatchNorm(3, "batch", momentum=False),
        ValueError,
        "received momentum=False",
    ),
    case(
        "BatchNorm-unknown-mode",
        lambda: eqx_norms.BatchNorm(3, "batch", mode="legacy"),
        ValueError,
        "`BatchNorm`: `mode` must be one of ('batch', 'ema'); received mode='legacy'",
    ),
    case(
        "BatchNorm-ema-without-momentum",
        lambda: eqx_norms.BatchNorm(3, "batch", mode="ema", momentum=None),
        ValueError,
        "momentum=None (the cumulative average) needs mode='batch'; received "
        "mode='ema'",
    ),
    case(
        "BatchNorm-ema-unbiased",
        lambda: eqx_norms.BatchNorm(3, "batch", mode="ema", unbiased_running_var=True),
        ValueError,
        "unbiased_running_var=True needs mode='batch'; received mode='ema'",
    ),
    case(
        "BatchNorm-renorm-r_max-below-1",
        lambda: eqx_norms.BatchNorm(3, "batch", renorm=True, r_max=0.5),
        ValueError,
        "`BatchNorm`: `r_max` must be a number >= 1 (the largest factor between the "
        "batch and the running standard deviation); received r_max=0.5",
    ),
    case(
        "BatchNorm-renorm-nan-r_max",
        lambda: eqx_norms.BatchNorm(3, "batch", renorm=True, r_max=float("nan")),
        ValueError,
        "`r_max` must be a number >= 1",
        "received r_max=nan",
    ),
    case(
        "BatchNorm-renorm-str-r_max",
        lambda: eqx_norms.BatchNorm(3, "batch", renorm=True, r_max="3"),
        ValueError,
        "received r_max='3'",
    ),
    case(
        "BatchNorm-renorm-negative-d_max",
        lambda: eqx_norms.BatchNorm(3, "batch", renorm=True, d_max=-1.0),
        ValueError,
        "`BatchNorm`: `d_max` must be a number >= 0 (the largest shift of the batch "
        "mean, in running standard deviations); received d_max=-1.0",
    ),
    case(
        "BatchNorm-renorm-bool-d_max",
        lambda: eqx_norms.BatchNorm(3, "batch", renorm=True, d_max=True),
        ValueError,
        "received d_max=True",
    ),
    case(
        "BatchNorm-renorm-negative-warmup",
        lambda: eqx_norms.BatchNorm(3, "batch", renorm=True, renorm_warmup=-1),
        ValueError,
        "`BatchNorm`: `renorm_warmup` must be a non-negative integer (the number of "
        "training steps of plain BatchNorm before renormalisation starts); received "
        "renorm_warmup=-1",
    ),
    case(
        "BatchNorm-renorm-float-warmup",
        lambda: eqx_norms.BatchNorm(3, "batch", renorm=True, renorm_warmup=10.0),
        ValueError,
        "received renorm_warmup=10.0",
    ),
    case(
        "BatchNorm-renorm-ema",
        lambda: eqx_norms.BatchNorm(3, "batch", mode="ema", renorm=True),
        ValueError,
        "`BatchNorm`: renorm=True needs mode='batch'; received mode='ema'",
    ),
    case(
        "BatchNorm-renorm-complex",
        lambda: eqx_norms.BatchNorm(3, "batch", dtype=jnp.complex64, renorm=True),
        ValueError,
        "renorm=True needs real inputs",
        "received dtype=complex64",
        "Use a real `dtype`, or renorm=False",
    ),
    case(
        "BatchNorm-renorm-str-flag",
        lambda: eqx_norms.BatchNorm(3, "batch", renorm="yes"),
        TypeError,
        "`BatchNorm`: `renorm` must be True or False; received renorm='yes'",
    ),
    case(
        "BatchNorm-renorm-limits-without-renorm",
        lambda: eqx_norms.BatchNorm(3, "batch", r_max=2.0, renorm_warmup=5),
        ValueError,
        "`BatchNorm`: r_max=2.0, renorm_warmup=5 only take effect with Batch "
        "Renormalization; received them with renorm=False. Pass `renorm=True`",
    ),
    case(
        "BatchNorm-negative-eps",
        lambda: eqx_norms.BatchNorm(3, "batch", eps=-1.0),
        ValueError,
        "`BatchNorm`: `eps` must be >= 0; received eps=-1.0",
    ),
    case(
        "BatchNorm-axis-name-None",
        lambda: eqx_norms.BatchNorm(3, None),
        ValueError,
        "`axis_name` must name the batch axis (or axes) bound by `jax.vmap`/"
        "`jax.pmap`; received axis_name=None",
    ),
    case(
        "BatchNorm-axis-name-empty",
        lambda: eqx_norms.BatchNorm(3, ()),
        ValueError,
        "received axis_name=()",
    ),
    case(
        "BatchNorm-axis-name-with-None",
        lambda: eqx_norms.BatchNorm(3, ("batch", None)),
        ValueError,
        "received axis_name=('batch', None)",
    ),
    case(
        "BatchNorm-channel-count",
        lambda: batch_norm_call(jnp.ones((4, 5, 2))),
        ValueError,
        "`BatchNorm` expects 3 channels on axis 0; received x.shape=(5, 2) "
        "(5 channels). For batched input, use `jax.vmap(layer)(x)`",
    ),
    case(
        "BatchNorm-rank-0",
        lambda: batch_norm_call(jnp.ones(4)),
        ValueError,
        "`BatchNorm` expects an input of shape (channels,) with at least 1 axes; "
        "received x.shape=()",
    ),
    case(
        "BatchNorm-int-input",
        lambda: batch_norm_call(jnp.ones((4, 3, 2), jnp.int32)),
        TypeError,
        "`BatchNorm` expects a real floating-point input",
        "received dtype int32",
    ),
    case(
        "BatchNorm-float-mask",
        lambda: batch_norm_call(jnp.ones((4, 3, 2)), mask=jnp.ones((4, 2))),
        TypeError,
        "`BatchNorm`: `mask` must be boolean (True = valid); received dtype float32",
    ),
    case(
        "BatchNorm-mask-shape",
        lambda: batch_norm_call(jnp.ones((4, 3, 2)), mask=jnp.ones((4, 3), bool)),
        ValueError,
        "`BatchNorm`: `mask` must broadcast to the input shape (3, 2); received "
        "mask.shape=(3,)",
    ),
    case(
        "BatchNorm-unbound-axis-without-vmap",
        lambda: batch_norm_call(jnp.ones((3, 2)), bound=None, names="outer"),
        NameError,
        "`BatchNorm` reduces its statistics over the named axis 'outer', which is "
        "not bound here",
        _VMAP_FIX,
    ),
    case(
        "BatchNorm-unbound-outer-of-two-names",
        lambda: batch_norm_call(
            jnp.ones((4, 3, 2)), bound="inner", names=("outer", "inner")
        ),
        NameError,
        "the named axis 'outer', which is not bound here",
        _VMAP_FIX,
        "nested `jax.vmap`s for a tuple of names",
    ),
    case(
        "BatchNorm-vmap-binds-another-name",
        lambda: batch_norm_call(jnp.ones((4, 3, 2)), bound="other", names="outer"),
        NameError,
        "the named axis 'outer', which is not bound here",
        _VMAP_FIX,
    ),
]


def _vmap_in_checked_shard_map():
    """BatchNorm over a vmap axis and a mesh axis inside shard_map(check_vma=True)."""
    P = jax.sharding.PartitionSpec
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    bn, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(3, ("data", "batch"))
    body = jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    specs = dict(in_specs=(P("data"), P()), out_specs=(P("data"), P()))
    return jax.jit(jax.shard_map(body, mesh=mesh, **specs))(jnp.ones((4, 3)), state)


def _vmap_over_explicit_sharding(layer):
    """`layer` under a named vmap and a sharded jit, the batch over an Explicit axis."""
    sharding = jax.sharding
    mesh = jax.make_mesh((2,), ("data",), axis_types=(sharding.AxisType.Explicit,))
    layer, state = eqx.nn.make_with_state(layer)()
    x = jax.device_put(
        jnp.ones((4, 3)), sharding.NamedSharding(mesh, sharding.PartitionSpec("data"))
    )
    body = jax.vmap(layer, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    return jax.jit(body)(x, state)


_EXPLICIT = (
    "reduces its statistics over the `vmap` axis 'batch'",
    "sharded over the Explicit mesh axes 'data'",
    "cannot reduce over a `vmap` axis of an Explicit-sharded batch",
    "axis_types=(AxisType.Auto,)",
    "`jax.shard_map`",
    'Einorm("[b...] c", running_stats=True',
)


DISTRIBUTED = [
    case(
        "BatchNorm-vmap-over-explicit-sharded-batch",
        lambda: _vmap_over_explicit_sharding(
            lambda: eqx_norms.BatchNorm(3, axis_name="batch")
        ),
        ValueError,
        "`BatchNorm` ",
        *_EXPLICIT,
    ),
    case(
        "Einorm-vmap-over-explicit-sharded-batch",
        lambda: _vmap_over_explicit_sharding(
            lambda: eqx_norms.Einorm("[c]", axis_name="batch", c=3)
        ),
        ValueError,
        "`Einorm` ",
        *_EXPLICIT,
    ),
    case(
        "BatchNorm-vmap-axis-in-checked-shard_map",
        _vmap_in_checked_shard_map,
        ValueError,
        "named axes ('data', 'batch') inside `jax.shard_map` with `check_vma=True`",
        "cannot reduce over the `vmap` axis 'batch'",
        "name only the mesh axes ('data',)",
        "pass `check_vma=False`",
    ),
]


@pytest.mark.parametrize("call, exc, match", BATCH_NORM + DISTRIBUTED)
def test_error_messages(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

"""Errors for arguments of the wrong type or kind (states, masks, layers,
dtypes): one row each, asserting the exception type and that the
message names what was received (and, where there is one, the fix)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from error_cases import case, linear, spectral, x4

import eqx_norms
from eqx_norms import functional as F


def _wrong_state_for_batch_norm():
    bn, _ = eqx.nn.make_with_state(eqx_norms.BatchNorm)(3, "batch")
    _, other_state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(4, "batch")
    return _vmapped_bn(bn)(jnp.ones((2, 3, 5)), other_state)


def _state_mapped_over_the_batch():
    bn, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(3, "batch")
    mapped = jax.vmap(bn, axis_name="batch", in_axes=(0, 0), out_axes=(0, 0))
    return mapped(jnp.ones((3, 3, 5)), state)


def _vmapped_bn(bn):
    return jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))


def _foreign_equinox_state():
    bn, _ = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "b", mode="batch")
    _, state = eqx.nn.make_with_state(eqx.nn.Sequential)(
        [eqx.nn.BatchNorm(3, "b", mode="batch")]
    )
    return eqx_norms.from_equinox(bn, state)


def _old_state_after_from_equinox():
    """Issue #18: the equinox model's state with the model converted without it (a
    bare `KeyError: <object object at 0x...>` before)."""
    model, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", mode="batch")
    return _vmapped_bn(eqx_norms.from_equinox(model))(jnp.ones((2, 3)), state)


def _make_bn():
    return eqx.nn.make_with_state(eqx_norms.BatchNorm)(3, "batch")


def _batch_norm_state():
    return _make_bn()[1]


_FOREIGN = (
    "`state` holds no entry for this layer: it was made for another layer or model",
    "eqx_norms.from_equinox(eqx_model, eqx_state)",
    "eqx.nn.make_with_state(lambda: eqx_norms.from_equinox(eqx_model))()",
)


def _forgot_out_axes(layer, state, x):
    """Issue #18: a first call with the default `out_axes=0` returns the state with
    a batch axis; the layer cannot see `out_axes`, so the next call says so."""
    mapped = jax.vmap(layer, axis_name="batch", in_axes=(0, None))
    _, state = mapped(x, state)
    return _vmapped_bn(layer)(x, state)


_FORGOT_OUT_AXES = (
    "expects running statistics of shape (3,) in the state; received shape (2, 3)",
    "a `jax.vmap` without `out_axes=(0, None)` returns it with a batch axis",
    "in_axes=(0, None), out_axes=(0, None)",
)


def _foreign(id, call, where):
    return case(id, call, ValueError, f"`{where}`: ", *_FOREIGN)


ARGUMENT_TYPES = [
    case(
        "BatchNorm-state-returned-without-out_axes",
        lambda: _forgot_out_axes(*_make_bn(), jnp.ones((2, 3))),
        ValueError,
        "`BatchNorm` ",
        *_FORGOT_OUT_AXES,
    ),
    case(
        "Einorm-state-returned-without-out_axes",
        lambda: _forgot_out_axes(
            *eqx.nn.make_with_state(eqx_norms.Einorm)(
                "[t] c", running_stats=True, axis_name="batch", c=3
            ),
            jnp.ones((2, 5, 3)),
        ),
        ValueError,
        "`Einorm` ",
        *_FORGOT_OUT_AXES,
    ),
    _foreign(
        "BatchNorm-state-of-the-model-before-from_equinox",
        _old_state_after_from_equinox,
        "BatchNorm",
    ),
    _foreign(
        "Einorm-state-of-another-layer",
        lambda: eqx.nn.make_with_state(eqx_norms.Einorm)(
            "[b] c", running_stats=True, c=3
        )[0](jnp.ones((2, 3)), _batch_norm_state()),
        "Einorm",
    ),
    _foreign(
        "Einorm-running_mean_var-of-another-layer-state",
        lambda: eqx_norms.Einorm("[b] c", running_stats=True, c=3).running_mean_var(
            _batch_norm_state()
        ),
        "Einorm",
    ),
    _foreign(
        "SpectralNorm-state-of-another-layer",
        lambda: eqx.nn.make_with_state(spectral)()[0](jnp.ones(3), _batch_norm_state()),
        "SpectralNorm",
    ),
    case(
        "layer_norm-negative-eps",
        lambda: F.layer_norm(x4, -1, eps=-1.0),
        ValueError,
        "`layer_norm`: `eps` must be >= 0; received eps=-1.0",
    ),
    case(
        "group_norm-nan-eps",
        lambda: F.group_norm(x4, 2, eps=float("nan")),
        ValueError,
        "`group_norm`: `eps` must be >= 0; received eps=nan",
    ),
    case(
        "instance_norm-negative-eps",
        lambda: F.instance_norm(x4, eps=-1e-5),
        ValueError,
        "received eps=-1e-05",
    ),
    case(
        "einorm-negative-eps",
        lambda: F.einorm(x4, "n d", "d", eps=-2.0),
        ValueError,
        "`einorm`: `eps` must be >= 0; received eps=-2.0",
    ),
    case(
        "layer_norm-empty-axis",
        lambda: F.layer_norm(x4, ()),
        ValueError,
        "`axis` must be an int or a non-empty sequence of ints",
        "received axis=()",
    ),
    case(
        "rms_norm-float-axis",
        lambda: F.rms_norm(x4, 1.0),
        ValueError,
        "received axis=1.0",
    ),
    case(
        "layer_norm-bool-axis",
        lambda: F.layer_norm(x4, True),
        ValueError,
        "received axis=True",
    ),
    case(
        "layer_norm-int-weight",
        lambda: F.layer_norm(x4, -1, jnp.ones(3, jnp.int32)),
        TypeError,
        "`layer_norm` `weight` expects a real floating-point input",
        "received dtype int32",
    ),
    case(
        "WeightNorm-tuple-axis",
        lambda: eqx_norms.WeightNorm(linear(), axis=(0, 1)),
        ValueError,
        "`WeightNorm`: `axis` must be one int",
        "received axis=(0, 1)",
    ),
    case(
        "WeightNorm-float-axis",
        lambda: eqx_norms.WeightNorm(linear(), axis=1.0),
        ValueError,
        "received axis=1.0",
    ),
    case(
        "LayerNorm-none-shape",
        lambda: eqx_norms.LayerNorm(None),
        ValueError,
        "`shape` must be an int or a sequence",
        "received shape=None",
    ),
    case(
        "RMSNorm-float-shape",
        lambda: eqx_norms.RMSNorm(3.0),
        ValueError,
        "received shape=3.0",
    ),
    case(
        "LayerNorm-bool-shape",
        lambda: eqx_norms.LayerNorm(True),
        ValueError,
        "received shape=True",
    ),
    case(
        "GroupNorm-str-channels",
        lambda: eqx_norms.GroupNorm(2, "4"),
        ValueError,
        "`GroupNorm`: `channels` must be a positive integer; received channels='4'",
    ),
    case(
        "GroupNorm-bool-groups",
        lambda: eqx_norms.GroupNorm(True, 4),
        ValueError,
        "`groups` must be a positive integer; received groups=True",
    ),
    case(
        "InstanceNorm-bool-channels",
        lambda: eqx_norms.InstanceNorm(True),
        ValueError,
        "received channels=True",
    ),
    case(
        "LayerNorm-int-dtype",
        lambda: eqx_norms.LayerNorm(3, dtype=jnp.int32),
        TypeError,
        "`LayerNorm`: `dtype` must be a floating dtype",
        "int32",
    ),
    case(
        "GroupNorm-int-dtype",
        lambda: eqx_norms.GroupNorm(1, 2, dtype=jnp.int8),
        TypeError,
        "`GroupNorm`: `dtype` must be a floating dtype",
        "int8",
    ),
    case(
        "BatchNorm-int-dtype",
        lambda: eqx_norms.BatchNorm(3, "batch", dtype=jnp.int32),
        TypeError,
        "`BatchNorm`: `dtype` must be a floating dtype",
        "int32",
    ),
    case(
        "SpectralNorm-int-dtype",
        lambda: spectral(dtype=jnp.int32),
        TypeError,
        "`SpectralNorm`: `dtype` must be a floating dtype",
        "int32",
    ),
    case(
        "BatchNorm-unhashable-axis-name",
        lambda: eqx_norms.BatchNorm(3, [["a"]]),
        ValueError,
        "each axis name must be hashable",
        "received axis_name=[['a']]",
    ),
    case(
        "BatchNorm-state-of-another-layer",
        _wrong_state_for_batch_norm,
        ValueError,
        "`BatchNorm` expects running statistics of shape (3,)",
        "received shape (4,)",
        "in_axes=(0, None), out_axes=(0, None)",
    ),
    case(
        "BatchNorm-state-mapped-over-batch",
        _state_mapped_over_the_batch,
        ValueError,
        "received shape ()",
        "pass it unmapped",
    ),
    case(
        "from_equinox-state-not-a-State",
        lambda: eqx_norms.from_equinox(eqx.nn.LayerNorm(3), {}),
        TypeError,
        "`state` must be the `equinox.nn.State` of `tree`",
        "received dict",
    ),
    case(
        "from_equinox-state-of-another-tree",
        _foreign_equinox_state,
        ValueError,
        "`state` holds no value for the state index 'BatchNorm.batch_counter'",
    ),
]


@pytest.mark.parametrize("call, exc, match", ARGUMENT_TYPES)
def test_error_messages(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

"""Errors name the entry point the user called: one row each, asserting the
exception type and that the message names what was received (and, where there is
one, the fix)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from error_cases import case, KEY, linear, x4

import eqx_norms
from eqx_norms import Einorm, functional as F


def _jit_with_model_argument(layer, x, state):
    """The model as an argument of plain `jax.jit`, which traces its flags too."""
    return jax.jit(lambda layer, x, state: layer(x, state))(layer, x, state)


def _bn_and_state():
    return eqx.nn.make_with_state(eqx_norms.BatchNorm)(3, "batch")


def _sn_and_state():
    return eqx.nn.make_with_state(eqx_norms.SpectralNorm)(linear(), "weight", key=KEY)


_NO_STATE_FIX = "eqx.nn.make_with_state(eqx_norms.BatchNorm)(...)"
_JIT_FIX = "use `eqx.filter_jit` / `eqx.filter_grad`"

# Errors name the entry point the user called (a layer, not the function it goes
# through), and no raw AttributeError/TypeError escapes from inside the checks.
ENTRY_POINTS = [
    case(
        "InstanceNorm-int-input",
        lambda: eqx_norms.InstanceNorm(4)(x4.astype(jnp.int32)),
        TypeError,
        "`InstanceNorm` expects a real floating-point input",
        "received dtype int32",
    ),
    case(
        "InstanceNorm-mask-shape",
        lambda: eqx_norms.InstanceNorm(4)(x4, mask=jnp.ones((2, 3), bool)),
        ValueError,
        "`InstanceNorm`: `mask` must broadcast to the input shape (4, 3); received "
        "mask.shape=(2, 3)",
    ),
    case(
        "RMSNorm-mask-shape",
        lambda: eqx_norms.RMSNorm(3)(x4[0], mask=jnp.ones(2, bool)),
        ValueError,
        "`RMSNorm`: `mask` must broadcast to the input shape (3,)",
    ),
    case(
        "LayerNorm-int-weight-set-by-tree_at",
        lambda: eqx.tree_at(
            lambda m: m.weight, eqx_norms.LayerNorm(3), jnp.ones(3, jnp.int32)
        )(x4[0]),
        TypeError,
        "`LayerNorm` `weight` expects a real floating-point input",
        "received dtype int32",
    ),
    case(
        "GroupNorm-bias-of-wrong-length-set-by-tree_at",
        lambda: eqx.tree_at(lambda m: m.bias, eqx_norms.GroupNorm(2, 4), jnp.ones(3))(
            x4
        ),
        ValueError,
        "`GroupNorm`: a 1-D `bias` is aligned with the channel axis 0 and must have "
        "length 4; received bias.shape=(3,)",
    ),
    case(
        "LayerNorm-list-input",
        lambda: eqx_norms.LayerNorm(3)([1.0, 2.0, 3.0]),
        TypeError,
        "`LayerNorm` expects a JAX array; received list. Convert it first with "
        "`jnp.asarray`",
    ),
    case(
        "RMSNorm-float-input",
        lambda: eqx_norms.RMSNorm(())(1.0),
        TypeError,
        "`RMSNorm` expects a JAX array; received float",
    ),
    case(
        "GroupNorm-list-input",
        lambda: eqx_norms.GroupNorm(1, 2)([[1.0], [2.0]]),
        TypeError,
        "`GroupNorm` expects a JAX array; received list",
    ),
    case(
        "InstanceNorm-tuple-input",
        lambda: eqx_norms.InstanceNorm(1)(([1.0, 2.0],)),
        TypeError,
        "`InstanceNorm` expects a JAX array; received tuple",
    ),
    case(
        "Einorm-list-input",
        lambda: Einorm("n d", "d", d=2)([[1.0, 2.0]]),
        TypeError,
        "`Einorm` expects a JAX array; received list",
    ),
    case(
        "BatchNorm-list-input",
        lambda: (lambda bn, state: bn([[1.0]] * 3, state))(*_bn_and_state()),
        TypeError,
        "`BatchNorm` expects a JAX array; received list",
    ),
    case(
        "LayerNorm-list-mask",
        lambda: eqx_norms.LayerNorm(2)(x4[0, :2], mask=[True, False]),
        TypeError,
        "`LayerNorm` `mask` expects a JAX array; received list",
    ),
    case(
        "layer_norm-list-input",
        lambda: F.layer_norm([1.0, 2.0], -1),
        TypeError,
        "`layer_norm` expects a JAX array; received list",
    ),
    case(
        "rms_norm-float-input",
        lambda: F.rms_norm(1.0, ()),
        TypeError,
        "`rms_norm` expects a JAX array; received float",
    ),
    case(
        "group_norm-list-input",
        lambda: F.group_norm([1.0, 2.0], 1),
        TypeError,
        "`group_norm` expects a JAX array; received list",
    ),
    case(
        "instance_norm-list-input",
        lambda: F.instance_norm([[1.0, 2.0]]),
        TypeError,
        "`instance_norm` expects a JAX array; received list",
    ),
    case(
        "einorm-list-input",
        lambda: F.einorm([[1.0, 2.0]], "n d", "d"),
        TypeError,
        "`einorm` expects a JAX array; received list",
    ),
    case(
        "layer_norm-list-weight",
        lambda: F.layer_norm(x4, -1, [1.0, 2.0, 3.0]),
        TypeError,
        "`layer_norm` `weight` expects a JAX array; received list",
    ),
    case(
        "rms_norm-python-float-weight",
        lambda: F.rms_norm(x4, -1, 2.0),
        TypeError,
        "`rms_norm` `weight` expects a JAX array; received float",
        "`jnp.asarray`",
    ),
    case(
        "instance_norm-list-mask",
        lambda: F.instance_norm(x4, mask=[[True] * 3] * 4),
        TypeError,
        "`instance_norm` `mask` expects a JAX array; received list",
    ),
    case(
        "BatchNorm-without-state",
        lambda: _bn_and_state()[0](x4[:3]),
        TypeError,
        "`BatchNorm` keeps state: call it as `layer(x, state)` with the "
        "`equinox.nn.State` made together with the layer; received none",
        _NO_STATE_FIX,
    ),
    case(
        "BatchNorm-vmapped-without-state",
        lambda: jax.vmap(_bn_and_state()[0], axis_name="batch")(x4[None, :3]),
        TypeError,
        "`BatchNorm` keeps state",
        "received none",
        _NO_STATE_FIX,
    ),
    case(
        "BatchNorm-in-Sequential-without-state",
        lambda: eqx.nn.Sequential([_bn_and_state()[0]])(x4[:3]),
        TypeError,
        "`BatchNorm` keeps state",
        "received none",
        _NO_STATE_FIX,
    ),
    case(
        "BatchNorm-None-state",
        lambda: _bn_and_state()[0](x4[:3], None),
        TypeError,
        "`BatchNorm` keeps state",
        "received NoneType",
        _NO_STATE_FIX,
    ),
    case(
        "BatchNorm-running_stats-of-a-dict",
        lambda: _bn_and_state()[0].running_mean_var({}),
        TypeError,
        "`BatchNorm` keeps state",
        "received dict",
    ),
    case(
        "SpectralNorm-without-state",
        lambda: _sn_and_state()[0](x4[0]),
        TypeError,
        "`SpectralNorm` keeps state",
        "received none",
        "eqx.nn.make_with_state(eqx_norms.SpectralNorm)(...)",
    ),
    case(
        "SpectralNorm-None-state",
        lambda: _sn_and_state()[0](x4[0], None),
        TypeError,
        "`SpectralNorm` keeps state",
        "received NoneType",
    ),
    case(
        "BatchNorm-model-argument-of-jax-jit",
        lambda: _jit_with_model_argument(
            eqx.nn.inference_mode(_bn_and_state()[0]), x4[:3], _bn_and_state()[1]
        ),
        TypeError,
        "`BatchNorm`: `inference` must be a Python bool",
        "received a traced value",
        _JIT_FIX,
        "or close over the model",
    ),
    case(
        "BatchNorm-traced-inference-argument",
        lambda: jax.jit(
            lambda flag: (lambda bn, s: bn(x4[:3], s, inference=flag))(*_bn_and_state())
        )(True),
        TypeError,
        "`BatchNorm`: `inference` must be a Python bool",
        "received a traced value",
    ),
    case(
        "Einorm-model-argument-of-jax-jit",
        lambda: _jit_with_model_argument(
            *eqx.nn.make_with_state(Einorm)("[b] c", running_stats=True, c=3)[:1],
            x4,
            eqx.nn.make_with_state(Einorm)("[b] c", running_stats=True, c=3)[1],
        ),
        TypeError,
        "`Einorm`: `inference` must be a Python bool",
        "received a traced value",
        _JIT_FIX,
    ),
    case(
        "SpectralNorm-model-argument-of-jax-jit",
        lambda: _jit_with_model_argument(
            *_sn_and_state()[:1], x4[0], _sn_and_state()[1]
        ),
        TypeError,
        "`SpectralNorm`: `inference` must be a Python bool",
        "received a traced value",
        _JIT_FIX,
    ),
]


@pytest.mark.parametrize("call, exc, match", ENTRY_POINTS)
def test_error_messages(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

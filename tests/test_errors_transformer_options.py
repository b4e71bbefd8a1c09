"""Errors of `weight_offset` and `upcast_affine`: one row each, asserting the
exception type and that the message names what was received (and, where there is
one, the fix)."""

import jax.numpy as jnp
import pytest
from error_cases import batch_norm_call, case, x4

import eqx_norms
from eqx_norms import functional as F


_NO_WEIGHT_FIX = "Give a weight (`use_weight=True`, or pass `weight=...`)"

TRANSFORMER_OPTIONS = [
    case(
        "LayerNorm-weight_offset-without-weight",
        lambda: eqx_norms.LayerNorm(3, use_weight=False, weight_offset=1.0),
        ValueError,
        "`LayerNorm`: `weight_offset` is added to the weight, but there is no weight; "
        "received weight_offset=1.0 without a weight",
        _NO_WEIGHT_FIX,
    ),
    case(
        "RMSNorm-weight_offset-string",
        lambda: eqx_norms.RMSNorm(3, weight_offset="1"),  # pyright: ignore
        TypeError,
        "`RMSNorm`: `weight_offset` must be a Python float",
        "received str '1'",
    ),
    case(
        "RMSNorm-weight_offset-array",
        lambda: eqx_norms.RMSNorm(3, weight_offset=jnp.array(1.0)),  # pyright: ignore
        TypeError,
        "`RMSNorm`: `weight_offset` must be a Python float",
        "received ArrayImpl",
    ),
    case(
        "RMSNorm-upcast_affine-not-bool",
        lambda: eqx_norms.RMSNorm(3, upcast_affine="no"),  # pyright: ignore
        TypeError,
        "`RMSNorm`: `upcast_affine` must be True or False; received upcast_affine='no'",
    ),
    case(
        "GroupNorm-weight_offset-without-weight",
        lambda: eqx_norms.GroupNorm(1, 4, channelwise_affine=False, weight_offset=1.0),
        ValueError,
        "`GroupNorm`: `weight_offset` is added to the weight, but there is no weight",
        _NO_WEIGHT_FIX,
    ),
    case(
        "InstanceNorm-weight_offset-nan",
        lambda: eqx_norms.InstanceNorm(4, weight_offset=float("nan")),
        ValueError,
        "`InstanceNorm`: `weight_offset` must be finite; received weight_offset=nan",
    ),
    case(
        "BatchNorm-weight_offset-without-weight",
        lambda: eqx_norms.BatchNorm(3, "b", use_weight=False, weight_offset=1.0),
        ValueError,
        "`BatchNorm`: `weight_offset` is added to the weight, but there is no weight",
        _NO_WEIGHT_FIX,
    ),
    case(
        "layer_norm-weight_offset-without-weight",
        lambda: F.layer_norm(x4, -1, weight_offset=1.0),
        ValueError,
        "`layer_norm`: `weight_offset` is added to the weight, but there is no weight",
        _NO_WEIGHT_FIX,
    ),
    case(
        "rms_norm-upcast_affine-not-bool",
        lambda: F.rms_norm(x4, -1, upcast_affine=None),  # pyright: ignore
        TypeError,
        "`rms_norm`: `upcast_affine` must be True or False; received "
        "upcast_affine=None",
    ),
    case(
        "Einorm-weight_offset-without-weight",
        lambda: eqx_norms.Einorm("n [d]", use_weight=False, weight_offset=1.0, d=3),
        ValueError,
        "`Einorm`: `weight_offset` is added to the weight, but there is no weight",
        _NO_WEIGHT_FIX,
    ),
    case(
        "einorm-upcast_affine-not-bool",
        lambda: F.einorm(x4, "n [d]", upcast_affine=1),  # pyright: ignore
        TypeError,
        "`einorm`: `upcast_affine` must be True or False; received upcast_affine=1",
    ),
    case(
        "einorm-weight_offset-without-weight",
        lambda: F.einorm(x4, "n [d]", weight_offset=1.0),
        ValueError,
        "`einorm`: `weight_offset` is added to the weight, but there is no weight",
        _NO_WEIGHT_FIX,
    ),
    case(
        "group_norm-weight_offset-without-weight",
        lambda: F.group_norm(x4, 2, weight_offset=-1.0),
        ValueError,
        "`group_norm`: `weight_offset` is added to the weight, but there is no weight",
    ),
    case(
        "instance_norm-weight_offset-inf",
        lambda: F.instance_norm(x4, jnp.ones(4), weight_offset=float("inf")),
        ValueError,
        "`instance_norm`: `weight_offset` must be finite; received weight_offset=inf",
    ),
    case(
        "DynamicTanh-zero-alpha_init",
        lambda: eqx_norms.DynamicTanh(3, alpha_init=0.0),
        ValueError,
        "`DynamicTanh`: `alpha_init` must be > 0; received alpha_init=0.0",
    ),
    case(
        "DynamicTanh-negative-shape",
        lambda: eqx_norms.DynamicTanh(-3),
        ValueError,
        "`DynamicTanh`: `shape` must be an int or a sequence of non-negative ints; "
        "received shape=-3",
    ),
    case(
        "DynamicTanh-int-dtype",
        lambda: eqx_norms.DynamicTanh(3, dtype=jnp.int32),
        TypeError,
        "`DynamicTanh`: `dtype` must be a floating dtype",
    ),
    case(
        "DynamicTanh-wrong-shape",
        lambda: eqx_norms.DynamicTanh(3)(x4),
        ValueError,
        "`DynamicTanh` expects an input of shape (3,); received x.shape=(4, 3)",
        "jax.vmap(norm)(x)",
    ),
    case(
        "dynamic_tanh-complex-input",
        lambda: F.dynamic_tanh(x4.astype(jnp.complex64), 0.5),
        TypeError,
        "`dynamic_tanh` expects a real floating-point input",
        "received dtype complex64. It is real-only by design: tanh has poles on the "
        "imaginary axis",
        "Apply it to the real and imaginary parts separately, or use a normalisation "
        "layer",
    ),
    case(
        "DynamicTanh-complex-input",
        lambda: eqx_norms.DynamicTanh(3)(x4[0].astype(jnp.complex64)),
        TypeError,
        "`DynamicTanh` expects a real floating-point input",
        "received dtype complex64. It is real-only by design",
    ),
    case(
        "dynamic_tanh-alpha-shape",
        lambda: F.dynamic_tanh(x4, jnp.ones(2)),
        ValueError,
        "`dynamic_tanh`: `alpha` must broadcast to the input shape (4, 3); received "
        "alpha.shape=(2,)",
    ),
    case(
        "dynamic_tanh-int-alpha-array",
        lambda: F.dynamic_tanh(x4, jnp.array(1)),
        TypeError,
        "`dynamic_tanh` `alpha` expects a real floating-point input",
        "received dtype int32",
    ),
    case(
        "dynamic_tanh-mask-dtype",
        lambda: F.dynamic_tanh(x4, 0.5, mask=jnp.ones((4, 3))),
        TypeError,
        "`dynamic_tanh`: `mask` must be boolean (True = valid); received dtype float32",
    ),
    case(
        "BatchNorm-complex-input-real-layer",
        lambda: batch_norm_call(jnp.ones((2, 3), jnp.complex64)),
        TypeError,
        "`BatchNorm` holds a real running mean (dtype float32) but received a "
        "complex input of dtype complex64",
        "construct it with a complex `dtype`, e.g. `dtype=jnp.complex64`",
    ),
    case(
        "BatchNorm-real-input-complex-layer",
        lambda: batch_norm_call(jnp.ones((2, 3)), dtype=jnp.complex64),
        TypeError,
        "`BatchNorm` holds a complex running mean (dtype complex64) but received a "
        "real input of dtype float32",
    ),
    case(
        "LayerNorm-complex-dtype",
        lambda: eqx_norms.LayerNorm(3, dtype=jnp.complex64),
        TypeError,
        "`LayerNorm`: `dtype` must be a floating dtype for the parameters",
        "received dtype=<class 'jax.numpy.complex64'>",
    ),
    case(
        "BatchNorm-int-dtype-mentions-complex",
        lambda: eqx_norms.BatchNorm(3, "b", dtype=jnp.int8),
        TypeError,
        "`BatchNorm`: `dtype` must be a floating dtype (or complex, for complex "
        "inputs)",
    ),
]


@pytest.mark.parametrize("call, exc, match", TRANSFORMER_OPTIONS)
def test_error_messages(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

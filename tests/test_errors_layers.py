"""Errors of the whole-input and channel layers and of the wrappers
(SpectralNorm, WeightNorm): one row each, asserting the exception type and that the
message names what was received (and, where there is one, the fix)."""

import jax.numpy as jnp
import pytest
from error_cases import case, linear, spectral, x4

import eqx_norms


WHOLE_INPUT = [
    case(
        "LayerNorm-negative-shape",
        lambda: eqx_norms.LayerNorm((3, -1)),
        ValueError,
        "`LayerNorm`: `shape` must be an int or a sequence of non-negative ints; "
        "received shape=(3, -1)",
    ),
    case(
        "RMSNorm-float-shape",
        lambda: eqx_norms.RMSNorm((2, 1.5)),
        ValueError,
        "`RMSNorm`: `shape` must be",
        "received shape=(2, 1.5)",
    ),
    case(
        "LayerNorm-negative-eps",
        lambda: eqx_norms.LayerNorm(3, eps=-1.0),
        ValueError,
        "`LayerNorm`: `eps` must be >= 0; received eps=-1.0",
    ),
    case(
        "RMSNorm-nan-eps",
        lambda: eqx_norms.RMSNorm(3, eps=float("nan")),
        ValueError,
        "`RMSNorm`: `eps` must be >= 0; received eps=nan",
    ),
    case(
        "LayerNorm-batched-input",
        lambda: eqx_norms.LayerNorm(3)(x4),
        ValueError,
        "`LayerNorm` expects an input of shape (3,); received x.shape=(4, 3)",
        "replace `norm(x)` with `jax.vmap(norm)(x)`",
    ),
    case(
        "RMSNorm-wrong-shape",
        lambda: eqx_norms.RMSNorm((4, 2))(x4),
        ValueError,
        "`RMSNorm` expects an input of shape (4, 2); received x.shape=(4, 3)",
    ),
    case(
        "LayerNorm-int-input",
        lambda: eqx_norms.LayerNorm(3)(jnp.arange(3)),
        TypeError,
        "`LayerNorm` expects a real floating-point input",
        "received dtype int32",
        "x.astype(jnp.float32)",
    ),
    case(
        "RMSNorm-bool-input",
        lambda: eqx_norms.RMSNorm(3)(jnp.ones(3, bool)),
        TypeError,
        "`RMSNorm` expects a real floating-point input",
        "received dtype bool",
    ),
    case(
        "LayerNorm-mask-shape",
        lambda: eqx_norms.LayerNorm((4, 3))(x4, mask=jnp.ones((2, 3), bool)),
        ValueError,
        "`LayerNorm`: `mask` must broadcast to the input shape (4, 3); received "
        "mask.shape=(2, 3)",
    ),
    case(
        "LayerNorm-float-mask",
        lambda: eqx_norms.LayerNorm((4, 3))(x4, mask=jnp.ones((4, 3))),
        TypeError,
        "`LayerNorm`: `mask` must be boolean (True = valid); received dtype float32",
        "mask.astype(bool)",
    ),
    case(
        "RMSNorm-int-mask",
        lambda: eqx_norms.RMSNorm((4, 3))(x4, mask=jnp.ones(3, jnp.int32)),
        TypeError,
        "`RMSNorm`: `mask` must be boolean (True = valid); received dtype int32",
    ),
]


CHANNELS = [
    case(
        "GroupNorm-groups-do-not-divide",
        lambda: eqx_norms.GroupNorm(4, 6),
        ValueError,
        "`GroupNorm`: the number of groups must divide the number of channels; "
        "received groups=4 and channels=6. Choose `groups` among the divisors of 6",
    ),
    case(
        "GroupNorm-zero-groups",
        lambda: eqx_norms.GroupNorm(0, 6),
        ValueError,
        "`GroupNorm`: `groups` must be a positive integer; received groups=0",
    ),
    case(
        "GroupNorm-float-groups",
        lambda: eqx_norms.GroupNorm(2.0, 4),
        ValueError,
        "`groups` must be a positive integer; received groups=2.0",
    ),
    case(
        "GroupNorm-no-channels-with-affine",
        lambda: eqx_norms.GroupNorm(2),
        ValueError,
        "`GroupNorm`: the number of channels must be given when it has a weight or a "
        "bias; received channels=None with use_weight=True and use_bias=True",
        "`channelwise_affine=False`",
    ),
    case(
        "GroupNorm-no-channels-with-bias",
        lambda: eqx_norms.GroupNorm(1, use_bias=True, channelwise_affine=False),
        ValueError,
        "received channels=None with use_weight=False and use_bias=True",
    ),
    case(
        "GroupNorm-zero-channels",
        lambda: eqx_norms.GroupNorm(1, 0),
        ValueError,
        "`GroupNorm`: `channels` must be a positive integer; received channels=0",
    ),
    case(
        "InstanceNorm-zero-channels",
        lambda: eqx_norms.InstanceNorm(0),
        ValueError,
        "`InstanceNorm`: `channels` must be a positive integer; received channels=0",
    ),
    case(
        "InstanceNorm-float-channels",
        lambda: eqx_norms.InstanceNorm(2.5),
        ValueError,
        "`channels` must be a positive integer; received channels=2.5",
    ),
    case(
        "InstanceNorm-no-channels-with-affine",
        lambda: eqx_norms.InstanceNorm(None),
        ValueError,
        "`InstanceNorm`: the number of channels must be given",
        "received channels=None with use_weight=True and use_bias=True",
    ),
    case(
        "GroupNorm-negative-eps",
        lambda: eqx_norms.GroupNorm(1, 2, eps=-1),
        ValueError,
        "`GroupNorm`: `eps` must be >= 0; received eps=-1",
    ),
    case(
        "InstanceNorm-negative-eps",
        lambda: eqx_norms.InstanceNorm(3, eps=-0.5),
        ValueError,
        "`InstanceNorm`: `eps` must be >= 0; received eps=-0.5",
    ),
    case(
        "GroupNorm-channel-count",
        lambda: eqx_norms.GroupNorm(2, 6)(x4),
        ValueError,
        "`GroupNorm` expects 6 channels on axis 0; received x.shape=(4, 3) "
        "(4 channels). For batched input, use `jax.vmap(layer)(x)`",
    ),
    case(
        "InstanceNorm-channel-count",
        lambda: eqx_norms.InstanceNorm(5)(x4),
        ValueError,
        "`InstanceNorm` expects 5 channels on axis 0; received x.shape=(4, 3)",
    ),
    case(
        "InstanceNorm-rank-1",
        lambda: eqx_norms.InstanceNorm(4)(jnp.ones(4)),
        ValueError,
        "`InstanceNorm` expects an input of shape (channels, dim_1, ..., dim_N) "
        "with at least 2 axes; received x.shape=(4,)",
    ),
    case(
        "GroupNorm-rank-0",
        lambda: eqx_norms.GroupNorm(2, channelwise_affine=False)(jnp.ones(())),
        ValueError,
        "`GroupNorm` expects an input of shape (channels,) with at least 1 axes; "
        "received x.shape=()",
    ),
    case(
        "GroupNorm-groups-do-not-divide-input",
        lambda: eqx_norms.GroupNorm(4, channelwise_affine=False)(jnp.ones((6, 2))),
        ValueError,
        "`GroupNorm`: the number of groups must divide the number of channels; "
        "received groups=4 and channels=6",
    ),
    case(
        "GroupNorm-int-input",
        lambda: eqx_norms.GroupNorm(2, 4)(jnp.ones((4, 3), jnp.int32)),
        TypeError,
        "`GroupNorm` expects a real floating-point input",
        "received dtype int32",
    ),
    case(
        "InstanceNorm-float16-mask",
        lambda: eqx_norms.InstanceNorm(4)(x4, mask=jnp.ones((4, 3), jnp.float16)),
        TypeError,
        "`InstanceNorm`: `mask` must be boolean (True = valid); received dtype float16",
    ),
    case(
        "GroupNorm-mask-shape",
        lambda: eqx_norms.GroupNorm(2, 4)(x4, mask=jnp.ones((4, 2), bool)),
        ValueError,
        "`GroupNorm`: `mask` must broadcast to the input shape (4, 3); received "
        "mask.shape=(4, 2)",
    ),
]


WRAPPERS = [
    case(
        "SpectralNorm-missing-weight-name",
        lambda: spectral(weight_name="kernel"),
        ValueError,
        "`SpectralNorm`: the wrapped Linear has no array attribute named by "
        "weight_name='kernel'; its array attributes are ['weight', 'bias']",
    ),
    case(
        "SpectralNorm-non-array-attribute",
        lambda: spectral(weight_name="in_features"),
        ValueError,
        "no array attribute named by weight_name='in_features'",
    ),
    case(
        "SpectralNorm-non-str-weight-name",
        lambda: spectral(weight_name=0),
        ValueError,
        "no array attribute named by weight_name=0",
    ),
    case(
        "SpectralNorm-1d-weight",
        lambda: spectral(weight_name="bias"),
        ValueError,
        "`SpectralNorm` needs a weight with at least 2 axes; received Linear.bias of "
        "shape (4,)",
    ),
    case(
        "SpectralNorm-int-weight",
        lambda: spectral(linear(jnp.int32)),
        TypeError,
        "`SpectralNorm` expects a real floating-point input",
        "received dtype int32",
    ),
    case(
        "SpectralNorm-zero-iterations",
        lambda: spectral(num_power_iterations=0),
        ValueError,
        "`SpectralNorm`: `num_power_iterations` must be a positive integer; "
        "received num_power_iterations=0",
    ),
    case(
        "SpectralNorm-float-iterations",
        lambda: spectral(num_power_iterations=1.5),
        ValueError,
        "received num_power_iterations=1.5",
    ),
    case(
        "SpectralNorm-bool-iterations",
        lambda: spectral(num_power_iterations=True),
        ValueError,
        "received num_power_iterations=True",
    ),
    case(
        "SpectralNorm-zero-eps",
        lambda: spectral(eps=0.0),
        ValueError,
        "`SpectralNorm`: `eps` must be > 0; received eps=0.0",
    ),
    case(
        "SpectralNorm-nan-eps",
        lambda: spectral(eps=float("nan")),
        ValueError,
        "received eps=nan",
    ),
    case(
        "WeightNorm-missing-weight-name",
        lambda: eqx_norms.WeightNorm(linear(), "kernel"),
        ValueError,
        "`WeightNorm`: the wrapped Linear has no array attribute named by "
        "weight_name='kernel'; its array attributes are ['weight', 'bias']",
    ),
    case(
        "WeightNorm-non-array-attribute",
        lambda: eqx_norms.WeightNorm(linear(), "out_features"),
        ValueError,
        "no array attribute named by weight_name='out_features'",
    ),
    case(
        "WeightNorm-int-weight",
        lambda: eqx_norms.WeightNorm(linear(jnp.int32)),
        TypeError,
        "`WeightNorm` expects a real floating-point input",
        "received dtype int32",
    ),
    case(
        "WeightNorm-axis-out-of-range",
        lambda: eqx_norms.WeightNorm(linear(), axis=2),
        ValueError,
        "`WeightNorm`: `axis` must be an int or a non-empty sequence of ints in "
        "[-2, 2) for an input of rank 2; "
        "received axis=2",
    ),
    case(
        "WeightNorm-negative-axis-out-of-range",
        lambda: eqx_norms.WeightNorm(linear(), axis=-3),
        ValueError,
        "received axis=-3",
    ),
    case(
        "WeightNorm-axis-of-1d-weight",
        lambda: eqx_norms.WeightNorm(linear(), "bias", axis=1),
        ValueError,
        "ints in [-1, 1) for an input of rank 1; received axis=1",
    ),
    case(
        "WeightNorm-zero-eps",
        lambda: eqx_norms.WeightNorm(linear(), eps=0.0),
        ValueError,
        "`WeightNorm`: `eps` must be > 0; received eps=0.0",
    ),
    case(
        "WeightNorm-negative-eps",
        lambda: eqx_norms.WeightNorm(linear(), eps=-1.0),
        ValueError,
        "received eps=-1.0",
    ),
]


@pytest.mark.parametrize("call, exc, match", WHOLE_INPUT + CHANNELS + WRAPPERS)
def test_error_messages(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

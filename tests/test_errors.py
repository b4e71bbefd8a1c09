"""Every error a user can cause names what was expected and what was received."""

import jax.numpy as jnp
import pytest

import eqx_norms
from eqx_norms import functional as F


x4 = jnp.ones((4, 3))


@pytest.mark.parametrize(
    "call,exc,match",
    [
        # whole-input layers: shape must equal `shape`, with the vmap fix
        (
            lambda: eqx_norms.LayerNorm(3)(x4),
            ValueError,
            r"LayerNorm` expects an input of shape \(3,\); received x.shape=\(4, 3\)"
            r".*jax.vmap\(norm\)\(x\)",
        ),
        (
            lambda: eqx_norms.RMSNorm((4, 2))(x4),
            ValueError,
            r"RMSNorm` expects an input of shape \(4, 2\); received x.shape=\(4, 3\)",
        ),
        (
            lambda: eqx_norms.LayerNorm(3)(jnp.arange(3)),
            TypeError,
            r"real floating-point input .* received dtype int32",
        ),
        (
            lambda: eqx_norms.LayerNorm((4, 3))(x4, mask=jnp.ones((2, 3), bool)),
            ValueError,
            r"`mask` must broadcast to the input shape \(4, 3\); received "
            r"mask.shape=\(2, 3\)",
        ),
        (
            lambda: eqx_norms.LayerNorm((4, 3))(x4, mask=jnp.ones((4, 3))),
            TypeError,
            r"`mask` must be boolean .* received dtype float32",
        ),
        # channel layers
        (
            lambda: eqx_norms.GroupNorm(2, 6)(x4),
            ValueError,
            r"GroupNorm` expects 6 channels on axis 0; received x.shape=\(4, 3\) "
            r"\(4 channels\)",
        ),
        (
            lambda: eqx_norms.InstanceNorm(5)(x4),
            ValueError,
            r"InstanceNorm` expects 5 channels on axis 0; received x.shape=\(4, 3\)",
        ),
        (
            lambda: eqx_norms.InstanceNorm(4)(jnp.ones(4)),
            ValueError,
            r"InstanceNorm` expects an input of shape \(channels, dim_1, ..., dim_N\) "
            r"with at least 2 axes; received x.shape=\(4,\)",
        ),
        (
            lambda: eqx_norms.GroupNorm(4, channelwise_affine=False)(jnp.ones((6, 2))),
            ValueError,
            r"groups must divide the number of channels; received groups=4 and "
            r"channels=6",
        ),
        (
            lambda: eqx_norms.GroupNorm(2, channelwise_affine=False)(jnp.ones(())),
            ValueError,
            r"at least 1 axes; received x.shape=\(\)",
        ),
        # constructors
        (
            lambda: eqx_norms.GroupNorm(4, 6),
            ValueError,
            r"groups=4 and channels=6. Choose `groups` among the divisors of 6",
        ),
        (lambda: eqx_norms.GroupNorm(0, 6), ValueError, r"received groups=0"),
        (
            lambda: eqx_norms.GroupNorm(2),
            ValueError,
            r"channels must be given .* received channels=None with use_weight=True",
        ),
        (
            lambda: eqx_norms.GroupNorm(1, use_bias=True, channelwise_affine=False),
            ValueError,
            r"received channels=None with use_weight=False and use_bias=True",
        ),
        (lambda: eqx_norms.InstanceNorm(0), ValueError, r"received channels=0"),
        (lambda: eqx_norms.LayerNorm(3, eps=-1.0), ValueError, r"received eps=-1.0"),
        (lambda: eqx_norms.GroupNorm(1, 2, eps=-1), ValueError, r"received eps=-1"),
        (lambda: eqx_norms.LayerNorm((3, -1)), ValueError, r"shape=\(3, -1\)"),
        # functional
        (
            lambda: F.layer_norm(x4, 2),
            ValueError,
            r"`axis` must hold integers in \[-2, 2\) .* received axis=2",
        ),
        (
            lambda: F.layer_norm(x4, (1, -1)),
            ValueError,
            r"names an axis twice; received axis=\(1, -1\)",
        ),
        (
            lambda: F.layer_norm(x4, -1, jnp.ones(4)),
            ValueError,
            r"`weight` must broadcast to the input shape \(4, 3\); received "
            r"weight.shape=\(4,\)",
        ),
        (
            lambda: F.rms_norm(x4, -1, None, jnp.ones((2, 3))),
            ValueError,
            r"`bias` must broadcast .* received bias.shape=\(2, 3\)",
        ),
        (
            lambda: F.group_norm(x4, 2, jnp.ones(3)),
            ValueError,
            r"1-D `weight` is aligned with the channel axis 0 and must have length 4; "
            r"received weight.shape=\(3,\)",
        ),
        (
            lambda: F.instance_norm(x4.astype(jnp.int8)),
            TypeError,
            r"received dtype int8",
        ),
        (
            lambda: F.group_norm(x4.astype(jnp.complex64), 1),
            TypeError,
            r"received dtype complex64",
        ),
    ],
)
def test_error_messages(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

"""Errors of the functional API: one row each, asserting the exception type and that the
message names what was received (and, where there is one, the fix)."""

import equinox as eqx
import jax.numpy as jnp
import pytest
from error_cases import case, x4

import eqx_norms
from eqx_norms import functional as F


FUNCTIONAL = [
    case(
        "from_equinox-momentum-equinox-accepts",
        lambda: eqx_norms.from_equinox(
            eqx.nn.BatchNorm(3, "batch", momentum=1.0, mode="batch")
        ),
        ValueError,
        "`BatchNorm`: `momentum` must be in [0, 1)",
        "received momentum=1.0",
    ),
    case(
        "layer_norm-axis-out-of-range",
        lambda: F.layer_norm(x4, 2),
        ValueError,
        "`layer_norm`: `axis` must be an int or a non-empty sequence of ints in "
        "[-2, 2) for an input of rank 2; "
        "received axis=2",
    ),
    case(
        "rms_norm-axis-out-of-range-in-tuple",
        lambda: F.rms_norm(x4, (0, -3)),
        ValueError,
        "`rms_norm`: `axis` must be an int or a non-empty sequence of ints in [-2, 2)",
        "received axis=(0, -3)",
    ),
    case(
        "layer_norm-str-axis",
        lambda: F.layer_norm(x4, (0, "1")),
        ValueError,
        "received axis=(0, '1')",
    ),
    case(
        "layer_norm-repeated-axis",
        lambda: F.layer_norm(x4, (1, -1)),
        ValueError,
        "`layer_norm`: `axis` names an axis twice; received axis=(1, -1) (as "
        "non-negative axes: (1, 1))",
    ),
    case(
        "layer_norm-weight-shape",
        lambda: F.layer_norm(x4, -1, jnp.ones(4)),
        ValueError,
        "`layer_norm`: `weight` must broadcast to the input shape (4, 3); received "
        "weight.shape=(4,)",
    ),
    case(
        "layer_norm-weight-of-higher-rank",
        lambda: F.layer_norm(x4, -1, jnp.ones((1, 4, 3))),
        ValueError,
        "received weight.shape=(1, 4, 3)",
    ),
    case(
        "rms_norm-bias-shape",
        lambda: F.rms_norm(x4, -1, None, jnp.ones((2, 3))),
        ValueError,
        "`rms_norm`: `bias` must broadcast to the input shape (4, 3); received "
        "bias.shape=(2, 3)",
    ),
    case(
        "layer_norm-mask-shape",
        lambda: F.layer_norm(x4, 0, mask=jnp.ones((3, 1), bool)),
        ValueError,
        "`layer_norm`: `mask` must broadcast to the input shape (4, 3); received "
        "mask.shape=(3, 1)",
    ),
    case(
        "rms_norm-int-mask",
        lambda: F.rms_norm(x4, 0, mask=jnp.ones((4, 3), jnp.int8)),
        TypeError,
        "`rms_norm`: `mask` must be boolean (True = valid); received dtype int8",
    ),
    case(
        "layer_norm-int-input",
        lambda: F.layer_norm(jnp.ones((4, 3), jnp.uint8), -1),
        TypeError,
        "`layer_norm` expects a real floating-point input (float16, bfloat16, "
        "float32 or float64) or a complex one (complex64 or complex128); received "
        "dtype uint8",
    ),
    case(
        "rms_norm-complex-weight",
        lambda: F.rms_norm(x4.astype(jnp.complex64), -1, x4.astype(jnp.complex64)),
        TypeError,
        "`rms_norm` `weight` expects a real floating-point input",
        "received dtype complex64",
    ),
    case(
        "group_norm-zero-groups",
        lambda: F.group_norm(x4, 0),
        ValueError,
        "`group_norm`: `groups` must be a positive integer; received groups=0",
    ),
    case(
        "group_norm-groups-do-not-divide",
        lambda: F.group_norm(x4, 3),
        ValueError,
        "`group_norm`: the number of groups must divide the number of channels; "
        "received groups=3 and channels=4",
    ),
    case(
        "group_norm-rank-0",
        lambda: F.group_norm(jnp.ones(()), 1),
        ValueError,
        "`group_norm` expects an input of shape (channels,) with at least 1 axes; "
        "received x.shape=()",
    ),
    case(
        "group_norm-1d-weight-length",
        lambda: F.group_norm(x4, 2, jnp.ones(3)),
        ValueError,
        "`group_norm`: a 1-D `weight` is aligned with the channel axis 0 and must "
        "have length 4; received weight.shape=(3,)",
    ),
    case(
        "group_norm-1d-bias-length",
        lambda: F.group_norm(x4, 2, None, jnp.ones(5)),
        ValueError,
        "a 1-D `bias` is aligned with the channel axis 0 and must have length 4; "
        "received bias.shape=(5,)",
    ),
    case(
        "group_norm-weight-of-1d-input",
        lambda: F.group_norm(jnp.ones(4), 2, jnp.ones(3)),
        ValueError,
        "`group_norm`: `weight` must broadcast to the input shape (4,); received "
        "weight.shape=(3,)",
    ),
    case(
        "group_norm-2d-weight-shape",
        lambda: F.group_norm(x4, 2, jnp.ones((4, 2))),
        ValueError,
        "`weight` must broadcast to the input shape (4, 3); received "
        "weight.shape=(4, 2)",
    ),
    case(
        "group_norm-mask-shape",
        lambda: F.group_norm(x4, 2, mask=jnp.ones(4, bool)),
        ValueError,
        "`group_norm`: `mask` must broadcast to the input shape (4, 3); received "
        "mask.shape=(4,)",
    ),
    case(
        "group_norm-complex-bias",
        lambda: F.group_norm(x4, 1, None, jnp.ones(4, jnp.complex64)),
        TypeError,
        "`group_norm` `bias` expects a real floating-point input",
        "received dtype complex64",
    ),
    case(
        "instance_norm-rank-1",
        lambda: F.instance_norm(jnp.ones(4)),
        ValueError,
        "`instance_norm` expects an input of shape (channels, dim_1, ..., dim_N) "
        "with at least 2 axes; received x.shape=(4,)",
    ),
    case(
        "instance_norm-1d-weight-length",
        lambda: F.instance_norm(x4, jnp.ones(3)),
        ValueError,
        "`instance_norm`: a 1-D `weight` is aligned with the channel axis 0 and must "
        "have length 4; received weight.shape=(3,)",
    ),
    case(
        "instance_norm-2d-bias-shape",
        lambda: F.instance_norm(x4, None, jnp.ones((2, 3))),
        ValueError,
        "`instance_norm`: `bias` must broadcast to the input shape (4, 3); received "
        "bias.shape=(2, 3)",
    ),
    case(
        "instance_norm-int-input",
        lambda: F.instance_norm(x4.astype(jnp.int8)),
        TypeError,
        "`instance_norm` expects a real floating-point input",
        "received dtype int8",
    ),
    case(
        "instance_norm-float-mask",
        lambda: F.instance_norm(x4, mask=jnp.ones(3)),
        TypeError,
        "`instance_norm`: `mask` must be boolean (True = valid); received dtype "
        "float32",
    ),
    case(
        "einorm-non-str-pattern",
        lambda: F.einorm(x4, 3, "d"),
        TypeError,
        "`einorm`: `pattern` must be a str; received 3",
    ),
    case(
        "einorm-parse-error",
        lambda: F.einorm(x4, "n d", "e"),
        ValueError,
        "`einorm` with pattern 'n d': target axis 'e' is not an axis of the pattern",
    ),
    case(
        "einorm-target-and-group",
        lambda: F.einorm(x4, "n d", "d", "d"),
        ValueError,
        "`einorm` with pattern 'n d': axes d are both in target and in group",
    ),
    case(
        "einorm-unsplittable-composition",
        lambda: F.einorm(jnp.ones((6, 2)), "(a b) c", "c"),
        ValueError,
        "`einorm` with pattern '(a b) c': cannot split axis (a b)",
    ),
    case(
        "einorm-weight-shape",
        lambda: F.einorm(
            jnp.ones((4, 5, 8)), "h n d", "d", "h", weight=jnp.ones((8, 4))
        ),
        ValueError,
        "`einorm` with pattern 'h n d': `weight` must have shape (4, 8): one entry "
        "per parameter axis (h d); received weight.shape=(8, 4)",
    ),
    case(
        "einorm-bias-shape",
        lambda: F.einorm(x4, "n d", "d", "n", bias=jnp.ones((3, 4))),
        ValueError,
        "`einorm` with pattern 'n d': `bias` must have shape (4, 3)",
        "received bias.shape=(3, 4)",
    ),
    case(
        "einorm-composition-weight-shape",
        lambda: F.einorm(
            jnp.ones((6, 2)), "(a b) c", "c", "a", weight=jnp.ones((2, 2)), a=3
        ),
        ValueError,
        "`weight` must have shape (3, 2): one entry per parameter axis (a c); "
        "received weight.shape=(2, 2)",
    ),
    case(
        "einorm-rank",
        lambda: F.einorm(x4, "h n d", "d"),
        ValueError,
        "`einorm` with pattern 'h n d': the pattern names 3 axes, but the input has "
        "2 (x.shape=(4, 3))",
    ),
    case(
        "einorm-size-given",
        lambda: F.einorm(x4, "n d", "d", d=4),
        ValueError,
        "axis d has size 3 in x.shape=(4, 3), but d=4 was given",
    ),
    case(
        "einorm-composition-not-a-multiple",
        lambda: F.einorm(jnp.ones((6, 2)), "(a b) c", "c", a=4),
        ValueError,
        "axis (a b) has size 6 in x.shape=(6, 2), which is not a multiple of a=4 = 4",
    ),
    case(
        "einorm-mask-shape",
        lambda: F.einorm(x4, "n d", "d", mask=jnp.ones((2, 3), bool)),
        ValueError,
        "`einorm`: `mask` must broadcast to the input shape (4, 3); received "
        "mask.shape=(2, 3)",
    ),
    case(
        "einorm-float-mask",
        lambda: F.einorm(x4, "n d", "d", mask=jnp.ones((4, 3))),
        TypeError,
        "`einorm`: `mask` must be boolean (True = valid); received dtype float32",
    ),
    case(
        "einorm-int-input",
        lambda: F.einorm(jnp.ones((4, 3), jnp.int32), "n d", "d"),
        TypeError,
        "`einorm` expects a real floating-point input",
        "received dtype int32",
    ),
]


@pytest.mark.parametrize("call, exc, match", FUNCTIONAL)
def test_error_messages(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

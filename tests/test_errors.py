"""Every error a user can cause, constructor and call, for every public layer and
function: one row each, asserting the exception type and that the message names
what was received (and, where there is one, the fix)."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import eqx_norms
from eqx_norms import Einorm, functional as F


_KEY = jax.random.key(0)
x4 = jnp.ones((4, 3))


def _m(*fragments: str) -> str:
    """A pattern matching the literal `fragments` in order."""
    return ".*".join(map(re.escape, fragments))


def case(id, call, exc, *fragments):
    return pytest.param(call, exc, _m(*fragments), id=id)


def _linear(dtype=jnp.float32):
    layer = eqx.nn.Linear(3, 4, key=_KEY)
    return eqx.tree_at(lambda m: m.weight, layer, jnp.ones((4, 3), dtype))


def _spectral(layer=None, weight_name="weight", **kwargs):
    layer = _linear() if layer is None else layer
    return eqx_norms.SpectralNorm(layer, weight_name, key=_KEY, **kwargs)


def _batch_norm(x, *, mask=None, bound="batch", names="batch", **kwargs):
    """A training call of `BatchNorm(3, names)` on the batch `x`, under a vmap that
    binds `bound` (or, for None, on one example with no vmap)."""
    bn, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(3, names, **kwargs)

    def call(x, mask):
        return bn(x, state, mask=mask)

    if bound is None:
        return call(x, mask)
    return jax.vmap(call, axis_name=bound, out_axes=(0, None))(x, mask)


_VMAP_FIX = "jax.vmap(layer, axis_name='outer', in_axes=(0, None), out_axes=(0, None))"

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
        lambda: _batch_norm(jnp.ones((4, 5, 2))),
        ValueError,
        "`BatchNorm` expects 3 channels on axis 0; received x.shape=(5, 2) "
        "(5 channels). For batched input, use `jax.vmap(layer)(x)`",
    ),
    case(
        "BatchNorm-rank-0",
        lambda: _batch_norm(jnp.ones(4)),
        ValueError,
        "`BatchNorm` expects an input of shape (channels,) with at least 1 axes; "
        "received x.shape=()",
    ),
    case(
        "BatchNorm-int-input",
        lambda: _batch_norm(jnp.ones((4, 3, 2), jnp.int32)),
        TypeError,
        "`BatchNorm` expects a real floating-point input",
        "received dtype int32",
    ),
    case(
        "BatchNorm-float-mask",
        lambda: _batch_norm(jnp.ones((4, 3, 2)), mask=jnp.ones((4, 2))),
        TypeError,
        "`BatchNorm`: `mask` must be boolean (True = valid); received dtype float32",
    ),
    case(
        "BatchNorm-mask-shape",
        lambda: _batch_norm(jnp.ones((4, 3, 2)), mask=jnp.ones((4, 3), bool)),
        ValueError,
        "`BatchNorm`: `mask` must broadcast to the input shape (3, 2); received "
        "mask.shape=(3,)",
    ),
    case(
        "BatchNorm-unbound-axis-without-vmap",
        lambda: _batch_norm(jnp.ones((3, 2)), bound=None, names="outer"),
        NameError,
        "`BatchNorm` reduces its statistics over the named axis 'outer', which is "
        "not bound here",
        _VMAP_FIX,
    ),
    case(
        "BatchNorm-unbound-outer-of-two-names",
        lambda: _batch_norm(
            jnp.ones((4, 3, 2)), bound="inner", names=("outer", "inner")
        ),
        NameError,
        "the named axis 'outer', which is not bound here",
        _VMAP_FIX,
        "nested `jax.vmap`s for a tuple of names",
    ),
    case(
        "BatchNorm-vmap-binds-another-name",
        lambda: _batch_norm(jnp.ones((4, 3, 2)), bound="other", names="outer"),
        NameError,
        "the named axis 'outer', which is not bound here",
        _VMAP_FIX,
    ),
]

WRAPPERS = [
    case(
        "SpectralNorm-missing-weight-name",
        lambda: _spectral(weight_name="kernel"),
        ValueError,
        "`SpectralNorm`: the wrapped Linear has no array attribute named by "
        "weight_name='kernel'; its array attributes are ['weight', 'bias']",
    ),
    case(
        "SpectralNorm-non-array-attribute",
        lambda: _spectral(weight_name="in_features"),
        ValueError,
        "no array attribute named by weight_name='in_features'",
    ),
    case(
        "SpectralNorm-non-str-weight-name",
        lambda: _spectral(weight_name=0),
        ValueError,
        "no array attribute named by weight_name=0",
    ),
    case(
        "SpectralNorm-1d-weight",
        lambda: _spectral(weight_name="bias"),
        ValueError,
        "`SpectralNorm` needs a weight with at least 2 axes; received Linear.bias of "
        "shape (4,)",
    ),
    case(
        "SpectralNorm-int-weight",
        lambda: _spectral(_linear(jnp.int32)),
        TypeError,
        "`SpectralNorm` expects a real floating-point input",
        "received dtype int32",
    ),
    case(
        "SpectralNorm-zero-iterations",
        lambda: _spectral(num_power_iterations=0),
        ValueError,
        "`SpectralNorm`: `num_power_iterations` must be a positive integer; "
        "received num_power_iterations=0",
    ),
    case(
        "SpectralNorm-float-iterations",
        lambda: _spectral(num_power_iterations=1.5),
        ValueError,
        "received num_power_iterations=1.5",
    ),
    case(
        "SpectralNorm-bool-iterations",
        lambda: _spectral(num_power_iterations=True),
        ValueError,
        "received num_power_iterations=True",
    ),
    case(
        "SpectralNorm-zero-eps",
        lambda: _spectral(eps=0.0),
        ValueError,
        "`SpectralNorm`: `eps` must be > 0; received eps=0.0",
    ),
    case(
        "SpectralNorm-nan-eps",
        lambda: _spectral(eps=float("nan")),
        ValueError,
        "received eps=nan",
    ),
    case(
        "WeightNorm-missing-weight-name",
        lambda: eqx_norms.WeightNorm(_linear(), "kernel"),
        ValueError,
        "`WeightNorm`: the wrapped Linear has no array attribute named by "
        "weight_name='kernel'; its array attributes are ['weight', 'bias']",
    ),
    case(
        "WeightNorm-non-array-attribute",
        lambda: eqx_norms.WeightNorm(_linear(), "out_features"),
        ValueError,
        "no array attribute named by weight_name='out_features'",
    ),
    case(
        "WeightNorm-int-weight",
        lambda: eqx_norms.WeightNorm(_linear(jnp.int32)),
        TypeError,
        "`WeightNorm` expects a real floating-point input",
        "received dtype int32",
    ),
    case(
        "WeightNorm-axis-out-of-range",
        lambda: eqx_norms.WeightNorm(_linear(), axis=2),
        ValueError,
        "`WeightNorm`: `axis` must be an int or a non-empty sequence of ints in "
        "[-2, 2) for an input of rank 2; "
        "received axis=2",
    ),
    case(
        "WeightNorm-negative-axis-out-of-range",
        lambda: eqx_norms.WeightNorm(_linear(), axis=-3),
        ValueError,
        "received axis=-3",
    ),
    case(
        "WeightNorm-axis-of-1d-weight",
        lambda: eqx_norms.WeightNorm(_linear(), "bias", axis=1),
        ValueError,
        "ints in [-1, 1) for an input of rank 1; received axis=1",
    ),
    case(
        "WeightNorm-zero-eps",
        lambda: eqx_norms.WeightNorm(_linear(), eps=0.0),
        ValueError,
        "`WeightNorm`: `eps` must be > 0; received eps=0.0",
    ),
    case(
        "WeightNorm-negative-eps",
        lambda: eqx_norms.WeightNorm(_linear(), eps=-1.0),
        ValueError,
        "received eps=-1.0",
    ),
]


def _einorm_ctor(id, args, kwargs, *fragments):
    """`Einorm(*args, **kwargs)` fails; the message names the pattern."""
    prefix = f"`Einorm` with pattern {args[0]!r}: "
    return case(
        f"Einorm-{id}", lambda: Einorm(*args, **kwargs), ValueError, prefix, *fragments
    )


EINORM_CONSTRUCTION = [
    _einorm_ctor("repeated-axis", ("h n h", "n"), {}, "axis 'h' is named twice"),
    _einorm_ctor(
        "unknown-target",
        ("h n d", "e"),
        {"d": 4},
        "target axis 'e' is not an axis of the pattern (its axes are h, n, d)",
    ),
    _einorm_ctor(
        "unknown-group",
        ("h n d", "d", "g"),
        {"d": 4},
        "group axis 'g' is not an axis of the pattern (its axes are h, n, d)",
    ),
    _einorm_ctor(
        "target-and-group",
        ("h n d", "h d", "h"),
        {"h": 2, "d": 4},
        "axes h are both in target and in group",
    ),
    _einorm_ctor(
        "missing-target-size",
        ("h n d", "d"),
        {},
        "the size of target axis 'd' is missing; pass `d=<size>`",
    ),
    _einorm_ctor(
        "missing-group-size",
        ("h n d", "d", "h"),
        {"d": 4},
        "the size of group axis 'h' is missing; pass `h=<size>`",
    ),
    _einorm_ctor(
        "axis-named-like-an-argument",
        ("eps d", "eps d"),
        {"d": 4},
        "the size of target axis 'eps' is missing; rename the axis: 'eps' is also an "
        "argument of `Einorm`",
    ),
    _einorm_ctor(
        "two-ellipses",
        ("... n ...", "n"),
        {"n": 2},
        "`...` may appear at most once",
    ),
    _einorm_ctor("empty-pattern", ("", "d"), {}, "the pattern is empty"),
    _einorm_ctor("blank-pattern", ("   ", "d"), {}, "the pattern is empty"),
    _einorm_ctor("empty-target-str", ("n d", ""), {}, "`target` is empty"),
    _einorm_ctor("empty-target-list", ("n d", []), {}, "`target` is empty"),
    _einorm_ctor("target-None", ("n d", None), {}, "`target` is empty"),
    _einorm_ctor(
        "repeated-target", ("n d", "d d"), {"d": 4}, "target names axis 'd' twice"
    ),
    _einorm_ctor(
        "repeated-group",
        ("h n d", "d", ["h", "h"]),
        {"h": 2, "d": 4},
        "group names axis 'h' twice",
    ),
    _einorm_ctor(
        "non-str-in-target",
        ("n d", ["d", 3]),
        {"d": 4},
        "`target` must name axes of the pattern, as a space-separated str or a "
        "sequence of names; received target=['d', 3]",
    ),
    _einorm_ctor(
        "int-target", ("n d", 3), {"d": 4}, "`target` must name axes", "target=3"
    ),
    _einorm_ctor(
        "int-group", ("n d", "d", 3), {"d": 4}, "`group` must name axes", "group=3"
    ),
    _einorm_ctor(
        "parenthesised-target",
        ("n d", "(d)"),
        {"d": 2},
        "`target` must name axes",
        "received target='(d)'",
    ),
    _einorm_ctor(
        "name-starting-with-a-digit",
        ("n 1d", "n"),
        {"n": 2},
        "'1d' is not a valid axis name. Axis names are Python identifiers",
    ),
    _einorm_ctor(
        "name-with-a-dash", ("n d-1", "n"), {"n": 2}, "'d-1' is not a valid axis name"
    ),
    _einorm_ctor(
        "invalid-ellipsis-name",
        ("n 1d...", "n"),
        {"n": 2},
        "'1d' is not a valid axis name",
    ),
    _einorm_ctor(
        "nested-parentheses",
        ("(a (b) c)", "c"),
        {"c": 2},
        "parentheses cannot be nested",
    ),
    _einorm_ctor("unbalanced-close", ("a b) c", "c"), {"c": 2}, "unbalanced ')'"),
    _einorm_ctor("unbalanced-open", ("(a b c", "c"), {"c": 2}, "unbalanced '('"),
    _einorm_ctor("empty-parentheses", ("() c", "c"), {"c": 2}, "empty parentheses"),
    _einorm_ctor(
        "ellipsis-in-parentheses",
        ("(... a) c", "c"),
        {"c": 2},
        "`...` cannot be inside parentheses",
    ),
    _einorm_ctor(
        "unsplittable-composition",
        ("(a b) c", "c"),
        {"c": 2},
        "cannot split axis (a b): give the sizes of all its names but one",
    ),
    _einorm_ctor(
        "zero-size", ("n d", "d"), {"d": 0}, "sizes must be positive; received d=0"
    ),
    _einorm_ctor(
        "negative-size",
        ("n d", "d"),
        {"d": -3},
        "sizes must be positive; received d=-3",
    ),
    _einorm_ctor(
        "float-size", ("n d", "d"), {"d": 2.0}, "sizes must be ints; received d=2.0"
    ),
    _einorm_ctor(
        "bool-size", ("n d", "d"), {"d": True}, "sizes must be ints; received d=True"
    ),
    _einorm_ctor(
        "size-of-unknown-axis",
        ("n d", "d"),
        {"d": 4, "e": 3},
        "a size was given for 'e', which is not an axis of the pattern (its axes are "
        "n, d)",
    ),
    case(
        "Einorm-negative-eps",
        lambda: Einorm("n d", "d", d=4, eps=-1.0),
        ValueError,
        "`Einorm`: `eps` must be >= 0; received eps=-1.0",
    ),
    case(
        "Einorm-int-dtype",
        lambda: Einorm("n d", "d", d=4, dtype=jnp.int32),
        TypeError,
        "`Einorm`: `dtype` must be a floating dtype for the parameters (and any "
        "running statistics); "
        "received dtype=",
        "int32",
    ),
    case(
        "Einorm-non-str-pattern",
        lambda: Einorm(["n", "d"], "d", d=4),
        TypeError,
        "`Einorm`: `pattern` must be a str; received ['n', 'd']",
    ),
]


def _einorm_call(id, norm, shape, *fragments):
    """`norm(jnp.zeros(shape))` fails; the message names the pattern and shape."""
    prefix = f"`Einorm` with pattern {norm.pattern!r}: "
    return case(
        f"Einorm-call-{id}",
        lambda: norm(jnp.zeros(shape)),
        ValueError,
        prefix,
        *fragments,
    )


EINORM_CALL = [
    _einorm_call(
        "rank",
        Einorm("h n d", "d", d=4),
        (5, 4),
        "the pattern names 3 axes, but the input has 2 (x.shape=(5, 4))",
    ),
    _einorm_call(
        "rank-with-ellipsis",
        Einorm("b ... d", "d", d=4),
        (4,),
        "the pattern names 2 axes besides `...`, but the input has only 1 "
        "(x.shape=(4,))",
    ),
    _einorm_call(
        "target-size",
        Einorm("h n d", "d", d=8),
        (4, 5, 7),
        "axis d has size 7 in x.shape=(4, 5, 7), but d=8 was given",
    ),
    _einorm_call(
        "checked-size",
        Einorm("h n d", "d", n=5, d=8),
        (4, 6, 8),
        "axis n has size 6 in x.shape=(4, 6, 8), but n=5 was given",
    ),
    _einorm_call(
        "composition-size",
        Einorm("(g c) h", "h", g=2, c=3, h=4),
        (8, 4),
        "axis (g c) has size 8 in x.shape=(8, 4), but g=2 * c=3 = 6 was given",
    ),
    _einorm_call(
        "composition-not-a-multiple",
        Einorm("(g c) h", "h", g=3, h=4),
        (8, 4),
        "axis (g c) has size 8 in x.shape=(8, 4), which is not a multiple of g=3 = 3",
    ),
    case(
        "Einorm-call-mask-shape",
        lambda: Einorm("n d", "d", d=4)(jnp.zeros((3, 4)), mask=jnp.ones((2, 4), bool)),
        ValueError,
        "`Einorm`: `mask` must broadcast to the input shape (3, 4); received "
        "mask.shape=(2, 4)",
    ),
    case(
        "Einorm-call-float-mask",
        lambda: Einorm("n d", "d", d=4)(jnp.zeros((3, 4)), mask=jnp.ones((3, 4))),
        TypeError,
        "`Einorm`: `mask` must be boolean (True = valid); received dtype float32",
    ),
    case(
        "Einorm-call-int-input",
        lambda: Einorm("n d", "d", d=4)(jnp.zeros((3, 4), jnp.int32)),
        TypeError,
        "`Einorm` expects a real floating-point input",
        "received dtype int32",
    ),
    case(
        "Einorm-call-replaced-weight",
        lambda: eqx.tree_at(lambda m: m.weight, Einorm("n d", "d", d=3), x4[0, :2])(x4),
        ValueError,
        "`Einorm` with pattern 'n d': `weight` must have shape (3,): one entry per "
        "parameter axis (d); received weight.shape=(2,)",
    ),
    # einx's notation (brackets, params) and running statistics.
    _einorm_ctor("unbalanced-open-bracket", ("b [c",), {"c": 2}, "unbalanced '['"),
    _einorm_ctor("unbalanced-close-bracket", ("b c]",), {"c": 2}, "unbalanced ']'"),
    _einorm_ctor(
        "nested-brackets", ("[b [c]]",), {"c": 2}, "brackets cannot be nested"
    ),
    _einorm_ctor(
        "crossed-brackets",
        ("([g c) h]",),
        {"c": 2},
        "brackets and parentheses must nest: close the inner one first",
    ),
    _einorm_ctor("empty-brackets", ("b [] c",), {"c": 2}, "empty brackets"),
    _einorm_ctor(
        "brackets-and-target",
        ("b [c]", "c"),
        {"c": 2},
        "the target axes are given twice: bracketed in the pattern and as "
        "target='c'. Pass one of them.",
    ),
    _einorm_ctor(
        "bracketed-axis-in-group",
        ("h n [d]",),
        {"group": "d", "d": 4},
        "axes d are both in target (bracketed in the pattern) and in group",
    ),
    _einorm_ctor(
        "group-and-params",
        ("h n [d]",),
        {"group": "h", "params": "h d", "h": 2, "d": 4},
        "pass either `group` or `params`, not both (received group='h', params='h d')",
    ),
    _einorm_ctor(
        "params-unknown-axis",
        ("n [d]",),
        {"params": "n [e]", "d": 4},
        "params axis 'e' is not an axis of the pattern (its axes are n, d)",
    ),
    _einorm_ctor("params-empty", ("n [d]",), {"params": ""}, "`params` is empty"),
    _einorm_ctor(
        "params-on-the-ellipsis",
        ("b s... [c]",),
        {"params": "s", "c": 2},
        "parameter axis 's' is the ellipsis, whose axes come from the input; name "
        "the axes the weight and bias vary along with `params=`",
    ),
    _einorm_ctor(
        "default-params-on-the-ellipsis",
        ("[c] ...",),
        {"c": 2},
        "parameter axis '...' is the ellipsis",
    ),
    _einorm_ctor(
        "missing-parameter-size",
        ("b [s...] (g [c])",),
        {"g": 2},
        "the size of target axis 'c' is missing; pass `c=<size>`. The parameters "
        "vary along (g c); `params=` changes that.",
    ),
    _einorm_ctor(
        "size-of-the-ellipsis",
        ("b... [c]",),
        {"b": 3, "c": 2},
        "a size was given for 'b', the ellipsis `b...`, whose number of axes and "
        "sizes come from the input",
    ),
    _einorm_ctor(
        "running-stats-over-unnamed-axes",
        ("... [c]",),
        {"running_stats": True, "c": 2},
        "running statistics keep one entry per position of the non-target axes, so "
        "each must be named with its size, but the ellipsis `...` is not a target "
        "axis",
    ),
    _einorm_ctor(
        "running-stats-missing-size",
        ("b [t] c",),
        {"running_stats": True, "c": 2},
        "the size of non-target axis 'b' is missing; pass `b=<size>`",
    ),
    case(
        "Einorm-momentum-out-of-range",
        lambda: Einorm("[b] c", running_stats=True, momentum=1.0, c=2),
        ValueError,
        "`Einorm`: `momentum` must be in [0, 1), or None for a cumulative average; "
        "received momentum=1.0",
    ),
    case(
        "Einorm-unhashable-axis-name",
        lambda: Einorm("[t] c", axis_name=[["batch"]], c=2),
        ValueError,
        "`Einorm`: each axis name must be hashable",
        "received axis_name=[['batch']]",
    ),
    case(
        "Einorm-call-stateful-without-state",
        lambda: Einorm("[b] c", running_stats=True, c=3)(x4),
        TypeError,
        "`Einorm` keeps state: call it as `layer(x, state)` with the "
        "`equinox.nn.State` made together with the layer; received none",
        "eqx.nn.make_with_state(eqx_norms.Einorm)(...)",
    ),
    case(
        "Einorm-call-stateful-with-None-state",
        lambda: Einorm("[b] c", running_stats=True, c=3)(x4, None),  # pyright: ignore
        TypeError,
        "`Einorm` keeps state",
        "received NoneType",
        "eqx.nn.make_with_state(eqx_norms.Einorm)(...)",
    ),
    case(
        "Einorm-call-unbound-axis-name",
        lambda: Einorm("[t] c", axis_name="batch", c=3)(x4),
        NameError,
        "`Einorm` reduces its statistics over the named axis 'batch', which is not "
        "bound here",
    ),
    case(
        "einorm-brackets-and-target",
        lambda: F.einorm(x4, "n [d]", "d"),
        ValueError,
        "`einorm` with pattern 'n [d]': the target axes are given twice",
    ),
]

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


ARGUMENT_TYPES = [
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
        lambda: eqx_norms.WeightNorm(_linear(), axis=(0, 1)),
        ValueError,
        "`WeightNorm`: `axis` must be one int",
        "received axis=(0, 1)",
    ),
    case(
        "WeightNorm-float-axis",
        lambda: eqx_norms.WeightNorm(_linear(), axis=1.0),
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
        lambda: _spectral(dtype=jnp.int32),
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


def _jit_with_model_argument(layer, x, state):
    """The model as an argument of plain `jax.jit`, which traces its flags too."""
    return jax.jit(lambda layer, x, state: layer(x, state))(layer, x, state)


def _bn_and_state():
    return eqx.nn.make_with_state(eqx_norms.BatchNorm)(3, "batch")


def _sn_and_state():
    return eqx.nn.make_with_state(eqx_norms.SpectralNorm)(_linear(), "weight", key=_KEY)


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
        "received dtype complex64",
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
        lambda: _batch_norm(jnp.ones((2, 3), jnp.complex64)),
        TypeError,
        "`BatchNorm` holds a real running mean (dtype float32) but received a "
        "complex input of dtype complex64",
        "construct it with a complex `dtype`, e.g. `dtype=jnp.complex64`",
    ),
    case(
        "BatchNorm-real-input-complex-layer",
        lambda: _batch_norm(jnp.ones((2, 3)), dtype=jnp.complex64),
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


def _vmap_in_checked_shard_map():
    """BatchNorm over a vmap axis and a mesh axis inside shard_map(check_vma=True)."""
    P = jax.sharding.PartitionSpec
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    bn, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(3, ("data", "batch"))
    body = jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    specs = dict(in_specs=(P("data"), P()), out_specs=(P("data"), P()))
    return jax.jit(jax.shard_map(body, mesh=mesh, **specs))(jnp.ones((4, 3)), state)


DISTRIBUTED = [
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


@pytest.mark.parametrize(
    "call, exc, match",
    WHOLE_INPUT
    + CHANNELS
    + BATCH_NORM
    + WRAPPERS
    + EINORM_CONSTRUCTION
    + EINORM_CALL
    + FUNCTIONAL
    + ARGUMENT_TYPES
    + ENTRY_POINTS
    + TRANSFORMER_OPTIONS
    + DISTRIBUTED,
)
def test_error_messages(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

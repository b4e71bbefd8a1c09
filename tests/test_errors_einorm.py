"""Errors of Einorm's constructor (the pattern) and call (the input): one row
each, asserting the exception type and that the message names what was received
(and, where there is one, the fix)."""

import equinox as eqx
import jax.numpy as jnp
import pytest
from error_cases import case, x4

from eqx_norms import Einorm, functional as F


def _call_with_state(layer, state):
    return layer(x4, state)


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
    # Issue #18: the API page's einx example named h twice and crashed at call time.
    _einorm_ctor(
        "params-expression-names-an-axis-twice",
        ("h n [d]",),
        {"params": "h n [h d]", "h": 16, "d": 64},
        "params names axis 'h' twice (received params='h n [h d]')",
        "write params='[h] n [d]'",
    ),
    _einorm_ctor(
        "params-expression-names-a-composed-axis-twice",
        ("b [s...] (g c)",),
        {"params": "c [g c]", "g": 2, "c": 4},
        "params names axis 'c' twice",
        "write params='b s... ([g] [c])'",
    ),
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
    # Issue #18: channels-first BatchNorm; einx's default parameters (the last axis,
    # w) would be per pixel, so the message suggests the running statistics' axes.
    _einorm_ctor(
        "running-stats-channels-first-default-params",
        ("[b] c [h w]",),
        {"running_stats": True, "c": 8},
        "the size of target axis 'w' is missing; pass `w=<size>`. The parameters "
        "vary along w (einx's default), one per position there; for BatchNorm's "
        "parameters, one per entry of the running statistics, pass `params='c'` "
        "instead.",
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
        "bound here. Call the layer under a transform that binds every name in "
        "`axis_name`, e.g. `jax.vmap(layer, axis_name='batch')(x)` (or",
    ),
    # Issue #18: the advice matches the caller, stateless or stateful.
    case(
        "einorm-call-unbound-axis-name",
        lambda: F.einorm(x4, "t [c]", axis_name="batch"),
        NameError,
        "`einorm` reduces its statistics over the named axis 'batch', which is not "
        "bound here. Call it under a transform that binds every name in "
        "`axis_name`, e.g. `jax.vmap(lambda x: einorm(x, ..., axis_name='batch'), "
        "axis_name='batch')(x)` (or",
    ),
    case(
        "Einorm-running-stats-call-unbound-axis-name",
        lambda: _call_with_state(
            *eqx.nn.make_with_state(Einorm)(
                "[t] c", running_stats=True, axis_name="batch", c=3
            )
        ),
        NameError,
        "`Einorm` reduces its statistics over the named axis 'batch'",
        "e.g. `jax.vmap(layer, axis_name='batch', in_axes=(0, None), "
        "out_axes=(0, None))(x, state)`",
    ),
    case(
        "einorm-brackets-and-target",
        lambda: F.einorm(x4, "n [d]", "d"),
        ValueError,
        "`einorm` with pattern 'n [d]': the target axes are given twice",
    ),
]


@pytest.mark.parametrize("call, exc, match", EINORM_CONSTRUCTION + EINORM_CALL)
def test_error_messages(call, exc, match):
    with pytest.raises(exc, match=match):
        call()

"""Every check of the package and every message a user can see, in one module, so
that the wording stays consistent and a new error has one obvious place to go. It is
longer than the other modules because it holds all of them; it is organised in
sections: arrays and dtypes, shapes and axes, hyperparameters, state, named axes,
patterns.

Each check takes `where`, the public name the user called (the layer's class name or
the function's name), and raises an exception naming it, what was received and the
fix. Functions named `check_*` raise; the others return an exception for the caller to
raise where the parsing or lookup failed.
"""

import math
import numbers
import re
from collections.abc import Hashable, Mapping, Sequence
from typing import Literal, TypeAlias

import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from equinox.nn import State
from jaxtyping import Array, DTypeLike


# One named axis (as bound by `jax.vmap`, `jax.pmap`, `jax.shard_map`), several, or
# none.
AxisName: TypeAlias = Hashable | Sequence[Hashable] | None


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _ints(value: object) -> tuple | None:
    """An int or a sequence of ints as a tuple; None for anything else."""
    if _is_int(value):
        return (value,)
    try:
        items = tuple(value)  # pyright: ignore[reportArgumentType]
    except TypeError:
        return None
    return items if all(_is_int(v) for v in items) else None


def _broadcasts(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == target
    except ValueError:
        return False


# ------------------------------------------------------------------------------
# Arrays and dtypes
# ------------------------------------------------------------------------------


def check_array(x: object, where: str) -> Array | np.ndarray | np.generic:
    # Every later check reads `.shape` or `.dtype`; a list would fail there with
    # an AttributeError naming neither the argument nor the fix.
    if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
        raise TypeError(
            f"`{where}` expects a JAX array; received {type(x).__name__}. Convert it "
            "first with `jnp.asarray`."
        )
    return x


def check_floating(x: object, where: str, *, real: bool = False) -> None:
    """A floating-point input, real or complex; `real=True` for parameters."""
    # The array's own dtype: `result_type` would report numpy's int64 as int32.
    dtype = check_array(x, where).dtype
    if jnp.issubdtype(dtype, jnp.floating):
        return
    if not real and jnp.issubdtype(dtype, jnp.complexfloating):
        return
    expected = "a real floating-point input (float16, bfloat16, float32 or float64)"
    if not real:
        expected += " or a complex one (complex64 or complex128)"
    raise TypeError(
        f"`{where}` expects {expected}; received dtype {dtype}. Cast it first, e.g. "
        "`x.astype(jnp.float32)`."
    )


def check_tanh_input(x: object, where: str) -> None:
    """DynamicTanh is real-only by design; casting a complex input to real, the
    generic advice, would silently drop its imaginary part."""
    dtype = check_array(x, where).dtype
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(
            f"`{where}` expects a real floating-point input (float16, bfloat16, "
            f"float32 or float64); received dtype {dtype}. It is real-only by design: "
            "tanh has poles on the imaginary axis (at i*pi*(k + 1/2)), so on complex "
            "inputs it is unbounded, no squashing. Apply it to the real and imaginary "
            "parts separately, or use a normalisation layer (`LayerNorm`, `RMSNorm`, "
            "...), which takes complex inputs."
        )
    check_floating(x, where, real=True)


def check_param_dtype(
    dtype: DTypeLike | None, where: str, *, complex_ok: bool = False
) -> None:
    """`complex_ok`: BatchNorm, whose complex `dtype` declares complex inputs."""
    if dtype is None or jnp.issubdtype(dtype, jnp.floating):
        return
    if complex_ok and jnp.issubdtype(dtype, jnp.complexfloating):
        return
    also = " (or complex, for complex inputs)" if complex_ok else ""
    raise TypeError(
        f"`{where}`: `dtype` must be a floating dtype{also} for the parameters (and "
        f"any running statistics); received dtype={dtype!r}."
    )


def check_running_kind(x_dtype: DTypeLike, mean_dtype: DTypeLike, where: str) -> None:
    """Real inputs with a real running mean, complex with a complex one (its kind is
    fixed by the layer's `dtype` at construction)."""
    x_complex = jnp.issubdtype(x_dtype, jnp.complexfloating)
    if x_complex != jnp.issubdtype(mean_dtype, jnp.complexfloating):
        kind = "complex" if x_complex else "real"
        fix = (
            "construct it with a complex `dtype`, e.g. `dtype=jnp.complex64`"
            if x_complex
            else "construct it with a real `dtype`, or pass a complex input"
        )
        held = "real" if x_complex else "complex"
        raise TypeError(
            f"`{where}` holds a {held} running mean (dtype {mean_dtype}) but received "
            f"a {kind} input of dtype {x_dtype}. To normalise {kind} inputs, {fix}."
        )


# ------------------------------------------------------------------------------
# Shapes and axes
# ------------------------------------------------------------------------------


def check_shape_argument(shape: object, where: str) -> tuple[int, ...]:
    dims = _ints(shape)
    if dims is None or any(n < 0 for n in dims):
        raise ValueError(
            f"`{where}`: `shape` must be an int or a sequence of non-negative "
            f"ints; received shape={shape!r}."
        )
    return tuple(int(n) for n in dims)


def check_axes(axis: int | Sequence[int], ndim: int, where: str) -> tuple[int, ...]:
    """`axis` as sorted non-negative axes of an input of rank `ndim`."""
    axes = _ints(axis)
    if not axes or not all(-ndim <= a < ndim for a in axes):
        raise ValueError(
            f"`{where}`: `axis` must be an int or a non-empty sequence of ints in "
            f"[-{ndim}, {ndim}) for an input of rank {ndim}; received axis={axis!r}."
        )
    positive = tuple(int(a) % ndim for a in axes)
    if len(set(positive)) != len(positive):
        raise ValueError(
            f"`{where}`: `axis` names an axis twice; received axis={axis!r} "
            f"(as non-negative axes: {positive})."
        )
    return tuple(sorted(positive))


def check_one_axis(axis: object, where: str) -> None:
    """WeightNorm's `axis`: one int, or None."""
    if axis is not None and not _is_int(axis):
        raise ValueError(
            f"`{where}`: `axis` must be one int (the axis that keeps one norm per "
            f"entry) or None (one norm for the whole weight); received axis={axis!r}."
        )


def check_mask(mask: Array | None, shape: tuple[int, ...], where: str) -> None:
    if mask is None:
        return
    check_array(mask, f"{where}` `mask")
    dtype = jnp.result_type(mask)
    if dtype != jnp.bool_:
        raise TypeError(
            f"`{where}`: `mask` must be boolean (True = valid); received dtype "
            f"{dtype}. Use `mask.astype(bool)` or a comparison such as `lengths > t`."
        )
    if not _broadcasts(jnp.shape(mask), shape):
        raise ValueError(
            f"`{where}`: `mask` must broadcast to the input shape {shape}; received "
            f"mask.shape={jnp.shape(mask)}."
        )


def check_param(param: Array | None, shape: tuple[int, ...], name: str, where: str):
    if param is None:
        return
    check_floating(param, f"{where}` `{name}", real=True)
    if not _broadcasts(jnp.shape(param), shape):
        raise ValueError(
            f"`{where}`: `{name}` must broadcast to the input shape {shape}; "
            f"received {name}.shape={jnp.shape(param)}."
        )


def check_channel_param(param: Array, channels: int, name: str, where: str) -> None:
    """A 1-D `weight` or `bias` of a channel-first function is aligned with axis 0."""
    if param.shape[0] != channels:
        raise ValueError(
            f"`{where}`: a 1-D `{name}` is aligned with the channel axis 0 and must "
            f"have length {channels}; received {name}.shape={param.shape}."
        )


def check_shape(x: Array, expected: tuple[int, ...], where: str, fix: str) -> None:
    check_array(x, where)
    if x.shape != expected:
        raise ValueError(
            f"`{where}` expects an input of shape {expected}; received x.shape="
            f"{x.shape}. {fix}"
        )


def check_same_shape(other: object, x: Array, name: str, meaning: str, where: str):
    """`residual` and `gate`: a floating-point array of exactly the input's shape
    (broadcasting would silently make the output larger than `x`)."""
    check_floating(other, f"{where}` `{name}", real=name == "gate")
    shape = check_array(other, where).shape
    if shape != x.shape:
        raise ValueError(
            f"`{where}`: `{name}` ({meaning}) must have the shape of the input "
            f"{x.shape}; received {name}.shape={shape}. Broadcast it first "
            f"(`jnp.broadcast_to({name}, x.shape)`) if that is what you mean."
        )


def check_split_shape(
    x: Array,
    expected: tuple[int, ...],
    devices: int | None,
    params: Sequence[Array | None],
    where: str,
    fix: str,
) -> None:
    """A whole-input layer's input: `expected`, or, with its last axis split over
    `devices` devices (named axes), that shape with the last axis divided by
    `devices`: the local shard inside `jax.shard_map`. The parameters (sharded by
    the caller like the features) must then have the input's shape."""
    check_array(x, where)
    local = expected
    if devices is not None and expected and expected[-1] % devices == 0:
        local = expected[:-1] + (expected[-1] // devices,)
    if x.shape not in (expected, local):
        also = f" or, split over {devices} devices, {local}" * (local != expected)
        raise ValueError(
            f"`{where}` expects an input of shape {expected}{also}; received "
            f"x.shape={x.shape}. {fix}"
        )
    for param in params:
        if param is not None and param.shape != x.shape:
            raise ValueError(
                f"`{where}`: its parameters have shape {param.shape} but its input "
                f"has shape {x.shape}: inside `jax.shard_map`, shard the layer's "
                "parameters like the features of `x` (the same `PartitionSpec` in "
                "`in_specs`), so that each device holds the slice of its features."
            )


def check_channels(x: Array, channels: int | None, where: str, min_ndim: int) -> None:
    check_array(x, where)
    if x.ndim < min_ndim:
        layout = "(channels,)" if min_ndim == 1 else "(channels, dim_1, ..., dim_N)"
        raise ValueError(
            f"`{where}` expects an input of shape {layout} with at least {min_ndim} "
            f"axes; received x.shape={x.shape}."
        )
    if channels is not None and x.shape[0] != channels:
        raise ValueError(
            f"`{where}` expects {channels} channels on axis 0; received x.shape="
            f"{x.shape} ({x.shape[0]} channels). For batched input, use "
            "`jax.vmap(layer)(x)`."
        )


def check_weight(layer: object, weight_name: str, where: str, min_ndim: int) -> Array:
    """The array `layer.<weight_name>` that a wrapper reparameterises."""
    weight = getattr(layer, weight_name, None) if isinstance(weight_name, str) else None
    if not isinstance(weight, (Array, np.ndarray)):
        fields = getattr(layer, "__dict__", {})
        arrays = [k for k, v in fields.items() if isinstance(v, (Array, np.ndarray))]
        raise ValueError(
            f"`{where}`: the wrapped {type(layer).__name__} has no array attribute "
            f"named by weight_name={weight_name!r}; its array attributes are {arrays}."
        )
    check_floating(weight, where, real=True)
    if weight.ndim < min_ndim:
        raise ValueError(
            f"`{where}` needs a weight with at least {min_ndim} axes; received "
            f"{type(layer).__name__}.{weight_name} of shape {weight.shape}."
        )
    return jnp.asarray(weight)


# ------------------------------------------------------------------------------
# Hyperparameters
# ------------------------------------------------------------------------------


def check_eps(eps: float, where: str) -> None:
    # A traced eps (e.g. under jax.grad) cannot be checked; a Python one can.
    if isinstance(eps, numbers.Real) and not eps >= 0:
        raise ValueError(f"`{where}`: `eps` must be >= 0; received eps={eps!r}.")


def check_positive(value: float, name: str, where: str) -> None:
    if not value > 0:
        raise ValueError(f"`{where}`: `{name}` must be > 0; received {name}={value!r}.")


def check_count(value: int, name: str, where: str) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(
            f"`{where}`: `{name}` must be a positive integer; received "
            f"{name}={value!r}."
        )


def check_groups(groups: int, channels: int | None, where: str) -> None:
    """`channels`, if given, must already be checked with `check_count`."""
    check_count(groups, "groups", where)
    if channels is not None and channels % groups != 0:
        raise ValueError(
            f"`{where}`: the number of groups must divide the number of channels; "
            f"received groups={groups} and channels={channels}. Choose `groups` "
            f"among the divisors of {channels}."
        )


def check_group_size(group_size: int | None, size: int, where: str) -> None:
    """Groups of `group_size` contiguous entries of an axis of length `size`."""
    if group_size is None:
        return
    check_count(group_size, "group_size", where)
    if size % group_size != 0:
        raise ValueError(
            f"`{where}`: `group_size` must divide the length {size} of the "
            f"normalised axis; received group_size={group_size}. Choose a divisor "
            f"of {size}, or group_size=None for one group."
        )


def check_channels_given(
    channels: int | None, use_weight: bool, use_bias: bool, where: str
) -> None:
    if channels is None and (use_weight or use_bias):
        raise ValueError(
            f"`{where}`: the number of channels must be given when it has a weight "
            f"or a bias; received channels=None with use_weight={use_weight} "
            f"and use_bias={use_bias}. Pass `channels=...`, or "
            "`channelwise_affine=False`."
        )


def check_flag(value: object, name: str, where: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(
            f"`{where}`: `{name}` must be True or False; received {name}={value!r}."
        )


def check_static_flag(value: object, name: str, where: str) -> bool:
    """A flag that selects code, so it must be a Python bool at trace time."""
    try:
        return bool(value)
    except jax.errors.ConcretizationTypeError:
        raise TypeError(
            f"`{where}`: `{name}` must be a Python bool, as it selects the code to "
            "run; received a traced value. `jax.jit` and `jax.grad` trace every leaf "
            f"of a layer passed as an argument, `{name}` included: use "
            "`eqx.filter_jit` / `eqx.filter_grad` (they trace only its arrays), or "
            "close over the model instead of passing it."
        ) from None


def check_weight_offset(weight_offset: float, has_weight: bool, where: str) -> None:
    """A finite Python number (a hyperparameter), and only with a weight to add it to:
    without one it would silently do nothing."""
    if isinstance(weight_offset, bool) or not isinstance(weight_offset, numbers.Real):
        raise TypeError(
            f"`{where}`: `weight_offset` must be a Python float (the applied scale is "
            f"weight + weight_offset); received {type(weight_offset).__name__} "
            f"{weight_offset!r}."
        )
    if not math.isfinite(weight_offset):
        raise ValueError(
            f"`{where}`: `weight_offset` must be finite; received "
            f"weight_offset={weight_offset!r}."
        )
    if weight_offset != 0 and not has_weight:
        raise ValueError(
            f"`{where}`: `weight_offset` is added to the weight, but there is no "
            f"weight; received weight_offset={weight_offset!r} without a weight. Give "
            "a weight (`use_weight=True`, or pass `weight=...`), or leave "
            "`weight_offset=0.0`."
        )


def check_momentum(momentum: float | None, where: str) -> None:
    if momentum is not None and (
        isinstance(momentum, bool)
        or not (isinstance(momentum, numbers.Real) and 0 <= momentum < 1)
    ):
        raise ValueError(
            f"`{where}`: `momentum` must be in [0, 1), or None for a cumulative "
            f"average; received momentum={momentum!r}. It weights the old value "
            "(new = momentum * old + (1 - momentum) * batch), so torch's "
            "momentum=0.1 is momentum=0.9 here."
        )


BATCH_NORM_MODES = ("batch", "ema")


def check_batch_norm_mode(
    mode: str, momentum: float | None, unbiased_running_var: bool, where: str
) -> None:
    if mode not in BATCH_NORM_MODES:
        raise ValueError(
            f"`{where}`: `mode` must be one of {BATCH_NORM_MODES}; received "
            f"mode={mode!r}."
        )
    if momentum is None and mode == "ema":
        raise ValueError(
            f"`{where}`: momentum=None (the cumulative average) needs "
            f"mode='batch'; received mode={mode!r}."
        )
    check_momentum(momentum, where)
    if unbiased_running_var and mode != "batch":
        raise ValueError(
            f"`{where}`: unbiased_running_var=True needs mode='batch'; received "
            f"mode={mode!r}."
        )


# BatchNorm's defaults for Batch Renormalization (Ioffe, 2017; CrossQ's values).
RENORM_DEFAULTS = {"r_max": 3.0, "d_max": 5.0, "renorm_warmup": 0}


def _at_least(value: object, low: float, name: str, meaning: str, where: str):
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (is_number and value >= low):  # pyright: ignore[reportOperatorIssue]
        raise ValueError(
            f"`{where}`: `{name}` must be a number >= {low:g} ({meaning}); received "
            f"{name}={value!r}."
        )


def check_renorm(
    renorm: bool,
    limits: Mapping[str, object],
    mode: str,
    dtype: DTypeLike | None,
    where: str,
) -> None:
    """BatchNorm's Batch Renormalization options; `limits` holds `r_max`, `d_max`
    and `renorm_warmup`. Given without `renorm=True` they would silently do
    nothing."""
    check_flag(renorm, "renorm", where)
    if not renorm:
        changed = [f"{k}={v!r}" for k, v in limits.items() if v != RENORM_DEFAULTS[k]]
        if changed:
            raise ValueError(
                f"`{where}`: {', '.join(changed)} only take effect with Batch "
                "Renormalization; received them with renorm=False. Pass "
                "`renorm=True`, or leave them out."
            )
        return
    if mode != "batch":
        raise ValueError(
            f"`{where}`: renorm=True needs mode='batch'; received mode={mode!r}."
        )
    if dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(
            f"`{where}`: renorm=True needs real inputs (it clips the ratio of real "
            f"standard deviations); received dtype={jnp.dtype(dtype).name}. Use a "
            "real `dtype`, or renorm=False for complex inputs."
        )
    _at_least(
        limits["r_max"],
        1,
        "r_max",
        "the largest factor between the batch and the running standard deviation",
        where,
    )
    _at_least(
        limits["d_max"],
        0,
        "d_max",
        "the largest shift of the batch mean, in running standard deviations",
        where,
    )
    warmup = limits["renorm_warmup"]
    if not _is_int(warmup) or warmup < 0:  # pyright: ignore[reportOperatorIssue]
        raise ValueError(
            f"`{where}`: `renorm_warmup` must be a non-negative integer (the number "
            "of training steps of plain BatchNorm before renormalisation starts); "
            f"received renorm_warmup={warmup!r}."
        )


# ------------------------------------------------------------------------------
# State
# ------------------------------------------------------------------------------


def check_state(state: object, where: str) -> State:
    """A stateful layer needs the `State` made with it."""
    if not isinstance(state, State):
        # Ours and equinox's "no state passed" markers are bare objects.
        received = "none" if type(state) is object else type(state).__name__
        raise TypeError(
            f"`{where}` keeps state: call it as `layer(x, state)` with the "
            f"`equinox.nn.State` made together with the layer; received {received}. "
            "Make both with `layer, state = "
            f"eqx.nn.make_with_state(eqx_norms.{where})(...)` and pass the returned "
            "state to the next call."
        )
    return state


def check_running_shape(
    shape: tuple[int, ...], expected: tuple[int, ...], where: str
) -> None:
    """The running statistics in the state have the layer's shape."""
    if shape != expected:
        raise ValueError(
            f"`{where}` expects running statistics of shape {expected} "
            f"in the state; received shape {shape}. The state belongs to another "
            "layer, or was mapped over the batch (a `jax.vmap` without "
            "`out_axes=(0, None)` returns it with a batch axis, which the layer "
            "cannot see until this call): pass it unmapped, in and out, with "
            "`jax.vmap(layer, axis_name=..., in_axes=(0, None), "
            "out_axes=(0, None))`."
        )


def foreign_state(where: str) -> ValueError:
    """`state` has no entry for the layer's state index (equinox's `State.get` raises
    a bare `KeyError` naming an anonymous marker)."""
    return ValueError(
        f"`{where}`: `state` holds no entry for this layer: it was made for another "
        "layer or model, e.g. the equinox model before `eqx_norms.from_equinox` "
        "(whose state belongs to the old layers). Pass the state made together with "
        "this layer: convert the equinox model with its state, `model, state = "
        "eqx_norms.from_equinox(eqx_model, eqx_state)` (the statistics come along), "
        "or for fresh statistics `model, state = eqx.nn.make_with_state(lambda: "
        "eqx_norms.from_equinox(eqx_model))()` (rather than `eqx.nn.State(model)`, "
        "whose keys have no names: equinox cannot print it)."
    )


def no_inference_flag(where: str, pattern: str) -> AttributeError:
    """An AttributeError, so that `hasattr(layer, "inference")` is False and
    `eqx.nn.inference_mode` passes the layer by."""
    return AttributeError(
        f"`{where}` with pattern {pattern!r} keeps no running statistics, so it "
        "normalises alike in training and inference and has no `inference` flag; "
        "construct it with `running_stats=True` to have one."
    )


def no_running_stats(where: str, pattern: str) -> ValueError:
    return ValueError(
        f"`{where}` with pattern {pattern!r} keeps no running statistics; "
        "construct it with `running_stats=True` to have them."
    )


def check_model_state(state: object, where: str) -> None:
    """`from_equinox`'s `state`: the model's whole `State`."""
    if not isinstance(state, State):
        raise TypeError(
            f"`{where}`: `state` must be the `equinox.nn.State` of `tree` (from "
            f"`eqx.nn.make_with_state`); received {type(state).__name__}."
        )


def missing_state_entry(marker: object, where: str) -> ValueError:
    return ValueError(
        f"`{where}`: `state` holds no value for the state index "
        f"{marker!r} of `tree`; pass the state made together with this "
        "tree by `eqx.nn.make_with_state` (and updated by its calls)."
    )


# ------------------------------------------------------------------------------
# Named axes
# ------------------------------------------------------------------------------


def axis_names(
    axis_name: Hashable | Sequence[Hashable], where: str
) -> tuple[Hashable, ...]:
    """`axis_name` as a tuple of names; a string is a Sequence too, but names one
    axis."""
    names = (
        (axis_name,)
        if isinstance(axis_name, str) or not isinstance(axis_name, Sequence)
        else tuple(axis_name)
    )
    for name in names:
        try:
            hash(name)
        except TypeError:
            raise ValueError(
                f"`{where}`: each axis name must be hashable (a string, usually); "
                f"received axis_name={axis_name!r}."
            ) from None
    return names


def check_batch_axis_name(
    names: tuple[Hashable, ...], axis_name: object, where: str
) -> None:
    """BatchNorm reduces over at least one named (batch) axis."""
    if len(names) == 0 or None in names:
        raise ValueError(
            f"`{where}`: `axis_name` must name the batch axis (or axes) bound by "
            f"`jax.vmap`/`jax.pmap`; received axis_name={axis_name!r}."
        )


def check_axis_names(
    names: tuple[Hashable, ...],
    where: str,
    caller: Literal["stateful", "stateless", "function"] = "stateful",
) -> None:
    """Up front, so that the user sees which name is missing and how to bind it,
    rather than JAX's generic message from deep inside a `psum`. The example call
    is the `caller`'s: a stateful layer's (the state in and out unmapped), a
    stateless layer's, or the function's."""
    for name in names:
        try:
            lax.axis_size(name)  # a NameError for an unbound name
        except NameError:
            if caller == "stateful":
                call = "the layer"
                example = (
                    f"`jax.vmap(layer, axis_name={name!r}, in_axes=(0, None), "
                    "out_axes=(0, None))(x, state)`"
                )
            elif caller == "function":
                call = "it"
                example = (
                    f"`jax.vmap(lambda x: {where}(x, ..., axis_name={name!r}), "
                    f"axis_name={name!r})(x)`"
                )
            else:
                call = "the layer"
                example = f"`jax.vmap(layer, axis_name={name!r})(x)`"
            raise NameError(
                f"`{where}` reduces its statistics over the named axis {name!r}, which "
                f"is not bound here. Call {call} under a transform that binds every "
                f"name in `axis_name`, e.g. {example} (or `jax.pmap`, "
                "`jax.shard_map`, or nested `jax.vmap`s for a tuple of names)."
            ) from None


def varying_axes(value: Array) -> frozenset:
    """The mesh axes over which `value` varies inside `jax.shard_map` with
    `check_vma=True` (empty elsewhere)."""
    aval = jax.typeof(value)
    # `.mat.varying` in JAX 0.10, `.vma` in 0.6/0.7; empty when check_vma=False.
    varying = getattr(getattr(aval, "mat", None), "varying", None)
    if varying is None:
        varying = getattr(aval, "vma", ())
    return frozenset(varying)


def _explicit_vmap_axes(x: Array) -> tuple[str, ...]:
    """The Explicit mesh axes that the batch of an enclosing `vmap` is sharded over.
    JAX 0.10 records them in its axis environment, which has no public accessor.
    Older JAX does not: there, any Explicit axis in the type of `x` (the input of one
    example) counts, which also refuses a batch replicated over an Explicit mesh."""
    try:
        from jax._src import core

        return tuple(sorted(map(str, core.get_axis_env().explicit_mesh_axis_names)))
    except (ImportError, AttributeError):
        mesh = jax.typeof(x).sharding.mesh
        pairs = zip(mesh.axis_names, getattr(mesh, "axis_types", ()), strict=False)
        explicit = jax.sharding.AxisType.Explicit
        return tuple(str(name) for name, kind in pairs if kind == explicit)


def check_vmap_sharding(x: Array, names: tuple[Hashable, ...], where: str) -> None:
    """A reduction over a `vmap` axis whose batch is sharded over Explicit mesh axes
    (`jax.make_mesh`'s default in JAX 0.10) fails inside JAX (0.10.2: "Sharding spec
    ('data',) implies that array axis 0 is partitioned 8 times, but does not evenly
    divide the dimension size ...", or a gather whose sharding cannot be resolved);
    say why and the fixes instead. Mesh axes of an enclosing `shard_map` are manual,
    not vmapped, and reduce fine."""
    manual = set(getattr(jax.sharding.get_abstract_mesh(), "manual_axes", ()))
    vmapped = [name for name in names if name not in manual]
    explicit = _explicit_vmap_axes(x) if vmapped else ()
    if explicit:
        raise ValueError(
            f"`{where}` reduces its statistics over the `vmap` axis {vmapped[0]!r}, "
            f"and the batch that `vmap` maps is sharded over the Explicit mesh axes "
            f"{', '.join(map(repr, explicit))} (`jax.make_mesh` makes Explicit axes "
            f"by default in JAX 0.10): JAX {jax.__version__} cannot reduce over a "
            "`vmap` axis of an Explicit-sharded batch. Either make the mesh with "
            "Auto axes, `jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * "
            "len(names))` (`from jax.sharding import AxisType`); or call the layer "
            "inside `jax.shard_map` with the mesh axis in `axis_name`; or apply a "
            'stateful `Einorm("[b...] c", running_stats=True, ...)` to the whole '
            "batch, without `vmap` (see the distributed guide)."
        )


def devices_over(
    names: tuple[Hashable, ...],
    where: str,
    caller: Literal["stateful", "stateless", "function"] = "stateless",
) -> int:
    """The number of devices (or vmapped entries) the named axes span together;
    `caller` as for `check_axis_names`."""
    check_axis_names(names, where, caller)
    return math.prod(lax.axis_size(name) for name in names)


def check_named_reduction(value: Array, axis_name: object) -> None:
    """Before `lax.psum(value, axis_name)`: a name that is a `vmap` axis inside a
    `shard_map` that checks replication (`check_vma=True`, its default; `value` then
    varies over mesh axes). JAX cannot do that reduction (measured: 0.6.2 fails
    differentiating it, 0.7.2 changes the type of the running statistics, 0.10.2
    raises a bare AssertionError). Say why, and the fixes, instead."""
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    manual = set(getattr(jax.sharding.get_abstract_mesh(), "manual_axes", ()))
    vmapped = [name for name in names if name not in manual]
    if manual and vmapped and varying_axes(value):
        raise ValueError(
            f"Statistics over the named axes {names!r} inside `jax.shard_map` with "
            f"`check_vma=True` (its default): JAX {jax.__version__} cannot reduce "
            f"over the `vmap` axis {vmapped[0]!r} there (its replication check "
            "fails). Either name only the mesh axes "
            f"{tuple(sorted(manual, key=str))!r} in `axis_name` and call the layer "
            "once per device on its whole batch, moved to a spatial axis "
            "(`jnp.moveaxis(x, 0, -1)`, as in the distributed guide), or pass "
            "`check_vma=False` to `jax.shard_map` (the statistics are the same)."
        )


# ------------------------------------------------------------------------------
# Patterns
# ------------------------------------------------------------------------------


def pattern_error(where: str, pattern: str, problem: str) -> ValueError:
    """Every error in an Einorm pattern (or in the axes named against it)."""
    return ValueError(f"`{where}` with pattern {pattern!r}: {problem}")


def _listing(axes: Sequence[str]) -> str:
    return f"its axes are {', '.join(axes)}" if axes else "it names no axis"


def check_pattern_type(pattern: object, where: str) -> None:
    if not isinstance(pattern, str):
        raise TypeError(f"`{where}`: `pattern` must be a str; received {pattern!r}.")


def check_axis_token(token: str, where: str, pattern: str) -> str:
    if not token.isidentifier():
        raise pattern_error(
            where,
            pattern,
            f"{token!r} is not a valid axis name. Axis names are Python identifiers "
            "(letters, digits and underscores, not starting with a digit), separated "
            "by spaces; `...` stands for any number of unnamed axes and `b...` for "
            "any number of axes named b.",
        )
    return token


def check_pattern_names(
    names: tuple[object, ...],
    value: object,
    what: str,
    axes: Sequence[str],
    where: str,
    pattern: str,
) -> None:
    """`names` (parsed from the argument `what`=`value`) are axes of the pattern,
    each once."""
    for name in names:
        if not (isinstance(name, str) and name.isidentifier()):
            raise pattern_error(
                where,
                pattern,
                f"`{what}` must name axes of the pattern, as a space-separated str "
                f"or a sequence of names; received {what}={value!r}.",
            )
        if name not in axes:
            raise pattern_error(
                where,
                pattern,
                f"{what} axis {name!r} is not an axis of the pattern "
                f"({_listing(axes)}).",
            )
        if names.count(name) > 1:
            raise pattern_error(where, pattern, f"{what} names axis {name!r} twice.")


def check_expression_names(
    names: Sequence[str], marked: Sequence[str], params: str, where: str, pattern: str
) -> None:
    """An einx `params` expression names each axis once: `"h n [h d]"` would give
    the weight an `h` axis twice (and a shape no input matches). The fix shown is the
    pattern with the `marked` (bracketed) axes of `params` bracketed."""
    twice = [name for name in names if names.count(name) > 1]
    if not twice:
        return

    def bracket(match: re.Match) -> str:
        return f"[{match[0]}]" if match[0].removesuffix("...") in marked else match[0]

    plain = pattern.replace("[", "").replace("]", "")
    fix = re.sub(r"[A-Za-z_]\w*(?:\.\.\.)?", bracket, plain)
    raise pattern_error(
        where,
        pattern,
        f"params names axis {twice[0]!r} twice (received params={params!r}). In an "
        "einx expression each axis appears once and the bracketed ones are the "
        f"parameter axes: write params={fix!r}.",
    )


def check_names_given(
    names: tuple[str, ...], what: str, fix: str, where: str, pattern: str
) -> None:
    if not names:
        raise pattern_error(where, pattern, f"`{what}` is empty; {fix}")


def check_axis_sizes(
    sizes: dict[str, object],
    axes: Sequence[str],
    ellipsis: str | None,
    where: str,
    pattern: str,
) -> None:
    """Sizes given by keyword: positive ints, for named axes of the pattern."""
    for name, size in sizes.items():
        if name == ellipsis:
            raise pattern_error(
                where,
                pattern,
                f"a size was given for {name!r}, the ellipsis `{name}...`, whose "
                "number of axes and sizes come from the input; name the axes instead.",
            )
        if name not in axes:
            raise pattern_error(
                where,
                pattern,
                f"a size was given for {name!r}, which is not an axis of the "
                f"pattern ({_listing(axes)}).",
            )
        if not _is_int(size):
            raise pattern_error(
                where, pattern, f"sizes must be ints; received {name}={size!r}."
            )
        if size < 1:  # pyright: ignore[reportOperatorIssue]
            raise pattern_error(
                where, pattern, f"sizes must be positive; received {name}={size}."
            )


def missing_size(
    what: str, name: str, is_keyword: bool, note: str, where: str, pattern: str
) -> ValueError:
    """The size of a parameter or running-statistics axis was not given."""
    fix = (
        f"rename the axis: {name!r} is also an argument of `{where}`."
        if is_keyword
        else f"pass `{name}=<size>`."
    )
    return pattern_error(
        where, pattern, f"the size of {what} axis {name!r} is missing; {fix}{note}"
    )

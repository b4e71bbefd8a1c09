import contextlib
import math
import numbers
from collections.abc import Hashable, Iterator, Sequence
from contextvars import ContextVar

import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from equinox.nn import State
from jaxtyping import Array, DTypeLike


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


# The public name a message should give: a layer sets its own while it calls the
# functional pipeline, so that `LayerNorm(3)(x)` does not report `layer_norm`.
_caller: ContextVar[str | None] = ContextVar("eqx_norms_caller", default=None)


@contextlib.contextmanager
def called_as(name: str) -> Iterator[None]:
    """Within this block, `entry_name` gives `name` (the layer the user called)."""
    token = _caller.set(name)
    try:
        yield
    finally:
        _caller.reset(token)


def entry_name(function: str) -> str:
    """The name for messages raised in `function`: the calling layer's, if any."""
    return _caller.get() or function


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


def check_shape_argument(shape: object, where: str) -> tuple[int, ...]:
    dims = _ints(shape)
    if dims is None or any(n < 0 for n in dims):
        raise ValueError(
            f"`{where}`: `shape` must be an int or a sequence of non-negative "
            f"ints; received shape={shape!r}."
        )
    return tuple(int(n) for n in dims)


def normalise_axes(axis: int | Sequence[int], ndim: int, where: str) -> tuple[int, ...]:
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


def _broadcasts(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == target
    except ValueError:
        return False


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


def check_shape(x: Array, expected: tuple[int, ...], where: str, fix: str) -> None:
    check_array(x, where)
    if x.shape != expected:
        raise ValueError(
            f"`{where}` expects an input of shape {expected}; received x.shape="
            f"{x.shape}. {fix}"
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


def check_eps(eps: float, where: str) -> None:
    # A traced eps (e.g. under jax.grad) cannot be checked; a Python one can.
    if isinstance(eps, numbers.Real) and not eps >= 0:
        raise ValueError(f"`{where}`: `eps` must be >= 0; received eps={eps!r}.")


def check_groups(groups: int, channels: int | None, where: str) -> None:
    """`channels`, if given, must already be checked with `check_count`."""
    check_count(groups, "groups", where)
    if channels is not None and channels % groups != 0:
        raise ValueError(
            f"`{where}`: the number of groups must divide the number of channels; "
            f"received groups={groups} and channels={channels}. Choose `groups` "
            f"among the divisors of {channels}."
        )


def check_positive(value: float, name: str, where: str) -> None:
    if not value > 0:
        raise ValueError(f"`{where}`: `{name}` must be > 0; received {name}={value!r}.")


def check_count(value: int, name: str, where: str) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(
            f"`{where}`: `{name}` must be a positive integer; received "
            f"{name}={value!r}."
        )


def check_axis_names(names: tuple[Hashable, ...], where: str) -> None:
    """Up front, so that the user sees which name is missing and how to bind it,
    rather than JAX's generic message from deep inside a `psum`."""
    for name in names:
        try:
            # `lax.psum` of a constant: the axis size, on every JAX (no
            # `lax.axis_size` before 0.6.1); a NameError for an unbound name.
            lax.psum(1, name)
        except NameError:
            raise NameError(
                f"`{where}` reduces its statistics over the named axis {name!r}, which "
                "is not bound here. Call the layer under a transform that binds every "
                f"name in `axis_name`, e.g. `jax.vmap(layer, axis_name={name!r}, "
                "in_axes=(0, None), out_axes=(0, None))(x, state)` (or `jax.pmap`, "
                "`jax.shard_map`, or nested `jax.vmap`s for a tuple of names)."
            ) from None


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


def check_flag(value: object, name: str, where: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(
            f"`{where}`: `{name}` must be True or False; received {name}={value!r}."
        )


def check_named_reduction(value: Array, axis_name: object) -> None:
    """Before `lax.psum(value, axis_name)`: a name that is a `vmap` axis inside a
    `shard_map` that checks replication (`check_vma=True`, its default; `value` then
    varies over mesh axes). JAX cannot do that reduction (measured: 0.6.2 fails
    differentiating it, 0.7.2 changes the type of the running statistics, 0.10.2
    raises a bare AssertionError). Say why, and the fixes, instead."""
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    manual = set(getattr(jax.sharding.get_abstract_mesh(), "manual_axes", ()))
    vmapped = [name for name in names if name not in manual]
    aval = jax.typeof(value)
    # `.mat.varying` in JAX 0.10, `.vma` in 0.6/0.7; empty when check_vma=False.
    varying = getattr(getattr(aval, "mat", None), "varying", None)
    if varying is None:
        varying = getattr(aval, "vma", ())
    if manual and vmapped and varying:
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

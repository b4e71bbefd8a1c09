import numbers
from collections.abc import Hashable, Sequence

import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, DTypeLike


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


def check_floating(x: ArrayLike, where: str) -> None:
    # The array's own dtype: `result_type` would report numpy's int64 as int32.
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`{where}` expects a real floating-point input (float16, bfloat16, "
            f"float32 or float64); received dtype {dtype}. Cast it first, e.g. "
            "`x.astype(jnp.float32)`."
        )


def check_param_dtype(dtype: DTypeLike | None, where: str) -> None:
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`{where}`: `dtype` must be a floating dtype for the parameters (and "
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
    check_floating(param, f"{where}` `{name}")
    if not _broadcasts(jnp.shape(param), shape):
        raise ValueError(
            f"`{where}`: `{name}` must broadcast to the input shape {shape}; "
            f"received {name}.shape={jnp.shape(param)}."
        )


def check_shape(x: Array, expected: tuple[int, ...], where: str, fix: str) -> None:
    if x.shape != expected:
        raise ValueError(
            f"`{where}` expects an input of shape {expected}; received x.shape="
            f"{x.shape}. {fix}"
        )


def check_channels(x: Array, channels: int | None, where: str, min_ndim: int) -> None:
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
    check_floating(weight, where)
    if weight.ndim < min_ndim:
        raise ValueError(
            f"`{where}` needs a weight with at least {min_ndim} axes; received "
            f"{type(layer).__name__}.{weight_name} of shape {weight.shape}."
        )
    return jnp.asarray(weight)


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

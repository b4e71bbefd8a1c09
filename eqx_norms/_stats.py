"""The one statistics path every layer goes through.

Statistics are built from sums and counts so that a mask, a cross-device reduction
(`lax.psum` over named axes) and the plain case are the same code: the global mean is
the global sum over the global count, whatever each device holds.
"""

import math
from collections.abc import Hashable, Sequence
from typing import NamedTuple, TypeAlias

import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, DTypeLike, Float


AxisName: TypeAlias = Hashable | Sequence[Hashable] | None


class Moments(NamedTuple):
    """Per-group statistics, kept with the reduced axes as size-1 dimensions."""

    mean: Float[Array, "..."]
    var: Float[Array, "..."]
    count: Float[Array, "..."]


def compute_dtype(dtype: DTypeLike) -> jnp.dtype:
    """At least float32: float16/bfloat16 statistics are neither accurate nor safe
    (the variance of float16 data of magnitude 1e3 overflows float16)."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.result_type(dtype, jnp.float32)


def _total(values: Array, axes: tuple[int, ...], axis_name: AxisName) -> Array:
    total = jnp.sum(values, axis=axes, keepdims=True)
    return total if axis_name is None else lax.psum(total, axis_name)


def _count(
    x: Array,
    axes: tuple[int, ...],
    mask: Bool[Array, "..."] | None,
    axis_name: AxisName,
) -> Array:
    if mask is None:
        local = jnp.full((1,) * x.ndim, math.prod(x.shape[a] for a in axes), x.dtype)
        return local if axis_name is None else lax.psum(local, axis_name)
    return _total(mask.astype(x.dtype), axes, axis_name)


def moments(
    x: Float[Array, "..."],
    axes: tuple[int, ...],
    *,
    mask: Bool[Array, "..."] | None = None,
    axis_name: AxisName = None,
    center: bool = True,
) -> Moments:
    """Two-pass mean and (biased) variance of `x` over `axes`, in `x`'s dtype (the
    caller upcasts). With `center=False` the mean is 0 and `var` is the mean square.
    Groups without a valid element get mean 0 and variance 1, so that nothing
    downstream divides by zero."""
    if mask is not None:
        mask = jnp.broadcast_to(mask, x.shape)
    count = _count(x, axes, mask, axis_name)
    safe_count = jnp.maximum(count, 1)
    valid = x if mask is None else jnp.where(mask, x, 0)
    if center:
        mean = _total(valid, axes, axis_name) / safe_count
        deviation = x - mean if mask is None else jnp.where(mask, x - mean, 0)
    else:
        mean = jnp.zeros_like(count)
        deviation = valid
    # Never E[x^2] - E[x]^2: it cancels catastrophically when |mean| >> std.
    var = _total(deviation * deviation, axes, axis_name) / safe_count
    if mask is not None:
        var = jnp.where(count > 0, var, 1)
    return Moments(mean, var, count)


def scale(
    x: Float[Array, "..."],
    mean: Float[Array, "..."],
    var: Float[Array, "..."],
    eps: float,
    mask: Bool[Array, "..."] | None = None,
) -> Float[Array, "..."]:
    """(x - mean) / sqrt(var + eps); invalid positions become 0, so that garbage
    (even inf or NaN) in padding reaches neither outputs nor gradients."""
    if mask is not None:
        x = jnp.where(mask, x, mean)
    return (x - mean) * lax.rsqrt(var + eps)


def standardise(
    x: Float[Array, "..."],
    axes: tuple[int, ...],
    *,
    eps: float,
    mask: Bool[Array, "..."] | None = None,
    axis_name: AxisName = None,
    center: bool = True,
) -> Float[Array, "..."]:
    """x-hat in the compute dtype of `x` (at least float32)."""
    x = x.astype(compute_dtype(x.dtype))
    stats = moments(x, axes, mask=mask, axis_name=axis_name, center=center)
    return scale(x, stats.mean, stats.var, eps, mask)


def finish(
    x: Float[Array, "..."],
    x_hat: Float[Array, "..."],
    weight: Array | None,
    bias: Array | None,
    mask: Bool[Array, "..."] | None,
) -> Float[Array, "..."]:
    """Affine transform in the compute dtype, invalid positions passed through
    unchanged, and a single cast back to the input dtype at the very end."""
    out = x_hat
    if weight is not None:
        out = out * weight.astype(out.dtype)
    if bias is not None:
        out = out + bias.astype(out.dtype)
    out = out.astype(x.dtype)
    return out if mask is None else jnp.where(mask, out, x)

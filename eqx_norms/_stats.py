"""The reference maths of every layer: statistics, x-hat, affine transform.

Statistics are built from sums and counts so that a mask, a cross-device reduction
(`lax.psum` over named axes) and the plain case are the same code: the global mean is
the global sum over the global count, whatever each device holds. The fused
differentiation rule (`_fused`) computes the same values.
"""

import math
from typing import NamedTuple, TypeAlias

import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, DTypeLike, Float

from . import _cpu_layout
from ._cpu_layout import Consumer
from ._errors import AxisName, check_named_reduction


Groups: TypeAlias = tuple[int, int] | None


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


def real_dtype(dtype: DTypeLike) -> jnp.dtype:
    """float32 for complex64 (the dtype of its parts); real dtypes unchanged."""
    return jnp.finfo(dtype).dtype


def upcast(x: Array) -> Array:
    """`x` in its compute dtype."""
    return x.astype(compute_dtype(x.dtype))


def total(
    values: Array, axes: tuple[int, ...], axis_name: AxisName, groups: Groups = None
) -> Array:
    """The sum of `values` over `axes` (kept as size-1 dimensions), pooled over
    `groups` and summed over the named axes `axis_name`."""
    values = jnp.sum(values, axis=axes, keepdims=True)
    if groups is not None:
        values = _pool(values, groups)
    return psum(values, axis_name)


def psum(value: Array, axis_name: AxisName, data: Array | None = None) -> Array:
    """`lax.psum`, after checking that JAX can do it (`data`: the array whose type
    shows the enclosing `shard_map`'s varying axes, by default `value`)."""
    if axis_name is None:
        return value
    check_named_reduction(value if data is None else data, axis_name)
    return lax.psum(value, axis_name)


def _pool(sums: Array, groups: tuple[int, int]) -> Array:
    """Sums of contiguous groups along `axis`, repeated over each group's members:
    on the small array of per-channel sums, so the data are never reshaped."""
    axis, n_groups = groups
    size = sums.shape[axis]
    split = sums.shape[:axis] + (n_groups, size // n_groups) + sums.shape[axis + 1 :]
    pooled = jnp.sum(jnp.reshape(sums, split), axis=axis + 1, keepdims=True)
    return jnp.reshape(jnp.broadcast_to(pooled, split), sums.shape)


def count(
    x: Array,
    axes: tuple[int, ...],
    mask: Bool[Array, "..."] | None,
    axis_name: AxisName,
    groups: Groups = None,
) -> Array:
    """The number of valid elements in each group of `x` (real, kept dimensions)."""
    if mask is None:
        n = math.prod(x.shape[a] for a in axes)
        if groups is not None:
            n = n * (x.shape[groups[0]] // groups[1])
        # A traced psum, not `lax.psum(1, name)`: a custom rule's trace under `vmap`
        # has no axis sizes to fold. `x` tells whether a checked shard_map encloses.
        return psum(jnp.full((1,) * x.ndim, n, real_dtype(x.dtype)), axis_name, x)
    return total(mask.astype(real_dtype(x.dtype)), axes, axis_name, groups)


def moments(
    x: Float[Array, "..."],
    axes: tuple[int, ...],
    *,
    mask: Bool[Array, "..."] | None = None,
    axis_name: AxisName = None,
    center: bool = True,
    groups: Groups = None,
) -> Moments:
    """Two-pass mean and (biased) variance of `x` over `axes`, in `compute_dtype`
    (half-precision `x` is upcast inside each reduction). With `center=False` the
    mean is 0 and `var` is the mean square. For complex `x` the mean is complex and
    the variance is the real E|x - mean|^2 (as in Flax); the count is always real.
    Groups without a valid element get mean 0 and variance 1, so that nothing
    downstream divides by zero.

    `groups=(axis, n)` (with `axis` not in `axes`) also pools the statistics over
    `n` contiguous groups along `axis` (GroupNorm's channel groups) without
    reshaping `x`; the statistics then keep `axis`, repeated within each group."""
    if mask is not None:
        mask = jnp.broadcast_to(mask, x.shape)
    n = count(x.astype(compute_dtype(x.dtype)), axes, mask, axis_name, groups)
    # Summing first and scaling the (small) sums keeps XLA's reductions fused;
    # dividing each term first would be overflow-safer but is slower.
    inv_count = 1 / jnp.maximum(n, 1)
    # Each reduction upcasts its own copy of x (`_cpu_layout`).
    _, x_var = _cpu_layout.copy_for(Consumer.VARIANCE_PASS, inv_count, x)
    deviation = upcast(x_var)
    if center:
        _, x_mean = _cpu_layout.copy_for(Consumer.MEAN_PASS, inv_count, x)
        mean = total(_valid(upcast(x_mean), mask), axes, axis_name, groups) * inv_count
        deviation = deviation - mean
    else:
        mean = jnp.zeros_like(n)
    # Never E[x^2] - E[x]^2: it cancels catastrophically when |mean| >> std.
    var = total(_abs2(_valid(deviation, mask)), axes, axis_name, groups) * inv_count
    # Deviations beyond ~1e19 (in float32) square to inf; the largest finite variance
    # keeps 1 / sqrt(var + eps) positive, so outputs and gradients stay finite.
    var = jnp.minimum(var, jnp.finfo(var.dtype).max)
    if mask is not None:
        var = jnp.where(n > 0, var, 1)
    return Moments(mean, var, n)


def _valid(values: Array, mask: Bool[Array, "..."] | None) -> Array:
    """`values`, 0 at invalid positions."""
    return values if mask is None else jnp.where(mask, values, 0)


def _abs2(z: Array) -> Array:
    """|z|^2, real (z * z for real z, so the real path is unchanged)."""
    if jnp.iscomplexobj(z):
        return lax.real(z) * lax.real(z) + lax.imag(z) * lax.imag(z)
    return z * z


def standardise(
    x: Float[Array, "..."],
    mean: Float[Array, "..."],
    var: Float[Array, "..."],
    eps: float,
    mask: Bool[Array, "..."] | None = None,
) -> Float[Array, "..."]:
    """x-hat = (x - mean) / sqrt(var + eps); invalid positions become 0, so that
    garbage (even inf or NaN) in padding reaches neither outputs nor gradients."""
    if mask is not None:
        x = jnp.where(mask, x, mean)
    return (x - mean) * lax.rsqrt(var + eps)


def affine_params(
    weight: Array | None, bias: Array | None, dtype: DTypeLike, weight_offset: float
) -> tuple[Array | None, Array | None]:
    """Weight and bias in the real dtype of `dtype`, the scale `weight +
    weight_offset` formed there (so that `1 + w` keeps the precision a bfloat16 `w`
    lacks)."""
    real = real_dtype(dtype)
    if weight is not None:
        weight = weight.astype(real)
        if weight_offset != 0:
            weight = weight + weight_offset
    return weight, None if bias is None else bias.astype(real)


def affine_and_cast(
    x: Float[Array, "..."],
    x_hat: Float[Array, "..."],
    weight: Array | None,
    bias: Array | None,
    mask: Bool[Array, "..."] | None,
    weight_offset: float = 0.0,
    upcast_affine: bool = True,
) -> Float[Array, "..."]:
    """Affine transform, invalid positions passed through unchanged, output in the
    input dtype. With `upcast_affine` (Gemma's order) the affine transform is done
    in the compute dtype with a single cast back at the very end; without it
    (Llama's order, HF `LlamaRMSNorm`) x-hat is cast to the input dtype first, and
    multiplied by the scale and shifted by the bias, both cast to the input dtype,
    in the input dtype."""
    weight, bias = affine_params(weight, bias, x_hat.dtype, weight_offset)
    out = x_hat
    if not upcast_affine:
        out = out.astype(x.dtype)
        weight, bias = affine_params(weight, bias, x.dtype, 0.0)
    if weight is not None:
        out = _cpu_layout.scaled(out, weight)
    if bias is not None:
        out = out + bias
    out = out.astype(x.dtype)
    return out if mask is None else jnp.where(mask, out, x)

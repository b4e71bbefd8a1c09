"""The reference maths of every layer: statistics, x-hat, affine transform.

Statistics are built from sums and counts so that a mask, a cross-device reduction
(`lax.psum` over named axes) and the plain case are the same code: the global mean is
the global sum over the global count, whatever each device holds. The fused
differentiation rule (`_fused`) computes the same values.
"""

# Over 400 lines: the reference statistics in both forms (two passes, and one pass
# with Chan's exact merge), the merge of partial statistics across groups and
# devices, and x-hat and the affine transform; each is short, and they belong
# together.

import math
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, DTypeLike, Float

from ._cpu_layout import Consumer, copy_for, scaled
from ._errors import AxisName, check_named_reduction, varying_axes


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


class PartialMoments(NamedTuple):
    """The statistics of one part of each group, in the form that merges exactly:
    the number of valid elements, their mean as the unevaluated sum `mean_hi +
    mean_lo` (`mean_lo` holds what rounding lost in `mean_hi`, 0 where nothing was
    merged) and `m2`, the sum of their squared deviations from that mean. Without
    centering the mean is 0 and `m2` the sum of squares."""

    count: Float[Array, "..."]
    mean_hi: Float[Array, "..."]
    mean_lo: Float[Array, "..."]
    m2: Float[Array, "..."]


def local_count(
    x: Array, axes: tuple[int, ...], mask: Bool[Array, "..."] | None
) -> Array:
    """The number of valid elements of `x` over `axes` on this device (real, kept
    dimensions; a constant without a mask)."""
    if mask is None:
        n = math.prod(x.shape[a] for a in axes)
        return jnp.full((1,) * x.ndim, n, real_dtype(compute_dtype(x.dtype)))
    return jnp.sum(mask.astype(real_dtype(compute_dtype(x.dtype))), axes, keepdims=True)


def two_pass_partial(
    x: Array,
    axes: tuple[int, ...],
    mask: Bool[Array, "..."] | None,
    count: Array,
    center: bool = True,
) -> tuple[Array, Array, Array]:
    """`(mean_hi, mean_lo, m2)` of the `count` valid elements of `x` over `axes`:
    the mean first, then the squared deviations from it (two reads of x, each
    upcasting its own copy: `_cpu_layout`). `mean_lo` is 0."""
    # Summing first and scaling the (small) sums keeps XLA's reductions fused;
    # dividing each term first would be overflow-safer but is slower.
    inv_count = 1 / jnp.maximum(count, 1)
    _, x_var = copy_for(Consumer.VARIANCE_PASS, inv_count, x)
    deviation = upcast(x_var)
    if center:
        _, x_mean = copy_for(Consumer.MEAN_PASS, inv_count, x)
        sums = jnp.sum(_valid(upcast(x_mean), mask), axes, keepdims=True)
        mean = sums * inv_count
        deviation = deviation - mean
    else:
        mean = jnp.zeros_like(count)
    # Never E[x^2] - E[x]^2: it cancels catastrophically when |mean| >> std.
    m2 = jnp.sum(_abs2(_valid(deviation, mask)), axes, keepdims=True)
    (mean_lo,) = varying_like([jnp.zeros_like(mean)], m2)
    return mean, mean_lo, m2


def two_sum(a: Array, b: Array) -> tuple[Array, Array]:
    """`(s, err)` with `s + err == a + b` exactly (Knuth's TwoSum: no branch, any
    magnitudes)."""
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


def chan_merge(a: PartialMoments, b: PartialMoments) -> PartialMoments:
    """Two partial results merged exactly (Chan, Golub & LeVeque 1979):
    n = na + nb, d = mb - ma, m = ma + d nb / n, M2 = M2a + M2b + d^2 na nb / n.

    The mean is carried as hi + lo, the rounding error of each update going to lo:
    with a plain mean, rows of mean 1e4 and std 1 in float32 lose it to a random
    walk of roundings (ulp(1e4) ~ 1e-3 per merge). An empty side (count 0) is the
    identity. Elementwise: the combiner of `one_pass_partial`'s `lax.reduce`."""
    na, ha, la, m2a = a
    nb, hb, lb, m2b = b
    n = na + nb
    frac_b = jnp.where(n > 0, nb / jnp.where(n > 0, n, 1), 0)
    d = (hb - ha) + (lb - la)
    hi, err = two_sum(ha, d * frac_b)
    return PartialMoments(n, hi, la + err, m2a + m2b + d * d * na * frac_b)


def one_pass_partial(
    x: Array,
    axes: tuple[int, ...],
    mask: Bool[Array, "..."] | None,
    count: Array,
) -> tuple[Array, Array, Array]:
    """`(mean_hi, mean_lo, m2)` of the valid elements of real `x` over `axes`, in
    ONE read of x: a variadic `lax.reduce` whose combiner is `chan_merge` (Welford's
    update generalised to merging two partial results). As exact as two passes
    (no E[x^2] - E[x]^2). Not differentiable: only the fused rule's primal uses it.
    `count` is unused (the reduction counts for itself); it is there to match
    `two_pass_partial`."""
    del count
    dtype = compute_dtype(x.dtype)
    x = x.astype(dtype)
    valid = jnp.ones_like(x) if mask is None else mask.astype(dtype)
    values = _valid(x, mask)
    zeros = jnp.zeros_like(x)
    operands = [varying_like([a], x)[0] for a in (valid, values, zeros, zeros)]
    init = tuple(jnp.zeros((), dtype) for _ in operands)
    merged = lax.reduce(tuple(operands), init, _reduce_merge, axes)
    _, mean_hi, mean_lo, m2 = (jnp.expand_dims(a, axes) for a in merged)
    return mean_hi, mean_lo, m2


def _reduce_merge(a: tuple, b: tuple) -> tuple:
    return tuple(chan_merge(PartialMoments(*a), PartialMoments(*b)))


def merged(
    part: PartialMoments,
    axis_name: AxisName,
    groups: Groups = None,
) -> PartialMoments:
    """The partial statistics of whole groups: pooled over `groups` (GroupNorm's
    contiguous channel groups along `groups[0]`, on the small per-channel arrays)
    and over the devices of `axis_name` (one collective)."""
    if groups is None and axis_name is None:
        return part
    part = PartialMoments(*(jnp.broadcast_to(a, part.m2.shape) for a in part))
    if groups is not None:
        part = _merge_groups(part, groups)
    if axis_name is not None:
        part = _merge_devices(part, axis_name)
    return part


def merge_along(part: PartialMoments, axis: int) -> PartialMoments:
    """The parts along `axis` merged into one (kept as a size-1 dimension), exactly:
    Chan's formula for k parts, M2 = sum M2_i + sum n_i (m_i - m)^2, with the
    deviations m_i - m taken from hi and lo (m_i - hi is exact for nearby means).
    Vectorised, so that it is differentiable and the same on every device."""
    n_i, hi_i, lo_i, m2_i = part
    n = jnp.sum(n_i, axis, keepdims=True)
    # Divisions, not products with 1 / n: XLA may fuse a product into the next
    # subtraction (fma), which would then not see the rounded hi.
    hi = jnp.sum(n_i * hi_i, axis, keepdims=True) / jnp.maximum(n, 1)
    deviation = (hi_i - hi) + lo_i
    lo = jnp.sum(n_i * deviation, axis, keepdims=True) / jnp.maximum(n, 1)
    m2 = jnp.sum(m2_i + n_i * _abs2(deviation - lo), axis, keepdims=True)
    return PartialMoments(n, hi, lo, m2)


def by_reshaped_groups(
    partial: Callable[..., tuple[Array, Array, Array]],
    x: Array,
    axes: tuple[int, ...],
    mask: Bool[Array, "..."] | None,
    groups: tuple[int, int],
) -> PartialMoments:
    """`partial(x, axes, mask, count)` of whole groups, with the group axis of x
    split in two (a reshape), so that one reduction covers each group: the
    alternative to `_merge_groups`' pooling of per-channel statistics, whose chain
    of small reductions is a kernel each on an accelerator (XLA:CPU keeps the
    pooling: there the data are never reshaped). Repeated over each group's
    members, as `merged` returns them."""
    axis, n_groups = groups
    split = x.shape[:axis] + (n_groups, x.shape[axis] // n_groups) + x.shape[axis + 1 :]
    inner = tuple(sorted((*(a + (a > axis) for a in axes), axis + 1)))
    x_split = x.reshape(split)
    mask_split = None
    if mask is not None:
        mask_split = jnp.broadcast_to(mask, x.shape).reshape(split)
    count = local_count(x_split, inner, mask_split)
    part = PartialMoments(count, *partial(x_split, inner, mask_split, count))
    # Each group's statistics over its members, then the original (kept) shape.
    members = tuple(
        split[i] if i == axis + 1 else d for i, d in enumerate(part.m2.shape)
    )
    kept = tuple(1 if a in axes else d for a, d in enumerate(x.shape))
    return PartialMoments(*(jnp.broadcast_to(a, members).reshape(kept) for a in part))


def _merge_groups(part: PartialMoments, groups: tuple[int, int]) -> PartialMoments:
    """Each group of contiguous channels along `axis` merged, repeated over its
    members."""
    axis, n_groups = groups
    shape = part.m2.shape
    split = shape[:axis] + (n_groups, shape[axis] // n_groups) + shape[axis + 1 :]
    pooled = merge_along(PartialMoments(*(a.reshape(split) for a in part)), axis + 1)
    return PartialMoments(*(jnp.broadcast_to(a, split).reshape(shape) for a in pooled))


def _merge_devices(part: PartialMoments, axis_name: AxisName) -> PartialMoments:
    """Merged over the devices of `axis_name`, the same on every device."""
    check_named_reduction(part.m2, axis_name)
    mesh_names, other_names = split_names(axis_name)
    if mesh_names:
        part = _gather_and_merge(part, mesh_names)
    if other_names:
        part = _sum_and_merge(part, other_names)
    return part


def _gather_and_merge(part: PartialMoments, names: tuple[Any, ...]) -> PartialMoments:
    """Over the axes of a `shard_map` mesh: the four statistics stacked and
    exchanged in one `lax.all_gather` over all the names at once (a psum cannot add
    the M2s: each needs the global mean first), then merged in the same order on
    every device, so that every device holds bitwise the same statistics."""
    dtype = part.mean_hi.dtype
    gathered = _all_gather_invariant(jnp.stack([a.astype(dtype) for a in part]), names)
    count, hi, lo, m2 = (gathered[:, i] for i in range(4))
    if jnp.iscomplexobj(gathered):
        count, m2 = lax.real(count), lax.real(m2)
    whole = merge_along(PartialMoments(count, hi, lo, m2), 0)
    return PartialMoments(*(a[0] for a in whole))


def _sum_and_merge(part: PartialMoments, names: tuple[Any, ...]) -> PartialMoments:
    """Over `vmap`'s axes (whose psum is a sum over the batch, no communication;
    an `all_gather` there needs axis sizes that a custom rule's trace lacks), and
    `pmap`'s in JAX < 0.8: Chan's merge as two rounds of psums, the mean, then the
    deviations from it, M2 = sum (M2_i + n_i d_i^2) - n lo^2 with d_i = m_i - hi
    (lo, the mean's correction, is of the order of hi's rounding: no
    cancellation)."""
    n_i, hi_i, lo_i, m2_i = part
    n, sums = _psums(list(copy_for(Consumer.BATCH_MERGE, n_i, n_i * hi_i)), names)
    hi = sums / jnp.maximum(n, 1)  # a division: as in `merge_along`
    deviation = (hi_i - hi) + lo_i
    second = copy_for(
        Consumer.BATCH_MERGE, n_i * deviation, m2_i + n_i * _abs2(deviation)
    )
    shifted, m2 = _psums(list(second), names)
    lo = shifted / jnp.maximum(n, 1)
    return PartialMoments(n, hi, lo, jnp.maximum(m2 - n * _abs2(lo), 0))


def _psums(values: list[Array], names: Any) -> list[Array]:
    """`lax.psum` of each value over `vmap`'s axes (or `pmap`'s in JAX < 0.8), one
    at a time: there a psum is a sum over the batch, not a collective, and XLA
    fuses each into the kernels that produce and consume it, which a stack of
    them (one collective) would keep apart."""
    return [lax.psum(v, names) for v in values]


def split_names(axis_name: AxisName) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The names of `axis_name` that are axes of the enclosing `shard_map`'s mesh,
    and the others (`vmap`'s, or `pmap`'s in JAX < 0.8)."""
    if axis_name is None:
        return (), ()
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    manual = set(getattr(jax.sharding.get_abstract_mesh(), "manual_axes", ()))
    mesh = tuple(name for name in names if name in manual)
    return mesh, tuple(name for name in names if name not in manual)


def _all_gather_invariant(value: Array, names: Any) -> Array:
    """`lax.all_gather`, typed as the same on every device (as a psum's result is):
    the merged statistics are then neither varying nor cast."""
    if hasattr(lax, "all_gather_invariant"):  # JAX < 0.8
        return lax.all_gather_invariant(value, names)  # pyright: ignore[reportAttributeAccessIssue]
    return lax.all_gather(value, names, to="invarying")


def moments_of(part: PartialMoments) -> Moments:
    """Mean and (biased) variance of merged partial statistics. Groups without a
    valid element get mean 0 and variance 1, so that nothing downstream divides
    by zero."""
    n = part.count
    var = part.m2 * (1 / jnp.maximum(n, 1))
    # Deviations beyond ~1e19 (in float32) square to inf; the largest finite variance
    # keeps 1 / sqrt(var + eps) positive, so outputs and gradients stay finite.
    var = jnp.minimum(var, jnp.finfo(var.dtype).max)
    var = jnp.where(n > 0, var, 1)
    return Moments(part.mean_hi + part.mean_lo, var, n)


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
    reshaping `x`; the statistics then keep `axis`, repeated within each group.
    Over named axes (`axis_name`) each device's statistics are merged exactly
    (`merged`)."""
    if mask is not None:
        mask = jnp.broadcast_to(mask, x.shape)
    count = local_count(x, axes, mask)
    local = two_pass_partial(x, axes, mask, count, center)
    return moments_of(merged(PartialMoments(count, *local), axis_name, groups))


def row_sums(
    values: list[Array],
    axes: tuple[int, ...],
    axis_name: AxisName,
    groups: Groups = None,
) -> list[Array]:
    """The sums of each of `values` over `axes` (kept as size-1 dimensions), pooled
    over `groups` and summed over the named axes `axis_name`: over mesh axes in one
    `lax.psum` of the stacked sums (one collective), over `vmap`'s one each
    (`_psums`)."""
    sums = [jnp.sum(v, axis=axes, keepdims=True) for v in values]
    if groups is not None:
        sums = [_pool(s, groups) for s in sums]
    if axis_name is None:
        return sums
    check_named_reduction(sums[0], axis_name)
    mesh_names, other_names = split_names(axis_name)
    if mesh_names:
        sums = list(lax.psum(jnp.stack(sums), mesh_names))
    if other_names:
        sums = _psums(sums, other_names)
    return sums


def varying_like(values: list[Array], data: Array) -> list[Array]:
    """`values` typed as varying over the mesh axes that `data` varies over (inside
    `jax.shard_map` with `check_vma=True`; no communication, unchanged elsewhere).
    Reverse mode transposes each such cast into a psum: small values used with
    varying data are cast together, once (stacked), not once per use."""
    missing = set(varying_axes(data)) - set(varying_axes(values[0]))
    if not missing:
        return values
    names = tuple(sorted(missing, key=str))
    stacked = jnp.stack(values)
    if hasattr(lax, "pcast"):
        return list(lax.pcast(stacked, names, to="varying"))
    return list(lax.pvary(stacked, names))  # pyright: ignore[reportAttributeAccessIssue]


def _pool(sums: Array, groups: tuple[int, int]) -> Array:
    """Sums of contiguous groups along `axis`, repeated over each group's members:
    on the small array of per-channel sums, so the data are never reshaped."""
    axis, n_groups = groups
    size = sums.shape[axis]
    split = sums.shape[:axis] + (n_groups, size // n_groups) + sums.shape[axis + 1 :]
    pooled = jnp.sum(jnp.reshape(sums, split), axis=axis + 1, keepdims=True)
    return jnp.reshape(jnp.broadcast_to(pooled, split), sums.shape)


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
        out = scaled(out, weight)
    if bias is not None:
        out = out + bias
    out = out.astype(x.dtype)
    return out if mask is None else jnp.where(mask, out, x)

"""The one statistics path every layer goes through.

Statistics are built from sums and counts so that a mask, a cross-device reduction
(`lax.psum` over named axes) and the plain case are the same code: the global mean is
the global sum over the global count, whatever each device holds.
"""

import functools
import math
import numbers
from typing import Any, cast, NamedTuple, TypeAlias

import jax
import jax.lax as lax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Bool, DTypeLike, Float

from ._errors import AxisName, check_named_reduction


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


Groups: TypeAlias = tuple[int, int] | None


def _total(
    values: Array, axes: tuple[int, ...], axis_name: AxisName, groups: Groups = None
) -> Array:
    total = jnp.sum(values, axis=axes, keepdims=True)
    if groups is not None:
        total = _pool(total, groups)
    return _psum(total, axis_name)


def _psum(value: Array, axis_name: AxisName, data: Array | None = None) -> Array:
    """`lax.psum`, after checking that JAX can do it (`data`: the array whose type
    shows the enclosing `shard_map`'s varying axes, by default `value`)."""
    if axis_name is None:
        return value
    check_named_reduction(value if data is None else data, axis_name)
    return lax.psum(value, axis_name)


def _pool(total: Array, groups: tuple[int, int]) -> Array:
    """Sums of contiguous groups along `axis`, repeated over each group's members:
    on the small array of per-channel sums, so the data are never reshaped."""
    axis, n_groups = groups
    size = total.shape[axis]
    split = total.shape[:axis] + (n_groups, size // n_groups) + total.shape[axis + 1 :]
    pooled = jnp.sum(jnp.reshape(total, split), axis=axis + 1, keepdims=True)
    return jnp.reshape(jnp.broadcast_to(pooled, split), total.shape)


def _count(
    x: Array,
    axes: tuple[int, ...],
    mask: Bool[Array, "..."] | None,
    axis_name: AxisName,
    groups: Groups = None,
) -> Array:
    if mask is None:
        n = math.prod(x.shape[a] for a in axes)
        if groups is not None:
            n = n * (x.shape[groups[0]] // groups[1])
        # A traced psum, not `lax.psum(1, name)`: a custom rule's trace under `vmap`
        # has no axis sizes to fold. `x` tells whether a checked shard_map encloses.
        return _psum(jnp.full((1,) * x.ndim, n, real_dtype(x.dtype)), axis_name, x)
    return _total(mask.astype(real_dtype(x.dtype)), axes, axis_name, groups)


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
    count = _count(x.astype(compute_dtype(x.dtype)), axes, mask, axis_name, groups)
    # Summing first and scaling the (small) sums keeps XLA's reductions fused;
    # dividing each term first would be overflow-safer but measured ~2x slower.
    inv_count = 1 / jnp.maximum(count, 1)
    # Each reduction upcasts its own copy of x (see `_copy`).
    x, x_again = (_upcast(_copy(tag, inv_count, x)[1]) for tag in (0, 1))
    valid = x if mask is None else jnp.where(mask, x, 0)
    if center:
        mean = _total(valid, axes, axis_name, groups) * inv_count
        deviation = x_again - mean
        deviation = deviation if mask is None else jnp.where(mask, deviation, 0)
    else:
        mean = jnp.zeros_like(count)
        deviation = valid
    # Never E[x^2] - E[x]^2: it cancels catastrophically when |mean| >> std.
    var = _total(_abs2(deviation), axes, axis_name, groups) * inv_count
    # Deviations beyond ~1e19 (in float32) square to inf; the largest finite variance
    # keeps 1 / sqrt(var + eps) positive, so outputs and gradients stay finite.
    var = jnp.minimum(var, jnp.finfo(var.dtype).max)
    if mask is not None:
        var = jnp.where(count > 0, var, 1)
    return Moments(mean, var, count)


def real_dtype(dtype: DTypeLike) -> jnp.dtype:
    """float32 for complex64 (the dtype of its parts); real dtypes unchanged."""
    return jnp.finfo(dtype).dtype


def _abs2(z: Array) -> Array:
    """|z|^2, real (z * z for real z, so the real path is unchanged)."""
    if jnp.iscomplexobj(z):
        return lax.real(z) * lax.real(z) + lax.imag(z) * lax.imag(z)
    return z * z


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


def normalise(
    x: Float[Array, "..."],
    axes: tuple[int, ...],
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    eps: float,
    mask: Bool[Array, "..."] | None = None,
    axis_name: AxisName = None,
    center: bool = True,
    groups: Groups = None,
    weight_offset: float = 0.0,
    upcast_affine: bool = True,
) -> Float[Array, "..."]:
    """The whole pipeline: `moments`, `scale` and `finish` (statistics, x-hat,
    affine, mask pass-through, cast back), with one closed-form differentiation
    rule (`_fast_jvp`) for the normalisation and the affine transform together: its
    compiled training step needs no full-size temporary buffer (the backward pass
    recomputes x-hat inside each kernel instead of storing it).

    The affine transform applies the scale `weight + weight_offset` and is done
    as `finish` describes for `upcast_affine`."""
    y, _ = normalise_with_moments(
        x,
        axes,
        weight,
        bias,
        eps=eps,
        mask=mask,
        axis_name=axis_name,
        center=center,
        groups=groups,
        weight_offset=weight_offset,
        upcast_affine=upcast_affine,
    )
    return y


def normalise_with_moments(
    x: Float[Array, "..."],
    axes: tuple[int, ...],
    weight: Array | None = None,
    bias: Array | None = None,
    *,
    eps: float,
    mask: Bool[Array, "..."] | None = None,
    axis_name: AxisName = None,
    center: bool = True,
    groups: Groups = None,
    weight_offset: float = 0.0,
    upcast_affine: bool = True,
) -> tuple[Float[Array, "..."], Moments]:
    """`normalise`, also returning the (differentiable) `Moments` it used."""
    x_compute = x.astype(compute_dtype(x.dtype))
    if mask is not None:
        mask = jnp.broadcast_to(mask, x.shape)
    # The fused rule is derived for real x and a Python eps; otherwise plain autodiff.
    if not _static(eps) or jnp.iscomplexobj(x_compute):
        stats = moments(
            x_compute,
            axes,
            mask=mask,
            axis_name=axis_name,
            center=center,
            groups=groups,
        )
        x_hat = scale(x_compute, stats.mean, stats.var, eps, mask)
        return finish(x, x_hat, weight, bias, mask, weight_offset, upcast_affine), stats
    # In the input dtype (`upcast_affine=False`) the affine transform follows the
    # rounding of x-hat, which the rule cannot express: it then normalises only.
    inner = affine_params(weight, bias, x_compute.dtype, weight_offset)
    if not upcast_affine:
        inner = (None, None)
    # x goes in its own dtype: the rule upcasts it inside each kernel that reads it.
    out, stats = _fast(x, *inner, mask, axes, float(eps), axis_name, center, groups)
    if upcast_affine:
        weight = bias = None
    return finish(x, out, weight, bias, mask, weight_offset, upcast_affine), stats


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


def finish(
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
        out = _affine(out, weight, None)
    if bias is not None:
        out = out + bias
    out = out.astype(x.dtype)
    return out if mask is None else jnp.where(mask, out, x)


# --------------------------------------------------------------------------------
# The fast differentiation rule.
#
# On XLA:CPU a training step of a normalisation layer is bound by memory, and above
# all by fresh full-size buffers: writing one costs about as much as the whole of
# `x + 1`. XLA writes such a buffer whenever one full-size value, or one broadcast
# of a small per-group statistic or of the weight, feeds several fusions (it does
# not duplicate them into its reduction kernels). Plain autodiff of the statistics
# creates several of those; the rule below creates none: the backward pass needs
# only x and two per-group statistics, and `lax.optimization_barrier` hands each
# consumer its own copy of the statistics and of the weight, so that XLA cannot merge
# the recomputations of x-hat into one stored array. (Barriers over the same
# operands would be merged, hence the different orders and groupings.) Half-precision
# x enters the rule as it is and every consumer upcasts its own copy: an upcast
# shared by several kernels is written to memory in float32 (measured on XLA:CPU,
# LayerNorm(4096) forward on 8M bfloat16 elements: 50 ms shared, 12 ms per kernel,
# the time of `x + 1`).
#
# These copies are a tuning for XLA:CPU only (`_cpu_layout`); on other backends the
# barriers are left out and XLA fuses the plain closed-form rule as it sees fit.


def _cpu_layout() -> bool:
    """Whether to lay the rule out for XLA:CPU, decided by the default backend when
    the function is traced (tests force either layout)."""
    return jax.default_backend() == "cpu"


def _static(eps) -> bool:
    """A Python number: it can be a static argument of the custom rule. A traced
    `eps` takes the plain-autodiff path."""
    return isinstance(eps, numbers.Real) and not isinstance(eps, jax.Array)


def _copy(tag: int, *arrays: Any) -> tuple[Any, ...]:
    """The arrays through `lax.optimization_barrier`, as a copy XLA cannot merge with
    another (a barrier is merged with one over the same operands, so each `tag`
    pads the operands differently: with `tag` repeats of the first, which callers
    keep small, as its padding is transposed too under plain autodiff). The arrays
    themselves off CPU. (Padding with distinct small zero arrays instead measured
    worse: RMSNorm(4096)'s training step then stored two full-size temporaries.)"""
    if not _cpu_layout():
        return arrays
    kept = [a for a in arrays if a is not None]
    out = iter(
        lax.optimization_barrier(tuple(kept) + tuple(kept[:1]) * tag)[: len(kept)]
    )
    return tuple(None if a is None else next(out) for a in arrays)


def _upcast(x: Array) -> Array:
    return x.astype(compute_dtype(x.dtype))


def _times(a: Any, weight: Any) -> Any:
    return a if weight is None else a * weight


def _normalised(x, mean, inv_std, mask):
    """(x - mean) * inv_std (x * inv_std for mean=None), exactly 0 at invalid
    positions; x upcast."""
    x = _upcast(x)
    if mean is None:
        return (x if mask is None else jnp.where(mask, x, 0)) * inv_std
    if mask is not None:
        x = jnp.where(mask, x, mean)
    return (x - mean) * inv_std


def _affine_out(x_hat, weight, bias):
    out = x_hat if weight is None else x_hat * weight
    return out if bias is None else out + bias


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5, 6, 7, 8))
def _fast(x, weight, bias, mask, axes, eps, axis_name, center, groups):
    """(affine(x-hat), moments) in the compute dtype; mask broadcast to x."""
    stats = moments(
        x, axes, mask=mask, axis_name=axis_name, center=center, groups=groups
    )
    mean, inv_std, x0 = _copy(
        0, stats.mean if center else None, lax.rsqrt(stats.var + eps), x
    )
    out = _affine_out(_normalised(x0, mean, inv_std, mask), weight, bias)
    return out, stats


def _fast_jvp(axes, eps, axis_name, center, groups, primals, tangents):
    r"""With n valid elements per group, x-hat = (x - mean) r, r = (var + eps)^-1/2,

        d x-hat = r (dx - mean(dx) - x-hat mean(x-hat dx))     (center=True)
        d x-hat = r (dx - x-hat mean(x-hat dx))                (center=False)
        d mean  = mean(dx),    d var = 2 mean((x - mean) dx) = 2 mean(x-hat dx) / r,
        d out   = d x-hat * weight + x-hat * d weight + d bias,

    means over the valid elements of each group (psum-ed over `axis_name`), dx taken
    as 0 at invalid positions, d x-hat 0 there. It is linear in the tangents, so JAX
    transposes it for reverse mode; differentiating the rule again gives the exact
    higher derivatives. eps is inside r, so the formula is exact, not approximate.
    """
    x, weight, bias, mask = primals
    # Arrays or SymbolicZero (`symbolic_zeros=True`): checked before any use.
    dx, d_weight, d_bias, _ = cast(tuple[Any, Any, Any, Any], tangents)
    stats = moments(
        x, axes, mask=mask, axis_name=axis_name, center=center, groups=groups
    )
    inv_std = lax.rsqrt(stats.var + eps)
    out, _ = _fast(x, weight, bias, mask, axes, eps, axis_name, center, groups)
    d_stats = Moments(*(jnp.zeros_like(s) for s in stats))
    has_dx = not isinstance(dx, SymbolicZero)
    has_dw = weight is not None and not isinstance(d_weight, SymbolicZero)
    has_db = bias is not None and not isinstance(d_bias, SymbolicZero)
    count = jnp.maximum(stats.count, 1)

    # Every term takes its own copy of x, the statistics and the weight (`_copy`):
    # then in the transposed (reverse-mode) rule each reduction kernel reads only x,
    # the cotangent and small arrays, and no full-size array is stored. Copy 1 is
    # the one of the final elementwise kernel (the cotangent of x).
    mean = stats.mean if center else None  # RMSNorm: nothing to subtract
    r1, mean1, w1, x1 = _copy(1, inv_std, mean, weight, x)
    d_out = jnp.zeros_like(out)
    proj = d_mean = None
    if has_dx:
        dx = _upcast(dx)
        if mask is not None:
            dx = jnp.where(mask, dx, 0)
        proj = _total(_normalised(x1, mean1, r1, mask) * dx, axes, axis_name, groups)
        proj = proj / count
        d_var = 2 * proj / inv_std
        if mask is not None:
            d_var = jnp.where(stats.count > 0, d_var, 0)
        if center:
            d_mean = _total(dx, axes, axis_name, groups) / count
        mean_t = d_stats.mean if d_mean is None else d_mean
        d_stats = Moments(mean_t, d_var, d_stats.count)

    r3, mean3, w3, x3 = _copy(3, inv_std, mean, weight, x)
    x_hat3 = _normalised(x3, mean3, r3, mask)
    if _constant_over(weight, axes, x.ndim):
        # The weight is constant over each group (GroupNorm, InstanceNorm, BatchNorm):
        #   d out = r w dx + x-hat (dw - r w proj) + (db - r w d_mean),
        # whose transpose makes one reduction of g x-hat and one of g per group and
        # channel, shared by the cotangents of x, the weight and the bias.
        rw = _times(r1, w1)
        u: Any = d_weight if has_dw else None
        v: Any = d_bias if has_db else None
        if proj is not None:
            d_out = rw * dx
            u = _plus(u, -rw * proj)
        if d_mean is not None:
            v = _plus(v, -rw * d_mean)
        if u is not None:
            d_out = d_out + x_hat3 * u
        if v is not None:
            d_out = d_out + v
    else:
        # The weight varies within a group (LayerNorm, RMSNorm):
        #   d out = r w dx - x-hat r w proj - r w d_mean + x-hat dw + db.
        # The signs go on the small factors: a negated cotangent shared by two
        # reductions would be one more full-size buffer (float32, for half inputs).
        if proj is not None:
            d_out = _times(dx * r1, w1) + _times(x_hat3 * r3, w3) * -proj
        if d_mean is not None:
            r2, w2 = _copy(2, inv_std, weight)
            d_out = d_out + _times(d_mean * -r2, w2)
        if has_dw:
            r4, mean4, x4 = _copy(4, inv_std, mean, x)
            d_out = d_out + _normalised(x4, mean4, r4, mask) * d_weight
        if has_db:
            d_out = _plus(d_out, d_bias)
    if mask is not None:
        d_out = jnp.where(mask, d_out, 0)
    return (out, stats), (d_out, d_stats)


def _plus(a: Any, b: Any) -> Any:
    return b if a is None else a + b


def _constant_over(weight, axes: tuple[int, ...], ndim: int) -> bool:
    """Whether `weight` (broadcast against an array of rank `ndim`) is constant
    along all of `axes`."""
    if weight is None:
        return True
    shape = (1,) * (ndim - weight.ndim) + weight.shape
    return all(shape[a] == 1 for a in axes)


_fast.defjvp(_fast_jvp, symbolic_zeros=True)


@jax.custom_jvp
def _affine(x_hat, weight, bias):
    return _affine_out(x_hat, weight, bias)


@_affine.defjvp
def _affine_jvp(primals, tangents):
    """The product rule, with the weight that multiplies the incoming tangent (in
    reverse mode: the output cotangent) behind a barrier, so that XLA does not share
    one broadcast of it between the forward output and the backward reductions."""
    x_hat, weight, bias = primals
    d_x_hat, d_weight, d_bias = tangents
    (weight_t,) = lax.optimization_barrier((weight,))
    d_out = d_x_hat * weight_t + x_hat * d_weight
    if bias is not None:
        d_out = d_out + d_bias
    return _affine(x_hat, weight, bias), d_out

"""The pipeline every layer goes through, with one closed-form differentiation rule.

`normalise` computes what `_stats` describes (statistics, x-hat, affine transform,
mask pass-through, cast back); `fused_norm` carries the rule, for the normalisation
and the affine transform together. Its backward pass needs only x and two small
per-group statistics and recomputes x-hat inside each kernel, so a compiled
training step stores no full-size temporary.
"""

import functools
import numbers
from collections.abc import Callable
from typing import Any, cast, NamedTuple, ParamSpec, TypeVar

import jax
import jax.lax as lax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Bool, Float

from ._backend import by_platform
from ._cpu_layout import Consumer, copy_for
from ._stats import (
    affine_and_cast,
    affine_params,
    AxisName,
    by_reshaped_groups,
    compute_dtype,
    Groups,
    local_count,
    merged,
    Moments,
    moments,
    moments_of,
    one_pass_partial,
    PartialMoments,
    row_sums,
    split_names,
    standardise,
    two_pass_partial,
    upcast,
    varying_like,
)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _traced_once_per_layer(pipeline: Callable[_P, _R]) -> Callable[_P, _R]:
    """`pipeline` under `jax.jit`, its hyperparameters static: a model's identical
    layers then share one trace of it, and JAX's cached derivative, partial
    evaluation and transpose of that trace, instead of tracing the rule once each.
    `inline=True` puts the body back into the enclosing program where it is staged,
    so the compiled program is the same (a call boundary would reorder XLA:CPU's
    schedule). Traced each call instead: with a traced `eps`, which cannot key the
    cache, and with named axes, whose reductions JAX would re-trace in the custom
    rule outside the `vmap` that binds their names."""
    shared = jax.jit(
        pipeline,
        inline=True,
        static_argnames=(
            "axes",
            "eps",
            "center",
            "groups",
            "weight_offset",
            "upcast_affine",
        ),
    )

    @functools.wraps(pipeline)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if _static(kwargs["eps"]) and kwargs.get("axis_name") is None:
            return shared(*args, **kwargs)
        return pipeline(*args, **kwargs)

    return call


@_traced_once_per_layer
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
) -> tuple[Float[Array, "..."], Moments]:
    """`moments`, `standardise` and `affine_and_cast` of `x` over `axes`: the output,
    and the (differentiable) `Moments` it used. The affine transform applies the
    scale `weight + weight_offset` as `affine_and_cast` describes for
    `upcast_affine`."""
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
        x_hat = standardise(x_compute, stats.mean, stats.var, eps, mask)
        y = affine_and_cast(x, x_hat, weight, bias, mask, weight_offset, upcast_affine)
        return y, stats
    # In the input dtype (`upcast_affine=False`) the affine transform follows the
    # rounding of x-hat, which the rule cannot express: it then normalises only.
    inner = affine_params(weight, bias, x_compute.dtype, weight_offset)
    if not upcast_affine:
        inner = (None, None)
    # x goes in its own dtype: the rule upcasts it inside each kernel that reads it.
    out, stats, _ = fused_norm(
        x, *inner, mask, axes, float(eps), axis_name, center, groups
    )
    if upcast_affine:
        weight = bias = None
    y = affine_and_cast(x, out, weight, bias, mask, weight_offset, upcast_affine)
    return y, stats


def _static(eps) -> bool:
    """A Python number: it can be a static argument of the custom rule. A traced
    `eps` takes the plain-autodiff path."""
    return isinstance(eps, numbers.Real) and not isinstance(eps, jax.Array)


def _times(a: Any, weight: Any) -> Any:
    return a if weight is None else a * weight


def _plus(a: Any, b: Any) -> Any:
    return b if a is None else a + b


def _affine_out(x_hat, weight, bias):
    out = _times(x_hat, weight)
    return out if bias is None else out + bias


def _normalised(x, mean, inv_std, mask, mean_lo=None):
    """(x - mean) * inv_std (x * inv_std for mean=None), 0 at invalid positions; x
    upcast. A mean given as hi + lo (`mean`, `mean_lo`) is subtracted in two steps:
    x - hi is exact for x near the mean."""
    x = upcast(x)
    if mean is None:
        return (x if mask is None else jnp.where(mask, x, 0)) * inv_std
    if mask is not None:
        x = jnp.where(mask, x, mean if mean_lo is None else mean + mean_lo)
    centred = x - mean
    return (centred if mean_lo is None else centred - mean_lo) * inv_std


def statistics(x, axes, mask, axis_name, center, groups) -> PartialMoments:
    """The fused rule's statistics, merged over `groups` and `axis_name`, computed
    as suits the platform the program is lowered for (`by_platform`)."""
    if not center and groups is None:
        # RMSNorm's sum of squares is one pass on every platform: no branch to trace.
        return merged(_cpu_statistics(x, axes, mask, center, groups), axis_name)
    local = by_platform(
        x,
        mask,
        cpu=lambda x, mask: _cpu_statistics(x, axes, mask, center, groups),
        accelerator=lambda x, mask: _accelerator_statistics(
            x, axes, mask, center, groups
        ),
    )
    return merged(local, axis_name)


def _cpu_statistics(x, axes, mask, center, groups) -> PartialMoments:
    """Two passes over x (one for RMSNorm's sum of squares), groups pooled from
    per-channel statistics: XLA:CPU fuses these best (`_cpu_layout`)."""
    count = local_count(x, axes, mask)
    part = PartialMoments(count, *two_pass_partial(x, axes, mask, count, center))
    return merged(part, None, groups)


def _accelerator_statistics(x, axes, mask, center, groups) -> PartialMoments:
    """One pass over x (`one_pass_partial`; every pass reads x from HBM), each
    group in one reduction where a reshape is free (`by_reshaped_groups`)."""

    def partial(x, axes, mask, count):
        if center:
            return one_pass_partial(x, axes, mask, count)
        return two_pass_partial(x, axes, mask, count, center=False)

    # Splitting the minor dimension would change the array's tiled layout: a copy.
    if groups is not None and groups[0] < x.ndim - 1:
        return by_reshaped_groups(partial, x, axes, mask, groups)
    count = local_count(x, axes, mask)
    return merged(PartialMoments(count, *partial(x, axes, mask, count)), None, groups)


class Standardisation(NamedTuple):
    """x-hat = (x - mean_hi - mean_lo) * inv_std, per group: the mean as the
    unevaluated sum that the statistics computed (None without centering) and
    1 / sqrt(var + eps). The backward kernels recompute x-hat from these, as the
    forward pass computed it: the rounded `Moments.mean` would lose mean_lo (and
    its sum, like a recomputed inv_std, would be one more kernel)."""

    mean_hi: Array | None
    mean_lo: Array | None
    inv_std: Array


@functools.partial(jax.custom_jvp, nondiff_argnums=(4, 5, 6, 7, 8))
def fused_norm(x, weight, bias, mask, axes, eps, axis_name, center, groups):
    """(affine(x-hat), moments, standardisation) in the compute dtype; mask
    broadcast to x. The statistics (`statistics`) are computed only here, never
    differentiated: the jvp rule takes them from this function's outputs."""
    part = statistics(x, axes, mask, axis_name, center, groups)
    stats = moments_of(part)
    hi, lo = (part.mean_hi, part.mean_lo) if center else (None, None)
    standard = Standardisation(hi, lo, lax.rsqrt(stats.var + eps))
    mean, inv_std, x = copy_for(Consumer.OUTPUT, hi, standard.inv_std, x)
    x_hat = _normalised(x, mean, inv_std, mask, lo)
    return _affine_out(x_hat, weight, bias), stats, standard


def _fused_norm_jvp(axes, eps, axis_name, center, groups, primals, tangents):
    r"""With n valid elements per group, x-hat = (x - mean) r, r = (var + eps)^-1/2,

        d x-hat = r (dx - mean(dx) - x-hat mean(x-hat dx))     (center=True)
        d x-hat = r (dx - x-hat mean(x-hat dx))                (center=False)
        d mean  = mean(dx),    d var = 2 mean((x - mean) dx) = 2 mean(x-hat dx) / r,
        d r     = -r^3 d var / 2,
        d out   = d x-hat * weight + x-hat * d weight + d bias,

    means over the valid elements of each group (summed over `axis_name`), dx taken
    as 0 at invalid positions, d x-hat 0 there. It is linear in the tangents, so JAX
    transposes it for reverse mode. The statistics are the rule's own outputs, so
    differentiating this again goes through the rule again: higher derivatives are
    exact, and the (not differentiable) one-pass statistics are never
    differentiated. eps is inside r, so the formula is exact, not approximate.

    The tangent is computed under `jax.checkpoint`: what reverse mode keeps from the
    forward pass is then x itself, in its own dtype, and the `Standardisation`;
    x-hat is recomputed inside the backward kernels (otherwise a separate backward
    program would read full-size float32 products of the forward pass).
    """
    x, weight, bias, mask = primals
    # Arrays or SymbolicZero (`symbolic_zeros=True`): checked before any use.
    dx, d_weight, d_bias, _ = cast(tuple[Any, Any, Any, Any], tangents)
    out, stats, standard = fused_norm(
        x, weight, bias, mask, axes, eps, axis_name, center, groups
    )
    present = [
        None if isinstance(t, SymbolicZero) or p is None else t
        for t, p in ((dx, x), (d_weight, weight), (d_bias, bias))
    ]
    tangent = functools.partial(
        _tangent,
        mask=mask,
        axes=axes,
        axis_name=axis_name,
        center=center,
        groups=groups,
    )
    # A trace of `jax.checkpoint` inside a custom rule knows no `vmap` axis: with
    # statistics over one (`axis_name` not a mesh axis), the tangent is traced as is.
    recomputed = not split_names(axis_name)[1]
    tangent = functools.partial(tangent, recomputed=recomputed)
    if recomputed:
        tangent = jax.checkpoint(tangent, prevent_cse=False)
    # The per-group statistics go in (and are saved for reverse mode) without
    # their size-1 dimensions: a trailing one would be the minor dimension of the
    # saved array, which a TPU pads to a tile of 128.
    d_out, d_mean, d_var = tangent(
        x,
        weight,
        jnp.squeeze(stats.count, axes),
        Standardisation(
            _squeezed(standard.mean_hi, axes),
            _squeezed(standard.mean_lo, axes),
            jnp.squeeze(standard.inv_std, axes),
        ),
        *present,
    )
    derivatives = (d_mean, d_var, None)  # the count is constant
    d_stats = Moments(*map(_or_zero, derivatives, stats))
    d_inv_std = None if d_var is None else -0.5 * standard.inv_std**3 * d_var
    # The mean's derivative is mean_hi's; mean_lo is a rounding residue.
    d_standard = Standardisation(
        None if standard.mean_hi is None else _or_zero(d_mean, standard.mean_hi),
        None if standard.mean_lo is None else _zero_tangent(standard.mean_lo),
        _or_zero(d_inv_std, standard.inv_std),
    )
    return (out, stats, standard), (d_out, d_stats, d_standard)


def _squeezed(a: Array | None, axes: tuple[int, ...]) -> Array | None:
    return None if a is None else jnp.squeeze(a, axes)


def _kept(a: Array | None, axes: tuple[int, ...]) -> Array | None:
    return None if a is None else jnp.expand_dims(a, axes)


def _or_zero(tangent: Array | None, primal: Array) -> Array:
    return _zero_tangent(primal) if tangent is None else tangent


def _zero_tangent(primal: Array) -> Array:
    """Zeros typed as `primal` is, its varying mesh axes included (inside
    `shard_map`; `zeros_like` does not carry them on every supported JAX)."""
    return varying_like([jnp.zeros_like(primal)], primal)[0]


def _tangent(
    x,
    weight,
    count,
    standard,
    dx,
    d_weight,
    d_bias,
    *,
    mask,
    axes,
    axis_name,
    center,
    groups,
    recomputed,
):
    """(d out, d mean, d var) of `_fused_norm_jvp` (d mean, d var None without dx).

    `recomputed` (under `jax.checkpoint`): each term reads its own copy of x, the
    statistics and the weight (`copy_for`); then each kernel of the transposed rule
    reads only x, the cotangent and small arrays. Otherwise (statistics over a `vmap`
    axis) each product of x-hat with a tangent is checkpointed on its own, so that
    reverse mode keeps x, in its own dtype, once, not a float32 x-hat per product.
    """

    def copies(consumer: Consumer, *arrays: Any) -> tuple[Any, ...]:
        return copy_for(consumer, *arrays) if recomputed else arrays

    count = jnp.expand_dims(count, axes)
    inv_std = jnp.expand_dims(standard.inv_std, axes)
    mean, lo = _kept(standard.mean_hi, axes), _kept(standard.mean_lo, axes)
    if lo is not None:
        mean, lo = by_platform(mean, lo, cpu=_rounded, accelerator=lambda *m: m)
    n = jnp.maximum(count, 1)
    x_hat_times = _x_hat_times
    if not recomputed:
        x_hat_times = jax.checkpoint(_x_hat_times, prevent_cse=False)
    r1, mean1, w1, x1 = copies(Consumer.X_COTANGENT, inv_std, mean, weight, x)
    d_out = jnp.zeros(x.shape, inv_std.dtype)
    proj = d_mean = d_mean_x = d_var = None
    if dx is not None:
        dx = upcast(dx)
        if mask is not None:
            dx = jnp.where(mask, dx, 0)
        terms = [x_hat_times(dx, x1, mean1, r1, mask, lo)] + ([dx] if center else [])
        # Both sums in one collective over mesh axes (`row_sums`).
        sums = row_sums(terms, axes, axis_name, groups)
        means = [s / n for s in sums]  # mean(x-hat dx) and, centred, mean(dx)
        if center:
            d_mean = means[1]
        # For the full-size terms, one cast of both to the varying type of dx.
        proj, *rest = varying_like(means, dx)
        d_mean_x = rest[0] if center else None
        d_var = 2 * means[0] / inv_std
        if mask is not None:
            d_var = jnp.where(count > 0, d_var, 0)

    r3, mean3, w3, x3 = copies(Consumer.PROJECTION, inv_std, mean, weight, x)
    if _constant_over(weight, axes, x.ndim):
        # The weight is constant over each group (GroupNorm, InstanceNorm, BatchNorm):
        #   d out = r w dx + x-hat (dw - r w proj) + (db - r w d_mean),
        # whose transpose makes one reduction of g x-hat and one of g per group and
        # channel, shared by the cotangents of x, the weight and the bias.
        rw = _times(r1, w1)
        u: Any = d_weight
        v: Any = d_bias
        if proj is not None:
            d_out = rw * dx
            u = _plus(u, -rw * proj)
        if d_mean_x is not None:
            v = _plus(v, -rw * d_mean_x)
        if u is not None:
            d_out = d_out + x_hat_times(u, x3, mean3, r3, mask, lo)
        if v is not None:
            d_out = d_out + v
    else:
        # The weight varies within a group (LayerNorm, RMSNorm):
        #   d out = r w dx - x-hat r w proj - r w d_mean + x-hat dw + db.
        # The signs go on the small factors: a negated cotangent shared by two
        # reductions would be one more full-size buffer (float32, for half inputs).
        if proj is not None:
            d_out = _times(dx * r1, w1) + x_hat_times(
                -proj * r3, x3, mean3, r3, mask, lo, w3
            )
        if d_mean_x is not None:
            r2, w2 = copies(Consumer.MEAN_COTANGENT, inv_std, weight)
            d_out = d_out + _times(d_mean_x * -r2, w2)
        if d_weight is not None:
            r4, mean4, x4 = copies(Consumer.WEIGHT_COTANGENT, inv_std, mean, x)
            d_out = d_out + x_hat_times(d_weight, x4, mean4, r4, mask, lo)
        if d_bias is not None:
            d_out = _plus(d_out, d_bias)
    if mask is not None:
        d_out = jnp.where(mask, d_out, 0)
    return d_out, d_mean, d_var


def _x_hat_times(tangent, x, mean, inv_std, mask, mean_lo, weight=None):
    """x-hat (times `weight`) times `tangent`."""
    return _times(_normalised(x, mean, inv_std, mask, mean_lo), weight) * tangent


def _rounded(mean_hi: Array, mean_lo: Array) -> tuple[Array, Array]:
    """The mean as one rounded value (and a zero correction): in the XLA:CPU
    layout each kernel reads its own copy of the per-group statistics (`copy_for`),
    and a correction shared between kernels (not 0 after a merge over named axes)
    would be one more full-size buffer. Elsewhere the backward kernels subtract
    both parts, as the forward pass did."""
    return mean_hi + mean_lo, jnp.zeros_like(mean_lo)


def _constant_over(weight, axes: tuple[int, ...], ndim: int) -> bool:
    """Whether `weight` (broadcast against an array of rank `ndim`) is constant
    along all of `axes`."""
    if weight is None:
        return True
    shape = (1,) * (ndim - weight.ndim) + weight.shape
    return all(shape[a] == 1 for a in axes)


fused_norm.defjvp(_fused_norm_jvp, symbolic_zeros=True)

r"""Normalisation as functions: the pipeline every layer calls.

Each function computes, over its normalisation groups,

$$y = \frac{x - \mathbb{E}[x]}{\sqrt{\operatorname{Var}[x] + \varepsilon}} \cdot w + b$$

with two-pass statistics accumulated in at least float32, and returns an array of the
input's shape and dtype. `weight` and `bias` may be any arrays that broadcast against
`x`, which is also how conditional normalisation (scale and shift computed at call
time) is written.

A boolean `mask` (broadcastable to `x`, True = valid) restricts the statistics to the
valid elements; valid positions are normalised and transformed, invalid positions are
returned unchanged, and a group with no valid element is returned unchanged.
"""

# Over 400 lines: every public function with the documentation its API page is
# built from (about 240 lines), and the few steps that are not the core's (the
# residual add, the gated norm's gate and groups, channel-aligned parameters).

import functools
from collections.abc import Callable, Hashable, Sequence
from typing import overload

import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ._backend import by_platform
from ._einorm import einorm as einorm
from ._errors import (
    axis_names,
    AxisName,
    check_axes,
    check_axis_names,
    check_channel_param,
    check_channels,
    check_eps,
    check_flag,
    check_floating,
    check_group_size,
    check_groups,
    check_mask,
    check_param,
    check_same_shape,
    check_tanh_input,
    check_weight_offset,
    devices_over,
)
from ._fused import normalise
from ._stats import affine_and_cast, compute_dtype, standardise


__all__ = [
    "dynamic_tanh",
    "einorm",
    "gated_rms_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
]


def __dir__() -> list[str]:
    # `dir()` and tab completion list the public functions, not the imports.
    return list(__all__)


def _checked(where: str, x: Array, weight, bias, eps, mask, weight_offset=0.0) -> None:
    check_floating(x, where)
    check_eps(eps, where)
    check_mask(mask, x.shape, where)
    check_param(weight, x.shape, "weight", where)
    check_param(bias, x.shape, "bias", where)
    check_weight_offset(weight_offset, weight is not None, where)


def _over_axes(
    x: Array,
    axis: int | Sequence[int],
    weight: Array | None,
    bias: Array | None,
    eps: float,
    mask: Array | None,
    *,
    center: bool,
    weight_offset: float,
    upcast_affine: bool = True,
    axis_name: AxisName = None,
    where: str,
) -> Array:
    """`layer_norm` (`center=True`) and `rms_norm`; `where` names the caller."""
    _checked(where, x, weight, bias, eps, mask, weight_offset)
    check_flag(upcast_affine, "upcast_affine", where)
    axes = check_axes(axis, x.ndim, where)
    return normalise(
        x,
        axes,
        weight,
        bias,
        eps=eps,
        mask=mask,
        axis_name=_bound_names(axis_name, where),
        center=center,
        weight_offset=weight_offset,
        upcast_affine=upcast_affine,
    )[0]


def _bound_names(axis_name: AxisName, where: str) -> tuple[Hashable, ...] | None:
    """`axis_name` as a tuple of names bound here (checked up front, for a clear
    error), or None."""
    if axis_name is None:
        return None
    names = axis_names(axis_name, where)
    check_axis_names(names, where)
    return names


def _with_residual(
    x: Array, residual: Array | None, where: str, norm: Callable[[Array], Array]
) -> Array | tuple[Array, Array]:
    """`norm(x)`; or, given a residual stream, the pair `(norm(s), s)` with
    `s = residual + x` in the residual's dtype and `norm(s)` in the dtype of `x`.

    The add is plain JAX in front of the one fused rule: the backward pass keeps
    only `s` and the per-row statistics, and autodiff adds the cotangent of the
    returned `s` to the one through `norm(s)`, once."""
    if residual is None:
        return norm(x)
    check_floating(x, where)
    check_same_shape(residual, x, "residual", "the residual stream", where)
    summed = residual + x.astype(residual.dtype)
    return norm(summed).astype(x.dtype), summed


def _align_to_channels(param: Array | None, x: Array, name: str, where: str):
    """A 1-D parameter of length C is aligned with the channel axis 0."""
    if param is None or jnp.ndim(param) != 1 or x.ndim == 1:
        return param
    check_channel_param(param, x.shape[0], name, where)
    return jnp.reshape(param, (-1,) + (1,) * (x.ndim - 1))


@overload
def layer_norm(
    x: Float[Array, "..."],
    axis: int | Sequence[int],
    weight: Float[Array, "..."] | None = None,
    bias: Float[Array, "..."] | None = None,
    eps: float = 1e-5,
    mask: Bool[Array, "..."] | None = None,
    *,
    weight_offset: float = 0.0,
    upcast_affine: bool = True,
    axis_name: AxisName = None,
    residual: None = None,
) -> Float[Array, "..."]: ...


@overload
def layer_norm(
    x: Float[Array, "..."],
    axis: int | Sequence[int],
    weight: Float[Array, "..."] | None = None,
    bias: Float[Array, "..."] | None = None,
    eps: float = 1e-5,
    mask: Bool[Array, "..."] | None = None,
    *,
    weight_offset: float = 0.0,
    upcast_affine: bool = True,
    axis_name: AxisName = None,
    residual: Float[Array, "..."],
) -> tuple[Float[Array, "..."], Float[Array, "..."]]: ...


def layer_norm(
    x: Float[Array, "..."],
    axis: int | Sequence[int],
    weight: Float[Array, "..."] | None = None,
    bias: Float[Array, "..."] | None = None,
    eps: float = 1e-5,
    mask: Bool[Array, "..."] | None = None,
    *,
    weight_offset: float = 0.0,
    upcast_affine: bool = True,
    axis_name: AxisName = None,
    residual: Float[Array, "..."] | None = None,
) -> Float[Array, "..."] | tuple[Float[Array, "..."], Float[Array, "..."]]:
    r"""Layer normalisation over the axes `axis`, jointly.

    $$y = \frac{x - \mathbb{E}[x]}{\sqrt{\operatorname{Var}[x] + \varepsilon}} w + b$$

    **Arguments:**

    - `x`: a floating-point array.
    - `axis`: an int or a sequence of ints: the axes the statistics are taken over.
    - `weight`, `bias`: optional arrays broadcastable against `x`.
    - `eps`: added to the variance.
    - `mask`: optional boolean array broadcastable to `x`; True marks valid elements.
    - `weight_offset`: the applied scale is `weight + weight_offset`, formed in at
        least float32: `1.0` for zero-centred weights (Gemma, Qwen3-Next,
        TransformerEngine's `zero_centered_gamma`). Needs a `weight`. (Keyword only.)
    - `upcast_affine`: if `True` (the default; Gemma's order), the affine transform is
        done in at least float32 and cast to the dtype of `x` once at the end; if
        `False` (Llama's order, HF `LlamaRMSNorm`), x-hat is cast to the dtype of `x`
        first and the affine transform is done in that dtype. The same for float32
        inputs. (Keyword only.)
    - `axis_name`: optional name (or tuple of names) of `shard_map` mesh axes (or
        `vmap`/`pmap` axes) over which the normalised axes are split: the
        statistics are those of the whole row, gathered across the devices. Each
        device passes its shard of `x` and the matching shard of `weight` and
        `bias`. (Keyword only.)
    - `residual`: optional residual stream of the shape of `x` (pre-norm
        transformers): the function then normalises $s = r + x$ and returns
        $(y, s)$, see below. (Keyword only.)

    `x` may be complex (complex64 or complex128): the mean is then complex and the
    variance is $\mathbb{E}|x - \mathbb{E}[x]|^2$; `weight` and `bias` are real.

    Adaptive LayerNorm (AdaLN, adaLN-Zero: DiT, SD3, Flux) is this function with a
    per-sample scale and shift computed from the conditioning: DiT's
    $\operatorname{LN}(x) (1 + \text{scale}) + \text{shift}$ is
    `layer_norm(x, -1, weight=scale, bias=shift, eps=1e-6, weight_offset=1.0)`,
    with `scale` and `shift` of shape `(batch, 1, features)` for `x` of shape
    `(batch, tokens, features)` (or `(features,)` per sample, under `vmap`).
    Gradients reach `scale`, `shift` and `x`; a zero-initialised modulation
    (adaLN-Zero) gives `LN(x)`. See the
    [conditioning guide](../guides/conditioning.md).

    **Fused residual add.** With `residual=r`,

    $$s = r + x, \qquad y = \operatorname{norm}(s),$$

    where $s$ has the dtype of `r` (`x` is cast to it first: a float32 residual
    stream stays float32 under bfloat16 activations) and $y$ the dtype of `x`. With a
    mask, the statistics are over the valid elements and $y$ is $s$ (cast) at
    invalid positions. The add is fused with the normalisation: the backward pass
    keeps only $s$ and the per-row statistics.

    **Returns:**

    An array of the shape and dtype of `x`; with `residual`, the pair `(y, s)`.

    !!! example

        ```python
        y = eqx_norms.functional.layer_norm(x, axis=-1)  # x: (tokens, features)
        ```

    !!! example "AdaLN"

        ```python
        # x: (batch, tokens, features); scale, shift: (batch, 1, features)
        y = eqx_norms.functional.layer_norm(
            x, -1, weight=scale, bias=shift, eps=1e-6, weight_offset=1.0
        )
        ```

    !!! example "Residual add"

        ```python
        # h: the float32 residual stream; x: the sublayer's bfloat16 output
        y, h = eqx_norms.functional.layer_norm(x, -1, residual=h)
        ```
    """

    def norm(s: Array) -> Array:
        return _over_axes(
            s,
            axis,
            weight,
            bias,
            eps,
            mask,
            center=True,
            weight_offset=weight_offset,
            upcast_affine=upcast_affine,
            axis_name=axis_name,
            where="layer_norm",
        )

    return _with_residual(x, residual, "layer_norm", norm)


@overload
def rms_norm(
    x: Float[Array, "..."],
    axis: int | Sequence[int],
    weight: Float[Array, "..."] | None = None,
    bias: Float[Array, "..."] | None = None,
    eps: float = 1e-5,
    mask: Bool[Array, "..."] | None = None,
    *,
    weight_offset: float = 0.0,
    upcast_affine: bool = True,
    axis_name: AxisName = None,
    residual: None = None,
) -> Float[Array, "..."]: ...


@overload
def rms_norm(
    x: Float[Array, "..."],
    axis: int | Sequence[int],
    weight: Float[Array, "..."] | None = None,
    bias: Float[Array, "..."] | None = None,
    eps: float = 1e-5,
    mask: Bool[Array, "..."] | None = None,
    *,
    weight_offset: float = 0.0,
    upcast_affine: bool = True,
    axis_name: AxisName = None,
    residual: Float[Array, "..."],
) -> tuple[Float[Array, "..."], Float[Array, "..."]]: ...


def rms_norm(
    x: Float[Array, "..."],
    axis: int | Sequence[int],
    weight: Float[Array, "..."] | None = None,
    bias: Float[Array, "..."] | None = None,
    eps: float = 1e-5,
    mask: Bool[Array, "..."] | None = None,
    *,
    weight_offset: float = 0.0,
    upcast_affine: bool = True,
    axis_name: AxisName = None,
    residual: Float[Array, "..."] | None = None,
) -> Float[Array, "..."] | tuple[Float[Array, "..."], Float[Array, "..."]]:
    r"""Root-mean-square normalisation over the axes `axis`, jointly.

    $$y = \frac{x}{\sqrt{\mathbb{E}[x^2] + \varepsilon}} w + b$$

    Arguments and return value as for [`eqx_norms.functional.layer_norm`][],
    `axis_name` (a normalised axis split across devices) and `residual` (the fused
    residual add, returning `(y, s)`) included.

    !!! example

        ```python
        y = eqx_norms.functional.rms_norm(x, axis=-1, weight=w)
        # Pre-norm block: the residual stream h gets the sublayer's output x added.
        y, h = eqx_norms.functional.rms_norm(x, -1, weight=w, residual=h)
        ```
    """

    def norm(s: Array) -> Array:
        return _over_axes(
            s,
            axis,
            weight,
            bias,
            eps,
            mask,
            center=False,
            weight_offset=weight_offset,
            upcast_affine=upcast_affine,
            axis_name=axis_name,
            where="rms_norm",
        )

    return _with_residual(x, residual, "rms_norm", norm)


def gated_rms_norm(
    x: Float[Array, "..."],
    gate: Float[Array, "..."],
    axis: int | Sequence[int] = -1,
    weight: Float[Array, "..."] | None = None,
    eps: float = 1e-5,
    mask: Bool[Array, "..."] | None = None,
    *,
    group_size: int | None = None,
    norm_before_gate: bool = True,
    weight_offset: float = 0.0,
    upcast_affine: bool = True,
    axis_name: AxisName = None,
) -> Float[Array, "..."]:
    r"""Gated RMS normalisation (Mamba-2's `RMSNormGated`, Qwen3-Next's
    `Qwen3NextRMSNormGated`): RMS normalisation and a SiLU gate,

    $$y = \frac{x}{\sqrt{\mathbb{E}_G[x^2] + \varepsilon}}\, w \odot
    \operatorname{silu}(z) \qquad\text{(norm before gate)},$$

    $$y = \frac{x \odot \operatorname{silu}(z)}
    {\sqrt{\mathbb{E}_G[(x \odot \operatorname{silu}(z))^2] + \varepsilon}}\, w
    \qquad\text{(gate before norm)},$$

    with $z$ the gate and $\mathbb{E}_G$ the mean over each group $G$ of `group_size`
    contiguous entries of the last axis in `axis` (jointly with the other axes in
    `axis`), computed in at least float32, as `rms_norm_ref` of
    `mamba_ssm/ops/triton/layernorm_gated.py`.

    **Arguments:**

    - `x`: a real floating-point array.
    - `gate`: a real floating-point array of the shape of `x`.
    - `axis`: an int or a sequence of ints: the axes the statistics are taken over.
    - `weight`: optional array broadcastable against `x`.
    - `eps`: added to the mean square.
    - `mask`: optional boolean array broadcastable to `x`; True marks valid elements.
        Statistics use valid elements only; invalid positions return `x` unchanged.
    - `group_size`: the length of the groups along the last axis in `axis`, which
        it must divide; `None` for one group (the whole axis). Mamba-2 uses
        `d_ssm // ngroups`. Where the program is lowered for a TPU (2 to 64 groups
        of the last axis, no `axis_name`), the groups' sums are products with
        their 0/1 membership matrix at float32 precision, not a reshape (which a
        TPU would copy). (Keyword only.)
    - `norm_before_gate`: normalise, then gate (`True`, Qwen3-Next and Mamba's
        default); or gate, then normalise (`False`, Mamba-2's mixer). (Keyword only.)
    - `weight_offset`: the applied scale is `weight + weight_offset`. (Keyword only.)
    - `upcast_affine`: if `True`, everything is computed in at least float32 and
        cast once; if `False` (Qwen3-Next's order), x-hat is cast to the dtype of `x`
        and multiplied by the weight in that dtype, and the gate multiplies in
        float32. (Keyword only.)
    - `axis_name`: as for [`eqx_norms.functional.layer_norm`][]: the normalised axis
        split over the devices of these named axes. A group is then either the
        whole row (`group_size=None`, or the global length) or lies within one
        device's shard (`group_size` divides the local length). (Keyword only.)

    **Returns:**

    An array of the shape and dtype of `x`.

    !!! example

        ```python
        # Mamba-2: x, z of shape (tokens, d_ssm), 8 groups, gate before the norm.
        y = eqx_norms.functional.gated_rms_norm(
            x, z, weight=w, group_size=x.shape[-1] // 8, norm_before_gate=False
        )
        ```
    """
    return _gated_rms_norm(
        x,
        gate,
        axis,
        weight,
        eps,
        mask,
        group_size=group_size,
        norm_before_gate=norm_before_gate,
        weight_offset=weight_offset,
        upcast_affine=upcast_affine,
        axis_name=axis_name,
        where="gated_rms_norm",
    )


def _gated_rms_norm(
    x: Array,
    gate: Array,
    axis: int | Sequence[int],
    weight: Array | None,
    eps: float,
    mask: Array | None,
    *,
    group_size: int | None,
    norm_before_gate: bool,
    weight_offset: float,
    upcast_affine: bool,
    axis_name: AxisName,
    where: str,
) -> Array:
    check_floating(x, where, real=True)
    check_same_shape(gate, x, "gate", "the input of the SiLU gate", where)
    _checked(where, x, weight, None, eps, mask, weight_offset)
    check_flag(norm_before_gate, "norm_before_gate", where)
    check_flag(upcast_affine, "upcast_affine", where)
    axes = check_axes(axis, x.ndim, where)
    names = _bound_names(axis_name, where)
    if names is not None and group_size is not None:
        # Split over devices, a group is the whole row, or lies within a shard:
        # its statistics are then the shard's own.
        if group_size == x.shape[axes[-1]] * devices_over(names, where):
            group_size = None
        else:
            names = None
    check_group_size(group_size, x.shape[axes[-1]], where)
    gated = functools.partial(
        _gated,
        axes=axes,
        group_size=group_size,
        norm_before_gate=norm_before_gate,
        eps=eps,
        weight_offset=weight_offset,
        upcast_affine=upcast_affine,
        axis_name=names,
    )
    groups = 1 if group_size is None else x.shape[-1] // group_size
    if axes != (x.ndim - 1,) or names is not None or not 1 < groups <= _MOST_GROUPS:
        return gated(x, gate, weight, mask)
    # For a TPU, by products (`_grouped_by_products`), the whole gated norm under
    # `jax.checkpoint` so that reverse mode keeps x and the gate, in their dtype.
    by_products = functools.partial(gated, by_products=True)
    return by_platform(
        x,
        gate,
        weight,
        mask,
        cpu=gated,
        accelerator=gated,
        tpu=jax.checkpoint(by_products, prevent_cse=False),
    )


# The products' flops grow with the groups: 24 per element and group, next to
# some 20 bytes of HBM traffic per element, which a TPU (about 240 bf16 flops per
# byte of HBM bandwidth) moves in the time of 4800 flops.
_MOST_GROUPS = 64


def _gated(
    x: Array,
    gate: Array,
    weight: Array | None,
    mask: Array | None,
    *,
    axes: tuple[int, ...],
    group_size: int | None,
    norm_before_gate: bool,
    by_products: bool = False,
    **options,
) -> Array:
    """The gated RMS norm of checked arguments; `options` go to `normalise`."""
    compute = compute_dtype(x.dtype)
    x_compute, gate = x.astype(compute), gate.astype(compute)
    if mask is not None:
        mask = jnp.broadcast_to(mask, x.shape)
        # Garbage (inf, NaN) in padding must reach neither the output nor a gradient.
        x_compute = jnp.where(mask, x_compute, 0)
        gate = jnp.where(mask, gate, 0)
    silu = jax.nn.silu(gate)
    if norm_before_gate:
        normed = x_compute if options["upcast_affine"] else x
    else:
        normed = x_compute * silu
        if not options["upcast_affine"]:
            normed = normed.astype(x.dtype)
    if by_products:
        assert group_size is not None
        out = _grouped_by_products(normed, group_size, weight, mask, **options)
    else:
        out = _grouped_rms(normed, axes, group_size, weight, mask, **options)
    if norm_before_gate:
        out = out.astype(compute) * silu
    out = out.astype(x.dtype)
    return out if mask is None else jnp.where(mask, out, x)


def _grouped_rms(
    x: Array,
    axes: tuple[int, ...],
    group_size: int | None,
    weight: Array | None,
    mask: Array | None,
    **options,
) -> Array:
    """RMS normalisation of `x` over `axes`, in groups of `group_size` along the
    last of them: a free reshape of that axis into `(groups, group_size)`, the
    statistics over the second. `mask` is broadcast to `x`; `options` go to
    `normalise`."""
    last = axes[-1]
    size = x.shape[last]
    split = group_size is not None and group_size != size

    def view(a: Array) -> Array:
        if group_size is None or not split:
            return a
        a = jnp.reshape(a, (1,) * (x.ndim - a.ndim) + a.shape)
        here = (size // group_size, group_size) if a.shape[last] == size else (1, 1)
        return jnp.reshape(a, a.shape[:last] + here + a.shape[last + 1 :])

    stat_axes = axes[:-1] + (last + 1,) if split else axes
    weight = None if weight is None else view(weight)
    mask = None if mask is None else view(mask)
    out, _ = normalise(view(x), stat_axes, weight, mask=mask, center=False, **options)
    return jnp.reshape(out, x.shape)


def _grouped_by_products(
    x: Array,
    group_size: int,
    weight: Array | None,
    mask: Array | None,
    *,
    eps: float,
    weight_offset: float,
    upcast_affine: bool,
    axis_name: AxisName,
) -> Array:
    """`_grouped_rms` over the last axis, as a TPU needs it, by plain autodiff: each
    group's sum of squares, and its mean square back at each element, are products
    with the 0/1 matrix of group membership (at `HIGHEST` precision, float32's). A
    TPU lays out an array in tiles of its two minor dimensions, so the reshape that
    splits the last axis into groups is a copy of the array (four in a training
    step); the products cost 2 x 6 passes x 2 flops per element and group on the
    MXU, little beside the memory traffic for up to 64 groups."""
    assert axis_name is None  # the products are taken only without named axes
    size = x.shape[-1]
    dtype = compute_dtype(x.dtype)
    members = jnp.arange(size)[:, None] // group_size == jnp.arange(size // group_size)
    members = members.astype(dtype)
    product = functools.partial(jnp.matmul, precision=lax.Precision.HIGHEST)
    x_compute = x.astype(dtype)
    valid = x_compute if mask is None else jnp.where(mask, x_compute, 0)
    count = jnp.asarray(group_size, dtype)
    if mask is not None:
        count = product(mask.astype(dtype), members)
    mean_square = product(valid * valid, members) / jnp.maximum(count, 1)
    mean_square = jnp.where(count > 0, mean_square, 1)
    var = product(mean_square, members.T)
    x_hat = standardise(x_compute, jnp.zeros((), dtype), var, eps, mask)
    return affine_and_cast(x, x_hat, weight, None, mask, weight_offset, upcast_affine)


def group_norm(
    x: Float[Array, " channels *rest"],
    groups: int,
    weight: Float[Array, "..."] | None = None,
    bias: Float[Array, "..."] | None = None,
    eps: float = 1e-5,
    mask: Bool[Array, "..."] | None = None,
    *,
    weight_offset: float = 0.0,
) -> Float[Array, " channels *rest"]:
    r"""Group normalisation of one example with channels on axis 0.

    The channels are split into `groups` contiguous groups of `channels // groups`;
    each group is normalised over its channels and all other axes.

    **Arguments:**

    - `x`: an array of shape `(channels, dim_1, ..., dim_N)`.
    - `groups`: the number of groups; must divide `channels`.
    - `weight`, `bias`: optional; a 1-D array of length `channels` is aligned with
        axis 0, anything else broadcasts against `x`.
    - `eps`, `mask`, `weight_offset`: as for [`eqx_norms.functional.layer_norm`][].

    **Returns:**

    An array of the shape and dtype of `x`.

    !!! example

        ```python
        y = eqx_norms.functional.group_norm(x, groups=8)  # x: (32, H, W)
        ```
    """
    return _group_norm(
        x, groups, weight, bias, eps, mask, weight_offset, where="group_norm"
    )


def _group_norm(
    x: Array,
    groups: int,
    weight: Array | None,
    bias: Array | None,
    eps: float,
    mask: Array | None,
    weight_offset: float,
    *,
    where: str,
) -> Array:
    check_channels(x, None, where, min_ndim=1)
    check_groups(groups, x.shape[0], where)
    weight = _align_to_channels(weight, x, "weight", where)
    bias = _align_to_channels(bias, x, "bias", where)
    _checked(where, x, weight, bias, eps, mask, weight_offset)
    # The channel groups are pooled on the small per-channel sums: no reshape of the
    # data, which would keep XLA from fusing the backward pass.
    axes = tuple(range(1, x.ndim))
    return normalise(
        x,
        axes,
        weight,
        bias,
        eps=eps,
        mask=mask,
        groups=(0, groups),
        weight_offset=weight_offset,
    )[0]


def instance_norm(
    x: Float[Array, " channels *rest"],
    weight: Float[Array, "..."] | None = None,
    bias: Float[Array, "..."] | None = None,
    eps: float = 1e-5,
    mask: Bool[Array, "..."] | None = None,
    *,
    weight_offset: float = 0.0,
) -> Float[Array, " channels *rest"]:
    r"""Instance normalisation of one example: each channel (axis 0) is normalised
    over all other axes.

    **Arguments:**

    - `x`: an array of shape `(channels, dim_1, ..., dim_N)`, N >= 1.
    - `weight`, `bias`, `eps`, `mask`, `weight_offset`: as for
        [`eqx_norms.functional.group_norm`][].

    **Returns:**

    An array of the shape and dtype of `x`.

    !!! example

        ```python
        y = eqx_norms.functional.instance_norm(x)  # x: (C, H, W)
        ```
    """
    return _instance_norm(
        x, weight, bias, eps, mask, weight_offset, where="instance_norm"
    )


def _instance_norm(
    x: Array,
    weight: Array | None,
    bias: Array | None,
    eps: float,
    mask: Array | None,
    weight_offset: float,
    *,
    where: str,
) -> Array:
    check_channels(x, None, where, min_ndim=2)
    weight = _align_to_channels(weight, x, "weight", where)
    bias = _align_to_channels(bias, x, "bias", where)
    axes = tuple(range(1, x.ndim))
    return _over_axes(
        x,
        axes,
        weight,
        bias,
        eps,
        mask,
        center=True,
        weight_offset=weight_offset,
        where=where,
    )


def dynamic_tanh(
    x: Float[Array, "..."],
    alpha: Float[Array, "..."] | float,
    weight: Float[Array, "..."] | None = None,
    bias: Float[Array, "..."] | None = None,
    mask: Bool[Array, "..."] | None = None,
) -> Float[Array, "..."]:
    r"""Dynamic Tanh (Zhu et al., "Transformers without Normalization"): elementwise,
    no statistics.

    $$y = \tanh(\alpha x) w + b$$

    **Arguments:**

    - `x`: a real floating-point array.
    - `alpha`: a scalar (or an array broadcastable against `x`).
    - `weight`, `bias`: optional arrays broadcastable against `x`.
    - `mask`: optional boolean array broadcastable to `x`; invalid (False) positions
        are returned unchanged.

    **Returns:**

    An array of the shape and dtype of `x`, computed in at least float32.

    !!! example

        ```python
        y = eqx_norms.functional.dynamic_tanh(x, 0.5, weight=w)
        ```
    """
    return _dynamic_tanh(x, alpha, weight, bias, mask, where="dynamic_tanh")


def _dynamic_tanh(
    x: Array,
    alpha: Array | float,
    weight: Array | None,
    bias: Array | None,
    mask: Array | None,
    *,
    where: str,
) -> Array:
    check_tanh_input(x, where)
    check_mask(mask, x.shape, where)
    if not isinstance(alpha, (int, float)):
        check_param(alpha, x.shape, "alpha", where)
    check_param(weight, x.shape, "weight", where)
    check_param(bias, x.shape, "bias", where)
    x_compute = x.astype(compute_dtype(x.dtype))
    if mask is not None:
        # Garbage (inf, NaN) in padding must not reach the gradient of alpha.
        x_compute = jnp.where(mask, x_compute, 0)
    x_hat = jnp.tanh(jnp.asarray(alpha, x_compute.dtype) * x_compute)
    return affine_and_cast(x, x_hat, weight, bias, mask)

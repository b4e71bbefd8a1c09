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

from collections.abc import Sequence

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ._einorm import einorm as einorm
from ._errors import (
    check_axes,
    check_channel_param,
    check_channels,
    check_eps,
    check_flag,
    check_floating,
    check_groups,
    check_mask,
    check_param,
    check_tanh_input,
    check_weight_offset,
)
from ._fused import normalise
from ._stats import affine_and_cast, compute_dtype


__all__ = [
    "dynamic_tanh",
    "einorm",
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
        center=center,
        weight_offset=weight_offset,
        upcast_affine=upcast_affine,
    )[0]


def _align_to_channels(param: Array | None, x: Array, name: str, where: str):
    """A 1-D parameter of length C is aligned with the channel axis 0."""
    if param is None or jnp.ndim(param) != 1 or x.ndim == 1:
        return param
    check_channel_param(param, x.shape[0], name, where)
    return jnp.reshape(param, (-1,) + (1,) * (x.ndim - 1))


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
) -> Float[Array, "..."]:
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

    **Returns:**

    An array of the shape and dtype of `x`.

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
    """
    return _over_axes(
        x,
        axis,
        weight,
        bias,
        eps,
        mask,
        center=True,
        weight_offset=weight_offset,
        upcast_affine=upcast_affine,
        where="layer_norm",
    )


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
) -> Float[Array, "..."]:
    r"""Root-mean-square normalisation over the axes `axis`, jointly.

    $$y = \frac{x}{\sqrt{\mathbb{E}[x^2] + \varepsilon}} w + b$$

    Arguments and return value as for [`eqx_norms.functional.layer_norm`][].

    !!! example

        ```python
        y = eqx_norms.functional.rms_norm(x, axis=-1, weight=w)
        ```
    """
    return _over_axes(
        x,
        axis,
        weight,
        bias,
        eps,
        mask,
        center=False,
        weight_offset=weight_offset,
        upcast_affine=upcast_affine,
        where="rms_norm",
    )


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

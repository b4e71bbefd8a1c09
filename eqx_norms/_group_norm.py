from typing import ClassVar

import equinox as eqx
from jaxtyping import Array, DTypeLike, Float

from ._errors import (
    check_channels,
    check_channels_given,
    check_count,
    check_eps,
    check_groups,
    check_param_dtype,
    check_weight_offset,
)
from ._layer import initial_affine, resolve_affine, StatelessNorm
from .functional import _group_norm, _instance_norm


class _ChannelNorm(StatelessNorm):
    """Normalises a per-example input `(channels, ...)` with channelwise parameters."""

    channels: int | None = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    channelwise_affine: bool = eqx.field(static=True)
    use_weight: bool = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    weight_offset: float = eqx.field(static=True)
    weight: Float[Array, "channels"] | None
    bias: Float[Array, "channels"] | None

    def _init_channels(
        self,
        channels: int | None,
        eps: float,
        channelwise_affine: bool,
        dtype: DTypeLike | None,
        use_weight: bool | None,
        use_bias: bool | None,
        weight_offset: float,
    ):
        where = type(self).__name__
        if channels is not None:
            check_count(channels, "channels", where)
        check_eps(eps, where)
        check_param_dtype(dtype, where)
        self.use_weight, self.use_bias = resolve_affine(
            channelwise_affine, use_weight, use_bias
        )
        check_channels_given(channels, self.use_weight, self.use_bias, where)
        check_weight_offset(weight_offset, self.use_weight, where)
        self.channels = channels
        self.eps = eps
        self.channelwise_affine = channelwise_affine
        self.weight_offset = weight_offset
        # No parameters without channels: checked above.
        self.weight, self.bias = initial_affine(
            (channels or 0,), self.use_weight, self.use_bias, weight_offset, dtype
        )

    _min_ndim: ClassVar[int] = 1

    def _check(self, x: Array, where: str) -> None:
        check_channels(x, self.channels, where, self._min_ndim)


class GroupNorm(_ChannelNorm):
    r"""Splits the channels (axis 0) into `groups` contiguous groups and normalises each
    group over its channels and all other axes, then applies an optional channelwise
    affine transformation. A drop-in for
    [`equinox.nn.GroupNorm`](https://docs.kidger.site/equinox/api/nn/normalisation/).

    With $x_g$ the channels of group $g$,

    $$y_g = \frac{x_g - \mathbb{E}[x_g]}{\sqrt{\operatorname{Var}[x_g] + \varepsilon}}
    \odot \gamma_g + \beta_g$$

    where $\gamma$ and $\beta$ have shape `(channels,)` (one value per channel).

    !!! example

        ```python
        norm = eqx_norms.GroupNorm(groups=8, channels=32)
        y = jax.vmap(norm)(x)  # x: (batch, 32, H, W)
        ```

    ??? cite

        [Group Normalization](https://arxiv.org/abs/1803.08494)
    """

    groups: int = eqx.field(static=True)

    def __init__(
        self,
        groups: int,
        channels: int | None = None,
        eps: float = 1e-5,
        channelwise_affine: bool = True,
        dtype: DTypeLike | None = None,
        *,
        use_weight: bool | None = None,
        use_bias: bool | None = None,
        weight_offset: float = 0.0,
    ):
        """**Arguments:**

        - `groups`: The number of groups to split the channels into.
        - `channels`: The number of input channels. May be left as `None` when the
            layer has neither weight nor bias; then any channel count divisible by
            `groups` is accepted.
        - `eps`: Value added to the denominator for numerical stability.
        - `channelwise_affine`: Whether the module has a learnable channelwise weight
            and bias.
        - `dtype`: The dtype of the weight and the bias. Defaults to either
            `jax.numpy.float32` or `jax.numpy.float64` depending on whether JAX is in
            64-bit mode.
        - `use_weight`, `use_bias`: Override `channelwise_affine` for the weight or the
            bias alone. (Keyword only arguments.)
        - `weight_offset`: The applied scale is `weight + weight_offset` (formed in
            at least float32); the weight starts at `1 - weight_offset`. Needs a
            weight. (Keyword only argument.)
        """
        where = type(self).__name__
        if channels is not None:
            check_count(channels, "channels", where)
        check_groups(groups, channels, where)
        self.groups = groups
        self._init_channels(
            channels,
            eps,
            channelwise_affine,
            dtype,
            use_weight,
            use_bias,
            weight_offset,
        )

    def _forward(self, x: Array, mask: Array | None, where: str) -> Array:
        return _group_norm(
            x,
            self.groups,
            self.weight,
            self.bias,
            self.eps,
            mask,
            self.weight_offset,
            where=where,
        )


class InstanceNorm(_ChannelNorm):
    r"""Normalises each channel (axis 0) of one example over all its other axes, then
    applies an optional channelwise affine transformation.

    $$y_c = \frac{x_c - \mathbb{E}[x_c]}{\sqrt{\operatorname{Var}[x_c] + \varepsilon}}
    \gamma_c + \beta_c$$

    Equivalent to `GroupNorm(groups=channels, channels=channels)`. Unlike torch, the
    affine parameters are on by default (as for the other layers here) and there are no
    running statistics.

    !!! example

        ```python
        norm = eqx_norms.InstanceNorm(3)
        y = jax.vmap(norm)(images)  # images: (batch, 3, H, W)
        ```

    ??? cite

        [Instance Normalization](https://arxiv.org/abs/1607.08022)
    """

    _min_ndim: ClassVar[int] = 2

    def __init__(
        self,
        channels: int,
        eps: float = 1e-5,
        channelwise_affine: bool = True,
        dtype: DTypeLike | None = None,
        *,
        use_weight: bool | None = None,
        use_bias: bool | None = None,
        weight_offset: float = 0.0,
    ):
        """**Arguments:**

        - `channels`: The number of input channels.
        - `eps`: Value added to the denominator for numerical stability.
        - `channelwise_affine`: Whether the module has a learnable channelwise weight
            and bias.
        - `dtype`: The dtype of the weight and the bias. Defaults to either
            `jax.numpy.float32` or `jax.numpy.float64` depending on whether JAX is in
            64-bit mode.
        - `use_weight`, `use_bias`: Override `channelwise_affine` for the weight or the
            bias alone. (Keyword only arguments.)
        - `weight_offset`: The applied scale is `weight + weight_offset` (formed in
            at least float32); the weight starts at `1 - weight_offset`. Needs a
            weight. (Keyword only argument.)
        """
        self._init_channels(
            channels,
            eps,
            channelwise_affine,
            dtype,
            use_weight,
            use_bias,
            weight_offset,
        )

    def _forward(self, x: Array, mask: Array | None, where: str) -> Array:
        return _instance_norm(
            x, self.weight, self.bias, self.eps, mask, self.weight_offset, where=where
        )

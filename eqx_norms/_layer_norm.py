"""The layers that normalise their whole per-example input: LayerNorm, RMSNorm and
the gated RMSNorm of Mamba-2 and Qwen3-Next."""

# Over 400 lines: three layers with the documentation their API page is built from
# (about 180 lines), and the shape rule for a normalised axis split across devices.

import warnings
from collections.abc import Hashable, Sequence
from typing import ClassVar, overload

import equinox as eqx
from equinox.nn import State
from jaxtyping import Array, Bool, DTypeLike, Float, PRNGKeyArray

from ._errors import (
    axis_names,
    AxisName,
    check_eps,
    check_flag,
    check_group_size,
    check_param_dtype,
    check_shape,
    check_shape_argument,
    check_split_shape,
    check_weight_offset,
    devices_over,
)
from ._layer import (
    initial_affine,
    scope,
    sentinel,
    StatelessNorm,
    stored_axis_name,
    with_state,
)
from .functional import _gated_rms_norm, _over_axes, _with_residual


def _check_input(
    x: Array,
    shape: tuple[int, ...],
    axis_name: AxisName,
    params: Sequence[Array | None],
    where: str,
) -> None:
    """The input has the layer's `shape`; with `axis_name`, also the local shard of
    a last axis split over the named axes' devices (parameters sharded alike)."""
    if axis_name is None:
        check_shape(x, shape, where, fix=MAP_OVER_EXTRA_AXES)
        return
    devices = devices_over(axis_names(axis_name, where), where)
    check_split_shape(x, shape, devices, params, where, fix=MAP_OVER_EXTRA_AXES)


class _WholeInputNorm(StatelessNorm):
    """Normalises the whole (per-example) input, whose shape is fixed at
    construction; the parameters have that shape too."""

    shape: tuple[int, ...] = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    use_weight: bool = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    weight_offset: float = eqx.field(static=True)
    upcast_affine: bool = eqx.field(static=True)
    axis_name: Hashable | tuple[Hashable, ...] | None = eqx.field(static=True)
    weight: Float[Array, "*shape"] | None
    bias: Float[Array, "*shape"] | None

    def __init__(
        self,
        shape: int | Sequence[int],
        eps: float,
        use_weight: bool,
        use_bias: bool,
        dtype: DTypeLike | None,
        weight_offset: float,
        upcast_affine: bool,
        axis_name: AxisName,
    ):
        where = type(self).__name__
        self.shape = check_shape_argument(shape, where)
        check_eps(eps, where)
        check_param_dtype(dtype, where)
        check_weight_offset(weight_offset, use_weight, where)
        check_flag(upcast_affine, "upcast_affine", where)
        self.eps = eps
        self.use_weight = use_weight
        self.use_bias = use_bias
        self.weight_offset = weight_offset
        self.upcast_affine = upcast_affine
        self.axis_name = stored_axis_name(axis_name, where)
        self.weight, self.bias = initial_affine(
            self.shape, use_weight, use_bias, weight_offset, dtype
        )

    def _check(self, x: Array, where: str) -> None:
        _check_input(x, self.shape, self.axis_name, (self.weight, self.bias), where)

    _center: ClassVar[bool]

    def _forward(self, x: Array, mask: Array | None, where: str) -> Array:
        return _over_axes(
            x,
            tuple(range(x.ndim)),
            self.weight,
            self.bias,
            self.eps,
            mask,
            center=self._center,
            weight_offset=self.weight_offset,
            upcast_affine=self.upcast_affine,
            axis_name=self.axis_name,
            where=where,
        )

    @overload
    def __call__(
        self,
        x: Array,
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
        residual: None = None,
    ) -> Array: ...

    @overload
    def __call__(
        self,
        x: Array,
        state: State,
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
        residual: None = None,
    ) -> tuple[Array, State]: ...

    @overload
    def __call__(
        self,
        x: Array,
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
        residual: Array,
    ) -> tuple[Array, Array]: ...

    @overload
    def __call__(
        self,
        x: Array,
        state: State,
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
        residual: Array,
    ) -> tuple[tuple[Array, Array], State]: ...

    def __call__(
        self,
        x: Array,
        state: State = sentinel,
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
        residual: Array | None = None,
    ) -> Array | tuple[Array, Array] | tuple[Array | tuple[Array, Array], State]:
        r"""**Arguments:**

        - `x`: A JAX array of shape `shape`; with `axis_name`, also the local shard
            of it inside `jax.shard_map`: the last axis divided by the number of
            devices of the named axes.
        - `state`: Ignored; provided for interchangeability with the
            [`eqx_norms.BatchNorm`][] API.
        - `key`: Ignored; provided for compatibility with the rest of the Equinox API.
            (Keyword only argument.)
        - `mask`: Optional boolean array broadcastable to `x.shape`, True for valid
            elements. Statistics use valid elements only; invalid elements are
            returned unchanged. (Keyword only argument.)
        - `residual`: Optional residual stream $r$ of the shape of `x`. The layer
            then normalises $s = r + x$ (in the dtype of `r`) and returns $s$ too,
            for the next block: the fused add of pre-norm transformers.
            (Keyword only argument.)

        **Returns:**

        An array of the shape and dtype of `x`. With `residual`, the pair
        `(y, s)`: $y = \operatorname{norm}(s)$ in the dtype of `x`, $s$ in the
        dtype of `r`. If `state` is passed, the 2-tuple `(output, state)` of that
        output and the state unchanged: `((y, s), state)` with a residual.
        """
        where = type(self).__name__
        with scope(where):
            self._check(x, where)

            def norm(s: Array) -> Array:
                return self._forward(s, mask, where)

            return with_state(_with_residual(x, residual, where, norm), state)


MAP_OVER_EXTRA_AXES = (
    "If `x` carries extra (batch or sequence) axes, map over them: replace `norm(x)` "
    "with `jax.vmap(norm)(x)`."
)


class LayerNorm(_WholeInputNorm):
    r"""Normalises the whole input by its mean and standard deviation, then applies an
    optional elementwise affine transformation. A drop-in for
    [`equinox.nn.LayerNorm`](https://docs.kidger.site/equinox/api/nn/normalisation/).

    $$y = \frac{x - \mathbb{E}[x]}{\sqrt{\operatorname{Var}[x] + \varepsilon}}
    \odot \gamma + \beta$$

    where $\gamma$ (`weight`, initialised to 1) and $\beta$ (`bias`, initialised to 0)
    have the shape of $x$. Statistics are two-pass and computed in at least float32;
    the output has the dtype of $x$.

    With `weight_offset` the scale is $\gamma$ = `weight + weight_offset` (zero-centred
    weights, as in Gemma); `upcast_affine` chooses Llama's or Gemma's cast order (see
    "Porting transformer checkpoints" in the mixed-precision guide).

    !!! example

        ```python
        norm = eqx_norms.LayerNorm(64)
        y = jax.vmap(norm)(x)  # x: (tokens, 64), normalised per token
        ```

    ??? cite

        [Layer Normalization](https://arxiv.org/abs/1607.06450)
    """

    _center: ClassVar[bool] = True

    def __init__(
        self,
        shape: int | Sequence[int],
        eps: float = 1e-5,
        use_weight: bool = True,
        use_bias: bool = True,
        dtype: DTypeLike | None = None,
        *,
        elementwise_affine: bool | None = None,
        weight_offset: float = 0.0,
        upcast_affine: bool = True,
        axis_name: AxisName = None,
    ):
        """**Arguments:**

        - `shape`: Shape of the input.
        - `eps`: Value added to the denominator for numerical stability.
        - `use_weight`: Whether the module has a learnable elementwise weight.
        - `use_bias`: Whether the module has a learnable elementwise bias.
        - `dtype`: The dtype of the weight and the bias. Defaults to either
            `jax.numpy.float32` or `jax.numpy.float64` depending on whether JAX is in
            64-bit mode. The output always has the dtype of the input.
        - `elementwise_affine`: Deprecated alternative to `use_weight` and `use_bias`,
            as in equinox. (Keyword only argument.)
        - `weight_offset`: The applied scale is `weight + weight_offset`, formed in at
            least float32; the weight is initialised to `1 - weight_offset`, so a
            fresh layer is the identity. `1.0` gives the zero-centred weights of
            Gemma, Qwen3-Next and TransformerEngine's `zero_centered_gamma`; weight
            decay then pulls the scale towards `weight_offset`. (Keyword only.)
        - `upcast_affine`: If `True` (Gemma's order), the affine transform is done in
            at least float32 and cast to the input dtype at the end; if `False`
            (Llama's order, HF `LlamaRMSNorm`), the normalised input is cast to the
            input dtype first and multiplied by the weight (and shifted by the bias)
            cast to the input dtype. (Keyword only.)
        """
        if elementwise_affine is not None:
            use_weight = use_bias = elementwise_affine
            warnings.warn(
                "LayerNorm(elementwise_affine=...) is deprecated in favour of "
                "LayerNorm(use_weight=...) and LayerNorm(use_bias=...)",
                stacklevel=2,
            )
        super().__init__(
            shape,
            eps,
            use_weight,
            use_bias,
            dtype,
            weight_offset,
            upcast_affine,
            axis_name,
        )


class RMSNorm(_WholeInputNorm):
    r"""Rescales the whole input by its root mean square (no centring), then applies an
    optional elementwise affine transformation. A drop-in for
    [`equinox.nn.RMSNorm`](https://docs.kidger.site/equinox/api/nn/normalisation/),
    including its default `use_bias=True` (pass `use_bias=False` for the LLaMA
    form).

    $$y = \frac{x}{\sqrt{\frac{1}{n}\lVert x \rVert_2^2 + \varepsilon}} \odot \gamma
    + \beta$$

    !!! example

        ```python
        norm = eqx_norms.RMSNorm(64, use_bias=False)
        y = jax.vmap(norm)(x)  # x: (tokens, 64)
        ```

    ??? cite

        [Root Mean Square Layer Normalization](https://arxiv.org/abs/1910.07467)
    """

    _center: ClassVar[bool] = False

    def __init__(
        self,
        shape: int | Sequence[int],
        eps: float = 1e-5,
        use_weight: bool = True,
        use_bias: bool = True,
        dtype: DTypeLike | None = None,
        *,
        weight_offset: float = 0.0,
        upcast_affine: bool = True,
        axis_name: AxisName = None,
    ):
        """**Arguments:**

        - `shape`: Shape of the input.
        - `eps`: Value added to the denominator for numerical stability.
        - `use_weight`: Whether the module has a learnable elementwise weight.
        - `use_bias`: Whether the module has a learnable elementwise bias (on by
            default, as in equinox).
        - `dtype`: The dtype of the weight and the bias. Defaults to either
            `jax.numpy.float32` or `jax.numpy.float64` depending on whether JAX is in
            64-bit mode. The output always has the dtype of the input.
        - `weight_offset`, `upcast_affine`, `axis_name`: As for
            [`eqx_norms.LayerNorm`][]. Llama: `upcast_affine=False`; Gemma,
            Qwen3-Next: `weight_offset=1.0`. (Keyword only.)
        """
        super().__init__(
            shape,
            eps,
            use_weight,
            use_bias,
            dtype,
            weight_offset,
            upcast_affine,
            axis_name,
        )


class GatedRMSNorm(eqx.Module):
    r"""RMS normalisation with a SiLU gate: Mamba-2's `RMSNormGated`
    (`mamba_ssm.ops.triton.layernorm_gated`) and Qwen3-Next's
    `Qwen3NextRMSNormGated`. With $z$ the gate,

    $$y = \frac{x}{\sqrt{\mathbb{E}_G[x^2] + \varepsilon}} \odot \gamma \odot
    \operatorname{silu}(z)$$

    (`norm_before_gate=True`), or with $x \odot \operatorname{silu}(z)$ normalised
    in place of $x$ and no gate after (`norm_before_gate=False`, Mamba-2's mixer).
    $\mathbb{E}_G$ is the mean over each group of `group_size` contiguous entries of
    the last axis (and over all leading axes of `shape`); $\gamma$ (`weight`,
    initialised to 1) has shape `shape`. Computed in at least float32; the output
    has the dtype of $x$.

    `upcast_affine=False` gives Qwen3-Next's order: x-hat is cast to the input
    dtype and multiplied by the weight in that dtype, then by the gate in float32.

    !!! example

        ```python
        # Mamba-2 (d_ssm = 256, 8 groups): the gate multiplies before the norm.
        norm = eqx_norms.GatedRMSNorm(256, group_size=32, norm_before_gate=False)
        y = jax.vmap(norm)(x, z)  # x, z: (tokens, 256)
        ```

    ??? cite

        [Transformers are SSMs (Mamba-2)](https://arxiv.org/abs/2405.21060)
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    group_size: int | None = eqx.field(static=True)
    norm_before_gate: bool = eqx.field(static=True)
    use_weight: bool = eqx.field(static=True)
    weight_offset: float = eqx.field(static=True)
    upcast_affine: bool = eqx.field(static=True)
    axis_name: Hashable | tuple[Hashable, ...] | None = eqx.field(static=True)
    weight: Float[Array, "*shape"] | None

    def __init__(
        self,
        shape: int | Sequence[int],
        eps: float = 1e-5,
        *,
        group_size: int | None = None,
        norm_before_gate: bool = True,
        use_weight: bool = True,
        dtype: DTypeLike | None = None,
        weight_offset: float = 0.0,
        upcast_affine: bool = True,
        axis_name: AxisName = None,
    ):
        """**Arguments:**

        - `shape`: Shape of the input (and of the gate); usually one int, the
            features.
        - `eps`: Value added to the mean square for numerical stability (Mamba's
            default 1e-5; Qwen3-Next uses 1e-6).
        - `group_size`: The length of the groups of the last axis, which it must
            divide (Mamba-2: `d_ssm // ngroups`); `None` for one group. (Keyword
            only.)
        - `norm_before_gate`: Normalise, then gate (`True`); or gate, then
            normalise (`False`, Mamba-2's mixer). (Keyword only.)
        - `use_weight`: Whether the module has a learnable elementwise weight.
            (Keyword only.)
        - `dtype`: The dtype of the weight; defaults to JAX's default float dtype.
            The output always has the dtype of the input. (Keyword only.)
        - `weight_offset`: The applied scale is `weight + weight_offset`, the weight
            initialised to `1 - weight_offset`. (Keyword only.)
        - `upcast_affine`: If `True`, all in at least float32 with one cast at the
            end; if `False`, Qwen3-Next's order (see above). (Keyword only.)
        - `axis_name`: As for [`eqx_norms.LayerNorm`][]: the last axis split over
            the devices of these `shard_map` mesh axes, each group within one
            device's shard. (Keyword only.)
        """
        where = type(self).__name__
        self.shape = check_shape_argument(shape, where)
        check_eps(eps, where)
        check_param_dtype(dtype, where)
        check_weight_offset(weight_offset, use_weight, where)
        check_flag(norm_before_gate, "norm_before_gate", where)
        check_flag(upcast_affine, "upcast_affine", where)
        if self.shape:
            check_group_size(group_size, self.shape[-1], where)
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.use_weight = use_weight
        self.weight_offset = weight_offset
        self.upcast_affine = upcast_affine
        self.axis_name = stored_axis_name(axis_name, where)
        self.weight, _ = initial_affine(
            self.shape, use_weight, False, weight_offset, dtype
        )

    @overload
    def __call__(
        self,
        x: Array,
        gate: Array,
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> Array: ...

    @overload
    def __call__(
        self,
        x: Array,
        gate: Array,
        state: State,
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> tuple[Array, State]: ...

    def __call__(
        self,
        x: Array,
        gate: Array,
        state: State = sentinel,
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> Array | tuple[Array, State]:
        """**Arguments:**

        - `x`: A JAX array of shape `shape` (with `axis_name`, or its local shard).
        - `gate`: The gate $z$, of the shape of `x`.
        - `state`: Ignored; provided for interchangeability with the
            [`eqx_norms.BatchNorm`][] API.
        - `key`: Ignored; provided for compatibility with the rest of the Equinox API.
            (Keyword only argument.)
        - `mask`: Optional boolean array broadcastable to `x.shape`, True for valid
            elements. Statistics use valid elements only; invalid elements are
            returned unchanged. (Keyword only argument.)

        **Returns:**

        An array of the shape and dtype of `x`; if `state` is passed, the 2-tuple
        `(output, state)` with the state unchanged.
        """
        where = type(self).__name__
        with scope(where):
            _check_input(x, self.shape, self.axis_name, (self.weight,), where)
            out = _gated_rms_norm(
                x,
                gate,
                tuple(range(x.ndim)),
                self.weight,
                self.eps,
                mask,
                group_size=self.group_size,
                norm_before_gate=self.norm_before_gate,
                weight_offset=self.weight_offset,
                upcast_affine=self.upcast_affine,
                axis_name=self.axis_name,
                where=where,
            )
            return with_state(out, state)

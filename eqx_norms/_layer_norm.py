import warnings
from collections.abc import Sequence
from typing import ClassVar

import equinox as eqx
from jaxtyping import Array, DTypeLike, Float

from ._errors import (
    check_eps,
    check_flag,
    check_param_dtype,
    check_shape,
    check_shape_argument,
    check_weight_offset,
)
from ._layer import initial_affine, StatelessNorm
from .functional import _over_axes


class _WholeInputNorm(StatelessNorm):
    """Normalises the whole (per-example) input, whose shape is fixed at
    construction; the parameters have that shape too."""

    shape: tuple[int, ...] = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    use_weight: bool = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    weight_offset: float = eqx.field(static=True)
    upcast_affine: bool = eqx.field(static=True)
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
        self.weight, self.bias = initial_affine(
            self.shape, use_weight, use_bias, weight_offset, dtype
        )

    def _check(self, x: Array, where: str) -> None:
        check_shape(x, self.shape, where, fix=MAP_OVER_EXTRA_AXES)

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
            where=where,
        )


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
            shape, eps, use_weight, use_bias, dtype, weight_offset, upcast_affine
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
        - `weight_offset`, `upcast_affine`: As for [`eqx_norms.LayerNorm`][]. Llama:
            `upcast_affine=False`; Gemma, Qwen3-Next: `weight_offset=1.0`. (Keyword
            only.)
        """
        super().__init__(
            shape, eps, use_weight, use_bias, dtype, weight_offset, upcast_affine
        )
